"""Ingestion: ds003020, generic BIDS (raw and fMRIPrep), word-onset CSV; bad inputs; configs."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from brainllm.configuration import validate

from brainllm.ingest import ingest_atlas, ingest_subject, ingest_words
from brainllm.io import InputError

REPO = Path(__file__).resolve().parents[1]
TR = 2.0
GRID = (4, 3, 2)
N_TRS = 30
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
# (trial_type, word, onset, duration): silence and non-word rows must be dropped.
EVENTS = [
    ("word", "sp", 0.2, 0.3),
    ("word", "once", 10.0, 0.4),
    ("noise", "beep", 10.2, 0.1),
    ("word", "upon", 10.5, 0.3),
    ("word", "{LG}", 11.0, 0.5),
    ("word", "a", 12.0, 0.2),
    ("word", "time", 12.25, 0.5),
]
EXPECTED_WORDS = [("once", 10.0, 10.4), ("upon", 10.5, 10.8), ("a", 12.0, 12.2), ("time", 12.25, 12.75)]


def save_image(path: Path, data: np.ndarray, tr: float | None = TR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, AFFINE)
    if data.ndim == 4:
        img.header.set_zooms((2.0, 2.0, 2.0, tr))
        img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)


def bold_data(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (100 + rng.normal(size=(*GRID, N_TRS))).astype(np.float32)


def brain_mask() -> np.ndarray:
    mask = np.ones(GRID, dtype=np.uint8)
    mask[0, 0, 0] = mask[3, 2, 1] = 0
    return mask


def write_events(path: Path, rows=EVENTS, word_column: str = "word") -> None:
    frame = pd.DataFrame(rows, columns=["trial_type", word_column, "onset", "duration"])
    frame[["onset", "duration", "trial_type", word_column]].to_csv(path, sep="\t", index=False)


def confounds_table(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"trans_x": rng.normal(size=N_TRS), "framewise_displacement": rng.random(N_TRS),
                          "csf": rng.normal(size=N_TRS)})
    table = table.astype(object)
    table.loc[0, "framewise_displacement"] = "n/a"
    table.loc[5, "csf"] = "n/a"
    return table


def run_names():
    """(subject, story, run entity or None, seed) of every run in the synthetic dataset."""
    for subject_index, subject in enumerate(["01", "02"]):
        yield subject, "alpha", None, 10 * subject_index
        for run in (1, 2):
            yield subject, "beta", run, 10 * subject_index + run


def stem(subject, story, run):
    return f"sub-{subject}_task-{story}" + (f"_run-{run}" if run else "")


@pytest.fixture(scope="session")
def bids_root(tmp_path_factory) -> Path:
    """Raw BIDS + a mask derivative + fMRIPrep derivatives, 2 subjects, stories alpha (1 run)
    and beta (2 runs)."""
    root = tmp_path_factory.mktemp("bids")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.8.0"}))
    for story in ("alpha", "beta"):
        (root / f"task-{story}_bold.json").write_text(json.dumps({"RepetitionTime": TR, "TaskName": story}))
    prep = root / "derivatives" / "fmriprep"
    prep.mkdir(parents=True)
    (prep / "dataset_description.json").write_text(json.dumps(
        {"Name": "fMRIPrep", "BIDSVersion": "1.8.0", "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    for subject in ("01", "02"):
        save_image(root / "derivatives" / "masks" / f"sub-{subject}_mask.nii.gz", brain_mask())
    for subject, story, run, seed in run_names():
        name = stem(subject, story, run)
        func = root / f"sub-{subject}" / "func"
        save_image(func / f"{name}_bold.nii.gz", bold_data(seed))
        write_events(func / f"{name}_events.tsv")
        prep_func = prep / f"sub-{subject}" / "func"
        save_image(prep_func / f"{name}_space-T1w_desc-preproc_bold.nii.gz", bold_data(seed + 100))
        run_mask = brain_mask()
        run_mask[1, 1, seed % 2] = 0  # run masks differ: the ingested mask is their intersection
        save_image(prep_func / f"{name}_space-T1w_desc-brain_mask.nii.gz", run_mask)
        confounds_table(seed).to_csv(prep_func / f"{name}_desc-confounds_timeseries.tsv", sep="\t", index=False)
    return root


def bids_config(root: Path, **overrides) -> dict:
    config = dict(
        name="synthetic", layout="bids", root=str(root), subjects=["01", "02"], train_stories=["alpha"],
        test_stories=["beta"], tr=TR, trim_start=2, trim_end=2,
        bids=dict(space=None, desc=None, word_column="word", events_trial_type="word"),
        mask="derivatives/masks/sub-{subject}_mask.nii.gz",
    )
    config.update(overrides)
    return config


def outputs(tmp_path: Path) -> dict:
    folder = tmp_path / "out"
    return dict(out_responses=folder / "responses.h5", out_mask=folder / "mask.nii.gz", out_mean=folder / "mean.nii.gz")


def assert_no_outputs(paths) -> None:
    """Neither the outputs nor temporary siblings of them exist."""
    for path in map(Path, paths):
        assert not path.exists(), path
        if path.parent.exists():
            assert not list(path.parent.glob(f".{path.name}*")), path


# --------------------------------------------------------------------------- BIDS


def test_bids_words(bids_root, tmp_path):
    out = tmp_path / "words.tsv"
    words = ingest_words(bids_config(bids_root), "alpha", out)
    stored = pd.read_csv(out, sep="\t")
    assert list(stored.columns) == ["word", "onset", "offset"]
    assert list(stored["word"]) == [w for w, _, _ in EXPECTED_WORDS]
    np.testing.assert_allclose(stored[["onset", "offset"]].to_numpy(), [[on, off] for _, on, off in EXPECTED_WORDS],
                               atol=1e-12)
    pd.testing.assert_frame_equal(words, stored)


def test_bids_raw_responses(bids_root, tmp_path):
    paths = outputs(tmp_path)
    ingest_subject(bids_config(bids_root), "02", [], **paths)
    mask = brain_mask() > 0
    mask_img = nib.load(paths["out_mask"])
    np.testing.assert_array_equal(np.asanyarray(mask_img.dataobj) > 0, mask)
    np.testing.assert_allclose(mask_img.affine, AFFINE)
    with h5py.File(paths["out_responses"], "r") as h5:
        assert set(h5) == {"alpha", "beta"}
        alpha = h5["alpha"]
        # Independent masking: explicit loop over voxels in C order.
        raw = bold_data(10)
        expected = np.stack([raw[i, j, k] for i, j, k in np.ndindex(*GRID) if mask[i, j, k]], axis=1)
        np.testing.assert_array_equal(alpha["data"][()], expected)
        assert "repeats" not in alpha
        assert dict(alpha.attrs) | {"source": None} == dict(
            tr=TR, trim_start=0, trim_end=0, n_trs_raw=N_TRS, preprocessed=False, source=None)
        assert alpha.attrs["source"] == "sub-02/func/sub-02_task-alpha_bold.nii.gz"
        beta = h5["beta"]
        runs = [bold_data(11)[mask].T, bold_data(12)[mask].T]
        np.testing.assert_array_equal(beta["repeats"][()], np.stack(runs))
        np.testing.assert_allclose(beta["data"][()], (runs[0] + runs[1]) / 2, rtol=1e-6)
    mean = nib.load(paths["out_mean"]).get_fdata()
    np.testing.assert_allclose(mean, np.mean([bold_data(s).mean(axis=3) for s in (10, 11, 12)], axis=0), rtol=1e-5)


def test_fmriprep_derivatives_with_confounds(bids_root, tmp_path):
    paths = outputs(tmp_path)
    config = bids_config(bids_root, mask=None, bids=dict(space="T1w", desc="preproc", word_column="word",
                                                          events_trial_type="word"))
    ingest_subject(config, "01", ["framewise_displacement", "csf"], **paths)
    mask = brain_mask() > 0
    mask[1, 1, 0] = mask[1, 1, 1] = False  # intersection of the run masks (seeds 0, 1, 2)
    np.testing.assert_array_equal(np.asanyarray(nib.load(paths["out_mask"]).dataobj) > 0, mask)
    with h5py.File(paths["out_responses"], "r") as h5:
        np.testing.assert_array_equal(h5["alpha"]["data"][()], bold_data(100)[mask].T)
        assert "desc-preproc" in h5["alpha"].attrs["source"]
        confounds = h5["beta"]["confounds"]
        assert list(confounds.attrs["names"]) == ["framewise_displacement", "csf"]
        assert confounds.shape == (2, N_TRS, 2)
        table = confounds_table(2)
        fd = pd.to_numeric(table["framewise_displacement"], errors="coerce").to_numpy()
        csf = pd.to_numeric(table["csf"], errors="coerce").to_numpy()
        assert confounds[1, 0, 0] == 0.0  # leading n/a -> 0
        np.testing.assert_allclose(confounds[1, 1:, 0], fd[1:], rtol=1e-6)
        assert confounds[1, 5, 1] == pytest.approx(np.nanmean(csf), rel=1e-6)  # inner n/a -> column mean
        np.testing.assert_allclose(np.delete(confounds[1, :, 1], 5), np.delete(csf, 5), rtol=1e-6)


def test_missing_confound_column(bids_root, tmp_path):
    paths = outputs(tmp_path)
    config = bids_config(bids_root, bids=dict(space="T1w", desc="preproc", word_column="word"))
    with pytest.raises(InputError, match="white_matter") as caught:
        ingest_subject(config, "01", ["white_matter"], **paths)
    assert caught.value.path.endswith("desc-confounds_timeseries.tsv")
    assert_no_outputs(paths.values())


def test_confounds_without_fmriprep(bids_root, tmp_path):
    paths = outputs(tmp_path)
    with pytest.raises(InputError, match="no confounds TSV"):
        ingest_subject(bids_config(bids_root), "01", ["csf"], **paths)
    assert_no_outputs(paths.values())


def test_atlas(bids_root, tmp_path):
    atlas = np.zeros(GRID, dtype=np.int16)
    atlas[:2] = 1
    atlas[2:, :, 1] = 3
    save_image(bids_root / "derivatives" / "atlas" / "sub-01_dseg.nii.gz", atlas)
    (bids_root / "derivatives" / "atlas" / "dseg.tsv").write_text("index\tname\n1\tfront\n2\tunused\n")
    mask_path = tmp_path / "mask.nii.gz"
    save_image(mask_path, brain_mask())
    config = bids_config(bids_root, atlas="derivatives/atlas/sub-{subject}_dseg.nii.gz",
                         atlas_labels="derivatives/atlas/dseg.tsv")
    ingest_atlas(config, "01", mask_path, tmp_path / "atlas.nii.gz", tmp_path / "atlas.tsv")
    np.testing.assert_array_equal(nib.load(tmp_path / "atlas.nii.gz").get_fdata(), atlas)
    labels = pd.read_csv(tmp_path / "atlas.tsv", sep="\t")
    assert labels.to_dict("list") == {"index": [1, 2, 3], "name": ["front", "unused", "roi-3"]}
    save_image(mask_path, np.ones((4, 3, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="does not match the mask"):
        ingest_atlas(config, "01", mask_path, tmp_path / "a2.nii.gz", tmp_path / "a2.tsv")
    assert not (tmp_path / "a2.nii.gz").exists()


# --------------------------------------------------------------------------- wordcsv


def test_wordcsv(bids_root, tmp_path):
    table = pd.DataFrame({
        "Word": ["Alice", "was", "sp", "beginning", "to", "get"],
        "onset": [1.0, 1.5, 1.9, 2.0, 2.6, 3.0],
        "Segment": [1, 1, 1, 1, 2, 2],
    })
    table.to_csv(bids_root / "words.csv", index=False)
    config = bids_config(bids_root, layout="wordcsv", wordcsv=dict(
        words="words.csv", word_column="Word", offset_column=None, run_column="Segment",
        story_map={"1": "alpha", "2": "beta"}, onset_shift_s=4.0))
    alpha = ingest_words(config, "alpha", tmp_path / "alpha.tsv")
    assert list(alpha["word"]) == ["Alice", "was", "beginning"]
    # offset = next onset in the segment (silence rows count as onsets); last = onset + median length
    np.testing.assert_allclose(alpha["onset"], [5.0, 5.5, 6.0])
    np.testing.assert_allclose(alpha["offset"], [5.5, 5.9, 6.0 + np.median([0.5, 0.4, 0.1])])
    beta = ingest_words(config, "beta", tmp_path / "beta.tsv")
    assert list(beta["word"]) == ["to", "get"]
    config["wordcsv"]["word_column"] = "token"
    with pytest.raises(InputError, match="no word column 'token'") as caught:
        ingest_words(config, "alpha", tmp_path / "bad.tsv")
    assert caught.value.path == str(bids_root / "words.csv")
    assert not (tmp_path / "bad.tsv").exists()


# --------------------------------------------------------------------------- ds003020


TEXTGRID = """File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 20
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "phone"
        xmin = 0
        xmax = 20
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = 20
            text = "sp"
    item [2]:
        class = "IntervalTier"
        name = "word"
        xmin = 0
        xmax = 20
        intervals: size = 3
        intervals [1]:
            xmin = 0
            xmax = 1.25
            text = "sentence_start"
        intervals [2]:
            xmin = 1.25
            xmax = 1.5
            text = "so"
        intervals [3]:
            xmin = 1.5
            xmax = LAST
            text = "there"
