"""fMRI preprocessing against independent computations (np.polyfit, loop Savitzky–Golay, scipy zscore)."""

from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest
from scipy.stats import zscore as scipy_zscore

from brainllm.io import InputError
from brainllm.preprocess import clean_run, preprocess_subject, savgol_window_trs

TR = 2.0


def slow_savgol_trend(series: np.ndarray, window: int, polyorder: int) -> np.ndarray:
    """Savitzky–Golay by definition: a local np.polyfit per time point (edges: the first /
    last full window's fit evaluated at the edge points, as in scipy's ``interp`` mode)."""
    n = len(series)
    half = window // 2
    time = np.arange(n, dtype=float)
    trend = np.empty(n)
    for t in range(half, n - half):
        coefs = np.polyfit(time[t - half : t + half + 1], series[t - half : t + half + 1], polyorder)
        trend[t] = np.polyval(coefs, t)
    head = np.polyfit(time[:window], series[:window], polyorder)
    tail = np.polyfit(time[-window:], series[-window:], polyorder)
    trend[:half] = np.polyval(head, time[:half])
    trend[n - half :] = np.polyval(tail, time[n - half :])
    return trend


@pytest.mark.parametrize(
    "window_s, n_trs, expected",
    [(120.0, 300, 61), (118.0, 300, 59), (119.9, 300, 59), (123.0, 300, 61), (124.0, 300, 63),
     (120.0, 40, 39), (120.0, 41, 41), (3.0, 300, 1)],
)
def test_savgol_window(window_s, n_trs, expected):
    assert savgol_window_trs(window_s, TR, n_trs) == expected


def test_polynomial_detrend_matches_polyfit():
    rng = np.random.default_rng(0)
    n_trs, n_voxels = 120, 6
    time = np.arange(n_trs) * TR
    drift = np.stack([np.polyval(rng.normal(size=3), time / 100) * 50 for _ in range(n_voxels)], axis=1)
    bold = 1000 + drift + rng.normal(size=(n_trs, n_voxels))
    cleaned = clean_run(bold, TR, detrend="polynomial", polynomial_order=2, zscore=False, trim_start=0, trim_end=0)
    expected = np.stack([bold[:, v] - np.polyval(np.polyfit(time, bold[:, v], 2), time) for v in range(n_voxels)], 1)
    np.testing.assert_allclose(cleaned, expected, atol=1e-4)
    # the planted drift is gone: what is left is the white noise
    assert np.abs(np.corrcoef(cleaned[:, 0], drift[:, 0])[0, 1]) < 0.05


