"""Encoding-guided beam search (Tang et al. 2023): the LLM proposes words, the encoding model picks them.

The test story's word slots (times from the recording's word onsets) are filled one at a
time. For each hypothesis in the beam the generator LLM proposes its ``candidates`` most
likely next words (single tokens; with a subword LLM a word is proposed by its first
token). Each candidate's feature is the feature model's state at the encoding layer (the
subject's layer chosen on validation r), read with the model's per-word context; the
fitted ridge model turns the hypothesis's features into predicted responses exactly as the
encoding stage does — Lanczos onto the TR grid at the word's midpoint, z-scored (with the
training stories' statistics: the test story's own are unknown while it is decoded),
delayed, times the weights — and the beam keeps the ``beam_width`` hypotheses whose
predictions best explain the observed responses: the Gaussian log-likelihood over the
``voxel_fraction`` voxels best by validation r, on every TR up to
``max(delays) + lanczos_window`` TRs after the word. Words still to come are left out of
every hypothesis alike.

The noise covariance across those voxels is estimated from the training stories'
residuals: each story predicted by the ridge model fitted without its fold (the stories in
at most ``RESIDUAL_FOLDS`` folds of consecutive stories; each voxel at its own α),
Ledoit–Wolf shrinkage of the residuals' covariance. The voxels and their α were chosen by
cross-validation on these same training stories (never the test story), which makes the
residuals of the chosen voxels a little optimistic; fold models fitted on fewer stories
make them a little pessimistic. Residuals are compared in the
space that whitens it (TRs taken as independent). Voxels share their errors — in fMRI,
and wherever many voxels follow a few directions of the features — and a diagonal noise
model counts the same evidence once per voxel: it lets the brain term override the LLM
and keeps texts that fit the shared error, not the words heard.

The ridge model is refitted here on the training stories (the encoding stage's design,
delays, α grid, backend and solver) because encoding outputs keep no weights by default.

Null: ``n_null`` texts written by the same LLM for the same slots without brain data (each
word sampled from its proposals). Decoded and null texts are cut into windows of
``window_s`` seconds and scored against the words heard in each window (BLEU-1, METEOR,
WER, ROUGE-1 — :mod:`brainllm.text_metrics` — and the cosine between the windows' mean
features at the encoding layer); z = (decoded − null mean) / null SD per metric, WER
sign-flipped so that z > 0 is better.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .align import _story_grid, align_story, lanczos_matrix, read_aligned, tr_times
from .brainlora import truncate_to_layer
from .contrastive import read_responses
from .encoding import alpha_grid, build_design, fit_ridge, story_folds
from .features import Window, per_word_windows, run_windows
from .generation import load_causal_lm
from .group import chosen_layer
from .inference import top_voxels
from .io import InputError, read_words, write_json, write_tsv
from .models import load_model, model_settings, text_tower
from .store import read_entry
from .text_metrics import METRICS, TextScorer

log = logging.getLogger(__name__)


MIN_NULL_TEXTS = 10  # fewer make the null's SD, and so z, too unstable to read


@dataclass(frozen=True)
class BeamSearchSettings:
    beam_width: int = 5
    candidates: int = 5
    voxel_fraction: float = 0.1
    max_words: int | None = None
    lm_context_words: int = 16
    lm_weight: float = 1.0
    n_null: int = 10
    window_s: float = 20.0
    seed: int = 0

    @classmethod
    def from_config(cls, section: Mapping | None) -> "BeamSearchSettings":
        defaults = asdict(cls())
        unknown = sorted(set(section or {}) - set(defaults) - {"model"})
        if unknown:
            raise InputError(None, f"generation.beam_search has unknown keys {unknown}.", "see config/README.md for the keys.")
        settings = cls(**{**defaults, **{k: v for k, v in dict(section or {}).items() if k != "model"}})
        for name in ("beam_width", "candidates", "n_null", "lm_context_words"):
            if int(getattr(settings, name)) < 1:
                raise InputError(None, f"generation.beam_search.{name} is {getattr(settings, name)!r}; it must be at least 1.",
                                 f"set generation.beam_search.{name} to a positive integer.")
        if settings.n_null < MIN_NULL_TEXTS or not 0 < settings.voxel_fraction <= 1 or settings.window_s <= 0:
            raise InputError(None, f"generation.beam_search needs n_null ≥ {MIN_NULL_TEXTS}, voxel_fraction in (0, 1] and window_s > 0.",
                             f"set generation.beam_search.n_null to {MIN_NULL_TEXTS} or more (default 10).")
        return settings


# ----------------------------------------------------------------------------- the encoding model


@dataclass
class ResponseModel:
    """Ridge weights per delay on the scored voxels, in the noise-whitened space, and what the prediction of a word needs."""

    weights: np.ndarray  # (n_delays, hidden, n_voxels) on z-scored features, times ``whitening``
    delays: list[int]
    mean: np.ndarray  # (hidden,) training stories' raw TR-grid feature statistics
    std: np.ndarray
    whitening: np.ndarray  # (n_voxels, n_voxels): responses @ whitening have identity noise covariance
    voxels: np.ndarray  # indices into the responses' voxels
    lanczos: dict
    layer: int
    noise: dict  # how the noise covariance was estimated

    def whiten(self, responses: np.ndarray) -> np.ndarray:
        return responses @ self.whitening

    def feature_gain(self, features: np.ndarray) -> np.ndarray:
        """``(n, hidden)`` word features → ``(n, n_delays, n_voxels)``: each delay's response to one z-unit of the word."""
        return np.einsum("nh,dhv->ndv", features / self.std, self.weights)

    def baseline(self, n_rows: int) -> np.ndarray:
        """The z-scoring offset's share of the prediction ``(n_rows, n_voxels)`` (the same for every text)."""
        offset = np.einsum("h,dhv->dv", -self.mean / self.std, self.weights)
        out = np.zeros((n_rows, offset.shape[1]))
        for d, delay in enumerate(self.delays):
            out[delay:] += offset[d]
        return out