"""


@pytest.fixture
def ds_root(tmp_path) -> Path:
    root = tmp_path / "ds003020"
    derivative = root / "derivative"
    (derivative / "TextGrids").mkdir(parents=True)
    (derivative / "TextGrids" / "alpha.TextGrid").write_bytes(b"\xef\xbb\xbf" + TEXTGRID.replace("LAST", "2").encode())
    (derivative / "respdict.json").write_text(json.dumps({"alpha": 30, "beta": 28}))
    for story, rows in (("alpha", 10), ("beta", 8)):
        folder = derivative / "preprocessed_data" / "UTS01"
        folder.mkdir(parents=True, exist_ok=True)
        with h5py.File(folder / f"{story}.hf5", "w") as h5:
            h5["data"] = np.random.default_rng(rows).normal(size=(rows, 5)).astype(np.float32)
    mask = np.zeros((3, 2, 2), dtype=np.uint8)
    mask.flat[[1, 4, 5, 9, 11]] = 1
    save_image(derivative / "masks" / "UTS01_mask.nii.gz", mask)
    return root


def ds_config(root: Path, **overrides) -> dict:
    config = dict(name="ds", layout="ds003020", root=str(root), subjects=["UTS01"], train_stories=["alpha"],
                  test_stories=["beta"], tr=TR, trim_start=10, trim_end=10, audio_onset_s=10.0,
                  mask="derivative/masks/{subject}_mask.nii.gz")
    config.update(overrides)
    return config


def test_ds003020_words(ds_root, tmp_path):
    words = ingest_words(ds_config(ds_root), "alpha", tmp_path / "words.tsv")
    assert list(words["word"]) == ["so", "there"]
    np.testing.assert_allclose(words[["onset", "offset"]].to_numpy(), [[11.25, 11.5], [11.5, 12.0]])


def test_ds003020_responses(ds_root, tmp_path, caplog):
    paths = outputs(tmp_path)
    ingest_subject(ds_config(ds_root), "UTS01", [], **paths)
    with h5py.File(paths["out_responses"], "r") as h5, h5py.File(
        ds_root / "derivative/preprocessed_data/UTS01/beta.hf5", "r") as source:
        np.testing.assert_array_equal(h5["beta"]["data"][()], source["data"][()])
        attrs = dict(h5["beta"].attrs)
        assert (attrs["tr"], attrs["trim_start"], attrs["trim_end"], attrs["n_trs_raw"], attrs["preprocessed"]) == (
            TR, 10, 10, 28, True)
    mask = nib.load(paths["out_mask"])
    assert int((np.asanyarray(mask.dataobj) > 0).sum()) == 5
    # Without dataset.mask: a flat (n_voxels, 1, 1) mask with a warning.
    ingest_subject(ds_config(ds_root, mask=None), "UTS01", [], **paths)
    flat = nib.load(paths["out_mask"])
    assert flat.shape == (5, 1, 1) and np.allclose(flat.affine, np.eye(4))
    assert "flat" in caplog.text


# --------------------------------------------------------------------------- bad input


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "copy"))


def test_missing_events_file(bids_root, tmp_path):
    root = _copy(bids_root, tmp_path)
    events = root / "sub-01" / "func" / "sub-01_task-alpha_events.tsv"
    events.unlink()
    with pytest.raises(InputError, match="events file not found") as caught:
        ingest_words(bids_config(root), "alpha", tmp_path / "words.tsv")
    assert caught.value.path == str(events)
    assert not (tmp_path / "words.tsv").exists()
    paths = outputs(tmp_path)
    with pytest.raises(InputError, match="events file not found"):
        ingest_subject(bids_config(root), "01", [], **paths)
    assert_no_outputs(paths.values())


def test_events_without_word_column(bids_root, tmp_path):
    root = _copy(bids_root, tmp_path)
    events = root / "sub-01" / "func" / "sub-01_task-alpha_events.tsv"
    write_events(events, word_column="stim")
    with pytest.raises(InputError, match="no column 'word'.*word_column") as caught:
        ingest_words(bids_config(root), "alpha", tmp_path / "words.tsv")
    assert caught.value.path == str(events)
    assert not (tmp_path / "words.tsv").exists()


def test_tr_differs_from_config(bids_root, tmp_path):
    root = _copy(bids_root, tmp_path)
    bold = root / "sub-01" / "func" / "sub-01_task-beta_run-2_bold.nii.gz"
    save_image(bold, bold_data(2), tr=1.5)
    paths = outputs(tmp_path)
    with pytest.raises(InputError, match="TR in the NIfTI header is 1.5 s but dataset.tr is 2 s") as caught:
        ingest_subject(bids_config(root), "01", [], **paths)
    assert caught.value.path == str(bold)
    assert_no_outputs(paths.values())
    (root / "task-beta_bold.json").write_text(json.dumps({"RepetitionTime": 2.5}))
    with pytest.raises(InputError, match="sidecar JSON is 2.5 s"):
        ingest_subject(bids_config(root, subjects=["02"]), "02", [], **paths)


def test_words_beyond_run_end(bids_root, tmp_path):
    root = _copy(bids_root, tmp_path)
    events = root / "sub-01" / "func" / "sub-01_task-alpha_events.tsv"
    write_events(events, EVENTS + [("word", "late", N_TRS * TR - 0.2, 0.5)])
    with pytest.raises(InputError, match="end after the run ends at 60.000 s.*'late'") as caught:
        ingest_words(bids_config(root), "alpha", tmp_path / "words.tsv")
    assert caught.value.path == str(events)
    assert not (tmp_path / "words.tsv").exists()
    paths = outputs(tmp_path)
    with pytest.raises(InputError, match="end after the run ends") as caught:
        ingest_subject(bids_config(root), "01", [], **paths)
    assert caught.value.path == str(events)
    assert_no_outputs(paths.values())


def test_words_beyond_run_end_ds003020(ds_root, tmp_path):
    grid = ds_root / "derivative" / "TextGrids" / "alpha.TextGrid"
    grid.write_text(TEXTGRID.replace("LAST", "50.5").replace("xmax = 20", "xmax = 51"))
    with pytest.raises(InputError, match="end after the run ends at 60.000 s") as caught:
        ingest_words(ds_config(ds_root), "alpha", tmp_path / "words.tsv")
    assert caught.value.path == str(grid)


def test_malformed_textgrid(ds_root, tmp_path):
    grid = ds_root / "derivative" / "TextGrids" / "alpha.TextGrid"
    grid.write_text(TEXTGRID.replace("LAST", "2").replace("intervals: size = 3", "intervals: size = 4"))
    with pytest.raises(InputError, match="malformed TextGrid") as caught:
        ingest_words(ds_config(ds_root), "alpha", tmp_path / "words.tsv")
    assert caught.value.path == str(grid)
    assert not (tmp_path / "words.tsv").exists()


def test_hf5_rows_inconsistent_with_respdict(ds_root, tmp_path):
    (ds_root / "derivative" / "respdict.json").write_text(json.dumps({"alpha": 30, "beta": 29}))
    paths = outputs(tmp_path)
    with pytest.raises(InputError, match="expected 9 rows .*n=29.* found 8") as caught:
        ingest_subject(ds_config(ds_root), "UTS01", [], **paths)
    assert caught.value.path.endswith("preprocessed_data/UTS01/beta.hf5")
    assert_no_outputs(paths.values())


@pytest.mark.parametrize("what", ["story", "subject"])
def test_absent_story_or_subject_ds003020(ds_root, tmp_path, what):
    config = ds_config(ds_root, test_stories=["gamma"]) if what == "story" else ds_config(ds_root, subjects=["UTS09"])
    paths = outputs(tmp_path)
    with pytest.raises(InputError, match="gamma" if what == "story" else "UTS09"):
        ingest_subject(config, config["subjects"][0], [], **paths)
    assert_no_outputs(paths.values())
    if what == "story":
        with pytest.raises(InputError, match="'gamma' is not listed") as caught:
            ingest_words(config, "gamma", tmp_path / "words.tsv")
        assert caught.value.path.endswith("respdict.json")


def test_absent_story_or_subject_bids(bids_root, tmp_path):
    paths = outputs(tmp_path)
    with pytest.raises(InputError, match="story 'gamma' not found for subject '01'.*alpha, beta"):
        ingest_subject(bids_config(bids_root, test_stories=["gamma"]), "01", [], **paths)
    with pytest.raises(InputError, match="subject '03' not found"):
        ingest_subject(bids_config(bids_root, subjects=["03"]), "03", [], **paths)
    with pytest.raises(InputError, match="story 'gamma' not found"):
        ingest_words(bids_config(bids_root), "gamma", tmp_path / "words.tsv")
    assert_no_outputs([*paths.values(), tmp_path / "words.tsv"])


def test_3d_image_where_4d_expected(bids_root, tmp_path):
    root = _copy(bids_root, tmp_path)
    bold = root / "sub-01" / "func" / "sub-01_task-beta_run-1_bold.nii.gz"
    save_image(bold, bold_data(1)[..., 0])
    paths = outputs(tmp_path)
    with pytest.raises(InputError, match="expected a 4-D BOLD series but the image is 3-D") as caught:
        ingest_subject(bids_config(root), "01", [], **paths)
    assert caught.value.path == str(bold)
    assert_no_outputs(paths.values())


def test_mask_shape_mismatch(bids_root, tmp_path):
    root = _copy(bids_root, tmp_path)
    mask = root / "derivatives" / "masks" / "sub-01_mask.nii.gz"
    save_image(mask, np.ones((4, 3, 3), dtype=np.uint8))
    paths = outputs(tmp_path)
    with pytest.raises(InputError, match=r"mask shape \(4, 3, 3\) does not match the BOLD grid \(4, 3, 2\)") as caught:
        ingest_subject(bids_config(root), "01", [], **paths)
    assert caught.value.path == str(mask)
    assert_no_outputs(paths.values())


# --------------------------------------------------------------------------- split runs

CHAPTER_TRS = {"01": 40, "02": 43}  # one run per subject; sub-02's run is 3 TRs longer
CHAPTER_OPTIONS = dict(detrend="savgol", savgol_window_s=30.0, savgol_polyorder=2, polynomial_order=2,
                       confounds=[], zscore=True)


def chapter_words() -> pd.DataFrame:
    """A word every 0.7 s over the 80 s of sub-01's run, none from 40 to 56 s."""
    onsets = np.arange(1.0, 78.0, 0.7)
    onsets = onsets[(onsets < 40.0) | (onsets >= 56.0)]
    return pd.DataFrame({"word": [f"w{i}" for i in range(len(onsets))], "onset": onsets, "offset": onsets + 0.5})


