"""Snakemake adapter: compare a model's layers, write the best-layer map (rule best_layer)."""

from brainllm.inference import best_layer
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    layers = snakemake.params.layers
    predictions = snakemake.input.get("predictions")
    best_layer(
        dict(zip(layers, snakemake.input.scores)),
        snakemake.input.mask,
        snakemake.output.best_map,
        snakemake.output.layers,
        predictions=dict(zip(layers, predictions)) if predictions else None,
        responses_h5=snakemake.input.get("responses"),
        test_stories=snakemake.params.test_stories,
        comparison=snakemake.params.comparison,
    )
