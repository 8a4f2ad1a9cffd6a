"""Image stimuli: BIDS runs whose events name image files → one response per image.

A run is a BOLD series with an ``events.tsv`` whose ``stim_file`` column (configurable)
names an image under the dataset's ``stimuli/`` folder. Each run is cleaned (detrend,
z-score, as the fMRI preprocessing) and every trial gets a response estimate:

- ``lss``: least-squares-separate GLM (Mumford et al. 2012): per trial an OLS of the
  voxel series on [this trial's HRF regressor, all other trials' regressor, intercept];
  HRF regressors from nilearn (``glover`` by default);
- ``window``: the mean of the TRs acquired within ``window_s`` seconds after the onset.

Training runs' images are averaged over their presentations; test runs' images keep
every repeat (noise ceiling) and their mean. The split is by run: ``dataset.train_stories``
and ``dataset.test_stories`` list the runs' BIDS task labels.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .io import InputError, atomic_path, open_h5

log = logging.getLogger(__name__)

RESPONSE_METHODS = ("lss", "window")


@dataclasses.dataclass(frozen=True)
class VisualSettings:
    """The ``visual`` section's stimulus and response settings."""

    stim_column: str = "stim_file"
    stimuli_dir: str = "stimuli"
    trial_type: str | None = None
    image_size: tuple[int, int] | None = None
    response_method: str = "lss"
    window_s: tuple[float, float] = (4.0, 8.0)
    hrf_model: str = "glover"
    slice_time_ref: float = 0.5

    @classmethod
    def from_config(cls, visual: Mapping) -> "VisualSettings":
        responses = dict(visual.get("responses") or {})
        size = visual.get("image_size")
        method = responses.get("method", "lss")
        if method not in RESPONSE_METHODS:
            raise InputError(None, f"visual.responses.method {method!r} is unknown.", f"use one of {', '.join(RESPONSE_METHODS)}.")
        window = tuple(float(w) for w in responses.get("window_s", (4.0, 8.0)))
        if len(window) != 2 or not window[0] < window[1]:
            raise InputError(None, f"visual.responses.window_s {list(window)} is not [start, end] with start < end.",
                             "give two numbers of seconds after the onset, e.g. [4, 8].")
        return cls(
            stim_column=str(visual.get("stim_column", "stim_file")),
            stimuli_dir=str(visual.get("stimuli_dir", "stimuli")),
            trial_type=visual.get("trial_type"),
            image_size=None if size is None else (int(size[0]), int(size[1])),
            response_method=method,
            window_s=window,
            hrf_model=str(responses.get("hrf_model", "glover")),
            slice_time_ref=float(responses.get("slice_time_ref", 0.5)),
        )


@dataclasses.dataclass(frozen=True)
class ImageRun:
    """One BOLD run of an image experiment."""

    task: str  # the BIDS task label, as listed in train_stories / test_stories
    split: str  # train | test
    bold: Path
    events: Path
    confounds: Path | None = None  # fMRIPrep confounds TSV (derivatives only)
    brain_mask: Path | None = None  # fMRIPrep brain mask (derivatives only)


def _entities(name: str) -> dict[str, str]:
    parts = name.split("_")
    return dict(part.split("-", 1) for part in parts[:-1] if "-" in part)


def subject_runs(dataset: Mapping, subject: str) -> list[ImageRun]:
    """Every run of a subject (raw BOLD, or fMRIPrep's with ``dataset.bids.space/desc``): training tasks first, then test tasks.

    Runs of a task (sessions, ``run-`` entities) are found as for word stimuli
    (:class:`brainllm.ingest.BidsDataset`); multi-echo series are refused.
    """
    from .ingest import BidsDataset, dataset_options

    bids = BidsDataset(dataset_options(dict(dataset)))
    bids.check_subject(subject)
    runs = []
    for split, key in (("train", "train_stories"), ("test", "test_stories")):
        for task in dataset[key]:
            for run in bids.runs(subject, task):
                if "echo" in _entities(run.bold.name):
                    raise InputError(run.bold, "a multi-echo BOLD series (echo- entity): each echo would count as a run of its own.",
                                     "combine the echoes first (e.g. tedana's optimally combined series) and keep one BOLD file per run.")
                runs.append(ImageRun(task, split, run.bold, run.events, run.confounds, run.brain_mask))
    return runs


