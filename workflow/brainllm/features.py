"""Hidden states of every layer of a language model, one vector per story word.

All hidden states come from one forward pass per window (index 0 = embeddings). Words are
joined with single spaces and aligned to tokens through the fast tokenizer's character
offsets; a word's feature is the state at its last token (``pooling: last``) or the mean
over its tokens (``pooling: mean``).

Context modes (W = ``context_words``):

- ``per-word``: word i is read in its own window, words ``max(0, i-W+1) .. i`` with the
  tokenizer's special tokens ([CLS]/[SEP], BOS, EOS); its feature comes from its own
  tokens at the end of that window. Exact and expensive (~W forward tokens per word);
  windows are sorted by length and batched with padding and attention masks.
- ``causal-chunked`` (causal models only): chunks of 2W words with stride W; chunk k
  (k >= 1) yields the words ``kW+W .. kW+2W-1`` and the first chunk yields its first 2W
  words, so every word sees at least W earlier words (all of them near the story start)
  at about 2 forward tokens per story token. Because attention is causal, a word's state
  equals that of a single forward pass over exactly the chunk's tokens up to that word.

Encoder–decoder models give encoder states, or with ``t5_states: decoder`` decoder states
with the window's tokens as decoder input shifted right (decoder start token first): the
state of a token is taken at the decoder position where that token is the input.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from brainllm import __version__
from brainllm.io import InputError, read_words, sha256_file
from brainllm.models import (
    ModelInfo,
    build_quantization_config,
    load_model,
    model_layers,
    model_settings,
    n_hidden_states,
    text_tower,
)
from brainllm import store

__all__ = [
    "ModelInfo",
    "Window",
    "build_quantization_config",
    "causal_chunks",
    "extract_story",
    "extract_words",
    "extract_words_with_stats",
    "load_model",
    "model_layers",
    "n_hidden_states",
    "per_word_windows",
    "read_words",
    "run_windows",
    "store_stories",
    "word_token_spans",
]

logger = logging.getLogger(__name__)

CAUSAL_FAMILIES = ("decoder", "vision-language")
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclasses.dataclass
class Window:
    """One sequence of a forward pass and the story words whose states it yields.

    ``first_token``/``last_token`` index ``input_ids`` (inclusive) for each yielded word.
    """

    input_ids: list[int]
    word_index: np.ndarray  # (n_targets,) indices into the story's words
    first_token: np.ndarray  # (n_targets,)
    last_token: np.ndarray  # (n_targets,)


def word_token_spans(offsets, special_mask, word_lengths, separator: str = " ") -> tuple[np.ndarray, np.ndarray]:
    """First and last token (inclusive) of each word of a text made of words joined by ``separator`` (" " or "").

    ``offsets`` (n_tokens, 2) are the tokenizer's character spans, ``special_mask``
    (n_tokens,) flags special tokens, ``word_lengths`` (n_words,) are the words' lengths
    in characters. A word's span includes the space before it (a byte-level BPE may emit
    that space as a token of its own, often with an empty trimmed span at the next word's
    first character; it belongs to the word it introduces), so a word's tokens are exactly
    those its text adds. A token belongs to every word whose
    span it overlaps: a token spanning two words serves both, and a word without a token
    of its own gets the token that covers it. Words no token overlaps get -1 (the caller
    reports them).
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    special = np.asarray(special_mask, dtype=bool).reshape(-1)
    word_lengths = np.asarray(word_lengths, dtype=np.int64)
    n_words = len(word_lengths)
    gap = len(separator)
    word_starts = np.concatenate([[0], np.cumsum(word_lengths + gap)[:-1]])
    word_ends = word_starts + word_lengths
    span_starts = word_starts - gap * (np.arange(n_words) > 0)  # with the separating space
    first = np.full(n_words, -1, dtype=np.int64)
    last = np.full(n_words, -1, dtype=np.int64)

    token_index = np.flatnonzero(~special)
    starts = offsets[token_index, 0]
    # An empty span (a space token whose offsets were trimmed) marks the character it sits on.
    ends = np.maximum(offsets[token_index, 1], starts + 1)
    # Words overlapping token t: those ending after its start and starting before its end.
    first_word = np.searchsorted(word_ends, starts, side="right")
    last_word = np.searchsorted(span_starts, ends, side="left") - 1
    covers = first_word <= last_word
    token_index, first_word, last_word = token_index[covers], first_word[covers], last_word[covers]
    if np.all(np.diff(first_word) >= 0) and np.all(np.diff(last_word) >= 0):
        words = np.arange(n_words)
        lo = np.searchsorted(last_word, words, side="left")  # first token reaching word j
        hi = np.searchsorted(first_word, words, side="right") - 1  # last token starting at or before j
        has_token = (lo < len(token_index)) & (hi >= 0)
        has_token[has_token] &= first_word[lo[has_token]] <= words[has_token]
        first[has_token] = token_index[lo[has_token]]
        last[has_token] = token_index[hi[has_token]]
    else:  # offsets out of order: plain loop
        for token, word_a, word_b in zip(token_index, first_word, last_word):
            for word in range(word_a, word_b + 1):
                first[word] = token if first[word] < 0 else min(first[word], token)
                last[word] = max(last[word], token)
    return first, last