def test_savgol_detrend_matches_loop_reference():
    rng = np.random.default_rng(1)
    n_trs = 150
    time = np.arange(n_trs) * TR
    slow = 20 * np.sin(2 * np.pi * time / 400.0)
    bold = np.stack([500 + slow * (v + 1) + rng.normal(size=n_trs) for v in range(4)], axis=1)
    cleaned = clean_run(bold, TR, savgol_window_s=60.0, savgol_polyorder=3, zscore=False, trim_start=0, trim_end=0)
    window = savgol_window_trs(60.0, TR, n_trs)
    assert window == 31
    for v in range(4):
        centred = bold[:, v] - bold[:, v].mean()
        np.testing.assert_allclose(cleaned[:, v], centred - slow_savgol_trend(centred, window, 3), atol=1e-4)
    kept = slice(window // 2, n_trs - window // 2)
    assert np.abs(np.corrcoef(cleaned[kept, 3], slow[kept])[0, 1]) < 0.1


def test_zscore_and_trim():
    rng = np.random.default_rng(2)
    bold = 50 + 3 * rng.normal(size=(80, 5))
    cleaned = clean_run(bold, TR, detrend="none", trim_start=7, trim_end=4)
    assert cleaned.shape == (69, 5) and cleaned.dtype == np.float32
    np.testing.assert_allclose(cleaned, scipy_zscore(bold[7:76], axis=0), atol=1e-5)
    np.testing.assert_allclose(cleaned.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(cleaned.std(axis=0), 1, atol=1e-6)


def test_confound_regression_residual_is_orthogonal():
    rng = np.random.default_rng(3)
    n_trs = 100
    confounds = rng.normal(size=(n_trs, 2))
    bold = 10 + confounds @ rng.normal(size=(2, 4)) * 5 + rng.normal(size=(n_trs, 4))
    cleaned = clean_run(bold, TR, detrend="none", confounds=confounds, zscore=False, trim_start=0, trim_end=0)
    design = np.column_stack([np.ones(n_trs), confounds])
    np.testing.assert_allclose(design.T @ cleaned, 0, atol=1e-3)
    # the residual equals the projection off the design computed by the normal equations
    hat = design @ np.linalg.solve(design.T @ design, design.T)
    np.testing.assert_allclose(cleaned, bold - hat @ bold, atol=1e-4)


def test_nan_and_constant_voxels_come_back_nan():
    rng = np.random.default_rng(4)
    bold = rng.normal(size=(60, 4))
    bold[5, 1] = np.nan
    bold[:, 2] = 3.0
    cleaned = clean_run(bold, TR, trim_start=2, trim_end=2)
    assert np.isnan(cleaned[:, 1]).all() and np.isnan(cleaned[:, 2]).all()
    assert np.isfinite(cleaned[:, [0, 3]]).all()


def test_bad_arguments():
    with pytest.raises(InputError, match="leaves 0 of 20"):
        clean_run(np.ones((20, 2)), TR, trim_start=10, trim_end=10)
    with pytest.raises(InputError, match="must exceed its polynomial order"):
        clean_run(np.random.default_rng(0).normal(size=(50, 2)), TR, savgol_window_s=3.0, savgol_polyorder=2)
    with pytest.raises(InputError, match="confounds have 10 rows"):
        clean_run(np.ones((50, 2)), TR, confounds=np.ones((10, 1)))


# --------------------------------------------------------------------------- subject files

GRID = (3, 3, 2)
OPTIONS = dict(detrend="savgol", savgol_window_s=40.0, savgol_polyorder=2, polynomial_order=2,
               confounds=[], zscore=True)


@pytest.fixture
def ingested(tmp_path):
    """An ingested subject: raw story 'alpha' (1 run, one NaN voxel), raw story 'beta'
    (2 runs, one voxel constant in run 2, confounds), preprocessed story 'gamma'."""
    rng = np.random.default_rng(5)
    mask = np.zeros(GRID, dtype=np.uint8)
    mask.flat[[0, 2, 3, 5, 7, 8, 11, 13, 17]] = 1
    n_voxels = int(mask.sum())
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask.nii.gz")
    drift = np.linspace(0, 30, 50)[:, None] ** 1.5 / 10
    alpha = 100 + drift + rng.normal(size=(50, n_voxels))
    alpha[10, 2] = np.nan
    beta = 100 + drift[:40] + rng.normal(size=(2, 40, n_voxels))
    beta[1, :, 6] = 7.0
    confounds = rng.normal(size=(2, 40, 3))
    alpha_confounds = rng.normal(size=(50, 3))
    gamma = rng.normal(size=(12, n_voxels)).astype(np.float32)
    with h5py.File(tmp_path / "responses.h5", "w") as h5:
        for story, runs in (("alpha", [alpha]), ("beta", list(beta))):
            group = h5.create_group(story)
            if len(runs) == 1:
                group["data"] = runs[0].astype(np.float32)
            else:
                group["repeats"] = np.stack(runs).astype(np.float32)
                group["data"] = np.mean(runs, axis=0).astype(np.float32)
            group.attrs.update(tr=TR, trim_start=0, trim_end=0, n_trs_raw=runs[0].shape[0], preprocessed=False,
                               source=f"{story}.nii.gz")
        for story, values in (("alpha", alpha_confounds), ("beta", confounds)):
            h5[story]["confounds"] = values.astype(np.float32)
            h5[story]["confounds"].attrs["names"] = ["a", "b", "c"]
        h5["gamma/data"] = gamma
        h5["gamma"].attrs.update(tr=TR, trim_start=10, trim_end=10, n_trs_raw=32, preprocessed=True, source="g.hf5")
    return tmp_path, mask, dict(alpha=alpha.astype(np.float32), beta=beta.astype(np.float32), gamma=gamma,
                                confounds=confounds.astype(np.float32),
                                alpha_confounds=alpha_confounds.astype(np.float32))


def test_preprocess_subject(ingested, tmp_path):
    folder, mask, raw = ingested
    out = tmp_path / "out"
    options = dict(OPTIONS, confounds=["c", "a"])
    summary = preprocess_subject(folder / "responses.h5", folder / "mask.nii.gz", out / "responses.h5",
                                 out / "mask.nii.gz", options, trim_start=3, trim_end=2)
    good = np.ones(mask.sum(), dtype=bool)
    good[[2, 6]] = False  # NaN in alpha, constant in beta run 2
    assert summary["voxels_dropped"] == 2 and summary["voxels_kept"] == 7
    new_mask = np.asanyarray(nib.load(out / "mask.nii.gz").dataobj)
    expected_mask = mask.copy()
    expected_mask.flat[[3, 11]] = 0  # the 3rd and 7th mask voxels in C order
    np.testing.assert_array_equal(new_mask, expected_mask)
    clean = dict(detrend="savgol", savgol_window_s=40.0, savgol_polyorder=2, trim_start=3, trim_end=2)
    with h5py.File(out / "responses.h5", "r") as h5:
        alpha = h5["alpha"]
        expected = clean_run(raw["alpha"][:, good], TR, confounds=raw["alpha_confounds"][:, [2, 0]], **clean)
        np.testing.assert_allclose(alpha["data"][()], expected, atol=1e-5)
        assert (alpha.attrs["trim_start"], alpha.attrs["trim_end"], alpha.attrs["preprocessed"]) == (3, 2, True)
        assert json.loads(alpha.attrs["cleaning"])["confounds"] == ["c", "a"]
        runs = [clean_run(raw["beta"][r][:, good], TR, confounds=raw["confounds"][r][:, [2, 0]], **clean)
                for r in range(2)]
        np.testing.assert_allclose(h5["beta"]["repeats"][()], np.stack(runs), atol=1e-5)
        np.testing.assert_allclose(h5["beta"]["data"][()], (runs[0] + runs[1]) / 2, atol=1e-5)
        gamma = h5["gamma"]
        np.testing.assert_array_equal(gamma["data"][()], raw["gamma"][:, good])  # passed through
        assert (gamma.attrs["trim_start"], gamma.attrs["trim_end"]) == (10, 10)
        assert "cleaning" not in gamma.attrs
    assert summary["cleaned"] == ["alpha", "beta"] and summary["passed_through"] == ["gamma"]


def test_preprocess_missing_confounds(ingested, tmp_path):
    folder, _, _ = ingested
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"story 'alpha' has no stored confounds \['d'\]") as caught:
        preprocess_subject(folder / "responses.h5", folder / "mask.nii.gz", out / "responses.h5",
                           out / "mask.nii.gz", dict(OPTIONS, confounds=["a", "d"]), trim_start=3, trim_end=2)
    assert caught.value.path == str(folder / "responses.h5")
    assert not out.exists() or not list(out.iterdir())


def test_preprocess_mask_mismatch(ingested, tmp_path):
    folder, _, _ = ingested
    nib.save(nib.Nifti1Image(np.ones(GRID, dtype=np.uint8), np.eye(4)), folder / "mask.nii.gz")
    out = tmp_path / "out"
    with pytest.raises(InputError, match="9 voxels but the mask .* holds 18"):
        preprocess_subject(folder / "responses.h5", folder / "mask.nii.gz", out / "responses.h5",
                           out / "mask.nii.gz", OPTIONS, trim_start=3, trim_end=2)
    assert not out.exists() or not list(out.iterdir())


@pytest.fixture
def split_ingested(tmp_path):
    """A raw run of 2 repeats x 36 TRs with confounds, ingested as segments [0, 10), [10, 22), [22, 36)."""
    rng = np.random.default_rng(8)
    n_voxels = 5
    mask = np.zeros(GRID, dtype=np.uint8)
    mask.flat[[1, 4, 6, 9, 12]] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask.nii.gz")
    drift = np.linspace(0, 6, 36)[:, None] ** 2
    runs = 50 + drift + rng.normal(size=(2, 36, n_voxels))
    confounds = rng.normal(size=(2, 36, 2))
    edges = [0, 10, 22, 36]
    with h5py.File(tmp_path / "responses.h5", "w") as h5:
        for index, (start, stop) in enumerate(zip(edges[:-1], edges[1:]), start=1):
            group = h5.create_group(f"runseg{index}")
            group["repeats"] = runs[:, start:stop].astype(np.float32)
            group["data"] = runs[:, start:stop].mean(axis=0).astype(np.float32)
            group["confounds"] = confounds[:, start:stop].astype(np.float32)
            group["confounds"].attrs["names"] = ["a", "b"]
            group.attrs.update(tr=TR, trim_start=0, trim_end=0, n_trs_raw=stop - start, preprocessed=False,
                               source="run.nii.gz", segment_of="run", segment_index=index, n_segments=3,
                               segment_start_tr=start)
    return tmp_path, runs.astype(np.float32), confounds.astype(np.float32), edges


def test_preprocess_split_run_cleans_the_whole_run(split_ingested, tmp_path):
    folder, runs, confounds, edges = split_ingested
    out = tmp_path / "out"
    options = dict(OPTIONS, confounds=["b"])
    summary = preprocess_subject(folder / "responses.h5", folder / "mask.nii.gz", out / "responses.h5",
                                 out / "mask.nii.gz", options, trim_start=3, trim_end=4)
    assert summary["cleaned"] == ["runseg1", "runseg2", "runseg3"]
    # Reference: each repeat cleaned whole (confound b, detrend, trim 3/4, z-score), then cut.
    whole = np.stack([clean_run(runs[r], TR, confounds=confounds[r][:, [1]], detrend="savgol", savgol_window_s=40.0,
                                trim_start=3, trim_end=4) for r in range(2)])  # raw TRs [3, 32)
    expected_rows = [(0, 7), (7, 19), (19, 29)]  # raw [3,10), [10,22), [22,32) in trimmed-run rows
    with h5py.File(out / "responses.h5", "r") as h5:
        for index, (first, last) in enumerate(expected_rows, start=1):
            group = h5[f"runseg{index}"]
            np.testing.assert_allclose(group["repeats"][()], whole[:, first:last], atol=1e-5)
            np.testing.assert_allclose(group["data"][()], whole[:, first:last].mean(axis=0), atol=1e-5)
            n_trs_raw = edges[index] - edges[index - 1]
            trims = {1: (3, 0), 2: (0, 0), 3: (0, 4)}[index]
            assert (int(group.attrs["n_trs_raw"]), int(group.attrs["trim_start"]), int(group.attrs["trim_end"])) == (
                n_trs_raw, *trims)
            assert group["data"].shape[0] == n_trs_raw - sum(trims)
        # z-scored over the whole run's kept TRs: the joined segments have mean 0 and std 1
        joined = np.concatenate([h5[f"runseg{k}"]["repeats"][()] for k in (1, 2, 3)], axis=1)
        np.testing.assert_allclose(joined.mean(axis=1), 0, atol=1e-5)
        np.testing.assert_allclose(joined.std(axis=1), 1, atol=1e-4)


def test_preprocess_split_run_incomplete(split_ingested, tmp_path):
    folder, _, _, _ = split_ingested
    with h5py.File(folder / "responses.h5", "a") as h5:
        del h5["runseg2"]
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"run 'run' has segments \[1, 3\] of 3") as caught:
        preprocess_subject(folder / "responses.h5", folder / "mask.nii.gz", out / "responses.h5",
                           out / "mask.nii.gz", OPTIONS, trim_start=3, trim_end=4)
    assert caught.value.path == str(folder / "responses.h5")
    assert not out.exists() or not list(out.iterdir())


