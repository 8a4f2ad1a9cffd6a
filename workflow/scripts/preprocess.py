"""Snakemake adapter: cleaned responses.h5 and mask of one subject (rule preprocess)."""

from brainllm.io import rule_logging
from brainllm.preprocess import preprocess_subject

with rule_logging(snakemake.log[0]):
    preprocess_subject(
        snakemake.input.responses,
        snakemake.input.mask,
        snakemake.output.responses,
        snakemake.output.mask,
        snakemake.params.preprocess,
        trim_start=snakemake.params.trim_start,
        trim_end=snakemake.params.trim_end,
    )
