"""The workflow as a user runs it: schema validation, lint, dry run, the demo end to end."""

from __future__ import annotations

import h5py
import pandas as pd
import yaml

from conftest import REPO, copy_config, run_snakemake


def test_lint_is_clean(workdir):
    proc = run_snakemake(workdir, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Lints for" not in proc.stdout, proc.stdout[-4000:]


def test_dry_run_lists_rules(workdir):
    proc = run_snakemake(workdir, "-n", "--cores", "1")
    for rule in ("demo_dataset", "ingest", "ingest_words", "preprocess", "features", "encoding"):
        assert rule in proc.stdout, f"rule {rule} missing from the dry run"


def _write_config(workdir, mutate):
    path = copy_config(workdir)
    config = yaml.safe_load(path.read_text())
    mutate(config)
    path.write_text(yaml.safe_dump(config))
    return path


def test_misspelled_key_stops_before_any_job(workdir):
    path = _write_config(workdir, lambda c: c["encoding"].update(delyas=[1, 2]))
    proc = run_snakemake(workdir, "-n", "--configfile", str(path), check=False)
    assert proc.returncode != 0
    assert "delyas" in proc.stdout


def test_wrong_type_names_the_key(workdir):
    path = _write_config(workdir, lambda c: c["dataset"].update(tr="two seconds"))
    proc = run_snakemake(workdir, "-n", "--configfile", str(path), check=False)
    assert proc.returncode != 0
    assert "tr" in proc.stdout and "two seconds" in proc.stdout


def test_missing_required_key_names_it(workdir):
    # the user's config is the whole config: nothing of config/config.yaml fills the gap
    path = _write_config(workdir, lambda c: c["dataset"].pop("subjects"))
    proc = run_snakemake(workdir, "-n", "--configfile", str(path), check=False)
    assert proc.returncode != 0
    assert "subjects" in proc.stdout


def test_demo_outputs(demo_run):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    results = demo_run / "results"
    stories = config["dataset"]["train_stories"] + config["dataset"]["test_stories"]
    for story in stories:
        words = pd.read_csv(results / "ingest" / "stories" / story / "words.tsv", sep="\t")
        assert list(words.columns) == ["word", "onset", "offset"]
        assert len(words) > 300
        assert (words["offset"] >= words["onset"]).all()
    for subject in config["dataset"]["subjects"]:
        with h5py.File(results / "preprocess" / f"sub-{subject}" / "responses.h5", "r") as h5:
            assert set(stories) <= set(h5)
            for story in stories:
                data = h5[story]["data"][()]
                assert data.ndim == 2 and data.shape[1] > 1000
                assert h5[story].attrs["preprocessed"]
        assert (results / "preprocess" / f"sub-{subject}" / "mask.nii.gz").exists()


def test_rerun_runs_nothing(demo_run):
    proc = run_snakemake(demo_run, "-n", "--cores", "1")
    assert "Nothing to be done" in proc.stdout, proc.stdout[-3000:]
