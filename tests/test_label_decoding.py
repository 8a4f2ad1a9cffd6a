"""Label decoding: TR labelling and scores against hand computations, planted labels found,
shuffled labels at chance, no selection outside the training stories, bad annotation tables."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, r2_score

from brainllm import label_decoding as ld
from brainllm import report
from brainllm.io import InputError

STORIES = ("a", "b", "c", "d")
TR, TRIM = 2.0, 2


def _annotations(rng, n_segments=8, segment_s=20.0):
    rows = []
    for story in STORIES:
        for i in range(n_segments):
            emotion = ("joy", "fear", "sadness")[(i + rng.integers(0, 3)) % 3]
            rows.append({"story": story, "onset": TRIM * TR + i * segment_s, "duration": segment_s, "emotion": emotion,
                         "valence": {"joy": 0.7, "fear": -0.3, "sadness": -0.7}[emotion] + rng.normal(0, 0.3)})
    return pd.DataFrame(rows)


def _responses(tmp_path, annotations, rng, signal=1.0, n_voxels=60, n_trs=84):
    """Responses where the first 10 voxels carry the segment's category pattern and valence, 2 TRs late."""
    patterns = rng.standard_normal((4, 10))
    path = tmp_path / "responses.h5"
    with h5py.File(path, "w") as h5:
        for story in STORIES:
            part = annotations[annotations["story"] == story].reset_index(drop=True)
            segment = ld.tr_segments(part, n_trs, TR, TRIM)
            design = np.zeros((n_trs, 4))
            for t, s in enumerate(segment):
                if s >= 0:
                    design[t, ("joy", "fear", "sadness").index(part["emotion"][s])] = 1
                    design[t, 3] = part["valence"][s]
            data = rng.standard_normal((n_trs, n_voxels))
            data[2:, :10] += signal * (design @ patterns)[:-2]
            group = h5.create_group(story)
            group.attrs.update(tr=TR, trim_start=TRIM)
            group.create_dataset("data", data=data.astype(np.float32))
    return path


def _out(tmp_path):
    return {name: tmp_path / f"sub-S01_labels_{name}.tsv" for name in ("scores", "classes", "confusion", "predictions")}


def test_tr_segments_match_a_loop():
    table = pd.DataFrame({"onset": [4.0, 11.0, 30.0], "duration": [7.0, 5.0, 10.0]})
    segment = ld.tr_segments(table, 20, TR, TRIM)
    for t in range(20):
        centre = (t + TRIM + 0.5) * TR
        expected = next((i for i, (o, d) in enumerate(zip(table["onset"], table["duration"])) if o <= centre < o + d), -1)
        assert segment[t] == expected
    rows, X = ld.brain_windows(np.arange(20.0)[:, None], (1, 3))
    assert rows.tolist() == list(range(17)) and X[:, 0].tolist() == [t + 2.0 for t in range(17)]


def test_scores_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.choice(["a", "b", "c"], 200)
    pred = np.where(rng.random(200) < 0.5, y, rng.choice(["a", "b", "c"], 200))
    scores = ld.label_scores("categorical", y, pred)
    assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    matrix = confusion_matrix(y, pred, labels=["a", "b", "c"])
    spec = [(matrix.sum() - matrix[i].sum() - matrix[:, i].sum() + matrix[i, i]) / (matrix.sum() - matrix[i].sum()) for i in range(3)]
    assert scores["specificity"] == pytest.approx(np.mean(spec))
    values, fitted = rng.standard_normal(100), rng.standard_normal(100)
    continuous = ld.label_scores("continuous", values, fitted)
    assert continuous["r2"] == pytest.approx(r2_score(values, fitted)) and continuous["r"] == pytest.approx(np.corrcoef(values, fitted)[0, 1])


def test_planted_labels_are_decoded(tmp_path):
    rng = np.random.default_rng(1)
    annotations = _annotations(rng)
    table = tmp_path / "annotations.tsv"
    annotations.to_csv(table, sep="\t", index=False)
    settings = ld.LabelSettings(table=str(table), targets={"emotion": "categorical", "valence": "continuous"}, delays=(2,), n_voxels=20, n_permutations=200)
    scores = ld.decode_labels(_responses(tmp_path, annotations, rng), STORIES, settings, _out(tmp_path)).set_index("target")
    assert scores.loc["emotion", "balanced_accuracy"] > 0.8 and scores.loc["emotion", "p"] < 0.01
    assert scores.loc["valence", "r"] > 0.5 and scores.loc["valence", "p"] < 0.01
    assert scores.loc["emotion", "n_stories"] == 4 and len(scores.loc["emotion", "regularisation"].split()) == 4
    out = _out(tmp_path)
    confusion = pd.read_csv(out["confusion"], sep="\t")
    assert confusion["count"].sum() == scores.loc["emotion", "n_trs"]
    classes = pd.read_csv(out["classes"], sep="\t")
    assert set(classes["class"]) == {"joy", "fear", "sadness"}
    figure = report.plot_labels([out["scores"]], [out["confusion"]], [out["predictions"]], tmp_path / "f.png", tmp_path / "f.svg", tmp_path / "f.tsv", dpi=50)
    assert (tmp_path / "f.png").stat().st_size > 0 and set(figure["subject"]) == {"S01"}


