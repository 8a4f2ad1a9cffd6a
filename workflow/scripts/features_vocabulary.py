"""Snakemake adapter: the vocabulary's feature-store entry (each word read alone by the model) and its manifest (rule features_vocabulary)."""

import torch

from brainllm.io import rule_logging
from brainllm.word_decoding import store_vocabulary

torch.set_num_threads(snakemake.threads)
with rule_logging(snakemake.log[0]) as log:
    store_vocabulary(snakemake.wildcards.model, snakemake.params.model_cfg, snakemake.input.words, snakemake.params.store, snakemake.output[0], log=log)
