"""Image stimuli: events, trial estimates, grouping by image, permutation p-values, identification scores, config checks."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainllm import configuration
from brainllm.io import InputError
from brainllm.visual import (
    VisualSettings, image_responses, lss_responses, read_image_events, trial_regressors, window_responses,
)
from brainllm.visual_decoding import identification_scores, two_way_accuracy
from brainllm.metrics import trial_permutation_p


def write_image(path, value=128, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


@pytest.fixture
def dataset(tmp_path):
    write_image(tmp_path / "stimuli" / "a.png")
    write_image(tmp_path / "stimuli" / "sub" / "b.png", 30)
    events = tmp_path / "events.tsv"
    pd.DataFrame({"onset": [2.0, 6.0, 10.0], "duration": [1.0, 1.0, 1.0], "trial_type": ["image", "fixation", "image"],
                  "stim_file": ["a.png", "n/a", "sub/b.png"]}).to_csv(events, sep="\t", index=False)
    return tmp_path, events


def test_events_rows_naming_images(dataset):
    root, events = dataset
    trials = read_image_events(events, root, VisualSettings())
    assert trials["stim_file"].tolist() == ["a.png", "sub/b.png"]
    assert trials["onset"].tolist() == [2.0, 10.0]
    assert read_image_events(events, root, VisualSettings(trial_type="image"))["stim_file"].tolist() == ["a.png", "sub/b.png"]


@pytest.mark.parametrize("name, message", [("../outside.png", "outside"), ("/etc/passwd", "outside"), ("missing.png", "not found")])
def test_events_bad_image_names_the_row(dataset, name, message):
    root, events = dataset
    write_image(root / "outside.png")
    table = pd.read_csv(events, sep="\t")
    table.loc[2, "stim_file"] = name
    table.to_csv(events, sep="\t", index=False)
    with pytest.raises(InputError, match=message) as error:
        read_image_events(events, root, VisualSettings())
    assert "row 4" in str(error.value)


def test_events_without_the_image_column(dataset):
    root, events = dataset
    with pytest.raises(InputError, match="visual.stim_column"):
        read_image_events(events, root, VisualSettings(stim_column="image"))


def test_window_response_is_the_mean_of_the_volumes_in_the_window():
    bold = np.arange(20, dtype=float)[:, None] * np.array([[1.0, -1.0]])  # volume k has value k (TR 2 s)
    # sampled at the start of each TR (time 2k): volumes at 8 and 10 s lie in [7, 11]
    np.testing.assert_allclose(window_responses(bold, 2.0, [3.0], (4.0, 8.0), "run", slice_time_ref=0.0), [[4.5, -4.5]])
    # at the middle (time 2k + 1, the default): volumes at 7, 9 and 11 s
    np.testing.assert_allclose(window_responses(bold, 2.0, [3.0], (4.0, 8.0), "run"), [[4.0, -4.0]])
    with pytest.raises(InputError, match="no volume"):
        window_responses(bold, 2.0, [100.0], (4.0, 8.0), "run")


def lss_reference(bold, regressors):
    """One lstsq per trial and voxel."""
    out = np.zeros((regressors.shape[1], bold.shape[1]))
    for i in range(regressors.shape[1]):
        others = regressors.sum(1) - regressors[:, i]
        design = np.column_stack([regressors[:, i], others, np.ones(len(bold))])
        for v in range(bold.shape[1]):
            out[i, v] = np.linalg.lstsq(design, bold[:, v], rcond=None)[0][0]
    return out


def test_lss_matches_a_per_voxel_reference_and_recovers_planted_betas():
    rng = np.random.default_rng(0)
    onsets = np.arange(10.0, 130.0, 8.0)
    regressors = trial_regressors(80, 2.0, onsets, np.full(len(onsets), 2.0), "glover")
    assert regressors.shape == (80, len(onsets))
    betas = rng.standard_normal((len(onsets), 5))
    bold = regressors @ betas + 0.05 * rng.standard_normal((80, 5))
    estimated = lss_responses(bold, regressors)
    np.testing.assert_allclose(estimated, lss_reference(bold, regressors), atol=1e-8)
    assert np.corrcoef(estimated.ravel(), betas.ravel())[0, 1] > 0.9  # LSS lumps the other trials into one regressor


def test_a_trial_outside_the_run_is_an_error():
    with pytest.raises(InputError, match="no response within the run"):
        trial_regressors(20, 2.0, [10.0, 500.0], [1.0, 1.0], "glover", where="run_events.tsv")


def test_events_with_unparsable_onsets_and_dotted_names(dataset):
    root, events = dataset
    table = pd.read_csv(events, sep="\t")
    table.loc[0, "stim_file"] = "./a.png"
    table.to_csv(events, sep="\t", index=False)
    assert read_image_events(events, root, VisualSettings())["stim_file"].tolist() == ["a.png", "sub/b.png"]
    table["onset"] = table["onset"].astype(str)
    table.loc[2, "onset"] = "12s"
    table.to_csv(events, sep="\t", index=False)
    with pytest.raises(InputError, match="row 4: onset"):
        read_image_events(events, root, VisualSettings())


def test_linked_images_inside_the_stimuli_folder_are_accepted(dataset, tmp_path):
    root, events = dataset
    annex = tmp_path / "annex"
    annex.mkdir()
    (root / "stimuli" / "a.png").rename(annex / "object")
    (root / "stimuli" / "a.png").symlink_to(annex / "object")  # as DataLad / git-annex lay images out
    assert read_image_events(events, root, VisualSettings())["stim_file"].tolist() == ["a.png", "sub/b.png"]


def test_images_grouped_repeats_kept_and_split_overlap_refused():
    trials = pd.DataFrame({
        "stim_file": ["a", "b", "a", "c", "t1", "t2", "t2", "t1"],
        "split": ["train"] * 4 + ["test"] * 4,
        "run": [0, 0, 1, 1, 2, 2, 3, 3],
    })
    responses = np.arange(16, dtype=float).reshape(8, 2)
    data = image_responses(trials, responses)
    assert data.train_images == ["a", "b", "c"]
    np.testing.assert_allclose(data.train[0], (responses[0] + responses[2]) / 2)
    assert data.train_runs.tolist() == [0, 0, 1] and data.run_lengths == [2, 1]
    assert data.test_images == ["t1", "t2"]
    assert data.test_repeats.shape == (2, 2, 2)
    np.testing.assert_allclose(data.test_repeats[1, 0], responses[7])
    np.testing.assert_allclose(data.test[1], (responses[5] + responses[6]) / 2)
    trials.loc[4, "stim_file"] = "a"
    with pytest.raises(InputError, match="both training and test"):
        image_responses(trials, responses)


def test_trial_permutation_p_matches_a_loop_and_is_calibrated_under_the_null():
    rng = np.random.default_rng(1)
    pred, resp = rng.standard_normal((30, 400)), rng.standard_normal((30, 400))
    r, p = trial_permutation_p(pred, resp, 200, seed=3)
    perm_rng = np.random.default_rng(3)
    orders = [perm_rng.permutation(30) for _ in range(200)]
    v = 7
    null = np.array([np.corrcoef(pred[o, v], resp[:, v])[0, 1] for o in orders])
    assert p[v] == pytest.approx((1 + (null >= r[v] - 1e-12).sum()) / 201)
    assert abs((p < 0.05).mean() - 0.05) < 0.03
    _, p_signal = trial_permutation_p(resp + 0.5 * pred, resp, 200)
    assert (p_signal < 0.05).mean() > 0.95


def test_identification_scores_against_slow_references():
    rng = np.random.default_rng(2)
    similarity = rng.standard_normal((12, 12)) + 2.0 * np.eye(12)
    slow = np.mean([similarity[i, i] > similarity[i, j] for i in range(12) for j in range(12) if j != i])
    assert two_way_accuracy(similarity) == pytest.approx(slow)
    assert two_way_accuracy(np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [2.0, 2.0, 2.0]])) == pytest.approx((0.75 + 0.75 + 0.5) / 3)
    gallery = np.hstack([similarity, rng.standard_normal((12, 30))])
    scores = identification_scores(similarity, gallery, (1, 5), 500)
    assert scores["row_to_column"]["top1"] == pytest.approx((similarity.argmax(1) == np.arange(12)).mean())
    ranks = [(gallery[i] >= gallery[i, i]).sum() for i in range(12)]
    assert scores["gallery"]["top1"] == pytest.approx(np.mean(np.array(ranks) == 1))
    assert scores["gallery"]["chance"]["top1"] == pytest.approx(1 / 42)
    assert scores["top1_p"] < 0.01 and scores["chance"]["two_way"] == 0.5
    null = identification_scores(rng.standard_normal((12, 12)), rng.standard_normal((12, 40)), (1, 5), 500)
    assert null["top1_p"] > 0.01
    broken = similarity.copy()
    broken[3] = np.nan  # would rank its correct image first
    with pytest.raises(InputError, match="NaN or infinite"):
        identification_scores(broken, gallery, (1, 5), 10)


def image_config(**changes):
    config = {"dataset": {"name": "x", "stimuli": "images", "layout": "bids", "root": "r", "subjects": ["S1"],
                          "train_stories": ["a", "b"], "test_stories": ["c"], "tr": 2.0},
              "visual": {"models": {"clip": {"source": "x"}}}}
    for key, value in changes.items():
        config[key] = value
    return config


def test_image_datasets_refuse_word_stages_and_word_datasets_refuse_visual():
    configuration.check_images(image_config())
    with pytest.raises(InputError, match="vision models go in visual.models"):
        configuration.check_images(image_config(models={"m": {"source": "y"}}))
    with pytest.raises(InputError, match="decoding section analyses words"):
        configuration.check_images(image_config(decoding={}))
    config = image_config()
    config["dataset"]["layout"] = "ds003020"
    with pytest.raises(InputError, match="layout: bids"):
        configuration.check_images(config)
    config = image_config()
    config["dataset"]["test_stories"] = ["a"]
    with pytest.raises(InputError, match="both dataset.train_stories"):
        configuration.check_images(config)
    words = image_config(models={"m": {"source": "y"}})
    words["dataset"]["stimuli"] = "words"
    with pytest.raises(InputError, match="dataset.stimuli: images"):
        configuration.finish(words, check_inputs=False)


def test_the_store_cli_lists_and_verifies_image_entries(tmp_path, capsys):
    from brainllm import store
    from brainllm.vision_features import obtain_image_features

    paths = []
    for i in range(3):
        write_image(tmp_path / "stimuli" / f"{i}.png", 40 * i, (16, 16))
        paths.append(tmp_path / "stimuli" / f"{i}.png")
    entry = obtain_image_features(tmp_path / "store", {"source": "package:brainllm.demo_visual"}, paths, ["0", "1", "2"], tmp_path / "images.json")
    assert store.main(["ls", str(tmp_path / "store")]) == 0
    assert "images=3" in capsys.readouterr().out
    assert store.main(["verify", str(tmp_path / "store")]) == 0
    assert "3 images" in capsys.readouterr().out
    with h5py.File(entry, "r+") as handle:  # a flipped value: the stored hash no longer matches
        handle["layer_01"][0, 0] += 1.0
    assert store.main(["verify", str(tmp_path / "store")]) == 1
    assert "BAD" in capsys.readouterr().out


def test_image_chunks_refuse_mixed_sizes_across_chunks_and_resize(tmp_path):
    from brainllm.images import image_chunks

    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for path, side in zip(paths, (8, 8, 16)):
        write_image(path, 100, (side, side))
    with pytest.raises(InputError, match="visual.image_size") as error:
        list(image_chunks(paths, chunk=2))
    assert "2.png" in str(error.value)
    chunks = list(image_chunks(paths, size=(4, 6), chunk=2))
    assert [c.shape for c in chunks] == [(2, 4, 6, 3), (1, 4, 6, 3)]