def test_shuffled_labels_are_at_chance(tmp_path):
    """No signal in the responses: balanced accuracy near 1/3 and permutation p about uniform over repeats."""
    p_values, accuracies = [], []
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        annotations = _annotations(rng)
        table = tmp_path / f"annotations{seed}.tsv"
        annotations.to_csv(table, sep="\t", index=False)
        settings = ld.LabelSettings(table=str(table), targets={"emotion": "categorical"}, delays=(2,), n_voxels=20, n_permutations=100, seed=seed)
        scores = ld.decode_labels(_responses(tmp_path, annotations, rng, signal=0.0), STORIES, settings, _out(tmp_path))
        accuracies.append(scores["balanced_accuracy"].item())
        p_values.append(scores["p"].item())
    assert abs(np.mean(accuracies) - 1 / 3) < 0.05
    assert 0.25 < np.mean(p_values) < 0.75 and np.mean(np.array(p_values) < 0.05) <= 0.25


def test_regularisation_is_chosen_without_the_held_out_story():
    """Changing the held-out story's labels cannot change the value chosen for its fold."""
    rng = np.random.default_rng(2)
    X, groups = rng.standard_normal((120, 8)), np.repeat(list("abcd"), 30)
    y = np.where(X[:, 0] > 0, "u", "v")
    _, chosen = ld.cross_validated_predictions(X, y, groups, "categorical", (0.01, 1.0), n_voxels=8)
    y_changed = y.copy()
    y_changed[groups == "a"] = rng.choice(["u", "v"], 30)
    _, again = ld.cross_validated_predictions(X, y_changed, groups, "categorical", (0.01, 1.0), n_voxels=8)
    assert again["a"] == chosen["a"]
    with pytest.raises(InputError, match="needs 3"):
        ld.cross_validated_predictions(X[:60], y[:60], groups[:60], "categorical", (1.0,))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.assign(story=t["story"].replace("a", "zz")), r"column story, row \d+: stories \['zz'\] are not in the dataset"),
        (lambda t: t.assign(emotion="joy"), "single class"),
        (lambda t: t.assign(emotion=np.nan), "is empty"),
        (lambda t: t.assign(valence="high"), "not a number"),
        (lambda t: t.drop(columns="duration"), "missing columns"),
        (lambda t: t.assign(duration=-1.0), "not a valid time"),
    ],
)
def test_bad_annotation_tables_are_refused(tmp_path, edit, message):
    table = tmp_path / "annotations.tsv"
    edit(_annotations(np.random.default_rng(3))).to_csv(table, sep="\t", index=False)
    with pytest.raises(InputError, match=message) as error:
        ld.read_annotations(table, {"emotion": "categorical", "valence": "continuous"}, STORIES)
    assert str(table) in str(error.value)


def test_settings_need_known_kinds():
    with pytest.raises(InputError, match="targets"):
        ld.LabelSettings.from_config({"table": "x.tsv", "targets": {"emotion": "ordinal"}})


def _pipeline_reference(kind, value, n_voxels):
    """The estimator as one sklearn pipeline per value: z-score → SelectKBest(F) → LogisticRegression / Ridge."""
    from sklearn.feature_selection import SelectKBest, f_classif, f_regression
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = LogisticRegression(C=value, max_iter=2000) if kind == "categorical" else Ridge(alpha=value)
    return make_pipeline(StandardScaler(), SelectKBest(f_classif if kind == "categorical" else f_regression, k=n_voxels), model)


@pytest.mark.parametrize("kind, grid", [("categorical", (0.01, 0.1, 1.0)), ("continuous", (0.1, 10.0, 1e3, 1e5))])
def test_nested_cross_validation_equals_a_pipeline_per_value(kind, grid):
    """Predictions and chosen values equal the slow nested loop that refits a whole sklearn pipeline per value and fold."""
    rng = np.random.default_rng(5)
    X, groups = rng.standard_normal((160, 30)) * rng.uniform(0.5, 3, 30) + 2.0, np.repeat(list("abcd"), 40)
    signal = X[:, 0] - 0.5 * X[:, 3] + rng.standard_normal(160)
    y = np.where(signal > 2.5, "hi", np.where(signal > 0, "mid", "lo")) if kind == "categorical" else signal
    predictions, chosen = ld.cross_validated_predictions(X, y, groups, kind, grid, n_voxels=10)
    for held_out in "abcd":
        train, test = groups != held_out, groups == held_out
        inner_means = []
        for value in grid:
            scores = []
            for inner_out in set("abcd") - {held_out}:
                fit, val = train & (groups != inner_out), train & (groups == inner_out)
                scores.append(ld._fold_score(kind, y[val], _pipeline_reference(kind, value, 10).fit(X[fit], y[fit]).predict(X[val])))
            inner_means.append(np.mean(scores))
        best = grid[int(np.argmax(inner_means))]
        assert chosen[held_out] == best
        expected = _pipeline_reference(kind, best, 10).fit(X[train], y[train]).predict(X[test])
        if kind == "categorical":
            assert np.array_equal(predictions[test], expected)
        else:
            np.testing.assert_allclose(predictions[test].astype(float), expected, rtol=1e-6, atol=1e-8)
