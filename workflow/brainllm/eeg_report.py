"""The EEG report figure: per subject, layer curves, a topography of held-out r and the TRF over lags."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from brainllm.eeg import trf_power
from brainllm.figures import new_figure, save_figure, styled
from brainllm.io import open_h5, write_tsv


def _info_with_positions(names: Sequence[str], positions: np.ndarray):
    import mne

    info = mne.create_info(list(names), 100.0, ch_types="eeg")
    info.set_montage(mne.channels.make_dig_montage(dict(zip(names, positions)), coord_frame="head"), verbose="error")
    return info


def plot_eeg(subjects: Sequence[str], summaries: Sequence[str | os.PathLike], word_levels: Sequence[str | os.PathLike],
             trfs: Sequence[str | os.PathLike], png: str | os.PathLike, svg: str | os.PathLike, tsv: str | os.PathLike, dpi: int = 150) -> None:
    """One row per subject: mean r per layer (validation, test) in the chosen window; test r topography at the
    chosen layer (significant channels marked); TRF power over lags on the channels it predicts best;
    identification of held-out segments from the TRF's predictions against chance."""
    import mne

    rows = []
    with styled():
        fig = new_figure(16.0, 3.4 * len(subjects))
        axes = fig.subplots(len(subjects), 4, squeeze=False)
        for row, (subject, summary_path, table_path, trf_path) in enumerate(zip(subjects, summaries, word_levels, trfs)):
            summary = json.loads(open(summary_path).read())
            table = pd.read_csv(table_path, sep="\t")
            table = table[table["window"] == summary["chosen_window"]]
            curves = table.groupby("layer")[["r_validation", "r_test"]].mean()
            ax = axes[row, 0]
            ax.plot(curves.index, curves["r_validation"], marker="o", label="validation (CV)")
            ax.plot(curves.index, curves["r_test"], marker="s", label="held-out story")
            ax.axvline(summary["chosen_layer"], color="0.6", linestyle=":", label="chosen on validation")
            ax.set(xlabel="layer", ylabel="mean r over channels", title=f"sub-{subject}: word-level, {summary['chosen_window']}")
            ax.legend(fontsize=7)
            chosen = table[table["layer"] == summary["chosen_layer"]]
            with open_h5(trf_path) as h5:
                weights, lags_s, positions = h5["weights"][()], h5["lags_s"][()], h5["positions"][()]
                names = [str(n) for n in h5.attrs["ch_names"]]
            r_by_channel = chosen.set_index("channel").loc[names]
            ax = axes[row, 1]
            title = f"layer {summary['chosen_layer']}: r (● FDR q < {summary['fdr_q']:g})"
            if np.isfinite(positions).all() and len({tuple(np.round(p, 6)) for p in positions}) == len(names):
                limit = max(float(np.abs(r_by_channel["r_test"]).max()), 1e-3)
                image, _ = mne.viz.plot_topomap(r_by_channel["r_test"].to_numpy(), _info_with_positions(names, positions), axes=ax, show=False,
                                                cmap="RdBu_r", vlim=(-limit, limit), mask=r_by_channel["significant"].to_numpy(bool),
                                                mask_params={"marker": "o", "markerfacecolor": "k", "markersize": 4})
                fig.colorbar(image, ax=ax, shrink=0.7, label="held-out r")
            else:  # no sensor positions (eeg.montage: null on a recording without any): channels as bars
                ax.bar(range(len(names)), r_by_channel["r_test"], color=np.where(r_by_channel["significant"], "C3", "0.6"))
                ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
                ax.set_ylabel("held-out r")
                title = title.replace("●", "red:") + ", no sensor positions"
            ax.set_title(title)
            ax = axes[row, 2]
            latency_channels = [names.index(n) for n in summary["trf"]["latency_channels"]]
            power = trf_power(weights)[:, latency_channels].mean(axis=1)
            ax.plot(1000 * lags_s, power)
            ax.axvline(1000 * summary["trf"]["peak_latency_s"], color="C3", linestyle="--",
                       label=f"peak {1000 * summary['trf']['peak_latency_s']:.0f} ms")
            ax.set(xlabel="lag after word onset (ms)", ylabel="TRF power (RMS over components)", title="continuous TRF")
            ax.legend(fontsize=7)
            ax = axes[row, 3]
            identification = pd.DataFrame(summary["identification"])
            lengths = sorted(identification["segment_s"].unique())
            for offset, (direction, label) in enumerate((("observed_to_predicted", "EEG → prediction"), ("predicted_to_observed", "prediction → EEG"))):
                part = identification[identification["direction"] == direction].set_index("segment_s").loc[lengths]
                ax.bar(np.arange(len(lengths)) + 0.4 * offset - 0.2, part["top1"], width=0.38, label=label)
                for position, value in zip(np.arange(len(lengths)), part["chance_top1"]):
                    ax.hlines(value, position - 0.4, position + 0.4, color="k", linestyle="--", linewidth=1,
                              label="chance" if offset == 0 and position == 0 else None)
                for length, values in part.iterrows():
                    rows.append({"subject": subject, "panel": "identification", "layer": summary["chosen_layer"], "lag_ms": np.nan,
                                 "channel": direction, "segment_s": length, "top1": values["top1"], "chance_top1": values["chance_top1"], "p": values["p"]})
            ax.set_xticks(np.arange(len(lengths)), [f"{length:g} s" for length in lengths])
            ax.set(xlabel="held-out segment length", ylabel="top-1 identification", ylim=(0, 1), title="segment identification")
            ax.legend(fontsize=7)
            for layer, values in curves.iterrows():
                rows.append({"subject": subject, "panel": "layers", "layer": layer, "lag_ms": np.nan, "channel": "",
                             "r_validation": values["r_validation"], "r_test": values["r_test"], "trf_power": np.nan})
            for name, values in r_by_channel.iterrows():
                rows.append({"subject": subject, "panel": "topography", "layer": summary["chosen_layer"], "lag_ms": np.nan, "channel": name,
                             "r_validation": values["r_validation"], "r_test": values["r_test"], "trf_power": np.nan})
            for lag, value in zip(lags_s, power):
                rows.append({"subject": subject, "panel": "trf", "layer": summary["chosen_layer"], "lag_ms": 1000 * lag, "channel": "",
                             "r_validation": np.nan, "r_test": np.nan, "trf_power": value})
        save_figure(fig, png, svg, dpi=dpi)
    write_tsv(tsv, pd.DataFrame(rows))
