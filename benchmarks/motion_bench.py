"""Motion: optical flow (DIS presets), dynamic masks (official vs robust), and the time of flow +
masks for a 65-frame video, side by side in one run.

    python benchmarks/motion_bench.py [--data ../shared/data] [--frames 65]
                                      [--parts flow,masks,video]

1. ``flow``: DIS time per ordered pair at 512×288 on consecutive frames of ``lady-running``, and
   end-point error against the ground truth of the ``tartanair-flow-pairs`` (native 640×480).
2. ``masks``: IoU and false-positive rate of the dynamic masks, ``official`` vs ``robust``, on a
   rendered synthetic scene (:func:`monst3r_rt.synthetic.make_scene`, 24 frames 120×160, two
   moving spheres, noisy pairwise predictions) with DIS flow computed on its images.
3. ``video``: wall time of ``compute_flow`` on the first ``--frames`` frames of ``lady-running`` at
   512×288 over ``swinstride-5-noncyclic`` (10N − 50 pairs), then of ``dynamic_masks`` with both
   methods on synthetic pairwise predictions of the same shape and graph (no network weights can
   be downloaded here; the mask step's cost does not depend on what the pointmaps show).
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import cv2
import numpy as np
from _machine import describe
from _table import print_table


def bench_flow(data: str) -> None:
    import monst3r_rt
    from monst3r_rt.flow import DIS_PRESETS, dis_flow

    frames = monst3r_rt.load_frames(os.path.join(data, "lady-running"), size=512, num_frames=13)
    src, dst = frames.images[:12], frames.images[1:13]
    tart = os.path.join(data, "tartanair-flow-pairs")
    pairs = []
    for path in sorted(glob.glob(os.path.join(tart, "*_flow.npy"))):
        a, b = os.path.basename(path).split("_")[:2]
        img = [cv2.cvtColor(cv2.imread(os.path.join(tart, f"{x}_left.png")), cv2.COLOR_BGR2RGB)
               for x in (a, b)]  # fmt: skip
        pairs.append((img[0], img[1], np.load(path)))
    rows = []
    for preset in DIS_PRESETS:
        dis_flow(src[:1], dst[:1], preset)  # warm-up
        t = time.perf_counter()
        dis_flow(src, dst, preset)
        ms = (time.perf_counter() - t) / len(src) * 1e3
        epe = []
        for a, b, gt in pairs:
            f = np.moveaxis(dis_flow(a[None], b[None], preset)[0], 0, -1)
            epe.append(np.linalg.norm(f - gt, axis=-1))
        e = np.concatenate([x.ravel() for x in epe])
        per = " / ".join(f"{x.mean():.2f}" for x in epe)
        rows.append([preset, f"{ms:.1f}", f"{e.mean():.2f}", f"{np.median(e):.3f}", per])
    print_table(
        f"DIS flow ({describe()}, 1 thread per pair)",
        ["preset", "ms/pair 512×288", "EPE mean (px)", "EPE median", "EPE mean per TartanAir pair"],
        rows,
    )


def bench_masks() -> None:
    from monst3r_rt.flow import compute_flow
    from monst3r_rt.inference import PairwisePredictions
    from monst3r_rt.masks import dynamic_masks
    from monst3r_rt.synthetic import make_scene

    rows = []
    for seed, noise in ((2, 0.05), (3, 0.0)):
        sc = make_scene(n_frames=24, size=(120, 160), n_objects=2, object_motion=0.1,
                        depth_noise=noise, pose_noise=noise / 2, seed=seed)  # fmt: skip
        preds = PairwisePredictions(sc.edges, sc.pts_i, sc.pts_j, sc.conf_i, sc.conf_j)
        flows = compute_flow(sc.images, sc.edges)
        gt = sc.dynamic_masks
        for method in ("official", "robust"):
            t = time.perf_counter()
            m = dynamic_masks(preds, *flows, method=method)
            dt = time.perf_counter() - t
            iou = (m & gt).sum() / (m | gt).sum()
            fpr = (m & ~gt).sum() / (~gt).sum()
            rows.append([f"seed {seed}, noise {noise}", method, f"{iou:.3f}", f"{fpr:.4f}",
                         f"{dt:.2f}"])  # fmt: skip
    print_table(
        f"Dynamic masks on a rendered scene, DIS flow ({describe()})",
        ["scene (24 frames 120×160)", "method", "IoU", "false-positive rate", "seconds"],
        rows,
    )


def bench_video(data: str, n_frames: int) -> None:
    import monst3r_rt
    from monst3r_rt.flow import compute_flow
    from monst3r_rt.inference import PairwisePredictions
    from monst3r_rt.masks import dynamic_masks
    from monst3r_rt.synthetic import make_scene

    path = os.path.join(data, "lady-running")
    images = monst3r_rt.load_frames(path, size=512, num_frames=n_frames).images
    edges = np.asarray(monst3r_rt.make_pairs(len(images), "swinstride-5-noncyclic"))
    t = time.perf_counter()
    fij, fji = compute_flow(images, edges)
    t_flow = time.perf_counter() - t
    sc = make_scene(n_frames=len(images), size=images.shape[1:3], n_objects=1,
                    depth_noise=0.02, pose_noise=0.01)  # fmt: skip
    preds = PairwisePredictions(sc.edges, sc.pts_i, sc.pts_j, sc.conf_i, sc.conf_j)
    del sc
    rows = []
    for method in ("official", "robust"):
        t = time.perf_counter()
        dynamic_masks(preds, fij, fji, method=method)
        t_mask = time.perf_counter() - t
        rows.append([method, f"{t_flow:.1f}", f"{t_mask:.1f}", f"{t_flow + t_mask:.1f}"])
    h, w = images.shape[1:3]
    print_table(
        f"Flow + masks, {len(images)} frames {w}×{h}, {len(edges)} pairs ({describe()})",
        ["masks", "flow s (DIS medium)", "masks s", "total s (target < 60)"],
        rows,
    )


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data"))
    parser.add_argument("--frames", type=int, default=65)
    parser.add_argument("--parts", default="flow,masks,video")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "flow" in parts:
        bench_flow(args.data)
    if "masks" in parts:
        bench_masks()
    if "video" in parts:
        bench_video(args.data, args.frames)


if __name__ == "__main__":
    main()
