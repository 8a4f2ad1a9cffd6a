"""Scores for encoding and decoding models (ARCHITECTURE §8).

Column-wise conventions: arrays of shape ``(n_samples, n_columns)`` (for example
``(n_trs, n_voxels)``) are scored column by column. A column with zero variance has no
defined correlation; it scores ``r = 0`` (``p = 1``) so that maps and means stay finite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import special, stats
from scipy.spatial import cKDTree

__all__ = [
    "pearson_r",
    "pearson_p",
    "fdr_bh",
    "gaussian_copula_mi",
    "knn_mi",
    "mutual_information",
    "sensitivity_specificity",
    "detection_rates",
    "invariance",
    "chunk_bootstrap_scores",
    "noise_ceiling",
    "ceiling_r",
    "normalised_r",
    "retrieval_accuracy",
]


def _as_2d(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    return array[:, None] if array.ndim == 1 else array


def pearson_r(pred: np.ndarray, resp: np.ndarray) -> np.ndarray:
    """Pearson correlation per column of ``pred`` and ``resp`` (both ``(n_samples, n_columns)``).

    Returns ``(n_columns,)`` (a 1-D input gives a length-1 array); zero-variance columns give 0.
    """
    pred, resp = _as_2d(pred), _as_2d(resp)
    if pred.shape != resp.shape:
        raise ValueError(f"pred {pred.shape} and resp {resp.shape} differ in shape")
    pred_c = pred - pred.mean(0)
    resp_c = resp - resp.mean(0)
    denom = np.sqrt((pred_c**2).sum(0) * (resp_c**2).sum(0))
    numer = (pred_c * resp_c).sum(0)
    r = np.divide(numer, denom, out=np.zeros_like(numer), where=denom > 0)
    return np.clip(r, -1.0, 1.0)


def pearson_p(r: np.ndarray, n_samples: int) -> np.ndarray:
    """Two-sided p-value of Pearson correlations ``r`` over ``n_samples`` (t distribution, n−2 dof)."""
    if n_samples < 3:
        raise ValueError(f"a p-value needs at least 3 samples, got {n_samples}")
    r = np.asarray(r, dtype=np.float64)
    dof = n_samples - 2
    with np.errstate(divide="ignore"):
        t = np.abs(r) * np.sqrt(dof / np.maximum(1.0 - r**2, 0.0))
    return np.clip(2.0 * stats.t.sf(t, dof), 0.0, 1.0)


def fdr_bh(p_values: np.ndarray, q: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini–Hochberg: ``(p_adjusted, significant)`` where ``significant = p_adjusted <= q``."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p-values must be 1-D, got shape {p.shape}")
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    if p.size == 0:
        return p.copy(), np.zeros(0, dtype=bool)
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty_like(p)
    adjusted[order] = np.clip(ranked, 0.0, 1.0)
    return adjusted, adjusted <= q


def _copula_normal_scores(x: np.ndarray) -> np.ndarray:
    """Ranks of each column mapped to standard-normal quantiles."""
    ranks = stats.rankdata(x, axis=0)
    return special.ndtri(ranks / (x.shape[0] + 1.0))


def gaussian_copula_mi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gaussian-copula mutual information in bits per column pair: −½·log2(1 − r²) of normal scores."""
    x, y = _as_2d(x), _as_2d(y)
    r = pearson_r(_copula_normal_scores(x), _copula_normal_scores(y))
    return -0.5 * np.log2(np.maximum(1.0 - r**2, np.finfo(np.float64).tiny))


def knn_mi(x: np.ndarray, y: np.ndarray, k: int = 3) -> float:
    """Kraskov–Stögbauer–Grassberger estimator (algorithm 1) of I(x; y) in bits.

    ``x`` ``(n_samples,)`` or ``(n_samples, d_x)``, ``y`` likewise; max-norm neighbourhoods.
    """
    x, y = _as_2d(x), _as_2d(y)
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x has {n} samples, y has {y.shape[0]}")
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n_samples), got {k}")
    joint = np.hstack([x, y])
    # distance to the k-th neighbour in the joint space (the point itself is neighbour 0)
    eps = cKDTree(joint).query(joint, k=k + 1, p=np.inf)[0][:, -1]
    # neighbours strictly closer than eps in each marginal, excluding the point itself
    radius = np.nextafter(eps, 0)
    n_x = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True) - 1
    n_y = cKDTree(y).query_ball_point(y, radius, p=np.inf, return_length=True) - 1
    nats = special.digamma(k) + special.digamma(n) - np.mean(special.digamma(n_x + 1) + special.digamma(n_y + 1))
    return max(float(nats) / math.log(2.0), 0.0)


