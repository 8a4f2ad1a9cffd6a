"""Snakemake adapter: subject × layer and subject × ROI tables of one model (rule group_subjects)."""

from brainllm.group import subject_tables
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    subjects, layers = snakemake.params.subjects, snakemake.params.layers
    rois = list(snakemake.input.rois)
    subject_tables(
        dict(zip(subjects, snakemake.input.layers)),
        {subject: dict(zip(layers, rois[i * len(layers) : (i + 1) * len(layers)])) for i, subject in enumerate(subjects)},
        snakemake.output.layers,
        snakemake.output.rois,
    )
