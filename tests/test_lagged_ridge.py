"""brainllm.lagged_ridge against the explicit lagged design, dense solves and the direct TRF solver."""

from __future__ import annotations

import numpy as np
import pytest

from brainllm import eeg, lagged_ridge
from brainllm.io import InputError
from brainllm.metrics import pearson_r
from test_eeg import SFREQ, planted_stories, settings

LAGS = np.arange(-3, 5)


def dense_design(onsets: np.ndarray, values: np.ndarray, n_samples: int, lags: np.ndarray) -> np.ndarray:
    """The lagged design by a loop, lag-major columns (lag j, feature k at ``j·f + k``)."""
    out = np.zeros((n_samples, lags.size * values.shape[1]))
    for word, onset in enumerate(onsets):
        for j, lag in enumerate(lags):
            if 0 <= onset + lag < n_samples:
                out[onset + lag, j * values.shape[1]:(j + 1) * values.shape[1]] += values[word]
    return out


def story(rng, n_samples=60, n_words=18, n_features=3, n_targets=2, edges=True):
    onsets = np.sort(rng.integers(0, n_samples, n_words))
    if edges:  # words whose lags run past both ends, and two words on one sample
        onsets[:3] = [0, 1, 1]
        onsets[-1] = n_samples - 1
    return onsets, rng.standard_normal((n_words, n_features)), rng.standard_normal((n_samples, n_targets))


def test_gram_cross_products_and_predictions_equal_the_explicit_design():
    rng = np.random.default_rng(0)
    onsets, values, Y = story(rng)
    lagged = lagged_ridge.lagged_story(onsets, values, Y, LAGS)
    X = dense_design(onsets, values, len(Y), LAGS)
    gram = lagged_ridge.LaggedGram(lagged_ridge.lag_products(lagged), lagged_ridge.outside_rows(lagged))
    v = rng.standard_normal((X.shape[1], 4))
    np.testing.assert_allclose(gram.apply(v), X.T @ X @ v, atol=1e-10)
    np.testing.assert_allclose(lagged_ridge.cross_products(lagged), X.T @ Y, atol=1e-10)
    np.testing.assert_allclose(lagged_ridge.predict(lagged, v[:, :2]), X @ v[:, :2], atol=1e-10)
    # the feature-major sparse design of the direct solver holds the same columns
    sparse = eeg.lagged_impulse_design(onsets, values, len(Y), LAGS).toarray()
    order = (np.arange(values.shape[1])[None, :] * LAGS.size + np.arange(LAGS.size)[:, None]).ravel()
    np.testing.assert_array_equal(sparse[:, order], X)


def test_conjugate_gradients_solve_each_column_with_its_own_alpha():
    rng = np.random.default_rng(1)
    onsets, values, Y = story(rng, n_samples=200, n_words=70, n_features=4, n_targets=3)
    lagged = lagged_ridge.lagged_story(onsets, values, Y, LAGS)
    X = dense_design(onsets, values, len(Y), LAGS)
    gram = lagged_ridge.LaggedGram(lagged_ridge.lag_products(lagged), lagged_ridge.outside_rows(lagged))
    shifts = np.array([0.01, 1.0, 100.0])
    got = lagged_ridge.conjugate_gradients(gram, X.T @ Y, shifts, tol=1e-12)
    for c, alpha in enumerate(shifts):
        np.testing.assert_allclose(got[:, c], np.linalg.solve(X.T @ X + alpha * np.eye(X.shape[1]), X.T @ Y[:, c]), rtol=1e-7, atol=1e-9)
    warm = lagged_ridge.conjugate_gradients(gram, X.T @ Y, shifts, start=got * 0.9, tol=1e-12)
    np.testing.assert_allclose(warm, got, rtol=1e-7, atol=1e-9)


