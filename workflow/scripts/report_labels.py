"""Snakemake adapter: confusion matrices and continuous-target scatter of every subject (rule report_labels)."""

from brainllm.io import rule_logging
from brainllm.report import plot_labels

with rule_logging(snakemake.log[0]):
    out = snakemake.output
    plot_labels(snakemake.input.scores, snakemake.input.confusion, snakemake.input.predictions, out.png, out.svg, out.tsv, dpi=snakemake.params.dpi)
