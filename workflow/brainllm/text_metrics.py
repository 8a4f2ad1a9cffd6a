"""Scores of generated text against the words heard, and paired tests over test segments.

Metrics come from maintained libraries: BLEU-1 from sacrebleu (sentence-level, effective
order, brevity penalty included; corpus-level beside it), ROUGE-1 and ROUGE-L F-measures
from rouge-score, the word error rate from jiwer and METEOR from nltk. nltk's METEOR
looks synonyms up in WordNet, whose data nltk downloads at run time; offline the
synonym stage is skipped (exact and Porter-stem matches only) and the record says so.

Segments of one story overlap and follow each other in time, so their scores are not
independent: comparisons resample consecutive blocks of segments (block bootstrap for
the confidence interval) and flip the signs of whole blocks (the one-sided p).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# higher is better for every metric but the word error rate
METRICS = {"bleu1": "higher", "rouge1": "higher", "rougeL": "higher", "meteor": "higher", "wer": "lower"}


class _NoSynonyms:
    """Stands in for nltk's WordNet reader when its data is not installed: no synonyms."""

    @staticmethod
    def synsets(word, *args, **kwargs):
        return []


def meteor_wordnet():
    """``(wordnet, note)``: nltk's WordNet when its data loads, else a no-synonym stand-in."""
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("river")
        return wordnet, "METEOR with WordNet synonyms (nltk)"
    except LookupError:
        return _NoSynonyms(), "METEOR without synonym matching: nltk's WordNet data is not installed (exact and stem matches only)"


class TextScorer:
    """Per-segment BLEU-1, ROUGE-1, ROUGE-L (F), METEOR and WER of hypotheses against references."""

    def __init__(self):
        from rouge_score import rouge_scorer
        from sacrebleu.metrics import BLEU

        self._bleu = BLEU(max_ngram_order=1, effective_order=True)
        self._rouge = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
        self._wordnet, self.meteor_note = meteor_wordnet()

    def score(self, reference: str, hypothesis: str) -> dict[str, float]:
        import jiwer
        from nltk.translate.meteor_score import meteor_score

        rouge = self._rouge.score(reference, hypothesis)
        ref_words, hyp_words = reference.split(), hypothesis.split()
        return {
            "bleu1": self._bleu.sentence_score(hypothesis, [reference]).score / 100.0,
            "rouge1": rouge["rouge1"].fmeasure,
            "rougeL": rouge["rougeL"].fmeasure,
            "meteor": float(meteor_score([ref_words], hyp_words, wordnet=self._wordnet)) if ref_words and hyp_words else 0.0,
            "wer": float(jiwer.wer(reference, hypothesis)) if ref_words else float("nan"),
        }

    def corpus_bleu1(self, references: Sequence[str], hypotheses: Sequence[str]) -> float:
        from sacrebleu.metrics import BLEU

        return BLEU(max_ngram_order=1).corpus_score(list(hypotheses), [list(references)]).score / 100.0


def segment_blocks(n_segments: int, block_segments: int) -> list[np.ndarray]:
    """Consecutive blocks of segment indices (the last may be shorter); at least two."""
    block_segments = max(int(block_segments), 1)
    blocks = [np.arange(start, min(start + block_segments, n_segments)) for start in range(0, n_segments, block_segments)]
    if len(blocks) < 2:
        raise ValueError(f"{n_segments} segments give fewer than 2 blocks of {block_segments}; lower the block length")
    return blocks


def paired_segment_test(gain: np.ndarray, block_segments: int, n_boot: int = 1000, n_flips: int = 10000,
                        seed: int = 0, ci: float = 0.95) -> dict:
    """Mean of per-segment ``gain`` (method − control, oriented so > 0 = method better) with block statistics.

    ``ci_low``/``ci_high``: percentile interval of the mean over ``n_boot`` block-bootstrap
    resamples. ``p``: one-sided block sign-flip p of mean gain > 0, (1 + #{flipped ≥ observed}) / (1 + n_flips)
    — valid when, under the null, each block's summed gain is symmetric about 0.
    """
    gain = np.asarray(gain, dtype=np.float64)
    keep = np.isfinite(gain)
    gain = gain[keep]
    blocks = segment_blocks(len(gain), block_segments)
    sums = np.array([gain[b].sum() for b in blocks])
    lengths = np.array([len(b) for b in blocks], dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(blocks), size=(n_boot, len(blocks)))
    boot = sums[draws].sum(1) / lengths[draws].sum(1)
    signs = rng.choice([-1.0, 1.0], size=(n_flips, len(blocks)))
    observed = sums.sum()
    tail = (1.0 - ci) / 2.0
    return {
        "gain": float(gain.mean()),
        "ci_low": float(np.quantile(boot, tail)),
        "ci_high": float(np.quantile(boot, 1.0 - tail)),
        "p": float((1 + (signs @ sums >= observed - 1e-12).sum()) / (1 + n_flips)),
        "n_segments": int(len(gain)),
        "block_segments": int(block_segments),
    }
