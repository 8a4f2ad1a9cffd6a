"""The demo workflow's group stage: each subject's encoding model, aligned on the training
stories, predicts the other subject's planted voxels about as well as that subject's own
model, and nothing in its pure-noise voxels; the subject tables find the planted layer; the
subjects' responses correlate where both are planted."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.workflow

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
MODEL = next(iter(CONFIG["models"]))
RESULTS = CONFIG["results"]


def test_transfer_reaches_the_other_subjects_planted_voxels(demo_run):
    table = pd.read_csv(demo_run / RESULTS / "group" / f"model-{MODEL}_transfer.tsv", sep="\t")
    subjects = CONFIG["dataset"]["subjects"]
    assert set(zip(table["source"].astype(str), table["target"].astype(str))) == {(a, b) for a in subjects for b in subjects}
    across = table[table["source"] != table["target"]]
    assert (across["ratio_signal"] >= 0.7).all(), across.to_dict("records")
    assert (across["mean_r_transfer_noise"].abs() < 0.05).all(), across.to_dict("records")
    assert (across["n_significant"] > 0).all()
    manifest = pd.read_csv(demo_run / RESULTS / "report" / "manifest.tsv", sep="\t")
    assert any(name.endswith("report/group/transfer.png") for name in manifest["file"])


def test_subject_tables_show_the_planted_layer_for_every_subject(demo_run):
    layers = pd.read_csv(demo_run / RESULTS / "group" / f"model-{MODEL}_subject_layers.tsv", sep="\t", dtype={"subject": str})
    truth = yaml.safe_load((demo_run / CONFIG["dataset"]["ground_truth"]).read_text())
    chosen = layers[(layers["subject"] != "group") & layers["best"]]
    assert sorted(chosen["subject"]) == sorted(CONFIG["dataset"]["subjects"]) and (chosen["layer"] == truth["planted_layer"]).all()
    group = layers[layers["subject"] == "group"]
    assert group.loc[group["best"], "layer"].tolist() == [truth["planted_layer"]]
    assert (group["note"] == "fewer than 3 subjects: no sign-flip test across subjects").all()  # the demo has two
    rois = pd.read_csv(demo_run / RESULTS / "group" / f"model-{MODEL}_subject_rois.tsv", sep="\t", dtype={"subject": str})
    assert set(rois["subject"]) == set(CONFIG["dataset"]["subjects"]) | {"group"}
    manifest = pd.read_csv(demo_run / RESULTS / "report" / "manifest.tsv", sep="\t")
    assert any(name.endswith("report/group/subjects.png") for name in manifest["file"])
    similarity = pd.read_csv(demo_run / RESULTS / "group" / f"model-{MODEL}_map_similarity.tsv", sep="\t").set_index("level")
    assert similarity.loc["voxel", "n"] > 2000 and similarity.loc["voxel", "r"] > 0.5  # one grid; planted regions nearly in place
    assert similarity.loc["roi", "n"] == 5 and similarity.loc["roi", "r"] > 0.5


def test_isc_finds_the_voxels_planted_in_both_subjects_and_not_the_noise(demo_run):
    """The demo's subjects load alike on the planted responses (ground_truth.json): their common planted voxels and
    the planted regions correlate between subjects; voxels of pure noise in both do not."""
    summary = yaml.safe_load((demo_run / RESULTS / "group" / "isc.json").read_text())
    assert summary["levels"] == ["voxel", "roi"] and summary["n_trs"] > 800
    signal, noise = summary["voxel"]["signal"], summary["voxel"]["noise"]
    assert signal["n_voxels"] > 300 and signal["mean_isc"] > 0.3 and signal["fraction_significant"] > 0.9
    assert noise["n_voxels"] > 300 and abs(noise["mean_isc"]) < 0.02 and noise["fraction_significant"] < 0.05
    rois = pd.read_csv(demo_run / RESULTS / "group" / "isc_rois.tsv", sep="\t").set_index("roi")
    planted = ["language_temporal", "language_frontal", "auditory", "motor"]
    assert rois.loc[planted, "significant"].all() and not rois.loc["visual", "significant"]
    voxels = pd.read_csv(demo_run / RESULTS / "group" / "isc_voxels.tsv", sep="\t")
    assert len(voxels) == summary["voxel"]["n_voxels"] and {"isc_UTS01", "isc_UTS02", "p_fdr"} <= set(voxels.columns)
    manifest = pd.read_csv(demo_run / RESULTS / "report" / "manifest.tsv", sep="\t")
    assert any(name.endswith("report/group/isc.png") for name in manifest["file"])
