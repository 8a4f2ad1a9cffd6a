"""Image identification: brain response → the image's embedding → which image was seen.

Two decoders from the responses of the training images to their embeddings in the
model's shared image–text space (CLIP/SigLIP ``get_image_features``; a VLM's projector):

- ``ridge``: per-dimension ridge (α per dimension by leave-one-run-out CV);
- ``contrastive``: a linear brain tower trained with the symmetric InfoNCE of the
  contrastive stage against the fixed (unit-norm) image embeddings, temperature learned,
  early stopping on the last training run (never on the test images).

Each test response (averaged over repeats) is matched against the test images'
embeddings (Pearson r for ridge, cosine for contrastive): top-1 / top-5 in both
directions, two-way accuracy, mean rank, chance beside each, a permutation p for top-1,
macro sensitivity and specificity of the top-1 decision; and retrieval from a larger
gallery (the test images among the test and training images' embeddings).
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import numpy as np
import pandas as pd

from .io import atomic_path, require_finite, write_json, write_tsv
from .visual_encoding import rows_of, standardise

log = logging.getLogger(__name__)


def correlation_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of every row of ``a`` with every row of ``b``: ``(len(a), len(b))``."""
    za = a - a.mean(1, keepdims=True)
    zb = b - b.mean(1, keepdims=True)
    za /= np.maximum(np.linalg.norm(za, axis=1, keepdims=True), 1e-12)
    zb /= np.maximum(np.linalg.norm(zb, axis=1, keepdims=True), 1e-12)
    return za @ zb.T


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def two_way_accuracy(similarity: np.ndarray) -> float:
    """Share of pairs (i, j ≠ i) with similarity[i, i] > similarity[i, j] (ties count half); chance 0.5."""
    from .metrics import two_way_per_row

    return float(two_way_per_row(similarity).mean())


def identification_scores(similarity: np.ndarray, gallery: np.ndarray, top_k=(1, 5), n_permutations: int = 1000, seed: int = 0) -> dict:
    """Scores of a ``(n_test, n_test)`` similarity (rows: responses, columns: images; the diagonal is correct).

    ``gallery`` ``(n_test, n_gallery)``: each response against a larger candidate set whose
    first ``n_test`` columns are the test images. The top-1 p-value permutes which image
    each response belongs to (brain → image direction).
    """
    from .metrics import retrieval_accuracy, sensitivity_specificity

    for name, matrix in (("similarities", similarity), ("gallery similarities", gallery)):  # a NaN row would rank its image first
        require_finite(matrix, f"the image identification's {name}", fix="check the test responses and the decoded features.")
    n = len(similarity)
    scores = retrieval_accuracy(similarity, k=top_k)
    scores["two_way"] = two_way_accuracy(similarity)
    scores["chance"]["two_way"] = 0.5
    top1 = scores["row_to_column"]["top1"]
    rng = np.random.default_rng(seed)

    def permuted_top1(perm):  # responses paired with shuffled images; ties count against, as observed
        shuffled = similarity[:, perm]
        return float(((shuffled >= np.diag(shuffled)[:, None]).sum(1) == 1).mean())

    null = np.array([permuted_top1(rng.permutation(n)) for _ in range(n_permutations)])
    scores["top1_p"] = float((1 + (null >= top1 - 1e-12).sum()) / (1 + n_permutations))
    decisions = sensitivity_specificity(np.arange(n), similarity.argmax(1), labels=np.arange(n))
    scores["sensitivity_macro"], scores["specificity_macro"] = decisions["sensitivity_macro"], decisions["specificity_macro"]
    correct = gallery[np.arange(n), np.arange(n)][:, None]
    ranks = (gallery >= correct).sum(1)  # ties count against the correct image
    scores["gallery"] = {
        "n_candidates": int(gallery.shape[1]),
        **{f"top{k}": float((ranks <= k).mean()) for k in top_k},
        "mean_percentile_rank": float((1.0 - (ranks - 1) / (gallery.shape[1] - 1)).mean()),
        "chance": {**{f"top{k}": k / gallery.shape[1] for k in top_k}, "mean_percentile_rank": 0.5},
    }
    return scores


def ridge_decoder(X_train: np.ndarray, T_train: np.ndarray, run_lengths, X_test: np.ndarray, settings: Mapping) -> np.ndarray:
    """Predicted test embeddings (standardised target space) of a ridge from responses to embedding dimensions."""
    from .encoding import alpha_grid, fit_ridge

    fit = fit_ridge(X_train, T_train, run_lengths, alpha_grid(**settings.get("alphas", {})), settings.get("backend", "auto"),
                    None, settings.get("solver", "auto"), settings.get("cv_score", "correlation"))
    return X_test @ fit.weights.astype(np.float64)


