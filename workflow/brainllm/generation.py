"""Brain-prompted generation (Ye et al. 2023): brain windows become prompt vectors of a causal LM.

A test segment is the words heard in ``segment_trs`` consecutive TRs (the continuation),
after the ``prompt_words`` words heard before them (the text prompt). Its brain window is
the responses of the segment's TRs shifted by each of ``delays`` (per delay the mean over
the segment's rows, delays concatenated: the same windows as the contrastive stage). A
brain decoder (MLP) maps the window to ``brain_tokens`` vectors in the LM's input-embedding
space; the LM reads ``<s>? · brain vectors · prompt tokens`` and is trained — frozen, or
with LoRA adapters (peft) — with the next-token loss of the continuation. Early stopping on
the validation story's loss; test stories are never seen in training.

Conditions scored on the test segments, with the same seeds:
- ``brain``: the trained decoder with each segment's own window;
- ``permuted_brain``: the same model, windows shuffled across segments (no window within
  ``segment_trs + max(delays)`` TRs of its own segment's);
- ``text_only``: a decoder trained the same way on all-zero brain inputs (a learned soft
  prompt: what training alone buys without brain data);
- ``llm``: the LM with the text prompt only, untrained.

EEG (:func:`run_brain_prompt` with ``eeg_settings``): segments are ``eeg.generation.segment_words`` consecutive
words and the brain window their word-locked epochs in order (``brainllm.eeg.word_epochs``);
the rest is the same.

Texts are generated greedily and by beam search with as many new tokens as the heard
continuation has, identical for every condition. Pairwise accuracy: the share of
(test segment, permutation) draws for which the heard continuation's loss is lower with
the segment's own window than with a permuted one (chance 0.5).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from scipy import stats
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from .brainlora import _story_grid, segment_words
from .contrastive import pick_device, read_responses, segment_starts, window_rows
from .contrastive_settings import story_split
from .io import InputError, atomic_path, read_words, sha256_file, write_json, write_tsv
from .models import load_model, model_settings
from .generation_report import CONDITIONS
from .text_metrics import METRICS, TextScorer, paired_segment_test

log = logging.getLogger(__name__)

CONTROLS = ("permuted_brain", "text_only", "llm")
DECODINGS = ("greedy", "beam")


@dataclass(frozen=True)
class GenerationSettings:
    prompt_words: int = 8
    segment_trs: int = 2
    stride_trs: int = 1
    delays: tuple[int, ...] = (1, 2, 3, 4)
    brain_tokens: int = 4
    brain_components: int | None = 64
    decoder: Mapping = field(default_factory=lambda: {"hidden": 256, "dropout": 0.3})
    lora: Mapping = field(default_factory=lambda: {"enabled": False, "rank": 8, "alpha": 16, "dropout": 0.05, "mlp": False, "target_modules": None})
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 5
    validation_story: str | None = None
    max_continuation_tokens: int = 24
    beam_width: int = 4
    no_repeat_ngram_size: int = 2
    repetition_penalty: float = 1.0
    pairwise_permutations: int = 10
    block_trs: int = 20
    n_flips: int = 10000
    seed: int = 0
    device: str = "auto"

    @classmethod
    def from_config(cls, section: Mapping | None) -> "GenerationSettings":
        """Settings from the config's ``generation.brain_prompt`` section (defaults for missing keys)."""
        defaults = asdict(cls())
        unknown = sorted(set(section or {}) - set(defaults))
        if unknown:
            raise InputError(None, f"generation.brain_prompt has unknown keys {unknown}.", "see config/README.md for the keys.")
        values = {**defaults, **dict(section or {})}
        values["delays"] = tuple(int(d) for d in values["delays"])
        values["decoder"] = {**defaults["decoder"], **dict(values["decoder"] or {})}
        values["lora"] = {**defaults["lora"], **dict(values["lora"] or {})}
        settings = cls(**values)
        for name in ("segment_trs", "stride_trs", "brain_tokens", "beam_width", "epochs", "batch_size", "max_continuation_tokens"):
            if int(getattr(settings, name)) < 1:
                raise InputError(None, f"generation.brain_prompt.{name} is {getattr(settings, name)!r}; it must be at least 1.",
                                 f"set generation.brain_prompt.{name} to a positive integer.")
        if settings.brain_components is not None and int(settings.brain_components) < 1:
            raise InputError(None, f"generation.brain_prompt.brain_components is {settings.brain_components!r}.",
                             "set a positive number of components, or null for every voxel.")
        if settings.prompt_words < 0 or not settings.delays or min(settings.delays) < 0:
            raise InputError(None, "generation.brain_prompt.prompt_words and delays must be non-negative (delays not empty).")
        span = int(settings.segment_trs) + max(settings.delays)
        if int(settings.block_trs) < span:
            raise InputError(None, f"generation.brain_prompt.block_trs is {settings.block_trs}, shorter than the {span} TRs over which "
                             "neighbouring segments share responses (segment_trs + max(delays)): the paired tests would overstate "
                             "significance.", f"set generation.brain_prompt.block_trs to at least {span} (default 20).")
        return settings

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    def record(self) -> dict:
        out = asdict(self)
        out["delays"] = list(self.delays)
        return out


