"""Model configuration, source resolution, hashing and loading for the feature store.

A model entry of the config (``models.<name>``) names a source: a Hugging Face id, a local
directory, or ``package:<module>`` (an installed package whose ``get_model_path()`` returns
a local directory). This module turns such an entry into validated settings, a readable
slug, content hashes of the weights, and a loaded model whose text tower yields every
hidden state. torch/transformers are imported lazily so that path computations (used
when Snakemake builds its DAG) stay cheap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from brainllm.io import InputError, sha256_file, write_json

logger = logging.getLogger(__name__)

# Defaults mirror workflow/schemas/config.schema.yaml (definitions.model).
MODEL_DEFAULTS: dict = {
    "revision": None,
    "trust_remote_code": False,
    "family": "auto",
    "t5_states": "encoder",
    "dtype": "float32",
    "quantization": "none",
    "context": "per-word",
    "context_words": 20,
    "pooling": "last",
    "batch_size": 32,
    "store_dtype": "float32",
    "device": "auto",
    "layers": "all",
    "size_params": None,
    "adapter": None,
    # Set by the workflow for adapters trained in the same run: a hash of the adapter's
    # training recipe, known before the adapter exists, keys the store instead of the
    # adapter files' hash (entries still record the weights' sha256).
    "adapter_recipe": None,
    # How the dataset's words are joined into text: " " (English and other spaced scripts)
    # or "" (Japanese, Chinese). The workflow sets it from dataset.word_separator.
    "word_separator": " ",
}
WORD_SEPARATORS = (" ", "")
MODEL_CHOICES: dict[str, tuple[str, ...]] = {
    "family": ("auto", "encoder", "decoder", "encoder-decoder", "vision-language"),
    "t5_states": ("encoder", "decoder"),
    "dtype": ("float32", "bfloat16", "float16"),
    "quantization": ("none", "4bit", "8bit"),
    "context": ("per-word", "causal-chunked"),
    "pooling": ("last", "mean"),
    "store_dtype": ("float32", "float16"),
    "device": ("auto", "cpu", "cuda"),
}
# Settings that change the stored numbers (part of the store key). batch_size, device and
# layers are deliberately absent: they change speed or what is read, not what is stored.
FEATURE_SETTINGS = (
    "family",
    "t5_states",
    "dtype",
    "quantization",
    "context",
    "context_words",
    "pooling",
    "store_dtype",
)
# Bump when the extraction method changes the numbers for identical settings.
EXTRACTOR_VERSION = 1

# Model types of causal language models, for ``family: auto`` when a checkpoint does not
# name a causal-LM architecture.
DECODER_MODEL_TYPES = frozenset(
    """gpt2 gptj gpt_neo gpt_neox gpt_bigcode codegen llama mistral mixtral gemma gemma2
    gemma3_text qwen2 qwen2_moe qwen3 qwen3_moe opt falcon phi phi3 bloom mpt olmo olmo2
    stablelm cohere internlm2 starcoder2 granite""".split()
)
# Files whose content defines a local model (weights, configs, tokenizer, remote code).
_MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".py", ".tiktoken")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``kind`` is ``package``, ``local`` or ``hub``."""

    spec: str  # the config's ``source`` string
    kind: str
    location: str  # local directory, or hub id
    slug: str  # readable directory name in the store

    @property
    def is_local(self) -> bool:
        return self.kind in ("package", "local")


@dataclasses.dataclass
class ModelInfo:
    """What was loaded; recorded in every store entry."""

    model_id: str
    slug: str
    source_kind: str
    location: str
    revision: str | None  # resolved hub commit, when loaded from the hub
    weights_sha256: str | None  # content hash of a local/package model directory
    adapter: str | None
    adapter_sha256: str | None
    family: str
    t5_states: str
    n_hidden_states: int
    hidden_size: int
    dtype: str
    quantization: str
    device: str  # device of the input embeddings
    max_positions: int | None
    pad_token_id: int
    decoder_start_token_id: int | None


