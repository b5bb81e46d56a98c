"""Levenberg–Marquardt (IRLS Gauss–Newton) solver for the global alignment (``solver="lm"``).

The objective (spec §4.5, no flow term) is a sum of non-squared norms; each LM iteration
minimises its IRLS majoriser ``Σ W/2‖r + Jδ‖²`` (``W = w/max(‖r‖, eps)``, exact gradient) with a
Marquardt damping of the reduced system. Local parameters: per frame a world-frame rotation
increment, a translation increment and ``δ log f``; per edge a rotation, translation and
``δ log σ`` increment (``Σ δ log σ = 0`` by a Lagrange multiplier, which keeps the official gauge
``mean s`` fixed); per pixel ``δ log D``. The per-pixel depths are eliminated by the Schur
complement in the ``_core.lm_accumulate`` kernel (one pass over the pixels of every edge), which
returns every block of the reduced system exactly except the coupling of two different edges
through a shared depth; that coupling is formed here with one GEMM per frame (and bounded pixel
range) of features from ``_core.lm_cross_features``, after replacing the edge point ``Y`` by the
frame point ``X`` in it (exact at zero residual). The reduced system (6 per frame + focal + 7 per
edge) is sparse and solved directly; the depths follow by back-substitution
(``_core.lm_backsub``). No kernel keeps anything per pixel or per residual: the IRLS weights are
recomputed where needed, so the memory beyond the inputs stays O(N + E + one frame). Steps are
accepted only when the energy evaluated by :func:`objective.evaluate` decreases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

try:  # the sparse reduced system; scipy is an optional dependency (extra "solvers")
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "solver='lm' needs scipy: pip install 'monst3r-rt[solvers]' (or use solver='adam')"
    ) from exc

from .. import _core
from . import params as P
from .objective import AlignData, evaluate

Params = dict[str, np.ndarray]

_LEVI = np.zeros((3, 3, 3))
for _i, _j, _k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
    _LEVI[_i, _j, _k], _LEVI[_i, _k, _j] = 1.0, -1.0
_IU7 = np.triu_indices(7)
_DEBUG = bool(__import__("os").environ.get("LM_DEBUG"))


def skew(v: np.ndarray) -> np.ndarray:
    """(...,3) → (...,3,3) with ``skew(v) @ x = v × x``."""
    return -np.einsum("ijk,...k->...ij", _LEVI, v)


def expmap(w: np.ndarray) -> np.ndarray:
    """Rodrigues: (K,3) rotation vectors → (K,3,3)."""
    th = np.linalg.norm(w, axis=-1)[..., None, None]
    k = skew(w)
    small = th < 1e-8
    ths = np.where(small, 1.0, th)
    a = np.where(small, 1.0 - th**2 / 6, np.sin(ths) / ths)
    b = np.where(small, 0.5 - th**2 / 24, (1 - np.cos(ths)) / ths**2)
    return np.eye(3) + a * k + b * (k @ k)


def _sym7(upper: np.ndarray) -> np.ndarray:
    """(...,28) upper-triangular row-major → (...,7,7) symmetric."""
    out = np.zeros(upper.shape[:-1] + (7, 7))
    out[..., _IU7[0], _IU7[1]] = upper
    out[..., _IU7[1], _IU7[0]] = upper
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
    a -= _sym7(acc[..., 10:38])
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


def cross_edge_blocks(
    data: AlignData, geo_args: tuple, eps: float, trans: np.ndarray, edge_trans: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Schur coupling of two different edges through the depths of a shared frame, with the
    edge point replaced by the frame point: ``−Σ_p W_e W_e' L_e φφᵀ L_e'ᵀ / H``,
    ``φ = (a, ‖a‖²)``. Returns (edge_a, edge_b, blocks (K,7,7)) for the ordered pairs.

    The per-pixel features ``W_e φ/√H`` come from ``_core.lm_cross_features`` (recomputed from
    the geometry), one frame and a bounded pixel range at a time; their Gram matrix is
    accumulated in float64 per frame (one float32 GEMM per range).
    """
    n = data.n_frames
    h, w = data.shape
    hw = h * w
    incident: list[list[int]] = [[] for _ in range(n)]
    for e, (i, j) in enumerate(data.edges):  # the kernel's order: increasing edge
        incident[int(i)].append(e)
        incident[int(j)].append(e)
    ea, eb, blocks = [], [], []
    blas = _blas_threads()
    previous = blas[1]() if blas is not None else 0
    if blas is not None:
        blas[0](1)
    try:
        for v in range(n):
            es = np.array(incident[v])
            k = len(es)
            if k < 2:
                continue
            step = max(1024, _CROSS_BYTES // (16 * k))
            g = np.zeros((4 * k, 4 * k))
            for p0 in range(0, hw, step):
                x = _core.lm_cross_features(
                    *geo_args, eps=eps, frame=v, p0=p0, p1=min(hw, p0 + step)
                )
                g += x @ x.T
            g = g.reshape(k, 4, k, 4)
            d = trans[v][None] - edge_trans[es]  # (k,3)
            lmat = np.zeros((k, 7, 4))
            lmat[:, :3, :3] = -skew(d)
            lmat[:, 3:6, :3] = -np.eye(3)
            lmat[:, 6, :3] = -d
            lmat[:, 6, 3] = -1.0
            blk = -np.einsum("aij,ajbk,blk->abil", lmat, g, lmat)  # (k,k,7,7)
            off = ~np.eye(k, dtype=bool)
            ia, ib = np.nonzero(off)
            ea.append(es[ia])
            eb.append(es[ib])
            blocks.append(blk[ia, ib])
    finally:
        if blas is not None:
            blas[0](previous)
    if not blocks:
        return np.zeros(0, int), np.zeros(0, int), np.zeros((0, 7, 7))
    return np.concatenate(ea), np.concatenate(eb), np.concatenate(blocks)


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


@dataclass
class ReducedSystem:
    """The damping-free reduced IRLS system at one state (see :func:`reduced_system`)."""

    matrix: sp.csc_matrix  # (V,V): frames (θ,T)·N, focal(s), edges (φ,t,s)·E
    grad: np.ndarray  # (V,) reduced gradient
    geo_args: tuple
    eps: float  # IRLS floor of ‖r‖ (the back-substitution recomputes the weights with it)
    state: tuple  # rot, trans, edge_rot, edge_t, s, logf (float64)


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


def reduced_system(
    data: AlignData,
    cur: Params,
    ws: float = 0.01,
    wt: float = 1.0,
    *,
    cross: bool = True,
) -> ReducedSystem:
    """IRLS Gauss–Newton system with the depths eliminated, normalised like the energy.

    ``cross=False`` leaves out the (approximate) coupling of different edges through shared
    depths (for tests: every other block is exact).
    """
    n, e_count = data.n_frames, len(data.edges)
    h, w = data.shape
    norm = 1.0 / (e_count * h * w)
    fidx, eidx, nvar = variable_index(n, e_count, cur["focal"].shape[0] == 1)
    f0, e0 = 6 * n, int(eidx[0, 0]) if e_count else nvar
    geo = P.geometry(cur, n)
    rot = geo.rot.astype(np.float64)
    trans = geo.trans.astype(np.float64)
    edge_rot = geo.edge_rot.astype(np.float64)
    edge_t = geo.edge_trans.astype(np.float64)
    s = cur["pw_poses"][:, 7].astype(np.float64)
    logf = cur["focal"].astype(np.float64) / P.FOCAL_BREAK
    depth_scale = float(np.median(np.exp(cur["log_depth"][:, ::4, ::4])))
    geo_args = (
        data.edges, data.pts_i, data.pts_j, data.w_i, data.w_j,
        np.ascontiguousarray(cur["log_depth"]), geo.rot, geo.trans, geo.focal, data.pp,
        geo.edge_rot, geo.edge_trans, geo.edge_scale,
    )  # fmt: skip
    eps = 1e-4 * depth_scale
    _, facc, eacc = _core.lm_accumulate(*geo_args, eps=eps)
    # reduced system
    ediag, fe, eg = edge_blocks(eacc)
    fblk = _sym7(facc[:, :28])
    fg = facc[:, 28:35]
    if cross:
        ca, cb, cblk = cross_edge_blocks(data, geo_args, eps, trans, edge_t)
    else:
        ca, cb, cblk = np.zeros(0, int), np.zeros(0, int), np.zeros((0, 7, 7))
    _, sg, sh = smooth_system(rot, trans, wt, 1e-6)
    grad = np.zeros(nvar)
    np.add.at(grad, fidx, norm * fg)
    grad[:f0] += ws * sg.ravel()
    grad[e0:] = norm * eg.ravel()
    rows, cols, vals = [], [], []

    def put(ri, ci, blk):
        rows.append(np.broadcast_to(ri[..., :, None], blk.shape).ravel())
        cols.append(np.broadcast_to(ci[..., None, :], blk.shape).ravel())
        vals.append(blk.ravel())

    put(fidx, fidx, norm * fblk)
    put(eidx, eidx, norm * ediag)
    fr = fidx[data.edges]  # (E,2,7)
    ec = np.broadcast_to(eidx[:, None], fr.shape)
    put(fr, ec, norm * fe)
    put(ec, fr, norm * np.swapaxes(fe, -1, -2))
    put(eidx[ca], eidx[cb], norm * cblk)
    si, sj = np.nonzero(sh)
    rows.append(si)
    cols.append(sj)
    vals.append(ws * sh[si, sj])
    s_mat = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(nvar, nvar),
    ).tocsc()
    return ReducedSystem(s_mat, grad, geo_args, eps, (rot, trans, edge_rot, edge_t, s, logf))


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


