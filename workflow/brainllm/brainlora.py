"""BrainLLM: the contrastive loss of ``brainllm.contrastive`` with the LLM itself as text tower.

LoRA adapters (peft) on the attention projections (optionally the MLP too) of the LLM
are trained together with the brain encoder and a text projector. A segment's text is
the words heard during its TRs (a word belongs to the TR that holds its midpoint) after
the ``context_words`` words before them; its representation is the chosen layer's
hidden state averaged over the segment's tokens (the last context token when no word
was heard), layer-normalised, then projected. On CUDA the base can be loaded in 4-bit
(QLoRA); on CPU it stays in full precision.

The trained adapter is saved with ``save_pretrained(safe_serialization=True)`` and its
sha256. The tuned model enters the DAG as model ``<model>tuned<subject>``; its feature
store key uses ``brainllm.contrastive_settings.lora_recipe_sha256`` (the training recipe, known before training)
instead of the weights, and the extraction records the weights' sha256 in the entry.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from .align import tr_times
from .contrastive import (
    Checkpoint,
    ContrastiveModel,
    build_pair_data,
    finish_run,
    library_versions,
    pick_device,
    read_responses,
    segment_starts,
    train,
)
from .contrastive_settings import lora_recipe_sha256, lora_section, recipe_sha256, resolve_settings, story_split
from .io import InputError, open_h5, sha256_file, write_json
from .models import load_model, model_settings, text_tower

log = logging.getLogger(__name__)

__all__ = [
    "lora_target_modules",
    "segment_words",
    "tokenize_segment",
    "LoraTextTower",
    "apply_lora",
    "truncate_layers",
    "truncate_to_layer",
    "lora_pair_data",
    "train_lora",
    "save_adapter",
    "run_contrastive_lora",
]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_INFO = "adapter_info.json"

# Linear layers inside numbered transformer blocks (BERT `encoder.layer.3.`, Llama `layers.3.`,
# GPT-2 `h.3.`, T5 `block.3.`); attention ones carry "attn"/"attention" in their path.
_BLOCK = re.compile(r"(^|\.)(layer|layers|h|block|blocks)\.\d+\.")
_ATTENTION = ("attn", "attention")


# ----------------------------------------------------------------------------- model surgery


def _linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D  # GPT-2 style projections

    return (nn.Linear, Conv1D)


def lora_target_modules(model: nn.Module, include_mlp: bool) -> list[str]:
    """Full names of the projections inside the transformer blocks to adapt: attention, plus MLP if asked."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, _linear_types()) or not _BLOCK.search(name):
            continue
        if include_mlp or any(marker in name.lower() for marker in _ATTENTION):
            names.append(name)
    if not names:
        raise InputError(None, f"found no attention projections to adapt in {type(model).__name__}.", "list them in contrastive.lora.target_modules.")
    return names


def _block_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList] | None:
    """(parent, attribute, ModuleList) of the transformer blocks, or None when not found."""
    n_layers = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers and not isinstance(module[0], _linear_types()):
            parent_name, _, attribute = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attribute, module
    return None


