"""Snakemake adapter: brain-prompted generation from one subject's EEG (rule generation_brain_prompt_eeg)."""

import torch

from brainllm.eeg import EegSettings
from brainllm.generation import GenerationSettings, run_eeg_brain_prompt
from brainllm.io import rule_logging

torch.set_num_threads(snakemake.threads)

with rule_logging(snakemake.log[0]):
    run_eeg_brain_prompt(
        snakemake.input.eeg,
        dict(zip(snakemake.params.stories, snakemake.input.words)),
        llm_cfg=snakemake.params.llm,
        subject=snakemake.wildcards.subject,
        train_stories=snakemake.params.train_stories,
        test_stories=snakemake.params.test_stories,
        settings=GenerationSettings.from_config(snakemake.params.settings),
        eeg_settings=EegSettings.from_config(snakemake.params.eeg),
        out=snakemake.output,
    )
