"""Snakemake adapter: models ranked by accuracy with per-ROI means (rule report_roi_ranking)."""

from brainllm.io import rule_logging
from brainllm.report import plot_roi_ranking

with rule_logging(snakemake.log[0]):
    plot_roi_ranking(
        snakemake.input.layers,
        snakemake.input.rois,
        snakemake.output.png,
        snakemake.output.svg,
        snakemake.output.tsv,
        dpi=snakemake.params.dpi,
    )
