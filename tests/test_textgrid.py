"""Praat TextGrid reader: long, short and chronological formats; encodings; tier choice."""

from __future__ import annotations

import pytest

from brainllm.io import InputError
from brainllm.ingest import is_silence, words_from_textgrid
from brainllm.textgrid import parse_textgrid, read_textgrid, word_tier

# Two tiers; the phone tier has overlapping intervals (as in ds003020 wheretheressmoke).
PHONES = [(0.0, 0.5, "sp"), (0.5, 0.9, "HH"), (0.8, 1.2, "AY1"), (1.2, 2.3, "sp")]
WORDS = [(0.0, 0.5, "{SP}"), (0.5, 1.2, "hi"), (1.2, 1.6, "sp"), (1.6, 2.0, 'say "x"'), (2.0, 2.3, "{LG}")]


def long_format(phone_name="phone", word_name="word") -> str:
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0 ", "xmax = 2.3 ",
             "tiers? <exists> ", "size = 2 ", "item []: "]
    for index, (name, intervals) in enumerate([(phone_name, PHONES), (word_name, WORDS)], start=1):
        lines += [f"    item [{index}]:", '        class = "IntervalTier" ', f'        name = "{name}" ',
                  "        xmin = 0 ", "        xmax = 2.3 ", f"        intervals: size = {len(intervals)} "]
        for number, (start, end, text) in enumerate(intervals, start=1):
            escaped = text.replace('"', '""')
            lines += [f"        intervals [{number}]:", f"            xmin = {start} ",
                      f"            xmax = {end} ", f'            text = "{escaped}" ']
    return "\n".join(lines) + "\n"


def short_format() -> str:
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "0", "2.3", "<exists>", "2"]
    for name, intervals in [("phone", PHONES), ("word", WORDS)]:
        lines += ['"IntervalTier"', f'"{name}"', "0", "2.3", str(len(intervals))]
        for start, end, text in intervals:
            lines += [str(start), str(end), '"' + text.replace('"', '""') + '"']
    return "\n".join(lines) + "\n"


def chronological_format() -> str:
    lines = ['"Praat chronological TextGrid text file"', "0 2.3   ! Time domain.", "2   ! Number of tiers.",
             '"IntervalTier" "phone" 0 2.3', '"IntervalTier" "word" 0 2.3']
    entries = [(1, *p) for p in PHONES] + [(2, *w) for w in WORDS]
    for tier, start, end, text in sorted(entries, key=lambda e: (e[1], e[0])):
        lines += ["", f"{tier} {start} {end}", '"' + text.replace('"', '""') + '"']
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("make, kind", [(long_format, "long"), (short_format, "short"),
                                        (chronological_format, "chronological")])
def test_formats_give_the_same_tiers(make, kind):
    grid = parse_textgrid(make())
    assert grid.text_format == kind
    assert (grid.xmin, grid.xmax) == (0.0, 2.3)
    assert [tier.name for tier in grid.tiers] == ["phone", "word"]
    assert grid.tiers[0].intervals == PHONES  # overlaps are kept as they are
    assert grid.tiers[1].intervals == WORDS  # including the doubled quote


@pytest.mark.parametrize("encoding, bom", [("utf-8", b"\xef\xbb\xbf"), ("utf-16", b""), ("utf-16-le", b"")])
def test_encodings(tmp_path, encoding, bom):
    path = tmp_path / "story.TextGrid"
    path.write_bytes(bom + long_format().replace("hi", "café").encode(encoding))
    grid = read_textgrid(path)
    assert grid.tiers[1].intervals[1][2] == "café"


def test_word_tier_by_name_then_position():
    named = parse_textgrid(long_format(phone_name="Words", word_name="phones"))
    assert word_tier(named).name == "Words"  # by name, case-insensitive, wherever it is
    unnamed = parse_textgrid(long_format(phone_name="tier a", word_name="tier b"))
    assert word_tier(unnamed).name == "tier b"  # ds003020: position 1


def test_silence_tokens():
    for token in ["sp", "{SP}", "{LG}", "sentence_start", "SENTENCE_END", "br", "ls", "ns", "sil", "sl",
                  "cg", "ig", "", "  ", "{ns}"]:
        assert is_silence(token), token
    for token in ["hi", "spin", "i", "{hi}x", "brother"]:
        assert not is_silence(token), token


@pytest.mark.parametrize("make", [long_format, short_format, chronological_format])
def test_words_shifted_to_scan_time(tmp_path, make):
    path = tmp_path / "story.TextGrid"
    path.write_text(make())
    words = words_from_textgrid(path, audio_onset_s=10.0)
    assert list(words["word"]) == ["hi", 'say "x"']
    assert words["onset"].tolist() == pytest.approx([10.5, 11.6], abs=1e-12)
    assert words["offset"].tolist() == pytest.approx([11.2, 12.0], abs=1e-12)


@pytest.mark.parametrize(
    "text, problem",
    [
        (long_format().replace("intervals: size = 5", "intervals: size = 6"), "ends where"),
        (long_format().replace('text = "hi"', 'text = "hi'), "malformed TextGrid"),
        (long_format().replace("xmax = 0.9", 'xmax = "0.9"'), "expected xmax"),
        (short_format().replace('"IntervalTier"', '"Polygon"', 1), "unknown class"),
        ("just some text\n", "not a Praat TextGrid"),
        (chronological_format().replace("\n2 0.5 1.2", "\n7 0.5 1.2"), "tier 7"),
    ],
)
def test_malformed_textgrid_names_file(tmp_path, text, problem):
    path = tmp_path / "broken.TextGrid"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as caught:
        read_textgrid(path)
    assert caught.value.path == str(path)
