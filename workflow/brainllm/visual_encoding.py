"""Visual encoding: a vision layer's features of each image → every voxel's response to it.

Per (subject, model, layer): ridge (per-voxel α by leave-one-run-out CV over the training
images, :func:`brainllm.encoding.fit_ridge`) from the z-scored features of the training
images to their responses; Pearson r on the test images (responses averaged over
repeats), a one-sided permutation p-value per voxel (test images exchanged: trial
estimates of distinct images carry no serial order), BH-FDR, and the noise ceiling from
the repeats. Layers are compared on the validation r of the CV, never on the test images.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .io import InputError, write_json, write_tsv

log = logging.getLogger(__name__)


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Z-score columns with the training rows' mean and standard deviation (constant columns → 0)."""
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    return [(array - mean) / std for array in (train, *others)]


def rows_of(names: Sequence[str], wanted: Sequence[str], where: str | os.PathLike) -> np.ndarray:
    """Indices of ``wanted`` images in a feature entry's ``names``."""
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in wanted if name not in index]
    if missing:
        raise InputError(where, f"{len(missing)} images ({', '.join(missing[:3])}) have no features in this entry.",
                         "rerun the visual_features rule (the stimuli changed).")
    return np.array([index[name] for name in wanted])


def roi_labels(dataset: Mapping, subject: str, mask_nii: str | os.PathLike) -> tuple[np.ndarray, dict[int, str]]:
    """Atlas label per analysed voxel (all 0 without ``dataset.atlas``)."""
    from .encoding import _mask_indices, voxel_labels

    if not dataset.get("atlas"):
        return np.zeros(int(_mask_indices(mask_nii)[1].sum()), dtype=int), {}
    root = Path(dataset["root"])
    if not dataset.get("atlas_labels"):
        raise InputError(None, "dataset.atlas is set without dataset.atlas_labels.", "give the atlas's TSV (columns index name).")
    return voxel_labels(mask_nii, root / dataset["atlas"].format(subject=subject), root / dataset["atlas_labels"])


def truth_of_voxels(truth_path: str | os.PathLike | None, dataset: Mapping, subject: str, mask_nii: str | os.PathLike) -> dict | None:
    """Ground truth per analysed voxel (``signal``, ``roi``), mapped from the dataset mask's voxel order."""
    import json

    import nibabel as nib

    if not truth_path:
        return None
    truth = json.loads(Path(truth_path).read_text())
    voxels = truth.get("per_subject", {}).get(subject, truth)
    if "signal" not in voxels or not dataset.get("mask"):
        return None
    dataset_mask = np.asarray(nib.load(Path(dataset["root"]) / dataset["mask"].format(subject=subject)).dataobj) > 0
    analysed = np.asarray(nib.load(os.fspath(mask_nii)).dataobj) > 0
    keep = analysed[dataset_mask]
    return {"signal": np.asarray(voxels["signal"], bool)[keep], "planted_layer": truth.get("planted_layer"),
            "roi": np.asarray(voxels.get("roi", [""] * len(keep)))[keep]}


