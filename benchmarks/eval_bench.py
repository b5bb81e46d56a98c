"""The evaluation (``monst3r_rt.eval``) on real RGB-D data, and the cost of scoring a long sequence.

    python benchmarks/eval_bench.py [--data ../shared/data] [--frames 1000] [--cost-only]

Part 1: the HoloLens sequence (``hololens-000-first80``: 80 frames 540×360, measured depth in
16-bit PNG millimetres, 0 = invalid, poses camera-to-world). No weights are available, so the
predictions are simulated from the ground truth, at model resolution 512×336:

- offline: depth = gt × s × exp(0.03·z) per frame (s one random per-sequence scale, log-uniform in
  [0.2, 5]; z a smooth unit-std field, bicubic upsampling of a 5×8 grid, new per frame; invalid gt
  pixels filled with the frame's median), so the log-depth error has std 3 %; poses = a random
  Sim(3) of the gt with independent per-frame noise (rotation vector N(0, 0.3°²) per axis,
  translation N(0, (5 mm)²) per axis);
- stream: the same depth model with std 5 %, and poses drifting: a random walk of the same
  per-axis noise per frame (0.1°, 2 mm), as a causal tracker drifts.

Each is written as this package's output folder (``Reconstruction.save``); the offline one also as
an official ``demo.py`` folder (``frame_{i}.npy``, ``pred_traj.txt``); both are scored with the
Bonn settings (gt < 70 m) and the paper's LAD alignment, and so is the ground truth itself, which
must score perfectly (median alignment: AbsRel 0, δ 100 %, ATE 0).

Part 2 (alone with ``--cost-only``): ``depth_metrics`` (median, least-squares and the official
LAD alignment) and ``pose_metrics`` on a synthetic ``--frames``-frame sequence at 288×512
(float32 inputs), timed, with the 1-minute load average before each step (the machine may be
shared: a load above the core count inflates the times).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np
from _machine import describe

from monst3r_rt.eval import (
    SequenceData,
    depth_metrics,
    markdown_table,
    pose_metrics,
    read_prediction,
    score_sequence,
)
from monst3r_rt.eval.score import Prediction
from monst3r_rt.geometry import rotvec_to_rotmat
from monst3r_rt.reconstruction import Reconstruction

MODEL_HW = (336, 512)


def load_hololens(folder: str) -> SequenceData:
    names = sorted(os.listdir(os.path.join(folder, "images")))
    depth = np.stack([cv2.imread(os.path.join(folder, "depth", n), cv2.IMREAD_UNCHANGED)
                      for n in names]).astype(np.float32) / 1000.0  # fmt: skip
    poses = np.loadtxt(os.path.join(folder, "poses.txt")).reshape(-1, 4, 4)
    if len(poses) != len(names):
        raise ValueError(f"{folder}: {len(poses)} poses for {len(names)} images")
    return SequenceData("hololens-000", [os.path.join(folder, "images", n) for n in names],
                        depth=depth, poses=poses)  # fmt: skip


def smooth_field(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    z = cv2.resize(rng.normal(size=(5, 8)), hw[::-1], interpolation=cv2.INTER_CUBIC)
    return (z - z.mean()) / z.std()


def simulate(gt: SequenceData, rng, depth_std: float, rot_deg: float, trans_m: float,
             drift: bool) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    scale = float(np.exp(rng.uniform(np.log(0.2), np.log(5))))
    depths = []
    for d in gt.depth:
        fill = np.where(d > 0, d, np.median(d[d > 0]))
        small = cv2.resize(fill, MODEL_HW[::-1], interpolation=cv2.INTER_AREA)
        depths.append(small * scale * np.exp(depth_std * smooth_field(rng, MODEL_HW)))
    n = len(gt.poses)
    rv = rng.normal(0, np.radians(rot_deg), (n, 3))
    tr = rng.normal(0, trans_m, (n, 3))
    if drift:
        rv, tr = np.cumsum(rv, 0), np.cumsum(tr, 0)
    noisy = gt.poses.copy()
    for i in range(n):
        noisy[i, :3, :3] = rotvec_to_rotmat(rv[i]) @ noisy[i, :3, :3]
        noisy[i, :3, 3] += tr[i]
    sim = np.eye(4)
    sim[:3, :3] = rotvec_to_rotmat(rng.normal(0, 1, 3))
    s = 1 / scale
    out = np.einsum("ij,njk->nik", sim, noisy)
    out[:, :3, 3] = noisy[:, :3, 3] @ sim[:3, :3].T * s + rng.normal(0, 3, 3)
    return np.stack(depths).astype(np.float32), out


def as_recon(depth: np.ndarray, poses: np.ndarray) -> Reconstruction:
    n, h, w = depth.shape
    k = np.tile(np.array([[470.0, 0, w / 2], [0, 470, h / 2], [0, 0, 1]], np.float32), (n, 1, 1))
    return Reconstruction(frames=np.zeros((n, h, w, 3), np.uint8), depths=depth,
                          poses=poses.astype(np.float32), intrinsics=k,
                          conf=np.full((n, h, w), 2.0, np.float32),
                          dynamic_masks=np.zeros((n, h, w), bool),
                          pts3d=np.zeros((n, h, w, 3), np.float32))  # fmt: skip


def write_official(folder: str, depth: np.ndarray, poses: np.ndarray) -> None:
    from monst3r_rt.fileio import write_official_traj

    os.makedirs(folder)
    for i, d in enumerate(depth):
        np.save(os.path.join(folder, f"frame_{i}.npy"), d)
    write_official_traj(os.path.join(folder, "pred_traj.txt"), poses)


def part1(data_dir: str) -> None:
    gt = load_hololens(os.path.join(data_dir, "hololens-000-first80"))
    rng = np.random.default_rng(0)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        off = simulate(gt, rng, 0.03, 0.3, 0.005, drift=False)
        st = simulate(gt, rng, 0.05, 0.1, 0.002, drift=True)
        as_recon(*off).save(os.path.join(tmp, "offline"))
        as_recon(*st).save(os.path.join(tmp, "stream"))
        write_official(os.path.join(tmp, "official"), *off)
        for label, folder in (("offline (monst3r_rt folder)", "offline"),
                              ("offline (official demo.py folder)", "official"),
                              ("stream (monst3r_rt folder)", "stream")):  # fmt: skip
            t0 = time.perf_counter()
            rows[label] = score_sequence(read_prediction(os.path.join(tmp, folder)), gt, "bonn")
            rows[label]["seconds"] = time.perf_counter() - t0
    gt_pred = Prediction(gt.depth, gt.poses, None, "gt", "ground truth")
    rows["ground truth (LAD)"] = score_sequence(gt_pred, gt, "bonn")
    perfect = score_sequence(gt_pred, gt, "bonn", align="median")
    rows["ground truth (median)"] = perfect
    assert perfect["abs_rel"] < 1e-6 and perfect["delta_1_25"] == 1.0 and perfect["ate"] < 1e-6
    print(f"## HoloLens, {len(gt.images)} frames {gt.depth.shape[2]}x{gt.depth.shape[1]}, "
          f"measured depth; {describe()}\n")  # fmt: skip
    print("| prediction | Abs Rel ↓ | δ<1.25 ↑ | ATE (m) ↓ | RPE trans (m) ↓ | RPE rot (deg) ↓ "
          "| scoring (s) |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for label, r in rows.items():
        secs = f"{r['seconds']:.2f}" if "seconds" in r else "–"
        print(f"| {label} | {r['abs_rel']:.4f} | {100 * r['delta_1_25']:.1f} | {r['ate']:.4f} "
              f"| {r['rpe_trans']:.4f} | {r['rpe_rot']:.3f} | {secs} |")  # fmt: skip
    print("\nAs the eval command's table.md prints it (offline):\n")
    print(markdown_table({"bonn": rows["offline (monst3r_rt folder)"]}, "simulated offline"))


def part2(frames: int) -> None:
    rng = np.random.default_rng(1)
    h, w = 288, 512
    gt = rng.uniform(0.5, 20, (frames, h, w)).astype(np.float32)
    gt[:, ::7, ::5] = 0
    pred = (gt * 2.5 * np.exp(rng.normal(0, 0.03, gt.shape))).astype(np.float32)
    poses = np.tile(np.eye(4), (frames, 1, 1))
    poses[:, :3, :3] = [rotvec_to_rotmat(r) for r in np.cumsum(rng.normal(0, 0.02, (frames, 3)), 0)]
    poses[:, :3, 3] = np.cumsum(rng.normal(0, 0.05, (frames, 3)), 0)
    print(f"\n## Scoring cost: {frames} frames at {w}x{h} ({gt.size / 1e6:.0f} M pixels); "
          f"{describe()}\n\n| step | seconds | machine |\n|---|---|---|")  # fmt: skip
    for align in ("median", "scale_shift", "lad"):
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        depth_metrics(pred, gt, align, max_depth=70.0)
        print(f"| depth_metrics align={align} | {time.perf_counter() - t0:.2f} "
              f"| load {load:.1f} on {os.cpu_count()} cores |", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    pose_metrics(poses, poses)
    print(f"| pose_metrics | {time.perf_counter() - t0:.3f} | |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "../../shared/data"))
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--cost-only", action="store_true", help="only part 2 (no data needed)")
    args = ap.parse_args()
    if not args.cost_only:
        part1(args.data)
        sys.stdout.flush()
    part2(args.frames)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