@pytest.fixture(scope="session")
def chapter_root(tmp_path_factory) -> Path:
    """BIDS: one drifting run of task 'chapter' per subject, words in a CSV (Alice style)."""
    root = tmp_path_factory.mktemp("chapter")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "c", "BIDSVersion": "1.8.0"}))
    (root / "task-chapter_bold.json").write_text(json.dumps({"RepetitionTime": TR, "TaskName": "chapter"}))
    rng = np.random.default_rng(3)
    for subject, n_trs in CHAPTER_TRS.items():
        drift = np.linspace(0.0, 8.0, n_trs) ** 2 / 8.0
        data = 100 + drift + rng.normal(size=(*GRID, n_trs))
        save_image(root / f"sub-{subject}" / "func" / f"sub-{subject}_task-chapter_bold.nii.gz",
                   data.astype(np.float32))
    (root / "stimuli").mkdir()
    chapter_words().to_csv(root / "stimuli" / "words.csv", index=False)
    return root


def chapter_config(root: Path, segments=None, **overrides) -> dict:
    split = {"chapter": {"n_segments": 3}} if segments is None else segments
    config = dict(
        name="chapter", layout="wordcsv", root=str(root), subjects=["01", "02"],
        train_stories=["chapterseg1", "chapterseg2"], test_stories=["chapterseg3"], tr=TR, trim_start=2, trim_end=2,
        bids=dict(space=None, desc=None), mask=None, wordcsv=dict(words="stimuli/words.csv"), segments=split,
    )
    config.update(overrides)
    return config


