"""`results/` as a BIDS derivative dataset: dataset_description.json and JSON sidecars.

The results folder is the derivative's root. Its NIfTI maps keep the workflow's names
(``sub-<label>_model-<name>_layer-<NN>_r.nii.gz`` …): BIDS entities where BIDS has them
(``sub``), custom entities ``model`` and ``layer`` and custom suffixes ``r`` and
``bestlayer`` where it has none (docs/outputs.md, "BIDS derivative"). Every map gets a
sidecar ``<same name>.json`` saying what it holds, its units, the model, layer, method and
statistics used, and its ``Sources`` as BIDS URIs (``bids::<path in results>``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .io import InputError, write_json

logger = logging.getLogger(__name__)

BIDS_VERSION = "1.10.0"
PIPELINE = "brainllm"
ENCODING_METHODS = {
    "ridge": "ridge regression, one alpha per voxel chosen by leave-one-story-out cross-validation on the training stories (himalaya)",
    "bootstrap_ridge": "bootstrap ridge regression (Huth lab), one alpha per voxel chosen on held-out training chunks",
    "lipschitz": "linear map with a bounded spectral norm (projected gradient)",
}


def config_sha256(config: Mapping) -> str:
    """Hash of the resolved run config (key order ignored)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("brainllm")
    except PackageNotFoundError:
        return "unknown"


def dataset_description(config: Mapping, version: str | None = None) -> dict:
    """The derivative's dataset_description.json (BIDS ``DatasetType: derivative``)."""
    dataset = config["dataset"]
    root = Path(dataset["root"])
    source = {"URL": root.resolve().as_uri() if root.is_absolute() or root.exists() else str(root)}
    if dataset.get("doi"):
        source["DOI"] = dataset["doi"]
    return {
        "Name": f"brainllm encoding models of {dataset['name']}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": PIPELINE,
            "Version": version or package_version(),
            "Description": f"LLM hidden states -> {'EEG' if dataset.get('modality') == 'eeg' else 'voxelwise'} encoding models; "
                           f"config sha256 {config_sha256(config)}",
            "ConfigSha256": config_sha256(config),
        }],
        "SourceDatasets": [source],
    }


def _uri(path: str | os.PathLike, results: str | os.PathLike) -> str:
    """BIDS URI of a file of this derivative (``bids::<relative path>``)."""
    return f"bids::{Path(os.path.relpath(path, results)).as_posix()}"


def encoding_sidecar(kind: str, subject: str, model: str, model_cfg: Mapping, encoding: Mapping,
                     dataset: Mapping, sources: Sequence[str | os.PathLike], results: str | os.PathLike,
                     layer: int | None = None, summary: Mapping | None = None) -> dict:
    """Sidecar of an encoding map: ``kind`` "r" (held-out r of one layer) or "bestlayer"."""
    common = {
        "Subject": subject,
        "Model": model,
        "ModelSource": model_cfg["source"],
        "ModelContext": {"mode": model_cfg.get("context"), "words": model_cfg.get("context_words"), "pooling": model_cfg.get("pooling")},
        "Method": ENCODING_METHODS.get(encoding["method"], encoding["method"]),
        "MethodKey": encoding["method"],
        "Delays": list(encoding["delays"]),
        "TrainStories": list(dataset["train_stories"]),
        "TestStories": list(dataset["test_stories"]),
        "Sources": [_uri(path, results) for path in sources],
    }
    if kind == "r":
        sidecar = {
            "Description": "Pearson correlation between predicted and measured responses on the held-out test stories, per voxel",
            "Units": "Pearson r (dimensionless, -1 to 1)",
            "Layer": layer,
            **common,
            "Statistics": {
                "Score": "Pearson r over the test TRs (mean of the test story's repeats when it has several)",
                "FDR": f"Benjamini-Hochberg over voxels at q = {encoding['fdr_q']} (the significant column of _scores.tsv)",
            },
        }
        if summary:
            for key in ("n_test_trs", "n_voxels", "mean_r", "p_method", "p_value", "test"):
                if key in summary:
                    sidecar["Statistics"][key] = summary[key]
        return sidecar
    if kind == "bestlayer":
        return {
            "Description": "Hidden-state index with the highest held-out r per voxel; -1 where no layer is significant (FDR)",
            "Units": "layer index (0 = embeddings)",
            **common,
            "Statistics": {"Selection": "best layer per voxel among the layers listed in Sources"},
        }
    raise ValueError(f"unknown map kind {kind!r}")


