"""fMRI preprocessing: confound regression, detrending, trimming and z-scoring per run.

``clean_run`` cleans one run ``(n_trs, n_voxels)``; ``preprocess_subject`` applies it to
every raw run of an ingested ``responses.h5`` (see docs/outputs.md), drops voxels that
are NaN or constant in any run from every story and from the mask, and passes
already-preprocessed stories (ds003020) through unchanged.

Segments of a split run (``dataset.segments``) are joined back into the whole run, which
is cleaned as one (confounds, detrending, trimming at the run's two ends, z-scoring over
all its kept TRs) and then cut again: each segment keeps its rows and its share of the
trims (``brainllm.ingest.Segment.trims``).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.signal import savgol_filter
from tqdm import tqdm

from brainllm.io import InputError, atomic_path, open_h5
from brainllm.ingest import Segment, cut_trimmed_run, save_nifti

logger = logging.getLogger(__name__)

DETREND_METHODS = ("savgol", "polynomial", "none")
# A cleaned voxel whose spread fell below this fraction of its raw spread carried no
# signal beyond the removed trend/confounds: it cannot be z-scored meaningfully.
_CONSTANT_REL_TOL = 1e-6


def seconds_to_trs(seconds: float, tr: float) -> float:
    """Convert a duration in seconds to (fractional) TRs."""
    return seconds / tr


def savgol_window_trs(window_s: float, tr: float, n_trs: int) -> int:
    """Odd Savitzky–Golay window in TRs nearest ``window_s`` (ties go up), capped to the run.

    The cap is the largest odd number not above ``n_trs``.
    """
    window = 2 * int(np.floor(seconds_to_trs(window_s, tr) / 2.0)) + 1
    largest_odd = n_trs if n_trs % 2 == 1 else n_trs - 1
    return max(1, min(window, largest_odd))


def regress_confounds(bold: np.ndarray, confounds: np.ndarray | None) -> np.ndarray:
    """Residuals of ``bold`` (n_trs, n_voxels) after least squares on [1, confounds].

    ``confounds`` is (n_trs, n_confounds) or None; with None only the mean is removed.
    """
    n_trs = bold.shape[0]
    design = np.ones((n_trs, 1))
    if confounds is not None and confounds.size:
        design = np.column_stack([design, confounds])
    beta, *_ = np.linalg.lstsq(design, bold, rcond=None)
    return bold - design @ beta


def polynomial_trend(bold: np.ndarray, order: int) -> np.ndarray:
    """Least-squares polynomial of ``order`` in time fitted to each column of ``bold``."""
    n_trs = bold.shape[0]
    time = np.linspace(-1.0, 1.0, n_trs)  # scaled time keeps the design well conditioned
    design = np.polynomial.legendre.legvander(time, order)
    beta, *_ = np.linalg.lstsq(design, bold, rcond=None)
    return design @ beta


def savgol_trend(bold: np.ndarray, window_trs: int, polyorder: int) -> np.ndarray:
    """Savitzky–Golay smooth of each column of ``bold`` (n_trs, n_voxels) along time."""
    if window_trs <= polyorder:
        raise InputError(
            None,
            f"the Savitzky-Golay window ({window_trs} TRs) must exceed its polynomial order "
            f"({polyorder}).",
            "raise preprocess.savgol_window_s, lower preprocess.savgol_polyorder, "
            "or use preprocess.detrend: polynomial.",
        )
    return savgol_filter(bold, window_length=window_trs, polyorder=polyorder, axis=0)


def clean_run(
    bold: np.ndarray,
    tr: float,
    *,
    detrend: str = "savgol",
    savgol_window_s: float = 120.0,
    savgol_polyorder: int = 2,
    polynomial_order: int = 2,
    confounds: np.ndarray | None = None,
    zscore: bool = True,
    trim_start: int = 10,
    trim_end: int = 10,
) -> np.ndarray:
    """Clean one run: regress confounds, detrend, trim, z-score.

    Parameters
    ----------
    bold : (n_trs, n_voxels) raw time series of one run.
    tr : repetition time in seconds.
    detrend : "savgol" (subtract a Savitzky–Golay trend, window ``savgol_window_s`` seconds
        rounded to the nearest odd number of TRs, capped to the run), "polynomial"
        (subtract a least-squares polynomial of ``polynomial_order`` in time) or "none".
    confounds : (n_trs, n_confounds) regressed out together with an intercept, or None
        (the intercept alone).
    zscore : z-score every voxel over the kept TRs (population standard deviation).
    trim_start, trim_end : TRs removed at each end after detrending on the full run.

    Returns
    -------
    (n_trs - trim_start - trim_end, n_voxels) float32. Voxels that contain NaN, are
    constant, or (with ``zscore``) have no variance left after cleaning come back as NaN.
    """
    bold = np.asarray(bold, dtype=np.float64)
    if bold.ndim != 2:
        raise InputError(None, f"a run must be 2-D (n_trs, n_voxels); got shape {bold.shape}.")
    n_trs, n_voxels = bold.shape
    n_kept = n_trs - trim_start - trim_end
    if trim_start < 0 or trim_end < 0 or n_kept < 2:
        raise InputError(
            None,
            f"trimming {trim_start} + {trim_end} TRs leaves {n_kept} of {n_trs} TRs.",
            "lower dataset.trim_start / dataset.trim_end or check the run length.",
        )
    if detrend not in DETREND_METHODS:
        raise InputError(None, f"unknown detrend method {detrend!r}.", f"use one of {DETREND_METHODS}.")
    if confounds is not None:
        confounds = np.asarray(confounds, dtype=np.float64)
        if confounds.ndim == 1:
            confounds = confounds[:, None]
        if confounds.shape[0] != n_trs:
            raise InputError(
                None, f"confounds have {confounds.shape[0]} rows but the run has {n_trs} TRs."
            )
        if not np.isfinite(confounds).all():
            raise InputError(None, "confounds contain NaN or infinite values.")

    out = np.full((n_kept, n_voxels), np.nan)
    usable = np.isfinite(bold).all(axis=0) & (np.ptp(bold, axis=0) > 0)
    if usable.any():
        series = bold[:, usable]
        cleaned = regress_confounds(series, confounds)
        if detrend == "savgol":
            window = savgol_window_trs(savgol_window_s, tr, n_trs)
            cleaned = cleaned - savgol_trend(cleaned, window, savgol_polyorder)
        elif detrend == "polynomial":
            cleaned = cleaned - polynomial_trend(cleaned, polynomial_order)
        kept = cleaned[trim_start : n_trs - trim_end]
        if zscore:
            spread = kept.std(axis=0)
            flat = spread <= _CONSTANT_REL_TOL * series.std(axis=0)
            kept = (kept - kept.mean(axis=0)) / np.where(flat, 1.0, spread)
            kept[:, flat] = np.nan
        out[:, usable] = kept
    return out.astype(np.float32)


def _story_runs(group) -> np.ndarray:
    """(n_runs, n_trs, n_voxels): the ``repeats`` of a story, or its ``data`` as one run."""
    if "repeats" in group:
        return group["repeats"][()]
    return group["data"][()][None]


def _story_confounds(group, names: list[str], n_runs: int, path) -> list[np.ndarray | None]:
    """Per run (n_trs, n_confounds) columns ``names`` of the stored confounds, or Nones."""
    if not names:
        return [None] * n_runs
    stored = group.get("confounds")
    stored_names = [str(name) for name in stored.attrs["names"]] if stored is not None else []
    missing = [name for name in names if name not in stored_names]
    if missing:
        raise InputError(
            path,
            f"story {group.name.strip('/')!r} has no stored confounds {missing} (stored: {stored_names}).",
            "re-run ingestion with these preprocess.confounds (fMRIPrep derivatives needed).",
        )
    values = stored[()]
    if values.ndim == 2:
        values = values[None]
    columns = [stored_names.index(name) for name in names]
    return [run[:, columns] for run in values]


def _cleaning_units(handle, path) -> list[list[str]]:
    """Groups cleaned together: ``[story]`` per whole story, the segment groups of a split
    raw run in segment order (checked to cover the run contiguously)."""
    units, split = [], {}
    for story in handle.keys():
        attrs = handle[story].attrs
        if "segment_of" in attrs and not bool(attrs.get("preprocessed", False)):
            split.setdefault(str(attrs["segment_of"]), []).append(story)
        else:
            units.append([story])
    for run_story, names in split.items():
        names.sort(key=lambda name: int(handle[name].attrs["segment_index"]))
        expected_start = 0
        n_segments = int(handle[names[0]].attrs["n_segments"])
        indices = [int(handle[name].attrs["segment_index"]) for name in names]
        if indices != list(range(1, n_segments + 1)):
            raise InputError(path, f"run {run_story!r} has segments {indices} of {n_segments}; the whole run "
                                   "is needed to clean it.", "re-run ingestion.")
        for name in names:
            attrs = handle[name].attrs
            if int(attrs["segment_start_tr"]) != expected_start:
                raise InputError(path, f"segment {name!r} starts at TR {int(attrs['segment_start_tr'])}, not at "
                                       f"{expected_start} where the previous one ends.", "re-run ingestion.")
            expected_start += int(attrs["n_trs_raw"])
        units.append(names)
    return units


def _segments_of(handle, names: list[str]) -> list[Segment]:
    segments = []
    for name in names:
        attrs = handle[name].attrs
        start = int(attrs["segment_start_tr"])
        segments.append(Segment(str(attrs["segment_of"]), int(attrs["segment_index"]), start,
                                start + int(attrs["n_trs_raw"])))
    return segments


def _clean_unit(source, unit: list[str], runs_by_group: dict[str, np.ndarray], path, confound_names: list[str],
                clean_options: dict, trim_start: int, trim_end: int) -> dict[str, tuple[np.ndarray, dict]]:
    """Clean one raw story, or the joined segments of a split run, as whole runs.

    Returns ``{story: (cleaned runs (n_runs, n_kept, n_voxels), attrs)}``; segments get
    their rows of the cleaned run and their share of the trims.
    """
    whole_runs = np.concatenate([runs_by_group[story] for story in unit], axis=1)  # (n_runs, n_trs, n_voxels)
    n_runs, n_trs_run = whole_runs.shape[:2]
    confounds_by_group = [_story_confounds(source[story], confound_names, n_runs, path) for story in unit]
    whole_confounds = [None if pieces[0] is None else np.concatenate(pieces) for pieces in zip(*confounds_by_group)]
    tr = float(source[unit[0]].attrs["tr"])
    cleaned = np.stack([
        clean_run(run, tr, confounds=confounds, trim_start=trim_start, trim_end=trim_end, **clean_options)
        for run, confounds in zip(whole_runs, whole_confounds)
    ])
    if len(unit) == 1:
        pieces, trims = [cleaned], [(trim_start, trim_end)]
    else:
        segments = _segments_of(source, unit)
        pieces = cut_trimmed_run(cleaned, segments, n_trs_run, trim_start, trim_end, axis=1)
        trims = [segment.trims(n_trs_run, trim_start, trim_end) for segment in segments]
        logger.info("run %s: %d segments joined, cleaned as one run of %d TRs, cut again (%s kept TRs)",
                    segments[0].run_story, len(segments), n_trs_run, "/".join(str(piece.shape[1]) for piece in pieces))
    out = {}
    for story, piece, (story_trim_start, story_trim_end) in zip(unit, pieces, trims):
        attrs = dict(source[story].attrs)
        attrs.update(
            trim_start=int(attrs.get("trim_start", 0)) + story_trim_start,
            trim_end=int(attrs.get("trim_end", 0)) + story_trim_end,
            preprocessed=True,
            cleaning=json.dumps({**clean_options, "confounds": confound_names}),
        )
        out[story] = (piece, attrs)
    return out


def preprocess_subject(
    responses_in: str | os.PathLike,
    mask_in: str | os.PathLike,
    responses_out: str | os.PathLike,
    mask_out: str | os.PathLike,
    options: dict,
    *,
    trim_start: int,
    trim_end: int,
) -> dict:
    """Clean every raw story of an ingested ``responses.h5`` (layout in docs/outputs.md).

    ``options`` is the ``preprocess`` config section. Raw runs go through ``clean_run``
    (z-scored per run; a story's ``data`` is the mean of its cleaned ``repeats``);
    stories already marked ``preprocessed`` pass through unchanged. The raw segments of a
    split run (attr ``segment_of``) are joined, cleaned as one run (``trim_start`` at its
    start, ``trim_end`` at its end) and cut again. Voxels that are NaN or constant in any
    run of any story are dropped everywhere and from the mask.
    Returns a summary: stories cleaned / passed through, voxels kept / dropped.
    """
    responses_in, responses_out = Path(responses_in), Path(responses_out)
    mask_img = nib.load(mask_in)
    mask = np.asanyarray(mask_img.dataobj) > 0
    n_mask_voxels = int(mask.sum())
    confound_names = list(options.get("confounds", []))
    clean_options = dict(
        detrend=options.get("detrend", "savgol"),
        savgol_window_s=float(options.get("savgol_window_s", 120.0)),
        savgol_polyorder=int(options.get("savgol_polyorder", 2)),
        polynomial_order=int(options.get("polynomial_order", 2)),
        zscore=bool(options.get("zscore", True)),
    )
    summary = {"cleaned": [], "passed_through": [], "voxels_in": n_mask_voxels}
    scratch = responses_out.with_name(f".{responses_out.name}.{uuid.uuid4().hex[:8]}.scratch.h5")
    responses_out.parent.mkdir(parents=True, exist_ok=True)
    try:
        bad = np.zeros(n_mask_voxels, dtype=bool)
        with open_h5(responses_in) as source, open_h5(scratch, "w") as staged:
            for unit in tqdm(_cleaning_units(source, responses_in), desc="preprocess", unit="run"):
                runs_by_group = {story: _story_runs(source[story]) for story in unit}
                for story, runs in runs_by_group.items():
                    if runs.shape[2] != n_mask_voxels:
                        raise InputError(
                            responses_in,
                            f"story {story!r} has {runs.shape[2]} voxels but the mask {mask_in} holds {n_mask_voxels}.",
                            "re-run ingestion so responses and mask agree.",
                        )
                if len({runs.shape[0] for runs in runs_by_group.values()}) != 1:
                    raise InputError(responses_in, f"the segments {unit} hold different numbers of runs.",
                                     "re-run ingestion.")
                first = source[unit[0]]
                if bool(first.attrs.get("preprocessed", False)):
                    (story,) = unit
                    out = staged.create_group(story)
                    out.create_dataset("data", data=first["data"][()])
                    if "repeats" in first:
                        out.create_dataset("repeats", data=runs_by_group[story])
                    for key, value in first.attrs.items():
                        out.attrs[key] = value
                    cleaned_by_group = {story: runs_by_group[story]}
                    summary["passed_through"].append(story)
                else:
                    cleaned_by_group = {}
                    for story, (cleaned, attrs) in _clean_unit(source, unit, runs_by_group, responses_in,
                                                               confound_names, clean_options, trim_start,
                                                               trim_end).items():
                        out = staged.create_group(story)
                        out.create_dataset("runs", data=cleaned)
                        for key, value in attrs.items():
                            out.attrs[key] = value
                        cleaned_by_group[story] = cleaned
                    summary["cleaned"] += unit
                for story, cleaned in cleaned_by_group.items():
                    story_bad = ~np.isfinite(cleaned).all(axis=(0, 1)) | (np.ptp(cleaned, axis=1) == 0).any(axis=0)
                    if story_bad.any():
                        logger.info("story %s: %d NaN or constant voxel(s)", story, int(story_bad.sum()))
                    bad |= story_bad
        good = ~bad
        if not good.any():
            raise InputError(responses_in, "every voxel is NaN or constant in some run.", "check the input data.")
        with atomic_path(responses_out) as tmp, open_h5(scratch) as staged, open_h5(tmp, "w") as target:
            for story in staged.keys():
                group, out = staged[story], target.create_group(story)
                if "runs" in group:
                    runs = group["runs"][()][:, :, good]
                    if runs.shape[0] == 1:
                        out.create_dataset("data", data=runs[0])
                    else:
                        out.create_dataset("repeats", data=runs)
                        out.create_dataset("data", data=runs.mean(axis=0, dtype=np.float64).astype(np.float32))
                else:
                    for name in ("data", "repeats"):
                        if name in group:
                            out.create_dataset(name, data=group[name][()][..., good])
                for key, value in group.attrs.items():
                    out.attrs[key] = value
    finally:
        if scratch.exists():
            scratch.unlink()
    new_mask = mask.copy()
    new_mask[tuple(coords[bad] for coords in np.nonzero(mask))] = False
    save_nifti(new_mask.astype(np.uint8), mask_img.affine, mask_out)
    summary.update(voxels_dropped=int(bad.sum()), voxels_kept=int(good.sum()))
    logger.info(
        "cleaned %d stor(ies), passed %d through unchanged; dropped %d NaN or constant voxel(s), kept %d",
        len(summary["cleaned"]), len(summary["passed_through"]), summary["voxels_dropped"], summary["voxels_kept"],
    )
    return summary


# --------------------------------------------------------------------------- trimming checks

MAX_TRIMMED_FRACTION = 0.2  # a run losing more of its TRs to trimming is warned about
TRIM_CHECK_COLUMNS = ["story", "run", "n_trs_raw", "trim_start", "trim_end", "trimmed_fraction",
                      "kept_start_s", "kept_end_s", "first_word_onset_s", "last_word_offset_s", "warning"]


def trim_checks(responses_h5: str | os.PathLike, words_tsvs: dict[str, str | os.PathLike]) -> "pd.DataFrame":
    """One row per story of a preprocessed ``responses.h5``: what trimming removed, and warnings.

    A run (a story, or the whole run of split segments) that loses more than
    ``MAX_TRIMMED_FRACTION`` of its TRs, and a story whose kept TRs
    ``[trim_start·TR, (n_trs_raw − trim_end)·TR)`` miss its first word's onset or its last
    word's offset (``words_tsvs``: story → words.tsv, times from the story's start), get a
    ``warning`` (logged too). Already-preprocessed responses (ds003020) carry the dataset's
    own trims; their warning says so.
    """
    import pandas as pd

    rows = []
    with open_h5(responses_h5) as handle:
        stories = {story: dict(handle[story].attrs) for story in handle.keys()}
    runs: dict[str, list[str]] = {}
    for story, attrs in stories.items():
        runs.setdefault(str(attrs.get("segment_of", story)), []).append(story)
    for run, members in runs.items():
        n_raw = sum(int(stories[s]["n_trs_raw"]) for s in members)
        n_trimmed = sum(int(stories[s].get("trim_start", 0)) + int(stories[s].get("trim_end", 0)) for s in members)
        fraction = n_trimmed / n_raw if n_raw else float("nan")
        for story in members:
            attrs = stories[story]
            tr, n_trs_raw = float(attrs["tr"]), int(attrs["n_trs_raw"])
            trim_start, trim_end = int(attrs.get("trim_start", 0)), int(attrs.get("trim_end", 0))
            kept_start, kept_end = trim_start * tr, (n_trs_raw - trim_end) * tr
            first = last = float("nan")
            if story in words_tsvs:
                words = pd.read_csv(words_tsvs[story], sep="\t")
                if len(words):
                    first, last = float(words["onset"].min()), float(words["offset"].max())
            problems = []
            if fraction > MAX_TRIMMED_FRACTION:
                problems.append(f"trimming removes {fraction:.0%} of the TRs of run {run} ({n_trimmed} of {n_raw})")
            if trim_start and first < kept_start:
                problems.append(f"trim_start ({kept_start:g} s) cuts into the stimulus (first word at {first:g} s)")
            if trim_end and last > kept_end:
                problems.append(f"trim_end cuts into the stimulus (kept TRs end at {kept_end:g} s, last word ends at {last:g} s)")
            warning = "; ".join(problems)
            if warning and bool(attrs.get("preprocessed", False)) and "cleaning" not in attrs:
                warning += " (trims fixed by the dataset's own preprocessing)"
            if warning:
                logger.warning("story %s: %s. Fix: lower dataset.trim_start/trim_end or give them in seconds "
                               "(trim_start_s/trim_end_s).", story, warning)
            rows.append({"story": story, "run": run, "n_trs_raw": n_trs_raw, "trim_start": trim_start, "trim_end": trim_end,
                         "trimmed_fraction": fraction, "kept_start_s": kept_start, "kept_end_s": kept_end,
                         "first_word_onset_s": first, "last_word_offset_s": last, "warning": warning})
    return pd.DataFrame(rows, columns=TRIM_CHECK_COLUMNS)
