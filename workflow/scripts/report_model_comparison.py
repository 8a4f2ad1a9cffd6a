"""Snakemake adapter: model-vs-model comparison of every subject (rule report_model_comparison)."""

from brainllm.io import rule_logging
from brainllm.report import plot_model_comparison

with rule_logging(snakemake.log[0]):
    out = snakemake.output
    plot_model_comparison(snakemake.input.tables, out.png, out.svg, out.tsv, dpi=snakemake.params.dpi)
