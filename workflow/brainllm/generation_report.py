"""Report tables and figures of the generation stage (no torch: the report jobs start fast)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .io import write_tsv

# the brain-prompted generation's conditions: brain windows, permuted windows, the text prompt alone, the LLM alone
CONDITIONS = ("brain", "permuted_brain", "text_only", "llm")


def plot_brain_prompt(scores_jsons: Sequence[str | os.PathLike], comparisons_tsvs: Sequence[str | os.PathLike],
                      texts_tsvs: Sequence[str | os.PathLike], out: Mapping[str, str | os.PathLike], dpi: int = 150,
                      n_examples: int = 5, modalities: Sequence[str] | None = None) -> pd.DataFrame:
    """Report figure and tables of every subject: ``out['tsv']`` the comparisons with their CIs and p,
    ``out['examples']`` heard vs generated text (beam search) of ``n_examples`` segments per subject.

    ``modalities`` names each input's recording (fMRI, EEG; default fMRI); EEG subjects are labelled ``<subject> (EEG)``."""
    from . import figures
    from .report import _subject_of

    modalities = list(modalities or ["fMRI"] * len(scores_jsons))

    def label(path, modality):
        return _subject_of(path) + (f" ({modality})" if modality != "fMRI" else "")

    comparisons = pd.concat([pd.read_csv(path, sep="\t").assign(subject=label(path, m), modality=m)
                             for path, m in zip(comparisons_tsvs, modalities)], ignore_index=True)
    pairwise = pd.DataFrame([{"subject": label(path, m), "modality": m, **json.loads(Path(path).read_text())["pairwise"]}
                             for path, m in zip(scores_jsons, modalities)])
    examples = []
    for path, modality in zip(texts_tsvs, modalities):
        texts = pd.read_csv(path, sep="\t", keep_default_na=False)
        beam = texts[texts["decoding"] == "beam"]
        segments = sorted(beam["segment"].unique())
        for segment in [segments[i] for i in np.linspace(0, len(segments) - 1, min(n_examples, len(segments))).astype(int)]:
            rows = beam[beam["segment"] == segment].set_index("condition")
            first = rows.iloc[0]
            examples.append({"subject": _subject_of(path), "modality": modality, "story": first["story"], "onset": first["onset"],
                             "prompt": first["prompt"], "heard": first["reference"], **{condition: rows.loc[condition, "text"] for condition in CONDITIONS}})
    write_tsv(out["tsv"], comparisons)
    write_tsv(out["examples"], pd.DataFrame(examples))
    with figures.styled():
        figures.save_figure(figures.generation_figure(comparisons, pairwise), out["png"], out["svg"], dpi)
    return comparisons


def beam_search_table(scores_jsons: Sequence[str | os.PathLike], out_tsv: str | os.PathLike) -> pd.DataFrame:
    """One row per (subject, metric): decoded, null mean and SD, z and the rank p against the null texts."""
    rows = []
    for path in scores_jsons:
        record = json.loads(Path(path).read_text())
        for metric, z in record["z"].items():
            rows.append({"subject": record["subject"], "layer": record["layer"], "metric": metric, "decoded": record["decoded"][metric],
                         "null_mean": record["null_mean"][metric], "null_sd": record["null_sd"][metric], "z": z,
                         "p": record["p"][metric], "n_null": record["n_null"], "n_words": record["n_words"]})
    table = pd.DataFrame(rows)
    write_tsv(out_tsv, table)
    return table
