"""Tests of ``monst3r_rt.geometry`` against independent references: rotations and quaternions
written by hand, composition identities of poses, round trips of (un)projection, Umeyama on
exactly transformed points and a centred-SVD twin, PnP on exact data, and the pair-moments kernel
against NumPy sums."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import cuda_arrays_available
from monst3r_rt import _core
from monst3r_rt import geometry as G

S2 = np.sqrt(0.5)
RZ90 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # 90° about z: x -> y
CYCLE = np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])  # 120° about (1,1,1): x -> y -> z -> x


def rx(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def random_rotation(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Uniform rotations from QR of Gaussian matrices (det +1)."""
    a = rng.normal(size=(n or 1, 3, 3))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    return q if n else q[0]


def random_pose(rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = random_rotation(rng)
    pose[:3, 3] = rng.normal(size=3) * scale
    return pose


# ------------------------------------------------------------------------------------------------
# rotations and quaternions
# ------------------------------------------------------------------------------------------------
# (rotation, xyzw as roma's branch gives it) written by hand
KNOWN = [
    (np.eye(3), [0, 0, 0, 1]),
    (RZ90, [0, 0, S2, S2]),
    (rx(np.pi), [1, 0, 0, 0]),
    (np.diag([-1.0, 1, -1]), [0, 1, 0, 0]),  # 180° about y
    (np.diag([-1.0, -1, 1]), [0, 0, 1, 0]),  # 180° about z
    (CYCLE, [0.5, 0.5, 0.5, 0.5]),
    # −170° about x: the x branch keeps qx > 0, so qw = cos(85°) comes out negative
    (rx(np.radians(-170)), [np.sin(np.radians(85)), 0, 0, -np.cos(np.radians(85))]),
]


@pytest.mark.parametrize("rot, xyzw", KNOWN)
def test_quaternions_of_known_rotations(rot, xyzw) -> None:
    xyzw = np.array(xyzw, float)
    wxyz = xyzw[[3, 0, 1, 2]]
    np.testing.assert_allclose(G.rotmat_to_quat_xyzw(rot), xyzw, atol=1e-15)
    np.testing.assert_allclose(G.rotmat_to_quat_wxyz(rot), wxyz, atol=1e-15)
    positive = xyzw if xyzw[3] >= 0 else -xyzw
    np.testing.assert_allclose(G.rotmat_to_quat_xyzw(rot, positive_w=True), positive, atol=1e-15)
    np.testing.assert_allclose(G.quat_xyzw_to_rotmat(xyzw), rot, atol=1e-15)
    np.testing.assert_allclose(G.quat_wxyz_to_rotmat(wxyz), rot, atol=1e-15)
    # q and -q, and any positive multiple, are the same rotation
    np.testing.assert_allclose(G.quat_xyzw_to_rotmat(-3.5 * xyzw), rot, atol=1e-15)


def test_quaternion_round_trip_batched_and_dtypes(rng) -> None:
    rots = random_rotation(rng, 300).reshape(3, 100, 3, 3)
    rots[0, :4] = [KNOWN[2][0], KNOWN[3][0], KNOWN[4][0], KNOWN[6][0]]  # every branch
    q = G.rotmat_to_quat_xyzw(rots)
    assert q.shape == (3, 100, 4) and q.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1, atol=1e-15)
    np.testing.assert_allclose(G.quat_xyzw_to_rotmat(q), rots, atol=1e-14)
    np.testing.assert_allclose(G.quat_wxyz_to_rotmat(G.rotmat_to_quat_wxyz(rots)), rots, atol=1e-14)
    assert (G.rotmat_to_quat_xyzw(rots, positive_w=True)[..., 3] >= 0).all()
    # element-wise the same as one matrix at a time
    np.testing.assert_array_equal(G.rotmat_to_quat_xyzw(rots[1, 7]), q[1, 7])
    assert G.rotmat_to_quat_xyzw(np.zeros((0, 3, 3))).shape == (0, 4)
    q32 = q.astype(np.float32)
    assert G.quat_xyzw_to_rotmat(q32).dtype == np.float32
    np.testing.assert_allclose(G.quat_xyzw_to_rotmat(q32), rots, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(\.\.\.,3,3\)"):
        G.rotmat_to_quat_xyzw(np.eye(4))


def test_rotvec_to_rotmat_closed_form() -> None:
    np.testing.assert_allclose(G.rotvec_to_rotmat([0, 0, np.pi / 2]), RZ90, atol=1e-15)
    axis = np.ones(3) / np.sqrt(3)
    np.testing.assert_allclose(G.rotvec_to_rotmat(2 * np.pi / 3 * axis), CYCLE, atol=1e-15)
    np.testing.assert_allclose(G.rotvec_to_rotmat(np.zeros(3)), np.eye(3))


# ------------------------------------------------------------------------------------------------
# poses and similarities
# ------------------------------------------------------------------------------------------------
def test_relative_pose_composition_identities(rng) -> None:
    a, b, c = (random_pose(rng, 3.0) for _ in range(3))
    rot, t = G.relative_pose(a, b)
    rel = G.sim3_matrix(1.0, rot, t)
    np.testing.assert_allclose(b @ rel, a, atol=1e-12)  # cam_a -> cam_b -> world = cam_a -> world
    np.testing.assert_allclose(rel, np.linalg.inv(b) @ a, atol=1e-12)
    rot_i, t_i = G.relative_pose(b, a)
    np.testing.assert_allclose(G.sim3_matrix(1.0, rot_i, t_i) @ rel, np.eye(4), atol=1e-12)
    # a -> b -> c equals a -> c
    r_bc, t_bc = G.relative_pose(b, c)
    r_ac, t_ac = G.relative_pose(a, c)
    np.testing.assert_allclose(G.sim3_matrix(1.0, r_bc, t_bc) @ rel,
                               G.sim3_matrix(1.0, r_ac, t_ac), atol=1e-12)  # fmt: skip
    r_aa, t_aa = G.relative_pose(a, a)
    np.testing.assert_allclose(r_aa, np.eye(3), atol=1e-14)
    np.testing.assert_allclose(t_aa, 0, atol=1e-14)
    # batched, and the (R, T) form
    poses = np.stack([a, b, c])
    rb, tb = G.relative_pose(poses, poses[[1, 2, 0]])
    rr, tt = G.relative_pose_rt(poses[:, :3, :3], poses[:, :3, 3],
                                poses[[1, 2, 0], :3, :3], poses[[1, 2, 0], :3, 3])  # fmt: skip
    np.testing.assert_array_equal(rb, rr)
    np.testing.assert_array_equal(tb, tt)
    np.testing.assert_allclose(rb[0], rot, atol=1e-15)


def test_sim3_and_transform_points(rng) -> None:
    rot = random_rotation(rng)
    s, t = 2.5, np.array([1.0, -2.0, 0.5])
    pts = rng.normal(size=(4, 5, 3))
    trf = G.sim3_matrix(s, rot, t)
    np.testing.assert_allclose(trf[3], [0, 0, 0, 1])
    want = np.einsum("ij,abj->abi", s * rot, pts) + t
    np.testing.assert_allclose(G.transform_points(trf, pts), want, atol=1e-13)
    np.testing.assert_allclose(G.transform_points(trf[:3], pts), want, atol=1e-13)  # (3,4)
    # composition = matrix product
    trf2 = G.sim3_matrix(0.3, random_rotation(rng), rng.normal(size=3))
    np.testing.assert_allclose(G.transform_points(trf2, G.transform_points(trf, pts)),
                               G.transform_points(trf2 @ trf, pts), atol=1e-12)  # fmt: skip
    bad = pts.copy()
    bad[0, 0] = np.nan
    out = G.transform_points(trf, bad)
    assert np.isnan(out[0, 0]).all() and np.isfinite(out[1:]).all()


# ------------------------------------------------------------------------------------------------
# projection
# ------------------------------------------------------------------------------------------------
def test_pixel_grid_and_intrinsics() -> None:
    grid = G.pixel_grid(3, 4)
    assert grid.shape == (3, 4, 2) and grid.dtype == np.float32
    np.testing.assert_array_equal(grid[2, 1], [1, 2])  # (x, y) = (column, row)
    assert not grid.flags.writeable
    k = G.intrinsic_matrix(50.0, (32.0, 24.0))
    np.testing.assert_array_equal(k, [[50, 0, 32], [0, 50, 24], [0, 0, 1]])
    assert G.intrinsic_matrix(50.0, (32.0, 24.0), np.float32).dtype == np.float32


def test_unproject_by_hand_and_project_round_trip(rng) -> None:
    h, w, f = 6, 8, 10.0
    depth = rng.uniform(1, 5, size=(2, h, w))
    pts = G.unproject_depth(depth, f)
    assert pts.shape == (2, h, w, 3) and pts.dtype == np.float64
    # pixel (x=5, y=1) of map 1, principal point (W/2, H/2) = (4, 3)
    d = depth[1, 1, 5]
    np.testing.assert_allclose(pts[1, 1, 5], [(5 - 4) / f * d, (1 - 3) / f * d, d], rtol=1e-15)
    np.testing.assert_array_equal(pts[..., 2], depth)
    uv = G.project(pts, f, (w / 2, h / 2))
    np.testing.assert_allclose(uv, np.broadcast_to(G.pixel_grid(h, w), uv.shape), atol=1e-12)
    # K @ (X/Z, Y/Z, 1) is the same projection
    k = G.intrinsic_matrix(f, (w / 2, h / 2))
    hom = pts / pts[..., 2:] @ k.T
    np.testing.assert_allclose(hom[..., :2], uv, atol=1e-12)
    # separate focals and a principal point; sparse pixels
    pix = rng.uniform(0, 50, size=(7, 2))
    z = rng.uniform(1, 3, size=7)
    p = G.unproject(pix, z, (12.0, 9.0), (20.0, 15.0))
    np.testing.assert_allclose(p[:, 0], (pix[:, 0] - 20) / 12 * z, rtol=1e-14)
    np.testing.assert_allclose(p[:, 1], (pix[:, 1] - 15) / 9 * z, rtol=1e-14, atol=1e-15)
    # the float32 kernel agrees with the float64 NumPy unprojection
    cam32 = G.depth_to_points(depth.astype(np.float32), np.full(2, f, np.float32))
    np.testing.assert_allclose(cam32, pts, rtol=1e-6, atol=1e-6 * depth.max())


def test_frustum_lines_project_to_the_image_corners(rng) -> None:
    pose = random_pose(rng, 2.0)
    h, w, f, size = 30, 40, 35.0, 0.7
    k = G.intrinsic_matrix(f, (w / 2, h / 2))
    seg = G.frustum_lines(pose, k, w, h, size)
    assert seg.shape == (16, 3)
    np.testing.assert_allclose(seg[0::2][:4], np.tile(pose[:3, 3], (4, 1)), atol=1e-12)
    cam = G.transform_points(np.linalg.inv(pose), seg[1:8:2])  # the four far corners
    np.testing.assert_allclose(cam[:, 2], size, atol=1e-12)
    np.testing.assert_allclose(G.project(cam, f, (w / 2, h / 2)),
                               [[0, 0], [w, 0], [w, h], [0, h]], atol=1e-9)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# pair moments and Umeyama
# ------------------------------------------------------------------------------------------------
def moments_reference(x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """(17,) NumPy float64 moments, pairs with a non-finite value dropped."""
    x, y = x.reshape(-1, 3).astype(np.float64), y.reshape(-1, 3).astype(np.float64)
    w = np.ones(len(x)) if w is None else w.reshape(-1).astype(np.float64)
    keep = np.isfinite(x).all(1) & np.isfinite(y).all(1) & np.isfinite(w)
    x, y, w = x[keep], y[keep], w[keep]
    return np.concatenate([[w.sum()], w @ x, w @ y, (x * w[:, None]).T.dot(y).ravel(),
                           [w @ (x * x).sum(1)]])  # fmt: skip


def noisy_pairs(rng: np.random.Generator, m: int, dtype: type) -> tuple:
    x = (rng.normal(size=(m, 3)) + [0, 0, 4]).astype(dtype)
    y = 1.7 * x @ random_rotation(rng).T + [1, 2, 3] + 0.05 * rng.normal(size=(m, 3))
    w = rng.uniform(0.5, 3, size=m).astype(dtype)
    return x, y.astype(dtype), w


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_moments_kernel_matches_numpy(rng, dtype) -> None:
    b, m = 3, 9000  # several chunks of the kernel's partial sums
    sets = [noisy_pairs(rng, m, dtype) for _ in range(b)]
    x, y, w = (np.stack([s[k] for s in sets]) for k in range(3))
    x[0, 5, 1] = np.nan
    y[1, 17, 2] = np.inf
    w[2, 40] = np.nan
    got = _core.pair_moments(x, y, w)
    assert got.shape == (b, 17) and got.dtype == np.float64
    for k in range(b):
        want = moments_reference(x[k], y[k], w[k])
        np.testing.assert_allclose(got[k], want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    assert got[0, 0] == pytest.approx(w[0].astype(np.float64).sum() - w[0, 5], rel=1e-12)
    unweighted = _core.pair_moments(x, y, None)
    np.testing.assert_allclose(unweighted[1], moments_reference(x[1], y[1], None), rtol=1e-12)
    assert unweighted[1, 0] == m - 1
    # float32 values read as float64 give exactly the same moments
    if dtype == np.float32:
        wide = [a.astype(np.float64) for a in (x, y, w)]
        np.testing.assert_array_equal(_core.pair_moments(*wide), got)
    # the Python wrapper flattens any (...,3) layout
    mom = G.pair_moments(x[2].reshape(90, 100, 3), y[2].reshape(90, 100, 3), w[2].reshape(90, 100))
    np.testing.assert_allclose(mom.sum_src_dst.ravel(), got[2, 7:16], rtol=1e-15)
    assert mom.weight == got[2, 0] and mom.sum_src_sq == got[2, 16]


def test_sums_do_not_depend_on_the_thread_count(rng) -> None:
    # large enough (> 2 x 2^18 items) for the kernels to use two threads when asked
    pts = (rng.normal(size=(800, 800, 3)) + [0, 0, 3]).astype(np.float32)
    x, y = pts.reshape(1, -1, 3), pts[::-1].reshape(1, -1, 3)
    np.testing.assert_array_equal(_core.pair_moments(x, y, None, threads=1),
                                  _core.pair_moments(x, y, None, threads=2))  # fmt: skip
    one, two = (_core.estimate_focal(pts, None, 400.0, 400.0, 10, t) for t in (1, 2))
    assert one == two


def test_pair_moments_errors_name_the_array() -> None:
    x = np.zeros((1, 5, 3))
    must = "must be a C-contiguous float64 array of shape"
    with pytest.raises(ValueError, match=rf"^dst {must} \(1,5,3\), got float64 \(1,4,3\)$"):
        _core.pair_moments(x, np.zeros((1, 4, 3)))
    with pytest.raises(ValueError, match=rf"^weights {must} \(1,5\), got float64 \(1,4\)$"):
        _core.pair_moments(x, x, np.zeros((1, 4)))
    with pytest.raises(ValueError, match=rf"^dst {must} \(1,5,3\), got float32 \(1,5,3\)$"):
        _core.pair_moments(x, x.astype(np.float32))
    strided = np.zeros((1, 10, 3))[:, ::2]
    with pytest.raises(ValueError, match=rf"^dst {must} \(1,5,3\), got .* non-contiguous$"):
        _core.pair_moments(x, strided)
    with pytest.raises(ValueError, match=r"src must have shape \(B,P,3\)"):
        _core.pair_moments(np.zeros((5, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="weights must have 5 elements"):
        G.pair_moments(x[0], x[0], np.ones(4))
    with pytest.raises(ValueError, match="differ"):
        G.pair_moments(x[0], x[0, :4])
    assert G.pair_moments(x[0, :0], x[0, :0]).weight == 0


def umeyama_reference(x, y, w):
    """Centred weighted Umeyama (1991) in NumPy: R = U diag(1, 1, det(U Vᵀ)) Vᵀ."""
    w = w / w.sum()
    mx, my = w @ x, w @ y
    xc, yc = x - mx, y - my
    u, d, vt = np.linalg.svd((yc * w[:, None]).T @ xc)
    sign = np.diag([1.0, 1.0, np.linalg.det(u @ vt)])
    rot = u @ sign @ vt
    s = np.trace(np.diag(d) @ sign) / (w @ (xc * xc).sum(1))
    return s, rot, my - s * rot @ mx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_umeyama_recovers_exact_similarity(rng, dtype) -> None:
    rot, s, t = random_rotation(rng), 0.37, np.array([3.0, -1.0, 10.0])
    x = (rng.normal(size=(40, 50, 3)) + [0, 0, 5]).astype(dtype)
    y = (s * x.astype(np.float64) @ rot.T + t).astype(dtype)
    w = rng.uniform(0.1, 2.0, size=(40, 50)).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    s_hat, r_hat, t_hat = G.weighted_procrustes(x, y, w)
    assert s_hat == pytest.approx(s, rel=tol)
    np.testing.assert_allclose(r_hat, rot, atol=tol)
    np.testing.assert_allclose(t_hat, t, atol=tol * np.abs(t).max() * 10)
    assert np.linalg.det(r_hat) == pytest.approx(1.0, abs=1e-12)
    # masked pairs are ignored, however wrong they are
    x2, y2 = x.copy(), y.copy()
    x2[:5] = np.nan
    y2[5:8] = 1e3
    w2 = w.copy()
    w2[5:8] = 0
    s2, r2, t2 = G.weighted_procrustes(x2, y2, w2)
    assert s2 == pytest.approx(s, rel=tol)
    np.testing.assert_allclose(r2, rot, atol=tol)
    # rigid: s = 1
    s1, r1, t1 = G.weighted_procrustes(x, (x.astype(np.float64) @ rot.T + t).astype(dtype),
                                       with_scale=False)  # fmt: skip
    assert s1 == 1.0
    np.testing.assert_allclose(r1, rot, atol=tol)
    np.testing.assert_allclose(t1, t, atol=tol * 100)


def test_umeyama_matches_the_centred_twin_on_noisy_data(rng) -> None:
    x, y, w = noisy_pairs(rng, 5000, np.float64)
    want = umeyama_reference(x, y, w)
    got = G.umeyama(G.pair_moments(x, y, w))
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    np.testing.assert_allclose(got[1], want[1], atol=1e-12)
    np.testing.assert_allclose(got[2], want[2], atol=1e-11)
    # a mirrored target: the best *proper* rotation, not the reflection
    mirrored = x * [1, 1, -1]
    s, r, _ = G.weighted_procrustes(x, mirrored, w)
    ws, wr, _ = umeyama_reference(x, mirrored, w)
    assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_allclose(r, wr, atol=1e-12)
    assert s == pytest.approx(ws, rel=1e-12)


def test_umeyama_refuses_degenerate_input() -> None:
    x = np.tile([1.0, 2.0, 3.0], (10, 1))
    with pytest.raises(ValueError, match="degenerate source"):
        G.weighted_procrustes(x, x + 1)
    assert G.weighted_procrustes(x, x + 1, with_scale=False)[0] == 1.0
    with pytest.raises(ValueError, match="positive sum"):
        G.weighted_procrustes(x, x, np.zeros(10))
    with pytest.raises(ValueError, match="positive sum"):
        G.weighted_procrustes(np.full((4, 3), np.nan), np.zeros((4, 3)))


def test_pair_moments_cuda_twin_matches_cpu(rng) -> None:
    ok, why = cuda_arrays_available()
    if not ok:
        pytest.skip(why)
    import torch

    x, y, w = noisy_pairs(rng, 70000, np.float32)
    x[3] = np.nan
    cpu = G.pair_moments(x, y, w)
    gpu = G.pair_moments(*(torch.from_numpy(a).cuda() for a in (x, y, w)))
    for name in ("weight", "sum_src", "sum_dst", "sum_src_dst", "sum_src_sq"):
        want = np.asarray(getattr(cpu, name))
        np.testing.assert_allclose(getattr(gpu, name), want, rtol=1e-12,
                                   atol=1e-12 * np.abs(want).max())  # fmt: skip
    gpu_none = G.pair_moments(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda())
    assert gpu_none.weight == G.pair_moments(x, y).weight == len(x) - 1


# ------------------------------------------------------------------------------------------------
# focal and PnP
# ------------------------------------------------------------------------------------------------
def test_estimate_focal_exact_pinhole_off_centre(rng) -> None:
    h, w, f, pp = 30, 44, 38.5, (19.0, 16.5)
    pts = G.unproject_depth(rng.uniform(1, 4, size=(h, w)), f, pp)
    assert G.estimate_focal(pts, pp) == pytest.approx(f, rel=1e-5)
    weights = rng.uniform(0, 1, size=(h, w))
    assert G.estimate_focal(pts, pp, weights=weights) == pytest.approx(f, rel=1e-5)
    # the default principal point is (W/2, H/2): a pointmap made for it gives f there
    assert G.estimate_focal(G.unproject_depth(np.ones((h, w)), f)) == pytest.approx(f, rel=1e-5)


def test_pnp_on_exact_data(rng) -> None:
    c2w = random_pose(rng, 0.5)
    h, w, f = 120, 160, 140.0
    k = G.intrinsic_matrix(f, (w / 2, h / 2))
    depth = rng.uniform(2, 6, size=(h, w))
    world = G.transform_points(c2w, G.unproject_depth(depth, f))
    pick = rng.choice(h * w, 500, replace=False)
    obj = world.reshape(-1, 3)[pick].astype(np.float32)
    img = G.pixel_grid(h, w).reshape(-1, 2)[pick]
    res = G.pnp_ransac(obj, img, k, niter=10, reproj_error=1.0)
    assert res is not None
    inliers, rot, t = res
    assert inliers == 500
    w2c = np.linalg.inv(c2w)
    np.testing.assert_allclose(rot, w2c[:3, :3], atol=1e-4)
    np.testing.assert_allclose(t, w2c[:3, 3], atol=1e-4 * 6)
    # fast_pnp on the whole pointmap, focal known and searched (exactly on a candidate)
    mask = np.ones((h, w), bool)
    f_hat, pose = G.fast_pnp(world, f, mask)
    assert f_hat == f
    np.testing.assert_allclose(pose, c2w, atol=1e-4 * 6)
    f_cand = float(np.geomspace(w / 2, 3 * w, 21)[3])
    world2 = G.transform_points(c2w, G.unproject_depth(depth, f_cand))
    f_hat2, pose2 = G.fast_pnp(world2, None, mask)
    assert f_hat2 == pytest.approx(f_cand)
    np.testing.assert_allclose(pose2, c2w, atol=1e-4 * 6)
    assert G.fast_pnp(world, f, np.zeros((h, w), bool)) is None
