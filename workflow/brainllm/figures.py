"""Plotting for the report: matplotlib figures built from tidy tables, no I/O besides saving.

Figures are created with ``matplotlib.figure.Figure`` directly (no pyplot state, works
headless on any backend). Colours follow the Okabe–Ito palette, which stays
distinguishable under the common colour-vision deficiencies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .io import atomic_path

# Okabe & Ito (2008) colour-blind-safe palette; black is kept for means and references.
OKABE_ITO = {
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "black": "#000000",
}
SERIES_COLOURS = [OKABE_ITO[name] for name in ("blue", "orange", "bluish_green", "vermillion", "reddish_purple", "sky_blue", "yellow")]
SERIES_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
MEAN_COLOUR = OKABE_ITO["black"]

STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "brainllm",
}


def series_style(index: int) -> dict:
    """Colour and marker of the ``index``-th series (markers repeat once colours run out)."""
    return {
        "color": SERIES_COLOURS[index % len(SERIES_COLOURS)],
        "marker": SERIES_MARKERS[(index // len(SERIES_COLOURS) + index) % len(SERIES_MARKERS)],
    }


def styled():
    """Context in which figures are built and saved with the report's style."""
    return matplotlib.rc_context(STYLE)


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, png: str | os.PathLike, svg: str | os.PathLike, dpi: int = 150) -> None:
    """Write ``fig`` as PNG and SVG, each atomically; SVG and PNG carry no timestamp."""
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    with atomic_path(svg) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None, "Creator": None})


def format_params(n_params: float | None) -> str:
    """Parameter count as a short label: 22.7M, 7B, 125M."""
    if n_params is None or not np.isfinite(n_params):
        return ""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n_params >= scale:
            return f"{n_params / scale:.3g}{suffix}"
    return f"{n_params:.3g}"


def model_label(model: str, n_params: float | None) -> str:
    size = format_params(n_params)
    return f"{model} ({size})" if size else model


def layer_curves_figure(curves: pd.DataFrame, model_sizes: dict[str, float | None], x_column: str, x_label: str) -> Figure:
    """Encoding accuracy per layer: all voxels, top 10 % voxels, and the accuracy at the layer chosen on
    validation r versus model size.

    ``curves``: columns ``model subject <x_column> mean_r mean_r_top10 best``; rows with
    ``subject == "average"`` are the across-subject means (thick lines; ``best`` the layer with the
    highest mean validation r, starred), the others are single subjects (thin lines).
    """
    models = list(dict.fromkeys(curves["model"]))
    sized = [m for m in models if model_sizes.get(m)]
    compared = "delta_vs_best" in curves and curves["delta_vs_best"].notna().any()
    n_panels = 2 + bool(sized) + compared
    fig = new_figure(4.2 * n_panels, 3.6)
    axes = fig.subplots(1, n_panels)
    top_label = "top 10% voxels by validation r"
    # descriptive: test-story r per layer; layers are chosen on validation r (layers.tsv `best`)
    panels = (("mean_r", "Mean test r, all voxels (descriptive)"), ("mean_r_top10", f"Mean test r, {top_label}"))
    for ax, (column, title) in zip(axes, panels):
        for index, model in enumerate(models):
            style = series_style(index)
            rows = curves[curves["model"] == model]
            for subject, per_subject in rows[rows["subject"] != "average"].groupby("subject", sort=True):
                per_subject = per_subject.sort_values(x_column)
                ax.plot(per_subject[x_column], per_subject[column], color=style["color"], lw=0.9, alpha=0.35)
            mean_rows = rows[rows["subject"] == "average"].sort_values(x_column)
            ax.plot(mean_rows[x_column], mean_rows[column], color=style["color"], marker=style["marker"], lw=2.2, ms=5)
            chosen = mean_rows[mean_rows["best"].astype(bool)]  # the layer chosen on validation r, not the test curve's peak
            ax.plot(chosen[x_column], chosen[column], marker="*", ms=14, color=style["color"], mec="black", mew=0.6, ls="none")
        ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.set_ylabel("Pearson r (held-out story)")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.grid(alpha=0.25)
    handles = [
        Line2D([], [], lw=2.2, **series_style(i), label=model_label(m, model_sizes.get(m))) for i, m in enumerate(models)
    ]
    handles += [
        Line2D([], [], color="0.45", lw=0.9, alpha=0.6, label="single subjects"),
        Line2D([], [], color="0.45", marker="*", ms=11, mec="black", ls="none", label="peak of the test curve"),
    ]
    axes[0].legend(handles=handles, loc="best", frameon=False)
    if compared:
        ax = axes[-1]
        singles = curves[(curves["subject"] != "average") & curves["delta_vs_best"].notna()]
        offsets = np.linspace(-0.2, 0.2, max(singles.groupby(["model", "subject"]).ngroups, 1))
        for offset, ((model, subject), rows) in zip(offsets, singles.groupby(["model", "subject"], sort=True)):
            rows = rows.sort_values(x_column)
            step = offset * (1.0 if x_column == "layer" else 0.05)
            error = np.vstack([rows["delta_vs_best"] - rows["delta_ci_low"], rows["delta_ci_high"] - rows["delta_vs_best"]]).clip(min=0)
            ax.errorbar(rows[x_column] + step, rows["delta_vs_best"], yerr=error, fmt="o", ms=3.5, capsize=2, lw=0.9,
                        color=series_style(models.index(model))["color"], alpha=0.8)
        ax.axhline(0, color=MEAN_COLOUR, ls="--", lw=0.8)
        ax.set_title("Δ test r vs chosen layer (95 % CI)")
        ax.set_xlabel(x_label)
        ax.set_ylabel("Δ mean r (layer − best layer)")
        ax.grid(alpha=0.25)
    if sized:
        ax = axes[2]
        averages = curves[curves["subject"] == "average"]
        chosen = averages[averages["best"].astype(bool)]
        peaks = chosen[chosen["model"].isin(sized)].set_index("model")[["mean_r", "mean_r_top10"]]
        peaks["size"] = [model_sizes[m] for m in peaks.index]
        peaks = peaks.sort_values("size")
        for column in ("mean_r", "mean_r_top10"):
            ax.plot(peaks["size"], peaks[column], color="0.6", lw=1.0, zorder=0)
        for index, model in enumerate(models):
            if model not in sized:
                continue
            style = series_style(index)
            size = model_sizes[model]
            ax.plot(size, peaks.loc[model, "mean_r"], color=style["color"], marker=style["marker"], ms=8, ls="none")
            ax.plot(size, peaks.loc[model, "mean_r_top10"], color=style["color"], marker=style["marker"], ms=8, ls="none", mfc="white")
        ax.set_xscale("log")
        ax.set_xlabel("Model parameters")
        ax.set_ylabel("Mean test r at the layer chosen on validation r")
        ax.set_title("Scaling with model size")
        ax.grid(alpha=0.25, which="both")
        ax.legend(
            handles=[
                Line2D([], [], color="0.3", marker="o", ls="none", label="all voxels"),
                Line2D([], [], color="0.3", marker="o", mfc="white", ls="none", label=top_label),
            ],
            frameon=False,
            loc="best",
        )
    return fig


