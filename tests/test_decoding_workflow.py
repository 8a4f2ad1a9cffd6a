"""The demo workflow decodes: held-out segments are identified far above chance at the
best layer, in both directions; on the demo's pure-noise voxels identification is at chance."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from brainllm import decoding
from brainllm.encoding import held_out_responses
from brainllm.inference import read_predictions
from brainllm.report import ground_truth_voxels
from conftest import REPO

pytestmark = pytest.mark.workflow

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
SUBJECTS = CONFIG["dataset"]["subjects"]
MODEL = next(iter(CONFIG["models"]))
RESULTS = CONFIG["results"]


def _best_layer(workdir, subject):
    layers = pd.read_csv(workdir / RESULTS / "encoding" / f"sub-{subject}" / f"model-{MODEL}" / f"sub-{subject}_model-{MODEL}_layers.tsv", sep="\t")
    return int(layers.loc[layers["best"], "layer"].iloc[0])


@pytest.mark.parametrize("subject", SUBJECTS)
def test_segments_identified_far_above_chance(demo_run, subject):
    table = pd.read_csv(demo_run / RESULTS / "decoding" / f"sub-{subject}" / f"model-{MODEL}" / f"sub-{subject}_model-{MODEL}_identification.tsv", sep="\t")
    assert set(table["segment_trs"]) == set(CONFIG["decoding"]["identification"]["segment_trs"])
    rows = table[(table["layer"] == _best_layer(demo_run, subject)) & (table["segment_trs"] == 10)]
    assert set(rows["direction"]) == set(decoding.DIRECTIONS)
    for _, row in rows.iterrows():
        assert row["top1"] >= 5 * row["chance_top1"], row.to_dict()
        assert row["mean_percentile_rank"] > 0.9 and row["p"] < 0.01, row.to_dict()
        assert row["sensitivity"] > row["chance_sensitivity"] and row["specificity"] > row["chance_specificity"]
    # single TRs among all test TRs: identification is best at the planted layer
    single = table[(table["segment_trs"] == 1) & (table["direction"] == "observed_to_predicted")]
    truth = json.loads((demo_run / CONFIG["demo"]["out_dir"] / "ground_truth.json").read_text())
    assert int(single.loc[single["top1"].idxmax(), "layer"]) == int(truth["planted_layer"]), single.to_string()
    figure = demo_run / RESULTS / "report" / "decoding" / "identification.tsv"
    assert set(pd.read_csv(figure, sep="\t")["subject"].astype(str)) == set(SUBJECTS)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_noise_voxels_identify_at_chance(demo_run, subject):
    """The demo's pure-noise voxels, through the same function: accuracy and rank at chance."""
    layer = _best_layer(demo_run, subject)
    stem = demo_run / RESULTS / "encoding" / f"sub-{subject}" / f"model-{MODEL}" / f"sub-{subject}_model-{MODEL}_layer-{layer:02d}"
    predicted, attrs = read_predictions(f"{stem}_predictions.h5")
    observed = held_out_responses(demo_run / RESULTS / "preprocess" / f"sub-{subject}" / "responses.h5", CONFIG["dataset"]["test_stories"])
    masks = {
        "dataset_mask": demo_run / RESULTS / "ingest" / f"sub-{subject}" / "mask.nii.gz",
        "analysis_mask": demo_run / RESULTS / "preprocess" / f"sub-{subject}" / "mask.nii.gz",
    }
    truth = ground_truth_voxels(demo_run / CONFIG["dataset"]["ground_truth"], subject, **masks)
    noise = np.flatnonzero(~truth["signal"])
    settings = decoding.IdentificationSettings(segment_trs=(10,), voxel_fraction=1.0, n_permutations=500)
    for row in decoding.identify_segments(observed[:, noise], predicted[:, noise], attrs["story_lengths"], np.zeros(noise.size), settings):
        assert row["top1"] <= 3 * row["chance_top1"], row
        assert abs(row["mean_percentile_rank"] - 0.5) < 0.15 and row["p"] > 0.01, row
