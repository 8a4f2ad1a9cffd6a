"""Snakemake adapter: one story's entry in the feature store, reused or extracted, and its manifest (rules features, features_tuned)."""

import torch

from brainllm.features import store_story
from brainllm.io import rule_logging

torch.set_num_threads(snakemake.threads)
with rule_logging(snakemake.log[0]) as log:
    store_story(
        snakemake.wildcards.model,
        snakemake.params.model_cfg,
        snakemake.wildcards.story,
        snakemake.input.words,
        snakemake.params.store,
        snakemake.output[0],
        log=log,
    )
