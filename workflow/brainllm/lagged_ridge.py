"""Ridge on time-lagged word impulses without forming the lagged design: the full-rank EEG TRF.

A story's lagged design ``X`` (samples × lags · features) holds each word's features at its
onset + every lag. Nothing of that size is ever built:

- ``XᵀX`` is block Toeplitz over lags: block ``(j, j')`` is ``T(j − j')`` with
  ``T(d) = Σ_u x[u]ᵀ x[u + d]`` (``x[u]`` the summed features of the words at sample ``u``), a
  sum over word pairs ``d`` samples apart — minus the rows of ``X`` that would fall outside
  the recording (at most one per lag: a low-rank correction);
- ``XᵀY`` and ``Xβ`` are read and written at the word onsets shifted by each lag;
- the ridge systems ``(XᵀX + αI) β = XᵀY`` are solved by preconditioned conjugate gradients:
  a product with ``XᵀX`` is a block convolution over lags done by FFT (lags + 1 frequencies of
  features × features blocks), and the preconditioner is the same-lag block ``T(0) + αI``
  (one features × features eigendecomposition per fold serves every α).

Memory is a few ``lags × features²`` arrays (384 features × 81 lags: 96 MB each), never
samples × lags · features (83 GiB in float64 at 1 h, 100 Hz) nor the ``(lags · features)²``
Gram matrix (7.2 GiB). Folds are leave-one-story-out; α per target by the Pearson r of the
concatenated held-out stories, ties going to the smallest α, as the direct solver
(``brainllm.eeg.cross_validated_alphas``) chooses it. Every system is solved to a relative
residual of 10⁻⁸: looser fold solutions reorder α values whose validation r differ by less
than their error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from brainllm.io import InputError
from brainllm.metrics import pooled_validation_r

logger = logging.getLogger(__name__)


@dataclass
class LaggedStory:
    """One story: the distinct onset samples (sorted), the features summed per onset ``(u, f)``,
    the lags in samples (consecutive), the recording's length and its targets ``(n_samples, c)``."""

    onsets: np.ndarray
    values: np.ndarray
    lags: np.ndarray
    Y: np.ndarray

    @property
    def n_samples(self) -> int:
        return self.Y.shape[0]

    def rows(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the design reached at lag index ``j`` and which onsets reach them (inside the recording)."""
        rows = self.onsets + self.lags[j]
        inside = (rows >= 0) & (rows < self.n_samples)
        return rows[inside], inside


def lagged_story(onset_samples: np.ndarray, values: np.ndarray, Y: np.ndarray, lags: np.ndarray) -> LaggedStory:
    """Words sharing a sample add up, as in ``brainllm.eeg.lagged_impulse_design``; words none of whose
    lags reach the recording are left out (so at most one outside row per lag remains)."""
    if not np.array_equal(np.diff(lags), np.ones(lags.size - 1, dtype=lags.dtype)):
        raise ValueError(f"lags must be consecutive samples, got {lags}")
    onset_samples = np.asarray(onset_samples, dtype=np.int64)
    reaching = (onset_samples + lags[-1] >= 0) & (onset_samples + lags[0] < len(Y))
    onsets, which = np.unique(onset_samples[reaching], return_inverse=True)
    values = np.asarray(values)[reaching]
    summed = np.zeros((onsets.size, values.shape[1]))
    np.add.at(summed, which, values)
    return LaggedStory(onsets, summed, np.asarray(lags, dtype=np.int64), np.asarray(Y, dtype=np.float64))


def lag_products(story: LaggedStory) -> np.ndarray:
    """``(n_lags, f, f)``: ``T(d)`` for ``d = 0 … n_lags − 1`` (``T(−d) = T(d)ᵀ``), over every word pair."""
    onsets, values = story.onsets, story.values
    out = np.empty((story.lags.size, values.shape[1], values.shape[1]))
    for d in range(story.lags.size):
        later = np.searchsorted(onsets, onsets + d)
        pair = later < onsets.size
        pair[pair] = onsets[later[pair]] == onsets[pair] + d
        out[d] = values[pair].T @ values[later[pair]]
    return out


def outside_rows(story: LaggedStory) -> np.ndarray:
    """``(m, n_lags · f)``: the design's rows at samples outside the recording that some word reaches;
    the Toeplitz blocks count them, the design does not."""
    reached = story.onsets[:, None] + story.lags[None, :]
    outside = (reached < 0) | (reached >= story.n_samples)
    samples = np.unique(reached[outside])
    rows = np.zeros((samples.size, story.lags.size, story.values.shape[1]))
    word, lag = np.nonzero(outside)
    np.add.at(rows, (np.searchsorted(samples, reached[word, lag]), lag), story.values[word])
    return rows.reshape(samples.size, story.lags.size * story.values.shape[1])


def cross_products(story: LaggedStory) -> np.ndarray:
    """``XᵀY`` as ``(n_lags · f, c)``."""
    out = np.empty((story.lags.size, story.values.shape[1], story.Y.shape[1]))
    for j in range(story.lags.size):
        rows, inside = story.rows(j)
        out[j] = story.values[inside].T @ story.Y[rows]
    return out.reshape(-1, story.Y.shape[1])


def predict(story: LaggedStory, weights: np.ndarray) -> np.ndarray:
    """``Xβ`` ``(n_samples, c)`` for weights ``(n_lags · f, c)``: each onset's response kernel added at its lags."""
    n_lags, n_features = story.lags.size, story.values.shape[1]
    kernels = story.values @ weights.reshape(n_lags, n_features, -1).transpose(1, 0, 2).reshape(n_features, -1)
    kernels = kernels.reshape(story.onsets.size, n_lags, -1)
    out = np.zeros((story.n_samples, kernels.shape[2]))
    for j in range(n_lags):
        rows, inside = story.rows(j)
        out[rows] += kernels[inside, j]  # onsets are distinct, so are the rows of one lag
    return out


class LaggedGram:
    """``XᵀX`` of a set of stories from their lag products and outside rows, applied by FFT."""

    def __init__(self, products: np.ndarray, outside: np.ndarray):
        n_lags, n_features, _ = products.shape
        self.shape = (n_lags, n_features)
        circulant = np.zeros((2 * n_lags, n_features, n_features))
        circulant[:n_lags] = products
        circulant[n_lags + 1:] = products[1:][::-1].transpose(0, 2, 1)  # T(−d) = T(d)ᵀ at index 2·n_lags − d
        self.spectrum = np.fft.rfft(circulant, axis=0)
        del circulant
        self.outside = outside
        eigenvalues, self.axes = np.linalg.eigh(products[0])
        self.eigenvalues = np.maximum(eigenvalues, 0.0)

    def apply(self, v: np.ndarray) -> np.ndarray:
        n_lags, n_features = self.shape
        spectrum = np.fft.rfft(v.reshape(n_lags, n_features, -1), n=2 * n_lags, axis=0)
        out = np.fft.irfft(self.spectrum @ spectrum, n=2 * n_lags, axis=0)[:n_lags].reshape(v.shape)
        return out - self.outside.T @ (self.outside @ v)

    def precondition(self, r: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """``(I ⊗ (T(0) + α))⁻¹ r``, each column with its own α (the same-lag blocks; block-circulant
        preconditioners cost as much per solve: fewer iterations, dearer ones)."""
        n_lags, n_features = self.shape
        rotated = self.axes.T @ r.reshape(n_lags, n_features, -1)
        return (self.axes @ (rotated / (self.eigenvalues[None, :, None] + shifts[None, None, :]))).reshape(r.shape)


def conjugate_gradients(gram: LaggedGram, rhs: np.ndarray, shifts: np.ndarray, start: np.ndarray | None = None,
                        tol: float = 1e-8, max_iter: int = 1000) -> np.ndarray:
    """Solve ``(XᵀX + α_c I) β_c = rhs_c`` for every column c, to a relative residual of ``tol``."""
    x = np.zeros_like(rhs) if start is None else start.copy()
    r = rhs - (gram.apply(x) + x * shifts) if start is not None else rhs.copy()
    z = gram.precondition(r, shifts)
    p = z.copy()
    rz = (r * z).sum(axis=0)
    target = tol * np.linalg.norm(rhs, axis=0)
    for _ in range(max_iter):
        active = np.linalg.norm(r, axis=0) > target
        if not active.any():
            return x
        q = gram.apply(p) + p * shifts
        pq = (p * q).sum(axis=0)
        step = np.divide(rz, pq, out=np.zeros_like(rz), where=active & (pq > 0))
        x += step * p
        r -= step * q
        z = gram.precondition(r, shifts)
        rz_new = (r * z).sum(axis=0)
        p = z + np.divide(rz_new, rz, out=np.zeros_like(rz), where=active & (rz > 0)) * p
        rz = rz_new
    residual = (np.linalg.norm(r, axis=0) / np.maximum(np.linalg.norm(rhs, axis=0), 1e-300)).max()
    logger.warning("conjugate gradients stopped after %d iterations at a relative residual of %.1e (target %.0e)", max_iter, residual, tol)
    return x


def estimated_bytes(n_lags: int, n_features: int, n_train_stories: int) -> int:
    """Peak memory of :func:`fit` beyond the data: one ``lags × features²`` float64 array per training
    story, their sum, the circulant embedding and its spectrum (two each), and about two more for
    the outside rows and the held-out story's response kernels."""
    return (n_train_stories + 7) * n_lags * n_features**2 * 8


def fit(stories: Mapping[str, LaggedStory], train_stories: Sequence[str], alphas: Sequence[float], tol: float = 1e-8) -> dict:
    """α per target by leave-one-story-out over ``train_stories``, then weights ``(n_lags · f, c)`` on all of them."""
    if len(train_stories) < 2:
        raise InputError(None, f"leave-one-story-out cross-validation needs two or more training stories, got {list(train_stories)}.",
                         "list more dataset.train_stories.")
    descending = np.sort(np.asarray(alphas, dtype=float))[::-1]  # large α first: each solution starts the next
    products = {s: lag_products(stories[s]) for s in train_stories}
    outside = {s: outside_rows(stories[s]) for s in train_stories}
    rhs = {s: cross_products(stories[s]) for s in train_stories}
    n_targets = stories[train_stories[0]].Y.shape[1]

    def fold_predictions(held_out: str):
        others = [s for s in train_stories if s != held_out]
        gram = LaggedGram(sum(products[s] for s in others), np.vstack([outside[s] for s in others]))
        b = sum(rhs[s] for s in others)
        weights = None
        for alpha in descending:
            weights = conjugate_gradients(gram, b, np.full(n_targets, alpha), weights, tol)
            yield predict(stories[held_out], weights)

    folds = []
    for held_out in train_stories:
        logger.info("TRF fold without %s: %d α values by conjugate gradients", held_out, descending.size)
        folds.append((stories[held_out].Y, fold_predictions(held_out)))
    scores = pooled_validation_r(folds, descending.size)[::-1]  # ascending α: argmax keeps the smallest of tied α
    best = scores.argmax(axis=0)
    chosen = descending[::-1][best]
    gram = LaggedGram(sum(products.values()), np.vstack(list(outside.values())))
    weights = conjugate_gradients(gram, sum(rhs.values()), chosen, None, tol)
    return {"alpha": chosen, "r_validation": scores[best, np.arange(n_targets)], "weights": weights}
