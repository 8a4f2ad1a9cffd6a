"""The visual demo: an image-stimulus fMRI dataset (BIDS) with planted responses, and its tiny vision model.

``generate_visual_demo(out_dir, seed)`` writes, offline and deterministically, a BIDS
dataset whose root is ``out_dir``:

- ``stimuli/img_0000.png`` … : ``N_IMAGES`` 64×64 RGB images rendered with numpy (shapes,
  gratings, smooth textures, colours; large-scale luminance structure dominates);
- ``sub-<S>/func/sub-<S>_task-<run>_bold.nii.gz`` (+ ``_bold.json``) and ``_events.tsv``
  (columns ``onset duration trial_type stim_file``; ``stim_file`` relative to ``stimuli/``)
  for the runs ``train01`` … ``train08`` (30 images each, every training image once) and
  ``test01`` … ``test03`` (the 24 test images, each run in its own order);
- ``derivatives/demo/sub-<S>/func/sub-<S>_desc-brain_mask.nii.gz``,
  ``derivatives/demo/sub-<S>/func/sub-<S>_desc-rois_dseg.nii.gz`` and
  ``derivatives/demo/desc-rois_dseg.tsv`` (``index name``: 1 V1, 2 LOC, 3 other);
- ``ground_truth.json`` (what was planted, per voxel in mask C order).

Planted responses (one amplitude per trial and voxel):

- ``V1`` voxels (one per cell of the 16×16 luminance grid, ``images.grayscale`` then
  ``images.downsample(…, 16)``): a Gaussian receptive field (sigma ``RF_SIGMA_CELLS``) on
  the signed contrast (luminance − 0.5), linear in luminance;
- ``LOC`` voxels: hidden state ``PLANTED_LAYER`` of the tiny CLIP vision tower (one plain
  forward pass per image through ``model.vision_model`` with ``output_hidden_states``), the
  MEAN over all tokens (class token and patches), z-scored over the images, times a random
  rank-``MIXING_RANK`` matrix;
- ``other`` voxels: noise only.

Each trial is a 2-s boxcar convolved with a double-gamma HRF (:func:`hrf`), sampled at the
TR centres; each signal voxel's time course is scaled to variance SNR (its ``snr``), and
unit-variance AR(1) noise, a slow drift and a baseline of about 1000 are added (1 unit = 1 %
of the baseline).

The model (``MODEL_SOURCE = "package:brainllm.demo_visual"``) is a random-weight
``CLIPModel`` (vision and text towers, a shared projection) built once into
``$BRAINLLM_CACHE_DIR/models`` by :func:`get_model_path`, with a ``CLIPImageProcessor``
(32×32) and a tiny word-level tokenizer, so that ``AutoModel``/``AutoImageProcessor``
load it offline. Its initializer factor is ``INIT_FACTOR`` rather than 1: at 1 every
block adds little to the residual stream and the mean-pooled states of all layers are
nearly the same (linear CKA 0.97–1.0 between layers), so no layer could be told apart; at
15 consecutive states have CKA 0.69–0.94 on the demo's images and the planted layer is
the best one for LOC on held-out images (tests/test_demo_visual.py).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from brainllm import __version__
from brainllm import demo
from brainllm.images import downsample, grayscale, load_images
from brainllm.io import InputError, atomic_path, write_json, write_tsv

logger = logging.getLogger(__name__)

SUBJECTS = ("V01",)
MODEL_SOURCE = "package:brainllm.demo_visual"
MODEL_RECIPE = 1  # raise when the model's recipe changes (its cache directory changes with it)
MODEL_SEED = 0
VISION = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16)
PROJECTION_DIM = 32
INIT_FACTOR = 15.0
PLANTED_LAYER = 2  # hidden-state index: 0 = embeddings (after the pre-layernorm), 1..4 = blocks
POOLING = "mean"  # over all tokens, the class token included
TEXT_WORDS = ("a", "an", "the", "photo", "of", "image", "disc", "square", "triangle", "bar", "grating", "texture",
              "red", "green", "blue", "yellow", "black", "white", "gray", "dark", "light", "small", "large", "left", "right")

IMAGE_SIZE = 64
RECONSTRUCTION_SIZE = 16
N_TRAIN_RUNS = 8
TRIALS_PER_TRAIN_RUN = 30
N_TEST_IMAGES = 24
N_TEST_RUNS = 3
N_IMAGES = N_TRAIN_RUNS * TRIALS_PER_TRAIN_RUN + N_TEST_IMAGES
TRAIN_RUNS = tuple(f"train{i + 1:02d}" for i in range(N_TRAIN_RUNS))
TEST_RUNS = tuple(f"test{i + 1:02d}" for i in range(N_TEST_RUNS))
TRIAL_TYPE = "image"

TR = 2.0
FIRST_ONSET_S = 8.0
TRIAL_SPACING_S = 4.0
STIMULUS_S = 2.0
TAIL_S = 20.0  # scan time after the last onset
HRF_DT = 0.05

# the volume: a small grid, one slab per region
GRID_SHAPE = (18, 18, 5)
VOXEL_MM = demo.VOXEL_MM
ROI_NAMES = {1: "V1", 2: "LOC", 3: "other"}
ROI_SLABS = {1: (1, 16, 16), 2: (2, 16, 12), 3: (3, 16, 8)}  # index → (k, extent in i, extent in j), from (1, 1)
RF_SIGMA_CELLS = 0.7
MIXING_RANK = 8
ROI_SNR = {1: 0.6, 2: 0.6, 3: 0.0}  # mean SNR (signal variance / noise variance of the time course)
SNR_SPREAD = (0.5, 1.5)  # a voxel's SNR is its region's times U(SNR_SPREAD)
NOISE_AR1 = 0.3
DRIFT_SCALE = 0.5
BASELINE = 1000.0
SIGNAL_PERCENT = 1.0

# Random streams: default_rng([seed, stream, ...]), apart from the text demos' (1–8, 101–104).
_STREAM_IMAGES, _STREAM_DESIGN, _STREAM_MIXING, _STREAM_SUBJECT, _STREAM_RUN = 201, 202, 203, 204, 205


# --------------------------------------------------------------------------- the model


def get_model_path() -> str:
    """Directory of the tiny CLIP model, built on first use into ``$BRAINLLM_CACHE_DIR/models``."""
    from brainllm.models import built_model_path

    return built_model_path("demo-visual-clip", MODEL_RECIPE, ("tokenizers", "transformers", "torch"), build_model)


def build_tokenizer():
    """A word-level tokenizer over ``TEXT_WORDS`` (lower-cased, split on whitespace and punctuation)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    bos, eos, unk = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
    vocab = {token: i for i, token in enumerate((bos, eos, unk) + TEXT_WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=eos,
                                   model_max_length=TEXT["max_position_embeddings"])


def build_model(directory: str | os.PathLike) -> Path:
    """Write a random-weight ``CLIPModel`` (``MODEL_SEED``), its image processor and tokenizer into ``directory``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = build_tokenizer()
    text = dict(TEXT, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, initializer_factor=INIT_FACTOR)
    vision = dict(VISION, num_channels=3, initializer_factor=INIT_FACTOR)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION_DIM, initializer_factor=INIT_FACTOR)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MODEL_SEED)
        model = CLIPModel(config).eval()
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    size = VISION["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_center_crop=True).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def image_layer_features(image_paths, model_dir: str | os.PathLike, layers=None) -> dict[int, np.ndarray]:
    """Layer → ``(n_images, hidden)``: hidden state ``layer`` of the vision tower, mean over all tokens.

    One plain forward pass per image (no batching, no cache): ``AutoImageProcessor`` on the
    RGB image, then ``model.vision_model(pixel_values, output_hidden_states=True)``.
    """
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    n_states = model.config.vision_config.num_hidden_layers + 1
    layers = tuple(range(n_states)) if layers is None else tuple(layers)
    features = {layer: np.empty((len(image_paths), model.config.vision_config.hidden_size), dtype=np.float32) for layer in layers}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only add their synchronisation
    try:
        with torch.inference_mode():
            for i, path in enumerate(image_paths):
                with Image.open(path) as image:
                    pixels = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
                states = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
                for layer in layers:
                    features[layer][i] = states[layer][0].mean(dim=0).numpy()
    finally:
        torch.set_num_threads(threads)
    return features


# --------------------------------------------------------------------------- the images


def _coordinates(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in [0, 1]."""
    c = (np.arange(size) + 0.5) / size
    return np.meshgrid(c, c, indexing="ij")


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=3)


