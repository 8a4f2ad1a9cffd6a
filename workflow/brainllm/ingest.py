"""Ingestion: story words and per-subject responses from a dataset on disk.

Three layouts (``dataset.layout``):

- ``ds003020``: LeBel et al. narratives layout: Praat TextGrids, ``respdict.json`` and
  preprocessed ``.hf5`` responses (n_trs_raw − trim_start − trim_end rows).
- ``bids``: generic BIDS read with pybids: raw ``*_bold.nii.gz`` (or fMRIPrep
  derivatives chosen by ``dataset.bids.space``/``desc``) and word ``events.tsv``.
- ``wordcsv``: fMRI as in ``bids``, words from one word-onset CSV/TSV.

Outputs follow docs/outputs.md: ``words.tsv`` per story; ``responses.h5``,
``mask.nii.gz``, ``mean.nii.gz`` per subject; optionally ``atlas.nii.gz`` + ``atlas.tsv``.

``dataset.segments`` splits a long run into contiguous segments ``<story>seg1 …`` that
the rest of the workflow treats as stories: each gets its own words (re-referenced to the
segment's start) and its own responses group (see "segments" below).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from brainllm.align import seconds_to_trs, trs_to_seconds
from brainllm.io import InputError, atomic_path, open_h5, write_tsv
from brainllm.segmentation import segment_words
from brainllm.textgrid import read_textgrid, word_tier

logger = logging.getLogger(__name__)

# ds003020 drops these after lower-casing and stripping braces (plus the empty string).
SILENCE_TOKENS = frozenset(
    {"sentence_start", "sentence_end", "br", "lg", "ls", "ns", "sp", "sil", "sl", "cg", "ig", ""}
)
WORD_COLUMNS = ["word", "onset", "offset"]
TR_TOLERANCE_S = 1e-3
# Word times may exceed the run end by this much (float rounding of exported times).
RUN_END_TOLERANCE_S = 1e-6

DATASET_DEFAULTS = {
    "modality": "fmri",
    "trim_start": 10,
    "trim_end": 10,
    "audio_onset_s": 10.0,
    "mask": None,
    "atlas": None,
    "atlas_labels": None,
    "wordcsv": None,
    "segments": None,
    "repeats_dir": None,
    "segmenter": "none",
}
BIDS_DEFAULTS = {
    "space": None,
    "desc": None,
    "word_column": "word",
    "events_trial_type": None,
    "confounds_desc": "confounds",
    "derivatives": "derivatives/fmriprep",
}
WORDCSV_DEFAULTS = {
    "word_column": "word",
    "onset_column": "onset",
    "offset_column": "offset",
    "run_column": None,
    "story_map": None,
    "onset_shift_s": 0.0,
}


def dataset_options(dataset: dict) -> dict:
    """The ``dataset`` config section with defaults filled in (also for nested sections)."""
    options = {**DATASET_DEFAULTS, **dataset}
    options["bids"] = {**BIDS_DEFAULTS, **(dataset.get("bids") or {})}
    if options["wordcsv"] is not None:
        options["wordcsv"] = {**WORDCSV_DEFAULTS, **options["wordcsv"]}
    return options


def _root(options: dict) -> Path:
    root = Path(options["root"])
    if not root.is_dir():
        raise InputError(root, "dataset root directory not found.", "set dataset.root to the dataset folder.")
    return root


def _stories(options: dict) -> list[str]:
    return list(options["train_stories"]) + list(options["test_stories"])


def _run_stories(options: dict) -> list[str]:
    """The recorded runs behind the configured stories (a split run once, for all its segments)."""
    runs = []
    for story in _stories(options):
        run_story, _ = resolve_story(options, story)
        if run_story not in runs:
            runs.append(run_story)
    return runs


# --------------------------------------------------------------------------- words


def is_silence(token: str) -> bool:
    """True for silence/noise tokens (``{LG}``, ``sp``, ``sentence_start``, empty, ...)."""
    return str(token).strip().lower().strip("{}").strip() in SILENCE_TOKENS


def clean_words(words: pd.DataFrame, path: str | os.PathLike) -> pd.DataFrame:
    """Drop silence tokens, check times: columns ``word onset offset`` in the file's order
    (onsets out of order are logged, not re-sorted: re-sorting would scramble the text)."""
    words = words.loc[:, WORD_COLUMNS].copy()
    words["word"] = words["word"].fillna("").astype(str).str.strip()
    words = words[~words["word"].map(is_silence)]
    for column in ("onset", "offset"):
        values = pd.to_numeric(words[column], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise InputError(
                path,
                f"word {words['word'].iloc[row]!r} has a missing or non-numeric {column} "
                f"({words[column].iloc[row]!r}).",
                f"give every word a numeric {column}.",
            )
        words[column] = values.astype(np.float64)
    backwards = words["offset"] < words["onset"]
    if backwards.any():
        row = words[backwards].iloc[0]
        raise InputError(path, f"word {row['word']!r} ends ({row['offset']}) before it starts ({row['onset']}).")
    if words.empty:
        raise InputError(path, "no words left after dropping silence and noise tokens.")
    backwards = np.flatnonzero(np.diff(words["onset"].to_numpy()) < 0)
    if backwards.size:  # the file's order is the text's order: kept, not re-sorted
        row = backwards[0] + 1
        logger.warning("%s: %d word onset(s) earlier than the word before (first: %r at %.3f s after %r at %.3f s); "
                       "keeping the file's word order", path, backwards.size, words["word"].iloc[row],
                       words["onset"].iloc[row], words["word"].iloc[row - 1], words["onset"].iloc[row - 1])
    return words.reset_index(drop=True)


def offsets_from_next_onset(onsets: np.ndarray) -> np.ndarray:
    """Offset of each word = onset of the next; the last word lasts the median word length."""
    onsets = np.asarray(onsets, dtype=np.float64)
    offsets = np.empty_like(onsets)
    offsets[:-1] = onsets[1:]
    lengths = np.diff(onsets)
    offsets[-1] = onsets[-1] + (float(np.median(lengths)) if lengths.size else 0.0)
    return offsets


def check_words_within_run(words: pd.DataFrame, run_duration_s: float, path: str | os.PathLike) -> None:
    """Raise if a word starts before the scan starts or ends after the run (scan) ends."""
    early = words["onset"] < 0
    if early.any():
        first = words[early].iloc[0]
        raise InputError(
            path,
            f"{int(early.sum())} word(s) start before the scan starts (first: {first['word']!r} at {first['onset']:.3f} s).",
            "word times are seconds from the start of the scan run: check dataset.audio_onset_s / "
            "wordcsv.onset_shift_s, or drop words spoken before the scan.",
        )
    late = words["offset"] > run_duration_s + RUN_END_TOLERANCE_S
    if late.any():
        first = words[late].iloc[0]
        raise InputError(
            path,
            f"{int(late.sum())} word(s) end after the run ends at {run_duration_s:.3f} s "
            f"(first: {first['word']!r} at {first['onset']:.3f}-{first['offset']:.3f} s).",
            "check that word times are seconds from the start of the scan run "
            "(dataset.audio_onset_s / wordcsv.onset_shift_s) and that the run is complete.",
        )


def check_same_words(first: pd.DataFrame, repeat: pd.DataFrame, first_path, path, tolerance_s: float = 0.1) -> None:
    """A repeat of a story must present the same words as its first run (whose words.tsv all runs share)."""
    if len(first) != len(repeat) or (first["word"].to_numpy() != repeat["word"].to_numpy()).any():
        n = min(len(first), len(repeat))
        differs = np.flatnonzero(first["word"].to_numpy()[:n] != repeat["word"].to_numpy()[:n])
        where = (f"word {differs[0] + 1} is {repeat['word'].iloc[differs[0]]!r} here, {first['word'].iloc[differs[0]]!r} there"
                 if differs.size else f"{len(repeat)} words here, {len(first)} there")
        raise InputError(path, f"this repeat run's words differ from the first run's ({first_path}): {where}.",
                         "repeats must present the same story; give a different stimulus its own task name.")
    shift = np.abs(first["onset"].to_numpy() - repeat["onset"].to_numpy())
    if shift.max() > tolerance_s:
        logger.warning("%s: word onsets differ from the first run's (%s) by up to %.3f s; the first run's "
                       "timings are used for every run of this story", path, first_path, shift.max())


def words_from_textgrid(path: str | os.PathLike, audio_onset_s: float) -> pd.DataFrame:
    """Words of a ds003020 TextGrid, shifted from audio time to scan time."""
    tier = word_tier(read_textgrid(path), path)
    frame = pd.DataFrame(tier.intervals, columns=["onset", "offset", "word"])
    frame["onset"] += audio_onset_s
    frame["offset"] += audio_onset_s
    return clean_words(frame, path)


def words_from_events(path: str | os.PathLike, word_column: str, trial_type: str | None) -> pd.DataFrame:
    """Words of a BIDS ``events.tsv``: offset = onset + duration (next onset when n/a)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "events file not found.", "add the run's _events.tsv with one row per word.")
    try:
        events = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={word_column: str})
    except pd.errors.EmptyDataError as error:
        raise InputError(path, "the events file is empty.", "write a tab-separated header (onset, duration, word) and one row per word.") from error
    except UnicodeDecodeError as error:
        raise InputError(path, f"not UTF-8 text ({error.reason}: {error.object[error.start:error.end]!r}).", "save the events file as UTF-8.") from error
    except pd.errors.ParserError as error:
        raise InputError(path, f"not a tab-separated table ({error}).", "write one tab-separated row per event.") from error
    for column in ("onset", word_column):
        if column not in events.columns:
            raise InputError(
                path,
                f"events file has no column {column!r} (columns: {', '.join(events.columns)}).",
                "set dataset.bids.word_column to the column holding the words."
                if column == word_column
                else "BIDS events files need an onset column.",
            )
    if trial_type is not None:
        if "trial_type" not in events.columns:
            raise InputError(
                path,
                f"dataset.bids.events_trial_type is {trial_type!r} but the file has no trial_type column.",
                "set dataset.bids.events_trial_type: null to use every row.",
            )
        events = events[events["trial_type"].astype(str) == trial_type]
    numeric = pd.to_numeric(events["onset"], errors="coerce")
    if numeric.isna().any():
        row = int(np.flatnonzero(numeric.isna().to_numpy())[0])
        raise InputError(path, f"row {events.index[row] + 2} (line of the file), column onset: {events['onset'].iloc[row]!r} is not a number.",
                         "give every word row a numeric onset in seconds.")
    events = events.assign(onset=numeric)
    onsets = events["onset"].to_numpy(dtype=np.float64)
    if "duration" in events.columns:
        durations = pd.to_numeric(events["duration"], errors="coerce").to_numpy(dtype=np.float64)
    else:
        durations = np.full(len(events), np.nan)
    next_onsets = offsets_from_next_onset(onsets) if len(onsets) else onsets
    offsets = np.where(np.isnan(durations), next_onsets, onsets + durations)
    frame = pd.DataFrame({"word": events[word_column].to_numpy(), "onset": onsets, "offset": offsets})
    return clean_words(frame, path)


