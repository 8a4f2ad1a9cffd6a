"""Snakemake adapter: the cross-subject transfer figure of every model (rule report_group_transfer)."""

from brainllm.group import plot_transfer
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    out = snakemake.output
    plot_transfer(snakemake.input.tables, out.png, out.svg, out.tsv, dpi=snakemake.params.dpi)
