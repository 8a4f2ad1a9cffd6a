"""Annotation tables for label decoding (``decoding.labels.source``).

Every source yields the table :func:`brainllm.label_decoding.read_annotations` reads:
``story``, ``onset``, ``duration`` (scan seconds) and one column per target.

- ``table``: the user's own table (nothing to build).
- ``events``: target columns of the subject's BIDS ``events.tsv`` files (the first run of
  each story). Rows with a value in any target column are the annotations (word rows or
  segment rows alike); consecutive rows with equal values less than one TR apart are merged
  into one segment, and a gap shorter than one TR between two segments is closed, so
  word-level tags become contiguous segments.
- ``lexicon``: labels derived from the words heard, for data without annotations. Each story
  is cut into windows of ``segment_s`` seconds of speech; a window's ``emotion`` is the basic
  emotion (Plutchik's eight) with the most words in the NRC Emotion Lexicon (Mohammad &
  Turney 2013, as packaged by NRCLex), ``mixed`` on a tie and ``none`` without any; its
  ``valence`` is the mean VADER valence (Hutto & Gilbert 2014, rescaled to −1 … 1) of its
  words in the VADER lexicon, empty without any; and one column per basic emotion, the share
  of its words the NRC lexicon lists under that emotion.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .io import InputError, read_words, write_json, write_tsv

log = logging.getLogger(__name__)

__all__ = ["SOURCES", "BASIC_EMOTIONS", "LEXICON_TARGETS", "LEXICON_COLUMNS", "segments_from_events", "events_annotations",
           "lexicon_labels", "lexicon_annotations", "write_annotations"]

SOURCES = ("table", "events", "lexicon")
BASIC_EMOTIONS = ("anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust")
LEXICON_TARGETS = {"emotion": "categorical", "valence": "continuous"}  # the default targets of source lexicon
LEXICON_COLUMNS = {**LEXICON_TARGETS, **{emotion: "continuous" for emotion in BASIC_EMOTIONS}}  # every one it writes
VADER_RANGE = 4.0  # VADER valences lie in −4 … 4


def _read_events(path: str | os.PathLike, targets: Sequence[str]) -> pd.DataFrame:
    try:
        events = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
    except FileNotFoundError:
        raise InputError(path, "events file not found.", "add the run's _events.tsv.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(path, f"cannot be read as a UTF-8 TSV ({error}).", "write it tab-separated with a header row.") from None
    missing = [column for column in ("onset", "duration", *targets) if column not in events.columns]
    if missing:
        raise InputError(path, f"events file has no column(s) {missing} (columns: {', '.join(events.columns)}).",
                         "add the annotation columns named in decoding.labels.targets (n/a where a row has no label).")
    for column in ("onset", "duration"):
        values = pd.to_numeric(events[column], errors="coerce")
        labelled = events[list(targets)].notna().any(axis=1)
        bad = labelled & (values.isna() | ((values <= 0) if column == "duration" else False))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(path, f"row {row + 2} (line of the file), column {column}: {events[column].iloc[row]!r} is not a valid time "
                             "for an annotated row.", "give annotated rows a numeric onset and a positive duration in seconds.")
        events[column] = values
    return events


def segments_from_events(events: pd.DataFrame, targets: Sequence[str], tr: float) -> pd.DataFrame:
    """Annotated rows of one events table → segments (``onset``, ``duration`` + targets), merged as in the module doc."""
    rows = events[events[list(targets)].notna().any(axis=1)].sort_values("onset", kind="stable")
    segments: list[dict] = []
    for onset, offset, values in zip(rows["onset"], rows["onset"] + rows["duration"], rows[list(targets)].itertuples(index=False)):
        key = tuple("" if pd.isna(v) else str(v) for v in values)
        if segments and onset - segments[-1]["offset"] < tr:
            if segments[-1]["key"] == key:
                segments[-1]["offset"] = max(segments[-1]["offset"], offset)
                continue
            segments[-1]["offset"] = max(segments[-1]["offset"], onset)  # close the short gap
        segments.append({"onset": onset, "offset": offset, "key": key, "values": tuple(values)})
    return pd.DataFrame(
        [{"onset": s["onset"], "duration": s["offset"] - s["onset"], **dict(zip(targets, s["values"]))} for s in segments],
        columns=["onset", "duration", *targets],
    )


def events_annotations(dataset: Mapping, subject: str, stories: Sequence[str], targets: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """The subject's annotation table from its events files, and the files read."""
    from .ingest import BidsDataset, dataset_options, resolve_story

    options = dataset_options(dict(dataset))
    if options["layout"] not in ("bids", "wordcsv"):
        raise InputError(None, f"decoding.labels.source is events but dataset.layout is {options['layout']!r}, which has no events files.",
                         "give the annotations as a table (decoding.labels.source: table) or derive them with source: lexicon.")
    split = [story for story in stories if resolve_story(options, story)[1] is not None]
    if split:
        raise InputError(None, f"decoding.labels.source is events but stories {split} are segments of split runs (dataset.segments); "
                         "events times are run times.", "give the annotations as a table in each segment's own scan time (source: table).")
    bids = BidsDataset(options)
    tr = float(options["tr"])
    frames, files = [], []
    for story in stories:
        path = bids.runs(subject, story)[0].events
        segments = segments_from_events(_read_events(path, targets), targets, tr)
        files.append(str(path))
        if len(segments):
            frames.append(segments.assign(story=story))
            log.info("%s: %d annotated segments from %s", story, len(segments), path)
    if not frames:
        raise InputError(files[0] if files else None, f"no events row of subject {subject!r} has a value in {list(targets)}.",
                         "fill the annotation columns (n/a for rows without a label) or use another decoding.labels.source.")
    table = pd.concat(frames, ignore_index=True)
    return table[["story", "onset", "duration", *targets]], files


