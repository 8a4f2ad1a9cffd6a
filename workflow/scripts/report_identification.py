"""Snakemake adapter: identification curves of every (subject, model) (rule report_identification)."""

from brainllm.io import rule_logging
from brainllm.report import plot_identification

with rule_logging(snakemake.log[0]):
    out = snakemake.output
    plot_identification(snakemake.input.identification, snakemake.input.layers, out.png, out.svg, out.tsv, dpi=snakemake.params.dpi,
                        contrastive_tsvs=snakemake.input.contrastive)
