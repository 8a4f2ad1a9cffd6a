"""Snakemake adapter: decoding of annotated segments for one subject (rule decoding_labels)."""

from threadpoolctl import threadpool_limits

from brainllm.io import rule_logging
from brainllm.label_decoding import LabelSettings, decode_labels

with rule_logging(snakemake.log[0]), threadpool_limits(snakemake.threads):
    out = snakemake.output
    decode_labels(
        snakemake.input.responses,
        snakemake.params.stories,
        LabelSettings.from_config(snakemake.params.settings),
        {"scores": out.labels, "classes": out.labels_classes, "confusion": out.labels_confusion, "predictions": out.labels_predictions},
    )
