"""Levenberg–Marquardt alignment solver (``solver="lm"``): kernels against a finite-difference
reference, convergence against Adam, exact-data recovery."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from align_problems import random_problem
from tolerance import assert_close, scale_of

pytest.importorskip("scipy", reason="solver='lm' needs scipy (extra 'solvers')")

from monst3r_rt import _core
from monst3r_rt.align import driver
from monst3r_rt.align import params as P
from monst3r_rt.align.config import AlignConfig
from monst3r_rt.align.init import init_mst
from monst3r_rt.align.lm import LmTerms, expmap, reduced_system, solve_lm, variable_index
from monst3r_rt.align.objective import evaluate
from monst3r_rt.align.solvers import adam
from monst3r_rt.synthetic import make_scene


def _residuals(data, geo, n, dx, dlog, shared=True):
    """All residuals (E,2,HW,3) at local perturbation ``dx`` (global vector) and ``dlog``."""
    fidx, eidx, _ = variable_index(n, len(data.edges), shared)
    h, w = data.shape
    df, de = dx[fidx], dx[eidx]
    rot = expmap(df[:, :3]) @ geo.rot
    trans = geo.trans + df[:, 3:6]
    focal = geo.focal * np.exp(df[:, 6])
    erot = expmap(de[:, :3]) @ geo.edge_rot
    et = geo.edge_trans + de[:, 3:6]
    sig = geo.edge_scale * np.exp(de[:, 6])
    ys, xs = np.divmod(np.arange(h * w), w)
    d = np.exp(geo.depth_log.reshape(n, -1) + dlog.reshape(n, -1))
    c = np.stack(
        [d * (xs - data.pp[:, :1]) / focal[:, None], d * (ys - data.pp[:, 1:]) / focal[:, None], d],
        -1,
    )
    x = np.einsum("nij,npj->npi", rot, c) + trans[:, None]
    out = []
    for side, pts in enumerate((data.pts_i, data.pts_j)):
        y = sig[:, None, None] * np.einsum("eij,epj->epi", erot, pts.reshape(len(sig), -1, 3))
        out.append(x[data.edges[:, side]] - (y + et[:, None]))
    return np.stack(out, 1)


def test_reduced_system_matches_finite_differences():
    data, params, _ = random_problem(n=4, h=3, w=4, seed=1, dtype=np.float64)
    data.w_i[0, 1, 2] = data.w_j[3, 0, 0] = 0.0  # masked residuals (the kernels skip them)
    n, e_count = data.n_frames, len(data.edges)
    hw = 12
    geo = P.geometry(params, n)
    fidx, eidx, nvar = variable_index(n, e_count, True)
    nd = n * hw
    r0 = _residuals(data, geo, n, np.zeros(nvar), np.zeros(nd))
    # full Jacobian by central differences over (x, depth)
    cols = []
    step = 1e-6
    for k in range(nvar + nd):
        z = np.zeros(nvar + nd)
        z[k] = step
        rp = _residuals(data, geo, n, z[:nvar], z[nvar:])
        rm = _residuals(data, geo, n, -z[:nvar], -z[nvar:])
        cols.append(((rp - rm) / (2 * step)).ravel())
    jac = np.stack(cols, 1)
    wts = np.stack([data.w_i, data.w_j], 1).reshape(e_count, 2, hw)
    eps = 1e-4 * float(np.median(np.exp(params["log_depth"][:, ::4, ::4])))
    wirls = wts / np.maximum(np.linalg.norm(r0, axis=-1), eps)
    wr = np.repeat(wirls.ravel(), 3)
    norm = 1.0 / (e_count * hw)
    hfull = norm * jac.T @ (wr[:, None] * jac)
    gfull = norm * jac.T @ (wr * r0.ravel())
    hxx, hxd, hdd = hfull[:nvar, :nvar], hfull[:nvar, nvar:], np.diag(hfull[nvar:, nvar:])
    assert_close(hfull[nvar:, nvar:], np.diag(hdd), rel=1e-12)  # depths decouple
    s_ref = hxx - (hxd / hdd) @ hxd.T
    g_ref = gfull[:nvar] - hxd @ (gfull[nvar:] / hdd)

    red = reduced_system(data, params, ws=0.0, cross=False)
    s_ours = red.matrix.toarray()
    # every block except the coupling of two different edges is exact
    owner = np.full(nvar, -1)
    owner[eidx] = np.arange(e_count)[:, None]
    cross = (owner[:, None] >= 0) & (owner[None, :] >= 0) & (owner[:, None] != owner[None, :])
    scale = np.abs(s_ref).max()
    assert np.allclose(s_ours[~cross], s_ref[~cross], atol=1e-5 * scale)
    assert np.abs(s_ours[cross]).max() <= 1e-12 * scale
    np.testing.assert_allclose(red.grad, g_ref, atol=1e-6 * np.abs(g_ref).max())
    # back-substitution: dl = −(g_d + H_dx δx) / H_dd
    rng = np.random.default_rng(0)
    dx = rng.normal(0, 1e-2, nvar)
    # (the kernel recomputes the IRLS weights, H and g from the geometry with the same eps)
    assert red.eps == pytest.approx(eps)
    df, de = np.ascontiguousarray(dx[fidx]), np.ascontiguousarray(dx[eidx])
    dl = _core.lm_backsub(*red.geo_args, df, de, eps=red.eps)
    dl_ref = -(gfull[nvar:] + hxd.T @ dx) / hdd
    assert_close(dl.ravel(), dl_ref, rel=1e-8, rtol=1e-5)
    # float32 problem: the same up to float32 rounding
    data32 = data.astype(np.float32)
    red32 = reduced_system(data32, {k: v.astype(np.float32) for k, v in params.items()}, ws=0.0)
    dl32 = _core.lm_backsub(*red32.geo_args, df, de, eps=red32.eps)
    assert dl32.dtype == np.float32
    np.testing.assert_allclose(dl32, dl, rtol=1e-3, atol=1e-4 * np.abs(dl).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_features_match_numpy(dtype):
    """``lm_cross_features`` (recomputed IRLS weights): rows ``W_j φ/√H`` of each frame's incident
    (edge, side) pairs, equal to a NumPy evaluation at a non-zero residual, over any pixel range."""
    data, params, _ = random_problem(n=4, h=3, w=4, seed=3, dtype=np.float64)
    data.w_i[1, 0, 1] = data.w_j[2, 2, 3] = 0.0
    n, e_count, hw = data.n_frames, len(data.edges), 12
    geo = P.geometry(params, n)
    _, _, nvar = variable_index(n, e_count, True)
    r0 = _residuals(data, geo, n, np.zeros(nvar), np.zeros(n * hw))  # (E,2,HW,3)
    eps = 1e-4 * float(np.median(np.exp(params["log_depth"][:, ::4, ::4])))
    wts = np.stack([data.w_i, data.w_j], 1).reshape(e_count, 2, hw)
    wirls = wts / np.maximum(np.linalg.norm(r0, axis=-1), eps)
    ys, xs = np.divmod(np.arange(hw), 4)
    d = np.exp(geo.depth_log.reshape(n, hw))
    f = geo.focal[:, None]
    c = np.stack([d * (xs - data.pp[:, :1]) / f, d * (ys - data.pp[:, 1:]) / f, d], -1)
    a = np.einsum("nij,npj->npi", geo.rot, c)  # (N,HW,3)
    a2 = (a * a).sum(-1)
    hdd = np.zeros((n, hw))
    for e, ij in enumerate(data.edges):
        for side, v in enumerate(ij):
            hdd[v] += wirls[e, side] * a2[v]
    phi = np.concatenate([a, a2[..., None]], -1) / np.sqrt(hdd)[..., None]  # (N,HW,4)

    data_t = data.astype(dtype)
    red = reduced_system(data_t, {k: v.astype(dtype) for k, v in params.items()}, ws=0.0)
    assert red.eps == pytest.approx(eps, rel=1e-6)
    for v in range(n):
        inc = [(e, s) for e, ij in enumerate(data.edges) for s in (0, 1) if ij[s] == v]
        ref = np.concatenate([wirls[e, s][None] * phi[v].T for e, s in inc])  # (4k,HW)
        x = _core.lm_cross_features(*red.geo_args, eps=red.eps, frame=v)
        assert x.dtype == np.float32 and x.shape == (4 * len(inc), hw)
        rtol = 1e-4 if dtype == np.float32 else 1e-6
        assert_close(x, ref, rel=1e-6, rtol=rtol, err_msg=f"frame {v}")
        parts = [
            _core.lm_cross_features(*red.geo_args, eps=red.eps, frame=v, p0=p0, p1=p1)
            for p0, p1 in ((0, 5), (5, 11), (11, 12))
        ]
        np.testing.assert_array_equal(np.concatenate(parts, 1), x)
    with pytest.raises(ValueError):
        _core.lm_cross_features(*red.geo_args, eps=red.eps, frame=n)
    with pytest.raises(ValueError):
        _core.lm_cross_features(*red.geo_args, eps=red.eps, frame=0, p0=5, p1=5)


def _problem(noise: bool, n_objects: int, n_frames: int = 10, size=(32, 48)):
    sc = make_scene(
        n_frames=n_frames, size=size, n_objects=n_objects,
        depth_noise=0.05 if noise else 0.0, pose_noise=0.02 if noise else 0.0,
    )  # fmt: skip
    data = driver.prepare(sc.edges, sc.pts_i, sc.pts_j, sc.conf_i, sc.conf_j, n_frames)
    p = init_mst(data.edges, data.pts_i, data.pts_j, sc.conf_i, sc.conf_j)
    return sc, data, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in p.items()}


@pytest.fixture(scope="module")
def noisy_run():
    sc, data, p0 = _problem(noise=True, n_objects=1)
    _, h_adam = adam(lambda p, it: evaluate(data, p)[:2], p0, 300, AlignConfig().lr_at)
    p_lm, h_lm = solve_lm(data, p0, niter=30)
    return data, p0, p_lm, h_lm, evaluate(data, p0)[0], h_adam


def test_lm_reaches_adam_energy(noisy_run):
    data, _, p_lm, h_lm, e0, h_adam = noisy_run
    e_adam = min(h_adam)  # energy Adam reached in 300 iterations
    assert len(h_lm) <= 31
    assert h_lm[-1] <= e_adam
    assert evaluate(data, p_lm)[0] == pytest.approx(h_lm[-1], rel=1e-6)
    assert h_lm[0] == pytest.approx(e0, rel=1e-6)


def test_lm_energy_monotone(noisy_run):
    _, p0, p_lm, h_lm, _, _ = noisy_run
    assert np.all(np.diff(h_lm) < 0)
    for k, v in p0.items():
        assert p_lm[k].shape == v.shape and p_lm[k].dtype == v.dtype


def test_lm_exact_data_recovers_poses():
    sc, data, p0 = _problem(noise=False, n_objects=0)
    data = data.astype(np.float64)
    rng = np.random.default_rng(0)
    p0 = {k: v.astype(np.float64) for k, v in p0.items()}
    p0["log_depth"] += rng.normal(0, 0.02, p0["log_depth"].shape)
    p0["im_poses"][:, 4:7] += rng.normal(0, 0.01, (data.n_frames, 3))
    p0["pw_poses"][:, :7] += rng.normal(0, 0.01, (len(data.edges), 7))
    p_lm, h_lm = solve_lm(data, p0, niter=30, temporal_smoothing_weight=0.0)
    _, _, terms0 = evaluate(data, p0, temporal_smoothing_weight=0.0)
    _, _, terms = evaluate(data, p_lm, temporal_smoothing_weight=0.0)
    assert terms["align"] < 1e-3 * terms0["align"], (terms, terms0, len(h_lm))
    geo = P.geometry(p_lm, data.n_frames)
    # camera centres up to a similarity (Umeyama), rotations up to a global rotation
    a, b = geo.trans.astype(np.float64), sc.poses[:, :3, 3]
    ac, bc = a - a.mean(0), b - b.mean(0)
    u, s, vt = np.linalg.svd(bc.T @ ac)
    d = np.diag([1, 1, np.sign(np.linalg.det(u @ vt))])
    r = u @ d @ vt
    scale = (s * np.diag(d)).sum() / (ac**2).sum()
    err = np.linalg.norm(scale * ac @ r.T - bc, axis=1).max()
    assert err < 1e-2 * np.linalg.norm(bc, axis=1).max()
    rel = np.einsum("nji,njk->nik", sc.poses[:, :3, :3], r @ geo.rot.astype(np.float64))
    g = rel[0]
    ang = [np.arccos(np.clip((np.trace(g.T @ m) - 1) / 2, -1, 1)) for m in rel]
    assert max(ang) < 1e-2


def test_cross_edge_coupling_exact_at_zero_residual():
    """The cross-edge Schur coupling (edge point replaced by frame point) is exact when Y = X."""
    data, params, _ = random_problem(n=4, h=3, w=4, seed=2, dtype=np.float64)
    n, e_count = data.n_frames, len(data.edges)
    geo = P.geometry(params, n)
    fidx, eidx, nvar = variable_index(n, e_count, True)
    r0 = _residuals(data, geo, n, np.zeros(nvar), np.zeros(n * 12))  # (E,2,HW,3)
    corr = np.einsum("eji,espj->espi", geo.edge_rot, r0) / geo.edge_scale[:, None, None, None]
    data.pts_i = np.ascontiguousarray(data.pts_i + corr[:, 0].reshape(data.pts_i.shape))
    data.pts_j = np.ascontiguousarray(data.pts_j + corr[:, 1].reshape(data.pts_j.shape))
    r0 = _residuals(data, geo, n, np.zeros(nvar), np.zeros(n * 12))
    assert np.abs(r0).max() < 1e-12 * scale_of(data.pts_i, data.pts_j, geo.trans)
    # reference: full system with unit IRLS weights (W = w/eps everywhere here) via the kernel's
    # exact blocks plus the dense Schur coupling computed from the exact Jacobian
    step = 1e-6
    cols = []
    for k in range(nvar + n * 12):
        z = np.zeros(nvar + n * 12)
        z[k] = step
        rp = _residuals(data, geo, n, z[:nvar], z[nvar:])
        rm = _residuals(data, geo, n, -z[:nvar], -z[nvar:])
        cols.append(((rp - rm) / (2 * step)).ravel())
    jac = np.stack(cols, 1)
    eps = 1e-4 * float(np.median(np.exp(params["log_depth"][:, ::4, ::4])))
    wts = np.stack([data.w_i, data.w_j], 1).ravel() / eps
    wr = np.repeat(wts, 3)
    norm = 1.0 / (e_count * 12)
    hfull = norm * jac.T @ (wr[:, None] * jac)
    hxd, hdd = hfull[:nvar, nvar:], np.diag(hfull[nvar:, nvar:])
    s_ref = hfull[:nvar, :nvar] - (hxd / hdd) @ hxd.T
    s_ours = reduced_system(data, params, ws=0.0).matrix.toarray()
    np.testing.assert_allclose(s_ours, s_ref, atol=1e-5 * np.abs(s_ref).max())


def test_global_align_lm_stops_on_ftol_below_adam():
    """Through global_align: LM's relative-decrease stop (lm_ftol) comes after Adam's energy."""
    sc = make_scene(n_frames=10, size=(32, 48), n_objects=1, depth_noise=0.03, pose_noise=0.02,
                    seed=21)  # fmt: skip
    args = (sc.edges, sc.pts_i, sc.pts_j, sc.conf_i, sc.conf_j)
    adam_res = driver.global_align(*args, config=AlignConfig(niter=300))
    lm_res = driver.global_align(*args, config=AlignConfig(solver="lm", lm_ftol=1e-3))
    hist = lm_res.energy
    assert len(hist) - 1 < 30  # stopped early
    assert hist[-2] - hist[-1] < 1e-3 * hist[-2]  # ... because of the tolerance
    assert hist[-1] <= adam_res.energy[-1] * (1 + 1e-3)


# ---- the flow term ------------------------------------------------------------------------------
def _flow_residuals(data, flow, geo, dx, dlog, shared):
    """Masked flow residuals m·(ego − meas) (E,2,2,HW) at a local perturbation: the official
    formula (spec §4.5) written directly in NumPy, direction 0 = i→j (pixels of i)."""
    n, e_count = data.n_frames, len(data.edges)
    h, w = data.shape
    fidx, _, _ = variable_index(n, e_count, shared)
    df = dx[fidx]
    rot = expmap(df[:, :3]) @ geo.rot
    trans = geo.trans + df[:, 3:6]
    focal = geo.focal * np.exp(df[:, 6])
    depth = np.exp(geo.depth_log.reshape(n, -1) + dlog.reshape(n, -1))
    ys, xs = np.divmod(np.arange(h * w), w)
    out = np.zeros((e_count, 2, 2, h * w))
    for e, (i, j) in enumerate(data.edges):
        for side, (s, t) in enumerate(((i, j), (j, i))):
            r_rel, t_rel = rot[t].T @ rot[s], rot[t].T @ (trans[s] - trans[t])
            ray = np.stack([(xs - data.pp[s, 0]) / focal[s], (ys - data.pp[s, 1]) / focal[s],
                            np.ones(h * w)])  # fmt: skip
            a = r_rel @ ray + t_rel[:, None] / (depth[s] + 1e-6)
            z = a[2] + 1e-6
            ego = np.stack([(focal[t] * a[0] + data.pp[t, 0] * a[2]) / z - xs,
                            (focal[t] * a[1] + data.pp[t, 1] * a[2]) / z - ys])  # fmt: skip
            meas = (flow.flow_ij if side == 0 else flow.flow_ji)[e].reshape(2, -1)
            out[e, side] = (ego - meas) * flow.static[s].ravel()
    return out


def _flow_problem(seed: int, zero_residual: bool = False):
    """Random float64 problem with flows (per-frame focals, so that each frame's focal is its own
    variable), cut entries (|d| ≥ 50.5) and masked pixels."""
    data, params, flow = random_problem(n=4, h=3, w=4, seed=seed, dtype=np.float64, flow=True)
    params["focal"] = params["focal"] + np.array([0.0, 0.3, -0.2, 0.1])  # (N,): 20·log f
    geo = P.geometry(params, data.n_frames)
    n, e_count = data.n_frames, len(data.edges)
    _, _, nvar = variable_index(n, e_count, False)
    if zero_residual:  # move the predictions onto the frame points: alignment residual 0
        r0 = _residuals(data, geo, n, np.zeros(nvar), np.zeros(n * 12), shared=False)
        corr = np.einsum("eji,espj->espi", geo.edge_rot, r0) / geo.edge_scale[:, None, None, None]
        data.pts_i = np.ascontiguousarray(data.pts_i + corr[:, 0].reshape(data.pts_i.shape))
        data.pts_j = np.ascontiguousarray(data.pts_j + corr[:, 1].reshape(data.pts_j.shape))
    # measured flow = ego-flow + noise, a few far outliers (cut) and some entries in the
    # quadratic and linear parts of the smooth-L1
    ego = _flow_residuals(data, replace(flow, flow_ij=flow.flow_ij * 0, flow_ji=flow.flow_ji * 0,
                                         static=np.ones_like(flow.static)),
                          geo, np.zeros(nvar), np.zeros(n * 12), False)  # fmt: skip
    rng = np.random.default_rng(seed)
    meas = ego.reshape(e_count, 2, 2, 3, 4) + rng.normal(0, 1.5, ego.shape).reshape(-1, 2, 2, 3, 4)
    meas[0, 0, 0, 1, 1] += 300.0
    meas[2, 1, 1, 0, 3] -= 200.0
    flow = replace(flow, flow_ij=np.ascontiguousarray(meas[:, 0]),
                   flow_ji=np.ascontiguousarray(meas[:, 1]))  # fmt: skip
    return data, params, flow


def _flow_weights(data, flow, geo, nvar, wf, thr=50.0):
    """Per-entry Huber IRLS weights (E,2,2,HW) including w_flow/count and the cut."""
    d = _flow_residuals(data, flow, geo, np.zeros(nvar), np.zeros(data.n_frames * 12), False)
    ad = np.abs(d)
    loss = np.where(ad < 1, 0.5 * d * d, ad - 0.5)
    mask = np.stack([flow.static[data.edges[:, 0]], flow.static[data.edges[:, 1]]], 1)
    mask = np.broadcast_to(mask.reshape(len(data.edges), 2, 1, -1), d.shape)
    keep = (loss < thr) & (mask > 0)
    counts = keep.sum(axis=(0, 2, 3)).astype(float)  # per direction
    huber = np.where(ad < 1, 1.0, 1.0 / np.maximum(ad, 1e-300))
    assert (~keep & (mask > 0)).sum() == 2  # the two outliers are cut
    return keep * huber * (wf / counts)[None, :, None, None], tuple(wf / counts)


def _dense_flow_reference(data, params, flow, wf):
    """Full IRLS Gauss–Newton system by central differences (alignment + flow), its Schur
    complement, and the part of it formed from features (couplings through a shared depth of two
    different edges, a flow target and an edge, two flow targets), exact."""
    n, e_count, hw = data.n_frames, len(data.edges), 12
    geo = P.geometry(params, n)
    fidx, eidx, nvar = variable_index(n, e_count, False)
    nd = n * hw
    step = 1e-6

    def all_res(z):
        ra = _residuals(data, geo, n, z[:nvar], z[nvar:], shared=False)
        return ra, _flow_residuals(data, flow, geo, z[:nvar], z[nvar:], False)

    ja, jf = [], []
    for k in range(nvar + nd):
        z = np.zeros(nvar + nd)
        z[k] = step
        (ap, fp), (am, fm) = all_res(z), all_res(-z)
        ja.append(((ap - am) / (2 * step)).reshape(e_count, 2, hw * 3))
        jf.append(((fp - fm) / (2 * step)).reshape(e_count, 2, 2 * hw))
    ja, jf = np.stack(ja, -1), np.stack(jf, -1)  # (E,2,rows,vars)
    ra, rf = all_res(np.zeros(nvar + nd))
    eps = 1e-4 * float(np.median(np.exp(params["log_depth"][:, ::4, ::4])))
    norm = 1.0 / (e_count * hw)
    wts = np.stack([data.w_i, data.w_j], 1).reshape(e_count, 2, hw)
    wa = np.repeat(norm * wts / np.maximum(np.linalg.norm(ra, axis=-1), eps), 3, axis=-1)
    wfl, weights = _flow_weights(data, flow, geo, nvar, wf)
    wfl = wfl.reshape(e_count, 2, 2 * hw)
    hfull = np.einsum("esrx,esr,esry->xy", ja, wa, ja) + np.einsum("esrx,esr,esry->xy", jf, wfl, jf)
    gfull = np.einsum("esrx,esr,esr->x", ja, wa, ra.reshape(e_count, 2, -1)) + np.einsum(
        "esrx,esr,esr->x", jf, wfl, rf.reshape(e_count, 2, -1)
    )
    hxx, hxd, hdd = hfull[:nvar, :nvar], hfull[:nvar, nvar:], np.diag(hfull[nvar:, nvar:])
    assert np.allclose(hfull[nvar:, nvar:], np.diag(hdd), atol=1e-9 * hdd.max())
    s_ref = hxx - (hxd / hdd) @ hxd.T
    g_ref = gfull[:nvar] - hxd @ (gfull[nvar:] / hdd)
    # the feature-formed couplings: per depth column, coupling vectors by residual group
    gram = np.zeros((nvar, nvar))
    for v in range(n):
        for p in range(hw):
            col = nvar + v * hw + p
            b_edges, b_t = [], np.zeros(nvar)
            for e, ij in enumerate(data.edges):
                for side in (0, 1):
                    if ij[side] != v:
                        continue
                    be = np.einsum(
                        "rx,r,r->x", ja[e, side, :, :nvar], wa[e, side], ja[e, side, :, col]
                    )
                    mask_e = np.zeros(nvar, bool)
                    mask_e[eidx[e]] = True
                    b_edges.append(np.where(mask_e, be, 0))
                    bt = np.einsum(
                        "rx,r,r->x", jf[e, side, :, :nvar], wfl[e, side], jf[e, side, :, col]
                    )
                    mask_t = np.zeros(nvar, bool)
                    mask_t[fidx[ij[1 - side]]] = True
                    b_t += np.where(mask_t, bt, 0)
            b_e = np.sum(b_edges, 0)
            outer = np.outer(b_e, b_e) - sum(np.outer(b, b) for b in b_edges)
            outer += np.outer(b_t, b_e) + np.outer(b_e, b_t) + np.outer(b_t, b_t)
            gram -= outer / hdd[v * hw + p]
    return s_ref, g_ref, gram, (gfull, hxd, hdd), weights, eps


def test_flow_reduced_system_matches_finite_differences():
    """Alignment + flow (cut entries, masked pixels, both smooth-L1 branches): every block the
    kernel forms exactly, the reduced gradient and the back-substitution match a dense
    finite-difference Schur reference; the feature-formed couplings are the only difference."""
    data, params, flow = _flow_problem(seed=5)
    wf = 0.5  # a strong flow term, so that its blocks matter at the tolerances below
    s_ref, g_ref, gram, (gfull, hxd, hdd), weights, eps = _dense_flow_reference(
        data, params, flow, wf
    )
    terms = LmTerms(flow=flow, flow_weights=weights)
    red = reduced_system(data, params, ws=0.0, cross=False, terms=terms)
    scale = np.abs(s_ref).max()
    np.testing.assert_allclose(red.matrix.toarray(), s_ref - gram, atol=1e-6 * scale)
    np.testing.assert_allclose(red.grad, g_ref, atol=1e-6 * np.abs(g_ref).max())
    # the flow's share is substantial (the test could fail), and gated off it vanishes
    red0 = reduced_system(data, params, ws=0.0, cross=False)
    assert np.abs(red0.matrix.toarray() - red.matrix.toarray()).max() > 0.05 * scale
    off = reduced_system(
        data, params, ws=0.0, cross=False, terms=replace(terms, flow_weights=(0, 0))
    )
    np.testing.assert_array_equal(off.matrix.toarray(), red0.matrix.toarray())
    # back-substitution with the flow couplings
    n, e_count = data.n_frames, len(data.edges)
    fidx, eidx, nvar = variable_index(n, e_count, False)
    dx = np.random.default_rng(1).normal(0, 1e-2, nvar)
    dl = red.kernels.backsub(red.kernel_state, red.eps, np.ascontiguousarray(dx[fidx]),
                             np.ascontiguousarray(dx[eidx]))  # fmt: skip
    dl_ref = -(gfull[nvar:] + hxd.T @ dx) / hdd
    np.testing.assert_allclose(dl.ravel(), dl_ref, rtol=1e-5, atol=1e-8 * np.abs(dl_ref).max())


def test_flow_couplings_exact_at_zero_alignment_residual():
    """With the predictions on the frame points, the feature-formed couplings are exact too: the
    whole reduced system (alignment + flow) equals the dense reference."""
    data, params, flow = _flow_problem(seed=6, zero_residual=True)
    s_ref, g_ref, gram, _, weights, _ = _dense_flow_reference(data, params, flow, 0.5)
    red = reduced_system(data, params, ws=0.0, terms=LmTerms(flow=flow, flow_weights=weights))
    scale = np.abs(s_ref).max()
    assert np.abs(gram).max() > 1e-3 * scale  # the couplings are there
    np.testing.assert_allclose(red.matrix.toarray(), s_ref, atol=1e-5 * scale)
    np.testing.assert_allclose(red.grad, g_ref, atol=1e-6 * np.abs(g_ref).max())


# ---- windows ------------------------------------------------------------------------------------
def test_lm_frozen_frames_and_focal_do_not_move():
    """``optimize`` as the windows call it: frozen frames keep their depth and pose bit for bit,
    the focal too; the other frames move and the (unpinned-gauge) energy decreases."""
    sc, data, p0 = _problem(noise=True, n_objects=1, n_frames=8, size=(24, 32))
    flow = driver.prepare_flow((sc.flow_ij, sc.flow_ji), sc.dynamic_masks, len(data.edges), 8,
                               24, 32)  # fmt: skip
    frozen = np.zeros(8, bool)
    frozen[:3] = True
    # the windows' unpinned gauge: σ_e = exp(s_e) (driver._similarity writes absolute log-scales)
    p0["pw_poses"][:, 7] = np.log(P.pairwise_scale(p0["pw_poses"][:, 7]))
    cfg = AlignConfig(solver="lm", lm_iters=6)
    p, hist = driver.optimize(data, flow, cfg, "cpu", p0, frozen=frozen, freeze_focal=True,
                               pin_scale=False)  # fmt: skip
    for key in ("log_depth", "im_poses"):
        np.testing.assert_array_equal(p[key][frozen], p0[key][frozen])
        assert np.abs(p[key][~frozen] - p0[key][~frozen]).max() > 1e-4
    np.testing.assert_array_equal(p["focal"], p0["focal"])
    assert hist[-1] < hist[0]
    e_end = evaluate(data, p, flow=flow, pin_scale=False)[0]
    assert e_end == pytest.approx(hist[-1], rel=1e-6)


def _perturbed_init(monkeypatch, seed: int = 0):
    """Perturb every MST initialisation (exact on exact data) so that the optimiser has work."""
    rng = np.random.default_rng(seed)
    original = driver._init

    def init(*args, **kw):
        p = original(*args, **kw)
        p["log_depth"] += rng.normal(0, 0.02, p["log_depth"].shape).astype(np.float32)
        p["im_poses"][:, 4:7] += rng.normal(0, 0.01, p["im_poses"][:, 4:7].shape).astype(np.float32)
        p["pw_poses"][:, :7] += rng.normal(0, 0.01, p["pw_poses"][:, :7].shape).astype(np.float32)
        return p

    monkeypatch.setattr(driver, "_init", init)


def test_windowed_lm_matches_full_lm_on_exact_data(monkeypatch):
    """Exact predictions (no smoothness prior): the windowed problem has the full problem's
    solution, so windowed LM (frozen overlaps, frozen focal, free gauge) must land on full LM."""
    from test_align import ate, depth_error

    sc = make_scene(n_frames=12, size=(24, 32), n_objects=0, seed=1)
    _perturbed_init(monkeypatch)
    args = (sc.edges, sc.pts_i, sc.pts_j, sc.conf_i, sc.conf_j)
    cfg = dict(solver="lm", temporal_smoothing_weight=0.0, lm_ftol=1e-7)
    full = driver.global_align(*args, config=AlignConfig(**cfg))
    win = driver.global_align(*args, config=AlignConfig(window=(6, 3), **cfg))
    assert win.diagnostics["windows"] == [[0, 6], [3, 9], [6, 12]]
    init = driver.global_align(*args, config=AlignConfig(niter=0))  # the perturbed start
    assert ate(init.poses, sc.poses) > 1e-2  # there was work to do
    assert ate(full.poses, sc.poses) < 1e-3
    assert ate(win.poses, full.poses) < 1e-3
    assert depth_error(win.depths, full.depths) < 1e-3
    np.testing.assert_allclose(win.focals, full.focals, rtol=1e-3)


# ---- CUDA twins ---------------------------------------------------------------------------------
def test_incident_csr_follows_the_cpu_kernels_order():
    pytest.importorskip("torch")
    from monst3r_rt.align.lm_cuda import incident_csr

    edges = np.array([[0, 1], [1, 0], [2, 0], [1, 2], [0, 2]])
    offsets, entries = incident_csr(edges, 3)
    per_frame = [entries[offsets[v] : offsets[v + 1]].tolist() for v in range(3)]
    # 2·edge + side, edges increasing: frame 0 is side 0 of edges 0, 4 and side 1 of 1, 2
    assert per_frame == [[0, 3, 5, 8], [1, 2, 6], [4, 7, 9]]


def _cuda_or_skip():
    from conftest import cuda_arrays_available

    ok, why = cuda_arrays_available()
    if not ok:
        pytest.skip(why)
    return pytest.importorskip("torch")


def test_lm_cuda_kernels_match_cpu():
    """At a realistic size (48 frames' edges at 144×256, float32, flows, two frozen frames): the
    CUDA accumulators, coupling features and depth step equal the CPU kernels' (both sum in
    double; the tolerance covers the summation order and float32 inputs)."""
    torch = _cuda_or_skip()
    from monst3r_rt.align.lm_cuda import CudaKernels
    from monst3r_rt.align.lm_system import CpuKernels

    sc, data, p0 = _problem(noise=True, n_objects=2, n_frames=48, size=(144, 256))
    flow = driver.prepare_flow((sc.flow_ij, sc.flow_ji), sc.dynamic_masks, len(data.edges), 48,
                               144, 256)  # fmt: skip
    frozen = np.zeros(48, bool)
    frozen[[0, 7]] = True
    terms = LmTerms(flow=flow, flow_weights=(1e-8, 2e-8), frozen=frozen)
    geo = P.geometry(p0, 48)
    norm = 1.0 / (len(data.edges) * 144 * 256)
    cpu, gpu = CpuKernels(data, flow), CudaKernels(data, flow)
    cur_gpu = dict(p0, log_depth=torch.from_numpy(p0["log_depth"]).cuda())
    st_c, st_g = cpu.state(p0, geo, terms, norm), gpu.state(cur_gpu, geo, terms, norm)
    eps = 1e-4 * cpu.depth_scale(p0["log_depth"])
    out_c, out_g = cpu.accumulate(st_c, eps), gpu.accumulate(st_g, eps)
    assert out_g[0] == pytest.approx(out_c[0], rel=1e-9)
    for a, b in zip(out_c[1:], out_g[1:], strict=True):
        assert a.shape == b.shape and np.abs(a).max() > 0
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max())
    for v in (3, 7):  # a free frame and a frozen one (zero features)
        xc = cpu.features(st_c, eps, v, 1000, 9000)
        xg = gpu.features(st_g, eps, v, 1000, 9000).cpu().numpy()
        np.testing.assert_allclose(xg, xc, rtol=1e-4, atol=1e-6 * max(np.abs(xc).max(), 1e-30))
    rng = np.random.default_rng(0)
    dframe = rng.normal(0, 1e-3, (48, 7))
    dedge = rng.normal(0, 1e-3, (len(data.edges), 7))
    dl_c = cpu.backsub(st_c, eps, dframe, dedge)
    dl_g = gpu.backsub(st_g, eps, dframe, dedge).cpu().numpy()
    np.testing.assert_allclose(dl_g, dl_c, rtol=1e-4, atol=1e-5 * np.abs(dl_c).max())
    assert np.all(dl_g[frozen] == 0)


def test_global_align_lm_cuda_matches_cpu():
    """End to end with flows: ``device="cuda"`` follows the CPU run's energies."""
    _cuda_or_skip()
    sc = make_scene(n_frames=10, size=(32, 48), n_objects=1, depth_noise=0.03, pose_noise=0.02,
                    seed=21)  # fmt: skip
    kw = dict(flows=(sc.flow_ij, sc.flow_ji), dynamic_masks=sc.dynamic_masks,
              config=AlignConfig(solver="lm", lm_iters=8))  # fmt: skip
    args = (sc.edges, sc.pts_i, sc.pts_j, sc.conf_i, sc.conf_j)
    cpu = driver.global_align(*args, **kw)
    gpu = driver.global_align(*args, device="cuda", **kw)
    np.testing.assert_allclose(gpu.energy, cpu.energy, rtol=1e-4)
    np.testing.assert_allclose(gpu.poses, cpu.poses, atol=1e-3)


