"""Snakemake adapter: the inter-subject correlation figure (rule report_group_isc)."""

from brainllm.group import plot_isc
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    out = snakemake.output
    plot_isc(snakemake.input.voxels, snakemake.input.rois, out.png, out.svg, out.tsv, dpi=snakemake.params.dpi)
