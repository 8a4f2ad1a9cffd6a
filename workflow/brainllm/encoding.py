"""Voxelwise encoding models: aligned LLM features (+ FIR delays) → brain responses.

Methods (config ``encoding.method``):
- ``ridge``: per-voxel α from ``encoding.alphas`` by leave-one-story-out cross-validation
  over the training stories, on a himalaya backend. Primal when n_samples > n_features:
  the fold-wise eigendecomposition solver (:mod:`brainllm.ridge_cv`, same estimate as
  himalaya's ``RidgeCV``, several times faster); dual otherwise: its kernel form (same
  estimate as ``KernelRidgeCV`` with a linear kernel); ``encoding.solver: himalaya`` uses
  ``RidgeCV`` / ``KernelRidgeCV`` themselves. Banded (several layers): ``BandedRidgeCV`` or
  ``MultipleKernelRidgeCV``, chosen the same way.
- ``bootstrap_ridge``: the Huth-lab algorithm (:mod:`brainllm.bootstrap_ridge`).
- ``lipschitz``: a linear map with bounded spectral norm (:mod:`brainllm.lipschitz`).

Every model is scored on the held-out test stories (:mod:`brainllm.inference`): per-voxel
Pearson r, one-sided block-permutation p-value, FDR; beside it the validation r of the
chosen hyperparameters, on which every later selection is made.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import pandas as pd

from . import metrics
from .align import make_delayed, read_aligned, zscore_columns
from .inference import Significance, save_predictions, score_voxels, top_voxels
from .io import InputError, atomic_path, open_h5, write_json, write_tsv

log = logging.getLogger(__name__)

#: CPU backend used by ``backend: auto`` without a GPU (numpy measured faster than torch on CPU)
CPU_BACKEND = "numpy"
# Where torch can see a GPU, its driver shows one of these: NVIDIA (Linux, containers), WSL 2, Jetson, ROCm.
GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg", "/dev/nvhost-ctrl-gpu", "/dev/kfd")

__all__ = [
    "EncodingFit",
    "alpha_grid",
    "leave_one_story_out",
    "resolve_backend",
    "fit_ridge",
    "fit_banded_ridge",
    "fit_encoding",
    "grid_edges",
    "voxel_labels",
    "roi_summary",
    "vector_to_volume",
    "build_design",
    "run_encoding",
    "held_out_responses",
    "load_ground_truth",
]


@dataclass
class EncodingFit:
    """A fitted linear encoding model: prediction = delayed features @ weights."""

    weights: np.ndarray  # (n_features, n_voxels) float32
    alphas: np.ndarray  # (n_voxels,) chosen regularisation (NaN where the method has none)
    method: str
    solver: str
    backend: str
    info: dict = field(default_factory=dict)
    # (n_voxels,) mean validation Pearson r (cross-validation within the training stories) of
    # the chosen hyperparameters; None where the solver does not expose it
    validation_r: np.ndarray | None = None


def alpha_grid(log10_min: float = -1.0, log10_max: float = 7.0, num: int = 17) -> np.ndarray:
    """The α grid ``logspace(log10_min, log10_max, num)`` (config ``encoding.alphas``)."""
    return np.logspace(log10_min, log10_max, num)


#: warn when more than this fraction of voxels chose an end of the α grid
EDGE_WARN_FRACTION = 0.05


def grid_edges(chosen: np.ndarray, grid: np.ndarray, name: str = "alpha") -> dict:
    """Fractions of voxels whose chosen value is the lowest / highest of ``grid``; logs, warns above 5 %."""
    chosen, grid = np.asarray(chosen, dtype=np.float64), np.asarray(grid, dtype=np.float64)
    fractions = {
        f"{name}_frac_at_min": float(np.isclose(chosen, grid.min(), rtol=1e-5).mean()),
        f"{name}_frac_at_max": float(np.isclose(chosen, grid.max(), rtol=1e-5).mean()),
    }
    log.info("%s grid [%g, %g]: %.1f%% of voxels at the lower edge, %.1f%% at the upper edge", name, grid.min(), grid.max(),
             100 * fractions[f"{name}_frac_at_min"], 100 * fractions[f"{name}_frac_at_max"])
    for edge, fraction in fractions.items():
        if fraction > EDGE_WARN_FRACTION and grid.size > 1:
            log.warning("%.1f%% of voxels chose the %s end of the %s grid: widen the grid", 100 * fraction, edge.rsplit("_", 1)[-1], name)
    return fractions


def story_folds(story_lengths: Sequence[int], n_folds: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation splits ``[(train_rows, held_out_rows)]`` of whole stories.

    Rows are the concatenated stories in order; the stories fall in ``min(n_folds, n_stories)``
    groups of consecutive stories (``None``: one per story), each held out once (never random
    TR folds, which leak through autocorrelation).
    """
    if len(story_lengths) < 2:
        raise ValueError(f"cross-validation by story needs at least 2 training stories, got {len(story_lengths)}")
    bounds = np.concatenate([[0], np.cumsum(story_lengths)])
    all_rows = np.arange(bounds[-1])
    splits = []
    for group in np.array_split(np.arange(len(story_lengths)), min(n_folds or len(story_lengths), len(story_lengths))):
        held_out = np.arange(bounds[group[0]], bounds[group[-1] + 1])
        splits.append((np.setdiff1d(all_rows, held_out, assume_unique=True), held_out))
    return splits


