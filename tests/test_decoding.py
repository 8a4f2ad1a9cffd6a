"""Decoding: segment identification against brute-force loops, chance by simulation, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from brainllm import decoding
from brainllm.io import InputError


def test_segments_stay_inside_stories():
    slices = decoding.segment_slices([25, 12], 10)
    assert [(s.start, s.stop) for s in slices] == [(0, 10), (10, 20), (25, 35)]
    with pytest.raises(InputError, match="segment_trs 30"):
        decoding.segment_slices([25, 12], 30)
    with pytest.raises(InputError, match="below 1 TR"):
        decoding.segment_slices([25], 0)


def test_similarity_and_ranks_match_loops():
    rng = np.random.default_rng(0)
    observed, predicted = rng.standard_normal((40, 7)), rng.standard_normal((40, 7))
    slices = decoding.segment_slices([40], 5)
    similarity = decoding.segment_similarity(observed, predicted, slices)
    for i, a in enumerate(slices):
        for j, b in enumerate(slices):
            assert similarity[i, j] == pytest.approx(stats.pearsonr(observed[a].ravel(), predicted[b].ravel())[0], abs=1e-12)
    ranks = decoding.percentile_ranks(similarity)
    for i in range(len(slices)):
        wrong = [similarity[i, j] for j in range(len(slices)) if j != i]
        assert ranks[i] == pytest.approx(np.mean([w < similarity[i, i] for w in wrong]))


def test_scores_match_a_hand_count():
    rng = np.random.default_rng(1)
    similarity = rng.standard_normal((12, 12))
    similarity[np.arange(6), np.arange(6)] += 5.0  # the first 6 segments identified
    scores = decoding.identification_scores(similarity, top_k=(1, 5), n_permutations=200)
    forward = scores["observed_to_predicted"]
    ranks = [1 + sum(similarity[i, j] >= similarity[i, i] for j in range(12) if j != i) for i in range(12)]
    assert forward["top1"] == pytest.approx(np.mean([r == 1 for r in ranks]))
    assert forward["top5"] == pytest.approx(np.mean([r <= 5 for r in ranks]))
    chosen = similarity.argmax(1)
    sensitivity = np.mean([chosen[i] == i for i in range(12)])
    specificity = np.mean([1 - sum(chosen[j] == i for j in range(12) if j != i) / 11 for i in range(12)])
    assert forward["sensitivity"] == pytest.approx(sensitivity)
    assert forward["specificity"] == pytest.approx(specificity)
    backward = scores["predicted_to_observed"]
    assert backward["top1"] == pytest.approx(np.mean(similarity.argmax(0) == np.arange(12)))
    assert scores["chance"] == {"top1": 1 / 12, "top5": 5 / 12, "mean_percentile_rank": 0.5, "sensitivity": 1 / 12, "specificity": 11 / 12}


def test_chance_levels_and_p_values_under_the_null():
    """Unrelated predictions: accuracies average to their stated chance, p-values are uniform."""
    rng = np.random.default_rng(2)
    n_segments, top1, top5, rank, p_values = 20, [], [], [], []
    for trial in range(300):
        similarity = rng.standard_normal((n_segments, n_segments))
        scores = decoding.identification_scores(similarity, n_permutations=99, seed=trial)["observed_to_predicted"]
        top1.append(scores["top1"]), top5.append(scores["top5"])
        rank.append(scores["mean_percentile_rank"]), p_values.append(scores["p"])
    assert np.mean(top1) == pytest.approx(1 / n_segments, abs=0.01)
    assert np.mean(top5) == pytest.approx(5 / n_segments, abs=0.02)
    assert np.mean(rank) == pytest.approx(0.5, abs=0.01)
    assert 0.02 < np.mean(np.array(p_values) < 0.05) < 0.09


def test_planted_predictions_are_identified_on_validation_chosen_voxels():
    rng = np.random.default_rng(3)
    n_trs, n_voxels = 300, 200
    signal = rng.standard_normal((n_trs, 20))
    observed = rng.standard_normal((n_trs, n_voxels))
    observed[:, :20] += signal
    predicted = rng.standard_normal((n_trs, n_voxels)) * 0.1
    predicted[:, :20] = signal
    selection = np.r_[np.full(20, 0.5), np.zeros(n_voxels - 20)]  # validation r picks the signal voxels
    settings = decoding.IdentificationSettings(segment_trs=(5, 10), voxel_fraction=0.1, n_permutations=200)
    rows = decoding.identify_segments(observed, predicted, [150, 150], selection, settings)
    assert {(r["segment_trs"], r["direction"]) for r in rows} == {(k, d) for k in (5, 10) for d in decoding.DIRECTIONS}
    for row in rows:
        assert row["n_voxels"] == 20 and row["top1"] >= 0.9 and row["p"] < 0.01
    # noise voxels only: chance
    noise = decoding.identify_segments(observed, predicted, [150, 150], -selection, settings)
    for row in noise:
        assert row["top1"] <= 5 * row["chance_top1"] and row["p"] > 0.001


def test_identification_table_from_files(tmp_path):
    import h5py

    from brainllm.inference import save_predictions

    rng = np.random.default_rng(4)
    stories, lengths, n_voxels = ["test"], [60], 30
    resp = rng.standard_normal((60, n_voxels)).astype(np.float32)
    responses_h5 = tmp_path / "responses.h5"
    with h5py.File(responses_h5, "w") as h5:
        h5.create_group("test").create_dataset("data", data=resp)
    predictions, scores = {}, {}
    for layer in (0, 1):
        predictions[layer] = tmp_path / f"layer{layer}_predictions.h5"
        save_predictions(predictions[layer], resp + (0 if layer else 3) * rng.standard_normal(resp.shape), stories, lengths, [layer], dtype="float32")
        scores[layer] = tmp_path / f"layer{layer}_scores.tsv"
        pd.DataFrame({"r": np.zeros(n_voxels), "r_val": np.linspace(0, 1, n_voxels)}).to_csv(scores[layer], sep="\t", index=False)
    settings = decoding.IdentificationSettings(segment_trs=(10,), voxel_fraction=0.5, n_permutations=50)
    out = tmp_path / "identification.tsv"
    table = decoding.identification_table(predictions, scores, responses_h5, stories, settings, out)
    assert out.exists() and set(table["layer"]) == {0, 1}
    assert table.loc[table["layer"] == 1, "top1"].min() == 1.0
    pd.DataFrame({"r": np.zeros(n_voxels), "r_val": np.nan}).to_csv(scores[1], sep="\t", index=False)
    with pytest.raises(InputError, match="r_val"):
        decoding.identification_table(predictions, scores, responses_h5, stories, settings, tmp_path / "again.tsv")
    assert not (tmp_path / "again.tsv").exists()


# ----------------------------------------------------------------------------- the block-permutation null


def _ar1_stories(rng, shape, phi):
    """AR(1) series along axis -2 of ``shape`` (…, n_trs, n_voxels), started from the stationary distribution."""
    from scipy.signal import lfilter

    noise = rng.standard_normal(shape)
    noise[..., 0, :] /= np.sqrt(1 - phi**2)
    return lfilter([1.0], [1.0, -phi], noise, axis=-2)


def _free_permutation_p(similarity, rng, n_permutations):
    """The old null, written out: candidate columns shuffled one by one (independent reference)."""
    n = similarity.shape[0]
    observed = (similarity < np.diag(similarity)[:, None]).sum()
    orders = rng.permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)
    assigned = similarity[np.arange(n), orders]  # (n_permutations, n): row i's candidate under each pairing
    wins = (similarity[None] < assigned[..., None]).sum((1, 2))
    return (1 + (wins >= observed).sum()) / (1 + n_permutations)


def test_block_permutation_p_is_calibrated_on_autocorrelated_segments():
    """Independent AR(1) observed and predicted series (φ 0.9 per TR): neighbouring segments are correlated, so
    shuffling single candidates rejects far too often at α 0.05; blocks of consecutive segments spanning
    block_trs TRs keep the rate at α. block_trs 60 (12 segments of 5 TRs): at the default 20 (4 segments)
    block edges still cut ~1/4 of the neighbour pairs and the rate is ~0.07 at this φ."""
    rng = np.random.default_rng(20240611)
    n_sims, n_permutations, phi, lengths, k, n_voxels = 400, 99, 0.9, [200, 200], 5, 8
    slices = decoding.segment_slices(lengths, k)
    observed = _ar1_stories(rng, (n_sims, len(lengths), lengths[0], n_voxels), phi).reshape(n_sims, -1, n_voxels)
    predicted = _ar1_stories(rng, (n_sims, len(lengths), lengths[0], n_voxels), phi).reshape(n_sims, -1, n_voxels)
    block_p, free_p = [], []
    for sim in range(n_sims):
        similarity = decoding.segment_similarity(observed[sim], predicted[sim], slices)
        scores = decoding.identification_scores(similarity, (1,), n_permutations, seed=sim, segment_trs=k, block_trs=60)
        block_p.append(scores["observed_to_predicted"]["p"])
        free_p.append(_free_permutation_p(similarity, rng, n_permutations))
    alpha, tolerance = 0.05, 3 * np.sqrt(0.05 * 0.95 / n_sims)  # 3 binomial standard deviations
    block_rate, free_rate = np.mean(np.array(block_p) <= alpha), np.mean(np.array(free_p) <= alpha)
    assert abs(block_rate - alpha) < tolerance, (block_rate, free_rate)
    assert free_rate > alpha + 4.5 * np.sqrt(0.05 * 0.95 / n_sims), (block_rate, free_rate)


def test_block_permutation_p_finds_planted_segments():
    rng = np.random.default_rng(5)
    signal = _ar1_stories(rng, (300, 6), 0.9)
    observed = signal + _ar1_stories(rng, (300, 6), 0.9)
    predicted = signal + _ar1_stories(rng, (300, 6), 0.9)
    settings = decoding.IdentificationSettings(segment_trs=(5, 10), voxel_fraction=1.0, n_permutations=199, block_trs=20)
    rows = decoding.identify_segments(observed, predicted, [150, 150], np.ones(6), settings)
    assert len(rows) == 4
    for row in rows:
        assert row["mean_percentile_rank"] > 0.8 and row["p"] == pytest.approx(1 / 200), row
    assert decoding.segments_per_block(5, 20) == 4 and decoding.segments_per_block(10, 20) == 2 and decoding.segments_per_block(30, 20) == 1


def test_fewer_than_two_blocks_leave_p_nan(caplog):
    rng = np.random.default_rng(6)
    similarity = rng.standard_normal((6, 6)) + 3 * np.eye(6)  # 6 segments of 5 TRs: one block of 6 (block_trs 30)
    with caplog.at_level("WARNING", logger="brainllm.decoding"):
        scores = decoding.identification_scores(similarity, (1,), 99, segment_trs=5, block_trs=30)
    assert all(np.isnan(scores[d]["p"]) for d in decoding.DIRECTIONS)
    assert scores["observed_to_predicted"]["top1"] == 1.0  # the other scores stand
    assert "fewer than 2 blocks" in caplog.text and "block_trs" in caplog.text
    # two blocks of 3 segments: a p again
    assert np.isfinite(decoding.identification_scores(similarity, (1,), 99, segment_trs=5, block_trs=15)["observed_to_predicted"]["p"])


def test_non_finite_inputs_are_refused():
    rng = np.random.default_rng(7)
    observed, predicted = rng.standard_normal((60, 10)), rng.standard_normal((60, 10))
    settings = decoding.IdentificationSettings(segment_trs=(10,), voxel_fraction=1.0, n_permutations=20)
    for array in (observed, predicted):
        bad = array.copy()
        bad[13, 4] = np.nan
        args = (bad, predicted) if array is observed else (observed, bad)
        with pytest.raises(InputError, match="NaN or infinite") as error:
            decoding.identify_segments(*args, [60], np.ones(10), settings, source="preds.h5")
        assert "preds.h5" in str(error.value) and "Fix:" in str(error.value)
    similarity = rng.standard_normal((6, 6))
    similarity[2, 3] = np.nan  # would rank row 2 first: (s >= nan) is all False
    with pytest.raises(InputError, match="segment similarities"):
        decoding.identification_scores(similarity, (1,), 20)
    brain = rng.standard_normal((40, 4))
    brain[0, 0] = np.inf
    with pytest.raises(InputError, match="brain embeddings"):
        decoding.identify_contrastive_segments(brain, rng.standard_normal((40, 4)), [40], settings)


def test_settings_read_block_trs():
    assert decoding.IdentificationSettings.from_config({}).block_trs == 20
    assert decoding.IdentificationSettings.from_config({"block_trs": 7}).block_trs == 7
