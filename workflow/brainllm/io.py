"""Shared file helpers: atomic writes, lock-free HDF5 reads, hashing, clear input errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
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
