"""The 4D viewer: an output folder in rerun (time slider over frames, static background, per-frame
dynamic points, camera frusta with their images), and a dependency-free headless render to PNG.

Why rerun rather than viser: rerun's timeline *is* the time slider a 4D reconstruction needs, it
records to an ``.rrd`` file without any display (headless machines, CI, sharing a result), and the
same recording opens in its native or web viewer; viser needs a running server and a hand-made
time slider.
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

from .geometry import frustum_lines, project, rotvec_to_rotmat
from .reconstruction import Reconstruction, thin_points

__all__ = ["view", "render_png", "LiveViewer"]


def view(
    recon: Reconstruction | str | os.PathLike[str],
    save: str | os.PathLike[str] | None = None,
    conf_threshold: float = 1.1,
    max_static_points: int = 1_000_000,
) -> None:
    """Show a reconstruction in rerun (extra ``viz``).

    Args:
        recon: a :class:`Reconstruction` or an output folder.
        save: write an ``.rrd`` recording here instead of opening a viewer (headless).
        conf_threshold: keep pixels with raw confidence above this.
        max_static_points: thin the accumulated static background to this many points.
    """
    rr = _rerun()
    if not isinstance(recon, Reconstruction):
        recon = Reconstruction.load(recon)
    rr.init("monst3r_rt", spawn=save is None)
    if save is not None:
        rr.save(os.fspath(save))
    rr.log("world", rr.ViewCoordinates.RDF, static=True)  # OpenCV: x right, y down, z forward
    cloud = recon.point_cloud(conf_threshold=conf_threshold, static_only=True)
    pts, rgb = thin_points(*cloud, max_static_points)
    rr.log("world/static", rr.Points3D(pts, colors=rgb, radii=-1.5), static=True)
    for i in range(len(recon)):
        _set_frame(rr, i)
        keep = (recon.conf[i] > conf_threshold) & recon.dynamic_masks[i]
        rr.log("world/dynamic", rr.Points3D(recon.pts3d[i][keep], colors=recon.frames[i][keep],
                                             radii=-2.0))  # fmt: skip
        _log_camera(rr, recon.poses[i], recon.intrinsics[i], recon.frames[i])
        rr.log("world/trajectory", rr.LineStrips3D([recon.poses[: i + 1, :3, 3]]))
    if save is not None:
        rr.disconnect()  # flushes rerun's background writer: the file is complete on return


def _rerun() -> Any:
    try:
        import rerun as rr
    except ImportError as exc:
        raise RuntimeError("the viewer needs rerun: pip install 'monst3r-rt[viz]'") from exc
    return rr


def _log_camera(rr: Any, pose: np.ndarray, k: np.ndarray, image: np.ndarray) -> None:
    """The current camera (camera-to-world ``pose``, intrinsics ``k``) and its image."""
    h, w = image.shape[:2]
    rr.log("world/camera", rr.Transform3D(translation=pose[:3, 3], mat3x3=pose[:3, :3]))
    rr.log("world/camera/image", rr.Pinhole(image_from_camera=k, width=w, height=h))
    rr.log("world/camera/image", rr.Image(image))


class LiveViewer:
    """Log a stream to rerun as frames arrive (``monst3r-rt stream --viewer`` / ``--save``):
    per frame its confident points (world frame, every ``step``-th pixel, moving ones red-tinted),
    its camera and image, and the causal trajectory so far.

    Args:
        save: write an ``.rrd`` recording here (headless) instead of spawning a viewer.
        conf_threshold: keep pixels with raw confidence above this.
        step: pixel stride of the logged points.
    """

    def __init__(self, save: str | os.PathLike[str] | None = None, conf_threshold: float = 1.1,
                 step: int = 2):  # fmt: skip
        self.rr = _rerun()
        self.rr.init("monst3r_rt_stream", spawn=save is None)
        if save is not None:
            self.rr.save(os.fspath(save))
        self.rr.log("world", self.rr.ViewCoordinates.RDF, static=True)
        self.conf_threshold, self.step = conf_threshold, step
        self.centres: list[np.ndarray] = []

    def log(self, index: int, image: np.ndarray, res: Any) -> None:
        """One :class:`~monst3r_rt.stream.FrameResult` and its (H,W,3) uint8 model-size image."""
        from .geometry import world_points

        rr, s = self.rr, self.step
        _set_frame(rr, index)
        pts = world_points(np.nan_to_num(res.depth, nan=0.0)[None], res.pose[None].astype(
            np.float32), res.intrinsics[None].astype(np.float32))[0]  # fmt: skip
        keep = (res.conf > self.conf_threshold) & np.isfinite(res.depth)
        rgb = image.copy()
        rgb[res.dynamic_mask] = (0.5 * rgb[res.dynamic_mask] + [127, 0, 0]).astype(np.uint8)
        keep, pts, rgb = keep[::s, ::s], pts[::s, ::s], rgb[::s, ::s]
        rr.log("world/points", rr.Points3D(pts[keep], colors=rgb[keep], radii=-1.5))
        _log_camera(rr, res.pose, res.intrinsics, image)
        self.centres.append(res.pose[:3, 3].copy())
        rr.log("world/trajectory", rr.LineStrips3D([np.stack(self.centres)]))

    def close(self) -> None:
        """Flush what was logged (rerun writes from a background thread) and close the
        recording: a ``save`` file is complete when this returns."""
        self.rr.disconnect()


def _set_frame(rr: Any, i: int) -> None:
    if hasattr(rr, "set_time"):  # rerun ≥ 0.23
        rr.set_time("frame", sequence=i)
    else:  # pragma: no cover - older rerun
        rr.set_time_sequence("frame", i)


def render_png(
    recon: Reconstruction | str | os.PathLike[str],
    path: str | os.PathLike[str],
    frame: int | None = None,
    size: tuple[int, int] = (720, 1280),
    conf_threshold: float = 1.1,
) -> np.ndarray:
    """Render the static background, one frame's dynamic points and all camera frusta from a
    virtual camera behind and above the trajectory, to a PNG (no display, no extra dependency).

    Args:
        recon: a :class:`Reconstruction` or an output folder.
        path: PNG to write.
        frame: whose dynamic points to draw (default: the middle frame).
        size: ``(H, W)`` of the image.
        conf_threshold: keep pixels with raw confidence above this.

    Returns:
        the (H,W,3) uint8 RGB image.

    Raises:
        ValueError / FileNotFoundError before any rendering: an image type OpenCV cannot write,
        a missing folder for ``path``, ``frame`` outside ``0..N-1``.
    """
    out = os.fspath(path)
    if not cv2.haveImageWriter(out):
        raise ValueError(f"{out}: cannot write this image type; use .png or .jpg")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise FileNotFoundError(f"{out}: folder {os.path.dirname(os.path.abspath(out))} does "
                                "not exist")  # fmt: skip
    if not isinstance(recon, Reconstruction):
        recon = Reconstruction.load(recon)
    frame = len(recon) // 2 if frame is None else frame
    if not 0 <= frame < len(recon):
        raise ValueError(f"frame {frame} is out of range: the reconstruction has {len(recon)} "
                         f"frames (0..{len(recon) - 1})")  # fmt: skip
    static, s_rgb = recon.point_cloud(conf_threshold=conf_threshold, static_only=True)
    keep = (recon.conf[frame] > conf_threshold) & recon.dynamic_masks[frame]
    pts = np.concatenate([static, recon.pts3d[frame][keep]])
    rgb = np.concatenate([s_rgb, recon.frames[frame][keep]])
    centres = recon.poses[:, :3, 3].astype(np.float64)
    # virtual camera: the first camera's orientation, pulled back and up by the scene's depth
    rot = recon.poses[0, :3, :3].astype(np.float64)
    depth = float(np.median(recon.depths[np.isfinite(recon.depths)]))
    eye = centres.mean(0) + rot @ np.array([0.0, -0.6, -1.2]) * depth
    tilt = rotvec_to_rotmat([-0.35, 0.0, 0.0])  # look slightly down
    w2c_r = (rot @ tilt).T
    h, w = size
    f = 0.8 * w
    img = np.full((h, w, 3), 24, np.uint8)

    def to_image(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = (x - eye) @ w2c_r.T
        return project(c, f, (w / 2, h / 2)), c[:, 2]

    uv, z = to_image(pts.astype(np.float64))
    ok = (z > 1e-6) & np.isfinite(uv).all(1) & (uv[:, 0] >= 0) & (uv[:, 0] < w - 1)
    ok &= (uv[:, 1] >= 0) & (uv[:, 1] < h - 1)
    order = np.argsort(-z[ok])  # far to near: near points are drawn last
    u, v = uv[ok][order].astype(int).T
    img[v, u] = rgb[ok][order]
    img[v + 1, u] = rgb[ok][order]
    img[v, u + 1] = rgb[ok][order]
    for n, (pose, k) in enumerate(zip(recon.poses, recon.intrinsics, strict=True)):
        seg = frustum_lines(pose.astype(np.float64), k, *recon.depths.shape[:0:-1], 0.15 * depth)
        suv, sz = to_image(seg)
        t = n / max(len(recon) - 1, 1)
        colour = (int(255 * t), int(80 + 120 * (1 - t)), int(255 * (1 - t)))
        for a in range(0, len(seg), 2):
            if sz[a] > 1e-6 and sz[a + 1] > 1e-6:
                p0 = tuple(np.clip(np.round(suv[a]), -1e5, 1e5).astype(int).tolist())
                p1 = tuple(np.clip(np.round(suv[a + 1]), -1e5, 1e5).astype(int).tolist())
                cv2.line(img, p0, p1, colour, 1, cv2.LINE_AA)
    if not cv2.imwrite(out, img[..., ::-1]):
        raise OSError(f"{out}: cannot write the image")
    return img
