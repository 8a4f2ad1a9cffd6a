"""Every layer of a vision tower for image stimuli, cached in the feature store.

A model entry (``source``, ``dtype``, ``device``, ``trust_remote_code``, ``revision``,
``batch_size``, as for text models; see ``brainllm.models``) names an image model:

* CLIP (``CLIPModel`` or ``CLIPVisionModelWithProjection`` checkpoints): only the vision
  tower and ``visual_projection`` are loaded (``CLIPVisionModelWithProjection``); the
  embedding is ``get_image_features`` (the projected class token).
* SigLIP (``SiglipModel``): only ``SiglipVisionModel`` is loaded; the embedding is
  ``get_image_features`` (the attention-pooling head's output). SigLIP has no class token.
* LLaVA (``LlavaForConditionalGeneration``): only the vision tower and the multi-modal
  projector are built and their tensors read from the safetensors files (the language
  model is never in memory); the embedding is the projector's output for the layer and
  tokens LLaVA feeds the language model (``vision_feature_layer``,
  ``vision_feature_select_strategy``), averaged over tokens: a point in the LM's input space.
* Qwen2-VL / Qwen2.5-VL: only the vision tower (with its patch merger) is built and read
  from the safetensors; it takes the processor's flattened patches and ``image_grid_thw``,
  every image's tokens are split back out of the one sequence, and the embedding is the
  merger's output (the LM's input space) averaged over tokens. No class token.
* Other models whose config has a ``vision_config`` (InternVL, PaliGemma, …): the whole
  model is loaded (``AutoModelForImageTextToText``, then ``AutoModel``; remote code only
  with ``trust_remote_code: true``) and its ``vision_tower``/``vision_model``/``visual`` is
  called with ``pixel_values``; the embedding is the model's own ``get_image_features``
  (its projector, pixel shuffle included) averaged over tokens when the config names a
  ``vision_feature_layer``, else none.

Features: ``hidden_states`` of every layer (index 0 = the embeddings output as
transformers returns it), pooled per image as the mean over all tokens (``mean``) or the
first token (``cls``, only for towers with a class token). Embeddings are stored raw (not
L2-normalised); the entry's ``embedding_space`` attribute says what they are.

Store layout: ``<store>/images/<model-slug>/<settings-hash>/images-<images-hash>.h5``;
the settings hash covers the model identity (weights sha256 for local/package models,
id and revision for hub models), dtype, store dtype, pooling and the resize size; the
images hash is the sha256 of the ordered list of the images' content hashes (file names
play no part). Entries are written atomically under the store's entry lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from brainllm.images import image_chunks, image_sha256
from brainllm.io import InputError, atomic_path, open_h5, write_json
from brainllm.models import (
    MODEL_CHOICES,
    MODEL_DEFAULTS,
    _loading_kwargs,
    directory_sha256,
    load_config,
    resolve_device,
    resolve_source,
)
from brainllm.store import SETTINGS_HASH_LENGTH, content_id, entry_lock, layer_hash, layer_name, provenance, remove_dead_temporaries

logger = logging.getLogger(__name__)

VISION_EXTRACTOR_VERSION = 1
VISION_STORE_FORMAT = "vision-1"
IMAGES_HASH_LENGTH = 12
POOLINGS = ("mean", "cls")
# Keys of a model entry that matter for image features; the other text-model keys are
# accepted (one entry may serve text and images) and ignored here.
VISION_KEYS = ("revision", "trust_remote_code", "dtype", "device", "batch_size", "store_dtype")
RECOMPUTE = "Move the entry out of the store and rerun the image features rule (a new entry is written)."


# ---------------------------------------------------------------- settings and keys


def vision_settings(model_cfg: dict) -> dict:
    """The entry's vision-relevant settings with defaults filled in and validated."""
    if not isinstance(model_cfg, dict) or not model_cfg.get("source"):
        raise InputError(None, f"model entry {model_cfg!r} has no `source`.", "Give every model a `source`.")
    unknown = set(model_cfg) - set(MODEL_DEFAULTS) - {"source"}
    if unknown:
        raise InputError(None, f"model {model_cfg['source']}: unknown keys {sorted(unknown)}.", f"Use only the documented model keys: {sorted(MODEL_DEFAULTS)}.")
    settings = {"source": model_cfg["source"], **{key: model_cfg.get(key, MODEL_DEFAULTS[key]) for key in VISION_KEYS}}
    for key in ("dtype", "device", "store_dtype"):
        if settings[key] not in MODEL_CHOICES[key]:
            raise InputError(None, f"model {settings['source']}: {key}={settings[key]!r} is not supported.", f"Set {key} to one of {list(MODEL_CHOICES[key])}.")
    size = settings["batch_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(None, f"model {settings['source']}: batch_size={size!r}.", "Set batch_size to a positive integer.")
    return settings


def _base_cfg(settings: dict) -> dict:
    """An entry brainllm.models accepts (for load_config and the loading kwargs)."""
    return {key: settings[key] for key in ("source", *VISION_KEYS)}


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise InputError(None, f"pooling={pooling!r} is not supported for image features.", f"Use one of {list(POOLINGS)}.")


def _check_image_size(image_size) -> list[int] | None:
    if image_size is None:
        return None
    size = list(image_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise InputError(None, f"image_size={image_size!r}.", "Give image_size as [height, width] in pixels, or null.")
    return size


def vision_entry_settings(model_cfg: dict, pooling: str = "mean", image_size: Sequence[int] | None = None) -> dict:
    """What identifies stored image features: model identity and what changes the numbers.

    Like ``store.entry_settings``: local/package models by their files' content hash, hub
    models by id and revision; batch_size and device are absent.
    """
    settings = vision_settings(model_cfg)
    _check_pooling(pooling)
    source = resolve_source(settings["source"])
    return {
        "vision_extractor_version": VISION_EXTRACTOR_VERSION,
        "source": None if source.kind == "local" else source.spec,
        "revision": None if source.is_local else settings["revision"],
        "weights_sha256": directory_sha256(source.location) if source.is_local else None,
        "dtype": settings["dtype"],
        "store_dtype": settings["store_dtype"],
        "pooling": pooling,
        "image_size": _check_image_size(image_size),
    }


def vision_settings_hash(model_cfg: dict, pooling: str = "mean", image_size: Sequence[int] | None = None) -> str:
    text = json.dumps(vision_entry_settings(model_cfg, pooling, image_size), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:SETTINGS_HASH_LENGTH]


def images_sha256(image_hashes: Sequence[str]) -> str:
    """sha256 of the ordered list of image content hashes."""
    return hashlib.sha256("\n".join(image_hashes).encode()).hexdigest()


def image_entry_path(store_dir: str | os.PathLike, model_cfg: dict, image_hashes: Sequence[str], pooling: str = "mean",
                     image_size: Sequence[int] | None = None) -> Path:
    """``store_dir/images/<model-slug>/<settings-hash>/images-<images-hash>.h5``."""
    slug = resolve_source(vision_settings(model_cfg)["source"]).slug
    name = f"images-{images_sha256(image_hashes)[:IMAGES_HASH_LENGTH]}.h5"
    return Path(store_dir) / "images" / slug / vision_settings_hash(model_cfg, pooling, image_size) / name


# ---------------------------------------------------------------- configs and loading


def _vision_config(config):
    """The vision tower's config: ``vision_config``, or the config itself for a vision-only checkpoint."""
    vision = getattr(config, "vision_config", None)
    if vision is not None:
        return vision
    if config.model_type in ("clip_vision_model", "siglip_vision_model"):
        return config
    return None


# vision towers fed flattened patches and per-image grid sizes (the processor's image_grid_thw): module, class
GRID_TOWERS = {
    "qwen2_vl": ("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VisionTransformerPretrainedModel"),
    "qwen2_5_vl": ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VisionTransformerPretrainedModel"),
}


def _model_kind(config) -> str:
    if config.model_type in GRID_TOWERS:
        return "qwen_vl"
    if config.model_type in ("clip", "clip_vision_model"):
        return "clip"
    if config.model_type in ("siglip", "siglip_vision_model"):
        return "siglip"
    if config.model_type == "llava":
        return "llava"
    if _vision_config(config) is not None:
        return "generic"
    return "unsupported"


def _unsupported(location: str, config) -> InputError:
    return InputError(
        location,
        f"model type {config.model_type!r} has no vision tower (its config has no vision_config).",
        "Use a CLIP, SigLIP or LLaVA-type checkpoint (a config with vision_config whose model exposes vision_tower, vision_model or visual).",
    )


def _load_config(settings: dict):
    """``brainllm.models.load_config``, with the fix for checkpoints that ship their own code."""
    try:
        return load_config(_base_cfg(settings))
    except InputError as error:
        if settings["trust_remote_code"] or "trust_remote_code" not in str(error):
            raise
        raise InputError(
            error.path,
            f"model {settings['source']}: its model type is not in transformers and the checkpoint ships its own code (older Qwen-VL, InternVL and similar).",
            "Use a transformers-native version of the checkpoint (e.g. an -hf repository), or, only for a source you trust, set trust_remote_code: true in the model entry.",
        ) from error


def n_vision_hidden_states(model_cfg: dict) -> int:
    """Hidden states the vision tower yields (layers + 1; index 0 = embeddings), from the config alone."""
    settings = vision_settings(model_cfg)
    config = _load_config(settings)
    vision = _vision_config(config)
    if vision is None:
        raise _unsupported(resolve_source(settings["source"]).location, config)
    layers = getattr(vision, "num_hidden_layers", None) or getattr(vision, "depth", None)
    if not layers:
        raise InputError(resolve_source(settings["source"]).location, f"cannot find the number of layers of the {config.model_type} vision tower in its config.",
                         "Use a model whose vision_config sets num_hidden_layers (or depth).")
    return int(layers) + 1


class VisionModel:
    """A loaded vision tower: ``hidden_states(pixel_values)`` and ``embedding(hidden_states, output)``."""

    def __init__(self, kind: str, tower, embed=None, projector=None, config=None, has_class_token: bool = True, embedding_space: str | None = None):
        self.kind = kind
        self.tower = tower
        self.projector = projector
        self.config = config
        self._embed = embed
        self.has_class_token = has_class_token
        self.embedding_space = embedding_space
        self.name = ""

    @property
    def device(self):
        return next(self.tower.parameters()).device

    @property
    def dtype(self):
        return next(self.tower.parameters()).dtype

    def forward(self, inputs):
        """``(hidden_states tuple of (n, tokens, hidden), embedding (n, d) or None)`` from the image processor's output."""
        pixel_values = inputs["pixel_values"].to(device=self.device, dtype=self.dtype)
        if self.kind == "qwen_vl":
            return self._forward_grid(pixel_values, inputs["image_grid_thw"].to(self.device))
        try:
            output = self.tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        except TypeError as error:
            raise InputError(self.name or None, f"the {self.kind} vision tower cannot be called with pixel_values alone ({error}).",
                             "This model needs extra inputs its processor does not give; use a CLIP, SigLIP, LLaVA-type, InternVL or Qwen2-VL model.") from error
        hidden = output.hidden_states
        embedding = None if self._embed is None else self._embed(self, output, hidden, pixel_values)
        return hidden, embedding

    def _forward_grid(self, pixel_values, grid_thw):
        """Qwen-VL towers: every image's patches in one sequence; split back per image (equal sizes: one token count)."""
        output = self.tower(pixel_values, grid_thw=grid_thw, output_hidden_states=True)
        counts = grid_thw.prod(-1).tolist()
        if len(set(counts)) > 1:
            raise InputError(self.name or None, f"the images of a batch give {sorted(set(counts))} patches each: the processor kept their sizes.",
                             "Set visual.image_size so that every image has one size.")
        n = len(counts)
        hidden = tuple(h.reshape(n, counts[0], h.shape[-1]) for h in output.hidden_states)
        merged = output.pooler_output  # the merger's tokens, in the language model's input space
        return hidden, merged.reshape(n, merged.shape[0] // n, merged.shape[-1]).mean(dim=1)


def _llava_embedding(model: VisionModel, output, hidden, pixel_values=None):
    """The projector's output for what LLaVA feeds its language model, averaged over tokens."""
    config = model.config
    layer = getattr(config, "vision_feature_layer", -2)
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    selected = [hidden[i] for i in (layer if isinstance(layer, (list, tuple)) else [layer])]
    if strategy == "default":
        selected = [h[:, 1:] for h in selected]
    import torch

    return model.projector(torch.cat(selected, dim=-1)).mean(dim=1)


def _quiet_transformers():
    """transformers reports every checkpoint tensor a vision-only class skips; keep errors only."""
    import contextlib

    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def quiet():
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)

    return quiet()


def _check_missing(location: str, missing, what: str) -> None:
    missing = sorted(missing)
    if missing:
        raise InputError(location, f"{len(missing)} weights of the {what} are missing from the checkpoint (e.g. {missing[:3]}); they would be random.",
                         "Check that the source is a complete checkpoint of this architecture.")


def _checkpoint_file(settings: dict, source, filename: str) -> str | None:
    """A file of the checkpoint as a local path (from the hub cache or download for hub models), None if absent."""
    if source.is_local:
        path = Path(source.location) / filename
        return str(path) if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    kwargs = _loading_kwargs(_base_cfg(settings), source)
    try:
        return hf_hub_download(source.location, filename, revision=kwargs.get("revision"), local_files_only=kwargs.get("local_files_only", False))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def _checkpoint_tensor_names(settings: dict, source) -> dict[str, str]:
    """Tensor name → safetensors file name (sharded: from the index; only needed shards are fetched later)."""
    from safetensors import safe_open

    index = _checkpoint_file(settings, source, "model.safetensors.index.json")
    if index is not None:
        return dict(json.loads(Path(index).read_text())["weight_map"])
    single = _checkpoint_file(settings, source, "model.safetensors")
    if single is None:
        raise InputError(source.location, "no safetensors weights (model.safetensors or model.safetensors.index.json).", "Save the model with safe_serialization=True.")
    with safe_open(single, framework="pt") as handle:
        return {name: "model.safetensors" for name in handle.keys()}


_INNER_PREFIXES = ("vision_model.",)


def _load_prefixed(module, prefixes: tuple[str, ...], settings: dict, source, what: str) -> None:
    """Fill ``module`` with the checkpoint tensors under the first matching prefix (safetensors only)."""
    from safetensors import safe_open

    names = _checkpoint_tensor_names(settings, source)
    prefix = next((p for p in prefixes if any(name.startswith(p) for name in names)), None)
    if prefix is None:
        raise InputError(source.location, f"no {what} tensors in the checkpoint (looked for names starting with {list(prefixes)}).",
                         "Check that the source is a checkpoint of this architecture.")
    wanted = {name[len(prefix):]: name for name in names if name.startswith(prefix)}
    by_file: dict[str, list[str]] = {}
    for name in wanted.values():
        by_file.setdefault(names[name], []).append(name)
    state = {}
    for filename, tensor_names in by_file.items():
        local = _checkpoint_file(settings, source, filename)
        if local is None:
            raise InputError(source.location, f"{filename}, named by the checkpoint's index, is missing.", "Download the complete checkpoint.")
        with safe_open(local, framework="pt") as handle:
            for name in tensor_names:
                state[name[len(prefix):]] = handle.get_tensor(name)
    own = module.state_dict()
    # The tower's inner prefix differs between checkpoints and transformers versions (hub
    # LLaVA checkpoints: vision_tower.vision_model.*; transformers 5's CLIPVisionModel has
    # no vision_model level): use the reading that fits the module.
    for inner in _INNER_PREFIXES:
        if inner and all(name.startswith(inner) for name in state) and not any(name.startswith(inner) for name in own):
            state = {name[len(inner):]: tensor for name, tensor in state.items()}
        elif inner and all(name.startswith(inner) for name in own) and not any(name.startswith(inner) for name in state):
            state = {inner + name: tensor for name, tensor in state.items()}
    missing = set(own) - set(state)
    _check_missing(source.location, missing, what)
    unexpected = set(state) - set(own)
    if unexpected:
        raise InputError(source.location, f"{len(unexpected)} {what} tensors do not fit this architecture (e.g. {sorted(unexpected)[:3]}).",
                         "Check that the source is a checkpoint of this architecture.")
    module.load_state_dict(state, strict=True)


def load_vision_model(model_cfg: dict):
    """Load ``(vision_model, image_processor, info)`` for a model entry; see the module docstring.

    ``info``: model_id, slug, source_kind, location, revision (resolved hub commit),
    weights_sha256 (local/package), kind (clip|siglip|llava|generic), loaded (what was
    put in memory), n_hidden_states, hidden_size, embedding_space, has_class_token,
    dtype, device.
    """
    import torch
    import transformers

    settings = vision_settings(model_cfg)
    source = resolve_source(settings["source"])
    config = _load_config(settings)
    kind = _model_kind(config)
    if kind == "unsupported":
        raise _unsupported(source.location, config)
    device = resolve_device(settings["device"])
    dtype = getattr(torch, settings["dtype"])
    kwargs = _loading_kwargs(_base_cfg(settings), source)
    load = dict(kwargs, use_safetensors=True, dtype=dtype, output_loading_info=True)
    try:
        with _quiet_transformers():
            if kind == "clip":
                vision_config = _vision_config(config)
                if config.model_type == "clip":  # the projection width lives on the top-level config
                    vision_config = transformers.CLIPVisionConfig(**{**vision_config.to_dict(), "projection_dim": config.projection_dim})
                tower, info = transformers.CLIPVisionModelWithProjection.from_pretrained(source.location, config=vision_config, **load)
                _check_missing(source.location, info["missing_keys"], "vision tower")
                model = VisionModel("clip", tower, embed=lambda m, out, hidden, pixels: out.image_embeds, config=config, has_class_token=True,
                                    embedding_space="CLIP image-text space: get_image_features (visual_projection of the post-layernormed class token)")
                loaded = "CLIPVisionModelWithProjection (vision tower + visual_projection)"
            elif kind == "siglip":
                tower, info = transformers.SiglipVisionModel.from_pretrained(source.location, config=_vision_config(config), **load)
                _check_missing(source.location, info["missing_keys"], "vision tower")
                use_head = getattr(_vision_config(config), "vision_use_head", True)
                model = VisionModel("siglip", tower, embed=(lambda m, out, hidden, pixels: out.pooler_output) if use_head else None, config=config, has_class_token=False,
                                    embedding_space="SigLIP image-text space: get_image_features (attention-pooling head output)" if use_head else None)
                loaded = "SiglipVisionModel (vision tower + pooling head)"
            elif kind == "llava":
                from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

                tower = transformers.AutoModel.from_config(config.vision_config)
                projector = LlavaMultiModalProjector(config)
                _load_prefixed(tower, ("model.vision_tower.", "vision_tower."), settings, source, "vision tower")
                _load_prefixed(projector, ("model.multi_modal_projector.", "multi_modal_projector."), settings, source, "multi-modal projector")
                tower.to(dtype)
                projector.to(dtype)
                has_cls = _has_class_token(tower)
                model = VisionModel("llava", tower, embed=_llava_embedding, projector=projector, config=config, has_class_token=has_cls,
                                    embedding_space=f"language-model input space: multi_modal_projector output of hidden state {getattr(config, 'vision_feature_layer', -2)} "
                                    f"({getattr(config, 'vision_feature_select_strategy', 'default')} token selection), mean over tokens")
                loaded = f"{type(tower).__name__} + LlavaMultiModalProjector only (language model not loaded)"
            elif kind == "qwen_vl":
                import importlib

                module, name = GRID_TOWERS[config.model_type]
                tower = getattr(importlib.import_module(module), name)._from_config(config.vision_config)
                _load_prefixed(tower, ("model.visual.", "visual."), settings, source, "vision tower")
                tower.to(dtype)
                model = VisionModel("qwen_vl", tower, config=config, has_class_token=False,
                                    embedding_space="language-model input space: the vision merger's output, mean over tokens")
                loaded = f"{name} only (language model not loaded)"
            else:
                model, loaded = _load_generic(config, source, load)
    except (OSError, ValueError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(source.location, f"cannot load the vision model ({error}).", "Check the source, revision and that the weights are safetensors.") from error
    for module in (model.tower, model.projector):
        if module is not None:
            module.to(device)
            module.eval()
            module.requires_grad_(False)
    model.name = source.spec
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError) as error:
        raise InputError(source.location, f"cannot load the image processor ({error}).", "Provide the model's preprocessor_config.json.") from error
    vision = _vision_config(config)
    info = {
        "model_id": source.spec,
        "slug": source.slug,
        "source_kind": source.kind,
        "location": source.location,
        "revision": getattr(config, "_commit_hash", None) if source.kind == "hub" else None,
        "weights_sha256": directory_sha256(source.location) if source.is_local else None,
        "kind": model.kind,
        "model_type": config.model_type,
        "loaded": loaded,
        "n_hidden_states": n_vision_hidden_states(settings),
        "hidden_size": int(getattr(vision, "embed_dim", None) or vision.hidden_size),  # the blocks' width (Qwen2-VL: embed_dim)
        "has_class_token": model.has_class_token,
        "embedding_space": model.embedding_space,
        "dtype": settings["dtype"],
        "device": str(model.device),
    }
    logger.info("loaded %s (%s: %s, %d hidden states of width %d) on %s, dtype %s", source.spec, model.kind, loaded, info["n_hidden_states"], info["hidden_size"], info["device"], info["dtype"])
    return model, processor, info


def _has_class_token(tower) -> bool:
    return any(name.endswith(("class_embedding", "cls_token")) for name, _ in tower.named_parameters())


def _load_generic(config, source, load: dict):
    """Whole model (remote code only when allowed), then its vision tower."""
    import torch
    import transformers

    model = None
    for auto in (transformers.AutoModelForImageTextToText, transformers.AutoModel):
        try:
            model, loading_info = auto.from_pretrained(source.location, **load)
            break
        except ValueError:
            continue
    if model is None:
        raise InputError(source.location, f"transformers has no class for model type {config.model_type!r}.",
                         "Set trust_remote_code: true in the model entry if you trust the checkpoint's code, or use a CLIP, SigLIP or LLaVA-type model.")
    holders = [model, getattr(model, "model", None)]
    tower = next((getattr(h, name) for h in holders if h is not None for name in ("vision_tower", "vision_model", "visual") if getattr(h, name, None) is not None), None)
    if tower is None:
        raise InputError(source.location, f"{type(model).__name__} exposes no vision_tower, vision_model or visual module.", "Use a CLIP, SigLIP or LLaVA-type model.")
    prefix = {id(module): name for name, module in model.named_modules()}.get(id(tower), "")
    tower_names = {f"{prefix}.{name}" if prefix else name for name, _ in tower.named_parameters()}
    _check_missing(source.location, set(loading_info.get("missing_keys", ())) & tower_names, "vision tower")
    has_cls = _has_class_token(tower)
    embed = None
    if hasattr(model, "get_image_features") and hasattr(config, "vision_feature_layer"):
        def embed(vision_model, output, hidden, pixel_values):
            """The model's own image features (its projector, pixel shuffles and all), mean over tokens."""
            features = model.get_image_features(pixel_values=pixel_values, vision_feature_layer=config.vision_feature_layer,
                                                vision_feature_select_strategy=getattr(config, "vision_feature_select_strategy", "default"))
            features = getattr(features, "pooler_output", features)
            if isinstance(features, (list, tuple)):  # one tensor per image
                return torch.stack([f.reshape(-1, f.shape[-1]).mean(dim=0) for f in features])
            return features.mean(dim=1)

    result = VisionModel("generic", tower, embed=embed, config=config, has_class_token=has_cls,
                         embedding_space="language-model input space: the model's get_image_features, mean over tokens" if embed else None)
    return result, f"whole {type(model).__name__} (vision tower used)"


# ---------------------------------------------------------------- extraction


def extract_image_features(model: VisionModel, processor, images: np.ndarray, batch_size: int = 32, pooling: str = "mean"):
    """``(layers, embedding)``: ``layers[i]`` (n_images, hidden) float32 for every hidden state, pooled per image.

    ``mean`` averages all tokens; ``cls`` takes the first (class) token and is refused for
    towers without one (SigLIP). ``embedding`` (n_images, d) float32 or None.
    """
    import torch
    from tqdm.auto import tqdm

    _check_pooling(pooling)
    if pooling == "cls" and not model.has_class_token:
        raise InputError(model.name or None, f"pooling 'cls' asks for the class token, but this {model.kind} vision tower has none.", "Use pooling: mean for this model.")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (n, height, width, 3) uint8, got {images.shape} {images.dtype}")
    layers: list[list[np.ndarray]] | None = None
    embeddings: list[np.ndarray] = []
    with torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), desc="image features", unit="batch", disable=len(images) <= batch_size):
            batch = [image for image in images[start:start + batch_size]]
            hidden, embedding = model.forward(processor(images=batch, return_tensors="pt"))
            pooled = [(h[:, 0] if pooling == "cls" else h.mean(dim=1)).float().cpu().numpy() for h in hidden]
            if layers is None:
                layers = [[] for _ in pooled]
            for store, values in zip(layers, pooled):
                store.append(values)
            if embedding is not None:
                embeddings.append(embedding.float().cpu().numpy())
    if layers is None:
        return [], None
    return [np.concatenate(parts).astype(np.float32) for parts in layers], (np.concatenate(embeddings).astype(np.float32) if embeddings else None)


