"""Snakemake adapter: metrics table per subject, model and layer (rule report_metrics)."""

from brainllm.io import rule_logging
from brainllm.report import metrics_summary

with rule_logging(snakemake.log[0]):
    inputs = dict(snakemake.input.items())
    truth = {
        subject: {
            "json": inputs[f"truth_{subject}"],
            "dataset_mask": inputs[f"dataset_mask_{subject}"],
            "analysis_mask": inputs[f"analysis_mask_{subject}"],
        }
        for subject in snakemake.params.subjects
        if f"truth_{subject}" in inputs
    }
    metrics_summary(
        snakemake.input.summaries,
        snakemake.output.tsv,
        snakemake.output.html,
        scores_tsvs=snakemake.input.scores if truth else (),
        ground_truth=truth or None,
        trimming_tsvs=dict(zip(snakemake.params.subjects, snakemake.input.trimming)),
        invariance=snakemake.params.invariance,
        identification_tsvs=snakemake.input.get("identification", ()),
        word_jsons=snakemake.input.get("words", ()),
        contrastive_identification_tsvs=snakemake.input.get("contrastive_identification", ()),
        label_tsvs=snakemake.input.get("labels", ()),
    )