def _shape_mask(kind: str, y: np.ndarray, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of one shape at a random place and size (coordinates in [0, 1])."""
    cy, cx = rng.uniform(0.2, 0.8, size=2)
    size = rng.uniform(0.15, 0.35)  # half-extent
    if kind == "disc":
        return (y - cy) ** 2 + (x - cx) ** 2 <= size**2
    if kind == "square":
        return (np.abs(y - cy) <= size) & (np.abs(x - cx) <= size)
    angle = rng.uniform(0.0, np.pi)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    if kind == "bar":
        return (np.abs(u) <= rng.uniform(0.3, 0.5)) & (np.abs(v) <= rng.uniform(0.05, 0.12))
    if kind == "triangle":  # equilateral, rotated: inside three half-planes
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = angle + 2.0 * np.pi * k / 3.0
            inside &= (x - cx) * np.cos(a) + (y - cy) * np.sin(a) <= size * 0.6
        return inside
    raise ValueError(kind)


def _grating(y: np.ndarray, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A sinusoidal grating in [-1, 1]: random orientation, mostly 1–2 cycles per image."""
    orientation = rng.choice([0.0, 45.0, 90.0, 135.0]) + rng.uniform(-10.0, 10.0)
    cycles = rng.choice([1.0, 1.5, 2.0, 2.5, 3.0, 4.0], p=[0.25, 0.25, 0.2, 0.15, 0.1, 0.05])
    theta = np.deg2rad(orientation)
    return np.sin(2.0 * np.pi * cycles * (x * np.cos(theta) + y * np.sin(theta)) + rng.uniform(0.0, 2.0 * np.pi))


def _smooth_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random blobs in about [-1, 1]: a coarse random grid upsampled bicubically."""
    from PIL import Image

    coarse = rng.uniform(-1.0, 1.0, size=(int(rng.choice([3, 4, 5])),) * 2).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)


def render_image(index: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image; ``index`` cycles through shapes, gratings and textures."""
    y, x = _coordinates(size)
    kind = ("shapes", "grating", "texture")[index % 3]
    if kind == "shapes":
        image = np.broadcast_to(_random_colour(rng), (size, size, 3)).copy()
        n_shapes = int(rng.integers(1, 4))
    else:
        pattern = _grating(y, x, rng) if kind == "grating" else _smooth_texture(size, rng)
        mean = rng.uniform(0.35, 0.65)
        contrast = rng.uniform(0.3, 0.5)
        tint = rng.uniform(0.5, 1.0, size=3)
        image = np.clip(mean + contrast * pattern[..., None] * tint, 0.0, 1.0)
        n_shapes = int(rng.integers(0, 2))
    for _ in range(n_shapes):
        mask = _shape_mask(str(rng.choice(["disc", "square", "triangle", "bar"])), y, x, rng)
        image[mask] = _random_colour(rng)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image, mode="RGB").save(tmp, format="PNG")


