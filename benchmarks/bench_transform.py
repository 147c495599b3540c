"""Throughput of :func:`csplugin.engines.transform.align_images` (images/s), not a test.

Run: ``python benchmarks/bench_transform.py [--count 2000]``.
Set ``NUMBA_NUM_THREADS`` to change the thread count.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from csplugin.engines.transform import INTERPOLATIONS, align_images


def throughput(box: int, count: int, interpolation: str, repeats: int = 3) -> float:
    """Best-of-``repeats`` images/s for ``count`` random images of ``box``²."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((count, box, box), dtype=np.float32)
    angles = rng.uniform(-np.pi, np.pi, count)
    shifts = rng.uniform(-5.0, 5.0, (count, 2))
    out = np.empty_like(images)
    align_images(images[:2], angles[:2], shifts[:2], interpolation)  # warm-up (JIT / cache load)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        align_images(images, angles, shifts, interpolation, out=out)
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000, help="images per timed call")
    parser.add_argument("--boxes", type=int, nargs="+", default=[128, 256])
    args = parser.parse_args()
    print(f"numba threads: {numba.get_num_threads()} of {numba.config.NUMBA_NUM_THREADS} available")
    for box in args.boxes:
        for interpolation in INTERPOLATIONS:
            rate = throughput(box, args.count, interpolation)
            print(f"box {box:4d}  {interpolation:6s}  {rate:10,.0f} img/s")


if __name__ == "__main__":
    main()
