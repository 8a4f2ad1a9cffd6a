"""Memory and time of the continuous EEG TRF (brainllm.eeg.fit_trf): sparse lagged design vs dense.

Synthetic recordings (``--channels`` channels at ``--sfreq`` Hz, ``--minutes`` in all, split
into ``--stories`` stories, 2.2 words/s) with random word features. The workflow's path
builds the lagged design as a sparse matrix (words × lags × components non-zeros) and
forms the ridge normal equations from sparse products; the baseline builds the same
design as a dense (samples, components × lags) array and solves identically. Both are
timed, and their peak traced memory (numpy and scipy allocations, tracemalloc) printed,
at ``--baseline-minutes``; the sparse path alone again at ``--minutes``.

    python benchmarks/bench_eeg_trf.py [--minutes 60] [--channels 64] [--components 16 64]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import scipy.sparse

from brainllm import eeg


def recordings(minutes: float, n_stories: int, channels: int, sfreq: float, hidden: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    per_story = minutes * 60.0 / n_stories
    n = int(per_story * sfreq)
    features, data, onsets = {}, {}, {}
    for story in range(n_stories):
        times = np.sort(rng.uniform(0.5, per_story - 1.0, int(per_story * 2.2)))
        features[f"s{story}"], data[f"s{story}"], onsets[f"s{story}"] = rng.standard_normal((times.size, hidden)), rng.standard_normal((n, channels)), times
    return features, data, onsets


def dense_design(onset_samples, values, n_samples, lags):
    """The baseline: the lagged design as a dense array (the textbook construction)."""
    out = np.zeros((n_samples, values.shape[1] * lags.size))
    for j, lag in enumerate(lags):
        rows = onset_samples + lag
        inside = (rows >= 0) & (rows < n_samples)
        np.add.at(out, (rows[inside][:, None], np.arange(values.shape[1])[None, :] * lags.size + j), values[inside])
    return out


def measure(function):
    tracemalloc.start()
    start = time.perf_counter()
    result = function()
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, elapsed, peak / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--baseline-minutes", type=float, default=10.0)
    parser.add_argument("--stories", type=int, default=6)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--sfreq", type=float, default=100.0)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--components", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--alphas", type=int, default=9)
    args = parser.parse_args(argv)

    base = eeg.EegSettings.from_config({"n_permutations": 100, "alphas": {"log10_min": -2, "log10_max": 6, "num": args.alphas}},
                                       {"subjects": ["x"], "root": "x"})
    stories = [f"s{i}" for i in range(args.stories)]
    lags = eeg.lag_samples(base.trf_tmin, base.trf_tmax, args.sfreq)
    print(f"{args.channels} channels at {args.sfreq:g} Hz, {lags.size} lags ({base.trf_tmin:g} … {base.trf_tmax:g} s), "
          f"{args.stories} stories (last one held out), {args.alphas} α values")
    for n_components in args.components:
        settings = eeg.EegSettings(**{**base.__dict__, "trf_components": n_components})
        columns = n_components * lags.size
        features, data, onsets = recordings(args.baseline_minutes, args.stories, args.channels, args.sfreq, args.hidden)
        fit, sparse_s, sparse_mb = measure(lambda: eeg.fit_trf(features, data, onsets, args.sfreq, stories[:-1], stories[-1:], settings))

        def dense_fit():
            original = eeg.lagged_impulse_design
            eeg.lagged_impulse_design = lambda o, v, n, l: dense_design(o, v, n, l)
            try:
                return eeg.fit_trf(features, data, onsets, args.sfreq, stories[:-1], stories[-1:], settings)
            finally:
                eeg.lagged_impulse_design = original

        dense, dense_s, dense_mb = measure(dense_fit)
        same = np.abs(dense["r_test"] - fit["r_test"]).max()
        print(f"{args.baseline_minutes:g} min, {columns} columns: sparse {sparse_s:.1f} s / {sparse_mb:.0f} MB peak, "
              f"dense {dense_s:.1f} s / {dense_mb:.0f} MB peak — sparse/dense time {sparse_s / dense_s:.2f}, memory "
              f"{sparse_mb / dense_mb:.2f}; max |Δr| {same:.1e}")
        features, data, onsets = recordings(args.minutes, args.stories, args.channels, args.sfreq, args.hidden)
        _, full_s, full_mb = measure(lambda: eeg.fit_trf(features, data, onsets, args.sfreq, stories[:-1], stories[-1:], settings))
        data_mb = sum(d.nbytes for d in data.values()) / 2**20
        dense_gb = sum(d.shape[0] for d in data.values()) * columns * 8 / 2**30
        print(f"RESULT {args.minutes:g} min, {columns} columns: sparse {full_s:.1f} s, {full_mb:.0f} MB peak "
              f"({data_mb:.0f} MB of EEG); a dense design alone would take {dense_gb:.1f} GB")


if __name__ == "__main__":
    main()
