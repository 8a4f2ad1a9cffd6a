"""Reruns follow inputs: an edited dataset file reruns exactly the jobs downstream of it.

A scratch copy of the completed demo run is pointed at its own BIDS files as a user's
dataset (demo.generate: false), then one events.tsv is edited and the dry run (default
rerun triggers) is read.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO, run_snakemake

pytestmark = pytest.mark.workflow


def planned_jobs(output: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        match = re.match(r"(?:local)?rule (\w+):", block.strip())
        if match:
            found = re.search(r"^\s+wildcards: (.*)$", block, re.MULTILINE)
            wildcards = dict(item.split("=", 1) for item in found.group(1).split(", ")) if found else {}
            jobs.append((match.group(1), wildcards))
    return jobs


def test_edited_events_file_reruns_its_story_only(demo_run, tmp_path):
    scratch = tmp_path / "checkout"
    subprocess.run(["cp", "-a", str(demo_run), str(scratch)], check=True)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["demo"]["generate"] = False  # the generated files are now the user's dataset
    (scratch / "user.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # key order is part of params
    # ingest ran before its dataset files were listed as inputs: forget the recorded input lists
    outputs = [f"results/ingest/stories/{story}/words.tsv" for story in config["dataset"]["train_stories"] + config["dataset"]["test_stories"]]
    outputs += [f"results/ingest/sub-{subject}/{name}" for subject in config["dataset"]["subjects"] for name in ("responses.h5", "mask.nii.gz", "mean.nii.gz", "atlas.nii.gz", "atlas.tsv")]
    outputs += [f"results/decoding/sub-{subject}/sub-{subject}_{name}" for subject in config["dataset"]["subjects"]
                for name in ("labels.tsv", "labels_classes.tsv", "labels_confusion.tsv", "labels_predictions.tsv")]  # read the annotation table
    outputs += [f"results/eeg/ingest/sub-{subject}/raw.h5" for subject in config["dataset"]["subjects"]]  # reads the EEG recordings
    run_snakemake(scratch, "--configfile", "user.yaml", "--cleanup-metadata", *outputs)
    # the derivative's description records the config's hash, which demo.generate changes
    run_snakemake(scratch, "results/dataset_description.json", "--cores", "1", "--configfile", "user.yaml")
    before = run_snakemake(scratch, "-n", "--cores", "1", "--configfile", "user.yaml")
    assert "Nothing to be done" in before.stdout, before.stdout[-3000:]

    events = sorted((scratch / "resources/demo/bids/sub-UTS01/func").rglob("*task-orchard*_events.tsv"))[0]  # a BOLD run's
    lines = events.read_text().splitlines()
    fields = lines[1].split("\t")
    fields[lines[0].split("\t").index("word")] = "lantern"  # one word of one run changed
    lines[1] = "\t".join(fields)
    events.write_text("\n".join(lines) + "\n")
    after = run_snakemake(scratch, "-n", "--cores", "1", "--configfile", "user.yaml")
    jobs = planned_jobs(after.stdout)
    by_rule = {}
    for rule, wildcards in jobs:
        by_rule.setdefault(rule, []).append(wildcards)
    assert by_rule["ingest_words"] == [{"story": "orchard"}]
    assert by_rule["ingest"] == [{"subject": "UTS01"}]
    assert [w["subject"] for w in by_rule["preprocess"]] == ["UTS01"]
    assert by_rule["features"] == [{"model": "minilm"}]  # one job per model; it re-extracts orchard only (store reuse: test_store_concurrency)
    assert [w["subject"] for w in by_rule.get("ingest_atlas", [])] == ["UTS01"]  # reads that subject's new mask
    assert "demo_dataset" not in by_rule
    assert len(by_rule["align"]) == 4 and "encoding" in by_rule  # every alignment uses orchard's words
    assert len(by_rule["ingest_eeg"]) == 2  # the EEG words are checked against orchard's words.tsv
