"""Snakemake adapter: responses.h5, mask and mean image of one subject (rule ingest)."""

from brainllm.ingest import ingest_subject
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    ingest_subject(
        snakemake.params.dataset,
        snakemake.wildcards.subject,
        snakemake.params.confounds,
        out_responses=snakemake.output.responses,
        out_mask=snakemake.output.mask,
        out_mean=snakemake.output.mean,
    )
