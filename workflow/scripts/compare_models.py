"""Snakemake adapter: every pair of models at their best layers, paired over test TRs (rule encoding_compare_models)."""

from brainllm.inference import compare_models
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    models, layers = snakemake.params.models, snakemake.params.layers
    paths = iter(snakemake.input.predictions)
    predictions = {model: {layer: next(paths) for layer in layers[model]} for model in models}
    compare_models(
        dict(zip(models, snakemake.input.layers)),
        predictions,
        snakemake.input.responses,
        snakemake.params.test_stories,
        snakemake.params.comparison,
        snakemake.output[0],
    )
