"""Snakemake adapter: MNE preprocessing of one subject's EEG (rule preprocess_eeg)."""

from brainllm.eeg import EegSettings, preprocess_subject
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    preprocess_subject(snakemake.input[0], EegSettings.from_config(snakemake.params.settings, snakemake.params.dataset), snakemake.output[0])
