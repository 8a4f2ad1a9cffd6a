"""Snakemake adapter: every story's entry of one model in the feature store, reused or extracted, and the manifests (rules features, features_tuned)."""

import torch

from brainllm.features import store_stories
from brainllm.io import rule_logging

torch.set_num_threads(snakemake.threads)
with rule_logging(snakemake.log[0]) as log:
    store_stories(
        snakemake.wildcards.model,
        snakemake.params.model_cfg,
        snakemake.params.stories,
        snakemake.input.words,
        snakemake.params.store,
        snakemake.output,
        log=log,
    )
