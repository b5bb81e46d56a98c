"""Camera geometry, written once for the whole package: rotations and quaternions, poses,
(un)projection, weighted Sim(3) registration, Weiszfeld focal, PnP.

Conventions (those of MonST3R / DUSt3R and OpenCV), used by every function here:

- camera frame: x right, y down, z forward; depth is z-depth (not the length of the ray);
- pixel ``(x, y)`` = (column, row), its centre at integer coordinates; pinhole intrinsics
  ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]`` with the focal ``f`` in pixels; MonST3R fixes the
  principal point at ``(W/2, H/2)``, the default wherever ``pp`` is optional;
- poses are camera-to-world 4x4 matrices ``[R | T]``: ``X_world = R X_cam + T`` (column vectors);
- a similarity (Sim(3)) ``(s, R, t)`` maps ``x -> s R x + t``; as a 4x4 matrix ``[s R | t]``;
- quaternions are unit quaternions of ``R``, in the order the function's name says: ``xyzw``
  (scalar last: roma, the optimiser's parameters, TUM files) or ``wxyz`` (scalar first: the
  official ``pred_traj.txt``, COLMAP).

Per-pixel work runs in :mod:`monst3r_rt._core` (C++/OpenMP, CUDA twins): :func:`depth_to_points`,
:func:`pair_moments`, :func:`estimate_focal`; the small closed forms (a 3x3 SVD) run in NumPy
float64. ``align/reference.py`` and the tests keep their own, independent formulas on purpose.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from . import _core
from ._device import (
    empty_like_shape,
    host_per_view,
    is_cuda_array,
    on_device,
    per_view,
    require_cuda_kernels,
)

__all__ = [
    "pixel_grid", "intrinsic_matrix",
    "quat_xyzw_to_rotmat", "quat_wxyz_to_rotmat", "rotmat_to_quat_xyzw", "rotmat_to_quat_wxyz",
    "rotvec_to_rotmat",
    "skew",
    "relative_pose", "relative_pose_rt", "sim3_matrix", "transform_points",
    "unproject", "unproject_depth", "project", "frustum_lines", "depth_to_points",
    "PairMoments", "pair_moments", "umeyama", "weighted_procrustes",
    "estimate_focal", "pnp_ransac", "fast_pnp", "world_points",
]  # fmt: skip


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


# ------------------------------------------------------------------------------------------------
# pixels and intrinsics
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def pixel_grid(h: int, w: int) -> np.ndarray:
    """(H,W,2) float32 pixel coordinates ``(x, y)`` = (column, row); cached, read-only."""
    ys, xs = np.mgrid[:h, :w]
    grid = np.stack([xs, ys], axis=-1).astype(np.float32)
    grid.flags.writeable = False
    return grid


def _pp(pp: Sequence[float] | np.ndarray | None, h: int, w: int) -> tuple[float, float]:
    """``(cx, cy)`` as floats; ``(W/2, H/2)`` when ``pp`` is None."""
    return (w / 2, h / 2) if pp is None else (float(pp[0]), float(pp[1]))


def intrinsic_matrix(focal: float, pp: Sequence[float], dtype: type = np.float64) -> np.ndarray:
    """(3,3) pinhole matrix ``[[f, 0, cx], [0, f, cy], [0, 0, 1]]`` in ``dtype`` (pixels)."""
    cx, cy = pp
    return np.array([[focal, 0, cx], [0, focal, cy], [0, 0, 1]], dtype=dtype)


# ------------------------------------------------------------------------------------------------
# rotations
# ------------------------------------------------------------------------------------------------
def quat_xyzw_to_rotmat(q: np.ndarray) -> np.ndarray:
    """(...,4) XYZW quaternions, normalised here (any non-zero norm) -> (...,3,3) rotations, in
    the input's floating dtype."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    ).reshape(q.shape[:-1] + (3, 3))  # fmt: skip


def quat_wxyz_to_rotmat(q: np.ndarray) -> np.ndarray:
    """(...,4) WXYZ (scalar-first) quaternions, normalised here -> (...,3,3) rotations."""
    q = np.asarray(q)
    return quat_xyzw_to_rotmat(q[..., [1, 2, 3, 0]])


