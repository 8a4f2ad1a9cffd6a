"""GPU throughput of brain-prompted generation (brainllm.generation) on a ≥ 1B random Llama.

A random Llama (TinyLlama-shaped, 1.1 B parameters; the same builder as
gpu_contrastive.py) is saved to a temporary directory and loaded through
``brainllm.generation.load_causal_lm`` in bf16 and, when bitsandbytes is installed, in
4-bit nf4. For each: the decoder's training step time (95 000-voxel windows × 4 delays
averaged → MLP → 4 prompt vectors, batch 16, 32 prompt + 16 heard tokens, frozen LLM) and
generation speed (greedy and beam search, 16 new tokens per segment, the segments in one
batch as the stage does, against one segment at a time measured in the same run); the
training step against the same LLM's plain forward pass measured in the same run.

    python benchmarks/gpu_generation.py [--steps 10] [--segments 8] [--skip-4bit]

``--device cpu --hidden 64 --layers 2 --voxels 500`` runs it at a toy size anywhere.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainllm.generation import BrainPromptDecoder, GenerationSettings, PromptedLM, embedding_rms, load_causal_lm


def _builder():
    spec = importlib.util.spec_from_file_location("gpu_contrastive", Path(__file__).with_name("gpu_contrastive.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def _memory(device: torch.device) -> str:
    return f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda" else ""


def run(source: Path, device: torch.device, quantization: str, steps: int, segments: int, n_voxels: int,
        batch: int = 16, prompt_tokens: int = 32, heard_tokens: int = 16) -> None:
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    lm, tokenizer, info = load_causal_lm({"source": str(source), "dtype": dtype, "quantization": quantization}, device)
    settings = GenerationSettings.from_config({"brain_tokens": 4, "beam_width": 4, "no_repeat_ngram_size": 0})
    embed_dim = lm.get_input_embeddings().weight.shape[1]
    torch.manual_seed(0)
    decoder = BrainPromptDecoder(n_voxels, settings.brain_tokens, embed_dim, 2048, 0.3, embedding_rms(lm)).to(device)
    prompted = PromptedLM(lm, tokenizer, decoder, device)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    vocab = len(tokenizer)
    prompts = [rng.integers(4, vocab, prompt_tokens).tolist() for _ in range(batch)]
    heard = [rng.integers(4, vocab, heard_tokens).tolist() for _ in range(batch)]
    brain = torch.randn(batch, n_voxels, device=device)

    def step():
        loss = prompted.continuation_loss(prompts, brain, heard).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    ids = torch.as_tensor([[tokenizer.bos_token_id] + p + h for p, h in zip(prompts, heard)], device=device)

    def forward_only():
        with torch.no_grad():
            lm(input_ids=ids)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for work in (step, forward_only):
        work()  # warm-up
    start = _clock(device)
    for _ in range(steps):
        forward_only()
    forward_s = (_clock(device) - start) / steps
    start = _clock(device)
    for _ in range(steps):
        step()
    step_s = (_clock(device) - start) / steps
    print(f"{quantization}: decoder training step {step_s * 1000:.1f} ms (batch {batch} × {1 + settings.brain_tokens + prompt_tokens + heard_tokens} "
          f"positions) = {step_s / forward_s:.2f} × the LLM's plain forward pass{_memory(device)}")
    decoder.eval()
    many_prompts, many_brain = prompts[:1] * segments, brain[:1].expand(segments, -1)
    for name, beams in (("greedy", 1), (f"beam {settings.beam_width}", settings.beam_width)):
        start = _clock(device)
        for row in range(segments):  # the baseline: one segment at a time
            prompted.generate(many_prompts[row : row + 1], many_brain[row : row + 1], heard_tokens, settings, beams)
        single_s = _clock(device) - start
        start = _clock(device)
        prompted.generate(many_prompts, many_brain, heard_tokens, settings, beams)  # as the workflow does: one batch
        batched_s = _clock(device) - start
        print(f"{quantization}: {name} generation {segments * heard_tokens / batched_s:.1f} new tokens/s in one batch of {segments} "
              f"segments, {single_s / batched_s:.1f} × one segment at a time ({single_s / segments * 1000:.0f} ms per segment){_memory(device)}")
    del lm, prompted, decoder
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--voxels", type=int, default=95_000)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--skip-4bit", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (or --device cpu at a toy size)")
    print(f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        source = _builder()._random_llama(Path(tmp) / "llama", device, vocab_size=args.vocab, hidden=args.hidden, n_layers=args.layers)
        run(source, device, "none", args.steps, args.segments, args.voxels)
        if device.type == "cuda" and not args.skip_4bit:
            run(source, device, "4bit", args.steps, args.segments, args.voxels)


if __name__ == "__main__":
    main()
