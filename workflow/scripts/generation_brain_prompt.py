"""Snakemake adapter: brain-prompted generation of one subject, from fMRI (rule generation_brain_prompt) or EEG
(rule generation_brain_prompt_eeg, whose params carry the eeg settings)."""

import torch

from brainllm.eeg import EegSettings
from brainllm.generation import GenerationSettings, run_brain_prompt
from brainllm.io import rule_logging

torch.set_num_threads(snakemake.threads)
eeg = getattr(snakemake.params, "eeg", None)

with rule_logging(snakemake.log[0]):
    run_brain_prompt(
        snakemake.input.eeg if eeg is not None else snakemake.input.responses,
        dict(zip(snakemake.params.stories, snakemake.input.words)),
        llm_cfg=snakemake.params.llm,
        subject=snakemake.wildcards.subject,
        train_stories=snakemake.params.train_stories,
        test_stories=snakemake.params.test_stories,
        settings=GenerationSettings.from_config(snakemake.params.settings),
        out=snakemake.output,
        eeg_settings=EegSettings.from_config(eeg) if eeg is not None else None,
    )
