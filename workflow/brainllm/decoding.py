"""Decoding: reading the brain out from the fitted encoding models.

Semantic identification from the encoding models (:func:`identify_segments`): the held-out stories are cut into
segments of k TRs (never across a story boundary); each observed response segment is
matched against every predicted segment by Pearson correlation over (TRs × voxels), on
voxels chosen by validation r only (:func:`brainllm.inference.top_voxels`). Reported in
both directions — observed → predicted (which prediction is this brain segment?) and
predicted → observed — as top-1 / top-5 accuracy, mean percentile rank (1 = always
first, chance 0.5), the macro sensitivity and specificity of the per-segment decision
(each segment a class), chance beside each, and a one-sided permutation p-value of the
mean percentile rank against random pairings of observed and predicted segments. The
pairings are block permutations (:func:`identification_p`): neighbouring segments of a
time series are autocorrelated, so the candidates change places in blocks of consecutive
segments spanning at least ``block_trs`` TRs (a free permutation of single segments makes
the null too narrow and the p too small).

Through a trained contrastive run — frozen features (:func:`contrastive_decoding`) or LoRA
(:func:`lora_decoding`): the same identification with segments of k consecutive pairs,
brain and text segments each the mean of their pairs' unit embeddings, matched by cosine
(``brain_to_text``, ``text_to_brain``); and whole-vocabulary word classification
(:mod:`brainllm.word_decoding`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import metrics
from .io import InputError, require_finite, write_tsv

log = logging.getLogger(__name__)

__all__ = [
    "IdentificationSettings",
    "segment_slices",
    "segment_similarity",
    "percentile_ranks",
    "segments_per_block",
    "identification_p",
    "identification_scores",
    "identify_segments",
    "identification_table",
    "segment_embedding_similarity",
    "identify_contrastive_segments",
    "contrastive_decoding",
    "lora_decoding",
]

DIRECTIONS = ("observed_to_predicted", "predicted_to_observed")


@dataclass(frozen=True)
class IdentificationSettings:
    """``decoding.identification`` (config/README.md)."""

    segment_trs: tuple[int, ...] = (10,)
    voxel_fraction: float = 0.1
    top_k: tuple[int, ...] = (1, 5)
    n_permutations: int = 1000
    seed: int = 0
    block_trs: int = 20  # the null permutes blocks of consecutive segments spanning ≥ block_trs TRs (samples for EEG)

    @classmethod
    def from_config(cls, section: Mapping | None, seed: int = 0) -> "IdentificationSettings":
        section = dict(section or {})
        return cls(
            segment_trs=tuple(int(k) for k in section.get("segment_trs", cls.segment_trs)),
            voxel_fraction=float(section.get("voxel_fraction", cls.voxel_fraction)),
            top_k=tuple(int(k) for k in section.get("top_k", cls.top_k)),
            n_permutations=int(section.get("n_permutations", cls.n_permutations)),
            seed=int(section.get("seed", seed)),
            block_trs=int(section.get("block_trs", cls.block_trs)),
        )


def segment_slices(story_lengths: Sequence[int], segment_trs: int, source: str | os.PathLike = "predictions") -> list[slice]:
    """Consecutive non-overlapping ``segment_trs``-TR slices of the concatenated test stories.

    Segments never cross a story boundary; a story's last TRs that do not fill a segment are
    left out. At least two segments are needed for identification.
    """
    segment_trs = int(segment_trs)
    lengths = [int(n) for n in story_lengths]
    if segment_trs < 1:
        raise InputError(source, f"decoding.identification.segment_trs {segment_trs} is below 1 TR.", "use segment lengths ≥ 1 TR.")
    slices, start = [], 0
    for n_trs in lengths:
        slices += [slice(start + offset, start + offset + segment_trs) for offset in range(0, n_trs - segment_trs + 1, segment_trs)]
        start += n_trs
    if len(slices) < 2:
        raise InputError(
            source,
            f"decoding.identification.segment_trs {segment_trs} leaves {len(slices)} segment(s) in test stories of {lengths} TRs.",
            f"use segment_trs ≤ {max(lengths) // 2} (two segments at least).",
        )
    return slices


def segment_similarity(observed: np.ndarray, predicted: np.ndarray, slices: Sequence[slice]) -> np.ndarray:
    """``(n_segments, n_segments)`` Pearson r of observed segment i with predicted segment j.

    Each segment is its ``(k, n_voxels)`` block flattened; observed and predicted are
    ``(n_trs, n_voxels)`` on the same TRs and voxels.
    """
    def flattened(x):
        blocks = np.stack([np.asarray(x[s], dtype=np.float64).ravel() for s in slices])
        blocks -= blocks.mean(1, keepdims=True)
        norms = np.linalg.norm(blocks, axis=1, keepdims=True)
        return np.divide(blocks, norms, out=np.zeros_like(blocks), where=norms > 0)

    return flattened(observed) @ flattened(predicted).T


def percentile_ranks(similarity: np.ndarray) -> np.ndarray:
    """Per row, the fraction of wrong candidates scored strictly below the correct one (the diagonal).

    1 = the correct candidate first, 0 = last, chance 0.5; ties count against it.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    n_items = similarity.shape[0]
    return (n_items - metrics._ranks_of_diagonal(similarity)) / (n_items - 1)