def roi_ranking_figure(ranking: pd.DataFrame, mean_label: str, note: str | None = None) -> Figure:
    """Models (at their best layer) sorted by accuracy on x; one colour per ROI plus the mean.

    ``ranking``: columns ``rank model layer roi mean_r``; the row with ``roi == mean_label``
    is the mean over all voxels. ``note`` (e.g. that there is no atlas) becomes the title.
    """
    order = ranking.drop_duplicates("model").sort_values("rank")
    positions = {model: i for i, model in enumerate(order["model"])}
    rois = [roi for roi in dict.fromkeys(ranking["roi"]) if roi != mean_label]
    fig = new_figure(max(4.5, 1.2 * len(positions) + 3.5), 4.0)
    ax = fig.subplots()
    jitter = np.linspace(-0.12, 0.12, max(len(rois), 1))
    for index, roi in enumerate(rois):
        rows = ranking[ranking["roi"] == roi].assign(x=lambda d: d["model"].map(positions)).sort_values("x")
        ax.plot(rows["x"] + jitter[index], rows["mean_r"], lw=1.0, ms=6, label=roi, **series_style(index))
    mean_rows = ranking[ranking["roi"] == mean_label].assign(x=lambda d: d["model"].map(positions)).sort_values("x")
    ax.plot(mean_rows["x"], mean_rows["mean_r"], color=MEAN_COLOUR, marker="_", ms=28, mew=3, lw=2.0, label=mean_label)
    ax.set_xticks(range(len(positions)))
    ax.set_xticklabels([f"{row.model}\nlayer {int(row.layer)}" for row in order.itertuples()])
    ax.set_xlim(-0.6, len(positions) - 0.4)
    ax.set_xlabel("Model (best layer), sorted by mean r")
    ax.set_ylabel("Mean r in ROI (average over subjects)")
    ax.axhline(0, color="0.6", lw=0.6)
    ax.grid(axis="y", alpha=0.25)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title="ROI")
    if note:
        ax.set_title(note, fontsize="medium")
    return fig


def r_histogram_figure(
    histogram: pd.DataFrame, fdr_threshold: float | None, n_test_trs: int, title: str, noise_label: str | None
) -> Figure:
    """Voxel r histogram (density) with the noise voxels, the analytic null and the FDR threshold.

    ``histogram``: columns ``bin_left bin_right density_all null_density`` and, when the
    noise voxels are known, ``density_noise``.
    """
    fig = new_figure(6.0, 3.8)
    ax = fig.subplots()
    edges = np.append(histogram["bin_left"].to_numpy(), histogram["bin_right"].iloc[-1])
    centres = (histogram["bin_left"] + histogram["bin_right"]).to_numpy() / 2
    ax.stairs(histogram["density_all"], edges, fill=True, color=OKABE_ITO["sky_blue"], alpha=0.7, label="all voxels")
    if "density_noise" in histogram:
        ax.stairs(histogram["density_noise"], edges, color=OKABE_ITO["orange"], lw=1.8, label=noise_label)
    ax.plot(centres, histogram["null_density"], color=MEAN_COLOUR, ls="--", lw=1.4, label=f"analytic null, n = {n_test_trs} independent TRs")
    if "perm_null_density" in histogram:
        ax.stairs(histogram["perm_null_density"], edges, color=OKABE_ITO["bluish_green"], lw=1.6, label="block-permutation null")
    if fdr_threshold is not None:
        for sign in (-1, 1):
            ax.axvline(sign * fdr_threshold, color=OKABE_ITO["vermillion"], ls=":", lw=1.8)
        ax.plot([], [], color=OKABE_ITO["vermillion"], ls=":", lw=1.8, label=f"FDR threshold |r| = {fdr_threshold:.3f}")
    else:
        ax.plot([], [], ls="none", label="no voxel passes FDR")
    ax.set_xlabel("Pearson r (held-out story)")
    ax.set_ylabel("Density")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # headroom for the legend
    ax.set_title(title)
    ax.legend(frameon=False, loc="upper left")
    return fig


