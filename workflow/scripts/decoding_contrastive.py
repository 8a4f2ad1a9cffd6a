"""Snakemake adapter: identification and word classification through a frozen contrastive run (rule decoding_contrastive)."""

from brainllm.decoding import IdentificationSettings, contrastive_decoding
from brainllm.io import rule_logging
from brainllm.word_decoding import WordDecodingSettings

with rule_logging(snakemake.log[0]):
    inputs, out = snakemake.input, snakemake.output
    contrastive_decoding(
        config_json=inputs.config,
        weights=inputs.weights,
        features_h5=inputs.features,
        responses_h5=inputs.responses,
        words_tsvs=dict(zip(snakemake.params.stories, inputs.words)),
        vocabulary_tsv=inputs.vocabulary,
        vocabulary_manifest=inputs.vocabulary_manifest,
        train_entries=dict(zip(snakemake.params.train_stories, inputs.train_entries)),
        identification=IdentificationSettings.from_config(snakemake.params.identification),
        words=WordDecodingSettings.from_config(snakemake.params.words),
        out={"identification": out.contrastive_identification_tsv, "words": out.words_tsv,
             "vocabulary": out.vocabulary_tsv, "summary": out.words_json},
    )