# ----------------------------------------------------------------------------- the LM


def load_causal_lm(model_cfg: Mapping, device: torch.device, source: str = "generation.llm"):
    """``(model, tokenizer, info)`` of a causal LM with its output head; a clear error for any other model."""
    cfg = {**dict(model_cfg), "device": device.type}
    if device.type == "cpu":
        cfg.update(quantization="none", dtype="float32")
    model, tokenizer, info = load_model(cfg)
    if info.family != "decoder" or model.get_output_embeddings() is None:
        raise InputError(info.location, f"{source} ({info.model_id}) is a {info.family} model without a causal LM head; "
                         "brain → text generation needs a causal LM.", f"point {source}.source to a causal LM (e.g. GPT-2, Llama, Qwen).")
    return model, tokenizer, info


def embedding_rms(model) -> float:
    """Root-mean-square entry of the LM's input-embedding matrix (the scale of prompt vectors)."""
    weight = model.get_input_embeddings().weight
    return float(weight.detach().float().pow(2).mean().sqrt())


class BrainPromptDecoder(nn.Module):
    """Brain window ``(batch, brain_dim)`` → ``(batch, n_tokens, embed_dim)`` prompt vectors at the embeddings' scale."""

    def __init__(self, brain_dim: int, n_tokens: int, embed_dim: int, hidden: int, dropout: float, scale: float):
        super().__init__()
        self.n_tokens, self.embed_dim = n_tokens, embed_dim
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(brain_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_tokens * embed_dim))
        self.norm = nn.LayerNorm(embed_dim)
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, brain: torch.Tensor) -> torch.Tensor:
        vectors = self.net(brain).view(brain.shape[0], self.n_tokens, self.embed_dim)
        return self.norm(vectors) * self.scale


# ----------------------------------------------------------------------------- segments


@dataclass
class Segments:
    """Test or training segments of some stories: text, tokens, brain windows ``(n, brain_dim)``.

    ``start`` is each segment's first TR (fMRI) or first word (EEG), in ``Spacing.unit``."""

    story: list[str]
    start: np.ndarray
    onset_s: np.ndarray
    offset_s: np.ndarray
    prompt: list[str]
    reference: list[str]
    prompt_ids: list[list[int]]
    continuation_ids: list[list[int]]
    brain: np.ndarray

    def __len__(self) -> int:
        return len(self.story)


@dataclass(frozen=True)
class Spacing:
    """How segments lie in time, in the unit of their starts (``tr`` or ``word``): a permuted window comes
    from a segment at least ``min_gap`` from its own; resampling blocks hold ``block`` consecutive segments."""

    unit: str
    min_gap: int
    block: int


def fmri_spacing(settings: GenerationSettings) -> Spacing:
    return Spacing("tr", settings.segment_trs + settings.max_delay, block_segments(settings))


