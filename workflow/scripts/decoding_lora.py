"""Snakemake adapter: identification and word classification through a LoRA contrastive run (rule decoding_lora)."""

import os

import torch

from brainllm.decoding import IdentificationSettings, lora_decoding
from brainllm.io import rule_logging
from brainllm.word_decoding import WordDecodingSettings

torch.set_num_threads(snakemake.threads)
with rule_logging(snakemake.log[0]):
    inputs, out = snakemake.input, snakemake.output
    lora_decoding(
        config_json=inputs.config,
        towers=inputs.towers,
        adapter_dir=os.path.dirname(inputs.adapter),
        responses_h5=inputs.responses,
        words_tsvs=dict(zip(snakemake.params.stories, inputs.words)),
        vocabulary_tsv=inputs.vocabulary,
        identification=IdentificationSettings.from_config(snakemake.params.identification),
        words=WordDecodingSettings.from_config(snakemake.params.words),
        out={"identification": out.contrastive_identification_tsv, "words": out.words_tsv,
             "vocabulary": out.vocabulary_tsv, "summary": out.words_json},
    )
