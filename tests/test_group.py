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
        delta = mean_r - mean_r[best]
        table = pd.DataFrame({"layer": range(4), "mean_r_val": mean_r - 0.03, "mean_r": mean_r, "mean_r_top10": mean_r + 0.3,
                              "best": [layer == best for layer in range(4)], "delta_vs_best": delta, "delta_ci_low": delta - 0.01,
                              "delta_ci_high": delta + 0.01, "p_vs_best": np.where(np.arange(4) == best, 1.0, 0.004)})
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
        expected = np.mean(flips <= deltas.mean() + 1e-12) if np.any(deltas) else 1.0  # one-sided: H1 Δ < 0
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


def test_subject_differences_flag_the_subject_whose_layer_differs():
    """The others' layer is chosen without the subject, on validation r; only a significant loss at it flags."""
    rows = []
    for subject, chosen, others_delta, p in (("A", 2, 0.0, 1.0), ("B", 2, 0.0, 1.0), ("C", 2, 0.0, 1.0),
                                              ("D", 3, -0.04, 0.001), ("E", 1, 0.01, 0.001), ("F", 3, -0.004, 0.3)):
        for layer in range(4):
            val = 0.3 - 0.05 * abs(layer - chosen) if subject in "ABC" else 0.1 - 0.01 * abs(layer - chosen)
            rows.append({"subject": subject, "layer": layer, "mean_r_val": val, "best": layer == chosen,
                         "delta_vs_best": 0.0 if layer == chosen else (others_delta if layer == 2 else -0.05),
                         "delta_ci_low": -0.06, "delta_ci_high": 0.02, "p_vs_best": 1.0 if layer == chosen else (p if layer == 2 else 0.001)})
    table = group.subject_differences(pd.DataFrame(rows)).set_index("subject")
    assert (table["others_layer"] == 2).all()
    assert table.loc[["A", "B", "C"], "p"].eq(1.0).all() and not table.loc[["A", "B", "C"], "differs"].any()
    # D loses at the others' layer (flagged); E chose another layer on validation but does better at the others'
    # (a positive Δ never flags); F's loss is not significant. Holm over the three tested subjects.
    np.testing.assert_allclose(table.loc[["D", "E", "F"], "p_holm"], [0.003, 0.003, 0.3])
    assert table["differs"].tolist() == [False, False, False, True, False, False]


def test_subject_differences_with_two_subjects_compare_nothing():
    """With two subjects "the others" are one subject: each would flag the other, so neither is tested."""
    rows = [{"subject": subject, "layer": layer, "mean_r_val": 0.3 - 0.05 * abs(layer - chosen), "best": layer == chosen,
             "delta_vs_best": 0.0 if layer == chosen else -0.04, "delta_ci_low": -0.05, "delta_ci_high": -0.03,
             "p_vs_best": 1.0 if layer == chosen else 0.001}
            for subject, chosen in (("A", 1), ("B", 3)) for layer in range(4)]
    table = group.subject_differences(pd.DataFrame(rows))
    assert not table["differs"].any() and (table["p_holm"] == 1.0).all() and (table["note"] == group.NO_DIFFERENCE_NOTE).all()


def test_sign_flip_one_sided_against_enumeration():
    from itertools import product

    from brainllm import metrics

    d = np.array([-0.02, -0.03, 0.01, -0.04, -0.05, -0.01])
    sums = np.array([np.dot(signs, d) for signs in product([-1, 1], repeat=d.size)])
    assert metrics.sign_flip_p(d, alternative="less") == pytest.approx(np.mean(sums <= d.sum() + 1e-12))
    assert metrics.sign_flip_p(d, alternative="greater") == pytest.approx(np.mean(sums >= d.sum() - 1e-12))
    assert metrics.sign_flip_p(-np.full(8, 0.1), alternative="less") == pytest.approx(1 / 256)
    with pytest.raises(ValueError, match="alternative"):
        metrics.sign_flip_p(d, alternative="smaller")


def test_subject_tables_with_two_subjects_say_why_there_is_no_test(tmp_path):
    layers_tsvs, roi_tsvs = write_layer_tables(tmp_path, 2)
    layer_table, _ = group.subject_tables(layers_tsvs, roi_tsvs, tmp_path / "layers.tsv", tmp_path / "rois.tsv")
    rows = layer_table[layer_table["subject"] == "group"]
    assert "p_sign_flip" not in rows.columns and (rows["note"] == group.NO_TEST_NOTE).all()
    assert rows["r_ci_low"].notna().all()  # a between-subject interval is still drawn with two subjects