def split_tokens(tokenizer, prompt: Sequence[str], heard: Sequence[str], separator: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the heard words, tokenized as one text (the heard words keep their
    leading separator, as the LLM reads and writes them), split at the character where the heard words start."""
    prompt_text = separator.join(prompt)
    text = prompt_text + separator + separator.join(heard) if prompt else separator.join(heard)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    boundary = len(prompt_text) if prompt else 0
    prompt_ids, heard_ids = [], []
    for token, (begin, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        (heard_ids if end > boundary and (begin >= boundary or not prompt) else prompt_ids).append(token)
    return prompt_ids, heard_ids


class SegmentCollector:
    """Accumulates segments: tokenizes prompt and heard words, truncates long continuations."""

    def __init__(self, tokenizer, settings: GenerationSettings, separator: str):
        self.tokenizer, self.settings, self.separator = tokenizer, settings, separator
        self.columns: dict[str, list] = {name: [] for name in Segments.__dataclass_fields__}

    def add(self, story: str, start: int, words: pd.DataFrame, first: int, context: Sequence[str], heard: Sequence[str],
            brain: np.ndarray) -> None:
        """One segment whose heard words are ``words`` rows ``first …`` (skipped when they make no token)."""
        prompt_ids, continuation = split_tokens(self.tokenizer, context, heard, self.separator)
        if not continuation:
            return
        reference = self.separator.join(heard)
        if len(continuation) > self.settings.max_continuation_tokens:  # the reference is what is kept
            continuation = continuation[: self.settings.max_continuation_tokens]
            reference = self.tokenizer.decode(continuation, skip_special_tokens=True).strip()
            heard = heard[: max(len(reference.split()), 1)]
        values = dict(story=story, start=int(start), onset_s=float(words["onset"].iloc[first]),
                      offset_s=float(words["offset"].iloc[first + len(heard) - 1]), prompt=self.separator.join(context),
                      reference=reference, prompt_ids=prompt_ids, continuation_ids=continuation, brain=brain)
        for name, value in values.items():
            self.columns[name].append(value)

    def segments(self, source, stories: Sequence[str]) -> Segments:
        columns = self.columns
        if not columns["story"]:
            raise InputError(source, f"stories {list(stories)} have no segment with heard words.", "check the words.tsv files and the segment settings.")
        return Segments(**{**columns, "start": np.asarray(columns["start"]), "onset_s": np.asarray(columns["onset_s"]),
                           "offset_s": np.asarray(columns["offset_s"]), "brain": np.stack(columns["brain"])})


def story_segments(responses_h5, words_tsvs: Mapping[str, str | os.PathLike], stories: Sequence[str], settings: GenerationSettings,
                   tokenizer, separator: str = " ") -> Segments:
    """Every segment of ``stories`` with at least one heard word, its prompt and brain window."""
    responses = read_responses(responses_h5, stories)
    collector = SegmentCollector(tokenizer, settings, separator)
    for story in stories:
        data = np.asarray(responses[story], dtype=np.float32)
        if data.shape[0] < settings.segment_trs + settings.max_delay:
            raise InputError(responses_h5, f"story {story!r} has {data.shape[0]} TRs: a {settings.segment_trs}-TR segment's brain window "
                             f"delayed by up to {settings.max_delay} TRs runs past the recording.",
                             "lower generation.brain_prompt.delays or segment_trs, or drop the story.")
        centres_s, tr = _story_grid(responses_h5, story)
        starts = segment_starts(len(centres_s), settings.segment_trs, settings.stride_trs, settings.max_delay)
        words = read_words(words_tsvs[story]).sort_values("onset", kind="stable")
        midpoints = ((words["onset"] + words["offset"]) / 2.0).to_numpy(float)
        brain_rows, _ = window_rows(starts, settings.segment_trs, settings.delays)  # (n, n_delays, segment_trs)
        windows = data[brain_rows].mean(2).reshape(len(starts), -1)
        for index, (start, (context, heard)) in enumerate(zip(starts, segment_words(
                words, centres_s, tr, starts, settings.segment_trs, settings.prompt_words))):
            first = int(np.searchsorted(midpoints, centres_s[start] - tr / 2.0))
            collector.add(story, start, words, first, context, heard, windows[index])
    return collector.segments(responses_h5, stories)


def eeg_story_segments(eeg_h5, words_tsvs: Mapping[str, str | os.PathLike], stories: Sequence[str], settings: GenerationSettings,
                       eeg_settings, tokenizer, separator: str = " ") -> Segments:
    """Word-locked EEG segments: ``eeg.generation.segment_words`` consecutive words every ``stride_words``; the
    brain window is the heard words' epochs (``brainllm.eeg.word_epochs``) concatenated in order. Segments whose
    epochs run past the recording are left out."""
    from .eeg import read_preprocessed, story_words_of_recording, word_epochs

    eeg, onsets, sfreq, _, _ = read_preprocessed(eeg_h5, stories)
    n_words, stride = int(eeg_settings.generation["segment_words"]), int(eeg_settings.generation["stride_words"])
    collector = SegmentCollector(tokenizer, settings, separator)
    for story in stories:
        words = story_words_of_recording(words_tsvs[story], onsets[story], story, eeg_h5)
        epochs = word_epochs(eeg[story], sfreq, onsets[story], eeg_settings.epochs)
        tokens = words["word"].astype(str).tolist()
        for start in range(0, len(words) - n_words + 1, stride):
            window = epochs[start : start + n_words]  # (words, bins, channels)
            if not np.isfinite(window).all():
                continue
            collector.add(story, start, words, start, tokens[max(0, start - settings.prompt_words) : start], tokens[start : start + n_words],
                          window.reshape(-1).astype(np.float32))
    return collector.segments(eeg_h5, stories)


def eeg_spacing(eeg_settings) -> Spacing:
    """Permuted windows ≥ two segments' words away; blocks of ``eeg.block_words`` words of segment starts."""
    spec = eeg_settings.generation
    return Spacing("word", 2 * int(spec["segment_words"]), max(1, math.ceil(eeg_settings.block_words / int(spec["stride_words"]))))


def reduce_brain(data: Mapping[str, Segments], n_components: int | None) -> dict | None:
    """Project every split's windows on the leading principal axes of the training windows (in place).

    Axes, centring and the components' scale come from ``data['train']`` alone; components
    are scaled to unit variance over the training windows. None leaves the windows as they are.
    """
    if n_components is None:
        return None
    train = data["train"].brain.astype(np.float64)
    mean = train.mean(0)
    _, singular, axes = np.linalg.svd(train - mean, full_matrices=False)
    k = min(int(n_components), len(singular))
    scale = singular[:k] / np.sqrt(max(len(train) - 1, 1))
    for segments in data.values():
        segments.brain = (((segments.brain - mean) @ axes[:k].T) / np.where(scale > 0, scale, 1.0)).astype(np.float32)
    explained = float((singular[:k] ** 2).sum() / (singular**2).sum())
    log.info("brain windows: %d voxel-delays → %d principal components of the training windows (%.1f %% of their variance)",
             train.shape[1], k, 100 * explained)
    return {"n_components": k, "explained_variance": explained, "n_inputs": int(train.shape[1])}


def check_context(segments: Segments, settings: GenerationSettings, max_positions: int | None, source: str) -> None:
    """The longest prompt + brain vectors + continuation must fit the LM's context."""
    if max_positions is None:
        return
    longest = max(len(p) + len(c) for p, c in zip(segments.prompt_ids, segments.continuation_ids)) + settings.brain_tokens + 1
    if longest > max_positions:
        raise InputError(source, f"a prompt of {settings.prompt_words} words, {settings.brain_tokens} brain vectors and its continuation "
                         f"take {longest} positions; the LM's context holds {max_positions}.",
                         "lower generation.brain_prompt.prompt_words, brain_tokens or max_continuation_tokens.")


def distant_permutation(start: np.ndarray, story: Sequence[str], min_gap: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of segments sending none to a segment of its own story whose start lies within ``min_gap``."""
    n = len(start)
    story = np.asarray(story)
    order = rng.permutation(n)
    for _ in range(50):
        near = (story[order] == story) & (np.abs(start[order] - start) < min_gap)
        bad = np.flatnonzero(near)
        if bad.size == 0:
            return order
        for i in bad:  # swap with a random partner when that fixes both
            for j in rng.permutation(n):
                ok_i = story[order[j]] != story[i] or abs(start[order[j]] - start[i]) >= min_gap
                ok_j = story[order[i]] != story[j] or abs(start[order[i]] - start[j]) >= min_gap
                if ok_i and ok_j:
                    order[i], order[j] = order[j], order[i]
                    break
    raise InputError(None, f"cannot shuffle {n} test segments so that each window lies ≥ {min_gap} segment starts from its own.",
                     "use a longer test story or shorter segments (generation.brain_prompt.segment_trs / delays, eeg.generation.segment_words).")


# ----------------------------------------------------------------------------- LM inputs


class PromptedLM:
    """The LM with a brain decoder in front: builds input embeddings, losses and generations."""

    def __init__(self, lm, tokenizer, decoder: BrainPromptDecoder | None, device: torch.device):
        self.lm, self.tokenizer, self.decoder, self.device = lm, tokenizer, decoder, device
        self.embeddings = lm.get_input_embeddings()
        self.dtype = self.embeddings.weight.dtype
        # every sequence opens with <s>, or </s> (a document boundary) for tokenizers without one
        self.start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if self.start is None:
            raise InputError(None, "the LLM's tokenizer has neither a <s> nor a </s> token to open the prompt.",
                             "use a tokenizer with bos_token or eos_token set.")
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    def inputs(self, prompt_ids: Sequence[Sequence[int]], brain: torch.Tensor | None,
               continuations: Sequence[Sequence[int]] | None = None, left_pad: bool = False):
        """``(embeds, attention mask, labels)`` of ``<s>`` (``</s>`` for tokenizers without one) · brain vectors ·
        prompt tokens · continuation per row, padded to one width (right-padded; left-padded for generation);
        labels are the continuation tokens at their positions, −100 elsewhere. One embedding lookup per batch."""
        n_brain = 0 if brain is None else self.decoder.n_tokens
        continuations = continuations if continuations is not None else [[] for _ in prompt_ids]
        rows = [[self.start] + [self.pad] * n_brain + list(p) + list(c) for p, c in zip(prompt_ids, continuations)]
        width = max(len(row) for row in rows)
        offsets = [width - len(row) if left_pad else 0 for row in rows]
        ids, mask, labels = [], [], []
        for row, offset, p, c in zip(rows, offsets, prompt_ids, continuations):
            padding = [0] * (width - len(row))
            ids.append(padding + row if left_pad else row + padding)
            mask.append(padding + [1] * len(row) if left_pad else [1] * len(row) + padding)
            target = [-100] * (1 + n_brain + len(p)) + list(c)
            labels.append([-100] * len(padding) + target if left_pad else target + [-100] * len(padding))
        ids_t = torch.tensor(ids, dtype=torch.long, device=self.device)
        embeds = self.embeddings(ids_t)
        if n_brain:
            vectors = self.decoder(brain).to(self.dtype)  # (batch, n_brain, embed_dim)
            row_index = torch.arange(len(rows), device=self.device)[:, None]
            columns = torch.tensor(offsets, device=self.device)[:, None] + 1 + torch.arange(n_brain, device=self.device)[None, :]
            embeds = embeds.index_put((row_index.expand_as(columns), columns), vectors)
        return embeds, torch.tensor(mask, dtype=torch.long, device=self.device), torch.tensor(labels, dtype=torch.long, device=self.device)

    def continuation_loss(self, prompt_ids: Sequence[Sequence[int]], brain: torch.Tensor | None,
                          continuations: Sequence[Sequence[int]]) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of each continuation after its prompt ``(batch,)``."""
        embeds, mask, labels = self.inputs(prompt_ids, brain, continuations)
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1].float()
        labels = labels[:, 1:]
        token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        counts = (labels != -100).sum(1).clamp(min=1)
        return token_loss.sum(1) / counts

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], brain: torch.Tensor | None, n_new: int, settings: GenerationSettings,
                 num_beams: int) -> list[str]:
        """``n_new`` tokens after each prompt (greedy when ``num_beams`` is 1), decoded without special tokens.

        The inputs are left-padded into one batch; the attention mask keeps the padding out and the
        positions count from each row's first vector, so each text is the one its row alone gives."""
        kwargs = dict(max_new_tokens=n_new, min_new_tokens=n_new, num_beams=num_beams, do_sample=False, pad_token_id=self.pad,
                      repetition_penalty=settings.repetition_penalty)
        if settings.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = settings.no_repeat_ngram_size
        special = sorted(set(self.tokenizer.all_special_ids))  # <unk>, <pad>, … are not words
        if special:
            kwargs["bad_words_ids"] = [[token] for token in special]
        embeds, mask, _ = self.inputs(prompt_ids, brain, left_pad=True)
        with warnings.catch_warnings():  # n-gram blocking over the generated tokens only is what is wanted
            warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*")
            out = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        if out.shape[1] != n_new:  # decoder-only models given inputs_embeds return the new tokens only
            raise RuntimeError(f"generate returned {out.shape[1]} tokens, {n_new} were asked for")
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]


