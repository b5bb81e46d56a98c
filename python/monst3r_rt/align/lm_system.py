"""The reduced (depth-eliminated) IRLS Gauss–Newton system of the global alignment.

Terms: the alignment (non-squared norms, IRLS weights ``W = w/max(‖r‖, eps)``), the camera
smoothness (same IRLS model, in NumPy) and, optionally, the official flow term (smooth-L1 of
ego-flow − measured flow on static pixels, one masked mean per direction): its entries get the
Huber IRLS weight ``1/max(|d|, 1)`` times ``w_flow/count`` of their direction (counts and the
per-entry cut taken at the current state). Local parameters: per frame a world-frame rotation
increment, a translation increment and ``δ log f``; per edge a rotation, translation and
``δ log σ`` increment; per pixel ``δ log D``.

The per-pixel depths are eliminated by the Schur complement in the ``_core.lm_accumulate`` kernel
(see ``csrc/include/monst3r/lm.h``), which returns exactly every block except the couplings,
through a shared depth, of two different incident edges, of a flow target frame and an edge, and
of two flow target frames: those come from one Gram matrix per frame (and bounded pixel range) of
the features of ``_core.lm_cross_features``, with the edge point ``Y`` replaced by the frame point
``X`` in the edge features (exact at zero alignment residual). Frozen frames (windows) keep their
depth (not eliminated) and their pose (variables removed by the solver).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

try:  # the sparse reduced system; scipy is an optional dependency (extra "solvers")
    import scipy.sparse as sp
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "solver='lm' needs scipy: pip install 'monst3r-rt[solvers]' (or use solver='adam')"
    ) from exc

from .. import _core
from ..geometry import rotvec_to_rotmat, skew
from . import params as P
from .objective import AlignData, FlowData, relative_poses

Params = dict[str, np.ndarray]
NF, NE = _core.LM_FRAME_VARS, _core.LM_EDGE_VARS  # local variables per frame / per edge
XF, YF = _core.LM_EDGE_FEATURES, _core.LM_TARGET_FEATURES  # coupling features per edge / target

_DEBUG = bool(__import__("os").environ.get("LM_DEBUG"))
# Rodrigues and cross-product matrices: the one implementation is in monst3r_rt.geometry
expmap = rotvec_to_rotmat
_LEVI = -np.moveaxis(skew(np.eye(3)), 0, -1)  # Levi-Civita symbol ε_ijk


def _sym(upper: np.ndarray, k: int) -> np.ndarray:
    """(...,k(k+1)/2) upper-triangular row-major → (...,k,k) symmetric."""
    iu = np.triu_indices(k)
    out = np.zeros(upper.shape[:-1] + (k, k))
    out[..., iu[0], iu[1]] = upper
    out[..., iu[1], iu[0]] = upper
    return out


def edge_blocks(acc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kernel's (E,2,129) accumulators → edge diagonal blocks (E,7,7) (both sides, without the
    cross-edge coupling), frame–edge blocks (E,2,7,7) (rows: frame θ,T,logf; cols: edge
    φ,t,s) and reduced edge gradients (E,7)."""
    m0 = acc[..., 0]
    mb = acc[..., 1:4]
    bb = acc[..., 4:10]
    mbb = np.stack(
        [bb[..., [0, 1, 2]], bb[..., [1, 3, 4]], bb[..., [2, 4, 5]]], axis=-2
    )  # (...,3,3)
    tr = np.trace(mbb, axis1=-2, axis2=-1)
    a = np.zeros(acc.shape[:-1] + (7, 7))
    eye = np.eye(3)
    a[..., :3, :3] = tr[..., None, None] * eye - mbb
    sk = skew(mb)
    a[..., :3, 3:6] = sk
    a[..., 3:6, :3] = np.swapaxes(sk, -1, -2)
    a[..., 3:6, 3:6] = m0[..., None, None] * eye
    a[..., 3:6, 6] = mb
    a[..., 6, 3:6] = mb
    a[..., 6, 6] = tr
    a -= _sym(acc[..., 10:38], 7)
    sm = acc[..., 38:59].reshape(acc.shape[:-1] + (3, 7))
    kk = acc[..., 59:122].reshape(acc.shape[:-1] + (7, 3, 3))  # [k][i][j] = ΣW M_ik b_j
    fe = np.zeros(acc.shape[:-1] + (7, 7))
    fe[..., :, :3] = np.einsum("...kij,ijl->...kl", kk, _LEVI)
    fe[..., :, 3:6] = -np.swapaxes(sm, -1, -2)
    fe[..., :, 6] = -np.trace(kk, axis1=-2, axis2=-1)
    return a.sum(1), fe, acc[..., 122:129].sum(1)


