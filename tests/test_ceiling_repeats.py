"""ds003020: per-repeat files of the test story (dataset.repeats_dir) become `repeats`."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from test_ingest import ds_config, ds_root, outputs  # noqa: F401 (fixture)

from brainllm import metrics
from brainllm.ingest import ingest_subject
from brainllm.io import InputError


def _write_repeats(root, scales):
    folder = root / "derivative" / "repeats" / "UTS01" / "beta"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(8, 5))
    runs = []
    for i, scale in enumerate(scales):
        run = (scale * (shared + rng.normal(size=(8, 5)))).astype(np.float32)
        with h5py.File(folder / f"rep{i + 1}.hf5", "w") as h5:
            h5["data"] = run
        runs.append(run)
    return np.stack(runs)


def test_repeats_dir_gives_repeats_and_a_ceiling(ds_root, tmp_path):  # noqa: F811
    expected = _write_repeats(ds_root, [0.5, 1.0, 4.0])
    paths = outputs(tmp_path)
    ingest_subject(ds_config(ds_root, repeats_dir="derivative/repeats/{subject}/{story}"), "UTS01", [], **paths)
    with h5py.File(paths["out_responses"], "r") as h5:
        np.testing.assert_array_equal(h5["beta"]["repeats"][()], expected)
        np.testing.assert_allclose(h5["beta"]["data"][()], expected.mean(0), rtol=1e-6)
        assert "repeats" not in h5["alpha"]  # no folder for this story: one run
        ceiling = metrics.noise_ceiling(h5["beta"]["repeats"][()])
    assert ceiling.shape == (5,) and np.isfinite(ceiling).all()


def test_repeats_dir_with_one_file_is_refused(ds_root, tmp_path):  # noqa: F811
    _write_repeats(ds_root, [1.0])
    with pytest.raises(InputError, match="at least 2"):
        ingest_subject(ds_config(ds_root, repeats_dir="derivative/repeats/{subject}/{story}"), "UTS01", [], **outputs(tmp_path))
