"""Calibration and cost of the voxel tests on null AR(1) prediction/response pairs.

For each (φ_prediction, φ_response) the prediction and the response of every voxel are
independent AR(1) series, so every call is a false positive. Prints, per method
(analytic two-sided t-test as before, one-sided t-test, block permutation), the fraction
of voxels with p < 0.05 and the number that BH-FDR at q = 0.05 calls significant (with
r > 0 required for the one-sided methods), then the seconds the block permutation takes.

    python benchmarks/bench_voxel_tests.py                  # 20 000 voxels, 291 TRs, 1 000 permutations
    python benchmarks/bench_voxel_tests.py --n-voxels 500   # quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import signal
from threadpoolctl import threadpool_limits

from brainllm import metrics


def ar1(rng, n_trs, n_columns, phi, burn_in=200):
    white = rng.standard_normal((n_trs + burn_in, n_columns)) * np.sqrt(1.0 - phi**2)
    return signal.lfilter([1.0], [1.0, -phi], white, axis=0)[burn_in:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-voxels", type=int, default=20000)
    parser.add_argument("--n-trs", type=int, default=291)
    parser.add_argument("--n-permutations", type=int, default=1000)
    parser.add_argument("--block-trs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"null AR(1) pairs: {args.n_voxels} voxels x {args.n_trs} TRs; block {args.block_trs} TRs, {args.n_permutations} permutations")
    seconds = []
    with threadpool_limits(args.threads):
        for phi_pred, phi_resp in ((0.8, 0.3), (0.8, 0.5), (0.9, 0.7)):
            pred, resp = ar1(rng, args.n_trs, args.n_voxels, phi_pred), ar1(rng, args.n_trs, args.n_voxels, phi_resp)
            r = metrics.pearson_r(pred, resp)
            rows = {}
            p_two = metrics.pearson_p(r, args.n_trs, "two-sided")
            rows["t two-sided (old)"] = (p_two, metrics.fdr_bh(p_two)[1])
            p_one = metrics.pearson_p(r, args.n_trs, "greater")
            rows["t one-sided"] = (p_one, metrics.fdr_bh(p_one)[1] & (r > 0))
            started = time.perf_counter()
            _, p_perm = metrics.permutation_p(pred, resp, args.n_permutations, args.block_trs, args.seed)
            seconds.append(time.perf_counter() - started)
            rows["block permutation"] = (p_perm, metrics.fdr_bh(p_perm)[1] & (r > 0))
            for name, (p, significant) in rows.items():
                print(f"phi {phi_pred}/{phi_resp}  {name:<18} FPR(p<0.05) {np.mean(p < 0.05):.4f}  FDR-significant {int(significant.sum())}")
    print(f"RESULT block permutation {args.n_voxels} voxels x {args.n_permutations} permutations on {args.threads} threads: "
          f"{np.mean(seconds):.2f} s (mean of {len(seconds)})")


if __name__ == "__main__":
    main()