def _blas_threads() -> tuple[Callable, Callable] | None:
    """OpenBLAS's ``(set_num_threads, get_num_threads)`` of the loaded library, or None.

    The cross-edge GEMMs are small (72×HW by HW×72) and run much faster single-threaded than
    with OpenBLAS threads competing with the kernels' OpenMP threads on a busy machine.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            libs = {tok for tok in f.read().split() if "openblas" in tok and ".so" in tok}
        for path in sorted(libs):
            lib = ctypes.CDLL(path)
            for pre, suf in (("scipy_openblas", "64_"), ("openblas", "")):
                names = (f"{pre}_set_num_threads{suf}", f"{pre}_get_num_threads{suf}")
                if all(hasattr(lib, k) for k in names):
                    return getattr(lib, names[0]), getattr(lib, names[1])
    except OSError:
        pass
    return None


# pixels per lm_cross_features call: bounds its (4k × pixels) float32 buffer by 8 MB per frame
_CROSS_BYTES = 8 << 20


@dataclass
class LmTerms:
    """What the system includes beyond the alignment and smoothness terms.

    Attributes:
        flow: measured flows and static masks (dtype of the problem), or None.
        flow_weights: ``w_flow/count`` of each direction (i→j, j→i) at the current state,
            normalised like the energy; (0, 0) = the flow term is off (before its start, or
            gated).
        pixel_thr: per-entry cut of the flow term (official ``pxl_thre``, 50).
        frozen: (N,) bool, frames whose depth and pose are fixed, or None.
        freeze_focal: the focal(s) are fixed.
        pin_scale: official scale gauge (geometric mean of σ = 0.5); False with frozen frames.
    """

    flow: FlowData | None = None
    flow_weights: tuple[float, float] = (0.0, 0.0)
    pixel_thr: float = 50.0
    frozen: np.ndarray | None = None
    freeze_focal: bool = False
    pin_scale: bool = True

    @property
    def with_flow(self) -> bool:
        return self.flow is not None and any(w > 0 for w in self.flow_weights)


class CpuKernels:
    """The ``_core`` CPU kernels of LM over host arrays (see :class:`lm_cuda.CudaKernels` for
    the GPU twin with the same methods)."""

    def __init__(self, data: AlignData, flow: FlowData | None = None):
        self.data, self.flow = data, flow

    def state(self, cur: Params, geo: P.Geometry, terms: LmTerms, norm: float) -> tuple:
        """The kernels' arguments at one state: (positional geometry arrays, keywords)."""
        d = self.data
        args = (
            d.edges, d.pts_i, d.pts_j, d.w_i, d.w_j, np.ascontiguousarray(cur["log_depth"]),
            geo.rot, geo.trans, geo.focal, d.pp, geo.edge_rot, geo.edge_trans, geo.edge_scale,
        )  # fmt: skip
        kw: dict[str, Any] = {}
        if terms.with_flow:
            f = terms.flow
            f_rot, f_trans = relative_poses(d.edges, geo.rot, geo.trans)
            dt = d.pts_i.dtype
            kw = dict(
                flow_ij=f.flow_ij, flow_ji=f.flow_ji, static_mask=f.static,
                flow_rot=f_rot.astype(dt), flow_trans=f_trans.astype(dt),
                pixel_thr=terms.pixel_thr, flow_scale=tuple(w / norm for w in terms.flow_weights),
            )  # fmt: skip
        if terms.frozen is not None:
            kw["frozen"] = np.ascontiguousarray(terms.frozen, dtype=np.uint8)
        return args, kw

    def accumulate(self, st: tuple, eps: float) -> tuple:
        return _core.lm_accumulate(*st[0], eps=eps, **st[1])

    def features(self, st: tuple, eps: float, v: int, p0: int, p1: int) -> np.ndarray:
        return _core.lm_cross_features(*st[0], eps=eps, frame=v, p0=p0, p1=p1, **st[1])

    def gram(self, x: np.ndarray) -> np.ndarray:
        return x @ x.T

    def backsub(self, st: tuple, eps: float, dframe: np.ndarray, dedge: np.ndarray) -> np.ndarray:
        return _core.lm_backsub(*st[0], dframe, dedge, eps=eps, **st[1])

    def log_depth_step(self, log_depth: Any, dl: Any, alpha: float) -> Any:
        """``log_depth + alpha·dl`` in the dtype of ``log_depth`` (computed in float64)."""
        return (log_depth.astype(np.float64) + alpha * dl.astype(np.float64)).astype(
            log_depth.dtype
        )

    def depth_scale(self, log_depth: Any) -> float:
        return float(np.median(np.exp(log_depth[:, ::4, ::4])))