def read_image_events(events: Path, root: str | os.PathLike, settings: VisualSettings) -> pd.DataFrame:
    """Trials of one run: ``onset duration stim_file path`` (rows without an image are skipped).

    Errors name the events file and row: a missing column, a ``stim_file`` outside the
    dataset's stimuli folder, an image that does not exist.
    """
    if not events.is_file():
        raise InputError(events, "events file not found for this BOLD run.", "add the run's _events.tsv with onset, duration and stim_file columns.")
    table = pd.read_csv(events, sep="\t", dtype={settings.stim_column: str}, keep_default_na=False, na_values={"onset": ["n/a"], "duration": ["n/a"]})
    missing = [c for c in ("onset", "duration", settings.stim_column) if c not in table.columns]
    if missing:
        raise InputError(events, f"no column {', '.join(missing)} (columns: {', '.join(table.columns)}).",
                         "name the image column with visual.stim_column" if settings.stim_column in missing else "add BIDS onset and duration columns.")
    if settings.trial_type is not None:
        if "trial_type" not in table.columns:
            raise InputError(events, f"visual.trial_type is {settings.trial_type!r} but the events have no trial_type column.", "set visual.trial_type: null.")
        table = table[table["trial_type"].astype(str) == settings.trial_type]
    stimuli = os.path.normpath(os.path.abspath(Path(root) / settings.stimuli_dir))
    rows = []
    for row_number, row in table.iterrows():
        name = str(row[settings.stim_column]).strip()
        if name in ("", "n/a"):
            continue
        where = f"{events}, row {row_number + 2} ({settings.stim_column} {name!r})"  # +2: header line, 1-based
        # containment is checked on the names, not on resolved links: annexed datasets (DataLad) link images elsewhere
        path = os.path.normpath(os.path.join(stimuli, name))
        if os.path.isabs(name) or os.path.commonpath([stimuli, path]) != stimuli or path == stimuli:
            raise InputError(events, f"row {row_number + 2}: {settings.stim_column} {name!r} points outside the dataset's "
                             f"{settings.stimuli_dir}/ folder.", f"give paths relative to {stimuli}.")
        if not os.path.isfile(path):
            raise InputError(path, f"image not found (named by {where}).", f"add the image under {stimuli}, or fix the events row.")
        try:
            onset, duration = float(row["onset"]), float(row["duration"])
        except (TypeError, ValueError):
            onset = duration = float("nan")
        if not np.isfinite(onset) or not np.isfinite(duration) or duration < 0:
            raise InputError(events, f"row {row_number + 2}: onset {row['onset']!r} / duration {row['duration']!r} are not valid seconds.",
                             "give onset and duration in seconds (numbers) on every row naming an image.")
        # one name per image: "a.png" and "./a.png" are the same file
        rows.append({"onset": onset, "duration": duration, "stim_file": os.path.relpath(path, stimuli), "path": path})
    if not rows:
        raise InputError(events, f"no trial names an image in column {settings.stim_column!r}.", "check visual.stim_column and visual.trial_type.")
    return pd.DataFrame(rows)


def stimulus_names(dataset: Mapping, settings: VisualSettings, subjects: Sequence[str]) -> tuple[list[str], list[str]]:
    """Every image some run of ``subjects`` shows: ``(stim_file names, paths)``, sorted by name, unique."""
    images: dict[str, str] = {}
    for subject in subjects:
        for run in subject_runs(dataset, subject):
            trials = read_image_events(run.events, dataset["root"], settings)
            images.update(zip(trials["stim_file"], trials["path"]))
    names = sorted(images)
    return names, [images[name] for name in names]


def stimulus_files(dataset: Mapping, settings: VisualSettings, subjects: Sequence[str]) -> list[str]:
    """Paths of every image some run of ``subjects`` shows: a rule's inputs."""
    return stimulus_names(dataset, settings, subjects)[1]


def frame_times(n_trs: int, tr: float, slice_time_ref: float = 0.5) -> np.ndarray:
    """Time each volume stands for, seconds from the start of the run (BIDS onsets' origin): ``(k + slice_time_ref)·TR``.

    ``slice_time_ref`` is the fraction of the TR at which the volume is sampled: 0.5 (default)
    the middle of its acquisition, as after fMRIPrep's slice-timing correction; 0 its start.
    """
    return (np.arange(n_trs) + slice_time_ref) * tr


