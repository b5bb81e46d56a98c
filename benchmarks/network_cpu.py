"""The full-size MonST3R network on CPU: per-pair forward vs encode-once inference, side by side.

    python benchmarks/network_cpu.py [--frames 20] [--size 512x288] [--pairs 3]

Random weights in the released ViT-L/512 DPT configuration, written in the official ``.pth`` layout
and loaded back through :func:`monst3r_rt.load_model` (so that path is exercised at full size).
Each mode runs in its own process so that its peak memory (max RSS) is its own:

(a) per-pair forward ``net(img_i, img_j)``, batch 1, as the official pipeline does per pair;
(b) encode-once :func:`monst3r_rt.infer_pairs` over the ``swinstride-5-noncyclic`` graph of
    ``--frames`` frames (10N − 50 ordered pairs).

Reference: the official implementation measured on this project's 2-core CPU machine takes about
8.6 s per 512×288 pair (fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from _machine import describe

OFFICIAL_S_PER_PAIR = 8.6


def _child(mode: str, ckpt: str, w: int, h: int, frames: int, pairs: int) -> dict:
    import torch

    import monst3r_rt

    torch.set_num_threads(os.cpu_count() or 1)
    net = monst3r_rt.load_model(ckpt).eval()
    g = torch.Generator().manual_seed(0)
    if mode == "per-pair":
        imgs = torch.rand(pairs + 1, 3, h, w, generator=g) * 2 - 1
        with torch.inference_mode():
            net(imgs[:1], imgs[1:2])  # warm-up
            t0 = time.perf_counter()
            for k in range(pairs):
                out = net(imgs[k : k + 1], imgs[k + 1 : k + 2])
            dt = time.perf_counter() - t0
        assert out[0].shape == (1, h, w, 3)
        n_pairs = pairs
    else:
        imgs = torch.rand(frames, 3, h, w, generator=g) * 2 - 1
        graph = monst3r_rt.make_pairs(frames, "swinstride-5-noncyclic")
        t0 = time.perf_counter()
        preds = monst3r_rt.infer_pairs(net, imgs, graph, batch_size=16, progress=False)
        dt = time.perf_counter() - t0
        assert preds.pts_i.shape == (len(graph), h, w, 3)
        n_pairs = len(graph)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "pairs": n_pairs, "seconds": dt, "peak_mb": peak_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20, help="frames in the encode-once graph")
    ap.add_argument("--pairs", type=int, default=3, help="pairs timed in per-pair mode")
    ap.add_argument("--size", default="512x288", help="WxH, multiples of 16")
    ap.add_argument("--modes", default="per-pair,encode-once", help="comma-separated subset")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    if args.child:
        print(json.dumps(_child(args.child, args.ckpt, w, h, args.frames, args.pairs)))
        return

    import torch

    from monst3r_rt.network import MONST3R_KWARGS, PointmapNet, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "monst3r_random.pth")
        torch.manual_seed(0)
        save_checkpoint(PointmapNet(**MONST3R_KWARGS), ckpt, format="pth")
        results = []
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--child", mode, "--ckpt", ckpt, "--size", args.size]
            cmd += ["--frames", str(args.frames), "--pairs", str(args.pairs)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))

    per_pair = [r for r in results if r["mode"] == "per-pair"]
    base = per_pair[0]["pairs"] / per_pair[0]["seconds"] if per_pair else None
    print(
        f"MonST3R ViT-L/512 DPT, fp32, {w}x{h}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; machine: {describe()}"
    )
    print(f"{'mode':<34}{'pairs':>6}{'s/pair':>9}{'pairs/s':>9}{'vs (a)':>8}{'peak MB':>9}")
    names = {
        "per-pair": "(a) per-pair forward, batch 1",
        "encode-once": f"(b) encode-once, swinstride-5 N={args.frames}",
    }
    for r in results:
        rate = r["pairs"] / r["seconds"]
        print(
            f"{names[r['mode']]:<34}{r['pairs']:>6}{r['seconds'] / r['pairs']:>9.2f}"
            f"{rate:>9.3f}{rate / base if base else float('nan'):>7.2f}x{r['peak_mb']:>9.0f}"
        )
    if base:
        print(
            f"official implementation, measured earlier on this machine type: "
            f"{OFFICIAL_S_PER_PAIR} s/pair; (a) is {OFFICIAL_S_PER_PAIR * base:.2f}x that speed"
        )


if __name__ == "__main__":
    main()
