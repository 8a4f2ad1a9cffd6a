"""Rule visual_layers: per-ROI layer table and curves of a (subject, vision model)."""

from brainllm.io import rule_logging
from brainllm.visual_report import write_layers

with rule_logging(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    out = snakemake.output  # noqa: F821
    write_layers(snakemake.input.summaries, snakemake.params.model, out.table, out.png, out.svg, dpi=snakemake.params.dpi)  # noqa: F821