def leave_one_story_out(story_lengths: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation splits ``[(train_rows, validation_rows)]``, one per story (:func:`story_folds`)."""
    return story_folds(story_lengths)


def resolve_backend(name: str = "auto") -> str:
    """The himalaya backend for ``name``: ``auto`` → torch_cuda when a GPU is visible, else numpy."""
    if name != "auto":
        if name == "torch_cuda" and not _cuda_available():
            raise InputError(None, "encoding.backend is torch_cuda but no CUDA GPU is visible.", "set encoding.backend: auto.")
        return name
    return "torch_cuda" if _cuda_available() else CPU_BACKEND


def _cuda_available() -> bool:
    """Whether torch sees a CUDA GPU; on a machine without a GPU driver, without importing torch (1–2 s a job)."""
    if "torch" not in sys.modules and sys.platform != "win32" and not any(map(os.path.exists, GPU_DRIVER_PATHS)):
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _set_backend(name: str):
    from himalaya.backend import set_backend

    return set_backend(name, on_error="raise")


def _is_eigh_failure(error: BaseException) -> bool:
    """A failed eigendecomposition (numpy/torch LinAlgError or himalaya's wrapped message)."""
    return "LinAlgError" in type(error).__name__ or "eig" in str(error).lower()


def _fit_kernel_with_svd_fallback(make_model, fit_args: tuple, solver_params: dict):
    """Fit a kernel model with ``eigh``; if the decomposition fails (float32 on GPU), refit with SVD."""
    try:
        return make_model(solver_params).fit(*fit_args), "eigh"
    except (RuntimeError, np.linalg.LinAlgError) as error:
        if not _is_eigh_failure(error):
            raise
        log.warning("eigh failed (%s); refitting with diagonalize_method='svd'", str(error).splitlines()[0])
        return make_model({**solver_params, "diagonalize_method": "svd"}).fit(*fit_args), "svd"


#: ``encoding.solver``: ``auto`` = fold-wise eigh (primal or dual), ``himalaya`` = RidgeCV / KernelRidgeCV
RIDGE_SOLVERS = ("auto", "himalaya")


def _cv_score_function(cv_score: str):
    """himalaya's validation score for ``encoding.cv_score``."""
    from himalaya.scoring import correlation_score, l2_neg_loss

    from .ridge_cv import CV_SCORES

    if cv_score not in CV_SCORES:
        raise InputError(None, f"unknown encoding.cv_score {cv_score!r}.", f"use one of {', '.join(CV_SCORES)}.")
    return {"l2": l2_neg_loss, "correlation": correlation_score}[cv_score]


def _solver_params(settings: Mapping) -> dict:
    return {
        "n_targets_batch": int(settings.get("n_targets_batch", 4096)),
        "n_alphas_batch": int(settings.get("n_alphas_batch", 13)),
        "n_targets_batch_refit": int(settings.get("n_targets_batch_refit", 4096)),
    }


def fit_ridge(
    X_train: np.ndarray,
    Y_train: np.ndarray,
    story_lengths: Sequence[int],
    alphas: np.ndarray,
    backend: str = "auto",
    solver_params: Mapping | None = None,
    solver: str = "auto",
    cv_score: str = "correlation",
) -> EncodingFit:
    """Ridge with per-voxel α by leave-one-story-out CV on a himalaya backend (float32).

    Primal when n_samples > n_features: :func:`brainllm.ridge_cv.ridge_cv_eigh`; dual
    otherwise: :func:`brainllm.ridge_cv.kernel_ridge_cv_eigh`. With ``solver="himalaya"``, or
    when an eigendecomposition fails, himalaya's ``RidgeCV`` / ``KernelRidgeCV`` (linear
    kernel; SVD). α maximises the mean validation ``cv_score``
    (``correlation``: Pearson r, as bootstrap ridge and the test scores; ``l2``: negative
    squared error, himalaya's default). Returns primal weights ``(n_features, n_voxels)``.
    """
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    from .ridge_cv import kernel_ridge_cv_eigh, ridge_cv_eigh

    if solver not in RIDGE_SOLVERS:
        raise InputError(None, f"unknown encoding.solver {solver!r}.", f"use one of {', '.join(RIDGE_SOLVERS)}.")
    score_func = _cv_score_function(cv_score)
    backend_name = resolve_backend(backend)
    hb = _set_backend(backend_name)
    X_train = np.ascontiguousarray(X_train, dtype=np.float32)
    Y_train = np.ascontiguousarray(Y_train, dtype=np.float32)
    cv = leave_one_story_out(story_lengths)
    params = {**dict(solver_params or {}), "score_func": score_func}
    n_samples, n_features = X_train.shape
    if solver == "auto":
        primal = n_samples > n_features
        fold_wise, name = (ridge_cv_eigh, "ridge_cv_eigh") if primal else (kernel_ridge_cv_eigh, "kernel_ridge_cv_eigh")
        log.info("%s (%s: %d samples %s %d features), backend %s", name, "primal" if primal else "dual", n_samples,
                 ">" if primal else "<=", n_features, backend_name)
        try:
            weights, best_alphas, _, validation_r = fold_wise(
                X_train, Y_train, cv, np.asarray(alphas, dtype=np.float64), cv_score, params.get("n_targets_batch", 4096)
            )
            return EncodingFit(
                weights=weights, alphas=best_alphas, method="ridge", solver=name, backend=backend_name,
                info={"diagonalize_method": "eigh", "cv_folds": len(cv), "cv_score": cv_score, **grid_edges(best_alphas, alphas)},
                validation_r=validation_r,
            )
        except (RuntimeError, np.linalg.LinAlgError) as error:
            if not _is_eigh_failure(error):
                raise
            log.warning("eigh failed (%s); refitting with himalaya %s (SVD)", str(error).splitlines()[0],
                        "RidgeCV" if primal else "KernelRidgeCV")
    alphas = np.asarray(alphas, dtype=np.float32)
    if n_samples > n_features:
        solver_name = "RidgeCV"
        log.info("%s (primal: %d samples > %d features), backend %s", solver_name, n_samples, n_features, backend_name)
        model = RidgeCV(alphas=alphas, cv=cv, solver_params=params).fit(X_train, Y_train)
        weights = hb.to_numpy(model.coef_)
        diagonalize = "svd"
    else:
        solver_name = "KernelRidgeCV"
        log.info("%s (dual: %d samples <= %d features), backend %s", solver_name, n_samples, n_features, backend_name)

        def make_model(sp):
            return KernelRidgeCV(alphas=alphas, kernel="linear", cv=cv, solver_params=sp)

        if solver == "auto":  # the fold-wise eigendecomposition failed: straight to the SVD
            model, diagonalize = make_model({**params, "diagonalize_method": "svd"}).fit(X_train, Y_train), "svd"
        else:
            model, diagonalize = _fit_kernel_with_svd_fallback(make_model, (X_train, Y_train), {**params, "diagonalize_method": "eigh"})
        weights = hb.to_numpy(model.get_primal_coef())
    best_alphas = hb.to_numpy(model.best_alphas_).astype(np.float64)
    return EncodingFit(
        weights=np.asarray(weights, dtype=np.float32),
        alphas=best_alphas,
        method="ridge",
        solver=solver_name,
        backend=backend_name,
        info={"diagonalize_method": diagonalize, "cv_folds": len(cv), "cv_score": cv_score, **grid_edges(best_alphas, alphas)},
        # himalaya keeps the validation score of the chosen α: a correlation only with that score
        validation_r=np.asarray(hb.to_numpy(model.cv_scores_), dtype=np.float64) if cv_score == "correlation" else None,
    )


def fit_banded_ridge(
    Xs_train: Sequence[np.ndarray],
    Y_train: np.ndarray,
    story_lengths: Sequence[int],
    alphas: np.ndarray,
    backend: str = "auto",
    solver_params: Mapping | None = None,
    n_iter: int = 20,
    seed: int = 0,
    cv_score: str = "correlation",
) -> EncodingFit:
    """Banded ridge over several feature spaces (one per layer): one α and band weights per voxel.

    ``BandedRidgeCV`` when n_samples > total features, else ``MultipleKernelRidgeCV`` over
    linear kernels (``ColumnKernelizer``). Random search over ``n_iter`` band weightings,
    each scored by the mean validation ``cv_score``.
    """
    from himalaya.kernel_ridge import ColumnKernelizer, Kernelizer, MultipleKernelRidgeCV
    from himalaya.ridge import BandedRidgeCV
    from sklearn.pipeline import make_pipeline

    backend_name = resolve_backend(backend)
    hb = _set_backend(backend_name)
    widths = [X.shape[1] for X in Xs_train]
    X_train = np.ascontiguousarray(np.hstack(Xs_train), dtype=np.float32)
    Y_train = np.ascontiguousarray(Y_train, dtype=np.float32)
    cv = leave_one_story_out(story_lengths)
    params = {
        **dict(solver_params or {}), "alphas": np.asarray(alphas, dtype=np.float32), "n_iter": n_iter, "progress_bar": False,
        "score_func": _cv_score_function(cv_score),
    }
    n_samples, n_features = X_train.shape
    bounds = np.concatenate([[0], np.cumsum(widths)])
    if n_samples > n_features:
        solver = "BandedRidgeCV"
        log.info("%s (primal: %d samples > %d features, %d bands), backend %s", solver, n_samples, n_features, len(widths), backend_name)
        groups = np.repeat(np.arange(len(widths)), widths)
        model = BandedRidgeCV(groups=groups, cv=cv, solver_params=params, random_state=seed).fit(X_train, Y_train)
        weights = hb.to_numpy(model.coef_)
        deltas = hb.to_numpy(model.deltas_)
        diagonalize = "svd"
    else:
        solver = "MultipleKernelRidgeCV"
        log.info("%s (dual: %d samples <= %d features, %d bands), backend %s", solver, n_samples, n_features, len(widths), backend_name)
        kernelizer = ColumnKernelizer(
            [(f"band{i}", Kernelizer(kernel="linear"), slice(int(a), int(b))) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
        )

        def make_model(sp):
            return make_pipeline(kernelizer, MultipleKernelRidgeCV(kernels="precomputed", cv=cv, solver_params=sp, random_state=seed))

        pipeline, diagonalize = _fit_kernel_with_svd_fallback(make_model, (X_train, Y_train), {**params, "diagonalize_method": "eigh"})
        ridge = pipeline[-1]
        weights = np.vstack([hb.to_numpy(w) for w in ridge.get_primal_coef(pipeline[0].get_X_fit())])
        deltas = hb.to_numpy(ridge.deltas_)
        model = ridge
    best_alphas = hb.to_numpy(model.best_alphas_).astype(np.float64)
    band_weights = np.exp(deltas) / np.exp(deltas).sum(0, keepdims=True)  # (n_bands, n_voxels), sum to 1
    # cv_scores_ (n_iter, n_voxels): the kept band weighting is the best of the random search
    cv_scores = np.asarray(hb.to_numpy(model.cv_scores_), dtype=np.float64)
    return EncodingFit(
        weights=np.asarray(weights, dtype=np.float32),
        alphas=best_alphas,
        method="banded_ridge",
        solver=solver,
        backend=backend_name,
        info={"diagonalize_method": diagonalize, "cv_folds": len(cv), "cv_score": cv_score, "band_widths": widths, "band_weights": band_weights,
              **grid_edges(best_alphas, alphas)},
        validation_r=cv_scores.max(0) if cv_score == "correlation" else None,
    )


def fit_encoding(
    X_train: np.ndarray,
    Y_train: np.ndarray,
    story_lengths: Sequence[int],
    settings: Mapping,
) -> EncodingFit:
    """Fit the configured ``encoding.method`` on ``X_train`` ``(n_trs, n_features)``."""
    method = settings.get("method", "ridge")
    if method == "ridge":
        grid = settings.get("alphas", {})
        return fit_ridge(
            X_train, Y_train, story_lengths, alpha_grid(**grid), settings.get("backend", "auto"), _solver_params(settings),
            settings.get("solver", "auto"), settings.get("cv_score", "correlation"),
        )
    if method == "bootstrap_ridge":
        from .bootstrap_ridge import bootstrap_alphas, bootstrap_ridge

        boot = dict(settings.get("bootstrap", {}))
        result = bootstrap_ridge(
            X_train, Y_train,
            alphas=bootstrap_alphas(boot.get("log10_min", 1), boot.get("log10_max", 3), boot.get("num", 10)),
            nboots=boot.get("nboots", 50), chunk_trs=boot.get("chunk_trs", 40), nchunks=boot.get("nchunks"),
            single_alpha=boot.get("single_alpha", False), seed=int(settings.get("seed", 0)),
        )
        info = {"nboots": boot.get("nboots", 50), "nchunks": result.nchunks, "chunk_trs": boot.get("chunk_trs", 40), **grid_edges(result.alphas, result.alpha_grid)}
        return EncodingFit(result.weights.astype(np.float32), result.alphas, method, "bootstrap_ridge", "numpy", info, result.validation_r)
    if method == "lipschitz":
        from .lipschitz import MAX_NORM_GRID, cv_max_norm, fit_lipschitz

        lip = dict(settings.get("lipschitz", {}))
        device = "cuda" if resolve_backend(settings.get("backend", "auto")) == "torch_cuda" else "cpu"
        steps, lr = int(lip.get("steps", 300)), float(lip.get("lr", 1.0))
        grid = [lip["max_norm"]] if lip.get("max_norm") is not None else list(lip.get("max_norm_grid") or MAX_NORM_GRID)
        max_norm, grid_scores, validation_r = cv_max_norm(X_train, Y_train, leave_one_story_out(story_lengths), grid, steps, lr, device)
        result = fit_lipschitz(X_train, Y_train, max_norm, steps, lr, device=device)
        return EncodingFit(
            result.weights, np.full(Y_train.shape[1], np.nan), method, "projected_gradient", f"torch:{device}",
            {"spectral_norm": result.spectral_norm, "max_norm": result.max_norm, "train_loss": result.loss, "steps": result.steps,
             "max_norm_grid": sorted(float(g) for g in grid), "max_norm_cv_mean_r": grid_scores.tolist()},
            validation_r,
        )
    raise InputError(None, f"unknown encoding.method {method!r}.", "use ridge, bootstrap_ridge or lipschitz.")


def _mask_indices(mask_nii: str | os.PathLike) -> tuple[nib.Nifti1Image, np.ndarray]:
    image = nib.load(os.fspath(mask_nii))
    mask = np.asarray(image.dataobj) > 0
    if mask.ndim != 3:
        raise InputError(mask_nii, f"mask must be a 3-D volume, got shape {mask.shape}.", "re-run the preprocess rule.")
    return image, mask


def vector_to_volume(values: np.ndarray, mask_nii: str | os.PathLike, out_nii: str | os.PathLike, fill: float = 0.0) -> None:
    """Write per-voxel ``values`` ``(n_voxels,)`` (C order of mask > 0) as a float32 NIfTI on the mask's grid."""
    image, mask = _mask_indices(mask_nii)
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (int(mask.sum()),):
        raise InputError(mask_nii, f"mask has {int(mask.sum())} voxels but the map has {values.shape}.", "use the mask written beside the responses.")
    volume = np.full(mask.shape, fill, dtype=np.float32)
    volume[mask] = values
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    out = nib.Nifti1Image(volume, image.affine, header)
    with atomic_path(out_nii) as tmp:
        tmp.write_bytes(gzip.compress(out.to_bytes(), mtime=0))


def voxel_labels(mask_nii: str | os.PathLike, atlas_nii: str | os.PathLike, atlas_tsv: str | os.PathLike) -> tuple[np.ndarray, dict[int, str]]:
    """Atlas label of every mask voxel ``(n_voxels,)`` and ``{index: name}`` from ``atlas.tsv``."""
    _, mask = _mask_indices(mask_nii)
    atlas = np.asarray(nib.load(os.fspath(atlas_nii)).dataobj)
    if atlas.shape[:3] != mask.shape:
        raise InputError(atlas_nii, f"atlas grid {atlas.shape} differs from the mask grid {mask.shape}.", "resample the atlas to the functional grid.")
    table = pd.read_csv(atlas_tsv, sep="\t")
    if not {"index", "name"} <= set(table.columns):
        raise InputError(atlas_tsv, f"columns {list(table.columns)} lack 'index' and 'name'.", "write a TSV with columns index name.")
    names = {int(i): str(n) for i, n in zip(table["index"], table["name"])}
    return np.rint(atlas[..., 0] if atlas.ndim == 4 else atlas)[mask].astype(int), names


def roi_summary(r: np.ndarray, significant: np.ndarray, labels: np.ndarray, names: Mapping[int, str]) -> pd.DataFrame:
    """``roi, index, n_voxels, mean_r, median_r, frac_significant`` per atlas label (0 = background left out)."""
    rows = []
    for index in sorted(set(np.unique(labels)) - {0}):
        in_roi = labels == index
        rows.append({
            "roi": names.get(int(index), f"label_{int(index)}"),
            "index": int(index),
            "n_voxels": int(in_roi.sum()),
            "mean_r": float(r[in_roi].mean()),
            "median_r": float(np.median(r[in_roi])),
            "frac_significant": float(significant[in_roi].mean()),
        })
    return pd.DataFrame(rows, columns=["roi", "index", "n_voxels", "mean_r", "median_r", "frac_significant"])


def _read_responses(path: str | os.PathLike, stories: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``({story: data (n_trs, n_voxels)}, {story: repeats (n_rep, n_trs, n_voxels)} where present)``."""
    data, repeats = {}, {}
    with open_h5(path) as h5:
        for story in stories:
            if story not in h5 or "data" not in h5[story]:
                raise InputError(path, f"no responses for story {story!r}.", "check dataset.train_stories/test_stories against the ingested runs.")
            data[story] = h5[story]["data"][()]
            if "repeats" in h5[story]:
                repeats[story] = h5[story]["repeats"][()]
    return data, repeats


def segment_buffers(
    responses_h5: str | os.PathLike, train_stories: Sequence[str], test_stories: Sequence[str], buffer_trs: int
) -> dict[str, tuple[int, int]]:
    """TRs to drop ``{story: (at_start, at_end)}`` from training segments next to a test segment.

    Segments of one split run (group attrs ``segment_of``, ``segment_index``) are contiguous
    in time: delays, the Lanczos kernel and detrending spread each side into the other, so
    the ``buffer_trs`` training TRs at a train/test boundary are left out of the fit.
    """
    position = {}
    with open_h5(responses_h5) as h5:
        for story in list(train_stories) + list(test_stories):
            if story in h5 and "segment_of" in h5[story].attrs:
                attrs = h5[story].attrs
                position[story] = (str(attrs["segment_of"]), int(attrs["segment_index"]))
    tested = {position[story] for story in test_stories if story in position}
    drops = {}
    for story in train_stories:
        if story in position:
            run, index = position[story]
            drop = (buffer_trs if (run, index - 1) in tested else 0, buffer_trs if (run, index + 1) in tested else 0)
            if any(drop):
                drops[story] = drop
    return drops


def default_segment_buffer(settings: Mapping) -> int:
    """``encoding.segment_buffer_trs``, default max delay + the Lanczos half-width in TRs."""
    if settings.get("segment_buffer_trs") is not None:
        return int(settings["segment_buffer_trs"])
    delays = [int(d) for d in settings.get("delays", [1, 2, 3, 4])]
    half_width = int(np.ceil(int(settings.get("lanczos_window", 3)) / float(settings.get("lanczos_cutoff_mult", 1.0))))
    return max(max(delays), 0) + half_width


def build_design(
    aligned: Mapping[int, Mapping[str, np.ndarray]],
    responses: Mapping[str, np.ndarray],
    stories: Sequence[str],
    delays: Sequence[int],
    aligned_path: str | os.PathLike = None,
    drop: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[list[np.ndarray], np.ndarray, list[int]]:
    """Per-layer delayed designs ``[(n_trs, hidden · n_delays)]``, responses ``(n_trs, n_voxels)``, story lengths.

    Delays are applied within each story (no leakage across story boundaries); then the
    ``drop`` rows ``{story: (at_start, at_end)}`` are removed; responses are z-scored per story.
    """
    designs = {layer: [] for layer in aligned}
    ys, lengths = [], []
    drop = drop or {}
    for story in stories:
        resp = responses[story]
        head, tail = drop.get(story, (0, 0))
        keep = slice(head, resp.shape[0] - tail)
        if head + tail >= resp.shape[0]:
            raise InputError(aligned_path, f"story {story!r}: the segment buffer of {head}+{tail} TRs leaves none of its {resp.shape[0]} TRs.",
                             "lower encoding.segment_buffer_trs or use longer segments.")
        for layer, per_story in aligned.items():
            features = per_story[story]
            if features.shape[0] != resp.shape[0]:
                raise InputError(
                    aligned_path,
                    f"story {story!r}: {features.shape[0]} aligned TRs but {resp.shape[0]} response TRs.",
                    "re-run the align rule after the responses changed.",
                )
            designs[layer].append(make_delayed(features, delays)[keep])
        ys.append(zscore_columns(resp[keep]))
        lengths.append(keep.stop - keep.start)
    return [np.vstack(designs[layer]).astype(np.float32) for layer in aligned], np.vstack(ys).astype(np.float32), lengths


def load_ground_truth(
    path: str | os.PathLike,
    subject: str,
    dataset_mask: str | os.PathLike,
    analysis_mask: str | os.PathLike,
) -> dict:
    """Ground truth of ``subject`` on the analysed voxels (``analysis_mask`` ⊆ ``dataset_mask``).

    ``ground_truth.json`` (the demo) indexes the dataset mask's voxels in C order under
    ``per_subject.<subject>``; preprocessing may drop voxels, so values are carried over
    by position. Returns ``planted_layer``, ``signal`` (bool) and ``ceiling_r_test``, each
    ``(n_analysed_voxels,)``.
    """
    truth = json.loads(open(path).read())
    entry = truth.get("per_subject", {}).get(subject)
    if entry is None or not {"signal_voxels", "ceiling_r_test"} <= set(entry) or "planted_layer" not in truth:
        raise InputError(path, f"no planted_layer, or no per_subject.{subject} with signal_voxels and ceiling_r_test.", "regenerate the demo dataset or unset dataset.ground_truth.")
    dataset_positions = np.flatnonzero(_mask_indices(dataset_mask)[1])
    analysis_positions = np.flatnonzero(_mask_indices(analysis_mask)[1])
    ceiling = np.asarray(entry["ceiling_r_test"], dtype=np.float64)
    if ceiling.size != dataset_positions.size:
        raise InputError(path, f"subject {subject!r}: {ceiling.size} ceiling values for the {dataset_positions.size} voxels of {dataset_mask}.", "use the ground truth generated with this dataset.")
    index = np.minimum(np.searchsorted(dataset_positions, analysis_positions), dataset_positions.size - 1)
    if not np.array_equal(dataset_positions[index], analysis_positions):
        raise InputError(analysis_mask, f"holds voxels outside the dataset mask {dataset_mask}.", "re-run ingest and preprocess.")
    signal = np.zeros(dataset_positions.size, dtype=bool)
    signal[np.asarray(entry["signal_voxels"], dtype=np.int64)] = True
    return {"planted_layer": int(entry.get("planted_layer", truth["planted_layer"])), "signal": signal[index], "ceiling_r_test": ceiling[index]}


def _ground_truth_summary(truth: Mapping, scores: pd.DataFrame) -> dict:
    signal = truth["signal"]
    significant = scores["significant"].to_numpy()
    rates = metrics.detection_rates(significant, signal)
    r, p = scores["r"].to_numpy(), scores["p"].to_numpy()
    mean_ceiling = float(truth["ceiling_r_test"][signal].mean())
    return {
        "planted_layer": truth["planted_layer"],
        "n_signal_voxels": int(signal.sum()),
        "detection_sensitivity": rates["sensitivity"],
        "detection_specificity": rates["specificity"],
        # calibration among the pure-noise voxels, and the share of FDR discoveries that are false
        "noise_fraction_p05": float((p[~signal] < 0.05).mean()) if (~signal).any() else None,
        "false_discovery_proportion": float((significant & ~signal).sum() / significant.sum()) if significant.any() else 0.0,
        "mean_r_signal": float(r[signal].mean()),
        "mean_ceiling_r_signal": mean_ceiling,
        "r_over_ceiling_signal": float(r[signal].mean() / mean_ceiling) if mean_ceiling > 0 else None,
        "mean_r_noise": float(r[~signal].mean()) if (~signal).any() else None,
    }


def _invariance_summary(pred: np.ndarray, Y_test: np.ndarray, X_test: np.ndarray, weights: np.ndarray, settings: Mapping) -> dict:
    inv = dict(settings.get("invariance", {}))
    n_resamples = int(inv.get("n_resamples", 20))
    chunk_trs = int(inv.get("chunk_trs", 40))
    noise_std = float(inv.get("input_noise_std", 0.1))
    seed = int(settings.get("seed", 0))
    out = {}
    if Y_test.shape[0] >= 2 * chunk_trs and n_resamples >= 2:
        maps = metrics.chunk_bootstrap_scores(pred, Y_test, chunk_trs, n_resamples, seed)
        out["test_chunks"] = metrics.invariance(maps)
    if n_resamples >= 2 and noise_std > 0:
        rng = np.random.default_rng(seed + 1)
        maps = np.stack([
            metrics.pearson_r((X_test + noise_std * rng.standard_normal(X_test.shape, dtype=np.float32)) @ weights, Y_test)
            for _ in range(n_resamples)
        ])
        out["input_noise"] = {**metrics.invariance(maps), "noise_std": noise_std}
    return out


def run_encoding(
    aligned_h5: str | os.PathLike,
    responses_h5: str | os.PathLike,
    mask_nii: str | os.PathLike,
    layers: Sequence[int],
    train_stories: Sequence[str],
    test_stories: Sequence[str],
    settings: Mapping,
    scores_tsv: str | os.PathLike,
    r_nii: str | os.PathLike,
    roi_tsv: str | os.PathLike,
    summary_json: str | os.PathLike,
    weights_path: str | os.PathLike | None = None,
    atlas_nii: str | os.PathLike | None = None,
    atlas_tsv: str | os.PathLike | None = None,
    ground_truth: str | os.PathLike | None = None,
    dataset_mask: str | os.PathLike | None = None,
    subject: str | None = None,
    model: str | None = None,
    predictions_h5: str | os.PathLike | None = None,
) -> dict:
    """Fit one encoding model (one layer, or banded ridge over several) and write its outputs.

    ``mask_nii`` is the analysis mask beside the responses; with ``ground_truth`` (the demo)
    the summary compares detections with the planted voxels, indexed by ``dataset_mask``
    (default: ``mask_nii``). ``predictions_h5``: the test-TR predictions, for paired model
    comparisons. Returns the summary written to ``summary_json``.
    """
    started = time.perf_counter()
    layers = [int(layer) for layer in layers]
    banded = len(layers) > 1
    delays = [int(d) for d in settings.get("delays", [1, 2, 3, 4])]
    stories = list(train_stories) + list(test_stories)
    if len(train_stories) < 2:
        raise InputError(None, "leave-one-story-out cross-validation needs at least 2 training stories.", "list more stories under dataset.train_stories.")
    if set(train_stories) & set(test_stories):
        raise InputError(None, f"stories {sorted(set(train_stories) & set(test_stories))} are both train and test.", "make dataset.train_stories and test_stories disjoint.")
    aligned = {layer: read_aligned(aligned_h5, stories, layer) for layer in layers}
    responses, repeats = _read_responses(responses_h5, stories)
    buffers = segment_buffers(responses_h5, train_stories, test_stories, default_segment_buffer(settings))
    for story, (head, tail) in buffers.items():
        log.info("training segment %s: %d TRs dropped at its start, %d at its end (next to a test segment)", story, head, tail)
    Xs_train, Y_train, train_lengths = build_design(aligned, responses, train_stories, delays, aligned_h5, buffers)
    Xs_test, Y_test, test_lengths = build_design(aligned, responses, test_stories, delays, aligned_h5)
    X_train, X_test = np.hstack(Xs_train), np.hstack(Xs_test)
    del aligned, responses
    _, mask = _mask_indices(mask_nii)
    if int(mask.sum()) != Y_train.shape[1]:
        raise InputError(mask_nii, f"mask has {int(mask.sum())} voxels, responses have {Y_train.shape[1]}.", "use the mask written beside the preprocessed responses.")
    log.info("layers %s, delays %s: train %s, test %s; X %s, Y %s", layers, delays, train_lengths, Y_test.shape[0], X_train.shape, Y_train.shape)

    fit_started = time.perf_counter()
    if banded:
        banded_cfg = dict(settings.get("banded", {}))
        fit = fit_banded_ridge(
            Xs_train, Y_train, train_lengths, alpha_grid(**settings.get("alphas", {})), settings.get("backend", "auto"),
            _solver_params(settings), int(banded_cfg.get("n_iter", 20)), int(settings.get("seed", 0)), settings.get("cv_score", "correlation"),
        )
    else:
        fit = fit_encoding(X_train, Y_train, train_lengths, settings)
    fit_seconds = time.perf_counter() - fit_started
    log.info("%s fitted in %.1f s (solver %s, backend %s)", fit.method, fit_seconds, fit.solver, fit.backend)

    pred = X_test @ fit.weights
    significance = Significance.from_settings(settings)
    scores = score_voxels(pred, Y_test, float(settings.get("fdr_q", 0.05)), significance)
    scores.insert(2, "r_val", np.nan if fit.validation_r is None else np.asarray(fit.validation_r, dtype=np.float64))
    scores["alpha"] = fit.alphas
    r = scores["r"].to_numpy()
    r_val = scores["r_val"].to_numpy()
    if fit.validation_r is None:
        log.warning("solver %s with cv_score %s exposes no validation r: top-10%% voxels and layer choice need it (set encoding.cv_score: correlation)",
                    fit.solver, settings.get("cv_score", "correlation"))
    summary = {
        "subject": subject,
        "model": model,
        "layers": layers,
        "method": fit.method,
        "solver": fit.solver,
        "backend": fit.backend,
        "delays": delays,
        "train_stories": list(train_stories),
        "test_stories": list(test_stories),
        "n_train_trs": int(X_train.shape[0]),
        "segment_buffer_trs": {story: list(drop) for story, drop in buffers.items()},
        "n_test_trs": int(X_test.shape[0]),
        "n_features": int(X_train.shape[1]),
        "n_voxels": int(r.size),
        "mean_r": float(r.mean()),
        "median_r": float(np.median(r)),
        "mean_r_val": float(r_val.mean()) if fit.validation_r is not None else None,
        # the 10 % of voxels best by validation r (chosen before the test), scored by their test r
        "mean_r_top10": float(r[top_voxels(r_val)].mean()) if fit.validation_r is not None else None,
        "top10_selection": "validation r (cross-validation within the training stories)",
        "max_r": float(r.max()),
        "fdr_q": float(settings.get("fdr_q", 0.05)),
        "significance": significance.record(),
        "n_significant": int(scores["significant"].sum()),
        "mean_mi_bits": float(metrics.gaussian_copula_mi(pred, Y_test).mean()),
        "alpha_median": float(np.nanmedian(fit.alphas)) if np.isfinite(fit.alphas).any() else None,
        "fit_info": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in fit.info.items() if k != "band_weights"},
        "invariance": _invariance_summary(pred, Y_test, X_test, fit.weights, settings),
    }
    if banded:
        summary["mean_band_weights"] = fit.info["band_weights"].mean(1).tolist()
    test_repeats = [repeats.get(story) for story in test_stories]
    if all(rep is not None for rep in test_repeats) and len({rep.shape[0] for rep in test_repeats}) == 1:
        ev = metrics.noise_ceiling(np.concatenate(test_repeats, axis=1))
        ceiling = metrics.ceiling_r(ev, n_averaged=test_repeats[0].shape[0])
        summary["noise_ceiling"] = {
            "n_repeats": int(test_repeats[0].shape[0]),
            "mean_ceiling_r": float(np.nanmean(ceiling)) if np.isfinite(ceiling).any() else None,
            "median_normalised_r": float(np.nanmedian(r / ceiling)) if np.isfinite(ceiling).any() else None,
        }
    if ground_truth:
        truth = load_ground_truth(ground_truth, subject, dataset_mask or mask_nii, mask_nii)
        summary["ground_truth"] = _ground_truth_summary(truth, scores)
    if predictions_h5:
        save_predictions(predictions_h5, pred, test_stories, test_lengths, layers, settings.get("predictions_dtype", "float16"))

    write_tsv(scores_tsv, scores)
    vector_to_volume(r, mask_nii, r_nii)
    if atlas_nii and atlas_tsv:
        labels, names = voxel_labels(mask_nii, atlas_nii, atlas_tsv)
        rois = roi_summary(r, scores["significant"].to_numpy(), labels, names)
    else:
        rois = roi_summary(r, scores["significant"].to_numpy(), np.zeros(r.size, dtype=int), {})
    rois = pd.concat([pd.DataFrame([{
        "roi": "all", "index": -1, "n_voxels": int(r.size), "mean_r": float(r.mean()),
        "median_r": float(np.median(r)), "frac_significant": float(scores["significant"].mean()),
    }]), rois], ignore_index=True)
    write_tsv(roi_tsv, rois)
    if weights_path:
        _save_weights(weights_path, fit, layers, delays)
    summary["timing_s"] = {"fit": round(fit_seconds, 3), "total": round(time.perf_counter() - started, 3)}
    write_json(summary_json, summary)
    log.info("mean r %.4f, mean validation r %s, %d significant of %d voxels (%s)", summary["mean_r"], summary["mean_r_val"],
             summary["n_significant"], r.size, significance.method)
    return summary


def held_out_responses(responses_h5, test_stories: Sequence[str]) -> np.ndarray:
    """The test responses ``(n_test_trs, n_voxels)`` exactly as scored (z-scored per story, concatenated)."""
    data, _ = _read_responses(responses_h5, test_stories)
    return np.vstack([zscore_columns(data[story]) for story in test_stories]).astype(np.float32)


def _save_weights(path: str | os.PathLike, fit: EncodingFit, layers: Sequence[int], delays: Sequence[int]) -> None:
    from safetensors.numpy import save_file

    tensors = {"weights": np.ascontiguousarray(fit.weights), "alphas": np.ascontiguousarray(fit.alphas, dtype=np.float64)}
    metadata = {"method": fit.method, "solver": fit.solver, "layers": json.dumps(list(layers)), "delays": json.dumps(list(delays)),
                "layout": "weights (n_features = hidden x n_delays, delay-major, layers in order; n_voxels)"}
    with atomic_path(path) as tmp:
        save_file(tensors, os.fspath(tmp), metadata=metadata)