def mosaic_figure(
    background: np.ndarray,
    overlay: np.ma.MaskedArray,
    slices: Sequence[int],
    cmap: str | mcolors.Colormap,
    norm: mcolors.Normalize,
    colorbar_label: str,
    title: str,
    colorbar_ticks: Sequence[float] | None = None,
) -> Figure:
    """Axial slices (RAS volume, neurological view: left on the left) of ``overlay`` on ``background``.

    ``background`` and ``overlay`` are ``(n_x, n_y, n_z)``; masked overlay voxels are transparent.
    """
    n_cols = min(len(slices), 6)
    n_rows = int(np.ceil(len(slices) / n_cols))
    aspect = background.shape[1] / background.shape[0]
    fig = new_figure(1.6 * n_cols + 1.2, 1.6 * aspect * n_rows + 0.7)
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols)).ravel()
    finite = background[np.isfinite(background)]
    low, high = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    # the brightest background is drawn mid-grey so that pale overlay colours stay visible
    background_max = high + 0.8 * (high - low)
    image = None
    for ax, k in zip(axes, slices):
        ax.imshow(background[:, :, k].T, origin="lower", cmap="gray", vmin=low, vmax=background_max, interpolation="nearest")
        image = ax.imshow(overlay[:, :, k].T, origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
        ax.text(0.03, 0.97, f"z={k}", transform=ax.transAxes, va="top", ha="left", color="white", fontsize=7)
    for ax in axes:
        ax.set_axis_off()
    axes[0].text(0.02, 0.03, "L", transform=axes[0].transAxes, color="white", fontsize=8, weight="bold")
    axes[0].text(0.98, 0.03, "R", transform=axes[0].transAxes, color="white", fontsize=8, weight="bold", ha="right")
    colorbar = fig.colorbar(image, ax=list(axes), shrink=0.8, ticks=colorbar_ticks)
    colorbar.set_label(colorbar_label)
    fig.suptitle(title)
    return fig


def training_curves_figure(curves: pd.DataFrame, x_column: str, title: str) -> Figure:
    """Contrastive training: losses (left) and retrieval accuracies with chance (right) per epoch.

    Columns ending in ``loss`` are losses; columns containing ``top`` are accuracies, those
    also containing ``chance`` are drawn as dashed chance levels.
    """
    loss_columns = [c for c in curves.columns if c.endswith("loss")]
    accuracy_columns = [c for c in curves.columns if "top" in c and "chance" not in c and not c.endswith("loss")]
    chance_columns = [c for c in curves.columns if "top" in c and "chance" in c]
    fig = new_figure(12.0, 3.8)
    loss_ax, accuracy_ax = fig.subplots(1, 2)
    for index, column in enumerate(loss_columns):
        rows = curves[[x_column, column]].dropna()
        loss_ax.plot(rows[x_column], rows[column], lw=1.6, ms=3, label=column.replace("_", " "), **series_style(index))
    loss_ax.set_ylabel("InfoNCE loss")
    loss_ax.set_title("Loss")
    for index, column in enumerate(accuracy_columns):
        rows = curves[[x_column, column]].dropna()
        accuracy_ax.plot(rows[x_column], rows[column], lw=1.6, ms=3, label=column.replace("_", " "), **series_style(index))
    for column in chance_columns:
        rows = curves[[x_column, column]].dropna()
        accuracy_ax.plot(rows[x_column], rows[column], color=MEAN_COLOUR, ls="--", lw=1.0, label=column.replace("_", " "))
    accuracy_ax.set_ylabel("Retrieval accuracy")
    accuracy_ax.set_title("Retrieval during training")
    accuracy_ax.set_ylim(0, 1)
    for ax in (loss_ax, accuracy_ax):
        ax.set_xlabel(x_column)
        ax.grid(alpha=0.25)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if loss_ax.lines:
        loss_ax.legend(frameon=False, fontsize=7.5)
    if accuracy_ax.lines:  # outside: accuracies span the whole axis
        accuracy_ax.legend(frameon=False, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title)
    return fig


def retrieval_figure(retrieval: pd.DataFrame, title: str) -> Figure:
    """Grouped bars of held-out retrieval accuracy per direction and k, chance as black ticks.

    ``retrieval``: columns ``direction metric accuracy chance``.
    """
    directions = list(dict.fromkeys(retrieval["direction"]))
    metrics = list(dict.fromkeys(retrieval["metric"]))
    width = 0.8 / len(metrics)
    fig = new_figure(max(5.5, 1.8 * len(directions) + 3), 3.6)
    ax = fig.subplots()
    for index, metric in enumerate(metrics):
        rows = retrieval[retrieval["metric"] == metric].set_index("direction").loc[directions]
        x = np.arange(len(directions)) - 0.4 + width * (index + 0.5)
        ax.bar(x, rows["accuracy"], width=width * 0.9, color=series_style(index)["color"], label=metric)
        ax.hlines(rows["chance"], x - width * 0.45, x + width * 0.45, color=MEAN_COLOUR, lw=2)
        for xi, value in zip(x, rows["accuracy"]):
            ax.text(xi, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=7.5)
    ax.plot([], [], color=MEAN_COLOUR, lw=2, label="chance")
    ax.set_xticks(range(len(directions)))
    ax.set_xticklabels([d.replace("_", " ") for d in directions])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Accuracy (held-out story)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.25)
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))  # outside: never over a bar label
    return fig


