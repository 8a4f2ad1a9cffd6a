"""Across subjects: subjects' layer and ROI scores side by side, and cross-subject encoding transfer.

**Subject tables** (:func:`subject_tables`): every subject's per-layer scores and ROI scores
at its own layer chosen on validation r, with group rows (mean, between-subject spread,
and with three or more subjects a sign-flip test across subjects against the group's
layer chosen on validation r).

**Transfer**:

For an ordered pair of subjects (source A, target B) and one model:

1. **Alignment** A → B: ridge from A's responses to B's responses on the training stories
   (the same stories, trims, segment buffers and per-story z-scoring as the encoding
   stage), one α per B voxel chosen by leave-one-story-out cross-validation — the
   encoding stage's fold-wise solver with A's voxels as features, kept in the dual when A
   has more voxels than training TRs. The test stories are never seen.
2. **Transfer**: A's encoding model (at A's layer chosen on validation r) predicts A's
   test responses from the text; the alignment maps them into B's voxels; each B voxel is
   scored by Pearson r with B's observed test responses, one-sided block-permutation p
   and BH-FDR, like the encoding stage.
3. **Within-subject reference**: B's own encoding model at B's validation-chosen layer, on
   the same voxels. The transfer ratio is mean transfer r / mean within r over B's voxels
   chosen by B's own validation r (top fraction; never by test r), and over the planted
   signal and noise voxels when a ground truth exists.

Beside it, ``r_aligned_observed``: A's observed test responses mapped by the alignment
(how well A's brain predicts B's, an upper reference for the transfer).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .encoding import (
    _read_responses,
    _set_backend,
    alpha_grid,
    build_design,
    default_segment_buffer,
    leave_one_story_out,
    resolve_backend,
    segment_buffers,
)
from .inference import MIN_GROUP_SUBJECTS, Significance, across_subjects, read_predictions, score_voxels, top_voxels
from .io import InputError, write_tsv
from .metrics import holm, paired_block_bootstrap, pearson_r

log = logging.getLogger(__name__)

__all__ = ["SubjectEncoding", "cross_subject_transfer", "plot_transfer", "stacked_responses", "plot_subjects", "subject_inputs", "subject_tables", "transfer_pair"]


@dataclass(frozen=True)
class SubjectEncoding:
    """One subject's inputs to the transfer: responses, the layer comparison and each layer's outputs.

    ``layers_tsv``: the best_layer rule's table (``best`` marks the layer chosen on
    validation r); ``scores``/``predictions``: ``{layer: path}`` of the encoding outputs;
    ``signal``/``noise``: ground-truth voxel masks (the demo), else None.
    """

    responses_h5: str | os.PathLike
    layers_tsv: str | os.PathLike
    scores: Mapping[int, str | os.PathLike]
    predictions: Mapping[int, str | os.PathLike]
    signal: np.ndarray | None = None
    noise: np.ndarray | None = None


def subject_inputs(subjects: Sequence[str], layers: Sequence[int], inputs) -> dict[str, SubjectEncoding]:
    """Each subject's :class:`SubjectEncoding` from the rule's inputs (lists in subject order, layers within).

    ``inputs``: ``responses``, ``layers``, ``scores``, ``predictions`` and, with a ground
    truth, ``truth``, ``dataset_masks``, ``masks`` (noise voxels: neither the planted layer's
    nor the planted emotion's).
    """
    from .report import ground_truth_voxels

    n_layers = len(layers)
    responses, tables, scores, predictions = (list(inputs.get(name)) for name in ("responses", "layers", "scores", "predictions"))
    truth, dataset_masks, masks = inputs.get("truth"), inputs.get("dataset_masks"), inputs.get("masks")
    out = {}
    for index, subject in enumerate(subjects):
        per_layer = slice(index * n_layers, (index + 1) * n_layers)
        signal = noise = None
        if truth:
            planted = ground_truth_voxels(str(truth), subject, dataset_masks[index], masks[index])
            signal, noise = planted["signal"], ~planted["signal"] & ~planted["emotion"]
        out[subject] = SubjectEncoding(
            responses[index], tables[index], dict(zip(layers, scores[per_layer])), dict(zip(layers, predictions[per_layer])), signal, noise,
        )
    return out


def stacked_responses(responses_h5, train_stories: Sequence[str], test_stories: Sequence[str], settings: Mapping):
    """``(Y_train, train_lengths, Y_test, test_lengths)`` prepared exactly as the encoding stage prepares them."""
    responses, _ = _read_responses(responses_h5, list(train_stories) + list(test_stories))
    buffers = segment_buffers(responses_h5, train_stories, test_stories, default_segment_buffer(settings))
    _, Y_train, train_lengths = build_design({}, responses, train_stories, [], responses_h5, buffers)
    _, Y_test, test_lengths = build_design({}, responses, test_stories, [], responses_h5)
    return Y_train, train_lengths, Y_test, test_lengths


def chosen_layer(layers_tsv) -> int:
    """The layer marked `best` (chosen on validation r) in a best_layer `layers.tsv`."""
    table = pd.read_csv(layers_tsv, sep="\t")
    if "best" not in table.columns or not table["best"].astype(bool).any():
        raise InputError(layers_tsv, "no layer marked `best`.", "rerun the best_layer rule (it needs validation r: encoding.cv_score: correlation).")
    return int(table.loc[table["best"].astype(bool), "layer"].iloc[0])


def transfer_pair(
    source_train: np.ndarray,
    target_train: np.ndarray,
    train_lengths: Sequence[int],
    source_prediction: np.ndarray,
    source_test: np.ndarray,
    target_test: np.ndarray,
    settings: Mapping,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Per target voxel: ``r`` (transfer), ``p``, ``p_fdr``, ``significant``, ``r_aligned_observed``, ``alpha``.

    ``source_train`` (n_train, v_A) → ``target_train`` (n_train, v_B) by ridge with per-voxel
    α (leave-one-story-out over ``train_lengths``; the fold-wise solvers of
    :mod:`brainllm.ridge_cv` on ``encoding.backend``); applied to ``source_prediction``
    (n_test, v_A, the source's encoding prediction) and to ``source_test`` (its observed
    test responses). With more source voxels than training TRs the alignment stays in the
    dual (``(new · source_trainᵀ) · C``), so no v_A × v_B matrix is formed. Returns the
    table, the transferred prediction (n_test, v_B) and the alignment's validation r per
    target voxel.
    """
    from .ridge_cv import kernel_ridge_cv_eigh, ridge_cv_eigh

    _set_backend(resolve_backend(settings.get("backend", "auto")))
    splits = leave_one_story_out(train_lengths)
    alphas = alpha_grid(**settings.get("alphas", {}))
    batch = int(settings.get("n_targets_batch", 4096))
    X = np.ascontiguousarray(source_train, dtype=np.float32)
    Y = np.ascontiguousarray(target_train, dtype=np.float32)
    if X.shape[0] <= X.shape[1]:
        coefficients, chosen, _, validation_r = kernel_ridge_cv_eigh(X, Y, splits, alphas, "correlation", batch, primal=False)

        def align(new):
            return (np.asarray(new, dtype=np.float32) @ X.T) @ coefficients
    else:
        weights, chosen, _, validation_r = ridge_cv_eigh(X, Y, splits, alphas, "correlation", batch)

        def align(new):
            return np.asarray(new, dtype=np.float32) @ weights
    log.info("alignment %d → %d voxels (%s): α chosen in [%g, %g]", X.shape[1], Y.shape[1],
             "dual" if X.shape[0] <= X.shape[1] else "primal", chosen.min(), chosen.max())
    transferred = align(source_prediction)
    scores = score_voxels(transferred, target_test, float(settings.get("fdr_q", 0.05)), Significance.from_settings(settings))
    scores["r_aligned_observed"] = pearson_r(align(source_test), target_test)
    scores["alpha"] = chosen
    return scores, transferred, np.asarray(validation_r, dtype=np.float64)


def _check_same_trs(subjects: Mapping[str, tuple], which: str) -> None:
    lengths = {subject: list(parts) for subject, parts in subjects.items()}
    first_subject, first = next(iter(lengths.items()))
    for subject, other in lengths.items():
        if other != first:
            raise InputError(None, f"{which} stories have TRs {first} for sub-{first_subject} but {other} for sub-{subject}: "
                             "cross-subject alignment needs the same TRs of the same stories.",
                             "give every subject the same runs and trims (dataset.trim_start/trim_end).")


def cross_subject_transfer(
    subjects: Mapping[str, SubjectEncoding],
    train_stories: Sequence[str],
    test_stories: Sequence[str],
    settings: Mapping,
    out_tsv: str | os.PathLike,
    voxel_fraction: float = 0.1,
) -> pd.DataFrame:
    """Every ordered pair of ``subjects`` (≥ 2): transfer vs within-subject r; writes ``out_tsv``.

    Rows: ``source, target, source_layer, target_layer, n_voxels, mean_r_transfer,
    mean_r_within, ratio, mean_r_aligned_observed, n_significant`` over the target's
    ``voxel_fraction`` best voxels by its own validation r, and the same means over its
    ground-truth signal and noise voxels (``*_signal``, ``*_noise``; NaN without one), and
    the paired comparison of transfer with within-subject r on the top voxels:
    ``delta_vs_within`` (Δ mean r) with its 95 % CI and two-sided p from a paired block
    bootstrap over test TRs (``encoding.comparison``), Holm-corrected over the pairs
    (``p_vs_within_holm``). The diagonal rows (source = target) hold the within-subject figures.
    """
    if len(subjects) < 2:
        raise InputError(None, f"cross-subject transfer needs at least 2 subjects, the dataset lists {len(subjects)}.",
                         "list more subjects under dataset.subjects, or leave the `group` section out.")
    prepared, chosen, within = {}, {}, {}
    for subject, inputs in subjects.items():
        prepared[subject] = stacked_responses(inputs.responses_h5, train_stories, test_stories, settings)
        chosen[subject] = chosen_layer(inputs.layers_tsv)
        table = pd.read_csv(inputs.scores[chosen[subject]], sep="\t")
        within[subject] = (table["r"].to_numpy(dtype=np.float64), table["r_val"].to_numpy(dtype=np.float64), table["significant"].to_numpy(dtype=bool))
    _check_same_trs({s: p[1] for s, p in prepared.items()}, "training")
    _check_same_trs({s: p[3] for s, p in prepared.items()}, "test")

    rows = []
    for target, target_inputs in subjects.items():
        _, _, target_test, _ = prepared[target]
        r_within, r_val, significant_within = within[target]
        within_prediction, _ = read_predictions(target_inputs.predictions[chosen[target]])
        if within_prediction.shape != target_test.shape:
            raise InputError(target_inputs.predictions[chosen[target]], f"predictions of shape {within_prediction.shape}, expected "
                             f"{target_test.shape} (test TRs, voxels of sub-{target}).", "rerun the encoding rule of this subject.")
        top = np.zeros(r_within.size, dtype=bool)
        top[top_voxels(r_val, voxel_fraction)] = True
        voxel_sets = {"": top, "_signal": target_inputs.signal, "_noise": target_inputs.noise}
        for source, source_inputs in subjects.items():
            row = {"source": source, "target": target, "source_layer": chosen[source], "target_layer": chosen[target], "n_voxels": int(top.sum())}
            if source == target:
                transfer = pd.DataFrame({"r": r_within, "significant": significant_within, "r_aligned_observed": np.nan})
            else:
                source_train, train_lengths, source_test, _ = prepared[source]
                prediction, _ = read_predictions(source_inputs.predictions[chosen[source]])
                if prediction.shape != (source_test.shape[0], source_train.shape[1]):
                    raise InputError(source_inputs.predictions[chosen[source]], f"predictions of shape {prediction.shape}, expected "
                                     f"{(source_test.shape[0], source_train.shape[1])} (test TRs, voxels of sub-{source}).",
                                     "rerun the encoding rule of this subject.")
                transfer, transferred, alignment_r = transfer_pair(source_train, prepared[target][0], train_lengths, prediction, source_test,
                                                                   target_test, settings)
                comparison = settings.get("comparison", {})
                boot = paired_block_bootstrap(transferred[:, top], within_prediction[:, top], target_test[:, top],
                                              int(comparison.get("block_trs", 20)), int(comparison.get("n_boot", 1000)), int(settings.get("seed", 0)))
                row.update(delta_vs_within=boot["delta"], delta_ci_low=boot["ci_low"], delta_ci_high=boot["ci_high"], p_vs_within=boot["p"],
                           mean_r_alignment_val=float(np.nanmean(alignment_r[top])))
            for suffix, voxels in voxel_sets.items():
                if voxels is None or not np.any(voxels):
                    row.update({f"mean_r_transfer{suffix}": np.nan, f"mean_r_within{suffix}": np.nan, f"ratio{suffix}": np.nan,
                                f"mean_r_aligned_observed{suffix}": np.nan})
                    continue
                mean_transfer = float(transfer["r"].to_numpy()[voxels].mean())
                mean_within = float(r_within[voxels].mean())
                row.update({
                    f"mean_r_transfer{suffix}": mean_transfer,
                    f"mean_r_within{suffix}": mean_within,
                    f"ratio{suffix}": mean_transfer / mean_within if mean_within > 0 else np.nan,
                    f"mean_r_aligned_observed{suffix}": float(np.nanmean(transfer["r_aligned_observed"].to_numpy()[voxels]))
                    if source != target else np.nan,
                })
            row["n_significant"] = int(transfer["significant"].astype(bool).sum())
            rows.append(row)
            log.info("sub-%s → sub-%s (layers %d → %d): mean r transfer %.3f, within %.3f on the target's top %.0f%% voxels by validation r",
                     source, target, chosen[source], chosen[target], row["mean_r_transfer"], row["mean_r_within"], 100 * voxel_fraction)
    table = pd.DataFrame(rows)
    across = table["source"] != table["target"]
    table["p_vs_within_holm"] = np.nan
    table.loc[across, "p_vs_within_holm"] = holm(table.loc[across, "p_vs_within"].to_numpy())
    write_tsv(out_tsv, table)
    return table


def plot_transfer(transfer_tsvs: Sequence[str | os.PathLike], png, svg, tsv, dpi: int = 150) -> pd.DataFrame:
    """The transfer matrices of every model (``R/group/model-M_transfer.tsv``) as one figure and table."""
    from . import figures

    tables = []
    for path in transfer_tsvs:
        model = os.path.basename(str(path)).removeprefix("model-").removesuffix("_transfer.tsv")
        tables.append(pd.read_csv(path, sep="\t").assign(model=model))
    table = pd.concat(tables, ignore_index=True)
    write_tsv(tsv, table)
    with figures.styled():
        figures.save_figure(figures.transfer_figure(table), png, svg, dpi)
    log.info("transfer matrices of %d models -> %s", len(tables), png)
    return table


# ----------------------------------------------------------------------------- subjects side by side

SUBJECT_LAYER_COLUMNS = ("layer", "mean_r_val", "mean_r", "mean_r_top10", "best")
NO_TEST_NOTE = f"fewer than {MIN_GROUP_SUBJECTS} subjects: no sign-flip test across subjects"


def subject_tables(
    layers_tsvs: Mapping[str, str | os.PathLike],
    roi_tsvs: Mapping[str, Mapping[int, str | os.PathLike]],
    out_layers: str | os.PathLike,
    out_rois: str | os.PathLike,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Subject × layer and subject × ROI tables of one model, with group rows.

    ``layers_tsvs``: ``{subject: _layers.tsv}`` (each subject's layer chosen on validation r
    is its ``best`` row); ``roi_tsvs``: ``{subject: {layer: _roi.tsv}}``. The layer table
    holds one row per (subject, layer) and per layer a ``group`` row: means over subjects,
    the between-subject SD and 95 % t-interval of mean test r, and — with ≥ 3 subjects — Δ
    mean r against the group's layer chosen on mean validation r with its t-interval,
    exact sign-flip p and Holm over layers (else a note says why not); ``chosen_layer_*``
    columns give the spread of the subjects' chosen layers. The ROI table holds each
    subject's ROI scores at its own chosen layer and per ROI a ``group`` row (mean, SD).
    """
    from scipy import stats

    frames = []
    for subject, path in layers_tsvs.items():
        frame = pd.read_csv(path, sep="\t")
        missing = set(SUBJECT_LAYER_COLUMNS) - set(frame.columns)
        if missing:
            raise InputError(path, f"missing columns {sorted(missing)}.", "rerun the best_layer rule.")
        frames.append(frame[list(SUBJECT_LAYER_COLUMNS)].assign(subject=str(subject)))
    per_subject = pd.concat(frames, ignore_index=True)
    per_subject["best"] = per_subject["best"].astype(bool)
    chosen = per_subject[per_subject["best"]].set_index("subject")["layer"].astype(int)
    n_subjects = len(layers_tsvs)
    layers = sorted(set.intersection(*[set(frame["layer"]) for frame in frames]))
    group_best = max(layers, key=lambda layer: per_subject.loc[per_subject["layer"] == layer, "mean_r_val"].mean())
    reference = per_subject[per_subject["layer"] == group_best].set_index("subject")["mean_r"]
    rows, tested = [], []
    for layer in layers:
        values = per_subject[per_subject["layer"] == layer].set_index("subject")
        r = values["mean_r"].to_numpy(dtype=np.float64)
        half = float(stats.t.ppf(0.975, n_subjects - 1) * r.std(ddof=1) / np.sqrt(n_subjects)) if n_subjects > 1 else np.nan
        row = {"subject": "group", "layer": int(layer), "mean_r_val": float(values["mean_r_val"].mean()), "mean_r": float(r.mean()),
               "mean_r_top10": float(values["mean_r_top10"].mean()), "best": layer == group_best,
               "sd_r": float(r.std(ddof=1)) if n_subjects > 1 else np.nan, "r_ci_low": float(r.mean()) - half, "r_ci_high": float(r.mean()) + half,
               "n_subjects": n_subjects, "chosen_by": int((chosen == layer).sum())}
        if n_subjects >= MIN_GROUP_SUBJECTS:
            comparison = across_subjects(r - reference.loc[values.index].to_numpy(dtype=np.float64))
            row.update({f"{key}_vs_best" if key in ("delta", "ci_low", "ci_high") else key: value for key, value in comparison.items() if key != "n_subjects"})
            tested.append(layer != group_best)
        rows.append(row)
    group_rows = pd.DataFrame(rows)
    if n_subjects >= MIN_GROUP_SUBJECTS:
        group_rows["p_holm"] = np.nan
        mask = np.array(tested)
        if mask.any():
            group_rows.loc[mask, "p_holm"] = holm(group_rows.loc[mask, "p_sign_flip"].to_numpy())
        group_rows["note"] = ""
    else:
        group_rows["note"] = NO_TEST_NOTE
        log.info("%s (%d)", NO_TEST_NOTE, n_subjects)
    group_rows["chosen_layer_mean"] = float(chosen.mean())
    group_rows["chosen_layer_sd"] = float(chosen.std(ddof=1)) if n_subjects > 1 else np.nan
    group_rows["chosen_layer_min"], group_rows["chosen_layer_max"] = int(chosen.min()), int(chosen.max())
    layer_table = pd.concat([per_subject, group_rows], ignore_index=True)

    roi_frames = []
    for subject, by_layer in roi_tsvs.items():
        layer = int(chosen.loc[str(subject)])
        frame = pd.read_csv(by_layer[layer], sep="\t")
        if not {"roi", "n_voxels", "mean_r"} <= set(frame.columns):
            raise InputError(by_layer[layer], "missing columns roi, n_voxels or mean_r.", "rerun the encoding rule.")
        roi_frames.append(frame[["roi", "n_voxels", "mean_r"]].assign(subject=str(subject), layer=layer))
    per_roi = pd.concat(roi_frames, ignore_index=True)
    summary = per_roi.groupby("roi", sort=False)["mean_r"].agg(["mean", "std", "count"]).reset_index()
    roi_group = pd.DataFrame({"roi": summary["roi"], "n_voxels": np.nan, "mean_r": summary["mean"], "subject": "group", "layer": np.nan,
                              "sd_r": summary["std"], "n_subjects": summary["count"]})
    roi_table = pd.concat([per_roi, roi_group], ignore_index=True)
    write_tsv(out_layers, layer_table)
    write_tsv(out_rois, roi_table)
    log.info("subjects' chosen layers %s; group layer %d", chosen.to_dict(), group_best)
    return layer_table, roi_table


def plot_subjects(layer_tsvs: Sequence[str | os.PathLike], roi_tsvs: Sequence[str | os.PathLike], png, svg, tsv, dpi: int = 150) -> pd.DataFrame:
    """The subjects-side-by-side figure of every model (``R/group/model-M_subject_{layers,rois}.tsv``)."""
    from . import figures

    def stacked(paths, suffix):
        return pd.concat([pd.read_csv(path, sep="\t", dtype={"subject": str}).assign(
            model=os.path.basename(str(path)).removeprefix("model-").removesuffix(suffix)) for path in paths], ignore_index=True)

    layers, rois = stacked(layer_tsvs, "_subject_layers.tsv"), stacked(roi_tsvs, "_subject_rois.tsv")
    write_tsv(tsv, layers)
    with figures.styled():
        figures.save_figure(figures.subjects_figure(layers, rois), png, svg, dpi)
    log.info("subjects side by side, %d models -> %s", layers["model"].nunique(), png)
    return layers
