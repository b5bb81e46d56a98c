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
from ._device import current_stream, device_pointer, empty_like_shape, is_cuda_array

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
            array (then the CUDA kernel runs and the result stays on the device).
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
        return _cuda(depth, _args(depth, *geometry), measured)
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    args = _args(depth, *geometry)
    if measured is None:
        return _core.ego_flow(depth, *args)
    measured = np.ascontiguousarray(measured, dtype=np.float32)
    return _core.ego_flow(depth, *args, measured=measured, return_flow=False)


def _cuda(depth: Any, args: tuple, measured: Any | None = None) -> tuple[Any, Any]:
    if not _core.has_cuda:
        raise RuntimeError(
            "depth is a CUDA array but monst3r_rt._core was built without CUDA kernels: "
            f"{_core.build_info()['cuda_reason']}"
        )
    m, h, w = (int(s) for s in depth.shape)
    small = [_like(depth, a) for a in args]  # a few floats per map, copied next to depth
    names = ("focal_src", "pp_src", "focal_tgt", "pp_tgt", "rot", "trans")
    ptrs = [device_pointer(depth, "depth", (m, h, w))]
    ptrs += [device_pointer(d, n, tuple(d.shape)) for d, n in zip(small, names, strict=True)]
    flow = error = None
    if measured is None:
        flow = empty_like_shape(depth, (m, 2, h, w))
        ptrs += [0, device_pointer(flow, "flow", (m, 2, h, w)), 0]
    else:
        error = empty_like_shape(depth, (m, h, w))
        ptrs += [device_pointer(measured, "measured", (m, 2, h, w)), 0]
        ptrs += [device_pointer(error, "error", (m, h, w))]
    _core.ego_flow_cuda(ptrs, m, h, w, current_stream(depth))
    return flow, error


def _like(ref: Any, a: np.ndarray) -> Any:
    """Contiguous float32 ``a`` as an array of ``ref``'s library, on its device."""
    if type(ref).__module__.startswith("torch"):
        import torch

        return torch.from_numpy(a).to(ref.device)
    import cupy

    return cupy.asarray(a)
