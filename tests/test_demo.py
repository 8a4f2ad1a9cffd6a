"""brainllm.demo: layout, determinism, timings, and recovery of the planted responses."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from brainllm import demo, demo_eeg
from brainllm.io import InputError
from brainllm.preprocess import clean_run
from brainllm.textgrid import read_textgrid
from conftest import REPO

SEED = 20241130
STORIES = list(demo.TRAIN_STORIES) + [demo.TEST_STORY]


@pytest.fixture(scope="session")
def generated(demo_run):
    """The demo the default workflow generated (packaged MiniLM, the config's seed): (out_dir, ground truth)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert config["demo"]["seed"] == SEED
    out = demo_run / config["demo"]["out_dir"]
    return out, json.loads((out / "ground_truth.json").read_text())


@pytest.fixture(scope="session")
def stored_word_features(generated):
    out, _ = generated
    with h5py.File(out / "planted_features.h5", "r") as h5:
        return {layer: {story: h5[story][f"layer_{layer:02d}"][()] for story in STORIES} for layer in demo.planted_layers()}


@pytest.fixture(scope="session")
def regenerated(generated, stored_word_features, tmp_path_factory):
    """Same seed and a different seed, reusing the (seed-independent) word features."""
    root = tmp_path_factory.mktemp("regen")
    same = demo.generate_demo(root / "same", SEED, word_features=stored_word_features)
    other = demo.generate_demo(root / "other", SEED + 1, word_features=stored_word_features, japanese=False)
    return {"same": (root / "same", same), "other": (root / "other", other)}


def bids_stem(story: str, subject: str, run: int | None) -> str:
    """BIDS file stem; the repeated test story defaults to run 1."""
    if run is None and story == demo.TEST_STORY:
        run = 1
    return f"sub-{subject}_task-{story}" + (f"_run-{run}" if run else "")


def events(out: Path, story: str, subject: str = "UTS01", run: int | None = None) -> pd.DataFrame:
    path = out / "bids" / f"sub-{subject}" / "func" / f"{bids_stem(story, subject, run)}_events.tsv"
    return pd.read_csv(path, sep="\t")


def bold_path(out: Path, story: str, subject: str = "UTS01", run: int | None = None) -> Path:
    return out / "bids" / f"sub-{subject}" / "func" / f"{bids_stem(story, subject, run)}_bold.nii.gz"


def hf5(out: Path, subject: str, story: str) -> np.ndarray:
    with h5py.File(out / "ds003020" / "derivative" / "preprocessed_data" / subject / f"{story}.hf5", "r") as h5:
        return h5["data"][()]


def lanczos_loop(values, old_times, new_times, tr, window=3):
    """Reference, one TR at a time: L(x) = a·sin(πx)·sin(πx/a)/(π²x²), L(0) = 1, 0 beyond a."""
    out = np.zeros((len(new_times), values.shape[1]))
    for i, t_new in enumerate(new_times):
        x = (t_new - np.asarray(old_times)) / tr
        with np.errstate(divide="ignore", invalid="ignore"):
            weights = window * np.sin(np.pi * x) * np.sin(np.pi * x / window) / (np.pi**2 * x**2)
        weights[x == 0] = 1.0
        weights[np.abs(x) > window] = 0.0
        out[i] = weights @ values
    return out


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_truth_and_bytes(generated, regenerated):
    out, truth = generated
    same_out, same_truth = regenerated["same"]
    assert json.loads(json.dumps(same_truth)) == truth
    assert json.loads((same_out / "ground_truth.json").read_text()) == truth
    for path in (bold_path(out, "orchard", "UTS02"), bold_path(out, demo.TEST_STORY, "UTS01", 2)):
        assert path.read_bytes() == (same_out / path.relative_to(out)).read_bytes()
    tg = Path("ds003020/derivative/TextGrids/lighthouse.TextGrid")
    assert (out / tg).read_bytes() == (same_out / tg).read_bytes()


def test_different_seed_differs(generated, regenerated):
    out, truth = generated
    other_out, other = regenerated["other"]
    assert other["seed"] != truth["seed"]
    assert other["per_subject"]["UTS01"]["snr"] != truth["per_subject"]["UTS01"]["snr"]
    path = bold_path(out, "orchard", "UTS02")
    assert path.read_bytes() != (other_out / path.relative_to(out)).read_bytes()
    assert not np.array_equal(events(out, "orchard")["onset"], events(other_out, "orchard")["onset"])


def test_planted_features_equal_plain_forward_pass(stored_word_features):
    """A word's feature is the state before [SEP] of its own 20-word window (full model)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir = demo.default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    words = [w.word for w in demo.story_words(demo.story_text(demo.TEST_STORY))]
    checked = list(range(0, 5)) + [i for i, w in enumerate(words) if "'" in w][:5] + [len(words) - 1]
    with torch.inference_mode():
        for i in checked:
            encoded = tokenizer(" ".join(words[max(0, i - 19) : i + 1]), return_tensors="pt")
            state = model(**encoded, output_hidden_states=True).hidden_states[demo.PLANTED_LAYER][0, -2]
            np.testing.assert_allclose(stored_word_features[demo.PLANTED_LAYER][demo.TEST_STORY][i], state.numpy(), atol=1e-5)


# --------------------------------------------------------------------------- stimuli


def test_word_rate_and_scan_length(generated):
    out, truth = generated
    respdict = json.loads((out / "ds003020" / "derivative" / "respdict.json").read_text())
    assert respdict == truth["stories"]["n_trs_raw"]
    for story in STORIES:
        words = events(out, story)
        spoken = words["onset"].iloc[-1] + words["duration"].iloc[-1] - words["onset"].iloc[0]
        assert 2.0 <= len(words) / spoken <= 3.0, story
        assert 550 <= len(words) == truth["stories"]["n_words"][story] <= 700
        assert words["onset"].iloc[0] >= demo.AUDIO_ONSET_S
        n_trs = respdict[story]
        assert 140 <= n_trs <= 200
        assert n_trs * demo.TR >= words["onset"].iloc[-1] + words["duration"].iloc[-1] + 10.0
        assert (n_trs - 1) * demo.TR < words["onset"].iloc[-1] + words["duration"].iloc[-1] + 13.0


def test_textgrid_tiers_match_events(generated):
    out, _ = generated
    for story in STORIES:
        grid = read_textgrid(out / "ds003020" / "derivative" / "TextGrids" / f"{story}.TextGrid")
        assert grid.text_format == "long"
        assert [tier.name for tier in grid.tiers] == ["phone", "word"]
        phones, words = grid.tiers[0].intervals, grid.tiers[1].intervals
        for tier in (phones, words):  # contiguous, covering the whole audio
            assert tier[0][0] == 0 and tier[-1][1] == pytest.approx(grid.xmax)
            assert all(a[1] == pytest.approx(b[0]) for a, b in zip(tier, tier[1:]))
            assert all(end > start for start, end, _ in tier)
        labels = [text for _, _, text in words]
        assert {"sp", "{LG}", "{NS}"} <= set(labels)
        spoken = [(s, e, t) for s, e, t in words if t not in ("sp", "{LG}", "{NS}")]
        table = events(out, story)
        assert [t for _, _, t in spoken] == list(table["word"])
        np.testing.assert_allclose([s + demo.AUDIO_ONSET_S for s, _, _ in spoken], table["onset"], atol=1e-6)
        np.testing.assert_allclose([e - s for s, e, _ in spoken], table["duration"], atol=1e-6)
        assert len(phones) > 2 * len(spoken)  # words are subdivided into phones
        word_edges = {round(x, 6) for s, e, _ in words for x in (s, e)}
        assert word_edges <= {round(x, 6) for s, e, _ in phones for x in (s, e)}


def test_events_columns(generated):
    out, _ = generated
    for story, run in [("tidepool", None)] + [(demo.TEST_STORY, r) for r in (1, 2, 3)]:
        table = events(out, story, "UTS02", run)
        assert list(table.columns) == ["onset", "duration", "trial_type", "word"]
        assert set(table["trial_type"]) == {"word"}
        assert (table["duration"] > 0).all() and table["onset"].is_monotonic_increasing
        assert not table["word"].str.contains(r"^sp$|[{}]", regex=True).any()
    assert events(out, demo.TEST_STORY, "UTS01", 1).equals(events(out, demo.TEST_STORY, "UTS02", 3))


def test_story_words_strip_punctuation():
    words = demo.story_words('"Don\'t," she said. It\'s the keeper\'s lamp -- really? Yes!')
    assert [w.word for w in words] == ["don't", "she", "said", "it's", "the", "keeper's", "lamp", "really", "yes"]
    assert [w.pause_after for w in words] == ["comma", "none", "sentence", "none", "none", "none", "none", "sentence", "sentence"]


# --------------------------------------------------------------------------- volumes and responses


def test_replica_rows_and_masks(generated):
    out, truth = generated
    respdict = truth["stories"]["n_trs_raw"]
    for subject in demo.SUBJECTS:
        mask = np.asanyarray(nib.load(out / "ds003020" / "derivative" / "masks" / f"{subject}_mask.nii.gz").dataobj) > 0
        assert 2000 <= mask.sum() == truth["per_subject"][subject]["n_voxels"] <= 4000
        for story in STORIES:
            data = hf5(out, subject, story)
            assert data.dtype == np.float32
            assert data.shape == (respdict[story] - 20, mask.sum()), (subject, story)
    train = hf5(out, "UTS01", "orchard")
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=0), 1, atol=1e-3)


def test_bids_bold_is_the_replica_recording(generated):
    out, truth = generated
    mask = np.asanyarray(nib.load(out / "bids/derivatives/demo/sub-UTS02/func/sub-UTS02_desc-brain_mask.nii.gz").dataobj) > 0
    runs = []
    for run in (1, 2, 3):
        image = nib.load(bold_path(out, demo.TEST_STORY, "UTS02", run))
        assert image.ndim == 4 and image.get_data_dtype() == np.float32
        assert image.header.get_zooms()[3] == pytest.approx(2.0)
        assert image.header.get_xyzt_units() == ("mm", "sec")
        assert not np.allclose(image.affine, np.eye(4))
        np.testing.assert_allclose(np.abs(np.diag(image.affine)[:3]), 3.0)
        series = np.asanyarray(image.dataobj)[mask].T  # (n_trs, n_voxels), mask C order
        assert series.shape[0] == truth["stories"]["n_trs_raw"][demo.TEST_STORY]
        assert series.mean() > 500  # raw scanner units, not z-scores
        runs.append(clean_run(series, 2.0, **demo.PREPROCESS))
    np.testing.assert_allclose(np.mean(runs, axis=0), hf5(out, "UTS02", demo.TEST_STORY), atol=1e-5)
    single = np.asanyarray(nib.load(bold_path(out, "lighthouse", "UTS02")).dataobj)[mask].T
    np.testing.assert_allclose(clean_run(single, 2.0, **demo.PREPROCESS), hf5(out, "UTS02", "lighthouse"), atol=1e-5)
    sidecar = json.loads((out / "bids" / f"task-{demo.TEST_STORY}_bold.json").read_text())
    assert sidecar == {"RepetitionTime": 2.0, "TaskName": demo.TEST_STORY}


def test_raw_drift_is_removed_by_detrending(generated):
    """Raw series drift (detrending matters); cleaned training data has no slow trend left."""
    out, truth = generated
    mask = np.asanyarray(nib.load(out / "ds003020/derivative/masks/UTS01_mask.nii.gz").dataobj) > 0
    raw = np.asanyarray(nib.load(bold_path(out, "glassmaker")).dataobj)[mask].T.astype(float)
    time = np.linspace(-1, 1, raw.shape[0])
    design = np.column_stack([np.ones_like(time), time, time**2])
    slow = design @ np.linalg.lstsq(design, raw, rcond=None)[0]
    assert np.median((slow - slow.mean(0)).var(0) / raw.var(0)) > 0.2
    cleaned = hf5(out, "UTS01", "glassmaker")
    kept = design[10:-10]
    slow_left = kept @ np.linalg.lstsq(kept, cleaned, rcond=None)[0]
    assert np.median(slow_left.var(0)) < 0.03


def test_pybids_finds_subjects_tasks_runs(generated):
    bids = pytest.importorskip("bids")
    out, _ = generated
    layout = bids.BIDSLayout(out / "bids")
    assert layout.get_subjects() == list(demo.SUBJECTS)
    assert sorted(layout.get_tasks()) == sorted(STORIES)
    assert layout.get_runs(subject="UTS01", task=demo.TEST_STORY) == [1, 2, 3]
    bold = layout.get(subject="UTS02", task="nightmarket", suffix="bold", extension=".nii.gz")
    assert len(bold) == 1 and bold[0].get_metadata()["RepetitionTime"] == 2.0
    assert len(layout.get(suffix="events", extension=".tsv", datatype="func")) == len(demo.SUBJECTS) * (len(STORIES) + 2)
    eeg = layout.get(subject="UTS02", task="orchard", datatype="eeg", suffix="eeg", extension=".vhdr")
    assert len(eeg) == 1 and eeg[0].get_metadata()["SamplingFrequency"] == demo_eeg.EEG_SFREQ
    assert len(layout.get(suffix="events", extension=".tsv", datatype="eeg")) == len(demo.EEG_SUBJECTS) * len(STORIES)
    with_derivatives = bids.BIDSLayout(out / "bids", derivatives=True)
    masks = with_derivatives.get(scope="derivatives", desc="brain", suffix="mask", extension=".nii.gz")
    assert len(masks) == len(demo.SUBJECTS)


def test_rois_snr_and_ceilings(generated):
    out, truth = generated
    labels = pd.read_csv(out / "bids/derivatives/demo/desc-rois_dseg.tsv", sep="\t")
    assert list(labels.columns) == ["index", "name"] and len(labels) >= 4
    for subject in demo.SUBJECTS:
        info = truth["per_subject"][subject]
        folder = out / "bids/derivatives/demo" / f"sub-{subject}" / "func"
        mask = np.asanyarray(nib.load(folder / f"sub-{subject}_desc-brain_mask.nii.gz").dataobj) > 0
        atlas = np.asanyarray(nib.load(folder / f"sub-{subject}_desc-rois_dseg.nii.gz").dataobj)
        assert set(np.unique(atlas)) == {0} | set(labels["index"])
        assert info["roi"] == atlas[mask].tolist()
        snr = np.array(info["snr"])
        single, test = np.array(info["ceiling_r_single_run"]), np.array(info["ceiling_r_test"])
        signal = np.zeros(snr.size, bool)
        signal[info["signal_voxels"]] = True
        assert np.array_equal(signal, snr > 0)
        assert 1 - signal.mean() >= 0.3
        assert ((single[signal] > 0) & (single[signal] < 1)).all() and (single[~signal] == 0).all()
        assert (test[~signal] == 0).all() and (test[signal] > single[signal]).all()
        np.testing.assert_allclose(single, np.sqrt(snr / (1 + snr)), atol=1e-5)
        np.testing.assert_allclose(test, np.sqrt(3 * snr / (1 + 3 * snr)), atol=1e-5)
        roi = np.array(info["roi"])
        assert not signal[roi == 0].any()  # outside the regions: pure noise
        levels = {name: snr[roi == index].mean() for index, name in zip(labels["index"], labels["name"])}
        assert len({round(v, 2) for v in levels.values()}) == len(levels)  # regions differ in SNR


def test_planted_signal_is_recovered_near_ceiling(generated, stored_word_features):
    """Fit the known delayed planted features (independent Lanczos) on the training stories;
    predicting the test story reaches close to the stored ceiling in signal voxels, ~0 elsewhere."""
    out, truth = generated
    with h5py.File(out / "planted_features.h5", "r") as h5:
        midpoints = {s: (h5[s]["onset"][()] + h5[s]["offset"][()]) / 2 for s in STORIES}

    def delayed(story):
        n_trs = truth["stories"]["n_trs_raw"][story]
        grid = lanczos_loop(stored_word_features[demo.PLANTED_LAYER][story].astype(float), midpoints[story], (np.arange(n_trs) + 0.5) * 2.0, 2.0)
        kept = grid[10 : n_trs - 10]
        grid = (grid - kept.mean(0)) / kept.std(0)
        out_rows = np.zeros_like(grid)
        for delay, weight in zip(truth["delays"], truth["delay_weights"]):
            out_rows[delay:] += weight * grid[: n_trs - delay]
        return out_rows[10 : n_trs - 10]

    info = truth["per_subject"]["UTS01"]
    X_train = np.vstack([delayed(s) for s in truth["stories"]["train"]])
    Y_train = np.vstack([hf5(out, "UTS01", s) for s in truth["stories"]["train"]]).astype(float)
    coef = np.linalg.solve(X_train.T @ X_train + 3e3 * np.eye(X_train.shape[1]), X_train.T @ Y_train)
    fitted = X_train @ coef  # reduced rank: keep its top right singular vectors (via the small Gram matrix)
    _, left = np.linalg.eigh(fitted @ fitted.T)
    right = fitted.T @ left[:, -info["rank"] :]
    right /= np.linalg.norm(right, axis=0)
    coef = coef @ right @ right.T
    prediction = delayed(demo.TEST_STORY) @ coef
    response = hf5(out, "UTS01", demo.TEST_STORY)
    pz = (prediction - prediction.mean(0)) / prediction.std(0)
    rz = (response - response.mean(0)) / response.std(0)
    r = (pz * rz).mean(0)
    signal = np.array(info["signal_voxels"])
    noise = np.setdiff1d(np.arange(r.size), signal)
    ceiling = np.array(info["ceiling_r_test"])[signal]
    assert 0.85 * ceiling.mean() < r[signal].mean() < ceiling.mean() + 0.02
    assert abs(r[noise].mean()) < 0.03
    assert np.corrcoef(r[signal], ceiling)[0, 1] > 0.5  # higher SNR, higher r


# --------------------------------------------------------------------------- components


def test_lanczos_matches_loop():
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0, 60, 150))
    values = rng.normal(size=(150, 4))
    new = (np.arange(30) + 0.5) * 2.0
    np.testing.assert_allclose(demo.lanczos_resample(values, times, new, 2.0), lanczos_loop(values, times, new, 2.0), atol=1e-10)


def test_cleaning_operator_is_clean_run():
    x = np.random.default_rng(4).normal(size=(120, 5))
    expected = clean_run(x, 2.0, **dict(demo.PREPROCESS, zscore=False))
    np.testing.assert_allclose(demo.cleaning_operator(120, 2.0) @ x, expected, atol=1e-5)


def test_simulated_snr_gives_stored_ceiling():
    """On a long run, corr(cleaned signal, cleaned response) ≈ sqrt(SNR/(1+SNR)) per voxel."""
    rng = np.random.default_rng(5)
    volume = demo.make_subject_volume("UTS01", rng)
    n_trs = 1200
    latent = demo.lanczos_resample(rng.normal(size=(3000, demo.MIXING_RANK)), np.sort(rng.uniform(0, 2 * n_trs, 3000)),
                                   (np.arange(n_trs) + 0.5) * 2.0, 2.0)
    cleaning = demo.cleaning_operator(n_trs, 2.0)
    bold = demo.simulate_run(latent, volume, cleaning, rng)
    response = clean_run(bold, 2.0, **demo.PREPROCESS)
    signal = cleaning @ (latent @ volume.mixing)
    voxels = np.flatnonzero(volume.snr > 0)
    r = np.array([np.corrcoef(signal[:, v], response[:, v])[0, 1] for v in voxels])
    np.testing.assert_allclose(r.mean(), demo.ceiling_r(volume.snr[voxels], 1).mean(), atol=0.01)
    assert np.abs(r - demo.ceiling_r(volume.snr[voxels], 1)).max() < 0.12


def test_subjects_load_alike_on_their_common_grid():
    """Loadings √(1 − w²)·shared + w·own: unit variance in each subject, correlated 1 − w² between subjects."""
    shared = demo.shared_loadings(SEED)
    one, two = (demo.make_subject_volume(s, np.random.default_rng(i), shared) for i, s in enumerate(demo.SUBJECTS[:2]))
    common = one.mask & two.mask
    a, b = one.mixing[:, common[one.mask]], two.mixing[:, common[two.mask]]
    assert abs(a.std() - 1) < 0.03 and abs(b.std() - 1) < 0.03
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1] - (1 - demo.OWN_LOADING_WEIGHT**2)) < 0.02


# --------------------------------------------------------------------------- bad input


def test_refuses_to_clear_a_foreign_directory(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="not empty"):
        demo.generate_demo(tmp_path, SEED)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed(tmp_path, seed):
    with pytest.raises(InputError, match="demo.seed"):
        demo.generate_demo(tmp_path / "out", seed)


def test_word_features_must_match_words(tmp_path):
    with pytest.raises(InputError, match="one row per word"):
        demo.generate_demo(tmp_path / "out", SEED, word_features={layer: {s: np.zeros((3, 4)) for s in STORIES} for layer in demo.planted_layers()})


def test_planted_emotion_segments_and_voxels(generated):
    """The emotion table covers each story's audio in segments; its voxels (pure noise, outside the ROIs)
    follow the delayed category and valence design, fitted by an independent least-squares loop."""
    out, truth = generated
    table = pd.read_csv(out / truth["emotion"]["table"], sep="\t")
    assert set(table["story"]) == set(truth["stories"]["n_trs_raw"]) and set(table["emotion"]) == set(truth["emotion"]["categories"])
    for story, part in table.groupby("story", sort=False):
        assert part["onset"].iloc[0] == pytest.approx(demo.AUDIO_ONSET_S)
        np.testing.assert_allclose(part["onset"].to_numpy()[1:], (part["onset"] + part["duration"]).to_numpy()[:-1], atol=2e-3)
        assert (part["emotion"].to_numpy()[1:] != part["emotion"].to_numpy()[:-1]).all()
        assert part["valence"].between(-1, 1).all()
    for subject in demo.SUBJECTS:
        info = truth["per_subject"][subject]
        voxels = np.array(info["emotion_voxels"])
        assert len(voxels) == demo.EMOTION_VOXELS
        assert (np.array(info["snr"])[voxels] == 0).all() and (np.array(info["roi"])[voxels] == 0).all()
        others = np.setdiff1d(np.flatnonzero(np.array(info["snr"]) == 0), voxels)
        r_emotion, r_other = [], []
        for story in truth["stories"]["train"]:
            n_trs = truth["stories"]["n_trs_raw"][story]
            centres = (np.arange(n_trs) + 0.5) * demo.TR
            design = np.zeros((n_trs, 4))
            for row in table[table["story"] == story].itertuples():
                inside = (centres >= row.onset) & (centres < row.onset + row.duration)
                design[inside, truth["emotion"]["categories"].index(row.emotion)] = 1
                design[inside, 3] = row.valence
            lagged = sum(w * np.vstack([np.zeros((d, 4)), design[: n_trs - d]]) for d, w in zip(truth["delays"], truth["delay_weights"]))
            X = lagged[demo.TRIM_START : n_trs - demo.TRIM_END]
            X = np.column_stack([X - X.mean(0), np.ones(len(X))])
            Y = hf5(out, subject, story)
            fitted = X @ np.linalg.lstsq(X, Y, rcond=None)[0]
            r = np.array([np.corrcoef(fitted[:, v], Y[:, v])[0, 1] for v in range(Y.shape[1])])
            r_emotion.append(r[voxels].mean())
            r_other.append(r[others].mean())
        expected = np.sqrt(truth["emotion"]["snr"] / (1 + truth["emotion"]["snr"]))
        assert np.mean(r_emotion) > 0.8 * expected and np.mean(r_other) < 0.25  # 5 regressors in-sample on noise: r ≈ sqrt(5/n)
