"""GPU throughput of the feature extractor on a >= 1B-parameter random Llama (not a test).

Needs a CUDA GPU; the 4-bit run also needs bitsandbytes (skipped with a note without
it). Builds a random Llama from a config (TinyLlama's shape: 22 layers, 2048 wide, MLP
5632, 32 heads, 4 key/value heads, 32k vocabulary: 1.1B parameters), saves it as
safetensors, then for bf16 and 4-bit (nf4, double quant, bf16 compute) loads it through
``brainllm.features.load_model`` and extracts causal-chunked features of a few thousand
words with ``extract_words_with_stats``. Prints tokens/s and achieved TFLOP/s against the
peak given on the command line (e.g. 989 for an H100/H200 SXM in dense bf16).

FLOPs counted: 2 x (non-embedding parameters) per forward token, plus causal attention
2 x T^2 x width per layer per sequence of T tokens (QK^T and AV, half of the full square).

    python benchmarks/gpu_features.py --peak-tflops 989 [--words 4000] [--context-words 256] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_features import story_words, train_tokenizer  # noqa: E402

from brainllm import features  # noqa: E402


def llama_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def non_embedding_parameters(config: LlamaConfig) -> int:
    width, kv_width = config.hidden_size, config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    per_layer = 2 * width * width + 2 * width * kv_width + 3 * width * config.intermediate_size
    return config.num_hidden_layers * per_layer


def build_model(directory: Path, words: list[str]) -> LlamaConfig:
    """Random 1.1B Llama in bf16 (initialised on the GPU) + a BPE tokenizer trained on the words."""
    tokenizer = train_tokenizer(words)
    config = llama_config(vocab_size=32000)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory / "llama-1b", safe_serialization=True)
    tokenizer.save_pretrained(directory / "llama-1b")
    del model
    torch.cuda.empty_cache()
    return config


def attention_flops(windows_tokens: list[int], config: LlamaConfig) -> float:
    return float(sum(2 * t * t * config.hidden_size for t in windows_tokens) * config.num_hidden_layers)


def run(directory: Path, config: LlamaConfig, words: list[str], args, quantization: str) -> np.ndarray:
    cfg = {
        "source": str(directory / "llama-1b"), "device": "cuda", "dtype": "bfloat16", "quantization": quantization,
        "context": "causal-chunked", "context_words": args.context_words, "batch_size": args.batch_size,
    }
    model, tokenizer, info = features.load_model(cfg)
    features.extract_words(model, tokenizer, words[: 4 * args.context_words], cfg, info)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    states, stats = features.extract_words_with_stats(model, tokenizer, words, cfg, info)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    windows = features.causal_chunks(tokenizer, words, args.context_words, info.max_positions)
    flops = 2.0 * non_embedding_parameters(config) * stats["forward_tokens"] + attention_flops([len(w.input_ids) for w in windows], config)
    tflops = flops / seconds / 1e12
    print(
        f"{'bf16' if quantization == 'none' else quantization:>5}: {len(words)} words, {stats['forward_tokens']} forward tokens "
        f"({stats['forward_tokens_per_story_token']:.2f} per story token) in {seconds:.2f} s: "
        f"{stats['forward_tokens'] / seconds:,.0f} tokens/s, {len(words) / seconds:,.0f} words/s, "
        f"{tflops:.1f} TFLOP/s = {100 * tflops / args.peak_tflops:.1f}% of {args.peak_tflops:g}; "
        f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB; final batch size {stats['final_batch_size']}"
    )
    if not all(np.isfinite(s).all() for s in states):
        raise SystemExit(f"{quantization}: non-finite features")
    last = states[-1]
    del model
    torch.cuda.empty_cache()
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peak-tflops", type=float, required=True, help="the GPU's dense bf16 peak, TFLOP/s")
    parser.add_argument("--words", type=int, default=4000)
    parser.add_argument("--context-words", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    words = story_words(args.words)
    print(f"{torch.cuda.get_device_name()}: torch {torch.__version__}, {len(words)} words, W={args.context_words}, batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        config = build_model(directory, words)
        print(f"random Llama: {non_embedding_parameters(config) / 1e9:.2f}B non-embedding parameters, "
              f"{(non_embedding_parameters(config) + 2 * config.vocab_size * config.hidden_size) / 1e9:.2f}B in all")
        bf16 = run(directory, config, words, args, "none")
        if importlib.util.find_spec("bitsandbytes") is None:
            print(" 4bit: skipped (bitsandbytes is not installed)")
            return
        four_bit = run(directory, config, words, args, "4bit")
        cosine = np.sum(bf16 * four_bit, 1) / (np.linalg.norm(bf16, axis=1) * np.linalg.norm(four_bit, axis=1))
        print(f"last hidden state, 4bit vs bf16: mean cosine similarity {cosine.mean():.3f}")


if __name__ == "__main__":
    main()
