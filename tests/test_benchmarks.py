"""The benchmark scripts run end to end at a tiny size and print their result lines."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_ridge_small(capsys):
    load("bench_ridge").main(
        ["--n-train-trs", "240", "--n-stories", "4", "--n-test-trs", "60", "--hidden", "12", "--n-voxels", "40", "--nboots", "3"]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].startswith("default path: ridge_cv_eigh")
    assert "bootstrap/default" in lines[-2] and "himalaya/default" in lines[-2] and "sklearn/default" in lines[-2]
    assert lines[-1].startswith("mean |Δr|: default vs himalaya 0.0000")  # the same estimate


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bench_features_small(capsys):
    load("bench_features").main(["--words", "60", "--subset", "6", "--threads", "1"])
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT") and "minilm batched/unbatched" in last
    assert "minilm roofline" in out and "no batching can beat unbatched by more than" in out


def test_gpu_generation_runs_at_toy_size_on_cpu(capsys):
    load("gpu_generation").main(["--device", "cpu", "--hidden", "64", "--layers", "2", "--vocab", "300", "--voxels", "200",
                                 "--steps", "2", "--segments", "2"])
    out = capsys.readouterr().out
    assert "none: decoder training step" in out and "× the LLM's plain forward pass" in out
    assert "greedy generation" in out and "beam 4 generation" in out and "× one segment at a time" in out


def test_bench_eeg_trf_small(capsys):
    load("bench_eeg_trf").main(["--minutes", "4", "--baseline-minutes", "2", "--channels", "4", "--components", "4", "--alphas", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "sparse/dense time" in lines[1] and float(lines[1].rsplit("max |Δr| ", 1)[1]) < 1e-9  # the same fit
    assert lines[-1].startswith("RESULT 4 min, 324 columns: sparse")


def test_bench_eeg_trf_full_rank_small(capsys):
    load("bench_eeg_trf").main(["--full-rank", "--minutes", "3", "--baseline-minutes", "2", "--channels", "4", "--hidden", "12",
                                "--alphas", "3", "--full-rank-baseline-lags", "5"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "iterative/direct time" in lines[1] and float(lines[1].rsplit("max |Δr| ", 1)[1]) < 1e-5  # the same fit
    assert lines[-1].startswith("RESULT 3 min, 12 features × 81 lags (972 columns), iterative:")


def test_gpu_reconstruction_runs_with_the_tiny_pipeline_on_cpu(tmp_path, capsys):
    result = load("gpu_reconstruction").main(["--tiny", "--device", "cpu", "--n", "2", "--steps", "2", "--batch-size", "2",
                                               "--results", str(tmp_path)])
    assert (tmp_path / "gpu_reconstruction.json").is_file()
    assert "images/s" in capsys.readouterr().out and result


def test_bench_beam_proposals_small(capsys):
    result = load("bench_beam_proposals").main(["--slots", "6", "--beam", "3", "--vocab", "50"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT batched/one-at-a-time") and result["same_words"] and result["max_difference"] < 1e-4
