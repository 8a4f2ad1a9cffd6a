"""The contrastive model shared across subjects (``group.shared_encoder``, rule ``contrastive_shared``).

One :class:`~brainllm.contrastive.ContrastiveModel` (brain tower, text projector,
temperature) is shared by several subjects, each reaching it through its own linear input
layer from its brain windows (n_delays · n_voxels) to ``input_width``. Every training batch
holds one subject's pairs: a mixed batch would hold the same text segment once per subject
who heard it, each copy a false negative of the others' brain windows; and retrieval is
scored within a subject, as one-subject batches train it. Splits are the single-subject
model's (same validation story for early stopping, the test story never seen). A held-out
subject gets a new input layer fitted on its training stories with everything shared
frozen. Every subject is scored on the test story (top-1/top-5, mean percentile rank with a
circular-shift p) beside its single-subject run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from .contrastive import (
    Checkpoint,
    ContrastiveModel,
    PairData,
    TrainResult,
    embed,
    evaluate,
    library_versions,
    load_frozen_model,
    load_pairs,
    load_trainable_state,
    pick_device,
    train,
)
from .contrastive_settings import SharedEncoderSettings, recipe_sha256, story_split
from .io import InputError, atomic_path, sha256_file, write_json, write_tsv

log = logging.getLogger(__name__)

__all__ = [
    "SharedEncoderModel",
    "SubjectModel",
    "percentile_rank_test",
    "score_test_pairs",
    "fit_held_out_subject",
    "shared_vs_single",
    "run_shared_encoder",
]


class SubjectModel(nn.Module):
    """One subject's path through a :class:`SharedEncoderModel`, with ContrastiveModel's interface
    (``train``/``evaluate`` take it). ``frozen_shared``: the shared model stays in eval mode (no dropout)
    while the input layer trains, as it runs at test."""

    def __init__(self, model: "SharedEncoderModel", subject: str, frozen_shared: bool = False):
        super().__init__()
        self.model, self.subject, self.frozen_shared = model, subject, frozen_shared

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.model.shared.logit_scale

    def encode_brain(self, brain: torch.Tensor) -> torch.Tensor:
        return self.model.shared.encode_brain(self.model.input_layers[self.subject](brain))

    def text_features(self, text_inputs) -> torch.Tensor:
        return self.model.shared.text_features(text_inputs)

    def encode_text(self, text_features: torch.Tensor) -> torch.Tensor:
        return self.model.shared.encode_text(text_features)

    def scale(self) -> torch.Tensor:
        return self.model.shared.scale()

    def scale_value(self) -> float:
        return self.model.shared.scale_value()

    def clamp_logit_scale(self) -> None:
        self.model.shared.clamp_logit_scale()

    def train(self, mode: bool = True) -> "SubjectModel":
        super().train(mode)
        if self.frozen_shared:
            self.model.shared.eval()
        return self


class SharedEncoderModel(nn.Module):
    """Per subject a linear input layer ``brain_dim → input_width``, then one ContrastiveModel shared by all."""

    def __init__(self, brain_dims: Mapping[str, int], text_dim: int, settings: Mapping, input_width: int):
        super().__init__()
        self.input_width = int(input_width)
        self.input_layers = nn.ModuleDict({subject: nn.Linear(dim, self.input_width) for subject, dim in brain_dims.items()})
        self.shared = ContrastiveModel(self.input_width, text_dim, settings)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.shared.logit_scale

    def scale_value(self) -> float:
        return self.shared.scale_value()

    def for_subject(self, subject: str, frozen_shared: bool = False) -> SubjectModel:
        return SubjectModel(self, subject, frozen_shared)

    def add_subject(self, subject: str, brain_dim: int) -> None:
        """A new input layer (default initialisation) on the model's device."""
        self.input_layers[subject] = nn.Linear(brain_dim, self.input_width).to(self.logit_scale.device)


def percentile_rank_test(similarity: np.ndarray, min_shift: int, n_permutations: int, seed: int) -> dict:
    """Mean percentile rank of the true pair (the diagonal) among all candidates of each row, and its one-sided p.

    Percentile rank: the share of wrong candidates scored strictly below the true one (1 = first,
    chance 0.5). Null: the candidates rotated against the queries by every shift in
    [min_shift, N − min_shift] (:func:`brainllm.word_decoding.circular_shifts`), which keeps the
    autocorrelation of both series that random pairings would break.
    """
    from .word_decoding import circular_shifts

    similarity = np.asarray(similarity, dtype=np.float64)
    n_items = len(similarity)
    ordered = np.sort(similarity, axis=1)
    below = np.stack([np.searchsorted(ordered[i], similarity[i], side="left") for i in range(n_items)])
    percentile = below / (n_items - 1)  # (query, candidate)
    rows = np.arange(n_items)
    observed = float(percentile[rows, rows].mean())
    null = percentile[rows[None, :], circular_shifts(n_items, min_shift, n_permutations, seed)].mean(1)
    return {"mean_percentile_rank": observed, "p": float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))}


