"""Words from text rows that hold several of them, for scripts written without spaces.

A dataset without a word tier (its events or word table give a phrase or a sentence per
row, with that row's onset and offset) sets ``dataset.segmenter``. Each row's text is cut
into words by a maintained morphological analyser — ``fugashi`` (MeCab) with the
``unidic-lite`` dictionary for Japanese — punctuation and symbols dropped, and the row's
time span is shared among its words in proportion to their length in characters (the only
timing a sentence-level annotation supports; words read at a constant rate of characters).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from brainllm.io import InputError

SEGMENTERS = ("none", "fugashi")
NOT_WORDS = ("補助記号", "空白")  # UniDic's first part-of-speech level of punctuation, symbols and spaces


def analyser(name: str):
    """A tokenizer ``text -> list of words`` for ``dataset.segmenter``."""
    if name != "fugashi":
        raise InputError(None, f"dataset.segmenter {name!r} is not one of {', '.join(SEGMENTERS)}.", "use fugashi (Japanese) or none.")
    try:
        import fugashi
        import unidic_lite  # noqa: F401  (the dictionary fugashi finds)
    except ImportError as error:
        raise InputError(None, f"dataset.segmenter is fugashi but {error.name} is not installed.",
                         "pip install fugashi unidic-lite (both are in the project's dependencies).") from error
    tagger = fugashi.Tagger()

    def split(text: str) -> list[str]:
        return [word.surface for word in tagger(text) if word.feature.pos1 not in NOT_WORDS and word.surface.strip()]

    return split


def segment_words(words: pd.DataFrame, name: str, source: str | os.PathLike) -> pd.DataFrame:
    """``words`` (word onset offset, one text row each) with every row cut into its words, times shared by length."""
    split = analyser(name)
    rows = []
    for text, onset, offset in zip(words["word"].astype(str), words["onset"].astype(float), words["offset"].astype(float)):
        pieces = split(text)
        if not pieces:
            continue  # punctuation only
        lengths = np.array([len(piece) for piece in pieces], dtype=float)
        bounds = onset + (offset - onset) * np.concatenate([[0.0], np.cumsum(lengths)]) / lengths.sum()
        rows += [(piece, float(start), float(stop)) for piece, start, stop in zip(pieces, bounds[:-1], bounds[1:])]
    if not rows:
        raise InputError(source, f"no words left after segmenting its text with {name}.", "check the word column and dataset.segmenter.")
    return pd.DataFrame(rows, columns=["word", "onset", "offset"])
