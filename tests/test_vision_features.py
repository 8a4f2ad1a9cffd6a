"""Image features from every layer of a vision tower (brainllm.vision_features), on tiny random models."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models
from brainllm import vision_features as vf
from brainllm.io import InputError

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100, max_position_embeddings=16)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BRAINLLM_CACHE_DIR", str(tmp_path / "cache"))


def build_clip(directory: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(vision_config=TINY, text_config=TEXT, projection_dim=16)).save_pretrained(directory, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def build_siglip(directory: Path, seed: int = 0) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(seed)
    SiglipModel(SiglipConfig(vision_config=TINY, text_config=TEXT)).save_pretrained(directory, safe_serialization=True)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def build_llava(directory: Path, seed: int = 0) -> Path:
    """tests/tiny_models' LLaVA (1-layer CLIP tower, 2-layer Llama) with an image processor."""
    from transformers import CLIPImageProcessor

    tiny_models.build_llava(directory, seed)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_models")
    return {"clip": build_clip(root / "clip"), "siglip": build_siglip(root / "siglip"), "llava": build_llava(root / "llava")}


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def cfg(path: Path, **extra) -> dict:
    return {"source": str(path), "batch_size": 2, "device": "cpu", **extra}


def _images(paths):
    from brainllm.images import load_images

    return load_images(paths)


def _reference(name: str, directory: Path, images: np.ndarray, layer: int):
    """Per-image forward through the full checkpoint class: (pooled mean of `layer`, cls of `layer`, embedding)."""
    import transformers

    full = {"clip": transformers.CLIPModel, "siglip": transformers.SiglipModel, "llava": transformers.LlavaForConditionalGeneration}[name].from_pretrained(directory).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(directory)
    means, clss, embeddings = [], [], []
    with torch.no_grad():
        for image in images:
            pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
            if name == "llava":
                hidden = full.model.vision_tower(pixels, output_hidden_states=True).hidden_states
                features = full.get_image_features(pixel_values=pixels)
                features = getattr(features, "pooler_output", features)
                embedding = features[0].mean(dim=0)
            else:
                hidden = full.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
                features = full.get_image_features(pixel_values=pixels)
                embedding = getattr(features, "pooler_output", features)[0]
            means.append(hidden[layer][0].mean(dim=0).numpy())
            clss.append(hidden[layer][0, 0].numpy())
            embeddings.append(embedding.numpy())
    return np.stack(means), np.stack(clss), np.stack(embeddings)


@pytest.mark.parametrize("name", ["clip", "siglip", "llava"])
def test_features_match_a_per_image_reference(models, image_files, name):
    model_cfg = cfg(models[name])
    model, processor, info = vf.load_vision_model(model_cfg)
    n_states = vf.n_vision_hidden_states(model_cfg)
    assert n_states == info["n_hidden_states"] == {"clip": 3, "siglip": 3, "llava": 2}[name]
    images = _images(image_files)
    layers, embedding = vf.extract_image_features(model, processor, images, batch_size=2)
    assert len(layers) == n_states
    assert all(layer.shape == (5, 32) and layer.dtype == np.float32 for layer in layers)
    last = n_states - 1
    mean_ref, cls_ref, emb_ref = _reference(name, models[name], images, last)
    np.testing.assert_allclose(layers[last], mean_ref, atol=1e-5)
    np.testing.assert_allclose(embedding, emb_ref, atol=1e-5)
    assert embedding.dtype == np.float32
    if name == "siglip":
        with pytest.raises(InputError, match="no(ne)?.*class token|class token.*none"):
            vf.extract_image_features(model, processor, images, pooling="cls")
    else:
        cls_layers, _ = vf.extract_image_features(model, processor, images, batch_size=3, pooling="cls")
        np.testing.assert_allclose(cls_layers[last], cls_ref, atol=1e-5)
    if name == "llava":
        assert "language model not loaded" in info["loaded"]
        assert not any("language_model" in n for n, _ in model.tower.named_parameters())


def test_clip_vision_only_keeps_the_projection_width(models):
    model, _, info = vf.load_vision_model(cfg(models["clip"]))
    assert info["loaded"].startswith("CLIPVisionModelWithProjection")
    assert model.tower.visual_projection.weight.shape == (16, 32)  # projection_dim of the top-level CLIPConfig
    assert not any(name.startswith("text_model") for name, _ in model.tower.named_parameters())


