"""brainllm.group: cross-subject transfer after functional alignment, against planted data and a plain loop."""

from __future__ import annotations

import dataclasses

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainllm import encoding, group, inference, metrics
from brainllm.align import layer_key, make_delayed, zscore_columns
from brainllm.io import InputError

STORIES = {"s1": 90, "s2": 80, "s3": 85, "s4": 75, "test": 100}
TRAIN, TEST = ["s1", "s2", "s3", "s4"], ["test"]
PLANTED_LAYER, HIDDEN, DELAYS, RANK = 1, 8, [1, 2, 3, 4], 4
SETTINGS = {
    "method": "ridge", "backend": "numpy", "delays": DELAYS, "alphas": {"log10_min": -1, "log10_max": 4, "num": 11},
    "fdr_q": 0.05, "seed": 0, "invariance": {"n_resamples": 2, "chunk_trs": 20, "input_noise_std": 0.1},
    "significance": {"method": "block_permutation", "block_trs": 10, "n_permutations": 200},
}


def write_subject(root, features, latent_map, n_voxels, rng, noise_sd=0.6):
    """Responses planted from a rank-RANK latent of the shared features in the even voxels (odd: noise)."""
    root.mkdir()
    nib.save(nib.Nifti1Image(np.ones((n_voxels, 1, 1), dtype=np.uint8), np.eye(4)), root / "mask.nii.gz")
    mixing = rng.standard_normal((RANK, n_voxels))
    mixing[:, 1::2] = 0.0
    with h5py.File(root / "responses.h5", "w") as responses:
        for story in STORIES:
            signal = make_delayed(features[story][PLANTED_LAYER], DELAYS) @ latent_map @ mixing
            signal /= np.maximum(signal.std(0), 1e-12)
            data = signal + noise_sd * rng.standard_normal(signal.shape)
            responses.create_group(story).create_dataset("data", data=data.astype(np.float32))
    signal_voxels = np.arange(n_voxels) % 2 == 0
    return root, signal_voxels


@pytest.fixture(scope="module")
def two_subjects(tmp_path_factory):
    """Shared text features; two subjects of different sizes and mixings; encoding + best layer run for each."""
    root = tmp_path_factory.mktemp("group")
    rng = np.random.default_rng(5)
    features = {story: {layer: zscore_columns(rng.standard_normal((n, HIDDEN))).astype(np.float32) for layer in range(3)}
                for story, n in STORIES.items()}
    with h5py.File(root / "aligned.h5", "w") as aligned:
        for story, layers in features.items():
            for layer, values in layers.items():
                aligned.require_group(story).create_dataset(layer_key(layer), data=values)
    latent_map = rng.standard_normal((HIDDEN * len(DELAYS), RANK))
    subjects = {}
    for name, n_voxels in (("A", 30), ("B", 24)):
        directory, signal = write_subject(root / name, features, latent_map, n_voxels, rng)
        scores, predictions = {}, {}
        for layer in range(3):
            paths = {key: directory / f"layer-{layer}_{key}" for key in ("scores.tsv", "r.nii.gz", "roi.tsv", "summary.json", "predictions.h5")}
            encoding.run_encoding(root / "aligned.h5", directory / "responses.h5", directory / "mask.nii.gz", [layer], TRAIN, TEST, SETTINGS,
                                  paths["scores.tsv"], paths["r.nii.gz"], paths["roi.tsv"], paths["summary.json"],
                                  predictions_h5=paths["predictions.h5"])
            scores[layer], predictions[layer] = paths["scores.tsv"], paths["predictions.h5"]
        inference.best_layer(scores, directory / "mask.nii.gz", directory / "best.nii.gz", directory / "layers.tsv")
        subjects[name] = group.SubjectEncoding(directory / "responses.h5", directory / "layers.tsv", scores, predictions, signal, ~signal)
    return root, subjects