def _to_params(rot, trans, logf, edge_rot, s, edge_t, log_depth, dtype) -> Params:
    poses = np.concatenate([P.rotmat_to_quat(rot), P.signed_log1p(trans)], 1)
    sigma = P.pairwise_scale(s)
    pw = np.concatenate(
        [P.rotmat_to_quat(edge_rot), P.signed_log1p(edge_t / sigma[:, None]), s[:, None]], 1
    )
    return {
        "log_depth": np.ascontiguousarray(log_depth, dtype=dtype),
        "im_poses": np.ascontiguousarray(poses, dtype=dtype),
        "focal": np.ascontiguousarray(logf * P.FOCAL_BREAK, dtype=dtype),
        "pw_poses": np.ascontiguousarray(pw, dtype=dtype),
    }


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
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Minimise the alignment + smoothness energy by Levenberg–Marquardt.

    Args:
        data: the problem (float32 or float64).
        params: official parameters (see :mod:`.params`), in the dtype of ``data``.
        niter: LM iterations (each: one accumulation pass, one sparse solve, one
            back-substitution and one evaluation per tried damping).
        callback: called with ``(iteration, energy)`` after each iteration.
        lam0: initial Marquardt damping (relative to the reduced system's diagonal).
        max_tries: damping increases per iteration before giving up.
        overrelax: after an accepted step δ, ``overrelax·δ`` is tried too (1 = off).
        ftol: stop once an iteration lowers the energy by less than ``ftol`` relative
            (0 = run all ``niter`` iterations).

    Returns:
        Final parameters (official parameterisation, dtype of ``data``) and the energies
        ``[E_0, E_1, ..., E_k]`` from :func:`objective.evaluate` (initial, then after each
        iteration; non-increasing). Stops early when no damping improves the energy, or
        on ``ftol``.
    """
    dtype = data.pts_i.dtype
    n, e_count = data.n_frames, len(data.edges)
    ws, wt = temporal_smoothing_weight, translation_weight
    shared = params["focal"].shape[0] == 1
    nfoc = 1 if shared else n
    fidx, eidx, nvar = variable_index(n, e_count, shared)
    f0, e0 = 6 * n, 6 * n + nfoc

    def energy_of(p: Params) -> float:
        return float(evaluate(data, p, temporal_smoothing_weight=ws, translation_weight=wt)[0])

    cur = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in params.items()}
    energy = energy_of(cur)
    history = [energy]
    lam = lam0
    for it in range(niter):
        sys_ = reduced_system(data, cur, ws, wt)
        s_mat, grad, geo_args = sys_.matrix, sys_.grad, sys_.geo_args
        diag = s_mat.diagonal()
        floor = 1e-9 * float(diag.max())
        sidx = eidx[:, 6]
        border = sp.csc_matrix((np.ones(e_count), (np.zeros(e_count, int), sidx)), shape=(1, nvar))
        rhs = np.concatenate([-grad, [0.0]])
        improved = False
        for _ in range(max_tries):
            damp = sp.diags(lam * (diag + floor) + floor)
            kkt = sp.bmat([[s_mat + damp, border.T], [border, None]], format="csc")
            dx = solve_kkt(kkt, rhs)[:nvar]
            dframe = np.ascontiguousarray(dx[fidx])
            dedge = np.ascontiguousarray(dx[e0:].reshape(e_count, 7))
            dl = _core.lm_backsub(*geo_args, dframe, dedge, eps=sys_.eps)
            base = (dframe, dedge, dx[f0 : f0 + nfoc], dl.astype(np.float64))

            def candidate(alpha: float, base=base, st=sys_.state, ld=cur["log_depth"]) -> Params:
                df, de, dfoc, dld = (alpha * b for b in base)
                r0, t0, er0, et0, s0, lf0 = st
                return _to_params(
                    expmap(df[:, :3]) @ r0, t0 + df[:, 3:6], lf0 + dfoc,
                    expmap(de[:, :3]) @ er0, s0 + de[:, 6], et0 + de[:, 3:6],
                    ld.astype(np.float64) + dld, dtype,
                )  # fmt: skip

            cand = candidate(1.0)
            e_new = energy_of(cand)
            if np.isfinite(e_new) and e_new < energy:
                cur, energy, improved = cand, e_new, True
                lam = max(lam / 3.0, 1e-9)
                # IRLS steps undershoot (the majoriser's curvature along r is too high):
                # try an over-relaxed step once
                if overrelax > 1.0:
                    cand = candidate(overrelax)
                    e_new = energy_of(cand)
                    if np.isfinite(e_new) and e_new < energy:
                        cur, energy = cand, e_new
                break
            lam *= 4.0
            if _DEBUG:
                print("  reject", lam, e_new, energy)
        if not improved:
            break
        history.append(energy)
        if callback is not None:
            callback(it, energy)
        if history[-2] - energy < ftol * abs(history[-2]):
            break
    return cur, history