def window_responses(bold: np.ndarray, tr: float, onsets: Sequence[float], window_s: tuple[float, float], where: Path,
                     slice_time_ref: float = 0.5) -> np.ndarray:
    """``(n_trials, n_voxels)``: the mean of the volumes whose time falls within ``window_s`` after each onset."""
    times = frame_times(len(bold), tr, slice_time_ref)
    out = np.empty((len(onsets), bold.shape[1]), dtype=np.float64)
    for i, onset in enumerate(onsets):
        inside = (times >= onset + window_s[0]) & (times <= onset + window_s[1])
        if not inside.any():
            raise InputError(where, f"trial at {onset:.2f} s: no volume within {window_s[0]}–{window_s[1]} s after it (run of {len(bold)} TRs).",
                             "widen visual.responses.window_s, or check the onsets (seconds from the first volume).")
        out[i] = bold[inside].mean(0)
    return out


def trial_regressors(n_trs: int, tr: float, onsets: Sequence[float], durations: Sequence[float], hrf_model: str,
                     slice_time_ref: float = 0.5, where: str | os.PathLike = "the events") -> np.ndarray:
    """``(n_trs, n_trials)``: each trial's boxcar convolved with the HRF (nilearn), sampled at the volumes.

    A trial whose response falls outside the run (an all-zero regressor) is an error.
    """
    from nilearn.glm.first_level import compute_regressor

    times = frame_times(n_trs, tr, slice_time_ref)
    columns = []
    for onset, duration in zip(onsets, durations):
        regressor, _ = compute_regressor(np.array([[onset], [max(duration, 0.0)], [1.0]]), hrf_model, times, oversampling=50)
        if np.abs(regressor).max() < 1e-6:
            raise InputError(where, f"the trial at {onset:.2f} s has no response within the run ({n_trs} volumes of {tr:g} s).",
                             "check the onsets (seconds from the first volume) and that the events belong to this run.")
        columns.append(regressor[:, 0])
    return np.stack(columns, axis=1)


def lss_responses(bold: np.ndarray, regressors: np.ndarray) -> np.ndarray:
    """Least-squares-separate betas ``(n_trials, n_voxels)``.

    For trial i: OLS of ``bold`` on [x_i, Σ_{j≠i} x_j, 1]; the beta of x_i. All voxels at
    once (one 3-column pseudo-inverse per trial).
    """
    total = regressors.sum(1)
    ones = np.ones(len(bold))
    betas = np.empty((regressors.shape[1], bold.shape[1]), dtype=np.float64)
    for i in range(regressors.shape[1]):
        design = np.column_stack([regressors[:, i], total - regressors[:, i], ones])
        betas[i] = (np.linalg.pinv(design) @ bold)[0]
    return betas


def _subject_mask(dataset: Mapping, subject: str, runs: Sequence[ImageRun]):
    """``dataset.mask``, else the intersection of fMRIPrep's brain masks, else an intensity mask of the first run's mean."""
    from .ingest import bold_header, intensity_mask, load_mask

    img = bold_header(runs[0].bold)
    if dataset.get("mask"):
        return load_mask(Path(dataset["root"]) / dataset["mask"].format(subject=subject), img.shape[:3], runs[0].bold)
    if all(run.brain_mask is not None for run in runs):
        mask = np.ones(img.shape[:3], dtype=bool)
        for run in runs:
            mask &= load_mask(run.brain_mask, img.shape[:3], run.bold)[0]
        return mask, img.affine
    log.warning("no dataset.mask and no fMRIPrep brain mask: an intensity mask of the mean of %s", runs[0].bold.name)
    return intensity_mask(np.asarray(img.dataobj, dtype=np.float32).mean(-1)), img.affine


def _clean(bold: np.ndarray, tr: float, preprocess: Mapping, confounds: np.ndarray | None) -> np.ndarray:
    from .preprocess import clean_run

    return clean_run(
        bold, tr, detrend=preprocess.get("detrend", "savgol"), savgol_window_s=preprocess.get("savgol_window_s", 120.0),
        savgol_polyorder=preprocess.get("savgol_polyorder", 2), polynomial_order=preprocess.get("polynomial_order", 2),
        confounds=confounds, zscore=preprocess.get("zscore", True), trim_start=0, trim_end=0,
    )