def rotmat_to_quat_xyzw(rot: np.ndarray, positive_w: bool = False) -> np.ndarray:
    """(...,3,3) rotation matrices -> (...,4) float64 unit quaternions ``[qx, qy, qz, qw]``.

    The branch (largest of the three diagonal entries and the trace) is that of
    ``roma.rotmat_to_unitquat``, so the quaternion's sign matches the official initialisation;
    ``positive_w`` flips it to ``qw >= 0`` instead (the usual convention of trajectory files).
    """
    m = np.asarray(rot, dtype=np.float64)
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"rotmat_to_quat: rot must have shape (...,3,3), got {m.shape}")
    diag = np.diagonal(m, axis1=-2, axis2=-1)
    decision = np.concatenate([diag, diag.sum(-1, keepdims=True)], -1)
    choice = np.argmax(decision, axis=-1)
    q = np.empty(m.shape[:-2] + (4,))
    for i in range(3):  # q_i is the largest component
        j, k = (i + 1) % 3, (i + 2) % 3
        sel = choice == i
        q[sel, i] = 1.0 - decision[sel, 3] + 2.0 * m[sel, i, i]
        q[sel, j] = m[sel, j, i] + m[sel, i, j]
        q[sel, k] = m[sel, k, i] + m[sel, i, k]
        q[sel, 3] = m[sel, k, j] - m[sel, j, k]
    sel = choice == 3  # the trace is largest: q_w
    q[sel, 0] = m[sel, 2, 1] - m[sel, 1, 2]
    q[sel, 1] = m[sel, 0, 2] - m[sel, 2, 0]
    q[sel, 2] = m[sel, 1, 0] - m[sel, 0, 1]
    q[sel, 3] = 1.0 + decision[sel, 3]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:] < 0, -q, q) if positive_w else q


def rotmat_to_quat_wxyz(rot: np.ndarray, positive_w: bool = False) -> np.ndarray:
    """(...,3,3) rotations -> (...,4) float64 unit quaternions ``[qw, qx, qy, qz]`` (scalar
    first); same branch and sign rules as :func:`rotmat_to_quat_xyzw`."""
    return rotmat_to_quat_xyzw(rot, positive_w)[..., [3, 0, 1, 2]]


_LEVI = np.zeros((3, 3, 3))
for _i, _j, _k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
    _LEVI[_i, _j, _k], _LEVI[_i, _k, _j] = 1.0, -1.0


def skew(v: np.ndarray) -> np.ndarray:
    """(...,3) → (...,3,3) cross-product matrices: ``skew(v) @ x = v × x``."""
    return -np.einsum("ijk,...k->...ij", _LEVI, np.asarray(v))


def rotvec_to_rotmat(rotvec: Sequence[float] | np.ndarray) -> np.ndarray:
    """(...,3) axis-angle vectors (radians) → (...,3,3) float64 rotations (Rodrigues; a
    second-order series below 1e-8 rad, so tiny angles are exact to rounding)."""
    w = np.asarray(rotvec, np.float64)
    th = np.linalg.norm(w, axis=-1)[..., None, None]
    k = skew(w)
    small = th < 1e-8
    ths = np.where(small, 1.0, th)
    a = np.where(small, 1.0 - th**2 / 6, np.sin(ths) / ths)
    b = np.where(small, 0.5 - th**2 / 24, (1 - np.cos(ths)) / ths**2)
    return np.eye(3) + a * k + b * (k @ k)


