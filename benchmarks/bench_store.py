"""Cost of verifying feature store entries on read (not a test).

Writes one entry of a 7B-sized model (default: 33 hidden states x 4096 wide x 2000 words,
float32, 1.08 GB) to a temporary directory, then times, best of ``--repeats``:
- the plain read: h5py reads every layer, no checks;
- the hashing alone, one layer after another: xxh3-128 of every layer's bytes;
- ``brainllm.store.read_entry``: structure, words hash, every layer's hash (a layer whose
  hash matches is finite: entries with non-finite states are never written), each layer
  hashed on a second thread while the next one is read.

Target: ``read_entry`` < 5 % slower than the plain read. The plain read here comes from the page cache
(the file was just written), the fastest case; from a network file system the share is
smaller. The last line prints the ratios.

    python benchmarks/bench_store.py [--layers 33 --hidden 4096 --words 2000 --repeats 5 --dir /tmp]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from brainllm import store
from brainllm.io import open_h5


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=33)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--words", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    layer = rng.standard_normal((args.words, args.hidden), dtype=np.float32)
    layers = [layer + index for index in range(args.layers)]
    words = [f"w{i}" for i in range(args.words)]
    onset = np.arange(args.words) * 0.3
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        path = Path(directory) / "entry.h5"
        store.write_entry(path, layers, words, onset, onset + 0.25, {})
        del layers
        size_gb = path.stat().st_size / 1e9

        def plain():
            with open_h5(path) as handle:
                return [handle[store.layer_name(i)][()] for i in range(args.layers)]

        arrays = plain()
        plain_s = best_of(args.repeats, plain)
        hash_s = best_of(args.repeats, lambda: [store.layer_hash(array) for array in arrays])
        del arrays
        verified_s = best_of(args.repeats, lambda: store.read_entry(path))
    print(f"entry: {args.layers} layers x {args.hidden} x {args.words} words float32, {size_gb:.2f} GB")
    print(f"plain read {plain_s:.3f} s ({size_gb / plain_s:.2f} GB/s), hashing {hash_s:.3f} s, read_entry {verified_s:.3f} s")
    print(f"RESULT serial hashing/plain read {hash_s / plain_s:.3f}  read_entry/plain read {verified_s / plain_s:.3f} (verification adds {100 * (verified_s / plain_s - 1):.1f} %)")


if __name__ == "__main__":
    main()
