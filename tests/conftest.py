"""Shared fixtures. `demo_run` runs the default workflow once per test session.

The demo run starts in the background when the session begins, and the tests that need it
run last: the others (unit tests, dry runs, small workflows) use the time it takes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The environment the demo run starts with, and the tests' own: one BLAS / OpenMP thread, so
# that the tests running beside the demo's jobs share the cores instead of oversubscribing them
# (a user's explicit setting is kept).
DEMO_ENV = dict(os.environ)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
for _variable in THREAD_VARIABLES:
    os.environ.setdefault(_variable, "1")
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def make_workdir(tmp: Path) -> Path:
    """A working directory that sees the repository's workflow and configs through symlinks."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "profiles"):
        target = tmp / name
        if not target.exists():
            target.symlink_to(REPO / name)
    return tmp


def snakemake_env(base: dict[str, str] | None = None) -> dict[str, str]:
    return dict(os.environ if base is None else base, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0")


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 2700) -> subprocess.CompletedProcess:
    """Run snakemake in ``workdir``; the combined output is in ``.stdout``."""
    proc = subprocess.run(
        [*SNAKEMAKE, *args],
        cwd=workdir,
        env=snakemake_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


DEMO_NEEDED = pytest.StashKey[bool]()
DEMO_TIMEOUT_S = 2700  # stops a hung run only


def pytest_collection_modifyitems(session, config, items):
    """Tests that need the demo run go last, so the others run while it computes."""
    def needs_demo(item) -> bool:
        return "demo_run" in getattr(item, "fixturenames", ())

    items.sort(key=needs_demo)  # stable: each group keeps its order
    config.stash[DEMO_NEEDED] = any(needs_demo(item) for item in items)


@pytest.fixture(scope="session", autouse=True)
def demo_in_background(request, tmp_path_factory):
    """Starts the default workflow (embedded demo + MiniLM) when the session begins, if any test needs it."""
    if not request.config.stash.get(DEMO_NEEDED, False):
        yield None
        return
    workdir = make_workdir(tmp_path_factory.mktemp("demo_run"))
    output = (workdir / "snakemake_output.txt").open("w")
    proc = subprocess.Popen(
        [*SNAKEMAKE, "--cores", "2"],
        cwd=workdir,
        env=snakemake_env(DEMO_ENV),
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its jobs are stopped with it if the session ends early
    )
    yield workdir, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    output.close()


@pytest.fixture(scope="session")
def demo_run(demo_in_background) -> Path:
    """The default config run end to end once; returns the workdir."""
    workdir, proc = demo_in_background
    try:
        returncode = proc.wait(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        raise
    if returncode != 0:
        tail = (workdir / "snakemake_output.txt").read_text()[-6000:]
        raise AssertionError(f"the demo run failed ({returncode}):\n{tail}")
    return workdir


@pytest.fixture
def workdir(tmp_path) -> Path:
    return make_workdir(tmp_path / "wd")


def copy_config(workdir: Path, name: str = "config.yaml") -> Path:
    """A writable copy of a repository config inside ``workdir``."""
    dest = workdir / f"test_{name}"
    shutil.copy(REPO / "config" / name, dest)
    return dest
