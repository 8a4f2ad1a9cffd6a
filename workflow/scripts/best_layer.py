"""Snakemake adapter: compare a model's layers, write the best-layer map (rule best_layer)."""

from brainllm.encoding import best_layer
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    best_layer(
        dict(zip(snakemake.params.layers, snakemake.input.scores)),
        snakemake.input.mask,
        snakemake.output.best_map,
        snakemake.output.layers,
    )
