"""Annotation tables for label decoding: from events columns and from emotion lexicons."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from brainllm.configuration import validate

from brainllm.annotations import BASIC_EMOTIONS, events_annotations, lexicon_annotations, lexicon_labels, segments_from_events, write_annotations
from brainllm.io import InputError
from brainllm.label_decoding import LabelSettings, read_annotations

REPO = Path(__file__).resolve().parents[1]
TR = 2.0


def events_frame(rows):
    return pd.DataFrame(rows, columns=["onset", "duration", "trial_type", "word", "emotion", "valence"])


def test_word_tags_become_contiguous_segments():
    # words tagged one by one (gaps < 1 TR), then an explicit segment row after a long gap; n/a rows are not annotations
    events = events_frame([
        (10.0, 0.4, "word", "once", "joy", 0.5),
        (10.5, 0.3, "word", "upon", "joy", 0.5),
        (11.0, 0.5, "word", "a", "fear", -0.5),
        (11.6, 0.3, "word", "time", "fear", -0.5),
        (12.0, 0.2, "noise", np.nan, np.nan, np.nan),
        (30.0, 8.0, "segment", np.nan, "sadness", -0.8),
    ])
    segments = segments_from_events(events, ["emotion", "valence"], TR)
    expected = pd.DataFrame({"onset": [10.0, 11.0, 30.0], "duration": [1.0, 0.9, 8.0],
                             "emotion": ["joy", "fear", "sadness"], "valence": [0.5, -0.5, -0.8]})
    pd.testing.assert_frame_equal(segments.reset_index(drop=True), expected)
    # one target only: equal labels of the other column do not split segments
    assert segments_from_events(events, ["emotion"], TR)["emotion"].tolist() == ["joy", "fear", "sadness"]


def save_bold(path: Path, n_trs: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.random.default_rng(0).normal(100, 1, (2, 2, 2, n_trs)).astype(np.float32), np.eye(4))
    img.header.set_zooms((1.0, 1.0, 1.0, TR))
    nib.save(img, path)


@pytest.fixture
def annotated_bids(tmp_path):
    """Two subjects, stories alpha (two runs) and beta; each subject's events carry its own emotion ratings."""
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.8.0"}))
    for subject, label in (("01", "joy"), ("02", "fear")):
        for story, runs in (("alpha", (1, 2)), ("beta", (1,))):
            for run in runs:
                stem = root / f"sub-{subject}" / "func" / f"sub-{subject}_task-{story}_run-{run}"
                save_bold(Path(f"{stem}_bold.nii.gz"), 40)
                (root / f"task-{story}_bold.json").write_text(json.dumps({"RepetitionTime": TR, "TaskName": story}))
                first = label if run == 1 else "sadness"  # only the first run's events are read
                events_frame([(4.0, 0.4, "word", "so", first, 0.2), (4.6, 0.4, "word", "it", first, 0.2),
                              (20.0, 10.0, "segment", np.nan, "trust", 0.9)]).to_csv(f"{stem}_events.tsv", sep="\t", index=False, na_rep="n/a")
    return root


def dataset(root, **overrides):
    return {"name": "t", "layout": "bids", "root": str(root), "subjects": ["01", "02"], "train_stories": ["alpha"],
            "test_stories": ["beta"], "tr": TR, **overrides}


def test_events_annotations_are_read_per_subject_from_the_first_run(annotated_bids):
    for subject, label in (("01", "joy"), ("02", "fear")):
        table, files = events_annotations(dataset(annotated_bids), subject, ["alpha", "beta"], ["emotion", "valence"])
        assert table["story"].tolist() == ["alpha", "alpha", "beta", "beta"]
        assert table["emotion"].tolist() == [label, "trust", label, "trust"]
        np.testing.assert_allclose(table["duration"], [1.0, 10.0, 1.0, 10.0])
        assert [Path(f).name for f in files] == [f"sub-{subject}_task-alpha_run-1_events.tsv", f"sub-{subject}_task-beta_run-1_events.tsv"]


def test_events_annotations_bad_input(annotated_bids):
    with pytest.raises(InputError, match=r"task-alpha_run-1_events.tsv: events file has no column\(s\) \['arousal'\]"):
        events_annotations(dataset(annotated_bids), "01", ["alpha"], ["arousal"])
    with pytest.raises(InputError, match="dataset.layout is 'ds003020', which has no events files"):
        events_annotations(dataset(annotated_bids, layout="ds003020"), "01", ["alpha"], ["emotion"])
    path = annotated_bids / "sub-01" / "func" / "sub-01_task-alpha_run-1_events.tsv"
    path.write_text(path.read_text().replace("20.0\t10.0", "20.0\tn/a"))
    with pytest.raises(InputError, match=r"row 4 \(line of the file\), column duration: .*annotated row"):
        events_annotations(dataset(annotated_bids), "01", ["alpha"], ["emotion"])


