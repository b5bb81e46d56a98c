"""The streaming mode: latency per stage, decoder passes, memory, trajectory and masks, side by side
with the offline alignment on predictions of the same simulated network; then the full-size
network (random weights) on CPU, streaming vs the offline pipeline on the same clip.

    python benchmarks/stream_bench.py [--frames 300] [--size 512x288]
                                      [--offline-frames 100] [--offline-size 256x144]
                                      [--network-frames 6] [--data ../shared/data] [--skip-network]

Simulated network (:class:`monst3r_rt.synthetic.SimulatedBackend`): a rendered dynamic scene (a
forward-moving camera with small rotations in a textured room, 2 spheres moving 5 cm per frame);
for any pair (i, j) the backend returns the official outputs computed from ground truth with this
noise model, drawn independently per pair: a per-pair scale log-uniform in [0.5, 2]; a smooth
multiplicative depth error exp(0.03·z) per view (z a smooth unit-variance field, 5 cells across);
a relative-pose error per pair (rotation vector and translation each N(0, 0.01²) per axis, radians
and metres); confidences smooth in [1.5, 5], low on object boundaries.

Table 1 (``--size``, ``--frames``, ``keep="none"``, an output folder, refinement in its worker
thread): per-stage latency p50/p95 of ``push`` (``non_network``: everything but the network, the
target of the 30 ms / 80 ms budget), frames/s excluding the network, decoder passes per frame, RSS
at frames 100/200/300, ATE as emitted (causal) and after ``close()``, mask IoU and false-positive
rate. Table 2 (``--offline-size``, the first ``--offline-frames`` frames of the same trajectory;
the offline problem at full size and 300 frames needs ~14 GB of pairwise pointmaps): the stream
(causal, after close) against ``global_align`` with Adam and with LM on the swinstride-5
predictions of the same simulated network. ATE: RMSE of camera centres after Sim(3) Umeyama
alignment (``monst3r_rt.eval.pose_metrics``), in metres of the scene. Table 3: the full-size
MonST3R architecture with random weights (the released weights cannot be downloaded here; cost does
not depend on their values) on ``--network-frames`` frames of ``lady-running``: frames/s of the
stream against the offline pipeline (swinstride-5, encode-once inference, 300 Adam iterations).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from _machine import describe
from _table import print_table

from monst3r_rt.bench.harness import rss_mb as _rss_mb

NOISE = dict(depth_noise=0.03, pose_noise=0.01, scale_range=(0.5, 2.0), seed=1)


def _scene(n: int, size: tuple[int, int]):
    from monst3r_rt.synthetic import make_scene

    return make_scene(n_frames=n, size=size, graph=None, n_objects=2, object_motion=0.05, seed=7)


def _ate(pred: np.ndarray, gt: np.ndarray) -> float:
    from monst3r_rt.eval import pose_metrics

    return pose_metrics(np.asarray(pred, np.float64), gt)["ate"]


def _masks(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    pred, gt = np.asarray(pred[1:]), gt[1:]  # frame 0 has no earlier frame to compare with
    iou = (pred & gt).sum() / max((pred | gt).sum(), 1)
    return float(iou), float((pred & ~gt).sum() / max((~gt).sum(), 1))


def _stream(scene, size: tuple[int, int], config, output=None, rss_at=()):
    from monst3r_rt import Stream
    from monst3r_rt.stream.stats import LatencyStats
    from monst3r_rt.synthetic import SimulatedBackend

    stream = Stream(
        backend=SimulatedBackend(scene, **NOISE), size=size[1], config=config, output=output
    )
    stats, rss, causal = LatencyStats(), {}, []
    for i, im in enumerate(scene.images):
        res = stream.push(im)
        stats.add(res)
        causal.append(res.pose)
        if i + 1 in rss_at:
            rss[i + 1] = _rss_mb()
    t0 = time.perf_counter()
    rec = stream.close()
    return stream, stats, np.stack(causal), rec, rss, time.perf_counter() - t0


def table_latency(args) -> None:
    from monst3r_rt import StreamConfig

    w, h = (int(v) for v in args.size.split("x"))
    t0 = time.perf_counter()
    scene = _scene(args.frames, (h, w))
    print(f"scene: {args.frames} frames {w}x{h} rendered in {time.perf_counter() - t0:.1f} s")
    marks = tuple(m for m in (100, 200, 300) if m <= args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        stream, stats, causal, rec, rss, close_s = _stream(
            scene, (h, w), StreamConfig(keep="none"), os.path.join(tmp, "out"), marks
        )
        iou, fp = _masks(rec.dynamic_masks, scene.dynamic_masks)
        final = _ate(rec.poses, scene.poses)
    rows = [
        [s, f"{stats.percentile(s, 50):.1f}", f"{stats.percentile(s, 95):.1f}"]
        for s in (
            "network",
            "track",
            "focal",
            "mask",
            "keyframe",
            "refine_wait",
            "output",
            "non_network",
            "total",
        )
        if s in stats.timings
    ]
    print_table(
        f"stream latency per frame (ms), simulated network, {w}x{h}, {args.frames} frames, "
        f"keep='none' — {describe()}",
        ["stage", "p50", "p95"],
        rows,
    )
    non_net = np.sum(stats.timings["non_network"])
    rows = [
        ["frames/s excluding the network", f"{args.frames / non_net:.1f}"],
        ["decoder passes per frame", f"{stream.decodes / args.frames:.2f}"],
        ["encoder passes per frame", f"{stream.encodes / args.frames:.2f}"],
        ["keyframes", f"{len(stream.keyframes)}"],
        ["refinements (window solves)", f"{len(stream.refinements)}"],
        ["close() s (final refinement + output folder)", f"{close_s:.1f}"],
    ]
    rows += [[f"RSS at frame {m} (MB)", f"{rss[m]:.0f}"] for m in marks]
    if 100 in rss and marks[-1] != 100:
        rows.append([f"RSS growth 100→{marks[-1]} (MB)", f"{rss[marks[-1]] - rss[100]:.1f}"])
    rows += [
        ["ATE causal (m)", f"{_ate(causal, scene.poses):.4f}"],
        ["ATE after close (m)", f"{final:.4f}"],
        ["mask IoU", f"{iou:.3f}"],
        ["mask false-positive rate", f"{fp:.4f}"],
    ]
    print_table("stream summary", ["quantity", "value"], rows)


def table_offline(args) -> None:
    from monst3r_rt import StreamConfig, global_align, infer_pairs, load_frames, make_pairs
    from monst3r_rt.align import AlignConfig
    from monst3r_rt.synthetic import SimulatedBackend

    w, h = (int(v) for v in args.offline_size.split("x"))
    n = args.offline_frames
    scene = _scene(n, (h, w))
    rows = []
    t0 = time.perf_counter()
    stream, _, causal, rec, _, _ = _stream(scene, (h, w), StreamConfig())
    dt = time.perf_counter() - t0
    rows.append(["stream, causal", f"{_ate(causal, scene.poses):.4f}", "", ""])
    rows.append(
        [
            "stream, after close()",
            f"{_ate(rec.poses, scene.poses):.4f}",
            f"{dt:.1f}",
            f"{stream.decodes}",
        ]
    )
    frames = load_frames(list(scene.images), size=w)
    pairs = make_pairs(n, "swinstride-5-noncyclic")
    preds = infer_pairs(SimulatedBackend(scene, **NOISE), frames, pairs, progress=False)
    for solver in ("adam", "lm"):
        t0 = time.perf_counter()
        res = global_align(preds, config=AlignConfig(solver=solver))
        dt = time.perf_counter() - t0
        rows.append(
            [
                f"offline global_align ({solver})",
                f"{_ate(res.poses, scene.poses):.4f}",
                f"{dt:.1f}",
                f"{len(pairs)}",
            ]
        )
    best = min(float(r[1]) for r in rows[2:])
    for r in rows:
        r.append(f"{float(r[1]) / best:.2f}")
    print_table(
        f"trajectory vs the offline alignment, {n} frames {w}x{h}, same simulated network "
        f"— {describe()}",
        ["method", "ATE (m)", "s", "decoder passes", "× best offline"],
        rows,
    )


def table_network(args) -> None:
    import torch

    from monst3r_rt import Pipeline, Stream, StreamConfig, load_frames
    from monst3r_rt.align import AlignConfig
    from monst3r_rt.network import MONST3R_KWARGS, PointmapNet, save_checkpoint

    clip = os.path.join(args.data, "lady-running")
    if not os.path.isdir(clip):
        print(f"\n(no {clip}: full-size network table skipped)")
        return
    frames = load_frames(clip, size=512, num_frames=args.network_frames)
    n = len(frames)
    h, w = frames.shape
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "random.pth")
        torch.manual_seed(0)
        save_checkpoint(PointmapNet(**MONST3R_KWARGS), ckpt, format="pth")
        stream = Stream(
            ckpt, backend="torch", device="cpu", size=512, config=StreamConfig(refine="thread")
        )
        t0 = time.perf_counter()
        lat = [stream.push(im).timings["total"] for im in frames.images]
        stream.close()
        s_stream = time.perf_counter() - t0
        pipe = Pipeline(weights=ckpt, backend="torch", device="cpu", size=512, align=AlignConfig())
        t0 = time.perf_counter()
        pipe.run(list(frames.images), progress=False)
        s_off = time.perf_counter() - t0
    rows = [
        [
            "stream (1 encode, ~1 decode per frame)",
            f"{s_stream:.1f}",
            f"{n / s_stream:.3f}",
            f"{np.median(lat):.1f}",
            f"{stream.decodes / n:.2f}",
        ],
        [
            "offline pipeline (swinstride-5, 300 Adam its)",
            f"{s_off:.1f}",
            f"{n / s_off:.3f}",
            "",
            "",
        ],
    ]
    rows.append(["ratio", "", f"{s_off / s_stream:.2f}×", "", ""])
    print_table(
        f"full-size network (random weights), {n} frames {w}x{h}, CPU fp32 — {describe()}, "
        f"torch {torch.__version__}",
        ["mode", "s", "frames/s", "median s per push", "decoder passes per frame"],
        rows,
    )


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", default="512x288", help="WxH of the stream table")
    parser.add_argument("--offline-frames", type=int, default=100)
    parser.add_argument("--offline-size", default="256x144")
    parser.add_argument("--network-frames", type=int, default=6)
    parser.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data"))
    parser.add_argument("--skip-network", action="store_true")
    parser.add_argument("--tables", default="latency,offline,network")
    args = parser.parse_args()
    print(f"machine: {describe()}, Python {sys.version.split()[0]}")
    tables = args.tables.split(",")
    if "latency" in tables:
        table_latency(args)
    if "offline" in tables:
        table_offline(args)
    if "network" in tables and not args.skip_network:
        table_network(args)


if __name__ == "__main__":
    main()
