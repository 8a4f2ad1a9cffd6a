"""Snakemake adapter: the decoding vocabulary — dataset words, a general word list, word files (rule decoding_vocabulary)."""

from brainllm.io import rule_logging
from brainllm.word_decoding import WordDecodingSettings, build_vocabulary, write_vocabulary

with rule_logging(snakemake.log[0]) as log:
    vocabulary = build_vocabulary(dict(zip(snakemake.params.stories, snakemake.input.words)), WordDecodingSettings.from_config(snakemake.params.settings))
    write_vocabulary(vocabulary, snakemake.output[0])
    log.info("%d vocabulary words: %s", len(vocabulary), vocabulary["source"].value_counts().to_dict())