def min_shift_pairs(settings: Mapping, min_shift_trs: int, n_test_pairs: int) -> int:
    """The null's smallest circular shift in pairs; an error when the test pairs are too few for it."""
    min_shift = math.ceil(min_shift_trs / (settings["stride_trs"] or settings["segment_trs"]))
    if n_test_pairs < 2 * min_shift + 1:
        raise InputError(None, f"{n_test_pairs} test pairs are too few for circular shifts of at least {min_shift} pairs.",
                         "lower group.shared_encoder.min_shift_trs.")
    return min_shift


def score_test_pairs(model: nn.Module, data: PairData, settings: Mapping, *, n_permutations: int, min_shift_trs: int) -> dict:
    """:func:`evaluate` of the test pairs (top-1/top-5 among ``eval.n_candidates``, chance) with, per direction,
    the mean percentile rank among all test pairs and its circular-shift p (:func:`percentile_rank_test`)."""
    batch_size, seed = int(settings["batch_size"]), int(settings["seed"])
    min_shift = min_shift_pairs(settings, min_shift_trs, data.n_pairs)
    scores = evaluate(model, data, settings, batch_size, seed)
    brain, text, _ = embed(model, data, batch_size)
    similarity = (brain @ text.T).cpu().numpy()
    for direction, matrix in (("brain_to_text", similarity), ("text_to_brain", similarity.T)):
        scores[direction].update(percentile_rank_test(matrix, min_shift, n_permutations, seed))
    scores["chance"]["mean_percentile_rank"] = 0.5
    return scores


def fit_held_out_subject(
    model: SharedEncoderModel, subject: str, data: Mapping[str, PairData], settings: Mapping, checkpoint: Checkpoint,
) -> tuple[SubjectModel, TrainResult]:
    """A new input layer for ``subject`` trained on ``data["train"]`` (early stopping on ``data["validation"]``)
    with every other parameter frozen; returns the subject's path with its best input layer, and the run."""
    torch.manual_seed(int(settings["seed"]))
    model.add_subject(subject, data["train"].brain_dim)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(f"input_layers.{subject}."))
    view = model.for_subject(subject, frozen_shared=True)
    result = train(view, data, settings, checkpoint, epochs=int(settings["epochs"]), batch_size=int(settings["batch_size"]),
                   lr=float(settings["lr"]), patience=int(settings["patience"]))
    load_trainable_state(view, result.best_weights, checkpoint.dir)
    return view, result


SCORE_COLUMNS = [(direction, metric) for direction in ("brain_to_text", "text_to_brain")
                 for metric in ("top1", "top5", "mean_percentile_rank", "p")]
DELTA_COLUMNS = [(direction, metric) for direction in ("brain_to_text", "text_to_brain") for metric in ("top1", "mean_percentile_rank")]


def _score_columns(scores: Mapping | None, prefix: str = "") -> dict:
    return {f"{prefix}{metric}_{direction}": (scores[direction][metric] if scores else np.nan) for direction, metric in SCORE_COLUMNS}


def shared_vs_single(rows: pd.DataFrame) -> dict:
    """Across the training subjects with a single-subject model: per direction, mean Δ mean percentile rank
    (shared − single) with its t-interval and sign-flip p (:func:`brainllm.inference.across_subjects`), Holm over
    the two directions; from three subjects on."""
    from .inference import MIN_GROUP_SUBJECTS, across_subjects
    from .metrics import holm

    paired = rows[(rows["role"] == "train") & rows["single_mean_percentile_rank_brain_to_text"].notna()]
    if len(paired) < MIN_GROUP_SUBJECTS:
        return {"n_subjects": len(paired), "note": f"fewer than {MIN_GROUP_SUBJECTS} training subjects with a single-subject model: no test across subjects"}
    tests = {direction: across_subjects(paired[f"delta_mean_percentile_rank_{direction}"].to_numpy(float))
             for direction in ("brain_to_text", "text_to_brain")}
    for test, p_holm in zip(tests.values(), holm(np.array([test["p_sign_flip"] for test in tests.values()]))):
        test["p_holm"] = float(p_holm)
    return {"metric": "mean_percentile_rank", **tests}


