"""Inference on encoding models: voxel tests, selection on validation scores, paired comparisons.

- Voxel tests (:func:`score_voxels`): Pearson r on the test stories, one-sided (r > 0)
  p-values by block permutation of test TRs (or circular shift, or the analytic t-test as
  an explicit option), Benjamini–Hochberg FDR; ``significant`` requires r > 0.
- Selection (:func:`best_layer`, :func:`top_voxels`): the best layer, each voxel's best
  layer and "top" voxel sets come from validation r (cross-validation within the training
  stories), never from the test stories.
- Comparisons (:func:`compare_layers`, :func:`group_comparison`): paired block jackknife
  over test TRs of Δ mean r from the saved test predictions, Holm over the comparisons
  made; across subjects a sign-flip test when there are at least 3.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import metrics
from .io import InputError, atomic_path, open_h5, write_tsv

log = logging.getLogger(__name__)

__all__ = [
    "Significance",
    "score_voxels",
    "top_voxels",
    "select_voxels",
    "save_predictions",
    "read_predictions",
    "best_layer",
    "compare_layers",
    "compare_models",
    "group_comparison",
]


@dataclass(frozen=True)
class Significance:
    """``encoding.significance``: how the per-voxel test p-values are computed."""

    method: str = "block_permutation"  # metrics.SIGNIFICANCE_METHODS
    block_trs: int = 20  # block length (block permutation) / smallest shift (circular shift)
    n_permutations: int = 1000
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: Mapping) -> "Significance":
        section = dict(settings.get("significance") or {})
        value = cls(
            method=str(section.get("method", cls.method)), block_trs=int(section.get("block_trs", cls.block_trs)),
            n_permutations=int(section.get("n_permutations", cls.n_permutations)), seed=int(settings.get("seed", 0)),
        )
        if value.method not in metrics.SIGNIFICANCE_METHODS:
            raise InputError(None, f"unknown encoding.significance.method {value.method!r}.", f"use one of {', '.join(metrics.SIGNIFICANCE_METHODS)}.")
        return value

    def record(self) -> dict:
        """The method as written to summary.json: one-sided (r > 0), with its block length."""
        record = {"method": self.method, "alternative": "greater", "correction": "fdr_bh", "requires_positive_r": True}
        if self.method == "block_permutation":
            record.update(block_trs=self.block_trs, n_permutations=self.n_permutations, seed=self.seed)
        elif self.method == "circular_shift":
            record.update(min_shift_trs=self.block_trs)
        return record


def score_voxels(pred: np.ndarray, resp: np.ndarray, fdr_q: float = 0.05, significance: Significance | None = None) -> pd.DataFrame:
    """Per-voxel test scores: ``voxel, r, p, p_fdr, significant``.

    p is one-sided (r > 0) by ``significance`` (default: block permutation of 20-TR blocks,
    1 000 permutations); BH-FDR over voxels; ``significant`` = p_fdr ≤ ``fdr_q`` and r > 0.
    """
    significance = significance or Significance()
    n_trs = np.asarray(pred).shape[0]
    if significance.method != "t_test" and n_trs < 2 * significance.block_trs + 1:
        raise InputError(None, f"{n_trs} test TRs are too few for {significance.method} with blocks of {significance.block_trs} TRs.",
                         "lower encoding.significance.block_trs or add test stories.")
    r, p = metrics.voxel_p_values(pred, resp, significance.method, significance.block_trs, significance.n_permutations, significance.seed)
    p_fdr, passed = metrics.fdr_bh(p, fdr_q)
    return pd.DataFrame({"voxel": np.arange(r.size), "r": r, "p": p, "p_fdr": p_fdr, "significant": passed & (r > 0)})


def top_voxels(selection_scores: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Indices of the ``fraction`` of voxels with the highest ``selection_scores`` (validation r)."""
    scores = np.nan_to_num(np.asarray(selection_scores, dtype=np.float64), nan=-np.inf)
    n_top = max(1, int(np.ceil(fraction * scores.size)))
    return np.argsort(-scores, kind="stable")[:n_top]


def select_voxels(scores_tsv: str | os.PathLike, fraction: float, n_voxels: int | None = None) -> np.ndarray:
    """Sorted indices of the top ``fraction`` of voxels by the encoding model's validation r (``r_val`` of a scores.tsv);
    ``n_voxels``, when given, is the responses' width the scores must match."""
    scores = pd.read_csv(scores_tsv, sep="\t")
    if "r_val" not in scores.columns:
        raise InputError(scores_tsv, "no r_val column (validation r).", "rerun the encoding rule.")
    if n_voxels is not None and len(scores) != n_voxels:
        raise InputError(scores_tsv, f"{len(scores)} voxels, but the responses have {n_voxels}.",
                         "rerun the encoding rule on these responses.")
    return np.sort(top_voxels(scores["r_val"].to_numpy(), fraction))


