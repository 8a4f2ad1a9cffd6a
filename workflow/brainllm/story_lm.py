"""A small word-level causal LM trained on the training stories: a generator that never saw the test text.

Brain → text generation needs a causal LM that writes real words. A hub model may have
read any public text, the test story's included; the demo's generator is trained here
instead, on the words of the training stories only (the rule ``story_lm`` is given no
other file). Its vocabulary is those stories' words plus ``<pad> <s> </s> <unk>``: a
test word the training stories lack can only be ``<unk>``, which generation never emits,
so nothing of the held-out text reaches the generator.

The model is a GPT-2 (transformers) with a WordLevel tokenizer (tokenizers), saved like
a hub checkpoint (safetensors + config.json + tokenizer.json) so the generation stage
loads it through ``brainllm.models.load_model`` like any other causal LM. Training:
next-token loss on windows of ``context_tokens`` tokens (half-overlapping, each opened by
``<s>``), AdamW with a cosine schedule, early stopping on the last tenth of every
training story (held out from training), the best epoch's weights saved.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from .io import InputError, read_words, write_json

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
HELD_OUT_FRACTION = 0.1


@dataclass(frozen=True)
class StoryLmSettings:
    n_layers: int = 2
    hidden: int = 128
    heads: int = 4
    context_tokens: int = 48
    dropout: float = 0.1
    epochs: int = 60
    batch_size: int = 16
    lr: float = 3e-3
    patience: int = 8
    seed: int = 0

    @classmethod
    def from_config(cls, section: Mapping | None) -> "StoryLmSettings":
        values = {**asdict(cls()), **dict(section or {})}
        unknown = set(values) - set(asdict(cls()))
        if unknown:
            raise InputError(None, f"generation.story_lm has unknown keys {sorted(unknown)}.", "see config/README.md.")
        settings = cls(**values)
        if settings.hidden % settings.heads:
            raise InputError(None, f"generation.story_lm.hidden ({settings.hidden}) must be a multiple of heads ({settings.heads}).")
        if settings.context_tokens < 4:
            raise InputError(None, "generation.story_lm.context_tokens must be at least 4.")
        return settings


def word_tokenizer(words: Sequence[str]):
    """A fast WordLevel tokenizer over ``words`` (whitespace-split, lower case as ingested)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted(set(words)):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _windows(ids: np.ndarray, length: int, bos: int) -> list[np.ndarray]:
    """Half-overlapping windows of ``length − 1`` tokens, each opened by ``bos``."""
    body = length - 1
    if len(ids) <= body:
        return [np.concatenate([[bos], ids])]
    starts = list(range(0, len(ids) - body, max(body // 2, 1))) + [len(ids) - body]
    return [np.concatenate([[bos], ids[s : s + body]]) for s in sorted(set(starts))]


def _batch_loss(model, windows: list[np.ndarray], pad: int, device) -> torch.Tensor:
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad, dtype=torch.long)
    for row, window in enumerate(windows):
        ids[row, : len(window)] = torch.as_tensor(window)
    ids = ids.to(device)
    mask = ids != pad
    logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


def train_story_lm(words_tsvs: Mapping[str, str | os.PathLike], out_dir: str | os.PathLike, settings: StoryLmSettings) -> dict:
    """Train the generator on ``words_tsvs`` (story → words.tsv) and save it into ``out_dir``.

    The directory is written under a temporary name and renamed when complete; returns the
    training record (also ``training.json`` in the directory).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if not words_tsvs:
        raise InputError(None, "the story LM needs at least one training story.", "list dataset.train_stories.")
    story_words = {story: read_words(path)["word"].astype(str).tolist() for story, path in words_tsvs.items()}
    tokenizer = word_tokenizer([w for words in story_words.values() for w in words])
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    train_windows, held_out_windows = [], []
    for story, words in story_words.items():
        ids = np.asarray(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"], dtype=np.int64)
        cut = int(round(len(ids) * (1 - HELD_OUT_FRACTION)))
        train_windows += _windows(ids[:cut], settings.context_tokens, bos)
        held_out_windows += _windows(ids[cut:], settings.context_tokens, bos)
    if not any(len(window) > 1 for window in held_out_windows):
        raise InputError(None, f"the training stories {list(story_words)} are too short to hold out a tenth of each for early stopping.",
                         "add training stories or use a hub LLM (generation.llm.source).")
    torch.manual_seed(settings.seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=settings.context_tokens, n_embd=settings.hidden, n_layer=settings.n_layers,
        n_head=settings.heads, resid_pdrop=settings.dropout, embd_pdrop=settings.dropout, attn_pdrop=settings.dropout,
        bos_token_id=bos, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
    )
    model = GPT2LMHeadModel(config)
    device = torch.device("cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    steps_per_epoch = -(-len(train_windows) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=settings.epochs * steps_per_epoch, pct_start=0.1)
    rng = np.random.default_rng(settings.seed)
    curves, best, best_state, waited = [], float("inf"), None, 0
    log.info("story LM: %d words of %d stories, vocabulary %d, %d training / %d held-out windows",
             sum(map(len, story_words.values())), len(story_words), len(tokenizer), len(train_windows), len(held_out_windows))
    for epoch in tqdm(range(settings.epochs), desc="story LM", unit="epoch"):
        model.train()
        order = rng.permutation(len(train_windows))
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            loss = _batch_loss(model, [train_windows[i] for i in order[start : start + settings.batch_size]], pad, device)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += loss.item()
        model.eval()
        with torch.no_grad():
            held_out = float(_batch_loss(model, held_out_windows, pad, device))
        curves.append({"epoch": epoch + 1, "train_loss": total / steps_per_epoch, "held_out_loss": held_out})
        log.info("epoch %d: train loss %.3f, held-out loss %.3f (perplexity %.1f)", epoch + 1, curves[-1]["train_loss"], held_out, np.exp(held_out))
        if held_out < best - 1e-4:
            best, waited = held_out, 0
            best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        else:
            waited += 1
            if waited >= settings.patience:
                break
    model.load_state_dict(best_state)
    record = {
        "stories": list(story_words), "n_words": sum(map(len, story_words.values())), "vocabulary": len(tokenizer),
        "n_parameters": int(sum(p.numel() for p in model.parameters())), "best_held_out_loss": best,
        "best_held_out_perplexity": float(np.exp(best)), "epochs_run": len(curves), "settings": asdict(settings), "curves": curves,
    }
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "training.json", record)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return record
