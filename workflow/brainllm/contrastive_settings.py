"""Settings of the contrastive stage, story splits and recipe hashes (no torch: used when the DAG is built).

:data:`DEFAULTS` mirrors the ``contrastive`` section of workflow/schemas/config.schema.yaml;
config/README.md explains every key.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .io import InputError, sha256_text

__all__ = [
    "DEFAULTS",
    "resolve_settings",
    "story_split",
    "recipe_sha256",
    "frozen_section",
    "lora_section",
    "tuned_model_name",
    "lora_recipe_sha256",
    "tuned_model_config",
    "SharedEncoderSettings",
    "shared_encoder_settings",
]

DEFAULTS: dict = {
    "layers": [3],
    "segment_trs": 1,
    "stride_trs": None,
    "delays": [1, 2, 3, 4],
    "delay_mode": "concat",
    "validation_story": None,
    "voxel_fraction": None,
    "words": {"enabled": False, "weight": 1.0},
    "shared_dim": 128,
    "brain_encoder": {"kind": "mlp", "hidden": 256, "n_blocks": 1, "dropout": 0.3},
    "text_projector": {"kind": "linear", "hidden": 512, "n_blocks": 1, "dropout": 0.1},
    "temperature_init": 0.07,
    "logit_scale_max": 100.0,
    "soft_targets": {"enabled": False, "temperature": 0.1},
    "mixup": {"enabled": False, "beta": 0.15, "epochs_fraction": 0.33},
    "epochs": 40,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "warmup_fraction": 0.05,
    "patience": 8,
    "eval": {"n_candidates": 50, "n_draws": 30, "n_train_pairs": 128},
    "seed": 0,
    "device": "auto",
    "lora": {
        "enabled": False,
        "layer": 3,
        "context_words": 10,
        "rank": 8,
        "alpha": 16,
        "dropout": 0.05,
        "mlp": False,
        "target_modules": None,
        "quantization": "none",
        "gradient_checkpointing": False,
        "truncate_layers": True,
        "max_tokens": 512,
        "epochs": 4,
        "batch_size": 32,
        "lr": 5e-4,
        "patience": 3,
    },
}

# mirror of the schema's enums, checked here too so the package is safe to call directly
_CHOICES = {
    "delay_mode": ("concat", "mean"),
    "device": ("auto", "cpu", "cuda"),
    "kind": ("linear", "mlp"),
    "quantization": ("none", "4bit"),
}


def _merge(defaults: Mapping, given: Mapping, where: str) -> dict:
    merged = copy.deepcopy(dict(defaults))
    for key, value in given.items():
        if key not in defaults:
            raise InputError(None, f"unknown key {where}{key} (known: {', '.join(defaults)}).", "fix its spelling in the config.")
        if isinstance(defaults[key], dict) and isinstance(value, Mapping):
            merged[key] = _merge(defaults[key], value, f"{where}{key}.")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_settings(contrastive_cfg: Mapping | None) -> dict:
    """The ``contrastive:`` config section over :data:`DEFAULTS`, checked."""
    settings = _merge(DEFAULTS, contrastive_cfg or {}, "contrastive.")
    checks = [
        ("delay_mode", settings["delay_mode"], _CHOICES["delay_mode"]),
        ("device", settings["device"], _CHOICES["device"]),
        ("brain_encoder.kind", settings["brain_encoder"]["kind"], _CHOICES["kind"]),
        ("text_projector.kind", settings["text_projector"]["kind"], _CHOICES["kind"]),
        ("lora.quantization", settings["lora"]["quantization"], _CHOICES["quantization"]),
    ]
    for key, value, allowed in checks:
        if value not in allowed:
            raise InputError(None, f"contrastive.{key} is {value!r}.", f"use one of {', '.join(allowed)}.")
    if settings["segment_trs"] < 1 or (settings["stride_trs"] is not None and settings["stride_trs"] < 1):
        raise InputError(None, "contrastive.segment_trs and stride_trs must be >= 1.", "set positive TR counts.")
    if not settings["delays"] or min(settings["delays"]) < 0:
        raise InputError(None, f"contrastive.delays {settings['delays']} must be a non-empty list of TRs >= 0.", "e.g. [1, 2, 3, 4].")
    fraction = settings["voxel_fraction"]
    if fraction is not None and not 0 < fraction <= 1:
        raise InputError(None, f"contrastive.voxel_fraction is {fraction}.", "use a share in (0, 1], or null for every voxel.")
    if settings["words"]["weight"] <= 0:
        raise InputError(None, f"contrastive.words.weight is {settings['words']['weight']}.", "use a positive weight, or words.enabled: false.")
    if settings["batch_size"] < 2 or settings["lora"]["batch_size"] < 2:
        raise InputError(None, "contrastive batch sizes must be >= 2 (a batch holds the negatives).", "raise batch_size.")
    return settings


def story_split(train_stories: Sequence[str], test_stories: Sequence[str], validation_story: str | None,
                section: str = "contrastive") -> dict[str, list[str]]:
    """``{"train", "validation", "test"}`` story lists; validation = one training story (default: the last).

    ``section`` is the config section named in errors (its ``validation_story`` key).
    """
    train_stories, test_stories = list(train_stories), list(test_stories)
    overlap = sorted(set(train_stories) & set(test_stories))
    if overlap:
        raise InputError(None, f"stories {overlap} are both training and test stories.", "list each story once in dataset.train_stories or test_stories.")
    if len(train_stories) < 2:
        raise InputError(None, f"{section.split('.')[0]} training needs >= 2 training stories (one is the validation story).", "add training stories.")
    validation = train_stories[-1] if validation_story is None else validation_story
    if validation not in train_stories:
        raise InputError(
            None, f"{section}.validation_story {validation!r} is not a training story.",
            f"choose one of {', '.join(train_stories)} (or null for the last one).",
        )
    split = {"train": [s for s in train_stories if s != validation], "validation": [validation], "test": test_stories}
    assert not set(split["train"]) & (set(split["validation"]) | set(split["test"]))
    return split


def recipe_sha256(recipe: Mapping) -> str:
    """Hash of everything that determines a training run (settings, data identity, seed)."""
    return sha256_text(json.dumps(recipe, sort_keys=True, default=str))


# keys that only the frozen-feature mode uses (the LoRA mode has its own under `lora`)
FROZEN_ONLY_KEYS = ("layers", "epochs", "batch_size", "lr", "patience", "voxel_fraction", "words")
# frozen-mode keys of a single subject's run that the shared encoder does not take over
SINGLE_RUN_KEYS = ("voxel_fraction", "words")


def frozen_section(contrastive_cfg: Mapping) -> dict:
    """The settings the frozen-feature mode depends on (all but ``lora``)."""
    return {key: value for key, value in contrastive_cfg.items() if key != "lora"}


def lora_section(contrastive_cfg: Mapping) -> dict:
    """The settings the LoRA mode depends on (all but the frozen-only keys)."""
    return {key: value for key, value in contrastive_cfg.items() if key not in FROZEN_ONLY_KEYS}


# dataset keys that identify the data a LoRA adapter was trained on
RECIPE_DATASET_KEYS = ("name", "layout", "root", "train_stories", "test_stories", "tr", "trim_start", "trim_end")


def tuned_model_name(model: str, subject: str) -> str:
    """Model name of the brain-tuned variant of ``model`` for ``subject``: ``<model>tuned<subject>``."""
    return f"{model}tuned{subject}"


def lora_recipe_sha256(model_cfg: Mapping, contrastive_cfg: Mapping | None, subject: str, dataset_cfg: Mapping) -> str:
    """Hash of a LoRA adapter's training recipe: base model settings, contrastive settings, subject, data.

    Known before training, so it keys the tuned model's feature-store entries when the
    DAG is built (the entries record the adapter weights' sha256 in their attributes).
    """
    settings = lora_section(resolve_settings(contrastive_cfg))
    base = {key: value for key, value in model_cfg.items() if key not in ("adapter", "adapter_recipe")}
    data = {key: dataset_cfg.get(key) for key in RECIPE_DATASET_KEYS}
    return recipe_sha256({"base_model": base, "settings": settings, "subject": subject, "dataset": data})


def tuned_model_config(model_cfg: Mapping, contrastive_cfg: Mapping | None, subject: str, dataset_cfg: Mapping, adapter_dir: str) -> dict:
    """The base model's config plus ``adapter`` (directory) and ``adapter_recipe`` (store key)."""
    return {
        **copy.deepcopy(dict(model_cfg)),
        "adapter": adapter_dir,
        "adapter_recipe": lora_recipe_sha256(model_cfg, contrastive_cfg, subject, dataset_cfg),
    }


# ----------------------------------------------------------------------------- shared encoder (group.shared_encoder)

# contrastive keys that define the pairs and how they are scored: the shared encoder keeps the
# contrastive section's, so that it and the single-subject models are scored on the same test pairs
PAIR_KEYS = ("segment_trs", "stride_trs", "delays", "delay_mode", "validation_story", "eval")
# the shared encoder's own keys (the others are contrastive training keys it may set differently)
SHARED_ENCODER_KEYS = {"held_out_subjects": None, "input_width": 256, "n_permutations": 1000, "min_shift_trs": 10}


@dataclass(frozen=True)
class SharedEncoderSettings:
    """``group.shared_encoder`` resolved (config/README.md): the subjects' roles and the training settings."""

    train_subjects: tuple[str, ...]
    held_out_subjects: tuple[str, ...]
    input_width: int  # width of every subject's input layer, the shared brain tower's input
    n_permutations: int  # circular shifts of the test pairs in the null of the mean percentile rank
    min_shift_trs: int  # smallest shift of that null (TRs)
    contrastive: dict  # contrastive settings (resolve_settings) with the section's training keys on top


def shared_encoder_settings(section: Mapping | None, contrastive_cfg: Mapping | None, subjects: Sequence[str]) -> SharedEncoderSettings:
    """``group.shared_encoder`` over the ``contrastive`` section (``enabled``/``keep_checkpoints`` removed) for ``subjects``.

    Held-out subjects default to the last subject; two or more subjects must remain to train.
    """
    section = dict(section or {})
    subjects = [str(subject) for subject in subjects]
    own = {key: section.pop(key, default) for key, default in SHARED_ENCODER_KEYS.items()}
    fixed = sorted(set(section) & set(PAIR_KEYS))
    if fixed:
        raise InputError(
            None, f"group.shared_encoder sets {', '.join(fixed)}, which define the contrastive pairs and their scoring; the shared "
            "encoder keeps the contrastive section's so that it is scored on the same test pairs as the single-subject models.",
            f"set {', '.join(fixed)} in the contrastive section, or remove them from group.shared_encoder.",
        )
    if "lora" in section:
        raise InputError(None, "group.shared_encoder.lora: the shared encoder trains on frozen LLM features.", "remove lora from group.shared_encoder.")
    single_only = sorted(set(section) & set(SINGLE_RUN_KEYS))
    if single_only:
        raise InputError(None, f"group.shared_encoder sets {', '.join(single_only)}, which only single-subject runs use: the shared "
                         "encoder reads every voxel of each subject through its own input layer and trains on the pairs alone.",
                         f"remove {', '.join(single_only)} from group.shared_encoder.")
    inherited = {key: value for key, value in resolve_settings(contrastive_cfg).items() if key not in SINGLE_RUN_KEYS}
    settings = _merge(inherited, section, "group.shared_encoder.")
    settings = resolve_settings({key: value for key, value in settings.items() if key != "lora"})
    held_out = [subjects[-1]] if own["held_out_subjects"] is None else [str(s) for s in own["held_out_subjects"]]
    unknown = sorted(set(held_out) - set(subjects))
    if unknown:
        raise InputError(None, f"group.shared_encoder.held_out_subjects {unknown} are not in dataset.subjects ({', '.join(subjects)}).",
                         "list subjects of dataset.subjects (null = the last one; [] = no held-out subject).")
    train = [subject for subject in subjects if subject not in held_out]
    if len(train) < 2:
        raise InputError(
            None, f"group.shared_encoder trains on the subjects not held out, and {len(train)} remain ({', '.join(train) or 'none'}) "
            f"of dataset.subjects {subjects} with held_out_subjects {held_out}.",
            "hold out fewer subjects (held_out_subjects: [] holds none out), add subjects, or leave group.shared_encoder out.",
        )
    return SharedEncoderSettings(tuple(train), tuple(held_out), int(own["input_width"]), int(own["n_permutations"]),
                                 int(own["min_shift_trs"]), frozen_section(settings))
