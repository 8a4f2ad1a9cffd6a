"""config/demo_group.yaml: the group analysis of the demo's subjects (six of the eight here, see
conftest.GROUP_DEMO_OVERRIDE). All but UTS08 are planted at one layer, UTS08 at another
(ground_truth.json): the sign-flip test across subjects finds the planted layer better than
every other layer, and the subject planted differently — and only that one — is flagged."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from conftest import GROUP_DEMO_CONFIG, GROUP_DEMO_SUBJECTS, REPO

pytestmark = pytest.mark.workflow

CONFIG = yaml.safe_load((REPO / GROUP_DEMO_CONFIG).read_text())
RESULTS = CONFIG["results"]


@pytest.fixture(scope="module")
def truth(group_demo_run):
    return json.loads((group_demo_run / CONFIG["dataset"]["ground_truth"]).read_text())


def test_group_test_finds_the_planted_layer_and_flags_the_subject_planted_differently(group_demo_run, truth):
    assert sorted(truth["subject_planted_layer"]) == sorted(CONFIG["dataset"]["subjects"])
    planted = {subject: truth["subject_planted_layer"][subject] for subject in GROUP_DEMO_SUBJECTS}
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
    assert summary["subjects"] == GROUP_DEMO_SUBJECTS and summary["levels"] == ["voxel", "roi"]
    assert summary["voxel"]["signal"]["fraction_significant"] > 0.9 and summary["voxel"]["noise"]["fraction_significant"] < 0.05


def test_shared_encoder_retrieves_the_test_story_for_trained_and_held_out_subjects(group_demo_run):
    """The other subjects train one contrastive model through their own input layers; UTS07 and UTS08 (planted
    at another layer) get only a new input layer. Every subject retrieves the test story's text from its brain far
    above chance, each beside its single-subject model scored on the same pairs."""
    table = pd.read_csv(group_demo_run / RESULTS / "group" / "model-minilm_shared_encoder.tsv", sep="\t",
                        dtype={"subject": str}).set_index("subject")
    held_out = CONFIG["group"]["shared_encoder"]["held_out_subjects"]
    assert sorted(table.index[table["role"] == "held_out"]) == sorted(held_out)
    train = sorted(set(GROUP_DEMO_SUBJECTS) - set(held_out))
    assert sorted(table.index[table["role"] == "train"]) == train
    for direction in ("brain_to_text", "text_to_brain"):
        assert (table[f"mean_percentile_rank_{direction}"] > 0.8).all() and (table[f"p_{direction}"] < 0.05).all(), table
        assert (table[f"top1_{direction}"] > 5 * table["chance_top1"]).all()
        assert table[f"single_mean_percentile_rank_{direction}"].notna().all()
    summary = json.loads((group_demo_run / RESULTS / "group" / "model-minilm_shared_encoder.json").read_text())
    assert summary["layers"]["03"]["shared_vs_single"]["brain_to_text"]["n_subjects"] == len(train)
