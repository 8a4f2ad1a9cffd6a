"""Snakemake adapter: encoding-guided beam search of one subject (rule generation_beam_search)."""

import torch

from brainllm.beam_search import BeamSearchSettings, run_beam_search
from brainllm.io import rule_logging

torch.set_num_threads(snakemake.threads)

with rule_logging(snakemake.log[0]):
    run_beam_search(
        snakemake.input.responses,
        dict(zip(snakemake.params.stories, snakemake.input.words)),
        snakemake.input.aligned,
        snakemake.input.layers,
        dict(zip(snakemake.params.train_stories, snakemake.input.manifests)),
        model_cfg=snakemake.params.model_cfg,
        llm_cfg=snakemake.params.llm,
        encoding=snakemake.params.encoding,
        train_stories=snakemake.params.train_stories,
        test_stories=snakemake.params.test_stories,
        settings=BeamSearchSettings.from_config(snakemake.params.settings),
        subject=snakemake.wildcards.subject,
        out=snakemake.output,
    )
