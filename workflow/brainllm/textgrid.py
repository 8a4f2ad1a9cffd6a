"""Praat TextGrid reader: long ("ooTextFile"), short and chronological text formats.

All three formats reduce to the same stream of tokens once labels (``xmin =``), index
brackets (``[3]``) and ``!`` comments are skipped: quoted strings, numbers and
``<exists>``-style flags. The reader decodes UTF-8 (with or without BOM) and UTF-16,
and does not require intervals to be ordered or disjoint (real phone tiers overlap).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from brainllm.io import InputError

logger = logging.getLogger(__name__)

WORD_TIER_NAMES = ("word", "words")
WORD_TIER_POSITION = 1  # ds003020: tier 0 = phones, tier 1 = words

_TOKEN = re.compile(
    r'"(?P<string>(?:[^"]|"")*)"'  # Praat doubles a quote inside a string
    r"|!(?P<comment>[^\n]*)"
    r"|\[[^\]\n]*\]"  # index brackets of the long format
    r"|<(?P<flag>[A-Za-z]+)>"
    r"|(?P<number>(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))"
    r"|(?P<bad>[-+]?[A-Za-z_]+\d[\w.]*|[-+]?\.?\d[\w.]*[A-Za-z_.][\w.]*)"  # e.g. zero1.772, 1.7x2, 1.2.3
    r'|(?P<stray>")'
)


@dataclass
class Tier:
    """One tier: ``intervals`` holds (xmin, xmax, text); point tiers use xmin == xmax."""

    name: str
    kind: str  # "IntervalTier" | "TextTier"
    xmin: float
    xmax: float
    intervals: list[tuple[float, float, str]] = field(default_factory=list)


@dataclass
class TextGrid:
    xmin: float
    xmax: float
    tiers: list[Tier]
    text_format: str  # "long" | "short" | "chronological"


def decode_praat_bytes(raw: bytes, path: str | os.PathLike | None = None) -> str:
    """Decode a Praat text file: UTF-16 (BOM or NUL bytes), UTF-8 with optional BOM, else Latin-1."""
    try:
        return _decode(raw)
    except UnicodeDecodeError as error:
        raise InputError(path, f"not a text file: undecodable bytes at byte {error.start} ({error.reason}).",
                         "give the Praat TextGrid (text, not binary) of this story.") from error


def _decode(raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    if b"\x00" in raw[:200]:
        return raw.decode("utf-16-be" if raw[:1] == b"\x00" else "utf-16-le")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _Tokens:
    """Cursor over the value tokens of a Praat text file, with errors that name the file."""

    def __init__(self, text: str, path: str | os.PathLike | None):
        self.path = path
        self.text = text
        self.items: list[tuple[str, object, int]] = []  # (kind, value, character offset)
        for match in _TOKEN.finditer(text):
            if match.group("stray") is not None:
                raise InputError(path, f"malformed TextGrid: unterminated string on line {self.line(match.start())}.")
            if match.group("bad") is not None:
                raise InputError(path, f"malformed TextGrid: {match.group('bad')!r} on line {self.line(match.start())} is not a number.",
                                 "correct the value (Praat writes plain decimals such as 1.772) or re-export the TextGrid.")
            if match.group("string") is not None:
                self.items.append(("string", match.group("string").replace('""', '"'), match.start()))
            elif match.group("flag") is not None:
                self.items.append(("flag", match.group("flag"), match.start()))
            elif match.group("number") is not None:
                self.items.append(("number", match.group("number"), match.start()))
        self.position = 0

    def line(self, offset: int) -> int:
        return self.text.count("\n", 0, offset) + 1

    def at_end(self) -> bool:
        return self.position >= len(self.items)

    def _next(self, kind: str, what: str):
        if self.at_end():
            raise InputError(
                self.path,
                f"malformed TextGrid: the file ends where {what} was expected.",
                "re-export the TextGrid from Praat (it may be truncated).",
            )
        found_kind, value, offset = self.items[self.position]
        if found_kind != kind:
            raise InputError(
                self.path,
                f"malformed TextGrid: expected {what} ({kind}) on line {self.line(offset)}, "
                f"found {found_kind} {value!r}.",
                "re-export the TextGrid from Praat.",
            )
        self.position += 1
        return value

    def string(self, what: str) -> str:
        return self._next("string", what)

    def real(self, what: str) -> float:
        return float(self._next("number", what))

    def integer(self, what: str) -> int:
        value = self.real(what)
        if value != int(value) or value < 0:
            raise InputError(self.path, f"malformed TextGrid: {what} must be a count, found {value}.")
        return int(value)

    def peek_kind(self) -> str | None:
        return None if self.at_end() else self.items[self.position][0]


def _read_tier_header(tokens: _Tokens, index: int) -> Tier:
    kind = tokens.string(f"the class of tier {index + 1}")
    if kind not in ("IntervalTier", "TextTier"):
        raise InputError(tokens.path, f"malformed TextGrid: tier {index + 1} has unknown class {kind!r}.")
    name = tokens.string(f"the name of tier {index + 1}")
    xmin = tokens.real(f"xmin of tier {name!r}")
    xmax = tokens.real(f"xmax of tier {name!r}")
    return Tier(name=name, kind=kind, xmin=xmin, xmax=xmax)


def _parse_ootextfile(tokens: _Tokens, text_format: str) -> TextGrid:
    xmin = tokens.real("the TextGrid xmin")
    xmax = tokens.real("the TextGrid xmax")
    n_tiers = 0
    if tokens.peek_kind() == "flag":
        exists = tokens._next("flag", "the tiers flag")
        if exists == "exists":
            n_tiers = tokens.integer("the number of tiers")
    else:
        n_tiers = tokens.integer("the number of tiers")
    tiers = []
    for index in range(n_tiers):
        tier = _read_tier_header(tokens, index)
        n_items = tokens.integer(f"the number of items of tier {tier.name!r}")
        for item in range(n_items):
            _read_entry(tokens, tier, f"item {item + 1} of tier {tier.name!r}")
        tiers.append(tier)
    if not tokens.at_end():
        raise InputError(tokens.path, "malformed TextGrid: unexpected content after the last tier.")
    return TextGrid(xmin=xmin, xmax=xmax, tiers=tiers, text_format=text_format)


def _read_entry(tokens: _Tokens, tier, where: str) -> None:
    """Append one interval (xmin, xmax, text) or point (time, time, mark) to ``tier``."""
    if tier.kind == "IntervalTier":
        start = tokens.real(f"xmin of {where}")
        end = tokens.real(f"xmax of {where}")
        tier.intervals.append((start, end, tokens.string(f"text of {where}")))
    else:
        time = tokens.real(f"time of {where}")
        tier.intervals.append((time, time, tokens.string(f"mark of {where}")))


def _parse_chronological(tokens: _Tokens) -> TextGrid:
    xmin = tokens.real("the time domain start")
    xmax = tokens.real("the time domain end")
    n_tiers = tokens.integer("the number of tiers")
    tiers = [_read_tier_header(tokens, index) for index in range(n_tiers)]
    while not tokens.at_end():
        tier_number = tokens.integer("a tier number")
        if not 1 <= tier_number <= n_tiers:
            raise InputError(
                tokens.path, f"malformed TextGrid: entry for tier {tier_number}, but there are {n_tiers} tiers."
            )
        tier = tiers[tier_number - 1]
        _read_entry(tokens, tier, f"an entry of tier {tier.name!r}")
    return TextGrid(xmin=xmin, xmax=xmax, tiers=tiers, text_format="chronological")


def parse_textgrid(text: str, path: str | os.PathLike | None = None) -> TextGrid:
    """Parse the text of a TextGrid in long, short or chronological format."""
    tokens = _Tokens(text, path)
    if tokens.peek_kind() != "string":
        raise InputError(path, "not a Praat TextGrid: no header string found.", "check the file.")
    header = tokens.string("the file header")
    if header.startswith("Praat chronological TextGrid"):
        return _parse_chronological(tokens)
    if header != "ooTextFile":
        raise InputError(path, f"not a Praat TextGrid: unknown header {header!r}.", "check the file.")
    object_class = tokens.string("the object class")
    if not object_class.startswith("TextGrid"):
        raise InputError(path, f"the Praat file holds a {object_class!r}, not a TextGrid.")
    text_format = "long" if re.search(r"^\s*xmin\s*=", text, flags=re.MULTILINE) else "short"
    return _parse_ootextfile(tokens, text_format)


def read_textgrid(path: str | os.PathLike) -> TextGrid:
    """Read a TextGrid file in any of Praat's text formats and encodings."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "TextGrid file not found.", "check dataset.root and the story name.")
    return parse_textgrid(decode_praat_bytes(path.read_bytes(), path), path)


def word_tier(grid: TextGrid, path: str | os.PathLike | None = None) -> Tier:
    """The word tier: named "word"/"words" (any case), else the tier at position 1."""
    for tier in grid.tiers:
        if tier.name.strip().lower() in WORD_TIER_NAMES:
            chosen = tier
            break
    else:
        if len(grid.tiers) > WORD_TIER_POSITION:
            chosen = grid.tiers[WORD_TIER_POSITION]
        elif len(grid.tiers) == 1:
            chosen = grid.tiers[0]
        else:
            raise InputError(path, "the TextGrid has no tiers.", "provide a TextGrid with a word tier.")
        if "phon" in chosen.name.strip().lower():
            names = ", ".join(repr(tier.name) for tier in grid.tiers)
            raise InputError(path, f"no word tier: the tier used by position, {chosen.name!r}, holds phones (tiers: {names}).",
                             "provide the TextGrid with its word tier (named \"words\", or second after the phones).")
        logger.warning("%s: no tier named word(s); using tier %r by position", path, chosen.name)
    if chosen.kind != "IntervalTier":
        raise InputError(path, f"the word tier {chosen.name!r} is a point tier, not an interval tier.")
    return chosen
