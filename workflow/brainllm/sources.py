"""The dataset files each ingest step reads, listed for Snakemake's inputs.

With every file an ingest rule reads as its input, editing one (an events.tsv, a BOLD
series, a sidecar, a TextGrid, respdict.json, an hf5, a mask, an atlas) reruns exactly
the jobs downstream of it. The lists mirror what ``brainllm.ingest`` opens, found by
path patterns (no pybids index, so planning stays fast); a file they miss is still read
and checked by ingestion, only without triggering reruns. A dataset root that does not
exist yet (the demo before it is generated) gives no files.
"""

from __future__ import annotations

from pathlib import Path

from brainllm.ingest import _entities_of, _run_stories, dataset_options, resolve_story
from brainllm.io import InputError


def _root(options: dict) -> Path | None:
    root = Path(options["root"])
    return root if root.is_dir() else None


ELECTROPHYSIOLOGY = ("eeg", "meg", "ieeg")  # BIDS datatype folders of recordings that are not BOLD


def _bids_run_files(root: Path, options: dict, subject: str, run_story: str) -> list[Path]:
    """BOLD series, sidecars and events of a subject's runs of a story (+ fMRIPrep's files)."""
    trees = [root]
    if options["bids"]["space"] or options["bids"]["desc"]:
        trees.append(root / options["bids"]["derivatives"])
    files = [tree / "dataset_description.json" for tree in trees]  # pybids reads them
    for tree in trees:
        files += [path for path in tree.glob(f"sub-{subject}/**/sub-{subject}_*task-{run_story}_*")
                  if path.parent.name not in ELECTROPHYSIOLOGY]  # the EEG stage reads those
        # inherited sidecars (BIDS inheritance): folders above the run, without a task or for this one
        for sidecar in [*tree.glob("*_bold.json"), *tree.glob(f"sub-{subject}/**/*_bold.json")]:
            if _entities_of(sidecar.name).get("task", run_story) == run_story:
                files.append(sidecar)
    return sorted(set(files))


def _is_bold(path: Path) -> bool:
    return path.name.endswith(("_bold.nii.gz", "_bold.nii"))


def story_sources(dataset: dict, story: str, eeg: dict | None = None) -> list[str]:
    """Files read to make a story's words.tsv (rule ingest_words; ``eeg``: the eeg section, read by an EEG-only dataset)."""
    options = dataset_options(dataset)
    if options["modality"] == "eeg":
        return eeg_story_sources(eeg or {}, dataset, story)
    root = _root(options)
    if root is None:
        return []
    run_story, _ = resolve_story(options, story)
    if options["layout"] == "ds003020":
        files = [root / "derivative" / "TextGrids" / f"{run_story}.TextGrid", root / "derivative" / "respdict.json"]
    else:
        files = []
        for subject in options["subjects"]:  # words come from the first subject that has the story
            found = _bids_run_files(root, options, subject, run_story)
            if any(_is_bold(path) for path in found):
                files = found
                break
        if options["layout"] == "wordcsv" and options["wordcsv"]:
            files.append(root / options["wordcsv"]["words"])
    return [str(path) for path in files if path.is_file()]


def eeg_story_sources(eeg: dict, dataset: dict, story: str) -> list[str]:
    """The events file an EEG-only dataset's words of ``story`` are read from: the first EEG subject's that has one."""
    root = Path(eeg.get("root") or dataset["root"])
    for subject in eeg.get("subjects") or dataset["subjects"]:
        found = sorted(root.glob(f"sub-{subject}/**/eeg/sub-{subject}_*task-{story}_*events.tsv"))
        if found:
            return [str(found[0])]
    return []


def subject_sources(dataset: dict, subject: str) -> list[str]:
    """Files read to make a subject's responses, mask and mean image (rule ingest)."""
    options = dataset_options(dataset)
    root = _root(options)
    if root is None:
        return []
    files = []
    if options["layout"] == "ds003020":
        files.append(root / "derivative" / "respdict.json")
        files += [root / "derivative" / "preprocessed_data" / subject / f"{story}.hf5" for story in _run_stories(options)]
    else:
        for run_story in _run_stories(options):
            files += _bids_run_files(root, options, subject, run_story)
    if options["mask"]:
        files.append(root / options["mask"].format(subject=subject))
    return [str(path) for path in sorted(set(files)) if path.is_file()]


def atlas_sources(dataset: dict, subject: str) -> list[str]:
    """The atlas image and its label table (rule ingest_atlas)."""
    options = dataset_options(dataset)
    root = _root(options)
    if root is None or not options["atlas"]:
        return []
    files = [root / options["atlas"].format(subject=subject)]
    if options["atlas_labels"]:
        files.append(root / options["atlas_labels"])
    return [str(path) for path in files if path.is_file()]


def check_plan(dataset: dict, delays: list[int]) -> None:
    """Config mistakes that would run to a silently wrong result, caught before any job.

    A story in both train_stories and test_stories; FIR delays not shorter than the
    shortest story (after trimming), when the dataset's run lengths can be read cheaply
    (ds003020's respdict.json; a BIDS BOLD header).
    """
    from brainllm.ingest import bold_header, ds003020_respdict

    options = dataset_options(dataset)
    both = sorted(set(options["train_stories"]) & set(options["test_stories"]))
    if both:
        raise InputError(None, f"dataset: stories {both} are in both train_stories and test_stories.",
                         "a test story must be held out: list each story once.")
    root = _root(options)
    if root is None or not delays or options["modality"] == "eeg":  # FIR delays are fMRI's
        return
    longest = max(abs(int(delay)) for delay in delays)
    trims = int(options["trim_start"]) + int(options["trim_end"])
    for run_story in _run_stories(options):
        if options["layout"] == "ds003020":
            source = root / "derivative" / "respdict.json"
            if not source.is_file() or run_story not in ds003020_respdict(root):
                continue
            n_trs = int(ds003020_respdict(root)[run_story]) - trims
        else:
            bolds = [path for path in story_sources(dataset, run_story) if _is_bold(Path(path))]
            if not bolds:
                continue
            source = bolds[0]
            n_trs = bold_header(Path(source)).shape[3] - trims
        if longest >= n_trs:
            raise InputError(source, f"story {run_story!r} has {n_trs} TRs but encoding.delays reaches {longest} TRs: "
                             "its delayed features would be all zero.",
                             "use delays shorter than the shortest story (typically 1-4 TRs), or drop the story.")
