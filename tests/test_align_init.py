"""Tests of ``init='mst'`` (``monst3r_rt.align.init``) and of the synthetic scene."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from tolerance import assert_close, assert_poses_close, scale_of

from monst3r_rt.align.init import init_mst, max_spanning_tree
from monst3r_rt.align.params import signed_expm1, signed_log1p
from monst3r_rt.geometry import (
    estimate_focal,
    fast_pnp,
    rotmat_to_quat_xyzw,
    unproject_depth,
    weighted_procrustes,
)
from monst3r_rt.synthetic import make_scene, project_points


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """XYZW quaternion (normalised here) -> 3x3 rotation."""
    x, y, z, w = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def params_to_poses(im_poses: np.ndarray) -> np.ndarray:
    """(N,7) parameters -> (N,4,4) camera-to-world."""
    out = np.tile(np.eye(4), (len(im_poses), 1, 1))
    for k, p in enumerate(im_poses.astype(np.float64)):
        out[k, :3, :3] = quat_to_rotmat(p[:4])
        out[k, :3, 3] = signed_expm1(p[4:7])
    return out


def pw_to_matrices(pw: np.ndarray) -> np.ndarray:
    """(E,8) pairwise parameters -> (E,4,4) scaled transforms ``[sigma R | sigma T]``."""
    pw = pw.astype(np.float64)
    sigma = np.exp(pw[:, 7]) * np.exp(np.log(0.5) - pw[:, 7].mean())
    out = np.tile(np.eye(4), (len(pw), 1, 1))
    for e in range(len(pw)):
        out[e, :3, :3] = sigma[e] * quat_to_rotmat(pw[e, :4])
        out[e, :3, 3] = sigma[e] * signed_expm1(pw[e, 4:7])
    return out


def apply(trf: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ trf[:3, :3].T + trf[:3, 3]


# ------------------------------------------------------------------------------------------------
# small building blocks
# ------------------------------------------------------------------------------------------------
def test_signed_log1p_roundtrip_and_quaternion() -> None:
    x = np.array([-3.0, -0.1, 0.0, 0.2, 5.0])
    np.testing.assert_allclose(signed_expm1(signed_log1p(x)), x, rtol=1e-14)
    rng = np.random.default_rng(0)
    for _ in range(20):
        rot = random_rotation(rng)
        q = rotmat_to_quat_xyzw(rot)
        assert abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(quat_to_rotmat(q), rot, atol=1e-12)
    # the identity maps to w = +1 (roma's branch choice)
    np.testing.assert_allclose(rotmat_to_quat_xyzw(np.eye(3)), [0, 0, 0, 1])


def test_weighted_procrustes_recovers_similarity() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        rot = random_rotation(rng)
        s = float(np.exp(rng.uniform(-1, 1)))
        t = rng.normal(size=3) * 3
        src = rng.normal(size=(200, 3))
        dst = s * src @ rot.T + t
        w = rng.uniform(0.5, 2.0, size=200)
        s_hat, r_hat, t_hat = weighted_procrustes(src, dst, w)
        assert abs(s_hat - s) < 1e-10 * s
        np.testing.assert_allclose(r_hat, rot, atol=1e-10)
        assert_close(t_hat, t, rel=1e-12)
        # rigid variant on a rigid transform
        s1, r1, t1 = weighted_procrustes(src, src @ rot.T + t, with_scale=False)
        assert s1 == 1.0
        np.testing.assert_allclose(r1, rot, atol=1e-10)
        assert_close(t1, t, rel=1e-12)


def test_weighted_procrustes_weights_matter() -> None:
    rng = np.random.default_rng(2)
    rot = random_rotation(rng)
    src = rng.normal(size=(100, 3))
    dst = 1.7 * src @ rot.T + np.array([1.0, -2.0, 0.5])
    dst[:20] += rng.normal(size=(20, 3)) * 5  # outliers
    w = np.ones(100)
    w[:20] = 0.0
    s_hat, r_hat, _ = weighted_procrustes(src, dst, w)
    assert s_hat == pytest.approx(1.7, rel=1e-12)
    np.testing.assert_allclose(r_hat, rot, atol=1e-10)
    s_bad, r_bad, _ = weighted_procrustes(src, dst, np.ones(100))
    assert abs(s_bad - 1.7) > 1e-3 or np.abs(r_bad - rot).max() > 1e-3
    with pytest.raises(ValueError, match="positive sum"):
        weighted_procrustes(src, dst, np.zeros(100))
    with pytest.raises(ValueError, match="differ"):
        weighted_procrustes(src, dst[:10])


def test_estimate_focal_exact_pinhole() -> None:
    rng = np.random.default_rng(3)
    h, w, f = 36, 52, 47.3
    depth = 2.0 + rng.uniform(0, 3, size=(h, w))
    pts = unproject_depth(depth, f)
    assert abs(estimate_focal(pts) - f) < 1e-3 * f
    assert abs(estimate_focal(pts.astype(np.float32)) - f) < 1e-3 * f
    # robust to a few gross outliers (the IRLS is an L1 fit)
    bad = pts.copy()
    bad[:3, :5] *= np.array([3.0, -2.0, 1.0])
    assert abs(estimate_focal(bad) - f) < 1e-2 * f


def estimate_focal_reference(pts, pp, iters=10, weights=None):
    """The official Weiszfeld IRLS in float64 NumPy (with masked points left out)."""
    h, w, _ = pts.shape
    ys, xs = np.mgrid[:h, :w]
    pixels = np.stack([xs, ys], -1).reshape(-1, 2) - np.asarray(pp, np.float64)
    p = pts.reshape(-1, 3).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = np.nan_to_num(p[:, :2] / p[:, 2:3], nan=0.0, posinf=0.0, neginf=0.0)
    bw = np.ones(len(p)) if weights is None else weights.reshape(-1).astype(np.float64)
    bw = np.where(np.isfinite(p).all(-1), bw, 0.0)
    dxp, dxx = (xy * pixels).sum(-1), (xy * xy).sum(-1)
    focal = (bw * dxp).sum() / (bw * dxx).sum()
    for _ in range(iters):
        wgt = bw / np.maximum(np.linalg.norm(pixels - focal * xy, axis=-1), 1e-8)
        focal = (wgt * dxp).sum() / (wgt * dxx).sum()
    return focal


def test_estimate_focal_kernel_matches_numpy_reference() -> None:
    rng = np.random.default_rng(5)
    h, w = 30, 41
    pts = rng.normal(size=(h, w, 3)).astype(np.float32)
    pts[..., 2] = rng.uniform(0.5, 4, (h, w))
    pts[2, 3] = np.nan  # masked prediction: left out
    pts[4, 5, 2] = 0.0  # x/z = inf: counts as 0, officially
    weights = rng.uniform(0, 2, (h, w)).astype(np.float32)
    for pp, wgt in (((w / 2, h / 2), None), ((17.3, 11.9), weights)):
        want = estimate_focal_reference(pts, pp, weights=wgt)
        assert estimate_focal(pts, pp, weights=wgt) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="no finite point"):
        estimate_focal(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="weights must have shape"):
        estimate_focal(pts, weights=weights[:3])


def mst_weight_brute_force(n: int, edges: np.ndarray, scores: np.ndarray) -> float:
    best = -np.inf
    for subset in itertools.combinations(range(len(edges)), n - 1):
        parent = list(range(n))

        def find(a: int, parent: list[int] = parent) -> int:
            while parent[a] != a:
                a = parent[a]
            return a

        ok = True
        for e in subset:
            ri, rj = find(edges[e, 0]), find(edges[e, 1])
            if ri == rj:
                ok = False
                break
            parent[ri] = rj
        if ok:
            best = max(best, float(scores[list(subset)].sum()))
    return best


def test_max_spanning_tree_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    for trial in range(30):
        n = int(rng.integers(2, 6))
        m = int(rng.integers(n - 1, min(10, n * n) + 1))
        # a random chain guarantees connectivity; the rest are random (incl. loops, duplicates)
        perm = rng.permutation(n)
        chain = [(perm[k], perm[k + 1]) for k in range(n - 1)]
        extra = [tuple(rng.integers(0, n, size=2)) for _ in range(m - len(chain))]
        edges = np.array(chain + extra, dtype=np.int64).reshape(-1, 2)
        scores = rng.uniform(1, 10, size=len(edges))
        if trial % 3 == 0:
            scores = np.round(scores)  # ties
        tree = max_spanning_tree(n, edges, scores)
        assert len(tree) == n - 1
        assert len(set(tree)) == n - 1
        assert all(edges[e, 0] != edges[e, 1] for e in tree)
        # spanning: connects all nodes
        reach = {0}
        for _ in range(n):
            for e in tree:
                a, b = edges[e]
                if a in reach or b in reach:
                    reach |= {int(a), int(b)}
        assert reach == set(range(n))
        assert scores[tree].sum() == pytest.approx(mst_weight_brute_force(n, edges, scores),
                                                   rel=1e-12)  # fmt: skip


def test_max_spanning_tree_disconnected_names_components() -> None:
    edges = np.array([[0, 1], [1, 0], [2, 3], [4, 4]])
    with pytest.raises(ValueError, match=r"\[\[0, 1\], \[2, 3\], \[4\]\]"):
        max_spanning_tree(5, edges, np.ones(4))
    with pytest.raises(ValueError, match="nodes must lie"):
        max_spanning_tree(2, edges, np.ones(4))


def test_fast_pnp_recovers_pose() -> None:
    # at 64 px wide the 5 px RANSAC threshold cannot tell neighbouring focal candidates apart
    scene = make_scene(n_frames=3, n_objects=0, seed=5, size=(192, 256))
    h, w = scene.depths.shape[1:]
    pose = scene.poses[2]
    world = apply(pose, unproject_depth(scene.depths[2], scene.focal))
    mask = np.ones((h, w), dtype=bool)
    res = fast_pnp(world, scene.focal, mask)
    assert res is not None
    f_hat, c2w = res
    assert f_hat == pytest.approx(scene.focal)
    assert_poses_close(c2w, pose, rel=1e-5)
    # unknown focal: searched among 21 candidates on geomspace(S/2, 3S) (ratio ~1.094 apart)
    size = max(h, w)
    candidates = np.geomspace(size / 2, size * 3, 21)
    f_true = float(candidates[4])
    world2 = apply(pose, unproject_depth(scene.depths[2], f_true))
    res2 = fast_pnp(world2, None, mask)
    assert res2 is not None
    assert res2[0] == pytest.approx(f_true)
    assert_poses_close(res2[1], pose, rel=1e-5)
    # too few points
    assert fast_pnp(world, scene.focal, np.zeros((h, w), dtype=bool)) is None


# ------------------------------------------------------------------------------------------------
# init_mst
# ------------------------------------------------------------------------------------------------
def similarity_ate(est: np.ndarray, gt: np.ndarray) -> float:
    """RMS camera-centre error after a Umeyama similarity alignment of est onto gt."""
    s, rot, t = weighted_procrustes(est[:, :3, 3], gt[:, :3, 3])
    aligned = s * est[:, :3, 3] @ rot.T + t
    return float(np.sqrt(np.mean(np.sum((aligned - gt[:, :3, 3]) ** 2, axis=-1))))


def test_init_mst_exact_static_scene() -> None:
    scene = make_scene(n_frames=10, n_objects=0, seed=6)
    out = init_mst(scene.edges, scene.pts_i, scene.pts_j, scene.conf_i, scene.conf_j)
    n, h, w = scene.depths.shape
    e = len(scene.edges)
    assert set(out) == {"log_depth", "im_poses", "focal", "pw_poses"}
    assert out["log_depth"].shape == (n, h, w) and out["log_depth"].dtype == np.float32
    assert out["im_poses"].shape == (n, 7) and out["im_poses"].dtype == np.float32
    assert out["focal"].shape == (1,) and out["focal"].dtype == np.float32
    assert out["pw_poses"].shape == (e, 8) and out["pw_poses"].dtype == np.float32

    # focal
    focal = float(np.exp(out["focal"][0] / 20))
    assert abs(focal - scene.focal) < 0.01 * scene.focal

    # poses up to a similarity
    poses = params_to_poses(out["im_poses"])
    centres = scene.poses[:, :3, 3]
    scene_scale = float(np.linalg.norm(centres - centres.mean(0), axis=-1).max())
    assert similarity_ate(poses, scene.poses) < 1e-3 * scene_scale
    # relative rotations are exact (a similarity only rotates the whole trajectory)
    for k in range(n):
        rel_est = poses[0, :3, :3].T @ poses[k, :3, :3]
        rel_gt = scene.poses[0, :3, :3].T @ scene.poses[k, :3, :3]
        np.testing.assert_allclose(rel_est, rel_gt, atol=1e-4)

    # depths: one global scale
    depth = np.exp(out["log_depth"].astype(np.float64))
    ratio = depth / scene.depths
    scale = float(np.median(ratio))
    assert np.abs(ratio / scale - 1).max() < 1e-3

    # pairwise scales: geometric mean 0.5
    pw = out["pw_poses"].astype(np.float64)
    sigma = np.exp(pw[:, 7]) * np.exp(np.log(0.5) - pw[:, 7].mean())
    assert np.exp(np.mean(np.log(sigma))) == pytest.approx(0.5, rel=1e-6)

    # the alignment residual X_i - P_e pts_i (and for j) vanishes
    world = np.stack([apply(poses[k], unproject_depth(depth[k], focal)) for k in range(n)])
    mats = pw_to_matrices(out["pw_poses"])
    depth_scale = float(np.median(depth))
    for k, (i, j) in enumerate(scene.edges.tolist()):
        res_i = np.linalg.norm(
            world[i] - apply(mats[k], scene.pts_i[k].astype(np.float64)), axis=-1
        )
        res_j = np.linalg.norm(
            world[j] - apply(mats[k], scene.pts_j[k].astype(np.float64)), axis=-1
        )
        assert res_i.max() < 2e-3 * depth_scale, (k, res_i.max())
        assert res_j.max() < 2e-3 * depth_scale, (k, res_j.max())


def test_init_mst_tolerates_masked_predictions() -> None:
    scene = make_scene(n_frames=8, n_objects=0, seed=16)
    rng = np.random.default_rng(0)
    pts_i, pts_j = scene.pts_i.copy(), scene.pts_j.copy()
    conf_i = scene.conf_i.copy()
    pts_i[rng.random(pts_i.shape[:3]) < 0.05] = np.nan
    pts_j[rng.random(pts_j.shape[:3]) < 0.05] = np.inf
    conf_i[rng.random(conf_i.shape) < 0.05] = np.nan
    out = init_mst(scene.edges, pts_i, pts_j, conf_i, scene.conf_j)
    poses = params_to_poses(out["im_poses"])
    centres = scene.poses[:, :3, 3]
    scene_scale = float(np.linalg.norm(centres - centres.mean(0), axis=-1).max())
    assert similarity_ate(poses, scene.poses) < 1e-3 * scene_scale
    assert abs(np.exp(out["focal"][0] / 20) / scene.focal - 1) < 0.01
    assert all(np.isfinite(v).all() for v in out.values())
    # every frame is the view-1 side of some edge; only pixels masked there can lose their depth
    ok = out["log_depth"] != 0
    assert ok.mean() > 0.9


def test_init_mst_unshared_focal_and_noise() -> None:
    scene = make_scene(n_frames=8, n_objects=1, depth_noise=0.02, pose_noise=0.005, seed=7)
    out = init_mst(
        scene.edges, scene.pts_i, scene.pts_j, scene.conf_i, scene.conf_j, shared_focal=False
    )
    assert out["focal"].shape == (8,)
    focals = np.exp(out["focal"] / 20)
    assert np.all(np.abs(focals / scene.focal - 1) < 0.15)
    poses = params_to_poses(out["im_poses"])
    centres = scene.poses[:, :3, 3]
    scene_scale = float(np.linalg.norm(centres - centres.mean(0), axis=-1).max())
    assert similarity_ate(poses, scene.poses) < 0.15 * scene_scale
    assert all(np.isfinite(v).all() for v in out.values())


def test_init_mst_oneref_uses_pnp_for_incoming_only_frames() -> None:
    # oneref graphs are not symmetrised: only the reference frame has outgoing edges, so the other
    # frames have no focal estimate and get theirs (and their pose) from the 21-focal PnP search.
    scene = make_scene(n_frames=5, n_objects=0, graph="oneref-2", seed=8, size=(192, 256))
    out = init_mst(scene.edges, scene.pts_i, scene.pts_j, scene.conf_i, scene.conf_j)
    poses = params_to_poses(out["im_poses"])
    np.testing.assert_allclose(poses[2], np.eye(4), atol=1e-6)  # the world frame is camera 2
    centres = scene.poses[:, :3, 3]
    scene_scale = float(np.linalg.norm(centres - centres.mean(0), axis=-1).max())
    # the searched focals are off by up to half a candidate step (~4.5 %), which the PnP trades
    # for a forward/backward shift of the camera: the trajectory is only roughly right
    assert similarity_ate(poses, scene.poses) < 0.4 * scene_scale
    assert abs(np.exp(out["focal"][0] / 20) / scene.focal - 1) < 0.1
    assert np.isfinite(out["log_depth"]).all()


def test_init_mst_validation() -> None:
    scene = make_scene(n_frames=4, n_objects=0, graph="swin-1-noncyclic", seed=9)
    args = (scene.edges, scene.pts_i, scene.pts_j, scene.conf_i, scene.conf_j)
    with pytest.raises(ValueError, match="pts_j must have shape"):
        init_mst(args[0], args[1], args[2][:, :-1], args[3], args[4])
    with pytest.raises(ValueError, match="conf_i must have shape"):
        init_mst(args[0], args[1], args[2], args[3][..., None], args[4])
    with pytest.raises(ValueError, match="pts_i must have shape"):
        init_mst(args[0], args[1][:-1], *args[2:])
    with pytest.raises(ValueError, match="non-negative"):
        init_mst(-args[0], *args[1:])
    with pytest.raises(ValueError, match="at least 2 frames"):
        init_mst(np.zeros_like(args[0]), *args[1:])
    with pytest.raises(ValueError, match=r"edges must have shape \(E,2\)"):
        init_mst(args[0][:, :1], *args[1:])
    # drop the pairs (1,2) and (2,1): {0,1} and {2,3} are disconnected
    keep = [k for k, (i, j) in enumerate(scene.edges.tolist()) if {i, j} != {1, 2}]
    sub = tuple(a[keep] for a in args)
    with pytest.raises(ValueError, match=r"disconnected.*\[\[0, 1\], \[2, 3\]\]"):
        init_mst(*sub)


# ------------------------------------------------------------------------------------------------
# synthetic scene
# ------------------------------------------------------------------------------------------------
def test_synthetic_scene_shapes_and_determinism() -> None:
    a = make_scene(seed=11)
    b = make_scene(seed=11)
    n, h, w = 12, 48, 64
    e = len(a.edges)
    assert e == 2 * (5 * n - 25)  # swinstride-5-noncyclic, symmetrised
    assert a.images.shape == (n, h, w, 3) and a.images.dtype == np.uint8
    assert a.depths.shape == (n, h, w) and a.depths.dtype == np.float32
    assert a.poses.shape == (n, 4, 4)
    assert a.dynamic_masks.shape == (n, h, w) and a.dynamic_masks.dtype == bool
    assert a.dynamic_masks.any() and not a.dynamic_masks.all()
    assert a.pts_i.shape == a.pts_j.shape == (e, h, w, 3)
    assert a.conf_i.shape == a.conf_j.shape == (e, h, w)
    assert a.conf_i.min() >= 1 and a.conf_j.min() >= 1
    assert a.flow_ij.shape == a.flow_ji.shape == (e, 2, h, w)
    assert a.pairwise_scales.shape == (e,)
    assert np.all((a.pairwise_scales >= 0.5) & (a.pairwise_scales <= 2.0))
    for name in ("images", "depths", "pts_i", "pts_j", "conf_i", "flow_ij"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(make_scene(seed=12).depths, a.depths)
    assert np.all(a.depths > 0)
    # object boundaries get low confidence
    lab = a.labels
    edge = np.zeros(lab.shape, dtype=bool)
    edge[:, :, 1:] |= lab[:, :, 1:] != lab[:, :, :-1]
    edge[:, 1:, :] |= lab[:, 1:, :] != lab[:, :-1, :]
    ei = a.edges[:, 0]
    assert a.conf_i[edge[ei]].mean() < 0.75 * a.conf_i[~edge[ei]].mean()


def test_synthetic_pointmaps_match_depth_and_poses() -> None:
    scene = make_scene(seed=13, n_objects=2)
    for k, (i, j) in enumerate(scene.edges.tolist()):
        s = scene.pairwise_scales[k]
        # float32 points: rounding follows the depth, also for x, y near the optical axis
        want_i = s * unproject_depth(scene.depths[i], scene.focal)
        assert_close(scene.pts_i[k], want_i, rel=1e-6, rtol=1e-5)
        rel = np.linalg.inv(scene.poses[i]) @ scene.poses[j]
        expect_j = s * apply(rel, unproject_depth(scene.depths[j], scene.focal))
        assert_close(scene.pts_j[k], expect_j, rel=2e-6, rtol=1e-5)


def test_synthetic_flow_matches_reprojection() -> None:
    scene = make_scene(seed=14, n_objects=1, object_motion=0.1)
    h, w = scene.depths.shape[1:]
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1).astype(np.float64)
    checked_dynamic = False
    for k, (i, j) in enumerate(scene.edges.tolist()):
        world = apply(scene.poses[i], unproject_depth(scene.depths[i], scene.focal))
        cam_j = apply(np.linalg.inv(scene.poses[j]), world)
        flow = project_points(cam_j, scene.focal, h, w) - grid
        static = ~scene.dynamic_masks[i]
        # pixels: float32 rounding follows the image coordinates the flow is a difference of
        px_scale = max(h, w) + scale_of(flow)
        got = np.moveaxis(scene.flow_ij[k], 0, -1)
        assert_close(got[static], flow[static], rel=1e-6, scale=px_scale)
        # reverse direction
        world_j = apply(scene.poses[j], unproject_depth(scene.depths[j], scene.focal))
        cam_i = apply(np.linalg.inv(scene.poses[i]), world_j)
        flow_r = project_points(cam_i, scene.focal, h, w) - grid
        static_j = ~scene.dynamic_masks[j]
        got = np.moveaxis(scene.flow_ji[k], 0, -1)
        assert_close(got[static_j], flow_r[static_j], rel=1e-6, scale=max(h, w) + scale_of(flow_r))
        # on moving objects the true flow differs from the static reprojection
        dyn = scene.dynamic_masks[i]
        if dyn.sum() > 20 and abs(i - j) >= 3:
            diff = np.linalg.norm(np.moveaxis(scene.flow_ij[k], 0, -1)[dyn] - flow[dyn], axis=-1)
            assert diff.mean() > 0.1
            checked_dynamic = True
    assert checked_dynamic


def test_synthetic_images_follow_flow() -> None:
    """Warping frame j by the true flow reproduces frame i better than no warp (texture moves
    with the surfaces, including the object's)."""
    import cv2

    scene = make_scene(seed=15, n_objects=1, object_motion=0.1)
    h, w = scene.depths.shape[1:]
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1).astype(np.float32)
    e = next(k for k, (i, j) in enumerate(scene.edges.tolist()) if j - i == 1)
    i, j = scene.edges[e]
    fl = np.moveaxis(scene.flow_ij[e], 0, -1)
    maps = grid + fl
    warped = cv2.remap(scene.images[j], maps[..., 0], maps[..., 1], cv2.INTER_LINEAR)
    inside = (
        (maps[..., 0] >= 0)
        & (maps[..., 0] <= w - 1)
        & (maps[..., 1] >= 0)
        & (maps[..., 1] <= h - 1)
    )
    err_warp = np.abs(warped.astype(float) - scene.images[i])[inside].mean()
    err_none = np.abs(scene.images[j].astype(float) - scene.images[i])[inside].mean()
    assert err_warp < 0.5 * err_none
