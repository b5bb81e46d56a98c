"""The official optimiser's parameterisation and its chain rule, in NumPy.

Parameters (spec §4.3), all float arrays:

- ``log_depth`` (N,H,W): depth ``D = exp(log_depth)``.
- ``im_poses`` (N,7) ``[qx,qy,qz,qw, τx,τy,τz]``: camera-to-world ``R`` from the quaternion
  normalised on use (XYZW), ``T = signed_expm1(τ)``.
- ``focal`` (1,) when shared, else (N,): ``f = exp(p / 20)``.
- ``pw_poses`` (E,8) ``[qx,qy,qz,qw, τx,τy,τz, s]``: ``σ_e = exp(s_e − mean(s) + log 0.5)``,
  pairwise pose ``P_e = [σ_e R_e | σ_e signed_expm1(τ_e)]``.

:func:`geometry` maps parameters to the natural quantities the kernels take; :func:`chain` maps
the kernels' gradients back to the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The parameters hold XYZW quaternions; these names are the parameterisation's (lm, driver use
# them): the one implementation is in monst3r_rt.geometry.
from ..geometry import quat_xyzw_to_rotmat as quat_to_rotmat
from ..geometry import rotmat_to_quat_xyzw as rotmat_to_quat  # noqa: F401 (re-exported)

FOCAL_BREAK = 20.0
BASE_SCALE = 0.5
PARAM_NAMES = ("log_depth", "im_poses", "focal", "pw_poses")


def signed_expm1(x: np.ndarray) -> np.ndarray:
    """``sign(x)·(exp|x| − 1)``."""
    return np.sign(x) * np.expm1(np.abs(x))


def signed_expm1_grad(x: np.ndarray) -> np.ndarray:
    """Derivative of :func:`signed_expm1` as PyTorch's autograd computes it for the official code:
    ``exp|x|``, but exactly 0 at ``x = 0`` (``d sign(x)/dx = d|x|/dx = 0`` there). So an exactly
    zero translation component — the first camera of the MST initialisation — never moves, as in
    the official optimiser."""
    return np.exp(np.abs(x)) * (x != 0)


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`signed_expm1`: ``sign(x)·log(1 + |x|)``."""
    return np.sign(x) * np.log1p(np.abs(x))


def quat_to_rotmat_vjp(q: np.ndarray, grad_r: np.ndarray) -> np.ndarray:
    """Gradient with respect to the raw quaternion ``q`` (K,4) of a loss with ``dL/dR`` (K,3,3)."""
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    u = q / norm
    x, y, z, w = np.moveaxis(u, -1, 0)
    g = grad_r.reshape(-1, 9)
    g = np.moveaxis(g, -1, 0)
    # dR/du for each unit-quaternion component, R entries row-major
    zero = np.zeros_like(x)
    d_x = [zero, 2 * y, 2 * z, 2 * y, -4 * x, -2 * w, 2 * z, 2 * w, -4 * x]
    d_y = [-4 * y, 2 * x, 2 * w, 2 * x, zero, 2 * z, -2 * w, 2 * z, -4 * y]
    d_z = [-4 * z, -2 * w, 2 * x, 2 * w, -4 * z, 2 * y, 2 * x, 2 * y, zero]
    d_w = [zero, -2 * z, 2 * y, 2 * z, zero, -2 * x, -2 * y, 2 * x, zero]
    gu = np.stack([sum(gk * dk for gk, dk in zip(g, d, strict=True)) for d in (d_x, d_y, d_z, d_w)])
    gu = np.moveaxis(gu, 0, -1).reshape(q.shape)
    # through the normalisation u = q/|q|
    return (gu - u * np.sum(gu * u, axis=-1, keepdims=True)) / norm


def pairwise_scale(s: np.ndarray, pin: bool = True) -> np.ndarray:
    """(E,) log-scales → σ (E,) with geometric mean pinned to ``BASE_SCALE`` (official gauge), or
    ``exp(s)`` when ``pin`` is False (windows after the first: frozen frames fix the gauge)."""
    return np.exp(s - s.mean() + np.log(BASE_SCALE)) if pin else np.exp(s)


@dataclass
class Geometry:
    """Natural quantities of one parameter state (what the kernels take)."""

    depth_log: np.ndarray  # (N,H,W)
    rot: np.ndarray  # (N,3,3) camera-to-world
    trans: np.ndarray  # (N,3)
    focal: np.ndarray  # (N,)
    edge_rot: np.ndarray  # (E,3,3)
    edge_trans: np.ndarray  # (E,3), includes σ
    edge_scale: np.ndarray  # (E,)


