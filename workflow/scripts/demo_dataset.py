"""Rule demo_dataset: generate the embedded demo dataset into params.out_dir."""

import torch
from threadpoolctl import threadpool_limits

from brainllm.demo import generate_demo
from brainllm.io import rule_logging

torch.set_num_threads(snakemake.threads)  # noqa: F821 (injected by Snakemake)
with rule_logging(snakemake.log[0]), threadpool_limits(snakemake.threads):  # noqa: F821 (injected by Snakemake)
    generate_demo(snakemake.params.out_dir, snakemake.params.seed)  # noqa: F821
