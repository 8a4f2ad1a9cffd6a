"""The visual demo (brainllm.demo_visual): an image-viewing BIDS dataset with planted responses.

The files exist and agree with the ground truth; the planted signal is recovered by an
independent path (per-trial least squares against the known HRF, then ridge): pixels
predict V1 and not the noise voxels, the planted layer's mean-pooled features predict LOC
better than the first and last hidden states, and a linear decoder reconstructs the
16×16 luminance of the test images; the same seed gives the same dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import RidgeCV

from brainllm import demo_visual
from brainllm.images import grayscale, load_images

SEED = 7
SUBJECT = demo_visual.SUBJECTS[0]
ALPHAS = np.logspace(-1, 5, 13)
MASK = f"derivatives/demo/sub-{SUBJECT}/func/sub-{SUBJECT}_desc-brain_mask.nii.gz"
DSEG = f"derivatives/demo/sub-{SUBJECT}/func/sub-{SUBJECT}_desc-rois_dseg.nii.gz"
LABELS = "derivatives/demo/desc-rois_dseg.tsv"


def func(out: Path, run: str, suffix: str) -> Path:
    return out / f"sub-{SUBJECT}" / "func" / f"sub-{SUBJECT}_task-{run}_{suffix}"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("visual") / "visual"
    truth = demo_visual.generate_visual_demo(out, SEED)
    return out, truth


def columns_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    return (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))


def trial_estimates(out: Path, run: str, mask: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Per-trial responses ``(n_trials, n_voxels)``: least squares on the known HRF regressors plus a cubic drift."""
    bold = nib.load(func(out, run, "bold.nii.gz")).get_fdata()[mask].T
    events = pd.read_csv(func(out, run, "events.tsv"), sep="\t")
    trials = demo_visual.trial_regressors(events["onset"].to_numpy(), bold.shape[0])
    t = np.linspace(-1.0, 1.0, bold.shape[0])
    design = np.column_stack([trials, np.ones_like(t), t, t**2, t**3])
    betas = np.linalg.lstsq(design, bold, rcond=None)[0][: trials.shape[1]]
    return events["stim_file"].tolist(), betas


@pytest.fixture(scope="module")
def responses(generated):
    """Training trials (names, responses) and the test images' responses averaged over the three test runs."""
    out, truth = generated
    mask = nib.load(out / MASK).get_fdata() > 0
    names, train = [], []
    for run in truth["runs"]["train"]:
        run_names, betas = trial_estimates(out, run, mask)
        names += run_names
        train.append(betas)
    test_names = truth["images"]["test"]
    repeats = []
    for run in truth["runs"]["test"]:
        by_name = dict(zip(*trial_estimates(out, run, mask)))
        repeats.append(np.stack([by_name[name] for name in test_names]))
    return names, np.vstack(train), test_names, np.mean(repeats, axis=0)


def luminance(out: Path, names: list[str]) -> np.ndarray:
    return demo_visual.luminance_grid(load_images([out / "stimuli" / name for name in names])).reshape(len(names), -1)


def test_files_and_events(generated):
    out, truth = generated
    for name in ("dataset_description.json", "participants.tsv", "README", "ground_truth.json", MASK, DSEG, LABELS):
        assert (out / name).is_file(), name
    labels = pd.read_csv(out / LABELS, sep="\t")
    assert labels.to_dict("list") == {"index": [1, 2, 3], "name": ["V1", "LOC", "other"]}
    runs = truth["runs"]["train"] + truth["runs"]["test"]
    assert runs == [f"train{i:02d}" for i in range(1, 9)] + ["test01", "test02", "test03"]
    for run in runs:
        events = pd.read_csv(func(out, run, "events.tsv"), sep="\t")
        assert list(events.columns) == ["onset", "duration", "trial_type", "stim_file"]
        assert len(events) == (30 if run.startswith("train") else 24)
        assert (events["trial_type"] == "image").all() and (events["duration"] == 2.0).all()
        assert np.allclose(events["onset"], 8.0 + 4.0 * np.arange(len(events)))
        assert all((out / "stimuli" / name).is_file() for name in events["stim_file"])
        sidecar = json.loads(func(out, run, "bold.json").read_text())
        assert sidecar == {"RepetitionTime": 2.0, "TaskName": run}
        bold = nib.load(func(out, run, "bold.nii.gz"))
        assert bold.header.get_zooms()[3] == 2.0
        assert bold.shape[3] * 2.0 >= events["onset"].iloc[-1] + 16.0
    stimuli = sorted((out / "stimuli").glob("img_*.png"))
    assert len(stimuli) == 264
    images = load_images(stimuli)
    assert images.shape == (264, 64, 64, 3) and images.dtype == np.uint8
    gray = grayscale(images).reshape(264, -1)
    assert np.median(gray.std(axis=1)) > 0.1  # images with structure
    assert len({image.tobytes() for image in images}) == 264  # no two alike
    assert np.corrcoef(gray).min() < -0.3  # and some far apart