def test_obtain_reuses_and_ignores_file_names(models, image_files, tmp_path, monkeypatch, caplog):
    store = tmp_path / "store"
    model_cfg = cfg(models["clip"])
    names = [p.stem for p in image_files]
    entry = vf.obtain_image_features(store, model_cfg, image_files, names, tmp_path / "m1.json")
    assert entry.is_file() and entry.parent.name == vf.vision_settings_hash(model_cfg)
    manifest = json.loads((tmp_path / "m1.json").read_text())
    assert manifest["reused"] is False and manifest["n_layers"] == 3 and manifest["entry"] == str(entry)
    data = vf.read_image_features(entry, names=names)
    assert sorted(data["layers"]) == [0, 1, 2] and data["embedding"].shape == (5, 16)
    with h5py.File(entry, "r") as handle:
        assert {"layer_00", "layer_01", "layer_02", "embedding", "names", "image_sha256"} == set(handle)
        attrs = json.loads(handle.attrs["metadata"])
    assert attrs["pooling"] == "mean" and attrs["n_hidden_states"] == 3 and attrs["weights_sha256"]
    assert "not L2-normalised" in attrs["embedding_space"] and attrs["library_versions"]["transformers"]
    reference, _ = vf.extract_image_features(*vf.load_vision_model(model_cfg)[:2], _images(image_files))
    np.testing.assert_allclose(data["layers"][1], reference[1], atol=1e-6)

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded for a stored entry")

    monkeypatch.setattr(vf, "load_vision_model", refuse)
    copies = tmp_path / "renamed"
    copies.mkdir()
    renamed = []
    for i, path in enumerate(image_files):
        renamed.append(copies / f"other_{i}.png")
        shutil.copy(path, renamed[-1])
    other_names = [f"stim{i}" for i in range(5)]
    with caplog.at_level(logging.INFO, logger="brainllm"):
        again = vf.obtain_image_features(store, model_cfg, renamed, other_names, tmp_path / "m2.json")
    assert again == entry and "reused" in caplog.text
    assert json.loads((tmp_path / "m2.json").read_text())["reused"] is True
    # Through the manifest, the run's own names label the shared entry.
    assert vf.read_image_features(tmp_path / "m2.json", layers=[2], names=other_names)["names"] == other_names
    with pytest.raises(InputError, match="names"):
        vf.read_image_features(tmp_path / "m2.json", names=names)
    # Other order, other settings: other entries (the loader is still refused).
    with pytest.raises(AssertionError, match="loaded"):
        vf.obtain_image_features(store, model_cfg, image_files[::-1], names[::-1], tmp_path / "m3.json")
    with pytest.raises(AssertionError, match="loaded"):
        vf.obtain_image_features(store, model_cfg, image_files, names, tmp_path / "m3.json", pooling="cls")
    assert vf.image_entry_path(store, model_cfg, vf.image_sha256(image_files), image_size=[32, 32]) != entry


def test_read_refuses_mismatched_names_and_bad_layers(models, image_files, tmp_path):
    entry = vf.obtain_image_features(tmp_path / "store", cfg(models["siglip"]), image_files, [p.stem for p in image_files], tmp_path / "m.json")
    with pytest.raises(InputError, match="names"):
        vf.read_image_features(entry, names=["a", "b", "c", "d", "e"])
    with pytest.raises(InputError, match="names"):
        vf.read_image_features(entry, names=[p.stem for p in image_files][:4])
    with pytest.raises(InputError, match="layers \\[7\\]"):
        vf.read_image_features(entry, layers=[7])
    with pytest.raises(InputError, match="class token"):
        vf.obtain_image_features(tmp_path / "store", cfg(models["siglip"]), image_files, [p.stem for p in image_files], tmp_path / "m.json", pooling="cls")


def test_interrupted_write_leaves_no_entry(models, image_files, tmp_path, monkeypatch):
    store = tmp_path / "store"
    model_cfg = cfg(models["clip"])
    names = [p.stem for p in image_files]
    original = h5py.Group.create_dataset
    calls = {"n": 0}

    def failing(self, name, *args, **kwargs):
        calls["n"] += 1
        if name == "layer_01":
            raise KeyboardInterrupt("killed mid-write")
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(KeyboardInterrupt):
        vf.obtain_image_features(store, model_cfg, image_files, names, tmp_path / "m.json")
    path = vf.image_entry_path(store, model_cfg, vf.image_sha256(image_files))
    assert calls["n"] == 2 and not path.exists()
    assert not list(path.parent.glob("*.tmp")) and not (tmp_path / "m.json").exists()
    monkeypatch.setattr(h5py.Group, "create_dataset", original)
    assert vf.obtain_image_features(store, model_cfg, image_files, names, tmp_path / "m.json") == path
    assert json.loads((tmp_path / "m.json").read_text())["reused"] is False


