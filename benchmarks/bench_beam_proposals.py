"""Benchmark of the beam search's LLM proposals: one batched forward per word slot vs one per hypothesis (not a test).

The generator is a GPT-2 of the demo's story-LM size (2 layers, width 128, a word-level
vocabulary of ``--vocab`` words), the contexts ``--beam`` random word sequences of 1 to
``--context-words`` words (so batches are padded). Both paths return the same words and log-probabilities (checked:
the last line prints the largest difference); the batched path reads all hypotheses of a
slot in one right-padded forward pass. Times are this process's CPU time, robust to other
jobs on a shared machine when run with ``--threads 1``.

    python benchmarks/bench_beam_proposals.py [--slots 200] [--beam 5] [--candidates 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from brainllm.beam_search import WordProposer
from brainllm.story_lm import word_tokenizer


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=200, help="word slots (each: one proposal per hypothesis)")
    parser.add_argument("--beam", type=int, default=5, help="hypotheses per slot")
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--context-words", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=900)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    words = [f"w{i}" for i in range(args.vocab)]
    tokenizer = word_tokenizer(words)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=128, n_layer=2, n_head=4)).eval()
    proposer = WordProposer(lm, tokenizer, torch.device("cpu"), args.context_words)
    rng = np.random.default_rng(0)
    slots = [[list(rng.choice(words, int(rng.integers(1, args.context_words + 1)))) for _ in range(args.beam)] for _ in range(args.slots)]

    started = time.process_time()
    one_at_a_time = [[proposer.propose([context], args.candidates)[0] for context in contexts] for contexts in slots]
    single_s = time.process_time() - started
    started = time.process_time()
    batched = [proposer.propose(contexts, args.candidates) for contexts in slots]
    batched_s = time.process_time() - started

    difference = max(float(np.abs(a[1] - b[1]).max()) for row_a, row_b in zip(one_at_a_time, batched) for a, b in zip(row_a, row_b))
    same_words = all(a[0] == b[0] for row_a, row_b in zip(one_at_a_time, batched) for a, b in zip(row_a, row_b))
    print(f"{args.slots} slots × {args.beam} hypotheses, {args.candidates} candidates, {args.context_words} context words, "
          f"vocabulary {args.vocab}, {args.threads} thread(s)")
    print(f"one forward per hypothesis: {single_s:.2f} CPU-s ({1e3 * single_s / args.slots:.1f} ms per slot)")
    print(f"one batched forward per slot: {batched_s:.2f} CPU-s ({1e3 * batched_s / args.slots:.1f} ms per slot)")
    ratio = single_s / max(batched_s, 1e-9)
    print(f"RESULT batched/one-at-a-time speed-up {ratio:.2f}x; same words {same_words}; max |Δ log p| {difference:.2e}")
    return {"speedup": ratio, "same_words": same_words, "max_difference": difference}


if __name__ == "__main__":
    main()