def model_settings(model_cfg: dict) -> dict:
    """The model entry with schema defaults filled in and every choice validated."""
    if not isinstance(model_cfg, dict) or not model_cfg.get("source"):
        raise InputError(None, f"model entry {model_cfg!r} has no `source`.", "Give every model a `source`.")
    unknown = set(model_cfg) - set(MODEL_DEFAULTS) - {"source"}
    if unknown:
        raise InputError(
            None,
            f"model {model_cfg['source']}: unknown keys {sorted(unknown)}.",
            f"Use only the keys documented in config/README.md: {sorted(MODEL_DEFAULTS)}.",
        )
    settings = {**MODEL_DEFAULTS, **model_cfg}
    for key, choices in MODEL_CHOICES.items():
        if settings[key] not in choices:
            raise InputError(
                None,
                f"model {settings['source']}: {key}={settings[key]!r} is not supported.",
                f"Set {key} to one of {list(choices)}.",
            )
    if settings["adapter_recipe"] is not None and settings["adapter"] is None:
        raise InputError(None, f"model {settings['source']}: adapter_recipe is set without an adapter.", "Set `adapter` to the adapter directory.")
    if settings["word_separator"] not in WORD_SEPARATORS:
        raise InputError(None, f"model {settings['source']}: word_separator={settings['word_separator']!r}.",
                         'Set dataset.word_separator to " " (spaced scripts) or "" (Japanese, Chinese).')
    for key in ("context_words", "batch_size"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(None, f"model {settings['source']}: {key}={value!r}.", f"Set {key} to a positive integer.")
    return settings


def resolve_source(source: str) -> ModelSource:
    """Classify a source string and find its directory (local/package) or hub id."""
    if source.startswith("package:"):
        module_name = source.split(":", 1)[1]
        try:
            module = importlib.import_module(module_name)
            location = str(Path(module.get_model_path()).resolve())
        except (ImportError, AttributeError) as error:
            raise InputError(
                None,
                f"model source {source!r}: cannot import {module_name}.get_model_path() ({error}).",
                f"Install the package that provides {module_name}, or give a local directory or hub id.",
            ) from error
        return ModelSource(source, "package", location, _safe_slug(module_name))
    path = Path(source).expanduser()
    looks_like_path = source.startswith(("/", ".", "~")) or source.count("/") > 1
    if path.is_dir():
        return ModelSource(source, "local", str(path.resolve()), _safe_slug(path.resolve().name))
    if looks_like_path:
        raise InputError(source, "model directory not found.", "Fix the path in models.<name>.source.")
    return ModelSource(source, "hub", source, _safe_slug(source.replace("/", "--")))


def _safe_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "model"


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or the older TRANSFORMERS_OFFLINE) asks for no network."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _cache_dir() -> Path:
    """``$BRAINLLM_CACHE_DIR`` (default ``~/.cache/brainllm``): what planning a run would otherwise recompute."""
    return Path(os.environ.get("BRAINLLM_CACHE_DIR", Path.home() / ".cache" / "brainllm"))


def built_model_path(name: str, recipe, packages: Sequence[str], build: Callable[[Path], object]) -> str:
    """Directory of a model the package builds offline (a demo's tiny model), built on first use.

    Cached in ``$BRAINLLM_CACHE_DIR/models/<name>-<key>``, the key hashing ``recipe`` and the
    versions of ``packages`` (what the built files depend on). ``build(directory)`` writes the
    model; it runs in a temporary folder renamed into place, so concurrent builders are safe.
    """
    versions = [importlib.metadata.version(package) for package in packages]
    key = hashlib.sha256(json.dumps([recipe, versions]).encode()).hexdigest()[:16]
    directory = _cache_dir() / "models" / f"{name}-{key}"
    if not (directory / "model.safetensors").is_file():
        directory.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
        try:
            build(building)
            try:
                os.rename(building, directory)
            except OSError:  # built meanwhile by another process: theirs is the same
                if not (directory / "model.safetensors").is_file():
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return str(directory)


def _hash_cache_path() -> Path:
    return _cache_dir() / "file_sha256.json"


_memory_hashes: dict[str, str] = {}


def file_sha256_cached(path: Path) -> str:
    """sha256 of a file, cached by (real path, size, mtime) in memory and on disk.

    Model weights can be hundreds of GB; the store key needs their hash every time the
    workflow is planned, so a file is hashed again only when its size or mtime changes.
    The on-disk cache lives in ``$BRAINLLM_CACHE_DIR`` (default ``~/.cache/brainllm``).
    """
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = f"{real}|{stat.st_size}|{stat.st_mtime_ns}"
    if key in _memory_hashes:
        return _memory_hashes[key]
    cache_path = _hash_cache_path()
    try:
        disk = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        disk = {}
    digest = disk.get(key)
    if digest is None:
        digest = sha256_file(real)
        disk = {k: v for k, v in disk.items() if not k.startswith(f"{real}|")}
        disk[key] = digest
        try:
            write_json(cache_path, disk)
        except OSError:
            pass  # a read-only home only costs rehashing
    _memory_hashes[key] = digest
    return digest


