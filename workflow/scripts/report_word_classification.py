"""Snakemake adapter: word-classification figure and the searchable vocabulary tables (rule report_word_classification)."""

from brainllm.io import rule_logging
from brainllm.report import plot_word_classification, vocabulary_html

with rule_logging(snakemake.log[0]):
    out = snakemake.output
    plot_word_classification(snakemake.input.summaries, snakemake.input.words, out.png, out.svg, out.tsv, dpi=snakemake.params.dpi)
    for table, html in zip(snakemake.input.vocabularies, out.tables):
        vocabulary_html(table, html)