def _missing_word_error(words: list[str], index: int) -> InputError:
    return InputError(
        None,
        f"word {index} ({words[index]!r}) maps to no token of the model's tokenizer (its characters are dropped by the tokenizer).",
        "Remove or replace that word in the story's words.tsv.",
    )


def _tokenize(tokenizer, texts: list[str]) -> dict:
    return tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)


def per_word_windows(tokenizer, words: list[str], context_words: int, max_tokens: int | None = None, separator: str = " ",
                     first: int = 0) -> list[Window]:
    """One window per word from word ``first`` on: the word and the ``context_words - 1`` words before it,
    joined by ``separator``.

    A window longer than ``max_tokens`` loses its earliest words until it fits.
    """
    n_words = len(words)
    starts = {i: max(0, i - context_words + 1) for i in range(first, n_words)}
    encoded = _tokenize(tokenizer, [separator.join(words[start : i + 1]) for i, start in starts.items()])
    windows = []
    n_shortened = 0
    for k, (i, start) in enumerate(starts.items()):
        ids, offsets, special = encoded["input_ids"][k], encoded["offset_mapping"][k], encoded["special_tokens_mask"][k]
        n_shortened += max_tokens is not None and len(ids) > max_tokens
        while max_tokens is not None and len(ids) > max_tokens:
            if start == i:
                raise InputError(None, f"word {i} ({words[i]!r}) alone is {len(ids)} tokens, more than the model's {max_tokens} positions.", "Fix the word in words.tsv.")
            start += 1
            single = _tokenize(tokenizer, [separator.join(words[start : i + 1])])
            ids, offsets, special = single["input_ids"][0], single["offset_mapping"][0], single["special_tokens_mask"][0]
        first, last = word_token_spans(offsets, special, [len(w) for w in words[start : i + 1]], separator)
        if first[-1] < 0:
            raise _missing_word_error(words, i)
        windows.append(Window(list(ids), np.array([i]), first[-1:], last[-1:]))
    if n_shortened:
        logger.warning("%d windows were shortened to fit %s tokens", n_shortened, max_tokens)
    return windows


def chunk_starts(n_words: int, context_words: int) -> list[tuple[int, int, int]]:
    """``(start, yield_from, end)`` word indices of the causal chunks (2W words, stride W)."""
    chunks = [(0, 0, min(2 * context_words, n_words))]
    start = context_words
    while start + context_words < n_words:
        chunks.append((start, start + context_words, min(start + 2 * context_words, n_words)))
        start += context_words
    return chunks


def causal_chunks(tokenizer, words: list[str], context_words: int, max_tokens: int | None = None, separator: str = " ") -> list[Window]:
    """Chunks of 2W words (joined by ``separator``) with stride W; each word is yielded by exactly one chunk."""
    bounds = chunk_starts(len(words), context_words)
    encoded = _tokenize(tokenizer, [separator.join(words[start:end]) for start, _, end in bounds])
    windows = []
    for k, (start, yield_from, end) in enumerate(bounds):
        ids = encoded["input_ids"][k]
        if max_tokens is not None and len(ids) > max_tokens:
            raise InputError(
                None,
                f"a chunk of {end - start} words is {len(ids)} tokens, more than the model's {max_tokens} positions.",
                f"Lower context_words (now {context_words}); chunks hold 2 x context_words words.",
            )
        first, last = word_token_spans(encoded["offset_mapping"][k], encoded["special_tokens_mask"][k], [len(w) for w in words[start:end]], separator)
        missing = np.flatnonzero(first < 0)
        if len(missing):
            raise _missing_word_error(words, start + int(missing[0]))
        local = np.arange(yield_from - start, end - start)
        windows.append(Window(list(ids), start + local, first[local], last[local]))
    return windows


