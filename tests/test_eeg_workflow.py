"""The demo workflow's EEG stage: the demo's BIDS EEG read by mne-bids and preprocessed by
MNE; the word-level models choose the planted layer on validation data and find the planted
channels (and no others) on the held-out story; the TRF peaks at the planted latency; EEG → text
beats permuted EEG windows and the report shows it beside fMRI → text; each word's epoch ranks the
heard word high among every vocabulary word."""

from __future__ import annotations

import json

import h5py
import pandas as pd
import pytest
import yaml

from conftest import REPO, copy_config
from test_config import dry_run, job_counts

pytestmark = pytest.mark.workflow

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
MODEL = next(iter(CONFIG["models"]))
RESULTS = CONFIG["results"]
SUBJECTS = CONFIG["dataset"]["subjects"]


def summary(demo_run, subject):
    stem = demo_run / RESULTS / "eeg" / "encoding" / f"sub-{subject}" / f"model-{MODEL}" / f"sub-{subject}_model-{MODEL}"
    return json.loads(stem.with_name(stem.name + "_summary.json").read_text()), stem


@pytest.mark.parametrize("subject", SUBJECTS)
def test_planted_layer_channels_and_latency_are_recovered(demo_run, subject):
    truth = json.loads((demo_run / CONFIG["dataset"]["ground_truth"]).read_text())
    found, stem = summary(demo_run, subject)
    assert found["chosen_layer"] == truth["planted_layer"]
    assert found["ground_truth"]["sensitivity"] >= 0.9 and found["ground_truth"]["specificity"] >= 0.9, found["ground_truth"]
    assert abs(found["trf"]["peak_latency_s"] - truth["eeg"]["latency_s"]) <= 0.02
    table = pd.read_csv(stem.with_name(stem.name + "_wordlevel.tsv"), sep="\t")
    planted = table[table["channel"].isin(truth["eeg"]["planted_channels"]) & (table["window"] == found["chosen_window"])]
    curve = planted.groupby("layer")["r_validation"].mean()
    assert curve.idxmax() == truth["planted_layer"]  # also on the planted channels alone
    assert set(table["layer"]) == set(range(7)) and set(table["window"]) == set(CONFIG["eeg"]["windows"])
    identification = pd.read_csv(stem.with_name(stem.name + "_identification.tsv"), sep="\t")
    assert len(identification) == 2 * 2  # two segment lengths (the default), both directions
    assert (identification["top1"] >= 3 * identification["chance_top1"]).all() and (identification["p"] < 0.05).all()


def test_preprocessed_eeg_follows_the_contract(demo_run):
    truth = json.loads((demo_run / CONFIG["dataset"]["ground_truth"]).read_text())["eeg"]
    path = demo_run / RESULTS / "eeg" / "preprocess" / f"sub-{SUBJECTS[0]}" / "eeg.h5"
    with h5py.File(path, "r") as h5:
        stories = CONFIG["dataset"]["train_stories"] + CONFIG["dataset"]["test_stories"]
        assert sorted(h5) == sorted(stories)
        group = h5[stories[0]]
        assert group.attrs["sfreq"] == CONFIG["eeg"]["resample_hz"]
        assert group["data"].shape[1] == len(truth["channels"]) == len(group.attrs["ch_names"])
        assert list(group.attrs["interpolated"]) == [truth["bad_channel"]]
    manifest = pd.read_csv(demo_run / RESULTS / "report" / "manifest.tsv", sep="\t")
    assert any(name.endswith(f"report/eeg/model-{MODEL}.png") for name in manifest["file"])


def test_eeg_runs_exactly_when_its_section_is_present(workdir):
    path = copy_config(workdir)
    config = yaml.safe_load(path.read_text())
    del config["eeg"]
    path.write_text(yaml.safe_dump(config))
    rules = ("ingest_eeg", "preprocess_eeg", "encoding_eeg", "report_eeg", "generation_brain_prompt_eeg", "decoding_words_eeg")
    assert not set(rules) & set(job_counts(dry_run(workdir, "--configfile", str(path)).stdout))
    config["eeg"] = {"subjects": [SUBJECTS[0]]}  # one subject, every other key its default
    path.write_text(yaml.safe_dump(config))
    counts = job_counts(dry_run(workdir, "--configfile", str(path)).stdout)
    assert [counts.get(rule) for rule in rules] == [1, 1, 1, 1, 1, 1]
    del config["generation"], config["decoding"]  # EEG → text and word classification need their sections
    path.write_text(yaml.safe_dump(config))
    counts = job_counts(dry_run(workdir, "--configfile", str(path)).stdout)
    assert counts.get("encoding_eeg") == 1 and not {"generation_brain_prompt_eeg", "decoding_words_eeg"} & set(counts)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_eeg_prompts_beat_permuted_eeg_windows(demo_run, subject):
    folder = demo_run / RESULTS / "eeg" / "generation" / f"sub-{subject}" / "brain_prompt"
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["segments"]["unit"] == "word" and scores["split"]["test"] == CONFIG["dataset"]["test_stories"]
    pairwise = scores["pairwise"]
    assert pairwise["pairwise_accuracy"] > 0.5 and pairwise["p"] < 0.05 and pairwise["ci_low"] > 0.5, pairwise
    assert scores["means"]["brain/greedy"]["loss"] < scores["means"]["permuted_brain/greedy"]["loss"]
    texts = pd.read_csv(folder / "texts.tsv", sep="\t", keep_default_na=False)
    assert set(texts["condition"]) == {"brain", "permuted_brain", "text_only", "llm"}
    assert (texts["reference"].str.split().str.len() == CONFIG["eeg"]["generation"]["segment_words"]).mean() > 0.9


def test_report_shows_eeg_to_text_beside_fmri_to_text(demo_run):
    table = pd.read_csv(demo_run / RESULTS / "report" / "generation" / "brain_prompt.tsv", sep="\t", dtype={"subject": str})
    assert set(table["modality"]) == {"fMRI", "EEG"}
    assert set(table.loc[table["modality"] == "EEG", "subject"]) == {f"{s} (EEG)" for s in SUBJECTS}
    examples = pd.read_csv(demo_run / RESULTS / "report" / "generation" / "brain_prompt_examples.tsv", sep="\t", dtype={"subject": str})
    assert set(examples["modality"]) == {"fMRI", "EEG"}


@pytest.mark.parametrize("subject", SUBJECTS)
def test_eeg_epochs_rank_the_heard_words_above_chance(demo_run, subject):
    _, stem = summary(demo_run, subject)
    words = json.loads(stem.with_name(stem.name + "_words.json").read_text())
    assert words["mode"] == "eeg" and words["split"]["test"] == CONFIG["dataset"]["test_stories"]
    brain, chance = words["brain"], words["chance"]
    assert brain["mean_percentile_rank"] > 0.7 and brain["p"] < 0.05 and brain["top10"] > 100 * chance["top10"], brain
    assert words["gain_over_frequency"]["ci_low"] > 0  # the brain adds to the frequency prior
    assert words["n_vocabulary"] > 10000
    page = demo_run / RESULTS / "report" / "decoding" / "eeg" / f"sub-{subject}" / f"model-{MODEL}" / f"sub-{subject}_model-{MODEL}_vocabulary.html"
    assert "· EEG" in page.read_text()
