"""Rule visual_summary: one row per (subject, vision model) with the headline figures."""

from brainllm.io import rule_logging
from brainllm.visual_report import write_roi_ranking, write_summary

with rule_logging(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    inp, out = snakemake.input, snakemake.output  # noqa: F821
    write_summary(inp.layers, inp.identification, inp.reconstruction, out.summary)
    write_roi_ranking(inp.layers, out.png, out.svg, out.tsv, dpi=snakemake.params.dpi)  # noqa: F821
