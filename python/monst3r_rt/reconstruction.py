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


def thin_step(count: int, limit: int) -> int:
    """The smallest k such that every k-th of ``count`` points keeps at most ``limit``."""
    return int(np.ceil(count / limit)) if count > limit else 1


def thin_points(pts: np.ndarray, colors: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point (and its colour) with the smallest k that keeps at most ``limit``."""
    step = thin_step(len(pts), limit)
    return pts[::step], colors[::step]


def frame_keep(
    pts3d: np.ndarray,
    conf: np.ndarray,
    dynamic_mask: np.ndarray,
    conf_threshold: float = 1.1,
    static_only: bool = False,
) -> np.ndarray:
    """(H,W) bool: the pixels of one frame that :meth:`Reconstruction.point_cloud` keeps (raw
    confidence above ``conf_threshold``, finite world point (H,W,3), and static when
    ``static_only``)."""
    keep = (conf > conf_threshold) & np.isfinite(pts3d).all(-1)
    if static_only:
        keep &= ~dynamic_mask
    return keep


FRAME_FILES = {
    "image": "frame_{:04d}.png",
    "depth": "frame_{:04d}.npy",
    "conf": "conf_{:04d}.npy",
    "dynamic_mask": "dynamic_mask_{:04d}.png",
    "enlarged_dynamic_mask": "enlarged_dynamic_mask_{:04d}.png",
}
"""The official layout's per-frame files that need no pose, by kind (``.format(frame_index)``);
frame numbers are zero-padded everywhere: official readers parse the number
(``int(stem.split("_")[-1])``), others sort names, which padding keeps right."""


def write_frame_files(
    folder: str,
    index: int,
    *,
    image: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    conf: np.ndarray | None = None,
    dynamic_mask: np.ndarray | None = None,
) -> None:
    """Write frame ``index``'s pose-independent files (:data:`FRAME_FILES`) for the arrays given.

    Args:
        folder: the output (or temporary) folder.
        index: frame number.
        image: (H,W,3) uint8 RGB → ``frame_XXXX.png``.
        depth: (H,W) z-depth → ``frame_XXXX.npy`` (float32).
        conf: (H,W) raw confidence ≥ 1 → ``conf_XXXX.npy`` (its natural log, float32).
        dynamic_mask: (H,W) bool → ``dynamic_mask_XXXX.png`` (0/255) and
            ``enlarged_dynamic_mask_XXXX.png`` (dilated by a 3x3 square).
    """
    path = {k: os.path.join(folder, v.format(index)) for k, v in FRAME_FILES.items()}
    if depth is not None:
        np.save(path["depth"], np.asarray(depth).astype(np.float32))
    if image is not None:
        cv2.imwrite(path["image"], np.asarray(image)[..., ::-1])
    if conf is not None:
        with np.errstate(divide="ignore"):
            np.save(path["conf"], np.log(conf).astype(np.float32))
    if dynamic_mask is not None:
        mask = np.asarray(dynamic_mask).astype(np.uint8) * 255
        cv2.imwrite(path["dynamic_mask"], mask)
        cv2.imwrite(path["enlarged_dynamic_mask"], cv2.dilate(mask, np.ones((3, 3), np.uint8)))


def read_frame_file(folder: str, index: int, kind: str) -> np.ndarray:
    """Frame ``index``'s file of ``kind`` (a key of :data:`FRAME_FILES`) as
    :func:`write_frame_files` wrote it: image (H,W,3) uint8 RGB, depth (H,W) float32, conf (H,W)
    float32 log-confidence, masks (H,W) bool. Raises FileNotFoundError naming the file."""
    path = os.path.join(folder, FRAME_FILES[kind].format(index))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: frame {index}'s {kind} file is missing")
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"{path}: cannot decode the PNG")
    return np.ascontiguousarray(img[..., ::-1]) if kind == "image" else img > 0


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
        pts, rgb = [], []
        for i in range(len(self)) if frame is None else [frame]:  # one frame in memory at a time
            p = np.asarray(self.pts3d[i])
            keep = frame_keep(p, np.asarray(self.conf[i]), np.asarray(self.dynamic_masks[i]),
                              conf_threshold, static_only)  # fmt: skip
            pts.append(p[keep])
            rgb.append(np.asarray(self.frames[i])[keep])
        if not pts:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        return np.concatenate(pts), np.concatenate(rgb)

    # ---- output folder --------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike[str], overwrite: bool = False) -> dict[str, str]:
        """Write the output folder atomically (a temporary folder beside it, then a rename).

        Returns the written paths by kind. Refuses a non-empty ``out_dir`` unless ``overwrite``.
        """
        with atomic_dir(out_dir, overwrite) as tmp:
            self.write_files(tmp)
            for write in self.extra_writers:
                write(tmp)
        out = os.fspath(out_dir)
        return {k: os.path.join(out, v) for k, v in _LAYOUT.items()}

    def write_files(self, folder: str, *, frame_files: bool = True) -> None:
        """Write the output layout into ``folder`` (existing and empty but for, when
        ``frame_files`` is False, the :data:`FRAME_FILES` already written there by
        :func:`write_frame_files`). Not atomic: :meth:`save` wraps it.

        Works one frame at a time: the per-pixel arrays are only indexed per frame
        (``self.depths[i]``), so they may be lazy per-frame arrays; memory stays O(one frame)
        plus the scene's static points (at most ``MAX_SCENE_POINTS``). A first pass finds the
        largest depth (the 16-bit PNGs' scale) and counts the scene points (the thinning step).
        """
        n = len(self)
        h, w = np.shape(self.depths)[1:]
        poses = np.asarray(self.poses, np.float64)
        intrinsics = np.asarray(self.intrinsics)
        top, n_scene = 0.0, 0
        for i in range(n):
            depth = np.asarray(self.depths[i])
            valid = depth[np.isfinite(depth) & (depth > 0)]
            top = max(top, float(valid.max())) if valid.size else top
            arrays = (np.asarray(self.pts3d[i]), np.asarray(self.conf[i]),
                      np.asarray(self.dynamic_masks[i]))  # fmt: skip
            n_scene += int(frame_keep(*arrays, static_only=True).sum())
        scale = 65535.0 / top if top > 0 else 1.0
        step = thin_step(n_scene, MAX_SCENE_POINTS)
        # official demo files (spec §5.1) and standard formats
        fileio.write_official_traj(os.path.join(folder, "pred_traj.txt"), poses)
        fileio.write_intrinsics(os.path.join(folder, "pred_intrinsics.txt"), intrinsics)
        fileio.write_tum(os.path.join(folder, "trajectory_tum.txt"), poses)
        os.makedirs(os.path.join(folder, "depth"))
        os.makedirs(os.path.join(folder, "points"))
        scene_pts, scene_rgb, seen = [], [], 0
        for i in range(n):
            kinds = ("frames", "depths", "conf", "dynamic_masks", "pts3d")
            image, depth, conf, mask, pts = (np.asarray(getattr(self, k)[i]) for k in kinds)
            if frame_files:
                write_frame_files(folder, i, image=image, depth=depth, conf=conf, dynamic_mask=mask)
            fileio.write_depth_png(os.path.join(folder, "depth", f"{i:04d}.png"), depth, scale)
            ok = np.isfinite(pts).all(-1)
            fileio.write_ply(os.path.join(folder, "points", f"{i:04d}.ply"), pts[ok], image[ok],
                             conf[ok], mask[ok])  # fmt: skip
            # every step-th static point of the whole sequence, as thin_points(point_cloud(...))
            keep = frame_keep(pts, conf, mask, static_only=True)
            first = -seen % step
            scene_pts.append(pts[keep][first::step].copy())  # not views keeping the frame alive
            scene_rgb.append(image[keep][first::step].copy())
            seen += int(keep.sum())
        pts = np.concatenate(scene_pts) if n else np.zeros((0, 3), np.float32)
        rgb = np.concatenate(scene_rgb) if n else np.zeros((0, 3), np.uint8)
        fileio.write_glb(os.path.join(folder, "scene.glb"), pts, rgb, poses, intrinsics, (h, w))
        names = [FRAME_FILES["image"].format(i) for i in range(n)]
        fileio.write_colmap(os.path.join(folder, "colmap"), poses, intrinsics, (h, w), names,
                            pts, rgb)  # fmt: skip
        del pts, rgb, scene_pts, scene_rgb
        fileio.write_npz(os.path.join(folder, NPZ), {**{k: getattr(self, k) for k in _ARRAYS},
                                                     "names": np.array(self.names)})  # fmt: skip
        meta = {**self.meta, "depth_png_scale": scale, "frames": n, "image_size": [h, w],
                "names": list(self.names)}  # fmt: skip
        with open(os.path.join(folder, "run.json"), "w") as f:
            json.dump(meta, f, indent=2, default=str)

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str], mmap: bool = False) -> Reconstruction:
        """Read an output folder written by :meth:`save` (lossless: from ``reconstruction.npz``
        and ``run.json``). Errors name the folder and what is missing.

        ``mmap``: the arrays are read-only memory maps of ``reconstruction.npz`` (nothing is read
        until indexed; for sequences larger than memory) instead of in-memory copies."""
        out_dir = os.fspath(out_dir)
        path = os.path.join(out_dir, NPZ)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{out_dir}: not a monst3r_rt output folder (no {NPZ})")
        if mmap:
            data = fileio.open_npz_lazy(path)
        else:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        missing = [k for k in (*_ARRAYS, "names") if k not in data]
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