def geometry(params: dict[str, np.ndarray], n_frames: int, pin_scale: bool = True) -> Geometry:
    """Parameters → :class:`Geometry`, in the parameters' dtype (``log_depth`` may be a GPU
    tensor; it is passed through)."""
    dt = params["im_poses"].dtype
    poses, pw = params["im_poses"], params["pw_poses"]
    sigma = pairwise_scale(pw[:, 7], pin_scale)
    focal = np.broadcast_to(np.exp(params["focal"] / FOCAL_BREAK), (n_frames,))
    return Geometry(
        depth_log=params["log_depth"],
        rot=np.ascontiguousarray(quat_to_rotmat(poses[:, :4]), dtype=dt),
        trans=np.ascontiguousarray(signed_expm1(poses[:, 4:7]), dtype=dt),
        focal=np.ascontiguousarray(focal, dtype=dt),
        edge_rot=np.ascontiguousarray(quat_to_rotmat(pw[:, :4]), dtype=dt),
        edge_trans=np.ascontiguousarray(sigma[:, None] * signed_expm1(pw[:, 4:7]), dtype=dt),
        edge_scale=np.ascontiguousarray(sigma, dtype=dt),
    )


def chain(
    params: dict[str, np.ndarray],
    grad_log_depth: np.ndarray,
    grad_rot: np.ndarray,
    grad_trans: np.ndarray,
    grad_focal: np.ndarray,
    grad_edge_rot: np.ndarray,
    grad_edge_trans: np.ndarray,
    grad_edge_scale: np.ndarray,
    pin_scale: bool = True,
) -> dict[str, np.ndarray]:
    """Gradients of the natural quantities → gradients of the parameters (same keys/shapes)."""
    poses, pw = params["im_poses"], params["pw_poses"]
    g_poses = np.empty_like(poses)
    g_poses[:, :4] = quat_to_rotmat_vjp(poses[:, :4], grad_rot)
    g_poses[:, 4:7] = grad_trans * signed_expm1_grad(poses[:, 4:7])

    f = np.exp(params["focal"] / FOCAL_BREAK)
    g_f = grad_focal if params["focal"].shape[0] > 1 else grad_focal.sum(keepdims=True)
    g_focal = g_f * f / FOCAL_BREAK

    sigma = pairwise_scale(pw[:, 7], pin_scale)
    tau = pw[:, 4:7]
    g_pw = np.empty_like(pw)
    g_pw[:, :4] = quat_to_rotmat_vjp(pw[:, :4], grad_edge_rot)
    g_pw[:, 4:7] = grad_edge_trans * sigma[:, None] * signed_expm1_grad(tau)
    g_sigma = grad_edge_scale + np.sum(grad_edge_trans * signed_expm1(tau), axis=1)
    gs = g_sigma * sigma
    g_pw[:, 7] = gs - gs.mean() if pin_scale else gs
    return {
        "log_depth": (
            grad_log_depth.astype(params["log_depth"].dtype, copy=False)
            if isinstance(grad_log_depth, np.ndarray)
            else grad_log_depth  # a GPU tensor from the CUDA kernel
        ),
        "im_poses": g_poses.astype(poses.dtype, copy=False),
        "focal": g_focal.astype(params["focal"].dtype, copy=False),
        "pw_poses": g_pw.astype(pw.dtype, copy=False),
    }


def smoothness(
    rot: np.ndarray, trans: np.ndarray, translation_weight: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Camera smoothness ``Σ_t ‖R_tᵀR_{t+1} − I‖_F + w_T·‖R_tᵀ(T_{t+1} − T_t)‖`` and its
    gradients with respect to ``rot`` (N,3,3) and ``trans`` (N,3)."""
    g_rot = np.zeros_like(rot)
    g_trans = np.zeros_like(trans)
    if len(rot) < 2:
        return 0.0, g_rot, g_trans
    a, b = rot[:-1], rot[1:]
    m = np.einsum("kji,kjl->kil", a, b) - np.eye(3)
    n = np.linalg.norm(m.reshape(-1, 9), axis=1)
    gm = m / np.where(n > 0, n, 1)[:, None, None]
    g_rot[:-1] += np.einsum("kij,klj->kil", b, gm)  # d/dA tr(Gᵀ AᵀB) = B Gᵀ
    g_rot[1:] += np.einsum("kij,kjl->kil", a, gm)  # d/dB = A G
    delta = trans[1:] - trans[:-1]
    v = np.einsum("kji,kj->ki", a, delta)
    m_t = np.linalg.norm(v, axis=1)
    u = v / np.where(m_t > 0, m_t, 1)[:, None]
    g_rot[:-1] += translation_weight * np.einsum("ki,kj->kij", delta, u)
    ru = np.einsum("kij,kj->ki", a, u) * translation_weight
    g_trans[1:] += ru
    g_trans[:-1] -= ru
    return float(n.sum() + translation_weight * m_t.sum()), g_rot, g_trans