# ----------------------------------------------------------------------------- inter-subject correlation

ISC_LENGTHS = [120, 100, 110]


def ar1(rng, n_trs, n_units, phi=0.8):
    noise = np.empty((n_trs, n_units))
    noise[0] = rng.standard_normal(n_units)
    for t in range(1, n_trs):
        noise[t] = phi * noise[t - 1] + np.sqrt(1 - phi**2) * rng.standard_normal(n_units)
    return noise


def isc_data(rng, n_subjects, n_signal, n_noise, signal_sd=1.0):
    """Stories' responses: a shared autocorrelated signal in the first ``n_signal`` units, AR(1) noise everywhere."""
    n_trs = sum(ISC_LENGTHS)
    shared = ar1(rng, n_trs, n_signal, phi=0.5)
    data = np.stack([ar1(rng, n_trs, n_signal + n_noise) for _ in range(n_subjects)])
    data[:, :, :n_signal] += signal_sd * shared
    return data


def test_leave_one_out_isc_and_its_null_equal_plain_loops():
    rng = np.random.default_rng(0)
    data = isc_data(rng, 4, 5, 5)
    data[1] *= 3.0  # another scale: the mean of the others is of standardised series
    z = np.stack([zscore_columns(x) for x in data])
    expected = [[np.corrcoef(data[s, :, v], np.delete(z, s, axis=0)[:, :, v].mean(0))[0, 1] for v in range(10)] for s in range(4)]
    np.testing.assert_allclose(group.leave_one_out_isc(data), expected, atol=1e-12)
    data[2, :, 0] = 5.0  # a constant series (a voxel outside one subject's signal): it adds nothing to the others' mean
    settings = group.IscSettings(n_permutations=5, min_shift_trs=10, seed=3)
    shifts = group.isc_null_shifts(ISC_LENGTHS, 4, settings)
    assert (shifts[:, 0] == 0).all() and (shifts[:, 1:] >= 10).all()
    assert all((shifts[:, 1:, i] <= n - 10).all() for i, n in enumerate(ISC_LENGTHS))
    bounds = np.cumsum([0, *ISC_LENGTHS])
    null = group.circular_shift_null(data, ISC_LENGTHS, settings, chunk_bytes=8 * 3 * 400 * 6)  # several unit chunks
    for k in range(5):
        shifted = np.concatenate([np.stack([np.roll(data[s, a:b], shifts[k, s, i], axis=0) for s in range(4)], axis=0)
                                  for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))], axis=1)
        np.testing.assert_allclose(null[k], group.leave_one_out_isc(shifted).mean(0), atol=1e-10)


@pytest.mark.parametrize("n_subjects", [2, 4])
def test_isc_p_values_are_calibrated_under_autocorrelated_noise_and_find_the_shared_signal(n_subjects):
    """AR(1) noise (φ = 0.8) alone: p < 0.05 in about 5 % of units (a parametric p would be several times that);
    a shared signal: every unit significant after FDR."""
    rng = np.random.default_rng(n_subjects)
    data = isc_data(rng, n_subjects, 40, 600)
    table = group.isc_scores(data, ISC_LENGTHS, group.IscSettings(n_permutations=500, seed=1))
    noise = table.iloc[40:]
    assert 0.02 <= (noise["p"] < 0.05).mean() <= 0.09
    assert noise["significant"].mean() <= 0.01
    assert table.iloc[:40]["significant"].all() and (table.iloc[:40]["isc"] > 0.2).all()
    parametric = metrics.pearson_p(noise["isc_0"].to_numpy(), sum(ISC_LENGTHS))
    assert (parametric < 0.05).mean() > 2 * (noise["p"] < 0.05).mean()  # why the null keeps the autocorrelation


def write_isc_subject(root, data, mask, affine=np.eye(4), atlas=None):
    root.mkdir(parents=True)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), root / "mask.nii.gz")
    bounds = np.cumsum([0, *ISC_LENGTHS])
    with h5py.File(root / "responses.h5", "w") as h5:
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            h5.create_group(f"story{i}").create_dataset("data", data=data[a:b].astype(np.float32))
    if atlas is not None:
        nib.save(nib.Nifti1Image(atlas.astype(np.int16), affine), root / "atlas.nii.gz")
        pd.DataFrame({"index": [1, 2], "name": ["shared", "quiet"]}).to_csv(root / "atlas.tsv", sep="\t", index=False)
    return root