def base_vs_tuned_figure(comparison: pd.DataFrame, title: str) -> Figure:
    """Held-out encoding r per layer of the base and brain-tuned model (left) and the change (right).

    ``comparison``: columns ``layer mean_r_base mean_r_tuned`` and optionally
    ``top10pct_r_base top10pct_r_tuned`` (drawn dashed), ``delta_ci_low delta_ci_high``
    (error bars of the change) and ``p_holm`` (* where < 0.05).
    """
    comparison = comparison.sort_values("layer")
    fig = new_figure(9.0, 3.8)
    r_ax, diff_ax = fig.subplots(1, 2)
    for index, (suffix, name) in enumerate((("base", "base"), ("tuned", "brain-tuned"))):
        style = series_style(index)
        r_ax.plot(comparison["layer"], comparison[f"mean_r_{suffix}"], lw=1.8, label=f"{name}, all voxels", **style)
        if f"top10pct_r_{suffix}" in comparison:
            r_ax.plot(comparison["layer"], comparison[f"top10pct_r_{suffix}"], lw=1.4, ls="--", mfc="white", label=f"{name}, top 10% voxels", **style)
    r_ax.set_ylabel("Mean r (held-out story)")
    r_ax.set_title("Encoding accuracy")
    r_ax.legend(frameon=False, fontsize=7.5)
    difference = comparison["mean_r_tuned"] - comparison["mean_r_base"]
    error = None
    if {"delta_ci_low", "delta_ci_high"} <= set(comparison):  # paired block-jackknife CI of the change
        error = np.vstack([difference - comparison["delta_ci_low"], comparison["delta_ci_high"] - difference]).clip(min=0)
    diff_ax.bar(comparison["layer"], difference, yerr=error, capsize=3,
                color=[OKABE_ITO["bluish_green"] if d >= 0 else OKABE_ITO["vermillion"] for d in difference])
    if "p_holm" in comparison:
        for layer, value, p in zip(comparison["layer"], difference, comparison["p_holm"]):
            if p < 0.05:
                diff_ax.annotate("*", (layer, value), textcoords="offset points", xytext=(0, 4 if value >= 0 else -12), ha="center")
    diff_ax.axhline(0, color=MEAN_COLOUR, lw=0.8)
    diff_ax.set_ylabel("Δ mean r (tuned − base)")
    diff_ax.set_title("Change (95 % CI; * Holm p < 0.05)")
    for ax in (r_ax, diff_ax):
        ax.set_xlabel("Layer")
        ax.grid(alpha=0.25)
        ax.set_xticks(comparison["layer"])
    fig.suptitle(title)
    return fig


