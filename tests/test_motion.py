"""Motion: ego-flow kernel vs closed forms and a NumPy reference, DIS flow on a known shift,
forward-backward check, dynamic masks on a rendered scene, and the flow term's effect on poses."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_align import _run, ate
from tolerance import assert_close, scale_of

import monst3r_rt
from conftest import cuda_arrays_available
from monst3r_rt.align import AlignConfig
from monst3r_rt.egoflow import ego_flow, ego_flow_error
from monst3r_rt.flow import compute_flow, forward_backward_error
from monst3r_rt.geometry import relative_pose
from monst3r_rt.inference import PairwisePredictions
from monst3r_rt.masks import dynamic_masks, mirror_pairs, two_view
from monst3r_rt.synthetic import make_scene


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(axis, np.float64) / np.linalg.norm(axis) * angle)[0]


def ego_flow_reference(depth, fs, ft, rot, trans):
    """Rigid flow of the back-projected pixels, written directly in float64 (no 1e-6 guards)."""
    m, h, w = depth.shape
    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    out = np.empty((m, 2, h, w))
    for k in range(m):
        x = np.stack([(xs - w / 2) / fs[k] * depth[k], (ys - h / 2) / fs[k] * depth[k], depth[k]])
        y = np.einsum("ij,jhw->ihw", rot[k], x) + trans[k][:, None, None]
        out[k, 0] = ft[k] * y[0] / y[2] + w / 2 - xs
        out[k, 1] = ft[k] * y[1] / y[2] + h / 2 - ys
    return out


# ---- ego-flow kernel -----------------------------------------------------------------------------
def test_ego_flow_pure_translation_closed_form():
    depth = np.full((1, 6, 8), 4.0, np.float32)
    flow = ego_flow(depth, 100.0, 100.0, np.eye(3), [0.2, -0.1, 0.0])
    np.testing.assert_allclose(flow[0, 0], 100 * 0.2 / 4, rtol=1e-5)  # f·t/D everywhere
    np.testing.assert_allclose(flow[0, 1], 100 * -0.1 / 4, rtol=1e-5)


def test_ego_flow_pure_rotation_is_the_homography_and_ignores_depth(rng):
    rot = _rot([0.3, 1.0, -0.2], 0.05)
    k_mat = np.array([[90.0, 0, 8], [0, 90.0, 6], [0, 0, 1]])
    hom = k_mat @ rot @ np.linalg.inv(k_mat)
    depth = rng.uniform(1, 10, (2, 12, 16)).astype(np.float32)
    flow = ego_flow(depth, 90.0, 90.0, rot, np.zeros(3))
    ys, xs = np.mgrid[:12, :16]
    q = np.einsum("ij,jhw->ihw", hom, np.stack([xs, ys, np.ones_like(xs)]).astype(float))
    want = np.stack([q[0] / q[2] - xs, q[1] / q[2] - ys])
    # pixels: float32 rounding follows the coordinates the flow is a difference of
    px = 16 + scale_of(want)
    assert_close(flow[0], want, rel=1e-5, scale=px)
    assert_close(flow[1], want, rel=1e-5, scale=px)


def test_ego_flow_matches_reference_and_error_matches_flow(rng):
    m, h, w = 3, 10, 14
    depth = rng.uniform(1, 5, (m, h, w)).astype(np.float32)
    fs, ft = rng.uniform(40, 80, m), rng.uniform(40, 80, m)
    rot = np.stack([_rot(rng.normal(size=3), 0.1) for _ in range(m)])
    trans = rng.normal(scale=0.3, size=(m, 3))
    trans[:, 2] = np.abs(trans[:, 2])
    flow = ego_flow(depth, fs, ft, rot, trans)
    want = ego_flow_reference(depth, fs, ft, rot, trans)
    assert_close(flow, want, rel=1e-5, scale=w + scale_of(want))
    measured = rng.normal(size=(m, 2, h, w)).astype(np.float32)
    err = ego_flow_error(depth, fs, ft, rot, trans, measured)
    assert_close(err, np.linalg.norm(flow - measured, axis=1), rel=1e-6, rtol=1e-5)


def test_ego_flow_round_trip_through_relative_pose(rng):
    """Flow a→b from a's depth, then b→a from the depths it lands on, returns to the start."""
    poses = np.stack([np.eye(4), np.eye(4)])
    poses[1, :3, :3], poses[1, :3, 3] = _rot([0, 1, 0.2], 0.08), [0.3, 0.05, 0.1]
    h, w, f = 16, 20, 30.0
    depth = np.full((1, h, w), 3.0, np.float32)
    r, t = relative_pose(poses[0], poses[1])
    fwd = ego_flow(depth, f, f, r, t)[0]
    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    pts = np.stack([(xs - w / 2) / f * 3, (ys - h / 2) / f * 3, np.full_like(xs, 3.0)], -1)
    depth_b = (pts @ r.T + t)[..., 2]
    r2, t2 = relative_pose(poses[1], poses[0])
    assert np.allclose(r2, r.T) and np.allclose(t2, -r.T @ t)
    # evaluate b→a at the (sub-pixel) landing points with the reference
    land = np.stack([xs + fwd[0], ys + fwd[1]], -1)
    pb = np.stack([(land[..., 0] - w / 2) / f * depth_b, (land[..., 1] - h / 2) / f * depth_b,
                   depth_b], -1)  # fmt: skip
    back = pb @ r2.T + t2
    assert_close(back[..., :2] / back[..., 2:] * f + (w / 2, h / 2), np.stack([xs, ys], -1),
                 rel=1e-5)  # fmt: skip


