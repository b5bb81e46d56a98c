"""``monst3r-rt batch`` throughput: videos/s and frames/s of the in-process loop and of Ray with
1 and 2 workers, on generated clips with the tiny random-weight checkpoint of the tests (CPU).

    python benchmarks/batch_bench.py [--videos 8] [--frames 6] [--niter 20]

Each configuration runs the same clips into a fresh output root. ``seconds`` is the batch's wall
time (``BatchReport.seconds``: actor start-up and weight loading included; ``ray.init`` itself
excluded); ``load s`` is each worker's one-time weight loading (torch import and checkpoint), and
``loads`` the number of loads per worker (1: the weights are loaded once per worker, not per
video); ``s/video`` is the mean per-video time inside the workers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from _machine import describe
from _table import print_table

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--niter", type=int, default=20)
    args = ap.parse_args()

    import ray
    import torch
    from tiny_models import TINY_LINEAR

    from monst3r_rt.align import AlignConfig
    from monst3r_rt.batch import run_many
    from monst3r_rt.network import PointmapNet, save_checkpoint
    from monst3r_rt.synthetic import make_scene, scene_video

    tmp = tempfile.mkdtemp(prefix="batch_bench-")
    torch.manual_seed(0)
    ckpt = save_checkpoint(PointmapNet(**TINY_LINEAR), os.path.join(tmp, "tiny.pth"))
    clips = []
    for i in range(args.videos):
        sc = make_scene(n_frames=args.frames, size=(120, 160), n_objects=1, seed=i)
        clips.append(scene_video(sc, os.path.join(tmp, f"clip{i}.avi")))
    opts = dict(weights=str(ckpt), device="cpu", size=224, batch_size=8,
                align=AlignConfig(niter=args.niter))  # fmt: skip

    rows = []

    def row(label: str, rep) -> None:
        loads = [w.get("loads", 0) for w in rep.workers.values()]
        load_s = [w.get("load_seconds", 0.0) for w in rep.workers.values()]
        per_video = sum(r.seconds for r in rep.done) / max(len(rep.done), 1)
        rows.append([label, str(len(rep.done)), str(rep.frames), f"{rep.seconds:.2f}",
                     f"{len(rep.done) / rep.seconds:.3f}", f"{rep.frames / rep.seconds:.2f}",
                     " / ".join(f"{s:.2f}" for s in load_s), " / ".join(map(str, loads)),
                     f"{per_video:.2f}"])  # fmt: skip
        assert not rep.failed, rep.failed

    row("in-process", run_many(clips, os.path.join(tmp, "local"), **opts))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for n in (1, 2):
            rep = run_many(clips, os.path.join(tmp, f"ray{n}"), ray_address="auto", workers=n,
                           **opts)  # fmt: skip
            row(f"Ray, {n} worker{'s' * (n > 1)}", rep)
    finally:
        ray.shutdown()
    print_table(
        f"batch: {args.videos} clips x {args.frames} frames (160x120 -> 224), tiny checkpoint, "
        f"CPU, niter={args.niter}; {describe()}",
        ["run", "videos", "frames", "seconds", "videos/s", "frames/s", "load s", "loads",
         "s/video"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
