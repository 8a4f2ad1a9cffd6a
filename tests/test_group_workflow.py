"""The demo workflow's cross-subject transfer: each subject's encoding model, aligned on the
training stories, predicts the other subject's planted voxels about as well as that subject's
own model, and nothing in its pure-noise voxels."""

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
