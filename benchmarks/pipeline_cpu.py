"""The main job on CPU, stage by stage: ``monst3r-rt run`` on frames of ``lady-running`` at
512×288 with the full-size architecture (random weights in the official ``.pth`` layout; the
released weights cannot be downloaded here, and the cost does not depend on the weights' values).

    python benchmarks/pipeline_cpu.py [--data ../shared/data] [--frames 16] [--niter 300]

Prints the CLI's own summary table (seconds per stage) with the machine named. Each stage runs
with the defaults: swinstride-5-noncyclic pairs, encode-once inference in fp32, DIS flow,
official masks, 300 Adam iterations with the flow term.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from _machine import describe


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data"))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--niter", type=int, default=300)
    args = parser.parse_args()

    import torch

    from monst3r_rt import cli
    from monst3r_rt.network import MONST3R_KWARGS, PointmapNet, save_checkpoint

    print(f"machine: {describe()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "monst3r_random.pth")
        torch.manual_seed(0)
        save_checkpoint(PointmapNet(**MONST3R_KWARGS), ckpt, format="pth")
        out = os.path.join(tmp, "out")
        t = time.perf_counter()
        code = cli.main([
            "run", os.path.join(args.data, "lady-running"), "-o", out, "--weights", ckpt,
            "--num-frames", str(args.frames), "--niter", str(args.niter), "--device", "cpu",
        ])  # fmt: skip
        print(f"wall time of the command: {time.perf_counter() - t:.1f} s")
        sys.exit(code)


if __name__ == "__main__":
    main()