def mutual_information(pred: np.ndarray, resp: np.ndarray, method: str = "copula", k: int = 3) -> np.ndarray:
    """MI in bits per column of ``pred``/``resp`` ``(n_samples, n_columns)``: ``copula`` or ``knn``."""
    if method == "copula":
        return gaussian_copula_mi(pred, resp)
    if method == "knn":
        pred, resp = _as_2d(pred), _as_2d(resp)
        return np.array([knn_mi(pred[:, j], resp[:, j], k=k) for j in range(pred.shape[1])])
    raise ValueError(f"unknown MI method {method!r}; use 'copula' or 'knn'")


def sensitivity_specificity(y_true: Sequence, y_pred: Sequence, labels: Sequence | None = None) -> dict:
    """Per-class sensitivity (true-positive rate) and specificity (true-negative rate), one-vs-rest.

    Returns ``{"labels", "sensitivity", "specificity"}`` (per class, in ``labels`` order) and
    their macro averages ``"sensitivity_macro"``, ``"specificity_macro"`` (classes without
    positives, or without negatives, are left out of the respective average).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    labels = np.unique(np.concatenate([y_true, y_pred])) if labels is None else np.asarray(labels)
    sens, spec = [], []
    for label in labels:
        positive, predicted = y_true == label, y_pred == label
        n_pos, n_neg = positive.sum(), (~positive).sum()
        sens.append((predicted & positive).sum() / n_pos if n_pos else np.nan)
        spec.append((~predicted & ~positive).sum() / n_neg if n_neg else np.nan)
    sens, spec = np.array(sens, dtype=float), np.array(spec, dtype=float)
    return {
        "labels": labels.tolist(),
        "sensitivity": sens,
        "specificity": spec,
        "sensitivity_macro": float(np.nanmean(sens)) if np.isfinite(sens).any() else float("nan"),
        "specificity_macro": float(np.nanmean(spec)) if np.isfinite(spec).any() else float("nan"),
    }


def detection_rates(detected_mask: np.ndarray, truth_mask: np.ndarray) -> dict:
    """Voxel detection against ground truth: sensitivity, specificity and the confusion counts."""
    detected, truth = np.asarray(detected_mask, bool), np.asarray(truth_mask, bool)
    if detected.shape != truth.shape:
        raise ValueError(f"detected {detected.shape} and truth {truth.shape} differ in shape")
    tp, fn = int((detected & truth).sum()), int((~detected & truth).sum())
    tn, fp = int((~detected & ~truth).sum()), int((detected & ~truth).sum())
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "true_positives": tp,
        "false_negatives": fn,
        "true_negatives": tn,
        "false_positives": fp,
    }


def invariance(score_maps: np.ndarray) -> dict:
    """Stability of ``score_maps`` ``(K, n_voxels)`` across K resamples.

    ``mean_pairwise_r``: mean Pearson correlation over all pairs of maps (1 = perfectly
    invariant); ``cv_mean_score``: coefficient of variation (std / |mean|) of each map's mean.
    """
    maps = np.asarray(score_maps, dtype=np.float64)
    if maps.ndim != 2 or maps.shape[0] < 2:
        raise ValueError(f"score_maps must be (K >= 2, n_voxels), got shape {maps.shape}")
    centred = maps - maps.mean(1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    gram = centred @ centred.T
    outer = np.outer(norms, norms)
    corr = np.divide(gram, outer, out=np.zeros_like(gram), where=outer > 0)
    pairs = np.triu_indices(maps.shape[0], k=1)
    means = maps.mean(1)
    mean_of_means = means.mean()
    cv = means.std(ddof=1) / abs(mean_of_means) if mean_of_means != 0 else float("inf")
    return {"mean_pairwise_r": float(corr[pairs].mean()), "cv_mean_score": float(cv), "n_resamples": int(maps.shape[0])}


def chunk_bootstrap_scores(
    pred: np.ndarray, resp: np.ndarray, chunk_trs: int = 40, n_resamples: int = 20, seed: int = 0
) -> np.ndarray:
    """K score maps ``(n_resamples, n_voxels)``: Pearson r on bootstraps of consecutive test chunks.

    The test rows ``(n_trs, n_voxels)`` are cut into consecutive ``chunk_trs`` chunks; each
    resample draws as many chunks with replacement (seeded) and scores their concatenation.
    """
    pred, resp = _as_2d(pred), _as_2d(resp)
    n_trs = pred.shape[0]
    chunks = [np.arange(start, min(start + chunk_trs, n_trs)) for start in range(0, n_trs, chunk_trs)]
    if len(chunks) < 2:
        raise ValueError(f"{n_trs} test rows give fewer than 2 chunks of {chunk_trs}; lower chunk_trs")
    rng = np.random.default_rng(seed)
    maps = np.empty((n_resamples, pred.shape[1]))
    for i in range(n_resamples):
        rows = np.concatenate([chunks[j] for j in rng.integers(0, len(chunks), len(chunks))])
        maps[i] = pearson_r(pred[rows], resp[rows])
    return maps


def noise_ceiling(repeats: np.ndarray) -> np.ndarray:
    """Bias-corrected explainable variance per voxel from ``repeats`` ``(n_rep, n_trs, n_voxels)``.

    ev = var(mean over repeats) / mean over repeats of var(repeat); returned as
    ev − (1 − ev)/(n_rep − 1), the fraction of single-repeat variance that is signal
    (0 in expectation for pure noise; may be slightly negative).
    """
    repeats = np.asarray(repeats, dtype=np.float64)
    if repeats.ndim != 3 or repeats.shape[0] < 2:
        raise ValueError(f"repeats must be (n_rep >= 2, n_trs, n_voxels), got shape {repeats.shape}")
    n_rep = repeats.shape[0]
    mean_var = repeats.var(axis=1).mean(0)
    ev = np.divide(repeats.mean(0).var(0), mean_var, out=np.zeros_like(mean_var), where=mean_var > 0)
    return ev - (1.0 - ev) / (n_rep - 1)


def ceiling_r(explainable_variance: np.ndarray, n_averaged: int = 1) -> np.ndarray:
    """Highest correlation a perfect model can reach against the mean of ``n_averaged`` repeats.

    With e the single-repeat explainable fraction: sqrt(n·e / (n·e + 1 − e)); NaN where e ≤ 0.
    """
    e = np.asarray(explainable_variance, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sqrt(n_averaged * e / (n_averaged * e + 1.0 - e))
    return np.where(e > 0, np.minimum(r, 1.0), np.nan)


def normalised_r(r: np.ndarray, explainable_variance: np.ndarray, n_averaged: int = 1) -> np.ndarray:
    """Correlation divided by its noise ceiling (:func:`ceiling_r`); NaN where the ceiling is undefined."""
    return np.asarray(r, dtype=np.float64) / ceiling_r(explainable_variance, n_averaged)


def _ranks_of_diagonal(similarity: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of the correct candidate (the diagonal) in each row; ties count against it."""
    correct = np.diag(similarity)[:, None]
    return (similarity >= correct).sum(1).astype(np.float64)


