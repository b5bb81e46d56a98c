"""Slow, obviously-correct PyTorch-autograd twin of MonST3R's global-alignment objective.

This module mirrors ``dust3r/cloud_opt/optimizer.py::PointCloudOptimizer.forward_batchify`` and
``base_opt.py::global_alignment_loop`` (spec §4.2-4.5, §4.7) with plain batched PyTorch and
autograd. It is the correctness oracle for the fast kernels and the timed stand-in for the
official optimiser in benchmarks; torch is imported at module level on purpose (tests and
benchmarks only).

Being an independent oracle, it keeps its own PyTorch versions of the geometry (quaternions,
unprojection, relative poses) on purpose instead of using :mod:`monst3r_rt.geometry`: a bug there
must not be copied into the reference it is checked against.

Parameterisation (identical to the official one, element-wise Adam depends on it):

- ``log_depth`` (N,H,W): depth ``D = exp(log_depth)``.
- ``im_poses`` (N,7) = ``[qx,qy,qz,qw, τx,τy,τz]``: camera-to-world rotation from the quaternion
  normalised on use (XYZW, roma convention), translation ``T = signed_expm1(τ)``.
- ``focal`` (1,) shared by all frames, or (N,): ``f = exp(p/20)``.
- ``pw_poses`` (E,8) = ``[q(4), τ(3), s]``: ``σ̂_e = exp(s_e)·exp(log 0.5 − mean(s))`` and
  ``P_e = [σ̂_e R_e | σ̂_e signed_expm1(τ_e)]``.

Principal point is fixed at ``(W/2, H/2)``; pixel ``(u, v) = (col, row)`` at integer centres.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PARAM_KEYS = ("log_depth", "im_poses", "focal", "pw_poses")
FOCAL_BREAK = 20.0
BASE_SCALE = 0.5
FLOW_EPS = 1e-6

__all__ = [
    "PARAM_KEYS",
    "quat_to_rotmat",
    "rotmat_to_quat",
    "signed_expm1",
    "signed_log1p",
    "official_params_to_geometry",
    "world_points",
    "ego_flow",
    "reference_energy",
    "reference_energy_and_grad",
    "reference_adam",
    "lr_at",
]


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def signed_expm1(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)·(exp|x| − 1)`` (translation parameterisation)."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def signed_log1p(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`signed_expm1`: ``sign(x)·log(1 + |x|)``."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """(...,4) XYZW quaternion, normalised here, to a (...,3,3) rotation matrix (roma formula)."""
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    x, y, z, w = q.unbind(-1)
    x2, y2, z2, w2 = x * x, y * y, z * z, w * w
    xy, xz, yz = x * y, x * z, y * z
    xw, yw, zw = x * w, y * w, z * w
    rows = (
        x2 - y2 - z2 + w2,
        2 * (xy - zw),
        2 * (xz + yw),
        2 * (xy + zw),
        -x2 + y2 - z2 + w2,
        2 * (yz - xw),
        2 * (xz - yw),
        2 * (yz + xw),
        -x2 - y2 + z2 + w2,
    )
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def rotmat_to_quat(R: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """(...,3,3) rotation matrix to a unit XYZW quaternion (Shepperd: largest component > 0).

    Accepts and returns either a torch tensor or a numpy array.
    """
    as_numpy = isinstance(R, np.ndarray)
    Rt = torch.as_tensor(R)
    if not Rt.is_floating_point():
        Rt = Rt.to(torch.float64)
    m = Rt.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    # squared-magnitude proxies of (x, y, z, w), times 4
    cand = torch.stack(
        (
            1 + 2 * m[:, 0, 0] - tr,
            1 + 2 * m[:, 1, 1] - tr,
            1 + 2 * m[:, 2, 2] - tr,
            1 + tr,
        ),
        dim=-1,
    )
    best = cand.argmax(dim=-1)
    out = torch.empty(m.shape[0], 4, dtype=m.dtype, device=m.device)
    for k in range(4):
        sel = best == k
        if not bool(sel.any()):
            continue
        ms = m[sel]
        big = torch.sqrt(torch.clamp(cand[sel, k], min=0.0)) / 2  # the largest |component|
        inv = 1 / (4 * big)
        r01, r02, r12 = ms[:, 0, 1], ms[:, 0, 2], ms[:, 1, 2]
        r10, r20, r21 = ms[:, 1, 0], ms[:, 2, 0], ms[:, 2, 1]
        if k == 0:
            q = (big, (r01 + r10) * inv, (r02 + r20) * inv, (r21 - r12) * inv)
        elif k == 1:
            q = ((r01 + r10) * inv, big, (r12 + r21) * inv, (r02 - r20) * inv)
        elif k == 2:
            q = ((r02 + r20) * inv, (r12 + r21) * inv, big, (r10 - r01) * inv)
        else:
            q = ((r21 - r12) * inv, (r02 - r20) * inv, (r10 - r01) * inv, big)
        out[sel] = torch.stack(q, dim=-1)
    out = out / torch.linalg.vector_norm(out, dim=-1, keepdim=True)
    out = out.reshape(Rt.shape[:-2] + (4,))
    return out.numpy() if as_numpy else out


def _as_tensor(x: Any, dtype: torch.dtype | None, device: torch.device | str | None):
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    if device is not None:
        t = t.to(device)
    return t


def _pixel_grid(H: int, W: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) = (col, row) grids of shape (H, W)."""
    v, u = torch.meshgrid(
        torch.arange(H, dtype=dtype, device=device),
        torch.arange(W, dtype=dtype, device=device),
        indexing="ij",
    )
    return u, v


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------
def official_params_to_geometry(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Decode the optimiser parameters into natural quantities (differentiable).

    Returns ``R`` (N,3,3) and ``T`` (N,3) camera-to-world, ``f`` (N,) focal in pixels,
    ``sigma`` (E,) normalised pairwise scale σ̂, ``R_e`` (E,3,3) pairwise rotation (unscaled),
    ``t_e`` (E,3) pairwise translation already multiplied by σ̂, ``depth`` (N,H,W).
    """
    log_depth = params["log_depth"]
    im_poses = params["im_poses"]
    pw = params["pw_poses"]
    N = log_depth.shape[0]
    R = quat_to_rotmat(im_poses[:, :4])
    T = signed_expm1(im_poses[:, 4:7])
    f = torch.exp(params["focal"].reshape(-1) / FOCAL_BREAK)
    if f.numel() == 1:
        f = f.expand(N)
    elif f.numel() != N:
        raise ValueError(f"focal must have 1 or N={N} entries, got {f.numel()}")
    s = pw[:, 7]
    sigma = torch.exp(s) * torch.exp(math.log(BASE_SCALE) - s.mean())
    R_e = quat_to_rotmat(pw[:, :4])
    t_e = sigma[:, None] * signed_expm1(pw[:, 4:7])
    depth = torch.exp(log_depth)
    return {"R": R, "T": T, "f": f, "sigma": sigma, "R_e": R_e, "t_e": t_e, "depth": depth}


def world_points(geom: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(N,H,W,3) world points ``X = R·D·((u−W/2)/f, (v−H/2)/f, 1) + T``."""
    depth, f = geom["depth"], geom["f"]
    _, H, W = depth.shape
    u, v = _pixel_grid(H, W, depth.dtype, depth.device)
    fx = f[:, None, None]
    cam = torch.stack(
        (depth * (u - W / 2) / fx, depth * (v - H / 2) / fx, depth),
        dim=-1,
    )
    return torch.einsum("nij,nhwj->nhwi", geom["R"], cam) + geom["T"][:, None, None, :]


def _intrinsics(f: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and K⁻¹ (B,3,3) for focal f (B,) and principal point (W/2, H/2)."""
    B = f.shape[0]
    zero = torch.zeros_like(f)
    one = torch.ones_like(f)
    cx = torch.full_like(f, W / 2)
    cy = torch.full_like(f, H / 2)
    K = torch.stack((f, zero, cx, zero, f, cy, zero, zero, one), dim=-1).reshape(B, 3, 3)
    Kinv = torch.stack(
        (1 / f, zero, -cx / f, zero, 1 / f, -cy / f, zero, zero, one), dim=-1
    ).reshape(B, 3, 3)
    return K, Kinv


def ego_flow(
    R_src: torch.Tensor,
    T_src: torch.Tensor,
    R_tgt: torch.Tensor,
    T_tgt: torch.Tensor,
    depth_src: torch.Tensor,
    f_src: torch.Tensor,
    f_tgt: torch.Tensor,
    eps: float = FLOW_EPS,
) -> torch.Tensor:
    """Camera-induced flow src→tgt, (B,2,H,W), channel 0 = x/col, 1 = y/row (spec §4.5).

    ``F(x) = π(K_t R_rel K_s⁻¹ x̃ + (1/(D_s(x)+eps))·K_t t_rel) − x`` with
    ``R_rel = R_tᵀR_s``, ``t_rel = R_tᵀ(T_s − T_t)`` and π dividing by ``z + eps``
    (``goem_opt.py::warp_by_disp``). Poses are camera-to-world; R (B,3,3), T (B,3),
    depth (B,H,W), focals (B,).
    """
    B, H, W = depth_src.shape
    R_rel = R_tgt.transpose(-1, -2) @ R_src
    t_rel = (R_tgt.transpose(-1, -2) @ (T_src - T_tgt)[..., None])[..., 0]
    K_t, _ = _intrinsics(f_tgt, H, W)
    _, Kinv_s = _intrinsics(f_src, H, W)
    Hmat = K_t @ R_rel @ Kinv_s  # (B,3,3)
    u, v = _pixel_grid(H, W, depth_src.dtype, depth_src.device)
    coord = torch.stack((u.reshape(-1), v.reshape(-1), torch.ones_like(u).reshape(-1)))  # (3,HW)
    disp = 1 / (depth_src.reshape(B, 1, H * W) + eps)
    tgt = Hmat @ coord + disp * (K_t @ t_rel[..., None])
    tgt = tgt / (tgt[:, 2:3, :] + eps)
    return (tgt - coord)[:, :2, :].reshape(B, 2, H, W)


# --------------------------------------------------------------------------------------------
# energy
# --------------------------------------------------------------------------------------------
def _masked_smooth_l1(
    est: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, thr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and denominator of ``optimizer.py::smooth_L1_loss_fn``.

    est, gt (E,2,H,W); mask (E,1,H,W) in {0,1}. Entries with loss ≥ thr are dropped (thr > 0).
    """
    loss = F.smooth_l1_loss(est * mask, gt * mask, beta=1.0, reduction="none")
    if thr > 0:
        keep = (loss < thr).to(loss.dtype) * mask
    else:
        keep = mask.expand_as(loss)
    return (loss * keep).sum(), keep.sum()


def _unpack_flows(flows: Any) -> tuple[Any, Any]:
    if isinstance(flows, Mapping):
        return flows["flow_ij"], flows["flow_ji"]
    flow_ij, flow_ji = flows
    return flow_ij, flow_ji


def reference_energy(
    params: Mapping[str, torch.Tensor],
    edges: Any,
    pts_i: Any,
    pts_j: Any,
    conf_i: Any,
    conf_j: Any,
    *,
    temporal_smoothing_weight: float = 0.01,
    translation_weight: float = 1.0,
    flows: Any = None,
    static_masks: Any = None,
    flow_loss_weight: float = 0.01,
    pixel_loss_threshold: float = 50.0,
    flow_loss_threshold: float = 25.0,
    flow_active: bool = True,
    flow_mean: str = "per_direction",
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
    """Total loss ``L_align + w_smooth·L_smooth + w_flow·L_flow`` (spec §4.5), differentiable.

    Args:
        params: ``log_depth`` (N,H,W), ``im_poses`` (N,7), ``focal`` (1,) or (N,),
            ``pw_poses`` (E,8). Their dtype/device is used for everything else.
        edges: (E,2) int frame indices (i, j).
        pts_i, pts_j: (E,H,W,3) pointmaps of views i and j, both in camera i's frame.
        conf_i, conf_j: (E,H,W) raw confidences ≥ 1 (weights are ``log(conf)``).
        flows: ``(flow_ij, flow_ji)`` (or a dict with those keys), each (E,2,H,W) with channel
            0 = x/col, 1 = y/row; ``None`` disables the flow term.
        static_masks: (N,H,W) bool, True = static (kept by the flow loss); ``None`` = all static.
        flow_active: whether the iteration is past ``niter·flow_loss_start``.
        flow_mean: ``"per_direction"`` (official: masked mean i→j + masked mean j→i) or
            ``"joint"`` (one masked mean over both directions).
        return_terms: also return a dict of the individual terms.
    """
    ref = params["log_depth"]
    dtype, device = ref.dtype, ref.device
    edges_t = _as_tensor(edges, None, device).to(torch.long).reshape(-1, 2)
    ei, ej = edges_t[:, 0], edges_t[:, 1]
    pts_i = _as_tensor(pts_i, dtype, device)
    pts_j = _as_tensor(pts_j, dtype, device)
    w_i = torch.log(_as_tensor(conf_i, dtype, device))
    w_j = torch.log(_as_tensor(conf_j, dtype, device))
    E = edges_t.shape[0]
    _, H, W = ref.shape

    geom = official_params_to_geometry(params)
    X = world_points(geom)  # (N,H,W,3)

    # ---- alignment: Σ w‖X − P_e·pred‖ / Σ_e H·W, for view i and view j
    sig = geom["sigma"][:, None, None, None]
    t_e = geom["t_e"][:, None, None, :]
    aligned_i = sig * torch.einsum("eab,ehwb->ehwa", geom["R_e"], pts_i) + t_e
    aligned_j = sig * torch.einsum("eab,ehwb->ehwa", geom["R_e"], pts_j) + t_e
    area = E * H * W
    li = (torch.linalg.vector_norm(X[ei] - aligned_i, dim=-1) * w_i).sum() / area
    lj = (torch.linalg.vector_norm(X[ej] - aligned_j, dim=-1) * w_j).sum() / area
    align = li + lj

    # ---- temporal smoothness over consecutive frames
    R, T = geom["R"], geom["T"]
    zero = align.new_zeros(())
    if R.shape[0] > 1:
        Rt0 = R[:-1].transpose(-1, -2)
        eye = torch.eye(3, dtype=dtype, device=device)
        rot = torch.linalg.matrix_norm(Rt0 @ R[1:] - eye, ord="fro")
        trans = torch.linalg.vector_norm((Rt0 @ (T[1:] - T[:-1])[..., None])[..., 0], dim=-1)
        smooth = (rot + translation_weight * trans).sum()
    else:
        smooth = zero

    # ---- flow projection
    flow = zero
    flow_raw = None
    flow_i = flow_j = None
    gated = False
    use_flow = flows is not None and flow_active and flow_loss_weight > 0
    if use_flow:
        flow_ij, flow_ji = _unpack_flows(flows)
        flow_ij = _as_tensor(flow_ij, dtype, device)
        flow_ji = _as_tensor(flow_ji, dtype, device)
        if static_masks is None:
            static = torch.ones(R.shape[0], H, W, dtype=dtype, device=device)
        else:
            static = _as_tensor(static_masks, None, device).to(torch.bool).to(dtype)
        D, f = geom["depth"], geom["f"]
        F_ij = ego_flow(R[ei], T[ei], R[ej], T[ej], D[ei], f[ei], f[ej])
        F_ji = ego_flow(R[ej], T[ej], R[ei], T[ei], D[ej], f[ej], f[ei])
        num_i, den_i = _masked_smooth_l1(F_ij, flow_ij, static[ei][:, None], pixel_loss_threshold)
        num_j, den_j = _masked_smooth_l1(F_ji, flow_ji, static[ej][:, None], pixel_loss_threshold)
        # an empty selection gives 0/0 = NaN in the official code; count it as 0 here
        flow_i = num_i / den_i if den_i > 0 else zero
        flow_j = num_j / den_j if den_j > 0 else zero
        if flow_mean == "per_direction":
            flow_raw = flow_i + flow_j
        elif flow_mean == "joint":
            den = den_i + den_j
            flow_raw = (num_i + num_j) / den if den > 0 else zero
        else:
            raise ValueError(f"bad flow_mean={flow_mean!r}")
        # gate: the whole term is dropped for this iteration when it is too large
        gated = bool(flow_loss_threshold > 0 and flow_raw.item() > flow_loss_threshold)
        flow = zero if gated else flow_raw

    total = align + temporal_smoothing_weight * smooth
    if use_flow:
        total = total + flow_loss_weight * flow
    if not return_terms:
        return total
    terms: dict[str, Any] = {
        "align": align,
        "align_i": li,
        "align_j": lj,
        "smooth": smooth,
        "flow": flow,
        "flow_raw": flow_raw,
        "flow_i": flow_i,
        "flow_j": flow_j,
        "flow_gated": gated,
        "flow_used": use_flow,
    }
    return total, terms


def reference_energy_and_grad(
    params_np: Mapping[str, np.ndarray],
    edges: Any,
    pts_i: Any,
    pts_j: Any,
    conf_i: Any,
    conf_j: Any,
    **kwargs: Any,
) -> tuple[float, dict[str, np.ndarray]]:
    """Energy (float) and its autograd gradient w.r.t. each entry of ``params_np``.

    Keyword arguments are those of :func:`reference_energy` (``return_terms`` excluded), plus
    ``device``. Gradients come back as numpy arrays with the same keys, shapes and dtypes.
    """
    device = kwargs.pop("device", None)
    kwargs.pop("return_terms", None)
    params = {
        k: _as_tensor(params_np[k], None, device).detach().clone().requires_grad_(True)
        for k in PARAM_KEYS
    }
    energy = reference_energy(params, edges, pts_i, pts_j, conf_i, conf_j, **kwargs)
    assert isinstance(energy, torch.Tensor)
    energy.backward()
    grads = {}
    for k, p in params.items():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        grads[k] = g.detach().cpu().numpy()
    return float(energy.detach()), grads


# --------------------------------------------------------------------------------------------
# optimiser
# --------------------------------------------------------------------------------------------
def lr_at(n: int, niter: int, lr: float, lr_min: float, schedule: str = "linear") -> float:
    """Learning rate at iteration n (``base_opt.py::global_alignment_iter``), t = n/niter."""
    t = n / niter
    if schedule == "linear":
        return lr + (lr_min - lr) * t
    if schedule == "cosine":
        return lr_min + (lr - lr_min) * (1 + math.cos(t * math.pi)) / 2
    raise ValueError(f"bad schedule={schedule!r}")


def reference_adam(
    params_np: Mapping[str, np.ndarray],
    edges: Any,
    pts_i: Any,
    pts_j: Any,
    conf_i: Any,
    conf_j: Any,
    *,
    niter: int = 300,
    lr: float = 0.01,
    lr_min: float = 1e-3,
    schedule: str = "linear",
    betas: Sequence[float] = (0.9, 0.9),
    eps: float = 1e-8,
    flows: Any = None,
    static_masks: Any = None,
    flow_loss_start: float = 0.1,
    temporal_smoothing_weight: float = 0.01,
    translation_weight: float = 1.0,
    flow_loss_weight: float = 0.01,
    pixel_loss_threshold: float = 50.0,
    flow_loss_threshold: float = 25.0,
    flow_mean: str = "per_direction",
    device: torch.device | str | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run the official Adam loop and return ``(final params, loss per iteration)``.

    Mirrors ``global_alignment_loop``: ``torch.optim.Adam(lr, betas)``; at iteration n the lr is
    set from the schedule, then ``zero_grad``, ``loss.backward()``, ``step()``. The flow term is
    on from ``n ≥ niter·flow_loss_start``. The history holds ``float(loss)`` of every iteration
    (evaluated before that iteration's step). Everything runs in the dtype of ``params_np``.
    """
    params = {
        k: torch.nn.Parameter(_as_tensor(params_np[k], None, device).detach().clone())
        for k in PARAM_KEYS
    }
    ref = params["log_depth"]
    dtype, dev = ref.dtype, ref.device
    # convert the fixed inputs once, like the official buffers
    edges_t = _as_tensor(edges, None, dev).to(torch.long)
    pts_i_t = _as_tensor(pts_i, dtype, dev)
    pts_j_t = _as_tensor(pts_j, dtype, dev)
    conf_i_t = _as_tensor(conf_i, dtype, dev)
    conf_j_t = _as_tensor(conf_j, dtype, dev)
    flows_t = None
    if flows is not None:
        fij, fji = _unpack_flows(flows)
        flows_t = (_as_tensor(fij, dtype, dev), _as_tensor(fji, dtype, dev))
    masks_t = None if static_masks is None else _as_tensor(static_masks, None, dev)

    opt = torch.optim.Adam(list(params.values()), lr=lr, betas=tuple(betas), eps=eps)
    history = np.empty(niter, dtype=np.float64)
    for n in range(niter):
        cur = lr_at(n, niter, lr, lr_min, schedule)
        for group in opt.param_groups:
            group["lr"] = cur
        opt.zero_grad()
        loss = reference_energy(
            params,
            edges_t,
            pts_i_t,
            pts_j_t,
            conf_i_t,
            conf_j_t,
            temporal_smoothing_weight=temporal_smoothing_weight,
            translation_weight=translation_weight,
            flows=flows_t,
            static_masks=masks_t,
            flow_loss_weight=flow_loss_weight,
            pixel_loss_threshold=pixel_loss_threshold,
            flow_loss_threshold=flow_loss_threshold,
            flow_active=n >= niter * flow_loss_start,
            flow_mean=flow_mean,
        )
        assert isinstance(loss, torch.Tensor)
        loss.backward()
        opt.step()
        history[n] = float(loss.detach())
    final = {k: p.detach().cpu().numpy() for k, p in params.items()}
    return final, history