def directory_sha256(directory: str | os.PathLike, suffixes: tuple[str, ...] = _MODEL_FILE_SUFFIXES) -> str:
    """One sha256 over the (name, content hash) of a directory's top-level model files."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in suffixes and not p.name.startswith("."))
    if not files:
        raise InputError(directory, "no model files (*.safetensors, *.json) in this directory.", "Point the source at a saved model directory.")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{file_sha256_cached(path)}\n".encode())
    return digest.hexdigest()


def adapter_sha256(adapter_dir: str | os.PathLike) -> str:
    adapter_dir = Path(adapter_dir).expanduser()
    if not (adapter_dir / "adapter_config.json").is_file() or not (adapter_dir / "adapter_model.safetensors").is_file():
        raise InputError(
            adapter_dir,
            "not a LoRA adapter directory (needs adapter_config.json and adapter_model.safetensors).",
            "Save the adapter with peft's save_pretrained(safe_serialization=True).",
        )
    return directory_sha256(adapter_dir, suffixes=(".safetensors", ".json"))


def _loading_kwargs(settings: dict, source: ModelSource) -> dict:
    kwargs = {"trust_remote_code": bool(settings["trust_remote_code"])}
    if source.is_local or hub_offline():
        kwargs["local_files_only"] = True
    if source.kind == "hub" and settings["revision"]:
        kwargs["revision"] = settings["revision"]
    return kwargs


def model_layers(model_cfg: dict) -> list[int]:
    """Hidden-state indices to use downstream: ``layers: all`` or the validated list."""
    settings = model_settings(model_cfg)
    total = n_hidden_states(settings)
    if settings["layers"] == "all":
        return list(range(total))
    layers = settings["layers"]
    if not isinstance(layers, list) or not layers or any(isinstance(i, bool) or not isinstance(i, int) for i in layers):
        raise InputError(None, f"model {settings['source']}: layers={layers!r}.", "Set layers to `all` or a list of integers.")
    bad = [i for i in layers if not 0 <= i < total]
    if bad:
        raise InputError(
            None,
            f"model {settings['source']}: layers {bad} do not exist; the model has hidden states 0..{total - 1} (0 = embeddings).",
            f"Choose layers between 0 and {total - 1}.",
        )
    return sorted(set(layers))


def load_config(model_cfg: dict):
    """The model's transformers config (cheap: no weights)."""
    from transformers import AutoConfig

    settings = model_settings(model_cfg)
    source = resolve_source(settings["source"])
    try:
        return AutoConfig.from_pretrained(source.location, **_loading_kwargs(settings, source))
    except (OSError, ValueError) as error:
        raise InputError(
            source.location,
            f"cannot read the model config ({error}).",
            "Check the source; offline, download the model first or point to a local copy.",
        ) from error


def resolve_family(config, family: str = "auto") -> str:
    """``encoder``, ``decoder``, ``encoder-decoder`` or ``vision-language``."""
    if family != "auto":
        return family
    if getattr(config, "vision_config", None) is not None:
        return "vision-language"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return "decoder"
    if config.model_type in DECODER_MODEL_TYPES or getattr(config, "is_decoder", False):
        return "decoder"
    return "encoder"


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _count_hidden_states(config, family: str, t5_states: str) -> int:
    text = _text_config(config)
    if family == "encoder-decoder":
        if t5_states == "decoder":
            layers = getattr(text, "num_decoder_layers", None) or getattr(text, "decoder_layers", None)
        else:
            layers = getattr(text, "num_layers", None) or getattr(text, "encoder_layers", None)
        layers = layers or text.num_hidden_layers
    else:
        layers = text.num_hidden_layers
    return int(layers) + 1