def train_contrastive(X_train: np.ndarray, E_train: np.ndarray, run_lengths, settings: Mapping, seed: int = 0):
    """A linear brain tower → the image-embedding space by InfoNCE; the last training run validates (early stopping).

    Returns ``(state dict of tensors, history DataFrame)``.
    """
    import torch
    import torch.nn.functional as F

    from .contrastive import Tower, info_nce

    torch.manual_seed(seed)
    n_val = run_lengths[-1]
    if len(X_train) - n_val < 2:
        raise ValueError(f"{len(X_train) - n_val} training images outside the validation run: the contrastive decoder needs two or more")
    fit_rows, val_rows = slice(0, len(X_train) - n_val), slice(len(X_train) - n_val, len(X_train))
    X = torch.as_tensor(X_train, dtype=torch.float32)
    E = F.normalize(torch.as_tensor(E_train, dtype=torch.float32), dim=1)
    tower = Tower(X.shape[1], E.shape[1], "linear")
    log_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    optimizer = torch.optim.AdamW([*tower.parameters(), log_scale], lr=float(settings.get("lr", 1e-3)), weight_decay=float(settings.get("weight_decay", 0.1)))
    epochs, patience, batch = int(settings.get("epochs", 300)), int(settings.get("patience", 30)), int(settings.get("batch_size", 64))
    rng = np.random.default_rng(seed)
    history, best, best_state, waited = [], -np.inf, None, 0
    n_fit = fit_rows.stop
    for epoch in range(epochs):
        tower.train()
        order = torch.as_tensor(rng.permutation(n_fit))
        for start in range(0, n_fit, batch):
            idx = order[start:start + batch]
            if len(idx) < 2:
                continue
            loss = info_nce(F.normalize(tower(X[idx]), dim=1), E[idx], log_scale.exp().clamp(max=100))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        tower.eval()
        with torch.no_grad():
            val = cosine_matrix(tower(X[val_rows]).numpy(), E[val_rows].numpy())
            val_loss = float(info_nce(F.normalize(tower(X[val_rows]), dim=1), E[val_rows], log_scale.exp().clamp(max=100)))
        val_top1 = float((val.argmax(1) == np.arange(len(val))).mean())
        history.append({"epoch": epoch + 1, "train_loss": float(loss.detach()), "validation_loss": val_loss, "validation_top1": val_top1})
        if -val_loss > best:
            best, waited = -val_loss, 0
            best_state = {k: v.detach().clone() for k, v in tower.state_dict().items()} | {"log_scale": log_scale.detach().clone()}
        else:
            waited += 1
            if waited >= patience:
                break
    if best_state is None:
        raise ValueError("the contrastive decoder's validation loss was never finite (check the responses and targets for NaN)")
    return best_state, pd.DataFrame(history)


def target_spaces(features: Mapping) -> dict[str, np.ndarray]:
    """The spaces a response can be decoded into: the shared image embedding (when the model has one) and every layer."""
    spaces = {} if features.get("embedding") is None else {"embedding": np.asarray(features["embedding"], np.float64)}
    spaces.update({f"layer-{int(layer):02d}": np.asarray(values, np.float64) for layer, values in sorted(features["layers"].items())})
    return spaces


def validation_identification(X_train: np.ndarray, T_train: np.ndarray, spaces: Mapping[str, slice], run_lengths,
                              settings: Mapping) -> dict[str, tuple[float, float]]:
    """Leave-one-run-out identification on the training images, per target space: (mean top-1, mean percentile rank).

    ``T_train`` holds every space's columns side by side (``spaces`` names their slices):
    one ridge fit per held-out run serves them all (the kernel depends on the responses
    alone). Each training run's images are identified among themselves by a decoder
    fitted on the other training runs (α again by leave-one-run-out CV within them).
    """
    bounds = np.concatenate([[0], np.cumsum(run_lengths)])
    scores = {name: ([], []) for name in spaces}
    for k in range(len(run_lengths)):
        held = np.zeros(len(X_train), bool)
        held[bounds[k]:bounds[k + 1]] = True
        fit_T, val_T = standardise(T_train[~held], T_train[held])
        others = [n for i, n in enumerate(run_lengths) if i != k]
        predicted = ridge_decoder(X_train[~held], fit_T, others, X_train[held], settings)
        for name, columns in spaces.items():
            similarity = correlation_matrix(predicted[:, columns], val_T[:, columns])
            ranks = (similarity >= np.diag(similarity)[:, None]).sum(1)
            scores[name][0].append((ranks == 1).mean())
            scores[name][1].append((1.0 - (ranks - 1) / max(len(ranks) - 1, 1)).mean())
    return {name: (float(np.mean(top1)), float(np.mean(percentile))) for name, (top1, percentile) in scores.items()}