def _hidden_state(backbone: nn.Module, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state ``(batch, tokens, hidden)`` of ``layer`` (0 = embeddings); encoder states for encoder–decoders."""
    if getattr(backbone.config, "is_encoder_decoder", False):
        backbone = backbone.get_encoder()
    outputs = backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return outputs.hidden_states[layer]


def truncate_layers(backbone: nn.Module, layer: int, probe_ids: torch.Tensor) -> int:
    """Drop the blocks after ``layer`` that do not change ``hidden_states[layer]``; returns the blocks kept.

    Saves their compute (training, reading one layer). Keeping ``layer`` blocks is tried first, then
    ``layer + 1`` (architectures that normalise the last hidden state, e.g. Llama, need
    one more); a cut is kept only if it reproduces the state on ``probe_ids`` ``(1, tokens)``
    exactly, else the model stays whole.
    """
    found = _block_list(backbone)
    if found is None or getattr(backbone.config, "is_encoder_decoder", False):
        return int(getattr(backbone.config, "num_hidden_layers", 0) or 0)
    parent, attribute, blocks = found
    mask = torch.ones_like(probe_ids)
    was_training = backbone.training
    backbone.eval()
    kept = len(blocks)
    with torch.no_grad():
        reference = _hidden_state(backbone, layer, probe_ids, mask)
        for n_blocks in (layer, layer + 1):
            if n_blocks >= len(blocks):
                break
            setattr(parent, attribute, blocks[:n_blocks])
            backbone.config.num_hidden_layers = n_blocks
            try:
                exact = torch.equal(_hidden_state(backbone, layer, probe_ids, mask), reference)
            except (IndexError, RuntimeError, ValueError):  # an architecture that cannot run cut
                exact = False
            if exact:
                kept = n_blocks
                break
    setattr(parent, attribute, blocks[:kept])
    backbone.config.num_hidden_layers = kept
    backbone.train(was_training)
    log.info("keeping %d of %d blocks (the later ones do not affect layer %d)", kept, len(blocks), layer)
    return kept


def truncate_to_layer(backbone: nn.Module, tokenizer, layer: int) -> int:
    """:func:`truncate_layers` checked on a short probe sentence; returns the blocks kept."""
    probe = tokenizer("the story begins here", return_tensors="pt")["input_ids"].to(backbone.get_input_embeddings().weight.device)
    return truncate_layers(backbone, layer, probe)


def apply_lora(model: nn.Module, settings: Mapping, seed: int) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (peft); only the adapters require gradients."""
    from peft import LoraConfig, get_peft_model

    lora = settings["lora"]
    targets = list(lora["target_modules"]) if lora["target_modules"] else lora_target_modules(model, bool(lora["mlp"]))
    torch.manual_seed(seed)
    config = LoraConfig(r=int(lora["rank"]), lora_alpha=int(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                        target_modules=targets, bias="none")
    peft_model = get_peft_model(model, config)
    n_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    log.info("LoRA rank %d on %d projections: %d trainable parameters", lora["rank"], len(targets), n_trainable)
    return peft_model


class LoraTextTower(nn.Module):
    """Token sequences → ``(batch, hidden)``: layer ``layer`` averaged over each sequence's pooled tokens.

    ``peft_model`` is the adapted model (saved with ``save_pretrained``); ``backbone`` its
    module that maps token ids to hidden states (no LM head). A sequence is
    ``{"input_ids": [...], "pool": [token positions]}``; batches are right-padded.
    """

    def __init__(self, peft_model: nn.Module, backbone: nn.Module, layer: int, pad_token_id: int):
        super().__init__()
        self.model = peft_model
        object.__setattr__(self, "backbone", backbone)  # shares peft_model's modules; not registered twice
        self.layer = layer
        self.pad_token_id = pad_token_id

    def forward(self, sequences: Sequence[Mapping]) -> torch.Tensor:
        device = self.backbone.get_input_embeddings().weight.device
        length = max(len(seq["input_ids"]) for seq in sequences)
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        pool_mask = torch.zeros((len(sequences), length))
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq["input_ids"])] = torch.as_tensor(seq["input_ids"])
            attention_mask[row, : len(seq["input_ids"])] = 1
            pool_mask[row, seq["pool"]] = 1.0
        hidden = _hidden_state(self.backbone, self.layer, input_ids.to(device), attention_mask.to(device)).float()
        pool_mask = pool_mask.to(hidden.device)
        pooled = (hidden * pool_mask[..., None]).sum(1) / pool_mask.sum(1, keepdim=True)
        return F.layer_norm(pooled, pooled.shape[-1:])


# ----------------------------------------------------------------------------- text segments


def read_words(path: str | os.PathLike) -> pd.DataFrame:
    """A story's ``words.tsv`` (word, onset, offset in scan seconds)."""
    words = pd.read_csv(path, sep="\t", keep_default_na=False, dtype={"word": str})
    missing = {"word", "onset", "offset"} - set(words.columns)
    if missing:
        raise InputError(path, f"missing columns {sorted(missing)}.", "re-run the ingest rule.")
    return words


def segment_words(
    words: pd.DataFrame, row_centres_s: np.ndarray, tr: float, starts: np.ndarray, segment_trs: int, context_words: int,
) -> list[tuple[list[str], list[str]]]:
    """``(context, segment)`` word lists of each segment start.

    Segment rows [s, s + segment_trs) span scan time [centre_s − TR/2, centre_{s+n−1} + TR/2);
    a word belongs to it when its midpoint does. Context: the ``context_words`` words before.
    """
    words = words.sort_values("onset", kind="stable")
    midpoints = ((words["onset"].to_numpy(float) + words["offset"].to_numpy(float)) / 2.0)
    tokens = words["word"].astype(str).tolist()
    out = []
    for start in starts:
        begin_s = row_centres_s[start] - tr / 2.0
        end_s = row_centres_s[start + segment_trs - 1] + tr / 2.0
        first = int(np.searchsorted(midpoints, begin_s, side="left"))
        stop = int(np.searchsorted(midpoints, end_s, side="left"))
        out.append((tokens[max(0, first - context_words) : first], tokens[first:stop]))
    return out


