"""Snakemake adapter: the shared contrastive encoder figure of every model (rule report_group_shared_encoder)."""

from brainllm.group import plot_shared_encoder
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    out = snakemake.output
    plot_shared_encoder(snakemake.input.tables, out.png, out.svg, out.tsv, dpi=snakemake.params.dpi)