def _forward_batch(tower, windows: list[Window], info: ModelInfo, padding_side: str):
    """Run one padded batch; return (hidden states tuple of (B, T, H), start of each window's tokens)."""
    lengths = [len(window.input_ids) for window in windows]
    n_tokens = max(lengths)
    input_ids = torch.full((len(windows), n_tokens), info.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), n_tokens), dtype=torch.long)
    token_start = []
    for row, window in enumerate(windows):
        begin = n_tokens - lengths[row] if padding_side == "left" else 0
        input_ids[row, begin : begin + lengths[row]] = torch.tensor(window.input_ids)
        attention_mask[row, begin : begin + lengths[row]] = 1
        token_start.append(begin)
    input_ids = input_ids.to(info.device)
    attention_mask = attention_mask.to(info.device)
    with torch.inference_mode():
        if info.family == "encoder-decoder":
            encoded = tower.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=True)
            if info.t5_states == "encoder":
                return encoded.hidden_states, token_start
            start_id = info.decoder_start_token_id if info.decoder_start_token_id is not None else info.pad_token_id
            first_column = torch.full((len(windows), 1), start_id, dtype=torch.long, device=input_ids.device)
            decoded = tower.get_decoder()(
                input_ids=torch.cat([first_column, input_ids], dim=1),
                attention_mask=torch.cat([torch.ones_like(first_column), attention_mask], dim=1),
                encoder_hidden_states=encoded.last_hidden_state,
                encoder_attention_mask=attention_mask,
                output_hidden_states=True,
                use_cache=False,
                return_dict=True,
            )
            # Token t of the window is the decoder input at position t + 1.
            return decoded.hidden_states, [begin + 1 for begin in token_start]
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "output_hidden_states": True, "return_dict": True}
        if info.family in CAUSAL_FAMILIES:
            kwargs["use_cache"] = False
            if padding_side == "left":
                kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return tower(**kwargs).hidden_states, token_start


def _pool(hidden_states, windows: list[Window], token_start: list[int], pooling: str):
    """Per-word vectors (n_targets, H) float32 for every hidden state, and their word indices."""
    n_tokens = hidden_states[0].shape[1]
    rows, segments, counts, word_index = [], [], [], []
    for row, window in enumerate(windows):
        for first, last, word in zip(window.first_token, window.last_token, window.word_index):
            positions = np.arange(first, last + 1) if pooling == "mean" else np.array([last])
            rows.append(row * n_tokens + token_start[row] + positions)
            segments.append(np.full(len(positions), len(word_index)))
            counts.append(len(positions))
            word_index.append(word)
    rows = torch.from_numpy(np.concatenate(rows))
    segments = torch.from_numpy(np.concatenate(segments))
    counts = torch.tensor(counts, dtype=torch.float32)
    pooled = []
    for states in hidden_states:
        flat = states.reshape(-1, states.shape[-1])
        device = flat.device
        sums = torch.zeros((len(word_index), flat.shape[-1]), dtype=torch.float32, device=device)
        sums.index_add_(0, segments.to(device), flat[rows.to(device)].float())
        pooled.append((sums / counts.to(device)[:, None]).cpu().numpy())
    return np.asarray(word_index), pooled


def _check_words(words: list[str]) -> None:
    if not words:
        raise InputError(None, "the story has no words.", "Check the story's words.tsv.")
    for index, word in enumerate(words):
        if not isinstance(word, str) or not word.strip():
            raise InputError(None, f"word {index} is empty ({word!r}).", "Remove empty words from the story's words.tsv.")


