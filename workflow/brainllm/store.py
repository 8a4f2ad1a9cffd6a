"""The feature store: a shared cache of every layer's word states per (model, settings, story).

Layout: ``<store>/<model-slug>/<settings-hash>/<story>-<words-hash>.h5`` with datasets
``layer_00 …`` (n_words, hidden), ``words``, ``onset``, ``offset`` and attributes
describing how the states were made. The settings hash covers everything that changes
the numbers (source, revision or weight hash, adapter content hash, family, t5_states,
dtype, quantization, context, context_words, pooling, store_dtype, extractor version)
and nothing that does not (batch_size, device, layers); the words hash is the sha256 of
the story's words and timings. An entry is therefore never replaced: a changed setting
or changed words is a new file.

Every layer carries the xxh3-128 hash of its stored bytes, checked whenever it is read;
the words carry a sha256 checked against the entry's own datasets. Links, external
storage and objects other than the expected datasets are refused. A missing entry is
computed under an advisory lock next to it (``.<entry>.lock``), so concurrent runs
compute it once; it is written to a temporary name and renamed. A run's own output is a
small JSON manifest naming the entry and its content id (``write_manifest``), so
Snakemake never deletes a shared file.

Command line::

    python -m brainllm.store ls PATH                     # entries with every key setting
    python -m brainllm.store verify PATH [--words words.tsv]
    python -m brainllm.store gc STORE [--older-than HOURS] [--manifests DIR ...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import getpass
import hashlib
import json
import logging
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
import xxhash

from brainllm.io import InputError, atomic_path, open_h5, read_words, write_json
from brainllm.models import (
    EXTRACTOR_VERSION,
    FEATURE_SETTINGS,
    adapter_sha256,
    directory_sha256,
    model_settings,
    resolve_source,
)

logger = logging.getLogger(__name__)

SETTINGS_HASH_LENGTH = 12
WORDS_HASH_LENGTH = 12
STORE_FORMAT = 2
STALE_LOCK_S = 6 * 3600.0  # lock files are taken over after this long (file systems without flock)
STALE_TMP_S = 24 * 3600.0  # `store gc` removes temporaries older than this
LOCK_POLL_S = 2.0
DATA_NAMES = ("words", "onset", "offset")
RECOMPUTE = "Move the entry out of the store (`python -m brainllm.store verify` lists damaged entries) and rerun the `features` rule."


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
    path: Path


# ---------------------------------------------------------------- keys and paths


def entry_settings(model_cfg: dict) -> dict:
    """The settings that identify stored features (hashed into the store path).

    Local and package models are identified by the content hash of their files (not their
    path, so copies at different places share entries); hub models by id and revision;
    an adapter by the content hash of its files (which must exist).
    """
    settings = model_settings(model_cfg)
    source = resolve_source(settings["source"])
    identity = {
        "extractor_version": EXTRACTOR_VERSION,
        "source": None if source.kind == "local" else source.spec,
        "revision": None if source.is_local else settings["revision"],
        "weights_sha256": directory_sha256(source.location) if source.is_local else None,
        "adapter_sha256": adapter_sha256(settings["adapter"]) if settings["adapter"] is not None else None,
    }
    identity.update({key: settings[key] for key in FEATURE_SETTINGS})
    if settings["word_separator"] != " ":  # keyed only when not the default, so entries made before the setting stay valid
        identity["word_separator"] = settings["word_separator"]
    return identity


def settings_hash(model_cfg: dict) -> str:
    text = json.dumps(entry_settings(model_cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:SETTINGS_HASH_LENGTH]


def entry_dir(store_dir: str | os.PathLike, model_cfg: dict) -> Path:
    """``store_dir/<model-slug>/<settings-hash>``."""
    slug = resolve_source(model_settings(model_cfg)["source"]).slug
    return Path(store_dir) / slug / settings_hash(model_cfg)


def entry_name(story: str, words_sha256: str) -> str:
    return f"{story}-{words_sha256[:WORDS_HASH_LENGTH]}.h5"


def entry_path(store_dir: str | os.PathLike, model_cfg: dict, story: str, words_sha256: str) -> Path:
    """``store_dir/<model-slug>/<settings-hash>/<story>-<words-hash>.h5``."""
    return entry_dir(store_dir, model_cfg) / entry_name(story, words_sha256)


def words_sha256(words, onset, offset) -> str:
    """sha256 of a story's words and timings (the same for a words.tsv and the entry made from it)."""
    digest = hashlib.sha256()
    digest.update("\n".join(str(word) for word in words).encode("utf-8") + b"\0")
    digest.update(np.ascontiguousarray(onset, dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(offset, dtype="<f8").tobytes())
    return digest.hexdigest()


def words_tsv_sha256(words_tsv: str | os.PathLike) -> str:
    frame = read_words(words_tsv)
    return words_sha256(frame["word"].tolist(), frame["onset"].to_numpy(), frame["offset"].to_numpy())


def layer_hash(array: np.ndarray) -> str:
    """xxh3-128 of an array's bytes as stored (little-endian, C order)."""
    stored = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return xxhash.xxh3_128_hexdigest(memoryview(stored).cast("B"))


def content_id(words_hash: str, layer_hashes: list[str], store_dtype: str) -> str:
    """One id for an entry's numbers: the manifest records it, readers compare it."""
    text = json.dumps([words_hash, layer_hashes, store_dtype])
    return hashlib.sha256(text.encode()).hexdigest()


def provenance() -> dict:
    """Who wrote an entry, where and when."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"host": socket.gethostname(), "user": user, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "workdir": os.getcwd()}


# ---------------------------------------------------------------- writing


def _attr_value(value):
    """HDF5 attributes cannot hold None: store it as an empty string (the exact values are
    kept in the JSON attribute ``metadata``)."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value) if isinstance(value, str) else value  # plain str: h5py rejects str subclasses


def write_entry(
    path: str | os.PathLike,
    layers: list[np.ndarray],
    words: list[str],
    onset: np.ndarray,
    offset: np.ndarray,
    attrs: dict,
    store_dtype: str = "float32",
) -> dict:
    """Write one entry atomically: ``layers[i]`` (n_words, hidden) becomes ``layer_ii``.

    Adds the content hashes and provenance to ``attrs``; returns the entry's metadata.
    Non-finite states are refused, so a layer whose hash matches on read is finite.
    """
    n_words = len(words)
    if not layers:
        raise ValueError("no layers to store")
    for index, states in enumerate(layers):
        if states.ndim != 2 or states.shape[0] != n_words:
            raise ValueError(f"layer {index}: shape {states.shape} does not match {n_words} words")
    onset = np.asarray(onset, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    stored = [np.asarray(states, dtype=store_dtype) for states in layers]
    for index, states in enumerate(stored):
        if not np.isfinite(states).all():
            raise InputError(path, f"{layer_name(index)} holds non-finite values.", "Use dtype float32 or bfloat16 (float16 overflows for some models) and rerun.")
    hashes = [layer_hash(states) for states in stored]
    words_hash = words_sha256(words, onset, offset)
    metadata = {
        **provenance(),
        **attrs,
        "store_format": STORE_FORMAT,
        "n_words": n_words,
        "n_layers": len(layers),
        "store_dtype": store_dtype,
        "words_content_sha256": words_hash,
        "content_id": content_id(words_hash, hashes, store_dtype),
    }
    with atomic_path(path) as tmp:
        with open_h5(tmp, "w") as handle:
            for index, states in enumerate(stored):
                dataset = handle.create_dataset(layer_name(index), data=states)
                dataset.attrs["xxh3_128"] = hashes[index]
            handle.create_dataset("words", data=np.array(words, dtype=object), dtype=h5py.string_dtype())
            handle.create_dataset("onset", data=onset)
            handle.create_dataset("offset", data=offset)
            for key, value in metadata.items():
                handle.attrs[key] = _attr_value(value)
            handle.attrs["metadata"] = json.dumps(metadata, sort_keys=True)
    return metadata


# ---------------------------------------------------------------- reading and verifying


def _stored_layer_indices(handle) -> list[int]:
    return sorted(int(name.split("_", 1)[1]) for name in handle if name.startswith("layer_"))


def _check_structure(path: Path, handle) -> None:
    """Only hard-linked, internally stored datasets named layer_NN, words, onset, offset."""
    for name in handle:
        link = handle.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise InputError(path, f"object {name!r} is a {type(link).__name__}; an entry holds its data itself.", RECOMPUTE)
        item = handle[name]
        expected = name in DATA_NAMES or (name.startswith("layer_") and name[6:].isdigit())
        if not isinstance(item, h5py.Dataset) or not expected:
            raise InputError(path, f"unexpected object {name!r} ({type(item).__name__}) in a feature store entry.", RECOMPUTE)
        if item.external or item.is_virtual:
            raise InputError(path, f"dataset {name!r} points at data outside the entry (external or virtual storage).", RECOMPUTE)


def _decode_words(values) -> list[str]:
    return [w.decode("utf-8") if isinstance(w, bytes) else str(w) for w in values]


def _read(path: Path, layers: list[int] | None, keep: bool) -> FeatureEntry:
    """Open, check structure, hashes and shapes; keep the wanted layers (or none)."""
    if not path.is_file():
        raise InputError(path, "feature store entry not found.", "Run the `features` rule for this model and story.")
    try:
        with open_h5(path) as handle:
            metadata = json.loads(handle.attrs["metadata"])
            if metadata.get("store_format") != STORE_FORMAT:
                raise InputError(path, f"store format {metadata.get('store_format')!r}, this version reads {STORE_FORMAT}.", "Rerun the `features` rule (a new entry is written beside it).")
            _check_structure(path, handle)
            n_layers = int(metadata["n_layers"])
            n_words = int(metadata["n_words"])
            stored = _stored_layer_indices(handle)
            if stored != list(range(n_layers)):
                raise InputError(path, f"incomplete entry: layers {stored} stored, {n_layers} expected.", RECOMPUTE)
            wanted = list(range(n_layers)) if layers is None else sorted({int(i) for i in layers})
            absent = [i for i in wanted if not 0 <= i < n_layers]
            if absent:
                raise InputError(path, f"layers {absent} requested, the entry holds hidden states 0..{n_layers - 1}.", "Choose layers within that range (0 = embeddings).")
            words = _decode_words(handle["words"][()])
            onset = handle["onset"][()]
            offset = handle["offset"][()]
            if len(words) != n_words or onset.shape != (n_words,) or offset.shape != (n_words,):
                raise InputError(path, f"inconsistent entry: {len(words)} words, {onset.shape} onsets, {offset.shape} offsets, {n_words} expected.", RECOMPUTE)
            if words_sha256(words, onset, offset) != metadata["words_content_sha256"]:
                raise InputError(path, "the stored words or timings do not match the entry's recorded words hash.", RECOMPUTE)
            states, hashes, width = {}, [], None
            # Each layer is hashed on a second thread (xxhash releases the GIL) while the
            # next one is read, so verification adds little to the read time.
            with ThreadPoolExecutor(max_workers=1) as hasher:
                pending = []
                for index in (wanted if keep else range(n_layers)):
                    dataset = handle[layer_name(index)]
                    array = dataset[()]
                    if array.ndim != 2 or array.shape[0] != n_words or (width is not None and array.shape[1] != width):
                        raise InputError(path, f"{layer_name(index)} has shape {array.shape}, expected ({n_words}, hidden) like every layer.", RECOMPUTE)
                    width = array.shape[1]
                    pending.append((index, dataset.attrs.get("xxh3_128"), hasher.submit(layer_hash, array)))
                    if keep:  # float16 entries: converted now, the hasher holds the stored array until it is hashed
                        states[index] = array.astype(np.float32, copy=False)
                for index, recorded, computed in pending:
                    if computed.result() != recorded:
                        raise InputError(path, f"{layer_name(index)}: its bytes do not match the stored hash (the file was modified or damaged).", RECOMPUTE)
                    hashes.append(recorded)
            if len(hashes) == n_layers and content_id(metadata["words_content_sha256"], hashes, metadata["store_dtype"]) != metadata["content_id"]:
                raise InputError(path, "the layers' hashes do not match the entry's content id.", RECOMPUTE)
    except InputError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise InputError(path, f"unreadable or corrupt feature store entry ({error}).", RECOMPUTE) from error
    return FeatureEntry(layers=states, words=words, onset=onset, offset=offset, attrs=metadata, path=path)


def _check_words(entry: FeatureEntry, words_tsv) -> None:
    current = words_tsv_sha256(words_tsv)
    if current != entry.attrs["words_content_sha256"]:
        raise InputError(
            entry.path,
            f"computed from other words (sha256 {entry.attrs['words_content_sha256'][:12]}…; {words_tsv} now holds {current[:12]}…).",
            "The story's words changed: rerun the `features` rule (snakemake does this when words.tsv changes), which stores a new entry.",
        )


def read_manifest(path: str | os.PathLike) -> dict:
    """A features manifest (results/features/<model>/<story>.json), checked for its keys."""
    try:
        manifest = json.loads(Path(path).read_text())
        Path(manifest["entry"]), str(manifest["content_id"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(path, f"unreadable features manifest ({error}).", "Rerun the `features` rule for this model and story.") from error
    return manifest


def read_entry(
    path: str | os.PathLike,
    words_tsv: str | os.PathLike | None = None,
    layers: list[int] | None = None,
) -> FeatureEntry:
    """Read an entry (all layers, or the listed hidden-state indices) as float32.

    ``path`` is an entry or a features manifest naming one (its content id must match).
    Each layer read is checked against its stored hash; when ``words_tsv`` is given, its
    words must be the ones the entry was computed from. Raises InputError for a missing,
    corrupt, modified, incomplete or mismatched entry.
    """
    path = Path(path)
    manifest = read_manifest(path) if path.suffix == ".json" else None
    entry = _read(Path(manifest["entry"]) if manifest else path, layers, keep=True)
    if manifest and entry.attrs["content_id"] != manifest["content_id"]:
        raise InputError(path, f"names {entry.path}, whose content changed since this manifest was written.", "Rerun the `features` rule (snakemake --forcerun features).")
    if words_tsv is not None:
        _check_words(entry, words_tsv)
    return entry


def verify_entry(path: str | os.PathLike, words_tsv: str | os.PathLike | None = None) -> dict:
    """Check every layer of an entry (one at a time), its words and its place in the store."""
    path = Path(path)
    entry = _read(path, None, keep=False)
    story = entry.attrs.get("story")
    if story is not None and path.name != entry_name(story, entry.attrs["words_content_sha256"]):
        raise InputError(path, f"the entry holds story {story!r} (words {entry.attrs['words_content_sha256'][:12]}) but is named {path.name}.", RECOMPUTE)
    recorded = entry.attrs.get("settings_hash")
    if recorded is not None and path.parent.name != recorded:
        raise InputError(path, f"the entry was made with settings {recorded} but lies in {path.parent}.", RECOMPUTE)
    if words_tsv is not None:
        _check_words(entry, words_tsv)
    return entry.attrs


# ---------------------------------------------------------------- locking and caching


def _holder() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(timezone.utc).isoformat(timespec='seconds')}"


@contextlib.contextmanager
def entry_lock(path: str | os.PathLike, stale_s: float = STALE_LOCK_S, poll_s: float = LOCK_POLL_S, log: logging.Logger = logger) -> Iterator[None]:
    """Hold the advisory lock ``.<entry>.lock`` beside an entry.

    ``flock`` on the lock file (NFSv4, Lustre mounted with ``flock``, local disks): the
    kernel releases it when the holder dies. Where the file system refuses ``flock``, the
    lock is an exclusively created ``.<entry>.lock.excl`` file, taken over when older
    than ``stale_s``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        started = last_note = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - last_note > 60:
                    log.info("waiting %.0f s for %s (held by %s)", time.monotonic() - started, lock, _read_holder(lock))
                    last_note = time.monotonic()
                time.sleep(poll_s)
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                with _exclusive_file_lock(lock.with_name(lock.name + ".excl"), stale_s, poll_s, log):
                    yield
                return
        os.ftruncate(fd, 0)
        os.write(fd, _holder().encode())
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(lock: Path) -> str:
    try:
        return lock.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def _exclusive_file_lock(lock: Path, stale_s: float, poll_s: float, log: logging.Logger) -> Iterator[None]:
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o664)
            break
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - lock.stat().st_mtime > stale_s:
                    log.warning("taking over the stale lock %s (held by %s)", lock, _read_holder(lock))
                    lock.unlink()
                    continue
            time.sleep(poll_s)
    try:
        os.write(fd, _holder().encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def remove_dead_temporaries(path: Path, log: logging.Logger = logger) -> None:
    """Temporaries of this entry (only writers holding its lock make them: the caller holds it)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        log.info("removing %s, left by a killed writer", tmp)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def obtain_entry(
    store_dir: str | os.PathLike,
    model_cfg: dict,
    story: str,
    words_tsv: str | os.PathLike,
    compute: Callable[[Path], None],
    log: logging.Logger = logger,
) -> tuple[Path, dict, bool]:
    """The verified entry of (model settings, story words): reused, or computed once.

    ``compute(path)`` writes the entry at ``path``; it runs under the entry's lock and
    only when no entry exists. An existing entry is never replaced: a damaged one is an
    error. Returns ``(path, metadata, reused)``.
    """
    path = entry_path(store_dir, model_cfg, story, words_tsv_sha256(words_tsv))
    if not path.exists():
        with entry_lock(path, log=log):
            if not path.exists():
                remove_dead_temporaries(path, log)
                compute(path)
                return path, verify_entry(path, words_tsv), False
    log.info("reusing %s", path)
    return path, verify_entry(path, words_tsv), True


def write_manifest(manifest_path: str | os.PathLike, entry: Path, metadata: dict, model: str, reused: bool) -> dict:
    """The run's own record of the entry it uses (the features rule's output)."""
    manifest = {
        "model": model,
        "story": metadata.get("story"),
        "entry": os.path.abspath(entry),
        "settings_hash": metadata.get("settings_hash"),
        "words_content_sha256": metadata["words_content_sha256"],
        "content_id": metadata["content_id"],
        "n_layers": metadata["n_layers"],
        "n_words": metadata["n_words"],
        "reused": reused,
    }
    write_json(manifest_path, manifest)
    return manifest


# ---------------------------------------------------------------- maintenance


def iter_entries(path: str | os.PathLike) -> list[Path]:
    """Entry files under a store directory (or the file itself); temporary files skipped."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.h5") if not p.name.startswith("."))


def collect_garbage(store_dir: str | os.PathLike, older_than_s: float = STALE_TMP_S, manifest_dirs: list | None = None) -> tuple[list[Path], list[Path]]:
    """Remove temporaries older than ``older_than_s``; list entries no manifest names.

    Returns ``(removed, orphans)``; orphans are only listed (``manifest_dirs``: the
    results/features folders of the checkouts using the store).
    """
    store_dir = Path(store_dir)
    removed = []
    now = time.time()
    for tmp in sorted(store_dir.rglob(".*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                removed.append(tmp)
    orphans = []
    if manifest_dirs:
        named = set()
        for directory in manifest_dirs:
            for manifest in Path(directory).rglob("*.json"):
                with contextlib.suppress(InputError):
                    named.add(os.path.realpath(read_manifest(manifest)["entry"]))
        orphans = [p for p in iter_entries(store_dir) if os.path.realpath(p) not in named]
    return removed, orphans


def _short(value) -> str:
    text = "none" if value in (None, "") else str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def _describe(path: Path, metadata: dict) -> str:
    key = metadata.get("store_key") or {}
    settings = " ".join(f"{name}={_short(key[name])}" for name in sorted(key))
    return (
        f"{path}  story={metadata.get('story')} words={metadata['n_words']} words_sha256={_short(metadata.get('words_content_sha256'))} "
        f"layers={metadata['n_layers']} hidden={metadata.get('hidden_size')} model={metadata.get('model_id')} "
        f"settings_hash={metadata.get('settings_hash')} {settings} "
        f"written_by={metadata.get('user')}@{metadata.get('host')} {metadata.get('created_utc')}"
    )


def _describe_images(path: Path, metadata: dict) -> str:
    return (
        f"{path}  images={metadata.get('n_images')} images_sha256={_short(metadata.get('images_sha256'))} layers={metadata.get('n_layers')} "
        f"model={metadata.get('model_id')} pooling={metadata.get('pooling')} settings_hash={metadata.get('settings_hash')} "
        f"written_by={metadata.get('user')}@{metadata.get('host')} {metadata.get('created_utc')}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brainllm.store", description="List, verify or clean feature store entries.")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list entries with every setting of their key")
    ls.add_argument("path", help="store directory or one entry file")
    verify = sub.add_parser("verify", help="check entries: structure, every layer's hash, words, shapes, place in the store")
    verify.add_argument("path", help="store directory or one entry file")
    verify.add_argument("--words", help="words.tsv the entry (or entries) must have been computed from")
    gc = sub.add_parser("gc", help="remove stale temporary files; list entries no manifest names")
    gc.add_argument("path", help="store directory")
    gc.add_argument("--older-than", type=float, default=STALE_TMP_S / 3600, help="hours (default 24)")
    gc.add_argument("--manifests", nargs="*", default=[], help="results/features folders of the checkouts using the store")
    args = parser.parse_args(argv)

    if args.command == "gc":
        removed, orphans = collect_garbage(args.path, args.older_than * 3600, args.manifests)
        for path in removed:
            print(f"removed  {path}")
        for path in orphans:
            print(f"orphan   {path}")
        print(f"{len(removed)} temporary files removed" + (f", {len(orphans)} entries named by no manifest" if args.manifests else ""))
        return 0
    entries = iter_entries(args.path)
    if not entries:
        print(f"{args.path}: no entries", file=sys.stderr)
        return 1
    bad = 0
    for path in entries:
        try:
            with open_h5(path) as handle:
                metadata = json.loads(handle.attrs["metadata"])
            images = str(metadata.get("store_format", "")).startswith("vision")  # an image entry (brainllm.vision_features)
            if args.command == "ls":
                print(_describe_images(path, metadata) if images else _describe(path, metadata))
            elif images:
                from .vision_features import read_image_features

                read_image_features(path)  # checks the structure and every stored hash
                print(f"OK   {path}  ({metadata['n_images']} images, {metadata['n_layers']} layers)")
            else:
                metadata = verify_entry(path, words_tsv=args.words)
                print(f"OK   {path}  ({metadata['n_words']} words, {metadata['n_layers']} layers)")
        except (InputError, OSError, KeyError, ValueError) as error:
            bad += 1
            print(f"BAD  {path}: {error}")
    if args.command == "verify":
        print(f"{len(entries) - bad} ok, {bad} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
