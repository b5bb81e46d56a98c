"""Camera geometry ops, thin wrappers over ``monst3r_rt._core`` (CPU and CUDA twins)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._device import current_stream, device_pointer, empty_like_shape, is_cuda_array


def depth_to_points(depth: Any, focal: Any, pp: Any | None = None) -> Any:
    """Back-project z-depth maps into camera-frame pointmaps.

    Args:
        depth: (N,H,W) float32 z-depth (any unit); numpy, or a torch CUDA tensor / CuPy array.
        focal: (N,) focal lengths in pixels.
        pp: (N,2) principal points (cx, cy) in pixels; default (W/2, H/2) as in MonST3R.

    Returns:
        (N,H,W,3) float32 points in each view's camera frame (x right, y down, z forward), on the
        same device and library as ``depth``. Pixel (x, y) has its centre at integer coordinates.
    """
    if is_cuda_array(depth):
        return _depth_to_points_cuda(depth, focal, pp)
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    if depth.ndim != 3:
        raise ValueError(f"depth must have shape (N,H,W), got {depth.shape}")
    n, h, w = depth.shape
    focal = np.ascontiguousarray(np.broadcast_to(np.asarray(focal, np.float32), (n,)))
    if pp is None:
        pp = np.tile(np.array([w / 2, h / 2], np.float32), (n, 1))
    return _core.depth_to_points(depth, focal, np.ascontiguousarray(pp, dtype=np.float32))


def _depth_to_points_cuda(depth: Any, focal: Any, pp: Any | None) -> Any:
    if not _core.has_cuda:
        raise RuntimeError(
            "depth is a CUDA array but monst3r_rt._core was built without CUDA kernels: "
            f"{_core.build_info()['cuda_reason']}"
        )
    if len(depth.shape) != 3:
        raise ValueError(f"depth must have shape (N,H,W), got {tuple(depth.shape)}")
    n, h, w = (int(s) for s in depth.shape)
    if pp is None:
        pp = empty_like_shape(depth, (n, 2))
        pp[:, 0] = w / 2
        pp[:, 1] = h / 2
    out = empty_like_shape(depth, (n, h, w, 3))
    _core.depth_to_points_cuda(
        device_pointer(depth, "depth", (n, h, w)),
        device_pointer(focal, "focal", (n,)),
        device_pointer(pp, "pp", (n, 2)),
        device_pointer(out, "points", (n, h, w, 3)),
        n,
        h,
        w,
        current_stream(depth),
    )
    return out


def world_points(depth: Any, cam_to_world: Any, intrinsics: Any) -> Any:
    """World-frame pointmaps of z-depth maps, camera-to-world poses and pinhole intrinsics.

    Args:
        depth: (N,H,W) float32 z-depth (any unit); numpy, or a torch CUDA tensor / CuPy array
            (then the other two arrays must be float32 contiguous on the same device).
        cam_to_world: (N,4,4) camera-to-world ``[R | t]`` (OpenCV axes: x right, y down,
            z forward); the last row is not read.
        intrinsics: (N,3,3) ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels (no skew).

    Returns:
        (N,H,W,3) float32 world points ``R · D·K⁻¹[x, y, 1] + t`` in the unit of ``depth``, on
        the device and library of ``depth``; pixel (x, y) has its centre at integer coordinates.
    """
    if not is_cuda_array(depth):
        return _core.world_points(depth, cam_to_world, intrinsics)
    if len(depth.shape) != 3:
        raise ValueError(f"depth must have shape (N,H,W), got {tuple(depth.shape)}")
    n, h, w = (int(s) for s in depth.shape)
    out = empty_like_shape(depth, (n, h, w, 3))
    pointers = [
        device_pointer(depth, "depth", (n, h, w)),
        device_pointer(cam_to_world, "cam_to_world", (n, 4, 4)),
        device_pointer(intrinsics, "intrinsics", (n, 3, 3)),
        device_pointer(out, "points", (n, h, w, 3)),
    ]
    _core.world_points_cuda(pointers, n, h, w, current_stream(depth))
    return out