def run_windows(model, windows: list[Window], n_words: int, settings: dict, info: ModelInfo, padding_side: str = "right", desc: str = "words"):
    """Forward ``windows`` in padded batches of ``batch_size`` sequences, longest first.

    Returns ``(outputs, filled, stats)``: one (n_words, hidden) float32 array per hidden
    state with the rows of the windows' words filled in, the mask of filled rows, and
    counts. A CUDA out-of-memory error halves the batch size and retries (logged).
    """
    settings = model_settings(settings)
    started = time.perf_counter()
    tower = text_tower(model, info.family)
    outputs = [np.zeros((n_words, info.hidden_size), dtype=np.float32) for _ in range(info.n_hidden_states)]
    filled = np.zeros(n_words, dtype=bool)
    order = sorted(range(len(windows)), key=lambda k: -len(windows[k].input_ids))  # longest first: OOM shows early
    batch_size = settings["batch_size"]
    padded_tokens = 0
    position = 0
    with tqdm(total=sum(len(window.word_index) for window in windows), unit="word", desc=desc, leave=False) as progress:
        while position < len(order):
            batch = [windows[k] for k in order[position : position + batch_size]]
            try:
                hidden_states, token_start = _forward_batch(tower, batch, info, padding_side)
                out_of_memory = False
            except torch.OutOfMemoryError:
                out_of_memory = True  # handled outside the except block so the failed batch's memory is freed
            if out_of_memory:
                if batch_size == 1:
                    raise InputError(None, f"{info.model_id}: out of memory with one sequence per batch.", "Use a larger GPU, quantization, or a smaller context_words.")
                batch_size = max(1, batch_size // 2)
                logger.warning("out of memory with %d sequences per batch; retrying with %d", len(batch), batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            if len(hidden_states) != info.n_hidden_states:
                raise RuntimeError(f"{info.model_id} returned {len(hidden_states)} hidden states, expected {info.n_hidden_states}")
            word_index, pooled = _pool(hidden_states, batch, token_start, settings["pooling"])
            del hidden_states
            for layer, states in enumerate(pooled):
                outputs[layer][word_index] = states
            filled[word_index] = True
            padded_tokens += len(batch) * max(len(window.input_ids) for window in batch)
            position += len(batch)
            progress.update(len(word_index))
    stats = {
        "n_sequences": len(windows),
        "forward_tokens": sum(len(window.input_ids) for window in windows),
        "padded_tokens": padded_tokens,
        "final_batch_size": batch_size,
        "seconds": time.perf_counter() - started,
    }
    return outputs, filled, stats


def extract_words_with_stats(model, tokenizer, words: list[str], settings: dict, info: ModelInfo, desc: str = "words"):
    """Like :func:`extract_words`, also returning counts and timing of the work done."""
    settings = model_settings(settings)
    _check_words(words)
    context_words = settings["context_words"]
    if settings["context"] == "causal-chunked":
        if info.family not in CAUSAL_FAMILIES:
            raise InputError(None, f"context causal-chunked needs a causal model; {info.model_id} is {info.family}.", "Use context: per-word.")
        windows = causal_chunks(tokenizer, words, context_words, info.max_positions, settings["word_separator"])
    else:
        windows = per_word_windows(tokenizer, words, context_words, info.max_positions, settings["word_separator"])
    padding_side = tokenizer.padding_side if info.family in CAUSAL_FAMILIES else "right"
    outputs, filled, stats = run_windows(model, windows, len(words), settings, info, padding_side, desc)
    if not filled.all():
        raise RuntimeError(f"words {np.flatnonzero(~filled)[:5].tolist()} received no state")
    # story length in tokens (for the stats only; the model reads windows): through the fast
    # tokenizer's backend, which does not warn that a whole story exceeds the model's length
    story_tokens = len(tokenizer.backend_tokenizer.encode(settings["word_separator"].join(words), add_special_tokens=False).ids)
    stats.update(
        n_words=len(words),
        story_tokens=story_tokens,
        forward_tokens_per_word=stats["forward_tokens"] / len(words),
        forward_tokens_per_story_token=stats["forward_tokens"] / max(story_tokens, 1),
    )
    return outputs, stats


def extract_words(model, tokenizer, words: list[str], settings: dict, info: ModelInfo) -> list[np.ndarray]:
    """States of every hidden state for each word: a list of (n_words, hidden) float32 arrays.

    ``settings`` is the model's config entry (context, context_words, pooling,
    batch_size are used); ``model, tokenizer, info`` come from :func:`load_model`.
    A CUDA out-of-memory error halves the batch size and retries (logged).
    """
    outputs, _ = extract_words_with_stats(model, tokenizer, words, settings, info)
    return outputs


def _library_version(name: str) -> str | None:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def extract_story(model_cfg: dict, words_tsv: str | Path, out_path: str | Path, log: logging.Logger | None = None, loaded=None, story: str | None = None) -> dict:
    """Extract one story's states for every hidden state and write the store entry.

    ``loaded`` may pass an already loaded ``(model, tokenizer, info)``. Returns the
    entry's attributes.
    """
    log = log or logger
    settings = model_settings(model_cfg)
    frame = read_words(words_tsv)
    words = frame["word"].tolist()
    model, tokenizer, info = loaded if loaded is not None else load_model(settings)
    try:
        states, stats = extract_words_with_stats(model, tokenizer, words, settings, info, desc=Path(out_path).stem)
    except InputError as error:
        if error.path is None:
            raise InputError(words_tsv, error.problem, error.fix) from error
        raise
    if settings["store_dtype"] == "float16":
        for layer, array in enumerate(states):
            if np.abs(array).max() > FLOAT16_MAX:
                raise InputError(out_path, f"hidden state {layer} exceeds the float16 range.", "Set store_dtype: float32 for this model.")
    attrs = {
        "story": story,
        "model_id": info.model_id,
        "slug": info.slug,
        "source_kind": info.source_kind,
        "revision": info.revision,
        "weights_sha256": info.weights_sha256,
        "adapter": None if info.adapter is None else os.path.abspath(info.adapter),
        "adapter_sha256": info.adapter_sha256,
        "adapter_recipe": settings["adapter_recipe"],
        "family": info.family,
        "t5_states": info.t5_states,
        "dtype": info.dtype,
        "quantization": info.quantization,
        "context": settings["context"],
        "context_words": settings["context_words"],
        "pooling": settings["pooling"],
        "store_key": store.entry_settings(settings),
        "settings_hash": store.settings_hash(settings),
        "hidden_size": info.hidden_size,
        "n_hidden_states": info.n_hidden_states,
        "words_sha256": sha256_file(words_tsv),
        "words_source": os.path.abspath(words_tsv),
        "torch_version": torch.__version__,
        "transformers_version": _library_version("transformers"),
        "peft_version": _library_version("peft") if info.adapter else None,
        "brainllm_version": __version__,
        **{key: stats[key] for key in ("story_tokens", "forward_tokens", "forward_tokens_per_word")},
    }
    store.write_entry(out_path, states, words, frame["onset"].to_numpy(), frame["offset"].to_numpy(), attrs, settings["store_dtype"])
    log.info(
        "%s: %d words, %d tokens, %d forward tokens (%.2f per word, %.2f per story token), %.1f s",
        Path(out_path).stem, stats["n_words"], stats["story_tokens"], stats["forward_tokens"],
        stats["forward_tokens_per_word"], stats["forward_tokens_per_story_token"], stats["seconds"],
    )
    return attrs


def store_stories(model_name: str, model_cfg: dict, stories: list[str], words_tsvs: list[str | Path], store_dir: str | Path, manifests: list[str | Path], log: logging.Logger | None = None) -> list[dict]:
    """For each story, reuse the store's entry of (model settings, story words) or extract it; write its manifest.

    The model is loaded once, and only when an entry has to be computed (entries made
    by other runs are reused after verification). Returns the manifests.
    """
    log = log or logger
    loaded = []

    def compute(story: str, words_tsv: str | Path, path: Path) -> None:
        if not loaded:
            loaded.append(load_model(model_settings(model_cfg)))
        log.info("extracting %s into %s", story, path)
        extract_story(model_cfg, words_tsv, path, log=log, loaded=loaded[0], story=story)

    written = []
    for story, words_tsv, manifest in zip(stories, words_tsvs, manifests, strict=True):
        path, metadata, reused = store.obtain_entry(
            store_dir, model_cfg, story, words_tsv, lambda path: compute(story, words_tsv, path), log=log
        )
        written.append(store.write_manifest(manifest, path, metadata, model_name, reused))
    return written
