# Shared definitions: paths, wildcard constraints, input functions.

import os

RESULTS = config["results"]
DATASET = config["dataset"]
SUBJECTS = DATASET["subjects"]
STORIES = DATASET["train_stories"] + DATASET["test_stories"]


wildcard_constraints:
    subject="[A-Za-z0-9]+",
    story="[A-Za-z0-9]+",
    model="[A-Za-z0-9]+",
    layer="[0-9]+",


def dataset_ready():
    """The generated demo dataset when the config asks for it, else nothing."""
    if config["demo"]["generate"]:
        return [os.path.join(config["demo"]["out_dir"], "ground_truth.json")]
    return []


def words_tsv(story):
    return f"{RESULTS}/ingest/stories/{story}/words.tsv"


def preprocessed(subject):
    return f"{RESULTS}/preprocess/sub-{subject}/responses.h5"


def final_targets():
    targets = [words_tsv(story) for story in STORIES]
    targets += [preprocessed(subject) for subject in SUBJECTS]
    return targets
