"""Snakemake adapter: the inter-subject correlation of the responses (rule group_isc)."""

from threadpoolctl import threadpool_limits

from brainllm.group import IscSettings, inter_subject_correlation, planted_voxels
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]), threadpool_limits(snakemake.threads):
    inputs, subjects = snakemake.input, snakemake.params.subjects
    atlases = list(inputs.get("atlases", []))
    truth = None
    if inputs.get("truth"):
        truth = {s: planted_voxels(inputs.truth, s, d, m) for s, d, m in zip(subjects, inputs.dataset_masks, inputs.masks)}
    inter_subject_correlation(
        subjects,
        inputs.responses,
        inputs.masks,
        snakemake.params.stories,
        IscSettings.from_config(snakemake.params.settings, snakemake.params.seed),
        snakemake.output,
        atlases=list(zip(atlases[0::2], atlases[1::2])) or None,
        truth=truth,
    )