def identification_figure(curves: pd.DataFrame) -> Figure:
    """Segment identification against segment length: top-1 accuracy and mean percentile rank, chance dashed.

    ``curves``: columns ``subject model method layer segment_trs direction top1 chance_top1
    mean_percentile_rank`` (one row per series point); ``method`` ``encoding`` (observed →
    predicted solid), ``contrastive`` or ``contrastive LoRA`` (brain → text solid).
    """
    fig = new_figure(10.5, 4.6)
    axes = fig.subplots(1, 2)
    chance = curves.groupby("segment_trs")["chance_top1"].mean()
    for index, ((subject, model, method, layer), rows) in enumerate(curves.groupby(["subject", "model", "method", "layer"], sort=True)):
        style = series_style(index)
        for directions, line in ((("observed_to_predicted", "brain_to_text"), "-"), (("predicted_to_observed", "text_to_brain"), ":")):
            series = rows[rows["direction"].isin(directions)].sort_values("segment_trs")
            label = f"sub-{subject} · {model} · {method} · layer {layer}" if line == "-" else None
            axes[0].plot(series["segment_trs"], series["top1"], ls=line, label=label, **style)
            axes[1].plot(series["segment_trs"], series["mean_percentile_rank"], ls=line, **style)
    axes[0].plot(chance.index, chance.to_numpy(), ls="--", color=MEAN_COLOUR, label="chance")
    axes[1].axhline(0.5, ls="--", color=MEAN_COLOUR)
    axes[0].plot([], [], ls=":", color=MEAN_COLOUR, label="predicted → observed / text → brain")
    axes[0].set_ylabel("Top-1 accuracy (held-out story)")
    axes[1].set_ylabel("Mean percentile rank")
    axes[0].set_ylim(0, 1.05)
    axes[1].set_ylim(0.4, 1.02)
    for ax in axes:
        ax.set_xlabel("Segment length (TRs)")
        ax.set_xticks(sorted(curves["segment_trs"].unique()))
        ax.grid(alpha=0.25)
    axes[0].set_title("Semantic identification: brain → candidates (solid)")
    axes[1].set_title("Mean percentile rank (chance 0.5)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, fontsize=7.5, loc="outside lower center", ncol=3)  # below: never over a curve
    return fig


WORD_PREDICTORS = {"brain": "brain", "frequency": "frequency only", "brain_and_frequency": "brain + frequency"}


def word_classification_figure(percentiles: pd.DataFrame, scores: pd.DataFrame) -> Figure:
    """Whole-vocabulary word classification: histograms of the heard word's percentile rank, and mean percentile ranks.

    ``percentiles``: columns ``run predictor percentile_rank`` (one row per held-out word);
    ``scores``: ``run predictor mean_percentile_rank p`` (p for the brain only).
    """
    fig = new_figure(10.5, 3.8)
    axes = fig.subplots(1, 2)
    bins = np.linspace(0, 1, 21)
    for index, (predictor, label) in enumerate(WORD_PREDICTORS.items()):
        values = percentiles.loc[percentiles["predictor"] == predictor, "percentile_rank"]
        axes[0].hist(values, bins=bins, histtype="step", lw=1.6, density=True, color=SERIES_COLOURS[index], label=label)
    axes[0].axhline(1.0, ls="--", color=MEAN_COLOUR, label="chance (uniform)")
    axes[0].set_xlabel("Percentile rank of the heard word in the vocabulary")
    axes[0].set_ylabel("Density (held-out words, all runs)")
    axes[0].legend(frameon=False, fontsize=7.5, loc="upper left")
    runs = list(dict.fromkeys(scores["run"]))
    width = 0.8 / len(WORD_PREDICTORS)
    for index, predictor in enumerate(WORD_PREDICTORS):
        rows = scores[scores["predictor"] == predictor].set_index("run").reindex(runs)
        positions = np.arange(len(runs)) + (index - 1) * width
        axes[1].bar(positions, rows["mean_percentile_rank"], width=width, color=SERIES_COLOURS[index])
        if predictor == "brain":
            for x, (value, p) in zip(positions, zip(rows["mean_percentile_rank"], rows["p"])):
                axes[1].annotate(f"p={p:.2g}", (x, value), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    axes[1].axhline(0.5, ls="--", color=MEAN_COLOUR)
    axes[1].set_xticks(np.arange(len(runs)), runs, rotation=20, ha="right", fontsize=7.5)
    axes[1].set_ylim(0.4, 1.02)
    axes[1].set_ylabel("Mean percentile rank (chance 0.5)")
    axes[0].set_title("Where the heard word ranks among all vocabulary words")
    axes[1].set_title("Per run: brain, frequency, brain + frequency")
    for ax in axes:
        ax.grid(alpha=0.25)
    return fig


def labels_figure(confusion: pd.DataFrame, predictions: pd.DataFrame, scores: pd.DataFrame) -> Figure:
    """Label decoding per subject: row-normalised confusion matrix of each categorical target, true vs predicted of each continuous one.

    ``confusion``: ``subject target true predicted count``; ``predictions``: ``subject target true predicted``
    (continuous targets); ``scores``: ``subject target balanced_accuracy r p chance_balanced_accuracy``.
    """
    panels = [(s, t, "categorical") for s, t in confusion[["subject", "target"]].drop_duplicates().itertuples(index=False)]
    panels += [(s, t, "continuous") for s, t in predictions[["subject", "target"]].drop_duplicates().itertuples(index=False)]
    fig = new_figure(3.3 * max(len(panels), 1), 3.4)
    axes = np.atleast_1d(fig.subplots(1, max(len(panels), 1)))
    for ax, (subject, target, kind) in zip(axes, panels):
        score = scores[(scores["subject"] == subject) & (scores["target"] == target)].iloc[0]
        if kind == "categorical":
            rows = confusion[(confusion["subject"] == subject) & (confusion["target"] == target)]
            classes = list(dict.fromkeys(rows["true"]))
            matrix = rows.pivot(index="true", columns="predicted", values="count").reindex(index=classes, columns=classes).to_numpy(float)
            matrix = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
            ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
            for (i, j), value in np.ndenumerate(matrix):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7.5, color="white" if value > 0.6 else "black")
            ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
            ax.set_yticks(range(len(classes)), classes)
            ax.set_xlabel("Predicted")
            ax.set_ylabel("True")
            ax.set_title(f"sub-{subject} · {target}\nbalanced acc. {score['balanced_accuracy']:.2f} "
                         f"(chance {score['chance_balanced_accuracy']:.2f}), p={score['p']:.2g}", fontsize=8.5)
        else:
            rows = predictions[(predictions["subject"] == subject) & (predictions["target"] == target)]
            ax.scatter(rows["true"], rows["predicted"], s=5, alpha=0.4, color=SERIES_COLOURS[0])
            low, high = float(min(rows["true"].min(), rows["predicted"].min())), float(max(rows["true"].max(), rows["predicted"].max()))
            ax.plot([low, high], [low, high], ls="--", color=MEAN_COLOUR)
            ax.set_xlabel(f"True {target}")
            ax.set_ylabel(f"Predicted {target} (held-out story)")
            ax.set_title(f"sub-{subject} · {target}\nr={score['r']:.2f}, R²={score['r2']:.2f}, p={score['p']:.2g}", fontsize=8.5)
            ax.grid(alpha=0.25)
    return fig


def model_comparison_figure(table: pd.DataFrame) -> Figure:
    """Δ mean r (model a − model b) with its paired block-jackknife CI per (subject, pair), Holm p beside each; 0 dashed.

    ``table``: columns ``subject model_a layer_a model_b layer_b delta ci_low ci_high p_holm``.
    """
    fig = new_figure(7.5, 1.2 + 0.45 * len(table))
    ax = fig.subplots()
    y = np.arange(len(table))[::-1]
    for row, position in zip(table.itertuples(index=False), y):
        colour = SERIES_COLOURS[0] if row.ci_low > 0 or row.ci_high < 0 else MEAN_COLOUR
        ax.errorbar(row.delta, position, xerr=[[row.delta - row.ci_low], [row.ci_high - row.delta]], fmt="o", color=colour, capsize=3)
        ax.annotate(f"Holm p={row.p_holm:.2g}", (row.ci_high, position), textcoords="offset points", xytext=(6, -3), fontsize=7.5)
    ax.axvline(0.0, ls="--", color=MEAN_COLOUR)
    ax.set_yticks(y, [f"sub-{r.subject}: {r.model_a} (L{r.layer_a}) − {r.model_b} (L{r.layer_b})" for r in table.itertuples(index=False)], fontsize=8)
    ax.set_xlabel("Δ mean r on the held-out stories (95 % paired block-jackknife CI)")
    ax.set_title("Model vs model, each at its validation-chosen layer")
    ax.grid(alpha=0.25, axis="x")
    return fig


def transfer_figure(table: pd.DataFrame) -> Figure:
    """Cross-subject transfer matrices, one per model: mean test r of each source's model in each target.

    ``table``: columns ``model source target mean_r_transfer ratio`` (diagonal: within
    subject). Cells are annotated with r and, off the diagonal, the ratio to the target's
    within-subject r.
    """
    models = sorted(table["model"].unique())
    subjects = sorted(set(table["source"]) | set(table["target"]))
    size = 1.2 + 0.7 * len(subjects)
    fig = new_figure(size * len(models) + 1.2, size + 0.6)
    axes = np.atleast_1d(fig.subplots(1, len(models)))
    high = max(float(np.nanmax(table["mean_r_transfer"].to_numpy())), 1e-6)
    low = min(float(np.nanmin(table["mean_r_transfer"].to_numpy())), 0.0)
    for ax, model in zip(axes, models):
        rows = table[table["model"] == model]
        matrix = np.full((len(subjects), len(subjects)), np.nan)
        for row in rows.itertuples(index=False):
            i, j = subjects.index(row.source), subjects.index(row.target)
            matrix[i, j] = row.mean_r_transfer
            text = f"{row.mean_r_transfer:.2f}" if row.source == row.target else f"{row.mean_r_transfer:.2f}\n({row.ratio:.2f}×)"
            light = row.mean_r_transfer < low + 0.6 * (high - low)  # dark end of viridis: white text
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if light else "black")
        image = ax.imshow(matrix, cmap="viridis", vmin=low, vmax=high)
        ax.set_xticks(range(len(subjects)), [f"sub-{s}" for s in subjects], rotation=45, ha="right")
        ax.set_yticks(range(len(subjects)), [f"sub-{s}" for s in subjects])
        ax.set_xlabel("target (scored in)")
        ax.set_ylabel("source (encoding model of)")
        ax.set_title(model)
    fig.colorbar(image, ax=axes, label="mean test r", shrink=0.8)
    return fig


