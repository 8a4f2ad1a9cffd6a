"""Rule visual_identification: ridge and contrastive decoders to the image embedding; identification scores and figure."""

from threadpoolctl import threadpool_limits

from brainllm.io import rule_logging
from brainllm.visual_decoding import run_identification
from brainllm.visual_report import plot_identification

with rule_logging(snakemake.log[0]), threadpool_limits(snakemake.threads):  # noqa: F821 (injected by Snakemake)
    import torch

    torch.set_num_threads(snakemake.threads)  # noqa: F821
    inp, out, params = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
    run_identification(inp.responses, inp.features, params.settings, params.encoding, out.summary, out.images,
                       out.similarity, out.weights, out.history)
    plot_identification(out.summary, out.similarity, out.png, out.svg, dpi=params.dpi)