# ------------------------------------------------------------------------------------------------
# poses and similarities
# ------------------------------------------------------------------------------------------------
def relative_pose_rt(
    rot_src: np.ndarray, trans_src: np.ndarray, rot_tgt: np.ndarray, trans_tgt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Relative pose mapping the source camera to the target camera, from camera-to-world
    rotations (...,3,3) and translations (...,3): ``X_tgt = R X_src + t`` with
    ``R = R_tgtᵀ R_src`` and ``t = R_tgtᵀ (T_src − T_tgt)``. Returns ``(R (...,3,3), t (...,3))``.
    """
    rot = np.swapaxes(rot_tgt, -1, -2) @ rot_src
    trans = np.einsum("...ji,...j->...i", rot_tgt, trans_src - trans_tgt)
    return rot, trans


def relative_pose(
    cam2world_src: np.ndarray, cam2world_tgt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`relative_pose_rt` of (...,4,4) camera-to-world poses: ``(R, t)`` (...,3,3), (...,3)
    mapping source camera coordinates to target camera coordinates."""
    return relative_pose_rt(
        cam2world_src[..., :3, :3], cam2world_src[..., :3, 3],
        cam2world_tgt[..., :3, :3], cam2world_tgt[..., :3, 3],
    )  # fmt: skip


def sim3_matrix(scale: float, rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """(4,4) float64 ``[s R | t]`` of the similarity ``x -> s R x + t`` (``s = 1``: SE(3))."""
    trf = np.eye(4)
    trf[:3, :3] = scale * rot
    trf[:3, 3] = trans
    return trf


def transform_points(trf: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a (4,4) or (3,4) transform ``[A | t]`` (rigid, similarity or affine) to (...,3)
    points: ``A x + t``, in the promoted dtype. Non-finite points stay non-finite, silently."""
    with np.errstate(invalid="ignore", over="ignore"):
        return pts @ trf[:3, :3].T + trf[:3, 3]


# ------------------------------------------------------------------------------------------------
# projection
# ------------------------------------------------------------------------------------------------
def unproject(
    pixels: np.ndarray,
    depth: np.ndarray | float,
    focal: float | Sequence[float],
    pp: Sequence[float],
) -> np.ndarray:
    """Back-project pixels with known z-depth into the camera frame, in float64.

    Args:
        pixels: (...,2) pixel coordinates ``(x, y)``.
        depth: (...) z-depth of each pixel (any unit), broadcast against ``pixels[..., 0]``.
        focal: focal length in pixels, or ``(fx, fy)``.
        pp: principal point ``(cx, cy)`` in pixels.

    Returns:
        (...,3) float64 camera-frame points ``depth * ((x - cx) / fx, (y - cy) / fy, 1)``.
    """
    xy = (np.asarray(pixels, np.float64) - np.asarray(pp, np.float64)) / np.asarray(focal)
    rays = np.concatenate([xy, np.ones(xy.shape[:-1] + (1,))], -1)
    return rays * np.asarray(depth, np.float64)[..., None]


def unproject_depth(
    depth: np.ndarray, focal: float | Sequence[float], pp: Sequence[float] | None = None
) -> np.ndarray:
    """(...,H,W,3) float64 camera-frame points of (...,H,W) z-depth maps (NumPy, float64: for
    ground truth and references; :func:`depth_to_points` is the fast float32 kernel).

    ``focal``: pixels, or ``(fx, fy)``; ``pp``: ``(cx, cy)``, default ``(W/2, H/2)``.
    """
    depth = np.asarray(depth)
    h, w = depth.shape[-2:]
    return unproject(pixel_grid(h, w), depth, focal, _pp(pp, h, w))


def project(pts: np.ndarray, focal: float, pp: Sequence[float]) -> np.ndarray:
    """Pixel coordinates (...,2) ``(x, y) = (f X / Z + cx, f Y / Z + cy)`` of camera-frame points
    (...,3) (float64 for float64 input); points at ``Z = 0`` give inf/NaN, silently."""
    pts = np.asarray(pts)
    z = pts[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([focal * pts[..., 0] / z + pp[0], focal * pts[..., 1] / z + pp[1]], -1)


def frustum_lines(cam2world: np.ndarray, k: np.ndarray, w: int, h: int, size: float) -> np.ndarray:
    """(16,3) endpoints of the 8 line segments of a camera frustum (centre to the 4 image
    corners, then the image rectangle) whose image plane lies at z-depth ``size``, world frame.

    Args:
        cam2world: (4,4) camera-to-world pose.
        k: (3,3) intrinsics in pixels.
        w, h: image size in pixels.
        size: depth of the drawn image plane, in world units.
    """
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], float) @ np.linalg.inv(k).T
    corners *= size
    c = [np.zeros(3), *corners]
    seg = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1)]
    return transform_points(cam2world, np.array([p for a, b in seg for p in (c[a], c[b])]))


# ------------------------------------------------------------------------------------------------
# weighted Sim(3) registration (Umeyama)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairMoments:
    """Weighted first and second moments of point pairs ``(x_k, y_k)`` with weights ``w_k``
    (float64; pairs with a non-finite value left out): all a weighted Umeyama fit needs.

    Attributes:
        weight: ``Σ w``.
        sum_src: (3,) ``Σ w x``.
        sum_dst: (3,) ``Σ w y``.
        sum_src_dst: (3,3) ``Σ w x yᵀ``.
        sum_src_sq: ``Σ w |x|²``.
    """

    weight: float
    sum_src: np.ndarray
    sum_dst: np.ndarray
    sum_src_dst: np.ndarray
    sum_src_sq: float

    @classmethod
    def from_array(cls, m: np.ndarray) -> PairMoments:
        """From the kernel's (17,) layout ``[Σw, Σwx (3), Σwy (3), Σw x yᵀ (9), Σw|x|²]``."""
        m = np.asarray(m, np.float64)
        return cls(float(m[0]), m[1:4], m[4:7], m[7:16].reshape(3, 3), float(m[16]))


def pair_moments(src: Any, dst: Any, weights: Any | None = None, threads: int = 0) -> PairMoments:
    """Moments of the pixel-aligned pairs ``(src[k], dst[k])`` weighted by ``weights[k]``, in one
    pass of the C++ kernel (float64 sums) or its CUDA twin.

    Args:
        src, dst: (...,3) points of the same shape (flattened to (M,3)); float32 arrays are read
            as they are, anything else as float64. torch CUDA tensors / CuPy arrays (float32,
            contiguous) run the CUDA kernel.
        weights: M non-negative weights (any shape), or None for 1.
        threads: OpenMP threads of the CPU kernel (0: the core's setting; 1 inside a thread pool).

    Returns:
        :class:`PairMoments` (host, float64).

    Raises:
        ValueError: naming the array, on mismatched shapes.
    """
    if is_cuda_array(src):
        return _pair_moments_cuda(src, dst, weights)
    src, dst = np.asarray(src), np.asarray(dst)
    weights = None if weights is None else np.asarray(weights)
    m = _pair_count(src.shape, dst.shape, None if weights is None else weights.shape)
    arrays = (src, dst) if weights is None else (src, dst, weights)
    dt = np.float32 if all(a.dtype == np.float32 for a in arrays) else np.float64
    if weights is not None:
        weights = np.ascontiguousarray(weights, dt).reshape(1, m)
    x = np.ascontiguousarray(src, dt).reshape(1, m, 3)
    y = np.ascontiguousarray(dst, dt).reshape(1, m, 3)
    return PairMoments.from_array(_core.pair_moments(x, y, weights, threads)[0])


def _pair_count(src: tuple, dst: tuple, weights: tuple | None) -> int:
    """M, the number of pairs, of ``pair_moments``' array shapes, or ValueError naming the
    array: src (...,3), dst of src's shape, weights of M elements (any shape) or None."""
    src, dst = tuple(int(s) for s in src), tuple(int(s) for s in dst)
    if src[-1:] != (3,) or src != dst:
        raise ValueError(f"pair_moments: src {src} and dst {dst} differ or are not (...,3)")
    m = int(np.prod(src[:-1], dtype=np.int64))
    size = None if weights is None else int(np.prod(weights, dtype=np.int64))
    if size is not None and size != m:
        raise ValueError(
            f"pair_moments: weights must have {m} elements (src {src}), got shape {tuple(weights)}"
        )
    return m


def _pair_moments_cuda(src: Any, dst: Any, weights: Any | None) -> PairMoments:
    require_cuda_kernels("src")
    m = _pair_count(src.shape, dst.shape, None if weights is None else weights.shape)
    with on_device(src) as stream:
        x, y = src.reshape(1, m, 3), dst.reshape(1, m, 3)
        w = None if weights is None else weights.reshape(1, m)
        out = empty_like_shape(src, (1, 17), np.float64)
        _core.pair_moments_cuda(x, y, w, out, stream=stream)
    host = out.cpu().numpy() if hasattr(out, "cpu") else out.get()
    return PairMoments.from_array(host[0])


def umeyama(moments: PairMoments, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Closed-form weighted Umeyama similarity ``y ~= s R x + t`` from :class:`PairMoments`.

    Minimises ``Σ w_k |s R x_k + t − y_k|²``: with ``W = Σ w``, means ``μx, μy`` and the
    cross-covariance ``C = Σ w (y − μy)(x − μx)ᵀ / W = (Σ w x yᵀ)ᵀ / W − μy μxᵀ``, the rotation is
    the special Procrustes solution ``U Vᵀ`` of ``C = U D Vᵀ`` (the smallest singular value
    sign-flipped when ``det(U Vᵀ) < 0``), the scale ``s`` = (sum of those signed singular
    values) / ``σx²`` with ``σx² = Σ w |x|² / W − |μx|²``, and ``t = μy − s R μx``
    (``roma.rigid_points_registration`` semantics). Centring from raw moments loses about
    ``log10(|μx|² / σx²)`` of float64's 16 digits: nothing for pointmaps (a few units of spread
    around a mean a few units away).

    Returns:
        ``(s, R, t)``: float scale (1 when not ``with_scale``), (3,3) and (3,) float64.

    Raises:
        ValueError: when the weights do not have a positive sum, or (``with_scale``) the source
            is degenerate: its weighted variance is zero up to the rounding of the moments.
    """
    total = moments.weight
    if not total > 0:
        raise ValueError(
            "weighted_procrustes: the weights must have a positive sum over finite pairs"
        )
    mx = moments.sum_src / total
    my = moments.sum_dst / total
    cov = moments.sum_src_dst.T / total - np.outer(my, mx)
    u, sv, vt = np.linalg.svd(cov)
    if np.linalg.det(u @ vt) < 0:
        u[:, -1] *= -1
        sv[-1] *= -1
    rot = u @ vt
    scale = 1.0
    if with_scale:
        second = moments.sum_src_sq / total
        sigma2_x = second - float(mx @ mx)
        if not sigma2_x > 16 * np.finfo(np.float64).eps * second:
            raise ValueError("weighted_procrustes: degenerate source (zero weighted variance)")
        scale = float(sv.sum() / sigma2_x)
    return scale, rot, my - scale * rot @ mx


def weighted_procrustes(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray | None = None,
    with_scale: bool = True,
    threads: int = 0,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted Umeyama similarity ``dst ~= s * R @ src + T`` of pixel-aligned point sets
    (``roma.rigid_points_registration(src, dst, weights, compute_scaling=True)`` semantics):
    :func:`pair_moments` (C++) then :func:`umeyama`. Pairs with a non-finite coordinate or
    weight get weight 0 (masked predictions).

    Args:
        src: (M,3) (or (...,3), flattened) source points.
        dst: target points, same shape as ``src``.
        weights: M non-negative weights (any shape); ``None`` = uniform.
        with_scale: estimate ``s``; otherwise ``s = 1`` (rigid registration).
        threads: OpenMP threads of the moments kernel (0: default; 1 inside a thread pool).

    Returns:
        ``(s, R, T)``: float scale, (3,3) float64 rotation, (3,) float64 translation.

    Raises:
        ValueError: on mismatched shapes, non-positive total weight, or a degenerate source
            (all weighted points coincide) when ``with_scale``.
    """
    return umeyama(pair_moments(src, dst, weights, threads), with_scale)


# ------------------------------------------------------------------------------------------------
# focal and PnP
# ------------------------------------------------------------------------------------------------
def estimate_focal(
    pts: np.ndarray,
    pp: Sequence[float] | np.ndarray | None = None,
    iters: int = 10,
    weights: np.ndarray | None = None,
    threads: int = 0,
) -> float:
    """Focal length of a camera-frame pointmap (``post_process.estimate_focal_knowing_depth``,
    ``focal_mode='weiszfeld'``, no clipping).

    Minimises ``sum_p |pixel_p - pp - f * (x_p, y_p) / z_p|`` (an L1 over 2-D residual norms) by
    iteratively re-weighted least squares: the closed-form L2 solution, then ``iters`` re-weightings
    by ``1 / max(residual, 1e-8)``. Non-finite ``x/z`` or ``y/z`` are replaced by 0 as officially;
    pixels whose point has a non-finite coordinate (masked predictions) are left out (an
    extension). Runs in the C++ core (``_core.estimate_focal``, float64 accumulation).

    Args:
        pts: (H,W,3) points in the camera frame (any unit).
        pp: principal point ``(cx, cy)`` in pixels; default ``(W/2, H/2)``.
        iters: number of IRLS iterations (10 officially).
        weights: optional (H,W) non-negative per-pixel weights multiplying the IRLS weights
            (an extension; ``None`` is the official behaviour).
        threads: OpenMP threads of the kernel (0: the core's setting; 1 inside a thread pool).

    Returns:
        The focal length in pixels.
    """
    pts = np.asarray(pts)
    if pts.ndim != 3 or pts.shape[-1] != 3:
        raise ValueError(f"estimate_focal: pts must have shape (H,W,3), got {pts.shape}")
    h, w, _ = pts.shape
    if weights is not None:
        weights = np.asarray(weights, np.float32)
        if weights.shape != (h, w):
            raise ValueError(
                f"estimate_focal: weights must have shape {(h, w)}, got {weights.shape}"
            )
    cx, cy = _pp(pp, h, w)
    focal = _core.estimate_focal(
        np.ascontiguousarray(pts, np.float32), weights, cx, cy, iters, threads
    )
    if not np.isfinite(focal):
        raise ValueError("estimate_focal: no finite point with a positive weight")
    return float(focal)


def pnp_ransac(
    obj: np.ndarray, img: np.ndarray, k: np.ndarray, niter: int, reproj_error: float
) -> tuple[int, np.ndarray, np.ndarray] | None:
    """World-to-camera pose from 3-D/2-D correspondences: ``cv2.solvePnPRansac`` with SQPnP, no
    distortion.

    Args:
        obj: (M,3) float32 points (M >= 4), world frame.
        img: (M,2) float32 pixels ``(x, y)`` where they are seen.
        k: (3,3) intrinsics (its dtype is passed to OpenCV as is).
        niter: RANSAC iterations.
        reproj_error: inlier threshold in pixels.

    Returns:
        ``(inliers, R, t)``: the RANSAC inlier count, (3,3) and (3,) float64 world-to-camera
        rotation and translation (``X_cam = R X + t``); None when OpenCV fails or finds nothing.
    """
    try:
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            obj, img, k, None, iterationsCount=niter, reprojectionError=reproj_error,
            flags=cv2.SOLVEPNP_SQPNP,
        )  # fmt: skip
    except cv2.error:
        return None
    if not ok or inliers is None:
        return None
    rot = cv2.Rodrigues(np.asarray(rvec, np.float64))[0]
    return len(inliers), rot, np.asarray(tvec, np.float64).reshape(3)


def fast_pnp(
    pts3d: np.ndarray,
    focal: float | None,
    mask: np.ndarray,
    pp: Sequence[float] | np.ndarray | None = None,
    niter: int = 10,
    reproj_error: float = 5.0,
) -> tuple[float, np.ndarray] | None:
    """Camera pose (and focal, when unknown) from a world-frame pointmap by RANSAC-PnP
    (``init_im_poses.fast_pnp``).

    :func:`pnp_ransac` (SQPnP), ``niter`` iterations and a ``reproj_error`` pixel threshold on
    the masked pixels. With ``focal=None`` 21 focals on ``geomspace(S/2, 3S)``
    (``S = max(H, W)``) are tried and the one with the most inliers wins (first one on ties).

    Args:
        pts3d: (H,W,3) world points seen at each pixel.
        focal: focal length in pixels, or ``None`` to search it.
        mask: (H,W) bool, pixels to use (pixels with non-finite points are dropped).
        pp: principal point ``(cx, cy)``; default ``(W/2, H/2)``.
        niter: RANSAC iterations (10 in ``init='mst'``, 100 in ``PairViewer``).
        reproj_error: RANSAC inlier threshold in pixels.

    Returns:
        ``(focal, cam2world)`` with a (4,4) float64 camera-to-world matrix, or ``None`` if fewer
        than 4 pixels are masked or every PnP attempt failed.
    """
    pts3d = np.asarray(pts3d)
    mask = np.asarray(mask, dtype=bool)
    if pts3d.ndim != 3 or pts3d.shape[-1] != 3:
        raise ValueError(f"fast_pnp: pts3d must have shape (H,W,3), got {pts3d.shape}")
    h, w, _ = pts3d.shape
    if mask.shape != (h, w):
        raise ValueError(f"fast_pnp: mask must have shape {(h, w)}, got {mask.shape}")
    mask = mask & np.isfinite(pts3d).all(-1)
    if mask.sum() < 4:
        return None
    obj = np.ascontiguousarray(pts3d[mask], dtype=np.float32)
    img = np.ascontiguousarray(pixel_grid(h, w)[mask])
    if focal is None:
        size = max(w, h)
        candidates = np.geomspace(size / 2, size * 3, 21).tolist()
    else:
        candidates = [float(focal)]
    centre = _pp(pp, h, w)
    best: tuple[int, np.ndarray, np.ndarray, float] | None = None
    for f in candidates:
        res = pnp_ransac(obj, img, intrinsic_matrix(f, centre, np.float32), niter, reproj_error)
        if res is not None and (best is None or res[0] > best[0]):
            best = (*res, f)
    if best is None or best[0] == 0:
        return None
    _, rot_w2c, t_w2c, best_focal = best
    cam2world = np.eye(4)
    cam2world[:3, :3] = rot_w2c.T
    cam2world[:3, 3] = -rot_w2c.T @ t_w2c
    return float(best_focal), cam2world


def world_points(depth: Any, cam_to_world: Any, intrinsics: Any) -> Any:
    """World-frame pointmaps of z-depth maps, camera-to-world poses and pinhole intrinsics.

    Args:
        depth: (N,H,W) float32 z-depth (any unit); numpy, or a torch CUDA tensor / CuPy array
            (then host poses and intrinsics are copied next to it).
        cam_to_world: (N,4,4) camera-to-world ``[R | t]`` (OpenCV axes: x right, y down,
            z forward); the last row is not read.
        intrinsics: (N,3,3) ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels (no skew,
            finite non-zero focals: checked, except for intrinsics already on the GPU).

    Returns:
        (N,H,W,3) float32 world points ``R · D·K⁻¹[x, y, 1] + t`` in the unit of ``depth``, on
        the device and library of ``depth``; pixel (x, y) has its centre at integer coordinates.
    """
    if not is_cuda_array(depth):
        return _core.world_points(depth, cam_to_world, intrinsics)
    require_cuda_kernels("depth")
    if len(depth.shape) != 3:
        raise ValueError(f"depth must have shape (N,H,W), got {tuple(depth.shape)}")
    n, h, w = (int(s) for s in depth.shape)
    if not is_cuda_array(intrinsics):  # the CPU twin's rule, before the upload
        intrinsics = host_per_view(intrinsics, (n, 3, 3), "intrinsics")
        _core.check_intrinsics(intrinsics)
    with on_device(depth) as stream:
        pose = per_view(depth, cam_to_world, (n, 4, 4), "cam_to_world")
        k = per_view(depth, intrinsics, (n, 3, 3), "intrinsics")
        out = empty_like_shape(depth, (n, h, w, 3))
        _core.world_points_cuda(depth, pose, k, out, stream=stream)
    return out
