"""Snakemake adapter: ROI atlas and label table of one subject (rule ingest_atlas)."""

from brainllm.ingest import ingest_atlas
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    ingest_atlas(
        snakemake.params.dataset,
        snakemake.wildcards.subject,
        snakemake.input.mask,
        out_atlas=snakemake.output.atlas,
        out_labels=snakemake.output.labels,
    )
