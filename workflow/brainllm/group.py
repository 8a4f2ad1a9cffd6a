"""Across subjects: subjects' layer and ROI scores side by side, cross-subject encoding transfer,
and the inter-subject correlation (ISC) of the responses.

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
from .metrics import holm, paired_block_jackknife, pearson_r, unit_columns

log = logging.getLogger(__name__)

__all__ = ["IscSettings", "SubjectEncoding", "cross_subject_transfer", "inter_subject_correlation", "isc_scores", "map_similarity", "plot_isc", "plot_transfer", "stacked_responses", "plot_subjects", "subject_inputs", "subject_tables", "transfer_pair"]


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


def planted_voxels(truth, subject: str, dataset_mask, mask) -> tuple[np.ndarray, np.ndarray]:
    """Over ``subject``'s analysed voxels: the planted layer's voxels, and the pure-noise ones (neither it nor the planted emotion)."""
    from .report import ground_truth_voxels

    planted = ground_truth_voxels(str(truth), subject, dataset_mask, mask)
    return planted["signal"], ~planted["signal"] & ~planted["emotion"]


def subject_inputs(subjects: Sequence[str], layers: Sequence[int], inputs) -> dict[str, SubjectEncoding]:
    """Each subject's :class:`SubjectEncoding` from the rule's inputs (lists in subject order, layers within).

    ``inputs``: ``responses``, ``layers``, ``scores``, ``predictions`` and, with a ground
    truth, ``truth``, ``dataset_masks``, ``masks`` (noise voxels: neither the planted layer's
    nor the planted emotion's).
    """
    n_layers = len(layers)
    responses, tables, scores, predictions = (list(inputs.get(name)) for name in ("responses", "layers", "scores", "predictions"))
    truth, dataset_masks, masks = inputs.get("truth"), inputs.get("dataset_masks"), inputs.get("masks")
    out = {}
    for index, subject in enumerate(subjects):
        per_layer = slice(index * n_layers, (index + 1) * n_layers)
        signal = noise = None
        if truth:
            signal, noise = planted_voxels(truth, subject, dataset_masks[index], masks[index])
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
    jackknife over test TRs (``encoding.comparison``), Holm-corrected over the pairs
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
                test = paired_block_jackknife(transferred[:, top], within_prediction[:, top], target_test[:, top], int(comparison.get("block_trs", 20)))
                row.update(delta_vs_within=test["delta"], delta_ci_low=test["ci_low"], delta_ci_high=test["ci_high"], p_vs_within=test["p"],
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


def plot_shared_encoder(tables: Sequence[str | os.PathLike], png, svg, tsv, dpi: int = 150) -> pd.DataFrame:
    """The shared contrastive encoder's tables of every model (``R/group/model-M_shared_encoder.tsv``) as one figure and table."""
    from . import figures

    table = pd.concat([
        pd.read_csv(path, sep="\t", dtype={"subject": str}).assign(model=os.path.basename(str(path)).removeprefix("model-").removesuffix("_shared_encoder.tsv"))
        for path in tables
    ], ignore_index=True)
    write_tsv(tsv, table)
    with figures.styled():
        figures.save_figure(figures.shared_encoder_figure(table), png, svg, dpi)
    log.info("shared encoder of %d models -> %s", len(tables), png)
    return table


# ----------------------------------------------------------------------------- subjects side by side

SUBJECT_LAYER_COLUMNS = ("layer", "mean_r_val", "mean_r", "mean_r_top10", "best")
WITHIN_SUBJECT_COLUMNS = ("delta_vs_best", "delta_ci_low", "delta_ci_high", "p_vs_best")  # best_layer's paired block jackknife
NO_TEST_NOTE = f"fewer than {MIN_GROUP_SUBJECTS} subjects: no sign-flip test across subjects"
DIFFERENCE_COLUMNS = ("subject", "chosen_layer", "others_layer", "delta_r", "ci_low", "ci_high", "p", "p_holm", "differs", "note")
NO_DIFFERENCE_NOTE = f"fewer than {MIN_GROUP_SUBJECTS} subjects: no subject is compared with the others"


def subject_differences(per_subject: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Which subjects differ from the others: one row per subject.

    ``per_subject``: the subjects' best_layer rows (``subject``, ``layer``, ``mean_r_val``,
    ``best`` and the within-subject comparison with the subject's own layer chosen on
    validation r: ``delta_vs_best``, its CI and paired block-jackknife ``p_vs_best``).
    ``others_layer`` is the layer the other subjects choose (highest mean validation r over
    them); ``delta_r`` = the subject's test r at that layer − at its own chosen layer, with the
    subject's own CI and p. A subject ``differs`` when that Δ is negative (the others' layer
    predicts its test story worse) with Holm-corrected p < ``alpha`` over the subjects whose
    own layer is not the others'. Every choice is made on validation r; the test story only
    decides the test. With fewer than ``MIN_GROUP_SUBJECTS`` subjects "the others" are one
    subject and the comparison is symmetric: nothing is tested and ``note`` says so.
    """
    enough = per_subject["subject"].nunique() >= MIN_GROUP_SUBJECTS
    rows = []
    for subject, own in per_subject.groupby("subject", sort=False):
        others = per_subject[per_subject["subject"] != subject]
        others_layer = int(others.groupby("layer")["mean_r_val"].mean().idxmax())
        chosen = int(own.loc[own["best"].astype(bool), "layer"].iloc[0])
        at = own.set_index("layer").loc[others_layer]
        tested = enough and chosen != others_layer
        rows.append({"subject": subject, "chosen_layer": chosen, "others_layer": others_layer,
                     "delta_r": float(at["delta_vs_best"]), "ci_low": float(at["delta_ci_low"]), "ci_high": float(at["delta_ci_high"]),
                     "p": float(at["p_vs_best"]) if tested else 1.0, "tested": tested})
    table = pd.DataFrame(rows)
    table["p_holm"] = 1.0
    if table["tested"].any():
        table.loc[table["tested"], "p_holm"] = holm(table.loc[table["tested"], "p"].to_numpy())
    table["differs"] = table["tested"] & (table["delta_r"] < 0) & (table["p_holm"] < alpha)
    table["note"] = "" if enough else NO_DIFFERENCE_NOTE
    return table[list(DIFFERENCE_COLUMNS)]


def subject_tables(
    layers_tsvs: Mapping[str, str | os.PathLike],
    roi_tsvs: Mapping[str, Mapping[int, str | os.PathLike]],
    out_layers: str | os.PathLike,
    out_rois: str | os.PathLike,
    out_differences: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Subject × layer and subject × ROI tables of one model, with group rows; and, to
    ``out_differences``, :func:`subject_differences` (its ``differs`` also marks the subject's
    rows of the layer table).

    ``layers_tsvs``: ``{subject: _layers.tsv}`` (each subject's layer chosen on validation r
    is its ``best`` row); ``roi_tsvs``: ``{subject: {layer: _roi.tsv}}``. The layer table
    holds one row per (subject, layer) and per layer a ``group`` row: means over subjects,
    the between-subject SD and 95 % t-interval of mean test r, and — with ≥ 3 subjects — Δ
    mean r against the group's layer chosen on mean validation r with its t-interval,
    exact one-sided sign-flip p (H1: the layer chosen on validation predicts the test data
    better) and Holm over layers (else a note says why not); ``chosen_layer_*``
    columns give the spread of the subjects' chosen layers. The ROI table holds each
    subject's ROI scores at its own chosen layer and per ROI a ``group`` row (mean, SD).
    """
    from scipy import stats

    frames = []
    for subject, path in layers_tsvs.items():
        frame = pd.read_csv(path, sep="\t")
        missing = set(SUBJECT_LAYER_COLUMNS + WITHIN_SUBJECT_COLUMNS) - set(frame.columns)
        if missing:
            raise InputError(path, f"missing columns {sorted(missing)}.", "rerun the best_layer rule.")
        frames.append(frame[list(SUBJECT_LAYER_COLUMNS + WITHIN_SUBJECT_COLUMNS)].assign(subject=str(subject)))
    within = pd.concat(frames, ignore_index=True)
    within["best"] = within["best"].astype(bool)
    differences = subject_differences(within)
    per_subject = within[list(SUBJECT_LAYER_COLUMNS) + ["subject"]].copy()
    per_subject["differs_from_group"] = per_subject["subject"].map(differences.set_index("subject")["differs"])
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
            comparison = across_subjects(r - reference.loc[values.index].to_numpy(dtype=np.float64), alternative="less")
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
    if out_differences is not None:
        write_tsv(out_differences, differences)
    log.info("subjects' chosen layers %s; group layer %d; differing from the others: %s", chosen.to_dict(), group_best,
             differences.loc[differences["differs"], "subject"].tolist() or "none")
    return layer_table, roi_table


