"""Label decoding: annotations of story segments (categories such as ``emotion``, continuous
values such as ``valence``) read out of the brain responses.

Annotations: one table with columns ``story``, ``onset``, ``duration`` (scan seconds, like
events.tsv) and one column per target — the user's ``decoding.labels.table``, or one built
from the events files or the emotion lexicons (:mod:`brainllm.annotations`). A kept TR takes the
label of the segment holding its centre; its brain input is the mean of the responses
``delays`` TRs later (the haemodynamic lag). Categories are decoded by L2 logistic
regression, continuous targets by ridge, both on z-scored voxels (the ``n_voxels`` with the
largest univariate F, selected inside every fit on its fitting rows), cross-validated by story
(leave one story out); the regularisation of each outer fold is chosen by an inner
leave-one-story-out search on its training stories only.

Scores on the out-of-fold predictions: balanced accuracy (chance 1 / n_classes), accuracy
beside the majority-class rate, per-class sensitivity and specificity (macro-averaged) and
the confusion matrix; r and R² for continuous targets. p-values are one-sided randomisation
tests with the predictions held fixed and each story's sequence of segment labels rotated
(:func:`rotation_null`): a circular shift of the story's scored segments, in onset order,
moves every label k segments along, wrapping at the story's end. This keeps, per story, the
labels within each segment and the sequence of labels across segments (its class mix and
its autocorrelation — the emotional arc, overlapping lexicon windows), broken only at the
one seam where the end meets the start; what it breaks is the alignment of labels with the
(equally autocorrelated) predictions. It does not keep which TRs a label covers (segments
of unequal length take each other's labels), and it assumes a story's label sequence is no
more likely at its observed phase than at any other — approximately true when a story holds
many segments per autocorrelation length; the seam makes it slightly liberal on short stories
(null simulation, labels AR(0.8) across segments, predictions an independent AR(0.95) across
TRs, 99 draws, p ≤ 0.05: 5.4 % with 2 stories × 100 segments, 6.1 % with 4 × 30, 6.8 % with
3 × 12; a free shuffle of the segments within each story, the earlier null, destroyed the
autocorrelation across segments and fired for 25 %, 22 % and 16 %). Segments without scored
TRs take no part. A non-finite observed score (constant predictions or labels) gets p = NaN.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import metrics
from .io import InputError, open_h5, write_tsv

log = logging.getLogger(__name__)

__all__ = [
    "LabelSettings",
    "label_targets_of",
    "read_annotations",
    "tr_segments",
    "brain_windows",
    "cross_validated_predictions",
    "label_scores",
    "rotation_null",
    "null_scores",
    "segment_permutation_p",
    "decode_labels",
]

KINDS = ("categorical", "continuous")


@dataclass(frozen=True)
class LabelSettings:
    """``decoding.labels`` (config/README.md)."""

    table: str
    targets: Mapping[str, str] = field(default_factory=dict)
    delays: tuple[int, ...] = (1, 2, 3, 4)
    n_voxels: int = 500
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    alphas: tuple[float, ...] = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
    n_permutations: int = 1000
    seed: int = 0

    @classmethod
    def from_config(cls, section: Mapping, seed: int = 0) -> "LabelSettings":
        """``table`` is the file read: the user's table, or the one built from events or the lexicons."""
        section = dict(section)
        targets = label_targets_of(section)
        return cls(
            table=str(section["table"]),
            targets=targets,
            delays=tuple(int(d) for d in section.get("delays", cls.delays)),
            n_voxels=int(section.get("n_voxels", cls.n_voxels)),
            c_grid=tuple(float(c) for c in section.get("c_grid", cls.c_grid)),
            alphas=tuple(float(a) for a in section.get("alphas", cls.alphas)),
            n_permutations=int(section.get("n_permutations", cls.n_permutations)),
            seed=int(section.get("seed", seed)),
        )


