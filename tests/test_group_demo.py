"""config/demo_group.yaml: the group analysis of all eight demo subjects. Seven are planted at
one layer and UTS08 at another (ground_truth.json): the sign-flip test across subjects finds
the planted layer better than every other layer, and the subject planted differently — and
only that one — is flagged."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from conftest import GROUP_DEMO_CONFIG, REPO

pytestmark = pytest.mark.workflow

CONFIG = yaml.safe_load((REPO / GROUP_DEMO_CONFIG).read_text())
RESULTS = CONFIG["results"]


@pytest.fixture(scope="module")
def truth(group_demo_run):
    return json.loads((group_demo_run / CONFIG["dataset"]["ground_truth"]).read_text())


def test_group_test_finds_the_planted_layer_and_flags_the_subject_planted_differently(group_demo_run, truth):
    planted = truth["subject_planted_layer"]
    assert sorted(planted) == sorted(CONFIG["dataset"]["subjects"])
    majority = truth["planted_layer"]
    different = sorted(subject for subject, layer in planted.items() if layer != majority)
    assert len(different) == 1

    layers = pd.read_csv(group_demo_run / RESULTS / "group" / "model-minilm_subject_layers.tsv", sep="\t", dtype={"subject": str})
    chosen = layers[(layers["subject"] != "group") & layers["best"]].set_index("subject")["layer"]
    assert chosen.to_dict() == planted  # each subject's layer, chosen on validation r, is its planted one
    group = layers[layers["subject"] == "group"].set_index("layer")
    assert group.index[group["best"].astype(bool)].tolist() == [majority]
    others = group.drop(index=majority)
    assert len(others) >= 2 and (others["delta_vs_best"] < 0).all() and (others["p_holm"] < 0.05).all(), others
    flagged = layers[layers["subject"] != "group"].groupby("subject")["differs_from_group"].first()
    assert sorted(flagged[flagged.astype(bool)].index) == different

    differences = pd.read_csv(group_demo_run / RESULTS / "group" / "model-minilm_subject_differences.tsv", sep="\t",
                              dtype={"subject": str}).set_index("subject")
    assert (differences["others_layer"] == majority).all()
    row = differences.loc[different[0]]
    assert row["differs"] and row["delta_r"] < 0 and row["ci_high"] < 0 and row["p_holm"] < 0.05
    assert not differences.drop(index=different)["differs"].any()


def test_isc_over_eight_subjects(group_demo_run):
    summary = json.loads((group_demo_run / RESULTS / "group" / "isc.json").read_text())
    assert summary["subjects"] == CONFIG["dataset"]["subjects"] and summary["levels"] == ["voxel", "roi"]
    assert summary["voxel"]["signal"]["fraction_significant"] > 0.9 and summary["voxel"]["noise"]["fraction_significant"] < 0.05