def tokenize_segment(tokenizer, context: Sequence[str], segment: Sequence[str], max_tokens: int, separator: str = " ") -> dict:
    """Token ids of ``context + segment`` (words joined by ``separator``) and the positions of the segment's tokens.

    Positions come from character offsets (fast tokenizers). Sequences longer than
    ``max_tokens`` lose their oldest context. Without segment words the last context
    token is pooled; an empty text becomes one special token.
    """
    context_text, segment_text = separator.join(context), separator.join(segment)
    text = f"{context_text}{separator}{segment_text}" if context and segment else context_text + segment_text
    segment_char_start = len(text) - len(segment_text)
    side, tokenizer.truncation_side = tokenizer.truncation_side, "left"  # keep the segment, cut old context
    try:
        encoded = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=max_tokens)
    finally:
        tokenizer.truncation_side = side
    ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    if not ids:
        fallback = next(t for t in (tokenizer.bos_token_id, tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None)
        return {"input_ids": [fallback], "pool": [0]}
    special = set(tokenizer.all_special_ids)
    content = [i for i, (begin, end) in enumerate(offsets) if end > begin and ids[i] not in special]
    pool = [i for i in content if offsets[i][1] > segment_char_start] if segment else []
    if not pool:
        pool = [content[-1]] if content else [0]
    return {"input_ids": ids, "pool": pool}


def _story_grid(path: str | os.PathLike, story: str) -> tuple[np.ndarray, float]:
    """Scan-time centres ``(n_trs,)`` of a story's kept rows and the TR, from the responses' attrs."""
    with open_h5(path) as h5:
        attrs = h5[story].attrs
        missing = [key for key in ("tr", "trim_start", "n_trs_raw") if key not in attrs]
        if missing:
            raise InputError(path, f"story {story!r} lacks attrs {missing}; the brain windows need the TR grid.", "re-run the preprocess rule.")
        tr, trim_start, n_trs_raw = float(attrs["tr"]), int(attrs["trim_start"]), int(attrs["n_trs_raw"])
        n_trs = h5[story]["data"].shape[0]
    return tr_times(n_trs_raw, tr)[trim_start : trim_start + n_trs], tr


def lora_pair_data(
    responses_h5: str | os.PathLike, words_tsvs: Mapping[str, str | os.PathLike], split: Mapping[str, Sequence[str]],
    settings: Mapping, tokenizer, separator: str = " ",
):
    """``{split: PairData}`` with one token sequence per segment (same starts as the brain windows); words joined by ``separator``."""
    lora = settings["lora"]
    out = {}
    for name, stories in split.items():
        responses = read_responses(responses_h5, stories)
        tokens = {}
        for story in stories:
            if story not in words_tsvs:
                raise InputError(None, f"no words.tsv given for story {story!r}.", "pass every split story's words.")
            centres_s, tr = _story_grid(responses_h5, story)
            starts = segment_starts(len(centres_s), int(settings["segment_trs"]), settings["stride_trs"], max(settings["delays"]))
            segments = segment_words(read_words(words_tsvs[story]), centres_s, tr, starts, int(settings["segment_trs"]), int(lora["context_words"]))
            tokens[story] = [tokenize_segment(tokenizer, context, words, int(lora["max_tokens"]), separator) for context, words in segments]
        out[name] = build_pair_data(responses, stories, settings, tokens=tokens, source=responses_h5)
        n_empty = sum(1 for story in stories for seq in tokens[story] if len(seq["pool"]) == 1)
        log.info("%s: %d pairs from %s (%d with at most one segment token)", name, out[name].n_pairs, ", ".join(stories), n_empty)
    return out


# ----------------------------------------------------------------------------- training


def build_lora_model(base_model: nn.Module, tokenizer, info, brain_dim: int, settings: Mapping, device: torch.device) -> ContrastiveModel:
    """Truncate (when exact), add LoRA adapters, and wrap into a :class:`ContrastiveModel`.

    ``info`` is the :class:`brainllm.models.ModelInfo` of ``base_model``.
    """
    lora, seed = settings["lora"], int(settings["seed"])
    layer = int(lora["layer"])
    n_layers = int(info.n_hidden_states) - 1
    if not 1 <= layer <= n_layers:
        raise InputError(None, f"contrastive.lora.layer {layer} is outside 1..{n_layers} (0 = embeddings are not adapted).", "choose a transformer layer.")
    backbone = text_tower(base_model, info.family)
    if lora["truncate_layers"]:
        truncate_to_layer(backbone, tokenizer, layer)
    if lora["gradient_checkpointing"]:
        base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = apply_lora(base_model, settings, seed)
    tower = LoraTextTower(peft_model, text_tower(peft_model, info.family), layer, int(info.pad_token_id))
    torch.manual_seed(seed)
    with device:  # towers are created on the device; the (possibly quantized) base stays where it was loaded
        return ContrastiveModel(brain_dim, int(info.hidden_size), settings, text_tower=tower)


def train_lora(
    base_model: nn.Module, tokenizer, info, data: Mapping, settings: Mapping, checkpoint: Checkpoint,
    step_callback: Callable[[int], None] | None = None,
):
    """Train adapters + towers on ``data["train"]``; returns ``(model, TrainResult)``."""
    device = data["train"].device
    model = build_lora_model(base_model, tokenizer, info, data["train"].brain_dim, settings, device)
    lora = settings["lora"]
    result = train(
        model, data, settings, checkpoint, epochs=int(lora["epochs"]), batch_size=int(lora["batch_size"]),
        lr=float(lora["lr"]), patience=int(lora["patience"]), step_callback=step_callback,
    )
    return model, result


def save_adapter(model: ContrastiveModel, adapter_dir: str | os.PathLike, recipe: str) -> str:
    """Save the LoRA adapter (safetensors) atomically file by file; returns the weights' sha256."""
    adapter_dir = Path(adapter_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    tmp = adapter_dir.parent / f".{adapter_dir.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        model.text_tower.model.save_pretrained(tmp, safe_serialization=True)
        weights_sha = sha256_file(tmp / ADAPTER_WEIGHTS)
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            os.replace(tmp / name, adapter_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(adapter_dir / ADAPTER_INFO, {"weights_sha256": weights_sha, "recipe_sha256": recipe, "layer": model.text_tower.layer})
    return weights_sha


def load_base_model(model_cfg: Mapping, settings: Mapping, device: torch.device):
    """``(model, tokenizer, info)`` of the base LLM for LoRA training: 4-bit only on CUDA, else full precision."""
    cfg = dict(model_cfg)
    if settings["lora"]["quantization"] == "4bit":
        if device.type == "cuda":
            cfg["quantization"] = "4bit"
        else:
            log.warning("contrastive.lora.quantization 4bit needs CUDA; training the full-precision base on CPU")
    if device.type == "cpu":
        cfg.update(quantization="none", dtype="float32", device="cpu")
    else:
        cfg["device"] = "cuda"
    model, tokenizer, info = load_model(cfg)
    if cfg.get("quantization", "none") != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(settings["lora"]["gradient_checkpointing"]))
    model.requires_grad_(False)
    return model, tokenizer, info


def run_contrastive_lora(
    responses_h5: str | os.PathLike,
    words_tsvs: Mapping[str, str | os.PathLike],
    *,
    model_cfg: Mapping,
    subject: str,
    model_name: str,
    dataset_cfg: Mapping,
    contrastive_cfg: Mapping | None,
    adapter_dir: str | os.PathLike,
    towers_safetensors: str | os.PathLike,
    curves_tsv: str | os.PathLike,
    config_json: str | os.PathLike,
    retrieval_json: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    base_model: tuple | None = None,
    step_callback: Callable[[int], None] | None = None,
) -> dict:
    """LoRA mode for one (subject, model): train, save the adapter, score the test stories.

    ``base_model`` ``(model, tokenizer, info)`` as from :func:`brainllm.models.load_model`
    skips loading ``model_cfg``.
    ``towers_safetensors`` holds the best brain encoder, projector and logit scale
    (adapter weights in ``adapter_dir``); ``retrieval_json`` is written last.
    """
    settings = resolve_settings(contrastive_cfg)
    split = story_split(dataset_cfg["train_stories"], dataset_cfg["test_stories"], settings["validation_story"])
    log.info("split: train %s | validation %s | test %s", split["train"], split["validation"], split["test"])
    device = pick_device(settings["device"])
    model, tokenizer, info = base_model if base_model is not None else load_base_model(model_cfg, settings, device)
    separator = model_settings(model_cfg)["word_separator"]
    data = {name: pairs.to(device) for name, pairs in lora_pair_data(responses_h5, words_tsvs, split, settings, tokenizer, separator).items()}
    adapter_recipe = lora_recipe_sha256(model_cfg, contrastive_cfg, subject, dataset_cfg)
    used_stories = [story for stories in split.values() for story in stories]
    recipe = {
        "mode": "lora", "adapter_recipe": adapter_recipe, "responses_sha256": sha256_file(responses_h5),
        "words_sha256": {story: sha256_file(words_tsvs[story]) for story in used_stories},
    }
    recipe_hash = recipe_sha256(recipe)
    tuned, result = train_lora(model, tokenizer, info, data, settings, Checkpoint(checkpoint_dir, recipe_hash), step_callback)
    layer = int(settings["lora"]["layer"])
    header = {"subject": subject, "model": model_name, "layer": layer, "mode": "lora"}
    shared_settings = lora_section(settings)
    config_record = {
        **header, "recipe_sha256": recipe_hash, "adapter_recipe_sha256": adapter_recipe, "settings": shared_settings,
        "split": split, "pairs": {name: pairs.n_pairs for name, pairs in data.items()}, "brain_dim": data["train"].brain_dim,
        "base_model": {key: value for key, value in model_cfg.items()}, "device": str(device),
        "inputs": {"responses": os.fspath(responses_h5), **recipe}, "resumed_from_epoch": result.resumed_from_epoch,
        "versions": library_versions(),
    }
    towers = {name: tensor for name, tensor in result.best_weights.items() if not name.startswith("text_tower.")}
    summary = finish_run(
        tuned, data, settings, result, batch_size=int(settings["lora"]["batch_size"]), header=header,
        config_record=config_record, curves_tsv=curves_tsv, config_json=config_json,
        weights_safetensors=towers_safetensors, weights=towers,
    )
    summary["adapter_sha256"] = save_adapter(tuned, adapter_dir, adapter_recipe)
    write_json(retrieval_json, summary)
    return summary


def load_lora_model(config_json: str | os.PathLike, towers_safetensors: str | os.PathLike, adapter_dir: str | os.PathLike,
                    device: torch.device | None = None) -> tuple[ContrastiveModel, dict, object]:
    """A trained LoRA run (rule ``contrastive_lora``) in eval mode, its config.json record and the tokenizer.

    The base model is loaded from the record's settings, adapted as in training, and given the
    saved adapter and towers; every saved tensor must fit the rebuilt model.
    """
    import json

    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        record = json.loads(Path(config_json).read_text())
        brain_dim, mode, model_cfg = int(record["brain_dim"]), record["mode"], record["base_model"]
    except (OSError, ValueError, KeyError) as error:
        raise InputError(config_json, f"not a LoRA contrastive run's config.json ({error}).", "re-run the contrastive_lora rule.") from error
    if mode != "lora":
        raise InputError(config_json, f"mode {mode!r}: not a LoRA run.", "point to the lora/ folder of the contrastive_lora rule.")
    device = device or torch.device("cpu")
    record["settings"] = settings = resolve_settings(record["settings"])
    base, tokenizer, info = load_base_model(model_cfg, settings, device)
    model = build_lora_model(base, tokenizer, info, brain_dim, settings, device)
    adapter_path = Path(adapter_dir) / ADAPTER_WEIGHTS
    result = set_peft_model_state_dict(model.text_tower.model, load_file(str(adapter_path)))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise InputError(adapter_path, f"adapter tensors {unexpected[:5]} do not fit the rebuilt model.", "re-run the contrastive_lora rule.")
    towers = load_file(str(towers_safetensors))
    params = {name: p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("text_tower.")}
    if set(params) != set(towers):
        raise InputError(towers_safetensors, f"towers do not fit the model (missing {sorted(set(params) - set(towers))[:5]}, "
                         f"unexpected {sorted(set(towers) - set(params))[:5]}).", "re-run the contrastive_lora rule.")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(towers[name].to(p.device, p.dtype))
    if info.quantization == "none" and info.dtype == "float32":
        model.text_tower.model.merge_adapter()  # inference at the base model's cost; lossless in float32
    return model.eval(), record, tokenizer
