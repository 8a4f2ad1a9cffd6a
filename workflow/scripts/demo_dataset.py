"""Rule demo_dataset: generate the embedded demo dataset into params.out_dir."""

from brainllm.demo import generate_demo
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    generate_demo(snakemake.params.out_dir, snakemake.params.seed)  # noqa: F821
