"""The contrastive model shared across subjects (group.shared_encoder): planted data in which every subject's
voxels mix one latent (the text features) through their own random matrix; the shared model retrieves the test
story for each training subject, a held-out subject through a new input layer alone; settings errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open

from brainllm import configuration, contrastive, contrastive_shared
from brainllm.contrastive_settings import shared_encoder_settings
from brainllm.io import InputError
from conftest import REPO, run_snakemake

TRAIN = ["alpha", "bravo", "charlie", "delta"]  # delta: the validation story
TEST = ["echo"]
SUBJECTS = ["S01", "S02", "S03", "S04"]  # S04 held out (the last)
N_TRS, HIDDEN = 60, 12
N_VOXELS = {"S01": 30, "S02": 36, "S03": 24, "S04": 28}
FAST = {
    "epochs": 12, "batch_size": 32, "lr": 5e-3, "patience": 20, "shared_dim": 16, "brain_encoder": {"kind": "linear"},
    "eval": {"n_candidates": 20, "n_draws": 5, "n_train_pairs": 64},
}
SECTION = {"input_width": 16, "n_permutations": 200, "min_shift_trs": 5}


def _write_subjects(root):
    """One latent per story TR (the text features, alike for every subject); subject s's voxels = the latent
    2 TRs earlier · W_s (its own random mixing, its own voxel count) + noise."""
    rng = np.random.default_rng(0)
    latent = {story: rng.standard_normal((N_TRS, HIDDEN)).astype(np.float32) for story in TRAIN + TEST}
    paths = {"features": {}, "responses": {}}
    for subject in SUBJECTS:
        mixing = rng.standard_normal((HIDDEN, N_VOXELS[subject]))
        paths["features"][subject], paths["responses"][subject] = root / f"{subject}_features.h5", root / f"{subject}_responses.h5"
        with h5py.File(paths["features"][subject], "w") as features_h5, h5py.File(paths["responses"][subject], "w") as responses_h5:
            for story, features in latent.items():
                signal = np.zeros((N_TRS, N_VOXELS[subject]))
                signal[2:] = features[:-2] @ mixing
                responses = signal / signal.std() + 0.5 * rng.standard_normal(signal.shape)
                features_h5.create_group(story).create_dataset("layer_03", data=features)
                responses_h5.create_group(story).create_dataset("data", data=responses.astype(np.float32))
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write_subjects(tmp_path_factory.mktemp("shared_data"))


@pytest.fixture(scope="module")
def single_runs(data, tmp_path_factory):
    """The single-subject contrastive model of every subject (config.json, model.safetensors); S02's reads half
    its voxels (contrastive.voxel_fraction), which its scoring beside the shared model must read too."""
    runs = {}
    for subject in SUBJECTS:
        out = tmp_path_factory.mktemp(f"single_{subject}")
        cfg, scores = FAST, None
        if subject == "S02":
            cfg, scores = {**FAST, "voxel_fraction": 0.5}, out / "scores.tsv"
            r_val = np.random.default_rng(1).uniform(size=N_VOXELS[subject])
            pd.DataFrame({"voxel": np.arange(N_VOXELS[subject]), "r_val": r_val}).to_csv(scores, sep="\t", index=False)
        contrastive.run_contrastive(
            data["features"][subject], data["responses"][subject], subject=subject, model_name="tiny", layer=3,
            train_stories=TRAIN, test_stories=TEST, contrastive_cfg=cfg, curves_tsv=out / "curves.tsv", config_json=out / "config.json",
            weights_safetensors=out / "model.safetensors", retrieval_json=out / "retrieval.json", checkpoint_dir=out / "checkpoint",
            scores_tsv=scores,
        )
        runs[subject, 3] = (out / "config.json", out / "model.safetensors")
    return runs


@pytest.fixture(scope="module")
def shared_run(data, single_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("shared_run")
    files = {"table_tsv": out / "shared.tsv", "summary_json": out / "shared.json", "weights_safetensors": out / "shared.safetensors",
             "curves_tsv": out / "curves.tsv"}
    table = contrastive_shared.run_shared_encoder(
        data["features"], data["responses"], model_name="tiny", train_stories=TRAIN, test_stories=TEST,
        shared=shared_encoder_settings(SECTION, FAST, SUBJECTS), single_runs=single_runs, checkpoint_dir=out / "checkpoint", **files,
    )
    return table, files


def test_too_few_test_pairs_stop_before_any_training(data, single_runs, tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before the test pairs were checked")

    monkeypatch.setattr(contrastive_shared, "train", no_training)
    files = {"table_tsv": tmp_path / "shared.tsv", "summary_json": tmp_path / "shared.json",
             "weights_safetensors": tmp_path / "shared.safetensors", "curves_tsv": tmp_path / "curves.tsv"}
    with pytest.raises(InputError, match="lower group.shared_encoder.min_shift_trs"):
        contrastive_shared.run_shared_encoder(
            data["features"], data["responses"], model_name="tiny", train_stories=TRAIN, test_stories=TEST,
            shared=shared_encoder_settings({**SECTION, "min_shift_trs": 10_000}, FAST, SUBJECTS), single_runs=single_runs,
            checkpoint_dir=tmp_path / "checkpoint", **files,
        )
    assert not any(path.exists() for path in files.values())


def test_shared_encoder_retrieves_the_test_story_for_every_training_subject(shared_run):
    table, files = shared_run
    trained = table[table["role"] == "train"].set_index("subject")
    assert list(trained.index) == ["S01", "S02", "S03"] and (trained["layer"] == 3).all()
    assert (trained["top1_brain_to_text"] > 3 * trained["chance_top1"]).all(), trained["top1_brain_to_text"]
    assert (trained["mean_percentile_rank_brain_to_text"] > 0.85).all() and (trained["mean_percentile_rank_text_to_brain"] > 0.85).all()
    np.testing.assert_allclose(trained["p_brain_to_text"], 1 / 48)  # the least p of the 47 shifts of 56 test pairs
    assert (trained["chance_mean_percentile_rank"] == 0.5).all()
    assert pd.read_csv(files["table_tsv"], sep="\t", dtype={"subject": str}).shape == table.shape
    curves = pd.read_csv(files["curves_tsv"], sep="\t")
    assert set(curves["phase"]) == {"shared", "held_out"}
    assert {f"validation_top1_brain_to_text_sub-{s}" for s in ("S01", "S02", "S03")} <= set(curves.columns)


def test_held_out_subject_is_retrieved_through_its_new_input_layer_alone(shared_run):
    table, files = shared_run
    held_out = table[table["role"] == "held_out"].set_index("subject").loc["S04"]
    assert held_out["top1_brain_to_text"] > 3 * held_out["chance_top1"]
    assert held_out["mean_percentile_rank_brain_to_text"] > 0.8 and held_out["p_brain_to_text"] == pytest.approx(1 / 48)
    with safe_open(str(files["weights_safetensors"]), "pt") as weights:
        assert {"layer-03.input_layers.S04.weight", "layer-03.input_layers.S01.weight", "layer-03.shared.logit_scale"} <= set(weights.keys())
        assert weights.get_tensor("layer-03.input_layers.S04.weight").shape == (16, N_VOXELS["S04"] * 4)  # 4 delays
        assert json.loads(weights.metadata()["held_out_subjects"]) == ["S04"]


def test_single_subject_figures_stand_beside_with_the_paired_test(shared_run):
    table, files = shared_run
    assert table["single_mean_percentile_rank_brain_to_text"].notna().all()  # every subject has its own run here
    np.testing.assert_allclose(table["delta_top1_brain_to_text"], table["top1_brain_to_text"] - table["single_top1_brain_to_text"])
    summary = json.loads(files["summary_json"].read_text())
    comparison = summary["layers"]["03"]["shared_vs_single"]
    assert comparison["metric"] == "mean_percentile_rank"
    assert comparison["brain_to_text"]["n_subjects"] == 3 and 0 < comparison["brain_to_text"]["p_holm"] <= 1
    delta = table.loc[table["role"] == "train", "delta_mean_percentile_rank_brain_to_text"].mean()
    assert comparison["brain_to_text"]["delta"] == pytest.approx(delta)
    assert summary["split"] == {"train": TRAIN[:-1], "validation": ["delta"], "test": TEST}


def test_held_out_fit_changes_only_its_input_layer(data):
    settings = contrastive.resolve_settings({**FAST, "epochs": 3})
    split = contrastive.story_split(TRAIN, TEST, None)
    pairs = {s: {name: p.to(torch.device("cpu")) for name, p in contrastive.load_pairs(data["features"][s], data["responses"][s], 3, split, settings).items()}
             for s in SUBJECTS}
    torch.manual_seed(0)
    model = contrastive_shared.SharedEncoderModel({s: pairs[s]["train"].brain_dim for s in SUBJECTS[:2]}, HIDDEN, settings, input_width=16)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    view, result = contrastive_shared.fit_held_out_subject(model, "S04", pairs["S04"], settings, contrastive.Checkpoint(data["features"]["S01"].parent / "fit", "r"))
    for name, parameter in model.named_parameters():
        if name.startswith("input_layers.S04."):
            assert name not in before
        else:
            assert torch.equal(parameter, before[name]), name
    assert set(result.best_weights) == {"model.input_layers.S04.weight", "model.input_layers.S04.bias"}
    assert torch.equal(view.model.input_layers["S04"].weight.cpu(), result.best_weights["model.input_layers.S04.weight"])


def test_every_batch_holds_one_subjects_pairs():
    sources = [("a", None, type("P", (), {"n_pairs": 70})()), ("b", None, type("P", (), {"n_pairs": 40})())]
    batches = contrastive._epoch_batches(sources, 16, np.random.default_rng(0))
    assert sorted(torch.cat([index for source, index in batches if source == 0]).tolist()) == list(range(70))
    assert sorted(torch.cat([index for source, index in batches if source == 1]).tolist()) == list(range(40))
    assert [source for source, _ in batches] != sorted(source for source, _ in batches)  # interleaved


def test_percentile_rank_test_against_circular_shifts():
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((80, 4))
    latent /= np.linalg.norm(latent, axis=1, keepdims=True)
    aligned = contrastive_shared.percentile_rank_test(latent @ latent.T, min_shift=5, n_permutations=1000, seed=0)
    assert aligned["mean_percentile_rank"] == 1.0 and aligned["p"] == pytest.approx(1 / 72)  # all 71 shifts in [5, 75]
    unrelated = contrastive_shared.percentile_rank_test(latent @ rng.standard_normal((80, 4)).T, min_shift=5, n_permutations=1000, seed=0)
    assert abs(unrelated["mean_percentile_rank"] - 0.5) < 0.1 and unrelated["p"] > 0.05


# ----------------------------------------------------------------------------- settings


def test_settings_default_to_the_contrastive_section_and_hold_out_the_last_subject():
    shared = shared_encoder_settings({"epochs": 3, "brain_encoder": {"hidden": 32}}, {"shared_dim": 24, "layers": [2, 4]}, SUBJECTS)
    assert shared.train_subjects == ("S01", "S02", "S03") and shared.held_out_subjects == ("S04",)
    assert shared.contrastive["epochs"] == 3 and shared.contrastive["shared_dim"] == 24 and shared.contrastive["layers"] == [2, 4]
    assert shared.contrastive["brain_encoder"] == {"kind": "mlp", "hidden": 32, "n_blocks": 1, "dropout": 0.3}
    assert "lora" not in shared.contrastive and shared.input_width == 256
    assert shared_encoder_settings({"held_out_subjects": []}, {}, ["a", "b"]).train_subjects == ("a", "b")
    # the single-subject runs' word objective and voxel choice are not taken over
    inherited = shared_encoder_settings({}, {"voxel_fraction": 0.2, "words": {"enabled": True}}, SUBJECTS).contrastive
    assert inherited["voxel_fraction"] is None and inherited["words"]["enabled"] is False


@pytest.mark.parametrize("section, subjects, message", [
    ({}, ["a", "b"], r"1 remain \(a\).*hold out fewer subjects"),
    ({"held_out_subjects": ["a", "b", "c"]}, ["a", "b", "c"], r"0 remain \(none\)"),
    ({"held_out_subjects": ["z"]}, ["a", "b", "c"], r"held_out_subjects \['z'\] are not in dataset.subjects"),
    ({"delays": [1, 2]}, ["a", "b", "c"], r"sets delays, which define the contrastive pairs.*set delays in the contrastive section"),
    ({"epochs_max": 3}, ["a", "b", "c"], r"unknown key group.shared_encoder.epochs_max"),
    ({"words": {"enabled": True}}, ["a", "b", "c"], r"sets words, which only single-subject runs use.*remove words"),
    ({"voxel_fraction": 0.2}, ["a", "b", "c"], r"sets voxel_fraction, which only single-subject runs use"),
])
def test_settings_errors_name_the_setting_and_the_fix(section, subjects, message):
    with pytest.raises(InputError, match=message):
        shared_encoder_settings(section, {}, subjects)


def test_the_section_needs_the_contrastive_section():
    config = {"dataset": {"subjects": ["a", "b", "c"]}, "group": {"shared_encoder": {}}}
    with pytest.raises(InputError, match=r"group.shared_encoder trains the contrastive model.*add a contrastive section"):
        configuration.check_shared_encoder(config)
    configuration.check_shared_encoder({**config, "contrastive": {}})  # two training subjects: fine
    configuration.check_shared_encoder({**config, "group": {"shared_encoder": None}})  # null: off


def test_schema_lists_the_shared_keys_and_the_training_keys_without_defaults():
    import yaml

    from brainllm.contrastive_settings import DEFAULTS, PAIR_KEYS, SHARED_ENCODER_KEYS, SINGLE_RUN_KEYS

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    properties = schema["properties"]["group"]["properties"]["shared_encoder"]["properties"]
    assert {key: spec["default"] for key, spec in properties.items() if "default" in spec} == SHARED_ENCODER_KEYS
    assert set(properties) - set(SHARED_ENCODER_KEYS) == set(DEFAULTS) - set(PAIR_KEYS) - set(SINGLE_RUN_KEYS) - {"lora"}


@pytest.mark.workflow
def test_rule_is_planned_from_the_default_config(tmp_path):
    """The demo (two subjects, a contrastive section) with group.shared_encoder: one job per model and its figure."""
    from conftest import make_workdir

    workdir = make_workdir(tmp_path / "wd")
    proc = run_snakemake(workdir, "-n", "--cores", "1", "--config", "group={shared_encoder: {held_out_subjects: []}}")
    assert "rule contrastive_shared:" in proc.stdout and "results/group/model-minilm_shared_encoder.tsv" in proc.stdout
    assert "rule report_group_shared_encoder:" in proc.stdout
    proc = run_snakemake(workdir, "-n", "--cores", "1", "--config", "group={shared_encoder: {}}", check=False)
    assert proc.returncode != 0 and "group.shared_encoder trains on the subjects not held out" in proc.stdout