RESIDUAL_FOLDS = 5  # folds of whole training stories for the noise covariance's held-out residuals


def held_out_predictions(X: np.ndarray, Y: np.ndarray, story_lengths: Sequence[int], alphas: np.ndarray) -> np.ndarray:
    """Ridge predictions ``(n_rows, n_voxels)`` of every story by the model fitted without its fold (:func:`brainllm.encoding.story_folds`,
    ``RESIDUAL_FOLDS``), each voxel at its own ``alphas`` value (no intercept). Dual (one ``XX'``) when there are no more rows than
    features, else primal (one ``X'X``); each fold takes its block or subtracts its own rows."""
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    predictions = np.empty_like(Y)
    dual = X.shape[0] <= X.shape[1]
    gram = X @ X.T if dual else X.T @ X
    XtY = None if dual else X.T @ Y
    for train, test in story_folds(story_lengths, RESIDUAL_FOLDS):
        if dual:  # W = X'(XX' + αI)⁻¹Y
            eigenvalues, U = np.linalg.eigh(gram[np.ix_(train, train)])
            left, right = gram[np.ix_(test, train)] @ U, U.T @ Y[train]
        else:  # W = (X'X + αI)⁻¹X'Y
            eigenvalues, V = np.linalg.eigh(gram - X[test].T @ X[test])
            left, right = X[test] @ V, V.T @ (XtY - X[test].T @ Y[test])
        eigenvalues = np.clip(eigenvalues, 0.0, None)
        for alpha in np.unique(alphas):
            voxels = np.flatnonzero(alphas == alpha)
            predictions[np.ix_(test, voxels)] = (left / (eigenvalues + alpha)) @ right[:, voxels]
    return predictions


def noise_whitening(residuals: np.ndarray) -> tuple[np.ndarray, float]:
    """``(n_voxels, n_voxels)`` W with ``residuals @ W`` of identity covariance (Ledoit–Wolf shrunk estimate), and the shrinkage.

    Eigenvalues are floored at 1e-8 of the largest (a voxel whose residual is constant, collinear voxels
    with no shrinkage); residuals that are all zero are an error."""
    from sklearn.covariance import LedoitWolf

    estimate = LedoitWolf(store_precision=False).fit(residuals)
    eigenvalues, vectors = np.linalg.eigh(estimate.covariance_)
    if not eigenvalues.max() > 0:
        raise InputError(None, "the encoding model's held-out residuals on the scored voxels are all zero, so the beam search's "
                         "noise covariance is undefined.", "check the responses of the training stories (constant voxels?) or "
                         "raise generation.beam_search.voxel_fraction.")
    return vectors / np.sqrt(np.maximum(eigenvalues, 1e-8 * eigenvalues.max())), float(estimate.shrinkage_)


