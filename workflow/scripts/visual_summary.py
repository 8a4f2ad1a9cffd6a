"""Rule visual_summary: one row per (subject, vision model) with the headline figures."""

from brainllm.io import rule_logging
from brainllm.visual_report import write_summary

with rule_logging(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    inp = snakemake.input  # noqa: F821
    write_summary(inp.layers, inp.identification, inp.reconstruction, snakemake.output[0])  # noqa: F821
