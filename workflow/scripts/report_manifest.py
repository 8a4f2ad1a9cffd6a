"""Snakemake adapter: list of every registered report file (rule report)."""

from brainllm.io import rule_logging
from brainllm.report import write_manifest

with rule_logging(snakemake.log[0]):
    write_manifest(snakemake.input, snakemake.output[0])