def luminance_grid(images: np.ndarray, size: int = RECONSTRUCTION_SIZE) -> np.ndarray:
    """``(n, h, w, 3)`` uint8 → ``(n, size, size)`` luminance in [0, 1] (the reconstruction target)."""
    return downsample(grayscale(images), size)


# --------------------------------------------------------------------------- timing and BOLD


def hrf(t: np.ndarray) -> np.ndarray:
    """SPM-like double gamma: Γ(6) peak at 5 s minus Γ(16)/6 (undershoot at 15 s); 0 before 0 s."""
    t = np.asarray(t, dtype=np.float64)
    positive = np.clip(t, 0.0, None)
    peak = positive**5 * np.exp(-positive) / math.gamma(6)
    undershoot = positive**15 * np.exp(-positive) / math.gamma(16)
    return np.where(t > 0, peak - undershoot / 6.0, 0.0)


def trial_regressors(onsets_s: np.ndarray, n_trs: int, tr: float = TR, duration_s: float = STIMULUS_S) -> np.ndarray:
    """``(n_trs, n_trials)``: each trial's boxcar (``duration_s``) convolved with :func:`hrf`, at the TR centres."""
    grid = np.arange(0.0, 40.0, HRF_DT)
    cumulative = np.concatenate([[0.0], np.cumsum(hrf(grid[:-1] + HRF_DT / 2.0)) * HRF_DT])  # ∫_0^t h
    times = demo.tr_centres_s(n_trs, tr)[:, None] - np.asarray(onsets_s, dtype=np.float64)[None, :]
    integral = lambda s: np.interp(s, grid, cumulative, left=0.0, right=cumulative[-1])  # noqa: E731
    return integral(times) - integral(times - duration_s)


