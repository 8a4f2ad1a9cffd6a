"""Snakemake adapter: fit and score one encoding model (rules encoding, encoding_banded)."""

from threadpoolctl import threadpool_limits

from brainllm.encoding import run_encoding
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]), threadpool_limits(snakemake.threads):
    run_encoding(
        snakemake.input.aligned,
        snakemake.input.responses,
        snakemake.input.mask,
        snakemake.params.layers,
        snakemake.params.train_stories,
        snakemake.params.test_stories,
        snakemake.params.settings,
        snakemake.output.scores,
        snakemake.output.r_map,
        snakemake.output.rois,
        snakemake.output.summary,
        weights_path=snakemake.output.get("weights"),
        atlas_nii=snakemake.input.get("atlas_nii"),
        atlas_tsv=snakemake.input.get("atlas_tsv"),
        ground_truth=snakemake.input.get("truth"),
        dataset_mask=snakemake.input.get("dataset_mask"),
        subject=snakemake.wildcards.subject,
        model=snakemake.wildcards.model,
        predictions_h5=snakemake.output.get("predictions"),
    )
