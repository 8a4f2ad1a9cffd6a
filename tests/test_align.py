"""brainllm.align against slow loop references written from the formulas."""

from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass, field

import h5py
import numpy as np
import pytest

from brainllm import align
from brainllm.io import InputError


def lanczos_reference(x: float, a: int) -> float:
    """L(x) = a·sin(πx)·sin(πx/a)/(π²x²), L(0) = 1, 0 for |x| > a — one value at a time."""
    if x == 0:
        return 1.0
    if abs(x) > a:
        return 0.0
    return a * math.sin(math.pi * x) * math.sin(math.pi * x / a) / (math.pi**2 * x**2)


def lanczos_matrix_reference(tr_times, word_times, window, cutoff_mult, tr, normalise):
    cutoff = cutoff_mult / tr
    matrix = np.zeros((len(tr_times), len(word_times)))
    for i, t_new in enumerate(tr_times):
        for j, t_old in enumerate(word_times):
            matrix[i, j] = lanczos_reference((t_new - t_old) * cutoff, window)
        if normalise and np.abs(matrix[i]).sum() > 1e-12:
            matrix[i] /= np.abs(matrix[i]).sum()
    return matrix


@pytest.fixture(scope="module")
def story():
    rng = np.random.default_rng(7)
    n_words = 300
    gaps = rng.uniform(0.2, 0.6, n_words)
    onsets = 10.0 + np.cumsum(gaps)  # audio starts 10 s into the scan
    offsets = onsets + rng.uniform(0.1, 0.3, n_words)
    n_trs_raw = int(np.ceil((offsets[-1] + 12.0) / 2.0))
    return {"features": rng.standard_normal((n_words, 5)), "onsets": onsets, "offsets": offsets, "n_trs_raw": n_trs_raw}


@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("window,cutoff_mult,tr", [(3, 1.0, 2.0), (2, 0.8, 1.5)])
def test_lanczos_matrix_matches_loop(story, normalise, window, cutoff_mult, tr):
    times = align.tr_times(story["n_trs_raw"], tr)
    midpoints = (story["onsets"] + story["offsets"]) / 2
    fast = align.lanczos_matrix(times, midpoints, window, cutoff_mult, tr=tr, normalise=normalise)
    slow = lanczos_matrix_reference(times, midpoints, window, cutoff_mult, tr, normalise)
    assert fast.shape == (story["n_trs_raw"], len(midpoints))
    assert np.max(np.abs(fast - slow)) <= 1e-10


def test_lanczos_kernel_special_points():
    x = np.array([0.0, 1.0, -2.0, 3.0, 3.5, -7.0, 0.5])
    values = align.lanczos_kernel(x, 3)
    assert values[0] == 1.0
    np.testing.assert_allclose(values[1:6], 0.0, atol=1e-15)  # zero at integers and beyond the window
    assert values[6] == pytest.approx(lanczos_reference(0.5, 3), abs=1e-15)


def test_ds003020_grid_arithmetic():
    n_raw, tr, audio_start = 200, 2.0, 10.0
    times = align.tr_times(n_raw, tr)
    # reference grid: TR k centred at 2k − 9 s after audio onset
    np.testing.assert_allclose(times - audio_start, 2 * np.arange(n_raw) - 9)
    # the reference keeps [10:-5] of an (n−5)-TR grid: the same TRs as trimming 10 and 10 here
    reference_kept = np.arange(n_raw - 5)[10:-5]
    np.testing.assert_array_equal(np.arange(n_raw)[10 : n_raw - 10], reference_kept)
    assert len(reference_kept) == n_raw - 20
    assert align.seconds_to_trs(align.trs_to_seconds(7, tr), tr) == 7