def _trim_story(handle, story, n_trs_raw, trim_start, trim_end, **attrs):
    group = handle.create_group(story)
    group.create_dataset("data", data=np.zeros((n_trs_raw - trim_start - trim_end, 3), np.float32))
    group.attrs.update(tr=TR, n_trs_raw=n_trs_raw, trim_start=trim_start, trim_end=trim_end, preprocessed=True,
                       cleaning="{}", **attrs)


def _words(path, onset, offset):
    path.write_text(f"word\tonset\toffset\nfirst\t{onset}\t{onset + 0.3}\nlast\t{offset - 0.3}\t{offset}\n")
    return path


def test_trim_checks_warn_on_large_trims_and_cut_stimuli(tmp_path, caplog):
    from brainllm.preprocess import trim_checks

    responses = tmp_path / "responses.h5"
    with h5py.File(responses, "w") as handle:
        _trim_story(handle, "long", 200, 10, 10)       # 10 % trimmed, words inside the kept TRs [20 s, 380 s)
        _trim_story(handle, "short", 65, 10, 10)       # 31 % trimmed
        _trim_story(handle, "early", 200, 10, 10)      # first word at 12 s < 20 s
        # a run split in two segments: 20 of 100 raw TRs trimmed over the run (20 %: no warning);
        # the last segment's words end after its kept TRs
        _trim_story(handle, "runseg1", 50, 10, 0, segment_of="run")
        _trim_story(handle, "runseg2", 50, 0, 10, segment_of="run")
    words = {"long": _words(tmp_path / "a.tsv", 25.0, 370.0), "short": _words(tmp_path / "b.tsv", 25.0, 100.0),
             "early": _words(tmp_path / "c.tsv", 12.0, 300.0), "runseg1": _words(tmp_path / "d.tsv", 30.0, 90.0),
             "runseg2": _words(tmp_path / "e.tsv", 1.0, 85.0)}
    with caplog.at_level("WARNING", logger="brainllm"):
        table = trim_checks(responses, words).set_index("story")
    assert table.loc["long", "warning"] == "" and table.loc["runseg1", "warning"] == ""
    assert table.loc["short", "trimmed_fraction"] == pytest.approx(20 / 65)
    assert "removes 31% of the TRs of run short" in table.loc["short", "warning"]
    assert "trim_start (20 s) cuts into the stimulus (first word at 12 s)" in table.loc["early", "warning"]
    assert table.loc["runseg2", "trimmed_fraction"] == pytest.approx(0.2)
    assert "trim_end cuts into the stimulus (kept TRs end at 80 s, last word ends at 85 s)" in table.loc["runseg2", "warning"]
    assert "removes" not in table.loc["runseg2", "warning"]
    assert sum("cuts into the stimulus" in r.message or "removes" in r.message for r in caplog.records) == 3
