"""Whole-vocabulary word classification from brain responses through a contrastive model.

Vocabulary (:func:`build_vocabulary`): the dataset's words plus a general word list of
the stories' language (``wordfreq``'s top-N words; ``decoding.words.vocabulary.language``,
by default ``dataset.language``) and any user word files, normalised (lower case,
surrounding punctuation and symbols of any script removed), sorted and unique. Its text features are the words
read by the same LLM alone (``context_words: 1``), kept in the feature store like a
story (one entry per model and settings, every layer, shared between runs), and by default
mapped into the in-context space by one ridge fitted on the training stories' words
(``decoding.words.embedding``, :func:`vocabulary_features`).

Classification (:func:`classify_words`): each held-out word is assigned the contrastive
pair whose text TRs contain its midpoint (the TR grid of the alignment); that pair's
brain window is embedded by the trained brain encoder and scored against every
vocabulary word's text embedding (its layer features, z-scored over the vocabulary like
the story features are over TRs, through the trained text projector). A softmax with
the learned temperature gives a probability for every vocabulary word. Beside it:

- a frequency-only baseline (the words' ``wordfreq`` frequencies, no brain);
- the brain combined with that prior, log p ∝ β·(brain logits) + log prior, β chosen on
  the validation story by the mean log-probability of the heard words (never on test).

Scores: top-k accuracy, mean percentile rank of the heard word (1 = first, chance 0.5),
macro sensitivity/specificity of the top-1 decision over the classes heard, a one-sided
block-permutation p of the brain's mean percentile rank (brain windows exchanged in
blocks of TRs, which keeps their autocorrelation), and a paired delete-one-block jackknife
of the gain of brain + prior over the prior alone (t-interval and one-sided p).

Ties: every score that ranks the heard word uses mid-ranks — a vocabulary word scored equal
to the heard word counts half below and half above it, as in :func:`metrics.two_way_per_row`.
A predictor that ties every word scores chance, and breaking its ties at random leaves the
percentile rank unchanged in expectation (the wordfreq prior is heavily tied: 30 000 English
words have a few hundred distinct frequencies, so with ties counted against the heard word any
added noise — a brain with no information — raised brain + prior above the prior alone). Top-k
is the same expectation: the chance that the heard word lands in the first k when its ties are
put in random order (:func:`top_k_of_true`). Scores must be finite (NaN or ±inf is an
:class:`~brainllm.io.InputError`, never a silent rank).
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics
from .io import InputError, read_words, require_finite, write_json, write_tsv

log = logging.getLogger(__name__)

__all__ = [
    "WordDecodingSettings",
    "normalise_word",
    "plain_word",
    "word_frequencies",
    "build_vocabulary",
    "write_vocabulary",
    "read_vocabulary",
    "check_tokenizable",
    "word_rows",
    "log_softmax",
    "rank_counts",
    "percentile_of_true",
    "mid_rank_of_true",
    "top_k_of_true",
    "class_scores",
    "choose_prior_weight",
    "classify_words",
]

VOCABULARY_COLUMNS = ("word", "onset", "offset", "frequency", "source")
ENGLISH_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")
# wordfreq cuts these languages' text into words with MeCab or jieba (optional packages) before it looks a word up
SEGMENTED_FREQUENCY_LANGUAGES = ("ja", "ko", "zh")


@dataclass(frozen=True)
class WordDecodingSettings:
    """``decoding.words`` (config/README.md)."""

    wordfreq_top_n: int = 30000
    language: str = "en"
    dataset_words: bool = True
    files: tuple[str, ...] = ()
    embedding: str = "mapped"
    top_k: tuple[int, ...] = (1, 10)
    prior_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
    block_trs: int = 20
    n_permutations: int = 1000
    seed: int = 0
    null: str = "block"  # the brain's p: blocks of block_trs pairs permuted, or "circular" shifts of at least block_trs pairs

    @classmethod
    def from_config(cls, section: Mapping | None, seed: int = 0) -> "WordDecodingSettings":
        section = dict(section or {})
        vocabulary = dict(section.get("vocabulary", {}))
        embedding = str(section.get("embedding", cls.embedding))
        if embedding not in ("alone", "context", "mapped"):
            raise InputError(None, f"decoding.words.embedding is {embedding!r}.", "use alone, context or mapped.")
        return cls(
            wordfreq_top_n=int(vocabulary.get("wordfreq_top_n", cls.wordfreq_top_n)),
            language=str(vocabulary.get("language", cls.language)),
            dataset_words=bool(vocabulary.get("dataset_words", cls.dataset_words)),
            files=tuple(str(path) for path in vocabulary.get("files", ())),
            embedding=embedding,
            top_k=tuple(int(k) for k in section.get("top_k", cls.top_k)),
            prior_weights=tuple(float(b) for b in section.get("prior_weights", cls.prior_weights)),
            block_trs=int(section.get("block_trs", cls.block_trs)),
            n_permutations=int(section.get("n_permutations", cls.n_permutations)),
            seed=int(section.get("seed", seed)),
        )


# ----------------------------------------------------------------------------- vocabulary


def normalise_word(word: str) -> str:
    """Lower case (NFC) without the punctuation and symbols around it (of any script: 「」、。 too); "" when nothing is left."""
    word = unicodedata.normalize("NFC", str(word)).strip().lower()
    keep = lambda ch: unicodedata.category(ch)[0] in "LMN"  # letters, their combining marks (a Hindi word ends in one), numbers  # noqa: E731
    start, end = 0, len(word)
    while start < end and not keep(word[start]):
        start += 1
    while end > start and not keep(word[end - 1]):
        end -= 1
    return word[start:end]


def plain_word(word: str, language: str) -> bool:
    """A general list's entry worth adding: letters (with their combining marks), ' or - only inside, no numbers or
    symbols. English: ASCII letters (its list's other entries are mostly names and stray letters of other scripts)."""
    if language == "en":
        return ENGLISH_WORD.fullmatch(word) is not None
    parts = re.split(r"['-]", word)
    return all(part and unicodedata.category(part[0])[0] == "L" and all(unicodedata.category(ch)[0] in "LM" for ch in part) for part in parts)


def word_frequencies(words: Sequence[str], language: str) -> list[float]:
    """wordfreq's frequency of each word, 0 when it has none; for Japanese, Korean and Chinese the list's own entry
    for the word (wordfreq would first cut it into its own words, with packages the project does not install)."""
    import wordfreq

    if language in SEGMENTED_FREQUENCY_LANGUAGES:
        table = wordfreq.get_frequency_dict(language)
        return [float(table.get(word, 0.0)) for word in words]
    return [wordfreq.word_frequency(word, language) for word in words]


def _read_word_file(path: str | os.PathLike) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as error:
        raise InputError(path, "the vocabulary file does not exist.", "fix decoding.words.vocabulary.files.") from error
    except UnicodeDecodeError as error:
        raise InputError(path, f"the vocabulary file is not UTF-8 ({error}).", "save it as UTF-8, one word per line.") from error
    words = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        word = normalise_word(line)
        if not word or any(ch.isspace() for ch in word):
            raise InputError(path, f"line {number} ({line!r}) is not one word.", "list one word per line in decoding.words.vocabulary.files.")
        words.append(word)
    return words


def build_vocabulary(words_tsvs: Mapping[str, str | os.PathLike], settings: WordDecodingSettings) -> pd.DataFrame:
    """The vocabulary table: ``word``, ``onset``/``offset`` (its position, for the feature store), ``frequency``, ``source``.

    ``source`` is where a word first came from: ``dataset``, a word file's path, or ``wordfreq``.
    ``frequency`` is wordfreq's frequency of the word (0 when it has none).
    """
    import wordfreq

    if settings.language not in wordfreq.available_languages():  # its list and the words' frequencies
        raise InputError(None, f"decoding.words.vocabulary.language {settings.language!r} has no wordfreq word list.",
                         f"set it (or dataset.language) to one of {', '.join(sorted(wordfreq.available_languages()))}.")
    sources: dict[str, str] = {}
    if settings.dataset_words:
        for story, path in sorted(words_tsvs.items()):
            for word in read_words(path)["word"]:
                sources.setdefault(normalise_word(word), "dataset")
    for path in settings.files:
        for word in _read_word_file(path):
            sources.setdefault(word, os.fspath(path))
    if settings.wordfreq_top_n > 0:
        listed = [w for w in wordfreq.top_n_list(settings.language, settings.wordfreq_top_n * 2) if plain_word(w, settings.language)]
        for word in listed[: settings.wordfreq_top_n]:
            sources.setdefault(word, "wordfreq")
    sources.pop("", None)
    if len(sources) < 2:
        raise InputError(None, f"the vocabulary has {len(sources)} word(s).", "enable decoding.words.vocabulary.dataset_words, wordfreq_top_n or files.")
    words = sorted(sources)
    return pd.DataFrame({
        "word": words,
        "onset": np.arange(len(words), dtype=float),
        "offset": np.arange(len(words), dtype=float) + 0.5,
        "frequency": word_frequencies(words, settings.language),
        "source": [sources[w] for w in words],
    })


def write_vocabulary(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    write_tsv(path, frame[list(VOCABULARY_COLUMNS)])


def read_vocabulary(path: str | os.PathLike) -> pd.DataFrame:
    frame = read_words(path)
    missing = set(VOCABULARY_COLUMNS) - set(frame.columns)
    if missing:
        raise InputError(path, f"missing columns {sorted(missing)}.", "re-run the decoding_vocabulary rule.")
    return frame


def check_tokenizable(tokenizer, vocabulary: pd.DataFrame, source: str | os.PathLike) -> None:
    """Refuse vocabulary words the tokenizer turns into nothing or into unknown tokens only."""
    encoded = tokenizer(vocabulary["word"].tolist(), add_special_tokens=False)["input_ids"]
    unknown = getattr(tokenizer, "unk_token_id", None)
    for index, ids in enumerate(encoded):
        if not ids or (unknown is not None and all(i == unknown for i in ids)):
            word, origin = vocabulary["word"].iloc[index], vocabulary["source"].iloc[index]
            raise InputError(
                source, f"the tokenizer cannot encode vocabulary word {word!r} (row {index + 1}, from {origin}).",
                f"remove it from {origin}" + ("" if origin in ("dataset", "wordfreq") else " (decoding.words.vocabulary.files)")
                + " or use a model whose tokenizer covers it.",
            )


# ----------------------------------------------------------------------------- scoring


def word_tr_rows(words: pd.DataFrame, tr: float, trim_start: int) -> np.ndarray:
    """Per word, the row of the trimmed TR grid holding its midpoint: TR k of the raw grid spans [k·TR, (k+1)·TR),
    row = k − trim_start (negative or past the end for words outside the kept TRs)."""
    midpoints = (words["onset"].to_numpy(float) + words["offset"].to_numpy(float)) / 2
    return np.floor(midpoints / tr).astype(np.int64) - int(trim_start)


def word_rows(words: pd.DataFrame, tr: float, trim_start: int, pair_starts: np.ndarray, segment_trs: int) -> np.ndarray:
    """Per word, the index of the pair whose text TRs hold its midpoint (:func:`word_tr_rows`), or −1 when none does."""
    rows = word_tr_rows(words, tr, trim_start)
    pair = np.full(len(rows), -1, dtype=np.int64)
    for index, start in enumerate(np.asarray(pair_starts, dtype=np.int64)):
        pair[(rows >= start) & (rows < start + segment_trs) & (pair < 0)] = index
    return pair


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of ``(n, n_classes)`` in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


NON_FINITE_FIX = "check the brain and text embeddings for NaN or infinite values (a zero-norm row, a failed fit) and the logit scale."


def rank_counts(scores: np.ndarray, true_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``scores`` ``(n, n_classes)``, how many other classes score strictly above, tied with
    and strictly below class ``true_index[row]``; an :class:`InputError` when any score is not finite."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (n, n_classes ≥ 2), got shape {scores.shape}")
    require_finite(scores, "the word scores", fix=NON_FINITE_FIX)
    true_scores = scores[np.arange(len(scores)), np.asarray(true_index)][:, None]
    above = (scores > true_scores).sum(1)
    tied = (scores == true_scores).sum(1) - 1  # less the true class itself
    return above, tied, scores.shape[1] - 1 - above - tied


def percentile_of_true(scores: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """Per row, the share of the other classes scored below class ``true_index[row]``, ties counting half:
    (#below + ½ #tied) / (n_classes − 1); 1 = first, chance 0.5, and 0.5 when every class ties."""
    above, tied, below = rank_counts(scores, true_index)
    return _percentile(above, tied, below)


def mid_rank_of_true(scores: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """Per row, the mid-rank of class ``true_index[row]`` (1 = best): 1 + #above + ½ #tied, the mean of the ranks its
    tie group spans; ``percentile_of_true = (n_classes − rank) / (n_classes − 1)``."""
    above, tied, _ = rank_counts(scores, true_index)
    return _mid_rank(above, tied)


def top_k_of_true(scores: np.ndarray, true_index: np.ndarray, k: int) -> np.ndarray:
    """Per row, the chance that class ``true_index[row]`` is among the first ``k`` when its ties are ordered at random:
    1 with fewer than k − #tied classes above it … 0 with k or more above, clip((k − #above) / (#tied + 1), 0, 1) in between
    (a predictor that ties every class scores k / n_classes, chance; without ties, the plain top-k hit)."""
    above, tied, _ = rank_counts(scores, true_index)
    return _top_k(above, tied, k)


def _percentile(above: np.ndarray, tied: np.ndarray, below: np.ndarray) -> np.ndarray:
    return (below + 0.5 * tied) / (above + tied + below)


def _mid_rank(above: np.ndarray, tied: np.ndarray) -> np.ndarray:
    return 1.0 + above + 0.5 * tied


def _top_k(above: np.ndarray, tied: np.ndarray, k: int) -> np.ndarray:
    return np.clip((int(k) - above) / (tied + 1.0), 0.0, 1.0)


def _ranks(scores: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """Mid-rank of the true class per row (1 = best; ties count half: :func:`mid_rank_of_true`)."""
    return mid_rank_of_true(scores, true_index)


def class_scores(log_probability: np.ndarray, true_index: np.ndarray, top_k: Sequence[int]) -> dict:
    """Top-k, mean percentile rank, median rank, mean log2-probability and macro sensitivity/specificity of ``(n_words, n_vocab)``.

    Ties count half (mid-ranks: :func:`percentile_of_true`, :func:`mid_rank_of_true`); top-k is the expected hit rate
    when ties are ordered at random (:func:`top_k_of_true`). The top-1 decision behind sensitivity/specificity is the
    first of the best-scored words (in vocabulary, i.e. alphabetical, order) when several tie.
    """
    log_probability = np.asarray(log_probability, dtype=np.float64)
    above, tied, below = rank_counts(log_probability, true_index)  # and checks the scores are finite
    ranks = _mid_rank(above, tied)
    predicted = np.argmax(log_probability, axis=1)
    decision = metrics.sensitivity_specificity(true_index, predicted, labels=np.unique(true_index))
    scores = {f"top{k}": float(_top_k(above, tied, k).mean()) for k in top_k}
    scores.update(
        mean_percentile_rank=float(_percentile(above, tied, below).mean()),
        median_rank=float(np.median(ranks)),
        mean_log2_probability=float(log_probability[np.arange(len(ranks)), true_index].mean() / np.log(2)),
        sensitivity=decision["sensitivity_macro"],
        specificity=decision["specificity_macro"],
    )
    return scores


def choose_prior_weight(brain_logits: np.ndarray, log_prior: np.ndarray, true_index: np.ndarray, weights: Sequence[float]) -> tuple[float, list[float]]:
    """The β of log p ∝ β·brain_logits + log_prior with the highest mean log-probability of the true words."""
    fits = [float(log_softmax(w * brain_logits + log_prior)[np.arange(len(true_index)), true_index].mean()) for w in weights]
    return float(weights[int(np.argmax(fits))]), fits


def circular_shifts(n_pairs: int, min_shift: int, n_permutations: int, seed: int) -> np.ndarray:
    """``(n, n_pairs)`` orders rotating the pairs by every shift in [min_shift, n_pairs − min_shift] (a random
    ``n_permutations`` of them when there are more)."""
    shifts = np.arange(min_shift, n_pairs - min_shift + 1)
    if len(shifts) == 0:
        raise InputError(None, f"{n_pairs} decoded rows are too few for circular shifts of at least {min_shift}.",
                         "add test stories or shorten the permutation blocks.")
    if len(shifts) > n_permutations:
        shifts = np.sort(np.random.default_rng(seed).choice(shifts, n_permutations, replace=False))
    return (np.arange(n_pairs)[None, :] - shifts[:, None]) % n_pairs


def _permutation_p(similarity: np.ndarray, pair_index: np.ndarray, true_index: np.ndarray, block_trs: int, n_permutations: int, seed: int,
                   null: str = "block") -> float:
    """One-sided p of the mean percentile rank (:func:`percentile_of_true`, ties counting half) when brain windows
    change places in blocks of ``block_trs`` pairs (``null`` ``block``), or are rotated against the words by at
    least that many pairs (``circular``: every slow trend of either side is kept)."""
    similarity = np.asarray(similarity, dtype=np.float64)
    require_finite(similarity, "the brain-text similarities", fix=NON_FINITE_FIX)
    n_pairs, n_vocab = similarity.shape
    ordered = np.sort(similarity, axis=1)
    # below[p, i] / tied[p, i]: other vocabulary words scored strictly below / equal to word i's true word by pair p
    below = np.stack([np.searchsorted(ordered[p], similarity[p, true_index], side="left") for p in range(n_pairs)])
    tied = np.stack([np.searchsorted(ordered[p], similarity[p, true_index], side="right") for p in range(n_pairs)]) - below - 1
    percentile = (below + 0.5 * tied) / (n_vocab - 1)
    observed = percentile[pair_index, np.arange(len(true_index))].mean()
    if null == "circular":
        orders = circular_shifts(n_pairs, block_trs, n_permutations, seed)
    else:
        orders = metrics.block_permutations(n_pairs, block_trs, n_permutations, seed)
    values = percentile[orders[:, pair_index], np.arange(len(true_index))[None, :]].mean(1)
    return float((1 + np.sum(values >= observed - 1e-12)) / (1 + len(orders)))


def _gain_jackknife(gain: np.ndarray, pair_index: np.ndarray, block_trs: int) -> dict:
    """Mean per-word gain with a delete-one-block jackknife over pairs (a word leaves with its block of ``block_trs``
    pairs): the 95 % t-interval and the one-sided p (H1: gain > 0), :func:`brainllm.metrics.block_mean_jackknife`."""
    block = np.asarray(pair_index) // block_trs
    return metrics.block_mean_jackknife(np.bincount(block, weights=gain), np.bincount(block))


@dataclass
class SplitEmbeddings:
    """Brain embeddings of one split's pairs and the words they carry."""

    brain: np.ndarray  # (n_pairs, shared_dim), unit norm
    words: pd.DataFrame  # story, word, onset, offset, pair (−1 = no pair), vocabulary index (−1 = not in the vocabulary)


def _scores(split: SplitEmbeddings, text: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosine of every pair with every vocabulary word, and the scored words' pairs and vocabulary indices."""
    kept = split.words[(split.words["pair"] >= 0) & (split.words["vocabulary_index"] >= 0)]
    similarity = split.brain @ text.T  # (n_pairs, n_vocab) cosine
    return similarity, kept["pair"].to_numpy(), kept["vocabulary_index"].to_numpy()


def classify_words(
    splits: Mapping[str, SplitEmbeddings],
    vocabulary: pd.DataFrame,
    text_embeddings: np.ndarray,
    scale: float,
    settings: WordDecodingSettings,
    out: Mapping[str, str | os.PathLike],
    mode: str = "frozen",
    record: Mapping | None = None,
) -> dict:
    """Score the test words against the whole vocabulary; write ``out['words']`` (per word),
    ``out['vocabulary']`` (the alphabetical mean-probability table) and ``out['summary']`` (JSON).

    ``splits`` holds ``validation`` (to choose β) and ``test``; ``text_embeddings``
    ``(n_vocab, shared_dim)`` are unit norm; ``scale`` is the learned logit scale (1 / temperature);
    ``mode`` (the run's: frozen, lora or eeg) and ``record`` (further entries) are recorded in the summary.
    Ranks are mid-ranks (ties count half, :func:`class_scores`): the per-word ``*_rank`` columns can end in .5, and a
    brain that carries no information leaves brain + frequency at the frequency prior's percentile in expectation.
    Non-finite similarities, frequencies or scale are an :class:`InputError`.
    """
    n_vocab = len(vocabulary)
    frequency = vocabulary["frequency"].to_numpy(float)
    if not np.isfinite(frequency).all() or (frequency < 0).any():
        bad = vocabulary["word"].to_numpy()[~(np.isfinite(frequency) & (frequency >= 0))]
        raise InputError(None, f"{len(bad)} vocabulary word(s) have a frequency that is not a finite number ≥ 0 (e.g. {bad[0]!r}).",
                         "re-run the decoding_vocabulary rule.")
    if not np.isfinite(scale):
        raise InputError(None, f"the logit scale is {scale}.", "check the trained model (its temperature) or the ridge decoder's fit.")
    floor = frequency[frequency > 0].min() if (frequency > 0).any() else 1.0
    prior = np.where(frequency > 0, frequency, floor)  # words the list does not know get its rarest frequency
    log_prior = np.log(prior / prior.sum())

    similarity, pair, true = _scores(splits["validation"], text_embeddings)
    require_finite(similarity, "the validation brain-text similarities", fix=NON_FINITE_FIX)
    beta, fits = choose_prior_weight(scale * similarity[pair], log_prior[None, :], true, settings.prior_weights)
    log.info("validation: β = %g (mean log-probability of the heard words %s over β %s)", beta, [round(f, 3) for f in fits], list(settings.prior_weights))

    test = splits["test"]
    similarity, pair, true = _scores(test, text_embeddings)
    require_finite(similarity, "the test brain-text similarities", fix=NON_FINITE_FIX)
    if len(true) == 0:
        raise InputError(None, "no held-out word falls inside a contrastive pair and the vocabulary.", "check the test stories' words.tsv and the vocabulary.")
    brain = log_softmax(scale * similarity)  # (n_pairs, n_vocab): every vocabulary word's probability per brain window
    combined = log_softmax(beta * scale * similarity + log_prior[None, :])
    per_word = {"brain": brain[pair], "frequency": np.broadcast_to(log_prior, (len(true), n_vocab)), "brain_and_frequency": combined[pair]}
    scores = {name: class_scores(values, true, settings.top_k) for name, values in per_word.items()}
    scores["brain"]["p"] = _permutation_p(similarity, pair, true, settings.block_trs, settings.n_permutations, settings.seed, settings.null)
    chance = {f"top{k}": k / n_vocab for k in settings.top_k}
    chance.update(mean_percentile_rank=0.5, sensitivity=1 / n_vocab, specificity=1 - 1 / n_vocab, mean_log2_probability=float(np.log2(1 / n_vocab)))
    percentile = {name: percentile_of_true(values, true) for name, values in per_word.items()}
    gain = _gain_jackknife(percentile["brain_and_frequency"] - percentile["frequency"], pair, settings.block_trs)

    kept = test.words[(test.words["pair"] >= 0) & (test.words["vocabulary_index"] >= 0)].reset_index(drop=True)
    vocab_words = vocabulary["word"].to_numpy()
    top10 = np.argsort(-brain[pair], axis=1, kind="stable")[:, :10]
    table = kept[["story", "word", "onset", "offset", "pair"]].copy()
    for name in per_word:
        table[f"{name}_rank"] = _ranks(per_word[name], true)
        table[f"{name}_percentile_rank"] = percentile[name]
        table[f"{name}_probability"] = np.exp(per_word[name][np.arange(len(true)), true])
    table["brain_top10"] = [" ".join(vocab_words[row]) for row in top10]
    write_tsv(out["words"], table)

    heard = np.bincount(true, minlength=n_vocab)
    write_tsv(out["vocabulary"], pd.DataFrame({
        "word": vocab_words,
        "probability": np.exp(brain[pair]).mean(0),
        "brain_and_frequency_probability": np.exp(combined[pair]).mean(0),
        "frequency_probability": np.exp(log_prior),
        "n_heard": heard,
        "source": vocabulary["source"].to_numpy(),
    }))

    words = test.words
    summary = {
        "n_vocabulary": n_vocab,
        "n_test_words": int(len(words)),
        "n_scored": int(len(true)),
        "n_outside_pairs": int((words["pair"] < 0).sum()),
        "n_out_of_vocabulary": int((words["vocabulary_index"] < 0).sum()),
        "temperature": 1.0 / scale,
        "prior_weight": beta,
        "prior_weight_fits": dict(zip([str(b) for b in settings.prior_weights], fits)),
        **scores,
        "chance": chance,
        "gain_over_frequency": gain,
        "embedding": settings.embedding,
        "null": {"method": "circular_shift" if settings.null == "circular" else "block_permutation", "pairs": settings.block_trs},
        "mode": mode,
        **dict(record or {}),
    }
    write_json(out["summary"], summary)
    log.info(
        "test: %d words among %d vocabulary words — mean percentile rank brain %.3f (p %.3g), frequency %.3f, brain + frequency %.3f",
        len(true), n_vocab, scores["brain"]["mean_percentile_rank"], scores["brain"]["p"], scores["frequency"]["mean_percentile_rank"],
        scores["brain_and_frequency"]["mean_percentile_rank"],
    )
    return summary


# ----------------------------------------------------------------------------- ridge decoder

SCALES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)  # candidate 1 / temperature of the cosine softmax of a ridge decoder


def unit_rows(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.divide(X, norms, out=np.zeros_like(X), where=norms > 0)


def choose_scale(brain: np.ndarray, text: np.ndarray, true_index: np.ndarray, scales: Sequence[float] = SCALES) -> tuple[float, list[float]]:
    """The softmax scale (1 / temperature) of cosines with the highest mean log-probability of the heard words."""
    similarity = brain @ text.T
    fits = [float(log_softmax(scale * similarity)[np.arange(len(true_index)), true_index].mean()) for scale in scales]
    return float(scales[int(np.argmax(fits))]), fits


def decode_words_by_ridge(brain: Mapping[str, np.ndarray], tables: Mapping[str, pd.DataFrame], split: Mapping[str, Sequence[str]],
                          text: np.ndarray, vocabulary: pd.DataFrame, alphas: Sequence[float], settings: WordDecodingSettings,
                          out: Mapping[str, str | os.PathLike], mode: str, record: Mapping | None = None) -> dict:
    """Every vocabulary word's probability for each held-out word from its brain row, by a ridge decoder.

    ``brain[story]``: ``(n_rows, n_features)``, one row per decodable word, z-scored over the story;
    ``tables[story]``: the story's words with ``pair`` (the word's row in ``brain[story]``, −1 for
    none, rows in order) and ``vocabulary_index`` (−1 outside the vocabulary); ``text``: the
    vocabulary's features ``(n_vocab, hidden)``. A ridge maps rows to the heard words' features
    (centred on the training words' mean), one α per feature dimension by leave-one-story-out CV
    over ``split['train']``; decoded rows are scored against every vocabulary word by cosine, the
    softmax scale (:func:`choose_scale`) and the frequency prior's weight are chosen on
    ``split['validation']``, and the test words are scored by :func:`classify_words`.
    """
    from .eeg import cross_validated_alphas, ridge_weights, story_gram

    def decodable(story):
        table = tables[story]
        return table.loc[table["pair"] >= 0].sort_values("pair")["vocabulary_index"].to_numpy()

    fitted = {story: decodable(story) for story in split["train"]}
    mean = np.vstack([text[index[index >= 0]] for index in fitted.values()]).mean(axis=0)
    centred = text - mean
    grams = {story: story_gram(brain[story][index >= 0], centred[index[index >= 0]]) for story, index in fitted.items()}
    chosen_alphas, r_validation = cross_validated_alphas(grams, split["train"], alphas)
    weights = ridge_weights([grams[story] for story in split["train"]], chosen_alphas)
    text_unit = unit_rows(centred)

    def embeddings(name: str) -> SplitEmbeddings:
        frames, decoded, offset = [], [], 0
        for story in split[name]:
            frame = tables[story].copy()
            frame["pair"] = np.where(frame["pair"] >= 0, frame["pair"] + offset, -1)
            decoded.append(unit_rows(brain[story] @ weights))
            offset += len(brain[story])
            frames.append(frame)
        return SplitEmbeddings(brain=np.vstack(decoded), words=pd.concat(frames, ignore_index=True))

    splits = {name: embeddings(name) for name in ("validation", "test")}
    heard = splits["validation"].words
    heard = heard[(heard["pair"] >= 0) & (heard["vocabulary_index"] >= 0)]
    scale, fits = choose_scale(splits["validation"].brain[heard["pair"].to_numpy()], text_unit, heard["vocabulary_index"].to_numpy())
    log.info("ridge decoder α median %.3g, mean LOSO r %.3f over %d feature dimensions; softmax scale %g on %s",
             np.median(chosen_alphas), r_validation.mean(), len(chosen_alphas), scale, list(split["validation"]))
    record = {"split": {name: list(stories) for name, stories in split.items()},
              "decoder": {"mean_validation_r": float(r_validation.mean()), "median_alpha": float(np.median(chosen_alphas))},
              "scale_fits": dict(zip([str(s) for s in SCALES], fits)), **dict(record or {})}
    return classify_words(splits, vocabulary, text_unit, scale, settings, out, mode=mode, record=record)


def run_fmri_word_decoding(responses_h5: str | os.PathLike, words_tsvs: Mapping[str, str | os.PathLike], vocabulary_tsv: str | os.PathLike,
                           vocabulary_manifest: str | os.PathLike, layers_tsv: str | os.PathLike, scores_tsvs: Mapping[int, str | os.PathLike],
                           train_stories: Sequence[str], test_stories: Sequence[str], delays: Sequence[int], alphas: Sequence[float],
                           voxel_fraction: float, block_trs: int, settings: WordDecodingSettings, out: Mapping[str, str | os.PathLike],
                           train_entries: Mapping[str, str | os.PathLike] | None = None, validation_story: str | None = None) -> dict:
    """Every vocabulary word's probability for each held-out word from the fMRI responses that follow it, by a ridge decoder.

    A word's row: the responses, at the TRs ``delays`` after the TR holding the word's midpoint, of
    the encoding model's best voxels — the top ``voxel_fraction`` by validation r at the layer
    chosen on validation r (``layers_tsv``, ``scores_tsvs[layer]``), never by test r; the words of
    one TR have equal rows. The text side is the vocabulary's features at that layer. Decoding and
    scoring: :func:`decode_words_by_ridge` (validation story: the last training story unless
    ``validation_story``). The brain's p rotates the decoded rows against the words by at least as
    many words as ``block_trs`` TRs of the test stories carry (slow trends of the responses and of
    the story's words, which block permutations would break, stay in the null); the jackknife's
    blocks hold that many words.
    """
    from .align import zscore_columns
    from .contrastive_settings import story_split
    from .group import chosen_layer
    from .inference import select_voxels
    from .io import open_h5

    split = story_split(train_stories, test_stories, validation_story, "decoding.words")
    layer = chosen_layer(layers_tsv)
    voxels = select_voxels(scores_tsvs[layer], voxel_fraction)
    vocabulary = read_vocabulary(vocabulary_tsv)
    text = vocabulary_features(vocabulary_manifest, vocabulary_tsv, layer, settings.embedding, train_entries)
    index = {word: i for i, word in enumerate(vocabulary["word"])}
    delays = [int(d) for d in delays]
    brain, tables, test_trs = {}, {}, 0
    with open_h5(responses_h5) as h5:
        for story in [story for stories in split.values() for story in stories]:
            if story not in h5 or "data" not in h5[story]:
                raise InputError(responses_h5, f"no responses for story {story!r}.", "check dataset.train_stories/test_stories against the ingested runs.")
            group = h5[story]
            data = group["data"][()][:, voxels].astype(np.float64)
            words = read_words(words_tsvs[story])
            rows = word_tr_rows(words, float(group.attrs["tr"]), int(group.attrs["trim_start"]))
            kept = (rows + min(delays) >= 0) & (rows + max(delays) < len(data))
            table = words[["word", "onset", "offset"]].assign(story=story)
            table["vocabulary_index"] = [index.get(normalise_word(w), -1) for w in table["word"]]
            table["pair"] = np.where(kept, np.cumsum(kept) - 1, -1)  # the word's row among the story's decoded rows
            brain[story] = zscore_columns(np.hstack([data[rows[kept] + d] for d in delays]))
            tables[story] = table
            test_trs += len(data) if story in split["test"] else 0
    n_test_words = sum(int((tables[story]["pair"] >= 0).sum()) for story in split["test"])
    block_words = max(1, int(np.ceil(block_trs * n_test_words / max(test_trs, 1))))
    log.info("layer %d: %d voxels (top %.0f %% by validation r) × delays %s; blocks of %d words (%d TRs)", layer, len(voxels),
             100 * voxel_fraction, delays, block_words, block_trs)
    record = {"layer": layer, "n_voxels": int(len(voxels)), "voxel_fraction": float(voxel_fraction),
              "voxel_selection": "validation r of the encoding model at its layer chosen on validation r", "delays": delays,
              "block_words": block_words, "block_trs": int(block_trs)}
    return decode_words_by_ridge(brain, tables, split, text, vocabulary, alphas, replace(settings, block_trs=block_words, null="circular"),
                                 out, mode="ridge", record=record)


# ----------------------------------------------------------------------------- vocabulary features


def vocabulary_model_config(model_cfg: Mapping) -> dict:
    """The model's settings for reading each vocabulary word alone (one word per window).

    A one-word window is about ``context_words`` times shorter than the model's own, so
    batches hold that many times more windows (a few times the tokens of a story batch at
    most, for the longest words; on a GPU an out-of-memory batch is halved and retried; the
    batch size is not part of the store key).
    """
    from .models import model_settings

    settings = model_settings(dict(model_cfg))
    batch_size = int(settings["batch_size"]) * max(1, int(settings["context_words"]))
    return {**dict(model_cfg), "context": "per-word", "context_words": 1, "batch_size": batch_size}


def store_vocabulary(model_name: str, model_cfg: Mapping, vocabulary_tsv: str | os.PathLike, store_dir: str | os.PathLike,
                     manifest: str | os.PathLike, log: logging.Logger = log) -> dict:
    """The feature-store entry of the vocabulary read alone by the model (reused or extracted once) and its manifest."""
    from . import store
    from .features import extract_story
    from .models import load_model

    cfg = vocabulary_model_config(model_cfg)
    vocabulary = read_vocabulary(vocabulary_tsv)

    def compute(path: Path) -> None:
        loaded = load_model(cfg)
        check_tokenizable(loaded[1], vocabulary, vocabulary_tsv)
        log.info("extracting %d vocabulary words into %s", len(vocabulary), path)
        extract_story(cfg, vocabulary_tsv, path, log=log, loaded=loaded, story="vocabulary")

    path, metadata, reused = store.obtain_entry(store_dir, cfg, "vocabulary", vocabulary_tsv, compute, log=log)
    return store.write_manifest(manifest, path, metadata, model_name, reused)


MAPPED_ALPHAS = np.logspace(-2, 6, 17)  # ridge α grid of the single-word → in-context map (``embedding: mapped``)


def in_context_means(vocabulary: pd.DataFrame, layer: int, train_entries: Mapping[str, str | os.PathLike] | None,
                     hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """Each vocabulary word's mean in-context state at ``layer`` over the training stories ``(n_vocab, hidden)``, and which words occur."""
    from .store import read_entry

    index = {word: i for i, word in enumerate(vocabulary["word"])}
    sums, counts = np.zeros((len(vocabulary), hidden)), np.zeros(len(vocabulary))
    for story, entry_path in sorted((train_entries or {}).items()):
        entry = read_entry(entry_path, layers=[layer])
        for word, state in zip(entry.words, entry.layers[layer]):
            i = index.get(normalise_word(word))
            if i is not None:
                sums[i] += state
                counts[i] += 1
    heard = counts > 0
    sums[heard] /= counts[heard, None]
    return sums, heard


def vocabulary_features(vocabulary_manifest: str | os.PathLike, vocabulary_tsv: str | os.PathLike, layer: int, embedding: str,
                        train_entries: Mapping[str, str | os.PathLike] | None = None) -> np.ndarray:
    """``(n_vocab, hidden)`` text features of the vocabulary at ``layer``, z-scored per column over the vocabulary.

    ``embedding: alone`` — each word read alone; ``context`` — words heard in the training
    stories take the mean of their in-context states there (``train_entries``: story →
    feature-store entry or manifest), the others stay alone; ``mapped`` — every word's alone
    state through one linear map to the in-context space, a ridge (intercept, α by
    leave-one-out over ``MAPPED_ALPHAS``) fitted on the words heard in the training stories
    (alone state → mean in-context state), so heard and unheard words are treated alike.
    """
    from sklearn.linear_model import RidgeCV

    from .align import zscore_columns
    from .store import read_entry

    vocabulary = read_vocabulary(vocabulary_tsv)
    features = read_entry(vocabulary_manifest, words_tsv=vocabulary_tsv, layers=[layer]).layers[layer].astype(np.float64)
    if embedding in ("context", "mapped"):
        if not train_entries:
            raise InputError(vocabulary_tsv, f"decoding.words.embedding is {embedding}, which needs the training stories' features; none were given.",
                             "pass the training stories' feature manifests, or use embedding: alone.")
        means, heard = in_context_means(vocabulary, layer, train_entries, features.shape[1])
        if embedding == "context":
            features[heard] = means[heard]
            log.info("context embedding: %d of %d vocabulary words from their training-story contexts", heard.sum(), len(features))
        else:
            if heard.sum() < 2:
                raise InputError(vocabulary_tsv, f"decoding.words.embedding is mapped, but only {int(heard.sum())} vocabulary words "
                                 "occur in the training stories.", "use embedding: alone, or check the vocabulary and the stories.")
            fit = RidgeCV(alphas=MAPPED_ALPHAS).fit(features[heard], means[heard])
            log.info("mapped embedding: ridge (α %g, R² on its %d training words %.3f) from single-word to in-context states, "
                     "applied to all %d vocabulary words", fit.alpha_, heard.sum(), fit.score(features[heard], means[heard]), len(features))
            features = fit.predict(features)
    return zscore_columns(features)
