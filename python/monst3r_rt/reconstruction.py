"""A 4D reconstruction (per-frame depth, pose, intrinsics, confidence, dynamic mask, points) and
its output folder in the formats users and existing tools read."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from . import fileio
from ._atomic import atomic_dir

_ARRAYS = ("frames", "depths", "poses", "intrinsics", "conf", "dynamic_masks", "pts3d")
NPZ = "reconstruction.npz"
MAX_SCENE_POINTS = 2_000_000  # scene.glb and colmap/points3D.txt keep at most this many points


def thin_points(pts: np.ndarray, colors: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point (and its colour) with the smallest k that keeps at most ``limit``."""
    step = int(np.ceil(len(pts) / limit)) if len(pts) > limit else 1
    return pts[::step], colors[::step]


@dataclass
class Reconstruction:
    """Per-frame geometry of a video.

    Attributes:
        frames: (N,H,W,3) uint8 RGB at model resolution.
        depths: (N,H,W) float32 z-depth (the optimisation's arbitrary but consistent unit).
        poses: (N,4,4) float32 camera-to-world, OpenCV axes (x right, y down, z forward).
        intrinsics: (N,3,3) float32 pinhole K in pixels.
        conf: (N,H,W) float32 raw confidence ≥ 1 (per frame, max over its pairs).
        dynamic_masks: (N,H,W) bool, True = moving (all False without flow).
        pts3d: (N,H,W,3) float32 world points.
        names: per-frame names (source file or video frame).
        meta: run information (input, weights, versions, config, timings) for ``run.json``.
        extra_writers: called by :meth:`save` with the temporary output folder after the standard
            files, to add files of their own inside the same atomic write (the feed-forward
            mode's official per-pair files); not stored, not compared.
    """

    frames: np.ndarray
    depths: np.ndarray
    poses: np.ndarray
    intrinsics: np.ndarray
    conf: np.ndarray
    dynamic_masks: np.ndarray
    pts3d: np.ndarray
    names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    extra_writers: list[Callable[[str], object]] = field(
        default_factory=list, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        n, h, w = np.shape(self.depths)
        want = {"frames": (n, h, w, 3), "poses": (n, 4, 4), "intrinsics": (n, 3, 3),
                "conf": (n, h, w), "dynamic_masks": (n, h, w), "pts3d": (n, h, w, 3)}  # fmt: skip
        for name, shape in want.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(
                    f"{name} must have shape {shape}, got {np.shape(getattr(self, name))}"
                )
        if not self.names:
            self.names = [f"frame_{i:04d}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.poses)

    def point_cloud(
        self, frame: int | None = None, conf_threshold: float = 1.1, static_only: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """World points and their colours.

        Args:
            frame: one frame's points, or all frames (None).
            conf_threshold: keep pixels with raw confidence above this (official glb: 1.1).
            static_only: drop pixels marked dynamic.

        Returns:
            ``(points (M,3) float32, colors (M,3) uint8)``.
        """
        sel = slice(None) if frame is None else slice(frame, frame + 1)
        keep = (self.conf[sel] > conf_threshold) & np.isfinite(self.pts3d[sel]).all(-1)
        if static_only:
            keep &= ~self.dynamic_masks[sel]
        return self.pts3d[sel][keep], self.frames[sel][keep]

    # ---- output folder --------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike[str], overwrite: bool = False) -> dict[str, str]:
        """Write the output folder atomically (a temporary folder beside it, then a rename).

        Returns the written paths by kind. Refuses a non-empty ``out_dir`` unless ``overwrite``.
        """
        with atomic_dir(out_dir, overwrite) as tmp:
            self._write(tmp)
            for write in self.extra_writers:
                write(tmp)
        out = os.fspath(out_dir)
        return {k: os.path.join(out, v) for k, v in _LAYOUT.items()}

    def _write(self, d: str) -> None:
        n = len(self)
        h, w = self.depths.shape[1:]
        np.savez(os.path.join(d, NPZ), **{k: np.asarray(getattr(self, k)) for k in _ARRAYS},
                 names=np.array(self.names))  # fmt: skip
        poses = self.poses.astype(np.float64)
        # official demo files (spec §5.1), frame numbers zero-padded everywhere: official readers
        # parse the number (int(stem.split("_")[-1])), others sort names, which padding keeps right
        fileio.write_official_traj(os.path.join(d, "pred_traj.txt"), poses)
        fileio.write_intrinsics(os.path.join(d, "pred_intrinsics.txt"), self.intrinsics)
        kernel = np.ones((3, 3), np.uint8)
        for i in range(n):
            k = f"{i:04d}"
            np.save(os.path.join(d, f"frame_{k}.npy"), self.depths[i].astype(np.float32))
            cv2.imwrite(os.path.join(d, f"frame_{k}.png"), self.frames[i][..., ::-1])
            with np.errstate(divide="ignore"):
                np.save(os.path.join(d, f"conf_{k}.npy"), np.log(self.conf[i]).astype(np.float32))
            mask = self.dynamic_masks[i].astype(np.uint8) * 255
            cv2.imwrite(os.path.join(d, f"dynamic_mask_{k}.png"), mask)
            cv2.imwrite(os.path.join(d, f"enlarged_dynamic_mask_{k}.png"), cv2.dilate(mask, kernel))
        # standard formats
        fileio.write_tum(os.path.join(d, "trajectory_tum.txt"), poses)
        os.makedirs(os.path.join(d, "depth"))
        finite = self.depths[np.isfinite(self.depths) & (self.depths > 0)]
        scale = 65535.0 / float(finite.max()) if finite.size else 1.0
        for i in range(n):
            fileio.write_depth_png(os.path.join(d, "depth", f"{i:04d}.png"), self.depths[i], scale)
        os.makedirs(os.path.join(d, "points"))
        for i in range(n):
            ok = np.isfinite(self.pts3d[i]).all(-1)
            path = os.path.join(d, "points", f"{i:04d}.ply")
            fileio.write_ply(path, self.pts3d[i][ok], self.frames[i][ok], self.conf[i][ok],
                             self.dynamic_masks[i][ok])  # fmt: skip
        pts, rgb = self._scene_points()
        fileio.write_glb(os.path.join(d, "scene.glb"), pts, rgb, poses, self.intrinsics, (h, w))
        names = [f"frame_{i:04d}.png" for i in range(n)]
        fileio.write_colmap(os.path.join(d, "colmap"), poses, self.intrinsics, (h, w), names,
                            pts, rgb)  # fmt: skip
        meta = {**self.meta, "depth_png_scale": scale, "frames": n, "image_size": [h, w],
                "names": list(self.names)}  # fmt: skip
        with open(os.path.join(d, "run.json"), "w") as f:
            json.dump(meta, f, indent=2, default=str)

    def _scene_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Static background points above the confidence threshold, evenly thinned to at most
        ``MAX_SCENE_POINTS``."""
        return thin_points(*self.point_cloud(static_only=True), MAX_SCENE_POINTS)

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> Reconstruction:
        """Read an output folder written by :meth:`save` (lossless: from ``reconstruction.npz``
        and ``run.json``). Errors name the folder and what is missing."""
        out_dir = os.fspath(out_dir)
        path = os.path.join(out_dir, NPZ)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{out_dir}: not a monst3r_rt output folder (no {NPZ})")
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in (*_ARRAYS, "names") if k not in data.files]
            if missing:
                raise ValueError(f"{path}: missing arrays {missing}")
            arrays = {k: data[k] for k in _ARRAYS}
            names = [str(s) for s in data["names"]]
        meta: dict[str, Any] = {}
        if os.path.isfile(os.path.join(out_dir, "run.json")):
            with open(os.path.join(out_dir, "run.json")) as f:
                meta = json.load(f)
            for k in ("depth_png_scale", "frames", "image_size", "names"):
                meta.pop(k, None)
        return cls(**arrays, names=names, meta=meta)


_LAYOUT = {
    "reconstruction": NPZ,
    "trajectory_official": "pred_traj.txt",
    "intrinsics": "pred_intrinsics.txt",
    "trajectory_tum": "trajectory_tum.txt",
    "depth_png": "depth",
    "point_clouds": "points",
    "scene": "scene.glb",
    "colmap": "colmap",
    "run": "run.json",
}
