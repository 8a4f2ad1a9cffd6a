"""Snakemake adapter: dataset_description.json and the maps' JSON sidecars (rule bids_derivative)."""

from brainllm.derivatives import write_derivative_metadata
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):
    write_derivative_metadata(snakemake.params.config, snakemake.params.results, snakemake.params.maps,
                              snakemake.output.description, snakemake.output.bidsignore)
