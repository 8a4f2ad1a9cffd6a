"""EEG: BIDS EEG ingestion and MNE preprocessing, word-level and continuous (TRF) encoding.

Ingestion reads each (subject, story) recording with mne-bids (BrainVision, EDF, EEGLAB,
FIF: whatever ``read_raw_bids`` reads), takes the bad channels from ``*_channels.tsv``, the
electrode positions from the configured standard montage (or the recording's own), and the
words from ``*_events.tsv``; the words must be the story's (``words.tsv`` of the ingest
stage) so the story's features serve the recording. Preprocessing is MNE's: notch at the
line frequency and its harmonics, zero-phase FIR band-pass, optional ICA blink removal,
re-reference, bad channels interpolated (spherical splines), resampling.

Encoding uses the features of the fMRI path and its statistics:

- word-level: per word the mean amplitude of each channel in windows after its onset
  (e.g. N400 300–500 ms), predicted from the word's features of every layer by ridge
  regression; α per channel by leave-one-story-out CV on the training stories; the layer
  chosen on that validation r; held-out r per channel with a one-sided block-permutation
  p-value over consecutive words and BH-FDR over channels;
- continuous TRF: the chosen layer's features reduced to principal components of the
  training words (or all of them, z-scored), placed as impulses at word onsets on the EEG
  sample grid and time-lagged (``trf.tmin`` … ``trf.tmax``). Up to MAX_TRF_COLUMNS
  columns the lagged design is a sparse matrix (words × lags × components non-zeros, not
  samples × columns), so the normal equations are formed from sparse products and the
  memory is that of the words and one Gram matrix per story; above, ``brainllm.lagged_ridge``
  solves the same ridge by conjugate gradients from the Gram matrix's block-Toeplitz form.
  Held-out segments of a few seconds are identified among each other from its
  predictions (the decoding stage's identification, channels chosen on validation r);
- whole-vocabulary word classification: each word's epoch (channels × bins) decoded by ridge
  into the word's text embedding and scored against every vocabulary word as the fMRI word
  classification scores contrastive embeddings (``brainllm.word_decoding``). EEG → text is
  ``brainllm.generation.run_brain_prompt`` on the same epochs (``eeg_settings``).

The word-level fit and the direct TRF solve ridge from per-story Gram matrices: the Gram of
a fold is the sum of its stories', one eigendecomposition per fold serves every α.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse

from brainllm import lagged_ridge
from brainllm.align import zscore_columns
from brainllm.configuration import MAX_TRF_COLUMNS
from brainllm.ingest import is_silence
from brainllm.io import InputError, atomic_path, open_h5, read_words, write_json, write_tsv
from brainllm.metrics import fdr_bh, permutation_p, pooled_validation_r

logger = logging.getLogger(__name__)

REFERENCES = ("average", "none")
EEG_EPOCHS = {"window": (0.3, 0.5), "bin_s": 0.2}  # eeg.epochs defaults
EEG_GENERATION = {"segment_words": 6, "stride_words": 3}  # eeg.generation defaults


@dataclass(frozen=True)
class EegSettings:
    """The ``eeg`` config section, parsed once."""

    subjects: tuple[str, ...]
    root: str
    montage: str | None = "standard_1020"
    word_column: str = "word"
    events_trial_type: str | None = "word"
    line_freq: float | None = None
    l_freq: float | None = 0.5
    h_freq: float = 20.0
    reference: str = "average"
    interpolate_bads: bool = True
    ica: Mapping = field(default_factory=lambda: {"enabled": False, "n_components": 15, "eog_channels": ["Fp1", "Fp2"]})
    resample_hz: float = 100.0
    windows: Mapping[str, tuple[float, float]] = field(default_factory=lambda: {"n400": (0.3, 0.5)})
    trf_tmin: float = -0.1
    trf_tmax: float = 0.7
    trf_components: int | None = 16
    trf_solver: str = "auto"
    alphas: tuple[float, ...] = tuple(np.logspace(-2, 6, 17))
    identification_s: tuple[float, ...] = (2.0, 5.0)
    channel_fraction: float = 0.25
    epochs: Mapping = field(default_factory=lambda: dict(EEG_EPOCHS))
    generation: Mapping = field(default_factory=lambda: dict(EEG_GENERATION))
    block_words: int = 20
    block_s: float = 2.0
    n_permutations: int = 1000
    fdr_q: float = 0.05
    seed: int = 0

    @classmethod
    def from_config(cls, section: Mapping, dataset: Mapping | None = None) -> "EegSettings":
        """The settings of ``section`` (any subset of the ``eeg`` keys); ``dataset`` fills in subjects, root
        and the word column (the jobs that read recordings need it)."""
        dataset = dataset or {}
        trf = section.get("trf", {})
        alphas = section.get("alphas", {"log10_min": -2, "log10_max": 6, "num": 17})
        bids = dataset.get("bids") or {}
        return cls(
            subjects=tuple(str(s) for s in (section.get("subjects") or dataset.get("subjects") or ())),
            root=str(section.get("root") or dataset.get("root") or ""),
            montage=section.get("montage", "standard_1020"),
            word_column=str(section.get("word_column") or bids.get("word_column") or "word"),
            events_trial_type=section.get("events_trial_type", "word"),
            line_freq=section.get("line_freq"),
            l_freq=None if section.get("l_freq", 0.5) is None else float(section.get("l_freq", 0.5)),
            h_freq=float(section.get("h_freq", 20.0)),
            reference=str(section.get("reference", "average")),
            interpolate_bads=bool(section.get("interpolate_bads", True)),
            ica=dict(section.get("ica") or {"enabled": False}),
            resample_hz=float(section.get("resample_hz", 100.0)),
            windows={str(k): (float(v[0]), float(v[1])) for k, v in (section.get("windows") or {"n400": [0.3, 0.5]}).items()},
            trf_tmin=float(trf.get("tmin", -0.1)),
            trf_tmax=float(trf.get("tmax", 0.7)),
            trf_components=None if trf.get("n_components", 16) is None else int(trf.get("n_components", 16)),
            trf_solver=str(trf.get("solver", "auto")),
            alphas=tuple(np.logspace(alphas["log10_min"], alphas["log10_max"], int(alphas["num"]))),
            identification_s=tuple(float(v) for v in (section.get("identification") or {}).get("segment_s", (2.0, 5.0))),
            channel_fraction=float((section.get("identification") or {}).get("channel_fraction", 0.25)),
            epochs={**EEG_EPOCHS, **dict(section.get("epochs") or {})},
            generation={**EEG_GENERATION, **dict(section.get("generation") or {})},
            block_words=int(section.get("block_words", 20)),
            block_s=float(section.get("block_s", 2.0)),
            n_permutations=int(section.get("n_permutations", 1000)),
            fdr_q=float(section.get("fdr_q", 0.05)),
            seed=int(section.get("seed", 0)),
        )


# ----------------------------------------------------------------------------- ingestion


def recording_path(root: str | os.PathLike, subject: str, story: str):
    """The BIDS path of one recording (``sub-<subject>/eeg/sub-<subject>_task-<story>_eeg.*``)."""
    from mne_bids import BIDSPath

    path = BIDSPath(subject=subject, task=story, datatype="eeg", suffix="eeg", root=root)
    matches = [m for m in path.match() if m.extension in (".vhdr", ".edf", ".bdf", ".set", ".fif")]
    if len(matches) > 1:
        raise InputError(Path(root) / f"sub-{subject}", f"{len(matches)} EEG recordings of task {story!r}: {', '.join(m.basename for m in matches)}.",
                         "keep one recording per subject and story (runs, sessions and acquisitions are not combined).")
    if not matches:
        raise InputError(Path(root) / f"sub-{subject}" / "eeg", f"no EEG recording of task {story!r} (sub-{subject}_task-{story}_eeg.vhdr/.edf/.bdf/.set/.fif).",
                         "check eeg.root, eeg.subjects and the story names (the BIDS task entity).")
    return matches[0]


def events_path(recording) -> Path:
    """The ``*_events.tsv`` beside a recording (its BIDSPath)."""
    return Path(recording.copy().update(suffix="events", extension=".tsv").fpath)


def read_events_words(events_tsv: Path, settings: EegSettings, duration_s: float) -> pd.DataFrame:
    """Words (``word``, ``onset`` in s from the recording's first sample) of an ``*_events.tsv``."""
    if not events_tsv.exists():
        raise InputError(events_tsv, "missing: the recording has no events file, so its words cannot be placed.",
                         "write the word onsets into *_events.tsv beside the recording.")
    try:
        events = pd.read_csv(events_tsv, sep="\t", keep_default_na=False, na_values=["n/a"], dtype={settings.word_column: str})
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise InputError(events_tsv, f"not a readable tab-separated events file ({error}).", "write a TSV with onset and word columns.") from error
    for column in ("onset", settings.word_column):
        if column not in events.columns:
            raise InputError(events_tsv, f"has no column {column!r} (columns: {', '.join(events.columns)}).",
                             "set eeg.word_column (or dataset.bids.word_column) to the column holding the words.")
    if settings.events_trial_type is not None:
        if "trial_type" not in events.columns:
            raise InputError(events_tsv, "has no trial_type column to select the word rows.", "set eeg.events_trial_type: null to take every row.")
        events = events[events["trial_type"].astype(str) == settings.events_trial_type]  # as ingestion compares them
    words = events[settings.word_column].fillna("").astype(str).str.strip()
    events = events[~words.map(is_silence)]  # n/a and silence dropped, as ingestion drops them from words.tsv
    if events.empty:
        raise InputError(events_tsv, f"has no word rows (trial_type {settings.events_trial_type!r}).", "check eeg.events_trial_type.")
    onset = pd.to_numeric(events["onset"], errors="coerce").to_numpy()
    outside = (~np.isfinite(onset)) | (onset < 0) | (onset >= duration_s)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise InputError(events_tsv, f"{int(outside.sum())} word onsets lie outside the recording (0 … {duration_s:.2f} s), "
                         f"the first {events['onset'].iloc[row]!r} ({events[settings.word_column].iloc[row]!r}).",
                         "onsets are seconds from the recording's first sample; fix the events or the recording.")
    return pd.DataFrame({"word": events[settings.word_column].astype(str).str.strip().to_numpy(), "onset": onset})


def standard_montage(name: str, source):
    """MNE's built-in montage ``name`` (``standard_1020`` is ``colin27_1020`` from MNE 1.13 on)."""
    import mne

    builtin = mne.channels.get_builtin_montages()
    if name == "standard_1020" and "colin27_1020" in builtin:
        name = "colin27_1020"
    if name not in builtin:
        raise InputError(source, f"eeg.montage {name!r} is not a montage MNE ships ({', '.join(builtin)}).",
                         "name one of them, or set eeg.montage: null to keep the recording's own positions.")
    return mne.channels.make_standard_montage(name)


def read_recording(root: str | os.PathLike, subject: str, story: str, settings: EegSettings):
    """``(raw, words)``: the recording (MNE Raw, preloaded, montage set, bads marked) and its words."""
    from mne_bids import read_raw_bids

    path = recording_path(root, subject, story)
    try:
        raw = read_raw_bids(path, verbose="error")
        raw.load_data(verbose="error")
    except Exception as error:  # MNE's readers raise many types for unreadable files
        raise InputError(path.fpath, f"MNE cannot read this recording ({type(error).__name__}: {error}).",
                         "write it as BrainVision, EDF/BDF, EEGLAB .set or FIF.") from error
    if not any(kind in raw.get_channel_types() for kind in ("eeg",)):
        raise InputError(path.fpath, f"has no channel of type EEG (types: {sorted(set(raw.get_channel_types()))}).",
                         "set the channel types in *_channels.tsv (type EEG).")
    raw.pick(["eeg", "eog"])  # EOG channels serve ICA and are dropped after preprocessing
    if settings.montage:
        montage = standard_montage(settings.montage, path.fpath)
        known = {name.lower() for name in montage.ch_names}
        unknown = [name for name, kind in zip(raw.ch_names, raw.get_channel_types()) if kind == "eeg" and name.lower() not in known]
        if unknown:
            raise InputError(path.fpath, f"channels {', '.join(unknown)} are not in the montage {settings.montage!r}.",
                             "rename them to the montage's names, choose another eeg.montage, or set eeg.montage: null to keep the recording's positions.")
        raw.set_montage(montage, match_case=False, on_missing="ignore", verbose="error")
    if settings.h_freq * 2 >= raw.info["sfreq"]:
        raise InputError(path.fpath, f"sampled at {raw.info['sfreq']:g} Hz, below twice eeg.h_freq ({settings.h_freq:g} Hz).",
                         "lower eeg.h_freq under half the sampling rate.")
    words = read_events_words(events_path(path), settings, raw.n_times / raw.info["sfreq"])
    return raw, words


def check_story_words(words: pd.DataFrame, story_words: Sequence[str], source: Path, story: str) -> None:
    """The recording's words must be the story's (the features are the story's); case is not compared."""
    heard = words["word"].tolist()
    if [w.lower() for w in heard] != [str(w).lower() for w in story_words]:
        first = next((i for i, (a, b) in enumerate(zip(heard, story_words)) if a.lower() != str(b).lower()), min(len(heard), len(story_words)))
        raise InputError(source, f"its {len(heard)} words differ from story {story!r}'s {len(story_words)} (words.tsv) from word {first} "
                         f"({heard[first] if first < len(heard) else 'end'!r} vs {story_words[first] if first < len(story_words) else 'end'!r}).",
                         "the EEG events must list the story's words in order; fix the events or the story's transcript.")


SEGMENT_LEAD_S = 0.5  # a segment of a split recording starts this long before its first word (and the previous one ends there)


def recording_stories(stories: Sequence[str], dataset: Mapping | None) -> dict[str, list[str]]:
    """Recording (BIDS task) → its stories in order: a whole story is its own recording; the segments of a run
    split by ``dataset.segments`` (``<run>seg<k>``) share the run's recording."""
    from brainllm.ingest import resolve_story

    if not (dataset or {}).get("segments"):
        return {story: [story] for story in stories}
    recordings: dict[str, list[tuple[int, str]]] = {}
    for story in stories:
        run, index = resolve_story(dict(dataset), story)
        recordings.setdefault(run, []).append((index or 0, story))
    return {run: [story for _, story in sorted(items)] for run, items in recordings.items()}


def locate_words(heard: Sequence[str], story_words: Sequence[str], start: int, source, story: str) -> int:
    """First index ≥ ``start`` where ``story_words`` run contiguously in the recording's words (case not compared)."""
    heard = [str(w).lower() for w in heard]
    target = [str(w).lower() for w in story_words]
    for first in range(start, len(heard) - len(target) + 1):
        if heard[first : first + len(target)] == target:
            return first
    raise InputError(source, f"the {len(target)} words of story {story} (words.tsv) do not run in order among the recording's words "
                     f"from word {start}.", "the EEG events must list the run's words in order; fix the events or the transcript.")


def ingest_subject(root: str | os.PathLike, subject: str, stories: Sequence[str], words_tsvs: Mapping[str, str | os.PathLike],
                   settings: EegSettings, out_h5: str | os.PathLike, dataset: Mapping | None = None) -> dict:
    """Every recording of a subject into one HDF5 group per recording (volts, sensor positions, bads, word onsets),
    attr ``stories``: the stories it holds as (story, first word, number of words). A split run's segments
    (``dataset.segments``) are located in its recording's words here and cut after preprocessing."""
    import json

    summary, channels = {}, None
    recordings = recording_stories(stories, dataset)
    with atomic_path(out_h5) as tmp, open_h5(tmp, "w") as h5:
        for run, run_stories in recordings.items():
            raw, words = read_recording(root, subject, run, settings)
            source = recording_path(root, subject, run).fpath
            if channels is None:
                channels = list(raw.ch_names)
            elif set(raw.ch_names) != set(channels):
                raise InputError(source, f"its channels differ from those of recording {next(iter(recordings))!r} "
                                 f"(missing {sorted(set(channels) - set(raw.ch_names))}, extra {sorted(set(raw.ch_names) - set(channels))}).",
                                 "record every story with the same channels (an encoding model is fitted across stories).")
            else:
                raw.reorder_channels(channels)
            ranges, first = [], 0
            for story in run_stories:
                story_words = read_words(words_tsvs[story])["word"].tolist()
                if story == run:  # a whole story: the recording's words are its words
                    check_story_words(words, story_words, source, story)
                else:
                    first = locate_words(words["word"].tolist(), story_words, first, source, story)
                ranges.append([story, first, len(story_words)])
                first += len(story_words)
                summary[story] = {"recording": run, "n_samples": raw.n_times, "sfreq": raw.info["sfreq"], "bads": list(raw.info["bads"]),
                                  "n_words": len(story_words)}
            group = h5.create_group(run)
            group.create_dataset("data", data=raw.get_data().T.astype(np.float32))
            group.create_dataset("positions", data=np.array([ch["loc"][:3] for ch in raw.info["chs"]]))
            group.create_dataset("word_onset", data=words["onset"].to_numpy())
            group.attrs.update({"sfreq": raw.info["sfreq"], "ch_names": list(raw.ch_names), "bads": list(raw.info["bads"]),
                                "ch_types": list(raw.get_channel_types()), "stories": json.dumps(ranges),
                                "line_freq": raw.info["line_freq"] or np.nan, "unit": "V"})
            logger.info("sub-%s %s: %d channels, %.1f s at %g Hz, bads %s, %d words, stories %s", subject, run, len(raw.ch_names),
                        raw.n_times / raw.info["sfreq"], raw.info["sfreq"], raw.info["bads"] or "none", len(words), run_stories)
    return summary


def story_samples(word_onset: np.ndarray, first: int, n_words: int, n_samples: int, sfreq: float, whole: bool) -> tuple[int, int]:
    """Samples ``[start, stop)`` of a story in its recording: all of it for a whole story; for a segment, from
    ``SEGMENT_LEAD_S`` before its first word to the same lead before the next word (or the recording's end)."""
    if whole:
        return 0, n_samples
    start = max(0, int(round((word_onset[first] - SEGMENT_LEAD_S) * sfreq)))
    after = first + n_words
    stop = int(round((word_onset[after] - SEGMENT_LEAD_S) * sfreq)) if after < len(word_onset) else n_samples
    return start, min(stop, n_samples)


# ----------------------------------------------------------------------------- preprocessing


def raw_from_group(group):
    """An MNE RawArray (positions and bads set) from an ingested story group."""
    import mne

    names = [str(n) for n in group.attrs["ch_names"]]
    types = [str(t) for t in group.attrs["ch_types"]] if "ch_types" in group.attrs else "eeg"
    info = mne.create_info(names, float(group.attrs["sfreq"]), ch_types=types)
    raw = mne.io.RawArray(group["data"][()].T.astype(np.float64), info, verbose="error")
    positions = group["positions"][()]
    placed = {name: position for name, position in zip(names, positions) if np.isfinite(position).all() and np.abs(position).sum() > 0}
    if placed:
        raw.set_montage(mne.channels.make_dig_montage(placed, coord_frame="head"), on_missing="ignore", verbose="error")
    raw.info["bads"] = [str(b) for b in group.attrs["bads"]]
    line = float(group.attrs["line_freq"])
    raw.info["line_freq"] = None if np.isnan(line) else line
    return raw


def preprocess_raw(raw, settings: EegSettings, source: str = "recording"):
    """Notch, band-pass, optional ICA blink removal, re-reference, interpolate bads, resample (in place)."""
    line = settings.line_freq or raw.info["line_freq"]
    nyquist = raw.info["sfreq"] / 2
    if settings.h_freq >= nyquist:
        raise InputError(source, f"eeg.h_freq ({settings.h_freq:g} Hz) is not below the Nyquist frequency ({nyquist:g} Hz).", "lower eeg.h_freq.")
    if line:
        harmonics = np.arange(line, nyquist, line)
        if harmonics.size:
            raw.notch_filter(harmonics, verbose="error")
    raw.filter(settings.l_freq, settings.h_freq, fir_design="firwin", verbose="error")
    if settings.ica.get("enabled"):
        remove_blinks(raw, settings, source)
    raw.pick("eeg")
    if raw.info["bads"] and settings.interpolate_bads:  # before the reference, so that it is over every channel
        if raw.get_montage() is None:
            raise InputError(source, f"bad channels {raw.info['bads']} cannot be interpolated without sensor positions.",
                             "set eeg.montage, or eeg.interpolate_bads: false.")
        raw.interpolate_bads(reset_bads=True, verbose="error")
    elif raw.info["bads"]:
        raw.drop_channels(raw.info["bads"])  # not interpolated: left out of every analysis
    if settings.reference == "average":
        raw.set_eeg_reference("average", projection=False, verbose="error")
    elif settings.reference != "none":
        if settings.reference not in raw.ch_names:
            raise InputError(source, f"eeg.reference {settings.reference!r} is not a good EEG channel of the recording.",
                             "name one of its channels, or use average or none.")
        raw.set_eeg_reference([settings.reference], verbose="error")
    if settings.resample_hz and settings.resample_hz != raw.info["sfreq"]:
        raw.resample(settings.resample_hz, verbose="error")
    return raw


def remove_blinks(raw, settings: EegSettings, source: str = "recording") -> list[int]:
    """ICA (on a 1 Hz high-passed copy); components whose |r| with an EOG-like channel reaches ``ica.threshold`` removed."""
    from mne.preprocessing import ICA

    eog = [name for name in settings.ica.get("eog_channels", ["Fp1", "Fp2"]) if name in raw.ch_names and name not in raw.info["bads"]]
    if not eog:
        raise InputError(source, f"eeg.ica.eog_channels {list(settings.ica.get('eog_channels', []))} names no good channel of the recording.",
                         "list EOG or frontal channels (e.g. Fp1, Fp2).")
    good = [n for n, kind in zip(raw.ch_names, raw.get_channel_types()) if n not in raw.info["bads"] and kind == "eeg"]
    ica = ICA(n_components=min(int(settings.ica.get("n_components", 15)), len(good) - 1), random_state=settings.seed, max_iter="auto")
    ica.fit(raw.copy().filter(1.0, None, verbose="error"), picks=good, verbose="error")
    # an absolute correlation threshold: z-scores over a few components cannot reach MNE's default of 3
    excluded, _ = ica.find_bads_eog(raw, ch_name=eog, measure="correlation", threshold=float(settings.ica.get("threshold", 0.5)), verbose="error")
    ica.apply(raw, exclude=excluded, verbose="error")
    logger.info("ICA: %d components, %d removed as blinks (%s)", ica.n_components_, len(excluded), excluded)
    return list(excluded)


def preprocess_subject(ingested_h5: str | os.PathLike, settings: EegSettings, out_h5: str | os.PathLike) -> dict:
    """Every ingested recording through :func:`preprocess_raw` (whole, so filters see no cut), then cut into its
    stories (:func:`story_samples`), into the EEG contract: one group per story."""
    import json

    summary = {}
    with open_h5(ingested_h5) as source, atomic_path(out_h5) as tmp, open_h5(tmp, "w") as h5:
        for run in source:
            raw = preprocess_raw(raw_from_group(source[run]), settings, f"{ingested_h5}[{run}]")
            data = raw.get_data().T.astype(np.float32)
            onsets = source[run]["word_onset"][()]
            bads = [str(b) for b in source[run].attrs["bads"]]
            positions = np.array([ch["loc"][:3] for ch in raw.info["chs"]])
            sfreq = raw.info["sfreq"]
            ranges = json.loads(source[run].attrs["stories"]) if "stories" in source[run].attrs else [[run, 0, len(onsets)]]
            for story, first, n_words in ranges:
                start, stop = story_samples(onsets, first, n_words, data.shape[0], sfreq, whole=story == run)
                group = h5.create_group(story)
                group.create_dataset("data", data=data[start:stop])
                group.create_dataset("word_onset", data=onsets[first : first + n_words] - start / sfreq)
                group.attrs.update({"sfreq": sfreq, "ch_names": list(raw.ch_names), "unit": "V", "recording": run,
                                    "start_s": start / sfreq,
                                    "interpolated": bads if settings.interpolate_bads else [], "dropped": [] if settings.interpolate_bads else bads})
                group.create_dataset("positions", data=positions)
                summary[story] = {"n_samples": stop - start, "sfreq": sfreq}
                logger.info("%s: %d samples at %g Hz after preprocessing (%s from %.2f s)", story, stop - start, sfreq, run, start / sfreq)
    return summary


# ----------------------------------------------------------------------------- ridge from Gram matrices


@dataclass
class StoryGram:
    """``X^T X`` ``(p, p)``, ``X^T Y`` ``(p, c)`` of one story, and its design and targets for predictions."""

    xtx: np.ndarray
    xty: np.ndarray
    X: np.ndarray | scipy.sparse.spmatrix
    Y: np.ndarray


def story_gram(X, Y: np.ndarray) -> StoryGram:
    xtx = X.T @ X
    xtx = xtx.toarray() if scipy.sparse.issparse(xtx) else np.asarray(xtx)
    return StoryGram(xtx.astype(np.float64), np.asarray(X.T @ Y, dtype=np.float64), X, Y)


def ridge_predictions(train: Sequence[StoryGram], predict, alphas: Sequence[float]):
    """Predictions ``(n, c)`` of ``predict`` (a design) by ridge fitted on ``train``, one α after another (a generator)."""
    xtx = sum(g.xtx for g in train)
    xty = sum(g.xty for g in train)
    eigenvalues, vectors = np.linalg.eigh(xtx)
    rotated = vectors.T @ xty  # (p, c)
    for alpha in alphas:  # weights first, then the (often sparse) design: never a dense (n, p) product
        yield np.asarray(predict @ (vectors @ (rotated / (np.maximum(eigenvalues, 0) + alpha)[:, None])))


def ridge_weights(train: Sequence[StoryGram], alphas_per_target: np.ndarray) -> np.ndarray:
    """Weights ``(p, c)`` with each target's own α."""
    xtx = sum(g.xtx for g in train)
    xty = sum(g.xty for g in train)
    eigenvalues, vectors = np.linalg.eigh(xtx)
    rotated = vectors.T @ xty
    return vectors @ (rotated / (np.maximum(eigenvalues, 0)[:, None] + alphas_per_target[None, :]))


def cross_validated_alphas(grams: Mapping[str, StoryGram], train_stories: Sequence[str], alphas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-story-out over ``train_stories``: ``(alpha per target, validation r per target)``."""
    if len(train_stories) < 2:
        raise InputError(None, f"leave-one-story-out cross-validation needs two or more training stories, got {list(train_stories)}.",
                         "list more dataset.train_stories.")
    folds = [(grams[h].Y, ridge_predictions([grams[o] for o in train_stories if o != h], grams[h].X, alphas)) for h in train_stories]
    scores = pooled_validation_r(folds, len(alphas))
    best = scores.argmax(axis=0)
    return np.asarray(alphas)[best], scores[best, np.arange(scores.shape[1])]


# ----------------------------------------------------------------------------- word-level encoding


def word_amplitudes(data: np.ndarray, sfreq: float, onsets_s: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Mean amplitude ``(n_words, n_channels)`` of ``data`` ``(n_samples, n_channels)`` in ``window`` s after each onset.

    Samples past the recording's end are left out of a word's mean (NaN when none remain)."""
    start = np.round((onsets_s + window[0]) * sfreq).astype(int)
    stop = np.round((onsets_s + window[1]) * sfreq).astype(int)
    cumulative = np.vstack([np.zeros((1, data.shape[1])), np.cumsum(data, axis=0, dtype=np.float64)])
    start, stop = np.clip(start, 0, data.shape[0]), np.clip(stop, 0, data.shape[0])
    counts = (stop - start)[:, None]
    sums = cumulative[stop] - cumulative[start]
    return np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)


def epoch_bins(epochs: Mapping) -> np.ndarray:
    """Bin starts (s after word onset) of ``eeg.epochs``: ``window`` in steps of ``bin_s``."""
    begin, end = (float(v) for v in epochs["window"])
    return begin + float(epochs["bin_s"]) * np.arange(int(round((end - begin) / float(epochs["bin_s"]))))


def story_words_of_recording(words_tsv: str | os.PathLike, onsets_s: np.ndarray, story: str, source) -> pd.DataFrame:
    """The story's ``words.tsv``, one row per EEG word onset (ingestion matched them in order)."""
    words = read_words(words_tsv)
    if len(words) != len(onsets_s):
        raise InputError(source, f"story {story!r} has {len(onsets_s)} EEG word onsets and {len(words)} words in words.tsv.",
                         "rerun ingest_eeg and preprocess_eeg after changing the story's words.")
    return words


def word_epochs(data: np.ndarray, sfreq: float, onsets_s: np.ndarray, epochs: Mapping) -> np.ndarray:
    """``(n_words, n_bins, n_channels)``: each word's epoch, channels z-scored over the story, averaged in the
    bins of ``eeg.epochs`` (NaN where a bin lies wholly past the recording; a cut bin averages the samples it has)."""
    standard = zscore_columns(data)
    width = float(epochs["bin_s"])
    return np.stack([word_amplitudes(standard, sfreq, onsets_s, (begin, begin + width)) for begin in epoch_bins(epochs)], axis=1)


def fit_word_level(features: Mapping[str, np.ndarray], amplitudes: Mapping[str, np.ndarray], train_stories: Sequence[str],
                   test_stories: Sequence[str], settings: EegSettings) -> dict:
    """Ridge from word features to window amplitudes: per channel α, validation r, test r and one-sided p."""
    keep = {s: np.isfinite(amplitudes[s]).all(axis=1) for s in (*train_stories, *test_stories)}
    grams = {s: story_gram(zscore_columns(features[s][keep[s]]), zscore_columns(amplitudes[s][keep[s]])) for s in (*train_stories, *test_stories)}
    alphas, r_validation = cross_validated_alphas(grams, train_stories, settings.alphas)
    weights = ridge_weights([grams[s] for s in train_stories], alphas)
    prediction = np.vstack([grams[s].X @ weights for s in test_stories])
    observed = np.vstack([grams[s].Y for s in test_stories])
    r_test, p = permutation_p(prediction, observed, settings.n_permutations, settings.block_words, settings.seed)
    return {"alpha": alphas, "r_validation": r_validation, "r_test": r_test, "p": p, "n_test_words": len(observed)}


# ----------------------------------------------------------------------------- continuous TRF


def lag_samples(tmin: float, tmax: float, sfreq: float) -> np.ndarray:
    """Lags in samples ``round(tmin·sfreq) … round(tmax·sfreq)`` (a response this long after the word)."""
    return np.arange(int(round(tmin * sfreq)), int(round(tmax * sfreq)) + 1)


def lagged_impulse_design(onset_samples: np.ndarray, values: np.ndarray, n_samples: int, lags: np.ndarray) -> scipy.sparse.csr_matrix:
    """Sparse ``(n_samples, n_features · n_lags)``: column ``k·n_lags + j`` holds feature k of each word at onset + lags[j].

    Words sharing a sample add up; entries falling outside the recording are dropped."""
    n_words, n_features = values.shape
    rows = onset_samples[:, None, None] + lags[None, None, :]  # (n_words, 1, n_lags)
    rows = np.broadcast_to(rows, (n_words, n_features, lags.size))
    cols = np.broadcast_to(np.arange(n_features)[None, :, None] * lags.size + np.arange(lags.size)[None, None, :], rows.shape)
    data = np.broadcast_to(values[:, :, None], rows.shape)
    inside = (rows >= 0) & (rows < n_samples)
    return scipy.sparse.coo_matrix((data[inside], (rows[inside], cols[inside])), shape=(n_samples, n_features * lags.size)).tocsr()


def principal_axes(train_features: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, axes (hidden, k))`` of the training words' features, k ≤ ``n_components``."""
    mean = train_features.mean(axis=0)
    _, _, vt = np.linalg.svd(train_features - mean, full_matrices=False)
    return mean, vt[: min(n_components, vt.shape[0])].T


def trf_solver(settings: EegSettings, n_columns: int) -> str:
    """``direct`` (one eigendecomposition per fold) up to MAX_TRF_COLUMNS columns, else ``iterative``
    (``brainllm.lagged_ridge``), unless ``eeg.trf.solver`` names one."""
    if settings.trf_solver not in ("auto", "direct", "iterative"):
        raise ValueError(f"unknown TRF solver {settings.trf_solver!r}: auto, direct or iterative")
    if settings.trf_solver == "auto":
        return "direct" if n_columns <= MAX_TRF_COLUMNS else "iterative"
    if settings.trf_solver == "direct" and n_columns > MAX_TRF_COLUMNS:
        raise InputError(None, f"eeg.trf.solver is direct, and the TRF has {n_columns} columns (features × lags): the direct solver "
                         f"forms and eigendecomposes a dense Gram matrix per fold, which is limited to {MAX_TRF_COLUMNS} columns.",
                         "set eeg.trf.solver: auto (or iterative), or lower eeg.trf.n_components.")
    return settings.trf_solver


def memory_limit() -> int:
    """Bytes this process may use: the machine's memory, or its cgroup's limit (a batch job's) where lower."""
    limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            limit = min(limit, int(value))
    return limit


def check_trf_memory(n_lags: int, n_features: int, n_train_stories: int) -> None:
    """The iterative solver's arrays must fit in 80 % of the memory this job may use."""
    needed = lagged_ridge.estimated_bytes(n_lags, n_features, n_train_stories)
    available = memory_limit()
    logger.info("TRF by conjugate gradients: %d features × %d lags, about %.1f GB of lag products", n_features, n_lags, needed / 2**30)
    if needed > 0.8 * available:
        raise InputError(None, f"the TRF's {n_features} features × {n_lags} lags need about {needed / 2**30:.0f} GB "
                         f"(features² × lags per training story), more than the {available / 2**30:.0f} GB this job may use allow.",
                         "set eeg.trf.n_components to regress principal components, or shorten the lags (eeg.trf.tmin, tmax).")


def fit_trf(features: Mapping[str, np.ndarray], eeg: Mapping[str, np.ndarray], onsets_s: Mapping[str, np.ndarray], sfreq: float,
            train_stories: Sequence[str], test_stories: Sequence[str], settings: EegSettings) -> dict:
    """Continuous TRF: α per channel by leave-one-story-out CV, weights ``(k, n_lags, c)``, test r and p per channel.

    Regressors: the features' first ``trf_components`` principal components (scaled to unit
    variance on the training words), or every feature z-scored when ``trf_components`` is None."""
    stories = (*train_stories, *test_stories)
    standard = {s: zscore_columns(features[s]) for s in stories}
    if settings.trf_components is None:
        regressors = standard
    else:
        mean, axes = principal_axes(np.vstack([standard[s] for s in train_stories]), settings.trf_components)
        scores = {s: (standard[s] - mean) @ axes for s in stories}
        scale = np.vstack([scores[s] for s in train_stories]).std(axis=0)
        regressors = {s: scores[s] / scale for s in stories}
    n_features = regressors[train_stories[0]].shape[1]
    lags = lag_samples(settings.trf_tmin, settings.trf_tmax, sfreq)
    samples = {s: np.round(onsets_s[s] * sfreq).astype(int) for s in stories}
    targets = {s: zscore_columns(eeg[s]) for s in stories}
    if trf_solver(settings, n_features * lags.size) == "iterative":
        check_trf_memory(lags.size, n_features, len(train_stories))
        lagged = {s: lagged_ridge.lagged_story(samples[s], regressors[s], targets[s], lags) for s in stories}
        fitted = lagged_ridge.fit(lagged, train_stories, settings.alphas)
        alphas, r_validation = fitted["alpha"], fitted["r_validation"]
        prediction = np.vstack([lagged_ridge.predict(lagged[s], fitted["weights"]) for s in test_stories])
        weights = fitted["weights"].reshape(lags.size, n_features, -1).transpose(1, 0, 2)
    else:
        grams = {s: story_gram(lagged_impulse_design(samples[s], regressors[s], targets[s].shape[0], lags), targets[s]) for s in stories}
        alphas, r_validation = cross_validated_alphas(grams, train_stories, settings.alphas)
        fitted = ridge_weights([grams[s] for s in train_stories], alphas)
        prediction = np.vstack([grams[s].X @ fitted for s in test_stories])
        weights = fitted.reshape(n_features, lags.size, -1)
    observed = np.vstack([targets[s] for s in test_stories])
    if settings.l_freq is None or settings.l_freq < 1.0 / settings.block_s:
        logger.warning("eeg.l_freq is %s Hz: drifts slower than 1 / eeg.block_s (%.2g Hz) survive in the signal, and the TRF's block "
                    "permutation p then overstates significance (one-sided p < 0.05 in 19 %% of null draws without a high-pass, "
                    "autocorrelated word features); set eeg.l_freq ≥ %.2g Hz or lengthen eeg.block_s",
                    settings.l_freq, 1.0 / settings.block_s, 1.0 / settings.block_s)
    r_test, p = permutation_p(prediction, observed, settings.n_permutations, max(int(round(settings.block_s * sfreq)), 1), settings.seed)
    return {"alpha": alphas, "r_validation": r_validation, "r_test": r_test, "p": p,
            "weights": weights, "lags_s": lags / sfreq, "n_components": n_features,
            "prediction": prediction, "observed": observed, "story_lengths": [targets[s].shape[0] for s in test_stories]}


def identify_segments(trf: Mapping, sfreq: float, settings: EegSettings) -> list[dict]:
    """Held-out segments of ``identification_s`` seconds identified among each other from the TRF's predictions
    (correlation over the channels best by validation r), both directions, chance beside every score."""
    from brainllm.decoding import IdentificationSettings
    from brainllm.decoding import identify_segments as identify

    rows = []
    for seconds in settings.identification_s:
        samples = max(int(round(seconds * sfreq)), 1)
        identification = IdentificationSettings(segment_trs=(samples,), voxel_fraction=settings.channel_fraction,
                                                n_permutations=settings.n_permutations, seed=settings.seed,
                                                block_trs=max(int(round(settings.block_s * sfreq)), 1))  # null blocks span block_s
        for row in identify(trf["observed"], trf["prediction"], trf["story_lengths"], trf["r_validation"], identification, "TRF predictions"):
            rows.append({"segment_s": seconds, **{key: value for key, value in row.items() if key != "segment_trs"}, "segment_samples": samples})
    return rows


def trf_power(weights: np.ndarray) -> np.ndarray:
    """``(n_lags, c)``: root-mean-square of the TRF over components, per lag and channel."""
    return np.sqrt((weights**2).mean(axis=0))


def peak_latency(weights: np.ndarray, lags_s: np.ndarray, channels: np.ndarray) -> float:
    """Lag (s) of the largest TRF power averaged over ``channels`` (a boolean or index selection)."""
    return float(lags_s[int(np.argmax(trf_power(weights)[:, channels].mean(axis=1)))])


# ----------------------------------------------------------------------------- the encoding job


def read_preprocessed(path: str | os.PathLike, stories: Sequence[str]) -> tuple[dict, dict, float, list[str], np.ndarray]:
    """``(data per story, word onsets per story, sfreq, channel names, positions)`` of a preprocessed subject."""
    data, onsets = {}, {}
    with open_h5(path) as h5:
        for story in stories:
            if story not in h5:
                raise InputError(path, f"has no story {story!r}.", "rerun preprocess_eeg after adding the story's recording.")
            data[story] = h5[story]["data"][()].astype(np.float64)
            onsets[story] = h5[story]["word_onset"][()]
            grid = (float(h5[story].attrs["sfreq"]), [str(n) for n in h5[story].attrs["ch_names"]])
            if story != stories[0] and grid != (sfreq, names):
                raise InputError(path, f"story {story!r} has {grid[1]} at {grid[0]:g} Hz, story {stories[0]!r} {names} at {sfreq:g} Hz.",
                                 "record every story with the same channels (or drop the same bad channels); rerun preprocess_eeg.")
            sfreq, names = grid
            positions = h5[story]["positions"][()]
    return data, onsets, sfreq, names, positions


def run_eeg_encoding(preprocessed_h5: str | os.PathLike, manifests: Mapping[str, str | os.PathLike], words_tsvs: Mapping[str, str | os.PathLike],
                     layers: Sequence[int], train_stories: Sequence[str], test_stories: Sequence[str], settings: EegSettings,
                     out: Mapping[str, str | os.PathLike], ground_truth: Mapping | None = None) -> dict:
    """Word-level encoding of every layer and window, the layer chosen on validation r, the TRF at that layer."""
    from brainllm.store import read_entry

    stories = (*train_stories, *test_stories)
    eeg, onsets, sfreq, names, positions = read_preprocessed(preprocessed_h5, stories)
    entries = {s: read_entry(manifests[s], words_tsvs[s], layers=list(layers)) for s in stories}
    rows, test_words = [], {}
    for window_name, window in settings.windows.items():
        amplitudes = {s: word_amplitudes(eeg[s], sfreq, onsets[s], window) for s in stories}
        for layer in layers:
            fit = fit_word_level({s: entries[s].layers[layer] for s in stories}, amplitudes, train_stories, test_stories, settings)
            _, significant = fdr_bh(fit["p"], settings.fdr_q)
            test_words[(window_name, layer)] = int(fit["n_test_words"])
            rows.append(pd.DataFrame({"window": window_name, "layer": layer, "channel": names, "alpha": fit["alpha"],
                                      "r_validation": fit["r_validation"], "r_test": fit["r_test"], "p": fit["p"], "significant": significant}))
            logger.info("window %s layer %d: mean validation r %.3f, mean test r %.3f, %d channels significant", window_name, layer,
                        fit["r_validation"].mean(), fit["r_test"].mean(), significant.sum())
    table = pd.concat(rows, ignore_index=True)
    curves = table.groupby(["window", "layer"])["r_validation"].mean()
    best_window, best_layer = curves.idxmax()
    trf = fit_trf({s: entries[s].layers[best_layer] for s in stories}, eeg, onsets, sfreq, train_stories, test_stories, settings)
    _, trf_significant = fdr_bh(trf["p"], settings.fdr_q)
    identification = pd.DataFrame(identify_segments(trf, sfreq, settings))
    # the TRF's latency read on the channels it predicts best on validation data
    top = np.argsort(trf["r_validation"])[::-1][: max(1, int(round(settings.channel_fraction * len(names))))]
    latency = peak_latency(trf["weights"], trf["lags_s"], top)
    chosen = table[(table["window"] == best_window) & (table["layer"] == best_layer)]
    summary = {
        "chosen_window": best_window, "chosen_layer": int(best_layer), "selection": "mean validation r over channels (leave-one-story-out CV)",
        "n_channels": len(names), "sfreq": sfreq, "fdr_q": settings.fdr_q,
        "n_test_words": test_words[(best_window, best_layer)],
        "word_level": {"mean_r_test": float(chosen["r_test"].mean()), "significant_channels": chosen.loc[chosen["significant"], "channel"].tolist()},
        "trf": {"lags_s": [float(trf["lags_s"][0]), float(trf["lags_s"][-1])], "n_components": trf["n_components"],
                "mean_r_test": float(trf["r_test"].mean()), "peak_latency_s": latency, "latency_channels": [names[i] for i in top],
                "significant_channels": [n for n, s in zip(names, trf_significant) if s]},
        "identification": [{key: row[key] for key in ("segment_s", "direction", "n_segments", "top1", "chance_top1", "mean_percentile_rank", "p")}
                           for row in identification.to_dict("records")],
    }
    if ground_truth is not None:
        with open_h5(preprocessed_h5) as h5:
            interpolated = sorted({str(name) for story in stories for name in h5[story].attrs.get("interpolated", [])})
        summary["ground_truth"] = detection_scores(chosen, ground_truth, latency, interpolated)
    write_tsv(out["word_level"], table)
    write_tsv(out["identification"], identification)
    write_tsv(out["trf"], pd.DataFrame({"channel": names, "alpha": trf["alpha"], "r_validation": trf["r_validation"], "r_test": trf["r_test"],
                                        "p": trf["p"], "significant": trf_significant}))
    with atomic_path(out["trf_weights"]) as tmp, open_h5(tmp, "w") as h5:
        h5.create_dataset("weights", data=trf["weights"].astype(np.float32))
        h5.create_dataset("lags_s", data=trf["lags_s"])
        h5.create_dataset("positions", data=positions)
        h5.attrs.update({"ch_names": names, "layer": int(best_layer), "dims": "regressors, lags, channels",
                         "regressors": "features (z-scored)" if settings.trf_components is None else "principal components"})
    write_json(out["summary"], summary)
    logger.info("chosen: window %s, layer %d; TRF peak latency %.0f ms", best_window, best_layer, 1000 * latency)
    for row in summary["identification"]:
        logger.info("identification of %g-s segments (%s): top-1 %.3f (chance %.3f), p = %.4f", row["segment_s"], row["direction"],
                    row["top1"], row["chance_top1"], row["p"])
    return summary


# ----------------------------------------------------------------------------- whole-vocabulary word classification

def run_eeg_word_decoding(preprocessed_h5: str | os.PathLike, words_tsvs: Mapping[str, str | os.PathLike], vocabulary_tsv: str | os.PathLike,
                          vocabulary_manifest: str | os.PathLike, encoding_summary: str | os.PathLike, train_stories: Sequence[str],
                          test_stories: Sequence[str], settings: EegSettings, word_settings, out: Mapping[str, str | os.PathLike],
                          train_entries: Mapping[str, str | os.PathLike] | None = None, validation_story: str | None = None) -> dict:
    """Every vocabulary word's probability for each held-out word from its EEG epoch.

    A ridge decoder maps each word's epoch (``word_epochs``, channels × bins) to the word's text embedding
    (the vocabulary features at the layer the encoding chose on validation data, centred on the training
    words' mean); α per embedding dimension by leave-one-story-out CV over the training stories. The
    decoded embedding is scored against every vocabulary word by cosine; the softmax scale and the
    frequency prior's weight are chosen on the validation story; the test words are scored as the fMRI
    word classification scores them (``brainllm.word_decoding.classify_words``: top-k, percentile rank,
    frequency baseline, block-permutation p over ``eeg.block_words`` words).
    """
    import json
    from dataclasses import replace

    from brainllm.contrastive_settings import story_split
    from brainllm.word_decoding import decode_words_by_ridge, normalise_word, read_vocabulary, vocabulary_features

    split = story_split(train_stories, test_stories, validation_story, "eeg")
    layer = int(json.loads(Path(encoding_summary).read_text())["chosen_layer"])
    vocabulary = read_vocabulary(vocabulary_tsv)
    text = vocabulary_features(vocabulary_manifest, vocabulary_tsv, layer, word_settings.embedding, train_entries)
    index = {word: i for i, word in enumerate(vocabulary["word"])}
    stories = [story for stories in split.values() for story in stories]
    eeg, onsets, sfreq, names, _ = read_preprocessed(preprocessed_h5, stories)
    epochs, tables = {}, {}
    for story in stories:
        words = story_words_of_recording(words_tsvs[story], onsets[story], story, preprocessed_h5)
        story_epochs = word_epochs(eeg[story], sfreq, onsets[story], settings.epochs).reshape(len(words), -1)
        finite = np.isfinite(story_epochs).all(axis=1)
        table = words[["word", "onset", "offset"]].assign(story=story)
        table["vocabulary_index"] = [index.get(normalise_word(w), -1) for w in table["word"]]
        table["pair"] = np.where(finite, np.cumsum(finite) - 1, -1)  # the word's row among the story's decoded epochs
        epochs[story], tables[story] = zscore_columns(story_epochs[finite]), table
    logger.info("layer %d: %d channels, epochs %s", layer, len(names), dict(settings.epochs))
    record = {"layer": layer, "n_channels": len(names), "epochs": dict(settings.epochs), "block_words": settings.block_words}
    return decode_words_by_ridge(epochs, tables, split, text, vocabulary, settings.alphas, replace(word_settings, block_trs=settings.block_words),
                                 out, mode="eeg", record=record)


def detection_scores(chosen: pd.DataFrame, ground_truth: Mapping, latency_s: float, interpolated: Sequence[str] = ()) -> dict:
    """Sensitivity / specificity of the significant channels against the planted ones, and the latency error.

    Interpolated channels are left out of specificity: they are computed from the recorded ones
    (planted channels included), so a response found there is not a false detection."""
    planted = set(ground_truth["planted_channels"])
    significant = set(chosen.loc[chosen["significant"], "channel"])
    others = set(chosen["channel"]) - planted - set(interpolated)
    return {
        "planted_channels": sorted(planted),
        "interpolated_channels": sorted(interpolated),
        "sensitivity": len(significant & planted) / max(len(planted), 1),
        "specificity": len(others - significant) / max(len(others), 1),
        "latency_error_s": latency_s - float(ground_truth["latency_s"]),
    }
