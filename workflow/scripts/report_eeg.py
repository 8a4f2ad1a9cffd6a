"""Snakemake adapter: EEG encoding figure of one model over subjects (rule report_eeg)."""

from brainllm.eeg_report import plot_eeg
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    plot_eeg(
        snakemake.params.subjects,
        snakemake.input.summaries,
        snakemake.input.word_level,
        snakemake.input.trf,
        snakemake.output.png,
        snakemake.output.svg,
        snakemake.output.tsv,
        dpi=snakemake.params.dpi,
    )