def test_incomplete_or_modified_entries_are_refused(models, image_files, tmp_path):
    entry = vf.obtain_image_features(tmp_path / "store", cfg(models["clip"]), image_files, [p.stem for p in image_files], tmp_path / "m.json")
    with h5py.File(entry, "a") as handle:
        handle["layer_01"][0, 0] += 1.0
    with pytest.raises(InputError, match="layer_01"):
        vf.read_image_features(entry)
    with h5py.File(entry, "a") as handle:
        del handle["layer_02"]
    with pytest.raises(InputError, match="incomplete"):
        vf.read_image_features(entry, layers=[0])
    with pytest.raises(InputError, match="incomplete"):  # a damaged entry is reported, not silently replaced
        vf.obtain_image_features(tmp_path / "store", cfg(models["clip"]), image_files, [p.stem for p in image_files], tmp_path / "m.json")


def test_bad_input(models, image_files, tmp_path):
    bert = tiny_models.build_bert(tmp_path / "bert")
    with pytest.raises(InputError, match="no vision tower.*Fix"):
        vf.n_vision_hidden_states(cfg(bert))
    with pytest.raises(InputError, match="bert.*no vision tower"):
        vf.load_vision_model(cfg(bert))
    with pytest.raises(InputError, match="missing.png.*not found"):
        vf.obtain_image_features(tmp_path / "store", cfg(models["clip"]), [image_files[0], tmp_path / "missing.png"], ["a", "b"], tmp_path / "m.json")
    remote = tmp_path / "remote_code"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "internvl_chat", "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig"}}))
    with pytest.raises(InputError, match="ships its own code.*Fix: .*trust_remote_code: true"):
        vf.n_vision_hidden_states(cfg(remote))
    with pytest.raises(InputError, match="ships its own code"):
        vf.load_vision_model(cfg(remote))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(InputError, match="broken.png.*cannot read"):
        vf.obtain_image_features(tmp_path / "store", cfg(models["clip"]), [image_files[0], broken], ["a", "b"], tmp_path / "m.json")
    with pytest.raises(InputError, match="pooling"):
        vf.image_entry_path(tmp_path, cfg(models["clip"]), ["x"], pooling="max")
    with pytest.raises(InputError, match="dtype"):
        vf.vision_settings(cfg(models["clip"], dtype="float64"))
    with pytest.raises(InputError, match="repeated"):
        vf.obtain_image_features(tmp_path / "store", cfg(models["clip"]), image_files[:2], ["a", "a"], tmp_path / "m.json")