def test_cross_validation_equals_refitting_every_fold_by_solve():
    rng = np.random.default_rng(2)
    stories = {s: story(rng, n_samples=150, n_words=50, edges=s == "a") for s in "abcd"}
    lagged = {s: lagged_ridge.lagged_story(*stories[s], LAGS) for s in stories}
    designs = {s: dense_design(stories[s][0], stories[s][1], 150, LAGS) for s in stories}
    alphas = np.array([0.1, 10.0, 1000.0])
    fit = lagged_ridge.fit(lagged, list("abcd"), alphas, tol=1e-12)
    scores = []
    for alpha in alphas:  # slow reference: each fold refitted by solve, r over the concatenated held-out stories
        predictions = []
        for held in "abcd":
            X = np.vstack([designs[s] for s in "abcd" if s != held])
            Y = np.vstack([stories[s][2] for s in "abcd" if s != held])
            predictions.append(designs[held] @ np.linalg.solve(X.T @ X + alpha * np.eye(X.shape[1]), X.T @ Y))
        scores.append(pearson_r(np.vstack(predictions), np.vstack([stories[s][2] for s in "abcd"])))
    scores = np.array(scores)
    np.testing.assert_array_equal(fit["alpha"], alphas[scores.argmax(axis=0)])
    np.testing.assert_allclose(fit["r_validation"], scores.max(axis=0), atol=1e-9)
    X = np.vstack(list(designs.values()))
    Y = np.vstack([stories[s][2] for s in "abcd"])
    for c, alpha in enumerate(fit["alpha"]):
        np.testing.assert_allclose(fit["weights"][:, c], np.linalg.solve(X.T @ X + alpha * np.eye(X.shape[1]), X.T @ Y[:, c]), rtol=1e-7, atol=1e-9)


def test_lags_must_be_consecutive():
    with pytest.raises(ValueError, match="consecutive"):
        lagged_ridge.lagged_story(np.array([1]), np.ones((1, 1)), np.zeros((5, 1)), np.array([0, 2]))


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_the_iterative_trf_equals_the_direct_one_and_the_full_rank_trf_finds_the_planted_latency(seed):
    features, data, onsets = planted_stories(np.random.default_rng(seed))
    data["s0"][:, 3] = 1.0  # a flat channel: every α ties, both solvers take the smallest
    stories = (["s0", "s1", "s2"], ["s3"])
    direct = eeg.fit_trf(features, data, onsets, SFREQ, *stories, settings(trf_components=None, trf_solver="direct"))
    iterative = eeg.fit_trf(features, data, onsets, SFREQ, *stories, settings(trf_components=None, trf_solver="iterative"))
    np.testing.assert_array_equal(iterative["alpha"], direct["alpha"])
    np.testing.assert_allclose(iterative["r_validation"], direct["r_validation"], atol=1e-9)
    np.testing.assert_allclose(iterative["r_test"], direct["r_test"], atol=1e-9)
    np.testing.assert_allclose(iterative["weights"], direct["weights"], rtol=1e-5, atol=1e-7)
    assert iterative["weights"].shape == (6, 81, 4) and iterative["n_components"] == 6
    assert eeg.peak_latency(iterative["weights"], iterative["lags_s"], np.array([0, 1])) == pytest.approx(0.3, abs=0.02)
    assert (iterative["r_test"][:2] > 0.2).all() and (iterative["p"][:2] < 0.01).all()


def test_words_outside_the_recording_and_one_training_story():
    rng = np.random.default_rng(4)
    onsets, values, Y = story(rng)
    far = lagged_ridge.lagged_story(np.r_[-50, onsets, 500], np.vstack([values[:1], values, values[:1]]), Y, LAGS)
    X = dense_design(onsets, values, len(Y), LAGS)
    gram = lagged_ridge.LaggedGram(lagged_ridge.lag_products(far), lagged_ridge.outside_rows(far))
    v = rng.standard_normal((X.shape[1], 2))
    np.testing.assert_allclose(gram.apply(v), X.T @ X @ v, atol=1e-10)
    assert lagged_ridge.outside_rows(far).shape[0] <= LAGS.size
    with pytest.raises(InputError, match="two or more training stories"):
        lagged_ridge.fit({"a": far}, ["a"], [1.0])
