"""Camera geometry ops, thin wrappers over ``monst3r_rt._core`` (CPU and CUDA twins)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._device import empty_like_shape, is_cuda_array, on_device, per_view, require_cuda_kernels


def depth_to_points(depth: Any, focal: Any, pp: Any | None = None) -> Any:
    """Back-project z-depth maps into camera-frame pointmaps.

    Args:
        depth: (N,H,W) float32 z-depth (any unit); numpy, or a torch CUDA tensor / CuPy array.
        focal: (N,) focal lengths in pixels (or a scalar).
        pp: (N,2) principal points (cx, cy) in pixels; default (W/2, H/2) as in MonST3R.
            With CUDA ``depth``, CUDA ``focal`` / ``pp`` must be float32 on depth's GPU with
            exactly these shapes (checked); host values are broadcast and copied there.

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
    require_cuda_kernels("depth")
    if len(depth.shape) != 3:
        raise ValueError(f"depth must have shape (N,H,W), got {tuple(depth.shape)}")
    n, h, w = (int(s) for s in depth.shape)
    centre = np.array([w / 2, h / 2], np.float32)
    with on_device(depth) as stream:
        focal = per_view(depth, focal, (n,), "focal")
        pp = per_view(depth, centre if pp is None else pp, (n, 2), "pp")
        out = empty_like_shape(depth, (n, h, w, 3))
        _core.depth_to_points_cuda(depth, focal, pp, out, stream=stream)
    return out
