"""brainllm.metrics against scipy, closed forms for Gaussian data, and brute-force loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from brainllm import metrics


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(12345)


def test_pearson_r_and_p_match_scipy(rng):
    pred = rng.standard_normal((50, 6))
    resp = 0.4 * pred + rng.standard_normal((50, 6)) * np.linspace(0.2, 3.0, 6)
    r = metrics.pearson_r(pred, resp)
    p = metrics.pearson_p(r, 50, "two-sided")
    p_greater = metrics.pearson_p(r, 50)
    for j in range(6):
        expected = stats.pearsonr(pred[:, j], resp[:, j])
        assert r[j] == pytest.approx(expected.statistic, abs=1e-12)
        assert p[j] == pytest.approx(expected.pvalue, rel=1e-8, abs=1e-300)
        one_sided = stats.pearsonr(pred[:, j], resp[:, j], alternative="greater").pvalue
        assert p_greater[j] == pytest.approx(one_sided, rel=1e-8, abs=1e-300)


def test_pearson_r_constant_column_scores_zero():
    pred = np.column_stack([np.ones(10), np.arange(10.0)])
    r = metrics.pearson_r(pred, np.arange(10.0)[:, None].repeat(2, 1))
    assert r[0] == 0.0 and r[1] == pytest.approx(1.0)
    assert metrics.pearson_p(r, 10, "two-sided")[0] == pytest.approx(1.0)
    assert metrics.pearson_p(r, 10)[0] == pytest.approx(0.5)


def test_fdr_bh_matches_scipy(rng):
    p = np.concatenate([rng.uniform(0, 1, 300), rng.uniform(0, 1e-3, 40)])
    rng.shuffle(p)
    adjusted, significant = metrics.fdr_bh(p, q=0.05)
    np.testing.assert_allclose(adjusted, stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    # step-up rule written out: reject the k smallest where k = max{i : p_(i) <= i q / m}
    order = np.sort(p)
    passing = np.flatnonzero(order <= np.arange(1, p.size + 1) * 0.05 / p.size)
    k = passing.max() + 1 if passing.size else 0
    assert significant.sum() == k
    assert set(np.flatnonzero(significant)) == set(np.argsort(p)[:k])


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_gaussian_copula_mi_closed_form(rng, rho):
    n = 20000
    cov = [[1, rho], [rho, 1]]
    xy = rng.multivariate_normal([0, 0], cov, size=n)
    expected = -0.5 * np.log2(1 - rho**2)
    # copula MI is invariant to monotone transforms of the margins
    mi = metrics.gaussian_copula_mi(np.exp(xy[:, 0]), xy[:, 1] ** 3)[0]
    assert mi == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("rho", [0.3, 0.8])
def test_knn_mi_closed_form(rng, rho):
    xy = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=12000)
    expected = -0.5 * np.log2(1 - rho**2)
    estimate = metrics.knn_mi(xy[:, 0], xy[:, 1], k=3)
    assert estimate == pytest.approx(expected, abs=0.03)
    # the same estimator in scikit-learn (nats; it jitters the data slightly)
    from sklearn.feature_selection import mutual_info_regression

    reference = mutual_info_regression(xy[:, :1], xy[:, 1], n_neighbors=3, random_state=0)[0] / np.log(2)
    assert estimate == pytest.approx(reference, abs=0.005)
    both = metrics.mutual_information(xy[:, :1], xy[:, 1:], method="knn")
    assert both.shape == (1,)


def test_knn_mi_independent_near_zero(rng):
    assert metrics.knn_mi(rng.standard_normal(3000), rng.standard_normal(3000)) < 0.02


def test_sensitivity_specificity_brute_force(rng):
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.uniform(size=200) < 0.6, y_true, rng.integers(0, 4, 200))
    result = metrics.sensitivity_specificity(y_true, y_pred)
    for i, label in enumerate(result["labels"]):
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == label and p == label)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == label and p != label)
        tn = sum(1 for t, p in zip(y_true, y_pred) if t != label and p != label)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != label and p == label)
        assert result["sensitivity"][i] == pytest.approx(tp / (tp + fn))
        assert result["specificity"][i] == pytest.approx(tn / (tn + fp))
    assert result["sensitivity_macro"] == pytest.approx(np.mean(result["sensitivity"]))
    # macro sensitivity equals sklearn's balanced accuracy
    from sklearn.metrics import balanced_accuracy_score

    assert result["sensitivity_macro"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_detection_rates():
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    detected = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    rates = metrics.detection_rates(detected, truth)
    assert rates["sensitivity"] == pytest.approx(2 / 3)
    assert rates["specificity"] == pytest.approx(4 / 5)
    assert (rates["true_positives"], rates["false_positives"]) == (2, 1)


def test_invariance_brute_force(rng):
    maps = rng.standard_normal((5, 30)) + np.linspace(0, 3, 30)
    result = metrics.invariance(maps)
    pair_r = [np.corrcoef(maps[i], maps[j])[0, 1] for i, j in itertools.combinations(range(5), 2)]
    assert result["mean_pairwise_r"] == pytest.approx(np.mean(pair_r), abs=1e-12)
    means = [m.mean() for m in maps]
    assert result["cv_mean_score"] == pytest.approx(np.std(means, ddof=1) / abs(np.mean(means)))
    identical = metrics.invariance(np.tile(maps[:1], (4, 1)))
    assert identical["mean_pairwise_r"] == pytest.approx(1.0) and identical["cv_mean_score"] == pytest.approx(0.0)


def test_chunk_bootstrap_scores_seeded(rng):
    pred = rng.standard_normal((200, 8))
    resp = pred + rng.standard_normal((200, 8))
    a = metrics.chunk_bootstrap_scores(pred, resp, chunk_trs=20, n_resamples=6, seed=3)
    b = metrics.chunk_bootstrap_scores(pred, resp, chunk_trs=20, n_resamples=6, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6, 8)
    assert not np.allclose(a[0], a[1])
    # each resample is r over whole chunks drawn with replacement: reproduce the first by hand
    draw = np.random.default_rng(3).integers(0, 10, 10)
    rows = np.concatenate([np.arange(20 * c, 20 * c + 20) for c in draw])
    np.testing.assert_allclose(a[0], metrics.pearson_r(pred[rows], resp[rows]))


def test_noise_ceiling_planted(rng):
    n_rep, n_trs, n_voxels = 4, 3000, 5
    signal_var = np.array([0.0, 0.25, 1.0, 3.0, 9.0])
    signal = rng.standard_normal((n_trs, n_voxels)) * np.sqrt(signal_var)
    repeats = signal[None] + rng.standard_normal((n_rep, n_trs, n_voxels))
    ev = metrics.noise_ceiling(repeats)
    np.testing.assert_allclose(ev, signal_var / (signal_var + 1.0), atol=0.03)
    # the ceiling for the mean of repeats is the correlation of the true signal with that mean
    ceiling = metrics.ceiling_r(ev, n_averaged=n_rep)
    empirical = metrics.pearson_r(signal[:, 1:], repeats.mean(0)[:, 1:])
    np.testing.assert_allclose(ceiling[1:], empirical, atol=0.03)
    assert np.isnan(metrics.ceiling_r(np.array([-0.01]))[0])
    np.testing.assert_allclose(metrics.normalised_r(empirical, ev[1:], n_rep), 1.0, atol=0.05)


def _retrieval_brute_force(similarity, k):
    n = similarity.shape[0]
    hits = {kk: 0 for kk in k}
    ranks = []
    for i in range(n):
        rank = sum(1 for j in range(n) if similarity[i, j] >= similarity[i, i])
        ranks.append(rank)
        for kk in k:
            hits[kk] += rank <= kk
    return {f"top{kk}": hits[kk] / n for kk in k}, float(np.mean(ranks))


def test_retrieval_accuracy_brute_force(rng):
    n = 40
    similarity = rng.standard_normal((n, n)) + 1.5 * np.eye(n)
    result = metrics.retrieval_accuracy(similarity, k=(1, 5))
    for name, matrix in (("row_to_column", similarity), ("column_to_row", similarity.T)):
        accuracies, mean_rank = _retrieval_brute_force(matrix, (1, 5))
        for key, value in accuracies.items():
            assert result[name][key] == pytest.approx(value)
        assert result[name]["mean_rank"] == pytest.approx(mean_rank)
    assert result["chance"]["top1"] == pytest.approx(1 / n)


def test_retrieval_accuracy_draws_and_chance(rng):
    n = 400
    random_similarity = rng.standard_normal((n, n))
    result = metrics.retrieval_accuracy(random_similarity, k=(1, 5), n_candidates=10, n_draws=300, seed=1)
    assert result["chance"] == {"top1": 0.1, "top5": 0.5, "mean_rank": 5.5}
    assert result["row_to_column"]["top1"] == pytest.approx(0.1, abs=0.03)
    assert result["row_to_column"]["top5"] == pytest.approx(0.5, abs=0.05)
    # a draw is the brute-force result on the drawn sub-matrix
    one = metrics.retrieval_accuracy(random_similarity, k=(1,), n_candidates=10, n_draws=1, seed=7)
    items = np.sort(np.random.default_rng(7).choice(n, 10, replace=False))
    accuracies, _ = _retrieval_brute_force(random_similarity[np.ix_(items, items)], (1,))
    assert one["row_to_column"]["top1"] == pytest.approx(accuracies["top1"])
    perfect = metrics.retrieval_accuracy(np.eye(n) * 5, k=(1,), n_candidates=20, n_draws=5)
    assert perfect["row_to_column"]["top1"] == 1.0 and perfect["column_to_row"]["mean_rank"] == 1.0