def test_ground_truth_consistency(generated):
    out, truth = generated
    assert json.loads((out / "ground_truth.json").read_text()) == truth
    assert truth["planted_layer"] == 2 and truth["pooling"] == "mean"
    assert truth["model"]["source"] == "package:brainllm.demo_visual"
    assert truth["reconstruction_size"] == 16 and truth["image_size"] == [64, 64] and truth["tr"] == 2.0
    subject = truth["per_subject"][SUBJECT]
    mask = nib.load(out / MASK).get_fdata() > 0
    dseg = np.asarray(nib.load(out / DSEG).dataobj)
    assert subject["n_voxels"] == int(mask.sum()) == 576
    assert dseg[mask].tolist() == subject["roi_index"] and (dseg[~mask] == 0).all()
    rois = np.array(subject["roi"])
    assert {name: int((rois == name).sum()) for name in ("V1", "LOC", "other")} == {"V1": 256, "LOC": 192, "other": 128}
    signal, snr = np.array(subject["signal"]), np.array(subject["snr"])
    assert (signal == (rois != "other")).all() and (snr[signal] > 0).all() and (snr[~signal] == 0).all()
    assert len(truth["retinotopy"]["voxels"]) == 256
    assert sorted(map(tuple, truth["retinotopy"]["centres"])) == [(r, c) for r in range(16) for c in range(16)]
    train, test = truth["images"]["train"], truth["images"]["test"]
    assert len(train) == len(set(train)) == 240 and len(test) == len(set(test)) == 24 and not set(train) & set(test)
    for run in truth["runs"]["test"]:
        shown = pd.read_csv(func(out, run, "events.tsv"), sep="\t")["stim_file"].tolist()
        assert sorted(shown) == sorted(test)
    orders = [tuple(truth["runs"]["order"][run]) for run in truth["runs"]["test"]]
    assert len(set(orders)) == 3  # each test run in its own order
    shown_train = [name for run in truth["runs"]["train"] for name in truth["runs"]["order"][run]]
    assert sorted(shown_train) == sorted(train)


def test_pixels_predict_v1_not_noise(generated, responses):
    out, truth = generated
    names, train, test_names, test = responses
    rois = np.array(truth["per_subject"][SUBJECT]["roi"])
    model = RidgeCV(alphas=ALPHAS).fit(luminance(out, names), train)
    r = columns_r(model.predict(luminance(out, test_names)), test)
    assert r[rois == "V1"].mean() > 0.4
    assert abs(r[rois == "other"].mean()) < 0.1


def test_planted_layer_predicts_loc_best(generated, responses):
    out, truth = generated
    names, train, test_names, test = responses
    loc = np.array(truth["per_subject"][SUBJECT]["roi"]) == "LOC"
    paths = [out / "stimuli" / name for name in names + test_names]
    features = demo_visual.image_layer_features(paths, demo_visual.get_model_path())
    scores = {}
    for layer, values in features.items():
        values = (values - values[: len(names)].mean(axis=0)) / values[: len(names)].std(axis=0)
        model = RidgeCV(alphas=ALPHAS).fit(values[: len(names)], train[:, loc])
        scores[layer] = columns_r(model.predict(values[len(names) :]), test[:, loc]).mean()
    print("LOC held-out r by layer", {k: round(float(v), 3) for k, v in scores.items()})
    assert scores[2] > scores[0] + 0.05 and scores[2] > scores[4] + 0.02
    assert max(scores, key=scores.get) == 2


def test_linear_reconstruction_of_test_images(generated, responses):
    out, truth = generated
    names, train, test_names, test = responses
    mean, std = train.mean(axis=0), train.std(axis=0)
    model = RidgeCV(alphas=ALPHAS).fit((train - mean) / std, luminance(out, names))
    reconstructed = model.predict((test - mean) / std)
    target = luminance(out, test_names)
    pixel_r = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(reconstructed, target)])
    similarity = np.corrcoef(reconstructed, target)[:24, 24:]
    top1 = (similarity.argmax(axis=1) == np.arange(24)).mean()
    two_way = np.mean([similarity[i, i] > similarity[i, j] for i in range(24) for j in range(24) if i != j])
    print(f"reconstruction: mean pixel r {pixel_r.mean():.3f}, top-1 {top1:.3f}, two-way {two_way:.3f}")
    assert pixel_r.mean() >= 0.6
    assert two_way >= 0.9 and top1 >= 0.42


def test_same_seed_same_dataset(generated, tmp_path):
    out, truth = generated
    again = tmp_path / "again"
    assert demo_visual.generate_visual_demo(again, SEED) == truth
    for run in truth["runs"]["train"] + truth["runs"]["test"]:
        assert func(again, run, "events.tsv").read_bytes() == func(out, run, "events.tsv").read_bytes()
        assert np.array_equal(np.asarray(nib.load(func(again, run, "bold.nii.gz")).dataobj),
                              np.asarray(nib.load(func(out, run, "bold.nii.gz")).dataobj))
    for name in ("img_0000.png", "img_0131.png", "img_0263.png"):
        assert (again / "stimuli" / name).read_bytes() == (out / "stimuli" / name).read_bytes()
