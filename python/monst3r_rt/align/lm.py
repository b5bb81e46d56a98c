"""Levenberg–Marquardt (IRLS Gauss–Newton) solver for the global alignment (``solver="lm"``).

The objective (spec §4.5) is a sum of non-squared norms (alignment, camera smoothness) and,
with flows, the official smooth-L1 flow term; each LM iteration minimises its IRLS majoriser
(``Σ W/2‖r + Jδ‖²``, ``W = w/max(‖r‖, eps)`` for the norms, the Huber weight ``1/max(|d|, 1)``
for the flow entries; exact gradient) with a Marquardt damping of the reduced system built by
:func:`lm_system.reduced_system` (per-pixel depths eliminated by the Schur complement in the
``_core`` kernels). ``Σ δ log σ = 0`` (a Lagrange row) keeps the official scale gauge; without it
(``pin_scale=False``: windows, whose frozen frames fix the gauge) the log-scales are free.
Frozen frames keep their depth and pose (their variables are removed), ``freeze_focal`` the
focal. The depths follow by back-substitution (``_core.lm_backsub``). Steps are accepted only
when the exact official objective (:func:`objective.evaluate`, flow term, per-entry cut and gate
included) decreases.

Start of the flow term. The official optimiser switches the flow term on after 10 % of its
iterations, once the poses from the initialisation have settled (early flow errors are large
and would be gated or cut). LM's equivalent: it first converges without the flow term (until an
iteration lowers the energy by less than ``flow_start_tol``, relative, or cannot lower it, or
half of ``niter`` is spent), then switches it on and continues until ``flow_ftol``. The flow
term's per-direction counts, cut and gate are re-evaluated at every accepted state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from . import params as P
from .lm_system import (  # noqa: F401 - re-exported (tests, benchmarks)
    CpuKernels,
    LmTerms,
    ReducedSystem,
    expmap,
    free_variables,
    reduced_system,
    skew,
    variable_index,
)
from .objective import AlignData, FlowData, cpu_kernel, evaluate

Params = dict[str, np.ndarray]
_DEBUG = bool(__import__("os").environ.get("LM_DEBUG"))


def solve_kkt(kkt: sp.csc_matrix, rhs: np.ndarray) -> np.ndarray:
    """Solve the damped reduced system (with its Lagrange row) by sparse LU.

    SuperLU's default (``spsolve``: COLAMD, partial pivoting with threshold 1) ignores the
    fill-reducing order whenever an off-diagonal entry is larger than the diagonal, and the
    factors grow to ~10× the matrix (76 MB at the benchmark size, the largest allocation of an
    iteration). The system is symmetric with a dominant damped diagonal, so a diagonal pivot is
    accepted down to 1 % of its column's maximum: 2.6× fewer factor entries, 4× faster, the same
    solution up to rounding (≈1e-12 relative). The Lagrange row's zero diagonal still pivots.
    """
    return spla.splu(kkt, permc_spec="COLAMD", diag_pivot_thresh=0.01).solve(rhs)


def _to_params(rot, trans, logf, edge_rot, s, edge_t, dtype, pin_scale: bool) -> Params:
    """Natural quantities (float64) → official parameters except ``log_depth``."""
    poses = np.concatenate([P.rotmat_to_quat(rot), P.signed_log1p(trans)], 1)
    sigma = P.pairwise_scale(s, pin_scale)
    pw = np.concatenate(
        [P.rotmat_to_quat(edge_rot), P.signed_log1p(edge_t / sigma[:, None]), s[:, None]], 1
    )
    return {
        "im_poses": np.ascontiguousarray(poses, dtype=dtype),
        "focal": np.ascontiguousarray(logf * P.FOCAL_BREAK, dtype=dtype),
        "pw_poses": np.ascontiguousarray(pw, dtype=dtype),
    }


class _Energy:
    """The official objective (:func:`objective.evaluate`) at a state, and the flow term's
    per-direction weights ``w_flow/count`` there (for the next system; (0, 0) when the term is
    off or gated)."""

    def __init__(self, data: AlignData, flow: FlowData | None, kernel: Any, **kw: Any):
        self.data, self.flow, self.kernel, self.kw = data, flow, kernel or cpu_kernel, kw

    def __call__(self, p: Params, with_flow: bool) -> tuple[float, tuple[float, float]]:
        stats: list = []

        def kernel(data, geo, flow_args):
            out = self.kernel(data, geo, flow_args)
            if flow_args:
                stats.append(out[4])
            return out

        flow = self.flow if with_flow else None
        energy = evaluate(self.data, p, flow=flow, kernel=kernel, **self.kw)[0]
        if not stats:
            return float(energy), (0.0, 0.0)
        sums, counts = np.array(stats[0][0::2]), np.array(stats[0][1::2])
        value = float(np.sum(np.where(counts > 0, sums / np.maximum(counts, 1), 0)))
        if not 0 < value <= self.kw["flow_loss_threshold"]:
            return float(energy), (0.0, 0.0)
        wf = self.kw["flow_loss_weight"]
        return float(energy), tuple(wf / c if c > 0 else 0.0 for c in counts)  # type: ignore[return-value]


def _damped_solve(s_mat, rhs, lam: float, diag, floor: float, border) -> np.ndarray:
    damp = sp.diags(lam * (diag + floor) + floor)
    if border is None:
        return solve_kkt((s_mat + damp).tocsc(), rhs)
    kkt = sp.bmat([[s_mat + damp, border.T], [border, None]], format="csc")
    return solve_kkt(kkt, np.concatenate([rhs, [0.0]]))[: len(rhs)]


def _candidate(sys_: ReducedSystem, cur: Params, dx, dl, alpha: float, terms: LmTerms,
               idx: tuple) -> Params:  # fmt: skip
    """The state after the step ``alpha·(dx, dl)``; frozen frames and focal keep their exact
    parameters."""
    fidx, eidx, f0, nfoc = idx
    df, de = alpha * dx[fidx], alpha * dx[eidx]
    r0, t0, er0, et0, s0, lf0 = sys_.state
    dtype = cur["im_poses"].dtype
    new = _to_params(
        expmap(df[:, :3]) @ r0, t0 + df[:, 3:6], lf0 + alpha * dx[f0 : f0 + nfoc],
        expmap(de[:, :3]) @ er0, s0 + de[:, 6], et0 + de[:, 3:6], dtype, terms.pin_scale,
    )  # fmt: skip
    new["log_depth"] = sys_.kernels.log_depth_step(cur["log_depth"], dl, alpha)
    if terms.frozen is not None:
        new["im_poses"][terms.frozen] = cur["im_poses"][terms.frozen]
        if nfoc > 1:
            new["focal"][terms.frozen] = cur["focal"][terms.frozen]
    if terms.freeze_focal:
        new["focal"] = cur["focal"].copy()
    return new


def _iteration(data, cur, energy, with_flow, terms, lam, opts) -> tuple:
    """One LM iteration: returns (state, energy, flow weights, damping, improved)."""
    ws, wt, max_tries, overrelax, kernels, e_cur = opts
    sys_ = reduced_system(data, cur, ws, wt, terms=terms, kernels=kernels)
    n, e_count = data.n_frames, len(data.edges)
    nfoc = cur["focal"].shape[0]
    fidx, eidx, nvar = variable_index(n, e_count, nfoc == 1)
    free = free_variables(n, e_count, nfoc == 1, terms)
    s_mat = sys_.matrix[free][:, free]
    diag = s_mat.diagonal()
    floor = 1e-9 * float(diag.max())
    border = None
    if terms.pin_scale:
        sidx = np.searchsorted(free, eidx[:, 6])
        border = sp.csc_matrix(
            (np.ones(e_count), (np.zeros(e_count, int), sidx)), shape=(1, len(free))
        )
    idx = (fidx, eidx, 6 * n, nfoc)
    for _ in range(max_tries):
        dx = np.zeros(nvar)
        dx[free] = _damped_solve(s_mat, -sys_.grad[free], lam, diag, floor, border)
        dframe = np.ascontiguousarray(dx[fidx])
        dedge = np.ascontiguousarray(dx[eidx])
        dl = sys_.kernels.backsub(sys_.kernel_state, sys_.eps, dframe, dedge)
        cand = _candidate(sys_, cur, dx, dl, 1.0, terms, idx)
        e_new, fw = energy(cand, with_flow)
        if np.isfinite(e_new) and e_new < e_cur:
            lam = max(lam / 3.0, 1e-9)
            # IRLS steps undershoot (the majoriser's curvature along r is too high): try an
            # over-relaxed step once
            if overrelax > 1.0:
                cand2 = _candidate(sys_, cur, dx, dl, overrelax, terms, idx)
                e2, fw2 = energy(cand2, with_flow)
                if np.isfinite(e2) and e2 < e_new:
                    cand, e_new, fw = cand2, e2, fw2
            return cand, e_new, fw, lam, True
        lam *= 4.0
        if _DEBUG:
            print("  reject", lam, e_new, e_cur)
    return cur, e_cur, None, lam, False


def solve_lm(
    data: AlignData,
    params: dict[str, np.ndarray],
    *,
    niter: int = 30,
    temporal_smoothing_weight: float = 0.01,
    translation_weight: float = 1.0,
    callback: Callable[[int, float], None] | None = None,
    lam0: float = 1e-4,
    max_tries: int = 8,
    overrelax: float = 2.0,
    ftol: float = 0.0,
    flow: FlowData | None = None,
    flow_loss_weight: float = 0.01,
    flow_loss_threshold: float = 25.0,
    pixel_loss_threshold: float = 50.0,
    flow_start_tol: float = 1e-2,
    flow_ftol: float | None = None,
    frozen: np.ndarray | None = None,
    freeze_focal: bool = False,
    pin_scale: bool = True,
    device: str = "cpu",
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Minimise the official alignment objective by Levenberg–Marquardt.

    Args:
        data: the problem (float32 or float64).
        params: official parameters (see :mod:`.params`), in the dtype of ``data``.
        niter: LM iterations (each: one accumulation pass, one sparse solve, one
            back-substitution and one or two evaluations per tried damping).
        callback: called with ``(iteration, energy)`` after each iteration.
        lam0: initial Marquardt damping (relative to the reduced system's diagonal).
        max_tries: damping increases per iteration before giving up.
        overrelax: after an accepted step δ, ``overrelax·δ`` is tried too (1 = off).
        ftol: stop once an iteration lowers the energy by less than ``ftol`` relative
            (0 = run all ``niter`` iterations).
        flow: measured flows and static masks (None or ``flow_loss_weight = 0``: no flow
            term); ``flow_loss_threshold`` is the official gate, ``pixel_loss_threshold`` the
            per-entry cut.
        flow_start_tol: the flow term starts once an iteration without it lowers the energy by
            less than this (relative), see the module docstring.
        flow_ftol: ``ftol`` once the flow term is on (default ``ftol/100``: its pull on the
            poses, mediated by the alignment's IRLS curvature, converges linearly; with ``ftol``
            or ``ftol/10`` LM stopped above Adam's 300-iteration energy, see notes_lm.md).
        frozen: (N,) bool frames whose depth and pose stay exactly as given (windows).
        freeze_focal: keep the focal(s) exactly as given.
        pin_scale: official scale gauge; False when frozen frames fix the gauge.
        device: ``"cpu"`` or ``"cuda"`` (the per-pixel kernels and the energy on the GPU).

    Returns:
        Final parameters (official parameterisation, dtype of ``data``) and the energies
        ``[E_0, E_1, ..., E_k]`` from :func:`objective.evaluate` (initial, then after each
        iteration; non-increasing, except that when the flow term starts (and is not gated)
        the same state's energy with the flow term is inserted). Stops early when no damping
        improves the energy, or on ``ftol`` (``flow_ftol``).
    """
    dtype = data.pts_i.dtype
    use_flow = flow is not None and flow_loss_weight > 0
    if use_flow and flow.flow_ij.dtype != dtype:
        flow = flow.astype(dtype)
    if frozen is not None:
        frozen = np.asarray(frozen, dtype=bool)
        if frozen.shape != (data.n_frames,):
            raise ValueError(f"frozen must have shape ({data.n_frames},), got {frozen.shape}")
    kernels, energy_kernel, cur = _backend(data, flow if use_flow else None, params, device)
    terms = LmTerms(flow=flow if use_flow else None, pixel_thr=pixel_loss_threshold,
                    frozen=frozen, freeze_focal=freeze_focal, pin_scale=pin_scale)  # fmt: skip
    energy = _Energy(
        data, flow, energy_kernel, temporal_smoothing_weight=temporal_smoothing_weight,
        translation_weight=translation_weight, flow_loss_weight=flow_loss_weight,
        flow_loss_threshold=flow_loss_threshold, pixel_loss_threshold=pixel_loss_threshold,
        pin_scale=pin_scale,
    )  # fmt: skip
    with_flow = False
    e_cur, fw = energy(cur, False)
    history = [e_cur]
    lam = lam0
    for it in range(niter):
        opts = (temporal_smoothing_weight, translation_weight, max_tries, overrelax, kernels, e_cur)
        term_now = replace(terms, flow_weights=fw if with_flow else (0.0, 0.0))
        cur, e_new, fw_new, lam, improved = _iteration(data, cur, energy, with_flow, term_now,
                                                       lam, opts)  # fmt: skip
        if improved:
            history.append(e_new)
            fw = fw_new
            if callback is not None:
                callback(it, e_new)
        tol = ftol if not use_flow else (flow_ftol if flow_ftol is not None else ftol / 100)
        tol = flow_start_tol if (use_flow and not with_flow) else tol
        small = not improved or history[-2] - e_new < tol * abs(history[-2])
        if use_flow and not with_flow and (small or it + 1 >= niter // 2):
            with_flow = True  # the flow term starts (see the module docstring)
            e_new, fw = energy(cur, True)
            if e_new != history[-1]:  # the same state with the flow term (unless gated)
                history.append(e_new)
        elif small and (not improved or tol > 0):
            break
        e_cur = e_new
    return _finish(cur, kernels), history


def _backend(data: AlignData, flow: FlowData | None, params: Params, device: str) -> tuple:
    """(LM kernels, evaluate's kernel, initial state) for the device."""
    cur = {k: np.ascontiguousarray(v, dtype=data.pts_i.dtype) for k, v in params.items()}
    if device == "cpu":
        return CpuKernels(data, flow), None, cur
    if device != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    from .lm_cuda import CudaKernels

    kernels = CudaKernels(data, flow)
    cur["log_depth"] = kernels.energy_kernel.upload(cur["log_depth"])
    return kernels, kernels.energy_kernel, cur


def _finish(cur: Params, kernels: Any) -> Params:
    """Parameters back on the host."""
    ld = cur["log_depth"]
    if not isinstance(ld, np.ndarray):
        cur = dict(cur, log_depth=ld.cpu().numpy())
    return cur
