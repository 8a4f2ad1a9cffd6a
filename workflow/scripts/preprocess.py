"""Snakemake adapter: cleaned responses.h5 and mask of one subject, trimming checks (rule preprocess)."""

from brainllm.io import rule_logging, write_tsv
from brainllm.preprocess import preprocess_subject, trim_checks

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
    words = dict(zip(snakemake.params.stories, snakemake.input.words))
    write_tsv(snakemake.output.trimming, trim_checks(snakemake.output.responses, words))
