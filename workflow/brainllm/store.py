"""The feature store: one HDF5 file of every layer's word states per (model, settings, story).

Layout: ``<store>/<model-slug>/<settings-hash>/<story>.h5`` with datasets ``layer_00 …``
(n_words, hidden), ``words``, ``onset``, ``offset`` and attributes describing how the
states were made. The settings hash covers everything that changes the numbers (source,
revision or weight hash, adapter hash or training recipe, family, t5_states, dtype, quantization, context,
context_words, pooling, store_dtype, extractor version) and nothing that does not
(batch_size, device, layers). Entries are written to a temporary name and renamed, and
read without HDF5 file locking.

Command line::

    python -m brainllm.store ls PATH                 # entries under a store (or one file)
    python -m brainllm.store verify PATH [--words words.tsv]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np

from brainllm.io import InputError, atomic_path, open_h5, sha256_file
from brainllm.models import (
    EXTRACTOR_VERSION,
    FEATURE_SETTINGS,
    adapter_sha256,
    directory_sha256,
    model_settings,
    resolve_source,
)

SETTINGS_HASH_LENGTH = 12


def layer_name(index: int) -> str:
    return f"layer_{index:02d}"


@dataclasses.dataclass
class FeatureEntry:
    """One story's stored states: ``layers[i]`` is (n_words, hidden) float32."""

    layers: dict[int, np.ndarray]
    words: list[str]
    onset: np.ndarray  # (n_words,) seconds from scan start
    offset: np.ndarray  # (n_words,) seconds from scan start
    attrs: dict


def entry_settings(model_cfg: dict) -> dict:
    """The settings that identify stored features (hashed into the store path).

    Local and package models are identified by the content hash of their files (not their
    path, so copies at different places share entries); hub models by id and revision.
    An adapter is identified by its files' hash, or by ``adapter_recipe`` when the
    workflow trains it (the files do not exist yet when the run is planned).
    """
    settings = model_settings(model_cfg)
    source = resolve_source(settings["source"])
    adapter_hash = None
    if settings["adapter"] is not None and settings["adapter_recipe"] is None:
        adapter_hash = adapter_sha256(settings["adapter"])
    identity = {
        "extractor_version": EXTRACTOR_VERSION,
        "source": None if source.kind == "local" else source.spec,
        "revision": None if source.is_local else settings["revision"],
        "weights_sha256": directory_sha256(source.location) if source.is_local else None,
        "adapter_sha256": adapter_hash,
        "adapter_recipe": settings["adapter_recipe"],
    }
    identity.update({key: settings[key] for key in FEATURE_SETTINGS})
    return identity