def run_identification(
    responses_h5: str | os.PathLike,
    features_h5: str | os.PathLike,
    settings: Mapping,
    encoding_settings: Mapping,
    out_json: str | os.PathLike,
    out_images: str | os.PathLike,
    out_similarity: str | os.PathLike,
    out_weights: str | os.PathLike,
    out_history: str | os.PathLike,
) -> dict:
    """The ``visual_identification`` rule.

    Every target space (the image embedding, each layer) is scored on the test images; the
    headline space — the one the contrastive decoder is trained for — is chosen by
    leave-one-run-out identification within the training runs
    (:func:`validation_identification`), never on the test images.
    """
    from safetensors.torch import save_file

    from .vision_features import read_image_features
    from .visual import read_image_responses

    data = read_image_responses(responses_h5)
    features = read_image_features(features_h5)
    train_rows = rows_of(features["names"], data.train_images, features_h5)
    test_rows = rows_of(features["names"], data.test_images, features_h5)
    X_train, X_test = standardise(data.train, data.test)
    seed, n_perm = int(settings.get("seed", 0)), int(settings.get("n_permutations", 1000))
    top_k = tuple(int(k) for k in settings.get("top_k", (1, 5)))
    gallery_rows = np.concatenate([test_rows, train_rows])  # the test images first, then the training images as distractors

    candidates = target_spaces(features)
    columns, start = {}, 0
    for name, values in candidates.items():
        columns[name] = slice(start, start + values.shape[1])
        start += values.shape[1]
    every = np.hstack(list(candidates.values()))  # every space's columns: one decoder fit serves all
    validation = validation_identification(X_train, every[train_rows], columns, data.run_lengths, encoding_settings)
    T_train, T_test, T_gallery = standardise(every[train_rows], every[test_rows], every[gallery_rows])
    predicted = ridge_decoder(X_train, T_train, data.run_lengths, X_test, encoding_settings)
    spaces, ridge_similarity = {}, {}
    for name, cols in columns.items():
        ridge_similarity[name] = correlation_matrix(predicted[:, cols], T_test[:, cols])
        scores = identification_scores(ridge_similarity[name], correlation_matrix(predicted[:, cols], T_gallery[:, cols]), top_k, n_perm, seed)
        val_top1, val_percentile = validation[name]
        spaces[name] = {"validation_top1": val_top1, "validation_percentile_rank": val_percentile, "ridge": scores}
        log.info("%s: validation top-1 %.3f; test top-1 %.3f (p %.4f), two-way %.3f", name, val_top1, scores["row_to_column"]["top1"],
                 scores["top1_p"], scores["two_way"])
    chosen = max(spaces, key=lambda name: (spaces[name]["validation_percentile_rank"], spaces[name]["validation_top1"]))

    def contrastive_decoder(name):
        """Trained for one space, seen as the selection saw it: standardised with the training images' statistics."""
        values = candidates[name]
        V_train, V_test, V_gallery = standardise(values[train_rows], values[test_rows], values[gallery_rows])
        state, history = train_contrastive(X_train, V_train, data.run_lengths, settings.get("contrastive", {}), seed)
        brain = X_test @ state["net.weight"].numpy().astype(np.float64).T + state["net.bias"].numpy()
        similarity = cosine_matrix(brain, V_test)
        scores = identification_scores(similarity, cosine_matrix(brain, V_gallery), top_k, n_perm, seed)
        return {**scores, "epochs": int(len(history))}, state, history, similarity

    contrastive, state, history, contrastive_similarity = contrastive_decoder(chosen)
    spaces[chosen]["contrastive"] = contrastive
    if "embedding" in candidates and chosen != "embedding":  # the shared image–text space is always decoded both ways
        spaces["embedding"]["contrastive"] = contrastive_decoder("embedding")[0]
    results = {"ridge": spaces[chosen]["ridge"], "contrastive": contrastive}
    for method, scores in results.items():
        log.info("%s (%s): top-1 %.3f (chance %.3f, p %.4f), two-way %.3f, gallery top-1 %.3f of %d", method, chosen, scores["row_to_column"]["top1"],
                 scores["chance"]["top1"], scores["top1_p"], scores["two_way"], scores["gallery"]["top1"], scores["gallery"]["n_candidates"])
    summary = {"n_train_images": len(data.train_images), "n_test_images": len(data.test_images), "chosen_space": chosen,
               "selection": "mean percentile rank of leave-one-run-out identification within the training runs", **results,
               "spaces": spaces}
    similarity = ridge_similarity[chosen]
    rank = {m: (s >= np.diag(s)[:, None]).sum(1) for m, s in (("ridge", similarity), ("contrastive", contrastive_similarity))}
    images = pd.DataFrame({"image": data.test_images, "ridge_rank": rank["ridge"], "contrastive_rank": rank["contrastive"],
                           "ridge_best": [data.test_images[i] for i in similarity.argmax(1)],
                           "contrastive_best": [data.test_images[i] for i in contrastive_similarity.argmax(1)]})
    write_json(out_json, summary)
    write_tsv(out_images, images)
    write_tsv(out_similarity, pd.DataFrame(similarity, index=data.test_images, columns=data.test_images).rename_axis("response").reset_index())
    write_tsv(out_history, history)
    with atomic_path(out_weights) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
                  metadata={"kind": "visual contrastive brain tower (linear)", "target_space": chosen})
    return summary
