"""Snakemake adapter: train the demo's word-level generator on the training stories (rule story_lm)."""

import os

import torch

from brainllm.io import rule_logging
from brainllm.story_lm import StoryLmSettings, train_story_lm

torch.set_num_threads(snakemake.threads)

with rule_logging(snakemake.log[0]):
    train_story_lm(
        dict(zip(snakemake.params.stories, snakemake.input.words)),
        os.path.dirname(snakemake.output.weights),
        StoryLmSettings.from_config(snakemake.params.settings),
    )