# ----------------------------------------------------------------------------- training


def _trainable(decoder: nn.Module, lm) -> dict[str, nn.Parameter]:
    params = {f"decoder.{name}": p for name, p in decoder.named_parameters()}
    params.update({f"lm.{name}": p for name, p in lm.named_parameters() if p.requires_grad})
    return params


def train_condition(prompted: PromptedLM, train: Segments, validation: Segments, settings: GenerationSettings, use_brain: bool,
                    condition: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Train the decoder (and the active LoRA adapter) on ``train``; best weights by validation loss, and the curves."""
    params = _trainable(prompted.decoder, prompted.lm)
    optimizer = torch.optim.AdamW(list(params.values()), lr=settings.lr, weight_decay=settings.weight_decay)
    rng = np.random.default_rng([settings.seed, 1])  # both conditions see the same batches: they differ in the brain input alone
    torch.manual_seed(settings.seed)

    def brain_of(segments: Segments, index) -> torch.Tensor:
        brain = torch.as_tensor(segments.brain[index], dtype=torch.float32, device=prompted.device)
        return brain if use_brain else torch.zeros_like(brain)

    def mean_loss(segments: Segments) -> float:
        prompted.decoder.eval(), prompted.lm.eval()
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(segments), settings.batch_size):
                index = np.arange(start, min(start + settings.batch_size, len(segments)))
                total += float(prompted.continuation_loss([segments.prompt_ids[i] for i in index], brain_of(segments, index),
                                                          [segments.continuation_ids[i] for i in index]).sum())
        return total / len(segments)

    curves, best, best_state, waited = [], mean_loss(validation), None, 0
    best_state = {name: p.detach().clone() for name, p in params.items()}
    curves.append({"condition": condition, "epoch": 0, "train_loss": float("nan"), "validation_loss": best})
    for epoch in tqdm(range(1, settings.epochs + 1), desc=f"generation decoder ({condition})", unit="epoch"):
        prompted.decoder.train(), prompted.lm.train()
        order, total = rng.permutation(len(train)), 0.0
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            loss = prompted.continuation_loss([train.prompt_ids[i] for i in index], brain_of(train, index),
                                              [train.continuation_ids[i] for i in index]).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            optimizer.step()
            total += loss.item() * len(index)
        validation_loss = mean_loss(validation)
        curves.append({"condition": condition, "epoch": epoch, "train_loss": total / len(train), "validation_loss": validation_loss})
        log.info("%s epoch %d: train loss %.4f, validation loss %.4f", condition, epoch, total / len(train), validation_loss)
        if validation_loss < best - 1e-4:
            best, waited = validation_loss, 0
            best_state = {name: p.detach().clone() for name, p in params.items()}
        else:
            waited += 1
            if waited >= settings.patience:
                break
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(best_state[name])
    prompted.decoder.eval(), prompted.lm.eval()
    return {name: tensor.cpu().contiguous() for name, tensor in best_state.items()}, curves


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def condition_losses(prompted: PromptedLM, segments: Segments, brain: np.ndarray | None, batch_size: int) -> np.ndarray:
    """Per-segment continuation loss ``(n,)`` with ``brain`` windows (None: no brain vectors at all)."""
    out = []
    for start in range(0, len(segments), batch_size):
        index = np.arange(start, min(start + batch_size, len(segments)))
        brain_t = None if brain is None else torch.as_tensor(brain[index], dtype=torch.float32, device=prompted.device)
        out.append(prompted.continuation_loss([segments.prompt_ids[i] for i in index], brain_t,
                                              [segments.continuation_ids[i] for i in index]).cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def condition_texts(prompted: PromptedLM, segments: Segments, brain: np.ndarray | None, settings: GenerationSettings,
                    condition: str) -> dict[str, list[str]]:
    """Greedy and beam-search texts of every segment, as long (in tokens) as its heard continuation
    (segments of one continuation length generated together, ``batch_size`` at a time)."""
    texts = {decoding: [""] * len(segments) for decoding in DECODINGS}
    lengths = np.array([len(ids) for ids in segments.continuation_ids])
    batches = [group[start : start + settings.batch_size] for n_new in np.unique(lengths)
               for group in [np.flatnonzero(lengths == n_new)] for start in range(0, len(group), settings.batch_size)]
    for index in tqdm(batches, desc=f"generating ({condition})", unit="batch"):
        brain_t = None if brain is None else torch.as_tensor(brain[index], dtype=torch.float32, device=prompted.device)
        n_new = int(lengths[index[0]])
        for decoding, beams in (("greedy", 1), ("beam", settings.beam_width)):
            for i, text in zip(index, prompted.generate([segments.prompt_ids[i] for i in index], brain_t, n_new, settings, beams)):
                texts[decoding][i] = text
    return texts


def pairwise_accuracy(prompted: PromptedLM, segments: Segments, settings: GenerationSettings, true_loss: np.ndarray,
                      permutations: Sequence[np.ndarray], block: int) -> tuple[dict, np.ndarray]:
    """Pairwise accuracy with its block sign-flip p (one-sided, > 0.5) and the binomial p; per-segment wins ``(n,)``."""
    wins = np.zeros(len(segments))
    for order in permutations:
        permuted_loss = condition_losses(prompted, segments, segments.brain[order], settings.batch_size)
        wins += (true_loss < permuted_loss) + 0.5 * (true_loss == permuted_loss)  # a tie is half a win
    wins /= len(permutations)
    test = paired_segment_test(wins - 0.5, block, settings.n_flips, settings.seed)
    n_wins = int(round(wins.sum() * len(permutations)))
    binomial = stats.binomtest(n_wins, len(segments) * len(permutations), 0.5, alternative="greater").pvalue
    return {
        "pairwise_accuracy": float(wins.mean()), "chance": 0.5, "ci_low": test["ci_low"] + 0.5, "ci_high": test["ci_high"] + 0.5,
        "p": test["p"], "p_binomial_independent": float(binomial), "n_segments": len(segments),
        "n_permutations": len(permutations), "block_segments": block,
    }, wins


def block_segments(settings: GenerationSettings) -> int:
    """Consecutive segments per resampling block: ``block_trs`` TRs of segment starts."""
    return max(1, math.ceil(settings.block_trs / settings.stride_trs))


def compare_conditions(scores: pd.DataFrame, settings: GenerationSettings, block: int) -> pd.DataFrame:
    """``brain`` against each control, per decoding and metric: mean gain, block-jackknife t-interval, one-sided p
    (resampling blocks of ``block`` consecutive segments)."""
    rows = []
    for decoding in DECODINGS:
        own = scores[(scores["decoding"] == decoding)]
        brain = own[own["condition"] == "brain"].set_index("segment")
        for control in CONTROLS:
            other = own[own["condition"] == control].set_index("segment").loc[brain.index]
            for metric, better in METRICS.items():
                gain = (brain[metric] - other[metric]).to_numpy() if better == "higher" else (other[metric] - brain[metric]).to_numpy()
                test = paired_segment_test(gain, block, settings.n_flips, settings.seed)
                rows.append({"decoding": decoding, "control": control, "metric": metric, "better": better,
                             "brain": float(brain[metric].mean()), "control_value": float(other[metric].mean()), **test})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the run


def _apply_lora(lm, settings: GenerationSettings):
    from peft import LoraConfig, get_peft_model

    from .brainlora import lora_target_modules

    lora = settings.lora
    targets = list(lora["target_modules"]) if lora["target_modules"] else lora_target_modules(lm, bool(lora["mlp"]))
    config = LoraConfig(r=int(lora["rank"]), lora_alpha=int(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                        target_modules=targets, bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(settings.seed)
    peft_model = get_peft_model(lm, config, adapter_name="brain")
    torch.manual_seed(settings.seed)
    peft_model.add_adapter("text_only", config)
    return peft_model


def run_brain_prompt(
    brain_h5: str | os.PathLike,
    words_tsvs: Mapping[str, str | os.PathLike],
    *,
    llm_cfg: Mapping,
    subject: str,
    train_stories: Sequence[str],
    test_stories: Sequence[str],
    settings: GenerationSettings,
    out: Mapping[str, str | os.PathLike],
    lm: tuple | None = None,
    eeg_settings=None,
) -> dict:
    """Train, generate and score one subject; writes ``out``'s texts, comparisons, curves, decoders and scores (last).

    ``brain_h5``: the subject's preprocessed fMRI responses (TR-grid segments), or with ``eeg_settings``
    (``brainllm.eeg.EegSettings``) its preprocessed EEG (word-locked segments, :func:`eeg_story_segments`)."""
    split = story_split(train_stories, test_stories, settings.validation_story, "generation.brain_prompt")
    device = pick_device(settings.device, "generation.brain_prompt.device")
    model, tokenizer, info = lm if lm is not None else load_causal_lm(llm_cfg, device)
    separator = model_settings(dict(llm_cfg))["word_separator"]
    if eeg_settings is None:
        data = {name: story_segments(brain_h5, words_tsvs, stories, settings, tokenizer, separator) for name, stories in split.items()}
        spacing, provenance = fmri_spacing(settings), {"responses_sha256": sha256_file(brain_h5)}
    else:
        data = {name: eeg_story_segments(brain_h5, words_tsvs, stories, settings, eeg_settings, tokenizer, separator)
                for name, stories in split.items()}
        spacing = eeg_spacing(eeg_settings)
        provenance = {"eeg_sha256": sha256_file(brain_h5), "eeg_epochs": dict(eeg_settings.epochs), "eeg_segments": dict(eeg_settings.generation)}
    return score_brain_prompt(data, spacing, split, (model, tokenizer, info), device, llm_cfg=llm_cfg, subject=subject,
                              settings=settings, out=out, provenance=provenance)


def score_brain_prompt(data: dict[str, Segments], spacing: Spacing, split: Mapping[str, Sequence[str]], lm: tuple, device: torch.device, *,
                       llm_cfg: Mapping, subject: str, settings: GenerationSettings, out: Mapping[str, str | os.PathLike],
                       provenance: Mapping) -> dict:
    """Train the brain and text-only decoders on ``data['train']`` (early stopping on ``validation``), generate and
    score the test segments under every condition; writes ``out`` (scores last)."""
    model, tokenizer, info = lm
    for name, segments in data.items():
        check_context(segments, settings, info.max_positions, str(llm_cfg.get("source")))
        log.info("%s: %d segments from %s", name, len(segments), ", ".join(split[name]))
    test = data["test"]
    rng = np.random.default_rng([settings.seed, 3])
    permutations = [distant_permutation(test.start, test.story, spacing.min_gap, rng) for _ in range(max(settings.pairwise_permutations, 1))]
    if len(test) < 2 * spacing.block:
        raise InputError(None, f"{len(test)} test segments make fewer than two resampling blocks of {spacing.block} segments.",
                         "lower the block length (generation.brain_prompt.block_trs, eeg.block_words) or the stride, or add test stories.")
    reduction = reduce_brain(data, settings.brain_components)
    model.requires_grad_(False)
    if settings.lora["enabled"]:
        model = _apply_lora(model, settings)
    embed_dim = model.get_input_embeddings().weight.shape[1]

    def new_decoder() -> BrainPromptDecoder:
        torch.manual_seed(settings.seed)
        return BrainPromptDecoder(data["train"].brain.shape[1], settings.brain_tokens, embed_dim, int(settings.decoder["hidden"]),
                                  float(settings.decoder["dropout"]), embedding_rms(model)).to(device)

    prompted, states, curves = {}, {}, []
    for condition, use_brain in (("brain", True), ("text_only", False)):
        if settings.lora["enabled"]:
            model.set_adapter(condition)
        prompted[condition] = PromptedLM(model, tokenizer, new_decoder(), device)
        states[condition], condition_curves = train_condition(prompted[condition], data["train"], data["validation"], settings, use_brain, condition)
        curves += condition_curves

    zeros = np.zeros_like(test.brain)
    inputs = {"brain": ("brain", test.brain), "permuted_brain": ("brain", test.brain[permutations[0]]),
              "text_only": ("text_only", zeros), "llm": (None, None)}
    scorer = TextScorer()
    rows, losses = [], {}
    for condition, (trained, brain) in inputs.items():
        if settings.lora["enabled"]:
            model.set_adapter(trained or "brain")
        runner = prompted[trained] if trained else PromptedLM(model, tokenizer, None, device)
        if trained is None and settings.lora["enabled"]:
            with model.disable_adapter():
                losses[condition] = condition_losses(runner, test, None, settings.batch_size)
                texts = condition_texts(runner, test, None, settings, condition)
        else:
            losses[condition] = condition_losses(runner, test, brain, settings.batch_size)
            texts = condition_texts(runner, test, brain, settings, condition)
        for decoding in DECODINGS:
            for i in range(len(test)):
                rows.append({"segment": i, "story": test.story[i], f"start_{spacing.unit}": int(test.start[i]), "onset": test.onset_s[i],
                             "offset": test.offset_s[i], "condition": condition, "decoding": decoding, "prompt": test.prompt[i],
                             "reference": test.reference[i], "text": texts[decoding][i], "loss": float(losses[condition][i]),
                             **scorer.score(test.reference[i], texts[decoding][i])})
    scores = pd.DataFrame(rows)
    if settings.lora["enabled"]:
        model.set_adapter("brain")
    pairwise, _ = pairwise_accuracy(prompted["brain"], test, settings, losses["brain"], permutations, spacing.block)
    comparisons = compare_conditions(scores, settings, spacing.block)

    write_tsv(out["texts"], scores)
    write_tsv(out["comparisons"], comparisons)
    write_tsv(out["curves"], pd.DataFrame(curves))
    for condition, key in (("brain", "decoder"), ("text_only", "control")):
        with atomic_path(out[key]) as tmp:
            save_file(states[condition], str(tmp), metadata={"condition": condition, "subject": subject})
    unknown = tokenizer.unk_token_id
    summary = {
        "subject": subject, "llm": {"source": str(llm_cfg.get("source")), "model_id": info.model_id, "weights_sha256": info.weights_sha256},
        "split": split, "n_segments": {name: len(segments) for name, segments in data.items()},
        "reference_unknown_token_share": (float(np.mean([t == unknown for ids in test.continuation_ids for t in ids]))
                                          if unknown is not None else None),
        "means": {f"{condition}/{decoding}": {metric: float(group[metric].mean()) for metric in METRICS} | {"loss": float(group["loss"].mean())}
                  for (condition, decoding), group in scores.groupby(["condition", "decoding"])},
        "corpus_bleu1": {f"{condition}/{decoding}": scorer.corpus_bleu1(group["reference"], group["text"])
                         for (condition, decoding), group in scores.groupby(["condition", "decoding"])},
        "pairwise": pairwise, "brain_reduction": reduction, "meteor": scorer.meteor_note, "settings": settings.record(),
        "segments": {"unit": spacing.unit, "min_gap": spacing.min_gap, "block_segments": spacing.block}, "inputs": dict(provenance),
    }
    write_json(out["scores"], summary)
    log.info("pairwise accuracy %.3f (p = %.4f); beam BLEU-1 brain %.3f, permuted %.3f, text only %.3f, llm %.3f", pairwise["pairwise_accuracy"],
             pairwise["p"], *(summary["means"][f"{c}/beam"]["bleu1"] for c in CONDITIONS))
    return summary
