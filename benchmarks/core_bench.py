"""Compiled core vs NumPy: depth_to_points at video sizes, side by side in one run.

    python benchmarks/core_bench.py [--frames 65] [--size 512x288] [--repeat 20]

Prints a table of median milliseconds and ratios, with the machine named.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _machine import describe

from monst3r_rt import _core
from monst3r_rt.geometry import depth_to_points


def numpy_depth_to_points(depth: np.ndarray, focal: np.ndarray) -> np.ndarray:
    n, h, w = depth.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x = (xs[None] - w / 2) / focal[:, None, None] * depth
    y = (ys[None] - h / 2) / focal[:, None, None] * depth
    return np.stack([x, y, depth], -1)


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=65)
    ap.add_argument("--size", default="512x288", help="WxH")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 10, (args.frames, h, w)).astype(np.float32)
    focal = rng.uniform(300, 600, args.frames).astype(np.float32)
    assert np.allclose(
        depth_to_points(depth, focal), numpy_depth_to_points(depth, focal), atol=1e-5
    )

    threads = _core.num_threads()
    rows = [
        ("numpy (vectorised)", median_ms(lambda: numpy_depth_to_points(depth, focal), args.repeat))
    ]
    _core.set_num_threads(1)
    rows.append(
        ("_core CPU, 1 thread", median_ms(lambda: depth_to_points(depth, focal), args.repeat))
    )
    _core.set_num_threads(threads)
    rows.append(
        (
            f"_core CPU, {threads} threads",
            median_ms(lambda: depth_to_points(depth, focal), args.repeat),
        )
    )
    base = rows[0][1]
    print(f"depth_to_points, {args.frames} frames at {w}x{h}; machine: {describe()}")
    print(f"{'implementation':<24}{'median ms':>10}{'speed-up':>10}")
    for name, ms in rows:
        print(f"{name:<24}{ms:>10.2f}{base / ms:>9.2f}x")


if __name__ == "__main__":
    main()