def run_onsets(n_trials: int) -> np.ndarray:
    return FIRST_ONSET_S + TRIAL_SPACING_S * np.arange(n_trials)


def run_n_trs(n_trials: int) -> int:
    return int(math.ceil((run_onsets(n_trials)[-1] + TAIL_S) / TR))


def design(seed: int) -> tuple[list[int], dict[str, list[int]]]:
    """The test image indices and each run's image order (image indices)."""
    rng = np.random.default_rng([seed, _STREAM_DESIGN])
    test = sorted(rng.choice(N_IMAGES, size=N_TEST_IMAGES, replace=False).tolist())
    train = rng.permutation(sorted(set(range(N_IMAGES)) - set(test))).tolist()
    runs = {run: train[i * TRIALS_PER_TRAIN_RUN : (i + 1) * TRIALS_PER_TRAIN_RUN] for i, run in enumerate(TRAIN_RUNS)}
    for run in TEST_RUNS:
        runs[run] = rng.permutation(test).tolist()
    return test, runs


def volume() -> tuple[np.ndarray, np.ndarray]:
    """The mask ``(X, Y, Z)`` bool and the regions ``(X, Y, Z)`` int16 (one slab per region)."""
    rois = np.zeros(GRID_SHAPE, dtype=np.int16)
    for index, (k, extent_i, extent_j) in ROI_SLABS.items():
        rois[1 : 1 + extent_i, 1 : 1 + extent_j, k] = index
    return rois > 0, rois


def volume_affine() -> np.ndarray:
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -VOXEL_MM * (np.array(GRID_SHAPE) - 1) / 2.0
    return affine


def retinotopy(mask: np.ndarray, rois: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V1 voxels (mask-order indices) and their RF centres ``(row, col)`` on the 16×16 grid.

    The V1 voxel at grid position (i, j) looks at cell (row = 16 − j, col = i − 1): j runs
    posterior → anterior, the lower visual field lies further up the slab.
    """
    ijk = np.argwhere(mask)  # C order, as the mask-order voxel list
    v1 = np.flatnonzero(rois[mask] == 1)
    centres = np.stack([RECONSTRUCTION_SIZE - ijk[v1, 1], ijk[v1, 0] - 1], axis=1)
    return v1, centres


def receptive_fields(centres: np.ndarray, size: int = RECONSTRUCTION_SIZE, sigma: float = RF_SIGMA_CELLS) -> np.ndarray:
    """``(n_voxels, size·size)`` Gaussian weights on the grid cells (row-major), each summing to 1."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    d2 = (rows.ravel()[None, :] - centres[:, :1]) ** 2 + (cols.ravel()[None, :] - centres[:, 1:]) ** 2
    weights = np.exp(-d2 / (2.0 * sigma**2))
    return weights / weights.sum(axis=1, keepdims=True)


def _drift(n_trs: int, n_voxels: int, rng: np.random.Generator) -> np.ndarray:
    time_s = demo.tr_centres_s(n_trs, TR)
    scaled = 2.0 * time_s / time_s[-1] - 1.0
    coefs = rng.normal(0.0, 1.0, size=(2, n_voxels))
    period_s = rng.uniform(250.0, 400.0, size=n_voxels)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=n_voxels)
    return DRIFT_SCALE * (scaled[:, None] * coefs[0] + (scaled**2)[:, None] * coefs[1]
                          + np.sin(2.0 * np.pi * time_s[:, None] / period_s + phase))


# --------------------------------------------------------------------------- the dataset


BIDS_README = """\
brainllm visual demo dataset (synthetic)
========================================

One simulated subject views 264 small synthetic images (shapes, gratings, textures) for
2 s each, one every 4 s. Runs task-train01..08 show each of 240 training images once;
runs task-test01..03 show the same 24 test images, each run in its own order. The BOLD
series are simulated: V1 voxels respond to the luminance of the image in a small receptive
field, LOC voxels to one layer of a tiny random vision model, `other` voxels are noise.
Masks and a region atlas are in derivatives/demo; the planted ground truth is in
ground_truth.json.
"""