def n_hidden_states(model_cfg: dict) -> int:
    """Number of hidden states the extractor yields: layers + 1 (index 0 = embeddings).

    For a local model the count is kept in ``$BRAINLLM_CACHE_DIR``, keyed by its config.json's
    content: planning a run asks for it, and reading the config through transformers costs
    seconds of imports.
    """
    settings = model_settings(model_cfg)
    cached = _hidden_states_cache_file(settings)
    if cached is not None and cached.is_file():
        try:
            return int(json.loads(cached.read_text())["n_hidden_states"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: counted again and rewritten
    config = load_config(settings)
    family = resolve_family(config, settings["family"])
    count = _count_hidden_states(config, family, settings["t5_states"])
    if cached is not None:
        try:
            write_json(cached, {"n_hidden_states": count})
        except OSError:
            pass  # a read-only cache only costs the next start the same seconds
    return count


HIDDEN_STATES_CACHE_VERSION = 1  # raise when _count_hidden_states or resolve_family change


def _hidden_states_cache_file(settings: dict) -> Path | None:
    """``hidden_states/<key>.json`` in the cache directory for a local model, else None."""
    source = resolve_source(settings["source"])
    config_json = Path(source.location) / "config.json"
    if not source.is_local or settings["trust_remote_code"] or not config_json.is_file():
        return None  # remote code may count its layers in its own files
    key = hashlib.sha256(json.dumps(
        [HIDDEN_STATES_CACHE_VERSION, importlib.metadata.version("transformers"), sha256_file(config_json), settings["family"], settings["t5_states"]]
    ).encode()).hexdigest()[:32]
    return _cache_dir() / "hidden_states" / f"{key}.json"


def build_quantization_config(model_cfg: dict):
    """A transformers ``BitsAndBytesConfig`` for 4-bit (nf4, double quant) or 8-bit, else None."""
    import torch
    from transformers import BitsAndBytesConfig

    settings = model_settings(model_cfg)
    if settings["quantization"] == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, settings["dtype"]),
        )
    if settings["quantization"] == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "device: cuda was requested but no CUDA device is visible.", "Set device: auto or cpu, or run on a GPU node.")
    return device


def _model_classes(config, family: str) -> list:
    """Auto classes to try, the checkpoint's own head first (so adapter names match)."""
    import transformers

    architectures = getattr(config, "architectures", None) or []
    if family == "vision-language":
        return [transformers.AutoModelForImageTextToText, transformers.AutoModel]
    if family == "decoder" and any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return [transformers.AutoModelForCausalLM]
    if family == "encoder-decoder" and any(name.endswith("ForConditionalGeneration") for name in architectures):
        return [transformers.AutoModelForSeq2SeqLM]
    return [transformers.AutoModel]


def text_tower(model, family: str):
    """The module that maps token ids to hidden states (unwraps peft and the LM head).

    Vision-language models: the language model only (``get_decoder()`` or
    ``language_model``). Encoder–decoder models: the whole model (the extractor calls its
    encoder and decoder). Others: ``base_model`` (e.g. ``LlamaForCausalLM.model``).
    """
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        model = model.get_base_model()
    if family == "encoder-decoder":
        return model
    if family == "vision-language":
        tower = None
        if hasattr(model, "get_decoder"):
            tower = model.get_decoder()
        if tower is None or tower is model:
            tower = getattr(model, "language_model", None) or getattr(getattr(model, "model", None), "language_model", None)
        if tower is None:
            raise InputError(None, f"{type(model).__name__}: cannot find the language model of this vision-language model.", "Set family explicitly or use a supported model.")
        model = tower
    while getattr(model, "base_model", model) is not model:
        model = model.base_model
    return model


def _max_positions(config) -> int | None:
    text = _text_config(config)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_loaded(model, loading_info: dict, tower_names: set[str], location: str) -> None:
    missing = sorted(name for name in loading_info.get("missing_keys", ()) if name in tower_names)
    if missing:
        raise InputError(
            location,
            f"{len(missing)} weights of the text model are missing from the checkpoint (e.g. {missing[:3]}); they would be random.",
            "Check that the source is a complete checkpoint of this architecture, or set `family` explicitly.",
        )


def _attach_adapter(model, adapter_dir: Path, merge: bool):
    """Load a peft LoRA adapter onto ``model`` and check that every tensor was applied.

    With ``merge`` the adapter is added into the base weights (inference then costs what the
    base model costs): only float32 weights, where the sum loses nothing the adapter changes;
    half-precision and quantized weights keep it beside them.
    """
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file

    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(peft_model)
    unmatched = [name for name, tensor in saved.items() if name not in loaded or not torch.equal(loaded[name].cpu().to(tensor.dtype), tensor)]
    if unmatched:
        raise InputError(
            adapter_dir,
            f"{len(unmatched)} of {len(saved)} adapter tensors do not match the model (e.g. {unmatched[:2]}).",
            "Use the adapter with the base model (and model class) it was trained on.",
        )
    return peft_model.merge_and_unload() if merge else peft_model