def subjects_figure(layers: pd.DataFrame, rois: pd.DataFrame) -> Figure:
    """Per model: every subject's layer curve (★ its layer chosen on validation r) with the group mean and its
    between-subject 95 % interval (dashed: a subject that differs from the others); and mean r per ROI and subject
    at each subject's chosen layer.

    ``layers``/``rois``: the group_subjects tables with a ``model`` column (``subject`` ``group`` rows hold the group).
    """
    models = sorted(layers["model"].unique())
    n_subjects = layers.loc[layers["subject"] != "group", "subject"].nunique()
    n_rois = rois["roi"].nunique()
    fig = new_figure(5.0 + 0.6 * n_rois, 3.4 * len(models) + 0.4)
    axes = np.atleast_2d(fig.subplots(len(models), 2, width_ratios=[5.0, 1.0 + 0.6 * n_rois]))
    for (curve_ax, roi_ax), model in zip(axes, models):
        table = layers[layers["model"] == model]
        for index, (subject, rows) in enumerate(table[table["subject"] != "group"].groupby("subject", sort=True)):
            rows = rows.sort_values("layer")
            style = series_style(index)
            differs = "differs_from_group" in rows and rows["differs_from_group"].astype(bool).any()
            curve_ax.plot(rows["layer"], rows["mean_r"], lw=1.6 if differs else 1, ls="--" if differs else "-", alpha=0.8,
                          label=f"sub-{subject}" + (" (differs)" if differs else ""), color=style["color"])
            chosen = rows[rows["best"].astype(bool)]
            curve_ax.plot(chosen["layer"], chosen["mean_r"], ls="none", marker="*", ms=10, color=style["color"])
        group = table[table["subject"] == "group"].sort_values("layer")
        curve_ax.plot(group["layer"], group["mean_r"], lw=2.5, color=MEAN_COLOUR, label=f"mean of {n_subjects}")
        curve_ax.fill_between(group["layer"], group["r_ci_low"], group["r_ci_high"], color=MEAN_COLOUR, alpha=0.2, lw=0,
                              label="95 % interval across subjects")
        note = group["note"].dropna().iloc[0] if "note" in group and group["note"].notna().any() else ""
        curve_ax.set_title(f"{model}: mean test r per layer" + (f"\n({note})" if note else ""), fontsize=9)
        curve_ax.set_xlabel("layer (hidden state)")
        curve_ax.set_ylabel("mean test r (all voxels)")
        curve_ax.legend(fontsize=7, loc="lower center")
        per_roi = rois[(rois["model"] == model) & (rois["subject"] != "group")]
        matrix = per_roi.pivot(index="subject", columns="roi", values="mean_r")
        image = roi_ax.imshow(matrix.to_numpy(dtype=float), cmap="viridis", aspect="auto")
        roi_ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=45, ha="right", fontsize=7)
        roi_ax.set_yticks(range(matrix.shape[0]), [f"sub-{s}" for s in matrix.index], fontsize=7)
        roi_ax.set_title("mean r per ROI at each\nsubject's chosen layer", fontsize=9)
        fig.colorbar(image, ax=roi_ax, shrink=0.8)
    return fig


