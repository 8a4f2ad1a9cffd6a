"""Snakemake adapter: every EEG recording of one subject's stories into raw.h5 (rule ingest_eeg)."""

from brainllm.eeg import EegSettings, ingest_subject
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    settings = EegSettings.from_config(snakemake.params.settings, snakemake.params.dataset)
    ingest_subject(
        settings.root,
        snakemake.wildcards.subject,
        snakemake.params.stories,
        dict(zip(snakemake.params.stories, snakemake.input.words)),
        settings,
        snakemake.output[0],
        dataset=snakemake.params.dataset,
    )