# ---- LM with the flow term: energy and poses ----------------------------------------------------
def _flow_inputs(sc, n_frames, size):
    data = driver.prepare(sc.edges, sc.pts_i, sc.pts_j, sc.conf_i, sc.conf_j, n_frames)
    flow = driver.prepare_flow((sc.flow_ij, sc.flow_ji), sc.dynamic_masks, len(data.edges),
                               n_frames, *size)  # fmt: skip
    p0 = driver._init(data, sc.pts_i, sc.pts_j, sc.conf_i, sc.conf_j, AlignConfig())
    return data, flow, p0


def test_lm_with_flow_reaches_adam_energy():
    """Official objective with the flow term (start, cut, gate): LM's final energy is at or below
    Adam's after its 300 official iterations, from the same initialisation."""
    sc = make_scene(n_frames=10, size=(32, 48), n_objects=1, depth_noise=0.05, pose_noise=0.02,
                    seed=3)  # fmt: skip
    data, flow, p0 = _flow_inputs(sc, 10, (32, 48))
    p_adam, _ = driver.optimize(data, flow, AlignConfig(), "cpu", p0)
    p_lm, h_lm = driver.optimize(data, flow, AlignConfig(solver="lm"), "cpu", p0)
    e_adam, _, t_adam = evaluate(data, p_adam, flow=flow)
    e_lm, _, t_lm = evaluate(data, p_lm, flow=flow)
    assert t_lm["flow"] > 0 and t_adam["flow"] > 0  # the term is on (not gated) at both ends
    assert e_lm <= e_adam, (e_lm, e_adam)
    assert h_lm[-1] == pytest.approx(e_lm, rel=1e-6)  # the history is the official energy
    assert len(h_lm) <= 32


