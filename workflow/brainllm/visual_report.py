"""Figures and tables of the visual stages: layer curves per ROI, identification, reconstructions, summary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .figures import new_figure, save_figure, series_style, styled
from .io import write_tsv
from .visual_encoding import layer_table

PathLike = str | os.PathLike


def write_layers(summary_jsons: Sequence[PathLike], model: str, out_tsv: PathLike, png: PathLike, svg: PathLike, dpi: int = 150) -> pd.DataFrame:
    """Per ROI: mean validation r (solid) and test r (dashed) over layers; the layer chosen on validation r marked."""
    summaries = [json.loads(Path(path).read_text()) for path in summary_jsons]
    table = layer_table(summaries, model)
    planted = next((s.get("ground_truth", {}).get("planted_layer") for s in summaries if s.get("ground_truth")), None)
    write_tsv(out_tsv, table)
    with styled():
        fig = new_figure(8.0, 3.8)
        ax = fig.add_subplot()
        for i, (roi, rows) in enumerate(table.groupby("roi", sort=False)):
            style = series_style(i)
            ax.plot(rows["layer"], rows["mean_validation_r"], color=style["color"], marker=style["marker"], label=f"{roi} (validation)")
            ax.plot(rows["layer"], rows["mean_r"], color=style["color"], linestyle="--", alpha=0.7, label=f"{roi} (test)")
            chosen = rows[rows["chosen"]]
            ax.scatter(chosen["layer"], chosen["mean_r"], s=120, facecolors="none", edgecolors=style["color"], linewidths=1.5, zorder=5)
        if planted is not None:
            ax.axvline(planted, color="0.5", linestyle=":", label=f"planted layer {planted}")
        ax.axhline(0, color="0.8", linewidth=0.8)
        ax.set_xticks(sorted(table["layer"].unique()))
        ax.set_xlabel("vision hidden state (0 = embeddings)")
        ax.set_ylabel("mean r over the ROI's voxels")
        ax.set_title(f"model {model}: layer chosen per ROI on validation r (circled, at its test r)")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
        save_figure(fig, png, svg, dpi)
    return table


def plot_identification(summary_json: PathLike, similarity_tsv: PathLike, png: PathLike, svg: PathLike, dpi: int = 150) -> None:
    """Bars: top-1, top-5, two-way and gallery top-1 of each decoder with chance; heatmap: ridge similarity."""
    summary = json.loads(Path(summary_json).read_text())
    similarity = pd.read_csv(similarity_tsv, sep="\t", index_col=0)
    metrics = [("top-1", lambda s: s["row_to_column"]["top1"], lambda s: s["chance"]["top1"]),
               ("top-5", lambda s: s["row_to_column"].get("top5", np.nan), lambda s: s["chance"].get("top5", np.nan)),
               ("two-way", lambda s: s["two_way"], lambda s: 0.5),
               (f"gallery top-1 (of {summary['ridge']['gallery']['n_candidates']})", lambda s: s["gallery"]["top1"],
                lambda s: s["gallery"]["chance"]["top1"])]
    with styled():
        fig = new_figure(10.0, 4.0)
        bars, heat = fig.subplots(1, 2, width_ratios=[1.3, 1])
        width = 0.38
        x = np.arange(len(metrics))
        for i, method in enumerate(("ridge", "contrastive")):
            scores = summary[method]
            values = [value(scores) for _, value, _ in metrics]
            bars.bar(x + (i - 0.5) * width, values, width, color=series_style(i)["color"], label=f"{method} (top-1 p {scores['top1_p']:.3g})")
        for j, (_, _, chance) in enumerate(metrics):
            bars.hlines(chance(summary["ridge"]), j - 0.4, j + 0.4, colors="k", linestyles=":", label="chance" if j == 0 else None)
        bars.set_xticks(x, [name for name, _, _ in metrics], rotation=12)
        bars.set_ylim(0, 1.05)
        bars.set_ylabel("accuracy (brain → image)")
        bars.set_title(f"identification among {summary['n_test_images']} test images ({summary['chosen_space']})")
        bars.legend(loc="upper left")
        image = heat.imshow(similarity.to_numpy(), cmap="viridis", aspect="auto")
        heat.set_xlabel("test image")
        heat.set_ylabel("test response (decoded, ridge)")
        heat.set_title(f"Pearson r in the {summary['chosen_space']} space (chosen on validation)")
        fig.colorbar(image, ax=heat, shrink=0.8)
        save_figure(fig, png, svg, dpi)


def plot_reconstructions(stimuli: np.ndarray, rows: Sequence[tuple[str, np.ndarray]], names: Sequence[str], png: PathLike, svg: PathLike,
                         dpi: int = 150, max_images: int = 12) -> None:
    """A grid: the stimuli (first row) above each reconstruction route (one row each), ``max_images`` columns."""
    n = min(len(stimuli), max_images)
    with styled():
        fig = new_figure(1.1 * n + 1.2, 1.2 * (len(rows) + 1) + 0.3)
        axes = np.atleast_2d(fig.subplots(len(rows) + 1, n, squeeze=False))
        for j in range(n):
            for i, (label, images) in enumerate([("stimulus", stimuli), *rows]):
                ax = axes[i, j]
                picture = images[j]
                ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1 if picture.ndim == 2 else None)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(label, fontsize=8)
            axes[0, j].set_title(str(names[j])[:14], fontsize=6)
        save_figure(fig, png, svg, dpi)


def write_roi_ranking(layers_tsvs: Sequence[PathLike], png: PathLike, svg: PathLike, tsv: PathLike, dpi: int = 150) -> pd.DataFrame:
    """Vision models ranked by mean test r over all voxels at their layer chosen on validation, each ROI beside it (mean over subjects)."""
    from .figures import roi_ranking_figure
    from .report import path_entities

    tables = []
    for path in layers_tsvs:
        table = pd.read_csv(path, sep="\t")
        table["subject"] = path_entities(path)["sub"]
        tables.append(table)
    layers = pd.concat(tables, ignore_index=True)
    rows = []
    for model, table in layers.groupby("model"):
        validation = table[table["roi"] == "all"].groupby("layer")["mean_validation_r"].mean().dropna()
        if validation.empty:  # no validation correlations (encoding.cv_score l2): nothing chosen, nothing ranked
            continue
        layer = int(validation.idxmax())  # chosen on validation r, averaged over subjects
        at_layer = table[table["layer"] == layer].groupby("roi")["mean_r"].mean()
        rows += [{"model": model, "layer": layer, "roi": roi, "mean_r": float(r)} for roi, r in at_layer.items()]
    ranking = pd.DataFrame(rows, columns=["model", "layer", "roi", "mean_r"])
    means = ranking[ranking["roi"] == "all"].sort_values("mean_r", ascending=False)
    ranking["rank"] = ranking["model"].map({model: i + 1 for i, model in enumerate(means["model"])})
    ranking = ranking.sort_values(["rank", "roi"]).reset_index(drop=True)
    write_tsv(tsv, ranking)
    with styled():
        fig = roi_ranking_figure(ranking, "all", None if len(ranking["roi"].unique()) > 1 else "no atlas: all voxels only")
        save_figure(fig, png, svg, dpi)
    return ranking


def write_summary(layers_tsvs: Sequence[PathLike], identification_jsons: Sequence[PathLike], reconstruction_jsons: Sequence[PathLike],
                  out_tsv: PathLike) -> pd.DataFrame:
    """One row per (subject, model): layer chosen per ROI (validation), its test r, identification and reconstruction scores."""
    from .report import path_entities

    reconstruction = {path_entities(path)["sub"]: json.loads(Path(path).read_text()) for path in reconstruction_jsons}
    rows = []
    for layers_tsv, identification_json in zip(layers_tsvs, identification_jsons):
        entities = path_entities(layers_tsv)
        row = {"subject": entities["sub"], "model": entities["model"]}
        table = pd.read_csv(layers_tsv, sep="\t")
        for _, chosen in table[table["chosen"]].iterrows():
            row[f"{chosen['roi']}_layer"] = int(chosen["layer"])
            row[f"{chosen['roi']}_test_r"] = float(chosen["mean_r"])
        ident = json.loads(Path(identification_json).read_text())
        row["identification_space"] = ident["chosen_space"]
        for method in ("ridge", "contrastive"):
            row[f"identification_{method}_top1"] = ident[method]["row_to_column"]["top1"]
            row[f"identification_{method}_top1_p"] = ident[method]["top1_p"]
            row[f"identification_{method}_two_way"] = ident[method]["two_way"]
        row["identification_chance_top1"] = ident["ridge"]["chance"]["top1"]
        recon = reconstruction.get(entities["sub"], {})
        for key in ("pixel_corr", "pixel_corr_p", "ssim", "two_way_pixels"):
            if key in recon.get("linear", {}):
                row[f"reconstruction_{key}"] = recon["linear"][key]
        if "linear" in recon:
            row["reconstruction_chance_pixel_corr"] = recon["linear"]["chance"]["pixel_corr"]
        rows.append(row)
    table = pd.DataFrame(rows)
    write_tsv(out_tsv, table)
    return table