def whole_chapter_config(root: Path) -> dict:
    return chapter_config(root, segments={}, train_stories=["chapter"], test_stories=["chapter"])


def test_split_run_words(chapter_root, tmp_path):
    whole = ingest_words(whole_chapter_config(chapter_root), "chapter", tmp_path / "chapter.tsv")
    # n_segments 3: the 36 kept TRs (40 − 2 − 2) in thirds -> cut points at TRs 14 and 26 (28 s, 52 s)
    starts_s = [0.0, 28.0, 52.0]
    pieces = [ingest_words(chapter_config(chapter_root), f"chapterseg{k}", tmp_path / f"seg{k}.tsv") for k in (1, 2, 3)]
    for k, (piece, start_s, stop_s) in enumerate(zip(pieces, starts_s, starts_s[1:] + [np.inf]), start=1):
        midpoints = (piece["onset"] + piece["offset"]) / 2 + start_s  # back in the run's scan time
        assert ((midpoints >= start_s) & (midpoints < stop_s)).all()
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / f"seg{k}.tsv", sep="\t"), piece)
    rejoined = pd.concat([piece.assign(onset=piece["onset"] + start_s, offset=piece["offset"] + start_s)
                          for piece, start_s in zip(pieces, starts_s)], ignore_index=True)
    pd.testing.assert_frame_equal(rejoined, whole, check_exact=False, atol=1e-9)
    # A word straddling a cut (27.6-28.1 s) stays whole in the segment holding its midpoint.
    assert pieces[0]["offset"].iloc[-1] == pytest.approx(28.1) and pieces[0]["onset"].iloc[-1] == pytest.approx(27.6)
    # Explicit cut points in seconds.
    config = chapter_config(chapter_root, segments={"chapter": {"boundaries_s": [30.0, 64.0]}})
    third = ingest_words(config, "chapterseg3", tmp_path / "third.tsv")
    expected = whole[(whole["onset"] + whole["offset"]) / 2 >= 64.0]
    np.testing.assert_allclose(third["onset"], expected["onset"] - 64.0, atol=1e-9)