def _relayout(source: Path, target: Path, rename, n_shards: int = 2) -> Path:
    """A copy of a checkpoint with renamed tensors split over ``n_shards`` files and an index."""
    from safetensors.torch import load_file, save_file

    target.mkdir()
    for item in source.iterdir():
        if item.suffix == ".json":
            shutil.copy(item, target / item.name)
    tensors = {rename(name): value for name, value in load_file(source / "model.safetensors").items()}
    names = sorted(tensors)
    weight_map = {}
    for shard in range(n_shards):
        filename = f"model-{shard + 1:05d}-of-{n_shards:05d}.safetensors"
        part = names[shard::n_shards]
        save_file({name: tensors[name].contiguous() for name in part}, target / filename, metadata={"format": "pt"})
        weight_map.update({name: filename for name in part})
    (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return target


def test_llava_sharded_and_older_tensor_names(models, image_files, tmp_path):
    """Sharded checkpoints, and the tensor names of the hub's LLaVA checkpoints and of transformers 5's modules, load the same tower."""

    def hub_name(name: str) -> str:  # llava-hf checkpoints: the CLIPVisionModel's own vision_model level
        return "vision_tower.vision_model." + name[len("vision_tower."):] if name.startswith("vision_tower.") else name

    def module_name(name: str) -> str:  # transformers 5's module names (what it reads without conversion)
        for old, new in (("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."),
                         ("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head.")):
            if name.startswith(old):
                return new + name[len(old):]
        return name

    images = _images(image_files)
    expected = vf.extract_image_features(*vf.load_vision_model(cfg(models["llava"]))[:2], images)
    for target, rename in ((tmp_path / "sharded", lambda n: n), (tmp_path / "hub_names", hub_name), (tmp_path / "module_names", module_name)):
        model, processor, info = vf.load_vision_model(cfg(_relayout(models["llava"], target, rename)))
        layers, embedding = vf.extract_image_features(model, processor, images)
        for got, want in zip(layers, expected[0]):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(embedding, expected[1])
    incomplete = tmp_path / "incomplete"
    _relayout(models["llava"], incomplete, lambda n: n)
    from safetensors.torch import load_file, save_file

    shard = incomplete / "model-00001-of-00002.safetensors"
    tensors = load_file(shard)
    dropped = next(name for name in tensors if name.startswith("vision_tower."))
    del tensors[dropped]
    save_file(tensors, shard, metadata={"format": "pt"})
    index = json.loads((incomplete / "model.safetensors.index.json").read_text())
    del index["weight_map"][dropped]
    (incomplete / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="missing from the checkpoint"):
        vf.load_vision_model(cfg(incomplete))


def test_generic_vision_language_model(image_files, tmp_path):
    """A PaliGemma (SigLIP tower, Gemma LM): the whole model is loaded, its vision_tower used; no embedding."""
    import transformers

    config = transformers.PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", **TINY, projection_dim=32),
        text_config=dict(model_type="gemma", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=8, vocab_size=300),
        projection_dim=32,
    )
    torch.manual_seed(0)
    full = transformers.PaliGemmaForConditionalGeneration(config).eval()
    full.save_pretrained(tmp_path / "pali", safe_serialization=True)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "pali")
    model_cfg = cfg(tmp_path / "pali")
    model, processor, info = vf.load_vision_model(model_cfg)
    assert info["kind"] == "generic" and vf.n_vision_hidden_states(model_cfg) == 3 and not info["has_class_token"]
    images = _images(image_files)
    layers, embedding = vf.extract_image_features(model, processor, images, batch_size=4)
    assert len(layers) == 3 and embedding is None
    with torch.no_grad():
        pixels = processor(images=[images[1]], return_tensors="pt")["pixel_values"]
        reference = full.model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[1][0].mean(dim=0).numpy()
    np.testing.assert_allclose(layers[1][1], reference, atol=1e-5)
    with pytest.raises(InputError, match="class token"):
        vf.extract_image_features(model, processor, images, pooling="cls")


def test_vision_only_checkpoint_and_half_precision(models, image_files, tmp_path):
    """A saved CLIPVisionModelWithProjection loads like the CLIPModel it came from; bfloat16 gives float32 arrays near float32's."""
    model, processor, _ = vf.load_vision_model(cfg(models["clip"]))
    model.tower.save_pretrained(tmp_path / "clip_vision", safe_serialization=True)
    processor.save_pretrained(tmp_path / "clip_vision")
    vision_cfg = cfg(tmp_path / "clip_vision")
    assert vf.n_vision_hidden_states(vision_cfg) == 3
    images = _images(image_files)
    layers, embedding = vf.extract_image_features(model, processor, images)
    again, again_embedding = vf.extract_image_features(*vf.load_vision_model(vision_cfg)[:2], images)
    np.testing.assert_array_equal(again[2], layers[2])
    np.testing.assert_array_equal(again_embedding, embedding)
    half, half_embedding = vf.extract_image_features(*vf.load_vision_model(cfg(models["clip"], dtype="bfloat16"))[:2], images)
    assert half[2].dtype == np.float32 and half_embedding.dtype == np.float32
    np.testing.assert_allclose(half[2], layers[2], atol=0.1)
    assert vf.vision_settings_hash(cfg(models["clip"], dtype="bfloat16")) != vf.vision_settings_hash(cfg(models["clip"]))
    assert vf.vision_settings_hash(cfg(models["clip"], batch_size=7, device="auto")) == vf.vision_settings_hash(cfg(models["clip"]))


