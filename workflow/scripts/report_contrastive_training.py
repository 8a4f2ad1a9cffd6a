"""Snakemake adapter: contrastive training curves (rule report_contrastive_training)."""

from brainllm.io import rule_logging
from brainllm.report import plot_contrastive_training

with rule_logging(snakemake.log[0]):
    plot_contrastive_training(
        snakemake.input.curves, snakemake.output.png, snakemake.output.svg, snakemake.output.tsv, dpi=snakemake.params.dpi
    )
