"""Snakemake adapter: whole-vocabulary word classification by a ridge decoder from one subject's fMRI responses (rule decoding_words_ridge)."""

from threadpoolctl import threadpool_limits

from brainllm.encoding import alpha_grid
from brainllm.io import rule_logging
from brainllm.word_decoding import WordDecodingSettings, run_fmri_word_decoding

with rule_logging(snakemake.log[0]), threadpool_limits(snakemake.threads):
    params = snakemake.params
    run_fmri_word_decoding(
        snakemake.input.responses,
        dict(zip(params.stories, snakemake.input.words)),
        snakemake.input.vocabulary,
        snakemake.input.vocabulary_manifest,
        snakemake.input.layers,
        dict(zip(params.layers, snakemake.input.scores)),
        params.train_stories,
        params.test_stories,
        params.delays,
        alpha_grid(**params.alphas),
        float(params.ridge.get("voxel_fraction", 0.1)),
        int(params.block_trs),
        WordDecodingSettings.from_config(params.words),
        dict(snakemake.output.items()),
        train_entries=dict(zip(params.train_stories, snakemake.input.train_entries)),
    )
