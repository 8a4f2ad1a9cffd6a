"""Memory and time of the continuous EEG TRF (brainllm.eeg.fit_trf): sparse lagged design vs dense.

Synthetic recordings (``--channels`` channels at ``--sfreq`` Hz, ``--minutes`` in all, split
into ``--stories`` stories, 2.2 words/s) with random word features. The workflow's path
builds the lagged design as a sparse matrix (words × lags × components non-zeros) and
forms the ridge normal equations from sparse products; the baseline builds the same
design as a dense (samples, components × lags) array and solves identically. Both are
timed, and their peak traced memory (numpy and scipy allocations, tracemalloc) printed,
at ``--baseline-minutes``; the sparse path alone again at ``--minutes``.

``--full-rank`` times the full-rank TRF instead (every one of ``--hidden`` features, z-scored;
features correlated from word to word, ρ = 0.6, as a language model's are): the iterative
solver (``brainllm.lagged_ridge``: block-Toeplitz products, conjugate gradients) against the
direct solver on the same features with ``--full-rank-baseline-lags`` lags (the largest the
direct solver handles in minutes), then the iterative solver alone with the default 81 lags
at ``--minutes``.

    python benchmarks/bench_eeg_trf.py [--minutes 60] [--channels 64] [--components 16 64]
    python benchmarks/bench_eeg_trf.py --full-rank [--minutes 60]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import scipy.sparse

from brainllm import eeg


def recordings(minutes: float, n_stories: int, channels: int, sfreq: float, hidden: int, seed: int = 0, rho: float = 0.0):
    """Random word features (AR(1) from word to word with ``rho``) and random EEG."""
    rng = np.random.default_rng(seed)
    per_story = minutes * 60.0 / n_stories
    n = int(per_story * sfreq)
    features, data, onsets = {}, {}, {}
    for story in range(n_stories):
        times = np.sort(rng.uniform(0.5, per_story - 1.0, int(per_story * 2.2)))
        values = rng.standard_normal((times.size, hidden))
        for word in range(1, times.size):
            values[word] = rho * values[word - 1] + np.sqrt(1 - rho**2) * values[word]
        features[f"s{story}"], data[f"s{story}"], onsets[f"s{story}"] = values, rng.standard_normal((n, channels)), times
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
    parser.add_argument("--full-rank", action="store_true", help="time the full-rank TRF (every feature) instead")
    parser.add_argument("--full-rank-baseline-lags", type=int, default=11)
    args = parser.parse_args(argv)

    base = eeg.EegSettings.from_config({"n_permutations": 100, "alphas": {"log10_min": -2, "log10_max": 6, "num": args.alphas}},
                                       {"subjects": ["x"], "root": "x"})
    stories = [f"s{i}" for i in range(args.stories)]
    lags = eeg.lag_samples(base.trf_tmin, base.trf_tmax, args.sfreq)
    print(f"{args.channels} channels at {args.sfreq:g} Hz, {lags.size} lags ({base.trf_tmin:g} … {base.trf_tmax:g} s), "
          f"{args.stories} stories (last one held out), {args.alphas} α values")
    if args.full_rank:
        return full_rank(args, base, stories)
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


def full_rank(args, base, stories) -> None:
    fit = lambda settings, features, data, onsets: eeg.fit_trf(features, data, onsets, args.sfreq, stories[:-1], stories[-1:], settings)  # noqa: E731
    short = eeg.EegSettings(**{**base.__dict__, "trf_components": None, "trf_tmax": base.trf_tmin + (args.full_rank_baseline_lags - 1) / args.sfreq})
    recorded = recordings(args.baseline_minutes, args.stories, args.channels, args.sfreq, args.hidden, rho=0.6)
    columns = args.hidden * args.full_rank_baseline_lags
    iterative, iterative_s, iterative_mb = measure(lambda: fit(eeg.EegSettings(**{**short.__dict__, "trf_solver": "iterative"}), *recorded))
    direct, direct_s, direct_mb = measure(lambda: fit(eeg.EegSettings(**{**short.__dict__, "trf_solver": "direct"}), *recorded))
    print(f"{args.baseline_minutes:g} min, {args.hidden} features × {args.full_rank_baseline_lags} lags ({columns} columns): "
          f"iterative {iterative_s:.1f} s / {iterative_mb:.0f} MB peak, direct {direct_s:.1f} s / {direct_mb:.0f} MB peak — "
          f"iterative/direct time {iterative_s / direct_s:.2f}, memory {iterative_mb / direct_mb:.2f}; "
          f"same α for {np.mean(iterative['alpha'] == direct['alpha']):.0%} of channels, max |Δr| {np.abs(iterative['r_test'] - direct['r_test']).max():.1e}")
    full = eeg.EegSettings(**{**base.__dict__, "trf_components": None})
    lags = eeg.lag_samples(full.trf_tmin, full.trf_tmax, args.sfreq).size
    recorded = recordings(args.minutes, args.stories, args.channels, args.sfreq, args.hidden, rho=0.6)
    _, full_s, full_mb = measure(lambda: fit(full, *recorded))
    gram_gb = (args.hidden * lags) ** 2 * 8 / 2**30
    print(f"RESULT {args.minutes:g} min, {args.hidden} features × {lags} lags ({args.hidden * lags} columns), iterative: {full_s:.0f} s, "
          f"{full_mb / 1024:.1f} GB peak ({sum(d.nbytes for d in recorded[1].values()) / 2**20:.0f} MB of EEG); the direct solver's Gram "
          f"matrix alone would take {gram_gb:.1f} GB per fold, its eigendecomposition {(args.hidden * lags / columns) ** 3:.0f}× the "
          f"baseline's per fold")


if __name__ == "__main__":
    main()