def volume_sidecar(kind: str, subject: str, dataset: Mapping, sources: Sequence[str | os.PathLike], results: str | os.PathLike) -> dict:
    """Sidecar of an ingest/preprocess volume: ``kind`` mask, analysis_mask, mean or atlas."""
    descriptions = {
        "mask": ("Brain mask of the ingested responses (dataset.mask, or derived: the fMRIPrep brain masks of all runs intersected, "
                 "or voxels above 0.8 x the global mean of the mean image)", "boolean"),
        "analysis_mask": ("Voxels analysed: the ingest mask less voxels that are NaN or constant in any run", "boolean"),
        "mean": ("Mean functional image over the runs (display background of the brain maps)", "arbitrary (scanner units)"),
        "atlas": ("ROI atlas (integer labels) on the mask grid; names in atlas.tsv", "label index"),
    }
    if kind not in descriptions:
        raise ValueError(f"unknown volume kind {kind!r}")
    description, units = descriptions[kind]
    sidecar = {"Description": description, "Units": units, "Subject": subject, "Dataset": dataset["name"],
               "Sources": [_uri(path, results) for path in sources]}
    if kind in ("mask", "analysis_mask"):
        sidecar["Type"] = "Brain"
    return sidecar


def sidecar_path(nifti: str | os.PathLike) -> Path:
    """``x.nii.gz`` → ``x.json``."""
    name = Path(nifti).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return Path(nifti).with_name(name[: -len(ext)] + ".json")
    raise InputError(nifti, "not a NIfTI file name (.nii or .nii.gz).", None)


# Folders and files of results/ that BIDS has no naming rules for (stage outputs named with
# custom entities, HDF5/TSV tables, logs, the report): listed in .bidsignore so the
# bids-validator checks what BIDS defines (dataset_description.json, JSON syntax).
# (folder names without a trailing slash: the validator matches those).
BIDSIGNORE = ["ingest", "preprocess", "features", "align", "encoding", "contrastive", "decoding", "group", "generation", "report", "logs",
              "feature_store", "summary.tsv", "*.h5", "*.safetensors"]


def write_bidsignore(path: str | os.PathLike) -> None:
    from .io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(BIDSIGNORE) + "\n", encoding="utf-8")


def write_derivative_metadata(config: Mapping, results: str | os.PathLike, maps: Mapping[str, Mapping],
                              description_out: str | os.PathLike, bidsignore_out: str | os.PathLike | None = None) -> int:
    """Write dataset_description.json, .bidsignore (when asked) and one sidecar per map.

    ``maps``: NIfTI path → ``{"kind": …, "subject": …, "sources": [...]}`` plus, for encoding
    maps, ``"model"``, ``"model_cfg"`` (its settings; brain-tuned models are not in
    ``config["models"]``), ``"layer"`` and ``"summary"`` (the layer's _summary.json).
    Returns the number of sidecars written.
    """
    write_json(description_out, dataset_description(config))
    if bidsignore_out:
        write_bidsignore(bidsignore_out)
    for nifti, info in maps.items():
        if not Path(nifti).is_file():
            raise InputError(nifti, "this map is missing.", "rerun the rule that writes it.")
        if info["kind"] in ("r", "bestlayer"):
            summary = json.loads(Path(info["summary"]).read_text()) if info.get("summary") else None
            sidecar = encoding_sidecar(info["kind"], info["subject"], info["model"], info["model_cfg"],
                                       config["encoding"], config["dataset"], info["sources"], results,
                                       layer=info.get("layer"), summary=summary)
        else:
            sidecar = volume_sidecar(info["kind"], info["subject"], config["dataset"], info["sources"], results)
        write_json(sidecar_path(nifti), sidecar)
    logger.info("BIDS derivative: %s and %d sidecar(s)", description_out, len(maps))
    return len(maps)