def isc_outputs(root):
    return {"voxels": root / "isc_voxels.tsv", "rois": root / "isc_rois.tsv", "map": root / "isc_map.nii.gz", "summary": root / "isc.json"}


def test_inter_subject_correlation_on_a_common_grid_and_atlas_regions(tmp_path):
    """Two subjects, masks overlapping on a 4×4×2 grid: the common voxels, the planted ones significant, the
    ROI of planted voxels significant and the quiet one not; the map on the first subject's mask."""
    rng = np.random.default_rng(7)
    grid = np.arange(32).reshape(4, 4, 2)
    masks = [grid < 28, grid >= 2]  # voxels 2…27 are common
    planted = (grid >= 2) & (grid < 14)
    atlas = np.where(planted, 1, 2)
    n_trs = sum(ISC_LENGTHS)
    shared = ar1(rng, n_trs, 32, phi=0.5)
    roots, truth = [], {}
    for s, mask in enumerate(masks):
        volume = ar1(rng, n_trs, 32) + 0.8 * shared * planted.reshape(-1)
        roots.append(write_isc_subject(tmp_path / f"s{s}", volume[:, mask.reshape(-1)], mask, atlas=atlas))
        truth[f"S{s}"] = (planted[mask], ~planted[mask])
    out = isc_outputs(tmp_path)
    summary = group.inter_subject_correlation(
        ["S0", "S1"], [r / "responses.h5" for r in roots], [r / "mask.nii.gz" for r in roots], ["story0", "story1", "story2"],
        group.IscSettings(n_permutations=300), out, atlases=[(r / "atlas.nii.gz", r / "atlas.tsv") for r in roots], truth=truth)
    voxels = pd.read_csv(out["voxels"], sep="\t")
    assert voxels["voxel"].tolist() == list(range(2, 28))  # indices among the first subject's 28 mask voxels
    assert voxels.loc[voxels["voxel"] < 14, "significant"].all() and voxels.loc[voxels["voxel"] >= 14, "significant"].sum() <= 1
    np.testing.assert_allclose(voxels["isc"], voxels["isc_S0"])  # two subjects: both leave-one-out r are the pair's r
    assert summary["voxel"]["signal"]["n_voxels"] == 12 and summary["voxel"]["signal"]["fraction_significant"] == 1.0
    rois = pd.read_csv(out["rois"], sep="\t").set_index("roi")
    assert rois.loc["shared", "significant"] and not rois.loc["quiet", "significant"]
    written = np.asarray(nib.load(out["map"]).dataobj)
    np.testing.assert_allclose(written[masks[0]][2:28], voxels["isc"], atol=1e-6)
    assert (written[masks[0]][:2] == 0).all()
    chunked = isc_outputs(tmp_path / "chunked")
    group.inter_subject_correlation(
        ["S0", "S1"], [r / "responses.h5" for r in roots], [r / "mask.nii.gz" for r in roots], ["story0", "story1", "story2"],
        group.IscSettings(n_permutations=300), chunked, atlases=[(r / "atlas.nii.gz", r / "atlas.tsv") for r in roots],
        chunk_bytes=8 * 2 * n_trs * 5)  # 5 voxels at a time
    for name in ("voxels", "rois"):
        pd.testing.assert_frame_equal(pd.read_csv(chunked[name], sep="\t"), pd.read_csv(out[name], sep="\t"))
    figure = {ext: tmp_path / f"figure.{ext}" for ext in ("png", "svg", "tsv")}
    group.plot_isc(out["voxels"], out["rois"], figure["png"], figure["svg"], figure["tsv"])
    assert figure["png"].stat().st_size > 0 and figure["svg"].stat().st_size > 0
    assert pd.read_csv(figure["tsv"], sep="\t")["level"].value_counts().to_dict() == {"voxel": 26, "roi": 2}


