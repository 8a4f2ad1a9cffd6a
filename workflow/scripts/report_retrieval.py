"""Snakemake adapter: held-out retrieval against chance (rule report_retrieval)."""

from brainllm.io import rule_logging
from brainllm.report import plot_retrieval

with rule_logging(snakemake.log[0]):
    plot_retrieval(
        snakemake.input.retrieval, snakemake.output.png, snakemake.output.svg, snakemake.output.tsv, dpi=snakemake.params.dpi
    )
