"""Ridge engines on planted data at a realistic size: the default path vs himalaya RidgeCV vs bootstrap ridge vs scikit-learn.

    python benchmarks/bench_ridge.py                    # 3000 train TRs, 4 delays × 384 features, 20000 voxels
    python benchmarks/bench_ridge.py --n-voxels 2000    # quick run

The default path is ``encoding.method: ridge`` with ``solver: auto`` (primal here: the
fold-wise eigendecomposition solver of brainllm.ridge_cv on the himalaya backend);
``himalaya`` is the same estimate through himalaya's ``RidgeCV`` (``solver: himalaya``).
Prints each method's fit time (wall clock and process CPU time) and held-out mean r, the
time ratios against the default path, and on the last line the mean |Δr| between methods
(per-voxel test correlations). ``--threads`` caps the BLAS/OpenMP threads.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import time

import numpy as np

from threadpoolctl import threadpool_limits

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


@contextlib.contextmanager
def timed(results, name):
    """Record (wall seconds, CPU seconds) of the block under ``results[name]``."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    results[name] = (time.perf_counter() - wall, time.process_time() - cpu)


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
    parser.add_argument("--cv-score", default="correlation", choices=["l2", "correlation"], help="validation score choosing α (default path and himalaya)")
    parser.add_argument("--skip-himalaya", action="store_true")
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    with threadpool_limits(args.threads):
        run(args)


def run(args):
    delays = list(range(1, args.n_delays + 1))
    X_train, Y_train, X_test, Y_test, lengths = planted_dataset(
        args.n_train_trs, args.n_stories, args.n_test_trs, args.hidden, delays, args.n_voxels, args.seed
    )
    print(f"train {X_train.shape} → {Y_train.shape}, test {X_test.shape[0]} TRs, {len(lengths)} training stories")
    times, scores = {}, {}
    # imports (himalaya, torch for the GPU check) happen outside the timed blocks
    for module in ("himalaya.ridge", "himalaya.kernel_ridge"):
        importlib.import_module(module)

    backend = resolve_backend(args.backend)

    grid = alpha_grid(-1, 5, 13)
    solver_params = {"n_targets_batch": 4096, "n_alphas_batch": 13, "n_targets_batch_refit": 4096}
    with timed(times, "default"):
        fit = fit_ridge(X_train, Y_train, lengths, grid, backend=backend, solver_params=solver_params, cv_score=args.cv_score)
    scores["default"] = metrics.pearson_r(X_test @ fit.weights, Y_test)
    report(f"default path: {fit.solver} ({backend}, leave-one-story-out, 13 alphas, {args.cv_score})", times["default"], scores["default"])

    if not args.skip_himalaya:
        with timed(times, "himalaya"):
            fit = fit_ridge(X_train, Y_train, lengths, grid, backend=backend, solver_params=solver_params, solver="himalaya", cv_score=args.cv_score)
        scores["himalaya"] = metrics.pearson_r(X_test @ fit.weights, Y_test)
        report(f"himalaya {fit.solver} ({backend}, same folds, alphas and score)", times["himalaya"], scores["himalaya"])

    with timed(times, "bootstrap"):
        boot = bootstrap_ridge(X_train, Y_train, bootstrap_alphas(), nboots=args.nboots, chunk_trs=40, nchunks=5, seed=args.seed)
    scores["bootstrap"] = metrics.pearson_r(X_test @ boot.weights, Y_test)
    report(f"bootstrap_ridge ({args.nboots} boots, 10 alphas, float64)", times["bootstrap"], scores["bootstrap"])

    if not args.skip_sklearn:
        from sklearn.linear_model import RidgeCV

        with timed(times, "sklearn"):
            model = RidgeCV(alphas=grid, alpha_per_target=True, fit_intercept=False).fit(X_train, Y_train)
        scores["sklearn"] = metrics.pearson_r(model.predict(X_test), Y_test)
        report("sklearn RidgeCV (efficient leave-one-out, 13 alphas)", times["sklearn"], scores["sklearn"])

    base_wall, base_cpu = times["default"]
    ratios = ", ".join(
        f"{name}/default = {wall / base_wall:.2f} (CPU {cpu / base_cpu:.2f})" for name, (wall, cpu) in times.items() if name != "default"
    )
    print(f"time ratios: {ratios}")
    names = list(scores)
    deltas = ", ".join(f"{a} vs {b} {np.mean(np.abs(scores[a] - scores[b])):.4f}" for i, a in enumerate(names) for b in names[i + 1 :])
    print(f"mean |Δr|: {deltas}")


def report(label, seconds, r):
    wall, cpu = seconds
    print(f"{label}: {wall:.1f} s (CPU {cpu:.1f} s), mean r {r.mean():.4f}")

if __name__ == "__main__":
    main()
