"""The demo's EEG recordings: the same stories and subjects, in BIDS EEG (BrainVision, via mne-bids).

Each (subject, story) is one continuous recording of ``EEG_CHANNELS`` (a 32-channel 10-20
cap) at ``EEG_SFREQ`` Hz, in volts, with:

- background activity: 1/f ("pink") noise per channel, 10 µV;
- slow drift (a random walk low-passed below ~0.05 Hz, 20 µV) and 50 Hz line noise (8 µV);
- blinks (150 µV on Fp1/Fp2, 30 % of that on F3/Fz/F4), ~0.25 per second;
- one bad channel (``BAD_CHANNEL``, 50 µV white noise, marked ``bad`` in channels.tsv);
- the planted word-locked response: after every word, a Gaussian bump at
  ``EEG_LATENCY_S`` (sd ``EEG_WIDTH_S``) on ``PLANTED_CHANNELS`` whose amplitude per channel
  is the word's planted-layer features (z-scored per story) through a rank-``EEG_RANK`` map
  inside their leading principal subspace and per-subject channel loadings. The loadings sum
  to zero across the planted channels (a dipole-like topography), so an average reference
  leaves the other channels without signal.

The stimulus starts ``EEG_AUDIO_ONSET_S`` into each recording; ``*_events.tsv`` lists every
word (``trial_type`` word, ``word`` column) at its onset in the recording.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

EEG_SFREQ = 250.0
EEG_CHANNELS = (
    "Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "FC5", "FC1", "FC2", "FC6", "T7", "C3", "Cz", "C4", "T8",
    "TP9", "CP5", "CP1", "CP2", "CP6", "TP10", "P7", "P3", "Pz", "P4", "P8", "PO9", "O1", "Oz", "O2", "PO10",
)
PLANTED_CHANNELS = ("C3", "Cz", "C4", "CP5", "CP1", "CP2", "CP6", "P3", "Pz", "P4")
BAD_CHANNEL = "F7"
BLINK_CHANNELS = {"Fp1": 1.0, "Fp2": 1.0, "F3": 0.3, "Fz": 0.3, "F4": 0.3}
EEG_AUDIO_ONSET_S = 5.0
EEG_TAIL_S = 5.0
EEG_LATENCY_S = 0.40
EEG_WIDTH_S = 0.05
EEG_RANK = 4
EEG_SIGNAL_UV = 10.0  # rms sd of the planted amplitude over the planted channels (at 4 µV, EEG → text on the demo is at chance)
BACKGROUND_UV = 10.0
DRIFT_UV = 20.0
LINE_FREQ = 50.0
LINE_UV = 8.0
BLINK_UV = 150.0
BLINK_RATE_HZ = 0.25
BAD_CHANNEL_UV = 50.0
MONTAGE = "standard_1020"


def eeg_feature_map(train_features: np.ndarray, rng: np.random.Generator, n_axes: int = 20) -> np.ndarray:
    """``(hidden, EEG_RANK)`` unit-variance map inside the top ``n_axes`` principal axes of ``train_features``."""
    centred = train_features - train_features.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    n_axes = min(n_axes, axes.shape[0])
    mapping = axes[:n_axes].T @ rng.standard_normal((n_axes, EEG_RANK))
    return mapping / (centred @ mapping).std(axis=0)


def planted_loadings(rng: np.random.Generator) -> np.ndarray:
    """``(EEG_RANK, n_planted)`` loadings, zero-sum across channels (one scale for all, which keeps the sums at
    zero), the channels' amplitudes of root-mean-square sd EEG_SIGNAL_UV."""
    loadings = rng.standard_normal((EEG_RANK, len(PLANTED_CHANNELS)))
    loadings -= loadings.mean(axis=1, keepdims=True)
    return loadings / np.sqrt((loadings**2).sum(axis=0).mean()) * EEG_SIGNAL_UV


