"""The viewer's headless still on a real clip: a Reconstruction built from the ground truth of the
HoloLens RGB-D sequence in ``../shared/data`` (80 real handheld frames, measured depth and
poses), rendered with ``monst3r_rt.viewer.render_png`` (what ``monst3r-rt view OUT --png`` does).

    python benchmarks/render_real_clip.py [--data ../shared/data] [--out docs/viewer_hololens.jpg]

It exercises the output folder and the viewer on real geometry without network weights (none can
be downloaded here); with the official weights, ``monst3r-rt run`` produces the same kind of folder.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile

import cv2
import numpy as np


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data"))
    parser.add_argument("--out", default=os.path.join(here, "..", "docs", "viewer_hololens.jpg"))
    parser.add_argument("--step", type=int, default=2, help="use every k-th frame")
    args = parser.parse_args()

    from monst3r_rt.geometry import transform_points, unproject_depth
    from monst3r_rt.reconstruction import Reconstruction
    from monst3r_rt.viewer import render_png

    root = os.path.join(args.data, "hololens-000-first80")
    images = sorted(glob.glob(os.path.join(root, "images", "*.png")))[:: args.step]
    depths = sorted(glob.glob(os.path.join(root, "depth", "*.png")))[:: args.step]
    poses = np.loadtxt(os.path.join(root, "poses.txt")).reshape(-1, 4, 4)[:: args.step]
    k = np.loadtxt(os.path.join(root, "K.txt"))
    frames = np.stack([cv2.imread(p)[..., ::-1] for p in images])
    depth = np.stack([cv2.imread(p, cv2.IMREAD_UNCHANGED) for p in depths]).astype(np.float32)
    depth /= 1000.0  # millimetres; 0 = invalid
    n, h, w = depth.shape
    cam = unproject_depth(depth, (k[0, 0], k[1, 1]), (k[0, 2], k[1, 2]))
    pts = np.stack([transform_points(pose, c) for pose, c in zip(poses, cam, strict=True)])
    conf = np.where(depth > 0, 5.0, 1.0).astype(np.float32)  # invalid depth: below threshold
    recon = Reconstruction(frames, depth, poses.astype(np.float32),
                           np.tile(k, (n, 1, 1)).astype(np.float32), conf,
                           np.zeros((n, h, w), bool), pts.astype(np.float32))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:  # through the output folder, as the CLI does
        recon.save(os.path.join(tmp, "out"))
        render_png(os.path.join(tmp, "out"), args.out, size=(540, 960))
    print(f"wrote {args.out}: {n} frames {w}x{h}")


if __name__ == "__main__":
    main()
