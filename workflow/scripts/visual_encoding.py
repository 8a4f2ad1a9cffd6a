"""Rule visual_encoding: one vision layer's encoding model of a subject."""

from threadpoolctl import threadpool_limits

from brainllm.io import rule_logging
from brainllm.visual_encoding import run_visual_encoding

with rule_logging(snakemake.log[0]), threadpool_limits(snakemake.threads):  # noqa: F821 (injected by Snakemake)
    inp, out, wildcards = snakemake.input, snakemake.output, snakemake.wildcards  # noqa: F821
    run_visual_encoding(inp.responses, inp.features, inp.mask, int(wildcards.layer), snakemake.params.settings,  # noqa: F821
                        snakemake.params.dataset, wildcards.subject, out.scores, out.summary, out.r_map)  # noqa: F821
