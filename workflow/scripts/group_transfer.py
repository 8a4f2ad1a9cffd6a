"""Snakemake adapter: cross-subject encoding transfer of one model (rule group_transfer)."""

from threadpoolctl import threadpool_limits

from brainllm.group import subject_inputs, cross_subject_transfer
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]), threadpool_limits(snakemake.threads):
    cross_subject_transfer(
        subject_inputs(snakemake.params.subjects, snakemake.params.layers, snakemake.input),
        snakemake.params.train_stories,
        snakemake.params.test_stories,
        snakemake.params.settings,
        snakemake.output[0],
        snakemake.params.voxel_fraction,
    )
