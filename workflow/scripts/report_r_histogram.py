"""Snakemake adapter: voxel r histogram of one subject and model (rule report_r_histogram)."""

from brainllm.io import rule_logging
from brainllm.report import plot_r_histogram

with rule_logging(snakemake.log[0]):
    truth = None
    if "truth" in snakemake.input.keys():
        truth = {
            "json": snakemake.input.truth,
            "dataset_mask": snakemake.input.dataset_mask,
            "analysis_mask": snakemake.input.analysis_mask,
        }
    plot_r_histogram(
        snakemake.input.layers,
        snakemake.input.scores,
        snakemake.input.summaries,
        snakemake.output.png,
        snakemake.output.svg,
        snakemake.output.tsv,
        ground_truth=truth,
        bins=snakemake.params.bins,
        dpi=snakemake.params.dpi,
        predictions=snakemake.input.get("predictions", ()),
        responses_h5=snakemake.input.get("responses"),
        test_stories=snakemake.params.test_stories,
        significance=snakemake.params.significance,
    )
