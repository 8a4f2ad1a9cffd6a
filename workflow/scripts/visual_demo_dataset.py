"""Rule visual_demo_dataset: generate the embedded image-stimulus demo into params.out_dir."""

from threadpoolctl import threadpool_limits

from brainllm.demo_visual import generate_visual_demo
from brainllm.io import rule_logging

with rule_logging(snakemake.log[0]), threadpool_limits(snakemake.threads):  # noqa: F821 (injected by Snakemake)
    generate_visual_demo(snakemake.params.out_dir, snakemake.params.seed)  # noqa: F821
