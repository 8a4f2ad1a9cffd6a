"""Shared file helpers: atomic writes, lock-free HDF5 reads, hashing, clear input errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import h5py


class InputError(ValueError):
    """Bad user input: names the file, what is wrong with it, and how to fix it."""

    def __init__(self, path: str | os.PathLike | None, problem: str, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        message = f"{where}{problem}"
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)


def require_finite(array, what: str, source: str | os.PathLike | None = None, fix: str | None = None) -> None:
    """An :class:`InputError` naming ``what`` when ``array`` holds NaN or ±inf (a NaN compares false with
    everything, so it would rank or count silently)."""
    import numpy as np

    array = np.asarray(array)
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(source, f"{what} contain {int(bad.sum())} non-finite value(s), NaN or infinite (the first, {array[first]}, "
                         f"at index {first}).", fix or "re-run the rule that wrote them; the values must be finite.")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only on success.

    A killed or failed writer leaves no file at ``path`` (the temporary name starts with
    a dot and ends in ``.tmp`` so readers and globbing never pick it up).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(root: str | os.PathLike, shared: str | os.PathLike | None = None, shared_age_s: float = 24 * 3600.0) -> list[Path]:
    """Remove the temporaries (``.<name>.<hex>.tmp``) that killed jobs left under ``root``.

    Only call it while no job of this workflow runs (Snakemake's ``onstart``). Under the
    ``shared`` directory (a feature store other checkouts may be writing to) only
    temporaries older than ``shared_age_s`` are removed.
    """
    root = Path(root)
    shared = None if shared is None else Path(os.path.abspath(shared))
    removed = []
    now = time.time()
    for tmp in root.rglob(".*.tmp") if root.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):
            in_shared = shared is not None and Path(os.path.abspath(tmp)).is_relative_to(shared)
            if not tmp.is_file() or (in_shared and now - tmp.stat().st_mtime < shared_age_s):
                continue
            tmp.unlink()
            removed.append(tmp)
    return removed


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_tsv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as TSV atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """Open HDF5 without file locking (shared Lustre/NFS stores are read by many users)."""
    return h5py.File(path, mode, locking=False)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_words(words_tsv: str | Path) -> pandas.DataFrame:
    """A story's ``words.tsv`` (columns word, onset, offset) with words kept verbatim."""
    import numpy
    import pandas

    try:
        frame = pandas.read_csv(words_tsv, sep="\t", dtype={"word": str}, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pandas.errors.ParserError, pandas.errors.EmptyDataError) as error:
        raise InputError(words_tsv, f"cannot read the words table ({error}).", "Rerun the ingest rule for this story.") from error
    missing = {"word", "onset", "offset"} - set(frame.columns)
    if missing:
        raise InputError(words_tsv, f"missing columns {sorted(missing)}.", "words.tsv needs tab-separated columns word, onset, offset.")
    for column in ("onset", "offset"):
        values = pandas.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            row = int(numpy.flatnonzero(values.isna().to_numpy())[0])
            raise InputError(words_tsv, f"column {column}, row {row + 1}: {frame[column].iloc[row]!r} is not a number.", "Fix the timing in words.tsv.")
        frame[column] = values.astype(float)
    return frame


def setup_logging(log_path: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send the package's log records to the rule's ``log:`` file (and stderr)."""
    logger = logging.getLogger("brainllm")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


@contextlib.contextmanager
def rule_logging(log_path: str | os.PathLike | None) -> Iterator[logging.Logger]:
    """Log to the rule's log file; an exception is logged (message first) and re-raised."""
    logger = setup_logging(log_path)
    try:
        yield logger
    except Exception as error:
        logger.error("%s: %s", type(error).__name__, error)
        raise
