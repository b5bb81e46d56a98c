"""Closed-form and finite-difference checks of the PyTorch reference global-alignment energy."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from monst3r_rt.align.reference import (  # noqa: E402
    PARAM_KEYS,
    _masked_smooth_l1,
    ego_flow,
    lr_at,
    official_params_to_geometry,
    quat_to_rotmat,
    reference_adam,
    reference_energy,
    reference_energy_and_grad,
    rotmat_to_quat,
    signed_expm1,
    signed_log1p,
    world_points,
)

N, H, W = 4, 6, 8
UNORDERED = [(0, 1), (1, 2), (2, 3), (0, 2)]
EDGES = np.array(UNORDERED + [(j, i) for i, j in UNORDERED], dtype=np.int64)
E = len(EDGES)
F64 = torch.float64


def _rz(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _params(seed: int, *, shared_focal: bool = True) -> dict[str, np.ndarray]:
    """Random parameters with frames close to each other (well-conditioned ego-flow)."""
    rng = np.random.default_rng(seed)
    q = np.concatenate([0.08 * rng.normal(size=(N, 3)), np.ones((N, 1))], axis=1)
    q *= rng.uniform(0.5, 2.0, size=(N, 1))  # unnormalised on purpose
    tau = 0.15 * rng.normal(size=(N, 3))
    focal_px = 10.0 * (1 + 0.1 * rng.normal(size=1 if shared_focal else N))
    pw = rng.normal(size=(E, 8))
    pw[:, 4:7] *= 0.5
    pw[:, 7] = 0.3 * rng.normal(size=E)
    return {
        "log_depth": rng.normal(1.0, 0.15, size=(N, H, W)),
        "im_poses": np.concatenate([q, tau], axis=1),
        "focal": 20.0 * np.log(focal_px),
        "pw_poses": pw,
    }


def _t(p: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=F64) for k, v in p.items()}


def _consistent_pointmaps(params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """pts_i, pts_j = P_e⁻¹·X so that the alignment residual is exactly zero."""
    g = official_params_to_geometry(_t(params))
    X = world_points(g)
    ei, ej = torch.as_tensor(EDGES[:, 0]), torch.as_tensor(EDGES[:, 1])
    sig = g["sigma"][:, None, None, None]
    t_e = g["t_e"][:, None, None, :]
    inv = lambda Y: torch.einsum("eba,ehwb->ehwa", g["R_e"], Y - t_e) / sig  # noqa: E731
    return inv(X[ei]).numpy(), inv(X[ej]).numpy()


def _exact_flows(params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    g = official_params_to_geometry(_t(params))
    R, T, D, f = g["R"], g["T"], g["depth"], g["f"]
    ei, ej = torch.as_tensor(EDGES[:, 0]), torch.as_tensor(EDGES[:, 1])
    fij = ego_flow(R[ei], T[ei], R[ej], T[ej], D[ei], f[ei], f[ej])
    fji = ego_flow(R[ej], T[ej], R[ei], T[ei], D[ej], f[ej], f[ei])
    return fij.numpy(), fji.numpy()


def _conf(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return 1.0 + rng.uniform(0.5, 5.0, size=(E, H, W)), 1.0 + rng.uniform(0.5, 5.0, size=(E, H, W))


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def test_signed_expm1_log1p_roundtrip():
    x = torch.linspace(-5, 5, 101, dtype=F64)
    assert torch.allclose(signed_log1p(signed_expm1(x)), x, atol=1e-12)
    assert torch.allclose(signed_expm1(x), torch.sign(x) * (torch.exp(x.abs()) - 1))
    assert float(signed_expm1(torch.zeros((), dtype=F64))) == 0.0


def test_quat_to_rotmat_conventions():
    theta = 0.7
    q = torch.tensor([0.0, 0.0, math.sin(theta / 2), math.cos(theta / 2)], dtype=F64) * 3.0
    assert np.allclose(quat_to_rotmat(q).numpy(), _rz(theta), atol=1e-14)
    rng = np.random.default_rng(0)
    Q = torch.tensor(rng.normal(size=(50, 4)), dtype=F64)
    R = quat_to_rotmat(Q)
    eye = torch.eye(3, dtype=F64).expand(50, 3, 3)
    assert torch.allclose(R.transpose(-1, -2) @ R, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(50, dtype=F64), atol=1e-12)


def test_rotmat_to_quat_roundtrip_all_branches():
    rng = np.random.default_rng(1)
    Q = rng.normal(size=(64, 4))
    # make each component dominant somewhere (exercises every Shepperd branch, incl. ~180°)
    for k in range(4):
        Q[k, :] = 1e-3
        Q[k, k] = 1.0
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    R = quat_to_rotmat(torch.tensor(Q))
    q2 = rotmat_to_quat(R)
    assert isinstance(q2, torch.Tensor)
    sign = np.sign(np.sum(q2.numpy() * Q, axis=1, keepdims=True))
    assert np.allclose(q2.numpy() * sign, Q, atol=1e-12)
    q3 = rotmat_to_quat(R.numpy())  # numpy in, numpy out
    assert isinstance(q3, np.ndarray) and np.allclose(q3, q2.numpy())


# ------------------------------------------------------------------------------------------
# (6) pairwise scale gauge
# ------------------------------------------------------------------------------------------
def test_sigma_geometric_mean_is_half():
    p = _params(3)
    for shift, spread in [(0.0, 1.0), (7.0, 5.0), (-12.0, 0.1)]:
        p["pw_poses"][:, 7] = shift + spread * np.random.default_rng(4).normal(size=E)
        sigma = official_params_to_geometry(_t(p))["sigma"]
        assert math.exp(float(torch.log(sigma).mean())) == pytest.approx(0.5, rel=1e-12)
    # adding a constant to every log-scale changes nothing
    s0 = official_params_to_geometry(_t(p))["sigma"]
    p["pw_poses"][:, 7] += 3.3
    assert torch.allclose(official_params_to_geometry(_t(p))["sigma"], s0, rtol=1e-12)


def test_geometry_decoding():
    p = _params(5)
    g = official_params_to_geometry(_t(p))
    assert g["R"].shape == (N, 3, 3) and g["T"].shape == (N, 3) and g["f"].shape == (N,)
    assert g["R_e"].shape == (E, 3, 3) and g["t_e"].shape == (E, 3) and g["sigma"].shape == (E,)
    assert np.allclose(g["f"].numpy(), np.exp(p["focal"][0] / 20.0))
    assert np.allclose(g["depth"].numpy(), np.exp(p["log_depth"]))
    tau = p["pw_poses"][:, 4:7]
    expect = g["sigma"].numpy()[:, None] * np.sign(tau) * np.expm1(np.abs(tau))
    assert np.allclose(g["t_e"].numpy(), expect)
    # pixel (u, v) = (col, row) with principal point (W/2, H/2)
    X = world_points(g)
    n, r, c = 2, 1, 5
    d = float(g["depth"][n, r, c])
    fn = float(g["f"][n])
    cam = d * np.array([(c - W / 2) / fn, (r - H / 2) / fn, 1.0])
    assert np.allclose(X[n, r, c].numpy(), g["R"][n].numpy() @ cam + g["T"][n].numpy())


def test_shared_focal_equals_per_frame_copies():
    p = _params(6)
    pts_i, pts_j = _consistent_pointmaps(p)
    rng = np.random.default_rng(7)
    pts_i = pts_i + 0.1 * rng.normal(size=pts_i.shape)
    ci, cj = _conf(8)
    fl = _exact_flows(p)
    kw = dict(flows=fl, temporal_smoothing_weight=0.3)
    e1 = reference_energy(_t(p), EDGES, pts_i, pts_j, ci, cj, **kw)
    p2 = dict(p, focal=np.repeat(p["focal"], N))
    e2 = reference_energy(_t(p2), EDGES, pts_i, pts_j, ci, cj, **kw)
    assert float(e1) == pytest.approx(float(e2), rel=1e-13)


# ------------------------------------------------------------------------------------------
# (1) alignment closed forms
# ------------------------------------------------------------------------------------------
def test_alignment_zero_on_consistent_data():
    p = _params(10)
    pts_i, pts_j = _consistent_pointmaps(p)
    ci, cj = _conf(11)
    e, terms = reference_energy(
        _t(p), EDGES, pts_i, pts_j, ci, cj, temporal_smoothing_weight=0.0, return_terms=True
    )
    # zero up to rounding of the points' coordinates, weighted by the confidence: the scale of
    # one pixel's residual norm (float64 here, float32 below)
    scale = float(np.abs(pts_i).max() * np.log(np.maximum(ci, cj)).max())
    assert abs(float(terms["align"])) < 1e-13 * scale
    assert abs(float(e)) < 1e-13 * scale
    # float32 inputs follow the params dtype
    p32 = {k: torch.tensor(v, dtype=torch.float32) for k, v in p.items()}
    e32 = reference_energy(p32, EDGES, pts_i, pts_j, ci, cj, temporal_smoothing_weight=0.0)
    assert e32.dtype == torch.float32 and abs(float(e32)) < 1e-5 * scale


@pytest.mark.parametrize("delta", [0.05, -0.2])
def test_alignment_single_pixel_depth_change(delta):
    p = _params(12)
    pts_i, pts_j = _consistent_pointmaps(p)
    ci, cj = _conf(13)
    kw = dict(temporal_smoothing_weight=0.7)  # smoothness does not depend on depth
    e0 = float(reference_energy(_t(p), EDGES, pts_i, pts_j, ci, cj, **kw))
    n, r, c = 2, 3, 6
    p1 = {k: v.copy() for k, v in p.items()}
    p1["log_depth"][n, r, c] += delta
    e1 = float(reference_energy(_t(p1), EDGES, pts_i, pts_j, ci, cj, **kw))
    # ‖ΔX‖ = |ΔD|·‖ray‖ (rotation preserves length); summed with the weights of every edge
    # in which frame n appears (as view i or view j), normalised by E·H·W.
    d = math.exp(p["log_depth"][n, r, c])
    f = math.exp(p["focal"][0] / 20.0)
    ray = math.sqrt(((c - W / 2) / f) ** 2 + ((r - H / 2) / f) ** 2 + 1.0)
    wsum = np.log(ci[EDGES[:, 0] == n, r, c]).sum() + np.log(cj[EDGES[:, 1] == n, r, c]).sum()
    expect = abs(math.expm1(delta)) * d * ray * wsum / (E * H * W)
    assert e1 - e0 == pytest.approx(expect, rel=1e-9)


# ------------------------------------------------------------------------------------------
# (2) smoothness closed form
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("theta", [0.3, -1.1, 2.5])
@pytest.mark.parametrize("tw", [1.0, 0.1])
def test_smoothness_rotation_about_z(theta, tw):
    n_frames = 5
    a = np.array([0.2, -0.1, 0.05])
    poses = []
    for t in range(n_frames):
        q = np.array([0.0, 0.0, math.sin(t * theta / 2), math.cos(t * theta / 2)]) * (1 + t)
        T = _rz(t * theta) @ (t * a)
        poses.append(np.concatenate([q, np.sign(T) * np.log1p(np.abs(T))]))
    params = {
        "log_depth": np.zeros((n_frames, 2, 3)),
        "im_poses": np.array(poses),
        "focal": np.array([20.0 * math.log(3.0)]),
        "pw_poses": np.zeros((1, 8)) + np.array([0, 0, 0, 1, 0, 0, 0, 0.0]),
    }
    edges = np.array([[0, 1]])
    ones = np.ones((1, 2, 3))
    pts = np.zeros((1, 2, 3, 3))
    _, terms = reference_energy(
        _t(params), edges, pts, pts, ones, ones, translation_weight=tw, return_terms=True
    )
    # R_tᵀ(T_{t+1} − T_t) = R_z(−tθ)(R_z((t+1)θ)(t+1)a − R_z(tθ) t a) = (t+1)R_z(θ)a − t a
    trans = sum(np.linalg.norm((t + 1) * _rz(theta) @ a - t * a) for t in range(n_frames - 1))
    rot_closed = 2 * math.sqrt(2) * abs(math.sin(theta / 2))
    assert np.linalg.norm(_rz(theta) - np.eye(3)) == pytest.approx(rot_closed, rel=1e-12)
    expect = (n_frames - 1) * rot_closed + tw * trans
    assert float(terms["smooth"]) == pytest.approx(expect, rel=1e-10)


def test_smoothness_translation_only():
    # identical rotations, T_t = t·b in the world: ‖R_0ᵀ b‖ = ‖b‖ per step
    rng = np.random.default_rng(20)
    q0 = rng.normal(size=4)
    b = np.array([0.3, 0.4, -1.2])
    n_frames = 4
    T = np.arange(n_frames)[:, None] * b
    params = {
        "log_depth": np.zeros((n_frames, 2, 2)),
        "im_poses": np.concatenate([np.tile(q0, (n_frames, 1)), np.sign(T) * np.log1p(abs(T))], 1),
        "focal": np.array([40.0]),
        "pw_poses": np.array([[0, 0, 0, 1, 0, 0, 0, 0.0]]),
    }
    ones = np.ones((1, 2, 2))
    pts = np.zeros((1, 2, 2, 3))
    _, terms = reference_energy(
        _t(params),
        np.array([[0, 1]]),
        pts,
        pts,
        ones,
        ones,
        translation_weight=0.25,
        return_terms=True,
    )
    assert float(terms["smooth"]) == pytest.approx(0.25 * (n_frames - 1) * np.linalg.norm(b))


# ------------------------------------------------------------------------------------------
# (5) ego-flow closed forms
# ------------------------------------------------------------------------------------------
def _grid():
    v, u = np.meshgrid(np.arange(H, dtype=float), np.arange(W, dtype=float), indexing="ij")
    return u, v


def test_ego_flow_identity_relative_pose_is_zero():
    rng = np.random.default_rng(30)
    R = quat_to_rotmat(torch.tensor(rng.normal(size=(3, 4))))
    T = torch.tensor(rng.normal(size=(3, 3)))
    D = torch.tensor(rng.uniform(0.5, 3.0, size=(3, H, W)))
    f = torch.full((3,), 9.0, dtype=F64)
    fl = ego_flow(R, T, R, T, D, f, f).numpy()
    u, v = _grid()
    # exact: x/(1+1e-6) − x, i.e. zero up to the 1e-6 of π
    assert np.allclose(fl[:, 0], u / (1 + 1e-6) - u, atol=1e-12)
    assert np.allclose(fl[:, 1], v / (1 + 1e-6) - v, atol=1e-12)
    assert np.abs(fl).max() < 1e-5


@pytest.mark.parametrize("t", [0.3, -0.2])
def test_ego_flow_pure_x_translation(t):
    rng = np.random.default_rng(31)
    R0 = quat_to_rotmat(torch.tensor(rng.normal(size=4)))[None]  # common world rotation
    depth, f = 2.5, 11.0
    T_src = torch.tensor([[0.4, -0.3, 0.1]], dtype=F64)
    # target camera displaced by −t along the source camera's x axis ⇒ t_rel = (t, 0, 0)
    T_tgt = T_src - t * R0[:, :, 0]
    D = torch.full((1, H, W), depth, dtype=F64)
    ff = torch.tensor([f], dtype=F64)
    fl = ego_flow(R0, T_src, R0, T_tgt, D, ff, ff).numpy()[0]
    u, v = _grid()
    exact_x = (u + f * t / (depth + 1e-6)) / (1 + 1e-6) - u
    assert np.allclose(fl[0], exact_x, atol=1e-10)
    assert np.allclose(fl[0], f * t / depth, atol=1e-4)  # f·t/D in x
    assert np.allclose(fl[1], 0.0, atol=1e-4)


def test_ego_flow_matches_reprojection():
    # F(x) + x ≈ π(K_t R_tᵀ(X − T_t)) with X the back-projected source pixel (up to the 1e-6s)
    p = _params(32, shared_focal=False)
    g = official_params_to_geometry(_t(p))
    X = world_points(g)
    s, t = 0, 3
    fl = ego_flow(
        g["R"][s : s + 1],
        g["T"][s : s + 1],
        g["R"][t : t + 1],
        g["T"][t : t + 1],
        g["depth"][s : s + 1],
        g["f"][s : s + 1],
        g["f"][t : t + 1],
    )[0].numpy()
    cam = np.einsum("ba,hwb->hwa", g["R"][t].numpy(), X[s].numpy() - g["T"][t].numpy())
    ft = float(g["f"][t])
    px = ft * cam[..., 0] / cam[..., 2] + W / 2
    py = ft * cam[..., 1] / cam[..., 2] + H / 2
    u, v = _grid()
    assert np.allclose(fl[0], px - u, atol=1e-4)
    assert np.allclose(fl[1], py - v, atol=1e-4)


# ------------------------------------------------------------------------------------------
# (4) flow term: per-entry cut, static mask, global gate
# ------------------------------------------------------------------------------------------
def _flow_setup(seed):
    p = _params(seed)
    pts_i, pts_j = _consistent_pointmaps(p)
    ci, cj = _conf(seed + 1)
    fij, fji = _exact_flows(p)
    return p, pts_i, pts_j, ci, cj, fij, fji


def _sl1(x):
    x = np.abs(x)
    return np.where(x < 1, 0.5 * x * x, x - 0.5)


def test_flow_exact_is_zero_and_inactive_is_ignored():
    p, pts_i, pts_j, ci, cj, fij, fji = _flow_setup(40)
    e, terms = reference_energy(
        _t(p), EDGES, pts_i, pts_j, ci, cj, flows=(fij, fji), return_terms=True
    )
    assert terms["flow_used"] and not terms["flow_gated"]
    assert abs(float(terms["flow_raw"])) < 1e-15 * float(np.abs(fij).max())
    e_off = reference_energy(
        _t(p), EDGES, pts_i, pts_j, ci, cj, flows=(fij + 3.0, fji), flow_active=False
    )
    e_none = reference_energy(_t(p), EDGES, pts_i, pts_j, ci, cj)
    assert float(e_off) == float(e_none)
    assert float(e) == pytest.approx(float(e_none), rel=1e-14)


def test_flow_per_entry_cut_and_static_mask():
    p, pts_i, pts_j, ci, cj, fij, fji = _flow_setup(41)
    rng = np.random.default_rng(42)
    err_ij = rng.uniform(-3.0, 3.0, size=fij.shape)
    err_ji = rng.uniform(-3.0, 3.0, size=fji.shape)
    # a few huge errors: dropped entry by entry (loss ≥ 50), and one just below the cut
    err_ij[0, 0, 2, 3] = 1000.0  # only channel x of this pixel
    err_ij[3, :, 4, 1] = -80.0
    err_ij[5, 1, 0, 0] = 50.6  # loss 50.1 → dropped
    err_ji[2, 0, 1, 1] = 50.4  # loss 49.9 → kept
    static = rng.uniform(size=(N, H, W)) > 0.25
    # a huge error on dynamic pixels of the source frame must not count either
    n_dyn = EDGES[1, 0]
    err_ij[1, :, ~static[n_dyn]] = 500.0
    _, terms = reference_energy(
        _t(p),
        EDGES,
        pts_i,
        pts_j,
        ci,
        cj,
        flows=(fij + err_ij, fji + err_ji),
        static_masks=static,
        flow_loss_threshold=0.0,
        return_terms=True,
    )

    def expect(err, src):
        m = np.broadcast_to(static[src][:, None], err.shape)
        loss = _sl1(err)
        keep = m & (loss < 50.0)
        return (loss * keep).sum() / keep.sum(), keep.sum()

    ei_val, ki = expect(err_ij, EDGES[:, 0])
    ej_val, kj = expect(err_ji, EDGES[:, 1])
    assert float(terms["flow_i"]) == pytest.approx(ei_val, rel=1e-9)
    assert float(terms["flow_j"]) == pytest.approx(ej_val, rel=1e-9)
    assert float(terms["flow_raw"]) == pytest.approx(ei_val + ej_val, rel=1e-9)
    assert not terms["flow_gated"]
    # the cut really removed something and the 49.9 entry really stayed
    assert 0 < ei_val < 3 and ki < E * 2 * H * W
    assert _sl1(np.float64(50.4)) < 50.0 <= _sl1(np.float64(50.6))
    # joint mean over both directions (flow_mean="joint")
    _, tj = reference_energy(
        _t(p),
        EDGES,
        pts_i,
        pts_j,
        ci,
        cj,
        flows=(fij + err_ij, fji + err_ji),
        static_masks=static,
        flow_mean="joint",
        return_terms=True,
    )
    assert float(tj["flow_raw"]) == pytest.approx((ei_val * ki + ej_val * kj) / (ki + kj), rel=1e-9)


def test_flow_cut_boundary_is_exclusive():
    # official: keep = (loss < pxl_thre) · mask, so an entry with loss exactly 50 is dropped
    gt = torch.tensor([0.5, 50.5, 50.4, 3.0], dtype=F64).reshape(1, 2, 1, 2)
    est = torch.zeros_like(gt)
    mask = torch.tensor([1.0, 0.0], dtype=F64).reshape(1, 1, 1, 2)
    num, den = _masked_smooth_l1(est, gt, mask, 50.0)
    # entries (channel, col): (0,0) 0.125 kept; (0,1) masked; (1,0) 49.9 kept; (1,1) masked
    assert float(den) == 2.0 and float(num) == pytest.approx(0.125 + 49.9, rel=1e-14)
    gt[0, 1, 0, 0] = 50.5  # loss exactly 50.0
    num, den = _masked_smooth_l1(est, gt, mask, 50.0)
    assert float(den) == 1.0 and float(num) == 0.125
    num, den = _masked_smooth_l1(est, gt, mask, 0.0)  # threshold ≤ 0: no cut
    assert float(den) == 2.0 and float(num) == 0.125 + 50.0


def test_flow_gate():
    p, pts_i, pts_j, ci, cj, fij, fji = _flow_setup(43)
    kw = dict(temporal_smoothing_weight=0.2, flow_loss_weight=0.5)
    base = float(reference_energy(_t(p), EDGES, pts_i, pts_j, ci, cj, **kw))
    flows = (fij + 40.0, fji)  # every i→j entry: smooth-L1 = 39.5 < 50, kept
    e, terms = reference_energy(
        _t(p), EDGES, pts_i, pts_j, ci, cj, flows=flows, return_terms=True, **kw
    )
    assert float(terms["flow_i"]) == pytest.approx(39.5, rel=1e-10)
    assert float(terms["flow_raw"]) == pytest.approx(39.5, rel=1e-10)
    assert terms["flow_gated"] and float(terms["flow"]) == 0.0
    assert float(e) == pytest.approx(base, rel=1e-14)
    # a looser gate keeps it
    e2, t2 = reference_energy(
        _t(p),
        EDGES,
        pts_i,
        pts_j,
        ci,
        cj,
        flows=flows,
        flow_loss_threshold=100.0,
        return_terms=True,
        **kw,
    )
    assert not t2["flow_gated"]
    assert float(e2) == pytest.approx(base + 0.5 * 39.5, rel=1e-10)
    # with one joint mean the same data gives 39.5/2 < 25: not gated
    _, t3 = reference_energy(
        _t(p),
        EDGES,
        pts_i,
        pts_j,
        ci,
        cj,
        flows=flows,
        flow_mean="joint",
        return_terms=True,
        **kw,
    )
    assert not t3["flow_gated"] and float(t3["flow"]) == pytest.approx(19.75, rel=1e-10)
    # gradients: a gated flow term contributes nothing
    _, g_gated = reference_energy_and_grad(p, EDGES, pts_i, pts_j, ci, cj, flows=flows, **kw)
    _, g_base = reference_energy_and_grad(p, EDGES, pts_i, pts_j, ci, cj, **kw)
    for k in PARAM_KEYS:
        assert np.abs(g_gated[k] - g_base[k]).max() <= 1e-14 * np.abs(g_base[k]).max(), k


# ------------------------------------------------------------------------------------------
# (3) autograd vs central finite differences, every parameter group
# ------------------------------------------------------------------------------------------
def _fd_problem(seed, shared_focal):
    p = _params(seed, shared_focal=shared_focal)
    rng = np.random.default_rng(seed + 100)
    pts_i, pts_j = _consistent_pointmaps(p)
    pts_i = pts_i + 0.2 * rng.normal(size=pts_i.shape)
    pts_j = pts_j + 0.2 * rng.normal(size=pts_j.shape)
    ci, cj = _conf(seed + 200)
    fij, fji = _exact_flows(p)
    fij = fij + rng.normal(0.0, 1.5, size=fij.shape)
    fji = fji + rng.normal(0.0, 1.5, size=fji.shape)
    static = rng.uniform(size=(N, H, W)) > 0.2
    return p, pts_i, pts_j, ci, cj, (fij, fji), static


CASES = {
    # name: (alignment on, temporal_smoothing_weight, flow weight or None)
    "align": (True, 0.0, None),
    "smooth": (False, 1.0, None),
    "flow": (False, 0.0, 1.0),
    "all": (True, 0.3, 0.2),
}


@pytest.mark.parametrize("shared_focal", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_gradient_matches_finite_differences(case, shared_focal):
    align_on, tsw, fw = CASES[case]
    p, pts_i, pts_j, ci, cj, flows, static = _fd_problem(50, shared_focal)
    if not align_on:  # log(1) = 0: no alignment term
        ci, cj = np.ones_like(ci), np.ones_like(cj)
    kw = dict(temporal_smoothing_weight=tsw, translation_weight=0.7, static_masks=static)
    if fw is not None:
        kw.update(flows=flows, flow_loss_weight=fw)
    params = _t(p)
    _, terms = reference_energy(params, EDGES, pts_i, pts_j, ci, cj, return_terms=True, **kw)
    if fw is not None:
        assert terms["flow_used"] and not terms["flow_gated"]
        assert 0.1 < float(terms["flow_raw"]) < 25
    energy, grads = reference_energy_and_grad(p, EDGES, pts_i, pts_j, ci, cj, **kw)
    assert energy > 0

    h = 1e-6
    for key in PARAM_KEYS:
        base = params[key]
        flat = base.reshape(-1)
        idxs = np.arange(flat.numel())
        if key == "log_depth":  # every frame, a third of the pixels (keeps the test fast)
            idxs = np.random.default_rng(0).choice(idxs, size=flat.numel() // 3, replace=False)
        fd = np.empty(len(idxs))
        for n_fd, idx in enumerate(idxs):
            vals = []
            for sgn in (1.0, -1.0):
                pert = flat.clone()
                pert[idx] += sgn * h
                q = dict(params)
                q[key] = pert.reshape(base.shape)
                vals.append(float(reference_energy(q, EDGES, pts_i, pts_j, ci, cj, **kw)))
            fd[n_fd] = (vals[0] - vals[1]) / (2 * h)
        g = grads[key].reshape(-1)[idxs]
        assert grads[key].shape == p[key].shape and grads[key].dtype == np.float64
        scale = max(1.0, np.abs(g).max())
        assert np.allclose(g, fd, rtol=1e-5, atol=1e-7 * scale), (key, np.abs(g - fd).max())
        if not (case == "smooth" and key in ("log_depth", "pw_poses", "focal")):
            if not (case == "flow" and key == "pw_poses"):
                assert np.abs(g).max() > 1e-6, key  # the group really is exercised


# ------------------------------------------------------------------------------------------
# optimiser loop
# ------------------------------------------------------------------------------------------
def test_lr_schedule():
    assert lr_at(0, 300, 0.01, 1e-3) == 0.01
    assert lr_at(150, 300, 0.01, 1e-3) == pytest.approx(0.0055)
    assert lr_at(299, 300, 0.01, 1e-3) == pytest.approx(0.01 + (1e-3 - 0.01) * 299 / 300)
    assert lr_at(0, 300, 0.01, 1e-3, "cosine") == pytest.approx(0.01)
    assert lr_at(300, 300, 0.01, 1e-3, "cosine") == pytest.approx(1e-3)


def test_reference_adam_decreases_energy():
    p_true, pts_i, pts_j, ci, cj, flows, static = _fd_problem(60, True)
    rng = np.random.default_rng(61)
    p = {k: v + 0.05 * rng.normal(size=v.shape) for k, v in p_true.items()}
    niter = 40
    final, hist = reference_adam(
        p, EDGES, pts_i, pts_j, ci, cj, niter=niter, flows=flows, static_masks=static
    )
    assert hist.shape == (niter,) and np.all(np.isfinite(hist))
    for k in PARAM_KEYS:
        assert final[k].shape == p[k].shape and final[k].dtype == p[k].dtype
    # iteration 0 is before the flow term starts (n < niter·0.1) and before any step
    e0 = reference_energy(_t(p), EDGES, pts_i, pts_j, ci, cj)
    assert hist[0] == pytest.approx(float(e0), rel=1e-12)
    e_final = reference_energy(_t(final), EDGES, pts_i, pts_j, ci, cj)
    assert float(e_final) < 0.8 * hist[0]
    assert not np.allclose(final["focal"], p["focal"])


def test_reference_adam_matches_manual_torch_loop():
    p, pts_i, pts_j, ci, cj, flows, static = _fd_problem(61, False)
    niter = 8
    final, hist = reference_adam(
        p,
        EDGES,
        pts_i,
        pts_j,
        ci,
        cj,
        niter=niter,
        flows=flows,
        static_masks=static,
        flow_loss_start=0.5,
    )
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in p.items()}
    opt = torch.optim.Adam(list(params.values()), lr=0.01, betas=(0.9, 0.9))
    for n in range(niter):
        for g in opt.param_groups:
            g["lr"] = 0.01 + (1e-3 - 0.01) * n / niter
        opt.zero_grad()
        loss = reference_energy(
            params,
            EDGES,
            pts_i,
            pts_j,
            ci,
            cj,
            flows=flows,
            static_masks=static,
            flow_active=n >= niter * 0.5,
        )
        loss.backward()
        opt.step()
        assert float(loss.detach()) == pytest.approx(hist[n], rel=1e-12)
    for k in PARAM_KEYS:
        want = params[k].detach().numpy()  # focal ~46: an absolute 1e-14 would be one ulp
        assert np.abs(final[k] - want).max() <= 1e-13 * np.abs(want).max(), k