def fit_response_model(aligned_h5, responses_h5, manifests: Mapping[str, str | os.PathLike], words_tsvs: Mapping[str, str | os.PathLike],
                       layer: int, train_stories: Sequence[str], encoding: Mapping, voxel_fraction: float) -> ResponseModel:
    """Ridge of the chosen layer on the training stories, its best voxels and the training feature statistics."""
    delays = [int(d) for d in encoding["delays"]]
    aligned = {layer: read_aligned(aligned_h5, train_stories, layer)}
    responses = read_responses(responses_h5, train_stories)
    designs, Y, lengths = build_design(aligned, responses, train_stories, delays, aligned_h5)
    fit = fit_ridge(designs[0], Y, lengths, alpha_grid(**encoding["alphas"]), encoding.get("backend", "auto"),
                    {"n_targets_batch": encoding.get("n_targets_batch", 4096)}, encoding.get("solver", "auto"), "correlation")
    voxels = top_voxels(fit.validation_r, voxel_fraction)
    r_val = fit.validation_r[voxels]
    residuals = Y[:, voxels] - held_out_predictions(designs[0], Y[:, voxels], lengths, fit.alphas[voxels])
    whitening, shrinkage = noise_whitening(residuals)
    lanczos = {"window": int(encoding.get("lanczos_window", 3)), "cutoff_mult": float(encoding.get("lanczos_cutoff_mult", 1.0)),
               "normalise": bool(encoding.get("lanczos_normalise", False))}
    raw = []
    for story in train_stories:
        grid = _story_grid(responses_h5, story)
        entry = read_entry(manifests[story], words_tsv=words_tsvs[story], layers=[layer])
        raw.append(align_story(entry.layers[layer], entry.onset, entry.offset, grid["n_trs_raw"], grid["tr"], grid["trim_start"],
                               grid["trim_end"], lanczos["window"], lanczos["cutoff_mult"], lanczos["normalise"], zscore=False))
    raw = np.vstack(raw).astype(np.float64)
    hidden = raw.shape[1]
    weights = fit.weights.reshape(len(delays), hidden, -1)[:, :, voxels].astype(np.float64)
    log.info("encoding model of layer %d refitted on %s: %d voxels scored (validation r %.3f–%.3f); noise covariance from %d "
             "held-out residual TRs, Ledoit–Wolf shrinkage %.3f", layer, ", ".join(train_stories), len(voxels), np.nanmin(r_val),
             np.nanmax(r_val), len(residuals), shrinkage)
    noise = {"covariance": "Ledoit–Wolf shrunk covariance of held-out ridge residuals on the training stories",
             "folds": min(RESIDUAL_FOLDS, len(train_stories)),
             "n_residual_trs": int(len(residuals)), "shrinkage": shrinkage}
    return ResponseModel(weights=weights @ whitening, delays=delays, mean=raw.mean(0), std=np.where(raw.std(0) > 1e-8, raw.std(0), 1.0),
                         whitening=whitening, voxels=voxels, lanczos=lanczos, layer=layer, noise=noise)


# ----------------------------------------------------------------------------- proposals and features


