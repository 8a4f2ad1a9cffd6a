"""Snakemake adapter: a comparison across subjects (rules encoding_group, contrastive_compare_group)."""

from brainllm.inference import group_comparison
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    kind = "layers" if snakemake.rule == "encoding_group" else "base_vs_tuned"
    group_comparison(dict(zip(snakemake.params.subjects, snakemake.input.layers)), kind, snakemake.output[0])