def load_model(model_cfg: dict, adapter_dir: str | os.PathLike | None = None):
    """Load ``(model, tokenizer, info)`` for feature extraction.

    Weights are read with safetensors only; ``trust_remote_code`` only when the entry says
    so; local and package models (and ``HF_HUB_OFFLINE=1``) never reach the network.
    ``adapter_dir`` (default: the entry's ``adapter``) is a peft LoRA adapter applied on
    top of the base weights. Quantization (bitsandbytes) needs a CUDA device; it and
    several visible GPUs place the model with ``device_map="auto"``.
    """
    import torch
    from transformers import AutoTokenizer

    settings = model_settings(model_cfg)
    source = resolve_source(settings["source"])
    config = load_config(settings)
    family = resolve_family(config, settings["family"])
    if settings["context"] == "causal-chunked" and family not in ("decoder", "vision-language"):
        raise InputError(
            None,
            f"model {source.spec}: context causal-chunked needs a causal (decoder) model, this one is {family}.",
            "Use context: per-word for encoder and encoder-decoder models.",
        )
    device = resolve_device(settings["device"])
    quantization = build_quantization_config(settings)
    if quantization is not None and device != "cuda":
        raise InputError(None, f"model {source.spec}: {settings['quantization']} quantization needs a CUDA GPU.", "Set quantization: none on CPU.")
    kwargs = _loading_kwargs(settings, source)
    kwargs.update(use_safetensors=True, dtype=getattr(torch, settings["dtype"]), output_loading_info=True)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    use_device_map = quantization is not None or (device == "cuda" and torch.cuda.device_count() > 1)
    if use_device_map:
        kwargs["device_map"] = "auto"
    classes = _model_classes(config, family)
    for index, model_class in enumerate(classes):
        try:
            model, loading_info = model_class.from_pretrained(source.location, **kwargs)
            break
        except ValueError as error:  # e.g. a remote-code model not registered for this auto class
            if index + 1 < len(classes):
                continue
            raise InputError(source.location, f"cannot load the model ({error}).", "Check the source, revision and `family`.") from error
        except OSError as error:
            raise InputError(source.location, f"cannot load the model ({error}).", "Check the source, revision and that the weights are safetensors.") from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **_loading_kwargs(settings, source))
    except (OSError, ValueError) as error:
        raise InputError(source.location, f"cannot load the tokenizer ({error}).", "Provide the model's tokenizer files (tokenizer.json).") from error
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(source.location, "the tokenizer is not a fast tokenizer (no offset mapping).", "Provide tokenizer.json (a tokenizers fast tokenizer) with the model.")
    tower = text_tower(model, family)
    tower_prefix = {id(module): name for name, module in model.named_modules()}.get(id(tower), "")
    tower_names = {f"{tower_prefix}.{name}" if tower_prefix else name for name, _ in tower.named_parameters()}
    _check_loaded(model, loading_info, tower_names, source.location)
    if not use_device_map:
        model.to(device)

    adapter = adapter_dir if adapter_dir is not None else settings["adapter"]
    adapter_hash = None
    if adapter is not None:
        adapter = Path(adapter).expanduser()
        adapter_hash = adapter_sha256(adapter)
        model = _attach_adapter(model, adapter, merge=quantization is None and settings["dtype"] == "float32")
    model.eval()
    model.requires_grad_(False)

    text = _text_config(config)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    info = ModelInfo(
        model_id=source.spec,
        slug=source.slug,
        source_kind=source.kind,
        location=source.location,
        revision=getattr(config, "_commit_hash", None) if source.kind == "hub" else None,
        weights_sha256=directory_sha256(source.location) if source.is_local else None,
        adapter=None if adapter is None else str(adapter),
        adapter_sha256=adapter_hash,
        family=family,
        t5_states=settings["t5_states"],
        n_hidden_states=_count_hidden_states(config, family, settings["t5_states"]),
        hidden_size=int(getattr(text, "hidden_size", None) or text.d_model),
        dtype=settings["dtype"],
        quantization=settings["quantization"],
        device=str(text_tower(model, family).get_input_embeddings().weight.device),
        max_positions=_max_positions(config),
        pad_token_id=int(pad_id),
        decoder_start_token_id=getattr(text, "decoder_start_token_id", None),
    )
    logger.info(
        "loaded %s (%s, %s, %d hidden states of width %d) on %s, dtype %s, quantization %s%s",
        source.spec, source.kind, family, info.n_hidden_states, info.hidden_size, info.device,
        info.dtype, info.quantization, f", adapter {adapter}" if adapter else "",
    )
    return model, tokenizer, info