def isc_figure(voxels: pd.DataFrame, rois: pd.DataFrame) -> Figure:
    """Inter-subject correlation: the common voxels' ISC (significant ones after FDR apart) and, per ROI,
    the ISC (bar; * FDR-significant) with each subject's leave-one-out r and the null's 95th percentile.

    ``voxels``/``rois``: the group_isc tables (``isc``, ``isc_<subject>``, ``null_95``, ``significant``); either may be empty.
    """
    panels = [name for name, table in (("voxels", voxels), ("rois", rois)) if len(table)]
    fig = new_figure(4.2 * max(len(panels), 1), 3.4)
    axes = np.atleast_1d(fig.subplots(1, max(len(panels), 1)))
    if not panels:
        axes[0].text(0.5, 0.5, "no common grid and no atlas:\nno inter-subject correlation", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
        return fig
    for ax, panel in zip(axes, panels):
        if panel == "voxels":
            significant = voxels["significant"].astype(bool)
            bins = np.linspace(min(voxels["isc"].min(), 0.0), max(voxels["isc"].max(), 0.1), 40)
            ax.hist([voxels.loc[~significant, "isc"], voxels.loc[significant, "isc"]], bins=bins, stacked=True,
                    color=[MEAN_COLOUR, SERIES_COLOURS[0]], label=["not significant", "FDR-significant"])
            ax.axvline(float(voxels["null_95"].median()), color="black", ls="--", lw=0.8, label="null 95th pct. (median)")
            ax.set_xlabel("leave-one-out ISC (mean over subjects)")
            ax.set_ylabel("voxels")
            ax.set_title(f"{len(voxels)} voxels common to all subjects", fontsize=9)
            ax.legend(fontsize=7)
        else:
            subjects = [c.removeprefix("isc_") for c in rois.columns if c.startswith("isc_")]
            x = np.arange(len(rois))
            ax.bar(x, rois["isc"], color=SERIES_COLOURS[0], alpha=0.6, label="mean")
            for index, subject in enumerate(subjects):
                ax.plot(x, rois[f"isc_{subject}"], ls="none", ms=4, label=f"sub-{subject}", **series_style(index + 1))
            ax.plot(x, rois["null_95"], ls="none", marker="_", ms=14, color="black", label="null 95th pct.")
            for xi, value, passed in zip(x, rois["isc"], rois["significant"].astype(bool)):
                if passed:
                    ax.text(xi, value, "*", ha="center", va="bottom", fontsize=10)
            ax.axhline(0.0, color=MEAN_COLOUR, lw=0.8)
            ax.set_xticks(x, rois["roi"], rotation=45, ha="right", fontsize=7)
            ax.set_ylabel("leave-one-out ISC")
            ax.set_title("ISC of the ROIs' mean responses", fontsize=9)
            ax.legend(fontsize=7)
    return fig


def generation_figure(comparisons: pd.DataFrame, pairwise: pd.DataFrame) -> Figure:
    """Brain-prompted generation: gain of the brain condition over each control per metric (beam search,
    95 % block-jackknife CI, * one-sided p < 0.05) and the pairwise accuracy per subject against chance.

    ``comparisons``: the comparisons tables with a ``subject`` column; ``pairwise``: one row per subject
    (``pairwise_accuracy ci_low ci_high p``).
    """
    beam = comparisons[comparisons["decoding"] == "beam"]
    metrics = list(dict.fromkeys(beam["metric"]))
    controls = list(dict.fromkeys(beam["control"]))
    subjects = sorted(beam["subject"].unique())
    fig = new_figure(4.0 + 1.1 * len(metrics), 3.6)
    gain_ax, pair_ax = fig.subplots(1, 2, width_ratios=[1.0 + 0.9 * len(metrics), 1.2 + 0.5 * len(subjects)])
    width = 0.8 / max(len(controls) * len(subjects), 1)
    for c_index, control in enumerate(controls):
        style = series_style(c_index)
        for s_index, subject in enumerate(subjects):
            rows = beam[(beam["control"] == control) & (beam["subject"] == subject)].set_index("metric").loc[metrics]
            x = np.arange(len(metrics)) - 0.4 + width * (c_index * len(subjects) + s_index + 0.5)
            gain = rows["gain"].to_numpy(float)
            gain_ax.errorbar(x, gain, yerr=[gain - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - gain],
                             ls="none", marker=style["marker"], color=style["color"], ms=4, capsize=2,
                             label=f"vs {control.replace('_', ' ')}" if s_index == 0 else None)
            for xi, gi, hi, p in zip(x, gain, rows["ci_high"].to_numpy(float), rows["p"].to_numpy(float)):
                if p < 0.05:
                    gain_ax.text(xi, hi, "*", ha="center", va="bottom", fontsize=8, color=style["color"])
    gain_ax.axhline(0.0, color=MEAN_COLOUR, lw=0.8)
    gain_ax.set_xticks(range(len(metrics)), [m.replace("wer", "WER (lower)").replace("bleu1", "BLEU-1").replace("rouge1", "ROUGE-1")
                                             .replace("rougeL", "ROUGE-L").replace("meteor", "METEOR") for m in metrics])
    gain_ax.set_ylabel("brain − control per segment\n(WER: control − brain)")
    gain_ax.set_title(f"Gain of brain prompts (beam search; {len(subjects)} subject{'s' * (len(subjects) > 1)})", fontsize=9)
    gain_ax.legend(fontsize=7)
    gain_ax.grid(alpha=0.25, axis="y")
    pairwise = pairwise.sort_values("subject")
    x = np.arange(len(pairwise))
    accuracy = pairwise["pairwise_accuracy"].to_numpy(float)
    pair_ax.errorbar(x, accuracy, yerr=[accuracy - pairwise["ci_low"].to_numpy(float), pairwise["ci_high"].to_numpy(float) - accuracy],
                     ls="none", marker="o", color=SERIES_COLOURS[0], capsize=3)
    for xi, acc, p in zip(x, accuracy, pairwise["p"].to_numpy(float)):
        pair_ax.annotate(f"p={p:.3g}", (xi, acc), textcoords="offset points", xytext=(6, 0), fontsize=7, va="center")
    pair_ax.axhline(0.5, color=MEAN_COLOUR, ls="--", lw=0.8, label="chance")
    pair_ax.set_xticks(x, [f"sub-{s}" for s in pairwise["subject"]], rotation=45, ha="right")
    pair_ax.set_xlim(-0.6, len(pairwise) - 0.4)
    pair_ax.set_ylabel("pairwise accuracy")
    pair_ax.set_title("true vs permuted brain:\nlower loss of the heard words", fontsize=9)
    pair_ax.legend(fontsize=7)
    return fig


def shared_encoder_figure(table: pd.DataFrame) -> Figure:
    """Test mean percentile rank (brain → text) per subject of the shared contrastive encoder beside each subject's
    single-subject model, one panel per (model, layer); held-out subjects hatched; chance (0.5) dashed.

    ``table``: columns ``model layer subject role mean_percentile_rank_brain_to_text
    single_mean_percentile_rank_brain_to_text`` (role ``train`` | ``held_out``; single NaN when absent).
    """
    panels = list(dict.fromkeys(zip(table["model"], table["layer"])))
    n_subjects = table.groupby(["model", "layer"]).size().max()
    fig = new_figure(max(4.8, 1.2 + 0.6 * n_subjects) * len(panels), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    width = 0.38
    for ax, (model, layer) in zip(axes, panels):
        rows = table[(table["model"] == model) & (table["layer"] == layer)].reset_index(drop=True)
        x = np.arange(len(rows))
        held_out = (rows["role"] == "held_out").to_numpy()
        for offset, column, label, index in ((-width / 2, "mean_percentile_rank_brain_to_text", "shared encoder", 0),
                                             (width / 2, "single_mean_percentile_rank_brain_to_text", "single-subject", 1)):
            bars = ax.bar(x + offset, rows[column].to_numpy(float), width, color=SERIES_COLOURS[index], label=label)
            for bar, hatched in zip(bars, held_out):
                if hatched:
                    bar.set_hatch("//")
                    bar.set_edgecolor("white")
        ax.axhline(0.5, color="0.4", ls="--", lw=1, label="chance")
        ax.set_xticks(x, [f"sub-{s}" + ("\n(held out)" if h else "") for s, h in zip(rows["subject"], held_out)], rotation=45, ha="right")
        ax.set_ylim(0.0, 1.0)
        ax.set_title(f"{model}, layer {int(layer)}")
    axes[0].set_ylabel("Test mean percentile rank\n(brain → text)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncols=3)
    return fig
