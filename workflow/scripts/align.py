"""Snakemake adapter: feature-store entries → the subject's TR grid (rule align)."""

from brainllm.align import align_subject
from brainllm.io import rule_logging

stories = snakemake.params.stories
with rule_logging(snakemake.log[0]):
    align_subject(
        snakemake.input.responses,
        dict(zip(stories, snakemake.input.entries)),
        dict(zip(stories, snakemake.input.words)),
        snakemake.params.layers,
        snakemake.output[0],
        snakemake.params.settings,
    )