def test_split_run_responses(chapter_root, tmp_path):
    """Segments cleaned as one run equal the unsplit run's cleaned responses, cut."""
    from brainllm.align import align_story
    from brainllm.preprocess import preprocess_subject

    cleaned = {}
    for name, config in (("whole", whole_chapter_config(chapter_root)), ("split", chapter_config(chapter_root))):
        for subject in CHAPTER_TRS:
            folder = tmp_path / name / subject
            ingest_subject(config, subject, [], out_responses=folder / "ingested.h5", out_mask=folder / "mask.nii.gz",
                           out_mean=folder / "mean.nii.gz")
            preprocess_subject(folder / "ingested.h5", folder / "mask.nii.gz", folder / "cleaned.h5",
                               folder / "cleaned_mask.nii.gz", CHAPTER_OPTIONS, trim_start=2, trim_end=2)
            cleaned[name, subject] = folder
    words = chapter_words()
    for subject, n_trs in CHAPTER_TRS.items():
        with h5py.File(cleaned["whole", subject] / "cleaned.h5", "r") as whole, \
                h5py.File(cleaned["split", subject] / "cleaned.h5", "r") as split, \
                h5py.File(cleaned["split", subject] / "ingested.h5", "r") as raw:
            assert set(split) == {"chapterseg1", "chapterseg2", "chapterseg3"}
            # raw segments: contiguous pieces of the run, untrimmed
            raw_whole = np.concatenate([raw[f"chapterseg{k}"]["data"][()] for k in (1, 2, 3)])
            np.testing.assert_array_equal(raw_whole, bold_data_of(chapter_root, subject))
            segments = [split[f"chapterseg{k}"] for k in (1, 2, 3)]
            np.testing.assert_array_equal(np.concatenate([seg["data"][()] for seg in segments]),
                                          whole["chapter"]["data"][()])
            # Cut points 14 and 26 are shared; the last segment runs to this subject's end.
            lengths = [14, 12, n_trs - 26]
            trims = [(2, 0), (0, 0), (0, 2)]  # the run's trims sit at its two ends only
            for k, (seg, n_trs_raw, (trim_start, trim_end)) in enumerate(zip(segments, lengths, trims), start=1):
                attrs = seg.attrs
                assert (int(attrs["n_trs_raw"]), int(attrs["trim_start"]), int(attrs["trim_end"])) == (
                    n_trs_raw, trim_start, trim_end)
                assert seg["data"].shape[0] == n_trs_raw - trim_start - trim_end
                assert (attrs["segment_of"], int(attrs["segment_index"]), int(attrs["n_segments"])) == ("chapter", k, 3)
                assert bool(attrs["preprocessed"])
            # The TR grid alignment builds per segment (TR j at j·TR + TR/2 of segment time, kept
            # rows [trim_start : n_trs_raw − trim_end]) is the whole run's kept grid.
            starts = np.cumsum([0] + lengths[:-1])
            grid = np.concatenate([
                start * TR + (np.arange(n) + 0.5)[int(seg.attrs["trim_start"]): n - int(seg.attrs["trim_end"])] * TR
                for seg, n, start in zip(segments, lengths, starts)])
            np.testing.assert_allclose(grid, (np.arange(2, n_trs - 2) + 0.5) * TR)
            # Word-rate features aligned per segment equal the whole run's except within the
            # Lanczos window (3 TRs) of a cut, where words across the cut are lost.
            rate = lambda frame: np.ones((len(frame), 1))  # noqa: E731
            whole_rate = align_story(rate(words), words["onset"], words["offset"], n_trs, TR, 2, 2, zscore=False)
            pieces = split_words_in_run_time(words, starts, lengths)
            split_rate = np.concatenate([
                align_story(rate(piece), piece["onset"], piece["offset"], n, TR, int(seg.attrs["trim_start"]),
                            int(seg.attrs["trim_end"]), zscore=False)
                for piece, n, seg in zip(pieces, lengths, segments)])
            raw_tr = np.arange(2, n_trs - 2)
            near_cut = np.min(np.abs(raw_tr[:, None] + 0.5 - np.array([14, 26])[None]), axis=1) < 3
            np.testing.assert_allclose(split_rate[~near_cut], whole_rate[~near_cut], atol=1e-5)
            assert not np.allclose(split_rate[near_cut], whole_rate[near_cut], atol=1e-3)