def map_similarity(layer_table: pd.DataFrame, maps: Mapping[str, Mapping[int, str | os.PathLike]], masks: Sequence[str | os.PathLike],
                   roi_table: pd.DataFrame, out_tsv: str | os.PathLike) -> pd.DataFrame:
    """How alike the subjects' score maps are: per pair of subjects, Pearson r of their test-r maps (``maps``:
    subject → layer → r map; each subject's at its layer chosen on validation r, the ``best`` rows of
    ``layer_table``) over the voxels inside both masks when every mask lies on one grid (level ``voxel``), and of
    their ROI mean r (``roi_table``, the subject_rois rows; the whole-mask row ``all`` left out) across the ROIs
    both have (level ``roi``; r is left empty with fewer than 3). The tables are those :func:`subject_tables` returns."""
    import nibabel as nib

    subjects = list(maps)
    chosen = layer_table[(layer_table["subject"] != "group") & layer_table["best"].astype(bool)].set_index("subject")["layer"]
    r_maps = {s: maps[s][int(chosen.loc[s])] for s in subjects}
    rows = []
    common = _common_grid(masks)
    volumes = {s: np.asarray(nib.load(os.fspath(path)).dataobj, dtype=np.float64) for s, path in r_maps.items()} if common is not None else {}
    subject_masks = {s: np.asarray(nib.load(os.fspath(path)).dataobj) > 0 for s, path in zip(subjects, masks)} if common is not None else {}
    regions = roi_table[(roi_table["subject"].astype(str) != "group") & (roi_table["roi"] != "all")]  # "all": every voxel, not a region
    per_roi = regions.pivot_table(index="roi", columns="subject", values="mean_r")
    per_roi.columns = per_roi.columns.astype(str)
    for i, a in enumerate(subjects):
        for b in subjects[i + 1:]:
            if common is not None:
                both = subject_masks[a] & subject_masks[b]
                rows.append({"subject_a": a, "subject_b": b, "level": "voxel", "n": int(both.sum()),
                             "r": float(pearson_r(volumes[a][both], volumes[b][both])[0]) if both.sum() > 2 else np.nan})
            shared = per_roi[[a, b]].dropna() if {a, b} <= set(per_roi.columns) else per_roi.iloc[:0]
            rows.append({"subject_a": a, "subject_b": b, "level": "roi", "n": len(shared),
                         "r": float(pearson_r(shared[a].to_numpy(), shared[b].to_numpy())[0]) if len(shared) >= 3 else np.nan})
    table = pd.DataFrame(rows, columns=["subject_a", "subject_b", "level", "n", "r"])
    write_tsv(out_tsv, table)
    log.info("score-map similarity: %s", ", ".join(f"{r.subject_a}-{r.subject_b} {r.level} {r.r:.2f}" for r in table.itertuples()))
    return table


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


