"""Snakemake adapter: the subjects-side-by-side figure of every model (rule report_group_subjects)."""

from brainllm.group import plot_subjects
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    out = snakemake.output
    plot_subjects(snakemake.input.layers, snakemake.input.rois, out.png, out.svg, out.tsv, dpi=snakemake.params.dpi)
