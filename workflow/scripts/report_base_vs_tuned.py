"""Snakemake adapter: encoding r of the base vs the brain-tuned model (rule report_base_vs_tuned)."""

from brainllm.io import rule_logging
from brainllm.report import plot_base_vs_tuned

with rule_logging(snakemake.log[0]):
    plot_base_vs_tuned(
        snakemake.input.comparison, snakemake.output.png, snakemake.output.svg, snakemake.output.tsv, dpi=snakemake.params.dpi
    )
