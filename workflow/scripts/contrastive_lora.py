"""Snakemake adapter: LoRA (BrainLLM) training of one (subject, model) (rule contrastive_lora)."""

import os

import torch

from brainllm.brainlora import run_contrastive_lora
from brainllm.contrastive import discard_checkpoint
from brainllm.io import rule_logging

torch.set_num_threads(snakemake.threads)

with rule_logging(snakemake.log[0]):
    run_contrastive_lora(
        snakemake.input.responses,
        dict(zip(snakemake.params.stories, snakemake.input.words)),
        model_cfg=snakemake.params.model_cfg,
        subject=snakemake.wildcards.subject,
        model_name=snakemake.wildcards.model,
        dataset_cfg=snakemake.params.dataset,
        contrastive_cfg=snakemake.params.settings,
        adapter_dir=os.path.dirname(snakemake.output.adapter_weights),
        towers_safetensors=snakemake.output.towers,
        curves_tsv=snakemake.output.curves,
        config_json=snakemake.output.config,
        retrieval_json=snakemake.output.retrieval,
        checkpoint_dir=snakemake.params.checkpoint_dir,
    )
    if not snakemake.params.keep_checkpoints:
        discard_checkpoint(snakemake.params.checkpoint_dir)
