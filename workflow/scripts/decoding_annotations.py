"""Snakemake adapter: a subject's annotation table from its events files or the emotion lexicons (rule decoding_annotations)."""

from importlib.metadata import version

from brainllm.annotations import events_annotations, lexicon_annotations, write_annotations
from brainllm.io import rule_logging
from brainllm.label_decoding import label_targets_of

with rule_logging(snakemake.log[0]):
    settings, stories, subject = snakemake.params.settings, snakemake.params.stories, snakemake.wildcards.subject
    targets = label_targets_of(settings)
    if settings["source"] == "events":
        table, files = events_annotations(snakemake.params.dataset, subject, stories, list(targets))
        sidecar = {"Description": "Annotations read from the events files' target columns (decoding.labels.source: events)",
                   "Sources": files, "targets": targets}
    else:
        table = lexicon_annotations(dict(zip(stories, snakemake.input)), float(settings["segment_s"]))
        sidecar = {"Description": "Labels derived from the words heard through emotion lexicons (decoding.labels.source: lexicon)",
                   "Lexicons": {"NRC Emotion Lexicon (nrclex)": version("nrclex"), "VADER (vaderSentiment)": version("vaderSentiment")},
                   "segment_s": float(settings["segment_s"]), "targets": targets}
    write_annotations(table, snakemake.output.table, sidecar)
