"""Report stage: figures, their source tables and the metrics summary, from stage outputs.

Every ``plot_*`` function reads files written by the other stages (docs/outputs.md),
builds a tidy table, writes it as ``<figure>.tsv`` beside the figure, then draws the
figure as PNG and SVG (:mod:`brainllm.figures`). The subject, model and layer of a
result are read from the BIDS-style entities of its path
(``sub-<sub>_model-<model>_layer-<NN>_scores.tsv``, ``sub-<sub>/model-<model>/layer-<NN>/``).

The best layer of a (subject, model) is the one flagged in the encoding stage's
``_layers.tsv`` (highest mean r over all voxels); across subjects, the layer with the
highest subject-averaged mean r.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib import colors as mcolors
from tqdm import tqdm

from . import figures, metrics
from .io import InputError, atomic_path, sha256_file, write_tsv

logger = logging.getLogger("brainllm.report")

PathLike = str | os.PathLike
SCORE_COLUMNS = ("voxel", "r", "p", "p_fdr", "significant", "alpha")
LAYERS_COLUMNS = ("layer", "mean_r_val", "mean_r", "mean_r_top10", "best")
ROI_COLUMNS = ("roi", "mean_r", "n_voxels")
MEAN_ROI_LABEL = "mean (all voxels)"
NO_ATLAS_NOTE = "no atlas (dataset.atlas: null): whole-brain mean only"
NO_BEST_LAYER = -1  # best-layer map value of voxels significant at no layer
_ENTITY = re.compile(r"(?:^|_)(sub|model|layer)-([A-Za-z0-9]+)")


# --------------------------------------------------------------------------- reading


def path_entities(path: PathLike) -> dict[str, str]:
    """BIDS-style entities (sub, model, layer) of a file name and its folders; the name wins.

    ``sub-UTS01_model-minilm_layer-03_scores.tsv`` and ``sub-UTS01/model-minilm/layer-03/curves.tsv``
    both give ``{"sub": "UTS01", "model": "minilm", "layer": "03"}``.
    """
    entities: dict[str, str] = {}
    for part in Path(path).parts:
        entities.update(_ENTITY.findall(part))
    return entities


def result_key(path: PathLike, with_layer: bool = True) -> tuple:
    """``(subject, model, layer)`` of a per-layer result file, ``(subject, model)`` without layer."""
    entities = path_entities(path)
    names = ("sub", "model", "layer") if with_layer else ("sub", "model")
    missing = [name for name in names if name not in entities]
    if missing:
        raise InputError(
            path,
            f"the path carries no {', '.join(name + '-' for name in missing)} entity.",
            "name results sub-<subject>_model-<model>[_layer-<NN>]_<suffix> (docs/outputs.md).",
        )
    key = (entities["sub"], entities["model"])
    return key + (int(entities["layer"]),) if with_layer else key


def read_table(path: PathLike, required: Sequence[str], what: str) -> pd.DataFrame:
    """A TSV with at least the ``required`` columns and one row, else an InputError naming them."""
    try:
        table = pd.read_csv(path, sep="\t")
    except FileNotFoundError:
        raise InputError(path, f"the {what} table does not exist.", "run the stage that writes it first.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(path, f"the {what} table cannot be parsed as TSV ({error}).", "rerun the stage that writes it.") from None
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise InputError(
            path,
            f"the {what} table lacks column(s) {missing}; found {list(table.columns)}.",
            f"write the columns {list(required)} (docs/outputs.md).",
        )
    if table.empty:
        raise InputError(path, f"the {what} table has no rows.", "rerun the stage that writes it.")
    return table


def read_json(path: PathLike, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(path, f"the {what} file does not exist.", "run the stage that writes it first.") from None
    except json.JSONDecodeError as error:
        raise InputError(path, f"the {what} file is not valid JSON ({error}).", "rerun the stage that writes it.") from None


def _as_bool(values: pd.Series, path: PathLike, column: str) -> np.ndarray:
    if values.dtype == bool:
        return values.to_numpy()
    lowered = values.astype(str).str.strip().str.lower()
    truth = {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}
    unknown = sorted(set(lowered) - set(truth))
    if unknown:
        raise InputError(path, f"column {column!r} holds non-boolean values {unknown[:5]}.", "write True/False or 1/0.")
    return lowered.map(truth).to_numpy(dtype=bool)


def read_scores(path: PathLike) -> pd.DataFrame:
    """Per-voxel scores, rows sorted by voxel; ``r`` finite in [-1, 1], ``significant`` bool."""
    scores = read_table(path, SCORE_COLUMNS, "voxel scores").sort_values("voxel", kind="stable").reset_index(drop=True)
    if not np.array_equal(scores["voxel"].to_numpy(), np.arange(len(scores))):
        raise InputError(path, "the voxel column is not 0 … n_voxels−1 (a voxel is missing or repeated).", "rerun the encoding stage.")
    r = pd.to_numeric(scores["r"], errors="coerce").to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.abs(r).max() > 1 + 1e-6:
        raise InputError(path, "column 'r' holds values that are not finite correlations in [-1, 1].", "rerun the encoding stage.")
    scores["r"] = r
    scores["significant"] = _as_bool(scores["significant"], path, "significant")
    return scores


def read_layer_tables(layers_tsvs: Sequence[PathLike]) -> pd.DataFrame:
    """The encoding stage's per-model layer tables stacked: ``subject model layer mean_r mean_r_top10 … best``."""
    tables = []
    for path in layers_tsvs:
        subject, model = result_key(path, with_layer=False)
        table = read_table(path, LAYERS_COLUMNS, "layer comparison")
        table["best"] = _as_bool(table["best"], path, "best")  # chosen on validation r by the best_layer rule
        if table["best"].sum() != 1:
            raise InputError(path, f"{int(table['best'].sum())} rows are flagged best; exactly one must be.", "rerun best_layer.")
        tables.append(table.assign(subject=subject, model=model))
    if not tables:
        raise InputError(None, "no layer tables were given to the report.", "check that the encoding stage ran.")
    stacked = pd.concat(tables, ignore_index=True)
    duplicated = stacked.duplicated(["subject", "model", "layer"])
    if duplicated.any():
        raise InputError(None, f"layer tables repeat {stacked[duplicated].iloc[0][['subject', 'model', 'layer']].to_dict()}.", "give each (subject, model) once.")
    return stacked


def best_layer(layers: pd.DataFrame, model: str, subject: str | None = None) -> int:
    """Layer of ``model`` chosen on validation r: ``subject``'s flagged row, or over subjects the highest mean of
    ``mean_r_val`` (never test r, which the figures then report at that layer)."""
    rows = layers[layers["model"] == model]
    if subject is not None:
        return int(rows.loc[(rows["subject"] == subject) & rows["best"], "layer"].iloc[0])
    return int(rows.groupby("layer")["mean_r_val"].mean().idxmax())


