"""Bootstrap ridge regression (the Huth-lab algorithm, ARCHITECTURE §4), seeded.

Per bootstrap, ``nchunks`` consecutive ``chunk_trs``-row chunks of the training rows are
held out; ridge is solved through the SVD of the remaining stimulus (singular values
≤ 1e-10 dropped) with α entering squared: prediction = (P·V · S/(S²+α²)) · (Uᵀ·Y).
Each voxel (or all voxels, with ``single_alpha``) takes the α with the best mean held-out
correlation over bootstraps, and the weights are refit on all training rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .metrics import pearson_r

log = logging.getLogger(__name__)

SINGULAR_VALUE_MIN = 1e-10

#: fraction of training rows held out per bootstrap when ``nchunks`` is not set (the reference's ≈ 20 %)
HELDOUT_FRACTION = 0.2

__all__ = ["BootstrapRidgeResult", "HELDOUT_FRACTION", "default_nchunks", "bootstrap_alphas", "heldout_chunks", "ridge_corr", "ridge_weights", "bootstrap_ridge"]


@dataclass
class BootstrapRidgeResult:
    weights: np.ndarray  # (n_features, n_voxels), refit on all training rows
    alphas: np.ndarray  # (n_voxels,) chosen α per voxel
    mean_corrs: np.ndarray  # (n_alphas, n_voxels) held-out correlation averaged over bootstraps
    alpha_grid: np.ndarray  # (n_alphas,)
    nchunks: int  # chunks held out per bootstrap

    @property
    def validation_r(self) -> np.ndarray:
        """(n_voxels,) mean held-out correlation over bootstraps at each voxel's chosen α."""
        return self.mean_corrs[np.searchsorted(self.alpha_grid, self.alphas), np.arange(self.alphas.size)]


def bootstrap_alphas(log10_min: float = 1.0, log10_max: float = 3.0, num: int = 10) -> np.ndarray:
    """The reference α grid, ``logspace(1, 3, 10)`` by default."""
    return np.logspace(log10_min, log10_max, num)


def default_nchunks(n_rows: int, chunk_trs: int, heldout_fraction: float = HELDOUT_FRACTION) -> int:
    """Chunks to hold out so that about ``heldout_fraction`` of ``n_rows`` is held out (at least 1)."""
    n_chunks = -(-n_rows // chunk_trs)
    return int(min(max(1, round(heldout_fraction * n_rows / chunk_trs)), max(1, n_chunks - 1)))


def heldout_chunks(n_rows: int, chunk_trs: int, nchunks: int, nboots: int, seed: int) -> list[np.ndarray]:
    """Held-out row indices of each bootstrap: ``nchunks`` random consecutive chunks (seeded).

    Rows are cut into consecutive ``chunk_trs`` chunks (the last may be shorter); every
    bootstrap holds out a different random draw of ``nchunks`` of them, without replacement.
    """
    chunks = [np.arange(start, min(start + chunk_trs, n_rows)) for start in range(0, n_rows, chunk_trs)]
    if nchunks >= len(chunks):
        raise ValueError(
            f"{n_rows} training rows give {len(chunks)} chunks of {chunk_trs}; cannot hold out {nchunks} "
            "and keep any for training (lower encoding.bootstrap.nchunks or chunk_trs)"
        )
    rng = np.random.default_rng(seed)
    return [np.sort(np.concatenate([chunks[i] for i in rng.choice(len(chunks), nchunks, replace=False)])) for _ in range(nboots)]


def _svd(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD with singular values ≤ 1e-10 dropped: U (n, k), S (k,), Vt (k, p)."""
    U, S, Vt = np.linalg.svd(X, full_matrices=False)
    keep = S > SINGULAR_VALUE_MIN
    return U[:, keep], S[keep], Vt[keep]


def ridge_corr(X_train: np.ndarray, X_val: np.ndarray, Y_train: np.ndarray, Y_val: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Held-out Pearson r ``(n_alphas, n_voxels)`` of ridge fits at each α (α squared)."""
    U, S, Vt = _svd(X_train)
    UtY = U.T @ Y_train  # (k, n_voxels)
    XvalV = X_val @ Vt.T  # (n_val, k)
    corrs = np.empty((len(alphas), Y_train.shape[1]))
    for i, alpha in enumerate(alphas):
        shrink = S / (S**2 + alpha**2)
        corrs[i] = pearson_r((XvalV * shrink) @ UtY, Y_val)
    return corrs


def ridge_weights(X: np.ndarray, Y: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Ridge weights ``(n_features, n_voxels)`` with one α per voxel: V·S/(S²+α²)·UᵀY."""
    alphas = np.broadcast_to(np.asarray(alphas, dtype=np.float64), (Y.shape[1],))
    U, S, Vt = _svd(X)
    UtY = U.T @ Y
    weights = np.empty((X.shape[1], Y.shape[1]), dtype=np.result_type(X, Y))
    for alpha in np.unique(alphas):
        voxels = np.flatnonzero(alphas == alpha)
        weights[:, voxels] = Vt.T @ ((S / (S**2 + alpha**2))[:, None] * UtY[:, voxels])
    return weights


def bootstrap_ridge(
    X: np.ndarray,
    Y: np.ndarray,
    alphas: np.ndarray | None = None,
    nboots: int = 50,
    chunk_trs: int = 40,
    nchunks: int | None = None,
    single_alpha: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> BootstrapRidgeResult:
    """Fit ``X`` ``(n_trs, n_features)`` → ``Y`` ``(n_trs, n_voxels)`` by bootstrap ridge.

    ``nchunks`` None: :func:`default_nchunks` (≈ 20 % of the training rows per bootstrap).
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows, Y has {Y.shape[0]}")
    alphas = bootstrap_alphas() if alphas is None else np.sort(np.asarray(alphas, dtype=np.float64))
    if nchunks is None:
        nchunks = default_nchunks(X.shape[0], chunk_trs)
    log.info("bootstrap ridge: %d bootstraps hold out %d chunks of %d rows (%.0f%% of %d rows)", nboots, nchunks, chunk_trs,
             100.0 * min(nchunks * chunk_trs, X.shape[0]) / X.shape[0], X.shape[0])
    all_rows = np.arange(X.shape[0])
    corr_sum = np.zeros((len(alphas), Y.shape[1]))
    for heldout in tqdm(heldout_chunks(X.shape[0], chunk_trs, nchunks, nboots, seed), desc="bootstrap", disable=not progress):
        train = np.setdiff1d(all_rows, heldout, assume_unique=True)
        corr_sum += ridge_corr(X[train], X[heldout], Y[train], Y[heldout], alphas)
    mean_corrs = corr_sum / nboots
    if single_alpha:
        best = np.full(Y.shape[1], np.argmax(mean_corrs.mean(1)))
    else:
        best = np.argmax(mean_corrs, axis=0)
    chosen = alphas[best]
    log.info("bootstrap ridge: %d boots, α chosen in [%g, %g]", nboots, chosen.min(), chosen.max())
    return BootstrapRidgeResult(ridge_weights(X, Y, chosen), chosen, mean_corrs, alphas, int(nchunks))
