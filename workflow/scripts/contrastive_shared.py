"""Snakemake adapter: the contrastive model shared across subjects of one model (rule contrastive_shared)."""

import torch

from brainllm.contrastive import discard_checkpoint
from brainllm.contrastive_settings import shared_encoder_settings
from brainllm.contrastive_shared import run_shared_encoder
from brainllm.io import rule_logging

torch.set_num_threads(snakemake.threads)

with rule_logging(snakemake.log[0]):
    params = snakemake.params
    runs = [tuple(run) for run in params.single_runs]
    run_shared_encoder(
        dict(zip(params.subjects, snakemake.input.features)),
        dict(zip(params.subjects, snakemake.input.responses)),
        model_name=snakemake.wildcards.model,
        train_stories=params.train_stories,
        test_stories=params.test_stories,
        shared=shared_encoder_settings(params.section, params.settings, params.subjects),
        single_runs=dict(zip(runs, zip(snakemake.input.single_configs, snakemake.input.single_weights))),
        table_tsv=snakemake.output.table,
        summary_json=snakemake.output.summary,
        weights_safetensors=snakemake.output.weights,
        curves_tsv=snakemake.output.curves,
        checkpoint_dir=params.checkpoint_dir,
    )
    if not params.keep_checkpoints:
        discard_checkpoint(params.checkpoint_dir)
