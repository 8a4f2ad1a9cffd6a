"""Snakemake adapter: layer curves of every model and subject (rule report_layer_curves)."""

from brainllm.io import rule_logging
from brainllm.report import plot_layer_curves

with rule_logging(snakemake.log[0]):
    plot_layer_curves(
        snakemake.input.layers,
        snakemake.output.png,
        snakemake.output.svg,
        snakemake.output.tsv,
        model_sizes=snakemake.params.model_sizes,
        dpi=snakemake.params.dpi,
    )
