"""Ego-motion flow: the optical flow that camera motion alone induces (spec §4.5).

Thin wrappers over ``_core.ego_flow`` (C++/OpenMP) and ``_core.ego_flow_cuda``; the per-pixel math
(``csrc/include/monst3r/egoflow.h``) is the one the alignment's flow term uses. For a pixel
``x = (col, row)`` of the source view with z-depth ``D``, and the relative pose ``(R, t)`` that
maps the source camera to the target camera (``X_tgt = R X_src + t``,
:func:`monst3r_rt.geometry.relative_pose` of two camera-to-world poses)::

    ego(x) = π(K_tgt (R K_src⁻¹ x̃ + t / (D + 1e-6))) − x,   π(q) = q_xy / (q_z + 1e-6)

Note that ``t`` is divided by the depth (the official ``DepthBasedWarping`` on disparity); this is
the rigid flow of the point ``D·K_src⁻¹x̃`` up to the 1e-6 guards.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._device import empty_like_shape, is_cuda_array, on_device, per_view, require_cuda_kernels

__all__ = ["ego_flow", "ego_flow_error"]


def _per_map(x: Any, m: int, tail: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    try:
        return np.ascontiguousarray(np.broadcast_to(arr, (m, *tail)))
    except ValueError:
        raise ValueError(f"{name} must broadcast to {(m, *tail)}, got {arr.shape}") from None


def _args(depth: Any, focal_src, focal_tgt, rot, trans, pp_src, pp_tgt) -> tuple:
    if len(depth.shape) != 3:
        raise ValueError(f"depth must have shape (M,H,W), got {tuple(depth.shape)}")
    m, h, w = (int(s) for s in depth.shape)
    centre = np.array([w / 2, h / 2], np.float32)
    return (
        _per_map(focal_src, m, (), "focal_src"),
        _per_map(centre if pp_src is None else pp_src, m, (2,), "pp_src"),
        _per_map(focal_tgt, m, (), "focal_tgt"),
        _per_map(centre if pp_tgt is None else pp_tgt, m, (2,), "pp_tgt"),
        _per_map(rot, m, (3, 3), "rot"),
        _per_map(trans, m, (3,), "trans"),
    )


def ego_flow(
    depth: Any,
    focal_src: Any,
    focal_tgt: Any,
    rot: Any,
    trans: Any,
    pp_src: Any | None = None,
    pp_tgt: Any | None = None,
) -> Any:
    """Ego-motion flow of M source views.

    Args:
        depth: (M,H,W) float32 z-depth of the source views; numpy, or a torch CUDA tensor / CuPy
            array (then the CUDA kernel runs and the result stays on the device; the other
            arguments may then be host values, broadcast and copied to depth's GPU, or float32
            CUDA arrays of the full (M,…) shapes on that GPU).
        focal_src, focal_tgt: (M,) or scalar focal lengths in pixels.
        rot: (M,3,3) or (3,3) rotation mapping the source camera to the target camera.
        trans: (M,3) or (3,) translation of that map, in the unit of ``depth``.
        pp_src, pp_tgt: (M,2) or (2,) principal points in pixels; default ``(W/2, H/2)``.

    Returns:
        (M,2,H,W) float32 flow in pixels, channel 0 along x (columns), 1 along y (rows).
    """
    return _run(depth, (focal_src, focal_tgt, rot, trans, pp_src, pp_tgt))[0]


def ego_flow_error(
    depth: Any,
    focal_src: Any,
    focal_tgt: Any,
    rot: Any,
    trans: Any,
    measured: Any,
    pp_src: Any | None = None,
    pp_tgt: Any | None = None,
) -> Any:
    """Per-pixel end-point error ``‖ego − measured‖₂`` (M,H,W) float32, in one pass that never
    stores the ego-flow. ``measured``: (M,2,H,W) flow in pixels; other arguments as
    :func:`ego_flow`. CUDA arrays in, CUDA array out."""
    return _run(depth, (focal_src, focal_tgt, rot, trans, pp_src, pp_tgt), measured)[1]


def _run(depth: Any, geometry: tuple, measured: Any | None = None) -> tuple[Any, Any]:
    """``(flow, None)``, or ``(None, error)`` when ``measured`` is given, on depth's device."""
    if is_cuda_array(depth):
        return _cuda(depth, geometry, measured)
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    args = _args(depth, *geometry)
    if measured is None:
        return _core.ego_flow(depth, *args)
    measured = np.ascontiguousarray(measured, dtype=np.float32)
    return _core.ego_flow(depth, *args, measured=measured, return_flow=False)


def _cuda(depth: Any, geometry: tuple, measured: Any | None = None) -> tuple[Any, Any]:
    """The CUDA twin: CUDA per-map arguments pass through (checked by ``_core``), host ones are
    broadcast and copied next to ``depth``; ``measured`` must be on the GPU."""
    require_cuda_kernels("depth")
    if len(depth.shape) != 3:
        raise ValueError(f"depth must have shape (M,H,W), got {tuple(depth.shape)}")
    m, h, w = (int(s) for s in depth.shape)
    focal_src, focal_tgt, rot, trans, pp_src, pp_tgt = geometry
    centre = np.array([w / 2, h / 2], np.float32)
    with on_device(depth) as stream:
        kw = dict(
            focal_src=per_view(depth, focal_src, (m,), "focal_src"),
            pp_src=per_view(depth, centre if pp_src is None else pp_src, (m, 2), "pp_src"),
            focal_tgt=per_view(depth, focal_tgt, (m,), "focal_tgt"),
            pp_tgt=per_view(depth, centre if pp_tgt is None else pp_tgt, (m, 2), "pp_tgt"),
            rot=per_view(depth, rot, (m, 3, 3), "rot"),
            trans=per_view(depth, trans, (m, 3), "trans"),
        )
        if measured is None:
            flow = empty_like_shape(depth, (m, 2, h, w))
            _core.ego_flow_cuda(depth, **kw, flow=flow, stream=stream)
            return flow, None
        error = empty_like_shape(depth, (m, h, w))
        _core.ego_flow_cuda(depth, **kw, measured=measured, error=error, stream=stream)
        return None, error