def generate_visual_demo(out_dir: str | os.PathLike, seed: int) -> dict:
    """Write the visual demo dataset into ``out_dir`` (cleared first) and return its ground truth."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InputError(None, f"demo.seed must be a non-negative integer, got {seed!r}.", "set demo.seed in the config.")
    seed = int(seed)
    out_dir = Path(out_dir)
    demo.prepare_out_dir(out_dir)
    derivatives = out_dir / "derivatives" / "demo"

    # --- stimuli
    names = [f"img_{i:04d}.png" for i in range(N_IMAGES)]
    for i, name in enumerate(names):
        write_png(out_dir / "stimuli" / name, render_image(i, np.random.default_rng([seed, _STREAM_IMAGES, i])))
    paths = [out_dir / "stimuli" / name for name in names]
    luminance = luminance_grid(load_images(paths))  # (n_images, 16, 16)
    test_images, runs = design(seed)
    train_images = [i for run in TRAIN_RUNS for i in runs[run]]

    # --- planted amplitudes per image
    model_dir = get_model_path()
    features = image_layer_features(paths, model_dir, layers=(PLANTED_LAYER,))[PLANTED_LAYER].astype(np.float64)
    std = features.std(axis=0)
    features = (features - features.mean(axis=0)) / np.where(std > 0, std, 1.0)
    mask, rois = volume()
    roi_of_voxel = rois[mask].astype(int)
    n_voxels = roi_of_voxel.size
    v1, centres = retinotopy(mask, rois)
    loc = np.flatnonzero(roi_of_voxel == 2)
    mixing_rng = np.random.default_rng([seed, _STREAM_MIXING])
    feature_map = mixing_rng.standard_normal((features.shape[1], MIXING_RANK)) @ mixing_rng.standard_normal((MIXING_RANK, loc.size))
    amplitudes = np.zeros((N_IMAGES, n_voxels))
    amplitudes[:, v1] = (luminance.reshape(N_IMAGES, -1) - 0.5) @ receptive_fields(centres).T
    amplitudes[:, loc] = features @ feature_map

    # --- BOLD
    affine = volume_affine()
    description = {"BIDSVersion": "1.9.0", "GeneratedBy": [{"Name": "brainllm.demo_visual", "Version": __version__}]}
    order = list(TRAIN_RUNS + TEST_RUNS)
    regressors = {run: trial_regressors(run_onsets(len(runs[run])), run_n_trs(len(runs[run]))) for run in order}
    signals = {run: regressors[run] @ amplitudes[runs[run]] for run in order}
    all_signal = np.vstack([signals[run] for run in order])
    signal_std = all_signal.std(axis=0)
    per_subject = {}
    for s_index, subject in enumerate(SUBJECTS):
        subject_rng = np.random.default_rng([seed, _STREAM_SUBJECT, s_index])
        snr = np.array([ROI_SNR[r] for r in roi_of_voxel]) * subject_rng.uniform(*SNR_SPREAD, size=n_voxels)
        baseline = BASELINE * subject_rng.uniform(0.8, 1.2, size=n_voxels)
        gain = np.sqrt(snr) / np.where(signal_std > 0, signal_std, 1.0)
        func = out_dir / f"sub-{subject}" / "func"
        for r_index, run in enumerate(order):
            rng = np.random.default_rng([seed, _STREAM_RUN, s_index, r_index])
            n_trs = regressors[run].shape[0]
            noise = demo.ar1_noise(n_trs, np.full(n_voxels, NOISE_AR1), rng)
            bold = baseline * (1.0 + SIGNAL_PERCENT / 100.0 * (signals[run] * gain + noise + _drift(n_trs, n_voxels, rng)))
            series = np.zeros(GRID_SHAPE + (n_trs,), dtype=np.float32)
            series[mask] = bold.T.astype(np.float32)
            stem = f"sub-{subject}_task-{run}"
            demo._write_nifti(func / f"{stem}_bold.nii.gz", series, affine, np.float32, tr=TR)
            write_json(func / f"{stem}_bold.json", {"RepetitionTime": TR, "TaskName": run})
            write_tsv(func / f"{stem}_events.tsv", pd.DataFrame({
                "onset": run_onsets(len(runs[run])), "duration": STIMULUS_S, "trial_type": TRIAL_TYPE,
                "stim_file": [names[i] for i in runs[run]]}))
        anatomy = derivatives / f"sub-{subject}" / "func"
        demo._write_nifti(anatomy / f"sub-{subject}_desc-brain_mask.nii.gz", mask, affine, np.uint8)
        demo._write_nifti(anatomy / f"sub-{subject}_desc-rois_dseg.nii.gz", rois, affine, np.int16)
        per_subject[subject] = {
            "n_voxels": int(n_voxels),
            "roi": [ROI_NAMES[int(r)] for r in roi_of_voxel],
            "roi_index": roi_of_voxel.tolist(),
            "snr": np.round(snr, 6).tolist(),
            "signal": (snr > 0).tolist(),
            "noise_ar1": NOISE_AR1,
        }
        logger.info("sub-%s: %d voxels (%s)", subject, n_voxels, {ROI_NAMES[k]: int((roi_of_voxel == k).sum()) for k in ROI_NAMES})

    write_tsv(derivatives / "desc-rois_dseg.tsv", pd.DataFrame({"index": list(ROI_NAMES), "name": list(ROI_NAMES.values())}))
    write_json(out_dir / "dataset_description.json", {"Name": "brainllm visual demo: simulated image viewing", **description,
                                                       "DatasetType": "raw", "License": "CC0"})
    write_json(derivatives / "dataset_description.json", {"Name": "brainllm visual demo masks and regions", **description,
                                                           "DatasetType": "derivative"})
    write_tsv(out_dir / "participants.tsv", pd.DataFrame({"participant_id": [f"sub-{s}" for s in SUBJECTS]}))
    with atomic_path(out_dir / "README") as tmp:
        tmp.write_text(BIDS_README, encoding="utf-8")

    from brainllm.models import directory_sha256

    truth = {
        "description": "Synthetic image-viewing fMRI: V1 voxels have Gaussian receptive fields on the 16x16 luminance grid "
                       "(linear in luminance - 0.5); LOC voxels respond to the mean-pooled hidden state planted_layer of a "
                       "tiny random CLIP vision tower (z-scored over images, random low-rank map); 'other' voxels are noise.",
        "seed": seed,
        "model": {"source": MODEL_SOURCE, "weights_sha256": directory_sha256(model_dir), "architecture":
                  f"CLIPModel, random weights (seed {MODEL_SEED}, initializer_factor {INIT_FACTOR})",
                  "vision": dict(VISION), "projection_dim": PROJECTION_DIM},
        "planted_layer": PLANTED_LAYER,
        "n_hidden_states": VISION["num_hidden_layers"] + 1,
        "pooling": POOLING,
        "pooling_detail": "mean over all tokens (class token and patches) of model.vision_model hidden_states[planted_layer], "
                          "one image per forward pass, pixels from the saved AutoImageProcessor",
        "feature_standardisation": "z-scored over all images",
        "rank": MIXING_RANK,
        "tr": TR,
        "trial": {"onset_first_s": FIRST_ONSET_S, "spacing_s": TRIAL_SPACING_S, "duration_s": STIMULUS_S,
                  "tail_s": TAIL_S, "trial_type": TRIAL_TYPE, "sampling": "TR centres (k + 0.5) * TR"},
        "hrf": "double gamma (SPM-like): gamma(shape 6) - gamma(shape 16)/6, scale 1 s; peak ~5 s, undershoot ~15 s; "
               "convolved with the 2-s stimulus boxcar",
        "noise": {"ar1": NOISE_AR1, "drift_scale": DRIFT_SCALE, "units": "percent of the voxel baseline",
                  "baseline": BASELINE, "snr": "variance of the planted time course (all runs) / variance of the AR(1) noise"},
        "reconstruction_size": RECONSTRUCTION_SIZE,
        "image_size": [IMAGE_SIZE, IMAGE_SIZE],
        "stimuli_dir": "stimuli",
        "images": {"train": [names[i] for i in train_images], "test": [names[i] for i in test_images]},
        "runs": {"train": list(TRAIN_RUNS), "test": list(TEST_RUNS),
                 "order": {run: [names[i] for i in runs[run]] for run in order}},
        "test_repeats": N_TEST_RUNS,
        "rois": {str(k): {"name": name, "mean_snr": ROI_SNR[k]} for k, name in ROI_NAMES.items()},
        "retinotopy": {"voxels": v1.tolist(), "centres": centres.tolist(), "sigma_cells": RF_SIGMA_CELLS,
                       "centre_convention": "(row, col) on the 16x16 luminance grid, row 0 at the top",
                       "response": "sum of RF weights (summing to 1) times (luminance - 0.5)"},
        "subjects": list(SUBJECTS),
        "voxel_order": "numpy C order of mask > 0",
        "per_subject": per_subject,
    }
    write_json(out_dir / "ground_truth.json", truth)
    return truth