def test_ego_flow_bad_shapes_name_the_input():
    with pytest.raises(ValueError, match="depth must have shape"):
        ego_flow(np.ones((4, 4), np.float32), 1.0, 1.0, np.eye(3), np.zeros(3))
    with pytest.raises(ValueError, match="rot must broadcast"):
        ego_flow(np.ones((2, 4, 4), np.float32), 1.0, 1.0, np.eye(2), np.zeros(3))
    with pytest.raises(ValueError, match="measured must have shape"):
        ego_flow_error(np.ones((2, 4, 4), np.float32), 1.0, 1.0, np.eye(3), np.zeros(3),
                       np.zeros((2, 2, 4, 5), np.float32))  # fmt: skip


def test_ego_flow_cuda_twin_matches_cpu(rng):
    ok, reason = cuda_arrays_available()
    if not ok:
        pytest.skip(reason)
    import torch

    depth = rng.uniform(1, 5, (3, 17, 23)).astype(np.float32)
    rot = np.stack([_rot(rng.normal(size=3), 0.1) for _ in range(3)])
    trans = rng.normal(scale=0.3, size=(3, 3))
    measured = rng.normal(size=(3, 2, 17, 23)).astype(np.float32)
    cpu = ego_flow(depth, 50.0, 60.0, rot, trans)
    gpu = ego_flow(torch.from_numpy(depth).cuda(), 50.0, 60.0, rot, trans)
    assert_close(gpu.cpu().numpy(), cpu, rel=1e-5, rtol=1e-5, scale=23 + scale_of(cpu))
    err = ego_flow_error(torch.from_numpy(depth).cuda(), 50.0, 60.0, rot, trans,
                         torch.from_numpy(measured).cuda())  # fmt: skip
    want = np.linalg.norm(cpu - measured, axis=1)
    assert_close(err.cpu().numpy(), want, rel=1e-5, rtol=1e-4, scale=23 + scale_of(want))


# ---- flow ---------------------------------------------------------------------------------------
def _texture(rng, h, w):
    noise = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 255, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("preset", ["fast", "medium"])
def test_dis_recovers_a_known_shift(rng, preset):
    h, w, shift = 96, 128, (3.3, -2.1)
    big = _texture(rng, h + 20, w + 20)
    a = np.ascontiguousarray(big[10 : 10 + h, 10 : 10 + w])
    m = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])  # b(x + shift) = a(x)
    b = cv2.warpAffine(big, m, (w + 20, h + 20), flags=cv2.INTER_CUBIC)[10 : 10 + h, 10 : 10 + w]
    fij, fji = compute_flow(np.stack([a, b]), [(0, 1)], preset=preset)
    inner = (slice(8, -8), slice(8, -8))
    epe = np.hypot(fij[0, 0][inner] - shift[0], fij[0, 1][inner] - shift[1])
    assert epe.mean() < 0.5
    epe_back = np.hypot(fji[0, 0][inner] + shift[0], fji[0, 1][inner] + shift[1])
    assert epe_back.mean() < 0.5