class WordProposer:
    """The generator LLM's most likely next words after a hypothesis (single tokens holding a letter)."""

    def __init__(self, lm, tokenizer, device: torch.device, context_words: int):
        self.lm, self.tokenizer, self.device, self.context_words = lm, tokenizer, device, context_words
        self.start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        special = set(tokenizer.all_special_ids)
        words = [tokenizer.decode([i]).strip().lower() for i in range(len(tokenizer))]
        self.word_of = np.array(words, dtype=object)
        self.usable = np.array([i not in special and any(c.isalpha() for c in w) for i, w in enumerate(words)])

    @torch.no_grad()
    def propose(self, contexts: Sequence[Sequence[str]], k: int) -> list[tuple[list[str], np.ndarray]]:
        """Per context: up to ``k`` distinct words and their log-probabilities (renormalised over the usable tokens).

        The contexts go through the LLM as one right-padded batch; each is read at its own last token.
        """
        ids = []
        for context in contexts:
            text = " ".join(context[-self.context_words :])
            ids.append([self.start] + (list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []))
        width = max(len(row) for row in ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.start
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids], device=self.device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], device=self.device)
        logits = self.lm(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        last = logits[torch.arange(len(ids), device=self.device), torch.tensor([len(row) - 1 for row in ids], device=self.device)]
        return [self._top_words(row, k) for row in last.float().cpu().numpy()]

    def _top_words(self, logits: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
        logits[~self.usable[: len(logits)]] = -np.inf
        logits[len(self.usable) :] = -np.inf  # rows of an embedding matrix padded past the tokenizer
        logp = logits - np.logaddexp.reduce(logits[np.isfinite(logits)])
        words, scores = [], []
        for token in np.argsort(-logp):
            if len(words) == k or not np.isfinite(logp[token]):
                break
            if self.word_of[token] not in words:
                words.append(self.word_of[token])
                scores.append(logp[token])
        return words, np.asarray(scores)


class FeatureReader:
    """States of the encoding layer for the last word of word sequences, with the feature model's context."""

    def __init__(self, model_cfg: Mapping, layer: int):
        self.settings = model_settings(dict(model_cfg))
        self.model, self.tokenizer, info = load_model(dict(model_cfg))
        self.layer = layer
        # Only the encoding layer is read: the blocks after it are dropped where that leaves it exactly as it was.
        backbone = text_tower(self.model, info.family)
        blocks = int(getattr(backbone.config, "num_hidden_layers", 0) or 0)
        kept = truncate_to_layer(backbone, self.tokenizer, layer)
        self.info = replace(info, n_hidden_states=kept + 1) if kept != blocks else info

    def last_word(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """``(n, hidden)``: each sequence's last word read after its preceding ``context_words − 1`` words."""
        width = int(self.settings["context_words"])
        windows = []
        for index, words in enumerate(sequences):
            context = list(words[-width:])
            (window,) = per_word_windows(self.tokenizer, context, width, self.info.max_positions, self.settings["word_separator"], first=len(context) - 1)
            windows.append(Window(window.input_ids, np.array([index]), window.first_token, window.last_token))
        outputs, filled, _ = run_windows(self.model, windows, len(windows), self.settings, self.info, desc="candidates")
        return outputs[self.layer]

    def all_words(self, words: Sequence[str]) -> np.ndarray:
        width = int(self.settings["context_words"])
        windows = per_word_windows(self.tokenizer, list(words), width, self.info.max_positions, self.settings["word_separator"])
        outputs, _, _ = run_windows(self.model, windows, len(words), self.settings, self.info, desc="words")
        return outputs[self.layer]


# ----------------------------------------------------------------------------- the search


@dataclass
class StoryGrid:
    """The test story's word slots and TR rows."""

    tr: float
    word_times: np.ndarray  # (n_words,) midpoints, scan seconds
    row_times: np.ndarray  # (n_rows,) kept TR centres
    word_rows: np.ndarray  # (n_words, n_rows) Lanczos weights of each word on the kept rows
    observed: np.ndarray  # (n_rows, n_voxels) scored voxels, whitened by the model's noise covariance


def story_grid(responses_h5, story: str, words: pd.DataFrame, model: ResponseModel, max_words: int | None) -> StoryGrid:
    grid = _story_grid(responses_h5, story)
    words = words.sort_values("onset", kind="stable")
    times = ((words["onset"] + words["offset"]) / 2.0).to_numpy(float)
    if max_words is not None:
        times = times[: int(max_words)]
    raw_times = tr_times(grid["n_trs_raw"], grid["tr"])
    kept = slice(grid["trim_start"], grid["n_trs_raw"] - grid["trim_end"])
    matrix = lanczos_matrix(raw_times, times, model.lanczos["window"], model.lanczos["cutoff_mult"], tr=grid["tr"],
                            normalise=model.lanczos["normalise"])[kept]
    observed = read_responses(responses_h5, [story])[story][:, model.voxels].astype(np.float64)
    observed = (observed - observed.mean(0)) / np.where(observed.std(0) > 0, observed.std(0), 1.0)  # as the encoding stage scores
    return StoryGrid(tr=float(grid["tr"]), word_times=times, row_times=raw_times[kept], word_rows=matrix.T, observed=model.whiten(observed))


def _delayed_rows(rows: np.ndarray, gain: np.ndarray, delays: Sequence[int]) -> np.ndarray:
    """Prediction of one word ``(n_rows, n_voxels)`` from its Lanczos weights ``(n_rows,)`` and gains ``(n_delays, n_voxels)``."""
    out = np.zeros((len(rows), gain.shape[1]))
    for d, delay in enumerate(delays):
        out[delay:] += rows[: len(rows) - delay, None] * gain[d][None, :] if delay else rows[:, None] * gain[d][None, :]
    return out


def beam_decode(grid: StoryGrid, model: ResponseModel, proposer: WordProposer, reader: FeatureReader,
                settings: BeamSearchSettings) -> tuple[list[str], np.ndarray]:
    """The best word sequence for the story's slots and its words' features ``(n_words, hidden)``."""
    base = model.baseline(len(grid.row_times))
    horizon = (max(model.delays) + model.lanczos["window"]) * grid.tr
    beam = [([], [], base, 0.0, 0.0)]  # words, features, prediction, score, the words' summed LLM log-probability
    for slot in tqdm(range(len(grid.word_times)), desc="beam search", unit="word"):
        scored = grid.row_times <= grid.word_times[slot] + horizon
        proposals = []
        for b, (candidates, logp) in enumerate(proposer.propose([hypothesis[0] for hypothesis in beam], settings.candidates)):
            proposals += [(b, word, lp) for word, lp in zip(candidates, logp)]
        features = reader.last_word([beam[b][0] + [word] for b, word, _ in proposals])
        gains = model.feature_gain(features)
        extended = []
        for (b, word, lp), feature, gain in zip(proposals, features, gains):
            words, feats, pred, _, text_logp = beam[b]
            new_pred = pred + _delayed_rows(grid.word_rows[slot], gain, model.delays)
            residual = grid.observed[scored] - new_pred[scored]
            loglik = -0.5 * float((residual**2).sum())
            extended.append((words + [word], feats + [feature], new_pred, loglik + settings.lm_weight * (text_logp + lp), text_logp + lp))
        extended.sort(key=lambda h: -h[3])
        beam, seen = [], set()
        for hypothesis in extended:
            key = tuple(hypothesis[0][-8:])
            if key not in seen:
                seen.add(key)
                beam.append(hypothesis)
            if len(beam) == settings.beam_width:
                break
    best = beam[0]
    return best[0], np.stack(best[1])


def encoding_log_likelihood(grid: StoryGrid, model: ResponseModel, features: np.ndarray) -> float:
    """The beam's brain term for a whole text: Gaussian log-likelihood (up to a constant) of the observed responses
    given the responses the encoding model predicts from the text's word features ``(n_words, hidden)``."""
    prediction = model.baseline(len(grid.row_times))
    for slot, gain in enumerate(model.feature_gain(features)):
        prediction = prediction + _delayed_rows(grid.word_rows[slot], gain, model.delays)
    return -0.5 * float(((grid.observed - prediction) ** 2).sum())


def null_texts(proposer: WordProposer, n_words: int, settings: BeamSearchSettings) -> list[list[str]]:
    """``n_null`` texts for the same slots, each word drawn from the LLM's proposals without brain data."""
    rngs = [np.random.default_rng([settings.seed, k]) for k in range(settings.n_null)]
    texts: list[list[str]] = [[] for _ in rngs]
    for _ in tqdm(range(n_words), desc="null texts", unit="word"):
        for text, rng, (candidates, logp) in zip(texts, rngs, proposer.propose(texts, settings.candidates)):
            p = np.exp(logp - logp.max())
            text.append(candidates[rng.choice(len(candidates), p=p / p.sum())])
    return texts


def window_scores(times: np.ndarray, reference: Sequence[str], decoded: Sequence[str], ref_features: np.ndarray, features: np.ndarray,
                  window_s: float, scorer: TextScorer) -> pd.DataFrame:
    """Scores of ``decoded`` against ``reference`` in consecutive windows of ``window_s`` seconds (same slots)."""
    edges = np.arange(times[0], times[-1] + window_s, window_s)
    rows = []
    for start in edges:
        members = np.flatnonzero((times >= start) & (times < start + window_s))
        if not len(members):
            continue
        ref, hyp = " ".join(reference[i] for i in members), " ".join(decoded[i] for i in members)
        a, b = ref_features[members].mean(0), features[members].mean(0)
        cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
        rows.append({"start_s": float(start), "end_s": float(start + window_s), "reference": ref, "text": hyp,
                     **scorer.score(ref, hyp), "embedding": cosine})
    return pd.DataFrame(rows)


def null_z_and_p(decoded: pd.Series, null: pd.DataFrame, metrics: Mapping[str, str]) -> tuple[dict, dict]:
    """Per metric, z = (decoded − null mean) / null SD and the one-sided rank p = (1 + #{null texts at least as good}) /
    (1 + n_null), both oriented so that better is higher (WER sign-flipped). A null with no spread gives z NaN (logged)."""
    z, p = {}, {}
    for metric, better in metrics.items():
        sign = 1.0 if better == "higher" else -1.0
        gain, spread = sign * (decoded[metric] - null[metric].mean()), float(null[metric].std(ddof=1))
        if not spread > 0:
            log.warning("beam search: every null text scores %s %.4f, so its z is undefined (NaN)", metric, null[metric].iloc[0])
        z[metric] = float(gain / spread) if spread > 0 else float("nan")
        p[metric] = float((1 + (sign * null[metric] >= sign * decoded[metric] - 1e-12).sum()) / (1 + len(null)))
    return z, p


def run_beam_search(responses_h5, words_tsvs: Mapping[str, str | os.PathLike], aligned_h5, layers_tsv,
                    manifests: Mapping[str, str | os.PathLike], *, model_cfg: Mapping, llm_cfg: Mapping, encoding: Mapping,
                    train_stories: Sequence[str], test_stories: Sequence[str], settings: BeamSearchSettings, subject: str,
                    out: Mapping[str, str | os.PathLike]) -> dict:
    """Decode every test story of one subject; writes ``out['texts']`` (windows) and ``out['scores']`` (last)."""
    layer = chosen_layer(layers_tsv)
    model = fit_response_model(aligned_h5, responses_h5, manifests, words_tsvs, layer, train_stories, encoding, settings.voxel_fraction)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lm, tokenizer, _ = load_causal_lm(llm_cfg, device)
    proposer = WordProposer(lm, tokenizer, device, settings.lm_context_words)
    reader = FeatureReader(model_cfg, layer)
    scorer = TextScorer()
    frames, n_words, loglik = [], 0, {}
    for story in test_stories:
        words = read_words(words_tsvs[story]).sort_values("onset", kind="stable")
        grid = story_grid(responses_h5, story, words, model, settings.max_words)
        reference = words["word"].astype(str).str.lower().tolist()[: len(grid.word_times)]
        n_words += len(reference)
        ref_features = reader.all_words(reference)
        decoded, features = beam_decode(grid, model, proposer, reader, settings)
        frames.append(window_scores(grid.word_times, reference, decoded, ref_features, features, settings.window_s, scorer)
                      .assign(story=story, source="brain"))
        loglik["brain"] = loglik.get("brain", 0.0) + encoding_log_likelihood(grid, model, features)
        loglik["heard"] = loglik.get("heard", 0.0) + encoding_log_likelihood(grid, model, ref_features)
        for k, text in enumerate(null_texts(proposer, len(reference), settings)):
            text_features = reader.all_words(text)
            frames.append(window_scores(grid.word_times, reference, text, ref_features, text_features, settings.window_s, scorer)
                          .assign(story=story, source=f"null_{k:02d}"))
            loglik[f"null_{k:02d}"] = loglik.get(f"null_{k:02d}", 0.0) + encoding_log_likelihood(grid, model, text_features)
    table = pd.concat(frames, ignore_index=True)
    metrics = {**{m: METRICS[m] for m in ("bleu1", "rouge1", "meteor", "wer")}, "embedding": "higher"}
    per_text = table.groupby("source")[list(metrics)].mean()
    null = per_text.drop(index="brain")
    z, p = null_z_and_p(per_text.loc["brain"], null, metrics)
    summary = {
        "subject": subject, "layer": layer, "n_voxels": int(len(model.voxels)), "test_stories": list(test_stories),
        "n_words": n_words,
        "decoded": {m: float(per_text.loc["brain", m]) for m in metrics},
        "null_mean": {m: float(null[m].mean()) for m in metrics}, "null_sd": {m: float(null[m].std(ddof=1)) for m in metrics},
        "z": z, "p": p, "n_metrics_z_above_2": int(sum(v > 2 for v in z.values())), "n_null": settings.n_null,
        "encoding_log_likelihood": {"heard": loglik["heard"], "decoded": loglik["brain"],
                                    "null": [loglik[f"null_{k:02d}"] for k in range(settings.n_null)]},
        "noise": model.noise, "settings": asdict(settings), "meteor": scorer.meteor_note,
    }
    write_tsv(out["texts"], table)
    write_json(out["scores"], summary)
    log.info("beam search: z %s; encoding log-likelihood heard %.1f, decoded %.1f, null texts %.1f … %.1f",
             ", ".join(f"{m} {v:+.2f}" for m, v in z.items()), loglik["heard"], loglik["brain"],
             min(summary["encoding_log_likelihood"]["null"]), max(summary["encoding_log_likelihood"]["null"]))
    return summary
