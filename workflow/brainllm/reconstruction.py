"""Visual reconstruction from brain responses to images, and the field's reconstruction scores.

Inputs: trial-wise responses ``Y`` ``(n_images, n_voxels)`` (training images once each, test
images averaged over repeats), the run of each training image (cross-validation is by run),
stimuli as uint8 ``(n, h, w, 3)``.

- Linear pixel-space reconstruction (Miyawaki et al. 2008): multiscale local image bases
  (1×1, 1×2, 2×1, 2×2 patches tiled with stride 1, overlapping) of the downsampled grayscale
  image; one ridge decoder per scale (:func:`brainllm.encoding.fit_ridge`, α per base by
  leave-one-run-out CV); each scale's predicted contrasts mapped back onto pixels (each pixel
  the mean of the bases covering it); scales combined with weights fit by least squares on
  out-of-fold predictions of the training images (never on test images).
- Scores (:func:`reconstruction_scores`): pixel correlation, SSIM, two-way identification in
  pixel and network feature spaces, CLIP-embedding cosine distance; a chance row (the same
  scores with the reconstructions shuffled across images) and a permutation p-value.
- Generative route (Takagi & Nishimoto 2023 / MindEye): brain → CLIP image embedding (ridge)
  → a diffusers ``StableUnCLIPImg2ImgPipeline`` conditioned on it, optionally started from
  the linear reconstruction (img2img-style partial noising).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics
from .encoding import alpha_grid, fit_ridge
from .images import downsample, grayscale

__all__ = [
    "SCALES",
    "RidgeMap",
    "fit_ridge_map",
    "fit_embedding_decoder",
    "LinearReconstructor",
    "fit_linear_reconstruction",
    "image_bases",
    "two_way_identification",
    "reconstruction_scores",
    "build_tiny_unclip_pipeline",
    "load_unclip_pipeline",
    "clip_image_embeddings",
    "clip_embedding_function",
    "generate_from_embeddings",
]

#: Miyawaki et al. (2008) local image bases: (height, width) of the patches
SCALES = ((1, 1), (1, 2), (2, 1), (2, 2))
FORMAT = "brainllm.reconstruction/1"


# --------------------------------------------------------------------------- ridge maps


def _runs_order(runs: Sequence) -> tuple[np.ndarray, list[int]]:
    """Row order sorting the training images by run (stable) and the run lengths in that order."""
    runs = np.asarray(runs)
    order = np.argsort(runs, kind="stable")
    _, lengths = np.unique(runs[order], return_counts=True)
    return order, lengths.tolist()


@dataclass
class RidgeMap:
    """z-scored voxels → targets: ``pred = ((Y - y_mean) / y_std) @ weights + t_mean``."""

    weights: np.ndarray  # (n_voxels, n_targets) float32
    y_mean: np.ndarray  # (n_voxels,)
    y_std: np.ndarray  # (n_voxels,)
    t_mean: np.ndarray  # (n_targets,)
    alphas: np.ndarray  # (n_targets,) chosen by CV over runs

    def predict(self, Y: np.ndarray) -> np.ndarray:
        Z = (np.asarray(Y, dtype=np.float64) - self.y_mean) / self.y_std
        return Z @ self.weights.astype(np.float64) + self.t_mean

    def columns(self, lo: int, hi: int) -> RidgeMap:
        """The map to targets ``lo:hi`` only (the same α and weights)."""
        return RidgeMap(self.weights[:, lo:hi], self.y_mean, self.y_std, self.t_mean[lo:hi], self.alphas[lo:hi])

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.{k}": np.ascontiguousarray(getattr(self, k), dtype=np.float32 if k == "weights" else np.float64)
                for k in ("weights", "y_mean", "y_std", "t_mean", "alphas")}

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str) -> RidgeMap:
        return cls(**{k: tensors[f"{prefix}.{k}"] for k in ("weights", "y_mean", "y_std", "t_mean", "alphas")})

    def save(self, path: str | os.PathLike) -> None:
        """safetensors only (no pickle)."""
        from safetensors.numpy import save_file

        save_file(self.tensors("map"), str(path), metadata={"format": FORMAT})

    @classmethod
    def load(cls, path: str | os.PathLike) -> RidgeMap:
        from safetensors.numpy import load_file

        return cls.from_tensors(load_file(str(path)), "map")


def fit_ridge_map(Y: np.ndarray, T: np.ndarray, runs: Sequence, alphas: np.ndarray | None = None,
                  backend: str = "auto") -> RidgeMap:
    """Ridge from z-scored voxels to centred targets ``T``; α per target by leave-one-run-out CV.

    Rows are sorted by run so that each run is one contiguous CV group (``story_lengths``).
    """
    Y, T = np.asarray(Y, dtype=np.float64), np.asarray(T, dtype=np.float64)
    order, lengths = _runs_order(runs)
    if len(lengths) < 2:
        raise ValueError(f"cross-validation by run needs at least 2 runs, got {len(lengths)}")
    y_mean, y_std = Y.mean(0), Y.std(0)
    y_std = np.where(y_std > 0, y_std, 1.0)
    t_mean = T.mean(0)
    grid = alpha_grid() if alphas is None else np.asarray(alphas, dtype=np.float64)
    fit = fit_ridge(((Y - y_mean) / y_std)[order], (T - t_mean)[order], lengths, grid, backend=backend)
    return RidgeMap(np.asarray(fit.weights, dtype=np.float32), y_mean, y_std, t_mean, np.asarray(fit.alphas, dtype=np.float64))


def fit_embedding_decoder(Y_train: np.ndarray, embeds_train: np.ndarray, runs: Sequence, alphas: np.ndarray | None = None,
                          backend: str = "auto") -> RidgeMap:
    """Brain → CLIP image embedding: ridge to the pipeline's own image-encoder embeddings of the
    training images (:func:`clip_image_embeddings`), α per embedding dimension by CV over runs.
    ``.predict(Y_test)`` gives the ``image_embeds`` for :func:`generate_from_embeddings`."""
    return fit_ridge_map(Y_train, embeds_train, runs, alphas, backend)


def _out_of_fold(Y: np.ndarray, T: np.ndarray, runs: Sequence, alphas, backend: str, n_folds: int | None = None) -> np.ndarray:
    """Predictions of each fold's rows by a map fit (α by CV over the remaining runs) without that fold.

    A fold is one run, or with ``n_folds`` a block of consecutive runs (sorted run labels).
    """
    runs = np.asarray(runs)
    labels = np.unique(runs)
    n_folds = len(labels) if n_folds is None else int(n_folds)
    if not 2 <= n_folds <= len(labels):
        raise ValueError(f"out-of-fold predictions need 2 to {len(labels)} folds, got {n_folds}")
    fold_of_run = dict(zip(labels, np.arange(len(labels)) * n_folds // len(labels)))
    folds = np.array([fold_of_run[r] for r in runs])
    pred = np.empty_like(np.asarray(T, dtype=np.float64))
    for fold in range(n_folds):
        held = folds == fold
        pred[held] = fit_ridge_map(Y[~held], T[~held], runs[~held], alphas, backend).predict(Y[held])
    return pred


# --------------------------------------------------------------------------- linear reconstruction


def image_bases(size: int, scale: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(encode, decode)`` for one scale's local bases on a ``size × size`` grid.

    ``encode`` ``(n_bases, size²)``: each base the mean luminance of one ``h × w`` patch, the
    patches tiled with stride 1 (overlapping). ``decode`` ``(size², n_bases)``: each pixel the
    mean of the contrasts of the bases covering it.
    """
    h, w = scale
    rows = []
    for r in range(size - h + 1):
        for c in range(size - w + 1):
            patch = np.zeros((size, size))
            patch[r:r + h, c:c + w] = 1.0
            rows.append(patch.ravel())
    cover = np.array(rows)
    encode = cover / (h * w)
    decode = cover.T / cover.sum(0)[:, None]
    return encode, decode


