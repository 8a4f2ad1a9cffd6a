"""Snakemake adapter: frozen-feature contrastive training of one (subject, model, layer) (rule contrastive)."""

import torch

from brainllm.contrastive import VocabularyInputs, discard_checkpoint, run_contrastive
from brainllm.io import rule_logging

torch.set_num_threads(snakemake.threads)
inputs, params = snakemake.input, snakemake.params
vocabulary = VocabularyInputs(
    words_tsvs=dict(zip(params.train_stories, inputs.words)),
    vocabulary_tsv=inputs.vocabulary,
    vocabulary_manifest=inputs.vocabulary_manifest,
    train_entries=dict(zip(params.train_stories, inputs.train_entries)),
    embedding=params.embedding,
) if "vocabulary" in inputs.keys() else None

with rule_logging(snakemake.log[0]):
    run_contrastive(
        snakemake.input.features,
        snakemake.input.responses,
        subject=snakemake.wildcards.subject,
        model_name=snakemake.wildcards.model,
        layer=int(snakemake.wildcards.layer),
        train_stories=snakemake.params.train_stories,
        test_stories=snakemake.params.test_stories,
        contrastive_cfg=snakemake.params.settings,
        curves_tsv=snakemake.output.curves,
        config_json=snakemake.output.config,
        weights_safetensors=snakemake.output.weights,
        retrieval_json=snakemake.output.retrieval,
        checkpoint_dir=snakemake.params.checkpoint_dir,
        scores_tsv=inputs.get("scores"),
        vocabulary=vocabulary,
    )
    if not snakemake.params.keep_checkpoints:
        discard_checkpoint(snakemake.params.checkpoint_dir)