def save_predictions(path, pred: np.ndarray, stories: Sequence[str], lengths: Sequence[int], layers: Sequence[int], dtype: str = "float16") -> None:
    """Test-TR predictions ``pred`` ``(n_test_trs, n_voxels)`` as HDF5 dataset ``pred`` (docs/outputs.md)."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("pred", data=np.asarray(pred, dtype=dtype), compression="gzip", compression_opts=4, shuffle=True)
        h5.attrs["test_stories"] = json.dumps(list(stories))
        h5.attrs["story_lengths"] = json.dumps([int(n) for n in lengths])
        h5.attrs["layers"] = json.dumps([int(layer) for layer in layers])
        h5.attrs["layout"] = "pred (n_test_trs, n_voxels): delayed test features @ weights, test stories concatenated in order"


def read_predictions(path) -> tuple[np.ndarray, dict]:
    """``(pred (n_test_trs, n_voxels) float32, attrs)`` of a file written by :func:`save_predictions`."""
    with open_h5(path) as h5:
        if "pred" not in h5:
            raise InputError(path, "no dataset 'pred'.", "re-run the encoding rule with encoding.save_predictions: true.")
        return h5["pred"][()].astype(np.float32), {k: json.loads(v) for k, v in h5.attrs.items() if k != "layout"}


def best_layer(
    score_tsvs: Mapping[int, str | os.PathLike],
    mask_nii: str | os.PathLike,
    out_nii: str | os.PathLike,
    out_tsv: str | os.PathLike,
    predictions: Mapping[int, str | os.PathLike] | None = None,
    responses_h5: str | os.PathLike | None = None,
    test_stories: Sequence[str] | None = None,
    comparison: Mapping | None = None,
) -> int:
    """Per-model layer comparison: ``layers.tsv`` and the best-layer map; returns the best layer.

    Selection uses validation r only (``r_val``, cross-validation within the training
    stories): the best layer has the highest mean validation r; each voxel's best layer is
    its highest validation r, shown in the map where that layer's test r is FDR-significant
    (else −1, also outside the mask); ``mean_r_top10`` is the mean test r of each layer's 10 %
    of voxels best by validation r. ``mean_r`` (test) is descriptive. With ``predictions``
    (``{layer: predictions.h5}``) and the responses, every layer is compared with the best
    one by a paired block jackknife over test TRs of Δ mean r (Holm-corrected over layers).
    """
    layers = sorted(int(layer) for layer in score_tsvs)
    r_by_layer, r_val_by_layer, significant_by_layer = [], [], []
    for layer in layers:
        table = pd.read_csv(score_tsvs[layer], sep="\t")
        if not {"r", "r_val", "significant"} <= set(table.columns):
            raise InputError(score_tsvs[layer], "scores lack the r/r_val/significant columns.", "re-run the encoding rule.")
        if not np.isfinite(table["r_val"]).all():
            raise InputError(score_tsvs[layer], "validation r (r_val) is missing: this solver and cv_score expose none.",
                             "set encoding.cv_score: correlation (or method ridge with solver auto) and re-run encoding.")
        r_by_layer.append(table["r"].to_numpy())
        r_val_by_layer.append(table["r_val"].to_numpy())
        significant_by_layer.append(table["significant"].to_numpy().astype(bool))
    r_all, r_val = np.stack(r_by_layer), np.stack(r_val_by_layer)  # (n_layers, n_voxels)
    significant = np.stack(significant_by_layer)
    best_index = np.argmax(r_val, axis=0)
    voxel_best = np.asarray(layers)[best_index]
    voxel_significant = significant[best_index, np.arange(r_all.shape[1])]
    table = pd.DataFrame({
        "layer": layers,
        "mean_r_val": r_val.mean(1),
        "mean_r": r_all.mean(1),
        "median_r": np.median(r_all, 1),
        "mean_r_top10": [r_all[i, top_voxels(r_val[i])].mean() for i in range(len(layers))],
        "n_significant": significant.sum(1),
        "n_best_voxels": [int(((voxel_best == layer) & voxel_significant).sum()) for layer in layers],
    })
    best = int(table["layer"][table["mean_r_val"].idxmax()])
    table["best"] = table["layer"] == best
    if predictions:
        table = pd.concat([table, compare_layers(predictions, responses_h5, test_stories, best, comparison or {})], axis=1)
    write_tsv(out_tsv, table)
    from .encoding import vector_to_volume

    vector_to_volume(np.where(voxel_significant, voxel_best, -1), mask_nii, out_nii, fill=-1.0)
    log.info("best layer %d by mean validation r %.4f (its mean test r %.4f)", best, table["mean_r_val"].max(), table.loc[table["best"], "mean_r"].iloc[0])
    return best


def compare_layers(
    predictions: Mapping[int, str | os.PathLike],
    responses_h5: str | os.PathLike,
    test_stories: Sequence[str],
    reference_layer: int,
    comparison: Mapping,
) -> pd.DataFrame:
    """Each layer vs ``reference_layer``: paired block jackknife of Δ mean test r (:func:`brainllm.metrics.paired_block_jackknife`),
    Holm over the other layers.

    Columns ``delta_vs_best, delta_ci_low, delta_ci_high, p_vs_best, p_vs_best_holm`` (the
    reference row: Δ = 0, p = 1). ``comparison``: ``block_trs`` (20).
    """
    from .encoding import held_out_responses

    resp = held_out_responses(responses_h5, test_stories)
    reference, _ = read_predictions(predictions[reference_layer])
    block_trs = int(comparison.get("block_trs", 20))
    rows = []
    for layer in sorted(int(layer) for layer in predictions):
        if layer == reference_layer:
            rows.append({"delta_vs_best": 0.0, "delta_ci_low": 0.0, "delta_ci_high": 0.0, "p_vs_best": 1.0})
            continue
        pred, _ = read_predictions(predictions[layer])
        if pred.shape != resp.shape:
            raise InputError(predictions[layer], f"predictions {pred.shape} differ from the test responses {resp.shape}.", "re-run the encoding rule.")
        result = metrics.paired_block_jackknife(pred, reference, resp, block_trs)
        rows.append({"delta_vs_best": result["delta"], "delta_ci_low": result["ci_low"], "delta_ci_high": result["ci_high"], "p_vs_best": result["p"]})
    out = pd.DataFrame(rows)
    others = out["p_vs_best"].to_numpy().copy()
    is_other = np.array(sorted(int(layer) for layer in predictions)) != reference_layer
    holm = np.ones(len(out))
    if is_other.any():
        holm[is_other] = metrics.holm(others[is_other])
    out["p_vs_best_holm"] = holm
    return out


def compare_models(
    layer_tables: Mapping[str, str | os.PathLike],
    predictions: Mapping[str, Mapping[int, str | os.PathLike]],
    responses_h5: str | os.PathLike,
    test_stories: Sequence[str],
    comparison: Mapping,
    out_tsv: str | os.PathLike,
) -> pd.DataFrame:
    """Every pair of models of one subject, each at its best layer (chosen on validation r).

    ``layer_tables``: ``{model: _layers.tsv}`` (the ``best`` row is the model's layer);
    ``predictions``: ``{model: {layer: _predictions.h5}}``. Per pair (model_a, model_b): Δ mean
    test r (a − b) with a paired block jackknife over test TRs (95 % CI, two-sided p), Holm
    over the pairs. Columns ``model_a layer_a model_b layer_b mean_r_a mean_r_b delta
    ci_low ci_high p p_holm block_trs n_blocks``.
    """
    from itertools import combinations

    from .encoding import held_out_responses

    if len(layer_tables) < 2:
        raise InputError(None, f"a model comparison needs at least 2 models, got {len(layer_tables)}.", "list two or more models under models:.")
    best = {}
    for model, path in layer_tables.items():
        table = pd.read_csv(path, sep="\t")
        if not {"layer", "best"} <= set(table.columns) or int(table["best"].astype(bool).sum()) != 1:
            raise InputError(path, "needs layer and best columns with exactly one best layer.", "re-run the best_layer rule.")
        best[model] = int(table.loc[table["best"].astype(bool), "layer"].iloc[0])
    resp = held_out_responses(responses_h5, test_stories)
    block_trs = int(comparison.get("block_trs", 20))
    pred = {}
    for model, layer in best.items():
        pred[model], _ = read_predictions(predictions[model][layer])
        if pred[model].shape != resp.shape:
            raise InputError(predictions[model][layer], f"predictions {pred[model].shape} differ from the test responses {resp.shape}.", "re-run the encoding rule.")
    rows = []
    for model_a, model_b in combinations(sorted(best), 2):
        result = metrics.paired_block_jackknife(pred[model_a], pred[model_b], resp, block_trs)
        rows.append({
            "model_a": model_a, "layer_a": best[model_a], "model_b": model_b, "layer_b": best[model_b],
            "mean_r_a": float(metrics.pearson_r(pred[model_a], resp).mean()), "mean_r_b": float(metrics.pearson_r(pred[model_b], resp).mean()),
            "delta": result["delta"], "ci_low": result["ci_low"], "ci_high": result["ci_high"], "p": result["p"],
            "n_blocks": result["n_blocks"],
        })
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("p") + 1, "p_holm", metrics.holm(table["p"].to_numpy()))
    table.insert(table.columns.get_loc("n_blocks"), "block_trs", block_trs)
    write_tsv(out_tsv, table)
    log.info("models compared at their best layers: %s", table.to_dict("records"))
    return table


#: a group test across subjects needs at least this many
MIN_GROUP_SUBJECTS = 3


def across_subjects(deltas: np.ndarray, ci: float = 0.95, alternative: str = "two-sided") -> dict:
    """Mean Δ over subjects, its t-interval and the exact sign-flip p (``deltas`` ``(n_subjects,)``; ``alternative``
    as :func:`brainllm.metrics.sign_flip_p`)."""
    from scipy import stats

    n = deltas.size
    mean = float(deltas.mean())
    half = float(stats.t.ppf(0.5 + ci / 2, n - 1) * deltas.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    p = metrics.sign_flip_p(deltas, alternative=alternative) if np.any(deltas != 0) else 1.0
    return {"delta": mean, "ci_low": mean - half, "ci_high": mean + half, "p_sign_flip": p, "n_subjects": int(n)}


def group_comparison(tables: Mapping[str, str | os.PathLike], kind: str, out_tsv: str | os.PathLike) -> pd.DataFrame:
    """Across subjects (≥ 3): per layer, mean Δ with a 95 % t-interval, sign-flip p, Holm over layers.

    ``kind`` ``layers``: ``{subject: _layers.tsv}``; the group's best layer has the highest
    mean over subjects of mean validation r, Δ_s = mean test r of a layer − of that layer,
    tested one-sided (H1: Δ < 0, the layer chosen on validation data predicts the test data better).
    ``kind`` ``base_vs_tuned``: ``{subject: base_vs_tuned.tsv}``; Δ_s = ``delta_mean_r``.
    """
    if len(tables) < MIN_GROUP_SUBJECTS:
        raise InputError(None, f"a group comparison needs at least {MIN_GROUP_SUBJECTS} subjects, got {len(tables)}.", "add subjects.")
    needed = {"layers": {"layer", "mean_r", "mean_r_val"}, "base_vs_tuned": {"layer", "delta_mean_r"}}[kind]
    frames = []
    for subject, path in tables.items():
        frame = pd.read_csv(path, sep="\t")
        if not needed <= set(frame.columns):
            raise InputError(path, f"missing columns {sorted(needed - set(frame.columns))}.", "re-run the stage that writes it.")
        frames.append(frame.assign(subject=subject))
    stacked = pd.concat(frames, ignore_index=True)
    layers = sorted(set.intersection(*[set(f["layer"]) for f in frames]))
    by_layer = {layer: stacked[stacked["layer"] == layer].set_index("subject").loc[list(tables)] for layer in layers}
    rows, tested, best = [], [], None
    if kind == "layers":
        best = max(layers, key=lambda layer: by_layer[layer]["mean_r_val"].mean())
        reference = by_layer[best]["mean_r"].to_numpy(float)
    for layer in layers:
        values = by_layer[layer]
        deltas = values["mean_r"].to_numpy(float) - reference if kind == "layers" else values["delta_mean_r"].to_numpy(float)
        row = {"layer": int(layer), **across_subjects(deltas, alternative="less" if kind == "layers" else "two-sided")}
        tested.append(layer != best if kind == "layers" else bool(np.any(deltas != 0)))
        if kind == "layers":
            row = {"layer": int(layer), "mean_r_val": float(values["mean_r_val"].mean()), "mean_r": float(values["mean_r"].mean()),
                   **{k: v for k, v in row.items() if k != "layer"}, "best": layer == best}
        rows.append(row)
    table = pd.DataFrame(rows)
    tested = np.array(tested)
    table.insert(table.columns.get_loc("p_sign_flip") + 1, "p_holm", 1.0)
    if tested.any():
        table.loc[tested, "p_holm"] = metrics.holm(table.loc[tested, "p_sign_flip"].to_numpy())
    write_tsv(out_tsv, table)
    log.info("group %s over %d subjects: %s", kind, len(tables), table.to_dict("records"))
    return table


# ----------------------------------------------------------------------------- base vs tuned


def _read_scores(path: str | os.PathLike) -> pd.DataFrame:
    scores = pd.read_csv(path, sep="\t")
    missing = {"voxel", "r", "r_val", "significant"} - set(scores.columns)
    if missing:
        raise InputError(path, f"missing columns {sorted(missing)}.", "re-run the encoding rule.")
    return scores.sort_values("voxel").reset_index(drop=True)


def compare_base_tuned(
    base_scores: Mapping[int, str | os.PathLike],
    tuned_scores: Mapping[int, str | os.PathLike],
    out_tsv: str | os.PathLike,
    base_predictions: Mapping[int, str | os.PathLike] | None,
    tuned_predictions: Mapping[int, str | os.PathLike] | None,
    responses_h5: str | os.PathLike,
    test_stories: Sequence[str],
    comparison: Mapping | None = None,
) -> pd.DataFrame:
    """Per layer, held-out encoding r of the base vs the brain-tuned model (``{layer: scores.tsv}``).

    Δ = mean r(tuned) − mean r(base) over voxels with a paired block jackknife over the test
    TRs (both models' saved test predictions scored with the same block left out): its
    t-interval, a two-sided p, and Holm's correction over the layers compared (a layer
    with identical predictions, Δ = 0, gets p = 1). Also: mean and median r of each, the
    mean test r of the 10 % voxels best by the two models' summed validation r,
    significant-voxel counts and the fraction of voxels the tuned model improves
    (descriptive: voxels are not independent samples). ``comparison``: ``block_trs`` of
    :func:`brainllm.metrics.paired_block_jackknife`.
    """
    from .encoding import held_out_responses

    if set(base_scores) != set(tuned_scores):
        raise InputError(None, f"layers differ: base {sorted(base_scores)} vs tuned {sorted(tuned_scores)}.", "score the same layers for both models.")
    if not base_predictions or not tuned_predictions:
        raise InputError(None, "the base-vs-tuned comparison needs the test predictions of both models.", "set encoding.save_predictions: true.")
    comparison = dict(comparison or {})
    block_trs = int(comparison.get("block_trs", 20))
    resp = held_out_responses(responses_h5, test_stories)
    rows = []
    for layer in sorted(base_scores):
        base, tuned = _read_scores(base_scores[layer]), _read_scores(tuned_scores[layer])
        if not np.array_equal(base["voxel"].to_numpy(), tuned["voxel"].to_numpy()):
            raise InputError(tuned_scores[layer], f"layer {layer}: voxels differ from {base_scores[layer]}.", "score both models on the same subject and mask.")
        r_base, r_tuned = base["r"].to_numpy(float), tuned["r"].to_numpy(float)
        top = top_voxels(base["r_val"].to_numpy(float) + tuned["r_val"].to_numpy(float))
        pred_base, _ = read_predictions(base_predictions[layer])
        pred_tuned, _ = read_predictions(tuned_predictions[layer])
        if np.array_equal(pred_base, pred_tuned):
            test = {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p": 1.0}
        else:
            test = metrics.paired_block_jackknife(pred_tuned, pred_base, resp, block_trs)
        rows.append({
            "layer": layer,
            "mean_r_base": r_base.mean(), "mean_r_tuned": r_tuned.mean(),
            "delta_mean_r": test["delta"], "delta_ci_low": test["ci_low"], "delta_ci_high": test["ci_high"], "p": test["p"],
            "median_r_base": float(np.median(r_base)), "median_r_tuned": float(np.median(r_tuned)),
            "top10pct_r_base": r_base[top].mean(), "top10pct_r_tuned": r_tuned[top].mean(),
            "n_significant_base": int(base["significant"].astype(bool).sum()),
            "n_significant_tuned": int(tuned["significant"].astype(bool).sum()),
            "fraction_voxels_improved": float((r_tuned > r_base).mean()),
        })
        log.info("layer %d: Δ mean r %.4f [%.4f, %.4f], p %.4g", layer, test["delta"], test["ci_low"], test["ci_high"], test["p"])
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("p") + 1, "p_holm", metrics.holm(table["p"].to_numpy()))
    table["block_trs"] = block_trs
    write_tsv(out_tsv, table)
    return table
