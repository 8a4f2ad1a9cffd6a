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


def _ar(rng, n, phi):
    """A stationary AR(1) series of unit variance."""
    x = np.empty(n)
    x[0] = rng.standard_normal()
    noise = rng.standard_normal(n) * np.sqrt(1 - phi**2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + noise[i]
    return x


def test_rotation_null_is_calibrated_where_a_free_shuffle_is_not():
    """Null subjects: labels AR(0.8) across segments, predictions an independent AR(0.95) across TRs. The
    rotation null's p ≤ 0.05 fires at ~5 % (binomial ± 3 SD); the old free shuffle of segments within a story
    (reference, inline) fires far more often."""
    n_sims, n_permutations, n_stories, n_segments, trs_per_segment = 800, 99, 2, 100, 2
    rng = np.random.default_rng(20240611)
    story = np.repeat(np.arange(n_stories), n_segments)
    tr_segment = np.repeat(np.arange(n_stories * n_segments), trs_per_segment)
    members = [np.flatnonzero(story == s) for s in range(n_stories)]
    rotation, shuffle = [], []
    for sim in range(n_sims):
        labels = np.concatenate([_ar(rng, n_segments, 0.8) for _ in range(n_stories)])
        predictions = np.concatenate([_ar(rng, n_segments * trs_per_segment, 0.95) for _ in range(n_stories)])
        observed = ld.label_scores("continuous", labels[tr_segment], predictions)["r"]
        rotation.append(ld.segment_permutation_p("continuous", labels, story, tr_segment, predictions, observed, n_permutations, sim))
        orders = np.hstack([positions[rng.random((n_permutations, len(positions))).argsort(axis=1)] for positions in members])
        shuffled = labels[orders][:, tr_segment]
        shuffled = shuffled - shuffled.mean(axis=1, keepdims=True)
        centred = predictions - predictions.mean()
        null = shuffled @ centred / np.sqrt((shuffled**2).sum(axis=1) * (centred @ centred))
        shuffle.append((1 + np.sum(null >= observed - 1e-12)) / (1 + n_permutations))
    tolerance = 3 * np.sqrt(0.05 * 0.95 / n_sims)
    rotation_rate, shuffle_rate = np.mean(np.array(rotation) <= 0.05), np.mean(np.array(shuffle) <= 0.05)
    print(f"false-positive rate at 0.05: rotation {rotation_rate:.3f}, free shuffle {shuffle_rate:.3f}")
    assert abs(rotation_rate - 0.05) < tolerance, rotation_rate
    assert shuffle_rate > 0.05 + 2 * tolerance, shuffle_rate


def test_null_scores_equal_label_scores_and_few_segments_give_an_exact_p():
    """The per-segment null scores equal label_scores on each relabelling; with few segments every combination
    of per-story shifts (a story left unshifted included) is enumerated and p is the exact rank, never below
    1 / (product of the segment counts)."""
    rng = np.random.default_rng(7)
    story = np.repeat(["a", "b", "c"], [2, 3, 4])
    tr_segment = np.repeat(np.arange(9), rng.integers(1, 5, 9))
    for kind in ("continuous", "categorical"):
        labels = rng.standard_normal(9) if kind == "continuous" else rng.choice(["x", "y", "z"], 9).astype(object)
        predictions = labels[tr_segment] if kind == "categorical" else labels[tr_segment] + rng.standard_normal(len(tr_segment))
        null = ld.rotation_null(story, tr_segment, 1000, 0)
        assert null.exhaustive and null.n_possible == 24 and len(null.orders) == 23
        assert len({tuple(order) for order in null.orders} | {tuple(range(9))}) == 24
        assert any((order[:2] == [0, 1]).all() for order in null.orders)  # story a unshifted, others moved
        key = "r" if kind == "continuous" else "balanced_accuracy"
        slow = np.array([ld.label_scores(kind, labels[order][tr_segment], predictions)[key] for order in null.orders])
        np.testing.assert_allclose(ld.null_scores(kind, labels, tr_segment, predictions, null.orders), slow, atol=1e-12)
        observed = ld.label_scores(kind, labels[tr_segment], predictions)[key]
        p = ld.segment_permutation_p(kind, labels, story, tr_segment, predictions, observed, 1000, 0)
        assert p == pytest.approx((1 + np.sum(slow >= observed - 1e-12)) / 24) and p >= 1 / 24
    # more combinations than permutations: random draws, p on the 1 / (n + 1) grid
    assert not ld.rotation_null(story, tr_segment, 10, 0).exhaustive
    # one scored segment per story: no rotation exists
    single = np.array([0, 0, 1, 1, 2])
    assert np.isnan(ld.segment_permutation_p("continuous", np.array([0.1, 0.5, 0.9]), np.array(["a", "b", "c"]), single,
                                             np.array([0.0, 1.0, 2.0, 3.0, 1.0]), 0.3, 99, 0))


def test_nan_observed_score_gives_nan_p(tmp_path, monkeypatch, caplog):
    """Constant predictions make r NaN; p is then NaN (not the smallest p), logged, and written as NaN."""
    story, tr_segment = np.repeat(["a", "b"], 4), np.repeat(np.arange(8), 3)
    with caplog.at_level("WARNING", logger=ld.__name__):
        p = ld.segment_permutation_p("continuous", np.arange(8.0), story, tr_segment, np.ones(24), float("nan"), 99, 0)
    assert np.isnan(p) and "p is NaN" in caplog.text
    rng = np.random.default_rng(11)
    annotations = _annotations(rng)
    table = tmp_path / "annotations.tsv"
    annotations.to_csv(table, sep="\t", index=False)
    monkeypatch.setattr(ld, "cross_validated_predictions",
                        lambda X, y, groups, kind, grid, n_voxels=500: (np.zeros(len(y)), {g: 1.0 for g in dict.fromkeys(groups)}))
    settings = ld.LabelSettings(table=str(table), targets={"valence": "continuous"}, delays=(2,), n_voxels=20, n_permutations=50)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = ld.decode_labels(_responses(tmp_path, annotations, rng), STORIES, settings, _out(tmp_path))
    assert np.isnan(scores["p"].item())
    assert np.isnan(pd.read_csv(_out(tmp_path)["scores"], sep="\t")["p"].item())


def test_segments_without_scored_trs_stay_out_of_the_null(tmp_path, monkeypatch):
    """A labelled segment whose TRs all fall to the delay cut lends its label to no scored segment."""
    story = np.repeat(["a", "b", "c"], 4)
    labels = np.array(["x", "y", "x", "lost", "y", "x", "y", "x", "x", "y", "y", "x"], dtype=object)
    tr_segment = np.repeat([0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11], 3)  # segment 3 has no scored TR
    for n_permutations in (10, 1000):
        null = ld.rotation_null(story, tr_segment, n_permutations, 0)
        assert (null.orders[:, 3] == 3).all() and not (np.delete(null.orders, 3, axis=1) == 3).any()
        for order in null.orders:
            relabelled = labels[order][tr_segment]
            assert sorted(relabelled) == sorted(labels[tr_segment])  # equal segment lengths: the class mix is kept
    # end to end: a last segment per story, of a class found nowhere else, holds only TRs lost to the delay cut
    rng = np.random.default_rng(12)
    annotations = _annotations(rng)
    extra = pd.DataFrame({"story": list(STORIES), "onset": 168.0, "duration": 10.0, "emotion": "surprise", "valence": 0.0})
    table = tmp_path / "annotations.tsv"
    pd.concat([annotations, extra], ignore_index=True).to_csv(table, sep="\t", index=False)
    settings = ld.LabelSettings(table=str(table), targets={"emotion": "categorical"}, delays=(2,), n_voxels=20, n_permutations=50)
    seen = {}
    original = ld.null_scores

    def spy(kind, segment_labels, tr_segment, y_pred, orders):
        seen["labels"] = {label for order in orders for label in segment_labels[order][tr_segment]}
        seen["n_segments"] = len(segment_labels)
        return original(kind, segment_labels, tr_segment, y_pred, orders)

    monkeypatch.setattr(ld, "null_scores", spy)
    scores = ld.decode_labels(_responses(tmp_path, annotations, rng), STORIES, settings, _out(tmp_path))
    assert seen["labels"] == {"joy", "fear", "sadness"} and seen["n_segments"] == scores["n_segments"].item() == 32
