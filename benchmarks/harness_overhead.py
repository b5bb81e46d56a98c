"""The bench harness's own overhead: ``monst3r_rt.bench.harness.measure`` around a stage that
times itself, side by side in one run (target: ≤ 1 % of a measured stage).

    python benchmarks/harness_overhead.py [--ms 20] [--repeat 50]

The stage busy-waits ``--ms`` milliseconds and records its own duration; the overhead is the
harness's sample minus the stage's own, per call (median).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _machine import describe
from _table import print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ms", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    from monst3r_rt.bench.harness import measure

    inner: list[float] = []

    def stage(k: int) -> None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < args.ms / 1e3:
            pass
        inner.append(time.perf_counter() - t0)

    m = measure(stage, warmup=1, repeat=args.repeat)
    outer, own = np.asarray(m.samples_s), np.asarray(inner[1:])
    over = np.median(outer - own)
    rows = [
        ["stage's own time, p50 (ms)", f"{np.median(own) * 1e3:.4f}"],
        ["harness sample, p50 (ms)", f"{np.median(outer) * 1e3:.4f}"],
        ["overhead per call (µs)", f"{over * 1e6:.2f}"],
        ["overhead (% of the stage)", f"{over / np.median(own) * 100:.4f}"],
    ]
    print_table(f"bench harness overhead — {describe()}", ["quantity", "value"], rows)


if __name__ == "__main__":
    main()
