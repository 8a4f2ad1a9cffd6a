"""Rule visual_features: every layer of a vision model over the stimulus images (feature store entry + manifest)."""

from threadpoolctl import threadpool_limits

from brainllm.io import rule_logging
from brainllm.visual import VisualSettings, stimulus_names

with rule_logging(snakemake.log[0]) as log, threadpool_limits(snakemake.threads):  # noqa: F821 (injected by Snakemake)
    import torch

    from brainllm.vision_features import obtain_image_features

    torch.set_num_threads(snakemake.threads)  # noqa: F821
    params = snakemake.params  # noqa: F821
    settings = VisualSettings.from_config(params.visual)
    names, paths = stimulus_names(params.dataset, settings, params.dataset["subjects"])
    obtain_image_features(params.store, params.model, paths, names, snakemake.output[0], image_size=settings.image_size,  # noqa: F821
                          pooling=params.model.get("pooling", "mean"), log=log)
