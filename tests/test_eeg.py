"""brainllm.eeg against independent computations, planted responses and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainllm import configuration, eeg
from brainllm.demo_eeg import write_recording
from brainllm.io import InputError, write_tsv
from brainllm.metrics import pearson_r

SFREQ = 100.0
CHANNELS = ("Fz", "Cz", "Pz", "C3", "C4", "P3", "P4", "Fp1", "Fp2", "O1")


def settings(**changes) -> eeg.EegSettings:
    base = eeg.EegSettings.from_config({"n_permutations": 200}, {"subjects": ["01"], "root": "unused"})
    return eeg.EegSettings(**{**base.__dict__, **changes})


def test_gram_ridge_equals_the_normal_equations_and_cv_equals_concatenated_r():
    rng = np.random.default_rng(0)
    grams = {s: eeg.story_gram(rng.standard_normal((60, 5)), rng.standard_normal((60, 3))) for s in "abcd"}
    alphas = np.array([0.1, 1.0, 10.0])
    per_target = np.array([0.1, 10.0, 1.0])
    weights = eeg.ridge_weights([grams[s] for s in "abc"], per_target)
    X = np.vstack([grams[s].X for s in "abc"])
    Y = np.vstack([grams[s].Y for s in "abc"])
    for target, alpha in enumerate(per_target):
        np.testing.assert_allclose(weights[:, target], np.linalg.solve(X.T @ X + alpha * np.eye(5), X.T @ Y[:, target]), rtol=1e-9)
    chosen, r_validation = eeg.cross_validated_alphas(grams, list("abcd"), alphas)
    scores = []
    for alpha in alphas:  # slow reference: every fold refitted by solve, r over the concatenated held-out stories
        predictions = []
        for held in "abcd":
            Xt = np.vstack([grams[s].X for s in "abcd" if s != held])
            Yt = np.vstack([grams[s].Y for s in "abcd" if s != held])
            predictions.append(grams[held].X @ np.linalg.solve(Xt.T @ Xt + alpha * np.eye(5), Xt.T @ Yt))
        scores.append(pearson_r(np.vstack(predictions), np.vstack([grams[s].Y for s in "abcd"])))
    scores = np.array(scores)
    np.testing.assert_allclose(r_validation, scores.max(axis=0), atol=1e-10)
    np.testing.assert_array_equal(chosen, alphas[scores.argmax(axis=0)])


def test_lagged_impulse_design_equals_a_loop():
    onsets = np.array([0, 3, 3, 9])  # two words on one sample add up; lags past the end are dropped
    values = np.arange(8, dtype=float).reshape(4, 2) + 1
    lags = np.array([-1, 0, 2])
    dense = np.zeros((11, 2 * lags.size))
    for word, onset in enumerate(onsets):
        for k in range(2):
            for j, lag in enumerate(lags):
                if 0 <= onset + lag < 11:
                    dense[onset + lag, k * lags.size + j] += values[word, k]
    np.testing.assert_array_equal(eeg.lagged_impulse_design(onsets, values, 11, lags).toarray(), dense)
    np.testing.assert_array_equal(eeg.lag_samples(-0.1, 0.7, 100.0), np.arange(-10, 71))


def test_word_amplitudes_equal_a_loop():
    rng = np.random.default_rng(1)
    data = rng.standard_normal((500, 3))
    onsets = np.array([0.05, 1.0, 4.9])
    got = eeg.word_amplitudes(data, 100.0, onsets, (0.3, 0.5))
    for word, onset in enumerate(onsets[:2]):
        start, stop = int(round((onset + 0.3) * 100)), int(round((onset + 0.5) * 100))
        np.testing.assert_allclose(got[word], data[start:stop].mean(0))
    assert np.isnan(got[2]).all()  # the window lies past the end of the recording


def planted_stories(rng, latency_s=0.3, n_stories=4, duration_s=120.0, n_features=6):
    """Stories of random word features whose first component drives Cz/Pz with a bump at ``latency_s``."""
    features, data, onsets = {}, {}, {}
    n = int(duration_s * SFREQ)
    for story in range(n_stories):
        times = np.sort(rng.uniform(1.0, duration_s - 2.0, int(duration_s * 2)))
        x = rng.standard_normal((times.size, n_features))
        signal = np.zeros(n)
        np.add.at(signal, np.round((times + latency_s) * SFREQ).astype(int), x[:, 0])
        signal = np.convolve(signal, np.exp(-0.5 * (np.arange(-15, 16) / 4.0) ** 2), mode="same")
        y = rng.standard_normal((n, 4))
        y[:, :2] += 2.0 * signal[:, None]
        features[f"s{story}"], data[f"s{story}"], onsets[f"s{story}"] = x, y, times
    return features, data, onsets


def test_trf_recovers_a_planted_latency_and_channels():
    features, data, onsets = planted_stories(np.random.default_rng(2))
    fit = eeg.fit_trf(features, data, onsets, SFREQ, ["s0", "s1", "s2"], ["s3"], settings(trf_components=6))
    assert fit["weights"].shape == (6, 81, 4)
    assert eeg.peak_latency(fit["weights"], fit["lags_s"], np.array([0, 1])) == pytest.approx(0.3, abs=0.02)
    assert (fit["r_test"][:2] > 0.2).all() and (fit["p"][:2] < 0.01).all()
    assert (np.abs(fit["r_test"][2:]) < 0.1).all()
    rows = eeg.identify_segments(fit, SFREQ, settings(trf_components=6, identification_s=(4.0,), channel_fraction=0.5))
    assert [row["direction"] for row in rows] == ["observed_to_predicted", "predicted_to_observed"]
    assert all(row["n_segments"] == 30 and row["top1"] >= 3 * row["chance_top1"] and row["p"] < 0.01 for row in rows), rows


def test_pure_noise_channels_identify_at_chance():
    ranks, significant = [], 0
    for seed in range(10, 16):
        features, data, onsets = planted_stories(np.random.default_rng(seed))
        fit = eeg.fit_trf(features, data, onsets, SFREQ, ["s0", "s1", "s2"], ["s3"], settings(trf_components=6, n_permutations=100))
        noise = dict(fit, r_validation=np.array([0.0, 0.0, 1.0, 1.0]))  # channels chosen among the pure-noise ones
        (row, _) = eeg.identify_segments(noise, SFREQ, settings(identification_s=(4.0,), channel_fraction=0.5, n_permutations=100))
        ranks.append(row["mean_percentile_rank"])
        significant += row["p"] < 0.05
    assert abs(np.mean(ranks) - 0.5) < 0.06 and significant <= 1, ranks


def test_word_level_finds_the_planted_channels_only():
    rng = np.random.default_rng(3)
    features = {s: rng.standard_normal((300, 8)) for s in "abcd"}
    amplitudes = {s: np.column_stack([features[s][:, :2] @ [1.0, -0.5] + rng.standard_normal(300), rng.standard_normal(300)]) for s in "abcd"}
    fit = eeg.fit_word_level(features, amplitudes, list("abc"), ["d"], settings())
    assert fit["r_test"][0] > 0.5 and fit["p"][0] < 0.01
    assert fit["p"][1] > 0.01 and fit["r_validation"][0] > fit["r_validation"][1]


def raw_with(data, names=CHANNELS, sfreq=250.0, bads=()):
    import mne

    raw = mne.io.RawArray(data.copy(), mne.create_info(list(names), sfreq, ch_types="eeg"), verbose="error")
    raw.set_montage("standard_1020", verbose="error")
    raw.info["bads"] = list(bads)
    raw.info["line_freq"] = 50.0
    return raw


def test_preprocessing_removes_line_noise_and_interpolates_the_bad_channel():
    rng = np.random.default_rng(4)
    n = 250 * 60
    t = np.arange(n) / 250.0
    brain = np.convolve(rng.standard_normal(n), np.ones(25) / 25, mode="same")  # one smooth source seen by every channel
    data = 1e-5 * (brain[None, :] + 0.05 * rng.standard_normal((len(CHANNELS), n)) + 0.5 * np.sin(2 * np.pi * 50 * t))
    data[CHANNELS.index("C3")] = 1e-4 * rng.standard_normal(n)  # the bad channel: noise only
    raw = eeg.preprocess_raw(raw_with(data, bads=("C3",)), settings(reference="none", h_freq=40.0))
    out = raw.get_data()
    assert raw.info["sfreq"] == 100.0 and raw.info["bads"] == []
    spectrum = np.abs(np.fft.rfft(eeg.preprocess_raw(raw_with(data), settings(reference="none", h_freq=45.0, resample_hz=250.0,
                                                                                   interpolate_bads=False)).get_data()[0]))
    freqs = np.fft.rfftfreq(n, 1 / 250.0)
    assert spectrum[np.abs(freqs - 50) < 0.2].max() < 0.05 * np.abs(np.fft.rfft(data[0]))[np.abs(freqs - 50) < 0.2].max()
    assert np.corrcoef(out[CHANNELS.index("C3")], out[CHANNELS.index("Cz")])[0, 1] > 0.9  # interpolated from its neighbours


def test_ica_removes_blinks_from_frontal_channels():
    rng = np.random.default_rng(5)
    n = 250 * 60
    data = 1e-5 * rng.standard_normal((len(CHANNELS), n))
    blinks = np.zeros(n)
    for start in rng.integers(0, n - 75, 20):
        blinks[start : start + 75] += np.hanning(75)
    gains = np.array([0.3 if name.startswith("F") else 0.05 for name in CHANNELS])
    gains[CHANNELS.index("Fp1")] = gains[CHANNELS.index("Fp2")] = 1.0
    data += 1.5e-4 * gains[:, None] * blinks[None, :]
    cleaned = eeg.preprocess_raw(raw_with(data), settings(reference="none", resample_hz=250.0, h_freq=40.0,
                                                         ica={"enabled": True, "n_components": 8, "eog_channels": ["Fp1", "Fp2"]}))
    fp1 = CHANNELS.index("Fp1")
    assert abs(np.corrcoef(cleaned.get_data()[fp1], blinks)[0, 1]) < 0.3 < abs(np.corrcoef(data[fp1], blinks)[0, 1])


# ----------------------------------------------------------------------------- bad input


def write_story(root, story="tale", names=CHANNELS, sfreq=250.0, duration_s=20.0, onsets=(1.0, 2.0, 3.0), words=("the", "old", "boat")):
    data = 1e-6 * np.random.default_rng(6).standard_normal((len(names), int(duration_s * sfreq)))
    write_recording(root, "01", story, data, list(words), np.array(onsets), np.full(len(onsets), 0.3), tuple(names), sfreq, bads=())


def words_file(tmp_path, words=("the", "old", "boat")):
    path = tmp_path / "words.tsv"
    write_tsv(path, pd.DataFrame({"word": list(words), "onset": [1.0, 2.0, 3.0], "offset": [1.3, 2.3, 3.3]}))
    return path


def ingest(tmp_path, root, **changes):
    return eeg.ingest_subject(root, "01", ["tale"], {"tale": words_file(tmp_path)}, settings(**changes), tmp_path / "raw.h5")


@pytest.mark.parametrize("file_format", ["BrainVision", "EDF", "BDF", "EEGLAB"])
def test_every_bids_eeg_format_reads_the_same_signal(tmp_path, file_format):
    data = 1e-6 * np.random.default_rng(6).standard_normal((len(CHANNELS), 5000))
    write_recording(tmp_path / "bids", "01", "tale", data, ["the", "old", "boat"], np.array([1.0, 2.0, 3.0]), np.full(3, 0.3),
                    CHANNELS, 250.0, bads=("O1",), file_format=file_format)
    ingest(tmp_path, tmp_path / "bids")
    raw, onsets, sfreq, names, _ = eeg.read_preprocessed(tmp_path / "raw.h5", ["tale"])
    assert sfreq == 250.0 and names == list(CHANNELS) and list(onsets["tale"]) == [1.0, 2.0, 3.0]
    np.testing.assert_allclose(raw["tale"], data.T, atol=1e-8)  # EDF stores 16-bit samples: a few nV of rounding


def test_a_clean_recording_is_ingested(tmp_path):
    write_story(tmp_path / "bids")
    summary = ingest(tmp_path, tmp_path / "bids")
    assert summary["tale"]["n_words"] == 3 and not list(tmp_path.glob(".raw.h5.*.tmp"))
    out = eeg.preprocess_subject(tmp_path / "raw.h5", settings(), tmp_path / "eeg.h5")
    assert out["tale"]["sfreq"] == 100.0


def test_missing_events_are_named(tmp_path):
    write_story(tmp_path / "bids")
    next((tmp_path / "bids").rglob("*_events.tsv")).unlink()
    with pytest.raises(InputError, match="events.tsv: missing"):
        ingest(tmp_path, tmp_path / "bids")
    assert not (tmp_path / "raw.h5").exists()


def test_events_outside_the_recording_are_named(tmp_path):
    write_story(tmp_path / "bids", onsets=(1.0, 2.0, 25.0))
    with pytest.raises(InputError, match=r"events.tsv: 1 word onsets lie outside the recording .*'boat'"):
        ingest(tmp_path, tmp_path / "bids")


def test_channels_unknown_to_the_montage_are_named(tmp_path):
    write_story(tmp_path / "bids", names=("Fz", "Cz", "Brain7"))
    with pytest.raises(InputError, match=r"_eeg.vhdr: channels Brain7 are not in the montage 'standard_1020'.*eeg.montage"):
        ingest(tmp_path, tmp_path / "bids")


def test_a_sampling_rate_below_twice_the_low_pass_is_named(tmp_path):
    write_story(tmp_path / "bids", sfreq=30.0)
    with pytest.raises(InputError, match=r"sampled at 30 Hz, below twice eeg.h_freq"):
        ingest(tmp_path, tmp_path / "bids")


def test_an_unreadable_file_is_named(tmp_path):
    write_story(tmp_path / "bids")
    header = next((tmp_path / "bids").rglob("*_eeg.vhdr"))
    header.write_text("not a BrainVision header\n")
    with pytest.raises(InputError, match=r"_eeg.vhdr: MNE cannot read this recording"):
        ingest(tmp_path, tmp_path / "bids")


def test_words_that_are_not_the_story_s_are_named(tmp_path):
    write_story(tmp_path / "bids", words=("the", "old", "ship"))
    with pytest.raises(InputError, match=r"differ from story 'tale'.*'ship' vs 'boat'"):
        ingest(tmp_path, tmp_path / "bids")


def test_a_missing_recording_is_named(tmp_path):
    (tmp_path / "bids").mkdir()
    with pytest.raises(InputError, match=r"no EEG recording of task 'tale'.*eeg.root"):
        ingest(tmp_path, tmp_path / "bids")


@pytest.mark.parametrize("section, message", [
    ({"windows": {"n400": [0.5, 0.3]}}, "eeg.windows.n400"),
    ({"trf": {"tmin": 0.5, "tmax": 0.1}}, "eeg.trf.tmin"),
    ({"l_freq": 30.0, "h_freq": 20.0}, "eeg.l_freq"),
    ({"trf": {"n_components": 384, "solver": "direct"}}, "31104 columns"),
    ({"h_freq": 40.0, "resample_hz": 60.0}, "half eeg.resample_hz"),
    ({"epochs": {"window": [0.3, 0.5], "bin_s": 0.15}}, "whole number of bin_s"),
    ({"epochs": {"window": [0.5, 0.3]}}, "eeg.epochs.window"),
])
def test_inconsistent_eeg_settings_stop_before_any_job(section, message):
    with pytest.raises(InputError, match=message):
        configuration.check_eeg({"eeg": section, "dataset": {"train_stories": ["a", "b"]}})


def test_large_trfs_go_to_the_iterative_solver_and_the_direct_one_refuses_them():
    configuration.check_eeg({"eeg": {"trf": {"n_components": 384}}, "dataset": {"train_stories": ["a", "b"]}})
    configuration.check_eeg({"eeg": {"trf": {"n_components": None}}, "dataset": {"train_stories": ["a", "b"]}})
    assert eeg.trf_solver(settings(), 8192) == "direct" and eeg.trf_solver(settings(), 8193) == "iterative"
    assert eeg.trf_solver(settings(trf_solver="iterative"), 10) == "iterative"
    with pytest.raises(InputError, match="eeg.trf.solver is direct.*31104 columns"):
        eeg.trf_solver(settings(trf_solver="direct"), 31104)
    with pytest.raises(InputError, match="eeg.trf.n_components"):
        eeg.check_trf_memory(81, 100_000, 5)


def test_eeg_word_classification_needs_three_training_stories():
    config = {"eeg": {}, "decoding": {}, "dataset": {"train_stories": ["a", "b"]}}
    with pytest.raises(InputError, match="three or more"):
        configuration.check_eeg(config)
    configuration.check_eeg({**config, "dataset": {"train_stories": ["a", "b", "c"]}})
    configuration.check_eeg({"eeg": {}, "dataset": {"train_stories": ["a", "b"]}})  # without decoding two suffice


def test_event_words_match_the_story_s_regardless_of_case_and_silence(tmp_path):
    write_story(tmp_path / "bids", onsets=(1.0, 1.5, 2.0, 3.0), words=("The", "sp", "old", "boat"))
    assert ingest(tmp_path, tmp_path / "bids")["tale"]["n_words"] == 3


def test_channels_are_put_in_one_order_across_stories_and_bads_dropped_without_interpolation(tmp_path):
    write_story(tmp_path / "bids", story="tale")
    write_story(tmp_path / "bids", story="myth", names=CHANNELS[::-1])
    words = words_file(tmp_path)
    eeg.ingest_subject(tmp_path / "bids", "01", ["tale", "myth"], {"tale": words, "myth": words}, settings(), tmp_path / "raw.h5")
    import h5py

    with h5py.File(tmp_path / "raw.h5", "r+") as h5:
        assert list(h5["myth"].attrs["ch_names"]) == list(h5["tale"].attrs["ch_names"]) == list(CHANNELS)
        h5["tale"].attrs["bads"] = h5["myth"].attrs["bads"] = ["C3"]
    eeg.preprocess_subject(tmp_path / "raw.h5", settings(interpolate_bads=False), tmp_path / "eeg.h5")
    with h5py.File(tmp_path / "eeg.h5") as h5:
        assert "C3" not in list(h5["tale"].attrs["ch_names"]) and list(h5["tale"].attrs["dropped"]) == ["C3"]
        assert h5["tale"]["data"].shape[1] == len(CHANNELS) - 1


def test_average_reference_includes_the_interpolated_channel():
    rng = np.random.default_rng(7)
    data = 1e-5 * rng.standard_normal((len(CHANNELS), 250 * 20))
    raw = eeg.preprocess_raw(raw_with(data, bads=("C3",)), settings(resample_hz=250.0, h_freq=40.0))
    assert np.abs(raw.get_data().mean(axis=0)).max() < 1e-12  # referenced after interpolation


def test_several_recordings_of_one_story_are_named(tmp_path):
    write_story(tmp_path / "bids")
    header = next((tmp_path / "bids").rglob("*_eeg.vhdr"))
    import shutil

    for suffix in (".vhdr", ".vmrk", ".eeg"):
        source = header.with_suffix(suffix)
        shutil.copy(source, source.with_name(source.name.replace("task-tale", "task-tale_run-2")))
    with pytest.raises(InputError, match=r"2 EEG recordings of task 'tale'"):
        ingest(tmp_path, tmp_path / "bids")


def test_demo_loadings_sum_to_zero_so_the_average_reference_spreads_nothing():
    from brainllm.demo_eeg import EEG_SIGNAL_UV, planted_loadings

    loadings = planted_loadings(np.random.default_rng(3))
    np.testing.assert_allclose(loadings.sum(axis=1), 0.0, atol=1e-9)
    assert np.sqrt((loadings**2).sum(axis=0).mean()) == pytest.approx(EEG_SIGNAL_UV)


def test_a_run_split_into_segments_is_preprocessed_whole_then_cut_at_the_segments_words(tmp_path):
    """dataset.segments: one recording, two stories; each story is the whole preprocessed run's samples from
    SEGMENT_LEAD_S before its first word, its onsets shifted alike (the slow reference: the run ingested whole)."""
    words = ("the", "old", "boat", "sails", "at", "dawn")
    onsets = (1.0, 2.0, 3.0, 8.0, 9.0, 10.0)
    write_story(tmp_path / "bids", story="tale", onsets=onsets, words=words)
    halves = {"taleseg1": (0, 3), "taleseg2": (3, 6)}
    paths = {}
    for story, (a, b) in halves.items():
        paths[story] = tmp_path / f"{story}.tsv"
        write_tsv(paths[story], pd.DataFrame({"word": list(words[a:b]), "onset": np.array(onsets[a:b]) - onsets[a] + 0.5,
                                              "offset": np.array(onsets[a:b]) - onsets[a] + 0.8}))
    dataset = {"segments": {"tale": {"n_segments": 2}}, "train_stories": ["taleseg1"], "test_stories": ["taleseg2"]}
    assert eeg.recording_stories(["taleseg2", "taleseg1"], dataset) == {"tale": ["taleseg1", "taleseg2"]}
    summary = eeg.ingest_subject(tmp_path / "bids", "01", ["taleseg1", "taleseg2"], paths, settings(), tmp_path / "raw.h5", dataset=dataset)
    assert summary["taleseg2"]["recording"] == "tale" and summary["taleseg2"]["n_words"] == 3
    eeg.preprocess_subject(tmp_path / "raw.h5", settings(), tmp_path / "eeg.h5")
    whole = {"tale": tmp_path / "whole.tsv"}
    write_tsv(whole["tale"], pd.DataFrame({"word": list(words), "onset": onsets, "offset": np.array(onsets) + 0.3}))
    eeg.ingest_subject(tmp_path / "bids", "01", ["tale"], whole, settings(), tmp_path / "raw_whole.h5")
    eeg.preprocess_subject(tmp_path / "raw_whole.h5", settings(), tmp_path / "eeg_whole.h5")
    data, onset, *_ = eeg.read_preprocessed(tmp_path / "eeg.h5", ["taleseg1", "taleseg2"])
    reference, reference_onset, sfreq, *_ = eeg.read_preprocessed(tmp_path / "eeg_whole.h5", ["tale"])
    cut = int(round((onsets[3] - eeg.SEGMENT_LEAD_S) * sfreq))  # segment 1 ends where segment 2 starts
    start = int(round((onsets[0] - eeg.SEGMENT_LEAD_S) * sfreq))
    np.testing.assert_array_equal(data["taleseg1"], reference["tale"][start:cut])
    np.testing.assert_array_equal(data["taleseg2"], reference["tale"][cut:])
    np.testing.assert_allclose(onset["taleseg1"], np.array(onsets[:3]) - start / sfreq)
    np.testing.assert_allclose(onset["taleseg2"], np.array(onsets[3:]) - cut / sfreq)


def test_a_segment_whose_words_are_not_in_the_recording_is_named(tmp_path):
    write_story(tmp_path / "bids", story="tale")
    path = tmp_path / "taleseg2.tsv"
    write_tsv(path, pd.DataFrame({"word": ["boat", "old"], "onset": [0.5, 1.5], "offset": [0.8, 1.8]}))
    dataset = {"segments": {"tale": {"n_segments": 2}}, "train_stories": [], "test_stories": ["taleseg2"]}
    with pytest.raises(InputError, match=r"2 words of story taleseg2 .* do not run in order"):
        eeg.ingest_subject(tmp_path / "bids", "01", ["taleseg2"], {"taleseg2": path}, settings(), tmp_path / "raw.h5", dataset=dataset)
    assert not (tmp_path / "raw.h5").exists()


def test_detection_leaves_interpolated_channels_out_of_specificity():
    chosen = pd.DataFrame({"channel": ["Cz", "Pz", "F7", "O1", "O2"], "significant": [True, False, True, True, False]})
    truth = {"planted_channels": ["Cz", "Pz"], "latency_s": 0.4}
    scores = eeg.detection_scores(chosen, truth, 0.41, interpolated=["F7"])
    assert scores["sensitivity"] == 0.5 and scores["specificity"] == 0.5  # O1 false, O2 right; F7 not counted
    assert eeg.detection_scores(chosen, truth, 0.41)["specificity"] == pytest.approx(1 / 3)
    assert scores["latency_error_s"] == pytest.approx(0.01)
