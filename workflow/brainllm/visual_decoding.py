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

from .io import atomic_path, write_json, write_tsv
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
    correct = np.diag(similarity)[:, None]
    off = ~np.eye(len(similarity), dtype=bool)
    wins = (correct > similarity) + 0.5 * (correct == similarity)
    return float(wins[off].mean())


def identification_scores(similarity: np.ndarray, gallery: np.ndarray, top_k=(1, 5), n_permutations: int = 1000, seed: int = 0) -> dict:
    """Scores of a ``(n_test, n_test)`` similarity (rows: responses, columns: images; the diagonal is correct).

    ``gallery`` ``(n_test, n_gallery)``: each response against a larger candidate set whose
    first ``n_test`` columns are the test images. The top-1 p-value permutes which image
    each response belongs to (brain → image direction).
    """
    from .metrics import retrieval_accuracy, sensitivity_specificity

    n = len(similarity)
    scores = retrieval_accuracy(similarity, k=top_k)
    scores["two_way"] = two_way_accuracy(similarity)
    scores["chance"]["two_way"] = 0.5
    top1 = scores["row_to_column"]["top1"]
    rng = np.random.default_rng(seed)
    null = np.array([(similarity[:, perm].argmax(1) == np.arange(n)).mean() for perm in (rng.permutation(n) for _ in range(n_permutations))])
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
        history.append({"epoch": epoch + 1, "train_loss": float(loss), "validation_loss": val_loss, "validation_top1": val_top1})
        if -val_loss > best:
            best, waited = -val_loss, 0
            best_state = {k: v.detach().clone() for k, v in tower.state_dict().items()} | {"log_scale": log_scale.detach().clone()}
        else:
            waited += 1
            if waited >= patience:
                break
    return best_state, pd.DataFrame(history)


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
    """The ``visual_identification`` rule."""
    from safetensors.torch import save_file

    from .io import InputError
    from .vision_features import read_image_features
    from .visual import read_image_responses

    data = read_image_responses(responses_h5)
    features = read_image_features(features_h5, [])
    embedding = features.get("embedding")
    if embedding is None:
        raise InputError(features_h5, "the model has no image embedding in a shared space (its feature entry has no `embedding`).",
                         "use a CLIP/SigLIP model or a VLM's vision tower for visual identification.")
    E_train = np.asarray(embedding[rows_of(features["names"], data.train_images, features_h5)], np.float64)
    E_test = np.asarray(embedding[rows_of(features["names"], data.test_images, features_h5)], np.float64)
    X_train, X_test = standardise(data.train, data.test)
    seed, n_perm = int(settings.get("seed", 0)), int(settings.get("n_permutations", 1000))
    top_k = tuple(int(k) for k in settings.get("top_k", (1, 5)))

    T_train, T_test, T_gallery = standardise(E_train, E_test, np.vstack([E_test, E_train]))
    predicted = ridge_decoder(X_train, T_train, data.run_lengths, X_test, encoding_settings)
    ridge_similarity = correlation_matrix(predicted, T_test)
    results = {"ridge": identification_scores(ridge_similarity, correlation_matrix(predicted, T_gallery), top_k, n_perm, seed)}

    state, history = train_contrastive(X_train, E_train, data.run_lengths, settings.get("contrastive", {}), seed)
    weight = state["net.weight"].numpy().astype(np.float64)
    brain = X_test @ weight.T + state["net.bias"].numpy()
    contrastive_similarity = cosine_matrix(brain, E_test)
    results["contrastive"] = identification_scores(contrastive_similarity, cosine_matrix(brain, np.vstack([E_test, E_train])), top_k, n_perm, seed)
    results["contrastive"]["epochs"] = int(len(history))

    for method, scores in results.items():
        log.info("%s: top-1 %.3f (chance %.3f, p %.4f), two-way %.3f, gallery top-1 %.3f of %d", method, scores["row_to_column"]["top1"],
                 scores["chance"]["top1"], scores["top1_p"], scores["two_way"], scores["gallery"]["top1"], scores["gallery"]["n_candidates"])
    summary = {"n_train_images": len(data.train_images), "n_test_images": len(data.test_images), "embedding_dim": int(E_train.shape[1]), **results}
    rank = {m: (s >= np.diag(s)[:, None]).sum(1) for m, s in (("ridge", ridge_similarity), ("contrastive", contrastive_similarity))}
    images = pd.DataFrame({"image": data.test_images, "ridge_rank": rank["ridge"], "contrastive_rank": rank["contrastive"],
                           "ridge_best": [data.test_images[i] for i in ridge_similarity.argmax(1)],
                           "contrastive_best": [data.test_images[i] for i in contrastive_similarity.argmax(1)]})
    similarity = pd.DataFrame(ridge_similarity, index=data.test_images, columns=data.test_images).rename_axis("response").reset_index()
    write_json(out_json, summary)
    write_tsv(out_images, images)
    write_tsv(out_similarity, similarity)
    write_tsv(out_history, history)
    with atomic_path(out_weights) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"kind": "visual contrastive brain tower (linear)"})
    return summary
