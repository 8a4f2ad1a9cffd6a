"""The demo workflow's generation stage: the story LM never saw the test story, brain prompts
lower the loss of the heard words against permuted windows in every subject, the texts are
real words of the right length, and the report registers the figure and examples."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.workflow

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
RESULTS = CONFIG["results"]
SUBJECTS = CONFIG["dataset"]["subjects"]


def _generation(demo_run, subject, name):
    return demo_run / RESULTS / "generation" / f"sub-{subject}" / "brain_prompt" / name


def test_story_lm_was_trained_on_the_training_stories_only(demo_run):
    record = json.loads((demo_run / RESULTS / "generation" / "story-lm" / "training.json").read_text())
    assert record["stories"] == CONFIG["dataset"]["train_stories"][:-1]  # not the decoders' validation story
    vocabulary = set(json.loads((demo_run / RESULTS / "generation" / "story-lm" / "tokenizer.json").read_text())["model"]["vocab"])
    train_words = set(pd.concat([pd.read_csv(demo_run / RESULTS / "ingest" / "stories" / s / "words.tsv", sep="\t", keep_default_na=False)
                                 for s in record["stories"]])["word"])
    test_words = set(pd.read_csv(demo_run / RESULTS / "ingest" / "stories" / CONFIG["dataset"]["test_stories"][0] / "words.tsv",
                                 sep="\t", keep_default_na=False)["word"])
    assert vocabulary - {"<pad>", "<s>", "</s>", "<unk>"} == train_words
    assert test_words - train_words and not (test_words - train_words) & vocabulary


@pytest.mark.parametrize("subject", SUBJECTS)
def test_brain_prompts_beat_permuted_windows(demo_run, subject):
    scores = json.loads(_generation(demo_run, subject, "scores.json").read_text())
    pairwise = scores["pairwise"]
    assert pairwise["pairwise_accuracy"] >= 0.6 and pairwise["p"] < 0.05 and pairwise["ci_low"] > 0.5, pairwise
    assert scores["means"]["brain/greedy"]["loss"] < scores["means"]["permuted_brain/greedy"]["loss"]
    assert scores["means"]["brain/greedy"]["loss"] < scores["means"]["text_only/greedy"]["loss"]
    comparisons = pd.read_csv(_generation(demo_run, subject, "comparisons.tsv"), sep="\t")
    assert set(comparisons["control"]) == {"permuted_brain", "text_only", "llm"}
    assert set(comparisons["metric"]) == {"bleu1", "rouge1", "rougeL", "meteor", "wer"}
    assert comparisons["ci_low"].le(comparisons["gain"]).all() and comparisons["gain"].le(comparisons["ci_high"]).all()


def test_bleu1_gain_over_permuted_windows_across_subjects(demo_run):
    gains = []
    for subject in SUBJECTS:
        comparisons = pd.read_csv(_generation(demo_run, subject, "comparisons.tsv"), sep="\t")
        rows = comparisons[(comparisons["control"] == "permuted_brain") & (comparisons["metric"] == "bleu1")]
        gains += rows["gain"].tolist()
    assert sum(gains) / len(gains) > 0, gains


def test_texts_are_words_of_the_heard_length_and_the_report_shows_them(demo_run):
    texts = pd.read_csv(_generation(demo_run, SUBJECTS[0], "texts.tsv"), sep="\t", keep_default_na=False)
    assert set(texts["condition"]) == {"brain", "permuted_brain", "text_only", "llm"} and set(texts["decoding"]) == {"greedy", "beam"}
    assert set(texts["story"]) == set(CONFIG["dataset"]["test_stories"])
    assert (texts["text"].str.split().str.len() == texts["reference"].str.split().str.len()).mean() > 0.9
    assert not texts["text"].str.contains("<unk>|<pad>|<s>").any()
    manifest = pd.read_csv(demo_run / RESULTS / "report" / "manifest.tsv", sep="\t")
    assert any(name.endswith("report/generation/brain_prompt.png") for name in manifest["file"])
    examples = pd.read_csv(demo_run / RESULTS / "report" / "generation" / "brain_prompt_examples.tsv", sep="\t", keep_default_na=False)
    assert set(examples["subject"].astype(str)) == set(SUBJECTS) and {"heard", "brain", "permuted_brain"} <= set(examples.columns)


def test_beam_search_is_scored_against_its_null_in_every_subject(demo_run):
    table = pd.read_csv(demo_run / RESULTS / "report" / "generation" / "beam_search.tsv", sep="\t", dtype={"subject": str})
    assert set(table["subject"]) == set(SUBJECTS) and set(table["metric"]) == {"bleu1", "rouge1", "meteor", "wer", "embedding"}
    assert (table["null_sd"] > 0).all() and (table["n_null"] == CONFIG["generation"]["beam_search"]["n_null"]).all()
    # the target: the decoded text beats its no-brain null on at least two metrics (z > 2) in every subject
    assert (table[table["z"] > 2].groupby("subject").size().reindex(SUBJECTS, fill_value=0) >= 2).all(), table
    for subject in SUBJECTS:  # the decoded text explains the responses better than every text written without them
        scores = json.loads((demo_run / RESULTS / "generation" / f"sub-{subject}" / "beam_search" / "scores.json").read_text())
        likelihood = scores["encoding_log_likelihood"]
        assert len(likelihood["null"]) == CONFIG["generation"]["beam_search"]["n_null"] and likelihood["decoded"] > max(likelihood["null"])
        assert likelihood["heard"] > max(likelihood["null"])  # the planted responses follow the words heard
    texts = pd.read_csv(demo_run / RESULTS / "generation" / f"sub-{SUBJECTS[0]}" / "beam_search" / "texts.tsv", sep="\t",
                        keep_default_na=False)
    decoded = texts[texts["source"] == "brain"]
    assert (decoded["text"].str.split().str.len() == decoded["reference"].str.split().str.len()).all()
    assert texts["source"].nunique() == 1 + CONFIG["generation"]["beam_search"]["n_null"]
