"""Snakemake adapter: segment identification of every layer of a (subject, model) (rule decoding_identification)."""

from brainllm.decoding import IdentificationSettings, identification_table
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    layers = snakemake.params.layers
    identification_table(
        dict(zip(layers, snakemake.input.predictions)),
        dict(zip(layers, snakemake.input.scores)),
        snakemake.input.responses,
        snakemake.params.test_stories,
        IdentificationSettings.from_config(snakemake.params.settings),
        snakemake.output.tsv,
    )