def test_transfer_recovers_planted_shared_signal(two_subjects):
    root, subjects = two_subjects
    table = group.cross_subject_transfer(subjects, TRAIN, TEST, SETTINGS, root / "transfer.tsv")
    assert table.equals(pd.read_csv(root / "transfer.tsv", sep="\t").astype(table.dtypes.to_dict()))
    assert set(zip(table["source"], table["target"])) == {("A", "A"), ("A", "B"), ("B", "A"), ("B", "B")}
    assert (table["source_layer"] == PLANTED_LAYER).all() and (table["target_layer"] == PLANTED_LAYER).all()
    across = table[table["source"] != table["target"]]
    assert (across["ratio_signal"] >= 0.7).all(), across
    assert (across["mean_r_transfer_noise"].abs() < 0.1).all(), across
    assert (across["mean_r_aligned_observed_signal"] > across["mean_r_transfer_signal"] - 0.05).all()
    diagonal = table[table["source"] == table["target"]]
    np.testing.assert_allclose(diagonal["ratio_signal"], 1.0)
    # the paired comparison: Δ equals the difference of the means (float16 predictions), the CI holds it, Holm ≥ raw p
    np.testing.assert_allclose(across["delta_vs_within"], across["mean_r_transfer"] - across["mean_r_within"], atol=2e-3)
    assert (across["delta_ci_low"] <= across["delta_vs_within"]).all() and (across["delta_vs_within"] <= across["delta_ci_high"]).all()
    assert (across["p_vs_within_holm"] >= across["p_vs_within"]).all() and diagonal["p_vs_within_holm"].isna().all()


def test_transfer_pair_equals_a_plain_computation(two_subjects):
    """Alignment weights by one closed-form solve per target voxel at its chosen α, then r."""
    _, subjects = two_subjects
    source_train, lengths, source_test, _ = group.stacked_responses(subjects["A"].responses_h5, TRAIN, TEST, SETTINGS)
    target_train, _, target_test, _ = group.stacked_responses(subjects["B"].responses_h5, TRAIN, TEST, SETTINGS)
    prediction, _ = inference.read_predictions(subjects["A"].predictions[PLANTED_LAYER])
    table, transferred, validation_r = group.transfer_pair(source_train, target_train, lengths, prediction, source_test, target_test, SETTINGS)
    X, Y = source_train.astype(np.float64), target_train.astype(np.float64)
    weights = np.column_stack([np.linalg.solve(X.T @ X + alpha * np.eye(X.shape[1]), X.T @ Y[:, v]) for v, alpha in enumerate(table["alpha"])])
    np.testing.assert_allclose(table["r"], metrics.pearson_r(prediction.astype(np.float64) @ weights, target_test), atol=2e-3)
    np.testing.assert_allclose(table["r_aligned_observed"], metrics.pearson_r(source_test @ weights, target_test), atol=2e-3)
    np.testing.assert_allclose(transferred, prediction @ weights, rtol=1e-3, atol=1e-3)
    assert validation_r.shape == (Y.shape[1],) and np.isfinite(validation_r).all()


def test_noise_source_transfers_nothing(two_subjects, tmp_path):
    """A source subject whose responses (and so its encoding predictions) carry no signal: chance in B."""
    root, subjects = two_subjects
    rng = np.random.default_rng(9)
    noise = tmp_path / "noise_responses.h5"
    with h5py.File(subjects["A"].responses_h5) as source, h5py.File(noise, "w") as out:
        for story in STORIES:
            out.create_group(story).create_dataset("data", data=rng.standard_normal(source[story]["data"].shape).astype(np.float32))
    source_train, lengths, source_test, _ = group.stacked_responses(noise, TRAIN, TEST, SETTINGS)
    target_train, _, target_test, _ = group.stacked_responses(subjects["B"].responses_h5, TRAIN, TEST, SETTINGS)
    prediction = zscore_columns(rng.standard_normal(source_test.shape)).astype(np.float32)
    table, _, _ = group.transfer_pair(source_train, target_train, lengths, prediction, source_test, target_test, SETTINGS)
    assert abs(table["r"].mean()) < 0.1 and abs(table["r_aligned_observed"].mean()) < 0.1
    assert table["significant"].sum() <= 2


def test_bad_inputs_name_the_problem(two_subjects, tmp_path):
    root, subjects = two_subjects
    with pytest.raises(InputError, match="at least 2 subjects"):
        group.cross_subject_transfer({"A": subjects["A"]}, TRAIN, TEST, SETTINGS, tmp_path / "x.tsv")
    short = tmp_path / "short.h5"
    with h5py.File(subjects["B"].responses_h5) as source, h5py.File(short, "w") as out:
        for story in STORIES:
            data = source[story]["data"][()]
            out.create_group(story).create_dataset("data", data=data[:-3] if story == "s2" else data)
    mismatched = {"A": subjects["A"], "B": dataclasses.replace(subjects["B"], responses_h5=short)}
    with pytest.raises(InputError, match="same TRs of the same stories"):
        group.cross_subject_transfer(mismatched, TRAIN, TEST, SETTINGS, tmp_path / "y.tsv")
    assert not (tmp_path / "x.tsv").exists() and not (tmp_path / "y.tsv").exists()