def test_lm_gated_flow_term_changes_nothing():
    """Measured flows far from any ego-flow: the term exceeds the gate (25) and is off, so LM
    with flows follows LM without them."""
    sc = make_scene(n_frames=8, size=(24, 32), n_objects=1, depth_noise=0.05, pose_noise=0.02,
                    seed=4)  # fmt: skip
    data, flow, p0 = _flow_inputs(sc, 8, (24, 32))
    far = replace(flow, flow_ij=flow.flow_ij + 40, flow_ji=flow.flow_ji - 40)
    assert evaluate(data, p0, flow=far)[2]["flow"] == 0  # gated
    cfg = AlignConfig(solver="lm", lm_iters=6, lm_ftol=0.0)
    p_far, h_far = driver.optimize(data, far, cfg, "cpu", p0)
    p_none, h_none = driver.optimize(data, None, cfg, "cpu", p0)
    assert len(h_none) == 7
    # the same path up to float rounding (the kernels' summation order may differ when flow
    # arrays are passed); an ungated 40 px term would move everything by orders of magnitude more
    np.testing.assert_allclose(h_far, h_none, rtol=1e-9)
    for k in p_none:
        scale = max(1.0, float(np.abs(p_none[k]).max()))
        np.testing.assert_allclose(p_far[k], p_none[k], rtol=0, atol=1e-5 * scale)
