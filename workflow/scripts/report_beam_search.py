"""Snakemake adapter: the beam-search scores of every subject as one table (rule report_beam_search)."""

from brainllm.generation_report import beam_search_table
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    beam_search_table(snakemake.input.scores, snakemake.output[0])
