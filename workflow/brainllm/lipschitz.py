"""Lipschitz-constrained linear encoding: min ||XW − Y||²/(2n) subject to ||W||₂ ≤ L.

The spectral norm of W bounds how much any input perturbation can change the predicted
response (||ΔX·W|| ≤ L·||ΔX||). The bound is joint over all voxels (one matrix norm), so a
voxel's fit depends on which other voxels are in the mask; L is one number per model,
chosen by :func:`cv_max_norm` (leave-one-story-out, like ridge's α). Solved by accelerated projected gradient in torch: a
gradient step of size ``lr``/β (β = σ_max(X)²/n, the gradient's Lipschitz constant; lr ≤ 1
guarantees descent), then projection onto the norm ball by clipping singular values at L.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)

__all__ = ["LipschitzResult", "project_spectral_norm", "fit_lipschitz", "MAX_NORM_GRID", "cv_max_norm"]

#: default bounds searched by :func:`cv_max_norm` (``encoding.lipschitz.max_norm_grid``)
MAX_NORM_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


@dataclass
class LipschitzResult:
    weights: np.ndarray  # (n_features, n_voxels)
    spectral_norm: float  # achieved ||W||₂
    max_norm: float
    loss: float  # final ||XW − Y||²/(2n)
    steps: int


def project_spectral_norm(W: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Nearest matrix (Frobenius) with spectral norm ≤ ``max_norm``: singular values clipped at it.

    Works through the eigendecomposition of the smaller Gram matrix, so a wide
    ``(n_features, n_voxels)`` map costs O(n_features² · n_voxels).
    """
    tall = W.shape[0] >= W.shape[1]
    gram = W.T @ W if tall else W @ W.T
    eigvals, eigvecs = torch.linalg.eigh(gram)
    singular = eigvals.clamp_min(0).sqrt()
    if singular.max() <= max_norm:
        return W
    scale = torch.where(singular > max_norm, max_norm / singular.clamp_min(torch.finfo(W.dtype).tiny), torch.ones_like(singular))
    shrink = (eigvecs * scale) @ eigvecs.T
    return W @ shrink if tall else shrink @ W


def fit_lipschitz(
    X: np.ndarray,
    Y: np.ndarray,
    max_norm: float,
    steps: int = 300,
    lr: float = 1.0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> LipschitzResult:
    """Fit ``X`` ``(n_trs, n_features)`` → ``Y`` ``(n_trs, n_voxels)`` with ||W||₂ ≤ ``max_norm``."""
    if max_norm <= 0 or not 0 < lr <= 1:
        raise ValueError(f"need max_norm > 0 and 0 < lr <= 1, got {max_norm}, {lr}")
    Xt = torch.as_tensor(np.asarray(X), dtype=dtype, device=device)
    Yt = torch.as_tensor(np.asarray(Y), dtype=dtype, device=device)
    n_trs = Xt.shape[0]
    XtX = Xt.T @ Xt / n_trs
    XtY = Xt.T @ Yt / n_trs
    beta = float(torch.linalg.eigvalsh(XtX).max())
    step = lr / max(beta, torch.finfo(dtype).tiny)
    W = torch.zeros(Xt.shape[1], Yt.shape[1], dtype=dtype, device=device)
    momentum_point, t = W.clone(), 1.0
    for _ in tqdm(range(steps), desc="lipschitz", disable=not progress):
        gradient = XtX @ momentum_point - XtY
        W_next = project_spectral_norm(momentum_point - step * gradient, max_norm)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        momentum_point = W_next + ((t - 1) / t_next) * (W_next - W)
        W, t = W_next, t_next
    W = project_spectral_norm(W.double(), max_norm).to(dtype)  # exact final projection
    loss = float(((Xt @ W - Yt) ** 2).sum() / (2 * n_trs))
    norm = float(torch.linalg.matrix_norm(W.double(), ord=2))
    log.info("lipschitz: ||W||₂ = %.6g (bound %g), loss %.6g after %d steps", norm, max_norm, loss, steps)
    return LipschitzResult(W.cpu().numpy(), norm, float(max_norm), loss, steps)


def cv_max_norm(
    X: np.ndarray,
    Y: np.ndarray,
    splits,
    grid=MAX_NORM_GRID,
    steps: int = 300,
    lr: float = 1.0,
    device: str = "cpu",
) -> tuple[float, np.ndarray, np.ndarray]:
    """The bound L of ``grid`` with the best mean (over voxels and folds) validation Pearson r.

    ``splits``: ``[(train_rows, validation_rows)]`` (leave-one-story-out). Returns ``(L,
    mean validation r per grid value (n_grid,), per-voxel mean validation r at L (n_voxels,))``.
    """
    from .metrics import pearson_r

    grid = np.asarray(sorted(float(g) for g in grid))
    if grid.size < 1 or (grid <= 0).any():
        raise ValueError(f"max_norm grid must hold positive values, got {grid.tolist()}")
    X, Y = np.asarray(X), np.asarray(Y)
    per_voxel = np.zeros((grid.size, Y.shape[1]))
    for train, val in splits:
        for i, bound in enumerate(grid):
            fit = fit_lipschitz(X[train], Y[train], bound, steps, lr, device=device, progress=False)
            per_voxel[i] += pearson_r(X[val] @ fit.weights, Y[val])
    per_voxel /= len(splits)
    scores = per_voxel.mean(1)
    best = int(np.argmax(scores))
    log.info("lipschitz CV over max_norm %s: mean validation r %s → max_norm %g", grid.tolist(), np.round(scores, 4).tolist(), grid[best])
    if grid.size > 1 and best in (0, grid.size - 1):
        log.warning("the chosen max_norm %g is an end of the grid %s: widen encoding.lipschitz.max_norm_grid", grid[best], grid.tolist())
    return float(grid[best]), scores, per_voxel[best]
