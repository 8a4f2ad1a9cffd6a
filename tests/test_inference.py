"""Voxel tests and model comparisons (brainllm.metrics) against slow loops and simulated nulls."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import signal, stats

from brainllm import metrics


def ar1(rng, n_trs, n_columns, phi, burn_in=200):
    """Unit-variance AR(1) series ``(n_trs, n_columns)`` with coefficient ``phi``."""
    white = rng.standard_normal((n_trs + burn_in, n_columns)) * np.sqrt(1.0 - phi**2)
    return signal.lfilter([1.0], [1.0, -phi], white, axis=0)[burn_in:]


def test_block_permutations_shuffle_whole_blocks():
    orders = metrics.block_permutations(53, 10, 40, seed=3)
    assert orders.shape == (40, 53)
    for order in orders:
        assert sorted(order) == list(range(53))
        # 53 rows: blocks of 10, 10, 11, 11, 11 — each position block holds one source block in order
        starts = [0, 10, 20, 31, 42]
        lengths = [10, 10, 11, 11, 11]
        for start, length in zip(starts, lengths):
            source = order[start : start + length]
            assert source[0] in starts and lengths[starts.index(source[0])] == length
            np.testing.assert_array_equal(source, np.arange(source[0], source[0] + length))
    assert 10 <= len({tuple(o) for o in orders}) <= 12  # of 2! orders of the 10-row blocks × 3! of the 11-row ones
    # a remainder longer than the number of blocks (154 rows, 20-row blocks: 7 blocks of 22) still covers every row
    for n_trs, block_trs in ((154, 20), (147, 20), (159, 20), (41, 20), (300, 7)):
        for order in metrics.block_permutations(n_trs, block_trs, 5, seed=1):
            assert sorted(order) == list(range(n_trs)), (n_trs, block_trs)


def test_permutation_p_matches_slow_loop():
    rng = np.random.default_rng(0)
    n_trs, n_voxels, n_perm = 97, 7, 300
    pred = ar1(rng, n_trs, n_voxels, 0.6)
    resp = 0.3 * pred * np.linspace(0, 1, n_voxels) + ar1(rng, n_trs, n_voxels, 0.5)
    pred[:, 0] = 1.0  # constant prediction: r = 0, p = 1
    r, p = metrics.permutation_p(pred, resp, n_permutations=n_perm, block_trs=8, seed=11, n_voxels_batch=3)
    orders = metrics.block_permutations(n_trs, 8, n_perm, seed=11)
    for v in range(n_voxels):
        observed = stats.pearsonr(pred[:, v], resp[:, v]).statistic if v else 0.0
        null = [stats.pearsonr(pred[order, v], resp[:, v]).statistic if v else 0.0 for order in orders]
        assert r[v] == pytest.approx(observed, abs=1e-10)
        assert p[v] == pytest.approx((1 + sum(x >= observed - 1e-9 for x in null)) / (1 + n_perm))
    assert p[0] == 1.0


def test_circular_shift_p_matches_slow_loop():
    rng = np.random.default_rng(1)
    pred, resp = rng.standard_normal((60, 4)), rng.standard_normal((60, 4))
    resp[:, 1] += pred[:, 1]
    r, p = metrics.circular_shift_p(pred, resp, min_shift_trs=10)
    for v in range(4):
        null = [stats.pearsonr(np.roll(pred[:, v], -k), resp[:, v]).statistic for k in range(10, 51)]
        assert p[v] == pytest.approx((1 + sum(x >= r[v] - 1e-9 for x in null)) / (1 + len(null)))
    assert p[1] == pytest.approx(1 / 42)


@pytest.mark.parametrize("phi_pred, phi_resp", [(0.8, 0.5), (0.9, 0.7)])
def test_permutation_p_is_calibrated_on_null_ar1(phi_pred, phi_resp):
    rng = np.random.default_rng(7)
    n_trs, n_voxels = 291, 3000
    pred, resp = ar1(rng, n_trs, n_voxels, phi_pred), ar1(rng, n_trs, n_voxels, phi_resp)
    r, p = metrics.permutation_p(pred, resp, n_permutations=500, block_trs=10, seed=0)
    assert np.mean(p < 0.05) <= 0.07
    # the analytic test on the same data is anti-conservative: this is what the permutation fixes
    assert np.mean(metrics.pearson_p(r, n_trs) < 0.05) > 0.09
    # and p stays uniform-ish: not a test that never rejects
    assert np.mean(p < 0.5) == pytest.approx(0.5, abs=0.05)


def test_voxel_p_values_dispatch_and_one_sided():
    rng = np.random.default_rng(2)
    pred = rng.standard_normal((120, 3))
    resp = np.column_stack([pred[:, 0], -pred[:, 1], rng.standard_normal(120)])
    for method in metrics.SIGNIFICANCE_METHODS:
        r, p = metrics.voxel_p_values(pred, resp, method=method, block_trs=10, n_permutations=200)
        assert p[0] < 0.01 and p[1] > 0.9, (method, p)  # a strong negative r is not significant
    with pytest.raises(ValueError, match="unknown significance method"):
        metrics.voxel_p_values(pred, resp, method="wilcoxon")


def test_holm_matches_step_down_definition():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    adjusted = metrics.holm(p)
    order = np.argsort(p)
    expected = np.empty(5)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (5 - rank) * p[index]))
        expected[index] = running
    np.testing.assert_allclose(adjusted, expected)


def test_paired_block_jackknife_matches_brute_force():
    rng = np.random.default_rng(4)
    n_trs, n_voxels = 83, 5
    resp = ar1(rng, n_trs, n_voxels, 0.5)
    pred_a = resp + 1.0 * rng.standard_normal((n_trs, n_voxels))
    pred_b = resp + 10.0 * rng.standard_normal((n_trs, n_voxels))
    result = metrics.paired_block_jackknife(pred_a, pred_b, resp, block_trs=10, n_voxels_batch=2)
    blocks = [np.arange(s, min(s + 10, n_trs)) for s in range(0, n_trs, 10)]

    def delta(rows):
        return np.mean([stats.pearsonr(pred_a[rows, v], resp[rows, v]).statistic - stats.pearsonr(pred_b[rows, v], resp[rows, v]).statistic
                        for v in range(n_voxels)])

    left_out = np.array([delta(np.setdiff1d(np.arange(n_trs), block)) for block in blocks])
    B = len(blocks)
    se = np.sqrt((B - 1) / B * ((left_out - left_out.mean()) ** 2).sum())
    full = delta(np.arange(n_trs))
    assert result["delta"] == pytest.approx(full, abs=1e-12) and result["se"] == pytest.approx(se, rel=1e-9)
    assert result["p"] == pytest.approx(2 * stats.t.sf(abs(full) / se, B - 1), rel=1e-9)
    half = stats.t.ppf(0.975, B - 1) * se
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((full - half, full + half), rel=1e-9)
    assert result["n_blocks"] == B == 9 and result["delta"] > 0 and result["ci_low"] > 0 and result["p"] < 0.05


def test_paired_block_jackknife_null_is_calibrated_with_the_few_blocks_of_one_test_story():
    """Equally good predictions, 147 TRs in 7 blocks of 20 (the demo's test story): p < 0.05 in about 5 % of datasets,
    where the percentile block bootstrap of the same blocks fires far more often."""
    rng = np.random.default_rng(1)
    p_jackknife, p_bootstrap = [], []
    for _ in range(250):
        resp = ar1(rng, 147, 20, 0.6)
        pred_a, pred_b = resp + 3 * ar1(rng, 147, 20, 0.6), resp + 3 * ar1(rng, 147, 20, 0.6)
        p_jackknife.append(metrics.paired_block_jackknife(pred_a, pred_b, resp, block_trs=20)["p"])
        # the percentile bootstrap, as an independent reference: blocks of 20 drawn with replacement
        blocks = [np.arange(s, min(s + 20, 147)) for s in range(0, 147, 20)]
        draws = rng.integers(0, len(blocks), size=(100, len(blocks)))
        counts = np.stack([np.bincount(draw, minlength=len(blocks)) for draw in draws])
        delta = metrics.pearson_r(pred_a, resp).mean() - metrics.pearson_r(pred_b, resp).mean()
        boot = []
        for draw in counts:
            rows = np.concatenate([blocks[j] for j, c in enumerate(draw.astype(int)) for _ in range(c)])
            boot.append(metrics.pearson_r(pred_a[rows], resp[rows]).mean() - metrics.pearson_r(pred_b[rows], resp[rows]).mean())
        p_bootstrap.append((1 + np.sum(np.abs(np.array(boot) - delta) >= abs(delta))) / 101)
    rate_jackknife, rate_bootstrap = np.mean(np.array(p_jackknife) < 0.05), np.mean(np.array(p_bootstrap) < 0.05)
    print(f"p < 0.05: jackknife {rate_jackknife:.3f}, percentile bootstrap {rate_bootstrap:.3f}")
    assert rate_jackknife <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 250), rate_jackknife
    assert rate_bootstrap > rate_jackknife + 0.03, (rate_bootstrap, rate_jackknife)


def test_sign_flip_p_exact_enumeration():
    d = np.array([0.02, 0.03, -0.01, 0.04, 0.05])
    flips = [np.dot(s, d) for s in itertools.product([-1, 1], repeat=5)]
    assert metrics.sign_flip_p(d) == pytest.approx(np.mean(np.abs(flips) >= abs(d.sum()) - 1e-12))
    assert metrics.sign_flip_p(np.array([0.1, 0.1, 0.1])) == pytest.approx(2 / 8)
    assert np.isnan(metrics.sign_flip_p(np.array([0.01, np.nan, 0.02, 0.03])))  # not p = 0


def test_noise_ceiling_z_scores_each_repeat():
    rng = np.random.default_rng(6)
    n_rep, n_trs, n_voxels = 3, 2000, 4
    signal_var = np.array([0.0, 0.5, 1.0, 4.0])
    shared = rng.standard_normal((n_trs, n_voxels)) * np.sqrt(signal_var)
    scales = np.array([0.5, 1.0, 3.0])[:, None, None]  # repeats of unequal scale
    repeats = scales * (shared[None] + rng.standard_normal((n_rep, n_trs, n_voxels))) + 7.0
    ev = metrics.noise_ceiling(repeats)
    # direct computation: z-score each repeat, explainable variance of the mean, bias correction
    z = [(rep - rep.mean(0)) / rep.std(0) for rep in repeats]
    direct = np.var(np.mean(z, axis=0), axis=0)
    direct = direct - (1 - direct) / (n_rep - 1)
    np.testing.assert_allclose(ev, direct, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ev, signal_var / (signal_var + 1.0), atol=0.05)
    constant = repeats.copy()
    constant[1, :, 2] = 1.0
    assert metrics.noise_ceiling(constant)[2] == 0.0


def test_group_comparison_sign_flip_across_subjects(tmp_path):
    import pandas as pd

    from brainllm import inference
    from brainllm.io import InputError

    rng = np.random.default_rng(8)
    subjects = ["S1", "S2", "S3", "S4", "S5"]
    paths, tuned_paths = {}, {}
    for subject in subjects:
        r_val = np.array([0.05, 0.2, 0.15])
        mean_r = np.array([0.04, 0.18, 0.12]) + 0.005 * rng.standard_normal(3)
        paths[subject] = tmp_path / f"{subject}_layers.tsv"
        pd.DataFrame({"layer": [0, 1, 2], "mean_r_val": r_val + 0.01 * rng.standard_normal(3), "mean_r": mean_r}).to_csv(paths[subject], sep="\t", index=False)
        tuned_paths[subject] = tmp_path / f"{subject}_bvt.tsv"
        pd.DataFrame({"layer": [0, 1], "delta_mean_r": [0.0, 0.01 + 0.002 * rng.standard_normal()]}).to_csv(tuned_paths[subject], sep="\t", index=False)
    table = inference.group_comparison(paths, "layers", tmp_path / "group.tsv")
    assert table.loc[table["best"], "layer"].tolist() == [1]
    frames = {s: pd.read_csv(p, sep="\t").set_index("layer") for s, p in paths.items()}
    deltas = np.array([frames[s].loc[0, "mean_r"] - frames[s].loc[1, "mean_r"] for s in subjects])
    row = table.set_index("layer").loc[0]
    assert row["delta"] == pytest.approx(deltas.mean())
    half = stats.t.ppf(0.975, 4) * deltas.std(ddof=1) / np.sqrt(5)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((deltas.mean() - half, deltas.mean() + half))
    assert row["p_sign_flip"] == pytest.approx(1 / 32)  # all five subjects agree: the most extreme of 2^5 flips, one-sided
    assert row["p_holm"] == pytest.approx(min(1.0, 2 * row["p_sign_flip"]))
    assert table.set_index("layer").loc[1, "p_holm"] == 1.0
    tuned = inference.group_comparison(tuned_paths, "base_vs_tuned", tmp_path / "group_bvt.tsv").set_index("layer")
    assert tuned.loc[0, "p_sign_flip"] == 1.0 and tuned.loc[1, "p_sign_flip"] == pytest.approx(2 / 32)
    assert tuned.loc[1, "p_holm"] == pytest.approx(2 / 32)  # one layer tested: layer 0 is no comparison
    with pytest.raises(InputError, match="at least 3"):
        inference.group_comparison(dict(list(paths.items())[:2]), "layers", tmp_path / "x.tsv")


def test_bench_voxel_tests_small(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_voxel_tests.py"
    spec = importlib.util.spec_from_file_location("bench_voxel_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--n-voxels", "300", "--n-permutations", "50", "--threads", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("RESULT block permutation 300 voxels x 50 permutations")


def test_compare_models_at_their_validation_best_layers(tmp_path):
    """Three models, each at the layer its table flags best (not the test-best one): Δ, CI and p match
    the paired bootstrap of those predictions; the planted better model wins; Holm over 3 pairs."""
    import h5py
    import pandas as pd

    from brainllm import inference
    from brainllm.io import InputError

    rng = np.random.default_rng(9)
    n_trs, n_voxels = 200, 40
    resp = rng.standard_normal((n_trs, n_voxels)).astype(np.float32)
    responses_h5 = tmp_path / "responses.h5"
    with h5py.File(responses_h5, "w") as h5:
        h5.create_group("test").create_dataset("data", data=resp)
    quality = {"good": {0: 0.1, 1: 1.0}, "fair": {0: 0.5, 1: 3.0}, "poor": {0: 4.0, 1: 0.1}}  # noise scale per layer
    best = {"good": 1, "fair": 0, "poor": 0}  # "poor": its validation choice is not its test-best layer
    tables, predictions, pred = {}, {}, {}
    z = (resp - resp.mean(0)) / resp.std(0)
    for model, layers in quality.items():
        predictions[model] = {}
        for layer, noise in layers.items():
            path = tmp_path / f"{model}_layer-{layer}_predictions.h5"
            values = z + noise * rng.standard_normal(z.shape)
            inference.save_predictions(path, values, ["test"], [n_trs], [layer], dtype="float32")
            predictions[model][layer] = path
            if layer == best[model]:
                pred[model] = values.astype(np.float32)
        tables[model] = tmp_path / f"{model}_layers.tsv"
        pd.DataFrame({"layer": [0, 1], "best": [best[model] == 0, best[model] == 1]}).to_csv(tables[model], sep="\t", index=False)
    comparison = {"block_trs": 20}
    table = inference.compare_models(tables, predictions, responses_h5, ["test"], comparison, tmp_path / "models.tsv")
    assert [(a, b) for a, b in zip(table["model_a"], table["model_b"])] == [("fair", "good"), ("fair", "poor"), ("good", "poor")]
    for row in table.itertuples():
        assert (row.layer_a, row.layer_b) == (best[row.model_a], best[row.model_b])
        expected = metrics.paired_block_jackknife(pred[row.model_a], pred[row.model_b], z, 20)
        assert row.delta == pytest.approx(expected["delta"], abs=1e-5) and row.p == pytest.approx(expected["p"], rel=1e-3, abs=1e-9)
        assert (row.ci_low, row.ci_high) == pytest.approx((expected["ci_low"], expected["ci_high"]), abs=1e-5)
    assert np.allclose(table["p_holm"], metrics.holm(table["p"].to_numpy()))
    good_vs_poor = table[(table.model_a == "good") & (table.model_b == "poor")].iloc[0]
    assert good_vs_poor.delta > 0 and good_vs_poor.ci_low > 0 and good_vs_poor.p_holm < 0.05
    with pytest.raises(InputError, match="at least 2 models"):
        inference.compare_models({"good": tables["good"]}, predictions, responses_h5, ["test"], comparison, tmp_path / "x.tsv")


def test_block_permutation_null_r_matches_loop_and_is_wider_than_analytic_under_ar1():
    rng = np.random.default_rng(10)
    n_trs, n_voxels = 300, 500
    pred, resp = ar1(rng, n_trs, n_voxels, 0.8), ar1(rng, n_trs, n_voxels, 0.7)
    null = metrics.block_permutation_null_r(pred, resp, block_trs=20, n_permutations=20, max_voxels=100, seed=3)
    voxels = np.sort(np.random.default_rng(3).choice(n_voxels, 100, replace=False))
    orders = metrics.block_permutations(n_trs, 20, 20, seed=3)
    loop = [stats.pearsonr(pred[order, v], resp[:, v])[0] for order in orders for v in voxels]
    assert np.allclose(null, loop, atol=1e-10)
    # autocorrelated series: the permutation null is wider than the analytic one (1 / sqrt(n))
    sd_true = np.sqrt((1 + 0.8 * 0.7) / (1 - 0.8 * 0.7) / n_trs)
    assert np.std(null) > 1.3 / np.sqrt(n_trs) and np.std(null) == pytest.approx(sd_true, rel=0.25)