def label_targets_of(section: Mapping) -> dict[str, str]:
    """``decoding.labels.targets`` checked against the source (lexicon labels: ``emotion``, ``valence`` — the default there — and one share per basic emotion)."""
    from .annotations import LEXICON_COLUMNS, LEXICON_TARGETS, SOURCES

    source = section.get("source", "table")
    if source not in SOURCES:
        raise InputError(None, f"decoding.labels.source is {source!r}.", f"use one of {SOURCES}.")
    targets = dict(section.get("targets") or (LEXICON_TARGETS if source == "lexicon" else {}))
    bad = {name: kind for name, kind in targets.items() if kind not in KINDS}
    if not targets or bad:
        raise InputError(None, f"decoding.labels.targets is {targets!r}.", f"map each annotation column to one of {KINDS}.")
    if source == "lexicon" and any(LEXICON_COLUMNS.get(name) != kind for name, kind in targets.items()):
        raise InputError(None, f"decoding.labels.targets is {targets!r} but the lexicon labels are {LEXICON_COLUMNS}.",
                         "choose among these (or omit targets for emotion and valence) with decoding.labels.source: lexicon.")
    return targets


def read_annotations(path: str | os.PathLike, targets: Mapping[str, str], stories: Sequence[str]) -> pd.DataFrame:
    """The annotation table, checked: known stories, numeric times, usable target columns."""
    try:
        table = pd.read_csv(path, sep="\t")
    except FileNotFoundError:
        raise InputError(path, "the annotation table does not exist.", "fix decoding.labels.table.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(path, f"cannot be read as a UTF-8 TSV ({error}).", "write it tab-separated with a header row.") from None
    missing = [c for c in ("story", "onset", "duration", *targets) if c not in table.columns]
    if missing:
        raise InputError(path, f"missing columns {missing} (found {list(table.columns)}).", "decoding.labels.targets must name columns of the table; story, onset, duration are required.")
    table["story"] = table["story"].astype(str)
    unknown = sorted(set(table["story"]) - set(stories))
    if unknown:
        row = int(np.flatnonzero(table["story"].isin(unknown))[0])
        raise InputError(path, f"column story, row {row + 2}: stories {unknown} are not in the dataset ({', '.join(stories)}).",
                         "annotate only the stories of dataset.train_stories/test_stories.")
    for column in ("onset", "duration"):
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any() or (column == "duration" and (values <= 0).any()):
            row = int(np.flatnonzero(values.isna() | (values <= 0 if column == "duration" else False))[0])
            raise InputError(path, f"column {column}, row {row + 2}: {table[column].iloc[row]!r} is not a valid time.", "give onsets and positive durations in seconds.")
        table[column] = values.astype(float)
    for name, kind in targets.items():
        values = table[name]
        if values.isna().all():
            raise InputError(path, f"column {name!r} is empty.", "fill it or remove it from decoding.labels.targets.")
        if kind == "categorical" and values.dropna().nunique() < 2:
            raise InputError(path, f"column {name!r} has a single class ({values.dropna().iloc[0]!r}).", "a categorical target needs at least two classes.")
        if kind == "continuous":
            numeric = pd.to_numeric(values, errors="coerce")
            bad = numeric.isna() & values.notna()
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise InputError(path, f"column {name!r}, row {row + 2}: {values.iloc[row]!r} is not a number.", "continuous targets must be numbers (or empty).")
            if numeric.dropna().nunique() < 2:
                raise InputError(path, f"column {name!r} is constant.", "a continuous target must vary.")
            table[name] = numeric
    return table


def tr_segments(annotations: pd.DataFrame, n_trs: int, tr: float, trim_start: int) -> np.ndarray:
    """``(n_trs,)`` the annotation row (index into ``annotations``) whose span holds each kept TR's centre, −1 for none."""
    centres = (np.arange(n_trs) + trim_start + 0.5) * tr
    segment = np.full(n_trs, -1, dtype=np.int64)
    for position, (onset, duration) in enumerate(zip(annotations["onset"], annotations["duration"])):
        segment[(centres >= onset) & (centres < onset + duration) & (segment < 0)] = position
    return segment


def brain_windows(responses: np.ndarray, delays: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows t with every t + d inside the run, and their inputs: the mean of ``responses[t + d]`` over ``delays``."""
    n_trs = responses.shape[0]
    rows = np.arange(n_trs - max(delays))
    return rows, np.mean([responses[rows + d] for d in delays], axis=0)


def _grid_predictions(kind: str, grid: Sequence[float], n_voxels: int, X_fit: np.ndarray, y_fit: np.ndarray,
                      X_eval: np.ndarray) -> list[np.ndarray]:
    """Predictions of ``X_eval`` for every value of ``grid``: z-score → the ``n_voxels`` voxels with the largest
    univariate F on the fitting rows → logistic regression (C) or ridge (α).

    Scaling and selection do not depend on the value, so they are fitted once; ridge solves every α from one
    SVD of the selected fitting rows (the closed form of sklearn's ``Ridge`` with an intercept).
    """
    from sklearn.feature_selection import SelectKBest, f_classif, f_regression
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    prepare = make_pipeline(StandardScaler(), SelectKBest(f_classif if kind == "categorical" else f_regression, k=n_voxels))
    A_fit = prepare.fit_transform(X_fit, y_fit).astype(np.float64)
    A_eval = prepare.transform(X_eval).astype(np.float64)
    if kind == "categorical":
        return [LogisticRegression(C=value, max_iter=2000).fit(A_fit, y_fit).predict(A_eval) for value in grid]
    y_fit = np.asarray(y_fit, dtype=np.float64)
    x_mean, y_mean = A_fit.mean(0), y_fit.mean()
    U, s, Vt = np.linalg.svd(A_fit - x_mean, full_matrices=False)
    projected = U.T @ (y_fit - y_mean)
    predictions = []
    for alpha in grid:
        weights = Vt.T @ (s / (s**2 + float(alpha)) * projected)
        predictions.append((A_eval - x_mean) @ weights + y_mean)
    return predictions


def _fold_score(kind: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Balanced accuracy over the classes present (categorical) or R² (continuous)."""
    from sklearn.metrics import r2_score

    if kind == "categorical":
        return float(np.nanmean(metrics.sensitivity_specificity(y_true, y_pred, labels=np.unique(y_true))["sensitivity"]))
    return r2_score(y_true, y_pred)


def cross_validated_predictions(X: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str, grid: Sequence[float],
                                n_voxels: int = 500) -> tuple[np.ndarray, dict]:
    """Leave-one-group-out predictions of every row; each fold's regularisation chosen by inner leave-one-group-out on its training groups.

    Voxels are selected inside every fit (``n_voxels`` by univariate F on the fitting rows), never on held-out rows.

    Returns the predictions and ``{held-out group: chosen value}``.
    """
    names = list(dict.fromkeys(groups))
    n_voxels = min(int(n_voxels), X.shape[1])
    if len(names) < 3:
        raise InputError(None, f"labels on {len(names)} stories ({names}); cross-validation by story with an inner search needs 3.", "annotate at least 3 stories.")
    predictions = np.empty(len(y), dtype=object if kind == "categorical" else float)
    chosen = {}
    for held_out in names:
        test, train = groups == held_out, groups != held_out
        inner = [g for g in names if g != held_out]
        scores = []  # (inner folds, grid values)
        for inner_out in inner:
            fit, val = train & (groups != inner_out), train & (groups == inner_out)
            if kind == "categorical" and len(set(y[fit])) < 2:
                continue
            scores.append([_fold_score(kind, y[val], pred) for pred in _grid_predictions(kind, grid, n_voxels, X[fit], y[fit], X[val])])
        fits = np.mean(scores, axis=0) if scores else np.full(len(grid), -np.inf)
        best = float(grid[int(np.argmax(fits))])
        chosen[str(held_out)] = best
        predictions[test] = _grid_predictions(kind, [best], n_voxels, X[train], y[train], X[test])[0]
    return predictions, chosen


def label_scores(kind: str, y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence | None = None) -> dict:
    """Balanced accuracy, accuracy, majority rate, macro sensitivity/specificity (categorical) or r and R² (continuous)."""
    from sklearn.metrics import r2_score

    if kind == "continuous":
        y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
        return {"r": float(np.corrcoef(y_true, y_pred)[0, 1]), "r2": float(r2_score(y_true, y_pred))}
    classes = list(classes if classes is not None else sorted(set(y_true)))
    decision = metrics.sensitivity_specificity(np.asarray(y_true), np.asarray(y_pred), labels=classes)
    counts = pd.Series(y_true).value_counts()
    return {
        "balanced_accuracy": float(np.nanmean(decision["sensitivity"])),
        "accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
        "majority_rate": float(counts.max() / counts.sum()),
        "sensitivity": decision["sensitivity_macro"],
        "specificity": decision["specificity_macro"],
        "per_class": {str(c): {"sensitivity": float(se), "specificity": float(sp), "n": int(counts.get(c, 0))}
                      for c, se, sp in zip(classes, decision["sensitivity"], decision["specificity"])},
    }


@dataclass(frozen=True)
class RotationNull:
    """The rotations of :func:`rotation_null`.

    ``orders[k, i]``: the segment whose label segment ``i`` takes in null draw ``k``. ``n_possible``: the
    number of distinct combinations of one shift per story, the observed (all shifts zero) included — the
    product of the stories' numbers of scored segments. ``exhaustive``: ``orders`` holds every combination
    but the observed one (``n_possible − 1`` rows), so the p is exact; otherwise random draws.
    """

    orders: np.ndarray
    n_possible: int
    exhaustive: bool

    @property
    def smallest_p(self) -> float:
        """The smallest p the null can give: 1 / n_possible (exhaustive) or 1 / (draws + 1)."""
        return 1.0 / (len(self.orders) + 1)


def rotation_null(segment_story: np.ndarray, tr_segment: np.ndarray, n_permutations: int, seed: int) -> RotationNull:
    """Circular shifts of each story's sequence of scored segments (the segments ``tr_segment`` names, in
    array order — pass the segments of a story in onset order).

    Each draw shifts every story by its own k (uniform over 0 … n_segments − 1 of that story, drawn per draw
    and per story): a story's zero shift must stay possible so that the draws are a group (the products of
    per-story rotations) of which the observed labelling is one member, otherwise a story with few segments
    would always be moved and the p would not be valid. When the combinations number at most
    ``n_permutations + 1`` all of them but the observed one are used (exact p); otherwise
    ``n_permutations`` random ones (the all-zero one has probability 1 / n_possible; it scores as the
    observed and only makes the p conservative). Segments without scored TRs keep their place and lend
    their label to no one.
    """
    segment_story = np.asarray(segment_story)
    n_segments = len(segment_story)
    scored = np.zeros(n_segments, dtype=bool)
    scored[np.asarray(tr_segment, dtype=np.int64)] = True
    members = [np.flatnonzero(scored & (segment_story == story)) for story in dict.fromkeys(segment_story[scored])]
    sizes = [len(m) for m in members]
    n_possible = math.prod(sizes)
    if n_possible - 1 <= n_permutations:
        shifts = np.array(list(itertools.product(*(range(n) for n in sizes)))[1:], dtype=np.int64).reshape(-1, len(sizes))
        exhaustive = True
    else:
        rng = np.random.default_rng(seed)
        shifts = np.stack([rng.integers(0, n, size=n_permutations) for n in sizes], axis=1)
        exhaustive = False
    orders = np.tile(np.arange(n_segments), (len(shifts), 1))
    for column, positions in enumerate(members):
        n = len(positions)
        orders[:, positions] = positions[(np.arange(n)[None, :] + shifts[:, column:column + 1]) % n]
    return RotationNull(orders=orders, n_possible=n_possible, exhaustive=exhaustive)


def null_scores(kind: str, segment_labels: np.ndarray, tr_segment: np.ndarray, y_pred: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """The score of :func:`label_scores` (balanced accuracy over the classes present, or r) of every row of
    ``orders``: the scored TRs labelled ``segment_labels[order][tr_segment]``, predictions fixed.

    Computed per segment (TR counts and per-segment sums of the predictions), so it is cheap for any number
    of TRs; equal to calling :func:`label_scores` on each relabelling.
    """
    tr_segment = np.asarray(tr_segment, dtype=np.int64)
    n_segments = len(segment_labels)
    counts = np.bincount(tr_segment, minlength=n_segments).astype(np.float64)
    if kind == "continuous":
        values = np.asarray(segment_labels, dtype=np.float64)
        predicted = np.asarray(y_pred, dtype=np.float64)
        centred = predicted - predicted.mean()
        sums = np.bincount(tr_segment, weights=centred, minlength=n_segments)  # Σ centred predictions per segment
        scored = counts > 0
        values = np.where(scored, values - values[scored].mean(), 0.0)  # r ignores a shift; unscored segments carry no TRs
        relabelled = values[orders]
        n = counts.sum()
        mean = relabelled @ counts / n
        cross = relabelled @ sums
        spread = (relabelled**2) @ counts - n * mean**2
        with np.errstate(invalid="ignore", divide="ignore"):
            return cross / np.sqrt(spread * (centred @ centred))
    present = np.unique(tr_segment)
    code_of = {label: code for code, label in enumerate(dict.fromkeys(np.asarray(segment_labels)[present].tolist()))}
    classes = list(code_of)
    segment_codes = np.full(n_segments, -1, dtype=np.int64)
    segment_codes[present] = [code_of[label] for label in np.asarray(segment_labels)[present].tolist()]
    predicted = np.array([code_of.get(label, -1) for label in np.asarray(y_pred).tolist()], dtype=np.int64)
    hits = np.zeros((n_segments, len(classes)))  # TRs of each segment predicted as each class
    valid = predicted >= 0
    np.add.at(hits, (tr_segment[valid], predicted[valid]), 1.0)
    relabelled = segment_codes[orders]  # (draws, segments) class codes
    rows = np.arange(n_segments)[None, :]
    correct = np.where(relabelled >= 0, hits[rows, np.maximum(relabelled, 0)], 0.0)
    sensitivity = np.empty((len(orders), len(classes)))
    for code in range(len(classes)):
        mine = relabelled == code
        with np.errstate(invalid="ignore", divide="ignore"):
            sensitivity[:, code] = (correct * mine).sum(1) / (mine * counts).sum(1)
    with np.errstate(invalid="ignore"):
        return np.nanmean(sensitivity, axis=1)


def segment_permutation_p(kind: str, segment_labels: np.ndarray, segment_story: np.ndarray, tr_segment: np.ndarray,
                          y_pred: np.ndarray, observed: float, n_permutations: int, seed: int) -> float:
    """One-sided p of the balanced accuracy (categorical) or r (continuous) against the rotation null
    (:func:`rotation_null`): p = (1 + #{null ≥ observed}) / (1 + number of null draws).

    ``tr_segment`` maps each scored TR to its segment (index into ``segment_labels``; a story's segments in
    onset order). With few segments the null is enumerated and the p is exact, but no smaller than
    1 / (product of the stories' scored-segment counts) — logged, with a warning when that cannot reach 0.05.
    NaN when the observed score is not finite (constant predictions or labels over the scored TRs) or no
    rotation exists (one scored segment per story).
    """
    if not np.isfinite(observed):
        log.warning("observed %s score is %s (constant predictions or labels over the %d scored TRs): p is NaN",
                    "balanced accuracy" if kind == "categorical" else "r", observed, len(tr_segment))
        return float("nan")
    null = rotation_null(segment_story, tr_segment, n_permutations, seed)
    if len(null.orders) == 0:
        log.warning("every story has a single scored segment, so no rotation of the labels exists: p is NaN")
        return float("nan")
    scores = null_scores(kind, segment_labels, tr_segment, y_pred, null.orders)
    exceed = int(np.sum(~(scores < observed - 1e-12)))  # a non-finite null score counts against the observed
    (log.warning if null.smallest_p > 0.05 else log.info)(
        "rotation null over %d combinations of per-story label shifts (the observed one included): %s; smallest attainable p %.3g",
        null.n_possible, "all enumerated, exact p" if null.exhaustive else f"{len(null.orders)} random draws", null.smallest_p)
    return float((1 + exceed) / (1 + len(null.orders)))


def decode_labels(responses_h5: str | os.PathLike, stories: Sequence[str], settings: LabelSettings,
                  out: Mapping[str, str | os.PathLike], voxels: np.ndarray | None = None) -> pd.DataFrame:
    """Decode every target of ``settings`` for one subject; write ``out['scores']`` (one row per target),
    ``out['classes']`` (per class), ``out['confusion']`` and ``out['predictions']`` (TSVs, docs/outputs.md).

    ``voxels`` restricts the inputs to those columns (controls).
    """
    annotations = read_annotations(settings.table, settings.targets, stories)
    inputs, segment_of_row, story_of_row = [], [], []
    with open_h5(responses_h5) as h5:
        for story in stories:
            part = annotations[annotations["story"] == story]
            if part.empty:
                continue
            if story not in h5:
                raise InputError(responses_h5, f"no responses for annotated story {story!r}.", "re-run the preprocess rule.")
            data, attrs = h5[story]["data"][()], h5[story].attrs
            data = data if voxels is None else data[:, voxels]
            segment = tr_segments(part, data.shape[0], float(attrs["tr"]), int(attrs["trim_start"]))
            rows, X = brain_windows(data, settings.delays)
            keep = segment[rows] >= 0
            inputs.append(X[keep])
            segment_of_row.append(part.index.to_numpy()[segment[rows][keep]])
            story_of_row += [story] * int(keep.sum())
    if not inputs:
        raise InputError(settings.table, "no annotated TR falls inside the responses.", "check the onsets (scan seconds) and the stories.")
    X, segment_of_row, story_of_row = np.vstack(inputs), np.concatenate(segment_of_row), np.asarray(story_of_row)

    score_rows, class_rows, confusion_rows, prediction_rows = [], [], [], []
    for target, kind in settings.targets.items():
        labelled = annotations[target].notna().to_numpy()[segment_of_row]
        # the labelled segments with scored TRs (those lost to the delay cut stay out of the null), in onset order per story
        segments = annotations.loc[np.unique(segment_of_row[labelled])].sort_values(["story", "onset"], kind="stable").index.to_numpy()
        local = {row: i for i, row in enumerate(segments)}  # annotation row → position among the labelled segments
        tr_segment = np.array([local[row] for row in segment_of_row[labelled]])
        segment_labels = annotations[target].to_numpy()[segments]
        y = segment_labels[tr_segment]
        groups = story_of_row[labelled]
        y_pred, chosen = cross_validated_predictions(X[labelled], y, groups, kind, settings.c_grid if kind == "categorical" else settings.alphas,
                                                     settings.n_voxels)
        classes = sorted(set(y)) if kind == "categorical" else None
        scores = label_scores(kind, y, y_pred, classes)
        key = "balanced_accuracy" if kind == "categorical" else "r"
        p = segment_permutation_p(kind, segment_labels, annotations["story"].to_numpy()[segments], tr_segment, y_pred,
                                  scores[key], settings.n_permutations, settings.seed)
        row = {"target": target, "kind": kind, "n_trs": int(labelled.sum()), "n_segments": len(set(tr_segment)), "n_stories": len(set(groups))}
        if kind == "categorical":
            row.update(n_classes=len(classes), **{k: v for k, v in scores.items() if k != "per_class"},
                       chance_balanced_accuracy=1 / len(classes), chance_sensitivity=1 / len(classes), chance_specificity=1 - 1 / len(classes))
            class_rows += [{"target": target, "class": c, **values} for c, values in scores["per_class"].items()]
            counts = pd.crosstab(pd.Series(y, name="true"), pd.Series(y_pred, name="predicted")).reindex(index=classes, columns=classes, fill_value=0)
            confusion_rows += [{"target": target, "true": t, "predicted": q, "count": int(counts.loc[t, q])} for t in classes for q in classes]
        else:
            row.update(**scores, chance_r=0.0)
        row.update(p=p, regularisation=" ".join(f"{story}:{value:g}" for story, value in chosen.items()))
        score_rows.append(row)
        prediction_rows.append(pd.DataFrame({"target": target, "story": groups, "true": y, "predicted": y_pred}))
        log.info("%s (%s): %s, p %.3g over %d TRs of %d segments", target, kind,
                 f"balanced accuracy {scores['balanced_accuracy']:.3f} (chance {1 / len(classes):.3f})" if kind == "categorical"
                 else f"r {scores['r']:.3f}, R² {scores['r2']:.3f}", p, row["n_trs"], row["n_segments"])
    table = pd.DataFrame(score_rows)
    write_tsv(out["scores"], table)
    write_tsv(out["classes"], pd.DataFrame(class_rows, columns=["target", "class", "sensitivity", "specificity", "n"]))
    write_tsv(out["confusion"], pd.DataFrame(confusion_rows, columns=["target", "true", "predicted", "count"]))
    write_tsv(out["predictions"], pd.concat(prediction_rows, ignore_index=True))
    return table
