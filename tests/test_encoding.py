"""brainllm.encoding, bootstrap_ridge and lipschitz against closed-form ridge and planted data."""

from __future__ import annotations

import json
import logging

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from brainllm import bootstrap_ridge as br
from brainllm import encoding, inference, metrics
from brainllm.align import layer_key, make_delayed, zscore_columns
from brainllm.io import InputError
from brainllm.lipschitz import fit_lipschitz, project_spectral_norm


def closed_form_ridge(X, Y, alpha):
    """(XᵀX + αI)⁻¹XᵀY in float64."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    return np.linalg.solve(X.T @ X + alpha * np.eye(X.shape[1]), X.T @ Y)


def planted(n_trs, n_features, n_voxels, noise, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_trs, n_features))
    W = rng.standard_normal((n_features, n_voxels)) / np.sqrt(n_features)
    Y = X @ W + rng.standard_normal((n_trs, n_voxels)) * np.asarray(noise)
    return X.astype(np.float32), Y.astype(np.float32), W


def loso_reference(X, Y, lengths, alphas):
    """Leave-one-story-out α choice by explicit loops: mean over folds of −SSE/n (himalaya's score)."""
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    scores = np.zeros((len(alphas), Y.shape[1]))
    for start, stop in zip(bounds[:-1], bounds[1:]):
        val = np.arange(start, stop)
        train = np.setdiff1d(np.arange(len(X)), val)
        for i, alpha in enumerate(alphas):
            pred = X[val].astype(np.float64) @ closed_form_ridge(X[train], Y[train], alpha)
            scores[i] += -((Y[val] - pred) ** 2).sum(0) / len(val) / len(lengths)
    return scores


def test_leave_one_story_out_splits():
    splits = encoding.leave_one_story_out([5, 3, 4])
    assert len(splits) == 3
    covered = np.concatenate([val for _, val in splits])
    np.testing.assert_array_equal(np.sort(covered), np.arange(12))
    for train, val in splits:
        assert not set(train) & set(val) and len(train) + len(val) == 12
        assert np.all(np.diff(val) == 1)  # a whole story, contiguous
    with pytest.raises(ValueError):
        encoding.leave_one_story_out([10])


@pytest.mark.parametrize("n_trs,n_features,expected_solver", [(120, 20, "ridge_cv_eigh"), (60, 90, "kernel_ridge_cv_eigh")])
def test_fit_ridge_matches_closed_form(n_trs, n_features, expected_solver):
    noise = np.linspace(0.1, 4.0, 12)
    X, Y, _ = planted(n_trs, n_features, 12, noise, seed=1)
    lengths = [n_trs // 4] * 4
    alphas = encoding.alpha_grid(-1, 4, 11)
    fit = encoding.fit_ridge(X, Y, lengths, alphas, backend="numpy", cv_score="l2")
    assert fit.solver == expected_solver and fit.backend == "numpy"
    scores = loso_reference(X, Y, lengths, alphas)
    ordered = np.sort(scores, 0)
    clear = (ordered[-1] - ordered[-2]) > 1e-4 * np.abs(ordered[-1])  # skip near-ties float32 may flip
    assert clear.sum() >= 6
    np.testing.assert_allclose(fit.alphas[clear], alphas[np.argmax(scores, 0)][clear], rtol=1e-5)
    for voxel in range(12):
        expected = closed_form_ridge(X, Y[:, voxel : voxel + 1], fit.alphas[voxel])[:, 0]
        np.testing.assert_allclose(fit.weights[:, voxel], expected, rtol=2e-3, atol=2e-4 * np.abs(expected).max())


def test_auto_backend_imports_torch_only_where_a_gpu_driver_is():
    """The CPU check of ``backend: auto`` costs no torch import (1–2 s per encoding job) on a machine without a driver."""
    import os
    import subprocess
    import sys

    probe = "import sys; from brainllm.encoding import resolve_backend; print(resolve_backend('auto'), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    driver = sys.platform == "win32" or any(map(os.path.exists, encoding.GPU_DRIVER_PATHS))
    assert out[1] == str(driver)
    assert out[0] == ("torch_cuda" if torch.cuda.is_available() else "numpy")


@pytest.mark.parametrize("n_features", [20, 90])
def test_torch_backend_matches_numpy(n_features):
    X, Y, _ = planted(60, n_features, 6, np.linspace(0.2, 2.0, 6), seed=3)
    alphas = encoding.alpha_grid(-1, 4, 6)
    on_numpy = encoding.fit_ridge(X, Y, [15] * 4, alphas, backend="numpy")
    on_torch = encoding.fit_ridge(X, Y, [15] * 4, alphas, backend="torch")
    assert on_torch.backend == "torch" and on_torch.solver == on_numpy.solver
    np.testing.assert_allclose(on_torch.alphas, on_numpy.alphas)
    np.testing.assert_allclose(on_torch.weights, on_numpy.weights, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "n_features,setting,solver,message",
    [(80, "auto", "KernelRidgeCV", "refitting with himalaya KernelRidgeCV (SVD)"), (20, "auto", "RidgeCV", "refitting with himalaya RidgeCV"),
     (80, "himalaya", "KernelRidgeCV", "diagonalize_method='svd'")],
)
def test_ridge_falls_back_to_svd_when_eigh_fails(monkeypatch, caplog, n_features, setting, solver, message):
    import himalaya.backend.numpy as numpy_backend

    X, Y, _ = planted(40, n_features, 5, 0.5, seed=2)
    alphas = encoding.alpha_grid(-1, 3, 5)
    reference = encoding.fit_ridge(X, Y, [10] * 4, alphas, backend="numpy", solver=setting)
    assert reference.info["diagonalize_method"] == "eigh"

    def failing_eigh(*args, **kwargs):
        raise np.linalg.LinAlgError("Eigenvalues did not converge")

    monkeypatch.setattr(numpy_backend, "eigh", failing_eigh)
    with caplog.at_level(logging.WARNING, logger="brainllm"):
        fit = encoding.fit_ridge(X, Y, [10] * 4, alphas, backend="numpy", solver=setting)
    assert fit.solver == solver and fit.info["diagonalize_method"] == "svd"
    assert message in caplog.text
    np.testing.assert_allclose(fit.alphas, reference.alphas, rtol=1e-5)
    np.testing.assert_allclose(fit.weights, reference.weights, rtol=1e-3, atol=1e-4)


def test_banded_ridge_weights_the_informative_band():
    rng = np.random.default_rng(4)
    informative = rng.standard_normal((160, 10)).astype(np.float32)
    distractor = rng.standard_normal((160, 10)).astype(np.float32)
    Y = (informative @ rng.standard_normal((10, 6)) + 0.5 * rng.standard_normal((160, 6))).astype(np.float32)
    for Xs in ([informative, distractor], [np.hstack([informative] * 9), np.hstack([distractor] * 9)]):
        fit = encoding.fit_banded_ridge([X[:120] for X in Xs], Y[:120], [30] * 4, encoding.alpha_grid(-2, 4, 7), backend="numpy", n_iter=10, seed=0)
        assert fit.solver == ("BandedRidgeCV" if Xs[0].shape[1] == 10 else "MultipleKernelRidgeCV")
        assert fit.info["band_weights"][0].mean() > 0.8
        pred = np.hstack(Xs)[120:] @ fit.weights
        assert metrics.pearson_r(pred, Y[120:]).mean() > 0.9


def test_ridge_corr_and_weights_closed_form():
    X, Y, _ = planted(100, 15, 4, 1.0, seed=5)
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    alphas = np.array([0.5, 5.0, 50.0])
    corrs = br.ridge_corr(X[:80], X[80:], Y[:80], Y[80:], alphas)
    for i, alpha in enumerate(alphas):
        # α enters squared in the reference algorithm
        pred = X[80:] @ closed_form_ridge(X[:80], Y[:80], alpha**2)
        np.testing.assert_allclose(corrs[i], metrics.pearson_r(pred, Y[80:]), atol=1e-10)
    per_voxel = np.array([0.5, 50.0, 5.0, 0.5])
    weights = br.ridge_weights(X, Y, per_voxel)
    for voxel, alpha in enumerate(per_voxel):
        np.testing.assert_allclose(weights[:, voxel], closed_form_ridge(X, Y[:, [voxel]], alpha**2)[:, 0], atol=1e-10)


def test_ridge_weights_drop_null_singular_values():
    X, Y, _ = planted(50, 6, 2, 0.3, seed=6)
    X = np.hstack([X, X[:, :2]]).astype(np.float64)  # rank-deficient: duplicated columns
    weights = br.ridge_weights(X, Y.astype(np.float64), np.array([0.0, 0.0]))
    np.testing.assert_allclose(weights, np.linalg.pinv(X) @ Y, atol=1e-8)  # minimum-norm least squares


def test_bootstrap_ridge_reproduces_loop_and_is_seeded():
    noise = np.array([0.2, 0.5, 1.0, 2.0, 4.0, 8.0])
    X, Y, _ = planted(400, 30, 6, noise, seed=7)
    alphas = br.bootstrap_alphas(0, 3, 7)
    result = br.bootstrap_ridge(X, Y, alphas, nboots=6, chunk_trs=40, nchunks=2, seed=11, progress=False)
    again = br.bootstrap_ridge(X, Y, alphas, nboots=6, chunk_trs=40, nchunks=2, seed=11, progress=False)
    np.testing.assert_array_equal(result.weights, again.weights)
    # loop reference over the same held-out chunks with the closed form
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    heldouts = br.heldout_chunks(400, 40, 2, 6, seed=11)
    mean_corrs = np.zeros((len(alphas), 6))
    for heldout in heldouts:
        assert len(heldout) == 80 and all(np.all(np.diff(heldout[i : i + 40]) == 1) for i in (0, 40))
        train = np.setdiff1d(np.arange(400), heldout)
        for i, alpha in enumerate(alphas):
            pred = X64[heldout] @ closed_form_ridge(X64[train], Y64[train], alpha**2)
            mean_corrs[i] += metrics.pearson_r(pred, Y64[heldout]) / len(heldouts)
    np.testing.assert_allclose(result.mean_corrs, mean_corrs, atol=1e-9)
    np.testing.assert_array_equal(result.alphas, alphas[np.argmax(mean_corrs, 0)])
    for voxel in range(6):
        expected = closed_form_ridge(X64, Y64[:, [voxel]], result.alphas[voxel] ** 2)[:, 0]
        np.testing.assert_allclose(result.weights[:, voxel], expected, atol=1e-8)
    single = br.bootstrap_ridge(X, Y, alphas, nboots=6, chunk_trs=40, nchunks=2, seed=11, single_alpha=True, progress=False)
    assert len(set(single.alphas)) == 1 and single.alphas[0] == alphas[np.argmax(mean_corrs.mean(1))]
    other = br.bootstrap_ridge(X, Y, alphas, nboots=6, chunk_trs=40, nchunks=2, seed=12, progress=False)
    assert not np.allclose(other.mean_corrs, result.mean_corrs)
    np.testing.assert_allclose(result.validation_r, mean_corrs[np.argmax(mean_corrs, 0), np.arange(6)], atol=1e-9)


@pytest.mark.parametrize("n_rows, chunk_trs, expected", [(400, 40, 2), (3737, 40, 19), (30000, 40, 150), (100, 40, 1), (50, 40, 1)])
def test_default_nchunks_holds_out_about_20_percent(n_rows, chunk_trs, expected):
    assert br.default_nchunks(n_rows, chunk_trs) == expected
    if n_rows >= 10 * chunk_trs:
        assert abs(expected * chunk_trs / n_rows - 0.2) <= chunk_trs / n_rows
    X, Y, _ = planted(400, 5, 2, 0.5, seed=3)
    assert br.bootstrap_ridge(X, Y, br.bootstrap_alphas(0, 2, 3), nboots=2, progress=False).nchunks == 2


def test_grid_edges_fractions_and_warning(caplog):
    grid = np.logspace(-1, 7, 17)
    chosen = np.array([grid[0]] * 2 + [grid[5]] * 17 + [grid[-1]] * 1)
    with caplog.at_level(logging.WARNING, logger="brainllm.encoding"):
        edges = encoding.grid_edges(chosen, grid)
    assert edges == {"alpha_frac_at_min": 0.1, "alpha_frac_at_max": 0.05}
    assert [r.message for r in caplog.records if r.levelno == logging.WARNING] == ["10.0% of voxels chose the min end of the alpha grid: widen the grid"]
    assert encoding.alpha_grid().max() == 1e7


def test_lipschitz_max_norm_chosen_by_story_cv():
    from brainllm.lipschitz import cv_max_norm

    X, Y, _ = planted(240, 10, 8, 1.0, seed=13)
    splits = encoding.leave_one_story_out([60] * 4)
    grid = [0.01, 0.3, 100.0]
    chosen, scores, validation_r = cv_max_norm(X, Y, splits, grid, steps=150)
    expected = np.zeros((3, Y.shape[1]))
    for train, val in splits:
        for i, bound in enumerate(grid):
            fit = fit_lipschitz(X[train], Y[train], bound, 150, progress=False)
            expected[i] += metrics.pearson_r(X[val] @ fit.weights, Y[val]) / len(splits)
    np.testing.assert_allclose(scores, expected.mean(1), atol=1e-5)
    assert chosen == grid[int(np.argmax(expected.mean(1)))]
    np.testing.assert_allclose(validation_r, expected[int(np.argmax(expected.mean(1)))], atol=1e-5)


def test_project_spectral_norm_clips_singular_values():
    rng = np.random.default_rng(8)
    for shape in ((6, 9), (9, 6)):
        W = rng.standard_normal(shape)
        projected = project_spectral_norm(torch.as_tensor(W), 1.5).numpy()
        U, S, Vt = np.linalg.svd(W, full_matrices=False)
        np.testing.assert_allclose(projected, (U * np.minimum(S, 1.5)) @ Vt, atol=1e-10)


def test_lipschitz_norm_bound_and_least_squares_limit():
    X, Y, _ = planted(200, 12, 7, 0.3, seed=9)
    bounded = fit_lipschitz(X, Y, max_norm=0.5, steps=300, progress=False)
    assert bounded.spectral_norm <= 0.5 + 1e-6
    assert np.linalg.norm(bounded.weights, 2) <= 0.5 + 1e-6
    free = fit_lipschitz(X, Y, max_norm=1e3, steps=500, progress=False, dtype=torch.float64)
    least_squares = np.linalg.lstsq(X.astype(np.float64), Y.astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(free.weights, least_squares, atol=1e-6)
    assert bounded.loss > free.loss


# ------------------------------------------------------------------ run_encoding end to end

N_VOXELS = 60
PLANTED_LAYER = 1
STORIES = {"s1": 90, "s2": 80, "s3": 85, "s4": 75, "test": 100}


@pytest.fixture(scope="module")
def synthetic_subject(tmp_path_factory):
    """Aligned features (3 layers), responses planted from layer 1, mask, atlas, ground truth."""
    root = tmp_path_factory.mktemp("encoding")
    rng = np.random.default_rng(21)
    mask = np.zeros((5, 4, 4), dtype=np.uint8)
    mask.flat[rng.choice(mask.size, N_VOXELS, replace=False)] = 1
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-10, 20, 5]
    nib.save(nib.Nifti1Image(mask, affine), root / "mask.nii.gz")
    atlas = np.zeros(mask.shape, dtype=np.int16)
    atlas[:2] = 1
    atlas[2:] = 2
    nib.save(nib.Nifti1Image(atlas, affine), root / "atlas.nii.gz")
    pd.DataFrame({"index": [1, 2], "name": ["front", "back"]}).to_csv(root / "atlas.tsv", sep="\t", index=False)

    hidden, delays = 8, [1, 2, 3, 4]
    weights = rng.standard_normal((hidden * len(delays), N_VOXELS)) / np.sqrt(hidden * len(delays))
    signal_voxels = np.arange(0, N_VOXELS, 2)
    weights[:, 1::2] = 0.0
    noise_sd = 0.6
    ceiling = np.where(np.arange(N_VOXELS) % 2 == 0, 1.0, 0.0)
    with h5py.File(root / "aligned.h5", "w") as aligned, h5py.File(root / "responses.h5", "w") as responses:
        for story, n_trs in STORIES.items():
            group = aligned.create_group(story)
            layers = {layer: zscore_columns(rng.standard_normal((n_trs, hidden))).astype(np.float32) for layer in range(3)}
            for layer, features in layers.items():
                group.create_dataset(layer_key(layer), data=features)
            signal = make_delayed(layers[PLANTED_LAYER], delays) @ weights
            signal /= np.maximum(signal.std(0), 1e-12)
            n_rep = 3 if story == "test" else 1
            runs = signal[None] + noise_sd * rng.standard_normal((n_rep, n_trs, N_VOXELS))
            out = responses.create_group(story)
            out.create_dataset("data", data=runs.mean(0).astype(np.float32))
            if n_rep > 1:
                out.create_dataset("repeats", data=runs.astype(np.float32))
                ceiling = np.where(np.arange(N_VOXELS) % 2 == 0, np.sqrt(1 / (1 + noise_sd**2 / n_rep)), 0.0)
    truth = {"planted_layer": PLANTED_LAYER, "per_subject": {"S1": {"signal_voxels": signal_voxels.tolist(), "ceiling_r_test": ceiling.tolist()}}}
    (root / "ground_truth.json").write_text(json.dumps(truth))
    return root


def _run(root, layer_list, method="ridge", **extra):
    settings = {
        "method": method, "backend": "numpy", "delays": [1, 2, 3, 4], "alphas": {"log10_min": -1, "log10_max": 4, "num": 11},
        "fdr_q": 0.05, "seed": 0, "save_weights": True,
        "bootstrap": {"nboots": 5, "chunk_trs": 20, "nchunks": 3, "log10_min": 0, "log10_max": 3, "num": 7},
        "lipschitz": {"max_norm": 2.0, "steps": 200, "lr": 1.0},
        "invariance": {"n_resamples": 5, "chunk_trs": 20, "input_noise_std": 0.1},
        "significance": {"method": "block_permutation", "block_trs": 10, "n_permutations": 500},
        **extra,
    }
    tag = f"{method}-{'-'.join(map(str, layer_list))}"
    paths = {name: root / f"{tag}_{name}" for name in ("scores.tsv", "r.nii.gz", "roi.tsv", "summary.json", "weights.safetensors", "predictions.h5")}
    summary = encoding.run_encoding(
        root / "aligned.h5", root / "responses.h5", root / "mask.nii.gz", layer_list, ["s1", "s2", "s3", "s4"], ["test"], settings,
        paths["scores.tsv"], paths["r.nii.gz"], paths["roi.tsv"], paths["summary.json"], paths["weights.safetensors"],
        root / "atlas.nii.gz", root / "atlas.tsv", root / "ground_truth.json", subject="S1", model="toy",
        predictions_h5=paths["predictions.h5"],
    )
    return summary, paths


@pytest.fixture(scope="module")
def ridge_runs(synthetic_subject):
    return {layer: _run(synthetic_subject, [layer]) for layer in range(3)}


def test_run_encoding_outputs(synthetic_subject, ridge_runs):
    summary, paths = ridge_runs[PLANTED_LAYER]
    scores = pd.read_csv(paths["scores.tsv"], sep="\t")
    assert list(scores.columns) == ["voxel", "r", "r_val", "p", "p_fdr", "significant", "alpha"]
    assert not (scores["significant"] & (scores["r"] <= 0)).any()
    assert summary["significance"] == {"method": "block_permutation", "alternative": "greater", "correction": "fdr_bh",
                                       "requires_positive_r": True, "block_trs": 10, "n_permutations": 500, "seed": 0}
    # validation r: planted voxels well above the noise voxels, and the top-10 % set is chosen by it
    assert scores["r_val"][0::2].mean() > 0.5 > abs(scores["r_val"][1::2].mean()) + 0.4
    top = np.argsort(-scores["r_val"].to_numpy(), kind="stable")[:6]
    assert summary["mean_r_top10"] == pytest.approx(scores["r"].to_numpy()[top].mean())
    assert 0 <= summary["fit_info"]["alpha_frac_at_min"] <= 1 and 0 <= summary["fit_info"]["alpha_frac_at_max"] <= 1
    # the saved test predictions reproduce the test r
    pred, attrs = inference.read_predictions(paths["predictions.h5"])
    assert attrs["test_stories"] == ["test"] and pred.shape == (100, N_VOXELS) and attrs["layers"] == [PLANTED_LAYER]
    resp = encoding.held_out_responses(synthetic_subject / "responses.h5", ["test"])
    np.testing.assert_allclose(metrics.pearson_r(pred, resp), scores["r"], atol=2e-3)
    assert len(scores) == N_VOXELS
    # the NIfTI map carries r at the mask voxels on the mask's grid
    mask_img = nib.load(synthetic_subject / "mask.nii.gz")
    r_img = nib.load(paths["r.nii.gz"])
    np.testing.assert_array_equal(r_img.affine, mask_img.affine)
    np.testing.assert_allclose(np.asarray(r_img.dataobj)[np.asarray(mask_img.dataobj) > 0], scores["r"], atol=1e-6)
    # ROI table against a hand computation from the atlas
    rois = pd.read_csv(paths["roi.tsv"], sep="\t").set_index("roi")
    labels = np.asarray(nib.load(synthetic_subject / "atlas.nii.gz").dataobj)[np.asarray(mask_img.dataobj) > 0]
    for name, index in (("front", 1), ("back", 2)):
        assert rois.loc[name, "mean_r"] == pytest.approx(scores["r"][labels == index].mean())
        assert rois.loc[name, "frac_significant"] == pytest.approx(scores["significant"][labels == index].mean())
    assert rois.loc["all", "n_voxels"] == N_VOXELS
    on_disk = json.loads(paths["summary.json"].read_text())
    assert on_disk["solver"] == "ridge_cv_eigh" and on_disk["n_train_trs"] == 330 and on_disk["n_test_trs"] == 100
    assert on_disk["n_features"] == 32 and on_disk["n_significant"] == int(scores["significant"].sum())
    truth = on_disk["ground_truth"]
    assert truth["detection_sensitivity"] >= 0.9 and truth["detection_specificity"] >= 0.9
    assert truth["mean_r_signal"] >= 0.8 * truth["mean_ceiling_r_signal"]
    assert abs(truth["mean_r_noise"]) < 0.1
    assert on_disk["noise_ceiling"]["n_repeats"] == 3
    assert 0.5 < on_disk["invariance"]["test_chunks"]["mean_pairwise_r"] <= 1.0
    assert summary["mean_r"] == pytest.approx(scores["r"].mean())
    from safetensors.numpy import load_file

    saved = load_file(paths["weights.safetensors"])
    assert saved["weights"].shape == (32, N_VOXELS)
    np.testing.assert_allclose(saved["alphas"], scores["alpha"], rtol=1e-6)


def test_best_layer_selects_on_validation_not_test(tmp_path):
    """Layer 1 is better on validation, layer 2 on test: layer 1 is chosen, maps and top-10 % follow validation."""
    mask = np.ones((2, 2, 5), dtype=np.uint8)
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask.nii.gz")
    rng = np.random.default_rng(3)
    n = 20
    r_val = {0: np.full(n, 0.05), 1: np.linspace(0.1, 0.5, n), 2: np.full(n, 0.2)}
    r_test = {0: np.full(n, 0.05), 1: np.full(n, 0.1), 2: np.full(n, 0.4)}
    paths = {}
    for layer in r_val:
        paths[layer] = tmp_path / f"layer{layer}.tsv"
        pd.DataFrame({"voxel": np.arange(n), "r": r_test[layer] + 0.001 * rng.standard_normal(n), "r_val": r_val[layer],
                      "significant": True}).to_csv(paths[layer], sep="\t", index=False)
    best = inference.best_layer(paths, tmp_path / "mask.nii.gz", tmp_path / "best.nii.gz", tmp_path / "layers.tsv")
    assert best == 1
    table = pd.read_csv(tmp_path / "layers.tsv", sep="\t").set_index("layer")
    assert table.loc[2, "mean_r"] > table.loc[1, "mean_r"]  # the test curve is only descriptive
    # layer 1's top 10 % by validation r are its last two voxels, reported with their test r
    scores_1 = pd.read_csv(paths[1], sep="\t")
    assert table.loc[1, "mean_r_top10"] == pytest.approx(scores_1["r"].to_numpy()[[19, 18]].mean())
    volume = np.asarray(nib.load(tmp_path / "best.nii.gz").dataobj)[mask > 0]
    np.testing.assert_array_equal(volume, np.where(r_val[1] > 0.2, 1, 2))
    pd.DataFrame({"voxel": np.arange(n), "r": 0.1, "r_val": np.nan, "significant": True}).to_csv(paths[0], sep="\t", index=False)
    with pytest.raises(InputError, match="r_val"):
        inference.best_layer(paths, tmp_path / "mask.nii.gz", tmp_path / "best.nii.gz", tmp_path / "layers.tsv")


def test_best_layer_finds_planted_layer(synthetic_subject, ridge_runs):
    out_nii, out_tsv = synthetic_subject / "best.nii.gz", synthetic_subject / "layers.tsv"
    best = inference.best_layer(
        {layer: run[1]["scores.tsv"] for layer, run in ridge_runs.items()}, synthetic_subject / "mask.nii.gz", out_nii, out_tsv,
        predictions={layer: run[1]["predictions.h5"] for layer, run in ridge_runs.items()},
        responses_h5=synthetic_subject / "responses.h5", test_stories=["test"], comparison={"block_trs": 10},
    )
    assert best == PLANTED_LAYER
    table = pd.read_csv(out_tsv, sep="\t")
    assert table.loc[table["best"], "layer"].tolist() == [PLANTED_LAYER]
    # every other layer is worse than the planted one: Δ < 0 with a CI below 0, Holm-corrected p small
    others = table[~table["best"]]
    assert (others["delta_ci_high"] < 0).all() and (others["p_vs_best_holm"] < 0.05).all(), table.to_string()
    assert (others["p_vs_best_holm"] >= others["p_vs_best"]).all()
    planted = table[table["best"]].iloc[0]
    assert planted["delta_vs_best"] == 0 and planted["p_vs_best_holm"] == 1
    mask = np.asarray(nib.load(synthetic_subject / "mask.nii.gz").dataobj) > 0
    volume = np.asarray(nib.load(out_nii).dataobj)
    assert np.all(volume[~mask] == -1)
    values = volume[mask]
    assert np.mean(values[0::2] == PLANTED_LAYER) > 0.9  # signal voxels
    assert np.mean(values[1::2] == -1) > 0.9  # noise voxels rarely significant


@pytest.mark.parametrize("method", ["bootstrap_ridge", "lipschitz"])
def test_other_methods_run(synthetic_subject, ridge_runs, method):
    summary, _ = _run(synthetic_subject, [PLANTED_LAYER], method=method)
    assert summary["method"] == method
    assert summary["ground_truth"]["mean_r_signal"] > 0.7 * ridge_runs[PLANTED_LAYER][0]["ground_truth"]["mean_r_signal"]
    if method == "lipschitz":
        assert summary["fit_info"]["spectral_norm"] <= 2.0 + 1e-6
        assert "input_noise" in summary["invariance"]


def test_banded_run(synthetic_subject):
    summary, _ = _run(synthetic_subject, [0, PLANTED_LAYER], banded={"n_iter": 10}, alphas={"log10_min": -1, "log10_max": 4, "num": 6})
    assert summary["method"] == "banded_ridge" and summary["layers"] == [0, PLANTED_LAYER]
    assert summary["mean_band_weights"][1] > summary["mean_band_weights"][0]


def test_run_encoding_input_errors(synthetic_subject, tmp_path):
    small_mask = np.zeros((5, 4, 4), np.uint8)
    small_mask.flat[:10] = 1
    nib.save(nib.Nifti1Image(small_mask, np.eye(4)), tmp_path / "mask.nii.gz")
    common = dict(settings={"backend": "numpy"}, scores_tsv=tmp_path / "s.tsv", r_nii=tmp_path / "r.nii.gz", roi_tsv=tmp_path / "roi.tsv", summary_json=tmp_path / "s.json")
    with pytest.raises(InputError, match="mask has 10 voxels"):
        encoding.run_encoding(synthetic_subject / "aligned.h5", synthetic_subject / "responses.h5", tmp_path / "mask.nii.gz", [0], ["s1", "s2"], ["test"], **common)
    with pytest.raises(InputError, match="at least 2 training stories"):
        encoding.run_encoding(synthetic_subject / "aligned.h5", synthetic_subject / "responses.h5", synthetic_subject / "mask.nii.gz", [0], ["s1"], ["test"], **common)
    with pytest.raises(InputError, match="layer_07"):
        encoding.run_encoding(synthetic_subject / "aligned.h5", synthetic_subject / "responses.h5", synthetic_subject / "mask.nii.gz", [7], ["s1", "s2"], ["test"], **common)
    assert not (tmp_path / "s.tsv").exists()


def test_ground_truth_follows_dropped_voxels(synthetic_subject, tmp_path):
    """Ground truth indexes the dataset mask; the analysis mask may have dropped voxels."""
    dataset = nib.load(synthetic_subject / "mask.nii.gz")
    mask = np.asarray(dataset.dataobj) > 0
    positions = np.flatnonzero(mask)
    analysis = mask.copy()
    analysis.flat[positions[[0, 5, 6]]] = False  # preprocessing dropped three voxels
    nib.save(nib.Nifti1Image(analysis.astype(np.uint8), dataset.affine), tmp_path / "analysis.nii.gz")
    truth = encoding.load_ground_truth(synthetic_subject / "ground_truth.json", "S1", synthetic_subject / "mask.nii.gz", tmp_path / "analysis.nii.gz")
    kept = np.setdiff1d(np.arange(N_VOXELS), [0, 5, 6])
    np.testing.assert_array_equal(truth["signal"], kept % 2 == 0)
    assert truth["signal"].size == N_VOXELS - 3 and truth["planted_layer"] == PLANTED_LAYER
    with pytest.raises(InputError, match="60 ceiling values for the 57 voxels"):
        encoding.load_ground_truth(synthetic_subject / "ground_truth.json", "S1", tmp_path / "analysis.nii.gz", synthetic_subject / "mask.nii.gz")
    recorded = json.loads((synthetic_subject / "ground_truth.json").read_text())
    recorded["per_subject"]["S1"]["planted_layer"] = PLANTED_LAYER + 1  # a subject planted at its own layer
    (tmp_path / "truth.json").write_text(json.dumps(recorded))
    own = encoding.load_ground_truth(tmp_path / "truth.json", "S1", synthetic_subject / "mask.nii.gz", tmp_path / "analysis.nii.gz")
    assert own["planted_layer"] == PLANTED_LAYER + 1



def test_segment_buffers_drop_training_trs_next_to_test_segments(tmp_path):
    path = tmp_path / "responses.h5"
    with h5py.File(path, "w") as h5:
        for index in (1, 2, 3):
            group = h5.create_group(f"runseg{index}")
            group.create_dataset("data", data=np.arange(60.0)[:, None] * np.ones((1, 3)) + index)
            group.attrs.update(segment_of="run", segment_index=index, n_segments=3)
        h5.create_group("other").create_dataset("data", data=np.ones((30, 3)))
    drops = encoding.segment_buffers(path, ["runseg1", "runseg3", "other"], ["runseg2"], 7)
    assert drops == {"runseg1": (0, 7), "runseg3": (7, 0)}
    assert encoding.segment_buffers(path, ["runseg2", "other"], ["runseg1"], 7) == {"runseg2": (7, 0)}
    assert encoding.default_segment_buffer({"delays": [1, 2, 3, 4], "lanczos_window": 3, "lanczos_cutoff_mult": 1.0}) == 7
    assert encoding.default_segment_buffer({"segment_buffer_trs": 2}) == 2
    features = {0: {f"runseg{i}": np.tile(np.arange(60.0)[:, None], (1, 2)) for i in (1, 3)}}
    responses = {f"runseg{i}": np.tile(np.arange(60.0)[:, None], (1, 3)) for i in (1, 3)}
    (X,), Y, lengths = encoding.build_design(features, responses, ["runseg1", "runseg3"], [1], drop=drops)
    assert lengths == [53, 53]
    # runseg1 keeps rows 0..52 (delayed by one TR: features 0..51 after a zero row); runseg3 rows 7..59
    np.testing.assert_array_equal(X[:53, 0], np.concatenate([[0.0], np.arange(52.0)]))
    np.testing.assert_array_equal(X[53:, 0], np.arange(6.0, 59.0))
    np.testing.assert_allclose(Y[53:, 0], zscore_columns(np.arange(7.0, 60.0)[:, None])[:, 0], atol=1e-6)
    with pytest.raises(InputError, match="segment buffer"):
        encoding.build_design(features, responses, ["runseg1"], [1], drop={"runseg1": (30, 30)})