def test_compute_flow_runs_each_unordered_pair_once_per_direction():
    calls = []

    def fake(src, dst):  # flow = (index of dst − index of src) in x, a fingerprint
        calls.extend(zip(src[:, 0, 0, 0].tolist(), dst[:, 0, 0, 0].tolist(), strict=True))
        d = dst[:, 0, 0, 0].astype(np.float32) - src[:, 0, 0, 0]
        return np.broadcast_to(d[:, None, None, None], (len(src), 2, 4, 5)).copy()

    images = np.stack([np.full((4, 5, 3), k, np.uint8) for k in range(4)])
    edges = [(0, 1), (1, 0), (2, 1), (1, 2), (3, 3)]
    fij, fji = compute_flow(images, edges, method=fake)
    assert sorted(calls) == [(0, 1), (1, 0), (1, 2), (2, 1)]
    for e, (i, j) in enumerate(edges):
        assert np.all(fij[e] == j - i) and np.all(fji[e] == i - j)


def test_compute_flow_bad_input():
    images = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="outside 0..2"):
        compute_flow(images, [(0, 3)])
    with pytest.raises(ValueError, match=r"shape \(N,H,W,3\)"):
        compute_flow(images[..., 0], [(0, 1)])
    with pytest.raises(ValueError, match="unknown DIS preset"):
        compute_flow(images, [(0, 1)], preset="slow")
    with pytest.raises(ValueError, match="needs weights=PATH"):
        compute_flow(images, [(0, 1)], method="raft")
    with pytest.raises(ValueError, match="returned shape"):
        compute_flow(images, [(0, 1)], method=lambda a, b: np.zeros((1, 2, 4, 4)))


def test_raft_from_a_torchvision_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    try:
        from torchvision.models.optical_flow import raft_small
    except Exception as exc:  # not installed, or built for another torch
        pytest.skip(f"torchvision RAFT unavailable: {exc}")
    torch.manual_seed(0)
    path = tmp_path / "raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), path)
    images = np.random.default_rng(0).integers(0, 255, (2, 36, 44, 3), dtype=np.uint8)
    fij, fji = compute_flow(images, [(0, 1)], method="raft", weights=path)
    assert fij.shape == (1, 2, 36, 44) and np.isfinite(fij).all() and np.isfinite(fji).all()
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision RAFT"):
        compute_flow(images, [(0, 1)], method="raft", weights=tmp_path / "bad.pth")


def test_forward_backward_error_closed_form():
    fw = np.zeros((1, 2, 6, 8), np.float32)
    fw[:, 0] = 2.0
    bw = -fw
    err = forward_backward_error(fw, bw)
    assert np.all(err[0, :, :6] == 0) and np.all(np.isinf(err[0, :, 6:]))  # x + 2 > 7 leaves
    err = forward_backward_error(fw, np.zeros_like(fw))  # the way back does not return
    np.testing.assert_allclose(err[0, :, :6], 2.0)


# ---- masks --------------------------------------------------------------------------------------
def _preds(sc) -> PairwisePredictions:
    return PairwisePredictions(sc.edges, sc.pts_i, sc.pts_j, sc.conf_i, sc.conf_j)


def _iou_fpr(mask, gt):
    return (mask & gt).sum() / (mask | gt).sum(), (mask & ~gt).sum() / (~gt).sum()


def test_mirror_pairs_follow_the_official_layout_and_reject_one_way_graphs():
    edges = np.array(monst3r_rt.make_pairs(6, "swinstride-3-noncyclic"))
    pairs = mirror_pairs(edges)
    half = len(edges) // 2
    np.testing.assert_array_equal(pairs, np.stack([np.arange(half), np.arange(half) + half], 1))
    with pytest.raises(ValueError, match=r"edge 1 = \(1, 2\) has no mirror"):
        mirror_pairs([(0, 1), (1, 2), (1, 0)])


def test_two_view_official_recovers_the_relative_pose():
    sc = make_scene(n_frames=4, size=(48, 64), graph="complete", n_objects=0, seed=3)
    edges = sc.edges.tolist()
    k, m = edges.index([1, 3]), edges.index([3, 1])
    for method in ("official", "robust"):
        tv = two_view(_preds(sc), k, m, method)
        gt = np.linalg.inv(sc.poses[1]) @ sc.poses[3]  # camera 3 → camera 1
        got = np.linalg.inv(tv.poses[0]) @ tv.poses[1]
        np.testing.assert_allclose(got[:3, :3], gt[:3, :3], atol=2e-3)
        s = np.linalg.norm(got[:3, 3]) / np.linalg.norm(gt[:3, 3])
        assert_close(got[:3, 3] / s, gt[:3, 3], rel=2e-3)
        np.testing.assert_allclose(tv.focals, sc.focal, rtol=2e-3)
        np.testing.assert_allclose(tv.depths[0] / s, sc.depths[1], rtol=2e-3)


