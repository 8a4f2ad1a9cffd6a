"""Rule visual_reconstruction: pixel-space reconstruction of the test images, scores, controls and figure."""

from threadpoolctl import threadpool_limits

from brainllm.io import rule_logging
from brainllm.visual_reconstruction import run_linear

with rule_logging(snakemake.log[0]), threadpool_limits(snakemake.threads):  # noqa: F821 (injected by Snakemake)
    import torch

    torch.set_num_threads(snakemake.threads)  # noqa: F821
    inp, out, params = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
    run_linear(inp.responses, inp.mask, params.dataset, params.visual, params.encoding, snakemake.wildcards.subject,  # noqa: F821
               out.summary, out.images, out.reconstructions, out.png, out.svg, dpi=params.dpi)