def _by_layer(paths: Sequence[PathLike]) -> dict[int, PathLike]:
    """Per-layer files of one (subject, model) keyed by layer."""
    keys = {path: result_key(path) for path in paths}
    if len({key[:2] for key in keys.values()}) > 1:
        raise InputError(None, f"files of several subjects/models were mixed: {sorted({k[:2] for k in keys.values()})}.", "pass one (subject, model).")
    return {key[2]: path for path, key in keys.items()}


def _layer_file(paths: Mapping[int, PathLike], layer: int, what: str, subject: str, model: str) -> PathLike:
    if layer not in paths:
        raise InputError(None, f"no {what} for sub-{subject} model-{model} layer-{layer:02d}.", f"give every layer's {what}.")
    return paths[layer]


def read_volume(path: PathLike) -> nib.Nifti1Image:
    try:
        return nib.load(os.fspath(path))
    except FileNotFoundError:
        raise InputError(path, "the NIfTI image does not exist.", "run the stage that writes it first.") from None
    except (nib.filebasedimages.ImageFileError, OSError, EOFError) as error:
        raise InputError(path, f"the file is not a readable NIfTI image ({error}).", "rerun the stage that writes it.") from None


def ground_truth_voxels(
    ground_truth_json: PathLike, subject: str, dataset_mask: PathLike, analysis_mask: PathLike
) -> dict[str, np.ndarray]:
    """Ground truth of ``subject`` on the analysed voxels (``analysis_mask`` ⊆ ``dataset_mask``).

    The ground truth (``per_subject.<subject>``) indexes the dataset mask's voxels in C
    order; preprocessing may drop voxels, so values are carried over by position.
    Returns ``signal`` (bool; the planted layer), ``emotion`` (bool; the planted emotion
response, absent in older ground truths) and ``ceiling_r_test`` (float), each ``(n_analysed_voxels,)``.
    """
    truth = read_json(ground_truth_json, "ground truth")
    entry = truth.get("per_subject", {}).get(subject)
    if entry is None:
        raise InputError(ground_truth_json, f"no entry for subject {subject!r} under 'per_subject'.", "regenerate the demo dataset.")
    for key in ("signal_voxels", "ceiling_r_test"):
        if key not in entry:
            raise InputError(ground_truth_json, f"subject {subject!r} has no {key!r}.", "regenerate the demo dataset.")
    dataset_positions = np.flatnonzero(np.asarray(read_volume(dataset_mask).dataobj) > 0)
    analysis_positions = np.flatnonzero(np.asarray(read_volume(analysis_mask).dataobj) > 0)
    ceiling = np.asarray(entry["ceiling_r_test"], dtype=np.float64)
    if ceiling.size != dataset_positions.size:
        raise InputError(
            ground_truth_json,
            f"subject {subject!r}: {ceiling.size} ceiling values for {dataset_positions.size} voxels of {dataset_mask}.",
            "use the ground truth generated with this dataset's mask.",
        )
    index = np.minimum(np.searchsorted(dataset_positions, analysis_positions), dataset_positions.size - 1)
    if not np.array_equal(dataset_positions[index], analysis_positions):
        raise InputError(analysis_mask, f"holds voxels outside the dataset mask {dataset_mask}.", "rerun ingest and preprocess.")
    signal = np.zeros(dataset_positions.size, dtype=bool)
    signal[np.asarray(entry["signal_voxels"], dtype=np.int64)] = True
    emotion = np.zeros(dataset_positions.size, dtype=bool)
    emotion[np.asarray(entry.get("emotion_voxels", []), dtype=np.int64)] = True
    return {"signal": signal[index], "emotion": emotion[index], "ceiling_r_test": ceiling[index]}


# --------------------------------------------------------------------------- computations


def null_r_density(r: np.ndarray, n_samples: int) -> np.ndarray:
    """Density of Pearson r between independent Gaussian series of ``n_samples`` points.

    r is Beta(n/2 − 1, n/2 − 1) on [−1, 1] (the null behind the t-test p-values); the
    test TRs are taken as independent, so autocorrelated data have a wider real null.
    """
    if n_samples < 4:
        raise ValueError(f"the null of r needs at least 4 samples, got {n_samples}")
    shape = n_samples / 2.0 - 1.0
    from scipy.stats import beta  # imported where used: scipy.stats costs every report job a second

    return beta(shape, shape, loc=-1.0, scale=2.0).pdf(np.asarray(r, dtype=np.float64))


def fdr_threshold(scores: pd.DataFrame) -> float | None:
    """Smallest |r| among FDR-significant voxels; None when no voxel is significant."""
    significant = scores["significant"].to_numpy(dtype=bool)
    if not significant.any():
        return None
    return float(np.abs(scores["r"].to_numpy()[significant]).min())


def histogram_table(
    r: np.ndarray, n_samples: int, bins: int, noise_r: np.ndarray | None = None, permutation_null_r: np.ndarray | None = None
) -> pd.DataFrame:
    """Counts and densities of r per bin (all voxels, noise voxels), the analytic null at bin
    centres and, with ``permutation_null_r``, the block-permutation null (``perm_null_density``)."""
    null_sd = 1.0 / math.sqrt(max(n_samples - 1, 1))
    half_width = min(1.0, max(float(np.abs(r).max()), 4.0 * null_sd) * 1.05)
    edges = np.linspace(-half_width, half_width, bins + 1)
    table = pd.DataFrame({"bin_left": edges[:-1], "bin_right": edges[1:]})
    table["count_all"] = np.histogram(r, edges)[0]
    table["density_all"] = np.histogram(r, edges, density=True)[0]
    if noise_r is not None and noise_r.size:
        table["count_noise"] = np.histogram(noise_r, edges)[0]
        table["density_noise"] = np.histogram(noise_r, edges, density=True)[0]
    table["null_density"] = null_r_density((edges[:-1] + edges[1:]) / 2, n_samples)
    if permutation_null_r is not None and permutation_null_r.size:
        table["perm_null_density"] = np.histogram(np.clip(permutation_null_r, edges[0], edges[-1]), edges, density=True)[0]
    return table


# --------------------------------------------------------------------------- volumes


