"""Tracking for the streaming mode: a robust Sim(3) registration of pixel-aligned points.

Frame t's camera-frame pointmap ``src`` is registered onto world points ``dst`` (the map's points
at the same pixels) by the similarity ``T = (s, R, t)``: ``x' = s R src + t``. The cost is

    Σ_p weight_p · ρ_k(‖r_p‖),   r_p = inv_sigma_p (x'_p − dst_p) ∈ R³,
    ρ_k(a) = ½a² (a <= k),  k(a − ½k) (a > k)   (Huber, threshold k = ``huber``),

with ``weight`` = confidence × static mask (0 = ignore) and ``inv_sigma`` a per-point inverse
noise scale (1/depth makes the residuals relative).

Anisotropic residual: monocular pointmap errors lie mostly along the viewing rays of the camera
whose pixels the points sit on (depth errors). Given per-point unit ``axis`` vectors ``a_p`` (that
camera's viewing rays in the world frame) and ``axial_weight`` ``w_a ∈ (0, 1]``,

    r_p = inv_sigma_p (e_p − (1 − √w_a)(a_p·e_p) a_p),   e_p = x'_p − dst_p,

i.e. the error across the ray at full weight and along it scaled by ``√w_a`` (so its square by
``w_a``); ``J_p`` is premultiplied by the same projector. ``axis=None`` (or ``w_a = 1``) is the
isotropic residual above. The per-point sums run in the C++ kernel
``_core.sim3_normal_equations`` (OpenMP) or its CUDA twin (math in
``csrc/include/monst3r/track.h``): for the left update ``ξ = (ω, v, λ)``,
``x'' = e^λ Exp(ω) x' + v``, with IRLS weights ``h_p = min(1, k/‖r_p‖)`` and
``J_p = inv_sigma_p [−[x'_p]× | I₃ | x'_p]``,

    H = Σ weight_p h_p J_pᵀ J_p (7x7),   g = Σ weight_p h_p J_pᵀ r_p (7),

summed in float64. :func:`track_sim3` starts from a closed-form weighted Umeyama fit (or a given
pose) and runs Gauss-Newton / IRLS with Levenberg-Marquardt damping on the 7x7 system in NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _core
from .._device import empty_like_shape, is_cuda_array, like, on_device, require_cuda_kernels
from ..geometry import pair_moments, rotvec_to_rotmat, sim3_matrix, transform_points, umeyama

__all__ = ["NormalEquations", "Sim3Fit", "sim3_normal_equations", "track_sim3"]

_NAMES = ("src", "dst", "weight", "inv_sigma")


@dataclass(frozen=True)
class NormalEquations:
    """The robust Sim(3) normal equations at one pose (float64, host).

    Attributes:
        hessian: (7,7) ``H = Σ w h JᵀJ`` in the order ``ξ = (ω, v, λ)``.
        gradient: (7,) ``g = Σ w h Jᵀ r``, the gradient of ``cost`` at ``ξ = 0``.
        cost: ``Σ w ρ_k(‖r‖)``.
        count: points used (weight > 0, inv_sigma > 0, every value finite, a non-zero axis).
        inliers: used points with ``‖r‖ <= k``.
    """

    hessian: np.ndarray
    gradient: np.ndarray
    cost: float
    count: int
    inliers: int

    @classmethod
    def from_array(cls, out: np.ndarray) -> NormalEquations:
        """From the CUDA kernel's (SIM3_NE_SIZE,) layout ``[H (49), g (7), cost, count,
        inliers]``."""
        out = np.asarray(out, np.float64)
        return cls(out[:49].reshape(7, 7), out[49:56], float(out[56]), int(out[57]),
                   int(out[58]))  # fmt: skip


@dataclass
class Sim3Fit:
    """A fitted similarity ``x -> scale · rot @ x + trans`` (src camera frame -> world).

    Attributes:
        scale: ``s`` > 0.
        rot: (3,3) float64 rotation.
        trans: (3,) float64 translation, world units.
        cost: robust cost at the fit (see the module docstring).
        iters: Levenberg-Marquardt steps tried (accepted or not), at most ``iters``.
        inlier_fraction: used points with ``‖r‖ <= huber``, over ``count``.
        count: points used (weight > 0, inv_sigma > 0, all values finite, a non-zero axis).
    """

    scale: float
    rot: np.ndarray
    trans: np.ndarray
    cost: float
    iters: int
    inlier_fraction: float
    count: int

    def matrix(self) -> np.ndarray:
        """(4,4) float64 ``[s R | t]``."""
        return sim3_matrix(self.scale, self.rot, self.trans)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """``s R p + t`` of (...,3) points (src camera frame -> world), float64."""
        return transform_points(self.matrix(), np.asarray(points, np.float64))


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in a.shape)


def _check_shapes(src: Any, dst: Any, weight: Any, inv_sigma: Any, entry: str) -> int:
    """M of ``src`` (M,3), dst (M,3), weight (M,), inv_sigma (M,), or ValueError naming the
    array with both shapes."""
    shape = _shape(src)
    if len(shape) != 2 or shape[1] != 3:
        raise ValueError(f"{entry}: src must have shape (M,3), got {shape}")
    m = shape[0]
    want = {"dst": (m, 3), "weight": (m,), "inv_sigma": (m,)}
    for name, a in zip(_NAMES[1:], (dst, weight, inv_sigma), strict=True):
        if _shape(a) != want[name]:
            raise ValueError(
                f"{entry}: {name} must have shape {want[name]} (src {shape}), got {_shape(a)}"
            )
    return m


def _check_axis(axis: Any, m: int, axial_weight: float, entry: str) -> None:
    """ValueError naming ``axis`` unless it is None or (M,3); naming ``axial_weight`` unless
    it is in (0, 1]."""
    if axis is not None and _shape(axis) != (m, 3):
        raise ValueError(f"{entry}: axis must have shape ({m}, 3) (src ({m}, 3)), got "
                         f"{_shape(axis)}")  # fmt: skip
    if not 0 < axial_weight <= 1:
        raise ValueError(f"{entry}: axial_weight must be in (0, 1], got {axial_weight!r}")


def _host(a: Any, name: str, entry: str) -> np.ndarray:
    """A C-contiguous float32 copy (or view) of a real host array, or ValueError naming it."""
    if is_cuda_array(a):
        raise ValueError(f"{entry}: {name} is a CUDA array; pass device='cuda' or a host array")
    arr = np.asarray(a)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{entry}: {name} must be a real array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, np.float32)


def _pose(scale: float, rot: Any, trans: Any, entry: str) -> tuple[float, np.ndarray, np.ndarray]:
    rot = np.ascontiguousarray(rot, np.float64)
    trans = np.ascontiguousarray(trans, np.float64)
    if rot.shape != (3, 3) or trans.shape != (3,):
        raise ValueError(
            f"{entry}: rot must have shape (3,3) and trans (3,), got {rot.shape} and {trans.shape}"
        )
    return float(scale), rot, trans


def sim3_normal_equations(
    src: Any,
    dst: Any,
    weight: Any,
    inv_sigma: Any,
    scale: float,
    rot: np.ndarray,
    trans: np.ndarray,
    huber: float,
    threads: int = 0,
    *,
    axis: Any | None = None,
    axial_weight: float = 1.0,
) -> NormalEquations:
    """Robust Sim(3) normal equations at the pose ``x' = scale · rot @ src + trans``.

    Args:
        src: (M,3) points in frame t's camera. Host arrays of any real dtype are read as
            float32; torch CUDA tensors / CuPy arrays (float32, C-contiguous, one GPU, checked
            by ``_core``) run the CUDA twin.
        dst: (M,3) target points (world).
        weight: (M,) weights >= 0 (0 = ignore).
        inv_sigma: (M,) inverse noise scales > 0.
        scale, rot, trans: the pose: float, (3,3) and (3,), host values.
        huber: Huber threshold ``k`` > 0 on ``‖r‖`` (``inf``: plain least squares).
        threads: OpenMP threads of the CPU kernel (0: the core's setting); the result does not
            depend on it.
        axis: None (isotropic residual) or (M,3) directions in the world (dst) frame, normalised
            by the kernel: the anisotropic residual of the module docstring. A zero or
            non-finite axis makes its point unused. Host or CUDA like ``src``.
        axial_weight: ``w_a`` in (0, 1], the weight of the error along the axis relative to the
            error across it (unused without an axis).

    Returns:
        :class:`NormalEquations` (host, float64).

    Raises:
        ValueError: naming the array, on a wrong shape or dtype; on a bad pose, ``huber`` or
            ``axial_weight``.
    """
    entry = "sim3_normal_equations"
    arrays = (src, dst, weight, inv_sigma)
    m = _check_shapes(*arrays, entry)
    _check_axis(axis, m, axial_weight, entry)
    axial = dict(axis=axis, axial_weight=float(axial_weight))
    scale, rot, trans = _pose(scale, rot, trans, entry)
    if is_cuda_array(src):
        require_cuda_kernels("src")
        with on_device(src) as stream:
            partials = empty_like_shape(
                src, (_core.SIM3_NE_BLOCKS, _core.SIM3_NE_PARTIAL), np.float64
            )
            out = empty_like_shape(src, (_core.SIM3_NE_SIZE,), np.float64)
            _core.sim3_normal_equations_cuda(
                *arrays,
                scale,
                rot,
                trans,
                huber,
                partials=partials,
                out=out,
                stream=stream,
                **axial,
            )
        host = out.cpu().numpy() if hasattr(out, "cpu") else out.get()
        return NormalEquations.from_array(host)
    host_arrays = [_host(a, name, entry) for a, name in zip(arrays, _NAMES, strict=True)]
    if axis is not None:
        axial["axis"] = _host(axis, "axis", entry)
    h, g, cost, count, inliers = _core.sim3_normal_equations(
        *host_arrays, scale, rot, trans, huber, threads, **axial
    )
    return NormalEquations(h, g, cost, count, inliers)


def _on_device(arrays: list[Any], names: tuple[str, ...], device: str, entry: str) -> list[Any]:
    """The arrays as float32 arrays on ``device``: CUDA arrays pass through (checked by the
    kernel), host arrays are converted and uploaded next to the first CUDA array, or with torch
    onto ``device``."""
    require_cuda_kernels("device='cuda'")
    ref = next((a for a in arrays if is_cuda_array(a)), None)
    if ref is None:
        import torch

        ref = torch.empty(0, device=device)
    return [
        a if is_cuda_array(a) else like(ref, _host(a, name, entry))
        for a, name in zip(arrays, names, strict=True)
    ]


def _update(
    delta: np.ndarray, scale: float, rot: np.ndarray, trans: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """The left update ``ξ = (ω, v, λ)``: ``s ← e^λ s``, ``R ← Exp(ω) R``,
    ``t ← e^λ Exp(ω) t + v``."""
    exp_w = rotvec_to_rotmat(delta[:3])
    grow = float(np.exp(delta[6]))
    return grow * scale, exp_w @ rot, grow * (exp_w @ trans) + delta[3:6]


def track_sim3(
    src: Any,
    dst: Any,
    weight: Any,
    inv_sigma: Any | None = None,
    *,
    init: tuple[float, np.ndarray, np.ndarray] | None = None,
    iters: int = 10,
    huber: float = 0.05,
    tol: float = 1e-6,
    damping: float = 1e-6,
    device: str = "cpu",
    threads: int = 0,
    axis: Any | None = None,
    axial_weight: float = 1.0,
    with_scale: bool = True,
) -> Sim3Fit:
    """Robust Sim(3) registration ``dst ≈ s R src + t`` of pixel-aligned points (the streaming
    mode's tracking step); see the module docstring for the cost.

    Args:
        src: (M,3) points in frame t's camera (any real dtype; read as float32).
        dst: (M,3) target points (world), pixel-aligned with ``src``.
        weight: (M,) weights >= 0: confidence × static mask; 0 = ignore. Points with a
            non-finite value in src, dst, weight or inv_sigma are ignored too.
        inv_sigma: (M,) inverse noise scales > 0 (e.g. 1/depth: relative residuals); None = 1.
        init: None (closed form: weighted Umeyama of ``pair_moments`` with weights
            ``weight · inv_sigma²``, isotropic even with an axis; points with a zero or
            non-finite axis left out) or a starting pose ``(scale, rot (3,3), trans (3,))``.
        iters: at most this many Levenberg-Marquardt steps (one kernel call each).
        huber: Huber threshold ``k`` on the normalised residual ``‖r‖`` (``inf``: plain least
            squares); with inv_sigma = 1/depth, 0.05 = 5% of the depth.
        tol: stop when the relative cost decrease of an accepted step, or ``‖δ‖``, is below it.
        damping: initial and smallest Levenberg damping ``μ``: each step solves
            ``(H + μ diag(H) + ε I) δ = −g`` (ε = 1e-12 · mean diag(H)) in float64 and is kept
            only if it lowers the cost, else ``μ`` grows ×10 and the step is retried; an accepted
            step divides it by 10 (not below ``damping``).
        device: ``"cpu"`` (C++/OpenMP kernel) or ``"cuda"`` / ``"cuda:N"`` (the CUDA twin; host
            arrays are uploaded once with torch, CUDA arrays used as they are).
        threads: OpenMP threads of the CPU kernel (0: the core's setting).
        axis: None (isotropic) or (M,3) directions in the world frame, typically the viewing
            rays of the keyframe whose pixels ``dst`` sits on: the anisotropic residual of the
            module docstring (a zero or non-finite axis: point ignored).
        axial_weight: ``w_a`` in (0, 1]: weight of the error along ``axis`` relative to the
            error across it (e.g. 0.01: depth errors barely move the pose).
        with_scale: estimate the scale (Sim(3)); False keeps the start's scale (SE(3) steps,
            rigid closed-form start): for fits where the scale is barely observable (small
            baselines with a small ``axial_weight``).

    Returns:
        :class:`Sim3Fit` mapping src's camera frame to the world.

    Raises:
        ValueError: naming the array and its shape, on mismatched shapes or a non-real dtype;
            on a bad ``axial_weight``; when fewer than 3 points are usable; on a degenerate
            closed-form start.
    """
    entry = "track_sim3"
    m = _check_shapes(src, dst, weight, weight if inv_sigma is None else inv_sigma, entry)
    _check_axis(axis, m, axial_weight, entry)
    if inv_sigma is None:
        inv_sigma = np.ones(m, np.float32)
    arrays = [src, dst, weight, inv_sigma] + ([] if axis is None else [axis])
    names = (_NAMES + ("axis",))[: len(arrays)]
    if device.startswith("cuda"):
        arrays = _on_device(arrays, names, device, entry)
    elif device == "cpu":
        arrays = [_host(a, name, entry) for a, name in zip(arrays, names, strict=True)]
    else:
        raise ValueError(f"{entry}: device must be 'cpu' or 'cuda[:N]', got {device!r}")
    arrays, axis = arrays[:4], (arrays[4] if axis is not None else None)

    def evaluate(pose: tuple[float, np.ndarray, np.ndarray]) -> NormalEquations:
        return sim3_normal_equations(
            *arrays, *pose, huber, threads, axis=axis, axial_weight=axial_weight
        )

    def usable(ne: NormalEquations) -> NormalEquations:
        if ne.count < 3:
            rule = "" if axis is None else ", a non-zero axis"
            raise ValueError(
                f"{entry}: need at least 3 usable points (weight > 0, inv_sigma > 0, all values "
                f"finite{rule}), got {ne.count} of {m}"
            )
        return ne

    if init is None:
        usable(evaluate((1.0, np.eye(3), np.zeros(3))))
        _, _, weight_a, isig = arrays
        w_fit = weight_a * isig * isig * (weight_a > 0) * (isig > 0)
        if axis is not None:  # the kernel's rule: a zero or non-finite axis drops the point
            size = abs(axis).sum(1)
            w_fit = w_fit * ((size > 0) & (size < np.inf))
        pose = umeyama(pair_moments(arrays[0], arrays[1], w_fit, threads), with_scale)
    else:
        pose = _pose(*init, entry)
    ne = usable(evaluate(pose))
    cost, mu, steps = ne.cost, damping, 0
    while steps < iters and cost > 0:
        h = ne.hessian
        tiny = 1e-12 * max(float(np.trace(h)) / 7, np.finfo(np.float64).tiny)
        lhs = h + mu * np.diag(np.diag(h)) + tiny * np.eye(7)
        delta = np.zeros(7)
        free = slice(0, 7 if with_scale else 6)  # ξ = (ω, v, λ): λ is the log-scale step
        delta[free] = np.linalg.solve(lhs[free, free], -ne.gradient[free])
        steps += 1
        if not np.all(np.isfinite(delta)) or np.linalg.norm(delta) < tol:
            break
        cand = _update(delta, *pose)
        ne_c = evaluate(cand)
        if ne_c.cost < cost:
            decrease = (cost - ne_c.cost) / cost
            pose, ne, cost = cand, ne_c, ne_c.cost
            mu = max(mu / 10, damping)
            if decrease < tol:
                break
        else:
            mu *= 10
    scale, rot, trans = pose
    return Sim3Fit(
        scale=float(scale),
        rot=np.asarray(rot, np.float64),
        trans=np.asarray(trans, np.float64),
        cost=float(cost),
        iters=steps,
        inlier_fraction=ne.inliers / ne.count,
        count=ne.count,
    )