def lexicon_labels(words: pd.DataFrame, segment_s: float) -> pd.DataFrame:
    """One story's words (``word``, ``onset``, ``offset``) → windows of ``segment_s`` s with ``emotion`` and ``valence``."""
    from nrclex import NRCLex
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from .word_decoding import normalise_word

    nrc, vader = NRCLex(None), SentimentIntensityAnalyzer().lexicon
    start, stop = float(words["onset"].min()), float(words["offset"].max())
    n_windows = max(1, int(round((stop - start) / segment_s)))  # the last window absorbs the remainder
    edges = start + segment_s * np.arange(n_windows + 1)
    edges[-1] = stop
    window = np.clip(np.searchsorted(edges, words["onset"].to_numpy(float), side="right") - 1, 0, n_windows - 1)
    normalised = np.array([normalise_word(word) for word in words["word"]], dtype=object)
    rows = []
    for index in range(n_windows):
        tokens = [word for word in normalised[window == index] if word]
        nrc.load_token_list(tokens)
        counts = Counter({emotion: nrc.raw_emotion_scores.get(emotion, 0) for emotion in BASIC_EMOTIONS})
        top = max(counts.values())
        winners = [emotion for emotion, count in counts.items() if count == top]
        valences = [vader[word] / VADER_RANGE for word in tokens if word in vader]
        rows.append({"onset": edges[index], "duration": edges[index + 1] - edges[index],
                     "emotion": "none" if top == 0 else winners[0] if len(winners) == 1 else "mixed",
                     "valence": float(np.mean(valences)) if valences else np.nan,
                     **{emotion: count / len(tokens) if tokens else 0.0 for emotion, count in counts.items()},
                     "n_words": len(tokens), "n_emotion_words": int(sum(1 for word in tokens if set(nrc.affect_dict.get(word, [])) & set(BASIC_EMOTIONS))),
                     "n_valence_words": len(valences)})
    return pd.DataFrame(rows)


def lexicon_annotations(words_tsvs: Mapping[str, str | os.PathLike], segment_s: float) -> pd.DataFrame:
    """The annotation table of every story's words (``{story: words.tsv}``) labelled through the lexicons."""
    if segment_s <= 0:
        raise InputError(None, f"decoding.labels.segment_s is {segment_s}.", "give a positive window length in seconds (e.g. 20).")
    frames = [lexicon_labels(read_words(path), segment_s).assign(story=story) for story, path in words_tsvs.items()]
    table = pd.concat(frames, ignore_index=True)
    columns = ["story", "onset", "duration", *LEXICON_COLUMNS, "n_words", "n_emotion_words", "n_valence_words"]
    log.info("lexicon labels: %d windows of %g s; emotion counts %s; %d windows without a valence word",
             len(table), segment_s, table["emotion"].value_counts().to_dict(), int(table["valence"].isna().sum()))
    return table[columns]


def write_annotations(table: pd.DataFrame, path: str | os.PathLike, sidecar: Mapping) -> None:
    """The table (TSV, ``n/a`` for missing values) and its JSON sidecar (``<path without .tsv>.json``)."""
    write_tsv(path, table.astype(object).fillna("n/a"))
    write_json(str(path).removesuffix(".tsv") + ".json", dict(sidecar))
