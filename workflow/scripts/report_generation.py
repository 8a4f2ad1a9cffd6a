"""Snakemake adapter: the brain-prompted generation figure and tables of every subject (rule report_generation)."""

from brainllm.generation_report import plot_brain_prompt
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    plot_brain_prompt(snakemake.input.scores, snakemake.input.comparisons, snakemake.input.texts, snakemake.output, dpi=snakemake.params.dpi,
                      modalities=snakemake.params.modalities)
