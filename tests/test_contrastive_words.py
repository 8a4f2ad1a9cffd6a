"""The contrastive word objective: targets, brain centring, voxel choice, word pairs, and planted words
learned while noise learns no word prior."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from brainllm import contrastive
from brainllm.contrastive import BatchCentring, ContrastiveModel, resolve_settings
from brainllm.io import InputError

TR, TRIM_START = 2.0, 3
N_VOCAB, N_HEARD, HIDDEN, N_VOXELS, N_TRS = 400, 60, 16, 30, 150
TRAIN, VALIDATION, TEST = ["s1", "s2", "s3", "s4"], "s5", "s6"


def test_word_targets_share_each_brain_over_its_words_copies():
    index = torch.tensor([3, 1, 3, 2, 3])
    targets, reverse = contrastive.word_targets(index)
    expected = np.array([[float(a == b) for b in index.tolist()] for a in index.tolist()])
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(targets.numpy(), expected)
    np.testing.assert_allclose(reverse.numpy(), expected)


def test_batch_centring_subtracts_the_batch_mean_and_tracks_it():
    centring = BatchCentring(3)
    first, second = torch.randn(5, 3), torch.randn(4, 3)
    centring.train()
    torch.testing.assert_close(centring(first), first - first.mean(0))
    torch.testing.assert_close(centring(second), second - second.mean(0))
    tracked = 0.9 * (0.1 * first.mean(0)) + 0.1 * second.mean(0)  # momentum 0.1 from zero
    torch.testing.assert_close(centring.mean, tracked)
    centring.eval()
    torch.testing.assert_close(centring(first), first - tracked)


def test_centring_mean_is_saved_and_loaded_with_the_weights(tmp_path):
    settings = resolve_settings({"shared_dim": 4, "brain_encoder": {"kind": "linear"}})
    model = ContrastiveModel(6, 5, settings, centre_brain=True)
    model.train()
    model.encode_brain(torch.randn(8, 6))
    state = contrastive.trainable_state(model)
    assert "brain_centring.mean" in state and state["brain_centring.mean"].abs().sum() > 0
    fresh = ContrastiveModel(6, 5, settings, centre_brain=True)
    contrastive.load_trainable_state(fresh, state, tmp_path / "weights")
    torch.testing.assert_close(fresh.brain_centring.mean, model.brain_centring.mean)
    with pytest.raises(InputError, match="does not fit the model"):
        contrastive.load_trainable_state(ContrastiveModel(6, 5, settings), state, tmp_path / "weights")


def test_voxels_are_chosen_by_validation_r(tmp_path):
    r_val = np.array([0.1, np.nan, 0.5, -0.2, 0.3, 0.05, 0.4, 0.0, 0.2, 0.15])
    path = tmp_path / "scores.tsv"
    pd.DataFrame({"voxel": np.arange(10), "r_val": r_val, "r": np.ones(10)}).to_csv(path, sep="\t", index=False)
    np.testing.assert_array_equal(contrastive.select_voxels(path, 0.3, 10), [2, 4, 6])
    with pytest.raises(InputError, match="10 voxels, but the responses have 12"):
        contrastive.select_voxels(path, 0.3, 12)
    pd.DataFrame({"voxel": np.arange(10), "r": r_val}).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError, match="no r_val column"):
        contrastive.select_voxels(path, 0.3, 10)


def _write_word_world(root, signal: bool, seed: int = 0):
    """One word per TR drawn from a Zipf law over the first N_HEARD of N_VOCAB words (the rest never heard), whose
    features tell their frequency along one axis; responses one TR later: the word's features through a fixed map plus noise (``signal``), or noise only."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((N_VOCAB, HIDDEN))
    weights = rng.standard_normal((HIDDEN, N_VOXELS))
    zipf = 1.0 / np.arange(1, N_HEARD + 1)
    embeddings[:N_HEARD, 0] += 6.0 + 2 * np.log(zipf)  # as in LLM embeddings, one direction tells frequent words
    vocabulary = pd.DataFrame({"word": [f"w{i:03d}" for i in range(N_VOCAB)], "onset": 0.0, "offset": 0.0,
                               "frequency": np.r_[zipf, np.full(N_VOCAB - N_HEARD, zipf[-1])], "source": "test"})
    paths = {"features": root / "features.h5", "responses": root / "responses.h5", "words": {}}
    with h5py.File(paths["features"], "w") as features_h5, h5py.File(paths["responses"], "w") as responses_h5:
        for story in TRAIN + [VALIDATION, TEST]:
            heard = rng.choice(N_HEARD, size=N_TRS, p=zipf / zipf.sum())
            features = embeddings[heard]
            responses = rng.standard_normal((N_TRS, N_VOXELS))
            if signal:
                responses[1:] += 2.0 * (features[:-1] @ weights) / np.sqrt(HIDDEN)
            features_h5.create_group(story).create_dataset("layer_03", data=features.astype(np.float32))
            group = responses_h5.create_group(story)
            group.create_dataset("data", data=((responses - responses.mean(0)) / responses.std(0)).astype(np.float32))
            group.attrs.update(tr=TR, trim_start=TRIM_START)
            onsets = (np.arange(N_TRS) + TRIM_START) * TR + 0.5  # midpoint inside trimmed TR t
            paths["words"][story] = root / f"{story}.tsv"
            pd.DataFrame({"word": vocabulary["word"].to_numpy()[heard], "onset": onsets, "offset": onsets + 0.4}).to_csv(
                paths["words"][story], sep="\t", index=False)
    return paths, vocabulary, embeddings.astype(np.float32)


