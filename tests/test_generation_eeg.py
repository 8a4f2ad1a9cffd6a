"""EEG → text: word-locked windows equal the words' epochs read directly from the recording, a planted
word-locked response lets brain prompts beat permuted windows, EEG noise alone does not, and the outputs
count segment starts in words."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from brainllm.eeg import EegSettings, epoch_bins
from brainllm.generation import GenerationSettings, eeg_spacing, eeg_story_segments, run_brain_prompt
from brainllm.io import InputError
from brainllm.story_lm import word_tokenizer
from test_generation import FAST, VOCAB, _tiny_lm

SFREQ, N_CHANNELS, LATENCY_S = 100.0, 8, 0.4
TRAIN, TEST = ["alpha", "beta", "gamma", "delta"], ["omega"]
EEG_SECTION = {"epochs": {"window": [0.3, 0.5], "bin_s": 0.1}, "generation": {"segment_words": 2, "stride_words": 2}, "block_words": 6}
DATASET = {"subjects": ["S1"], "root": "."}


def _write_eeg(root, planted: bool, seed: int = 0, n_words: int = 80):
    """Words every 0.5 s; each adds its word's channel pattern as a 0.1-s boxcar at 0.35–0.45 s (planted) to white noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.standard_normal((len(VOCAB), N_CHANNELS))
    root.mkdir(parents=True, exist_ok=True)
    paths = {"eeg": root / "eeg.h5", "words": {}}
    with h5py.File(paths["eeg"], "w") as h5:
        for story in TRAIN + TEST:
            onsets = 1.0 + 0.5 * np.arange(n_words) + rng.uniform(0, 0.05, n_words)
            words = rng.choice(len(VOCAB), n_words)
            paths["words"][story] = root / f"{story}_words.tsv"
            pd.DataFrame({"word": [VOCAB[i] for i in words], "onset": onsets + 30.0, "offset": onsets + 30.3}).to_csv(
                paths["words"][story], sep="\t", index=False)  # story time: the recording starts 30 s into the audio
            data = rng.standard_normal((int((onsets[-1] + 2.0) * SFREQ), N_CHANNELS))
            if planted:
                for onset, word in zip(onsets, words):
                    start = int(round((onset + LATENCY_S - 0.05) * SFREQ))
                    data[start : start + 10] += 3.0 * patterns[word]
            group = h5.create_group(story)
            group.create_dataset("data", data=data.astype(np.float32) * 1e-6)
            group.create_dataset("word_onset", data=onsets)
            group.create_dataset("positions", data=np.zeros((N_CHANNELS, 3)))
            group.attrs.update(sfreq=SFREQ, ch_names=[f"E{i}" for i in range(N_CHANNELS)], unit="V")
    return paths


def _run(paths, llm_cfg, out_dir, eeg_section=EEG_SECTION, overrides=None):
    out = {key: out_dir / f"{key}.out" for key in ("texts", "comparisons", "curves", "decoder", "control", "scores")}
    settings = GenerationSettings.from_config({**FAST, "brain_components": 32, **(overrides or {})})
    summary = run_brain_prompt(paths["eeg"], paths["words"], llm_cfg=llm_cfg, subject="S1", train_stories=TRAIN, test_stories=TEST,
                                   settings=settings, eeg_settings=EegSettings.from_config(eeg_section, DATASET), out=out)
    return summary, out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return _write_eeg(tmp_path_factory.mktemp("eeg-planted"), planted=True)


def test_windows_are_the_words_epochs_in_order(planted):
    settings = GenerationSettings.from_config(FAST)
    eeg_settings = EegSettings.from_config(EEG_SECTION, DATASET)
    segments = eeg_story_segments(planted["eeg"], planted["words"], TEST, settings, eeg_settings, word_tokenizer(VOCAB))
    with h5py.File(planted["eeg"]) as h5:
        data, onsets = h5["omega"]["data"][()].astype(np.float64), h5["omega"]["word_onset"][()]
    data = (data - data.mean(0)) / data.std(0)
    words = pd.read_csv(planted["words"]["omega"], sep="\t")
    np.testing.assert_allclose(epoch_bins(eeg_settings.epochs), [0.3, 0.4])
    for index in (0, 7, len(segments) - 1):
        start = int(segments.start[index])
        expected = [data[int(round((onsets[w] + b) * SFREQ)) : int(round((onsets[w] + b + 0.1) * SFREQ))].mean(0)
                    for w in (start, start + 1) for b in (0.3, 0.4)]  # word-major, then bins, then channels
        np.testing.assert_allclose(segments.brain[index], np.concatenate(expected), atol=1e-4)
        assert segments.reference[index] == " ".join(words["word"].iloc[start : start + 2])
        assert segments.prompt[index] == " ".join(words["word"].iloc[max(0, start - FAST["prompt_words"]) : start])
        assert segments.onset_s[index] == pytest.approx(words["onset"].iloc[start])
    assert list(segments.start) == list(range(0, 2 * len(segments), 2))
    assert eeg_spacing(eeg_settings).block == 3 and eeg_spacing(eeg_settings).min_gap == 4


def test_planted_eeg_prompts_beat_permuted_windows(planted, tmp_path):
    summary, out = _run(planted, _tiny_lm(tmp_path / "lm", "gpt2"), tmp_path / "run", overrides={"epochs": 12})
    assert summary["pairwise"]["pairwise_accuracy"] >= 0.65 and summary["pairwise"]["p"] < 0.05, summary["pairwise"]
    assert summary["segments"] == {"unit": "word", "min_gap": 4, "block_segments": 3}
    texts = pd.read_csv(out["texts"], sep="\t", keep_default_na=False)
    assert "start_word" in texts and "start_tr" not in texts
    assert len(texts) == summary["n_segments"]["test"] * 4 * 2


def test_eeg_noise_alone_beats_no_control(tmp_path):
    noise = _write_eeg(tmp_path / "noise", planted=False, seed=4)
    summary, out = _run(noise, _tiny_lm(tmp_path / "lm", "gpt2"), tmp_path / "run", overrides={"epochs": 8})
    assert summary["pairwise"]["p"] > 0.05
    comparisons = pd.read_csv(out["comparisons"], sep="\t")
    assert (comparisons[comparisons["control"] == "permuted_brain"]["p"] > 0.01).all()


def test_words_differing_from_the_recording_are_named(planted, tmp_path):
    words = dict(planted["words"])
    frame = pd.read_csv(words["omega"], sep="\t").iloc[:-3]
    words["omega"] = tmp_path / "short.tsv"
    frame.to_csv(words["omega"], sep="\t", index=False)
    with pytest.raises(InputError, match="EEG word onsets"):
        eeg_story_segments(planted["eeg"], words, TEST, GenerationSettings.from_config(FAST), EegSettings.from_config(EEG_SECTION, DATASET),
                           word_tokenizer(VOCAB))