def test_align_story_trims_and_zscores(story):
    n_raw = story["n_trs_raw"]
    aligned = align.align_story(story["features"], story["onsets"], story["offsets"], n_raw, 2.0, 10, 10)
    assert aligned.shape == (n_raw - 20, 5) and aligned.dtype == np.float32
    np.testing.assert_allclose(aligned.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(aligned.std(0), 1, atol=1e-5)
    # independent path: loop matrix on all raw TRs, trim, z-score by hand
    midpoints = (story["onsets"] + story["offsets"]) / 2
    full = lanczos_matrix_reference(align.tr_times(n_raw, 2.0), midpoints, 3, 1.0, 2.0, False) @ story["features"]
    kept = full[10 : n_raw - 10]
    expected = (kept - kept.mean(0)) / kept.std(0)
    np.testing.assert_allclose(aligned, expected, atol=1e-5)


def test_align_story_recovers_slow_signal_at_tr_centres():
    # dense words carrying a slow sinusoid of scan time: the normalised interpolation
    # at each TR centre returns the sinusoid's value there (tests the time conventions)
    onsets = np.arange(10.0, 300.0, 0.25)
    offsets = onsets + 0.2
    midpoints = (onsets + offsets) / 2
    signal = np.sin(2 * np.pi * midpoints / 60.0)[:, None]
    n_raw = 155
    aligned = align.align_story(signal, onsets, offsets, n_raw, 2.0, 10, 10, normalise=True, zscore=False)
    centres = align.tr_times(n_raw, 2.0)[10 : n_raw - 10]
    inside = (centres > 20) & (centres < 290)
    # rows normalised by Σ|L| carry the sinusoid scaled by the constant ΣL/Σ|L| of dense words
    expected = np.sin(2 * np.pi * centres[inside] / 60.0)
    gain = float(aligned[inside, 0] @ expected / (expected @ expected))
    assert 0.7 < gain <= 1.0
    np.testing.assert_allclose(aligned[inside, 0], gain * expected, atol=0.02)


def test_normalised_lanczos_weights_are_bounded():
    # two close words on either side of the kernel's first zero: ΣL ≈ 0 would blow the weights up
    times = np.array([10.0])
    words = np.array([10.0 - 2.0 * 0.9, 10.0 - 2.0 * 1.14])
    raw = align.lanczos_matrix(times, words, tr=2.0)
    normalised = align.lanczos_matrix(times, words, tr=2.0, normalise=True)
    assert abs(raw.sum()) < 0.1 * np.abs(raw).sum()
    np.testing.assert_allclose(normalised, raw / np.abs(raw).sum())
    assert np.abs(normalised).max() <= 1.0


def test_make_delayed_matches_loops():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((12, 3))
    delays = [1, 2, 3, 4, 0, -2]
    delayed = align.make_delayed(X, delays)
    assert delayed.shape == (12, 3 * len(delays))
    for i, delay in enumerate(delays):
        for t in range(12):
            for f in range(3):
                source = t - delay
                expected = X[source, f] if 0 <= source < 12 else 0.0
                assert delayed[t, i * 3 + f] == expected


@dataclass
class FakeEntry:
    layers: dict
    words: list
    onset: np.ndarray
    offset: np.ndarray
    attrs: dict = field(default_factory=dict)


@pytest.fixture
def fake_store(monkeypatch, story):
    """Stand-in for brainllm.store.read_entry (this module is tested with synthetic entries)."""
    calls = []

    def read_entry(path, words_tsv=None, layers=None):
        calls.append((str(path), words_tsv, layers))
        all_layers = {0: story["features"][:, :3], 2: story["features"][:, 2:]}
        chosen = all_layers if layers is None else {layer: all_layers[layer] for layer in layers}
        return FakeEntry(chosen, ["w"] * len(story["onsets"]), story["onsets"], story["offsets"])

    module = types.ModuleType("brainllm.store")
    module.read_entry = read_entry
    monkeypatch.setitem(sys.modules, "brainllm.store", module)
    return calls


def _write_responses(path, n_trs_raw, n_rows, stories=("alpha", "beta")):
    with h5py.File(path, "w") as h5:
        for name in stories:
            group = h5.create_group(name)
            group.create_dataset("data", data=np.zeros((n_rows, 4), np.float32))
            group.attrs.update(tr=2.0, trim_start=10, trim_end=10, n_trs_raw=n_trs_raw)


def test_align_subject_writes_layers(tmp_path, story, fake_store):
    responses = tmp_path / "responses.h5"
    _write_responses(responses, story["n_trs_raw"], story["n_trs_raw"] - 20)
    out = tmp_path / "align" / "features.h5"
    entries = {"alpha": tmp_path / "a.h5", "beta": tmp_path / "b.h5"}
    words = {"alpha": "alpha.tsv", "beta": "beta.tsv"}
    align.align_subject(responses, entries, words, [0, 2], out, {"lanczos_window": 3})
    expected = align.align_story(story["features"][:, 2:], story["onsets"], story["offsets"], story["n_trs_raw"], 2.0, 10, 10)
    with h5py.File(out, "r") as h5:
        assert set(h5) == {"alpha", "beta"}
        assert set(h5["alpha"]) == {"layer_00", "layer_02"}
        np.testing.assert_array_equal(h5["beta"]["layer_02"][()], expected)
    assert {call[1] for call in fake_store} == {"alpha.tsv", "beta.tsv"}
    read = align.read_aligned(out, ["alpha"], 2)
    assert read["alpha"].shape == (story["n_trs_raw"] - 20, 3)
    with pytest.raises(InputError, match="layer_05"):
        align.read_aligned(out, ["alpha"], 5)


def test_align_subject_rejects_grid_mismatch(tmp_path, story, fake_store):
    responses = tmp_path / "responses.h5"
    _write_responses(responses, story["n_trs_raw"], story["n_trs_raw"] - 15)
    out = tmp_path / "features.h5"
    with pytest.raises(InputError, match="misaligned") as error:
        align.align_subject(responses, {"alpha": tmp_path / "a.h5"}, {}, None, out)
    assert str(responses) in str(error.value)
    assert not out.exists()
