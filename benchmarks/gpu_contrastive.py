"""GPU throughput and peak memory of the contrastive stage (needs CUDA; QLoRA needs bitsandbytes).

1. Frozen-feature mode at realistic size: 95 000 voxels (delays averaged) → brain MLP →
   1 024-d shared space ← 4 096-d text features (a 7B-class LLM), batch 512, responses
   resident on the GPU and gathered per batch as in training.
2. QLoRA: a randomly initialised Llama of ≥ 1B parameters saved to a temporary directory,
   loaded in 4-bit nf4 through ``brainllm.models.load_model``, LoRA on its attention, the
   BrainLLM text tower pooled at a middle layer, a few training steps on random token
   sequences.

    python benchmarks/gpu_contrastive.py [--steps 20] [--qlora-steps 8] [--skip-qlora]

Prints steps/s, pairs/s (and tokens/s) and the peak GPU memory of each part.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainllm.contrastive import ContrastiveModel, PairData, make_optimizer, training_step
from brainllm.contrastive_settings import resolve_settings


def _synchronized_time() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _report(name: str, steps: int, seconds: float, pairs_per_step: int, tokens_per_step: int | None = None) -> None:
    line = f"{name}: {steps / seconds:.2f} steps/s, {steps * pairs_per_step / seconds:,.0f} pairs/s"
    if tokens_per_step:
        line += f", {steps * tokens_per_step / seconds:,.0f} tokens/s"
    if torch.cuda.is_available():
        line += f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    print(line)


def frozen_mode(
    steps: int, device: torch.device, n_voxels: int = 95_000, text_dim: int = 4096, batch: int = 512,
    n_rows: int = 4096, shared_dim: int = 1024, hidden: int = 2048,
) -> None:
    settings = resolve_settings({
        "shared_dim": shared_dim, "delay_mode": "mean",
        "brain_encoder": {"kind": "mlp", "hidden": hidden, "n_blocks": 1, "dropout": 0.3},
        "text_projector": {"kind": "mlp", "hidden": hidden, "n_blocks": 1, "dropout": 0.1},
    })
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    starts = np.arange(n_rows - 4)
    delays = np.array([1, 2, 3, 4])
    data = PairData(
        stories=["random"], pair_story=np.array(["random"] * len(starts)), pair_start=starts,
        responses=rng.standard_normal((n_rows, n_voxels), dtype=np.float32),
        brain_rows=(starts[:, None] + delays[None, :])[:, :, None], delay_mode="mean",
        text=rng.standard_normal((n_rows, text_dim), dtype=np.float32), text_rows=starts[:, None],
    ).to(device)
    model = ContrastiveModel(data.brain_dim, text_dim, settings).to(device)
    optimizer = make_optimizer(model, 1e-4, 0.05)
    n_parameters = sum(p.numel() for p in model.parameters())
    print(f"frozen mode: {n_voxels} voxels → {settings['shared_dim']} ← {text_dim}, batch {batch}, {n_parameters / 1e6:.0f} M parameters")
    _reset_peak()
    batches = [torch.as_tensor(rng.choice(data.n_pairs, batch, replace=False), device=device) for _ in range(steps + 2)]
    for index in batches[:2]:  # warm-up (kernel selection, allocator)
        training_step(model, optimizer, data.brain_batch(index), data.text_batch(index))
    start = _synchronized_time()
    for index in batches[2:]:
        training_step(model, optimizer, data.brain_batch(index), data.text_batch(index))
    _report("frozen mode", steps, _synchronized_time() - start, batch)


def _random_llama(directory: Path, device: torch.device, vocab_size: int = 32_000, hidden: int = 2048, n_layers: int = 22) -> Path:
    """A random Llama (default TinyLlama-shaped, 1.1 B parameters) with a word-level fast tokenizer, saved as safetensors."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i + 4 for i in range(vocab_size - 4)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=n_layers,
        num_attention_heads=max(hidden // 64, 1), num_key_value_heads=max(hidden // 512, 1), max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    n_parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    del model
    _reset_peak()
    print(f"random Llama: {n_parameters / 1e9:.2f} B parameters saved to {directory}")
    return directory


def qlora_mode(
    steps: int, device: torch.device, batch: int = 16, context_tokens: int = 256, segment_tokens: int = 8,
    brain_dim: int = 95_000, llama: dict | None = None,
) -> None:
    from brainllm.brainlora import build_lora_model, load_base_model

    llama = llama or {}
    n_layers = llama.get("n_layers", 22)
    settings = resolve_settings({
        "shared_dim": 1024, "brain_encoder": {"kind": "mlp", "hidden": 2048, "n_blocks": 1, "dropout": 0.3},
        "lora": {"enabled": True, "layer": n_layers // 2, "rank": 16, "alpha": 32, "quantization": "4bit", "gradient_checkpointing": True},
    })
    with tempfile.TemporaryDirectory() as tmp:
        source = _random_llama(Path(tmp) / "llama", device, **llama)
        base, tokenizer, info = load_base_model({"source": str(source), "dtype": "bfloat16"}, settings, device)
        if torch.cuda.is_available():
            print(f"loaded with quantization {info.quantization}: {torch.cuda.memory_allocated() / 2**30:.2f} GiB on the GPU")
        model = build_lora_model(base, tokenizer, info, brain_dim, settings, device)
    optimizer = make_optimizer(model, 2e-4, 0.05)
    rng = np.random.default_rng(0)
    length = context_tokens + segment_tokens
    sequences = [
        [{"input_ids": rng.integers(4, len(tokenizer), length).tolist(), "pool": list(range(context_tokens, length))} for _ in range(batch)]
        for _ in range(steps + 2)
    ]
    brains = [torch.randn(batch, brain_dim, device=device) for _ in range(steps + 2)]
    for text, brain in zip(sequences[:2], brains[:2]):
        training_step(model, optimizer, brain, text)
    start = _synchronized_time()
    for text, brain in zip(sequences[2:], brains[2:]):
        training_step(model, optimizer, brain, text)
    _report(f"QLoRA (batch {batch} × {length} tokens, layer {settings['lora']['layer']})", steps, _synchronized_time() - start, batch, batch * length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps of the frozen-feature mode")
    parser.add_argument("--qlora-steps", type=int, default=8, help="timed steps of the QLoRA mode")
    parser.add_argument("--skip-qlora", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    device = torch.device("cuda")
    frozen_mode(args.steps, device)
    if not args.skip_qlora:
        _reset_peak()
        qlora_mode(args.qlora_steps, device)


if __name__ == "__main__":
    main()
