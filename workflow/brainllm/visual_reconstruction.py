"""The reconstruction rules: fit on the training images, reconstruct the test images, score against controls.

Pixel-space (:func:`run_linear`) and generative (:func:`run_generative`) routes of
:mod:`brainllm.reconstruction`, scored with the field's table — pixel correlation (with
its permutation p), SSIM, two-way identification in pixel space and in each vision
model's feature spaces, CLIP-embedding distance — beside a chance row (reconstructions
shuffled across images). With a ground truth, the same decoder fitted on the noise-only
voxels is a second control (it must score at chance).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .io import atomic_path, write_json, write_tsv

log = logging.getLogger(__name__)


def stimulus_chunks(dataset: Mapping, visual: Mapping, names: Sequence[str]):
    """uint8 ``(n, h, w, 3)`` chunks of the named stimuli (``visual.image_size`` applied), in order."""
    from .images import image_chunks
    from .visual import VisualSettings

    settings = VisualSettings.from_config(visual)
    folder = Path(dataset["root"]) / settings.stimuli_dir
    return image_chunks([folder / name for name in names], settings.image_size)


def stimulus_images(dataset: Mapping, visual: Mapping, names: Sequence[str]) -> np.ndarray:
    """uint8 ``(n, h, w, 3)`` of the named stimuli (the test images: few)."""
    return np.concatenate(list(stimulus_chunks(dataset, visual, names)))


def stimulus_luminance(dataset: Mapping, visual: Mapping, names: Sequence[str], size: int) -> np.ndarray:
    """``(n, size, size)`` luminance in [0, 1] of the named stimuli, read a chunk at a time (the training images: many)."""
    from .images import downsample, grayscale

    return np.concatenate([downsample(grayscale(images), size) for images in stimulus_chunks(dataset, visual, names)])


def feature_functions(models: Mapping[str, Mapping]) -> tuple[list[tuple[str, Callable]], Callable | None]:
    """Two-way feature spaces (each vision model's middle and last layer, mean-pooled) and the first model's image embedding."""
    from .vision_features import extract_image_features, load_vision_model

    feature_fns, embed_fn = [], None
    for name, model_cfg in models.items():
        model, processor, info = load_vision_model(model_cfg)
        n_states = int(info["n_hidden_states"])
        pooling = model_cfg.get("pooling", "mean")
        last: dict = {}  # one forward pass per image set serves every layer and the embedding

        def extract(images, model=model, processor=processor, pooling=pooling, batch=int(model_cfg.get("batch_size", 32)), last=last):
            key = (images.shape, hash(images.tobytes()))
            if last.get("key") != key:
                last.update(key=key, value=extract_image_features(model, processor, images, batch, pooling))
            return last["value"]

        for layer in sorted({n_states // 2, n_states - 1}):
            feature_fns.append((f"{name}_layer{layer:02d}", lambda images, extract=extract, layer=layer: extract(images)[0][layer]))
        if embed_fn is None and info.get("embedding_space"):
            embed_fn = lambda images, extract=extract: extract(images)[1]  # noqa: E731
    return feature_fns, embed_fn


def _noise_voxels(dataset: Mapping, subject: str, mask_nii) -> np.ndarray | None:
    from .visual_encoding import truth_of_voxels

    truth = truth_of_voxels(dataset.get("ground_truth"), dataset, subject, mask_nii)
    return None if truth is None else ~truth["signal"]


def _write_reconstructions(path, names: Sequence[str], routes: Mapping[str, np.ndarray]) -> None:
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle["images"] = np.array(list(names), dtype=object).astype(h5py.string_dtype("utf-8"))
        for route, images in routes.items():
            handle[route] = np.asarray(images)


def run_linear(responses_h5, mask_nii, dataset: Mapping, visual: Mapping, encoding: Mapping, subject: str,
               out_json, out_images, out_h5, png, svg, dpi: int = 150) -> dict:
    """The ``visual_reconstruction`` rule (pixel-space route)."""
    from .encoding import alpha_grid
    from .images import downsample, grayscale
    from .reconstruction import fit_linear_reconstruction, reconstruction_scores
    from .visual import read_image_responses
    from .visual_report import plot_reconstructions

    settings = visual.get("reconstruction", {})
    size, n_perm = int(settings.get("size", 16)), int(settings.get("n_permutations", 1000))
    alphas = alpha_grid(**encoding.get("alphas", {}))
    backend = encoding.get("backend", "auto")
    data = read_image_responses(responses_h5)
    train_images = stimulus_luminance(dataset, visual, data.train_images, size)
    test_images = stimulus_images(dataset, visual, data.test_images)
    decoder = fit_linear_reconstruction(data.train, train_images, data.train_runs, size, alphas=alphas, backend=backend)
    reconstructed = decoder.predict(data.test)
    feature_fns, embed_fn = feature_functions(visual["models"])
    scores, per_image = reconstruction_scores(np.clip(reconstructed, 0.0, 1.0), test_images, feature_fns, embed_fn, n_permutations=n_perm, size=size)
    summary = {"subject": subject, "size": size, "n_train_images": len(data.train_images), "n_test_images": len(data.test_images),
               "scales": [list(s) for s in decoder.scales], "out_of_fold_pixel_corr": decoder.info["oof_pixel_corr"], "linear": scores}
    log.info("linear: pixel r %.3f (chance %.3f, p %.4f), SSIM %.3f, two-way %.3f", scores["pixel_corr"], scores["chance"]["pixel_corr"],
             scores["pixel_corr_p"], scores["ssim"], scores["two_way_pixels"])
    routes = {"linear": reconstructed.astype(np.float32), "stimuli": downsample(grayscale(test_images), size).astype(np.float32)}
    noise = _noise_voxels(dataset, subject, mask_nii)
    if noise is not None and noise.sum() >= 2:
        control = fit_linear_reconstruction(data.train[:, noise], train_images, data.train_runs, size, alphas=alphas, backend=backend)
        control_images = control.predict(data.test[:, noise])
        summary["noise_voxels_control"], _ = reconstruction_scores(np.clip(control_images, 0.0, 1.0), test_images, n_permutations=n_perm, size=size)
        summary["noise_voxels_control"]["n_voxels"] = int(noise.sum())
        routes["noise_voxels_control"] = control_images.astype(np.float32)
        log.info("control (%d noise-only voxels): pixel r %.3f, two-way %.3f", noise.sum(), summary["noise_voxels_control"]["pixel_corr"],
                 summary["noise_voxels_control"]["two_way_pixels"])
    per_image["image"] = data.test_images
    write_json(out_json, summary)
    write_tsv(out_images, per_image)
    _write_reconstructions(out_h5, data.test_images, routes)
    rows = [("linear", np.clip(reconstructed, 0, 1))] + ([("noise voxels", np.clip(routes["noise_voxels_control"], 0, 1))] if "noise_voxels_control" in routes else [])
    plot_reconstructions(routes["stimuli"], rows, data.test_images, png, svg, dpi)
    return summary


def run_generative(responses_h5, linear_h5, dataset: Mapping, visual: Mapping, encoding: Mapping, subject: str,
                   out_json, out_h5, png, svg, dpi: int = 150) -> dict:
    """The ``visual_generative`` rule: brain → the pipeline's image embedding → unCLIP, from the linear reconstruction's latent."""
    import h5py

    from .contrastive import pick_device
    from .encoding import alpha_grid
    from .reconstruction import (
        clip_embedding_function, clip_image_embeddings, fit_embedding_decoder, generate_from_embeddings, load_unclip_pipeline,
        reconstruction_scores,
    )
    from .visual import read_image_responses
    from .visual_report import plot_reconstructions

    settings = {"steps": 20, "guidance_scale": 1.0, "strength": 0.8, "device": "auto", "seed": 0, **visual["reconstruction"]["generative"]}
    device = pick_device(settings["device"], "visual.reconstruction.generative.device")
    pipe = load_unclip_pipeline(settings["pipeline"], device=str(device))
    data = read_image_responses(responses_h5)
    train_embeddings = np.concatenate([clip_image_embeddings(pipe, images) for images in stimulus_chunks(dataset, visual, data.train_images)])
    test_images = stimulus_images(dataset, visual, data.test_images)
    decoder = fit_embedding_decoder(data.train, train_embeddings, data.train_runs,
                                    alphas=alpha_grid(**encoding.get("alphas", {})), backend=encoding.get("backend", "auto"))
    embeddings = decoder.predict(data.test)
    with h5py.File(linear_h5, "r") as handle:
        linear = np.clip(handle["linear"][()], 0.0, 1.0)
    start = np.round(np.repeat(linear[..., None], 3, axis=-1) * 255).astype(np.uint8)
    generated = generate_from_embeddings(pipe, embeddings, init_images=start, strength=float(settings["strength"]), steps=int(settings["steps"]),
                                         guidance_scale=float(settings["guidance_scale"]), seed=int(settings["seed"]))
    size = int(visual["reconstruction"].get("size", 16))
    feature_fns, _ = feature_functions(visual["models"])
    scores, per_image = reconstruction_scores(generated, test_images, feature_fns, clip_embedding_function(pipe),
                                              n_permutations=int(visual["reconstruction"].get("n_permutations", 1000)), size=size)
    summary = {"subject": subject, "pipeline": str(settings["pipeline"]), "steps": int(settings["steps"]), "strength": float(settings["strength"]),
               "guidance_scale": float(settings["guidance_scale"]), "seed": int(settings["seed"]), "generative": scores}
    log.info("generative: pixel r %.3f (chance %.3f), two-way %.3f, CLIP distance %.3f", scores["pixel_corr"], scores["chance"]["pixel_corr"],
             scores["two_way_pixels"], scores.get("clip_distance", float("nan")))
    write_json(out_json, summary)
    _write_reconstructions(out_h5, data.test_images, {"generative": generated})
    plot_reconstructions(test_images.astype(np.float64) / 255.0, [("linear", linear), ("generative", generated.astype(np.float64) / 255.0)],
                         data.test_images, png, svg, dpi)
    return summary
