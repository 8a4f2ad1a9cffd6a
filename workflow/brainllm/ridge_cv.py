"""Ridge with one α per voxel chosen by story-grouped cross-validation, on a himalaya backend.

The same estimate as himalaya's ``RidgeCV`` (penalty α·‖w‖², no intercept, α per voxel by
the mean validation score over folds, refit on all rows), computed with fewer operations:

- one Gram matrix ``G = XᵀX`` (float64) and ``XᵀY`` for the whole training set; each fold's
  ``G_f = G − X_vᵀX_v`` and ``X_fᵀY = XᵀY − X_vᵀY_v`` come from subtracting the held-out rows;
- each fold diagonalises ``G_f = V·diag(λ)·Vᵀ`` (float64 ``eigh``, p×p) and forms, for every
  α at once, the validation "hat" rows ``M_α = X_v·V·diag(1/(λ+α))·Vᵀ`` (n_val×p), so the
  validation predictions of every α and voxel are ONE matrix product ``[M_α]·X_fᵀY``;
- the refit diagonalises ``G`` once and solves only each voxel's chosen α.

Per fold this costs n_α·n_val·p·n_voxels multiply-adds for the predictions (himalaya's
primal solver: n_α·n_val·n_train·n_voxels, plus an SVD of X_f and the weights of every α at
refit). Everything runs through the active himalaya backend (numpy, torch, torch_cuda): the
decompositions in float64, the products with the responses in float32.

The dual form (:func:`kernel_ridge_cv_eigh`, for n_samples ≤ n_features; the same estimate
as himalaya's ``KernelRidgeCV`` with a linear kernel) works on the linear kernel
``K = XXᵀ`` instead: each fold diagonalises its training block ``K_f = U·diag(s)·Uᵀ``
(n_train×n_train) and predicts its validation rows for every α as
``K_vf·U·diag(1/(s+α))·UᵀY_f``; the refit diagonalises ``K`` once and turns each voxel's dual
coefficients at its chosen α into primal weights ``XᵀC``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

#: validation scores a voxel's α can be chosen by (himalaya's l2_neg_loss / correlation_score)
CV_SCORES = ("l2", "correlation")

__all__ = ["CV_SCORES", "kernel_ridge_cv_eigh", "ridge_cv_eigh"]


def _validation_scores(backend, score: str, Y_val, predictions):
    """Per (α, voxel) score of ``predictions`` (n_alphas, n_val, n_voxels) against ``Y_val``.

    ``l2``: −mean squared error (himalaya's ``l2_neg_loss``); ``correlation``: Pearson r, 0
    for a constant prediction (himalaya's ``correlation_score``). Fused reductions: no
    z-scored copy of the predictions is made.
    """
    n_val = Y_val.shape[0]
    if score == "l2":
        residual = predictions - Y_val[None]
        return -backend.einsum("atv,atv->av", residual, residual) / n_val
    centred = Y_val - Y_val.mean(0)[None]
    norm = backend.sqrt(backend.einsum("tv,tv->v", centred, centred))
    centred = centred / backend.clip(norm, 1e-30, None)[None]
    mean = predictions.mean(1)
    spread = backend.einsum("atv,atv->av", predictions, predictions) - n_val * mean * mean
    covariance = backend.einsum("atv,tv->av", predictions, centred)  # Σ (p − p̄)·ŷ = Σ p·ŷ as Σ ŷ = 0
    scale = backend.sqrt(backend.clip(spread, 0, None))
    # a prediction constant over the validation rows (spread at rounding level) scores 0
    varies = scale > 1e-6 * backend.sqrt(n_val * mean * mean + 1e-30)
    return covariance / backend.clip(scale, 1e-30, None) * varies


def _inverse_spectrum(backend, eigenvalues, alphas):
    """``1 / (max(λ, 0) + α)`` for every α: (n_alphas, p) float64."""
    eigenvalues = backend.clip(eigenvalues, 0, None)
    return 1.0 / (eigenvalues[None, :] + alphas[:, None])


def _prepare(X, Y, alphas, score: str):
    """The active backend, X in float32 and float64, its device, the α grid (numpy and backend) and zeroed score sums.

    With the l2 score the validation correlation is accumulated beside it (for selection
    downstream); with the correlation score both names hold the same array.
    """
    from himalaya.backend import get_backend

    if score not in CV_SCORES:
        raise ValueError(f"cv score must be one of {CV_SCORES}, got {score!r}")
    backend = get_backend()
    X32 = backend.asarray(X, dtype="float32")
    device = getattr(X32, "device", None)
    alpha_values = np.asarray(alphas, dtype=np.float64)
    scores = np.zeros((len(alpha_values), Y.shape[1]), dtype=np.float64)
    correlations = scores if score == "correlation" else np.zeros_like(scores)
    return (backend, X32, backend.asarray(X32, dtype="float64"), device, alpha_values,
            backend.asarray(alpha_values, dtype="float64", device=device), scores, correlations)


def _finish(name: str, weights, best, scores, correlations, n_folds: int, alpha_values, score: str):
    """Mean scores over folds, the chosen αs and the validation r at them (the solvers' returns)."""
    scores /= n_folds
    if score != "correlation":
        correlations /= n_folds
    chosen = alpha_values[best]
    log.info("%s (fold-wise eigh, %d folds, %d alphas, score %s): α chosen in [%g, %g]", name, n_folds, len(alpha_values), score, chosen.min(), chosen.max())
    return weights, chosen, scores, correlations[best, np.arange(best.size)]


def ridge_cv_eigh(
    X,
    Y,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    alphas: np.ndarray,
    score: str = "correlation",
    n_targets_batch: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``X`` (n, p) → ``Y`` (n, v) by ridge with a per-voxel α from ``alphas``.

    ``splits``: ``[(train_rows, validation_rows)]`` whose validation rows partition the
    rows (e.g. leave-one-story-out). Returns numpy ``(weights (p, v) float32, chosen α (v,),
    mean validation score (n_alphas, v), mean validation Pearson r at the chosen α (v,))``;
    the α of a voxel maximises the mean score over folds (first of ties).
    """
    backend, X32, X64, device, alpha_values, alphas64, scores, correlations = _prepare(X, Y, alphas, score)
    n_targets = Y.shape[1]
    gram = backend.matmul(X64.T, X64)
    best = np.empty(n_targets, dtype=int)
    weights = np.empty((X32.shape[1], n_targets), dtype=np.float32)

    # Each fold's decomposition is computed once and applied to every voxel batch.
    hats = []
    for train, val in splits:
        X_val = X64[backend.asarray(val, device=device)]
        eigenvalues, V = backend.eigh(gram - backend.matmul(X_val.T, X_val))
        rotated = backend.matmul(X_val, V)  # (n_val, p)
        shrunk = rotated[None, :, :] * _inverse_spectrum(backend, eigenvalues, alphas64)[:, None, :]
        hat = backend.matmul(shrunk, V.T)  # (n_alphas, n_val, p)
        hats.append((backend.asarray(hat.reshape(-1, hat.shape[-1]), dtype="float32"), backend.asarray(val, device=device), len(val)))
    eigenvalues, V = backend.eigh(gram)
    inverse = _inverse_spectrum(backend, eigenvalues, alphas64)
    V32 = backend.asarray(V, dtype="float32")

    # A voxel's α depends only on its own column: score, choose and refit one batch at a time.
    for start in range(0, n_targets, n_targets_batch):
        batch = slice(start, min(start + n_targets_batch, n_targets))
        Y_batch = backend.asarray(Y[:, batch], dtype="float32", device=device)
        XtY = backend.matmul(X32.T, Y_batch)
        for hat, val_rows, n_val in hats:
            X_val, Y_val = X32[val_rows], Y_batch[val_rows]
            predictions = backend.matmul(hat, XtY - backend.matmul(X_val.T, Y_val)).reshape(len(alphas), n_val, -1)
            scores[:, batch] += backend.to_numpy(_validation_scores(backend, score, Y_val, predictions))
            if score != "correlation":
                correlations[:, batch] += backend.to_numpy(_validation_scores(backend, "correlation", Y_val, predictions))
        best[batch] = np.argmax(scores[:, batch], axis=0)  # the sum over folds: same argmax as the mean
        projected = backend.matmul(V32.T, XtY)
        for index in np.unique(best[batch]):
            voxels = np.flatnonzero(best[batch] == index)
            shrink = backend.asarray(inverse[index], dtype="float32")[:, None]
            weights[:, start + voxels] = backend.to_numpy(backend.matmul(V32, projected[:, backend.asarray(voxels, device=device)] * shrink))
    return _finish("ridge", weights, best, scores, correlations, len(splits), alpha_values, score)


def kernel_ridge_cv_eigh(
    X,
    Y,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    alphas: np.ndarray,
    score: str = "correlation",
    n_targets_batch: int = 4096,
    primal: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`ridge_cv_eigh` in the dual: the same arguments, estimate and returns.

    Cheaper when n_samples ≤ n_features (decompositions of n×n kernels instead of p×p Gram
    matrices). One fold is held in memory at a time: its eigenvectors (n_train²) and the
    rotated validation kernel (n_val × n_train). With ``primal=False`` the first return is
    the dual coefficients ``C`` (n, v) instead of the weights ``XᵀC`` (p, v): a new ``X_new``
    is predicted as ``(X_new·Xᵀ)·C``, without the p × v weights (large when both sides are
    voxels).
    """
    backend, X32, X64, device, alpha_values, alphas64, scores, correlations = _prepare(X, Y, alphas, score)
    n_targets = Y.shape[1]
    kernel = backend.matmul(X64, X64.T)
    batches = [slice(start, min(start + n_targets_batch, n_targets)) for start in range(0, n_targets, n_targets_batch)]

    for train, val in splits:
        train_rows, val_rows = backend.asarray(train, device=device), backend.asarray(val, device=device)
        eigenvalues, U = backend.eigh(kernel[train_rows][:, train_rows])
        rotated = backend.matmul(kernel[val_rows][:, train_rows], U)  # (n_val, n_train)
        shrunk = rotated[None, :, :] * _inverse_spectrum(backend, eigenvalues, alphas64)[:, None, :]
        shrunk = backend.asarray(shrunk.reshape(-1, shrunk.shape[-1]), dtype="float32")  # (n_alphas · n_val, n_train)
        U32 = backend.asarray(U, dtype="float32")
        for batch in batches:
            Y_batch = backend.asarray(Y[:, batch], dtype="float32", device=device)
            projected = backend.matmul(U32.T, Y_batch[train_rows])  # (n_train, batch)
            predictions = backend.matmul(shrunk, projected).reshape(len(alphas), len(val), -1)  # (n_alphas, n_val, batch)
            Y_val = Y_batch[val_rows]
            scores[:, batch] += backend.to_numpy(_validation_scores(backend, score, Y_val, predictions))
            if score != "correlation":
                correlations[:, batch] += backend.to_numpy(_validation_scores(backend, "correlation", Y_val, predictions))
        del U, U32, rotated, shrunk

    best = np.argmax(scores, axis=0)  # the sum over folds: same argmax as the mean
    eigenvalues, U = backend.eigh(kernel)
    inverse = _inverse_spectrum(backend, eigenvalues, alphas64)
    U32 = backend.asarray(U, dtype="float32")
    weights = np.empty((X32.shape[1] if primal else X32.shape[0], n_targets), dtype=np.float32)
    for batch in batches:
        projected = backend.matmul(U32.T, backend.asarray(Y[:, batch], dtype="float32", device=device))
        for index in np.unique(best[batch]):
            voxels = np.flatnonzero(best[batch] == index)
            shrink = backend.asarray(inverse[index], dtype="float32")[:, None]
            dual = backend.matmul(U32, projected[:, backend.asarray(voxels, device=device)] * shrink)
            weights[:, batch.start + voxels] = backend.to_numpy(backend.matmul(X32.T, dual) if primal else dual)
    return _finish("kernel ridge", weights, best, scores, correlations, len(splits), alpha_values, score)