def run_visual_encoding(
    responses_h5: str | os.PathLike,
    features_h5: str | os.PathLike,
    mask_nii: str | os.PathLike,
    layer: int,
    settings: Mapping,
    dataset: Mapping,
    subject: str,
    out_scores: str | os.PathLike,
    out_summary: str | os.PathLike,
    out_map: str | os.PathLike,
) -> dict:
    """The ``visual_encoding`` rule: fit, score and write one layer's encoding model."""
    from .encoding import alpha_grid, fit_ridge, vector_to_volume
    from .metrics import ceiling_r, detection_rates, fdr_bh, noise_ceiling, trial_permutation_p
    from .vision_features import read_image_features
    from .visual import read_image_responses

    data = read_image_responses(responses_h5)
    features = read_image_features(features_h5, [layer])
    X = features["layers"][layer]
    X_train = X[rows_of(features["names"], data.train_images, features_h5)]
    X_test = X[rows_of(features["names"], data.test_images, features_h5)]
    X_train, X_test = standardise(np.asarray(X_train, np.float64), np.asarray(X_test, np.float64))
    Y_mean = data.train.mean(0)
    fit = fit_ridge(X_train, data.train - Y_mean, data.run_lengths, alpha_grid(**settings.get("alphas", {})),
                    settings.get("backend", "auto"), None, settings.get("solver", "auto"), settings.get("cv_score", "correlation"))
    prediction = X_test @ fit.weights.astype(np.float64) + Y_mean
    significance = settings.get("significance", {})
    r, p = trial_permutation_p(prediction, data.test, int(significance.get("n_permutations", 1000)), int(settings.get("seed", 0)))
    q_level = float(significance.get("fdr_q", 0.05))
    q, significant = fdr_bh(p, q_level)
    labels, names = roi_labels(dataset, subject, mask_nii)
    scores = pd.DataFrame({
        "voxel": np.arange(len(r)), "roi": [names.get(int(i), "") for i in labels], "r": r, "p": p, "q": q,
        "significant": significant, "validation_r": fit.validation_r if fit.validation_r is not None else np.nan, "alpha": fit.alphas,
    })
    if data.test_repeats is not None:
        scores["ceiling_r"] = ceiling_r(noise_ceiling(data.test_repeats), len(data.test_repeats))
    summary = {
        "subject": subject, "layer": int(layer), "n_train_images": len(data.train_images), "n_test_images": len(data.test_images),
        "n_voxels": int(len(r)), "mean_r": float(r.mean()), "mean_validation_r": float(np.nanmean(scores["validation_r"])),
        "n_significant": int(significant.sum()), "fdr_q": q_level, "solver": fit.solver, "backend": fit.backend,
        "rois": {roi: {"mean_r": float(group["r"].mean()), "mean_validation_r": float(group["validation_r"].mean()), "n_voxels": int(len(group))}
                 for roi, group in scores.groupby("roi") if roi},
    }
    if "ceiling_r" in scores:
        summary["median_ceiling_r"] = float(np.nanmedian(scores["ceiling_r"]))
    truth = truth_of_voxels(dataset.get("ground_truth"), dataset, subject, mask_nii)
    if truth is not None:
        summary["ground_truth"] = {"planted_layer": truth["planted_layer"], **detection_rates(significant, truth["signal"])}
    write_tsv(out_scores, scores)
    write_json(out_summary, summary)
    vector_to_volume(r, mask_nii, out_map)
    log.info("layer %d: mean test r %.3f, mean validation r %.3f, %d significant voxels", layer, summary["mean_r"],
             summary["mean_validation_r"], summary["n_significant"])
    return summary


def layer_table(summaries: Sequence[Mapping], model: str) -> pd.DataFrame:
    """Per layer and ROI (``all`` = every voxel): mean validation and test r; the ROI's layer chosen on validation r."""
    rows = []
    for summary in summaries:
        rows.append({"model": model, "layer": summary["layer"], "roi": "all", "mean_validation_r": summary["mean_validation_r"],
                     "mean_r": summary["mean_r"], "n_significant": summary["n_significant"]})
        for roi, values in summary.get("rois", {}).items():
            rows.append({"model": model, "layer": summary["layer"], "roi": roi, "mean_validation_r": values["mean_validation_r"],
                         "mean_r": values["mean_r"], "n_significant": np.nan})
    table = pd.DataFrame(rows).sort_values(["roi", "layer"], kind="stable").reset_index(drop=True)
    scored = table.dropna(subset=["mean_validation_r"])  # no validation r (encoding.cv_score l2 with himalaya's solver): no choice
    if scored.empty:
        log.warning("no validation correlations: no layer is chosen (use encoding.cv_score: correlation)")
        table["chosen"] = False
        return table
    best = scored.loc[scored.groupby("roi")["mean_validation_r"].idxmax(), ["roi", "layer"]].set_index("roi")["layer"]
    table["chosen"] = table["layer"] == table["roi"].map(best)
    return table