# ---------------------------------------------------------------- store


def _attr(value):
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value) if isinstance(value, str) else value


def write_image_entry(path: str | os.PathLike, layers: list[np.ndarray], embedding: np.ndarray | None, names: Sequence[str],
                      hashes: Sequence[str], attrs: dict, store_dtype: str = "float32") -> dict:
    """Write one image entry atomically; returns its metadata (also the JSON attribute ``metadata``)."""
    n = len(names)
    if not layers:
        raise ValueError("no layers to store")
    if len(hashes) != n:
        raise ValueError(f"{len(hashes)} image hashes for {n} names")
    stored = [np.asarray(states, dtype=store_dtype) for states in layers]
    for index, states in enumerate(stored):
        if states.ndim != 2 or states.shape[0] != n:
            raise ValueError(f"layer {index}: shape {states.shape} does not match {n} images")
        if not np.isfinite(states).all():
            raise InputError(path, f"{layer_name(index)} holds non-finite values.", "Use dtype float32 or bfloat16 and rerun.")
    emb = None if embedding is None else np.asarray(embedding, dtype=np.float32)
    if emb is not None and (emb.ndim != 2 or emb.shape[0] != n or not np.isfinite(emb).all()):
        raise ValueError(f"embedding of shape {emb.shape} (finite: {np.isfinite(emb).all()}) for {n} images")
    layer_hashes = [layer_hash(states) for states in stored]
    emb_hash = None if emb is None else layer_hash(emb)
    set_hash = images_sha256(hashes)
    metadata = {
        **provenance(),
        **attrs,
        "store_format": VISION_STORE_FORMAT,
        "n_images": n,
        "n_layers": len(stored),
        "store_dtype": store_dtype,
        "images_sha256": set_hash,
        "has_embedding": emb is not None,
        "content_id": content_id(set_hash, layer_hashes + ([emb_hash] if emb_hash else []), store_dtype),
    }
    import h5py

    with atomic_path(path) as tmp:
        with open_h5(tmp, "w") as handle:
            for index, states in enumerate(stored):
                handle.create_dataset(layer_name(index), data=states).attrs["xxh3_128"] = layer_hashes[index]
            if emb is not None:
                handle.create_dataset("embedding", data=emb).attrs["xxh3_128"] = emb_hash
            handle.create_dataset("names", data=np.array(list(names), dtype=object), dtype=h5py.string_dtype())
            handle.create_dataset("image_sha256", data=np.array(list(hashes), dtype=object), dtype=h5py.string_dtype())
            for key, value in metadata.items():
                handle.attrs[key] = _attr(value)
            handle.attrs["metadata"] = json.dumps(metadata, sort_keys=True)
    return metadata