def flow_blocks(acc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kernel's (E,2,LM_FLOW_ACC) flow accumulators → (source, source) (E,2,7,7), (source,
    target) (E,2,7,7) and (target, target) (E,2,7,7) blocks, gradients (E,2,14) (source 7, then
    target 7)."""
    d = _sym(acc[..., :105], 14)
    vt = d[..., :7, 7:] + acc[..., 119:168].reshape(acc.shape[:-1] + (7, 7))
    return d[..., :7, :7], vt, d[..., 7:, 7:], acc[..., 105:119]


def _incident(data: AlignData) -> list[np.ndarray]:
    """Per frame, its incident edges in increasing order (the kernels' order)."""
    incident: list[list[int]] = [[] for _ in range(data.n_frames)]
    for e, (i, j) in enumerate(data.edges):
        incident[int(i)].append(e)
        incident[int(j)].append(e)
    return [np.array(x, dtype=np.int64) for x in incident]


def flow_targets(edges: np.ndarray, incident: np.ndarray, v: int) -> np.ndarray:
    """The flow term's target frames of frame ``v``: the other frames of its incident edges
    ``incident`` (indices into ``edges`` (E,2) int64), distinct and increasing — the row order of
    the target features (``_core.lm_cross_features``)."""
    es = edges[incident]
    return np.unique(np.where(es[:, 0] == v, es[:, 1], es[:, 0])).astype(np.int64)


def _edge_maps(d: np.ndarray) -> np.ndarray:
    """(k,7,4) maps L_e from the features φ = (a, ‖a‖²) to the edge coupling J_eᵀa (with Y := X),
    d = T_v − t_e (k,3)."""
    lmat = np.zeros((len(d), 7, 4))
    lmat[:, :3, :3] = -skew(d)
    lmat[:, 3:6, :3] = -np.eye(3)
    lmat[:, 6, :3] = -d
    lmat[:, 6, 3] = -1.0
    return lmat


def _frame_gram(kern, st, eps: float, v: int, rows: int, hw: int) -> np.ndarray:
    """Σ_p x xᵀ of frame v's coupling features (float64, pixel ranges of ≤ _CROSS_BYTES)."""
    step = max(1024, _CROSS_BYTES // (4 * rows))
    g = np.zeros((rows, rows))
    for p0 in range(0, hw, step):
        g += kern.gram(kern.features(st, eps, v, p0, min(hw, p0 + step)))
    return g


def coupling_blocks(
    data: AlignData, kern, st: tuple, eps: float, trans: np.ndarray, edge_trans: np.ndarray,
    fidx: np.ndarray, eidx: np.ndarray, terms: LmTerms,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:  # fmt: skip
    """Schur couplings through the depths of a shared frame v that the kernel does not form:
    two different incident edges ``−Σ_p W_e W_e' L_e φφᵀ L_e'ᵀ/H`` (Y := X), a flow target frame
    and an edge, two flow target frames. Returns (rows, cols, blocks) in global indices.

    The per-pixel features come from ``lm_cross_features`` (recomputed from the geometry), one
    frame and a bounded pixel range at a time; their Gram matrix is accumulated in float64 per
    frame (one float32 GEMM per range).
    """
    h, w = data.shape
    out = []
    blas = _blas_threads()
    previous = blas[1]() if blas is not None else 0
    if blas is not None:
        blas[0](1)
    try:
        for v, es in enumerate(_incident(data)):
            if terms.frozen is not None and terms.frozen[v]:
                continue  # its depth is not a variable: nothing couples through it
            k = len(es)
            targets = flow_targets(data.edges, es, v) if terms.with_flow else np.zeros(0, np.int64)
            if k < 2 and len(targets) == 0:
                continue
            g = _frame_gram(kern, st, eps, v, XF * k + YF * len(targets), h * w)
            out += _frame_couplings(g, k, es, targets, trans[v], edge_trans, fidx, eidx)
    finally:
        if blas is not None:
            blas[0](previous)
    return out


def _frame_couplings(g, k, es, targets, tv, edge_trans, fidx, eidx) -> list:
    """Blocks of one frame's Gram matrix (see :func:`coupling_blocks`)."""
    lmat = _edge_maps(tv[None] - edge_trans[es])  # (k,7,4)
    gx = g[: XF * k, : XF * k].reshape(k, XF, k, XF)
    blk = -np.einsum("aij,ajbk,blk->abil", lmat, gx, lmat)  # (k,k,7,7)
    ia, ib = np.nonzero(~np.eye(k, dtype=bool))
    out = [(eidx[es[ia]], eidx[es[ib]], blk[ia, ib])]
    nt = len(targets)
    if nt:
        gy = g[XF * k :, XF * k :].reshape(nt, YF, nt, YF).transpose(0, 2, 1, 3)
        ta, tb = np.meshgrid(np.arange(nt), np.arange(nt), indexing="ij")
        out.append((fidx[targets[ta.ravel()]], fidx[targets[tb.ravel()]], -gy.reshape(-1, YF, YF)))
        gyx = g[XF * k :, : XF * k].reshape(nt, YF, k, XF)
        te = -np.einsum("uiak,alk->uail", gyx, lmat)  # (nt,k,7,7): target rows, edge cols
        tu, ej = np.meshgrid(np.arange(nt), np.arange(k), indexing="ij")
        rows, cols = fidx[targets[tu.ravel()]], eidx[es[ej.ravel()]]
        flat = te.reshape(-1, 7, 7)
        out += [(rows, cols, flat), (cols, rows, np.swapaxes(flat, -1, -2))]
    return out


def smooth_system(rot: np.ndarray, trans: np.ndarray, translation_weight: float, eps: float):
    """IRLS model of ``Σ_t ‖R_tᵀR_{t+1} − I‖_F + w_T‖R_tᵀ(T_{t+1} − T_t)‖`` in the frames' local
    parameters (θ, T): returns (value, gradient (N,6), Hessian (6N,6N))."""
    n = len(rot)
    g = np.zeros((n, 6))
    hm = np.zeros((6 * n, 6 * n))
    value = 0.0
    basis = skew(np.eye(3))  # (3,3,3)
    for t in range(n - 1):
        ra, rb = rot[t], rot[t + 1]
        m = (ra.T @ rb - np.eye(3)).ravel()
        jm = np.stack([(ra.T @ basis[k] @ rb).ravel() for k in range(3)], 1)  # (9,3) wrt ω
        j1 = np.zeros((9, 12))
        j1[:, 0:3], j1[:, 6:9] = -jm, jm
        delta = trans[t + 1] - trans[t]
        vv = ra.T @ delta
        j2 = np.zeros((3, 12))
        j2[:, 0:3] = ra.T @ skew(delta)
        j2[:, 3:6], j2[:, 9:12] = -ra.T, ra.T
        idx = np.r_[6 * t : 6 * t + 12]
        for res, jac, wt in ((m, j1, 1.0), (vv, j2, translation_weight)):
            nr = float(np.linalg.norm(res))
            value += wt * nr
            if nr > 0:
                g[t : t + 2] += (wt * jac.T @ res / nr).reshape(2, 6)
            hm[np.ix_(idx, idx)] += wt * jac.T @ jac / max(nr, eps)
    return value, g, hm


def variable_index(n: int, e_count: int, shared: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(frame-local → global (N,7), edge-local → global (E,7), number of variables)."""
    nfoc = 1 if shared else n
    f0, e0 = 6 * n, 6 * n + nfoc
    fidx = np.concatenate(
        [
            6 * np.arange(n)[:, None] + np.arange(6),
            (f0 + (0 if shared else 1) * np.arange(n))[:, None],
        ],
        1,
    )
    eidx = e0 + 7 * np.arange(e_count)[:, None] + np.arange(7)
    return fidx, eidx, e0 + 7 * e_count


@dataclass
class ReducedSystem:
    """The damping-free reduced IRLS system at one state (see :func:`reduced_system`)."""

    matrix: sp.csc_matrix  # (V,V): frames (θ,T)·N, focal(s), edges (φ,t,s)·E
    grad: np.ndarray  # (V,) reduced gradient
    kernel_state: Any  # the kernels' state (CPU: argument tuple; CUDA: named tensors)
    eps: float  # IRLS floor of ‖r‖ (the back-substitution recomputes the weights with it)
    state: tuple  # rot, trans, edge_rot, edge_t, s, logf (float64)
    kernels: Any = None

    @property
    def geo_args(self) -> tuple:
        """The geometry arguments of the CPU kernels (tests)."""
        return self.kernel_state[0]


def free_variables(n: int, e_count: int, shared: bool, terms: LmTerms) -> np.ndarray:
    """Indices of the variables left free by frozen frames and a frozen focal."""
    fidx, _, nvar = variable_index(n, e_count, shared)
    free = np.ones(nvar, bool)
    if terms.frozen is not None:
        free[fidx[terms.frozen, :6].ravel()] = False
        if not shared:
            free[fidx[terms.frozen, 6]] = False
    if terms.freeze_focal:
        free[fidx[:, 6]] = False
    return np.flatnonzero(free)


class _Triplets:
    """COO triplets of the reduced system."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []

    def put(self, ri: np.ndarray, ci: np.ndarray, blk: np.ndarray) -> None:
        self.rows.append(np.broadcast_to(ri[..., :, None], blk.shape).ravel())
        self.cols.append(np.broadcast_to(ci[..., None, :], blk.shape).ravel())
        self.vals.append(blk.ravel())

    def matrix(self, nvar: int) -> sp.csc_matrix:
        return sp.coo_matrix(
            (np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols))),
            shape=(nvar, nvar),
        ).tocsc()


def reduced_system(
    data: AlignData,
    cur: Params,
    ws: float = 0.01,
    wt: float = 1.0,
    *,
    cross: bool = True,
    terms: LmTerms | None = None,
    kernels: Any = None,
) -> ReducedSystem:
    """IRLS Gauss–Newton system with the depths eliminated, normalised like the energy.

    ``cross=False`` leaves out the couplings formed from features (:func:`coupling_blocks`; for
    tests: every other block is exact). ``kernels``: :class:`CpuKernels` (default) or the CUDA
    twin.
    """
    terms = terms or LmTerms()
    kern = kernels or CpuKernels(data, terms.flow)
    n, e_count = data.n_frames, len(data.edges)
    h, w = data.shape
    norm = 1.0 / (e_count * h * w)
    fidx, eidx, nvar = variable_index(n, e_count, cur["focal"].shape[0] == 1)
    geo = P.geometry(cur, n, terms.pin_scale)
    state = tuple(
        x.astype(np.float64)
        for x in (geo.rot, geo.trans, geo.edge_rot, geo.edge_trans, cur["pw_poses"][:, 7])
    ) + (cur["focal"].astype(np.float64) / P.FOCAL_BREAK,)
    st = kern.state(cur, geo, terms, norm)
    eps = 1e-4 * kern.depth_scale(cur["log_depth"])
    _, facc, eacc, flow_acc = kern.accumulate(st, eps)
    trip, grad = _Triplets(), np.zeros(nvar)
    ediag, fe, eg = edge_blocks(eacc)
    trip.put(fidx, fidx, norm * _sym(facc[:, :28], 7))
    np.add.at(grad, fidx, norm * facc[:, 28:35])
    trip.put(eidx, eidx, norm * ediag)
    grad[eidx] += norm * eg
    fr = fidx[data.edges]  # (E,2,7)
    ec = np.broadcast_to(eidx[:, None], fr.shape)
    trip.put(fr, ec, norm * fe)
    trip.put(ec, fr, norm * np.swapaxes(fe, -1, -2))
    if len(flow_acc):
        _put_flow(trip, grad, flow_acc, fr, fidx[data.edges[:, ::-1]], norm)
    if cross:
        for ri, ci, blk in coupling_blocks(
            data, kern, st, eps, state[1], state[3], fidx, eidx, terms
        ):
            trip.put(ri, ci, norm * blk)
    _, sg, sh = smooth_system(state[0], state[1], wt, 1e-6)
    grad[: 6 * n] += ws * sg.ravel()
    si, sj = np.nonzero(sh)
    trip.rows.append(si)
    trip.cols.append(sj)
    trip.vals.append(ws * sh[si, sj])
    return ReducedSystem(trip.matrix(nvar), grad, st, eps, state, kern)


def _put_flow(trip: _Triplets, grad: np.ndarray, flow_acc, src, tgt, norm: float) -> None:
    """The flow accumulators' blocks: src/tgt (E,2,7) global indices of each (edge, side)'s
    source and target frame."""
    vv, vt, tt, fg = flow_blocks(flow_acc)
    trip.put(src, src, norm * vv)
    trip.put(tgt, tgt, norm * tt)
    trip.put(src, tgt, norm * vt)
    trip.put(tgt, src, norm * np.swapaxes(vt, -1, -2))
    np.add.at(grad, src, norm * fg[..., :7])
    np.add.at(grad, tgt, norm * fg[..., 7:])
