"""Scores of generated text against the words heard, and paired tests over test segments.

Metrics come from maintained libraries: BLEU-1 from sacrebleu (sentence-level, effective
order, brevity penalty included; corpus-level beside it), ROUGE-1 and ROUGE-L F-measures
from rouge-score, the word error rate from jiwer and METEOR from nltk. Both texts are
lower-cased and stripped of punctuation first (:func:`normalise`), so every metric
compares words only, as the ingested transcripts hold them. nltk's METEOR would look
synonyms up in WordNet, whose data is a separate download: the synonym stage is always
skipped (exact and Porter-stem matches only), so METEOR is the same on every machine.

Segments of one story overlap and follow each other in time, so their scores are not
independent: comparisons resample consecutive blocks of segments (block bootstrap for
the confidence interval) and flip the signs of whole blocks (the one-sided p).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# higher is better for every metric but the word error rate
METRICS = {"bleu1": "higher", "rouge1": "higher", "rougeL": "higher", "meteor": "higher", "wer": "lower"}


METEOR_NOTE = "METEOR (nltk) with exact and Porter-stem matches; WordNet synonyms are not used"
_NON_WORD = re.compile(r"[^\w'\-]+")


class _NoSynonyms:
    """Stands in for nltk's WordNet reader: no synonyms, on every machine."""

    @staticmethod
    def synsets(word, *args, **kwargs):
        return []


def normalise(text: str) -> str:
    """Lower case, punctuation (but inner apostrophes and hyphens) replaced by spaces, single spaces."""
    words = (word.strip("'-") for word in _NON_WORD.sub(" ", text.lower()).split())
    return " ".join(word for word in words if word)


class TextScorer:
    """Per-segment BLEU-1, ROUGE-1, ROUGE-L (F), METEOR and WER of hypotheses against references."""

    def __init__(self):
        from rouge_score import rouge_scorer
        from sacrebleu.metrics import BLEU

        self._bleu = BLEU(max_ngram_order=1, effective_order=True)
        self._rouge = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
        self._wordnet, self.meteor_note = _NoSynonyms(), METEOR_NOTE

    def score(self, reference: str, hypothesis: str) -> dict[str, float]:
        """Scores of ``hypothesis`` against ``reference``, both :func:`normalise`-d first."""
        import jiwer
        from nltk.translate.meteor_score import meteor_score

        reference, hypothesis = normalise(reference), normalise(hypothesis)
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

        return BLEU(max_ngram_order=1).corpus_score([normalise(h) for h in hypotheses], [[normalise(r) for r in references]]).score / 100.0


def segment_blocks(n_segments: int, block_segments: int) -> list[np.ndarray]:
    """Consecutive blocks of segment indices (the last may be shorter); at least two."""
    block_segments = max(int(block_segments), 1)
    blocks = [np.arange(start, min(start + block_segments, n_segments)) for start in range(0, n_segments, block_segments)]
    if len(blocks) < 2:
        raise ValueError(f"{n_segments} segments give fewer than 2 blocks of {block_segments}; lower the block length")
    return blocks


def paired_segment_test(gain: np.ndarray, block_segments: int, n_flips: int = 10000, seed: int = 0, ci: float = 0.95) -> dict:
    """Mean of per-segment ``gain`` (method − control, oriented so > 0 = method better) with block statistics.

    ``ci_low``/``ci_high``: the t-interval of a delete-one-block jackknife of the mean (blocks
    − 1 degrees of freedom; a percentile bootstrap is too narrow with the few blocks of one
    test story). ``p``: one-sided block sign-flip p of mean gain > 0, (1 + #{flipped ≥
    observed}) / (1 + n_flips) — valid when, under the null, each block's summed gain is
    symmetric about 0.
    """
    from .metrics import block_mean_jackknife

    gain = np.asarray(gain, dtype=np.float64)
    finite = np.isfinite(gain)
    blocks = segment_blocks(len(gain), block_segments)  # undefined gains count in no block
    sums = np.array([gain[b][finite[b]].sum() for b in blocks])
    jackknife = block_mean_jackknife(sums, [finite[b].sum() for b in blocks], ci)
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_flips, len(blocks)))
    observed = sums.sum()
    return {
        "gain": jackknife["mean"],
        "ci_low": jackknife["ci_low"],
        "ci_high": jackknife["ci_high"],
        "p": float((1 + (signs @ sums >= observed - 1e-12).sum()) / (1 + n_flips)),
        "n_segments": int(finite.sum()),
        "block_segments": int(block_segments),
    }