def estimate_trials(dataset: Mapping, subject: str, settings: VisualSettings, preprocess: Mapping) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Every trial of a subject: ``(trials table, responses (n_trials, n_voxels), mask, affine)``.

    Voxels NaN in any run after cleaning (constant, non-finite) are dropped from the mask.
    """
    from tqdm import tqdm

    from .ingest import check_tr, load_bold, read_confounds, sidecar_metadata

    runs = subject_runs(dataset, subject)
    mask, affine = _subject_mask(dataset, subject, runs)
    confound_names = list(preprocess.get("confounds") or [])
    tr = float(dataset["tr"])
    tables, estimates = [], []
    for run_index, run in enumerate(tqdm(runs, desc=f"trials sub-{subject}", unit="run", mininterval=5)):
        trials = read_image_events(run.events, dataset["root"], settings)
        img, data = load_bold(run.bold)
        check_tr(img, sidecar_metadata(Path(dataset["root"]), run.bold), tr, run.bold)
        if data.shape[:3] != mask.shape or not np.allclose(img.affine, affine, atol=1e-3):
            raise InputError(run.bold, f"BOLD grid {data.shape[:3]} (affine below) differs from the subject's mask {mask.shape} / first run "
                             f"{runs[0].bold.name}:\n{np.round(img.affine, 3)}", "give every run of a subject in one space (register and resample them first).")
        confounds = read_confounds(run.confounds, confound_names, data.shape[3], run.bold) if confound_names else None
        bold = _clean(data[mask].T, tr, preprocess, confounds)
        if settings.response_method == "window":
            response = window_responses(bold, tr, trials["onset"], settings.window_s, run.events, settings.slice_time_ref)
        else:
            regressors = trial_regressors(len(bold), tr, trials["onset"], trials["duration"], settings.hrf_model, settings.slice_time_ref, run.events)
            response = lss_responses(np.nan_to_num(bold), regressors)
            response[:, ~np.isfinite(bold).all(0)] = np.nan
        trials = trials.assign(task=run.task, split=run.split, run=run_index, run_file=run.bold.name)
        tables.append(trials)
        estimates.append(response)
        log.info("%s: %d trials, %d TRs (%s)", run.bold.name, len(trials), len(bold), settings.response_method)
    responses = np.concatenate(estimates)
    keep = np.isfinite(responses).all(0)
    if not keep.any():
        raise InputError(runs[0].bold, "no voxel has a finite response in every run.", "check the BOLD series and the mask.")
    if (~keep).any():
        log.info("%d of %d voxels dropped (non-finite or constant in some run)", int((~keep).sum()), keep.size)
        dropped = np.zeros(mask.shape, bool)
        dropped[mask] = ~keep
        mask = mask & ~dropped
    return pd.concat(tables, ignore_index=True), responses[:, keep], mask, affine


MIN_TRAINING_RUNS = 3  # nested leave-one-run-out: a held-out run, and CV over at least two others


def check_split_contents(trials: pd.DataFrame, where: str | os.PathLike) -> None:
    """Refuse an image file content shown in both training and test runs, whatever its names."""
    from .images import image_sha256

    paths = sorted(set(trials["path"]))
    digest = dict(zip(paths, image_sha256(paths)))
    content = trials["path"].map(digest)
    train = trials["split"] == "train"
    shared = set(content[train]) & set(content[~train])
    if shared:
        names = sorted(set(trials.loc[content.isin(shared), "stim_file"]))
        raise InputError(where, f"{len(shared)} image contents ({', '.join(names[:4])}{'…' if len(names) > 4 else ''}) are shown in both "
                         "training and test runs (under these names): the test would score images the models were fitted on.",
                         "move those runs, or show each image in one split.")


@dataclasses.dataclass
class ImageResponses:
    """Responses per image: training images (repeats averaged) and test images (every repeat and their mean)."""

    train: np.ndarray  # (n_train, n_voxels)
    train_images: list[str]
    train_runs: np.ndarray  # run index per training image (cross-validation groups), ascending
    test: np.ndarray  # (n_test, n_voxels): mean over repeats
    test_images: list[str]
    test_repeats: np.ndarray | None  # (n_rep, n_test, n_voxels), n_rep ≥ 2, else None

    @property
    def run_lengths(self) -> list[int]:
        """Consecutive training rows per run: the leave-one-run-out folds."""
        return [int(n) for n in np.unique(self.train_runs, return_counts=True)[1]]


def image_responses(trials: pd.DataFrame, responses: np.ndarray, where: str | os.PathLike = "the events") -> ImageResponses:
    """Group trial estimates by image; refuses an image shown in both training and test runs."""
    train_rows = trials["split"] == "train"
    shared = sorted(set(trials.loc[train_rows, "stim_file"]) & set(trials.loc[~train_rows, "stim_file"]))
    if shared:
        raise InputError(where, f"{len(shared)} images ({', '.join(shared[:3])}{'…' if len(shared) > 3 else ''}) are shown in both training "
                         "and test runs: the test would score images the models were fitted on.", "move those runs, or show each image in one split.")
    train = trials[train_rows]
    first_run = train.groupby("stim_file", sort=False)["run"].min().sort_values(kind="stable")
    train_images = list(first_run.index)
    train_mean = np.stack([responses[train.index[train["stim_file"] == name]].mean(0) for name in train_images])
    test = trials[~train_rows]
    test_images = list(dict.fromkeys(test["stim_file"]))
    rows_per_image = [test.index[test["stim_file"] == name] for name in test_images]
    n_rep = min(len(rows) for rows in rows_per_image) if rows_per_image else 0
    if rows_per_image and len({len(rows) for rows in rows_per_image}) > 1:
        log.warning("test images are shown %d–%d times: the noise ceiling uses the first %d presentations of each",
                    n_rep, max(len(rows) for rows in rows_per_image), n_rep)
    test_mean = np.stack([responses[rows].mean(0) for rows in rows_per_image]) if rows_per_image else np.zeros((0, responses.shape[1]))
    repeats = np.stack([np.stack([responses[rows[k]] for rows in rows_per_image]) for k in range(n_rep)]) if n_rep >= 2 else None
    return ImageResponses(train_mean, train_images, first_run.to_numpy(), test_mean, test_images, repeats)


def write_image_responses(path: str | os.PathLike, data: ImageResponses, attrs: Mapping) -> None:
    """HDF5: ``train/{responses,images,runs}``, ``test/{responses,images[,repeats]}``; written atomically."""
    import h5py

    strings = h5py.string_dtype("utf-8")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        for key, value in attrs.items():
            handle.attrs[key] = value
        train = handle.create_group("train")
        train["responses"] = data.train.astype(np.float32)
        train["images"] = np.array(data.train_images, dtype=object).astype(strings)
        train["runs"] = data.train_runs.astype(np.int64)
        test = handle.create_group("test")
        test["responses"] = data.test.astype(np.float32)
        test["images"] = np.array(data.test_images, dtype=object).astype(strings)
        if data.test_repeats is not None:
            test["repeats"] = data.test_repeats.astype(np.float32)


def read_image_responses(path: str | os.PathLike) -> ImageResponses:
    with open_h5(path) as handle:
        def names(group):
            return [v.decode() if isinstance(v, bytes) else str(v) for v in handle[group]["images"][()]]

        return ImageResponses(
            handle["train/responses"][()].astype(np.float64), names("train"), handle["train/runs"][()],
            handle["test/responses"][()].astype(np.float64), names("test"),
            handle["test/repeats"][()].astype(np.float64) if "repeats" in handle["test"] else None,
        )


def run_trials(dataset: Mapping, subject: str, visual: Mapping, preprocess: Mapping, out_h5, out_mask, out_tsv) -> ImageResponses:
    """The ``visual_trials`` rule: trial estimates of a subject → responses per image, mask, trial table."""
    from .ingest import save_nifti

    settings = VisualSettings.from_config(visual)
    trials, responses, mask, affine = estimate_trials(dataset, subject, settings, preprocess)
    where = Path(dataset["root"]) / f"sub-{subject}"
    check_split_contents(trials, where)
    data = image_responses(trials, responses, where)
    if len(data.test_images) < 2:
        raise InputError(where, f"the test runs show {len(data.test_images)} image(s): identification and reconstruction scores need two or more.",
                         "list the test runs' tasks in dataset.test_stories.")
    if len(data.run_lengths) < MIN_TRAINING_RUNS:
        raise InputError(where, f"the training images come from {len(data.run_lengths)} run(s); the decoders' choices are cross-validated "
                         f"by run within the training runs (nested), which needs {MIN_TRAINING_RUNS} or more.",
                         "list more training runs in dataset.train_stories.")
    write_image_responses(out_h5, data, {"method": settings.response_method, "tr": float(dataset["tr"]),
                                         "window_s": list(settings.window_s), "hrf_model": settings.hrf_model})
    save_nifti(mask.astype(np.uint8), affine, out_mask)
    with atomic_path(out_tsv) as tmp:
        trials.drop(columns="path").to_csv(tmp, sep="\t", index=False)
    log.info("sub-%s: %d training images (%d runs), %d test images (%s repeats), %d voxels", subject, len(data.train_images),
             len(data.run_lengths), len(data.test_images), 0 if data.test_repeats is None else len(data.test_repeats), data.train.shape[1])
    return data