def test_inter_subject_correlation_bad_and_partial_inputs(tmp_path):
    rng = np.random.default_rng(8)
    n_trs = sum(ISC_LENGTHS)
    mask = np.ones((3, 2, 1), dtype=bool)
    a = write_isc_subject(tmp_path / "a", ar1(rng, n_trs, 6), mask)
    b = write_isc_subject(tmp_path / "b", ar1(rng, n_trs, 6), mask, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    out = isc_outputs(tmp_path)
    settings = group.IscSettings(n_permutations=20)
    summary = group.inter_subject_correlation(["A", "B"], [a / "responses.h5", b / "responses.h5"], [a / "mask.nii.gz", b / "mask.nii.gz"],
                                              ["story0", "story1", "story2"], settings, out)
    assert summary["levels"] == [] and "different grids" in summary["voxel_note"] and "nothing to correlate" in summary["note"]
    assert pd.read_csv(out["voxels"], sep="\t").empty and pd.read_csv(out["rois"], sep="\t").empty
    group.plot_isc(out["voxels"], out["rois"], tmp_path / "f.png", tmp_path / "f.svg", tmp_path / "f.tsv")  # a figure saying so
    assert (tmp_path / "f.png").stat().st_size > 0
    short = write_isc_subject(tmp_path / "short", ar1(rng, n_trs, 6), mask)
    with h5py.File(short / "responses.h5", "a") as h5:
        del h5["story1"]
        h5.create_group("story1").create_dataset("data", data=np.zeros((90, 6), dtype=np.float32))
    with pytest.raises(InputError, match="subject 'C' has other TR counts than subject 'A' on \\['story1'\\]"):
        group.inter_subject_correlation(["A", "C"], [a / "responses.h5", short / "responses.h5"], [a / "mask.nii.gz", short / "mask.nii.gz"],
                                        ["story0", "story1", "story2"], settings, out)
    with pytest.raises(InputError, match="two or more subjects"):
        group.inter_subject_correlation(["A"], [a / "responses.h5"], [a / "mask.nii.gz"], ["story0"], settings, out)
    with pytest.raises(InputError, match="min_shift_trs"):
        group.isc_scores(ar1(rng, 30, 4)[None].repeat(2, 0), [30], group.IscSettings(min_shift_trs=20))


def test_map_similarity_correlates_maps_at_each_subjects_chosen_layer(tmp_path):
    """Two subjects on one grid: their maps at their own chosen layers (1 and 2) correlate over the voxels both masks
    hold, equal to a plain computation; on different grids only the ROI level remains."""
    rng = np.random.default_rng(9)
    grid_shape = (4, 4, 2)
    masks = [np.ones(grid_shape, dtype=bool), np.ones(grid_shape, dtype=bool)]
    masks[1][0] = False  # 8 voxels outside the second mask
    base = rng.standard_normal(grid_shape)
    volumes = {("A", 1): base, ("A", 2): rng.standard_normal(grid_shape), ("B", 1): rng.standard_normal(grid_shape),
               ("B", 2): base + 0.3 * rng.standard_normal(grid_shape)}
    maps = {s: {} for s in "AB"}
    for (subject, layer), volume in volumes.items():
        maps[subject][layer] = tmp_path / f"{subject}_{layer}.nii.gz"
        nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), maps[subject][layer])
    mask_paths = []
    for subject, mask in zip("AB", masks):
        mask_paths.append(tmp_path / f"{subject}_mask.nii.gz")
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), mask_paths[-1])
    layers = pd.DataFrame({"subject": ["A", "A", "B", "B", "group"], "layer": [1, 2, 1, 2, 1], "best": [True, False, False, True, True]})
    rois = pd.DataFrame({"subject": ["A"] * 5 + ["B"] * 5 + ["group"], "roi": [*"wxyz", "all", *"wxyz", "all", "w"],
                         "mean_r": [0.1, 0.2, 0.3, 0.4, 0.9, 0.15, 0.2, 0.35, 0.5, -0.9, 0.0]})  # "all" (every voxel) is no region
    table = group.map_similarity(layers, maps, mask_paths, rois, tmp_path / "similarity.tsv").set_index("level")
    both = masks[0] & masks[1]
    assert table.loc["voxel", "n"] == 24
    assert table.loc["voxel", "r"] == pytest.approx(np.corrcoef(volumes["A", 1][both], volumes["B", 2][both])[0, 1]) and table.loc["voxel", "r"] > 0.8
    assert table.loc["roi", "r"] == pytest.approx(np.corrcoef([0.1, 0.2, 0.3, 0.4], [0.15, 0.2, 0.35, 0.5])[0, 1])
    nib.save(nib.Nifti1Image(masks[1].astype(np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])), mask_paths[1])
    assert group.map_similarity(layers, maps, mask_paths, rois, tmp_path / "similarity.tsv")["level"].tolist() == ["roi"]
