"""The streaming mode's tracking op (``_core.sim3_normal_equations``, its CUDA twin and
``monst3r_rt.stream.tracking``) against independent references: a NumPy float64 twin that builds
every 3x7 Jacobian explicitly, central finite differences of the robust cost and of the residuals
through the exact update, and exactly transformed point sets (with and without gross outliers).
The anisotropic residual (``axis``, ``axial_weight``) is checked the same way, plus a scene with
smooth depth noise along the keyframe's viewing rays, where it must beat the isotropic fit."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import cuda_arrays_available
from monst3r_rt import _core
from monst3r_rt.geometry import rotvec_to_rotmat, weighted_procrustes
from monst3r_rt.stream.tracking import Sim3Fit, sim3_normal_equations, track_sim3

HUBER = 0.05
AXIAL_WEIGHTS = [1.0, 0.25, 0.01]


# ---- NumPy float64 twin -------------------------------------------------------------------------
def usable(src, dst, weight, inv_sigma, axis=None) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        ok = ((weight > 0) & (inv_sigma > 0) & np.isfinite(weight) & np.isfinite(inv_sigma)
              & np.isfinite(src).all(1) & np.isfinite(dst).all(1))  # fmt: skip
        if axis is not None:
            ok &= np.isfinite(axis).all(1) & (np.abs(axis).sum(1) > 0)
    return ok


def projector(axis, axial_weight) -> np.ndarray:
    """(M,3,3) P = I − (1 − √w_a) â âᵀ (float64), â = axis/‖axis‖; identity without an axis."""
    if axis is None:
        return np.eye(3)[None]
    unit = axis / np.linalg.norm(axis, axis=1, keepdims=True)
    return np.eye(3) - (1 - np.sqrt(axial_weight)) * unit[:, :, None] * unit[:, None, :]


def skew(x: np.ndarray) -> np.ndarray:
    z = np.zeros(len(x))
    return np.stack([np.stack([z, -x[:, 2], x[:, 1]], -1), np.stack([x[:, 2], z, -x[:, 0]], -1),
                     np.stack([-x[:, 1], x[:, 0], z], -1)], 1)  # fmt: skip


def residuals(src, dst, inv_sigma, scale, rot, trans, xi=None, proj=None) -> np.ndarray:
    """(M,3) r = inv_sigma P (x'' − dst), x'' = e^λ Exp(ω) (s R src + t) + v (float64);
    P = ``proj`` (M,3,3) or the identity."""
    x = scale * src @ rot.T + trans
    xi = np.zeros(7) if xi is None else xi
    x = np.exp(xi[6]) * x @ rotvec_to_rotmat(xi[:3]).T + xi[3:6]
    e = x - dst if proj is None else np.einsum("pij,pj->pi", proj, x - dst)
    return inv_sigma[:, None] * e


def huber_cost(weight, r, k) -> float:
    n = np.linalg.norm(r, axis=1)
    return float(np.sum(weight * np.where(n <= k, 0.5 * n * n, k * (n - 0.5 * k))))


def reference(src, dst, weight, inv_sigma, scale, rot, trans, k, axis=None, axial_weight=1.0):
    """(H, g, cost, count, inliers, scale of the terms) with explicit Jacobians
    ``J = inv_sigma P [−[x]× | I | x]``."""
    src, dst, weight, inv_sigma = (np.asarray(a, np.float64) for a in (src, dst, weight, inv_sigma))
    axis = None if axis is None else np.asarray(axis, np.float64)
    ok = usable(src, dst, weight, inv_sigma, axis)
    src, dst, weight, inv_sigma = src[ok], dst[ok], weight[ok], inv_sigma[ok]
    proj = projector(None if axis is None else axis[ok], axial_weight)
    x = scale * src @ rot.T + trans
    r = residuals(src, dst, inv_sigma, scale, rot, trans, proj=proj)
    n = np.linalg.norm(r, axis=1)
    h = np.where(n <= k, 1.0, k / n)
    jac = np.zeros((len(x), 3, 7))
    jac[:, :, :3] = -skew(x)
    jac[:, :, 3:6] = np.eye(3)
    jac[:, :, 6] = x
    proj = np.broadcast_to(proj, (len(x), 3, 3))
    jac = inv_sigma[:, None, None] * np.einsum("pij,pjk->pik", proj, jac)
    wh = weight * h
    hess = np.einsum("p,pia,pib->ab", wh, jac, jac)
    grad = np.einsum("p,pia,pi->a", wh, jac, r)
    terms = np.abs(np.einsum("p,pia,pi->pa", wh, jac, r)).sum()
    return hess, grad, huber_cost(weight, r, k), int(ok.sum()), int((n <= k).sum()), terms


def random_problem(rng, m: int, outliers: float = 0.2):
    """float32 src (M,3) at depths 1..5, dst = a Sim(3) of src plus 1% relative noise and gross
    outliers, weights with zeros, inv_sigma = 1/depth, some NaN points and bad weights."""
    src = rng.uniform(-1, 1, (m, 3))
    src[:, 2] = rng.uniform(1, 5, m)
    scale, rot, trans = 0.8, rotvec_to_rotmat([0.2, -0.1, 0.3]), np.array([0.3, -0.2, 1.0])
    dst = scale * src @ rot.T + trans
    dst += 0.01 * src[:, 2:] * rng.normal(size=(m, 3))
    bad = rng.random(m) < outliers
    dst[bad] += rng.normal(scale=2.0, size=(bad.sum(), 3))
    weight = rng.uniform(0, 2, m)
    weight[rng.random(m) < 0.1] = 0
    inv_sigma = 1 / src[:, 2]
    weight[3:11] = 1.0  # six of them made unusable below
    src[3, 1] = np.nan
    dst[5, 0] = np.inf
    weight[7] = np.nan
    weight[8] = -1.0
    inv_sigma[9] = 0.0
    inv_sigma[10] = np.nan
    arrays = tuple(np.ascontiguousarray(a, np.float32) for a in (src, dst, weight, inv_sigma))
    return arrays, (scale, rot, trans)


def random_axes(rng, m: int) -> np.ndarray:
    """(M,3) float32 directions of random lengths 0.5..2 (the kernel normalises them); axes 20..25
    unusable: NaN, inf, zero."""
    axis = rng.normal(size=(m, 3))
    axis *= rng.uniform(0.5, 2, (m, 1)) / np.linalg.norm(axis, axis=1, keepdims=True)
    axis[20, 0], axis[21, 2], axis[22] = np.nan, np.inf, 0.0
    axis[23:26] = [[0, 0, -np.inf], [np.nan, 0, 0], [0, 0, 0]]
    return np.ascontiguousarray(axis, np.float32)


def perturbed(scale, rot, trans):
    return 1.1 * scale, rotvec_to_rotmat([0.05, 0.02, -0.03]) @ rot, trans + [0.05, 0.0, -0.1]


# ---- (1) kernel vs the NumPy twin ---------------------------------------------------------------
@pytest.mark.parametrize("k", [HUBER, 0.5, np.inf])
def test_kernel_matches_numpy_twin(rng, k) -> None:
    arrays, truth = random_problem(rng, 3000)
    pose = perturbed(*truth)
    hess, grad, cost, count, inliers, terms = reference(*arrays, *pose, k)
    ne = sim3_normal_equations(*arrays, *pose, k)
    np.testing.assert_allclose(ne.hessian, hess, rtol=0, atol=1e-11 * np.abs(hess).max())
    np.testing.assert_allclose(ne.gradient, grad, rtol=0, atol=1e-11 * terms)
    assert ne.cost == pytest.approx(cost, rel=1e-11)
    assert (ne.count, ne.inliers) == (count, inliers)
    assert count == 3000 - np.count_nonzero(arrays[2] == 0) - 6
    assert inliers == count if k == np.inf else 0 < inliers < count
    np.testing.assert_array_equal(ne.hessian, ne.hessian.T)
    raw = _core.sim3_normal_equations(*arrays, pose[0], pose[1], pose[2], k)
    np.testing.assert_array_equal(raw[0], ne.hessian)


@pytest.mark.parametrize("k", [HUBER, np.inf])
@pytest.mark.parametrize("axial_weight", AXIAL_WEIGHTS)
def test_anisotropic_kernel_matches_numpy_twin(rng, k, axial_weight) -> None:
    arrays, truth = random_problem(rng, 3000)
    axis = random_axes(rng, 3000)
    arrays[2][20:26] = 1.0  # the unusable axes are the only reason to drop these points
    pose = perturbed(*truth)
    hess, grad, cost, count, inliers, terms = reference(*arrays, *pose, k, axis, axial_weight)
    ne = sim3_normal_equations(*arrays, *pose, k, axis=axis, axial_weight=axial_weight)
    np.testing.assert_allclose(ne.hessian, hess, rtol=0, atol=1e-11 * np.abs(hess).max())
    np.testing.assert_allclose(ne.gradient, grad, rtol=0, atol=1e-11 * terms)
    assert ne.cost == pytest.approx(cost, rel=1e-11)
    assert (ne.count, ne.inliers) == (count, inliers)
    assert count == 3000 - np.count_nonzero(arrays[2] == 0) - 6 - 6
    np.testing.assert_array_equal(ne.hessian, ne.hessian.T)
    if axial_weight < 1:  # the axis changes the system
        iso = sim3_normal_equations(*arrays, *pose, k)
        assert np.abs(iso.hessian - ne.hessian).max() > 1e-3 * np.abs(hess).max()


def test_axis_none_and_unit_axial_weight_are_the_isotropic_residual(rng) -> None:
    """axis=None runs the isotropic loop (unchanged); any valid axis at w_a = 1 adds exact zeros,
    so the three agree to the bit and match the isotropic twin."""
    arrays, truth = random_problem(rng, 5000)
    pose = perturbed(*truth)
    axis = random_axes(rng, 5000)
    axis[20:26] = 1.0  # all usable
    plain = sim3_normal_equations(*arrays, *pose, HUBER)
    none = sim3_normal_equations(*arrays, *pose, HUBER, axis=None, axial_weight=0.3)
    unit = sim3_normal_equations(*arrays, *pose, HUBER, axis=axis, axial_weight=1.0)
    for ne in (none, unit):
        np.testing.assert_array_equal(ne.hessian, plain.hessian)
        np.testing.assert_array_equal(ne.gradient, plain.gradient)
        assert (ne.cost, ne.count, ne.inliers) == (plain.cost, plain.count, plain.inliers)
    hess, grad, cost, count, inliers, terms = reference(*arrays, *pose, HUBER)
    np.testing.assert_allclose(plain.hessian, hess, rtol=0, atol=1e-11 * np.abs(hess).max())
    assert (plain.count, plain.inliers) == (count, inliers)
    src, dst, truth_pose = exact_scene(rng, 500)
    w, isig = np.ones(500), 1 / src[:, 2]
    start = perturbed(*truth_pose)
    a = track_sim3(src, dst, w, isig, init=start, iters=5)
    b = track_sim3(src, dst, w, isig, init=start, iters=5, axis=dst, axial_weight=1.0)
    assert (a.scale, a.cost, a.iters) == (b.scale, b.cost, b.iters)
    np.testing.assert_array_equal(a.rot, b.rot)


def test_invalid_axis_drops_the_point_exactly(rng) -> None:
    """A NaN / inf / zero axis adds exact zeros, like a zero weight."""
    arrays, truth = random_problem(rng, 2000)
    axis = random_axes(rng, 2000)
    arrays[2][20:26] = 1.0
    pose = perturbed(*truth)
    bad = sim3_normal_equations(*arrays, *pose, HUBER, axis=axis, axial_weight=0.1)
    fixed, zero_w = axis.copy(), arrays[2].copy()
    fixed[20:26] = [1, 0, 0]
    zero_w[20:26] = 0
    dropped = sim3_normal_equations(arrays[0], arrays[1], zero_w, arrays[3], *pose, HUBER,
                                    axis=fixed, axial_weight=0.1)  # fmt: skip
    np.testing.assert_array_equal(bad.hessian, dropped.hessian)
    np.testing.assert_array_equal(bad.gradient, dropped.gradient)
    assert (bad.cost, bad.count, bad.inliers) == (dropped.cost, dropped.count, dropped.inliers)
    kept = sim3_normal_equations(*arrays, *pose, HUBER, axis=fixed, axial_weight=0.1)
    assert kept.count == bad.count + 6


def test_no_usable_point_gives_zeros() -> None:
    src = np.full((4, 3), np.nan, np.float32)
    ne = sim3_normal_equations(src, src, np.ones(4), np.ones(4), 1.0, np.eye(3), np.zeros(3), 1.0)
    assert (ne.count, ne.inliers, ne.cost) == (0, 0, 0.0)
    assert not ne.hessian.any() and not ne.gradient.any()
    empty = np.zeros((0, 3), np.float32)
    assert sim3_normal_equations(empty, empty, np.zeros(0), np.zeros(0), 1.0, np.eye(3),
                                 np.zeros(3), 1.0).count == 0  # fmt: skip


# ---- (2) derivatives by finite differences ------------------------------------------------------
def test_gradient_and_hessian_are_the_derivatives_of_the_cost(rng) -> None:
    arrays, truth = random_problem(rng, 400)
    pose = perturbed(*truth)
    src, dst, weight, inv_sigma = (np.asarray(a, np.float64) for a in arrays)
    ok = usable(src, dst, weight, inv_sigma)
    src, dst, weight, inv_sigma = src[ok], dst[ok], weight[ok], inv_sigma[ok]
    ne = sim3_normal_equations(*arrays, *pose, HUBER)

    def cost(xi):
        return huber_cost(weight, residuals(src, dst, inv_sigma, *pose, xi), HUBER)

    eps = 1e-6
    basis = np.eye(7) * eps
    fd_grad = np.array([(cost(d) - cost(-d)) / (2 * eps) for d in basis])
    np.testing.assert_allclose(ne.gradient, fd_grad, rtol=0, atol=1e-6 * np.abs(fd_grad).max())
    assert ne.cost == pytest.approx(cost(np.zeros(7)), rel=1e-12)

    # H = Σ w h JᵀJ with J the finite-difference Jacobian of the residuals
    jac = np.stack([(residuals(src, dst, inv_sigma, *pose, d)
                     - residuals(src, dst, inv_sigma, *pose, -d)) / (2 * eps) for d in basis],
                   -1)  # fmt: skip
    n = np.linalg.norm(residuals(src, dst, inv_sigma, *pose), axis=1)
    wh = weight * np.where(n <= HUBER, 1.0, HUBER / n)
    fd_hess = np.einsum("p,pia,pib->ab", wh, jac, jac)
    np.testing.assert_allclose(ne.hessian, fd_hess, rtol=0, atol=1e-7 * np.abs(fd_hess).max())


@pytest.mark.parametrize("axial_weight", [0.01, 0.25])
def test_anisotropic_gradient_and_hessian_are_the_derivatives_of_the_cost(
    rng, axial_weight
) -> None:
    arrays, truth = random_problem(rng, 400)
    axis = random_axes(rng, 400)
    pose = perturbed(*truth)
    src, dst, weight, inv_sigma, ax = (np.asarray(a, np.float64) for a in (*arrays, axis))
    ok = usable(src, dst, weight, inv_sigma, ax)
    src, dst, weight, inv_sigma = src[ok], dst[ok], weight[ok], inv_sigma[ok]
    proj = projector(ax[ok], axial_weight)
    ne = sim3_normal_equations(*arrays, *pose, HUBER, axis=axis, axial_weight=axial_weight)

    def res(xi):
        return residuals(src, dst, inv_sigma, *pose, xi, proj)

    def cost(xi):
        return huber_cost(weight, res(xi), HUBER)

    eps = 1e-6
    basis = np.eye(7) * eps
    fd_grad = np.array([(cost(d) - cost(-d)) / (2 * eps) for d in basis])
    np.testing.assert_allclose(ne.gradient, fd_grad, rtol=0, atol=1e-6 * np.abs(fd_grad).max())
    assert ne.cost == pytest.approx(cost(np.zeros(7)), rel=1e-12)
    jac = np.stack([(res(d) - res(-d)) / (2 * eps) for d in basis], -1)
    n = np.linalg.norm(res(None), axis=1)
    wh = weight * np.where(n <= HUBER, 1.0, HUBER / n)
    fd_hess = np.einsum("p,pia,pib->ab", wh, jac, jac)
    np.testing.assert_allclose(ne.hessian, fd_hess, rtol=0, atol=1e-7 * np.abs(fd_hess).max())


# ---- (3) the solver -----------------------------------------------------------------------------
def exact_scene(rng, m: int = 4000):
    src = rng.uniform(-1, 1, (m, 3))
    src[:, 2] = rng.uniform(1, 5, m)
    scale, rot, trans = 1.7, rotvec_to_rotmat([0.3, -0.5, 0.2]), np.array([0.4, -1.0, 2.5])
    dst = scale * src @ rot.T + trans
    return src, dst, (scale, rot, trans)


def pose_error(fit: Sim3Fit, truth) -> tuple[float, float, float]:
    scale, rot, trans = truth
    angle = np.arccos(np.clip((np.trace(fit.rot @ rot.T) - 1) / 2, -1, 1))
    return abs(fit.scale / scale - 1), float(angle), float(np.abs(fit.trans - trans).max())


def test_track_recovers_an_exact_similarity_from_a_bad_start(rng) -> None:
    src, dst, truth = exact_scene(rng)
    weight, inv_sigma = rng.uniform(0.5, 1, len(src)), 1 / src[:, 2]
    off = rotvec_to_rotmat(np.deg2rad(30) * np.array([0.6, 0.8, 0.0]))  # 30° off
    init = (2 * truth[0], off @ truth[1], truth[2] + [0.5, 0.5, -0.5])
    fit = track_sim3(src, dst, weight, inv_sigma, init=init, iters=50)
    ds, angle, dt = pose_error(fit, truth)
    assert ds < 1e-5 and angle < 1e-5 and dt < 1e-5 * np.abs(dst).max()
    assert fit.count == len(src) and fit.inlier_fraction == 1.0
    assert 1 <= fit.iters <= 50
    np.testing.assert_allclose(fit.apply(src), dst, rtol=0, atol=1e-5 * np.abs(dst).max())
    np.testing.assert_allclose(fit.matrix()[:3, :3], fit.scale * fit.rot)
    np.testing.assert_array_equal(fit.matrix()[3], [0, 0, 0, 1])
    # the closed-form start is already exact: one step at most to confirm it
    fit0 = track_sim3(src, dst, weight)
    assert max(pose_error(fit0, truth)) < 1e-5


def test_track_is_robust_to_gross_outliers_where_umeyama_is_not(rng) -> None:
    src, dst, truth = exact_scene(rng)
    m = len(src)
    dst = dst + 0.002 * src[:, 2:] * rng.normal(size=(m, 3))  # 0.2% of the depth
    bad = rng.random(m) < 0.3
    dst[bad] = rng.uniform(-5, 5, (bad.sum(), 3)) + [0, 0, 8]
    weight, inv_sigma = np.ones(m), 1 / src[:, 2]
    plain = weighted_procrustes(src, dst, weight * inv_sigma**2)
    plain_err = pose_error(Sim3Fit(*plain, 0.0, 0, 1.0, m), truth)
    # Huber's bounded influence: outliers bias the fit by O(k), 0.05 of the depth by default
    fit = track_sim3(src, dst, weight, inv_sigma, iters=30)
    ds, angle, dt = pose_error(fit, truth)
    assert ds < 0.01 and angle < 0.01 and dt < 0.05
    assert plain_err[0] > 20 * ds and plain_err[1] > 4 * angle and plain_err[2] > 20 * dt
    tight = pose_error(track_sim3(src, dst, weight, inv_sigma, iters=30, huber=0.01), truth)
    assert tight[0] < 3e-3 and tight[1] < 3e-3 and tight[2] < 0.01
    assert fit.inlier_fraction == pytest.approx(0.7, abs=0.03)


def test_track_iters_zero_returns_the_start(rng) -> None:
    src, dst, truth = exact_scene(rng, 100)
    init = perturbed(*truth)
    fit = track_sim3(src, dst, np.ones(100), init=init, iters=0)
    assert fit.iters == 0 and fit.scale == init[0]
    np.testing.assert_array_equal(fit.rot, init[1])


def depth_noise_scene(rng, noise: float = 0.03):
    """A keyframe (centre ``centre``, rotation ``rot_k``) sees world points ``dst`` at depths
    2..4.2 along unit rays ``axis`` (world frame, a 48x64 grid). Frame t's camera-frame points
    ``src`` are those points moved along their rays by a smooth zero-mean multiplicative depth
    error of at most ``noise``, mapped by the inverse of the known Sim(3) ``truth``."""
    h, w = 48, 64
    v, u = np.mgrid[0:h, 0:w]
    un, vn = (u - w / 2) / (w / 2) * 0.6, (v - h / 2) / (h / 2) * 0.45
    depth = (3 + np.sin(2 * un) + 0.5 * np.cos(3 * vn) + rng.uniform(0, 0.2, (h, w))).ravel()
    centre, rot_k = np.array([0.5, -0.3, 0.2]), rotvec_to_rotmat([0.1, 0.2, -0.05])
    rays = np.stack([un, vn, np.ones_like(un)], -1).reshape(-1, 3)
    axis = rays / np.linalg.norm(rays, axis=1, keepdims=True) @ rot_k.T
    dst = centre + depth[:, None] * axis
    field = (0.6 * np.sin(1.7 * un + 0.4) + 0.5 * vn + 0.4 * np.cos(2.3 * vn - 0.7 * un)).ravel()
    field -= field.mean()
    field *= noise / np.abs(field).max()
    noisy = centre + (depth * (1 + field))[:, None] * axis
    scale, rot, trans = 1.3, rotvec_to_rotmat([0.2, -0.3, 0.1]), np.array([0.4, 0.1, -0.6])
    src = (noisy - trans) @ rot / scale
    return src, dst, 1 / depth, axis, (scale, rot, trans)


def test_anisotropic_residual_ignores_depth_noise_along_the_rays(rng) -> None:
    """3% smooth depth noise along the keyframe rays biases the isotropic fit (rotation ~0.03
    rad, translation ~0.1 m here); with axial_weight = 0.01 only the across-ray errors count
    (exact here) and the weak along-ray term fixes the scale about the keyframe centre."""
    src, dst, inv_sigma, axis, truth = depth_noise_scene(rng)
    weight = np.ones(len(src))
    iso = pose_error(track_sim3(src, dst, weight, inv_sigma, iters=30), truth)
    fit = track_sim3(src, dst, weight, inv_sigma, iters=30, axis=axis, axial_weight=0.01)
    aniso = pose_error(fit, truth)
    assert iso[1] > 5 * aniso[1] and iso[2] > 5 * aniso[2]
    assert iso[1] > 0.01 and iso[2] > 0.03  # the isotropic bias is real
    assert fit.count == len(src) and fit.inlier_fraction == 1.0
    mid = pose_error(track_sim3(src, dst, weight, inv_sigma, iters=30, axis=axis,
                                axial_weight=0.25), truth)  # fmt: skip
    assert aniso[1] < mid[1] < iso[1] and aniso[2] < mid[2] < iso[2]  # monotone in w_a


# ---- (4) threads ---------------------------------------------------------------------------------
def test_threads_do_not_change_the_sums(rng) -> None:
    arrays, truth = random_problem(rng, 70000)  # two threads' worth of points
    one = _core.sim3_normal_equations(*arrays, *truth, HUBER, threads=1)
    two = _core.sim3_normal_equations(*arrays, *truth, HUBER, threads=2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    axis = dict(axis=random_axes(rng, 70000), axial_weight=0.1)
    one = _core.sim3_normal_equations(*arrays, *truth, HUBER, threads=1, **axis)
    two = _core.sim3_normal_equations(*arrays, *truth, HUBER, threads=2, **axis)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


# ---- (5) bad input ------------------------------------------------------------------------------
def core_args(m=5, **override):
    args = dict(src=np.zeros((m, 3), np.float32), dst=np.zeros((m, 3), np.float32),
                weight=np.ones(m, np.float32), inv_sigma=np.ones(m, np.float32), scale=1.0,
                rot=np.eye(3), trans=np.zeros(3), huber=0.1)  # fmt: skip
    args.update(override)
    return args


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (dict(src=np.zeros((5, 3))), "src must be a C-contiguous float32 array of shape (5,3), "
         "got float64 (5,3)"),
        (dict(src=np.zeros((5, 2), np.float32)), "src must have shape (M,3), got (5,2)"),
        (dict(dst=np.zeros((4, 3), np.float32)), "dst must be a C-contiguous float32 array of "
         "shape (5,3), got float32 (4,3)"),
        (dict(weight=np.ones((5, 1), np.float32)), "weight must be a C-contiguous float32 array "
         "of shape (5,), got float32 (5,1)"),
        (dict(inv_sigma=np.ones(10, np.float32)[::2]), "inv_sigma must be a C-contiguous float32 "
         "array of shape (5,), got float32 (5,) non-contiguous"),
        (dict(rot=np.eye(3, dtype=np.float32)), "rot must be a C-contiguous float64 array of "
         "shape (3,3), got float32 (3,3)"),
        (dict(trans=np.zeros(4)), "trans must be a C-contiguous float64 array of shape (3,), got "
         "float64 (4,)"),
        (dict(huber=0.0), "huber must be > 0"),
        (dict(scale=np.nan), "scale must be finite"),
        (dict(axis=np.zeros((5, 3))), "axis must be a C-contiguous float32 array of shape (5,3), "
         "got float64 (5,3)"),
        (dict(axis=np.zeros((4, 3), np.float32)), "axis must be a C-contiguous float32 array of "
         "shape (5,3), got float32 (4,3)"),
        (dict(axis=np.zeros((3, 5), np.float32).T), "axis must be a C-contiguous float32 array "
         "of shape (5,3), got float32 (5,3) non-contiguous"),
        (dict(axis=[[1.0, 0, 0]] * 5), "axis must be None or a C-contiguous float32 array of "
         "shape (5,3), got list"),
        (dict(axial_weight=0.0), "axial_weight must be in (0, 1], got 0"),
        (dict(axial_weight=1.5), "axial_weight must be in (0, 1], got 1.5"),
        (dict(axial_weight=np.nan), "axial_weight must be in (0, 1], got nan"),
    ],
)  # fmt: skip
def test_core_names_the_bad_array(override, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _core.sim3_normal_equations(**core_args(**override))


def test_wrapper_names_the_bad_array(rng) -> None:
    src, dst, _ = exact_scene(rng, 6)
    w = np.ones(6)
    cases = [
        (dict(dst=dst[:5]), "track_sim3: dst must have shape (6, 3) (src (6, 3)), got (5, 3)"),
        (dict(src=src[:, :2]), "track_sim3: src must have shape (M,3), got (6, 2)"),
        (dict(weight=np.ones(7)), "track_sim3: weight must have shape (6,) (src (6, 3)), got (7,)"),
        (dict(inv_sigma=np.ones((6, 1))), "track_sim3: inv_sigma must have shape (6,)"),
        (dict(weight=w.astype(complex)), "track_sim3: weight must be a real array, got dtype "
         "complex128"),
        (dict(weight=np.r_[1.0, 1.0, 0, 0, 0, np.nan]), "need at least 3 usable points "
         "(weight > 0, inv_sigma > 0, all values finite), got 2 of 6"),
        (dict(init=(1.0, np.eye(3), np.zeros(2))), "rot must have shape (3,3) and trans (3,)"),
        (dict(device="gpu"), "device must be 'cpu' or 'cuda[:N]'"),
        (dict(axis=np.ones((5, 3))), "track_sim3: axis must have shape (6, 3) (src (6, 3)), got "
         "(5, 3)"),
        (dict(axis=np.ones(6)), "track_sim3: axis must have shape (6, 3) (src (6, 3)), got (6,)"),
        (dict(axis=np.ones((6, 3)), axial_weight=0.0), "track_sim3: axial_weight must be in "
         "(0, 1], got 0.0"),
        (dict(axial_weight=2.0), "track_sim3: axial_weight must be in (0, 1], got 2.0"),
        (dict(axis=np.r_[[[0.0, 0, 1]] * 2, [[0.0, 0, 0]] * 3, [[np.nan, 0, 1]]]), "need at "
         "least 3 usable points (weight > 0, inv_sigma > 0, all values finite, a non-zero "
         "axis), got 2 of 6"),
    ]  # fmt: skip
    for override, message in cases:
        args = dict(src=src, dst=dst, weight=w) | override
        with pytest.raises(ValueError, match=re.escape(message)):
            track_sim3(**args)
    with pytest.raises(ValueError, match=re.escape("sim3_normal_equations: inv_sigma must have")):
        sim3_normal_equations(src, dst, w, np.ones(5), 1.0, np.eye(3), np.zeros(3), HUBER)
    with pytest.raises(ValueError, match=re.escape("sim3_normal_equations: axis must have shape "
                                                   "(6, 3) (src (6, 3)), got (6, 2)")):  # fmt: skip
        sim3_normal_equations(src, dst, w, w, 1.0, np.eye(3), np.zeros(3), HUBER,
                              axis=np.ones((6, 2)))  # fmt: skip
    with pytest.raises(ValueError, match=re.escape("sim3_normal_equations: axial_weight")):
        sim3_normal_equations(src, dst, w, w, 1.0, np.eye(3), np.zeros(3), HUBER,
                              axis=np.ones((6, 3)), axial_weight=-1.0)  # fmt: skip


def test_cuda_boundary_names_the_bad_array() -> None:
    pytest.importorskip("torch")
    from fake_dlpack import cuda

    def args(m=7, **override):
        a = dict(src=cuda(m, 3), dst=cuda(m, 3), weight=cuda(m), inv_sigma=cuda(m), scale=1.0,
                 rot=np.eye(3), trans=np.zeros(3), huber=0.1,
                 partials=cuda(_core.SIM3_NE_BLOCKS, _core.SIM3_NE_PARTIAL, dtype="float64"),
                 out=cuda(_core.SIM3_NE_SIZE, dtype="float64"))  # fmt: skip
        return a | override

    cases = [
        (dict(weight=cuda(6)), "weight: expected float32 on cuda:0 with shape (7,), got float32 "
         "on cuda:0 with shape (6,) (M=7 from src)"),
        (dict(dst=cuda(7, 3, dtype="float64")), "dst: expected float32 on cuda:0 with shape "
         "(7,3), got float64"),
        (dict(inv_sigma=np.ones(7, np.float32)), "inv_sigma: expected float32 on cuda:0 with "
         "shape (7,), got float32 on cpu"),
        (dict(src=cuda(7, 3, strides=(1, 7))), "src: expected float32 on cuda with shape (M,3), "
         "got float32 on cuda:0 with shape (7,3) and strides (1,7)"),
        (dict(out=cuda(58, dtype="float64")), f"out: expected float64 on cuda:0 with shape "
         f"({_core.SIM3_NE_SIZE},), got float64 on cuda:0 with shape (58,)"),
        (dict(partials=cuda(3, _core.SIM3_NE_PARTIAL, dtype="float64")), "partials: expected "
         f"float64 on cuda:0 with shape ({_core.SIM3_NE_BLOCKS},{_core.SIM3_NE_PARTIAL})"),
        (dict(axis=cuda(6, 3)), "axis: expected float32 on cuda:0 with shape (7,3), got float32 "
         "on cuda:0 with shape (6,3) (M=7 from src)"),
        (dict(axis=np.ones((7, 3), np.float32)), "axis: expected float32 on cuda:0 with shape "
         "(7,3), got float32 on cpu"),
        (dict(axis=cuda(7, 3), axial_weight=0.0), "axial_weight must be in (0, 1], got 0"),
    ]  # fmt: skip
    for override, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            _core.sim3_normal_equations_cuda(**args(**override))


# ---- (6) CUDA twin ------------------------------------------------------------------------------
def test_cuda_twin_matches_cpu(rng) -> None:
    ok, why = cuda_arrays_available()
    if not ok:
        pytest.skip(why)
    import torch

    arrays, truth = random_problem(rng, 100000)
    pose = perturbed(*truth)
    cpu = sim3_normal_equations(*arrays, *pose, HUBER)
    gpu = sim3_normal_equations(*(torch.from_numpy(a).cuda() for a in arrays), *pose, HUBER)
    np.testing.assert_allclose(gpu.hessian, cpu.hessian, rtol=0,
                               atol=1e-12 * np.abs(cpu.hessian).max())  # fmt: skip
    np.testing.assert_allclose(gpu.gradient, cpu.gradient, rtol=0,
                               atol=1e-9 * np.abs(cpu.gradient).max())  # fmt: skip
    assert gpu.cost == pytest.approx(cpu.cost, rel=1e-12)
    assert (gpu.count, gpu.inliers) == (cpu.count, cpu.inliers)
    again = sim3_normal_equations(*(torch.from_numpy(a).cuda() for a in arrays), *pose, HUBER)
    np.testing.assert_array_equal(again.hessian, gpu.hessian)  # deterministic

    axis = random_axes(rng, 100000)
    cpu = sim3_normal_equations(*arrays, *pose, HUBER, axis=axis, axial_weight=0.05)
    gpu = sim3_normal_equations(*(torch.from_numpy(a).cuda() for a in arrays), *pose, HUBER,
                                axis=torch.from_numpy(axis).cuda(), axial_weight=0.05)  # fmt: skip
    np.testing.assert_allclose(gpu.hessian, cpu.hessian, rtol=0,
                               atol=1e-12 * np.abs(cpu.hessian).max())  # fmt: skip
    np.testing.assert_allclose(gpu.gradient, cpu.gradient, rtol=0,
                               atol=1e-9 * np.abs(cpu.gradient).max())  # fmt: skip
    assert gpu.cost == pytest.approx(cpu.cost, rel=1e-12)
    assert (gpu.count, gpu.inliers) == (cpu.count, cpu.inliers)

    fit_cpu = track_sim3(*arrays, iters=20)
    fit_gpu = track_sim3(*arrays, iters=20, device="cuda")
    assert fit_gpu.count == fit_cpu.count
    assert abs(fit_gpu.scale / fit_cpu.scale - 1) < 1e-6
    np.testing.assert_allclose(fit_gpu.rot, fit_cpu.rot, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fit_gpu.trans, fit_cpu.trans, rtol=0, atol=1e-6)
    src, dst, inv_sigma, axis, _ = depth_noise_scene(rng)
    weight = np.ones(len(src))
    fits = [track_sim3(src, dst, weight, inv_sigma, axis=axis, axial_weight=0.01, device=d)
            for d in ("cpu", "cuda")]  # fmt: skip
    assert abs(fits[1].scale / fits[0].scale - 1) < 1e-6
    np.testing.assert_allclose(fits[1].rot, fits[0].rot, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fits[1].trans, fits[0].trans, rtol=0, atol=1e-6)


def test_track_sim3_without_scale_keeps_the_start_scale():
    """``with_scale=False``: SE(3) steps from the start's scale; exact when that scale is true,
    and the scale never moves."""
    from monst3r_rt.geometry import rotvec_to_rotmat
    from monst3r_rt.stream.tracking import track_sim3

    rng = np.random.default_rng(3)
    src = rng.normal(size=(500, 3)).astype(np.float32) + [0, 0, 5]
    rot, trans, scale = rotvec_to_rotmat([0.1, -0.2, 0.05]), np.array([0.3, -0.1, 0.2]), 1.7
    dst = (scale * src @ rot.T + trans).astype(np.float32)
    w = np.ones(500, np.float32)
    fit = track_sim3(src, dst, w, init=(scale, np.eye(3), np.zeros(3)), with_scale=False,
                     iters=20)  # fmt: skip
    assert fit.scale == scale
    np.testing.assert_allclose(fit.rot, rot, atol=1e-5)
    np.testing.assert_allclose(fit.trans, trans, atol=1e-4)
    wrong = track_sim3(src, dst, w, init=(1.0, np.eye(3), np.zeros(3)), with_scale=False)
    assert wrong.scale == 1.0  # the scale is not estimated, even when it is wrong