def bold_data_of(root: Path, subject: str) -> np.ndarray:
    """(n_trs, n_voxels) of a chapter run under its ingested mask, by an explicit voxel loop."""
    data = nib.load(root / f"sub-{subject}" / "func" / f"sub-{subject}_task-chapter_bold.nii.gz").get_fdata()
    mask = intensity_mask_reference(data.mean(axis=3))
    return np.stack([data[i, j, k] for i, j, k in np.ndindex(*GRID) if mask[i, j, k]], axis=1).astype(np.float32)


def intensity_mask_reference(mean: np.ndarray) -> np.ndarray:
    bright = mean[mean > mean.mean() / 8]
    return mean > 0.8 * bright.mean()


def split_words_in_run_time(words: pd.DataFrame, starts, lengths) -> list[pd.DataFrame]:
    """Words by midpoint into segments [start, start + length) TRs, times from each segment start."""
    midpoints = (words["onset"] + words["offset"]) / 2
    pieces = []
    for position, (start, length) in enumerate(zip(starts, lengths)):
        low = -np.inf if position == 0 else start * TR
        high = np.inf if position == len(starts) - 1 else (start + length) * TR
        piece = words[(midpoints >= low) & (midpoints < high)]
        pieces.append(piece.assign(onset=piece["onset"] - start * TR, offset=piece["offset"] - start * TR))
    return pieces


def test_split_ds003020(ds_root, tmp_path):
    """Already-preprocessed hf5 (n − 10 − 10 rows) cut at 24 s: rows and trims per segment."""
    config = ds_config(ds_root, train_stories=["alphaseg1"], test_stories=["alphaseg2", "beta"],
                       segments={"alpha": {"boundaries_s": [24.0]}})
    paths = outputs(tmp_path)
    ingest_subject(config, "UTS01", [], **paths)
    with h5py.File(paths["out_responses"], "r") as h5, h5py.File(
            ds_root / "derivative/preprocessed_data/UTS01/alpha.hf5", "r") as source:
        assert set(h5) == {"alphaseg1", "alphaseg2", "beta"}
        first, second = h5["alphaseg1"], h5["alphaseg2"]
        # raw TRs [0, 12) and [12, 30) of 30; the hf5 rows are raw TRs [10, 20)
        bookkeeping = [(int(g.attrs["n_trs_raw"]), int(g.attrs["trim_start"]), int(g.attrs["trim_end"]))
                       for g in (first, second)]
        assert bookkeeping == [(12, 10, 0), (18, 0, 10)]
        np.testing.assert_array_equal(first["data"][()], source["data"][:2])
        np.testing.assert_array_equal(second["data"][()], source["data"][2:])
    words = ingest_words(config, "alphaseg1", tmp_path / "words.tsv")
    assert list(words["word"]) == ["so", "there"]
    with pytest.raises(InputError, match="'alphaseg2' .*24 to 60 s of run 'alpha'.* holds no words"):
        ingest_words(config, "alphaseg2", tmp_path / "words2.tsv")


TWO_SEGMENTS = (["chapterseg1"], ["chapterseg2"])


def test_split_run_with_repeats_and_confounds(bids_root, tmp_path):
    """A story of 2 runs (fMRIPrep, confounds) cut at 20 s: every repeat and its confounds cut alike."""
    fmriprep = dict(space="T1w", desc="preproc", word_column="word", events_trial_type="word")
    whole_paths, split_paths = outputs(tmp_path / "whole"), outputs(tmp_path / "split")
    ingest_subject(bids_config(bids_root, mask=None, bids=fmriprep), "01", ["csf"], **whole_paths)
    ingest_subject(bids_config(bids_root, mask=None, bids=fmriprep, test_stories=["betaseg1", "betaseg2"],
                               segments={"beta": {"boundaries_s": [20.0]}}), "01", ["csf"], **split_paths)
    with h5py.File(whole_paths["out_responses"], "r") as whole, h5py.File(split_paths["out_responses"], "r") as split:
        assert set(split) == {"alpha", "betaseg1", "betaseg2"}
        for name in ("repeats", "confounds"):
            joined = np.concatenate([split["betaseg1"][name][()], split["betaseg2"][name][()]], axis=1)
            np.testing.assert_array_equal(joined, whole["beta"][name][()])
        assert split["betaseg1"]["repeats"].shape[:2] == (2, 10)
        assert list(split["betaseg2"]["confounds"].attrs["names"]) == ["csf"]
        assert (int(split["betaseg2"].attrs["segment_start_tr"]), int(split["betaseg2"].attrs["n_trs_raw"])) == (10, 20)


@pytest.mark.parametrize("segments, stories, message", [
    ({"chapter": {"boundaries_s": [30.0, 90.0]}}, None, r"90 s is outside the run \(0 to 80 s: 40 TRs"),
    ({"chapter": {"boundaries_s": [-2.0]}}, TWO_SEGMENTS, r"-2 s is outside the run"),
    ({"chapter": {"boundaries_s": [31.0]}}, TWO_SEGMENTS, r"31 s is not at a TR boundary.*e.g. 30 or 32 s"),
    ({"chapter": {"boundaries_s": [2.0, 30.0]}}, None, r"'chapterseg1' \(raw TRs 0 to 1 .*keeps 0 TR"),
    ({"chapter": {"boundaries_s": [50.0, 30.0]}}, None, r"must increase strictly"),
    ({"chapter": {"n_segments": 1}}, None, r"n_segments must be an integer >= 2"),
    ({"chapter": {"n_segments": 19}}, None, r"n_segments = 19, but the run keeps only 36 TRs"),
    ({"chapter": {"n_segments": 2, "boundaries_s": [30.0]}}, None, r"exactly one of n_segments or boundaries_s"),
    ({"chapter": {"n_segments": 3}, "chapterseg1": {"n_segments": 2}}, None,
     r"segment 1 of split run 'chapter' is named 'chapterseg1', like the split run"),
    (None, (["chapter"], ["chapterseg3"]), r"story 'chapter' is listed .* list its segments instead: "
                                            r"chapterseg1, chapterseg2, chapterseg3"),
    (None, (["chapterseg1", "chapterseg2"], ["chapterseg4"]), r"'chapterseg4' names no segment of split run 'chapter'"),
])
def test_split_run_bad_config(chapter_root, tmp_path, segments, stories, message):
    overrides = {} if stories is None else dict(train_stories=stories[0], test_stories=stories[1])
    config = chapter_config(chapter_root, segments=segments, **overrides)
    paths = outputs(tmp_path)
    with pytest.raises(InputError, match=message) as caught:
        ingest_subject(config, "01", [], **paths)
    if "outside the run" in message or "TR boundary" in message:
        assert caught.value.path.endswith("sub-01_task-chapter_bold.nii.gz")
    assert_no_outputs(paths.values())
    with pytest.raises(InputError, match=message):
        ingest_words(config, "chapterseg1", tmp_path / "words.tsv")
    assert not (tmp_path / "words.tsv").exists()