def settings_hash(model_cfg: dict) -> str:
    text = json.dumps(entry_settings(model_cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:SETTINGS_HASH_LENGTH]


def entry_dir(store_dir: str | os.PathLike, model_cfg: dict) -> Path:
    """``store_dir/<model-slug>/<settings-hash>``."""
    slug = resolve_source(model_settings(model_cfg)["source"]).slug
    return Path(store_dir) / slug / settings_hash(model_cfg)


def entry_path(store_dir: str | os.PathLike, model_cfg: dict, story: str) -> Path:
    """``store_dir/<model-slug>/<settings-hash>/<story>.h5``."""
    return entry_dir(store_dir, model_cfg) / f"{story}.h5"


def _attr_value(value):
    """HDF5 attributes cannot hold None: store it as an empty string (the exact values are
    kept in the JSON attribute ``metadata``)."""
    if value is None:
        return ""
    return str(value) if isinstance(value, str) else value  # plain str: h5py rejects str subclasses


def write_entry(
    path: str | os.PathLike,
    layers: list[np.ndarray],
    words: list[str],
    onset: np.ndarray,
    offset: np.ndarray,
    attrs: dict,
    store_dtype: str = "float32",
) -> None:
    """Write one entry atomically: ``layers[i]`` (n_words, hidden) becomes ``layer_ii``."""
    n_words = len(words)
    if not layers:
        raise ValueError("no layers to store")
    for index, states in enumerate(layers):
        if states.ndim != 2 or states.shape[0] != n_words:
            raise ValueError(f"layer {index}: shape {states.shape} does not match {n_words} words")
    metadata = {**attrs, "n_words": n_words, "n_layers": len(layers), "store_dtype": store_dtype}
    with atomic_path(path) as tmp:
        with open_h5(tmp, "w") as handle:
            for index, states in enumerate(layers):
                handle.create_dataset(layer_name(index), data=np.asarray(states, dtype=store_dtype))
            handle.create_dataset("words", data=np.array(words, dtype=object), dtype=h5py.string_dtype())
            handle.create_dataset("onset", data=np.asarray(onset, dtype=np.float64))
            handle.create_dataset("offset", data=np.asarray(offset, dtype=np.float64))
            for key, value in metadata.items():
                handle.attrs[key] = _attr_value(value)
            handle.attrs["metadata"] = json.dumps(metadata, sort_keys=True)


def _stored_layer_indices(handle) -> list[int]:
    return sorted(int(name.split("_", 1)[1]) for name in handle if name.startswith("layer_"))


def read_entry(
    path: str | os.PathLike,
    words_tsv: str | os.PathLike | None = None,
    layers: list[int] | None = None,
) -> FeatureEntry:
    """Read an entry (all layers, or the listed hidden-state indices) as float32.

    When ``words_tsv`` is given its sha256 must equal the one the entry was computed from.
    Raises InputError for a missing, corrupt, incomplete, non-finite or mismatched entry.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "feature store entry not found.", "Run the `features` rule for this model and story.")
    try:
        with open_h5(path) as handle:
            metadata = json.loads(handle.attrs["metadata"])
            n_layers = int(metadata["n_layers"])
            n_words = int(metadata["n_words"])
            stored = _stored_layer_indices(handle)
            if stored != list(range(n_layers)):
                raise InputError(path, f"incomplete entry: layers {stored} stored, {n_layers} expected.", "Delete the entry and rerun the `features` rule.")
            wanted = list(range(n_layers)) if layers is None else [int(i) for i in layers]
            absent = [i for i in wanted if not 0 <= i < n_layers]
            if absent:
                raise InputError(path, f"layers {absent} requested, the entry holds hidden states 0..{n_layers - 1}.", "Choose layers within that range (0 = embeddings).")
            states = {i: handle[layer_name(i)][()].astype(np.float32, copy=False) for i in wanted}
            words = [w.decode("utf-8") if isinstance(w, bytes) else str(w) for w in handle["words"][()]]
            onset = handle["onset"][()]
            offset = handle["offset"][()]
    except InputError:
        raise
    except (OSError, KeyError, ValueError) as error:
        raise InputError(path, f"unreadable or corrupt feature store entry ({error}).", "Delete the entry and rerun the `features` rule.") from error
    widths = {array.shape[1] for array in states.values()}
    if len(words) != n_words or onset.shape != (n_words,) or offset.shape != (n_words,):
        raise InputError(path, f"inconsistent entry: {len(words)} words, {onset.shape} onsets, {offset.shape} offsets, {n_words} expected.", "Delete the entry and rerun the `features` rule.")
    for index, array in states.items():
        if array.shape[0] != n_words or len(widths) != 1:
            raise InputError(path, f"{layer_name(index)} has shape {array.shape}, expected ({n_words}, hidden) like every layer.", "Delete the entry and rerun the `features` rule.")
        if not np.isfinite(array).all():
            raise InputError(path, f"{layer_name(index)} holds non-finite values.", "Delete the entry and rerun (use dtype float32 or bfloat16 if float16 overflows).")
    if words_tsv is not None:
        current = sha256_file(words_tsv)
        if current != metadata.get("words_sha256"):
            raise InputError(
                path,
                f"computed from a different words.tsv (sha256 {str(metadata.get('words_sha256'))[:12]}…, {words_tsv} now has {current[:12]}…).",
                "The story's words changed: delete this entry (or run snakemake with --forcerun features) to recompute it.",
            )
    return FeatureEntry(layers=states, words=words, onset=onset, offset=offset, attrs=metadata)


def iter_entries(path: str | os.PathLike) -> list[Path]:
    """Entry files under a store directory (or the file itself); temporary files skipped."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.h5") if not p.name.startswith("."))


def _describe(path: Path, metadata: dict) -> str:
    return (
        f"{path}  words={metadata['n_words']} layers={metadata['n_layers']} hidden={metadata.get('hidden_size')} "
        f"model={metadata.get('model_id')} family={metadata.get('family')} context={metadata.get('context')}"
        f"/{metadata.get('context_words')} pooling={metadata.get('pooling')} dtype={metadata.get('dtype')} "
        f"quantization={metadata.get('quantization')} store_dtype={metadata.get('store_dtype')}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brainllm.store", description="List or verify feature store entries.")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list entries with their settings")
    ls.add_argument("path", help="store directory or one entry file")
    verify = sub.add_parser("verify", help="check entries: readable, all layers, consistent shapes, finite")
    verify.add_argument("path", help="store directory or one entry file")
    verify.add_argument("--words", help="words.tsv the entry (or entries) must have been computed from")
    args = parser.parse_args(argv)

    entries = iter_entries(args.path)
    if not entries:
        print(f"{args.path}: no entries", file=sys.stderr)
        return 1
    bad = 0
    for path in entries:
        try:
            if args.command == "ls":
                with open_h5(path) as handle:
                    metadata = json.loads(handle.attrs["metadata"])
                print(_describe(path, metadata))
            else:
                entry = read_entry(path, words_tsv=args.words)
                print(f"OK   {path}  ({entry.attrs['n_words']} words, {entry.attrs['n_layers']} layers)")
        except (InputError, OSError, KeyError, ValueError) as error:
            bad += 1
            print(f"BAD  {path}: {error}")
    if args.command == "verify":
        print(f"{len(entries) - bad} ok, {bad} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