def _target_pixels(images: np.ndarray, size: int) -> np.ndarray:
    images = np.asarray(images)
    gray = grayscale(images) if images.ndim == 4 else np.asarray(images, dtype=np.float64)
    return downsample(gray, size).reshape(len(gray), -1)


@dataclass
class LinearReconstructor:
    """Multiscale linear decoder: ``predict(Y) → (n, size, size)`` grayscale in the stimuli's [0, 1] units."""

    size: int
    scales: tuple[tuple[int, int], ...]
    decoders: list[RidgeMap]
    scale_weights: np.ndarray  # (n_scales,) least squares on out-of-fold training predictions
    intercept: float
    info: dict = field(default_factory=dict)

    def predict_scales(self, Y: np.ndarray) -> np.ndarray:
        """``(n_scales, n, size²)``: each scale's predicted contrasts mapped back onto pixels."""
        return np.stack([decoder.predict(Y) @ image_bases(self.size, scale)[1].T for scale, decoder in zip(self.scales, self.decoders)])

    def predict(self, Y: np.ndarray) -> np.ndarray:
        per_scale = self.predict_scales(Y)
        combined = np.tensordot(self.scale_weights, per_scale, axes=1) + self.intercept
        return combined.reshape(-1, self.size, self.size)

    def save(self, path: str | os.PathLike) -> None:
        """``path`` (safetensors: the ridge maps) and ``path`` + ``.json`` (sizes, scales, weights)."""
        from safetensors.numpy import save_file

        tensors = {}
        for i, decoder in enumerate(self.decoders):
            tensors.update(decoder.tensors(f"scale{i}"))
        save_file(tensors, str(path))
        meta = {"format": FORMAT, "size": self.size, "scales": [list(s) for s in self.scales],
                "scale_weights": [float(w) for w in self.scale_weights], "intercept": float(self.intercept), "info": self.info}
        Path(f"{path}.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LinearReconstructor:
        from safetensors.numpy import load_file

        meta = json.loads(Path(f"{path}.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}.json is not a saved linear reconstructor ({meta.get('format')!r})")
        tensors = load_file(str(path))
        scales = tuple(tuple(s) for s in meta["scales"])
        return cls(meta["size"], scales, [RidgeMap.from_tensors(tensors, f"scale{i}") for i in range(len(scales))],
                   np.asarray(meta["scale_weights"]), float(meta["intercept"]), meta.get("info", {}))


def fit_linear_reconstruction(Y_train: np.ndarray, images_train: np.ndarray, runs: Sequence, size: int = 16,
                              scales: Sequence[tuple[int, int]] = SCALES, alphas: np.ndarray | None = None,
                              backend: str = "auto", oof_folds: int | None = None) -> LinearReconstructor:
    """Fit the multiscale decoder on training images only.

    ``images_train``: uint8 ``(n, h, w, 3)`` (or grayscale ``(n, h, w)`` in [0, 1]); ``runs``:
    run of each training image (≥ 3 runs: the scale weights need out-of-fold predictions
    whose α is itself chosen by CV over the other runs). ``oof_folds``: group the runs into
    that many contiguous folds for the out-of-fold predictions (default: one fold per run; with
    many runs fewer folds cost fewer refits).
    """
    Y_train = np.asarray(Y_train, dtype=np.float64)
    runs = np.asarray(runs)
    if len(Y_train) != len(images_train) or len(runs) != len(Y_train):
        raise ValueError(f"{len(Y_train)} responses, {len(images_train)} images and {len(runs)} run labels differ")
    if len(np.unique(runs)) < 3:
        raise ValueError("the linear reconstruction needs at least 3 training runs (nested cross-validation by run)")
    scales = tuple(tuple(int(v) for v in s) for s in scales)
    pixels = _target_pixels(images_train, size)
    bases = [image_bases(size, scale) for scale in scales]
    # every scale's bases in one ridge call: α is per base, so this is exactly one decoder per
    # scale, with the fold-wise decompositions of the voxels done once instead of per scale
    contrasts = np.concatenate([pixels @ encode.T for encode, _ in bases], axis=1)
    bounds = np.cumsum([0] + [len(encode) for encode, _ in bases])
    joint = fit_ridge_map(Y_train, contrasts, runs, alphas, backend)
    decoders = [joint.columns(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    oof_contrasts = _out_of_fold(Y_train, contrasts, runs, alphas, backend, n_folds=oof_folds)
    out_of_fold = [oof_contrasts[:, lo:hi] @ decode.T for (lo, hi), (_, decode) in zip(zip(bounds[:-1], bounds[1:]), bases)]
    # scale weights + intercept: least squares of the true pixels on the out-of-fold per-scale images
    design = np.column_stack([p.ravel() for p in out_of_fold] + [np.ones(pixels.size)])
    coef, *_ = np.linalg.lstsq(design, pixels.ravel(), rcond=None)
    oof = (design @ coef).reshape(pixels.shape)
    # out-of-fold pixel correlation of the combined image (its few combination parameters are fit on it)
    info = {"n_train": int(len(Y_train)), "n_runs": int(len(np.unique(runs))),
            "oof_pixel_corr": float(metrics.pearson_r(oof.T, pixels.T).mean())}
    return LinearReconstructor(size, scales, decoders, coef[:-1], float(coef[-1]), info)


# --------------------------------------------------------------------------- scores


def _corr_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(n_a, n_b)`` Pearson correlations between rows of ``a`` and rows of ``b``."""
    a = metrics.unit_columns(np.asarray(a, dtype=np.float64).reshape(len(a), -1).T)
    b = metrics.unit_columns(np.asarray(b, dtype=np.float64).reshape(len(b), -1).T)
    return a.T @ b


def _two_way_per_image(pred_feats: np.ndarray, true_feats: np.ndarray) -> np.ndarray:
    return metrics.two_way_per_row(_corr_matrix(pred_feats, true_feats))


def two_way_identification(pred_feats: np.ndarray, true_feats: np.ndarray) -> float:
    """Share of pairs (i, j≠i) with corr(pred_i, true_i) > corr(pred_i, true_j), ties counting half; chance 0.5."""
    return float(_two_way_per_image(pred_feats, true_feats).mean())


def _gray(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 4:
        return grayscale(images) if images.dtype == np.uint8 else np.asarray(images, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])
    if images.ndim != 3:
        raise ValueError(f"images must be (n, h, w) or (n, h, w, 3), got shape {images.shape}")
    return np.asarray(images, dtype=np.float64)


def _rgb_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 RGB for networks: uint8 stays; floats in [0, 1] are clipped and scaled; grayscale repeated."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(images[..., None], 3, axis=-1) if images.ndim == 3 else images


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    while True:
        perm = rng.permutation(n)
        if n < 2 or not np.any(perm == np.arange(n)):
            return perm


def _scores_once(recon_gray, truth_gray, recon_raw, truth_raw, feature_fns, embed_fn, data_range, true_cache) -> tuple[dict, dict]:
    from skimage.metrics import structural_similarity

    n, h, w = recon_gray.shape
    per = {"pixel_corr": np.diag(_corr_matrix(recon_gray, truth_gray))}
    win = min(7, h, w)
    win -= 1 - win % 2
    per["ssim"] = np.array([structural_similarity(r, t, data_range=data_range, win_size=win) for r, t in zip(recon_gray, truth_gray)])
    per["two_way_pixels"] = _two_way_per_image(recon_gray, truth_gray)
    for name, fn in feature_fns:
        per[f"two_way_{name}"] = _two_way_per_image(np.asarray(fn(_rgb_uint8(recon_raw))), true_cache[name])
    if embed_fn is not None:
        e_r = np.asarray(embed_fn(_rgb_uint8(recon_raw)), dtype=np.float64)
        e_t = true_cache["__embed__"]
        cos = (e_r * e_t).sum(1) / (np.linalg.norm(e_r, axis=1) * np.linalg.norm(e_t, axis=1))
        per["clip_distance"] = 1.0 - cos
    return {k: float(v.mean()) for k, v in per.items()}, per


def reconstruction_scores(recon: np.ndarray, truth: np.ndarray,
                          feature_fns: Sequence[tuple[str, Callable]] | Callable | None = None,
                          embed_fn: Callable | None = None, data_range: float = 1.0,
                          n_permutations: int = 1000, seed: int = 0, size: int | None = None) -> tuple[dict, pd.DataFrame]:
    """The standard reconstruction table for ``recon`` against ``truth`` (same images, same order).

    Both ``(n, s, s)`` grayscale in [0, 1] or ``(n, h, w, 3)`` (uint8, or floats in [0, 1]);
    pixel scores (correlation, SSIM with ``data_range``, pixel two-way) on grayscale at
    ``size × size`` (default: the reconstruction's size; images of another size are
    area-resampled to it).
    ``feature_fns``: ``[(name, fn)]`` (or one callable, named ``features``), ``fn`` maps uint8
    RGB ``(n, h, w, 3)`` to ``(n, d)`` features: two-way identification in that space.
    ``embed_fn`` (e.g. CLIP image embeddings): mean cosine distance between embeddings of the
    reconstructions and of the stimuli.

    Returns ``(summary, per_image)``: ``summary`` the means, ``summary["chance"]`` the same
    scores with the reconstructions shuffled across images (one fixed derangement), and
    ``pixel_corr_p`` the one-sided permutation p-value of the mean pixel correlation (image
    labels permuted ``n_permutations`` times).
    """
    recon, truth = np.asarray(recon), np.asarray(truth)
    if len(recon) != len(truth):
        raise ValueError(f"{len(recon)} reconstructions for {len(truth)} stimuli")
    if callable(feature_fns):
        feature_fns = [("features", feature_fns)]
    feature_fns = list(feature_fns or [])
    recon_gray, truth_gray = _gray(recon), _gray(truth)
    side = int(size or recon_gray.shape[1])
    if size is None and recon_gray.shape[1] != recon_gray.shape[2]:
        raise ValueError(f"reconstructions of {recon_gray.shape[1:]} pixels are not square: give size")
    if recon_gray.shape[1:] != (side, side):
        recon_gray = downsample(recon_gray, side)
    if truth_gray.shape[1:] != (side, side):
        truth_gray = downsample(truth_gray, side)
    true_cache = {name: np.asarray(fn(_rgb_uint8(truth))) for name, fn in feature_fns}
    if embed_fn is not None:
        true_cache["__embed__"] = np.asarray(embed_fn(_rgb_uint8(truth)), dtype=np.float64)
    summary, per = _scores_once(recon_gray, truth_gray, recon, truth, feature_fns, embed_fn, data_range, true_cache)

    rng = np.random.default_rng(seed)
    shuffle = _derangement(len(recon), rng)
    chance, _ = _scores_once(recon_gray[shuffle], truth_gray, recon[shuffle], truth, feature_fns, embed_fn, data_range, true_cache)
    corr = _corr_matrix(recon_gray, truth_gray)
    null = np.array([corr[np.arange(len(corr)), rng.permutation(len(corr))].mean() for _ in range(n_permutations)])
    summary.update(n_images=int(len(recon)), chance=chance, n_permutations=int(n_permutations),
                   pixel_corr_p=float((1 + np.sum(null >= summary["pixel_corr"])) / (1 + n_permutations)))
    per_image = pd.DataFrame({"image": np.arange(len(recon)), **per})
    return summary, per_image


# --------------------------------------------------------------------------- generative route (unCLIP)


def build_tiny_unclip_pipeline(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny random-weight ``StableUnCLIPImg2ImgPipeline`` saved with safetensors (offline; for tests).

    Component shapes follow diffusers' own fast tests of this pipeline: 32-d CLIP embeddings,
    a UNet whose class embedding projects [image embedding, noise-level embedding] (64-d),
    32×32 images. The tokenizer is a word-level one built with ``tokenizers``.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                              CLIPVisionModelWithProjection, PreTrainedTokenizerFast)

    dim = 32
    words = ["<pad>", "<s>", "</s>", "<unk>", "a", "photo", "of", "image", "brain"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=16)
    torch.manual_seed(seed)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=dim, projection_dim=dim, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        intermediate_size=37, patch_size=4)).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_size=dim, projection_dim=dim, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(words), max_position_embeddings=16)).eval()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), attention_head_dim=(2, 4),
        class_embed_type="projection", projection_class_embeddings_input_dim=2 * dim, cross_attention_dim=dim,
        layers_per_block=1, upcast_attention=True, use_linear_projection=True)
    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1)
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), image_encoder=image_encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=dim),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        vae=vae)
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def load_unclip_pipeline(path: str | os.PathLike, device: str = "cpu", dtype: str | None = None):
    """A local ``StableUnCLIPImg2ImgPipeline`` directory (safetensors; never the hub)."""
    import torch
    from diffusers import StableUnCLIPImg2ImgPipeline

    torch_dtype = getattr(torch, dtype) if dtype else torch.float32
    pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(str(path), use_safetensors=True, local_files_only=True, dtype=torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def clip_image_embeddings(pipe, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The pipeline's own image-encoder embeddings ``(n, d)`` of uint8 images: the decoding targets."""
    import torch

    images = _rgb_uint8(images)
    out = []
    encoder = pipe.image_encoder
    param = next(encoder.parameters())
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pixels = pipe.feature_extractor(images=list(images[start:start + batch_size]), return_tensors="pt").pixel_values
            out.append(encoder(pixels.to(param.device, param.dtype)).image_embeds.float().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def clip_embedding_function(pipe, batch_size: int = 32) -> Callable[[np.ndarray], np.ndarray]:
    """``images → embeddings`` with the pipeline's image encoder: the ``embed_fn`` (or a feature
    space) of :func:`reconstruction_scores`."""
    return lambda images: clip_image_embeddings(pipe, images, batch_size)


def generate_from_embeddings(pipe, embeds: np.ndarray, init_images: np.ndarray | None = None, strength: float = 0.75,
                             steps: int = 20, guidance_scale: float = 3.0, noise_level: int = 0, seed: int = 0,
                             batch_size: int = 8, size: int | None = None) -> np.ndarray:
    """Images ``(n, H, W, 3)`` uint8 from predicted CLIP image embeddings ``(n, d)``.

    Without ``init_images``: the pipeline's own generation from noise, conditioned on the
    embeddings (``image_embeds=``). With ``init_images`` (e.g. the linear reconstructions,
    grayscale ``(n, s, s)`` in [0, 1] or RGB): the low-level start of Takagi & Nishimoto —
    each is resized to the output size, encoded with the VAE (latent mean × scaling factor),
    noised by the scheduler to the timestep that leaves a ``strength`` share of the
    ``steps`` (``add_noise``), and denoised over only those remaining timesteps, with the
    same UNet call, classifier-free guidance and scheduler step as the pipeline's own loop.
    ``strength`` 1 ignores the start image's content; smaller keeps more of it.
    ``steps`` and ``guidance_scale`` (classifier-free guidance against a zero image embedding
    and the empty prompt, as the pipeline does; ≤ 1 turns it off) as in the pipeline;
    ``noise_level`` > 0 noises the embeddings (unCLIP's augmentation); ``size`` the output
    side in pixels (default: the UNet's sample size × the VAE's scale factor).
    Image ``i`` draws all its noise (embedding noise, start latents, any scheduler draws) from a
    generator seeded with ``seed + i``, so results do not depend on ``batch_size`` beyond float
    rounding. Why a loop of our own rather than the pipeline's ``latents=``: the pipeline always
    runs the whole schedule from its noisiest timestep, so a partly noised start needs the
    schedule cut at ``strength`` (what diffusers' img2img pipelines do, not this one).
    """
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    embeds = np.asarray(embeds, dtype=np.float32)
    device = pipe._execution_device
    dtype = pipe.unet.dtype
    size = size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    cfg = guidance_scale > 1.0
    if init_images is not None:
        start = _rgb_uint8(init_images)
        if len(start) != len(embeds):
            raise ValueError(f"{len(start)} start images for {len(embeds)} embeddings")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
    out = []
    with torch.no_grad():
        for lo in range(0, len(embeds), batch_size):
            hi = min(lo + batch_size, len(embeds))
            n = hi - lo
            generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(lo, hi)]
            prompt, negative = pipe.encode_prompt([""] * n, device, 1, cfg)
            text = torch.cat([negative, prompt]) if cfg else prompt
            cond = pipe._encode_image(image=None, device=device, batch_size=n, num_images_per_prompt=1,
                                      do_classifier_free_guidance=cfg, noise_level=torch.tensor([noise_level], device=device),
                                      generator=generators, image_embeds=torch.from_numpy(embeds[lo:hi]).to(device, dtype))
            step_kwargs = pipe.prepare_extra_step_kwargs(generators, 0.0)  # η = 0; the generators where a scheduler draws
            pipe.scheduler.set_timesteps(steps, device=device)
            timesteps = pipe.scheduler.timesteps
            shape = (n, pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
            noise = randn_tensor(shape, generator=generators, device=torch.device("cpu"), dtype=torch.float32).to(device, dtype)
            if init_images is None:
                latents = noise * pipe.scheduler.init_noise_sigma
            else:
                image = pipe.image_processor.preprocess([_pil(s, size) for s in start[lo:hi]]).to(device, dtype)
                clean = pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor
                begin = (steps - max(1, int(round(steps * strength)))) * pipe.scheduler.order
                timesteps = timesteps[begin:]
                if hasattr(pipe.scheduler, "set_begin_index"):  # multistep schedulers index from here (as diffusers' img2img)
                    pipe.scheduler.set_begin_index(begin)
                latents = pipe.scheduler.add_noise(clean, noise, timesteps[:1].repeat(n))
            for t in timesteps:
                model_input = pipe.scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
                noise_pred = pipe.unet(model_input, t, encoder_hidden_states=text, class_labels=cond, return_dict=False)[0]
                if cfg:
                    uncond, conditioned = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (conditioned - uncond)
                latents = pipe.scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
            out.append(pipe.image_processor.postprocess(decoded.float(), output_type="np"))
    return np.round(np.concatenate(out) * 255).astype(np.uint8)


def _pil(image: np.ndarray, size: int):
    from PIL import Image

    return Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