def segments_per_block(segment_trs: float, block_trs: float) -> int:
    """Consecutive segments per block of the identification null: ⌈block_trs / segment_trs⌉, at least 1.

    ``segment_trs``: the TRs one segment spans (k, or k × the stride of contrastive pairs).
    Segments of ``block_trs`` TRs or longer are permuted one by one.
    """
    segment_trs, block_trs = float(segment_trs), float(block_trs)
    if segment_trs <= 0 or block_trs < 1:
        raise InputError(None, f"segment length {segment_trs:g} TRs and block length {block_trs:g} TRs: both must be positive.",
                         "set decoding.identification.block_trs ≥ 1 and segment_trs ≥ 1.")
    return max(1, math.ceil(block_trs / segment_trs - 1e-9))


def _wins(sorted_rows: np.ndarray, similarity: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """``(n_orders,)`` Σ over rows i of #{candidates scored strictly below the one ``orders[:, i]`` pairs with row i}.

    Divided by N (N − 1) it is the mean percentile rank of that pairing (ties count against).
    """
    wins = np.zeros(len(orders), dtype=np.int64)
    for i in range(similarity.shape[0]):
        wins += np.searchsorted(sorted_rows[i], similarity[i, orders[:, i]], side="left")
    return wins


def identification_p(similarity: np.ndarray, orders: np.ndarray | None) -> float:
    """One-sided p of the mean percentile rank of ``similarity``'s diagonal against the pairings ``orders``.

    ``orders`` ``(n_permutations, N)``: row i is paired with candidate ``orders[:, i]``
    (:func:`brainllm.metrics.block_permutations`); None (too few blocks): NaN.
    p = (1 + #{null mean percentile rank ≥ observed}) / (1 + n_permutations), counted
    exactly on integer win counts.
    """
    if orders is None:
        return float("nan")
    similarity = np.asarray(similarity, dtype=np.float64)
    n_items = similarity.shape[0]
    sorted_rows = np.sort(similarity, axis=1)
    observed = _wins(sorted_rows, similarity, np.arange(n_items)[None, :])[0]
    exceed = int((_wins(sorted_rows, similarity, orders) >= observed).sum())
    return (1 + exceed) / (1 + len(orders))


def _direction_scores(similarity: np.ndarray, top_k: Sequence[int], orders: np.ndarray | None) -> dict:
    n_items = similarity.shape[0]
    rank = metrics._ranks_of_diagonal(similarity)  # 1 = best; ties count against
    scores = {f"top{k}": float((rank <= k).mean()) for k in top_k}
    scores["mean_percentile_rank"] = float(percentile_ranks(similarity).mean())
    decision = metrics.sensitivity_specificity(np.arange(n_items), np.argmax(similarity, axis=1), labels=np.arange(n_items))
    scores["sensitivity"] = decision["sensitivity_macro"]
    scores["specificity"] = decision["specificity_macro"]
    # null: rows paired with candidates moved in blocks of consecutive segments (the permuted matrix's diagonal)
    scores["p"] = identification_p(similarity, orders)
    return scores


def identification_scores(similarity: np.ndarray, top_k: Sequence[int] = (1, 5), n_permutations: int = 1000, seed: int = 0,
                          segment_trs: float = 1, block_trs: float = 1) -> dict:
    """Scores in both directions of ``similarity`` (rows observed, columns predicted) with chance levels.

    ``{direction: {top<k>, mean_percentile_rank, sensitivity, specificity, p}, "chance": {...}, "n_segments"}``;
    chance: top-k = k / N, percentile rank 0.5, sensitivity 1 / N, specificity 1 − 1 / N.
    Rows and columns are segments in time order, each spanning ``segment_trs`` TRs; the p's
    null permutes blocks of :func:`segments_per_block` consecutive candidates (the same
    ``n_permutations`` seeded orders in both directions). The defaults (1, 1) permute single
    segments, right only for independent segments. Fewer than 2 blocks: p is NaN (logged).
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be square (N, N), got shape {similarity.shape}")
    require_finite(similarity, "the segment similarities", None,
                   "check the observed and predicted segments for NaN or infinite values (re-run the rule that wrote them).")
    n_items = similarity.shape[0]
    block = segments_per_block(segment_trs, block_trs)
    if n_items // block < 2:
        log.warning("identification p left NaN: %d segments of %g TRs make fewer than 2 blocks of %d segments (≥ %g TRs each) "
                    "for the block-permutation null; lower decoding.identification.block_trs or add test stories",
                    n_items, float(segment_trs), block, float(block_trs))
        orders = None
    else:
        orders = metrics.block_permutations(n_items, block, int(n_permutations), seed)
    result = {
        "observed_to_predicted": _direction_scores(similarity, top_k, orders),
        "predicted_to_observed": _direction_scores(similarity.T, top_k, orders),
    }
    chance = {f"top{k}": min(k, n_items) / n_items for k in top_k}
    chance.update({"mean_percentile_rank": 0.5, "sensitivity": 1 / n_items, "specificity": 1 - 1 / n_items})
    result["chance"] = chance
    result["n_segments"] = n_items
    return result


def identify_segments(
    observed: np.ndarray,
    predicted: np.ndarray,
    story_lengths: Sequence[int],
    selection_scores: np.ndarray,
    settings: IdentificationSettings,
    source: str | os.PathLike = "predictions",
) -> list[dict]:
    """One row per (segment length k, direction) for one encoding model's test predictions.

    ``selection_scores`` ``(n_voxels,)`` are validation r: the ``voxel_fraction`` best voxels
    are used, never chosen on the test stories.
    """
    if observed.shape != predicted.shape:
        raise InputError(source, f"predictions {predicted.shape} differ from the test responses {observed.shape}.", "re-run the encoding rule.")
    if sum(story_lengths) != observed.shape[0]:
        raise InputError(source, f"story lengths {list(story_lengths)} do not add up to {observed.shape[0]} test TRs.", "re-run the encoding rule.")
    from .inference import top_voxels

    voxels = top_voxels(selection_scores, settings.voxel_fraction)
    observed, predicted = np.asarray(observed)[:, voxels], np.asarray(predicted)[:, voxels]
    require_finite(observed, "the observed test responses (on the chosen voxels)", source, "re-run preprocessing; responses must be finite.")
    require_finite(predicted, "the test predictions (on the chosen voxels)", source, "re-run the encoding rule; predictions must be finite.")
    rows = []
    for segment_trs in settings.segment_trs:
        slices = segment_slices(story_lengths, segment_trs, source)
        similarity = segment_similarity(observed, predicted, slices)
        scores = identification_scores(similarity, settings.top_k, settings.n_permutations, settings.seed,
                                       segment_trs=segment_trs, block_trs=settings.block_trs)
        rows += _score_rows(scores, segment_trs, DIRECTIONS, n_voxels=len(voxels))
    return rows


def _score_rows(scores: Mapping, segment_trs: int, names: Sequence[str], **extra) -> list[dict]:
    """One row per direction of :func:`identification_scores`, named ``names``, each metric beside its chance."""
    rows = []
    for direction, name in zip(DIRECTIONS, names):
        row = {"segment_trs": segment_trs, "direction": name, "n_segments": scores["n_segments"], **extra}
        for key, value in scores[direction].items():
            row[key] = value
            if key in scores["chance"]:
                row[f"chance_{key}"] = scores["chance"][key]
        rows.append(row)
    return rows


def identification_table(
    predictions: Mapping[int, str | os.PathLike],
    score_tsvs: Mapping[int, str | os.PathLike],
    responses_h5: str | os.PathLike,
    test_stories: Sequence[str],
    settings: IdentificationSettings,
    out_tsv: str | os.PathLike,
) -> pd.DataFrame:
    """Identification for every layer of a (subject, model): ``identification.tsv`` (docs/outputs.md)."""
    from .encoding import held_out_responses
    from .inference import read_predictions

    observed = held_out_responses(responses_h5, test_stories)
    rows = []
    for layer in sorted(int(layer) for layer in predictions):
        predicted, attrs = read_predictions(predictions[layer])
        scores = pd.read_csv(score_tsvs[layer], sep="\t")
        if "r_val" not in scores or not np.isfinite(scores["r_val"]).all():
            raise InputError(score_tsvs[layer], "validation r (r_val) is missing: voxels cannot be chosen without the test stories.",
                             "set encoding.cv_score: correlation and re-run encoding.")
        layer_rows = identify_segments(observed, predicted, attrs["story_lengths"], scores["r_val"].to_numpy(), settings, predictions[layer])
        rows += [{"layer": layer, **row} for row in layer_rows]
        best = max(r["top1"] / r["chance_top1"] for r in layer_rows)
        log.info("layer %d: identification top-1 up to %.1f× chance over k = %s", layer, best, list(settings.segment_trs))
    table = pd.DataFrame(rows)
    write_tsv(out_tsv, table)
    return table


# ----------------------------------------------------------------------------- through a contrastive model


def segment_embedding_similarity(brain: np.ndarray, text: np.ndarray, slices: Sequence[slice]) -> np.ndarray:
    """``(n_segments, n_segments)`` cosine of brain segment i with text segment j.

    A segment's embedding is the mean of its pairs' unit embeddings ``(n_pairs, dim)``.
    """
    def pooled(x):
        means = np.stack([np.asarray(x[s], dtype=np.float64).mean(0) for s in slices])
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        return np.divide(means, norms, out=np.zeros_like(means), where=norms > 0)

    return pooled(brain) @ pooled(text).T


def identify_contrastive_segments(brain: np.ndarray, text: np.ndarray, pairs_per_story: Sequence[int], settings: IdentificationSettings,
                                  source: str | os.PathLike = "contrastive model", pair_stride_trs: int = 1) -> list[dict]:
    """Identification rows per (k, direction): k consecutive pairs per segment, brain ↔ text by cosine.

    Directions: ``brain_to_text`` (which text is this brain segment?) and ``text_to_brain``.
    Consecutive pairs start ``pair_stride_trs`` TRs apart, so a segment spans k × that many
    TRs of the null's blocks (``settings.block_trs``).
    """
    require_finite(brain, "the brain embeddings of the test pairs", source, "re-run the contrastive training; its embeddings must be finite.")
    require_finite(text, "the text embeddings of the test pairs", source, "re-run the contrastive training; its embeddings must be finite.")
    rows = []
    for segment_trs in settings.segment_trs:
        slices = segment_slices(pairs_per_story, segment_trs, source)
        scores = identification_scores(segment_embedding_similarity(brain, text, slices), settings.top_k, settings.n_permutations, settings.seed,
                                       segment_trs=segment_trs * int(pair_stride_trs), block_trs=settings.block_trs)
        rows += _score_rows(scores, segment_trs, ("brain_to_text", "text_to_brain"))
    return rows


def _decode_run(model, record: Mapping, pairs: Mapping, responses_h5: str | os.PathLike, words_tsvs: Mapping[str, str | os.PathLike],
                vocabulary: pd.DataFrame, vocabulary_text, identification: IdentificationSettings, words: "WordDecodingSettings",
                out: Mapping[str, str | os.PathLike], source: str | os.PathLike) -> dict:
    """Identification and word classification of one trained contrastive run.

    ``pairs``: the run's ``validation`` and ``test`` :class:`~brainllm.contrastive.PairData` (CPU);
    ``vocabulary_text()`` gives the vocabulary's unit text embeddings ``(n_vocab, shared_dim)``.
    """
    from .contrastive import embed, pair_words
    from .word_decoding import SplitEmbeddings, classify_words

    settings, layer = record["settings"], int(record["layer"])
    embeddings = {}
    for name in ("validation", "test"):
        data = pairs[name]
        brain, text, _ = embed(model, data, int(settings["batch_size"]))
        embeddings[name] = SplitEmbeddings(brain.numpy().astype(np.float64), pair_words(data, responses_h5, words_tsvs, vocabulary, source))
        if name == "test":
            pairs_per_story = [int((data.pair_story == story).sum()) for story in data.stories]
            stride = settings.get("stride_trs") or settings.get("segment_trs") or 1  # TRs between consecutive pairs' starts
            id_rows = identify_contrastive_segments(brain.numpy(), text.numpy(), pairs_per_story, identification, source, int(stride))
    write_tsv(out["identification"], pd.DataFrame([{"layer": layer, "mode": record["mode"], **row} for row in id_rows]))
    best = max(r["top1"] / r["chance_top1"] for r in id_rows)
    log.info("contrastive %s run, layer %d: identification top-1 up to %.1f× chance over k = %s", record["mode"], layer, best, list(identification.segment_trs))
    objective = {"word_objective": bool(settings.get("words", {}).get("enabled", False)),
                 "n_voxels": int(pairs["test"].responses.shape[1]), "voxel_selection": record.get("voxel_selection") or "every voxel"}
    return classify_words(embeddings, vocabulary, vocabulary_text(), model.scale_value(), words, out, mode=record["mode"], record=objective)


def contrastive_decoding(
    *,
    config_json: str | os.PathLike,
    weights: str | os.PathLike,
    features_h5: str | os.PathLike,
    responses_h5: str | os.PathLike,
    words_tsvs: Mapping[str, str | os.PathLike],
    vocabulary_tsv: str | os.PathLike,
    vocabulary_manifest: str | os.PathLike,
    train_entries: Mapping[str, str | os.PathLike],
    identification: IdentificationSettings,
    words: "WordDecodingSettings",
    out: Mapping[str, str | os.PathLike],
) -> dict:
    """Segment identification and whole-vocabulary word classification through one frozen contrastive run.

    ``out``: ``identification`` (TSV), ``words``, ``vocabulary`` (TSV) and ``summary`` (JSON),
    see docs/outputs.md. The split (validation, test) is the run's own. Vocabulary words are
    the model's features of each word (:func:`brainllm.word_decoding.vocabulary_features`)
    through the run's text projector.
    """
    import torch

    from .align import read_aligned
    from .contrastive import build_pair_data, load_frozen_model, read_responses
    from .word_decoding import read_vocabulary, vocabulary_features

    model, record = load_frozen_model(config_json, weights)
    settings, layer, split = record["settings"], int(record["layer"]), record["split"]
    pairs = {name: build_pair_data(read_responses(responses_h5, split[name], record.get("voxels")), list(split[name]), settings,
                                   text=read_aligned(features_h5, split[name], layer), source=f"{features_h5} + {responses_h5}").to(torch.device("cpu"))
             for name in ("validation", "test")}

    def vocabulary_text():
        features = vocabulary_features(vocabulary_manifest, vocabulary_tsv, layer, words.embedding, train_entries)
        with torch.no_grad():
            return model.encode_text(torch.as_tensor(features, dtype=torch.float32)).numpy().astype(np.float64)

    return _decode_run(model, record, pairs, responses_h5, words_tsvs, read_vocabulary(vocabulary_tsv), vocabulary_text,
                       identification, words, out, config_json)


def lora_decoding(
    *,
    config_json: str | os.PathLike,
    towers: str | os.PathLike,
    adapter_dir: str | os.PathLike,
    responses_h5: str | os.PathLike,
    words_tsvs: Mapping[str, str | os.PathLike],
    vocabulary_tsv: str | os.PathLike,
    identification: IdentificationSettings,
    words: "WordDecodingSettings",
    out: Mapping[str, str | os.PathLike],
    batch_size: int = 256,
) -> dict:
    """The same decoding through a LoRA run (BrainLLM): its text side is the adapted LLM.

    Test pairs' texts are their segments in context, as in training; each vocabulary word is
    read alone by the adapted LLM (``decoding.words.embedding`` does not apply) and pooled
    like a one-word segment, then projected.
    """
    import torch
    from tqdm import tqdm

    from .brainlora import load_lora_model, lora_pair_data, tokenize_segment
    from .models import model_settings
    from .word_decoding import read_vocabulary

    model, record, tokenizer = load_lora_model(config_json, towers, adapter_dir)
    settings, split = record["settings"], record["split"]
    separator = model_settings(record["base_model"])["word_separator"]
    pairs = {name: data.to(torch.device("cpu")) for name, data in
             lora_pair_data(responses_h5, words_tsvs, {name: split[name] for name in ("validation", "test")}, settings, tokenizer, separator).items()}
    vocabulary = read_vocabulary(vocabulary_tsv)
    record = {**record, "settings": {**settings, "batch_size": int(settings["lora"]["batch_size"])}}

    def vocabulary_text():
        from .word_decoding import check_tokenizable

        check_tokenizable(tokenizer, vocabulary, vocabulary_tsv)
        max_tokens = int(settings["lora"]["max_tokens"])
        sequences = [tokenize_segment(tokenizer, [], [word], max_tokens) for word in vocabulary["word"]]
        order = np.argsort([len(sequence["input_ids"]) for sequence in sequences], kind="stable")  # batches of equal lengths: little padding
        chunks = []
        with torch.no_grad():
            for start in tqdm(range(0, len(sequences), batch_size), desc="vocabulary through the adapted LLM", unit="batch", mininterval=5):
                chunks.append(model.encode_text(model.text_tower([sequences[i] for i in order[start : start + batch_size]])))
        embedded = torch.cat(chunks).numpy().astype(np.float64)
        out = np.empty_like(embedded)
        out[order] = embedded
        return out

    return _decode_run(model, record, pairs, responses_h5, words_tsvs, vocabulary, vocabulary_text, identification,
                       dataclasses.replace(words, embedding="alone"), out, config_json)