def test_split_run_name_collisions_and_empty_segment(chapter_root, tmp_path):
    # The dataset itself holds a task named like a segment.
    root = _copy(chapter_root, tmp_path)
    func = root / "sub-01" / "func"
    shutil.copy(func / "sub-01_task-chapter_bold.nii.gz", func / "sub-01_task-chapterseg2_bold.nii.gz")
    paths = outputs(tmp_path)
    with pytest.raises(InputError, match="dataset has a story 'chapterseg2', which is also the name of segment 2"):
        ingest_subject(chapter_config(root), "01", [], **paths)
    assert_no_outputs(paths.values())
    # Cut points around the word-free stretch 40-56 s leave a segment without words.
    config = chapter_config(chapter_root, segments={"chapter": {"boundaries_s": [42.0, 54.0]}})
    with pytest.raises(InputError, match="'chapterseg2' \\(scan time 42 to 54 s of run 'chapter'\\) holds no words"):
        ingest_words(config, "chapterseg2", tmp_path / "words.tsv")


# --------------------------------------------------------------------------- configs


VARIANTS = {"alice_eeg.yaml": "alice.yaml"}  # override files, passed after the config they extend


@pytest.mark.parametrize("config_path", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_configs_validate(config_path):
    config = yaml.safe_load(config_path.read_text())
    if config_path.name in VARIANTS:
        config = {**yaml.safe_load((REPO / "config" / VARIANTS[config_path.name]).read_text()), **config}
    validate(config)


ALICE_TRS = 372  # 12.4 min at TR 2 s


def test_alice_config_on_an_alice_shaped_dataset(tmp_path):
    """config/alice.yaml as shipped (root replaced): one run cut into 6 stories that encoding
    accepts (>= 2 training stories, a disjoint test story), each with words and kept TRs."""
    from brainllm.preprocess import preprocess_subject

    config = yaml.safe_load((REPO / "config" / "alice.yaml").read_text())
    validate(config)
    dataset = dict(config["dataset"], root=str(tmp_path / "alice"))
    root = Path(dataset["root"])
    subject = dataset["subjects"][0]
    (root / "stimuli").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "alice", "BIDSVersion": "1.8.0"}))
    rng = np.random.default_rng(4)
    save_image(root / f"sub-{subject}" / "func" / f"sub-{subject}_task-alice_bold.nii.gz",
               (100 + rng.normal(size=(2, 2, 2, ALICE_TRS))).astype(np.float32))
    onsets = np.arange(20.0, 720.0, 0.4)
    pd.DataFrame({"word": [f"w{i}" for i in range(len(onsets))], "onset": onsets, "offset": onsets + 0.3}).to_csv(
        root / dataset["wordcsv"]["words"], index=False)

    train, test = dataset["train_stories"], dataset["test_stories"]
    assert len(train) >= 2 and not set(train) & set(test)
    n_words = [len(ingest_words(dataset, story, tmp_path / f"{story}.tsv")) for story in train + test]
    assert min(n_words) > 0 and sum(n_words) == len(onsets)
    ingest_subject(dataset, subject, [], out_responses=tmp_path / "in.h5", out_mask=tmp_path / "mask.nii.gz",
                   out_mean=tmp_path / "mean.nii.gz")
    preprocess_subject(tmp_path / "in.h5", tmp_path / "mask.nii.gz", tmp_path / "out.h5", tmp_path / "out_mask.nii.gz",
                       config["preprocess"], trim_start=dataset["trim_start"], trim_end=dataset["trim_end"])
    with h5py.File(tmp_path / "out.h5", "r") as h5:
        assert sorted(h5) == sorted(train + test)
        kept = [h5[story]["data"].shape[0] for story in train + test]
        assert sum(kept) == ALICE_TRS - dataset["trim_start"] - dataset["trim_end"]
        assert max(kept) - min(kept) <= 1  # n_segments: equal kept lengths


