"""Visual reconstruction (brainllm.reconstruction) against planted ground truth.

Synthetic stimuli: smooth random blobs (16×16 grayscale, stored as uint8 RGB). Synthetic
voxels: sparse linear receptive-field mixtures of the pixels plus noise. Training images in
6 runs of 40; test images separate.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from brainllm import reconstruction as R
from brainllm.images import downsample, grayscale

N_TRAIN, N_TEST, N_RUNS, N_VOXELS, SIZE = 240, 60, 6, 300, 16


@pytest.fixture(autouse=True)
def _quiet_alpha_edges(caplog):
    caplog.set_level(logging.ERROR, logger="brainllm.encoding")


def blobs(n: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    noise = np.stack([gaussian_filter(a, 1.5, mode="wrap") for a in rng.standard_normal((n, size, size))])
    lo, hi = noise.min(axis=(1, 2), keepdims=True), noise.max(axis=(1, 2), keepdims=True)
    gray = (noise - lo) / (hi - lo)
    return np.round(np.repeat(gray[..., None], 3, axis=-1) * 255).astype(np.uint8)


def planted(noise: float, signal: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = blobs(N_TRAIN + N_TEST, rng)
    pixels = downsample(grayscale(images), SIZE).reshape(len(images), -1)
    receptive_fields = rng.standard_normal((SIZE * SIZE, N_VOXELS)) * (rng.random((SIZE * SIZE, N_VOXELS)) < 0.05)
    clean = pixels @ receptive_fields
    scale = clean.std()
    Y = clean + noise * scale * rng.standard_normal(clean.shape) if signal else scale * rng.standard_normal(clean.shape)
    runs = np.repeat(np.arange(N_RUNS), N_TRAIN // N_RUNS)
    return Y[:N_TRAIN], images[:N_TRAIN], runs, Y[N_TRAIN:], images[N_TRAIN:]


@pytest.fixture(scope="module")
def clean_fit():
    Y_train, images_train, runs, Y_test, images_test = planted(noise=0.2)
    return R.fit_linear_reconstruction(Y_train, images_train, runs, size=SIZE), Y_test, images_test


def test_linear_reconstruction_recovers_planted_images(clean_fit):
    model, Y_test, images_test = clean_fit
    recon = model.predict(Y_test)
    assert recon.shape == (N_TEST, SIZE, SIZE)
    summary, per_image = R.reconstruction_scores(recon, images_test, n_permutations=500)
    assert summary["pixel_corr"] >= 0.7
    assert summary["two_way_pixels"] >= 0.9
    assert summary["pixel_corr_p"] < 0.01
    assert abs(summary["chance"]["two_way_pixels"] - 0.5) < 0.15 and summary["chance"]["pixel_corr"] < 0.2
    assert list(per_image.columns) == ["image", "pixel_corr", "ssim", "two_way_pixels"] and len(per_image) == N_TEST
    assert model.scales == R.SCALES and model.scale_weights.shape == (4,)
    assert model.info["oof_pixel_corr"] > 0.5


def test_noise_only_voxels_reconstruct_at_chance():
    Y_train, images_train, runs, Y_test, images_test = planted(noise=0.0, signal=False, seed=1)
    model = R.fit_linear_reconstruction(Y_train, images_train, runs, size=SIZE)
    summary, _ = R.reconstruction_scores(model.predict(Y_test), images_test, n_permutations=200)
    assert abs(summary["pixel_corr"]) < 0.1
    # under the null each image's two-way share is uniform on {0, 1/(n-1), ..., 1} (variance
    # ≈ 1/12), so the mean over n test images has SD ≈ sqrt(1/(12 n)) = 0.037 at n = 60
    # (measured: 0.038 over 300 draws of independent blob images); allow 4 SD (0.15)
    tolerance = 4 * np.sqrt(1 / (12 * N_TEST))
    assert abs(summary["two_way_pixels"] - 0.5) < tolerance
    assert summary["pixel_corr_p"] > 0.01


def test_scale_weights_never_see_test_data_or_their_own_run():
    Y_train, images_train, runs, Y_test, _ = planted(noise=0.5, seed=2)
    Y_train, images_train, runs = Y_train[:120], images_train[:120], np.repeat(np.arange(3), 40)
    model = R.fit_linear_reconstruction(Y_train, images_train, runs)
    # the fit takes no test data: refitting on the same training data gives the same model,
    # whatever responses are later decoded
    again = R.fit_linear_reconstruction(Y_train, images_train, runs)
    np.testing.assert_array_equal(model.scale_weights, again.scale_weights)
    shifted = model.predict(Y_test + 1.0)
    assert not np.allclose(shifted, model.predict(Y_test))
    np.testing.assert_array_equal(model.scale_weights, again.scale_weights)
    # out-of-fold: a run's predictions do not depend on that run's targets
    targets = downsample(grayscale(images_train), SIZE).reshape(120, -1)
    oof = R._out_of_fold(Y_train, targets, runs, None, "auto")
    changed = targets.copy()
    changed[runs == 1] = np.random.default_rng(0).random(changed[runs == 1].shape)
    oof_changed = R._out_of_fold(Y_train, changed, runs, None, "auto")
    np.testing.assert_allclose(oof_changed[runs == 1], oof[runs == 1], atol=1e-5)
    assert not np.allclose(oof_changed[runs == 0], oof[runs == 0])
    # grouped folds: runs 0-1 and 2-3 of 4 held out together
    runs4 = np.repeat(np.arange(4), 30)
    grouped = R._out_of_fold(Y_train, changed, runs4, None, "auto", n_folds=2)
    changed[runs4 < 2] = 0.5
    np.testing.assert_allclose(R._out_of_fold(Y_train, changed, runs4, None, "auto", n_folds=2)[runs4 < 2], grouped[runs4 < 2], atol=1e-5)


def test_image_bases_average_patches_and_map_back():
    encode, decode = R.image_bases(4, (2, 2))
    assert encode.shape == (9, 16) and decode.shape == (16, 9)
    image = np.arange(16.0)
    np.testing.assert_allclose((encode @ image)[0], image.reshape(4, 4)[:2, :2].mean())
    constant = np.full(9, 0.3)
    np.testing.assert_allclose(decode @ constant, 0.3)  # each pixel the mean of the bases covering it
    np.testing.assert_allclose(decode[0], np.eye(9)[0])  # the corner pixel is covered by one base


def test_two_way_identification_matches_slow_loop():
    rng = np.random.default_rng(3)
    true = rng.standard_normal((25, 40))
    pred = 0.6 * true + rng.standard_normal((25, 40))
    wins = pairs = 0
    for i in range(25):
        own = np.corrcoef(pred[i], true[i])[0, 1]
        for j in range(25):
            if j != i:
                wins += own > np.corrcoef(pred[i], true[j])[0, 1]
                pairs += 1
    assert R.two_way_identification(pred, true) == pytest.approx(wins / pairs, abs=1e-12)
    assert R.two_way_identification(true, true) == 1.0
    # ties count half, as in visual identification: two test images alike tie for each other
    a, b = rng.standard_normal((2, 40))
    assert R.two_way_identification(np.array([a, a, b]), np.array([a, a, b])) == pytest.approx((0.75 + 0.75 + 1.0) / 3)


def test_ssim_and_feature_scores():
    rng = np.random.default_rng(4)
    truth = blobs(8, rng)
    gray_truth = downsample(grayscale(truth), SIZE)
    recon = np.clip(gray_truth + 0.1 * rng.standard_normal(gray_truth.shape), 0, 1)
    features = ("flat", lambda x: x.reshape(len(x), -1).astype(float))
    embed = lambda x: x.reshape(len(x), -1)[:, :50].astype(float) + 1.0  # noqa: E731
    summary, per_image = R.reconstruction_scores(recon, truth, feature_fns=[features], embed_fn=embed, n_permutations=50)
    expected = [structural_similarity(r, t, data_range=1.0, win_size=7) for r, t in zip(recon, gray_truth)]
    np.testing.assert_allclose(per_image["ssim"], expected)
    assert summary["ssim"] == pytest.approx(np.mean(expected))
    assert {"two_way_flat", "clip_distance"} <= set(per_image.columns) and "clip_distance" in summary["chance"]
    generated = np.repeat(np.repeat(truth, 2, axis=1), 2, axis=2)  # (8, 32, 32, 3) uint8, as a generator gives
    at_16, _ = R.reconstruction_scores(generated, truth, size=SIZE, n_permutations=50)
    assert at_16["pixel_corr"] == pytest.approx(1.0) and at_16["ssim"] == pytest.approx(1.0)
    perfect, _ = R.reconstruction_scores(truth, truth, embed_fn=embed, n_permutations=50)
    assert perfect["pixel_corr"] == pytest.approx(1.0) and perfect["clip_distance"] == pytest.approx(0.0, abs=1e-12)


def test_reconstructor_save_load_round_trip(clean_fit, tmp_path):
    model, Y_test, _ = clean_fit
    model.save(tmp_path / "linear.safetensors")
    assert (tmp_path / "linear.safetensors.json").is_file()
    loaded = R.LinearReconstructor.load(tmp_path / "linear.safetensors")
    assert loaded.scales == model.scales and loaded.size == model.size
    np.testing.assert_allclose(loaded.predict(Y_test), model.predict(Y_test), rtol=1e-10, atol=1e-12)
    ridge_map = model.decoders[0]
    ridge_map.save(tmp_path / "map.safetensors")
    np.testing.assert_allclose(R.RidgeMap.load(tmp_path / "map.safetensors").predict(Y_test), ridge_map.predict(Y_test))


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    path = R.build_tiny_unclip_pipeline(tmp_path_factory.mktemp("unclip") / "tiny_unclip", seed=0)
    assert not list(path.rglob("*.bin")) and list(path.rglob("*.safetensors"))
    return R.load_unclip_pipeline(path, device="cpu")


def test_tiny_unclip_generation_mechanics(tiny_pipe):
    rng = np.random.default_rng(5)
    embeds = R.clip_image_embeddings(tiny_pipe, blobs(3, rng))
    assert embeds.shape == (3, 32)
    kwargs = dict(steps=3, guidance_scale=3.0, seed=0)
    first = R.generate_from_embeddings(tiny_pipe, embeds, **kwargs)
    assert first.shape == (3, 32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(R.generate_from_embeddings(tiny_pipe, embeds, **kwargs), first)  # fixed seed
    one_by_one = R.generate_from_embeddings(tiny_pipe, embeds, batch_size=1, **kwargs)
    assert np.abs(one_by_one.astype(int) - first).max() <= 1  # the seed is per image, not per batch
    other_embeds = 3.0 * rng.standard_normal(embeds.shape)
    other = R.generate_from_embeddings(tiny_pipe, other_embeds, **kwargs)
    assert np.abs(other.astype(int) - first).mean() > 2  # the embedding conditions the output (same seed, same noise)
    start = rng.random((3, SIZE, SIZE))
    started = R.generate_from_embeddings(tiny_pipe, embeds, init_images=start, strength=0.5, **kwargs)
    assert started.shape == first.shape and np.abs(started.astype(int) - first).mean() > 1
    np.testing.assert_array_equal(R.generate_from_embeddings(tiny_pipe, embeds, init_images=start, strength=0.5, **kwargs), started)


def test_embedding_decoder_feeds_generation(tiny_pipe):
    rng = np.random.default_rng(6)
    images = blobs(60, rng)
    embeds = R.clip_image_embeddings(tiny_pipe, images)
    Y = embeds @ rng.standard_normal((32, 80)) + 0.1 * rng.standard_normal((60, 80))
    decoder = R.fit_embedding_decoder(Y[:45], embeds[:45], np.repeat(np.arange(3), 15))
    predicted = decoder.predict(Y[45:])
    assert R.two_way_identification(predicted, embeds[45:]) > 0.9
    generated = R.generate_from_embeddings(tiny_pipe, predicted[:4], steps=2)
    assert generated.shape == (4, 32, 32, 3)
    summary, per_image = R.reconstruction_scores(generated, images[45:49], size=SIZE, n_permutations=20,
                                                 feature_fns=[("clip", R.clip_embedding_function(tiny_pipe))],
                                                 embed_fn=R.clip_embedding_function(tiny_pipe))
    assert {"two_way_clip", "clip_distance", "ssim"} <= set(per_image.columns) and 0 <= summary["clip_distance"] <= 2


def test_gpu_reconstruction_benchmark_runs_tiny_on_cpu(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_reconstruction", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_reconstruction.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--tiny", "--device", "cpu", "--n", "2", "--steps", "2", "--batch-size", "2", "--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert "from_noise: 2 images" in out and "low_level_start: 2 images" in out and "images/s" in out
    assert (tmp_path / "gpu_reconstruction.json").is_file() and result["from_noise"]["images_per_s"] > 0