def write_layer_tables(root, n_subjects, seed=0):
    """Per subject: a _layers.tsv (layer 2 planted best) and one _roi.tsv per layer."""
    rng = np.random.default_rng(seed)
    layers_tsvs, roi_tsvs = {}, {}
    for index in range(n_subjects):
        subject = f"S{index}"
        mean_r = np.array([0.20, 0.24, 0.30, 0.25]) + 0.02 * rng.standard_normal(4)
        best = int(np.argmax(mean_r + 0.01 * rng.standard_normal(4)))
        table = pd.DataFrame({"layer": range(4), "mean_r_val": mean_r - 0.03, "mean_r": mean_r, "mean_r_top10": mean_r + 0.3,
                              "best": [layer == best for layer in range(4)]})
        layers_tsvs[subject] = root / f"{subject}_layers.tsv"
        table.to_csv(layers_tsvs[subject], sep="\t", index=False)
        roi_tsvs[subject] = {}
        for layer in range(4):
            path = root / f"{subject}_layer-{layer}_roi.tsv"
            pd.DataFrame({"roi": ["all", "temporal"], "index": [-1, 1], "n_voxels": [100, 20],
                          "mean_r": [mean_r[layer], 2 * mean_r[layer]]}).to_csv(path, sep="\t", index=False)
            roi_tsvs[subject][layer] = path
    return layers_tsvs, roi_tsvs


def test_subject_tables_group_rows_against_scipy_and_exact_sign_flips(tmp_path):
    from itertools import product

    from scipy import stats

    layers_tsvs, roi_tsvs = write_layer_tables(tmp_path, 5)
    layer_table, roi_table = group.subject_tables(layers_tsvs, roi_tsvs, tmp_path / "layers.tsv", tmp_path / "rois.tsv")
    per_subject = layer_table[layer_table["subject"] != "group"]
    rows = layer_table[layer_table["subject"] == "group"].set_index("layer")
    group_best = int(per_subject.groupby("layer")["mean_r_val"].mean().idxmax())
    assert rows.loc[group_best, "best"] and rows["best"].sum() == 1
    for layer, row in rows.iterrows():
        r = per_subject[per_subject["layer"] == layer].set_index("subject")["mean_r"]
        low, high = stats.t.interval(0.95, len(r) - 1, loc=r.mean(), scale=stats.sem(r))
        np.testing.assert_allclose([row["mean_r"], row["r_ci_low"], row["r_ci_high"]], [r.mean(), low, high])
        deltas = (r - per_subject[per_subject["layer"] == group_best].set_index("subject")["mean_r"]).to_numpy()
        flips = np.array([np.mean(np.array(signs) * deltas) for signs in product([-1, 1], repeat=len(deltas))])
        expected = np.mean(np.abs(flips) >= abs(deltas.mean()) - 1e-12) if np.any(deltas) else 1.0
        np.testing.assert_allclose(row["p_sign_flip"], expected)
        np.testing.assert_allclose(row["delta_vs_best"], deltas.mean())
    assert rows.loc[group_best, "p_holm"] != rows.loc[group_best, "p_holm"]  # NaN: the reference is not tested
    chosen = per_subject[per_subject["best"]].set_index("subject")["layer"]
    np.testing.assert_allclose(rows["chosen_layer_sd"].iloc[0], chosen.std(ddof=1))
    assert rows["chosen_by"].sum() == 5
    # ROI scores at each subject's own chosen layer, group rows their mean
    temporal = roi_table[(roi_table["roi"] == "temporal") & (roi_table["subject"] != "group")].set_index("subject")
    for subject, layer in chosen.items():
        assert temporal.loc[subject, "layer"] == layer
        np.testing.assert_allclose(temporal.loc[subject, "mean_r"], 2 * per_subject[(per_subject["subject"] == subject) & (per_subject["layer"] == layer)]["mean_r"].iloc[0])
    group_temporal = roi_table[(roi_table["roi"] == "temporal") & (roi_table["subject"] == "group")]
    np.testing.assert_allclose(group_temporal["mean_r"], temporal["mean_r"].mean())


def test_subject_tables_with_two_subjects_say_why_there_is_no_test(tmp_path):
    layers_tsvs, roi_tsvs = write_layer_tables(tmp_path, 2)
    layer_table, _ = group.subject_tables(layers_tsvs, roi_tsvs, tmp_path / "layers.tsv", tmp_path / "rois.tsv")
    rows = layer_table[layer_table["subject"] == "group"]
    assert "p_sign_flip" not in rows.columns and (rows["note"] == group.NO_TEST_NOTE).all()
    assert rows["r_ci_low"].notna().all()  # a between-subject interval is still drawn with two subjects
