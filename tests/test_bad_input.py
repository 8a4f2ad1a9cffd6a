"""Bad or suspicious input: each case is a clear InputError naming the source file (or the
config key), the row or field and the fix — or, where the input is legal, a logged warning."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from brainllm.configuration import validate

from brainllm import align, ingest, sources, textgrid
from brainllm.io import InputError

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())
TEXTGRID = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 2
tiers? <exists>
size = 1
item []:
    item [1]:
        class = "IntervalTier"
        name = "{name}"
        xmin = 0
        xmax = 2
        intervals: size = 2
        intervals [1]:
            xmin = 0
            xmax = {value}
            text = "so"
        intervals [2]:
            xmin = 1.772
            xmax = 2
            text = "there"
'''


def config_with(mutate) -> dict:
    config = copy.deepcopy(CONFIG)
    mutate(config)
    return config


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def events(path: Path, rows: str) -> Path:
    return write(path, "onset\tduration\ttrial_type\tword\n" + rows)


def ds003020(tmp_path: Path, n_trs: int = 30) -> dict:
    root = tmp_path / "ds"
    write(root / "derivative/respdict.json", f'{{"alpha": {n_trs}, "beta": {n_trs}}}')
    return dict(name="ds", layout="ds003020", root=str(root), subjects=["UTS01"], train_stories=["alpha"],
                test_stories=["beta"], tr=2.0, trim_start=10, trim_end=10)


def truncated_hf5(tmp_path: Path) -> Path:
    path = tmp_path / "alpha.hf5"
    with h5py.File(path, "w") as handle:
        handle["data"] = np.zeros((10, 500), dtype=np.float32)
    path.write_bytes(path.read_bytes()[:3000])
    return path


WORDCSV = {"word_column": "word", "onset_column": "onset", "offset_column": "offset", "run_column": None, "story_map": None}

CASES = {
    # config
    "story twice in train_stories": (lambda tmp: validate(config_with(lambda c: c["dataset"]["train_stories"].append("orchard"))), "non-unique|unique"),
    "subject twice": (lambda tmp: validate(config_with(lambda c: c["dataset"]["subjects"].append("UTS01"))), "non-unique|unique"),
    "alpha exponent 40": (lambda tmp: validate(config_with(lambda c: c["encoding"]["alphas"].update(log10_max=40))), "40"),
    "1000 alphas": (lambda tmp: validate(config_with(lambda c: c["encoding"]["alphas"].update(num=1000))), "1000"),
    "story in train and test": (lambda tmp: sources.check_plan({**ds003020(tmp), "test_stories": ["alpha"]}, [1]), "both train_stories and test_stories"),
    "delays longer than the shortest story": (lambda tmp: sources.check_plan(ds003020(tmp, n_trs=24), [1, 2, 3, 4]), r"respdict.json: story 'alpha' has 4 TRs but encoding.delays reaches 4"),
    "delays longer than a story, at fit time": (lambda tmp: align.make_delayed(np.ones((3, 2)), [1, 3]), "delay of 3 TRs is not shorter than a story of 3 TRs"),
    # TextGrids
    "TextGrid with only a phone tier": (lambda tmp: textgrid.word_tier(textgrid.read_textgrid(write(tmp / "a.TextGrid", TEXTGRID.format(name="phone", value="1.772"))), tmp / "a.TextGrid"), r"a.TextGrid: no word tier.*'phone'.*holds phones"),
    "malformed number zero1.772": (lambda tmp: textgrid.read_textgrid(write(tmp / "a.TextGrid", TEXTGRID.format(name="words", value="zero1.772"))), r"a.TextGrid: .*'zero1.772' on line 17 is not a number"),
    "binary garbage in a TextGrid": (lambda tmp: textgrid.read_textgrid(write(tmp / "a.TextGrid", b"\x00\x9f" + bytes(range(256)) * 3 + b"\x01")), r"a.TextGrid: not a text file"),
    # events and timings
    "empty events.tsv": (lambda tmp: ingest.words_from_events(write(tmp / "e_events.tsv", ""), "word", None), r"e_events.tsv: the events file is empty"),
    "non-UTF-8 bytes in events.tsv": (lambda tmp: ingest.words_from_events(write(tmp / "e_events.tsv", b"onset\tduration\tword\n0.5\t0.2\tcaf\xe9\n"), "word", None), r"e_events.tsv: not UTF-8 text \(.*xe9'\)"),
    "non-UTF-8 bytes in a word table": (lambda tmp: ingest.words_from_wordcsv(write(tmp / "w.csv", b"word,onset,offset\ncaf\xe9,0.5,0.9\n"), WORDCSV, "alice", ["alice"]), r"w.csv: is not UTF-8 text \(line 2\).*UTF-8"),
    "empty word table": (lambda tmp: ingest.words_from_wordcsv(write(tmp / "w.csv", ""), WORDCSV, "alice", ["alice"]), r"w.csv: the word-onset table is empty"),
    "bad onset reported with its row": (lambda tmp: ingest.words_from_events(events(tmp / "e_events.tsv", "0.5\t0.2\tword\tso\nsoon\t0.2\tword\tthere\n"), "word", "word"), r"e_events.tsv: row 3 .*column onset: 'soon' is not a number"),
    "words before the scan start": (lambda tmp: ingest.check_words_within_run(ingest.words_from_events(events(tmp / "e_events.tsv", "-0.5\t0.2\tword\tso\n1.0\t0.2\tword\tthere\n"), "word", "word"), 100.0, tmp / "e_events.tsv"), r"e_events.tsv: 1 word\(s\) start before the scan starts \(first: 'so' at -0.500 s\)"),
    "repeat run with other words": (lambda tmp: ingest.check_same_words(
        ingest.words_from_events(events(tmp / "run-1_events.tsv", "0.5\t0.2\tword\tso\n1.0\t0.2\tword\tthere\n"), "word", "word"),
        ingest.words_from_events(events(tmp / "run-2_events.tsv", "0.5\t0.2\tword\tso\n1.0\t0.2\tword\twhere\n"), "word", "word"),
        tmp / "run-1_events.tsv", tmp / "run-2_events.tsv"), r"run-2_events.tsv: this repeat run's words differ from the first run's .*run-1_events.tsv.*word 2 is 'where'"),
    # responses
    "truncated hf5": (lambda tmp: ingest.read_ds003020_responses(truncated_hf5(tmp), 30, 10, 10), r"alpha.hf5: unreadable HDF5 file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_error(case, tmp_path):
    make, message = CASES[case]
    with pytest.raises(Exception, match=message) as error:
        make(tmp_path)
    if not case.startswith(("story twice", "subject twice", "alpha exponent", "1000 alphas")):
        assert isinstance(error.value, InputError) and error.value.fix, case


def test_onsets_out_of_order_keep_the_file_order_with_a_warning(tmp_path, caplog):
    path = events(tmp_path / "e_events.tsv", "0.5\t0.2\tword\tonce\n2.0\t0.2\tword\tupon\n1.0\t0.2\tword\ta\n3.0\t0.2\tword\ttime\n")
    with caplog.at_level(logging.WARNING, logger="brainllm"):
        words = ingest.words_from_events(path, "word", "word")
    assert list(words["word"]) == ["once", "upon", "a", "time"]  # the text is not scrambled
    assert "e_events.tsv: 1 word onset(s) earlier than the word before (first: 'a' at 1.000 s" in caplog.text


def test_repeat_with_shifted_timings_is_a_warning(tmp_path, caplog):
    first = pd.DataFrame({"word": ["so", "there"], "onset": [0.5, 1.0], "offset": [0.7, 1.2]})
    with caplog.at_level(logging.WARNING, logger="brainllm"):
        ingest.check_same_words(first, first.assign(onset=first["onset"] + 0.3), "run-1", "run-2")
    assert "differ from the first run's (run-1) by up to 0.300 s" in caplog.text


def test_valid_config_and_plan_pass(tmp_path):
    validate(copy.deepcopy(CONFIG))
    sources.check_plan(ds003020(tmp_path, n_trs=40), [1, 2, 3, 4])