def lexicon_by_hand():
    """The two lexicons read straight from the packages' data files (not through their classes)."""
    nrc = json.loads(resources.files("nrclex.data").joinpath("nrc_en.json").read_text(encoding="utf-8"))
    vader = {}
    for line in resources.files("vaderSentiment").joinpath("vader_lexicon.txt").read_text(encoding="utf-8").splitlines():
        token, mean, *_ = line.split("\t")
        vader[token] = float(mean)
    return nrc, vader


def test_lexicon_labels_against_a_hand_count():
    nrc, vader = lexicon_by_hand()
    text = ("The happy child laughed with joy , a wonderful gift . "  # joy words
            "Then the terrible monster attacked ; fear and horror , she screamed in terror . "
            "the the table chair of in on").split()
    words = pd.DataFrame({"word": text, "onset": np.arange(len(text)) * 1.0 + 5.0})
    words["offset"] = words["onset"] + 0.8
    table = lexicon_labels(words, 10.0)
    n_windows = int(round((words["offset"].max() - 5.0) / 10.0))
    assert len(table) == n_windows
    edges = [5.0 + 10.0 * i for i in range(n_windows)] + [words["offset"].max()]
    np.testing.assert_allclose(table["onset"] + table["duration"], edges[1:])
    for index, row in table.iterrows():
        inside = words[(words["onset"] >= edges[index]) & ((words["onset"] < edges[index + 1]) | (index == n_windows - 1))]
        tokens = [w.strip(".,;").lower() for w in inside["word"] if w.strip(".,;")]
        counts = {e: sum(e in nrc.get(t, []) for t in tokens) for e in BASIC_EMOTIONS}
        top = max(counts.values())
        expected = "none" if top == 0 else (max(counts, key=counts.get) if list(counts.values()).count(top) == 1 else "mixed")
        assert row["emotion"] == expected
        valences = [vader[t] / 4 for t in tokens if t in vader]
        assert (np.isnan(row["valence"]) and not valences) or row["valence"] == pytest.approx(np.mean(valences))
        assert row["n_words"] == len(tokens) and row["n_valence_words"] == len(valences)
        assert [row[e] for e in BASIC_EMOTIONS] == pytest.approx([counts[e] / len(tokens) for e in BASIC_EMOTIONS])
    assert table["emotion"].iloc[0] == "joy" and table["valence"].iloc[0] > 0.3
    assert table["emotion"].iloc[1] == "fear" and table["valence"].iloc[1] < -0.3


def test_lexicon_table_is_what_label_decoding_reads(tmp_path):
    stories = {}
    for story, words in (("alpha", "happy joy love sunshine the a"), ("beta", "fear terror the dark night")):
        path = tmp_path / f"{story}.tsv"
        onsets = np.arange(len(words.split())) * 3.0 + 4.0
        pd.DataFrame({"word": words.split(), "onset": onsets, "offset": onsets + 0.5}).to_csv(path, sep="\t", index=False)
        stories[story] = path
    table = lexicon_annotations(stories, 6.0)
    write_annotations(table, tmp_path / "annotations.tsv", {"Description": "test"})
    settings = LabelSettings.from_config({"source": "lexicon", "table": str(tmp_path / "annotations.tsv")})
    assert dict(settings.targets) == {"emotion": "categorical", "valence": "continuous"}
    read = read_annotations(settings.table, settings.targets, list(stories))
    assert len(read) == len(table) and read["valence"].isna().sum() == table["valence"].isna().sum()
    assert json.loads((tmp_path / "annotations.json").read_text()) == {"Description": "test"}
    with pytest.raises(InputError, match="positive window length"):
        lexicon_annotations(stories, 0.0)


def test_label_sources_in_settings_and_schema():
    assert dict(LabelSettings.from_config({"source": "lexicon", "table": "x.tsv", "targets": {"joy": "continuous"}}).targets) == {"joy": "continuous"}
    with pytest.raises(InputError, match="the lexicon labels are"):
        LabelSettings.from_config({"source": "lexicon", "table": "x.tsv", "targets": {"arousal": "continuous"}})
    with pytest.raises(InputError, match="decoding.labels.source is 'rating'"):
        LabelSettings.from_config({"source": "rating", "table": "x.tsv", "targets": {"emotion": "categorical"}})
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for labels, valid in (({"source": "lexicon"}, True), ({"source": "events", "targets": {"emotion": "categorical"}}, True),
                          ({"targets": {"emotion": "categorical"}}, False), ({"source": "lexicon", "segment_s": 0}, False)):
        config = {**base, "decoding": {**base["decoding"], "labels": labels}}
        if valid:
            validate(config)
        else:
            with pytest.raises(InputError, match="config key decoding.labels"):
                validate(config)
