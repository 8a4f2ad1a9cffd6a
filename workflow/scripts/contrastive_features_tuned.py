"""Snakemake adapter: one story's hidden states of a brain-tuned model into the feature store (rule features_tuned)."""

import torch

from brainllm.features import extract_story
from brainllm.io import rule_logging

torch.set_num_threads(snakemake.threads)

with rule_logging(snakemake.log[0]) as log:
    extract_story(snakemake.params.model_cfg, snakemake.input.words, snakemake.output[0], log=log)
