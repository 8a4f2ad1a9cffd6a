"""Snakemake adapter: subject × layer and subject × ROI tables of one model, and how alike the subjects' maps are (rule group_subjects)."""

from brainllm.group import map_similarity, subject_tables
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    subjects, layers = snakemake.params.subjects, snakemake.params.layers

    def per_subject(paths):
        paths = list(paths)
        return {subject: dict(zip(layers, paths[i * len(layers) : (i + 1) * len(layers)])) for i, subject in enumerate(subjects)}

    layer_table, roi_table = subject_tables(
        dict(zip(subjects, snakemake.input.layers)), per_subject(snakemake.input.rois), snakemake.output.layers, snakemake.output.rois,
        snakemake.output.differences,
    )
    map_similarity(layer_table, per_subject(snakemake.input.maps), snakemake.input.masks, roi_table, snakemake.output.similarity)