def test_exact_predictions_and_flow_give_the_true_masks():
    sc = make_scene(n_frames=8, size=(48, 64), n_objects=1, object_motion=0.15, seed=1)
    masks = dynamic_masks(_preds(sc), sc.flow_ij, sc.flow_ji, method="official")
    assert _iou_fpr(masks, sc.dynamic_masks) == (1.0, 0.0)
    # robust ignores motion below ~2 px by design (ROBUST_MIN_PX noise floor): a slice of the
    # slowest object pixels may stay static, nothing static turns dynamic
    masks = dynamic_masks(_preds(sc), sc.flow_ij, sc.flow_ji, method="robust")
    iou, fpr = _iou_fpr(masks, sc.dynamic_masks)
    assert iou > 0.9 and fpr == 0.0, (iou, fpr)


@pytest.fixture(scope="module")
def noisy_scene():
    """A rendered scene with noisy predictions, and DIS flow computed on its images."""
    sc = make_scene(n_frames=24, size=(120, 160), n_objects=2, object_motion=0.1,
                    depth_noise=0.05, pose_noise=0.025, seed=2)  # fmt: skip
    return sc, compute_flow(sc.images, sc.edges)


def test_robust_masks_recover_moving_objects_from_measured_flow(noisy_scene):
    sc, (fij, fji) = noisy_scene
    iou, fpr = _iou_fpr(dynamic_masks(_preds(sc), fij, fji, method="robust"), sc.dynamic_masks)
    assert iou >= 0.7 and fpr <= 0.05, (iou, fpr)
    official = dynamic_masks(_preds(sc), fij, fji, method="official")
    iou_o, fpr_o = _iou_fpr(official, sc.dynamic_masks)
    assert iou > iou_o and fpr < fpr_o  # the improvement is real on noisy predictions


def test_dynamic_masks_bad_input():
    sc = make_scene(n_frames=4, size=(16, 24), seed=0)
    with pytest.raises(ValueError, match=r"flow_ij must have shape"):
        dynamic_masks(_preds(sc), sc.flow_ij[:, :, :8], sc.flow_ji)
    with pytest.raises(ValueError, match="unknown mask method"):
        dynamic_masks(_preds(sc), sc.flow_ij, sc.flow_ji, method="sam2")


# ---- the flow term in the alignment -------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg", [AlignConfig(niter=300), AlignConfig(solver="lm")], ids=["adam", "lm"]
)
def test_flow_term_improves_poses_when_predictions_are_wrong_on_the_moving_object(cfg):
    """Half of the pairs put the moving object somewhere else; the flow term (static pixels
    only) pulls the poses back, with either solver."""
    sc = make_scene(n_frames=12, size=(48, 64), n_objects=1, object_motion=0.1,
                    depth_noise=0.02, pose_noise=0.01, seed=2)  # fmt: skip
    flows = (sc.flow_ij, sc.flow_ji)
    clean = ate(_run(sc, config=cfg).poses, sc.poses)
    clean_flow = ate(_run(sc, config=cfg, flows=flows, dynamic_masks=sc.dynamic_masks).poses,
                     sc.poses)  # fmt: skip
    assert clean_flow <= clean * 1.02
    # half of the pairs put the moving object somewhere else in pts_j
    bad = np.random.default_rng(2).random(len(sc.edges)) < 0.5
    for e in np.nonzero(bad)[0]:
        obj = sc.dynamic_masks[sc.edges[e, 1]]
        sc.pts_j[e][obj] += np.array([0.5, 0.3, -0.8], np.float32) * sc.pairwise_scales[e]
    wrong = ate(_run(sc, config=cfg).poses, sc.poses)
    wrong_flow = ate(_run(sc, config=cfg, flows=flows, dynamic_masks=sc.dynamic_masks).poses,
                     sc.poses)  # fmt: skip
    assert wrong_flow < 0.8 * wrong, (wrong, wrong_flow)