def to_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder the axes of ``volume`` to RAS (x: left→right, y: back→front, z: down→up)."""
    current = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt("RAS"))
    return nib.orientations.apply_orientation(volume, transform)


def vector_to_volume(values: np.ndarray, mask: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """Voxel vector ``(n_voxels,)`` (C order of ``mask > 0``) → volume shaped like ``mask``."""
    volume = np.full(mask.shape, fill, dtype=np.float64)
    volume[mask > 0] = values
    return volume


def mosaic_slices(mask: np.ndarray, n_slices: int) -> list[int]:
    """Up to ``n_slices`` evenly spaced axial (last-axis) slices that contain mask voxels."""
    occupied = np.flatnonzero(mask.reshape(-1, mask.shape[2]).any(0))
    if occupied.size == 0:
        raise ValueError("the mask is empty")
    picks = np.linspace(0, occupied.size - 1, min(n_slices, occupied.size)).round().astype(int)
    return [int(k) for k in np.unique(occupied[picks])]


def _overlay(volume: np.ndarray, mask: np.ndarray, shown: np.ndarray) -> np.ma.MaskedArray:
    """``volume`` with everything masked except the mask voxels flagged ``shown`` (mask C order)."""
    visible = np.zeros(mask.shape, dtype=bool)
    visible[mask] = shown
    return np.ma.masked_array(volume, mask=~visible)


def _volume_data(image: nib.Nifti1Image, path: PathLike, reference: nib.Nifti1Image, reference_path: PathLike) -> np.ndarray:
    """3-D data of ``image`` after checking it lies on the ``reference`` grid."""
    if image.shape[:3] != reference.shape[:3] or not np.allclose(image.affine, reference.affine, atol=1e-3):
        raise InputError(
            path,
            f"grid {image.shape[:3]} does not match {reference_path} {reference.shape[:3]} (shape or affine differs).",
            "write every map on the analysis mask's grid (rerun the stage that wrote it).",
        )
    return np.asarray(image.dataobj, dtype=np.float64).reshape(reference.shape[:3])


# --------------------------------------------------------------------------- figure builders


def plot_layer_curves(
    layers_tsvs: Sequence[PathLike],
    png: PathLike,
    svg: PathLike,
    tsv: PathLike,
    model_sizes: Mapping[str, float | None] | None = None,
    dpi: int = 150,
) -> pd.DataFrame:
    """Layer curves of every model (the scaling-laws plot): mean r over all voxels and the top 10 %.

    Per subject (thin) and averaged over subjects (thick); the x axis is the layer index
    when all models have the same layers, else the relative depth (layer / last layer).
    ``best`` marks, per subject, its layer chosen on validation r and, on the average rows,
    the layer with the highest mean validation r over subjects (the star; the scaling panel's
    test r is read there).
    """
    model_sizes = dict(model_sizes or {})
    layers = read_layer_tables(layers_tsvs)
    averages = layers.groupby(["model", "layer"], as_index=False)[["mean_r_val", "mean_r", "mean_r_top10"]].mean().assign(subject="average")
    averages["best"] = averages["layer"] == averages["model"].map({model: best_layer(layers, model) for model in averages["model"].unique()})
    curves = pd.concat([layers, averages], ignore_index=True)
    layer_sets = {model: frozenset(rows["layer"]) for model, rows in layers.groupby("model")}
    curves["depth"] = curves["layer"] / curves["model"].map({m: max(max(s), 1) for m, s in layer_sets.items()})
    curves["size_params"] = curves["model"].map(lambda m: model_sizes.get(m))
    comparison = [c for c in ("delta_vs_best", "delta_ci_low", "delta_ci_high", "p_vs_best_holm") if c in curves]
    curves = curves[["model", "size_params", "subject", "layer", "depth", "mean_r_val", "mean_r", "mean_r_top10", "best", *comparison]]
    write_tsv(tsv, curves)
    same_layers = len(set(layer_sets.values())) == 1
    x_column, x_label = ("layer", "Layer (0 = embeddings)") if same_layers else ("depth", "Relative depth (layer / last layer)")
    with figures.styled():
        fig = figures.layer_curves_figure(curves, model_sizes, x_column, x_label)
        figures.save_figure(fig, png, svg, dpi)
    logger.info("layer curves of %d model(s), %d subject(s) -> %s", len(layer_sets), layers["subject"].nunique(), png)
    return curves


def plot_roi_ranking(
    layers_tsvs: Sequence[PathLike],
    roi_tsvs: Sequence[PathLike],
    png: PathLike,
    svg: PathLike,
    tsv: PathLike,
    dpi: int = 150,
) -> pd.DataFrame:
    """Models at their best layer ranked by mean r, with the subject-averaged mean r of each ROI.

    The ROI tables' whole-brain row (``roi`` "all", ``index`` −1) is replaced by the mean
    over all voxels from the layer tables. Without an atlas (ROI tables holding only that
    row) the ranking holds the whole-brain mean alone and the figure says so.
    """
    layers = read_layer_tables(layers_tsvs)
    rois_by_key = {result_key(path): path for path in roi_tsvs}
    rows = []
    for model in sorted(layers["model"].unique()):
        layer = best_layer(layers, model)
        at_best = layers[(layers["model"] == model) & (layers["layer"] == layer)]
        for s in at_best.itertuples():
            path = _layer_file({k[2]: p for k, p in rois_by_key.items() if k[:2] == (s.subject, model)}, layer, "_roi.tsv", s.subject, model)
            roi = read_table(path, ROI_COLUMNS, "ROI summary")
            whole = (roi["index"] == -1) if "index" in roi else (roi["roi"].astype(str) == "all")
            rows += [
                {"model": model, "layer": layer, "subject": s.subject, "roi": str(r.roi), "mean_r": float(r.mean_r), "n_voxels": int(r.n_voxels)}
                for r in roi[~whole].itertuples()
            ]
            n_voxels = int(roi.loc[whole, "n_voxels"].iloc[0]) if whole.any() else np.nan
            rows.append({"model": model, "layer": layer, "subject": s.subject, "roi": MEAN_ROI_LABEL, "mean_r": s.mean_r, "n_voxels": n_voxels})
    per_subject = pd.DataFrame(rows)
    has_atlas = bool((per_subject["roi"] != MEAN_ROI_LABEL).any())
    if not has_atlas:
        logger.info("no ROI rows (dataset.atlas: null): the ranking shows the whole-brain mean only")
    ranking = per_subject.groupby(["model", "layer", "roi"], as_index=False, sort=False).agg(
        mean_r=("mean_r", "mean"), n_subjects=("subject", "nunique"), n_voxels=("n_voxels", "mean")
    )
    model_means = ranking[ranking["roi"] == MEAN_ROI_LABEL].set_index("model")["mean_r"]
    ranking["rank"] = ranking["model"].map(model_means.rank(method="first").astype(int))
    ranking = ranking.sort_values(["rank", "roi"]).reset_index(drop=True)[["rank", "model", "layer", "roi", "mean_r", "n_subjects", "n_voxels"]]
    write_tsv(tsv, ranking)
    with figures.styled():
        fig = figures.roi_ranking_figure(ranking, MEAN_ROI_LABEL, note=None if has_atlas else NO_ATLAS_NOTE)
        figures.save_figure(fig, png, svg, dpi)
    logger.info("ROI ranking of %d model(s) over %d ROI(s) -> %s", ranking["model"].nunique(), ranking["roi"].nunique() - 1, png)
    return ranking


def plot_r_histogram(
    layers_tsv: PathLike,
    scores_tsvs: Sequence[PathLike],
    summary_jsons: Sequence[PathLike],
    png: PathLike,
    svg: PathLike,
    tsv: PathLike,
    ground_truth: Mapping[str, PathLike] | None = None,
    bins: int = 60,
    dpi: int = 150,
    predictions: Sequence[PathLike] = (),
    responses_h5: PathLike | None = None,
    test_stories: Sequence[str] = (),
    significance: Mapping | None = None,
) -> pd.DataFrame:
    """Histogram of voxel r at the best layer of one (subject, model), with null and FDR threshold.

    With the layers' ``predictions`` and the responses, the block-permutation null of r
    (blocks of ``significance.block_trs`` test TRs, the null behind the voxel p-values) is
    drawn beside the analytic one, which takes the test TRs as independent.

    ``scores_tsvs``/``summary_jsons``: every layer of that subject and model (the summary
    gives the number of test TRs of the analytic null). ``ground_truth``: paths ``json``,
    ``dataset_mask``, ``analysis_mask``; when given, the ground-truth noise voxels are
    drawn as the empirical null beside the analytic one.
    """
    subject, model = result_key(layers_tsv, with_layer=False)
    layer = best_layer(read_layer_tables([layers_tsv]), model, subject)
    scores_path = _layer_file(_by_layer(scores_tsvs), layer, "_scores.tsv", subject, model)
    summary_path = _layer_file(_by_layer(summary_jsons), layer, "_summary.json", subject, model)
    scores = read_scores(scores_path)
    n_test_trs = read_json(summary_path, "encoding summary").get("n_test_trs")
    if not isinstance(n_test_trs, int) or n_test_trs < 4:
        raise InputError(summary_path, f"'n_test_trs' is {n_test_trs!r}; the null needs the number of test TRs (≥ 4).", "rerun the encoding stage.")
    r = scores["r"].to_numpy()
    noise_r = None
    if ground_truth:
        truth = ground_truth_voxels(ground_truth["json"], subject, ground_truth["dataset_mask"], ground_truth["analysis_mask"])
        if truth["signal"].size != r.size:
            raise InputError(scores_path, f"{r.size} voxels, but the analysis mask has {truth['signal'].size}.", "rerun the encoding stage.")
        noise_r = r[~truth["signal"]]
    permutation_null = None
    if predictions and responses_h5 is not None:
        from .encoding import held_out_responses
        from .inference import read_predictions

        pred, _ = read_predictions(_layer_file(_by_layer(predictions), layer, "_predictions.h5", subject, model))
        block_trs = int((significance or {}).get("block_trs", 20))
        permutation_null = metrics.block_permutation_null_r(pred, held_out_responses(responses_h5, test_stories), block_trs)
    histogram = histogram_table(r, n_test_trs, bins, noise_r, permutation_null)
    threshold = fdr_threshold(scores)
    histogram.insert(0, "layer", layer)
    histogram["fdr_threshold_abs_r"] = np.nan if threshold is None else threshold
    histogram["n_test_trs"] = n_test_trs
    write_tsv(tsv, histogram)
    noise_label = None if noise_r is None else f"ground-truth noise voxels (n = {noise_r.size})"
    with figures.styled():
        fig = figures.r_histogram_figure(histogram, threshold, n_test_trs, f"sub-{subject} · {model} · layer {layer}", noise_label)
        figures.save_figure(fig, png, svg, dpi)
    logger.info("r histogram sub-%s model-%s layer %d (%d voxels, %d test TRs) -> %s", subject, model, layer, r.size, n_test_trs, png)
    return histogram


def plot_brain_maps(
    layers_tsv: PathLike,
    scores_tsvs: Sequence[PathLike],
    r_maps: Sequence[PathLike],
    bestlayer_map: PathLike,
    mean_image: PathLike,
    mask: PathLike,
    r_outputs: Mapping[str, PathLike],
    layer_outputs: Mapping[str, PathLike],
    n_slices: int = 12,
    dpi: int = 150,
) -> None:
    """Axial mosaics on the mean functional image of one (subject, model).

    The r map of the best layer (voxels passing FDR; all voxels when none does) and the
    best-layer map (the encoding stage's map: voxels significant at their best layer).
    ``r_outputs``, ``layer_outputs``: paths ``png``, ``svg``, ``tsv``; the tables list
    every mask voxel with its RAS display coordinates ``i j k``.
    """
    subject, model = result_key(layers_tsv, with_layer=False)
    layer_table = read_layer_tables([layers_tsv])
    layer = best_layer(layer_table, model, subject)
    scores = read_scores(_layer_file(_by_layer(scores_tsvs), layer, "_scores.tsv", subject, model))
    r_map = _layer_file(_by_layer(r_maps), layer, "_r.nii.gz", subject, model)

    mask_img = read_volume(mask)
    mask_data = np.asarray(mask_img.dataobj).reshape(mask_img.shape[:3]) > 0
    n_voxels = int(mask_data.sum())
    if len(scores) != n_voxels:
        raise InputError(mask, f"{n_voxels} mask voxels, but the layer-{layer} scores have {len(scores)}.", "rerun the encoding stage.")
    affine = mask_img.affine
    background = to_ras(_volume_data(read_volume(mean_image), mean_image, mask_img, mask), affine)
    mask_ras = to_ras(mask_data, affine)
    slices = mosaic_slices(mask_ras, n_slices)
    ijk = np.argwhere(mask_ras)  # display coordinates, C order of the RAS mask
    voxel = to_ras(vector_to_volume(np.arange(n_voxels), mask_data, fill=-1), affine)[mask_ras].astype(int)
    coordinates = {"voxel": voxel, "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2]}

    r_volume = to_ras(_volume_data(read_volume(r_map), r_map, mask_img, mask), affine)
    r_values = r_volume[mask_ras]
    threshold = fdr_threshold(scores)
    # the voxel test is one-sided (r > 0): the shown voxels are the significant ones, r ≥ threshold
    shown = scores["significant"].to_numpy(dtype=bool)[voxel] if threshold is not None else np.ones(r_values.size, dtype=bool)
    write_tsv(r_outputs["tsv"], pd.DataFrame({"layer": layer, **coordinates, "r": r_values, "shown": shown}))
    limit = float(np.percentile(np.abs(r_values), 99.5)) or 1.0
    condition = f"r ≥ {threshold:.3f} (FDR)" if threshold is not None else "unthresholded: no voxel passes FDR"
    with figures.styled():
        fig = figures.mosaic_figure(
            background, _overlay(r_volume, mask_ras, shown), slices, "RdBu_r", mcolors.Normalize(-limit, limit),
            "Pearson r", f"sub-{subject} · {model} · layer {layer} · {condition}",
        )
        figures.save_figure(fig, r_outputs["png"], r_outputs["svg"], dpi)

    best_volume = to_ras(_volume_data(read_volume(bestlayer_map), bestlayer_map, mask_img, mask), affine)
    best_values = best_volume[mask_ras]
    layers = np.array(sorted(layer_table["layer"]))
    unknown = sorted(set(np.unique(best_values)) - set(layers.tolist()) - {NO_BEST_LAYER})
    if unknown:
        raise InputError(bestlayer_map, f"holds values {unknown[:5]} that are neither scored layers {layers.tolist()} nor {NO_BEST_LAYER}.", "rerun best_layer.")
    significant_somewhere = best_values != NO_BEST_LAYER
    write_tsv(layer_outputs["tsv"], pd.DataFrame({**coordinates, "best_layer": best_values.astype(int), "shown": significant_somewhere}))
    boundaries = np.concatenate([[layers[0] - 0.5], (layers[:-1] + layers[1:]) / 2, [layers[-1] + 0.5]])
    cmap = colormaps["viridis"].resampled(len(layers))
    with figures.styled():
        fig = figures.mosaic_figure(
            background, _overlay(best_volume, mask_ras, significant_somewhere), slices, cmap, mcolors.BoundaryNorm(boundaries, cmap.N),
            "Best layer", f"sub-{subject} · {model} · best layer per voxel ({int(significant_somewhere.sum())} significant voxels)",
            colorbar_ticks=layers.tolist(),
        )
        figures.save_figure(fig, layer_outputs["png"], layer_outputs["svg"], dpi)
    logger.info("brain maps sub-%s model-%s (best layer %d, %d slices) -> %s, %s", subject, model, layer, len(slices), r_outputs["png"], layer_outputs["png"])


def run_title(path: PathLike) -> str:
    """``sub-S · model · layer N`` of a contrastive run folder (``layer-NN`` or ``lora``)."""
    subject, model = result_key(path, with_layer=False)
    layer = path_entities(path).get("layer")
    run = f"layer {int(layer)}" if layer is not None else ("LoRA" if "lora" in Path(path).parts else "")
    return " · ".join(part for part in (f"sub-{subject}", model, run) if part)


def plot_contrastive_training(curves_tsv: PathLike, png: PathLike, svg: PathLike, tsv: PathLike, dpi: int = 150) -> pd.DataFrame:
    """Training and validation loss, and retrieval accuracy (with chance), per epoch of one run."""
    curves = read_table(curves_tsv, ("epoch",), "training curves")
    if not any(column.endswith("loss") for column in curves.columns):
        raise InputError(curves_tsv, f"has no loss column; found {list(curves.columns)}.", "rerun the contrastive stage.")
    write_tsv(tsv, curves)
    with figures.styled():
        fig = figures.training_curves_figure(curves, "epoch", run_title(curves_tsv))
        figures.save_figure(fig, png, svg, dpi)
    logger.info("contrastive curves (%d epochs) -> %s", len(curves), png)
    return curves


def retrieval_table(retrieval: Mapping) -> pd.DataFrame:
    """``direction metric accuracy chance`` rows: every direction entry with top-k accuracies that have a chance level."""
    chance = retrieval.get("chance", {})
    rows = []
    for direction, entry in retrieval.items():
        if direction == "chance" or not isinstance(entry, Mapping):
            continue
        for metric, value in entry.items():
            if metric.startswith("top") and metric in chance and isinstance(value, (int, float)):
                rows.append({"direction": direction, "metric": metric, "accuracy": float(value), "chance": float(chance[metric])})
    return pd.DataFrame(rows, columns=["direction", "metric", "accuracy", "chance"])


def plot_retrieval(retrieval_json: PathLike, png: PathLike, svg: PathLike, tsv: PathLike, dpi: int = 150) -> pd.DataFrame:
    """Held-out top-k retrieval accuracy in both directions against chance."""
    retrieval = read_json(retrieval_json, "retrieval")
    table = retrieval_table(retrieval)
    if table.empty:
        raise InputError(
            retrieval_json,
            "holds no top-k accuracies with a matching 'chance' entry.",
            "write {direction: {top1, top5, mean_rank}, chance: {top1, top5}} (brainllm.metrics.retrieval_accuracy).",
        )
    write_tsv(tsv, table)
    n_candidates = retrieval.get("n_candidates")
    title = f"{run_title(retrieval_json)}: held-out retrieval" + (f" among {n_candidates}" if n_candidates else "")
    with figures.styled():
        fig = figures.retrieval_figure(table, title)
        figures.save_figure(fig, png, svg, dpi)
    logger.info("retrieval bars (%d rows) -> %s", len(table), png)
    return table


def plot_base_vs_tuned(comparison_tsv: PathLike, png: PathLike, svg: PathLike, tsv: PathLike, dpi: int = 150) -> pd.DataFrame:
    """Held-out encoding r per layer of the base and the brain-tuned model of one (subject, model)."""
    comparison = read_table(comparison_tsv, ("layer", "mean_r_base", "mean_r_tuned"), "base-versus-tuned comparison")
    write_tsv(tsv, comparison)
    subject, model = result_key(comparison_tsv, with_layer=False)
    with figures.styled():
        fig = figures.base_vs_tuned_figure(comparison, f"sub-{subject} · {model}: base vs brain-tuned")
        figures.save_figure(fig, png, svg, dpi)
    logger.info("base vs tuned (%d layers) -> %s", len(comparison), png)
    return comparison


# --------------------------------------------------------------------------- metrics table


def _number(mapping: Mapping, *keys: str) -> float:
    """``mapping[k1][k2]…`` as a float; NaN when a key is absent or the value is null."""
    value = mapping
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            return float("nan")
        value = value[key]
    return float(value) if isinstance(value, (int, float)) else float("nan")


def trimming_warnings(trimming_tsv: PathLike) -> list[str]:
    """``story: warning`` of every story with a trimming warning (brainllm.preprocess.trim_checks)."""
    table = read_table(trimming_tsv, ("story", "warning"), "trimming checks")
    return [f"{row.story}: {row.warning}" for row in table.itertuples() if isinstance(row.warning, str) and row.warning]


def _missing_metric_notes(row: Mapping, summary: Mapping, invariance: Mapping, trim_warnings: Sequence[str]) -> list[str]:
    """Why each NaN metric of a summary row is NaN, then the subject's trimming warnings."""
    notes = []
    if math.isnan(row["invariance"]):
        chunk_trs, n_test = invariance.get("chunk_trs"), row["n_test_trs"]
        if chunk_trs is not None and not math.isnan(n_test) and n_test < 2 * chunk_trs:
            notes.append(f"invariance: {int(n_test)} test TRs < 2 × encoding.invariance.chunk_trs ({2 * int(chunk_trs)})")
        else:
            notes.append("invariance: not computed (encoding.invariance.n_resamples < 2 or missing from the summary)")
    if math.isnan(row["noise_ceiling_r"]):
        notes.append("noise ceiling: the test stories have no repeats (or different numbers of them)")
    if math.isnan(row["sensitivity"]):
        notes.append("sensitivity, specificity, r_over_true_ceiling: no ground truth (dataset.ground_truth: null)")
    return notes + [f"trimming: {w}" for w in trim_warnings]


def run_mode(path: PathLike) -> str:
    """``lora`` for the decoding files of a LoRA run (``desc-lora`` in the name), else ``frozen``."""
    return "lora" if "_desc-lora_" in Path(path).name else "frozen"


def _identification_rows(identification_tsvs: Sequence[PathLike]) -> dict[tuple, dict]:
    """``{(subject, model, layer): summary columns}`` of the identification tables (see :func:`metrics_summary`)."""
    rows = {}
    for path in identification_tsvs:
        subject, model = result_key(path, with_layer=False)
        table = read_table(path, ("layer", "segment_trs", "direction", "top1", "chance_top1", "mean_percentile_rank", "p"), "identification")
        lengths = sorted(set(table["segment_trs"]))
        segment_trs = 10 if 10 in lengths else lengths[0]
        chosen = table[(table["segment_trs"] == segment_trs) & (table["direction"] == "observed_to_predicted")]
        for _, entry in chosen.iterrows():
            rows[(subject, model, int(entry["layer"]))] = {
                "ident_segment_trs": int(segment_trs),
                "ident_top1": float(entry["top1"]),
                "ident_chance_top1": float(entry["chance_top1"]),
                "ident_percentile_rank": float(entry["mean_percentile_rank"]),
                "ident_p": float(entry["p"]),
            }
    return rows


def _word_classification_rows(word_jsons: Sequence[PathLike], contrastive_identification_tsvs: Sequence[PathLike]) -> dict[tuple, dict]:
    """``{(subject, model, layer): summary columns}`` of the word classification runs (see :func:`metrics_summary`)."""
    rows: dict[tuple, dict] = {}
    for path in word_jsons:
        summary = read_json(path, "word classification summary")
        subject, model, layer, mode = _word_run(path, summary)
        prefix = {"lora": "lora_", "ridge": "ridge_"}.get(mode, "")
        try:
            rows.setdefault((subject, model, layer), {}).update({prefix + key: value for key, value in {
                "words_n_vocabulary": int(summary["n_vocabulary"]),
                "words_top10": float(summary["brain"]["top10"]),
                "words_chance_top10": float(summary["chance"]["top10"]),
                "words_percentile_rank": float(summary["brain"]["mean_percentile_rank"]),
                "words_p": float(summary["brain"]["p"]),
                "words_frequency_percentile_rank": float(summary["frequency"]["mean_percentile_rank"]),
                "words_brain_and_frequency_percentile_rank": float(summary["brain_and_frequency"]["mean_percentile_rank"]),
                "words_gain_ci_low": float(summary["gain_over_frequency"]["ci_low"]),
            }.items()})
        except (KeyError, TypeError) as error:
            raise InputError(path, f"the word classification summary lacks {error}.", "set decoding.words.top_k to include 10 and rerun decoding_contrastive.") from None
    for path in contrastive_identification_tsvs:
        table = read_table(path, ("layer", "segment_trs", "direction", "top1", "chance_top1"), "contrastive identification")
        lengths = sorted(set(table["segment_trs"]))
        segment_trs = 10 if 10 in lengths else lengths[0]
        entry = table[(table["segment_trs"] == segment_trs) & (table["direction"] == "brain_to_text")].iloc[0]
        prefix = "lora_" if run_mode(path) == "lora" else ""
        rows.setdefault(result_key(path), {}).update({
            f"{prefix}contrastive_ident_top1": float(entry["top1"]), f"{prefix}contrastive_ident_chance_top1": float(entry["chance_top1"]),
        })
    return rows


def metrics_summary(
    summary_jsons: Sequence[PathLike],
    tsv: PathLike,
    html: PathLike,
    scores_tsvs: Sequence[PathLike] = (),
    ground_truth: Mapping[str, Mapping[str, PathLike]] | None = None,
    trimming_tsvs: Mapping[str, PathLike] | None = None,
    invariance: Mapping | None = None,
    identification_tsvs: Sequence[PathLike] = (),
    word_jsons: Sequence[PathLike] = (),
    contrastive_identification_tsvs: Sequence[PathLike] = (),
    label_tsvs: Sequence[PathLike] = (),
) -> pd.DataFrame:
    """One row per (subject, model, layer): accuracy, information, detection, stability, ceiling, decoding.

    A metric that cannot be computed is NaN and its reason is in the row's ``notes``
    (``; ``-separated) and in the log: invariance without enough test TRs
    (``invariance``: the ``encoding.invariance`` settings), no noise ceiling without
    repeats of the test story, no detection rates without ground truth; with
    ``trimming_tsvs`` (subject → preprocess trimming.tsv) a subject's trimming warnings too
    (they are also listed under the HTML table).

    From the encoding summaries: mean and top-10 % r, significant voxels, Gaussian-copula
    MI (bits), invariance over test-chunk bootstraps (mean pairwise r and CV of the mean),
    noise ceiling and noise-ceiling-normalised r (median over voxels with a ceiling).
    With ``ground_truth`` (subject → paths ``json``, ``dataset_mask``, ``analysis_mask``)
    and the matching ``scores_tsvs``: voxel-detection sensitivity and specificity and the
    mean r over the mean true ceiling of the signal voxels. With ``identification_tsvs``
    (decoding stage): segment identification, observed → predicted, at 10-TR segments (or
    the shortest configured length): ``ident_segment_trs``, ``ident_top1``,
    ``ident_chance_top1``, ``ident_percentile_rank``, ``ident_p``. With ``word_jsons`` and
    ``contrastive_identification_tsvs`` (decoding through the contrastive runs, at
    their layers): ``contrastive_ident_top1`` and its chance (brain → text, same k),
    ``words_n_vocabulary``, ``words_top10`` and its chance, ``words_percentile_rank`` and its
    permutation ``words_p``, ``words_frequency_percentile_rank``,
    ``words_brain_and_frequency_percentile_rank`` and ``words_gain_ci_low`` (the lower 95 %
    bound of brain + frequency's gain over frequency alone); the same with a ``lora_`` prefix
    for the LoRA runs (files named ``…_desc-lora_…``, at ``contrastive.lora.layer``) and a
    ``ridge_`` prefix for the ridge decoder (``…_desc-ridge_…``, on the row of the layer the
    encoding chose). With ``label_tsvs`` (label
    decoding, per subject, so the same on each of its rows): ``labels_<target>_balanced_accuracy``
    (categorical) or ``labels_<target>_r`` (continuous), ``labels_<target>_chance`` and
    ``labels_<target>_p``.
    """
    scores_by_key = {result_key(path): path for path in scores_tsvs}
    identification = _identification_rows(identification_tsvs)
    for key, columns in _word_classification_rows(word_jsons, contrastive_identification_tsvs).items():
        identification.setdefault(key, {}).update(columns)
    labels = _label_rows(label_tsvs)
    trim_warnings = {subject: trimming_warnings(path) for subject, path in (trimming_tsvs or {}).items()}
    truths: dict[str, dict[str, np.ndarray]] = {}
    rows = []
    for path in tqdm(list(summary_jsons), desc="metrics", unit="layer", disable=None):
        subject, model, layer = result_key(path)
        summary = read_json(path, "encoding summary")
        row = {
            "subject": subject,
            "model": model,
            "layer": layer,
            "n_voxels": _number(summary, "n_voxels"),
            "n_test_trs": _number(summary, "n_test_trs"),
            "mean_r": _number(summary, "mean_r"),
            "mean_r_top10": _number(summary, "mean_r_top10"),
            "n_significant": _number(summary, "n_significant"),
            "mi_bits": _number(summary, "mean_mi_bits"),
            "invariance": _number(summary, "invariance", "test_chunks", "mean_pairwise_r"),
            "invariance_cv": _number(summary, "invariance", "test_chunks", "cv_mean_score"),
            "noise_ceiling_r": _number(summary, "noise_ceiling", "mean_ceiling_r"),
            "normalised_r": _number(summary, "noise_ceiling", "median_normalised_r"),
            "sensitivity": float("nan"),
            "specificity": float("nan"),
            "r_over_true_ceiling": float("nan"),
        }
        if ground_truth and subject in ground_truth:
            if (subject, model, layer) not in scores_by_key:
                raise InputError(path, "ground truth is given but this layer's _scores.tsv is not.", "pass the scores of every summarised layer.")
            if subject not in truths:
                paths = ground_truth[subject]
                truths[subject] = ground_truth_voxels(paths["json"], subject, paths["dataset_mask"], paths["analysis_mask"])
            scores = read_scores(scores_by_key[(subject, model, layer)])
            signal, ceiling = truths[subject]["signal"], truths[subject]["ceiling_r_test"]
            if signal.size != len(scores):
                raise InputError(scores_by_key[(subject, model, layer)], f"{len(scores)} voxels, but the analysis mask has {signal.size}.", "rerun the encoding stage.")
            rates = metrics.detection_rates(scores["significant"].to_numpy(), signal)
            row["sensitivity"], row["specificity"] = rates["sensitivity"], rates["specificity"]
            if signal.any() and ceiling[signal].mean() > 0:
                row["r_over_true_ceiling"] = float(scores["r"].to_numpy()[signal].mean() / ceiling[signal].mean())
        row.update(identification.get((subject, model, layer), {}))
        row.update(labels.get(subject, {}))
        row["notes"] = "; ".join(_missing_metric_notes(row, summary, invariance or {}, trim_warnings.get(subject, [])))
        rows.append(row)
    if not rows:
        raise InputError(None, "no encoding summaries were given to the report.", "check that the encoding stage ran.")
    table = pd.DataFrame(rows).sort_values(["subject", "model", "layer"]).reset_index(drop=True)
    for column in ("n_voxels", "n_test_trs", "n_significant"):
        table[column] = table[column].astype("Int64")
    for note in dict.fromkeys(n for notes in table["notes"] for n in notes.split("; ") if n):
        logger.warning("summary: %s", note)
    write_tsv(tsv, table)
    warnings = [f"sub-{subject}: {w}" for subject, ws in trim_warnings.items() for w in ws]
    write_html_table(html, table, "Metrics per subject, model and layer", warnings)
    logger.info("metrics table: %d rows -> %s", len(table), tsv)
    return table


def write_html_table(path: PathLike, table: pd.DataFrame, title: str, warnings: Sequence[str] = ()) -> None:
    """A self-contained HTML page with ``table`` (floats to 3 decimals) and a list of ``warnings``."""
    import html as html_lib

    body = table.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–", border=0, classes="metrics")
    if warnings:
        items = "".join(f"<li>{html_lib.escape(w)}</li>" for w in warnings)
        body += f"\n<h4>Warnings</h4>\n<ul class=\"warnings\">{items}</ul>"
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; font-size: 13px; margin: 1em; }}
table.metrics {{ border-collapse: collapse; }}
table.metrics th, table.metrics td {{ padding: 3px 8px; text-align: right; border-bottom: 1px solid #ddd; }}
table.metrics th {{ background: #f0f0f0; position: sticky; top: 0; }}
table.metrics tr:hover td {{ background: #eef6fc; }}
</style></head>
<body><h3>{title}</h3>
{body}
</body></html>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")


# --------------------------------------------------------------------------- manifest


def write_manifest(paths: Sequence[PathLike], tsv: PathLike) -> pd.DataFrame:
    """List every report file with its size and sha256; a missing or empty file is an error."""
    rows = []
    for path in paths:
        path = Path(path)
        if not path.is_file() or path.stat().st_size == 0:
            raise InputError(path, "this report file is missing or empty.", "rerun the rule that writes it.")
        rows.append({"file": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    manifest = pd.DataFrame(rows, columns=["file", "bytes", "sha256"])
    write_tsv(tsv, manifest)
    logger.info("report manifest: %d files -> %s", len(manifest), tsv)
    return manifest


def plot_identification(identification_tsvs: Sequence[PathLike], layers_tsvs: Sequence[PathLike], png: PathLike, svg: PathLike, tsv: PathLike,
                        dpi: int = 150, contrastive_tsvs: Sequence[PathLike] = ()) -> pd.DataFrame:
    """Identification curves of every (subject, model) at its best layer (chosen on validation r), and of every contrastive run."""
    layers = read_layer_tables(layers_tsvs)
    columns = ("layer", "segment_trs", "direction", "top1", "chance_top1", "mean_percentile_rank", "p")
    curves = []
    for path in identification_tsvs:
        subject, model = result_key(path, with_layer=False)
        table = read_table(path, columns, "identification")
        chosen = best_layer(layers, model, subject)
        curves.append(table[table["layer"] == chosen].assign(subject=subject, model=model, method="encoding"))
    for path in contrastive_tsvs:
        subject, model, _ = result_key(path)
        method = "contrastive LoRA" if run_mode(path) == "lora" else "contrastive"
        curves.append(read_table(path, columns, "contrastive identification").assign(subject=subject, model=model, method=method))
    curves = pd.concat(curves, ignore_index=True)
    write_tsv(tsv, curves)
    with figures.styled():
        fig = figures.identification_figure(curves)
        figures.save_figure(fig, png, svg, dpi)
    logger.info("identification curves (%d rows) -> %s", len(curves), png)
    return curves


def _word_run(summary_path: PathLike, summary: Mapping) -> tuple[str, str, int, str]:
    """``(subject, model, layer, mode)`` of a word classification run: ridge and EEG runs name no layer in
    their files (the encoding chose it: ``summary["layer"]``); contrastive runs are frozen or LoRA."""
    if summary.get("mode") in ("eeg", "ridge"):
        (subject, model), layer = result_key(summary_path, with_layer=False), int(summary["layer"])
        return subject, model, layer, summary["mode"]
    return (*result_key(summary_path), run_mode(summary_path))


def plot_word_classification(summary_jsons: Sequence[PathLike], words_tsvs: Sequence[PathLike], png: PathLike, svg: PathLike, tsv: PathLike, dpi: int = 150) -> pd.DataFrame:
    """Word-classification figure of every run (ridge, contrastive, EEG); ``tsv`` holds each run's scores beside chance."""
    predictors = list(figures.WORD_PREDICTORS)
    scores, percentiles = [], []
    for summary_path, words_path in zip(summary_jsons, words_tsvs):
        summary = read_json(summary_path, "word classification summary")
        subject, model, layer, mode = _word_run(summary_path, summary)
        run = f"sub-{subject} · {model} · layer {layer}" + {"lora": " · LoRA", "eeg": " · EEG", "ridge": " · ridge", "frozen": ""}[mode]
        for predictor in predictors:
            if predictor not in summary:
                raise InputError(summary_path, f"no {predictor!r} scores.", "rerun the decoding_contrastive rule.")
            row = {"subject": subject, "model": model, "layer": layer, "mode": mode, "run": run, "predictor": predictor,
                   **summary[predictor]}
            row.update({f"chance_{key}": value for key, value in summary["chance"].items()})
            row.update(n_vocabulary=summary["n_vocabulary"], n_scored=summary["n_scored"], prior_weight=summary["prior_weight"])
            if predictor == "brain_and_frequency":
                row.update({f"gain_{key}": value for key, value in summary["gain_over_frequency"].items()})
            scores.append(row)
        table = read_table(words_path, [f"{p}_percentile_rank" for p in predictors], "word classification")
        percentiles += [pd.DataFrame({"run": run, "predictor": p, "percentile_rank": table[f"{p}_percentile_rank"]}) for p in predictors]
    scores = pd.DataFrame(scores)
    write_tsv(tsv, scores)
    with figures.styled():
        fig = figures.word_classification_figure(pd.concat(percentiles, ignore_index=True), scores)
        figures.save_figure(fig, png, svg, dpi)
    logger.info("word classification (%d runs) -> %s", len(summary_jsons), png)
    return scores


VOCABULARY_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse;font-size:13px}}
th,td{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}} th{{cursor:pointer;background:#f4f4f4;position:sticky;top:0}}
td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h3>{title}</h3>
<p>{n} vocabulary words. <i>probability</i>: the brain model's probability of the word, averaged over the {n_words} held-out words;
<i>brain + frequency</i>: with the word-frequency prior; <i>frequency</i>: the prior alone; <i>heard</i>: times the word occurs among the scored held-out words.
Click a column to sort; type to filter.</p>
<input id="q" placeholder="filter words" oninput="render()"> <span id="count"></span>
<table><thead><tr>{header}</tr></thead><tbody id="rows"></tbody></table>
<script>
const columns = {columns};
const data = {data};
let key = 0, descending = false;
function render() {{
  const q = document.getElementById("q").value.toLowerCase();
  const rows = data.filter(r => r[0].includes(q));
  rows.sort((a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0) * (descending ? -1 : 1));
  const shown = rows.slice(0, 2000);
  document.getElementById("count").textContent = rows.length + " match" + (rows.length > shown.length ? " (first 2000 shown)" : "");
  document.getElementById("rows").innerHTML = shown.map(r => "<tr>" + r.map((v, i) =>
    "<td>" + (typeof v === "number" && i > 0 && columns[i] !== "heard" ? v.toExponential(3) : v) + "</td>").join("") + "</tr>").join("");
}}
document.querySelectorAll("th").forEach((th, i) => th.onclick = () => {{ descending = key === i ? !descending : i > 0; key = i; render(); }});
render();
</script></body></html>
"""


def vocabulary_html(vocabulary_tsv: PathLike, html: PathLike) -> None:
    """The alphabetical vocabulary table (a … zyzzyva) as one self-contained, searchable and sortable HTML page."""
    table = read_table(vocabulary_tsv, ("word", "probability", "brain_and_frequency_probability", "frequency_probability", "n_heard"), "vocabulary")
    columns = ["word", "probability", "brain + frequency", "frequency", "heard"]
    data = [[str(w), float(p), float(c), float(f), int(h)] for w, p, c, f, h in table[
        ["word", "probability", "brain_and_frequency_probability", "frequency_probability", "n_heard"]].itertuples(index=False)]
    if "layer" not in path_entities(vocabulary_tsv):  # an EEG run (R/eeg/encoding/…): its layer is the encoding's choice
        subject, model = result_key(vocabulary_tsv, with_layer=False)
        title = f"Word probabilities · sub-{subject} · {model} · EEG"
    else:
        subject, model, layer = result_key(vocabulary_tsv)
        title = f"Word probabilities · sub-{subject} · {model} · layer {layer}" + (" · LoRA" if run_mode(vocabulary_tsv) == "lora" else "")
    page = VOCABULARY_HTML.format(
        title=title, n=len(table), n_words=int(table["n_heard"].sum()),
        header="".join(f"<th>{name}</th>" for name in columns), columns=json.dumps(columns),
        data=json.dumps(data, ensure_ascii=False).replace("</", "<\\/"),
    )
    with atomic_path(html) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")


def _subject_of(path: PathLike) -> str:
    entities = path_entities(path)
    if "sub" not in entities:
        raise InputError(path, "the path carries no sub- entity.", "name results sub-<subject>_<suffix> (docs/outputs.md).")
    return entities["sub"]


def plot_labels(score_tsvs: Sequence[PathLike], confusion_tsvs: Sequence[PathLike], prediction_tsvs: Sequence[PathLike],
                png: PathLike, svg: PathLike, tsv: PathLike, dpi: int = 150) -> pd.DataFrame:
    """Label-decoding figure of every subject; ``tsv`` holds every subject's scores (one row per target)."""
    scores = pd.concat([read_table(p, ("target", "kind", "p"), "label scores").assign(subject=_subject_of(p)) for p in score_tsvs], ignore_index=True)
    confusion = pd.concat([pd.read_csv(p, sep="\t").assign(subject=_subject_of(p)) for p in confusion_tsvs], ignore_index=True)
    predictions = pd.concat([read_table(p, ("target", "true", "predicted"), "label predictions").assign(subject=_subject_of(p)) for p in prediction_tsvs], ignore_index=True)
    continuous = set(scores.loc[scores["kind"] == "continuous", "target"])
    predictions = predictions[predictions["target"].isin(continuous)].astype({"true": float, "predicted": float})
    write_tsv(tsv, scores)
    with figures.styled():
        fig = figures.labels_figure(confusion, predictions, scores)
        figures.save_figure(fig, png, svg, dpi)
    logger.info("label decoding (%d subjects) -> %s", len(score_tsvs), png)
    return scores


def _label_rows(label_tsvs: Sequence[PathLike]) -> dict[str, dict]:
    """``{subject: summary columns}`` of the label decoding (see :func:`metrics_summary`)."""
    rows: dict[str, dict] = {}
    for path in label_tsvs:
        table = read_table(path, ("target", "kind", "p"), "label scores")
        columns = {}
        for entry in table.to_dict("records"):
            metric = "balanced_accuracy" if entry["kind"] == "categorical" else "r"
            columns[f"labels_{entry['target']}_{metric}"] = float(entry[metric])
            columns[f"labels_{entry['target']}_chance"] = float(entry[f"chance_{metric}"])
            columns[f"labels_{entry['target']}_p"] = float(entry["p"])
        rows[_subject_of(path)] = columns
    return rows


def plot_model_comparison(tables: Sequence[PathLike], png: PathLike, svg: PathLike, tsv: PathLike, dpi: int = 150) -> pd.DataFrame:
    """The model-vs-model table of every subject (``sub-S_models.tsv``) as one figure; ``tsv`` = the rows with a subject column."""
    columns = ("model_a", "layer_a", "model_b", "layer_b", "delta", "ci_low", "ci_high", "p", "p_holm")
    rows = pd.concat([read_table(p, columns, "model comparison").assign(subject=_subject_of(p)) for p in tables], ignore_index=True)
    rows = rows[["subject", *[c for c in rows.columns if c != "subject"]]]
    write_tsv(tsv, rows)
    with figures.styled():
        fig = figures.model_comparison_figure(rows)
        figures.save_figure(fig, png, svg, dpi)
    logger.info("model comparison (%d pairs) -> %s", len(rows), png)
    return rows