def _strings(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def read_image_features(entry_path: str | os.PathLike, layers: list[int] | None = None, names: Sequence[str] | None = None) -> dict:
    """``{"layers": {i: (n, hidden) float32}, "embedding": array | None, "names": [...], "image_sha256": [...], "attrs": {...}}``.

    ``entry_path`` is an entry or a manifest naming one. Every layer read and the embedding
    are checked against their stored hashes. ``names`` are the entry's stored names, or
    for a manifest the names of the run that wrote it (an entry is keyed by image content,
    so another run may have stored the same images under other names); ``names``, when
    given, must equal them in order. Raises InputError for a missing, incomplete, modified or mismatched entry.
    """
    path = Path(entry_path)
    manifest = None
    if path.suffix == ".json":
        try:
            manifest = json.loads(path.read_text())
            path = Path(manifest["entry"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(entry_path, f"unreadable image features manifest ({error}).", "Rerun the image features rule.") from error
    if not path.is_file():
        raise InputError(path, "image feature entry not found.", "Run the image features rule for this model and these images.")
    try:
        with open_h5(path) as handle:
            metadata = json.loads(handle.attrs["metadata"])
            if metadata.get("store_format") != VISION_STORE_FORMAT:
                raise InputError(path, f"not an image feature entry (store format {metadata.get('store_format')!r}, expected {VISION_STORE_FORMAT!r}).", RECOMPUTE)
            n_layers, n = int(metadata["n_layers"]), int(metadata["n_images"])
            stored = sorted(int(k.split("_", 1)[1]) for k in handle if k.startswith("layer_"))
            if stored != list(range(n_layers)) or (metadata["has_embedding"] and "embedding" not in handle):
                raise InputError(path, f"incomplete entry: layers {stored} stored, {n_layers} expected (embedding expected: {metadata['has_embedding']}).", RECOMPUTE)
            stored_names = _strings(handle["names"][()])
            hashes = _strings(handle["image_sha256"][()])
            if len(stored_names) != n or len(hashes) != n or images_sha256(hashes) != metadata["images_sha256"]:
                raise InputError(path, "the stored names or image hashes do not match the entry's metadata.", RECOMPUTE)
            labels = stored_names
            if manifest is not None:  # the same image contents may be stored under another run's names
                labels = [str(label) for label in manifest.get("names", stored_names)]
                if len(labels) != n or manifest.get("images_sha256") != metadata["images_sha256"]:
                    raise InputError(entry_path, f"names {path}, which holds other images than this manifest lists.", "Rerun the image features rule.")
            if names is not None and list(names) != labels:
                first = next((i for i, (a, b) in enumerate(zip(names, labels)) if a != b), min(len(names), n))
                raise InputError(entry_path, f"the features are of {n} images named {labels[:3]}…, {len(names)} names were requested (first difference at position {first}).",
                                 "Read the manifest made for these images in this order, or rerun the image features rule.")
            wanted = list(range(n_layers)) if layers is None else sorted({int(i) for i in layers})
            absent = [i for i in wanted if not 0 <= i < n_layers]
            if absent:
                raise InputError(path, f"layers {absent} requested, the entry holds hidden states 0..{n_layers - 1}.", "Choose layers within that range (0 = embeddings).")
            out = {}
            for index in wanted:
                dataset = handle[layer_name(index)]
                array = dataset[()]
                if array.ndim != 2 or array.shape[0] != n or layer_hash(array) != dataset.attrs.get("xxh3_128"):
                    raise InputError(path, f"{layer_name(index)}: its shape or bytes do not match the entry (modified or damaged).", RECOMPUTE)
                out[index] = array.astype(np.float32, copy=False)
            embedding = None
            if metadata["has_embedding"]:
                dataset = handle["embedding"]
                embedding = dataset[()]
                if layer_hash(embedding) != dataset.attrs.get("xxh3_128"):
                    raise InputError(path, "embedding: its bytes do not match the stored hash (modified or damaged).", RECOMPUTE)
    except InputError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise InputError(path, f"unreadable or corrupt image feature entry ({error}).", RECOMPUTE) from error
    if manifest is not None and manifest.get("content_id") != metadata["content_id"]:
        raise InputError(entry_path, f"names {path}, whose content changed since this manifest was written.", "Rerun the image features rule.")
    return {"layers": out, "embedding": embedding, "names": labels, "image_sha256": hashes, "attrs": metadata}


def _complete(path: Path) -> dict | None:
    """The metadata of a readable complete entry (all hashes checked), else None."""
    try:
        return read_image_features(path)["attrs"]
    except InputError:
        return None


def obtain_image_features(store_dir: str | os.PathLike, model_cfg: dict, image_paths: Sequence[str | os.PathLike], names: Sequence[str],
                          manifest_json: str | os.PathLike, image_size: Sequence[int] | None = None, pooling: str = "mean",
                          log: logging.Logger = logger) -> Path:
    """The store entry of (model settings, image contents): reused, or computed once; writes the manifest.

    Under the entry's lock: a complete entry is reused (logged "reused"); a damaged one is
    an error (never silently replaced); otherwise the model is loaded, every layer
    extracted and the entry written atomically. Returns the entry path.
    """
    names = [str(n) for n in names]
    if len(names) != len(image_paths):
        raise InputError(None, f"{len(image_paths)} images but {len(names)} names.", "Give one name per image.")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(None, f"image names {dup[:5]} are repeated.", "Give every image a distinct name.")
    if not image_paths:
        raise InputError(None, "no images given.", "List at least one image stimulus.")
    settings = vision_settings(model_cfg)
    size = _check_image_size(image_size)
    missing = [p for p in image_paths if not Path(p).is_file()]
    if missing:
        raise InputError(missing[0], f"image file not found ({len(missing)} of {len(image_paths)} missing).", "Fix the stimulus path or add the file.")
    hashes = image_sha256(image_paths)
    path = image_entry_path(store_dir, settings, hashes, pooling, size)
    reused = True
    with entry_lock(path, log=log):
        if path.exists():
            metadata = _complete(path)
            if metadata is None:
                read_image_features(path)  # raises the precise error
        else:
            reused = False
            remove_dead_temporaries(path, log)
            model, processor, info = load_vision_model(settings)
            parts = [extract_image_features(model, processor, images, settings["batch_size"], pooling) for images in image_chunks(image_paths, size)]
            layers = [np.concatenate([part[0][i] for part in parts]) for i in range(len(parts[0][0]))]
            embedding = None if parts[0][1] is None else np.concatenate([part[1] for part in parts])
            if len(layers) != info["n_hidden_states"]:
                raise RuntimeError(f"{len(layers)} hidden states extracted, the config says {info['n_hidden_states']}")
            attrs = {
                **{key: info[key] for key in ("model_id", "slug", "source_kind", "location", "revision", "weights_sha256", "kind", "model_type", "loaded",
                                              "n_hidden_states", "hidden_size", "has_class_token", "embedding_space", "dtype")},
                "embedding_space": (info["embedding_space"] or "none") + ("" if embedding is None else "; stored raw (not L2-normalised)"),
                "pooling": pooling,
                "image_size": size,
                "settings_hash": path.parent.name,
                "settings": vision_entry_settings(settings, pooling, size),
                "library_versions": _library_versions(),
            }
            metadata = write_image_entry(path, layers, embedding, names, hashes, attrs, settings["store_dtype"])
            log.info("computed %s (%d images, %d hidden states)", path, len(names), len(layers))
    if reused:
        log.info("reused %s", path)
        stored = _strings_of(path, "names")
        if stored != names:
            log.info("the entry was made from the same image contents under other names; the manifest records this run's names")
    write_json(manifest_json, {
        "model": settings["source"],
        "entry": os.path.abspath(path),
        "settings_hash": path.parent.name,
        "images_sha256": metadata["images_sha256"],
        "content_id": metadata["content_id"],
        "n_layers": metadata["n_layers"],
        "n_images": metadata["n_images"],
        "names": names,
        "reused": reused,
    })
    return path


def _strings_of(path: Path, dataset: str) -> list[str]:
    with open_h5(path) as handle:
        return _strings(handle[dataset][()])


def _library_versions() -> dict:
    import importlib.metadata

    versions = {}
    for package in ("torch", "transformers", "safetensors", "numpy", "h5py", "pillow"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions
