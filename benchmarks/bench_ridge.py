"""Ridge engines on planted data at a realistic size: himalaya (default) vs bootstrap ridge vs scikit-learn.

    python benchmarks/bench_ridge.py                    # 3000 train TRs, 4 delays × 384 features, 20000 voxels
    python benchmarks/bench_ridge.py --n-voxels 2000    # quick run

Prints each method's fit time and held-out mean r, the time ratios, and on the last line
the mean |Δr| between methods (per-voxel test correlations).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from brainllm import metrics
from brainllm.align import make_delayed, zscore_columns
from brainllm.bootstrap_ridge import bootstrap_alphas, bootstrap_ridge
from brainllm.encoding import alpha_grid, fit_ridge, resolve_backend


def smooth_features(rng, n_trs, hidden):
    """Autocorrelated stand-ins for aligned LLM features, z-scored: (n_trs, hidden)."""
    white = rng.standard_normal((n_trs + 8, hidden))
    kernel = np.hanning(9)
    smooth = np.stack([np.convolve(white[:, j], kernel, mode="valid") for j in range(hidden)], axis=1)
    return zscore_columns(smooth[:n_trs] + 0.5 * rng.standard_normal((n_trs, hidden)))


def planted_dataset(n_train_trs, n_stories, n_test_trs, hidden, delays, n_voxels, seed):
    """Delayed features and responses = low-rank map + noise with per-voxel SNR (≈ 30% pure noise)."""
    rng = np.random.default_rng(seed)
    story_lengths = [n_train_trs // n_stories] * n_stories
    story_lengths[-1] += n_train_trs - sum(story_lengths)
    stories = [make_delayed(smooth_features(rng, n, hidden), delays) for n in story_lengths + [n_test_trs]]
    n_features = hidden * len(delays)
    weights = (rng.standard_normal((n_features, 16)) @ rng.standard_normal((16, n_voxels))) / np.sqrt(16 * n_features)
    snr = np.where(rng.uniform(size=n_voxels) < 0.3, 0.0, rng.uniform(0.05, 1.0, n_voxels))
    ys = []
    for X in stories:
        signal = X @ weights
        signal /= signal.std(0)
        ys.append(np.sqrt(snr) * signal + rng.standard_normal(signal.shape))
    X_train, Y_train = np.vstack(stories[:-1]), np.vstack([zscore_columns(y) for y in ys[:-1]])
    return X_train.astype(np.float32), Y_train.astype(np.float32), stories[-1].astype(np.float32), ys[-1].astype(np.float32), story_lengths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train-trs", type=int, default=3000)
    parser.add_argument("--n-stories", type=int, default=10)
    parser.add_argument("--n-test-trs", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--n-delays", type=int, default=4)
    parser.add_argument("--n-voxels", type=int, default=20000)
    parser.add_argument("--nboots", type=int, default=50)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    delays = list(range(1, args.n_delays + 1))
    X_train, Y_train, X_test, Y_test, lengths = planted_dataset(
        args.n_train_trs, args.n_stories, args.n_test_trs, args.hidden, delays, args.n_voxels, args.seed
    )
    print(f"train {X_train.shape} → {Y_train.shape}, test {X_test.shape[0]} TRs, {len(lengths)} training stories")
    results = {}

    start = time.perf_counter()
    fit = fit_ridge(X_train, Y_train, lengths, alpha_grid(-1, 5, 13), backend=args.backend,
                    solver_params={"n_targets_batch": 4096, "n_alphas_batch": 13, "n_targets_batch_refit": 4096})
    results["himalaya"] = (time.perf_counter() - start, metrics.pearson_r(X_test @ fit.weights, Y_test))
    print(f"himalaya {fit.solver} ({resolve_backend(args.backend)}, leave-one-story-out, 13 alphas): "
          f"{results['himalaya'][0]:.1f} s, mean r {results['himalaya'][1].mean():.4f}")

    start = time.perf_counter()
    boot = bootstrap_ridge(X_train, Y_train, bootstrap_alphas(), nboots=args.nboots, chunk_trs=40, nchunks=5, seed=args.seed)
    results["bootstrap"] = (time.perf_counter() - start, metrics.pearson_r(X_test @ boot.weights, Y_test))
    print(f"bootstrap_ridge ({args.nboots} boots, 10 alphas): {results['bootstrap'][0]:.1f} s, mean r {results['bootstrap'][1].mean():.4f}")

    if not args.skip_sklearn:
        from sklearn.linear_model import RidgeCV

        start = time.perf_counter()
        model = RidgeCV(alphas=alpha_grid(-1, 5, 13), alpha_per_target=True, fit_intercept=False).fit(X_train, Y_train)
        results["sklearn"] = (time.perf_counter() - start, metrics.pearson_r(model.predict(X_test), Y_test))
        print(f"sklearn RidgeCV (efficient leave-one-out, 13 alphas): {results['sklearn'][0]:.1f} s, "
              f"mean r {results['sklearn'][1].mean():.4f}")

    base = results["himalaya"][0]
    ratios = ", ".join(f"{name}/himalaya = {seconds / base:.2f}" for name, (seconds, _) in results.items() if name != "himalaya")
    print(f"time ratios: {ratios}")
    names = list(results)
    deltas = ", ".join(
        f"{a} vs {b} {np.mean(np.abs(results[a][1] - results[b][1])):.4f}" for i, a in enumerate(names) for b in names[i + 1 :]
    )
    print(f"mean |Δr|: {deltas}")


if __name__ == "__main__":
    main()
