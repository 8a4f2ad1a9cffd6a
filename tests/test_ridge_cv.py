"""brainllm.ridge_cv (fold-wise eigh ridge, primal and dual) against himalaya's RidgeCV / KernelRidgeCV and brute-force loops."""

from __future__ import annotations

import numpy as np
import pytest
from himalaya.backend import set_backend
from himalaya.kernel_ridge import KernelRidgeCV
from himalaya.ridge import RidgeCV
from himalaya.scoring import correlation_score, l2_neg_loss

from brainllm import encoding, metrics
from brainllm.io import InputError
from brainllm.ridge_cv import kernel_ridge_cv_eigh, ridge_cv_eigh


def planted(n_trs=240, n_features=30, n_voxels=40, seed=0):
    """Correlated features (a shared factor), voxels of graded SNR, some pure noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_trs, n_features)) + 0.5 * rng.standard_normal((n_trs, 1))
    W = rng.standard_normal((n_features, n_voxels)) / np.sqrt(n_features)
    snr = np.linspace(0.0, 2.0, n_voxels)
    Y = np.sqrt(snr) * (X @ W) / (X @ W).std(0) + rng.standard_normal((n_trs, n_voxels))
    return X.astype(np.float32), Y.astype(np.float32)


def brute_force_scores(X, Y, splits, alphas, score):
    """Mean over folds of the validation score of (XᵀX + αI)⁻¹XᵀY, one solve per fold and α."""
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    scores = np.zeros((len(alphas), Y.shape[1]))
    for train, val in splits:
        for i, alpha in enumerate(alphas):
            weights = np.linalg.solve(X[train].T @ X[train] + alpha * np.eye(X.shape[1]), X[train].T @ Y[train])
            pred = X[val] @ weights
            if score == "l2":
                scores[i] += -((Y[val] - pred) ** 2).mean(0)
            else:
                scores[i] += metrics.pearson_r(pred, Y[val])
    return scores / len(splits)


def clear_winners(scores):
    """Voxels whose best α beats the runner-up by a margin float32 cannot flip."""
    ordered = np.sort(scores, 0)
    return (ordered[-1] - ordered[-2]) > 1e-4 * np.abs(ordered[-1])


SOLVERS = {"primal": (ridge_cv_eigh, 30), "dual": (kernel_ridge_cv_eigh, 300)}  # solver, n_features for 240 TRs


@pytest.mark.parametrize("form", sorted(SOLVERS))
@pytest.mark.parametrize("score", ["l2", "correlation"])
def test_scores_alphas_and_weights_match_brute_force(score, form):
    solver, n_features = SOLVERS[form]
    X, Y = planted(n_features=n_features)
    splits = encoding.leave_one_story_out([50, 40, 60, 50, 40])
    alphas = np.logspace(-1, 4, 11)
    set_backend("numpy")
    weights, chosen, scores, validation_r = solver(X, Y, splits, alphas, score=score, n_targets_batch=7)
    reference = brute_force_scores(X, Y, splits, alphas, score)
    np.testing.assert_allclose(scores, reference, rtol=1e-4, atol=1e-5)
    # the validation r at each voxel's chosen α (whatever score chose it)
    correlation = brute_force_scores(X, Y, splits, alphas, "correlation")
    chosen_index = np.searchsorted(alphas, chosen)
    np.testing.assert_allclose(validation_r, correlation[chosen_index, np.arange(Y.shape[1])], rtol=1e-4, atol=1e-5)
    clear = clear_winners(reference)
    assert clear.sum() >= 15  # correlation saturates at large α: near-ties there
    np.testing.assert_array_equal(chosen[clear], alphas[np.argmax(reference, 0)][clear])
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    for voxel in range(Y.shape[1]):
        expected = np.linalg.solve(X64.T @ X64 + chosen[voxel] * np.eye(X.shape[1]), X64.T @ Y64[:, voxel])
        np.testing.assert_allclose(weights[:, voxel], expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("score", ["l2", "correlation"])
def test_same_estimate_as_himalaya_ridgecv(score):
    X, Y = planted(seed=1)
    splits = encoding.leave_one_story_out([60] * 4)
    alphas = np.logspace(-1, 5, 13)
    set_backend("numpy")
    weights, chosen, scores, _ = ridge_cv_eigh(X, Y, splits, alphas, score=score)
    score_func = {"l2": l2_neg_loss, "correlation": correlation_score}[score]
    model = RidgeCV(alphas=alphas.astype(np.float32), cv=splits, solver_params={"score_func": score_func}).fit(X, Y)
    np.testing.assert_allclose(chosen, model.best_alphas_, rtol=1e-5)
    np.testing.assert_allclose(scores.max(0), model.cv_scores_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(weights, model.coef_, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("score", ["l2", "correlation"])
def test_dual_same_estimate_as_himalaya_kernelridgecv(score):
    X, Y = planted(n_features=400, seed=1)
    splits = encoding.leave_one_story_out([60] * 4)
    alphas = np.logspace(-1, 5, 13)
    set_backend("numpy")
    weights, chosen, scores, _ = kernel_ridge_cv_eigh(X, Y, splits, alphas, score=score)
    score_func = {"l2": l2_neg_loss, "correlation": correlation_score}[score]
    model = KernelRidgeCV(alphas=alphas.astype(np.float32), kernel="linear", cv=splits, solver_params={"score_func": score_func}).fit(X, Y)
    clear = clear_winners(scores)
    np.testing.assert_allclose(chosen[clear], model.best_alphas_[clear], rtol=1e-5)
    np.testing.assert_allclose(scores.max(0), model.cv_scores_, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(weights[:, clear], model.get_primal_coef()[:, clear], rtol=1e-3, atol=1e-4 * np.abs(weights).max())


def test_dual_coefficients_predict_like_the_weights():
    X, Y = planted(n_features=300, seed=4)
    splits = encoding.leave_one_story_out([60] * 4)
    alphas = np.logspace(-1, 4, 6)
    set_backend("numpy")
    weights, chosen, _, _ = kernel_ridge_cv_eigh(X, Y, splits, alphas)
    coefficients, chosen_dual, _, _ = kernel_ridge_cv_eigh(X, Y, splits, alphas, primal=False)
    assert coefficients.shape == (X.shape[0], Y.shape[1])
    np.testing.assert_array_equal(chosen_dual, chosen)
    X_new = np.random.default_rng(0).standard_normal((25, X.shape[1])).astype(np.float32)
    np.testing.assert_allclose((X_new @ X.T) @ coefficients, X_new @ weights, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("form", sorted(SOLVERS))
def test_torch_backend_and_voxel_batches_give_the_numpy_result(form):
    solver, n_features = SOLVERS[form]
    X, Y = planted(n_features=n_features, seed=2)
    splits = encoding.leave_one_story_out([80] * 3)
    alphas = np.logspace(-1, 4, 6)
    set_backend("numpy")
    reference = solver(X, Y, splits, alphas)
    batched = solver(X, Y, splits, alphas, n_targets_batch=5)
    set_backend("torch")
    on_torch = solver(X, Y, splits, alphas, n_targets_batch=9)
    set_backend("numpy")
    for other in (batched, on_torch):
        np.testing.assert_array_equal(other[1], reference[1])
        np.testing.assert_allclose(other[0], reference[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(other[2], reference[2], rtol=1e-5, atol=1e-7)


def test_fit_ridge_solver_choice_and_bad_settings():
    X, Y = planted(n_trs=120, n_features=20, n_voxels=6, seed=3)
    alphas = encoding.alpha_grid(-1, 4, 6)
    fast = encoding.fit_ridge(X, Y, [30] * 4, alphas, backend="numpy")
    slow = encoding.fit_ridge(X, Y, [30] * 4, alphas, backend="numpy", solver="himalaya")
    assert (fast.solver, slow.solver) == ("ridge_cv_eigh", "RidgeCV")
    np.testing.assert_allclose(fast.alphas, slow.alphas, rtol=1e-5)
    np.testing.assert_allclose(fast.weights, slow.weights, rtol=1e-3, atol=1e-5)
    by_correlation = encoding.fit_ridge(X, Y, [30] * 4, alphas, backend="numpy", cv_score="correlation")
    assert by_correlation.info["cv_score"] == "correlation"
    wide = encoding.fit_ridge(np.hstack([X] * 7), Y, [30] * 4, alphas, backend="numpy")
    assert wide.solver == "kernel_ridge_cv_eigh"  # more features than TRs: the dual
    wide_himalaya = encoding.fit_ridge(np.hstack([X] * 7), Y, [30] * 4, alphas, backend="numpy", solver="himalaya")
    assert wide_himalaya.solver == "KernelRidgeCV"
    np.testing.assert_allclose(wide.alphas, wide_himalaya.alphas, rtol=1e-5)
    np.testing.assert_allclose(wide.weights, wide_himalaya.weights, rtol=1e-3, atol=1e-5)
    with pytest.raises(InputError, match="encoding.solver"):
        encoding.fit_ridge(X, Y, [30] * 4, alphas, backend="numpy", solver="lsqr")
    with pytest.raises(InputError, match="encoding.cv_score"):
        encoding.fit_ridge(X, Y, [30] * 4, alphas, backend="numpy", cv_score="r2")

