"""Word-level features → TR grid: Lanczos resampling, trimming, z-scoring, FIR delays.

Times are seconds of scan time (words.tsv). TR k of a run is centred at k·TR + TR/2;
with the ds003020 audio starting 10 s into the scan this is the reference grid
"2k − 9 s after audio onset". Features are resampled on all raw TRs, then trimmed
``[trim_start : n_trs_raw − trim_end]`` exactly like the responses, then z-scored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .io import InputError, atomic_path, open_h5

log = logging.getLogger(__name__)

__all__ = [
    "tr_times",
    "seconds_to_trs",
    "trs_to_seconds",
    "lanczos_kernel",
    "lanczos_matrix",
    "zscore_columns",
    "align_story",
    "make_delayed",
    "align_subject",
    "read_aligned",
]


def trs_to_seconds(n_trs: float | np.ndarray, tr: float) -> float | np.ndarray:
    """A duration in TRs as seconds."""
    return np.asarray(n_trs, dtype=np.float64) * tr


def seconds_to_trs(seconds: float | np.ndarray, tr: float) -> float | np.ndarray:
    """A duration in seconds as (fractional) TRs."""
    return np.asarray(seconds, dtype=np.float64) / tr


def tr_times(n_trs_raw: int, tr: float) -> np.ndarray:
    """Scan-time centre (s) of every raw TR: ``(n_trs_raw,)`` with TR k at k·TR + TR/2."""
    if n_trs_raw < 1 or tr <= 0:
        raise ValueError(f"need n_trs_raw >= 1 and tr > 0, got {n_trs_raw}, {tr}")
    return trs_to_seconds(np.arange(n_trs_raw) + 0.5, tr)


def lanczos_kernel(x: np.ndarray, window: int = 3) -> np.ndarray:
    """L(x) = a·sin(πx)·sin(πx/a)/(π²x²), L(0) = 1, 0 for |x| > a (a = ``window``)."""
    x = np.asarray(x, dtype=np.float64)
    # np.sinc(u) = sin(πu)/(πu), so sinc(x)·sinc(x/a) equals the formula, with L(0) = 1 built in
    values = np.sinc(x) * np.sinc(x / window)
    values[np.abs(x) > window] = 0.0
    return values


def lanczos_matrix(
    tr_times: np.ndarray,
    word_times: np.ndarray,
    window: int = 3,
    cutoff_mult: float = 1.0,
    *,
    tr: float,
    normalise: bool = False,
) -> np.ndarray:
    """Interpolation matrix ``(n_trs, n_words)``: aligned = matrix @ word_features.

    x = (t_tr − t_word)·cutoff with cutoff = cutoff_mult / tr. Rows are unnormalised by
    default (each TR is a word-rate-weighted sum, as in the reference); ``normalise``
    divides each row by the sum of its absolute weights, Σ|L| (rows without words stay
    zero). The plain sum ΣL is not used: the kernel's negative lobes can make it
    arbitrarily close to zero (two close words at a lobe edge gave weights of ±352),
    whereas with Σ|L| every weight is in [−1, 1].
    """
    cutoff = cutoff_mult / tr
    x = (np.asarray(tr_times, np.float64)[:, None] - np.asarray(word_times, np.float64)[None, :]) * cutoff
    matrix = lanczos_kernel(x, window)
    if normalise:
        mass = np.abs(matrix).sum(1, keepdims=True)
        matrix = np.divide(matrix, mass, out=np.zeros_like(matrix), where=mass > 1e-12)
    return matrix


def zscore_columns(X: np.ndarray) -> np.ndarray:
    """Z-score each column of ``X`` ``(n_rows, n_columns)`` (population std); constant columns → 0."""
    X = np.asarray(X, dtype=np.float64)
    std = X.std(0)
    return np.divide(X - X.mean(0), std, out=np.zeros_like(X), where=std > 0)


def align_story(
    word_features: np.ndarray,
    onsets: np.ndarray,
    offsets: np.ndarray,
    n_trs_raw: int,
    tr: float,
    trim_start: int,
    trim_end: int,
    window: int = 3,
    cutoff_mult: float = 1.0,
    normalise: bool = False,
    zscore: bool = True,
) -> np.ndarray:
    """One story's ``(n_words, d)`` word features → ``(n_trs_raw − trim_start − trim_end, d)`` float32.

    Word time = midpoint (onset + offset)/2 in scan seconds; Lanczos onto every raw TR,
    trim like the responses, z-score per column over the kept TRs.
    """
    word_features = np.asarray(word_features, dtype=np.float64)
    onsets, offsets = np.asarray(onsets, np.float64), np.asarray(offsets, np.float64)
    if word_features.ndim != 2 or not (len(word_features) == len(onsets) == len(offsets)):
        raise ValueError(
            f"word_features {word_features.shape}, onsets {onsets.shape} and offsets {offsets.shape} disagree"
        )
    n_kept = n_trs_raw - trim_start - trim_end
    if n_kept < 2:
        raise ValueError(f"trimming {trim_start}+{trim_end} of {n_trs_raw} raw TRs leaves {n_kept} rows")
    midpoints = (onsets + offsets) / 2.0
    matrix = lanczos_matrix(tr_times(n_trs_raw, tr), midpoints, window, cutoff_mult, tr=tr, normalise=normalise)
    aligned = (matrix @ word_features)[trim_start : n_trs_raw - trim_end]
    if zscore:
        aligned = zscore_columns(aligned)
    return aligned.astype(np.float32)


def make_delayed(X: np.ndarray, delays: Sequence[int]) -> np.ndarray:
    """FIR design ``(n_trs, d · len(delays))``: X shifted down by each delay (zero-padded), concatenated.

    Row t of the block for delay k holds X[t − k], so a response at t sees the stimulus k TRs
    earlier; negative delays shift up.
    """
    X = np.asarray(X)
    n_trs, n_features = X.shape
    if delays and max(abs(int(delay)) for delay in delays) >= n_trs:
        raise InputError(None, f"a delay of {max(abs(int(d)) for d in delays)} TRs is not shorter than a story of {n_trs} TRs "
                         "(its delayed features would be all zero).", "use encoding.delays shorter than the shortest story.")
    delayed = np.zeros((n_trs, n_features * len(delays)), dtype=X.dtype)
    for i, delay in enumerate(delays):
        block = delayed[:, i * n_features : (i + 1) * n_features]
        if delay > 0:
            block[delay:] = X[: n_trs - delay] if delay < n_trs else 0
        elif delay < 0:
            block[: n_trs + delay] = X[-delay:] if -delay < n_trs else 0
        else:
            block[:] = X
    return delayed


def layer_key(layer: int) -> str:
    """Dataset name of a layer: ``layer_NN``."""
    return f"layer_{layer:02d}"


def _story_grid(responses_h5: str | os.PathLike, story: str) -> dict:
    """TR grid of one story from the responses file, checked for consistency."""
    with open_h5(responses_h5) as h5:
        if story not in h5:
            raise InputError(
                responses_h5,
                f"no group for story {story!r} (found: {', '.join(sorted(h5)) or 'none'}).",
                "list only stories present in the responses under dataset.train_stories/test_stories.",
            )
        group = h5[story]
        missing = [key for key in ("tr", "trim_start", "trim_end", "n_trs_raw") if key not in group.attrs]
        if missing:
            raise InputError(
                responses_h5,
                f"group {story!r} lacks attrs {missing}; alignment needs the TR grid of fMRI responses.",
                "re-run the ingest/preprocess rules (EEG recordings are not aligned to a TR grid).",
            )
        grid = {
            "tr": float(group.attrs["tr"]),
            "trim_start": int(group.attrs["trim_start"]),
            "trim_end": int(group.attrs["trim_end"]),
            "n_trs_raw": int(group.attrs["n_trs_raw"]),
            "n_trs": int(group["data"].shape[0]),
        }
    expected = grid["n_trs_raw"] - grid["trim_start"] - grid["trim_end"]
    if expected != grid["n_trs"]:
        raise InputError(
            responses_h5,
            f"story {story!r}: data has {grid['n_trs']} rows but n_trs_raw {grid['n_trs_raw']} − trim_start "
            f"{grid['trim_start']} − trim_end {grid['trim_end']} = {expected}; features would be misaligned.",
            "check dataset.trim_start/trim_end and the number of raw TRs (respdict.json) for this story.",
        )
    return grid


def align_subject(
    responses_h5: str | os.PathLike,
    feature_entries: Mapping[str, str | os.PathLike],
    words_tsvs: Mapping[str, str | os.PathLike],
    layers: Sequence[int] | None,
    out_h5: str | os.PathLike,
    settings: Mapping | None = None,
) -> None:
    """Align every story's feature-store entry to that subject's TR grid.

    Writes ``out_h5``: one group per story with datasets ``layer_NN`` ``(n_trs, hidden)``
    float32 (trimmed like the responses, z-scored per story, no delays). ``settings``:
    ``lanczos_window`` (3), ``lanczos_cutoff_mult`` (1.0), ``lanczos_normalise`` (False).
    """
    from .store import read_entry  # the feature store is only needed here

    settings = dict(settings or {})
    window = int(settings.get("lanczos_window", 3))
    cutoff_mult = float(settings.get("lanczos_cutoff_mult", 1.0))
    normalise = bool(settings.get("lanczos_normalise", False))
    log.info("aligning %d stories (Lanczos window %d, cutoff ×%g, normalise %s)", len(feature_entries), window, cutoff_mult, normalise)
    with atomic_path(out_h5) as tmp, open_h5(tmp, "w") as out:
        out.attrs.update(lanczos_window=window, lanczos_cutoff_mult=cutoff_mult, lanczos_normalise=normalise)
        for story, entry_path in tqdm(sorted(feature_entries.items()), desc="align", unit="story"):
            grid = _story_grid(responses_h5, story)
            entry = read_entry(entry_path, words_tsv=words_tsvs.get(story), layers=None if layers is None else list(layers))
            group = out.create_group(story)
            group.attrs.update({key: grid[key] for key in ("tr", "trim_start", "trim_end", "n_trs_raw")})
            group.attrs["feature_entry"] = os.fspath(entry_path)
            for layer, word_features in sorted(entry.layers.items()):
                aligned = align_story(
                    word_features, entry.onset, entry.offset, grid["n_trs_raw"], grid["tr"],
                    grid["trim_start"], grid["trim_end"], window, cutoff_mult, normalise,
                )
                group.create_dataset(layer_key(layer), data=aligned)
            log.info("%s: %d words → %d TRs, %d layers", story, len(entry.onset), grid["n_trs"], len(entry.layers))


def read_aligned(path: str | os.PathLike, stories: Sequence[str], layer: int) -> dict[str, np.ndarray]:
    """``{story: (n_trs, hidden)}`` of one layer from an alignment file, with clear errors."""
    key = layer_key(layer)
    out = {}
    with open_h5(path) as h5:
        for story in stories:
            if story not in h5:
                raise InputError(path, f"no aligned features for story {story!r}.", "re-run the align rule.")
            if key not in h5[story]:
                found = ", ".join(sorted(h5[story]))
                raise InputError(
                    path, f"story {story!r} has no {key} (found: {found}).",
                    "choose a layer the model has (models.<name>.layers) and re-run the align rule.",
                )
            out[story] = h5[story][key][()]
    return out
