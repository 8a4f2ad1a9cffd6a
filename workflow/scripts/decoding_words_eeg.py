"""Snakemake adapter: whole-vocabulary word classification from one subject's EEG (rule decoding_words_eeg)."""

from brainllm.eeg import EegSettings, run_eeg_word_decoding
from brainllm.io import rule_logging
from brainllm.word_decoding import WordDecodingSettings

with rule_logging(snakemake.log[0]):
    params = snakemake.params
    run_eeg_word_decoding(
        snakemake.input.eeg,
        dict(zip(params.stories, snakemake.input.words)),
        snakemake.input.vocabulary,
        snakemake.input.vocabulary_manifest,
        snakemake.input.summary,
        params.train_stories,
        params.test_stories,
        EegSettings.from_config(params.settings),
        WordDecodingSettings.from_config(params.words),
        dict(snakemake.output.items()),
        train_entries=dict(zip(params.train_stories, snakemake.input.train_entries)),
    )
