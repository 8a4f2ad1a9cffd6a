"""Rule visual_trials: one response per image (trial GLM or window) of a subject's runs."""

from threadpoolctl import threadpool_limits

from brainllm.io import rule_logging
from brainllm.visual import run_trials

with rule_logging(snakemake.log[0]), threadpool_limits(snakemake.threads):  # noqa: F821 (injected by Snakemake)
    out = snakemake.output  # noqa: F821
    run_trials(snakemake.params.dataset, snakemake.wildcards.subject, snakemake.params.visual, snakemake.params.preprocess,  # noqa: F821
               out.responses, out.mask, out.trials)