def pink_noise(n_samples: int, n_channels: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_channels, n_samples)`` 1/f noise of unit sd (white noise shaped in the frequency domain, over an FFT
    length with small prime factors, then cut to ``n_samples``)."""
    from scipy import fft

    n_fft = fft.next_fast_len(n_samples, real=True)
    spectrum = fft.rfft(rng.standard_normal((n_channels, n_fft)), axis=1)
    freqs = fft.rfftfreq(n_fft, 1.0 / EEG_SFREQ)
    spectrum /= np.sqrt(np.maximum(freqs, 0.5))
    noise = fft.irfft(spectrum, n=n_fft, axis=1)[:, :n_samples]
    return noise / noise.std(axis=1, keepdims=True)


def simulate_recording(onsets_s: np.ndarray, amplitudes_uv: np.ndarray, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """``(n_channels, n_samples)`` volts: background, drift, line noise, blinks, bad channel and the planted response.

    ``onsets_s``: word onsets in the recording; ``amplitudes_uv``: ``(n_words, n_planted)``.
    """
    n_samples = int(round(duration_s * EEG_SFREQ))
    times = np.arange(n_samples) / EEG_SFREQ
    index = {name: i for i, name in enumerate(EEG_CHANNELS)}
    data = BACKGROUND_UV * pink_noise(n_samples, len(EEG_CHANNELS), rng)
    # drift: a random walk, low-passed by a moving average of 20 s (running sums)
    walk = np.cumsum(rng.standard_normal((len(EEG_CHANNELS), n_samples)), axis=1)
    width = int(20 * EEG_SFREQ)
    sums = np.cumsum(np.pad(walk, ((0, 0), (width, 0)), mode="edge"), axis=1)
    drift = (sums[:, width:] - sums[:, :-width]) / width
    drift -= drift.mean(axis=1, keepdims=True)
    data += DRIFT_UV * drift / np.maximum(drift.std(axis=1, keepdims=True), 1e-12)
    data += LINE_UV * np.sin(2 * np.pi * LINE_FREQ * times + rng.uniform(0, 2 * np.pi, (len(EEG_CHANNELS), 1)))
    # blinks: 0.3 s raised cosines at Poisson times
    n_blinks = rng.poisson(BLINK_RATE_HZ * duration_s)
    blink_shape = np.hanning(int(0.3 * EEG_SFREQ))
    for start in rng.integers(0, n_samples - blink_shape.size, n_blinks):
        for name, gain in BLINK_CHANNELS.items():
            data[index[name], start : start + blink_shape.size] += gain * BLINK_UV * blink_shape
    data[index[BAD_CHANNEL]] += BAD_CHANNEL_UV * rng.standard_normal(n_samples)
    # the planted response: Σ_words amplitude · Gaussian bump at onset + latency
    half = int(4 * EEG_WIDTH_S * EEG_SFREQ)
    lags = np.arange(-half, half + 1)
    bump = np.exp(-0.5 * (lags / (EEG_WIDTH_S * EEG_SFREQ)) ** 2)
    impulses = np.zeros((len(PLANTED_CHANNELS), n_samples))
    peaks = np.round((onsets_s + EEG_LATENCY_S) * EEG_SFREQ).astype(int)
    for word, peak in enumerate(peaks):
        if 0 <= peak < n_samples:
            impulses[:, peak] += amplitudes_uv[word]
    planted = np.array([np.convolve(row, bump, mode="same") for row in impulses])
    for row, name in enumerate(PLANTED_CHANNELS):
        data[index[name]] += planted[row]
    return (data * 1e-6).astype(np.float64)


def write_recording(bids_root: Path, subject: str, story: str, data_v: np.ndarray, words: list[str], onsets_s: np.ndarray,
                    durations_s: np.ndarray, ch_names: tuple[str, ...] = EEG_CHANNELS, sfreq: float = EEG_SFREQ,
                    bads: tuple[str, ...] = (BAD_CHANNEL,), file_format: str = "BrainVision") -> None:
    """One recording as BIDS EEG through mne-bids (BrainVision; or EDF, BDF, EEGLAB), bad channels marked, words as events."""
    import mne
    from mne_bids import BIDSPath, write_raw_bids

    info = mne.create_info(list(ch_names), sfreq, ch_types="eeg")
    raw = mne.io.RawArray(data_v, info, verbose="error")
    raw.info["line_freq"] = LINE_FREQ
    raw.info["bads"] = list(bads)
    raw.set_meas_date(None)
    path = BIDSPath(subject=subject, task=story, datatype="eeg", suffix="eeg", root=bids_root)
    write_raw_bids(raw, path, format=file_format, allow_preload=True, overwrite=True, verbose="error")
    events = pd.DataFrame({
        "onset": np.round(onsets_s, 4),
        "duration": np.round(durations_s, 4),
        "sample": np.round(onsets_s * sfreq).astype(int),
        "trial_type": "word",
        "word": words,
    })
    events.to_csv(path.copy().update(suffix="events", extension=".tsv").fpath, sep="\t", index=False)
    Path(path.copy().update(suffix="events", extension=".json").fpath).unlink(missing_ok=True)  # described mne-bids' columns


def generate_eeg(bids_root: Path, subjects: tuple[str, ...], stories: tuple[str, ...], train_stories: tuple[str, ...], timings: dict,
                 word_features: dict[str, np.ndarray], seed: int, streams: tuple[int, int]) -> dict:
    """Write every (subject, story) recording into ``bids_root``; returns the ground truth of the planted EEG."""
    standard = {story: (word_features[story] - word_features[story].mean(0)) / np.maximum(word_features[story].std(0), 1e-12)
                for story in stories}
    feature_map = eeg_feature_map(np.vstack([standard[s] for s in train_stories]), np.random.default_rng([seed, streams[0]]))
    latents = {story: standard[story] @ feature_map for story in stories}  # (n_words, EEG_RANK)
    truth_subjects = {}
    for s_index, subject in enumerate(subjects):
        loadings = planted_loadings(np.random.default_rng([seed, streams[0], 100 + s_index]))
        for r_index, story in enumerate(stories):
            timing = timings[story]
            onsets = EEG_AUDIO_ONSET_S + timing.onsets
            duration = EEG_AUDIO_ONSET_S + timing.audio_s + EEG_TAIL_S
            data = simulate_recording(onsets, latents[story] @ loadings, duration, np.random.default_rng([seed, streams[1], s_index, r_index]))
            write_recording(bids_root, subject, story, data, list(timing.words), onsets, timing.offsets - timing.onsets)
        truth_subjects[subject] = {"loadings_uv": np.round(loadings, 6).tolist()}
        logger.info("sub-%s: %d EEG recordings (%d channels at %.0f Hz)", subject, len(stories), len(EEG_CHANNELS), EEG_SFREQ)
    return {
        "format": "BrainVision",
        "sfreq": EEG_SFREQ,
        "channels": list(EEG_CHANNELS),
        "montage": MONTAGE,
        "planted_channels": list(PLANTED_CHANNELS),
        "bad_channel": BAD_CHANNEL,
        "blink_channels": list(BLINK_CHANNELS),
        "line_freq": LINE_FREQ,
        "audio_onset_s": EEG_AUDIO_ONSET_S,
        "latency_s": EEG_LATENCY_S,
        "width_s": EEG_WIDTH_S,
        "rank": EEG_RANK,
        "signal_uv": EEG_SIGNAL_UV,
        "background_uv": BACKGROUND_UV,
        "response": (
            "per word: planted-layer features z-scored per story @ (hidden, rank) map in their top 20 principal axes "
            "(unit variance) @ per-subject (rank, n_planted) zero-sum loadings = µV per planted channel, times a "
            "Gaussian bump peaking latency_s after the word onset (sd width_s)"
        ),
        "per_subject": truth_subjects,
    }