def retrieval_accuracy(
    similarity: np.ndarray,
    k: Sequence[int] = (1, 5),
    n_candidates: int | None = None,
    n_draws: int = 1,
    seed: int = 0,
) -> dict:
    """Top-k retrieval among ``n_candidates`` in both directions of ``similarity`` ``(N, N)``.

    Entry (i, j) is the similarity of query i (e.g. brain) to candidate j (e.g. text); the
    correct candidate is j = i. ``row_to_column`` ranks each row, ``column_to_row`` each
    column. Each draw picks ``n_candidates`` items without replacement (all N when None);
    accuracies and mean ranks are averaged over draws. Ties count against the correct item.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be square (N, N), got shape {similarity.shape}")
    n_items = similarity.shape[0]
    n_candidates = n_items if n_candidates is None else int(n_candidates)
    if not 2 <= n_candidates <= n_items:
        raise ValueError(f"n_candidates must be in [2, {n_items}], got {n_candidates}")
    if n_candidates == n_items:
        n_draws = 1
    rng = np.random.default_rng(seed)
    directions = {"row_to_column": [], "column_to_row": []}
    for _ in range(n_draws):
        items = np.sort(rng.choice(n_items, n_candidates, replace=False)) if n_candidates < n_items else np.arange(n_items)
        sub = similarity[np.ix_(items, items)]
        directions["row_to_column"].append(_ranks_of_diagonal(sub))
        directions["column_to_row"].append(_ranks_of_diagonal(sub.T))
    result: dict = {"n_candidates": n_candidates, "n_draws": n_draws}
    for name, ranks_per_draw in directions.items():
        ranks = np.stack(ranks_per_draw)  # (n_draws, n_candidates)
        entry = {f"top{kk}": float((ranks <= kk).mean()) for kk in k}
        entry["mean_rank"] = float(ranks.mean())
        result[name] = entry
    result["chance"] = {f"top{kk}": min(kk, n_candidates) / n_candidates for kk in k}
    result["chance"]["mean_rank"] = (n_candidates + 1) / 2.0
    return result
