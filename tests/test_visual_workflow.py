"""The image-stimulus demo end to end (config/demo_visual.yaml): trial responses, vision features,
visual encoding, identification, pixel-space and generative reconstruction, against the planted truth."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from brainllm import demo_visual
from brainllm.io import InputError
from conftest import REPO, make_workdir, run_snakemake

pytestmark = pytest.mark.workflow
OUT = "results/demo_visual/visual/sub-V01"
STEM = f"{OUT}/sub-V01_model-tinyclip"


@pytest.fixture(scope="module")
def visual_run(tmp_path_factory):
    workdir = make_workdir(tmp_path_factory.mktemp("visual_demo"))
    run_snakemake(workdir, "--cores", "2", "--configfile", "config/demo_visual.yaml")
    return workdir


def test_lint_is_clean_for_image_datasets(tmp_path):
    proc = run_snakemake(make_workdir(tmp_path), "--lint", "--configfile", "config/demo_visual.yaml", check=False)
    assert proc.returncode == 0 and "Lints for" not in proc.stdout, proc.stdout[-3000:]


def read_json(path):
    return json.loads(path.read_text())


def test_the_planted_layer_is_chosen_on_validation_for_the_feature_driven_roi(visual_run):
    layers = pd.read_csv(visual_run / f"{STEM}_layers.tsv", sep="\t")
    chosen = layers[layers["chosen"]].set_index("roi")["layer"]
    assert chosen["LOC"] == demo_visual.PLANTED_LAYER
    loc = layers[layers["roi"] == "LOC"].set_index("layer")
    assert loc.loc[demo_visual.PLANTED_LAYER, "mean_r"] > 0.5
    assert layers[layers["roi"] == "other"]["mean_r"].abs().max() < 0.1  # noise voxels: no prediction
    summary = read_json(visual_run / f"{OUT}/encoding/sub-V01_model-tinyclip_layer-{demo_visual.PLANTED_LAYER:02d}_summary.json")
    truth = summary["ground_truth"]
    assert truth["planted_layer"] == demo_visual.PLANTED_LAYER
    assert truth["sensitivity"] > 0.75 and truth["specificity"] > 0.9
    scores = pd.read_csv(visual_run / f"{OUT}/encoding/sub-V01_model-tinyclip_layer-02_scores.tsv", sep="\t")
    assert {"r", "p", "q", "significant", "validation_r", "alpha", "ceiling_r", "roi"} <= set(scores.columns)
    assert (scores.loc[scores["roi"] == "LOC", "ceiling_r"] > scores.loc[scores["roi"] == "LOC", "r"] - 0.1).mean() > 0.9


def test_identification_beats_chance_tenfold(visual_run):
    ident = read_json(visual_run / f"{STEM}_identification.json")
    ridge, contrastive = ident["ridge"], ident["contrastive"]
    assert ident["chosen_space"] == f"layer-{demo_visual.PLANTED_LAYER:02d}"  # chosen on leave-one-run-out identification
    assert ridge["row_to_column"]["top1"] >= 10 * ridge["chance"]["top1"]
    assert ridge["top1_p"] < 0.01 and contrastive["top1_p"] < 0.01
    assert contrastive["row_to_column"]["top1"] >= 5 * contrastive["chance"]["top1"]
    assert ridge["two_way"] > 0.85 and ridge["gallery"]["top1"] > 5 * ridge["gallery"]["chance"]["top1"]
    assert set(ident["spaces"]) == {"embedding"} | {f"layer-{i:02d}" for i in range(5)}
    assert {"ridge", "contrastive"} <= set(ident["spaces"]["embedding"])  # the shared image–text space, both decoders
    assert 0 <= ridge["sensitivity_macro"] <= 1 and ridge["specificity_macro"] > 0.9


def test_pixel_space_reconstruction_and_its_controls(visual_run):
    recon = read_json(visual_run / f"{OUT}/sub-V01_reconstruction.json")
    linear = recon["linear"]
    assert linear["pixel_corr"] >= 0.5 and linear["two_way_pixels"] >= 0.9 and linear["pixel_corr_p"] < 0.01
    assert abs(linear["chance"]["pixel_corr"]) < 0.15
    noise = recon["noise_voxels_control"]  # the same decoder on the noise-only voxels: chance-level reconstructions
    assert abs(noise["pixel_corr"]) < 0.15 and 0.35 < noise["two_way_pixels"] < 0.65
    assert {"ssim", "clip_distance", "two_way_tinyclip_layer02", "two_way_tinyclip_layer04"} <= set(linear)
    with h5py.File(visual_run / f"{OUT}/sub-V01_reconstruction.h5", "r") as handle:
        assert handle["linear"].shape == (24, 16, 16) and handle["stimuli"].shape == (24, 16, 16)
    summary = pd.read_csv(visual_run / "results/demo_visual/visual/summary.tsv", sep="\t")
    assert summary.loc[0, "reconstruction_pixel_corr"] == pytest.approx(linear["pixel_corr"])
    assert summary.loc[0, "LOC_layer"] == demo_visual.PLANTED_LAYER
    ranking = pd.read_csv(visual_run / "results/demo_visual/visual/roi_ranking.tsv", sep="\t").set_index("roi")
    assert set(ranking.index) == {"all", "V1", "LOC", "other"} and ranking.loc["LOC", "mean_r"] > ranking.loc["other", "mean_r"]


def test_report_and_an_up_to_date_rerun(visual_run):
    for name in ("layers", "identification"):
        assert (visual_run / f"{STEM}_{name}.png").stat().st_size > 10_000
    assert (visual_run / f"{OUT}/sub-V01_reconstruction.png").stat().st_size > 10_000
    dry = run_snakemake(visual_run, "-n", "--cores", "1", "--configfile", "config/demo_visual.yaml")
    assert "Nothing to be done" in dry.stdout
    config = yaml.safe_load((visual_run / "config/demo_visual.yaml").read_text())
    (visual_run / "sorted.yaml").write_text(yaml.safe_dump(config, sort_keys=True))  # the same settings, keys in another order
    assert "Nothing to be done" in run_snakemake(visual_run, "-n", "--cores", "1", "--configfile", "sorted.yaml").stdout
    run_snakemake(visual_run, "--cores", "1", "--configfile", "config/demo_visual.yaml", "--report", "report.html")
    html = (visual_run / "report.html").read_text(errors="ignore")
    assert "Visual" in html and "Reconstruction" in html


def test_generative_route_with_a_tiny_unclip_pipeline(visual_run):
    """Mechanics only: a random-weight pipeline (built offline) conditioned on decoded embeddings."""
    from brainllm.reconstruction import build_tiny_unclip_pipeline

    pipeline = build_tiny_unclip_pipeline(visual_run / "tiny_unclip")
    config = yaml.safe_load((visual_run / "config/demo_visual.yaml").read_text())
    config["visual"]["reconstruction"]["generative"] = {"pipeline": str(pipeline), "steps": 2, "strength": 0.5, "device": "cpu"}
    (visual_run / "generative.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(visual_run, "--cores", "2", "--configfile", "generative.yaml")
    summary = read_json(visual_run / f"{OUT}/sub-V01_generative.json")
    assert {"pixel_corr", "ssim", "two_way_pixels", "clip_distance", "chance"} <= set(summary["generative"])
    with h5py.File(visual_run / f"{OUT}/sub-V01_generative.h5", "r") as handle:
        images = handle["generative"][()]
    assert images.dtype == np.uint8 and images.shape[0] == 24 and images.shape[-1] == 3
    assert (visual_run / f"{OUT}/sub-V01_generative.png").is_file()


@pytest.fixture(scope="module")
def dataset(visual_run):
    """The demo dataset the workflow run generated (copied before each change)."""
    return visual_run / "resources/demo_visual"


def demo_config(root):
    config = yaml.safe_load((REPO / "config/demo_visual.yaml").read_text())
    config["dataset"]["root"] = str(root)
    return config


@pytest.mark.parametrize("problem", ["missing", "outside", "unreadable", "mixed sizes", "two training runs"])
def test_bad_stimuli_are_refused_with_the_file_and_row(dataset, tmp_path, problem):
    from brainllm.visual import VisualSettings, run_trials, stimulus_names
    from brainllm.vision_features import obtain_image_features

    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    config = demo_config(root)
    events = root / "sub-V01/func/sub-V01_task-train03_events.tsv"
    table = pd.read_csv(events, sep="\t")
    image = root / "stimuli" / table.loc[4, "stim_file"]
    if problem == "missing":
        image.unlink()
    elif problem == "outside":
        table.loc[4, "stim_file"] = "../participants.tsv"
        table.to_csv(events, sep="\t", index=False)
    elif problem == "unreadable":
        image.write_bytes(b"not an image")
    else:
        from PIL import Image

        Image.new("RGB", (32, 48)).save(image)
    out = tmp_path / "out"
    if problem == "two training runs":  # nested leave-one-run-out needs three
        config["dataset"]["train_stories"] = ["train01", "train02"]
        with pytest.raises(InputError, match="3 or more"):
            run_trials(config["dataset"], "V01", config["visual"], {}, out / "images.h5", out / "mask.nii.gz", out / "trials.tsv")
    elif problem in ("missing", "outside"):
        with pytest.raises(InputError) as error:
            run_trials(config["dataset"], "V01", config["visual"], {}, out / "images.h5", out / "mask.nii.gz", out / "trials.tsv")
        assert "row 6" in str(error.value) and "events.tsv" in str(error.value)
    else:
        names, paths = stimulus_names(config["dataset"], VisualSettings.from_config(config["visual"]), ["V01"])
        with pytest.raises(InputError) as error:
            obtain_image_features(tmp_path / "store", config["visual"]["models"]["tinyclip"], paths, names, out / "images.json")
        assert image.name in str(error.value)
        if problem == "mixed sizes":
            assert "visual.image_size" in str(error.value)
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_fmriprep_derivatives_and_confounds(dataset, tmp_path):
    """BOLD from fMRIPrep (space/desc), its brain masks and confounds regressed out, events from the raw runs."""
    import nibabel as nib

    from brainllm.visual import read_image_responses, run_trials

    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    fmriprep = root / "derivatives" / "fmriprep"
    (fmriprep / "sub-V01" / "func").mkdir(parents=True)
    (fmriprep / "dataset_description.json").write_text(json.dumps({"Name": "fMRIPrep", "BIDSVersion": "1.8.0", "DatasetType": "derivative"}))
    rng = np.random.default_rng(0)
    drift = {}
    for bold in sorted((root / "sub-V01" / "func").glob("*_bold.nii.gz")):
        stem = bold.name[: -len("_bold.nii.gz")]
        if not any(f"task-{task}" in stem for task in ("train01", "train02", "train03", "test01", "test02")):
            continue
        img = nib.load(bold)
        data = img.get_fdata(dtype=np.float32)
        drift[stem] = rng.standard_normal(data.shape[3]).cumsum()  # a motion-like confound added to every voxel
        nib.save(nib.Nifti1Image(data + 20.0 * drift[stem].astype(np.float32), img.affine, img.header),
                 fmriprep / "sub-V01" / "func" / f"{stem}_space-T1w_desc-preproc_bold.nii.gz")
        shutil.copy(bold.with_name(f"{stem}_bold.json"), fmriprep / "sub-V01" / "func" / f"{stem}_space-T1w_desc-preproc_bold.json")
        pd.DataFrame({"trans_x": drift[stem], "csf": rng.standard_normal(data.shape[3])}).to_csv(
            fmriprep / "sub-V01" / "func" / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False)
    config = demo_config(root)
    runs = {"train_stories": ["train01", "train02", "train03"], "test_stories": ["test01", "test02"]}  # fewer runs: faster
    config["dataset"].update(runs, bids={"space": "T1w", "desc": "preproc"})
    raw = tmp_path / "raw"
    run_trials({**demo_config(root)["dataset"], **runs}, "V01", config["visual"], {}, raw / "images.h5", raw / "mask.nii.gz", raw / "trials.tsv")
    derived = tmp_path / "derived"
    run_trials(config["dataset"], "V01", config["visual"], {"confounds": ["trans_x"]}, derived / "images.h5", derived / "mask.nii.gz",
               derived / "trials.tsv")
    a, b = read_image_responses(raw / "images.h5"), read_image_responses(derived / "images.h5")
    assert a.test_images == b.test_images
    assert np.corrcoef(a.test.ravel(), b.test.ravel())[0, 1] > 0.95  # the confound regressed out: the same responses
    kept = tmp_path / "kept"
    run_trials(config["dataset"], "V01", config["visual"], {}, kept / "images.h5", kept / "mask.nii.gz", kept / "trials.tsv")
    left_in = read_image_responses(kept / "images.h5")  # without preprocess.confounds the motion-like drift distorts them
    assert np.corrcoef(a.test.ravel(), left_in.test.ravel())[0, 1] < 0.8
    with pytest.raises(InputError, match="confounds"):
        run_trials(config["dataset"], "V01", config["visual"], {"confounds": ["rot_z"]}, tmp_path / "x" / "images.h5", tmp_path / "x" / "mask.nii.gz",
                   tmp_path / "x" / "trials.tsv")


def test_optional_inputs_absent(dataset, tmp_path):
    """No mask, atlas or ground truth, test images shown once (no repeats): every stage still runs, and says what it lacks."""
    from brainllm.vision_features import obtain_image_features
    from brainllm.visual import VisualSettings, read_image_responses, run_trials, stimulus_names
    from brainllm.visual_decoding import run_identification
    from brainllm.visual_encoding import run_visual_encoding
    from brainllm.visual_reconstruction import run_linear

    config = demo_config(dataset)
    for key in ("mask", "atlas", "atlas_labels", "ground_truth"):
        config["dataset"].pop(key)
    config["dataset"].update(train_stories=["train01", "train02", "train03", "train04"], test_stories=["test01"])
    data, visual, out = config["dataset"], config["visual"], tmp_path / "out"
    run_trials(data, "V01", visual, {}, out / "images.h5", out / "mask.nii.gz", out / "trials.tsv")
    assert read_image_responses(out / "images.h5").test_repeats is None
    names, paths = stimulus_names(data, VisualSettings.from_config(visual), ["V01"])
    obtain_image_features(tmp_path / "store", visual["models"]["tinyclip"], paths, names, out / "images.json")
    encoding = {"alphas": {"log10_min": -1, "log10_max": 5, "num": 7}, "significance": {"n_permutations": 200}}
    summary = run_visual_encoding(out / "images.h5", out / "images.json", out / "mask.nii.gz", 2, encoding, data, "V01",
                                  out / "scores.tsv", out / "summary.json", out / "r.nii.gz")
    assert summary["rois"] == {} and "ground_truth" not in summary and "median_ceiling_r" not in summary
    assert summary["mean_r"] > 0.1
    identification = run_identification(out / "images.h5", out / "images.json", {"n_permutations": 200}, encoding, out / "id.json",
                                        out / "id.tsv", out / "sim.tsv", out / "w.safetensors", out / "h.tsv")
    assert identification["ridge"]["row_to_column"]["top1"] > 3 * identification["ridge"]["chance"]["top1"]
    reconstruction = run_linear(out / "images.h5", out / "mask.nii.gz", data, {**visual, "reconstruction": {"n_permutations": 200}}, encoding,
                                "V01", out / "rec.json", out / "rec.tsv", out / "rec.h5", out / "rec.png", out / "rec.svg")
    assert "noise_voxels_control" not in reconstruction and reconstruction["linear"]["pixel_corr"] > 0.3