WORDS = {"segment_trs": 1, "delays": [1], "shared_dim": 16, "brain_encoder": {"kind": "linear"}, "batch_size": 32,
         "epochs": 25, "patience": 25, "lr": 5e-3, "validation_story": VALIDATION, "words": {"enabled": True, "weight": 1.0},
         "eval": {"n_candidates": 20, "n_draws": 5, "n_train_pairs": 64}}


def _train_word_model(paths, vocabulary, embeddings, centre_brain=True):
    settings = resolve_settings(WORDS)
    split = contrastive.story_split(TRAIN + [VALIDATION], [TEST], VALIDATION)
    data = contrastive.load_pairs(paths["features"], paths["responses"], 3, split, settings)
    for name in ("train", "validation", "test"):
        contrastive.attach_words(data[name], paths["responses"], paths["words"], vocabulary, embeddings)
    data = {name: pairs.to(torch.device("cpu")) for name, pairs in data.items()}
    torch.manual_seed(0)
    model = ContrastiveModel(data["train"].brain_dim, HIDDEN, settings, centre_brain=centre_brain)
    result = contrastive.train(model, data, settings, contrastive.Checkpoint(paths["features"].parent / f"checkpoint-{centre_brain}", "test"),
                               epochs=settings["epochs"], batch_size=settings["batch_size"], lr=settings["lr"], patience=settings["patience"])
    contrastive.load_trainable_state(model, result.best_weights, "best")
    return model, data, result


def test_word_pairs_follow_the_word_midpoints(tmp_path):
    paths, vocabulary, embeddings = _write_word_world(tmp_path, signal=True)
    settings = resolve_settings(WORDS)
    pairs = contrastive.load_pairs(paths["features"], paths["responses"], 3, {"test": [TEST]}, settings)["test"]
    contrastive.attach_words(pairs, paths["responses"], paths["words"], vocabulary, embeddings)
    words = pd.read_csv(paths["words"][TEST], sep="\t")
    index = {word: i for i, word in enumerate(vocabulary["word"])}
    expected_pair, expected_word = [], []
    for row, word in enumerate(words["word"]):  # word of TR row → the pair starting at that row, if one does
        where = np.flatnonzero(pairs.pair_start == row)
        if len(where):
            expected_pair.append(where[0])
            expected_word.append(index[word])
    np.testing.assert_array_equal(pairs.words.pair, expected_pair)
    np.testing.assert_array_equal(pairs.words.vocabulary_index, expected_word)
    assert pairs.words.vocabulary_text.shape == (N_VOCAB, HIDDEN)


def test_planted_words_are_read_and_noise_learns_no_word_prior(tmp_path):
    """Words planted in the responses rank high among the whole vocabulary; on noise-only responses the centred
    model is at chance although the heard words follow a Zipf law, most vocabulary words are never heard and
    the word features tell frequent words apart (an uncentred model learns that prior)."""
    planted, vocabulary, embeddings = _write_word_world(tmp_path / "planted", signal=True)
    model, data, result = _train_word_model(planted, vocabulary, embeddings)
    assert "validation_word_percentile" in result.curves.columns
    assert contrastive.word_percentile(model, data["test"], 64) > 0.9
    noise, vocabulary, embeddings = _write_word_world(tmp_path / "noise", signal=False, seed=1)
    model, data, _ = _train_word_model(noise, vocabulary, embeddings)
    assert abs(contrastive.word_percentile(model, data["test"], 64) - 0.5) < 0.04
    # without the centring, one brain direction learns the heard words' frequency axis: above chance with no brain signal
    model, data, _ = _train_word_model(noise, vocabulary, embeddings, centre_brain=False)
    assert contrastive.word_percentile(model, data["test"], 64) > 0.54


def test_word_objective_and_voxel_choice_need_their_inputs(tmp_path):
    paths, _, _ = _write_word_world(tmp_path, signal=True)
    outputs = {"curves_tsv": tmp_path / "c.tsv", "config_json": tmp_path / "c.json", "weights_safetensors": tmp_path / "m.safetensors",
               "retrieval_json": tmp_path / "r.json", "checkpoint_dir": tmp_path / "checkpoint"}
    common = dict(subject="S", model_name="m", layer=3, train_stories=TRAIN + [VALIDATION], test_stories=[TEST], **outputs)
    with pytest.raises(InputError, match="contrastive.words.enabled needs the vocabulary"):
        contrastive.run_contrastive(paths["features"], paths["responses"], contrastive_cfg=WORDS, **common)
    with pytest.raises(InputError, match="contrastive.voxel_fraction is set"):
        contrastive.run_contrastive(paths["features"], paths["responses"], contrastive_cfg={**WORDS, "voxel_fraction": 0.5}, **common)
    assert not outputs["config_json"].exists()
    with pytest.raises(InputError, match="voxel_fraction is 1.5"):
        resolve_settings({"voxel_fraction": 1.5})
    with pytest.raises(InputError, match="words.weight is 0"):
        resolve_settings({"words": {"weight": 0}})
