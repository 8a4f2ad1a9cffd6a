"""EEG word classification: a planted word-locked response that carries each word's text embedding is
decoded into high vocabulary ranks (p < 0.05, and the brain adds to the frequency prior); EEG noise
alone stays at chance; the softmax scale comes from the validation story; outputs are those of the
fMRI word classification."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from brainllm import word_decoding
from brainllm.eeg import EegSettings, run_eeg_word_decoding
from brainllm.word_decoding import SCALES, WordDecodingSettings, write_vocabulary

SFREQ, N_CHANNELS, N_VOCAB, DIM = 100.0, 12, 300, 16
STORIES = ["a", "b", "c", "d", "e", "f"]  # the last training story (d) validates; e and f are the test stories
TRAIN, TEST = STORIES[:4], ["e", "f"]
OOV = "zzzq"  # a word the vocabulary lacks, heard in the test stories
CUT_WORDS = 2  # the last words of story f have epochs past the recording's end


def _write(tmp_path, planted: bool, seed: int = 0, n_words: int = 160):
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((N_VOCAB, DIM))
    mixing = rng.standard_normal((DIM, N_CHANNELS)) / np.sqrt(DIM)
    vocabulary = pd.DataFrame({"word": [f"w{i:03d}" for i in range(N_VOCAB)], "onset": np.arange(N_VOCAB, dtype=float), "offset": np.arange(N_VOCAB) + 0.5,
                               "frequency": rng.pareto(1.2, N_VOCAB) + 1e-6, "source": "wordfreq"})
    write_vocabulary(vocabulary, tmp_path / "vocabulary.tsv")
    heard_pool = rng.choice(N_VOCAB, 60, replace=False)  # the stories use a fifth of the vocabulary
    words = {}
    with h5py.File(tmp_path / "eeg.h5", "w") as h5:
        for story in STORIES:
            onsets = 1.0 + 0.5 * np.arange(n_words)
            chosen = rng.choice(heard_pool, n_words)
            words[story] = tmp_path / f"{story}.tsv"
            heard = vocabulary["word"].to_numpy()[chosen].astype(object)
            if story in TEST:
                heard[5:8] = OOV
            pd.DataFrame({"word": heard, "onset": onsets, "offset": onsets + 0.3}).to_csv(words[story], sep="\t", index=False)
            end_s = onsets[-CUT_WORDS] + 0.25 if story == "f" else onsets[-1] + 2.0
            data = rng.standard_normal((int(end_s * SFREQ), N_CHANNELS))
            if planted:
                for onset, word in zip(onsets, chosen):
                    start = int(round((onset + 0.3) * SFREQ))
                    if start < len(data):
                        data[start : start + 20] += 1.5 * embeddings[word] @ mixing
            group = h5.create_group(story)
            group.create_dataset("data", data=data.astype(np.float32))
            group.create_dataset("word_onset", data=onsets)
            group.create_dataset("positions", data=np.zeros((N_CHANNELS, 3)))
            group.attrs.update(sfreq=SFREQ, ch_names=[f"E{i}" for i in range(N_CHANNELS)], unit="V")
    (tmp_path / "summary.json").write_text(json.dumps({"chosen_layer": 2}))
    return words, (embeddings - embeddings.mean(0)) / embeddings.std(0)


def _run(tmp_path, monkeypatch, planted: bool, seed: int = 0):
    words, embeddings = _write(tmp_path, planted, seed)
    layers, scale_rows = [], []
    monkeypatch.setattr(word_decoding, "vocabulary_features", lambda manifest, tsv, layer, embedding, entries=None: layers.append(layer) or embeddings)
    choose = word_decoding.choose_scale
    monkeypatch.setattr(word_decoding, "choose_scale", lambda brain, text, true: scale_rows.append(len(true)) or choose(brain, text, true))
    out = {"words": tmp_path / "words.tsv", "vocabulary": tmp_path / "vocab_probability.tsv", "summary": tmp_path / "words.json"}
    settings = EegSettings.from_config({"block_words": 10, "epochs": {"window": [0.3, 0.5], "bin_s": 0.1}}, {"subjects": ["S"], "root": "."})
    summary = run_eeg_word_decoding(tmp_path / "eeg.h5", words, tmp_path / "vocabulary.tsv", "unused.json", tmp_path / "summary.json",
                                    TRAIN, TEST, settings,
                                    WordDecodingSettings(n_permutations=200), out)
    assert layers == [2]  # the layer the encoding chose
    assert scale_rows == [len(pd.read_csv(words["d"], sep="\t"))]  # the scale is chosen on the validation story's words alone
    return summary, out


def test_planted_eeg_words_are_decoded_from_their_epochs(tmp_path, monkeypatch):
    summary, out = _run(tmp_path, monkeypatch, planted=True)
    assert summary["split"] == {"train": ["a", "b", "c"], "validation": ["d"], "test": ["e", "f"]}
    assert summary["brain"]["mean_percentile_rank"] > 0.8 and summary["brain"]["p"] < 0.05
    assert summary["brain"]["top10"] > 10 * summary["chance"]["top10"]
    assert summary["brain_and_frequency"]["mean_percentile_rank"] > summary["frequency"]["mean_percentile_rank"]
    assert summary["temperature"] == pytest.approx(1 / max(SCALES, key=lambda s: summary["scale_fits"][str(s)]))
    vocabulary = pd.read_csv(out["vocabulary"], sep="\t")
    assert vocabulary["probability"].sum() == pytest.approx(1.0, abs=1e-9) and len(vocabulary) == N_VOCAB
    words = pd.read_csv(out["words"], sep="\t")
    assert set(words["story"]) == {"e", "f"} and (words["brain_top10"].str.split().str.len() == 10).all()
    assert OOV not in set(words["word"]) and json.loads(out["summary"].read_text())["mode"] == "eeg"
    assert summary["n_out_of_vocabulary"] == 6 and summary["n_outside_pairs"] == CUT_WORDS
    assert summary["n_scored"] == 2 * 160 - 6 - CUT_WORDS
    # pairs index the test stories' decoded epochs in order: story f's follow story e's
    pairs = {story: group["pair"].to_numpy() for story, group in words.groupby("story")}
    assert pairs["e"].min() == 0 and pairs["f"].min() == 160 and pairs["f"].max() == 2 * 160 - CUT_WORDS - 1


def test_eeg_noise_alone_is_at_chance(tmp_path, monkeypatch):
    summary, _ = _run(tmp_path, monkeypatch, planted=False, seed=2)
    assert summary["brain"]["p"] > 0.05 and abs(summary["brain"]["mean_percentile_rank"] - 0.5) < 0.05