def test_float16_store_and_concurrent_writers(models, image_files, tmp_path, monkeypatch):
    """store_dtype float16 is stored as such and read as float32; two writers at once compute the entry once."""
    import threading
    import time

    model_cfg = cfg(models["siglip"], store_dtype="float16")
    names = [p.stem for p in image_files]
    loads = []
    real_loader = vf.load_vision_model

    def slow_loader(settings):
        loads.append(threading.get_ident())
        time.sleep(0.5)
        return real_loader(settings)

    monkeypatch.setattr(vf, "load_vision_model", slow_loader)
    results, errors = [], []

    def run(index):
        try:
            results.append(vf.obtain_image_features(tmp_path / "store", model_cfg, image_files, names, tmp_path / f"m{index}.json"))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(loads) == 1 and len(set(results)) == 1
    assert sorted(json.loads((tmp_path / f"m{i}.json").read_text())["reused"] for i in range(2)) == [False, True]
    with h5py.File(results[0], "r") as handle:
        assert handle["layer_00"].dtype == np.float16 and handle["embedding"].dtype == np.float32
    data = vf.read_image_features(results[0], layers=[0, 2])
    assert data["layers"][2].dtype == np.float32 and data["embedding"] is not None
    assert "SigLIP" in data["attrs"]["embedding_space"] and data["attrs"]["store_dtype"] == "float16"


def test_qwen2_vl_tower_alone_matches_the_whole_model(image_files, tmp_path):
    """Qwen2-VL's tower (patches + grid sizes) is built and read alone; features equal the whole model's tower, image by image."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    torch.manual_seed(0)
    config = Qwen2VLConfig(
        vision_config=dict(depth=2, embed_dim=32, hidden_size=48, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        text_config=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, vocab_size=200,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
    )
    whole = Qwen2VLForConditionalGeneration(config).eval()
    whole.save_pretrained(tmp_path / "qwen", safe_serialization=True)
    processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56)
    processor.save_pretrained(tmp_path / "qwen")
    model_cfg = cfg(tmp_path / "qwen")
    model, loaded_processor, info = vf.load_vision_model(model_cfg)
    assert info["kind"] == "qwen_vl" and "language model not loaded" in info["loaded"] and info["n_hidden_states"] == 3 == vf.n_vision_hidden_states(model_cfg)
    images = _images(image_files)
    layers, embedding = vf.extract_image_features(model, loaded_processor, images, batch_size=2)
    assert [layer.shape for layer in layers] == [(5, 32)] * 3 and embedding.shape == (5, 48)
    for i, image in enumerate(images):  # one image at a time through the whole model's tower
        inputs = processor(images=[image], return_tensors="pt")
        with torch.no_grad():
            out = whole.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"], output_hidden_states=True)
        for layer in range(3):
            np.testing.assert_allclose(layers[layer][i], out.hidden_states[layer].mean(0).numpy(), atol=1e-5)
        np.testing.assert_allclose(embedding[i], out.pooler_output.mean(0).numpy(), atol=1e-5)
    with pytest.raises(InputError, match="class token"):
        vf.extract_image_features(model, loaded_processor, images, pooling="cls")


def test_internvl_tower_and_its_own_image_features(image_files, tmp_path):
    """InternVL (pixel-shuffled projector) through the generic path: every tower layer, and the model's get_image_features as the embedding."""
    from transformers import CLIPImageProcessor, InternVLConfig, InternVLForConditionalGeneration

    torch.manual_seed(0)
    config = InternVLConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=[28, 28],
                                               patch_size=[14, 14]),
                            text_config=dict(model_type="qwen2", hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                             num_key_value_heads=1, vocab_size=200))
    whole = InternVLForConditionalGeneration(config).eval()
    whole.save_pretrained(tmp_path / "internvl", safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(tmp_path / "internvl")
    model, processor, info = vf.load_vision_model(cfg(tmp_path / "internvl"))
    assert info["n_hidden_states"] == 3 and "get_image_features" in info["embedding_space"]
    images = _images(image_files)
    layers, embedding = vf.extract_image_features(model, processor, images, batch_size=2)
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tower = whole.model.vision_tower(pixel_values=pixels, output_hidden_states=True)
        features = whole.get_image_features(pixel_values=pixels, vision_feature_layer=config.vision_feature_layer,
                                            vision_feature_select_strategy=config.vision_feature_select_strategy)
    np.testing.assert_allclose(layers[2], tower.hidden_states[2].mean(1).numpy(), atol=1e-5)
    np.testing.assert_allclose(embedding, getattr(features, "pooler_output", features).mean(1).numpy(), atol=1e-5)