def run_shared_encoder(
    features: Mapping[str, str | os.PathLike],
    responses: Mapping[str, str | os.PathLike],
    *,
    model_name: str,
    train_stories: Sequence[str],
    test_stories: Sequence[str],
    shared: SharedEncoderSettings,
    table_tsv: str | os.PathLike,
    summary_json: str | os.PathLike,
    weights_safetensors: str | os.PathLike,
    curves_tsv: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    single_runs: Mapping[tuple[str, int], tuple[str | os.PathLike, str | os.PathLike]] | None = None,
) -> pd.DataFrame:
    """The shared encoder of every layer of ``shared.contrastive["layers"]``, from each subject's aligned features and responses.

    ``single_runs``: ``{(subject, layer): (config.json, model.safetensors)}`` of single-subject
    contrastive runs, scored on the same test pairs beside the shared model. Writes one row per
    (layer, subject) (role train | held_out) to ``table_tsv``, the curves, all weights (keys
    ``layer-NN.<parameter>``) and ``summary_json`` last. Resumes from ``checkpoint_dir``.
    """
    settings, single_runs = shared.contrastive, single_runs or {}
    subjects = list(shared.train_subjects) + list(shared.held_out_subjects)
    split = story_split(train_stories, test_stories, settings["validation_story"])
    log.info("train subjects %s, held out %s; split: train %s | validation %s | test %s",
             shared.train_subjects, shared.held_out_subjects, split["train"], split["validation"], split["test"])
    device = pick_device(settings["device"], "group.shared_encoder.device")
    hashes = {subject: {"features_sha256": sha256_file(features[subject]), "responses_sha256": sha256_file(responses[subject])} for subject in subjects}
    score = {"n_permutations": shared.n_permutations, "min_shift_trs": shared.min_shift_trs}
    rows, curves, weights, layer_summaries = [], [], {}, {}
    for layer in tqdm(settings["layers"], desc="shared encoder", unit="layer"):
        layer = int(layer)
        pairs = {subject: {name: p.to(device) for name, p in load_pairs(features[subject], responses[subject], layer, split, settings).items()}
                 for subject in subjects}
        for subject in subjects:  # before any training
            min_shift_pairs(settings, shared.min_shift_trs, pairs[subject]["test"].n_pairs)
        text_dims = {subject: pairs[subject]["train"].text.shape[1] for subject in subjects}
        if len(set(text_dims.values())) != 1:
            raise InputError(None, f"layer {layer}: the subjects' aligned features differ in width {text_dims}.", "re-run the align rule.")
        text_dim = text_dims[subjects[0]]
        recipe = {"mode": "shared_encoder", "settings": settings, "model": model_name, "layer": layer, "split": split,
                  "input_width": shared.input_width, "train_subjects": {s: hashes[s] for s in shared.train_subjects}}
        recipe_hash = recipe_sha256(recipe)
        torch.manual_seed(int(settings["seed"]))
        model = SharedEncoderModel({s: pairs[s]["train"].brain_dim for s in shared.train_subjects}, text_dim, settings, shared.input_width).to(device)
        log.info("layer %d: input layers %s → %d → shared %d ← text %d on %s; %d parameters", layer,
                 {s: pairs[s]["train"].brain_dim for s in shared.train_subjects}, shared.input_width, settings["shared_dim"], text_dim,
                 device, sum(p.numel() for p in model.parameters()))
        layer_dir = Path(checkpoint_dir) / f"layer-{layer:02d}"
        result = train(model, {name: {s: pairs[s][name] for s in shared.train_subjects} for name in ("train", "validation")}, settings,
                       Checkpoint(layer_dir / "shared", recipe_hash), epochs=int(settings["epochs"]), batch_size=int(settings["batch_size"]),
                       lr=float(settings["lr"]), patience=int(settings["patience"]))
        load_trainable_state(model, result.best_weights, layer_dir / "shared")
        curves.append(result.curves.assign(layer=layer, phase="shared", subject=""))
        fits = {subject: (model.for_subject(subject), result) for subject in shared.train_subjects}
        for subject in shared.held_out_subjects:
            fit_recipe = recipe_sha256({"shared": recipe_hash, "held_out_subject": subject, **hashes[subject]})
            fits[subject] = fit_held_out_subject(model, subject, pairs[subject], settings, Checkpoint(layer_dir / f"held_out-{subject}", fit_recipe))
            curves.append(fits[subject][1].curves.assign(layer=layer, phase="held_out", subject=subject))
        test, single = {}, {}
        for subject in subjects:
            test[subject] = score_test_pairs(fits[subject][0], pairs[subject]["test"], settings, **score)
            if (subject, layer) in single_runs:
                single_model, record = load_frozen_model(*single_runs[subject, layer], device=device)
                if record["layer"] != layer or record["split"] != split:
                    raise InputError(single_runs[subject, layer][0], f"a run of layer {record['layer']} on split {record['split']}, "
                                     f"not layer {layer} on {split}.", "re-run the contrastive rule with this config.")
                single_pairs = pairs[subject]["test"] if record.get("voxels") is None else \
                    pairs[subject]["test"].with_voxels(record["voxels"]).to(device)
                single[subject] = score_test_pairs(single_model, single_pairs, settings, **score)
            row = {"layer": layer, "subject": subject, "role": "train" if subject in shared.train_subjects else "held_out",
                   "best_epoch": fits[subject][1].best_epoch, "n_test_pairs": test[subject]["n_pairs"],
                   "n_candidates": test[subject]["n_candidates"], **{f"chance_{k}": v for k, v in test[subject]["chance"].items() if k != "mean_rank"},
                   **_score_columns(test[subject]), **_score_columns(single.get(subject), "single_")}
            row.update({f"delta_{metric}_{direction}": row[f"{metric}_{direction}"] - row[f"single_{metric}_{direction}"]
                        for direction, metric in DELTA_COLUMNS})
            rows.append(row)
            log.info("layer %d, sub-%s (%s): test top-1 brain→text %.3f (chance %.3f), mean percentile rank %.3f (p %.4f); single-subject %s",
                     layer, subject, row["role"], row["top1_brain_to_text"], row["chance_top1"], row["mean_percentile_rank_brain_to_text"],
                     row["p_brain_to_text"], "none" if subject not in single else f"{row['single_mean_percentile_rank_brain_to_text']:.3f}")
        comparison = shared_vs_single(pd.DataFrame([row for row in rows if row["layer"] == layer]))
        log.info("layer %d: shared vs single-subject: %s", layer, comparison)
        weights.update({f"layer-{layer:02d}.{name}": tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()})
        layer_summaries[f"{layer:02d}"] = {
            "layer": layer, "recipe_sha256": recipe_hash, "text_dim": text_dim,
            "brain_dims": {s: pairs[s]["train"].brain_dim for s in subjects},
            "pairs": {s: {name: p.n_pairs for name, p in pairs[s].items()} for s in subjects},
            "shared": {"best_epoch": result.best_epoch, "epochs_run": len(result.curves), "stopped_early": result.stopped_early,
                       "resumed_from_epoch": result.resumed_from_epoch, "temperature": 1.0 / model.shared.scale_value()},
            "held_out_fits": {s: {"best_epoch": fits[s][1].best_epoch, "epochs_run": len(fits[s][1].curves), "stopped_early": fits[s][1].stopped_early}
                              for s in shared.held_out_subjects},
            "test": test, "single_subject": single, "shared_vs_single": comparison,
        }
    table = pd.DataFrame(rows)
    write_tsv(table_tsv, table)
    write_tsv(curves_tsv, pd.concat(curves, ignore_index=True))
    metadata = {"format": "brainllm-shared-encoder", "train_subjects": json.dumps(shared.train_subjects),
                "held_out_subjects": json.dumps(shared.held_out_subjects), "input_width": str(shared.input_width)}
    with atomic_path(weights_safetensors) as tmp:
        save_file(weights, str(tmp), metadata=metadata)
    write_json(summary_json, {
        "model": model_name, "train_subjects": list(shared.train_subjects), "held_out_subjects": list(shared.held_out_subjects),
        "split": split, "input_width": shared.input_width, "settings": settings, "scoring": score, "layers": layer_summaries,
        "inputs": {s: {"features": os.fspath(features[s]), "responses": os.fspath(responses[s]), **hashes[s]} for s in subjects},
        "single_subject_runs": {f"sub-{s}_layer-{layer:02d}": os.fspath(paths[0]) for (s, layer), paths in single_runs.items()},
        "device": str(device), "versions": library_versions(),
    })
    return table