# --------------------------------------------------------------------------- demo: replica == BIDS


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo dataset, generated once; random word features stand in for the model (the
    comparison below does not depend on what was planted)."""
    demo = pytest.importorskip("brainllm.demo")
    rng = np.random.default_rng(0)
    features = {layer: {story: rng.normal(size=(len(demo.story_words(demo.story_text(story))), 8)) for story in demo.story_names()}
                for layer in demo.planted_layers()}
    out = tmp_path_factory.mktemp("demo")
    demo.generate_demo(out, 20241130, word_features=features, japanese=False)
    return out


def test_demo_replica_and_bids_agree(demo_dir, tmp_path):
    from brainllm.preprocess import preprocess_subject

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    bids = dict(config["dataset"], root=str(demo_dir / "bids"))
    replica = dict(bids, layout="ds003020", root=str(demo_dir / "ds003020"), bids=None, atlas=None,
                   atlas_labels=None, mask="derivative/masks/{subject}_mask.nii.gz")
    stories = bids["train_stories"] + bids["test_stories"]
    for story in stories:
        from_bids = ingest_words(bids, story, tmp_path / "bids" / f"{story}.tsv")
        from_replica = ingest_words(replica, story, tmp_path / "replica" / f"{story}.tsv")
        assert list(from_bids["word"]) == list(from_replica["word"]), story
        np.testing.assert_allclose(from_bids[["onset", "offset"]].to_numpy(),
                                   from_replica[["onset", "offset"]].to_numpy(), rtol=0, atol=1e-6)

    subject = bids["subjects"][0]
    cleaned = {}
    for name, dataset in (("bids", bids), ("replica", replica)):
        folder = tmp_path / name
        ingest_subject(dataset, subject, [], out_responses=folder / "ingested.h5", out_mask=folder / "mask.nii.gz",
                       out_mean=folder / "mean.nii.gz")
        preprocess_subject(folder / "ingested.h5", folder / "mask.nii.gz", folder / "cleaned.h5",
                           folder / "cleaned_mask.nii.gz", config["preprocess"],
                           trim_start=bids["trim_start"], trim_end=bids["trim_end"])
        cleaned[name] = folder
    masks = [np.asanyarray(nib.load(cleaned[name] / "cleaned_mask.nii.gz").dataobj) for name in cleaned]
    np.testing.assert_array_equal(masks[0], masks[1])
    with h5py.File(cleaned["bids"] / "cleaned.h5", "r") as from_bids, \
            h5py.File(cleaned["replica"] / "cleaned.h5", "r") as from_replica:
        for story in stories:
            ours, theirs = from_bids[story]["data"][()], from_replica[story]["data"][()]
            assert ours.shape == theirs.shape, story
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=story)
            assert from_bids[story].attrs["n_trs_raw"] == from_replica[story].attrs["n_trs_raw"]
        test_story = bids["test_stories"][0]
        repeats = from_bids[test_story]["repeats"][()]
        assert repeats.shape[0] == 3
        np.testing.assert_allclose(repeats.mean(axis=0), from_bids[test_story]["data"][()], atol=1e-6)


# ---------------------------------------------------------------- every file read is a rule input

_OPENED: list[str] | None = None


def _audit(event, args):
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_audit)


@pytest.fixture
def opened(monkeypatch):
    """Paths of the files opened while the test runs (Python-level opens and HDF5 files)."""
    global _OPENED
    import brainllm.ingest as ingest_module

    _OPENED = []
    real_open_h5 = ingest_module.open_h5
    monkeypatch.setattr(ingest_module, "open_h5", lambda path, *a, **k: _OPENED.append(os.path.realpath(path)) or real_open_h5(path, *a, **k))
    yield _OPENED
    _OPENED = None


def _read_under(root: Path, opened: list[str]) -> set[str]:
    root = os.path.realpath(root)
    return {path for path in opened if path.startswith(root + os.sep) and os.path.isfile(path)}


def _listed(files: list[str]) -> set[str]:
    assert all(os.path.isfile(path) for path in files)
    return {os.path.realpath(path) for path in files}


@pytest.mark.parametrize("fmriprep", [False, True])
def test_every_file_ingestion_reads_is_listed_as_an_input(bids_root, tmp_path, opened, fmriprep):
    from brainllm import sources

    overrides = dict(mask=None, bids=dict(space="T1w", desc="preproc", word_column="word", events_trial_type="word")) if fmriprep else {}
    config = bids_config(bids_root, **overrides)
    ingest_subject(config, "02", [], **outputs(tmp_path))
    read = _read_under(bids_root, opened)
    listed = _listed(sources.subject_sources(config, "02"))
    assert read and read <= listed, sorted(read - listed)
    assert not [path for path in listed if "sub-01" in path]  # nothing of another subject
    opened.clear()
    ingest_words(config, "beta", tmp_path / "words.tsv")
    read = _read_under(bids_root, opened)
    listed = _listed(sources.story_sources(config, "beta"))
    assert read and read <= listed, sorted(read - listed)
    assert not [path for path in listed if "alpha" in Path(path).name]


def test_every_file_ds003020_ingestion_reads_is_listed(ds_root, tmp_path, opened):
    from brainllm import sources

    config = ds_config(ds_root)
    ingest_subject(config, "UTS01", [], **outputs(tmp_path))
    ingest_words(config, "alpha", tmp_path / "words.tsv")
    read = _read_under(ds_root, opened)
    listed = _listed(sources.subject_sources(config, "UTS01") + sources.story_sources(config, "alpha"))
    assert len(read) >= 4 and read <= listed, sorted(read - listed)


def test_atlas_files_are_listed(bids_root, tmp_path, opened):
    from brainllm import sources

    labels = tmp_path / "labels.tsv"
    config = bids_config(bids_root, atlas="derivatives/masks/sub-{subject}_mask.nii.gz", atlas_labels=str(labels))
    labels.write_text("index\tname\n1\tcortex\n")
    paths = outputs(tmp_path)
    ingest_subject(config, "01", [], **paths)
    opened.clear()
    ingest_atlas(config, "01", paths["out_mask"], tmp_path / "atlas.nii.gz", tmp_path / "atlas.tsv")
    read = _read_under(bids_root, opened) | _read_under(tmp_path, opened) - {os.path.realpath(paths["out_mask"])}
    assert read == _listed(sources.atlas_sources(config, "01"))


# --------------------------------------------------------------------------- sentences → words


JAPANESE_ROWS = [("word", "灯台守の娘は、", 10.0, 1.4), ("word", "毎晩海を見ていた。", 12.0, 1.8)]


def test_sentence_rows_are_segmented_into_words_with_fugashi(bids_root, tmp_path):
    root = _copy(bids_root, tmp_path)
    for subject in ("01", "02"):
        write_events(root / f"sub-{subject}" / "func" / f"{stem(subject, 'alpha', None)}_events.tsv", rows=JAPANESE_ROWS)
    config = bids_config(root, language="ja", word_separator="", segmenter="fugashi")
    words = ingest_words(config, "alpha", tmp_path / "words.tsv")
    assert words["word"].tolist() == ["灯台", "守", "の", "娘", "は", "毎晩", "海", "を", "見", "て", "い", "た"]  # punctuation dropped
    first = words.iloc[:5]  # 灯台守の娘は: 6 characters over 1.4 s
    np.testing.assert_allclose(first["onset"], 10.0 + 1.4 * np.array([0, 2, 3, 4, 5]) / 6)
    np.testing.assert_allclose(first["offset"], 10.0 + 1.4 * np.array([2, 3, 4, 5, 6]) / 6)
    assert words["offset"].iloc[-1] == pytest.approx(13.8)  # the words fill their row; punctuation takes no time
    assert (np.diff(words["onset"]) > 0).all()


def test_an_unknown_or_missing_segmenter_is_named(monkeypatch):
    from brainllm import segmentation

    with pytest.raises(InputError, match="dataset.segmenter 'jieba'"):
        segmentation.analyser("jieba")
    monkeypatch.setitem(__import__("sys").modules, "fugashi", None)  # as if not installed
    with pytest.raises(InputError, match="dataset.segmenter is fugashi but fugashi is not installed.*pip install fugashi"):
        segmentation.analyser("fugashi")


@pytest.mark.parametrize("dataset, message", [
    ({"segmenter": "fugashi", "language": "en", "word_separator": ""}, "dataset.language is 'en'"),
    ({"segmenter": "fugashi", "language": "ja", "word_separator": " "}, 'set dataset.word_separator: ""'),
])
def test_a_segmenter_inconsistent_with_the_language_stops_before_any_job(dataset, message):
    from brainllm import configuration

    with pytest.raises(InputError, match=message):
        configuration.check_segmenter(dataset)
    configuration.check_segmenter({"segmenter": "fugashi", "language": "ja", "word_separator": ""})
