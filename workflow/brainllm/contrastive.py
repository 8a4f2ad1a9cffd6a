"""CLIP-style contrastive training between brain windows and text segments.

A pair is (text segment, brain window): the text of ``segment_trs`` consecutive TRs (in
the frozen-feature mode the aligned TR-level LLM features of those TRs, averaged) and the
responses of the TRs that follow it under the HRF delays (for delay d, the mean of the
responses at the segment's TRs shifted by d; delays concatenated into
``(n_delays · n_voxels,)`` or averaged into ``(n_voxels,)``). A brain encoder and a text
projector map both sides into a shared space; the loss is the symmetric InfoNCE of CLIP
with a learnable temperature, optionally with soft targets (SoftCLIP) and mixup of brain
inputs (BiMixCo). The LoRA mode (``brainllm.brainlora``) swaps the frozen features for
the LLM itself with trainable adapters; the loss, training loop, checkpoints and
evaluation here serve both.

Stories are split into train / validation / test: the test stories of the dataset are
held out, one training story (``validation_story``) selects the epoch (early stopping on
validation top-1 brain→text retrieval) and the rest train.

Word objective (``words.enabled``, frozen-feature mode): each training word heard inside a
pair is also paired with that pair's brain window, its text side the word's vocabulary
features (:func:`brainllm.word_decoding.vocabulary_features`, the features word
classification scores against), and ``words.weight`` × the InfoNCE of these word pairs
(the copies of one word in a batch are all its positives) joins the loss. The brain
embeddings are then centred (:class:`BatchCentring`), so that no word can gain from a fixed
brain direction, a prior that needs no brain, and the epoch is chosen by the validation
words' mean percentile rank among the whole vocabulary. ``voxel_fraction`` keeps the
voxels the encoding model predicts best on validation data (its ``r_val``) as brain inputs.

Checkpoints are safetensors + JSON only. A run writes its resumable state to
``checkpoint/`` after every epoch (weights, optimizer moments, best weights, curves) and
a rerun with the same recipe continues from there; random draws are seeded per epoch
from ``seed`` so a resumed run reproduces an uninterrupted one. A finished run's rule
removes ``checkpoint/`` (:func:`discard_checkpoint`) unless ``keep_checkpoints`` is set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from . import __version__
from .align import read_aligned
from .contrastive_settings import DEFAULTS, frozen_section, recipe_sha256, resolve_settings, story_split
from .inference import select_voxels
from .io import InputError, atomic_path, open_h5, sha256_file, write_json, write_tsv
from .metrics import retrieval_accuracy

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULTS",
    "resolve_settings",
    "story_split",
    "segment_starts",
    "window_rows",
    "PairData",
    "WordTargets",
    "build_pair_data",
    "select_voxels",
    "pair_words",
    "attach_words",
    "load_pairs",
    "Tower",
    "BatchCentring",
    "ContrastiveModel",
    "mixing_matrix",
    "contrastive_targets",
    "info_nce",
    "cosine_lr",
    "make_optimizer",
    "training_step",
    "train",
    "evaluate",
    "VocabularyInputs",
    "run_contrastive",
    "load_frozen_model",
]


def pick_device(name: str, setting: str = "contrastive.device") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``setting`` is the config key named in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(None, f"{setting} is cuda but no CUDA device is visible.", "use device: auto or cpu.")
    return torch.device(name)


# ----------------------------------------------------------------------------- splits and pairs


def segment_starts(n_trs: int, segment_trs: int, stride_trs: int | None, max_delay: int) -> np.ndarray:
    """First rows ``(n_pairs,)`` of segments whose delayed brain window lies inside the story.

    A segment covers rows [s, s + segment_trs); its latest brain row is s + segment_trs − 1 + max_delay.
    """
    stride = segment_trs if stride_trs is None else stride_trs
    last_start = n_trs - segment_trs - max_delay
    return np.arange(0, max(last_start + 1, 0), stride, dtype=np.int64)


def window_rows(starts: np.ndarray, segment_trs: int, delays: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of each pair: brain ``(n_pairs, n_delays, segment_trs)``, text ``(n_pairs, segment_trs)``."""
    text_rows = starts[:, None] + np.arange(segment_trs)[None, :]
    brain_rows = text_rows[:, None, :] + np.asarray(delays, dtype=np.int64)[None, :, None]
    return brain_rows, text_rows


