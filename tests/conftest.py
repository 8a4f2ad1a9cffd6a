"""Shared fixtures. `demo_run` runs the default workflow once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def make_workdir(tmp: Path) -> Path:
    """A working directory that sees the repository's workflow and configs through symlinks."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "profiles"):
        target = tmp / name
        if not target.exists():
            target.symlink_to(REPO / name)
    return tmp


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 2700) -> subprocess.CompletedProcess:
    """Run snakemake in ``workdir``; the combined output is in ``.stdout``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0")
    proc = subprocess.run(
        [*SNAKEMAKE, *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The default config (embedded demo + MiniLM) run end to end once; returns the workdir."""
    workdir = make_workdir(tmp_path_factory.mktemp("demo_run"))
    run_snakemake(workdir, "--cores", "2")
    return workdir


@pytest.fixture
def workdir(tmp_path) -> Path:
    return make_workdir(tmp_path / "wd")


def copy_config(workdir: Path, name: str = "config.yaml") -> Path:
    """A writable copy of a repository config inside ``workdir``."""
    dest = workdir / f"test_{name}"
    shutil.copy(REPO / "config" / name, dest)
    return dest
