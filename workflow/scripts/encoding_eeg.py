"""Snakemake adapter: word-level and TRF encoding of one subject's EEG with one model (rule encoding_eeg)."""

import json

from brainllm.eeg import EegSettings, run_eeg_encoding
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    stories = snakemake.params.stories
    truth = None
    if "truth" in snakemake.input.keys():
        truth = json.loads(open(snakemake.input.truth).read()).get("eeg")
    run_eeg_encoding(
        snakemake.input.eeg,
        dict(zip(stories, snakemake.input.manifests)),
        dict(zip(stories, snakemake.input.words)),
        snakemake.params.layers,
        snakemake.params.train_stories,
        snakemake.params.test_stories,
        EegSettings.from_config(snakemake.params.settings, snakemake.params.dataset),
        dict(snakemake.output.items()),
        ground_truth=truth,
    )
