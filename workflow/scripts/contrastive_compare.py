"""Snakemake adapter: held-out encoding r of the base vs the brain-tuned model (rule contrastive_compare)."""

from brainllm.inference import compare_base_tuned
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    layers = snakemake.params.layers
    compare_base_tuned(
        dict(zip(layers, snakemake.input.base)),
        dict(zip(layers, snakemake.input.tuned)),
        snakemake.output[0],
        dict(zip(layers, snakemake.input.base_predictions)),
        dict(zip(layers, snakemake.input.tuned_predictions)),
        snakemake.input.responses,
        snakemake.params.test_stories,
        snakemake.params.comparison,
    )
