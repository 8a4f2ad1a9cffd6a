"""Snakemake adapter: words.tsv of one story (rule ingest_words)."""

from brainllm.ingest import ingest_words
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    ingest_words(snakemake.params.dataset, snakemake.wildcards.story, snakemake.output[0], eeg=snakemake.params.get("eeg"))