def _read_table(path: Path, word_column: str) -> pd.DataFrame:
    """A CSV (or tab-separated .tsv/.tab) table; words such as "NA" or "null" stay words."""
    if not path.is_file():
        raise InputError(path, "word-onset table not found.", "set dataset.wordcsv.words (relative to dataset.root).")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        return pd.read_csv(path, sep=sep, na_values=["n/a", ""], keep_default_na=False, dtype={word_column: str})
    except pd.errors.EmptyDataError as error:
        raise InputError(path, "the word-onset table is empty.", "write a header (word, onset, offset) and one row per word.") from error
    except UnicodeDecodeError as error:
        line = _first_non_utf8_line(path)
        raise InputError(path, f"is not UTF-8 text (line {line}).", "save the table as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from error


def _first_non_utf8_line(path: Path) -> int:
    """1-based number of the first line that is not valid UTF-8 (0 when every line is)."""
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return number
    return 0


def words_from_wordcsv(path: str | os.PathLike, options: dict, story: str, stories: list[str]) -> pd.DataFrame:
    """Words of ``story`` from a word-onset CSV/TSV (Alice style).

    ``options`` is ``dataset.wordcsv``. Without ``run_column`` every row belongs to the
    only configured story; with it, rows whose run value maps to ``story`` are taken
    (``story_map`` maps run values to stories; without it the value is the story name).
    """
    path = Path(path)
    table = _read_table(path, options["word_column"])
    columns = {"word": options["word_column"], "onset": options["onset_column"]}
    if options["offset_column"]:
        columns["offset"] = options["offset_column"]
    if options["run_column"]:
        columns["run"] = options["run_column"]
    for role, column in columns.items():
        if column not in table.columns:
            raise InputError(
                path,
                f"no {role} column {column!r} (columns: {', '.join(map(str, table.columns))}).",
                f"set dataset.wordcsv.{role}_column to the right column name.",
            )
    if options["run_column"]:
        story_map = {str(key): value for key, value in (options["story_map"] or {}).items()}
        run_values = table[options["run_column"]].astype(str).str.strip()
        run_values = run_values.str.replace(r"\.0$", "", regex=True)  # 1.0 (pandas float) == "1"
        table = table[run_values.map(lambda value: story_map.get(value, value)) == story]
        if table.empty:
            raise InputError(
                path,
                f"no rows of story {story!r} in column {options['run_column']!r} "
                f"(values: {', '.join(sorted(set(run_values)))}).",
                "map run values to stories with dataset.wordcsv.story_map.",
            )
    elif len(stories) > 1:
        raise InputError(
            path,
            f"{len(stories)} stories are configured but the table has no run column.",
            "set dataset.wordcsv.run_column (and story_map) or configure a single story.",
        )
    onsets = pd.to_numeric(table[columns["onset"]], errors="coerce").to_numpy(dtype=np.float64)
    if options["offset_column"]:
        offsets = pd.to_numeric(table[columns["offset"]], errors="coerce").to_numpy(dtype=np.float64)
    else:
        order = np.argsort(onsets, kind="stable")
        offsets = np.empty_like(onsets)
        offsets[order] = offsets_from_next_onset(onsets[order])
    shift = float(options["onset_shift_s"])
    frame = pd.DataFrame({"word": table[columns["word"]].to_numpy(), "onset": onsets + shift, "offset": offsets + shift})
    return clean_words(frame, path)


# --------------------------------------------------------------------------- segments
#
# dataset.segments cuts a long run into contiguous segments, each a story of its own.
# A segment is the raw-TR range [start_tr, stop_tr) of its run; the segments of a run
# cover it without gaps. Cleaning and trimming (dataset.trim_start / trim_end) apply to
# the whole run: the first segment carries the run's trim_start, the last its trim_end,
# the ones between none. A segment's words are those whose midpoint falls in it, with
# times in the segment's own scan time (onset − segment start).

SEGMENT_INFIX = "seg"
MIN_SEGMENT_KEPT_TRS = 2
SEGMENT_SPEC_KEYS = ("n_segments", "boundaries_s")


@dataclass(frozen=True)
class Segment:
    """Segment ``index`` (1-based) of the run ``run_story``: its raw TRs ``[start_tr, stop_tr)``."""

    run_story: str
    index: int
    start_tr: int
    stop_tr: int

    @property
    def name(self) -> str:
        return segment_name(self.run_story, self.index)

    @property
    def n_trs_raw(self) -> int:
        return self.stop_tr - self.start_tr

    def trims(self, n_trs_run: int, trim_start: int, trim_end: int) -> tuple[int, int]:
        """(trim_start, trim_end) of this segment: its TRs that trimming the whole run
        (``trim_start``/``trim_end`` of ``n_trs_run`` TRs) removes at its start / end."""
        kept_start, kept_stop = trim_start, n_trs_run - trim_end
        return (max(0, min(kept_start, self.stop_tr) - self.start_tr),
                max(0, self.stop_tr - max(kept_stop, self.start_tr)))

    def attrs(self, n_segments: int) -> dict:
        """Group attrs that let preprocessing put the run back together (docs/outputs.md)."""
        return dict(segment_of=self.run_story, segment_index=self.index, n_segments=n_segments,
                    segment_start_tr=self.start_tr)


def segment_name(run_story: str, index: int) -> str:
    """Story name of segment ``index`` (1-based) of ``run_story``: ``<run_story>seg<index>``."""
    return f"{run_story}{SEGMENT_INFIX}{index}"


def _n_segments(spec: dict) -> int:
    return int(spec["n_segments"]) if "n_segments" in spec else len(spec["boundaries_s"]) + 1


def segment_specs(options: dict) -> dict[str, dict]:
    """``dataset.segments`` checked: run story -> ``{"n_segments": K}`` or ``{"boundaries_s": [...]}``.

    Raises ``InputError`` for a malformed entry, a segment named like another split run,
    a split run listed as a story itself, or a listed ``<run>seg<k>`` beyond the run's segments.
    """
    specs = options.get("segments") or {}
    fix = "write dataset.segments as {<run story>: {n_segments: K}} or {<run story>: {boundaries_s: [s1, s2, ...]}}."
    if not isinstance(specs, dict):
        raise InputError(None, f"dataset.segments must be a mapping, not {type(specs).__name__}.", fix)
    for run_story, spec in specs.items():
        key = f"dataset.segments.{run_story}"
        if not re.fullmatch(r"[A-Za-z0-9]+", str(run_story)):
            raise InputError(None, f"{key}: story names are letters and digits only.", fix)
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SEGMENT_SPEC_KEYS:
            raise InputError(None, f"{key} must hold exactly one of n_segments or boundaries_s (found {spec!r}).", fix)
        if "n_segments" in spec:
            count = spec["n_segments"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 2:
                raise InputError(None, f"{key}.n_segments must be an integer >= 2 (found {count!r}).", fix)
        else:
            bounds = spec["boundaries_s"]
            if (not isinstance(bounds, list) or not bounds
                    or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
                raise InputError(None, f"{key}.boundaries_s must be a non-empty list of seconds (found {bounds!r}).",
                                 fix)
            if any(later <= earlier for earlier, later in zip(bounds, bounds[1:])):
                raise InputError(None, f"{key}.boundaries_s must increase strictly (found {bounds}).", fix)
    for run_story, spec in specs.items():
        for index in range(1, _n_segments(spec) + 1):
            name = segment_name(run_story, index)
            if name in specs:
                raise InputError(
                    None,
                    f"segment {index} of split run {run_story!r} is named {name!r}, like the split run {name!r}.",
                    f"split only one of {run_story!r} and {name!r} (segment names would be ambiguous).",
                )
    for story in _stories(options):
        if story in specs:
            names = [segment_name(story, index) for index in range(1, _n_segments(specs[story]) + 1)]
            raise InputError(
                None,
                f"story {story!r} is listed in dataset.train_stories/test_stories, but dataset.segments splits it.",
                f"list its segments instead: {', '.join(names)}.",
            )
        for run_story, spec in specs.items():
            prefix = run_story + SEGMENT_INFIX
            suffix = story[len(prefix):] if story.startswith(prefix) else ""
            if re.fullmatch(r"[0-9]+", suffix) and not (suffix[0] != "0" and int(suffix) <= _n_segments(spec)):
                raise InputError(
                    None,
                    f"story {story!r} names no segment of split run {run_story!r} "
                    f"({run_story}{SEGMENT_INFIX}1 … {segment_name(run_story, _n_segments(spec))}).",
                    "correct dataset.train_stories/test_stories or the number of segments.",
                )
    return specs


def resolve_story(options: dict, story: str) -> tuple[str, int | None]:
    """(run story, segment index) of a configured story; (story, None) when it is a whole run."""
    for run_story, spec in segment_specs(options).items():
        prefix = run_story + SEGMENT_INFIX
        suffix = story[len(prefix):] if story.startswith(prefix) else ""
        if re.fullmatch(r"[1-9][0-9]*", suffix) and int(suffix) <= _n_segments(spec):
            return run_story, int(suffix)
    return story, None


def check_segment_names_free(options: dict, dataset_stories, path: str | os.PathLike) -> None:
    """Raise if the dataset itself holds a story (task) named like a segment of a split run."""
    taken = set(map(str, dataset_stories))
    for run_story, spec in segment_specs(options).items():
        for index in range(1, _n_segments(spec) + 1):
            name = segment_name(run_story, index)
            if name in taken:
                raise InputError(
                    path,
                    f"the dataset has a story {name!r}, which is also the name of segment {index} of split run "
                    f"{run_story!r}.",
                    f"remove {run_story!r} from dataset.segments (or rename the dataset's story).",
                )


def segment_cuts_trs(run_story: str, spec: dict, n_trs_raw: int, tr: float, trim_start: int, trim_end: int,
                     path: str | os.PathLike) -> list[int]:
    """Interior cut points of a run of ``n_trs_raw`` TRs, in raw TRs from the run start (increasing).

    ``n_segments`` K: the run's kept TRs ``[trim_start, n_trs_raw − trim_end)`` in K parts of
    near-equal length (cut k at ``trim_start + ⌊k·n_kept/K⌋``). ``boundaries_s``: scan
    seconds from the run start, each strictly inside the run and a multiple of the TR.
    """
    key = f"dataset.segments.{run_story}"
    if "n_segments" in spec:
        count = int(spec["n_segments"])
        n_kept = n_trs_raw - trim_start - trim_end
        if n_kept < count * MIN_SEGMENT_KEPT_TRS:
            raise InputError(path, f"{key}.n_segments = {count}, but the run keeps only {n_kept} TRs after trimming.",
                             "use fewer segments.")
        return [trim_start + (k * n_kept) // count for k in range(1, count)]
    run_s = float(trs_to_seconds(n_trs_raw, tr))
    cuts = []
    for bound in spec["boundaries_s"]:
        if not 0.0 < bound < run_s:
            raise InputError(
                path,
                f"{key}.boundaries_s: {bound:g} s is outside the run (0 to {run_s:g} s: {n_trs_raw} TRs of {tr:g} s).",
                "give cut points strictly inside the run, in seconds from its start.",
            )
        cut = int(round(float(seconds_to_trs(bound, tr))))
        if abs(float(trs_to_seconds(cut, tr)) - bound) > TR_TOLERANCE_S:
            below = np.floor(float(seconds_to_trs(bound, tr)))
            raise InputError(
                path,
                f"{key}.boundaries_s: {bound:g} s is not at a TR boundary (TR {tr:g} s).",
                f"use a multiple of the TR, e.g. {float(trs_to_seconds(below, tr)):g} "
                f"or {float(trs_to_seconds(below + 1, tr)):g} s.",
            )
        cuts.append(cut)
    return cuts


def segments_of_run(run_story: str, cuts: list[int], n_trs_raw: int, trim_start: int, trim_end: int,
                    path: str | os.PathLike) -> list[Segment]:
    """The segments of a run of ``n_trs_raw`` TRs cut at ``cuts``; each must keep
    at least ``MIN_SEGMENT_KEPT_TRS`` TRs once the whole run is trimmed."""
    edges = [0, *cuts, n_trs_raw]
    segments = [Segment(run_story, index, start, stop)
                for index, (start, stop) in enumerate(zip(edges[:-1], edges[1:]), start=1)]
    for segment in segments:
        kept = segment.n_trs_raw - sum(segment.trims(n_trs_raw, trim_start, trim_end))
        if kept < MIN_SEGMENT_KEPT_TRS:
            raise InputError(
                path,
                f"segment {segment.name!r} (raw TRs {segment.start_tr} to {segment.stop_tr} of a {n_trs_raw}-TR run) "
                f"keeps {kept} TR(s) once the run is trimmed by {trim_start} + {trim_end} TRs; "
                f"at least {MIN_SEGMENT_KEPT_TRS} are needed.",
                f"move the cut points of dataset.segments.{run_story} or use fewer segments.",
            )
    return segments


def plan_segments(options: dict, run_story: str, n_trs_reference: int, n_trs_raw: int,
                  path: str | os.PathLike) -> list[Segment]:
    """Segments of a split run: cut points from the reference run (the one the words are
    checked against, so every subject shares them), the last segment ending at this run's
    end (``n_trs_raw`` TRs)."""
    tr, trim_start, trim_end = float(options["tr"]), int(options["trim_start"]), int(options["trim_end"])
    spec = segment_specs(options)[run_story]
    cuts = segment_cuts_trs(run_story, spec, n_trs_reference, tr, trim_start, trim_end, path)
    return segments_of_run(run_story, cuts, n_trs_raw, trim_start, trim_end, path)


def split_words(words: pd.DataFrame, segments: list[Segment], tr: float) -> list[pd.DataFrame]:
    """Words of each segment (midpoint in it), onset/offset in the segment's scan time.

    The first segment also takes words before the run start, the last those after its end,
    so the segments' words together are exactly the run's words.
    """
    midpoints = (words["onset"].to_numpy() + words["offset"].to_numpy()) / 2.0
    pieces = []
    for position, segment in enumerate(segments):
        start_s = float(trs_to_seconds(segment.start_tr, tr))
        inside = np.ones(len(words), dtype=bool)
        if position > 0:
            inside &= midpoints >= start_s
        if position < len(segments) - 1:
            inside &= midpoints < float(trs_to_seconds(segment.stop_tr, tr))
        piece = words[inside].reset_index(drop=True)
        piece[["onset", "offset"]] -= start_s
        pieces.append(piece)
    return pieces


def cut_trimmed_run(run: np.ndarray, segments: list[Segment], n_trs_run: int, trim_start: int, trim_end: int,
                    axis: int = 0) -> list[np.ndarray]:
    """Each segment's rows of a whole run already trimmed by ``trim_start``/``trim_end``.

    ``run`` holds raw TRs ``[trim_start, n_trs_run − trim_end)`` along ``axis``; segment k
    gets its raw TRs less its own trims (``Segment.trims``), so its row count is
    ``n_trs_raw − trim_start_k − trim_end_k``.
    """
    n_rows = n_trs_run - trim_start - trim_end
    if run.shape[axis] != n_rows:
        raise ValueError(f"a run of {n_trs_run} TRs trimmed by {trim_start} + {trim_end} has {n_rows} rows, "
                         f"not {run.shape[axis]}")
    pieces = []
    for segment in segments:
        first, last = segment.trims(n_trs_run, trim_start, trim_end)
        rows = slice(segment.start_tr + first - trim_start, segment.stop_tr - last - trim_start)
        pieces.append(run[(slice(None),) * axis + (rows,)])
    return pieces


def _log_segments(segments: list[Segment], n_trs_run: int, trim_start: int, trim_end: int) -> None:
    described = ", ".join(
        f"{segment.name} TRs {segment.start_tr}-{segment.stop_tr} "
        f"({segment.n_trs_raw - sum(segment.trims(n_trs_run, trim_start, trim_end))} kept)" for segment in segments)
    logger.info("run %s (%d TRs) split into %d segments: %s", segments[0].run_story, n_trs_run, len(segments), described)


# --------------------------------------------------------------------------- ds003020


def ds003020_respdict(root: Path) -> dict:
    path = root / "derivative" / "respdict.json"
    if not path.is_file():
        raise InputError(path, "respdict.json not found.", "set dataset.root to the ds003020 folder.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(path, f"not valid JSON ({error}).") from error


def ds003020_n_trs_raw(root: Path, story: str) -> int:
    respdict = ds003020_respdict(root)
    if story not in respdict:
        raise InputError(
            root / "derivative" / "respdict.json",
            f"story {story!r} is not listed.",
            "remove it from dataset.train_stories/test_stories or fix its spelling.",
        )
    return int(respdict[story])


def ds003020_textgrid(root: Path, story: str) -> Path:
    return root / "derivative" / "TextGrids" / f"{story}.TextGrid"


def ds003020_hf5(root: Path, subject: str, story: str) -> Path:
    return root / "derivative" / "preprocessed_data" / subject / f"{story}.hf5"


def ds003020_repeat_files(options: dict, subject: str, story: str) -> list[Path]:
    """Per-repeat hf5 files of ``story`` in ``dataset.repeats_dir`` ({subject}, {story} filled in,
    relative to root), sorted by name; [] when the key is unset or the directory is absent."""
    if not options.get("repeats_dir"):
        return []
    folder = _root(options) / str(options["repeats_dir"]).format(subject=subject, story=story)
    files = sorted(folder.glob("*.hf5")) if folder.is_dir() else []
    if len(files) == 1:
        raise InputError(folder, "holds one repeat; a noise ceiling needs at least 2.", "add the other repeats or remove the folder.")
    return files


def read_ds003020_responses(path: Path, n_trs_raw: int, trim_start: int, trim_end: int) -> np.ndarray:
    """(n_trs_raw − trim_start − trim_end, n_voxels) float32 from a ds003020 hf5."""
    expected = n_trs_raw - trim_start - trim_end
    try:
        with open_h5(path) as handle:
            if "data" not in handle:
                raise InputError(path, f"no dataset 'data' (keys: {', '.join(handle.keys())}).")
            data = handle["data"][()]
    except OSError as error:
        raise InputError(path, f"unreadable HDF5 file ({error}); it may be truncated or not HDF5.",
                         "download or copy the file again (e.g. datalad get) and rerun.") from error
    if data.ndim != 2:
        raise InputError(path, f"'data' must be 2-D (n_trs, n_voxels); found shape {data.shape}.")
    if data.shape[0] != expected:
        raise InputError(
            path,
            f"expected {expected} rows (respdict.json n={n_trs_raw} raw TRs minus trim_start={trim_start} "
            f"and trim_end={trim_end}) but found {data.shape[0]}.",
            "check respdict.json and dataset.trim_start/trim_end against this file.",
        )
    return data.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- BIDS


@dataclass
class BoldRun:
    """One functional run of a story: the BOLD series and the files that go with it."""

    bold: Path
    events: Path
    confounds: Path | None
    brain_mask: Path | None


def _entities_of(name: str) -> dict[str, str]:
    stem = name.split(".")[0]
    return dict(part.split("-", 1) for part in stem.split("_") if "-" in part)


def sidecar_metadata(root: Path, bold: Path) -> dict:
    """BIDS inheritance: merge ``*_bold.json`` sidecars from the root down to the file's folder."""
    entities = _entities_of(bold.name)
    folders = [bold.parent]
    while folders[-1] != root and root in folders[-1].parents:
        folders.append(folders[-1].parent)
    metadata: dict = {}
    for folder in reversed(folders):
        for sidecar in sorted(folder.glob("*_bold.json")):
            own = _entities_of(sidecar.name)
            if all(entities.get(key) == value for key, value in own.items()):
                try:
                    metadata.update(json.loads(sidecar.read_text()))
                except json.JSONDecodeError as error:
                    raise InputError(sidecar, f"not valid JSON ({error}).") from error
    return metadata


def image_tr_s(img: nib.Nifti1Image) -> float:
    """Repetition time from the NIfTI header in seconds (0 when the header has none)."""
    zooms = img.header.get_zooms()
    if len(zooms) < 4:
        return 0.0
    unit = img.header.get_xyzt_units()[1]
    scale = {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
    return float(zooms[3]) * scale


def check_tr(img: nib.Nifti1Image, metadata: dict, tr: float, path: Path) -> None:
    """Header and sidecar TR (whichever exist) must equal ``tr`` within 1 ms."""
    header_tr = image_tr_s(img)
    sidecar_tr = metadata.get("RepetitionTime")
    if header_tr <= 0 and sidecar_tr is None:
        raise InputError(path, "no TR in the NIfTI header nor a RepetitionTime in a sidecar JSON.",
                         "add RepetitionTime to the _bold.json sidecar.")
    for where, value in (("NIfTI header", header_tr if header_tr > 0 else None), ("sidecar JSON", sidecar_tr)):
        if value is not None and abs(float(value) - tr) > TR_TOLERANCE_S:
            raise InputError(
                path,
                f"TR in the {where} is {float(value):g} s but dataset.tr is {tr:g} s.",
                "set dataset.tr to the acquisition TR (or fix the header/sidecar).",
            )


def bold_header(path: Path) -> nib.Nifti1Image:
    """The BOLD image (data not loaded); raises unless it is 4-D."""
    img = nib.load(path)
    if len(img.shape) != 4:
        raise InputError(path, f"expected a 4-D BOLD series but the image is {len(img.shape)}-D {img.shape}.",
                         "point the dataset at the 4-D _bold.nii.gz time series.")
    return img


def load_bold(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The image and its 4-D data (x, y, z, n_trs) float32."""
    img = bold_header(path)
    return img, img.get_fdata(dtype=np.float32)


def load_mask(path: Path, spatial_shape: tuple[int, ...] | None = None, against: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mask bool (x, y, z), affine); ``spatial_shape`` is the BOLD grid it must match."""
    if not path.is_file():
        raise InputError(path, "mask file not found.", "check dataset.mask (relative to dataset.root, {subject} filled in).")
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"a mask must be a 3-D image; found shape {data.shape}.")
    if spatial_shape is not None and tuple(data.shape) != tuple(spatial_shape):
        raise InputError(
            path,
            f"mask shape {tuple(data.shape)} does not match the BOLD grid {tuple(spatial_shape)}"
            + (f" of {against}" if against else "")
            + ".",
            "use a mask in the space of the BOLD series (resample it, or set dataset.bids.space).",
        )
    mask = np.nan_to_num(data) > 0
    if not mask.any():
        raise InputError(path, "the mask is empty.")
    return mask, img.affine


def intensity_mask(mean_volume: np.ndarray) -> np.ndarray:
    """Brain mask from a mean EPI volume: voxels above 0.8 × the global mean of voxels
    brighter than an eighth of the volume mean (the SPM global-mean rule)."""
    finite = np.nan_to_num(mean_volume)
    bright = finite[finite > finite.mean() / 8.0]
    return finite > 0.8 * bright.mean()


class BidsDataset:
    """pybids view of a BIDS dataset (raw, or raw + fMRIPrep derivatives)."""

    def __init__(self, options: dict):
        from bids import BIDSLayout, BIDSLayoutIndexer  # slow import, only for BIDS layouts

        self.root = _root(options).resolve()
        self.options = options["bids"]
        self.use_derivatives = bool(self.options["space"] or self.options["desc"])
        derivatives = False
        if self.use_derivatives:
            derivative_root = self.root / self.options["derivatives"]
            if not (derivative_root / "dataset_description.json").is_file():
                raise InputError(
                    derivative_root,
                    "fMRIPrep derivatives not found (no dataset_description.json).",
                    "set dataset.bids.derivatives to the fMRIPrep output folder (relative to dataset.root), "
                    "or set dataset.bids.space and desc to null to use raw BOLD.",
                )
            derivatives = [str(derivative_root)]
        self.layout = BIDSLayout(str(self.root), validate=False, derivatives=derivatives,
                                 indexer=BIDSLayoutIndexer(validate=False, index_metadata=False))

    def check_subject(self, subject: str) -> None:
        subjects = self.layout.get_subjects()
        if subject not in subjects:
            raise InputError(
                self.root,
                f"subject {subject!r} not found (subjects: {', '.join(sorted(subjects)) or 'none'}).",
                "correct dataset.subjects (BIDS labels without the sub- prefix).",
            )

    def _one(self, files: list, what: str, near: Path, required: bool) -> Path | None:
        if len(files) > 1:
            raise InputError(near, f"several {what} files match: {', '.join(Path(f).name for f in files)}.",
                             "narrow the choice with dataset.bids.space / desc.")
        if not files:
            if required:
                raise InputError(near, f"no {what} file found for this run.")
            return None
        return Path(files[0])

    def runs(self, subject: str, story: str) -> list[BoldRun]:
        """Every run of ``story`` (BIDS task) for ``subject``, ordered by session and run."""
        query = dict(subject=subject, task=story, suffix="bold", extension=[".nii.gz", ".nii"], return_type="object")
        if self.use_derivatives:
            query.update(scope="derivatives", desc=self.options["desc"])
            if self.options["space"]:
                query["space"] = self.options["space"]
        else:
            query["scope"] = "raw"
        files = self.layout.get(**query)
        if not files:
            tasks = self.layout.get_tasks(subject=subject)
            raise InputError(
                self.root,
                f"story {story!r} not found for subject {subject!r}: no BOLD file with task-{story} "
                f"(tasks of this subject: {', '.join(sorted(tasks)) or 'none'}).",
                "correct dataset.train_stories/test_stories (BIDS task labels) or dataset.subjects.",
            )

        def order(file) -> tuple:
            entities = file.get_entities()
            return (str(entities.get("session", "")), int(entities.get("run", 0) or 0))

        space = {"space": self.options["space"]} if self.options["space"] else {}
        runs = []
        for file in sorted(files, key=order):
            entities = file.get_entities()
            common = {key: entities[key] for key in ("subject", "session", "task", "run", "acquisition") if key in entities}
            bold = Path(file.path)
            runs.append(
                BoldRun(
                    bold=bold,
                    events=self._events_path(bold, common),
                    confounds=self._one(
                        self.layout.get(**common, desc=self.options["confounds_desc"],
                                        suffix=["timeseries", "regressors"], extension=".tsv",
                                        scope="derivatives", return_type="file"),
                        "confounds", bold, required=False) if self.use_derivatives else None,
                    brain_mask=self._one(
                        self.layout.get(**common, **space, desc="brain", suffix="mask", extension=[".nii.gz", ".nii"],
                                        scope="derivatives", return_type="file"),
                        "brain mask", bold, required=False) if self.use_derivatives else None,
                )
            )
        return runs

    def _events_path(self, bold: Path, entities: dict) -> Path:
        # the BOLD's own events (func/), never those of an EEG recording of the same task
        found = self.layout.get(**entities, datatype="func", suffix="events", extension=".tsv", scope="raw", return_type="file")
        if found:
            return Path(found[0])
        # The conventional name beside the raw BOLD, reported when missing.
        stem = "_".join(f"{key}-{entities[key]}" for key in ("subject", "session", "task", "acquisition", "run") if key in entities)
        stem = stem.replace("subject-", "sub-").replace("session-", "ses-").replace("acquisition-", "acq-")
        folder = self.root / f"sub-{entities['subject']}"
        if "session" in entities:
            folder = folder / f"ses-{entities['session']}"
        return folder / "func" / f"{stem}_events.tsv"


def read_confounds(path: Path | None, names: list[str], n_trs: int, bold: Path) -> np.ndarray:
    """(n_trs, n_confounds) from an fMRIPrep confounds TSV; leading n/a → 0, other n/a → column mean."""
    if path is None:
        raise InputError(
            bold,
            f"preprocess.confounds requests {names} but no confounds TSV was found for this run.",
            "ingest fMRIPrep derivatives (dataset.bids.space/desc) or set preprocess.confounds: [].",
        )
    table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
    missing = [name for name in names if name not in table.columns]
    if missing:
        raise InputError(path, f"confound columns {missing} not found.", "correct preprocess.confounds.")
    if len(table) != n_trs:
        raise InputError(path, f"{len(table)} rows but the BOLD series {bold.name} has {n_trs} volumes.")
    columns = []
    for name in names:
        values = pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64, copy=True)
        missing_rows = np.isnan(values)
        if missing_rows.all():
            raise InputError(path, f"confound column {name!r} holds no numbers.")
        leading = np.cumprod(missing_rows).astype(bool)
        values[leading] = 0.0
        values[np.isnan(values)] = np.nanmean(values[~leading])
        columns.append(values)
    return np.column_stack(columns)


# --------------------------------------------------------------------------- entry points


def ingest_words(dataset: dict, story: str, out_tsv: str | os.PathLike, eeg: dict | None = None) -> pd.DataFrame:
    """Write ``words.tsv`` (word onset offset, seconds from scan start) for ``story``.

    For a segment of a split run (``dataset.segments``) the run's words are read, checked
    against the whole run, then cut: the segment's words, in its own scan time. An EEG-only
    dataset (``dataset.modality: eeg``) takes them from the EEG recordings' events (``eeg``:
    the eeg config section), in seconds from the recording's start.
    """
    options = dataset_options(dataset)
    if options["modality"] == "eeg":
        from brainllm.eeg import EegSettings
        from brainllm.sources import eeg_story_sources

        settings = EegSettings.from_config(eeg or {}, dataset)
        found = eeg_story_sources(eeg or {}, dataset, story)  # the file the rule tracks is the file read
        if not found:
            raise InputError(settings.root, f"no EEG events file of story {story!r} (sub-<subject>/eeg/*task-{story}_*events.tsv) "
                             f"for subjects {list(settings.subjects)}.", "record each story as its own BIDS task, or fix the story name.")
        words = words_from_events(found[0], settings.word_column, settings.events_trial_type)
        logger.info("story %s: %d words from %s", story, len(words), found[0])
        write_tsv(out_tsv, words)
        return words
    root = _root(options)
    layout = options["layout"]
    tr = float(options["tr"])
    run_story, segment_index = resolve_story(options, story)
    if layout == "ds003020":
        respdict_path = root / "derivative" / "respdict.json"
        check_segment_names_free(options, ds003020_respdict(root), respdict_path)
        source = ds003020_textgrid(root, run_story)
        n_trs_raw, run_file = ds003020_n_trs_raw(root, run_story), respdict_path
        words = words_from_textgrid(source, float(options["audio_onset_s"]))
    elif layout in ("bids", "wordcsv"):
        bids = BidsDataset(options)
        check_segment_names_free(options, bids.layout.get_tasks(), bids.root)
        run = _first_run_of_story(bids, options["subjects"], run_story)
        n_trs_raw, run_file = bold_header(run.bold).shape[3], run.bold
        if layout == "bids":
            source = run.events
            words = words_from_events(source, options["bids"]["word_column"], options["bids"]["events_trial_type"])
        else:
            if options["wordcsv"] is None:
                raise InputError(None, "dataset.layout is wordcsv but dataset.wordcsv is not set.",
                                 "set dataset.wordcsv.words to the word-onset table.")
            source = root / options["wordcsv"]["words"]
            words = words_from_wordcsv(source, options["wordcsv"], run_story, _run_stories(options))
    else:
        raise InputError(None, f"unknown dataset.layout {layout!r}.", "use ds003020, bids or wordcsv.")
    if options.get("segmenter", "none") != "none":  # rows of text, not words (brainllm.segmentation)
        words = segment_words(words, options["segmenter"], source)
    check_words_within_run(words, float(trs_to_seconds(n_trs_raw, tr)), source)
    if segment_index is not None:
        segments = plan_segments(options, run_story, n_trs_raw, n_trs_raw, run_file)
        segment = segments[segment_index - 1]
        words = split_words(words, segments, tr)[segment_index - 1]
        if words.empty:
            raise InputError(
                source,
                f"segment {story!r} (scan time {float(trs_to_seconds(segment.start_tr, tr)):g} to "
                f"{float(trs_to_seconds(segment.stop_tr, tr)):g} s of run {run_story!r}) holds no words.",
                f"use fewer segments or other cut points in dataset.segments.{run_story}.",
            )
    logger.info("story %s: %d words from %s%s", story, len(words), source,
                "" if segment_index is None else f" (segment {segment_index} of run {run_story}, "
                f"times from the segment start)")
    write_tsv(out_tsv, words)
    return words


def _first_run_of_story(bids: BidsDataset, subjects: list[str], story: str) -> BoldRun:
    """The first run of ``story`` among the configured subjects (words are shared by all)."""
    first_error = None
    for subject in subjects:
        try:
            bids.check_subject(subject)
            return bids.runs(subject, story)[0]
        except InputError as error:
            first_error = first_error or error
    raise first_error


def _write_story(handle, story: str, runs: list[np.ndarray], attrs: dict,
                 confounds: list[np.ndarray] | None = None, confound_names: list[str] | None = None) -> None:
    """Group ``story``: ``data`` (n_trs, n_voxels); with several runs also ``repeats``
    (n_runs, n_trs, n_voxels) and ``data`` = their mean; ``confounds`` likewise."""
    group = handle.create_group(story)
    if len(runs) == 1:
        group.create_dataset("data", data=runs[0].astype(np.float32))
    else:
        repeats = np.stack(runs).astype(np.float32)
        group.create_dataset("repeats", data=repeats)
        group.create_dataset("data", data=repeats.mean(axis=0, dtype=np.float64).astype(np.float32))
    if confounds:
        stacked = confounds[0] if len(confounds) == 1 else np.stack(confounds)
        dataset = group.create_dataset("confounds", data=stacked.astype(np.float32))
        dataset.attrs["names"] = list(confound_names)
    for key, value in attrs.items():
        group.attrs[key] = value


def save_nifti(volume: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> None:
    """Write a gzipped NIfTI atomically."""
    with atomic_path(path) as tmp, gzip.open(tmp, "wb") as handle:
        handle.write(nib.Nifti1Image(volume, affine).to_bytes())


def ingest_subject(dataset: dict, subject: str, confounds: list[str],
                   out_responses: str | os.PathLike, out_mask: str | os.PathLike, out_mean: str | os.PathLike) -> None:
    """Write ``responses.h5``, ``mask.nii.gz`` and ``mean.nii.gz`` for ``subject``.

    ``confounds`` (``preprocess.confounds``) are the fMRIPrep columns stored per run.
    """
    options = dataset_options(dataset)
    segment_specs(options)  # a malformed dataset.segments fails before any data is read
    layout = options["layout"]
    if layout == "ds003020":
        _ingest_ds003020(options, subject, out_responses, out_mask, out_mean)
    elif layout in ("bids", "wordcsv"):
        _ingest_bids(options, subject, list(confounds), out_responses, out_mask, out_mean)
    else:
        raise InputError(None, f"unknown dataset.layout {layout!r}.", "use ds003020, bids or wordcsv.")


def _ingest_ds003020(options: dict, subject: str, out_responses, out_mask, out_mean) -> None:
    root = _root(options)
    subject_dir = root / "derivative" / "preprocessed_data" / subject
    if not subject_dir.is_dir():
        found = sorted(p.name for p in subject_dir.parent.glob("*")) if subject_dir.parent.is_dir() else []
        raise InputError(subject_dir, f"subject {subject!r} not found (subjects: {', '.join(found) or 'none'}).",
                         "correct dataset.subjects.")
    trim_start, trim_end = int(options["trim_start"]), int(options["trim_end"])
    tr = float(options["tr"])
    stories = _run_stories(options)
    check_segment_names_free(options, ds003020_respdict(root), root / "derivative" / "respdict.json")
    responses: dict[str, tuple[np.ndarray, int, Path]] = {}
    repeats: dict[str, list[np.ndarray]] = {}  # stories with per-repeat files (dataset.repeats_dir)
    for story in tqdm(stories, desc=f"ingest {subject}", unit="story"):
        path = ds003020_hf5(root, subject, story)
        if not path.is_file():
            raise InputError(path, f"responses of story {story!r} for subject {subject!r} not found.",
                             "remove the story from the config or add the file.")
        n_trs_raw = ds003020_n_trs_raw(root, story)
        responses[story] = (read_ds003020_responses(path, n_trs_raw, trim_start, trim_end), n_trs_raw, path)
        repeat_files = [] if story in segment_specs(options) else ds003020_repeat_files(options, subject, story)
        if repeat_files:
            repeats[story] = [read_ds003020_responses(f, n_trs_raw, trim_start, trim_end) for f in repeat_files]
            if {run.shape[1] for run in repeats[story]} != {responses[story][0].shape[1]}:
                raise InputError(repeat_files[0].parent, f"repeats of {story!r} differ in voxel count from {path}.", "use repeats extracted with the same mask.")
            logger.info("story %s: %d repeats from %s (data = their mean)", story, len(repeat_files), repeat_files[0].parent)
    n_voxels = {data.shape[1] for data, _, _ in responses.values()}
    if len(n_voxels) != 1:
        raise InputError(subject_dir, f"stories have different voxel counts {sorted(n_voxels)}.")
    (n_voxels,) = n_voxels
    if options["mask"]:
        mask_path = root / options["mask"].format(subject=subject)
        mask, affine = load_mask(mask_path)
        if int(mask.sum()) != n_voxels:
            raise InputError(mask_path, f"the mask holds {int(mask.sum())} voxels but the responses have {n_voxels}.",
                             "use the mask the responses were extracted with.")
    else:
        logger.warning("dataset.mask is not set: writing a flat (%d, 1, 1) mask with an identity affine; "
                       "voxel maps cannot be placed in the brain", n_voxels)
        mask, affine = np.ones((n_voxels, 1, 1), dtype=bool), np.eye(4)
    split = segment_specs(options)
    with atomic_path(out_responses) as tmp, open_h5(tmp, "w") as handle:
        for story, (data, n_trs_raw, path) in responses.items():
            attrs = dict(tr=tr, trim_start=trim_start, trim_end=trim_end, n_trs_raw=n_trs_raw, preprocessed=True,
                         source=str(path))
            if story not in split:
                _write_story(handle, story, repeats.get(story, [data]), attrs)
                continue
            # Already cleaned and trimmed as a whole: cut, each segment with its share of the trims.
            segments = plan_segments(options, story, n_trs_raw, n_trs_raw, root / "derivative" / "respdict.json")
            for segment, rows in zip(segments, cut_trimmed_run(data, segments, n_trs_raw, trim_start, trim_end)):
                segment_trim_start, segment_trim_end = segment.trims(n_trs_raw, trim_start, trim_end)
                _write_story(handle, segment.name, [rows],
                             {**attrs, "trim_start": segment_trim_start, "trim_end": segment_trim_end,
                              "n_trs_raw": segment.n_trs_raw, **segment.attrs(len(segments))})
            _log_segments(segments, n_trs_raw, trim_start, trim_end)
    save_nifti(mask.astype(np.uint8), affine, out_mask)
    save_nifti(mask.astype(np.float32), affine, out_mean)
    logger.info("subject %s: %d stories, %d voxels", subject, len(responses), n_voxels)


def _ingest_bids(options: dict, subject: str, confound_names: list[str], out_responses, out_mask, out_mean) -> None:
    bids = BidsDataset(options)
    bids.check_subject(subject)
    root = bids.root
    tr = float(options["tr"])
    check_segment_names_free(options, bids.layout.get_tasks(), root)
    split = segment_specs(options)
    runs_by_story = {story: bids.runs(subject, story) for story in _run_stories(options)}
    all_runs = [run for runs in runs_by_story.values() for run in runs]
    first_img = bold_header(all_runs[0].bold)
    spatial_shape = first_img.shape[:3]
    affine = first_img.affine

    if options["mask"]:
        mask, affine = load_mask(Path(root) / options["mask"].format(subject=subject), spatial_shape, all_runs[0].bold)
    elif all(run.brain_mask is not None for run in all_runs):
        mask = np.ones(spatial_shape, dtype=bool)
        for run in all_runs:
            mask &= load_mask(run.brain_mask, spatial_shape, run.bold)[0]
        logger.info("mask: intersection of %d fMRIPrep brain masks, %d voxels", len(all_runs), int(mask.sum()))
    else:
        _, data = load_bold(all_runs[0].bold)
        mask = intensity_mask(data.mean(axis=3))
        logger.warning("no dataset.mask and no fMRIPrep brain mask: using an intensity mask of the mean "
                       "of %s (%d voxels)", all_runs[0].bold.name, int(mask.sum()))
    n_voxels = int(mask.sum())

    mean_sum = np.zeros(spatial_shape, dtype=np.float64)
    with atomic_path(out_responses) as tmp, open_h5(tmp, "w") as handle:
        for story, runs in tqdm(runs_by_story.items(), desc=f"ingest sub-{subject}", unit="story"):
            series, run_confounds = [], []
            for run in runs:
                img, data = load_bold(run.bold)
                check_tr(img, sidecar_metadata(root, run.bold), tr, run.bold)
                if data.shape[:3] != spatial_shape:
                    raise InputError(run.bold, f"BOLD grid {data.shape[:3]} differs from the mask grid {spatial_shape}.",
                                     "use BOLD series and mask in one space.")
                if options["layout"] == "bids":  # every run's own words must fit in it
                    run_words = words_from_events(run.events, options["bids"]["word_column"],
                                                  options["bids"]["events_trial_type"])
                    check_words_within_run(run_words, data.shape[3] * tr, run.events)
                    if run is runs[0]:
                        first_words = run_words
                    else:
                        check_same_words(first_words, run_words, runs[0].events, run.events)
                mean_sum += data.mean(axis=3)
                series.append(data[mask].T)  # (n_trs, n_voxels), voxels in C order of the mask
                if confound_names:
                    run_confounds.append(read_confounds(run.confounds, confound_names, data.shape[3], run.bold))
            lengths = {run_series.shape[0] for run_series in series}
            if len(lengths) != 1:
                raise InputError(runs[0].bold, f"the runs of story {story!r} have different lengths {sorted(lengths)}.",
                                 "repeats of a story must have the same number of volumes.")
            sources = "; ".join(str(run.bold.relative_to(root)) for run in runs)
            n_trs_raw = series[0].shape[0]
            attrs = dict(tr=tr, trim_start=0, trim_end=0, n_trs_raw=n_trs_raw, preprocessed=False, source=sources)
            logger.info("story %s: %d run(s) x %d TRs x %d voxels", story, len(series), n_trs_raw, n_voxels)
            if story not in split:
                _write_story(handle, story, series, attrs, run_confounds or None, confound_names)
                continue
            # Raw segments; preprocessing joins them, cleans the whole run and cuts it again.
            reference = _first_run_of_story(bids, options["subjects"], story)
            n_trs_reference = bold_header(reference.bold).shape[3]
            if n_trs_reference != n_trs_raw:
                logger.info("run %s has %d TRs here and %d in %s (whose cut points all subjects share): "
                            "its last segment differs in length", story, n_trs_raw, n_trs_reference, reference.bold.name)
            segments = plan_segments(options, story, n_trs_reference, n_trs_raw, runs[0].bold)
            for segment in segments:
                rows = slice(segment.start_tr, segment.stop_tr)
                _write_story(handle, segment.name, [run_series[rows] for run_series in series],
                             {**attrs, "n_trs_raw": segment.n_trs_raw, **segment.attrs(len(segments))},
                             [values[rows] for values in run_confounds] or None, confound_names)
            _log_segments(segments, n_trs_raw, int(options["trim_start"]), int(options["trim_end"]))
    save_nifti(mask.astype(np.uint8), affine, out_mask)
    save_nifti((mean_sum / len(all_runs)).astype(np.float32), affine, out_mean)


def ingest_atlas(dataset: dict, subject: str, mask_path: str | os.PathLike,
                 out_atlas: str | os.PathLike, out_labels: str | os.PathLike) -> None:
    """Copy the ROI atlas (``dataset.atlas``, on the mask grid) and its ``index name`` table."""
    options = dataset_options(dataset)
    root = _root(options)
    if not options["atlas"]:
        raise InputError(None, "dataset.atlas is not set.", "set dataset.atlas or do not request atlas outputs.")
    atlas_path = root / options["atlas"].format(subject=subject)
    if not atlas_path.is_file():
        raise InputError(atlas_path, "atlas file not found.", "check dataset.atlas (relative to dataset.root).")
    mask_img = nib.load(mask_path)
    atlas_img = nib.load(atlas_path)
    atlas = np.asanyarray(atlas_img.dataobj)
    if atlas.ndim == 4 and atlas.shape[3] == 1:
        atlas = atlas[..., 0]
    if atlas.shape != mask_img.shape:
        raise InputError(atlas_path, f"atlas shape {atlas.shape} does not match the mask {mask_img.shape}.",
                         "resample the atlas to the BOLD grid.")
    if not np.allclose(atlas_img.affine, mask_img.affine, atol=1e-3):
        logger.warning("%s: affine differs from the mask's; using the mask affine", atlas_path)
    if not np.allclose(atlas, np.round(atlas)):
        raise InputError(atlas_path, "atlas values are not integer labels.", "use a dseg (integer label) image.")
    atlas = np.round(atlas).astype(np.int32)
    present = sorted(int(index) for index in np.unique(atlas) if index != 0)
    if options["atlas_labels"]:
        labels_path = root / options["atlas_labels"]
        if not labels_path.is_file():
            raise InputError(labels_path, "atlas label table not found.", "check dataset.atlas_labels.")
        labels = pd.read_csv(labels_path, sep="\t")
        if not {"index", "name"} <= set(labels.columns):
            raise InputError(labels_path, f"needs columns index and name (found {', '.join(labels.columns)}).")
        labels = labels[["index", "name"]]
        unnamed = sorted(set(present) - set(labels["index"].astype(int)))
        if unnamed:
            logger.warning("%s: atlas indices %s have no name; calling them roi-<index>", labels_path, unnamed)
            labels = pd.concat([labels, pd.DataFrame({"index": unnamed, "name": [f"roi-{i}" for i in unnamed]})])
    else:
        labels = pd.DataFrame({"index": present, "name": [f"roi-{i}" for i in present]})
    labels = labels[labels["index"].astype(int) != 0].sort_values("index").reset_index(drop=True)
    save_nifti(atlas, mask_img.affine, out_atlas)
    write_tsv(out_labels, labels)
    logger.info("atlas for %s: %d labels, %d labelled voxels inside the mask", subject, len(labels),
                int(((atlas > 0) & (np.asanyarray(mask_img.dataobj) > 0)).sum()))