# ----------------------------------------------------------------------------- inter-subject correlation

@dataclass(frozen=True)
class IscSettings:
    """``group.isc``: the circular-shift null of the leave-one-out ISC."""

    n_permutations: int = 1000
    min_shift_trs: int = 10  # smallest circular shift of a story's time series in the null
    fdr_q: float = 0.05
    seed: int = 0

    @classmethod
    def from_config(cls, section: Mapping | None, seed: int = 0) -> "IscSettings":
        section = dict(section or {})
        return cls(int(section.get("n_permutations", cls.n_permutations)), int(section.get("min_shift_trs", cls.min_shift_trs)),
                   float(section.get("fdr_q", cls.fdr_q)), int(seed))


def leave_one_out_isc(data: np.ndarray) -> np.ndarray:
    """``data (n_subjects, n_trs, n_units)`` → ``(n_subjects, n_units)``: each subject's r with the mean of the
    others, every series standardised first (a subject's scale does not weigh in the mean)."""
    z = np.stack([unit_columns(x) for x in data])
    total = z.sum(axis=0)
    return np.stack([pearson_r(z[s], total - z[s]) for s in range(z.shape[0])])


def shifted_dot_products(x: np.ndarray, y: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    """Per story, ``(n_trs_story, n_columns)``: row τ = Σ_t roll(x_story, τ)[t] · y_story[t] (circular, by FFT)."""
    bounds = np.cumsum([0, *lengths])
    out = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        n = stop - start
        spectrum = np.conj(np.fft.rfft(x[start:stop], axis=0)) * np.fft.rfft(y[start:stop], axis=0)
        out.append(np.fft.irfft(spectrum, n=n, axis=0))
    return out


def isc_null_shifts(lengths: Sequence[int], n_subjects: int, settings: IscSettings) -> np.ndarray:
    """``(n_permutations, n_subjects, n_stories)`` circular shifts: the first subject stays, each other subject
    moves by its own shift per story, at least ``min_shift_trs`` from 0 either way."""
    rng = np.random.default_rng([settings.seed, 0x15C])
    shifts = np.stack([rng.integers(settings.min_shift_trs, n - settings.min_shift_trs + 1, size=(settings.n_permutations, n_subjects))
                       for n in lengths], axis=-1)
    shifts[:, 0] = 0
    return shifts


def circular_shift_null(data: np.ndarray, lengths: Sequence[int], settings: IscSettings, chunk_bytes: int = 2**28) -> np.ndarray:
    """``(n_permutations, n_units)`` null of the subjects' mean leave-one-out ISC.

    Each permutation shifts the subjects' series circularly within each story
    (:func:`isc_null_shifts`) and recomputes the whole statistic: every series keeps its
    autocorrelation, the time locking with the first subject is broken (two shifted subjects
    may land close to each other's timing, which can only make the null conservative).
    Computed from pairwise dot products of centred unit-norm columns z (a constant column
    stays 0): a shift within a story keeps a column's mean and norm, so with T = Σ_b z_b,
    subject s's r = Σ_{b≠s} z_s·z_b / ‖T − z_s‖, where ‖T − z_s‖² = Σ_{b≠s} ‖z_b‖² +
    2 Σ_{a<b; a,b≠s} z_a·z_b and each dot product at a pair's relative shifts is a sum over
    stories of circular cross-correlations (FFT).
    """
    n_subjects, n_trs, n_units = data.shape
    shifts = isc_null_shifts(lengths, n_subjects, settings)
    lengths_array = np.asarray(lengths)
    pairs = [(a, b) for a in range(n_subjects) for b in range(a + 1, n_subjects)]
    null = np.empty((settings.n_permutations, n_units))
    chunk = max(1, chunk_bytes // (8 * len(pairs) * max(n_trs, settings.n_permutations)))
    for first in range(0, n_units, chunk):
        units = slice(first, min(first + chunk, n_units))
        z = [unit_columns(data[s, :, units]) for s in range(n_subjects)]
        dots = {}
        for a, b in pairs:
            relative = (shifts[:, b] - shifts[:, a]) % lengths_array  # (n_permutations, n_stories)
            by_story = shifted_dot_products(z[b], z[a], lengths)
            dots[a, b] = sum(lagged[relative[:, story]] for story, lagged in enumerate(by_story))
        norms = np.stack([(column**2).sum(axis=0) for column in z])  # (n_subjects, n_units): 1, or 0 for a constant column
        all_pairs = sum(dots.values())
        total = 0.0
        for s in range(n_subjects):
            own = sum(dots[min(s, b), max(s, b)] for b in range(n_subjects) if b != s)  # z_s · (T − z_s)
            squared_norm = (norms.sum(axis=0) - norms[s]) + 2 * (all_pairs - own)
            total = total + own / np.sqrt(np.maximum(squared_norm, 1e-12))
        null[:, units] = total / n_subjects
    return null


def isc_scores(data: np.ndarray, lengths: Sequence[int], settings: IscSettings, fdr: bool = True) -> pd.DataFrame:
    """Per unit: each subject's leave-one-out ISC, their mean, the null's 95th percentile, one-sided
    circular-shift p (ISC > 0) and, with ``fdr``, BH-FDR over the units (:func:`with_fdr`)."""
    if data.shape[0] < 2:
        raise InputError(None, f"ISC needs two or more subjects, got {data.shape[0]}.", "list more dataset.subjects.")
    too_short = [n for n in lengths if n < 2 * settings.min_shift_trs + 1]
    if too_short:
        raise InputError(None, f"stories of {too_short} TRs are too short for circular shifts of at least {settings.min_shift_trs} TRs.",
                         "lower group.isc.min_shift_trs.")
    per_subject = leave_one_out_isc(data)
    observed = per_subject.mean(axis=0)
    null = circular_shift_null(data, lengths, settings)
    table = pd.DataFrame({f"isc_{i}": row for i, row in enumerate(per_subject)})
    table.insert(0, "isc", observed)
    table["null_95"] = np.quantile(null, 0.95, axis=0)
    table["p"] = (1 + (null >= observed[None, :]).sum(axis=0)) / (1 + settings.n_permutations)
    return with_fdr(table, settings.fdr_q) if fdr else table


def with_fdr(table: pd.DataFrame, q: float) -> pd.DataFrame:
    """``p_fdr`` (BH over the table's rows) and ``significant`` (p_fdr ≤ q and ISC > 0)."""
    from .metrics import fdr_bh

    p_fdr, passed = fdr_bh(table["p"].to_numpy(), q)
    return table.assign(p_fdr=p_fdr, significant=passed & (table["isc"].to_numpy() > 0))


def _story_lengths(responses_h5s: Sequence[str | os.PathLike], subjects: Sequence[str], stories: Sequence[str]) -> list[int]:
    """The stories' TR counts, the same for every subject (else a clear error)."""
    from .io import open_h5

    lengths = None
    for subject, path in zip(subjects, responses_h5s):
        with open_h5(path) as h5:
            missing = [story for story in stories if story not in h5 or "data" not in h5[story]]
            if missing:
                raise InputError(path, f"no responses for stories {missing}.", "check dataset.train_stories/test_stories against the ingested runs.")
            these = [int(h5[story]["data"].shape[0]) for story in stories]
        if lengths is None:
            lengths = these
        elif these != lengths:
            differs = [story for story, a, b in zip(stories, lengths, these) if a != b]
            raise InputError(path, f"subject {subject!r} has other TR counts than subject {subjects[0]!r} on {differs}.",
                             "ISC needs the same stories on the same TR grid: check the runs' trims (preprocess.trim_start/trim_end).")
    return lengths


def _read_columns(responses_h5: str | os.PathLike, stories: Sequence[str], columns: np.ndarray) -> np.ndarray:
    """``(n_trs, len(columns))`` float64: the stories' responses in the (increasing) ``columns``, concatenated."""
    from .io import open_h5

    low, high = int(columns[0]), int(columns[-1]) + 1
    with open_h5(responses_h5) as h5:
        return np.concatenate([h5[story]["data"][:, low:high][:, columns - low] for story in stories]).astype(np.float64)


def _common_grid(masks: Sequence[str | os.PathLike]) -> np.ndarray | None:
    """The voxels inside every subject's mask when all masks share one grid and affine, else None."""
    import nibabel as nib

    images = [nib.load(os.fspath(path)) for path in masks]
    first = images[0]
    if any(image.shape != first.shape or not np.allclose(image.affine, first.affine, atol=1e-3) for image in images[1:]):
        return None
    return np.logical_and.reduce([np.asarray(image.dataobj) > 0 for image in images])


def inter_subject_correlation(subjects: Sequence[str], responses_h5s: Sequence[str | os.PathLike], masks: Sequence[str | os.PathLike],
                              stories: Sequence[str], settings: IscSettings, out: Mapping[str, str | os.PathLike],
                              atlases: Sequence[tuple[str | os.PathLike, str | os.PathLike]] | None = None,
                              truth: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None, chunk_bytes: int = 2**29) -> dict:
    """Leave-one-out ISC of the subjects' responses to the same stories.

    **Voxel level** when every subject's mask lies on one grid (one space, e.g. MNI): each
    voxel inside every mask. **ROI level** when atlases are given (one per subject, same
    label names): each subject's mean response per label, the labels all subjects have. A
    unit's ISC is the mean over subjects of each one's r with the mean of the others, tested
    one-sided (ISC > 0) against a circular-shift null that keeps every series'
    autocorrelation (:func:`circular_shift_null`), BH-FDR over units.

    Writes ``out['voxels']`` (TSV, one row per common voxel: its index among the first
    subject's mask voxels; empty without a common grid), ``out['map']`` (the ISC on the first
    subject's mask, 0 outside the common voxels), ``out['rois']`` (TSV, empty without atlases)
    and ``out['summary']`` (JSON). ``truth``: ``{subject: (signal, noise)}`` boolean masks over
    each subject's voxels (the demo's planted voxels), summarised over the voxels planted
    (or pure noise) in every subject. Responses are read ``chunk_bytes`` at a time (whole-brain data
    of many subjects need not fit in memory).
    """
    import nibabel as nib
    from tqdm import tqdm

    from .encoding import vector_to_volume, voxel_labels
    from .io import open_h5, write_json

    if len(subjects) < 2:
        raise InputError(None, f"ISC needs two or more subjects, got {list(subjects)}.", "list more dataset.subjects or omit the group section.")
    lengths = _story_lengths(responses_h5s, subjects, stories)
    n_trs = sum(lengths)
    subject_masks = [np.asarray(nib.load(os.fspath(path)).dataobj) > 0 for path in masks]
    for subject, mask, responses, path in zip(subjects, subject_masks, responses_h5s, masks):
        with open_h5(responses) as h5:
            n_columns = int(h5[stories[0]]["data"].shape[1])
        if int(mask.sum()) != n_columns:
            raise InputError(path, f"subject {subject!r}: {int(mask.sum())} mask voxels but {n_columns} response columns.",
                             "pass the mask written beside the responses (preprocess).")
    summary = {"subjects": list(subjects), "stories": list(stories), "n_trs": int(n_trs), "levels": [],
               "null": {"method": "circular_shift", "shifted": "each subject but the first, per story", "min_shift_trs": settings.min_shift_trs,
                        "n_permutations": settings.n_permutations, "alternative": "greater", "correction": "fdr_bh", "fdr_q": settings.fdr_q,
                        "seed": settings.seed}}
    renamed = {f"isc_{i}": f"isc_{subject}" for i, subject in enumerate(subjects)}
    chunk = max(1, chunk_bytes // (8 * len(subjects) * n_trs))  # voxels read at a time
    common = _common_grid(masks)
    map_values = np.zeros(int(subject_masks[0].sum()))
    voxel_table = pd.DataFrame(columns=["voxel", "isc", *renamed.values(), "null_95", "p", "p_fdr", "significant"])
    if common is None:
        summary["voxel_note"] = "the subjects' masks lie on different grids: no voxel-level ISC (use one space, e.g. fMRIPrep's MNI outputs)"
        log.info(summary["voxel_note"])
    elif not common.any():
        summary["voxel_note"] = "no voxel lies inside every subject's mask: no voxel-level ISC"
        log.info(summary["voxel_note"])
    else:
        columns = [np.flatnonzero(common[mask]) for mask in subject_masks]
        parts = []
        for first in tqdm(range(0, len(columns[0]), chunk), desc="voxel ISC", unit="chunk", disable=None):
            part = slice(first, first + chunk)
            data = np.stack([_read_columns(path, stories, c[part]) for path, c in zip(responses_h5s, columns)])
            parts.append(isc_scores(data, lengths, settings, fdr=False))
        scored = with_fdr(pd.concat(parts, ignore_index=True), settings.fdr_q).rename(columns=renamed)
        voxel_table = scored.assign(voxel=columns[0])[list(voxel_table.columns)]
        map_values[columns[0]] = scored["isc"].to_numpy()
        summary["levels"].append("voxel")
        summary["voxel"] = {"n_voxels": int(common.sum()), **_isc_summary(scored)}
        if truth:
            for which, name in enumerate(("signal", "noise")):
                chosen = np.logical_and.reduce([truth[s][which][c] for s, c in zip(subjects, columns)])
                summary["voxel"][name] = {"n_voxels": int(chosen.sum()), **_isc_summary(scored[chosen])}
        log.info("voxel ISC over %d common voxels: mean %.3f, %.1f %% significant", common.sum(), scored["isc"].mean(),
                 100 * scored["significant"].mean())
    vector_to_volume(map_values, masks[0], out["map"])

    roi_table = pd.DataFrame(columns=["roi", "n_voxels", "isc", *renamed.values(), "null_95", "p", "p_fdr", "significant"])
    if atlases:
        labelled = [voxel_labels(mask, atlas_nii, atlas_tsv) for mask, (atlas_nii, atlas_tsv) in zip(masks, atlases)]
        present = [{names[index] for index in np.unique(labels) if index in names and index != 0} for labels, names in labelled]
        first_names = labelled[0][1]
        rois = [first_names[i] for i in sorted(first_names) if i != 0 and all(first_names[i] in these for these in present)]
        if not rois:
            raise InputError(atlases[0][1], "the subjects' atlases share no labelled region.", "give every subject an atlas with the same label names.")
        means, sizes = [], []
        for (labels, names), path in zip(labelled, responses_h5s):
            index = {name: i for i, name in names.items()}
            codes = np.array([index[roi] for roi in rois])
            sums = np.zeros((n_trs, len(rois)))
            for first in range(0, labels.size, chunk):
                part = np.arange(first, min(first + chunk, labels.size))
                block = _read_columns(path, stories, part)
                sums += block @ (labels[part, None] == codes[None, :])
            counts = (labels[:, None] == codes[None, :]).sum(axis=0)
            means.append(sums / counts)
            sizes.append(counts)
        scored = isc_scores(np.stack(means), lengths, settings).rename(columns=renamed)
        scored["roi"] = rois
        scored["n_voxels"] = np.rint(np.mean(sizes, axis=0)).astype(int)
        roi_table = scored[list(roi_table.columns)]
        summary["levels"].append("roi")
        summary["roi"] = {"n_rois": len(rois), **_isc_summary(scored)}
        log.info("ROI ISC: %s", ", ".join(f"{row.roi} {row.isc:.3f}" for row in roi_table.itertuples()))
    if not summary["levels"]:
        summary["note"] = "no common grid and no atlas: nothing to correlate between subjects"
        log.warning(summary["note"])
    write_tsv(out["voxels"], voxel_table)
    write_tsv(out["rois"], roi_table)
    write_json(out["summary"], summary)
    return summary


def _isc_summary(table: pd.DataFrame) -> dict:
    return {"mean_isc": float(table["isc"].mean()), "fraction_significant": float(table["significant"].mean()),
            "fraction_p_below_05": float((table["p"] < 0.05).mean())}


def plot_isc(voxels_tsv: str | os.PathLike, rois_tsv: str | os.PathLike, png, svg, tsv, dpi: int = 150) -> pd.DataFrame:
    """The ISC figure: the voxels' ISC distribution (significant ones apart) and ISC per ROI with each subject's value."""
    from . import figures

    voxels = pd.read_csv(voxels_tsv, sep="\t")
    rois = pd.read_csv(rois_tsv, sep="\t")
    write_tsv(tsv, pd.concat([voxels.assign(level="voxel"), rois.assign(level="roi")], ignore_index=True))
    with figures.styled():
        figures.save_figure(figures.isc_figure(voxels, rois), png, svg, dpi)
    log.info("ISC figure (%d voxels, %d ROIs) -> %s", len(voxels), len(rois), png)
    return rois