@dataclass
class PairData:
    """The pairs of one split.

    ``responses`` ``(n_rows, n_voxels)`` are the split's stories' rows concatenated and
    ``brain_rows`` ``(n_pairs, n_delays, segment_trs)`` index them. In the frozen-feature
    mode ``text`` ``(n_rows, hidden)`` holds the aligned features and ``text_rows``
    ``(n_pairs, segment_trs)`` index them; in the LoRA mode ``tokens`` holds one token
    sequence per pair (``brainllm.brainlora``).
    """

    stories: list[str]
    pair_story: np.ndarray
    pair_start: np.ndarray
    responses: np.ndarray
    brain_rows: np.ndarray
    delay_mode: str
    text: np.ndarray | None = None
    text_rows: np.ndarray | None = None
    tokens: list | None = None
    words: "WordTargets | None" = None
    _device_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        n_text = len(self.text_rows) if self.text_rows is not None else len(self.tokens or [])
        if len(self.brain_rows) != n_text:
            raise InputError(
                None, f"{len(self.brain_rows)} brain windows but {n_text} text segments for stories {self.stories}.",
                "brain and text pairs must be built from the same TR grid; re-run the align rule.",
            )

    @property
    def n_pairs(self) -> int:
        return len(self.brain_rows)

    @property
    def device(self) -> torch.device:
        """Device of the tensors made by :meth:`to`."""
        return self._device_cache["responses"].device

    @property
    def brain_dim(self) -> int:
        n_voxels = self.responses.shape[1]
        return n_voxels * self.brain_rows.shape[1] if self.delay_mode == "concat" else n_voxels

    def to(self, device: torch.device) -> "PairData":
        """Keep the arrays as tensors on ``device`` for batching."""
        self._device_cache = {
            "responses": torch.as_tensor(self.responses, dtype=torch.float32, device=device),
            "brain_rows": torch.as_tensor(self.brain_rows, device=device),
        }
        if self.text is not None:
            self._device_cache["text"] = torch.as_tensor(self.text, dtype=torch.float32, device=device)
            self._device_cache["text_rows"] = torch.as_tensor(self.text_rows, device=device)
        if self.words is not None:
            self._device_cache["word_pair"] = torch.as_tensor(self.words.pair, device=device)
            self._device_cache["word_index"] = torch.as_tensor(self.words.vocabulary_index, device=device)
            self._device_cache["vocabulary_text"] = torch.as_tensor(self.words.vocabulary_text, dtype=torch.float32, device=device)
        return self

    def brain_batch(self, index: torch.Tensor) -> torch.Tensor:
        """Brain inputs ``(batch, brain_dim)``: per delay, the mean over the segment's shifted rows."""
        responses, rows = self._device_cache["responses"], self._device_cache["brain_rows"]
        windows = responses[rows[index]].mean(2)  # (batch, n_delays, n_voxels)
        return windows.flatten(1) if self.delay_mode == "concat" else windows.mean(1)

    def text_batch(self, index: torch.Tensor):
        """Text inputs: mean aligned features ``(batch, hidden)``, or the batch's token sequences."""
        if self.tokens is not None:
            return [self.tokens[i] for i in index.tolist()]
        return self._device_cache["text"][self._device_cache["text_rows"][index]].mean(1)

    def with_voxels(self, voxels: Sequence[int]) -> "PairData":
        """The same pairs on the columns ``voxels`` of the responses (call :meth:`to` before batching)."""
        return replace(self, responses=self.responses[:, np.asarray(voxels, dtype=np.int64)], _device_cache={})

    @property
    def n_words(self) -> int:
        return 0 if self.words is None else len(self.words.pair)

    def word_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Words ``index``: their pairs' brain inputs, their vocabulary features and vocabulary indices."""
        cache = self._device_cache
        vocabulary_index = cache["word_index"][index]
        return self.brain_batch(cache["word_pair"][index]), cache["vocabulary_text"][vocabulary_index], vocabulary_index

    def vocabulary_text(self) -> torch.Tensor:
        """Text features of every vocabulary word ``(n_vocab, hidden)``."""
        return self._device_cache["vocabulary_text"]


@dataclass
class WordTargets:
    """The words heard inside a split's pairs (word objective): each word's pair and vocabulary index,
    and the text features of the whole vocabulary ``(n_vocab, hidden)``."""

    pair: np.ndarray
    vocabulary_index: np.ndarray
    vocabulary_text: np.ndarray


def build_pair_data(
    responses: Mapping[str, np.ndarray],
    stories: Sequence[str],
    settings: Mapping,
    text: Mapping[str, np.ndarray] | None = None,
    tokens: Mapping[str, list] | None = None,
    source: str | os.PathLike | None = None,
) -> PairData:
    """Pairs of ``stories`` from ``{story: (n_trs, n_voxels)}`` responses and their text side.

    Text side: ``text[story]`` aligned features with as many rows as ``responses[story]``,
    or ``tokens[story]`` one token sequence per segment start (:func:`segment_starts`).
    ``source`` names the file(s) in errors.
    """
    segment_trs, delays = int(settings["segment_trs"]), list(settings["delays"])
    response_blocks, text_blocks, brain_rows, text_rows, pair_story, pair_start = [], [], [], [], [], []
    token_lists, offset = [], 0
    for story in stories:
        story_responses = np.asarray(responses[story], dtype=np.float32)
        n_trs = story_responses.shape[0]
        if text is not None and text[story].shape[0] != n_trs:
            raise InputError(
                source, f"story {story!r}: {text[story].shape[0]} feature rows but {n_trs} response rows, "
                "so brain and text pairs cannot be matched.",
                "features and responses must be trimmed alike; re-run the align rule on these responses.",
            )
        if not np.isfinite(story_responses).all():
            raise InputError(source, f"story {story!r}: the responses hold NaN or infinite values.", "re-run preprocessing.")
        starts = segment_starts(n_trs, segment_trs, settings["stride_trs"], max(delays))
        if len(starts) == 0:
            raise InputError(
                source, f"story {story!r} has {n_trs} TRs, too few for a {segment_trs}-TR segment delayed by {max(delays)} TRs.",
                "lower contrastive.segment_trs or delays, or drop the story.",
            )
        if tokens is not None:
            if len(tokens[story]) != len(starts):
                raise InputError(
                    source, f"story {story!r}: {len(starts)} brain windows but {len(tokens[story])} text segments.",
                    "build the token sequences from the same segment starts as the brain windows.",
                )
            token_lists += list(tokens[story])
        story_brain_rows, story_text_rows = window_rows(starts, segment_trs, delays)
        brain_rows.append(story_brain_rows + offset)
        text_rows.append(story_text_rows + offset)
        response_blocks.append(story_responses)
        if text is not None:
            text_blocks.append(np.asarray(text[story], dtype=np.float32))
        pair_story += [story] * len(starts)
        pair_start.append(starts)
        offset += n_trs
    widths = {block.shape[1] for block in response_blocks}
    if len(widths) != 1:
        raise InputError(source, f"stories {list(stories)} have different voxel counts {sorted(widths)}.", "use one mask for all runs.")
    data = PairData(
        stories=list(stories),
        pair_story=np.asarray(pair_story),
        pair_start=np.concatenate(pair_start),
        responses=np.concatenate(response_blocks),
        brain_rows=np.concatenate(brain_rows),
        delay_mode=settings["delay_mode"],
        text=np.concatenate(text_blocks) if text is not None else None,
        text_rows=np.concatenate(text_rows) if text is not None else None,
        tokens=token_lists if tokens is not None else None,
    )
    return data


def read_responses(path: str | os.PathLike, stories: Sequence[str], voxels: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """``{story: (n_trs, n_voxels)}`` from a preprocessed ``responses.h5`` (``voxels``: the columns kept, all by default), with clear errors."""
    out = {}
    with open_h5(path) as h5:
        for story in stories:
            if story not in h5 or "data" not in h5[story]:
                raise InputError(path, f"no responses for story {story!r} (found: {', '.join(sorted(h5)) or 'none'}).", "re-run the preprocess rule.")
            data = h5[story]["data"][()]
            out[story] = data if voxels is None else data[:, np.asarray(voxels, dtype=np.int64)]
    return out


def response_width(path: str | os.PathLike) -> int:
    """Voxels per TR of a preprocessed ``responses.h5``."""
    with open_h5(path) as h5:
        widths = {h5[story]["data"].shape[1] for story in h5 if "data" in h5[story]}
    if len(widths) != 1:
        raise InputError(path, f"the stories have voxel counts {sorted(widths)}.", "re-run the preprocess rule with one mask.")
    return widths.pop()


def pair_words(pairs: PairData, responses_h5: str | os.PathLike, words_tsvs: Mapping[str, str | os.PathLike],
               vocabulary: pd.DataFrame, source: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every word of the pairs' stories (their words.tsv) with ``story``, ``pair`` (the pair whose text TRs hold its
    midpoint, an index among ``pairs``; −1 for none) and ``vocabulary_index`` (−1 outside ``vocabulary``)."""
    from .io import read_words
    from .word_decoding import normalise_word, word_rows

    index = {word: i for i, word in enumerate(vocabulary["word"])}
    with open_h5(responses_h5) as h5:
        grids = {story: dict(h5[story].attrs) for story in pairs.stories}
    frames, offset = [], 0
    for story in pairs.stories:
        if story not in words_tsvs:
            raise InputError(source or responses_h5, f"no words.tsv given for story {story!r}.", "pass the words of every story of the split.")
        starts = pairs.pair_start[pairs.pair_story == story]
        frame = read_words(words_tsvs[story])
        pair = word_rows(frame, float(grids[story]["tr"]), int(grids[story]["trim_start"]), starts, pairs.brain_rows.shape[2])
        frames.append(frame.assign(story=story, pair=np.where(pair >= 0, pair + offset, -1),
                                   vocabulary_index=[index.get(normalise_word(word), -1) for word in frame["word"]]))
        offset += len(starts)
    return pd.concat(frames, ignore_index=True)


def attach_words(pairs: PairData, responses_h5: str | os.PathLike, words_tsvs: Mapping[str, str | os.PathLike],
                 vocabulary: pd.DataFrame, vocabulary_text: np.ndarray) -> PairData:
    """``pairs`` with :class:`WordTargets`: every word of its stories inside a pair and the vocabulary
    (:func:`pair_words`; ``vocabulary_text`` the vocabulary's features, one row per word)."""
    words = pair_words(pairs, responses_h5, words_tsvs, vocabulary)
    kept = words[(words["pair"] >= 0) & (words["vocabulary_index"] >= 0)]
    pairs.words = WordTargets(kept["pair"].to_numpy(np.int64), kept["vocabulary_index"].to_numpy(np.int64),
                              np.asarray(vocabulary_text, dtype=np.float32))
    if pairs.n_words < 2:
        raise InputError(words_tsvs[pairs.stories[0]], f"only {pairs.n_words} words of {pairs.stories} fall inside pairs and the vocabulary.",
                         "check the stories' words.tsv, or set contrastive.words.enabled: false.")
    return pairs


def load_pairs(features_h5, responses_h5, layer: int, split: Mapping[str, Sequence[str]], settings: Mapping,
               voxels: np.ndarray | None = None) -> dict[str, PairData]:
    """Frozen-feature pairs for each split from an alignment file and a responses file (``voxels``: the columns kept, all by default)."""
    source = f"{features_h5} + {responses_h5}"
    out = {}
    for name, stories in split.items():
        features = read_aligned(features_h5, stories, layer)
        responses = read_responses(responses_h5, stories, voxels)
        out[name] = build_pair_data(responses, stories, settings, text=features, source=source)
        log.info("%s: %d pairs from %s", name, out[name].n_pairs, ", ".join(stories))
    return out


# ----------------------------------------------------------------------------- towers


class ResidualBlock(nn.Module):
    """``h + Dropout(GELU(Linear(LayerNorm(h))))``."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.dropout(F.gelu(self.linear(self.norm(h))))


class Tower(nn.Module):
    """``(batch, in_dim)`` → ``(batch, out_dim)``: linear, or an MLP with residual blocks.

    MLP: Linear → LayerNorm → GELU → Dropout → ``n_blocks`` residual blocks → LayerNorm → Linear.
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear", hidden: int = 512, n_blocks: int = 1, dropout: float = 0.0):
        super().__init__()
        if kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        elif kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
                *[ResidualBlock(hidden, dropout) for _ in range(n_blocks)],
                nn.LayerNorm(hidden), nn.Linear(hidden, out_dim),
            )
        else:
            raise ValueError(f"unknown tower kind {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BatchCentring(nn.Module):
    """Subtracts the mean embedding: the batch's in training, while tracking it (momentum 0.1, as
    batch normalisation does), and the tracked mean in evaluation. The mean is saved with the weights."""

    def __init__(self, width: int, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.training and len(h) > 1:
            batch_mean = h.mean(0)
            with torch.no_grad():
                self.mean.lerp_(batch_mean.detach(), self.momentum)
            return h - batch_mean
        return h - self.mean


class ContrastiveModel(nn.Module):
    """Brain encoder + text tower + text projector into a shared space, and the CLIP logit scale.

    ``text_tower`` maps a batch of text inputs to ``(batch, text_dim)`` (identity for
    frozen features, the adapted LLM in the LoRA mode). The logit scale is stored as a
    log and clamped to [0, log(logit_scale_max)] after each optimizer step.
    ``centre_brain`` centres the brain encoder's outputs (:class:`BatchCentring`; the word objective).
    """

    def __init__(
        self, brain_dim: int, text_dim: int, settings: Mapping, text_tower: nn.Module | None = None, centre_brain: bool = False,
    ):
        super().__init__()
        shared = int(settings["shared_dim"])
        self.brain_encoder = Tower(brain_dim, shared, **settings["brain_encoder"])
        self.brain_centring = BatchCentring(shared) if centre_brain else None
        self.text_tower = text_tower if text_tower is not None else nn.Identity()
        self.text_projector = Tower(text_dim, shared, **settings["text_projector"])
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / settings["temperature_init"])))
        self.logit_scale_max = math.log(float(settings["logit_scale_max"]))

    def encode_brain(self, brain: torch.Tensor) -> torch.Tensor:
        """Unit-norm brain embeddings ``(batch, shared_dim)``."""
        embedding = self.brain_encoder(brain)
        if self.brain_centring is not None:
            embedding = self.brain_centring(embedding)
        return F.normalize(embedding, dim=-1)

    def text_features(self, text_inputs) -> torch.Tensor:
        """Text-tower output before projection ``(batch, text_dim)``."""
        return self.text_tower(text_inputs)

    def encode_text(self, text_features: torch.Tensor) -> torch.Tensor:
        """Unit-norm text embeddings ``(batch, shared_dim)`` from text-tower features."""
        return F.normalize(self.text_projector(text_features), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(0.0, self.logit_scale_max).exp()

    def scale_value(self) -> float:
        return float(self.scale().detach())

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(0.0, self.logit_scale_max)


# ----------------------------------------------------------------------------- loss


def mixing_matrix(mix_index: torch.Tensor, mix_lambda: torch.Tensor) -> torch.Tensor:
    """``(batch, batch)`` M with brain input i = Σ_j M[i, j] · x_j: M[i, i] = λ_i, M[i, perm_i] += 1 − λ_i."""
    batch = len(mix_index)
    matrix = torch.diag(mix_lambda)
    matrix[torch.arange(batch), mix_index] += 1.0 - mix_lambda
    return matrix


def contrastive_targets(
    text_features: torch.Tensor, soft_temperature: float | None = None, mixing: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target distributions ``(P, Q)``, each ``(batch, batch)`` with rows summing to 1.

    P[i] is brain i's target over the texts, Q[j] text j's target over the brains. Hard
    targets: T = I. Soft targets (SoftCLIP): T = softmax(cos(text_i, text_j) / soft_temperature)
    on the text-tower features (no gradient). With mixup matrix M: P = M·T and Q = T·Mᵀ
    with rows renormalised (brain i contains text k with weight M[i, k]).
    """
    batch = text_features.shape[0]
    if soft_temperature is None:
        targets = torch.eye(batch, dtype=text_features.dtype, device=text_features.device)
    else:
        unit = F.normalize(text_features.detach(), dim=-1)
        targets = torch.softmax(unit @ unit.T / soft_temperature, dim=-1)
    if mixing is None:
        return targets, targets
    brain_to_text = mixing @ targets
    text_to_brain = targets @ mixing.T
    return brain_to_text, text_to_brain / text_to_brain.sum(1, keepdim=True)


def word_targets(vocabulary_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of a batch of word pairs: every copy of a brain's word is a positive, equally weighted (both directions alike)."""
    same = (vocabulary_index[:, None] == vocabulary_index[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    return targets, targets


def info_nce(
    brain_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    targets: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of unit-norm embeddings ``(batch, d)``.

    logits = scale · brain_emb · text_embᵀ; loss = ½ [CE(rows, P) + CE(columns, Q)] with
    cross-entropy −Σ target · log_softmax; ``targets`` None = the identity (CLIP).
    """
    logits = logit_scale * brain_emb @ text_emb.T
    if targets is None:
        labels = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    brain_to_text, text_to_brain = targets
    loss_b2t = -(F.log_softmax(logits, dim=1) * brain_to_text).sum(1).mean()
    loss_t2b = -(F.log_softmax(logits.T, dim=1) * text_to_brain).sum(1).mean()
    return 0.5 * (loss_b2t + loss_t2b)


# ----------------------------------------------------------------------------- schedule and checkpoints


def cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warmup over ``warmup_steps`` then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _saved_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and the tracked means of :class:`BatchCentring` modules, by name."""
    tensors = {name: p for name, p in model.named_parameters() if p.requires_grad}
    tensors.update({f"{name}.mean": module.mean for name, module in model.named_modules() if isinstance(module, BatchCentring)})
    return tensors


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters (and centring means) by name, detached CPU copies (base LLM weights are not included)."""
    return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in _saved_tensors(model).items()}


def load_trainable_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    params = _saved_tensors(model)
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise InputError(path, f"checkpoint does not fit the model (missing {missing[:5]}, unexpected {extra[:5]}).", "delete the checkpoint directory.")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name].to(p.device, p.dtype))


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """AdamW state as flat tensors ``state.<param>.<name>`` + JSON-able param groups."""
    state_dict = optimizer.state_dict()
    tensors = {
        f"state.{index}.{name}": value.detach().to("cpu").contiguous()
        for index, param_state in state_dict["state"].items()
        for name, value in param_state.items()
    }
    groups = [{key: list(value) if isinstance(value, tuple) else value for key, value in group.items()} for group in state_dict["param_groups"]]
    return tensors, groups


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    groups = [{key: tuple(value) if key == "betas" else value for key, value in group.items()} for group in groups]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp))


class Checkpoint:
    """Resumable training state in a directory: ``state.json`` names the epoch's files.

    Files carry the epoch in their name and ``state.json`` is written last, so a kill at
    any moment leaves the previous epoch's state intact; stale files are removed after.
    """

    def __init__(self, directory: str | os.PathLike, recipe_sha256: str):
        self.dir = Path(directory)
        self.recipe = recipe_sha256

    def load(self) -> dict | None:
        """The saved state of this recipe, or None (then files of any other run are removed)."""
        state_path = self.dir / "state.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else None
        if state is not None and state.get("recipe_sha256") == self.recipe:
            return state
        if state is not None:
            log.warning("checkpoint %s was made with another recipe (settings or inputs changed); starting afresh", self.dir)
        for path in [*self.dir.glob("*.safetensors"), state_path]:
            path.unlink(missing_ok=True)
        return None

    def save(self, state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, best_weights: Mapping[str, torch.Tensor] | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        epoch = state["epoch"]
        files = {"model": f"epoch-{epoch:04d}.model.safetensors", "optimizer": f"epoch-{epoch:04d}.optimizer.safetensors"}
        _save_tensors(trainable_state(model), self.dir / files["model"])
        optimizer_tensors, groups = optimizer_to_files(optimizer)
        _save_tensors(optimizer_tensors, self.dir / files["optimizer"])
        if best_weights is not None:
            files["best"] = f"best-epoch-{state['best']['epoch']:04d}.safetensors"
            if not (self.dir / files["best"]).exists():
                _save_tensors(best_weights, self.dir / files["best"])
        write_json(self.dir / "state.json", {**state, "recipe_sha256": self.recipe, "files": files, "optimizer_groups": groups})
        keep = set(files.values()) | {"state.json"}
        for path in self.dir.glob("*.safetensors"):
            if path.name not in keep:
                path.unlink()

    def restore(self, state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor] | None:
        """Load the epoch's weights and optimizer into ``model``/``optimizer``; return the best weights."""
        files = state["files"]
        load_trainable_state(model, load_file(str(self.dir / files["model"])), self.dir / files["model"])
        optimizer_from_files(optimizer, load_file(str(self.dir / files["optimizer"])), state["optimizer_groups"])
        return load_file(str(self.dir / files["best"])) if "best" in files else None


def discard_checkpoint(directory: str | os.PathLike) -> None:
    """Remove a finished run's ``checkpoint/`` (its final weights are the rule's outputs)."""
    directory = Path(directory)
    if directory.is_dir():
        size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
        shutil.rmtree(directory)
        log.info("removed %s (%.1f MB; contrastive.keep_checkpoints: true keeps it)", directory, size / 1e6)


# ----------------------------------------------------------------------------- training


def _batches(n_items: int, batch_size: int, rng: np.random.Generator | None) -> list[torch.Tensor]:
    """Near-equal batches (sizes differ by at most one) of a permutation (or of the order when no ``rng``)."""
    order = torch.as_tensor(rng.permutation(n_items) if rng is not None else np.arange(n_items))
    n_batches = max(1, round(n_items / batch_size))
    return [chunk for chunk in torch.tensor_split(order, n_batches) if len(chunk) >= 2]


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


@torch.no_grad()
def embed(model: ContrastiveModel, data: PairData, batch_size: int, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit-norm ``(brain_emb, text_emb)`` ``(n, shared_dim)`` and text features of pairs ``index`` (all by default), eval mode."""
    was_training = model.training
    model.eval()
    device = model.logit_scale.device
    index = torch.arange(data.n_pairs) if index is None else index
    brain, text, features = [], [], []
    for chunk in torch.split(index, batch_size):
        brain.append(model.encode_brain(data.brain_batch(chunk.to(device))))
        text_features = model.text_features(data.text_batch(chunk.to(device)))
        features.append(text_features)
        text.append(model.encode_text(text_features))
    model.train(was_training)
    return torch.cat(brain), torch.cat(text), torch.cat(features)


def _soft_temperature(settings: Mapping) -> float | None:
    soft = settings["soft_targets"]
    return float(soft["temperature"]) if soft["enabled"] else None


def evaluate(
    model: ContrastiveModel, data: PairData, settings: Mapping, batch_size: int, seed: int,
    index: torch.Tensor | None = None, n_draws: int | None = None,
) -> dict:
    """Loss (in consecutive batches, no mixup) and retrieval in both directions among ``eval.n_candidates``.

    ``brain_to_text``: each brain window ranks the candidate texts; ``text_to_brain`` the reverse.
    """
    brain, text, features = embed(model, data, batch_size, index)
    losses, weights = [], []
    with torch.no_grad():
        for chunk in torch.split(torch.arange(len(brain)), batch_size):
            if len(chunk) < 2:
                continue
            targets = contrastive_targets(features[chunk], _soft_temperature(settings)) if settings["soft_targets"]["enabled"] else None
            losses.append(info_nce(brain[chunk], text[chunk], model.scale(), targets).item())
            weights.append(len(chunk))
    similarity = (brain @ text.T).cpu().numpy()  # (n_brain, n_text)
    n_candidates = min(int(settings["eval"]["n_candidates"]), len(similarity))
    scores = retrieval_accuracy(similarity, k=(1, 5), n_candidates=n_candidates, n_draws=n_draws or int(settings["eval"]["n_draws"]), seed=seed)
    return {
        "loss": float(np.average(losses, weights=weights)),
        "n_pairs": len(similarity),
        "n_candidates": scores["n_candidates"],
        "n_draws": scores["n_draws"],
        "brain_to_text": scores["row_to_column"],
        "text_to_brain": scores["column_to_row"],
        "chance": scores["chance"],
    }


@torch.no_grad()
def word_percentile(model: ContrastiveModel, data: PairData, batch_size: int) -> float:
    """Mean percentile rank of each word of ``data`` (:class:`WordTargets`) among the whole vocabulary, by the cosine of its pair's brain embedding."""
    from .word_decoding import percentile_of_true

    brain, _, _ = embed(model, data, batch_size)
    was_training = model.training
    model.eval()
    vocabulary = model.encode_text(data.vocabulary_text())
    model.train(was_training)
    similarity = (brain[torch.as_tensor(data.words.pair, device=brain.device)] @ vocabulary.T).cpu().numpy()
    return float(percentile_of_true(similarity, data.words.vocabulary_index).mean())


@dataclass
class TrainResult:
    curves: pd.DataFrame
    best_epoch: int
    best_weights: dict[str, torch.Tensor]
    stopped_early: bool
    resumed_from_epoch: int


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases, norms and the logit scale.

    Uses the fused kernel where torch has one for the parameters' device (CUDA, and CPU
    from torch 2.4): several times faster than the per-tensor loop on large brain encoders.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    devices = {p.device.type for p in decay + no_decay}
    torch_version = tuple(int(part) for part in torch.__version__.split(".")[:2])
    fused = devices == {"cuda"} or (devices <= {"cpu", "cuda"} and torch_version >= (2, 4))
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, fused=fused,
    )


def training_step(
    model: ContrastiveModel, optimizer: torch.optim.Optimizer, brain: torch.Tensor, text_inputs,
    soft_temperature: float | None = None, mixing: torch.Tensor | None = None,
    words: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None, word_weight: float = 1.0,
) -> float:
    """One AdamW step on a batch: brain inputs ``(batch, brain_dim)`` (mixed by ``mixing`` when given),
    text inputs for the text tower, and optionally word pairs (:meth:`PairData.word_batch`) whose
    InfoNCE (:func:`word_targets`) joins the loss with ``word_weight``; returns the loss."""
    if mixing is not None:
        brain = mixing @ brain
    text_features = model.text_features(text_inputs)
    targets = None
    if soft_temperature is not None or mixing is not None:
        targets = contrastive_targets(text_features, soft_temperature, mixing)
    loss = info_nce(model.encode_brain(brain), model.encode_text(text_features), model.scale(), targets)
    if words is not None:
        word_brain, word_text, vocabulary_index = words
        loss = loss + word_weight * info_nce(model.encode_brain(word_brain), model.encode_text(word_text), model.scale(),
                                             word_targets(vocabulary_index))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.clamp_logit_scale()
    return loss.item()


def train(
    model: ContrastiveModel,
    data: Mapping[str, PairData],
    settings: Mapping,
    checkpoint: Checkpoint,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    patience: int,
    step_callback: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train on ``data["train"]`` with early stopping on ``data["validation"]`` top-1 brain→text, or,
    when the splits carry words (:func:`attach_words`), on the validation words' mean percentile rank
    among the vocabulary (:func:`word_percentile`), the word objective then joining the loss.

    Each split is a PairData, or ``{subject: PairData}`` for a
    :class:`~brainllm.contrastive_shared.SharedEncoderModel` (every batch one subject's pairs,
    early stopping on the subjects' mean top-1).

    Each epoch reseeds torch (dropout) and draws its batch order and mixup from
    ``seed`` and the epoch number, so resuming from the last saved epoch replays exactly.
    ``step_callback(step)`` runs after every optimizer step (used to interrupt in tests).
    """
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(model, data, settings, checkpoint, epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                      step_callback=step_callback)
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def _subject_sources(model: nn.Module, split: PairData | Mapping[str, PairData]) -> list[tuple[str | None, nn.Module, PairData]]:
    """``(subject, model, pairs)`` of one split: a PairData as it is (subject None), or ``{subject: PairData}``
    through each subject's path of a :class:`~brainllm.contrastive_shared.SharedEncoderModel`."""
    if isinstance(split, PairData):
        return [(None, model, split)]
    return [(subject, model.for_subject(subject), pairs) for subject, pairs in split.items()]


def _epoch_batches(sources: Sequence[tuple], batch_size: int, rng: np.random.Generator | None) -> list[tuple[int, torch.Tensor]]:
    """``(source, pair indices)`` of an epoch: every batch holds one source's pairs; several sources' batches
    are interleaved in a random order (a single source's draws are those of :func:`_batches`)."""
    batches = [(k, index) for k, (_, _, pairs) in enumerate(sources) for index in _batches(pairs.n_pairs, batch_size, rng)]
    if len(sources) > 1 and rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _mean_scores(scores: Sequence[Mapping]) -> dict:
    """Evaluation dicts of several subjects averaged key by key."""
    return {key: _mean_scores([s[key] for s in scores]) if isinstance(value, Mapping) else float(np.mean([s[key] for s in scores]))
            for key, value in scores[0].items()}


def _evaluate_sources(sources, settings, batch_size, seed, indices=None, n_draws=None) -> tuple[dict, dict]:
    """The mean evaluation over the sources (the one source's own when single) and each subject's."""
    per_subject = {subject: evaluate(model, pairs, settings, batch_size, seed, index=None if indices is None else indices[k], n_draws=n_draws)
                   for k, (subject, model, pairs) in enumerate(sources)}
    scores = list(per_subject.values())
    return (scores[0] if len(scores) == 1 else _mean_scores(scores)), per_subject


def _train(model, data, settings, checkpoint, *, epochs, batch_size, lr, patience, step_callback) -> TrainResult:
    seed = int(settings["seed"])
    train_sources, validation_sources = _subject_sources(model, data["train"]), _subject_sources(model, data["validation"])
    device = model.logit_scale.device
    word_pairs = data["train"] if isinstance(data["train"], PairData) and data["train"].words is not None else None
    word_weight = float(settings["words"]["weight"]) if word_pairs is not None else 0.0
    criterion = "validation word percentile" if word_pairs is not None else "validation top-1 brain→text"
    steps_per_epoch = len(_epoch_batches(train_sources, batch_size, None))
    total_steps = epochs * steps_per_epoch
    warmup_steps = max(1, round(float(settings["warmup_fraction"]) * total_steps))
    optimizer = make_optimizer(model, lr, float(settings["weight_decay"]))
    soft_temperature = _soft_temperature(settings)
    mixup = settings["mixup"]
    mixup_epochs = math.ceil(float(mixup["epochs_fraction"]) * epochs) if mixup["enabled"] else 0
    train_eval_indices = [
        torch.randperm(pairs.n_pairs, generator=torch.Generator().manual_seed(seed))[:min(int(settings["eval"]["n_train_pairs"]), pairs.n_pairs)].sort().values
        for _, _, pairs in train_sources
    ]

    state = checkpoint.load()
    best_weights = None
    if state is None:
        state = {"epoch": 0, "step": 0, "best": {"epoch": 0, "score": -1.0, "loss": math.inf}, "since_best": 0, "curves": [], "stopped_early": False}
        resumed_from = 0
    else:
        best_weights = checkpoint.restore(state, model, optimizer)
        resumed_from = state["epoch"]
        log.info("resuming from %s after epoch %d (step %d)", checkpoint.dir, state["epoch"], state["step"])

    progress = tqdm(range(state["epoch"], epochs), desc="contrastive", unit="epoch", initial=state["epoch"], total=epochs)
    for epoch in progress:
        if state["stopped_early"]:
            break
        torch.manual_seed(_epoch_seed(seed, epoch))
        rng = np.random.default_rng(_epoch_seed(seed, epoch))
        model.train()
        epoch_losses = []
        batches = _epoch_batches(train_sources, batch_size, rng)
        word_batches = torch.tensor_split(torch.as_tensor(rng.permutation(word_pairs.n_words)), len(batches)) if word_pairs is not None else None
        for number, (source, index) in enumerate(batches):
            _, source_model, pairs = train_sources[source]
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(state["step"], total_steps, warmup_steps, lr)
            mixing = None
            if epoch < mixup_epochs:
                mix_lambda = torch.as_tensor(rng.beta(mixup["beta"], mixup["beta"], len(index)), dtype=torch.float32, device=device)
                mix_index = torch.as_tensor(rng.permutation(len(index)), device=device)
                mixing = mixing_matrix(mix_index, mix_lambda)
            words = word_pairs.word_batch(word_batches[number].to(device)) if word_batches is not None and len(word_batches[number]) > 1 else None
            loss = training_step(
                source_model, optimizer, pairs.brain_batch(index.to(device)), pairs.text_batch(index.to(device)), soft_temperature, mixing,
                words, word_weight,
            )
            state["step"] += 1
            epoch_losses.append(loss)
            if step_callback is not None:
                step_callback(state["step"])
        validation, validation_by_subject = _evaluate_sources(validation_sources, settings, batch_size, seed)
        train_scores, _ = _evaluate_sources(train_sources, settings, batch_size, seed, indices=train_eval_indices, n_draws=5)
        row = {
            "epoch": epoch + 1, "step": state["step"], "lr": optimizer.param_groups[0]["lr"],
            "logit_scale": model.scale_value(), "mixup": epoch < mixup_epochs,
            "train_loss": float(np.mean(epoch_losses)), "validation_loss": validation["loss"],
            "train_top1_brain_to_text": train_scores["brain_to_text"]["top1"],
            "validation_top1_brain_to_text": validation["brain_to_text"]["top1"],
            "validation_top1_text_to_brain": validation["text_to_brain"]["top1"],
            "validation_top5_brain_to_text": validation["brain_to_text"]["top5"],
            "validation_top5_text_to_brain": validation["text_to_brain"]["top5"],
            "validation_chance_top1": validation["chance"]["top1"],
        }
        if word_pairs is not None:
            row["validation_word_percentile"] = word_percentile(model, data["validation"], batch_size)
        if len(validation_sources) > 1:  # several subjects: early stopping reads their mean; each subject's beside it
            row.update({f"validation_top1_brain_to_text_sub-{subject}": scores["brain_to_text"]["top1"]
                        for subject, scores in validation_by_subject.items()})
        state["curves"].append(row)
        state["epoch"] = epoch + 1
        score = row["validation_word_percentile"] if word_pairs is not None else validation["brain_to_text"]["top1"]
        best = state["best"]
        if score > best["score"] or (score == best["score"] and validation["loss"] < best["loss"]):
            state["best"] = {"epoch": epoch + 1, "score": score, "loss": validation["loss"]}
            state["since_best"] = 0
            best_weights = trainable_state(model)
        else:
            state["since_best"] += 1
        state["stopped_early"] = state["since_best"] >= patience
        log.info(
            "epoch %d: train loss %.4f, validation loss %.4f, validation top-1 brain→text %.3f (chance %.3f)%s, scale %.1f",
            epoch + 1, row["train_loss"], row["validation_loss"], row["validation_top1_brain_to_text"], row["validation_chance_top1"],
            f", validation word percentile {row['validation_word_percentile']:.3f}" if word_pairs is not None else "", row["logit_scale"],
        )
        checkpoint.save(state, model, optimizer, best_weights)
        if state["stopped_early"]:
            log.info("early stop: no %s improvement for %d epochs (best epoch %d)", criterion, patience, state["best"]["epoch"])
            break
    progress.close()
    return TrainResult(
        curves=pd.DataFrame(state["curves"]),
        best_epoch=state["best"]["epoch"],
        best_weights=best_weights if best_weights is not None else trainable_state(model),
        stopped_early=state["stopped_early"],
        resumed_from_epoch=resumed_from,
    )



# ----------------------------------------------------------------------------- stage


def library_versions() -> dict[str, str]:
    import transformers

    return {"brainllm": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def retrieval_summary(scores: Mapping) -> dict:
    """Test retrieval with the top-1 accuracy also as a multiple of chance."""
    chance = scores["chance"]["top1"]
    return {
        **scores,
        "top1_over_chance": {
            "brain_to_text": scores["brain_to_text"]["top1"] / chance,
            "text_to_brain": scores["text_to_brain"]["top1"] / chance,
        },
    }


def finish_run(
    model: ContrastiveModel, data: Mapping[str, PairData], settings: Mapping, result: TrainResult, *,
    batch_size: int, header: Mapping, config_record: Mapping,
    curves_tsv, config_json, weights_safetensors, weights: Mapping[str, torch.Tensor] | None = None,
) -> dict:
    """Load the best epoch into ``model``, score the test stories, write curves, config and weights.

    ``weights`` (default: all best trainable weights) go to ``weights_safetensors``.
    Returns the retrieval summary, which the caller writes last.
    """
    load_trainable_state(model, result.best_weights, weights_safetensors)
    seed = int(settings["seed"])
    test = evaluate(model, data["test"], settings, batch_size, seed)
    validation = evaluate(model, data["validation"], settings, batch_size, seed)
    summary = {
        **header,
        "test_stories": data["test"].stories,
        **retrieval_summary(test),
        "validation": validation,
        "best_epoch": result.best_epoch,
        "epochs_run": int(result.curves["epoch"].max()) if len(result.curves) else 0,
        "stopped_early": result.stopped_early,
        "temperature": 1.0 / model.scale_value(),
    }
    write_tsv(curves_tsv, result.curves)
    write_json(config_json, config_record)
    metadata = {"recipe_sha256": config_record["recipe_sha256"], "best_epoch": str(result.best_epoch), "format": "brainllm-contrastive"}
    with atomic_path(weights_safetensors) as tmp:
        save_file(dict(weights if weights is not None else result.best_weights), str(tmp), metadata=metadata)
    log.info(
        "test %s: top-1 brain→text %.3f, text→brain %.3f among %d (chance %.3f); top-5 %.3f / %.3f",
        ", ".join(data["test"].stories), test["brain_to_text"]["top1"], test["text_to_brain"]["top1"],
        test["n_candidates"], test["chance"]["top1"], test["brain_to_text"]["top5"], test["text_to_brain"]["top5"],
    )
    return summary


@dataclass(frozen=True)
class VocabularyInputs:
    """What the word objective reads: the stories' words, the vocabulary, its store entry, and the
    training stories' entries with the embedding (``decoding.words.embedding``) that maps it."""

    words_tsvs: Mapping[str, str | os.PathLike]
    vocabulary_tsv: str | os.PathLike
    vocabulary_manifest: str | os.PathLike
    train_entries: Mapping[str, str | os.PathLike]
    embedding: str = "mapped"

    def sha256(self) -> dict:
        return {"vocabulary": sha256_file(self.vocabulary_tsv), "vocabulary_manifest": sha256_file(self.vocabulary_manifest),
                "embedding": self.embedding, "words": {story: sha256_file(path) for story, path in sorted(self.words_tsvs.items())}}


def run_contrastive(
    features_h5: str | os.PathLike,
    responses_h5: str | os.PathLike,
    *,
    subject: str,
    model_name: str,
    layer: int,
    train_stories: Sequence[str],
    test_stories: Sequence[str],
    contrastive_cfg: Mapping | None,
    curves_tsv: str | os.PathLike,
    config_json: str | os.PathLike,
    weights_safetensors: str | os.PathLike,
    retrieval_json: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    scores_tsv: str | os.PathLike | None = None,
    vocabulary: VocabularyInputs | None = None,
    step_callback: Callable[[int], None] | None = None,
) -> dict:
    """Frozen-feature mode for one (subject, model, layer): train, early-stop, score the test stories.

    ``scores_tsv`` (the encoding model's scores at ``layer``) is read with ``voxel_fraction``,
    ``vocabulary`` with ``words.enabled``. Resumes from ``checkpoint_dir`` when it holds a state
    of the same recipe. ``retrieval_json`` is written last. Returns the retrieval summary.
    """
    settings = resolve_settings(contrastive_cfg)
    split = story_split(train_stories, test_stories, settings["validation_story"])
    log.info("split: train %s | validation %s | test %s", split["train"], split["validation"], split["test"])
    device = pick_device(settings["device"])
    voxels = None
    if settings["voxel_fraction"] is not None:
        if scores_tsv is None:
            raise InputError(None, "contrastive.voxel_fraction is set, but no encoding scores were given to choose the voxels.",
                             "pass the encoding model's scores.tsv at this layer, or set voxel_fraction: null.")
        voxels = select_voxels(scores_tsv, float(settings["voxel_fraction"]), response_width(responses_h5))
        log.info("%d voxels: the top %.0f %% by the encoding model's validation r at layer %d", len(voxels), 100 * settings["voxel_fraction"], layer)
    data = load_pairs(features_h5, responses_h5, layer, split, settings, voxels)
    if settings["words"]["enabled"]:
        if vocabulary is None:
            raise InputError(None, "contrastive.words.enabled needs the vocabulary and the stories' words; none were given.",
                             "add the decoding.words section, or set contrastive.words.enabled: false.")
        from .word_decoding import read_vocabulary, vocabulary_features

        table = read_vocabulary(vocabulary.vocabulary_tsv)
        text = vocabulary_features(vocabulary.vocabulary_manifest, vocabulary.vocabulary_tsv, layer, vocabulary.embedding, vocabulary.train_entries)
        for name in ("train", "validation"):
            attach_words(data[name], responses_h5, vocabulary.words_tsvs, table, text)
        log.info("word objective (weight %g): %d training and %d validation words among %d vocabulary words", settings["words"]["weight"],
                 data["train"].n_words, data["validation"].n_words, len(table))
    data = {name: pairs.to(device) for name, pairs in data.items()}
    shared_settings = {key: value for key, value in frozen_section(settings).items() if key != "layers"}
    recipe = {
        "mode": "frozen", "settings": shared_settings, "subject": subject, "model": model_name, "layer": layer, "split": split,
        "features_sha256": sha256_file(features_h5), "responses_sha256": sha256_file(responses_h5),
        "voxels": None if voxels is None else voxels.tolist(),
        "vocabulary": vocabulary.sha256() if settings["words"]["enabled"] else None,
    }
    recipe_hash = recipe_sha256(recipe)
    torch.manual_seed(int(settings["seed"]))
    text_dim = data["train"].text.shape[1]
    model = ContrastiveModel(data["train"].brain_dim, text_dim, settings, centre_brain=settings["words"]["enabled"]).to(device)
    log.info("brain %d → %d ← text %d on %s; %d trainable parameters", data["train"].brain_dim, settings["shared_dim"], text_dim,
             device, sum(p.numel() for p in model.parameters()))
    result = train(
        model, data, settings, Checkpoint(checkpoint_dir, recipe_hash), epochs=int(settings["epochs"]),
        batch_size=int(settings["batch_size"]), lr=float(settings["lr"]), patience=int(settings["patience"]),
        step_callback=step_callback,
    )
    header = {"subject": subject, "model": model_name, "layer": layer, "mode": "frozen"}
    config_record = {
        **header, "recipe_sha256": recipe_hash, "settings": shared_settings, "split": split,
        "pairs": {name: pairs.n_pairs for name, pairs in data.items()},
        "words": {name: pairs.n_words for name, pairs in data.items() if pairs.words is not None},
        "voxels": recipe["voxels"],
        "voxel_selection": None if voxels is None else f"top {settings['voxel_fraction']} of voxels by the encoding model's validation r at layer {layer}",
        "brain_dim": data["train"].brain_dim, "text_dim": text_dim, "device": str(device),
        "inputs": {"features": os.fspath(features_h5), "features_sha256": recipe["features_sha256"],
                   "responses": os.fspath(responses_h5), "responses_sha256": recipe["responses_sha256"]},
        "resumed_from_epoch": result.resumed_from_epoch, "versions": library_versions(),
    }
    summary = finish_run(
        model, data, settings, result, batch_size=int(settings["batch_size"]), header=header, config_record=config_record,
        curves_tsv=curves_tsv, config_json=config_json, weights_safetensors=weights_safetensors,
    )
    write_json(retrieval_json, summary)
    return summary


def load_frozen_model(config_json: str | os.PathLike, weights_safetensors: str | os.PathLike, device: torch.device | None = None) -> tuple[ContrastiveModel, dict]:
    """A trained frozen-feature model (rule ``contrastive``) in eval mode, and its config.json record (settings with defaults filled in)."""
    try:
        record = json.loads(Path(config_json).read_text())
        brain_dim, text_dim, mode = int(record["brain_dim"]), int(record["text_dim"]), record["mode"]
    except (OSError, ValueError, KeyError) as error:
        raise InputError(config_json, f"not a contrastive run's config.json ({error}).", "re-run the contrastive rule.") from error
    if mode != "frozen":
        raise InputError(config_json, f"mode {mode!r}: only frozen-feature runs are loaded here.", "point to a layer-NN run of the contrastive rule.")
    record["settings"] = resolve_settings(record["settings"])
    model = ContrastiveModel(brain_dim, text_dim, record["settings"], centre_brain=record["settings"]["words"]["enabled"])
    load_trainable_state(model, load_file(str(weights_safetensors)), weights_safetensors)
    return model.to(device or torch.device("cpu")).eval(), record
