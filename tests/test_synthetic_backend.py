"""SimulatedBackend and make_scene(graph=None): ground-truth-derived predictions on demand, checked
against pinhole geometry recomputed here from the scene's depths and poses."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from tolerance import assert_close

from monst3r_rt.frames import load_frames
from monst3r_rt.inference import infer_pairs
from monst3r_rt.pairs import make_pairs
from monst3r_rt.synthetic import SimulatedBackend, make_scene, scene_video

N, H, W = 6, 32, 48


@pytest.fixture(scope="module")
def scene():
    return make_scene(n_frames=N, size=(H, W), graph=None, n_objects=2, object_motion=0.1, seed=4)


def normalized(images: np.ndarray) -> np.ndarray:
    """(N,H,W,3) uint8 → (N,3,H,W) float32 in [-1, 1]."""
    return (images.astype(np.float32) / 127.5 - 1).transpose(0, 3, 1, 2)


def camera_points(scene, k: int) -> np.ndarray:
    """(H,W,3) frame k's ground-truth points in its camera (pinhole, pp = (W/2, H/2))."""
    z = scene.depths[k].astype(np.float64)
    h, w = z.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([(u - w / 2) * z / scene.focal, (v - h / 2) * z / scene.focal, z], -1)


def to_camera_j(scene, i: int, j: int, pts_in_i: np.ndarray) -> np.ndarray:
    """Points in camera i's frame → camera j's frame with the ground-truth poses."""
    i_to_j = np.linalg.solve(scene.poses[j], scene.poses[i])  # world<-i, then j<-world
    return pts_in_i @ i_to_j[:3, :3].T + i_to_j[:3, 3]


def test_zero_noise_matches_ground_truth_geometry(scene):
    backend = SimulatedBackend(scene, scale_range=(0.5, 2.0), seed=3)
    frames = load_frames(list(scene.images), size=max(H, W))
    assert np.array_equal(frames.images, scene.images)  # multiples of 16: no resize, no crop
    pairs = make_pairs(N, "complete")
    pred = infer_pairs(backend, frames, pairs, batch_size=4, progress=False)
    scales = []
    for e, (i, j) in enumerate(pred.edges.tolist()):
        gt_i, gt_j = camera_points(scene, i), camera_points(scene, j)
        s = float(np.median(pred.pts_i[e, ..., 2] / gt_i[..., 2]))
        scales.append(s)
        assert s == pytest.approx(backend.pair_scale(i, j), rel=1e-5)
        assert_close(pred.pts_i[e], s * gt_i, rel=1e-5)
        assert_close(to_camera_j(scene, i, j, pred.pts_j[e] / s), gt_j, rel=1e-5)
        lo, hi = backend.conf_range
        for conf in (pred.conf_i[e], pred.conf_j[e]):
            assert conf.min() >= lo - 1e-5 and conf.max() <= hi + 1e-5
        edge = scene.boundaries[i]
        assert edge.any() and pred.conf_i[e][edge].max() <= lo + 0.2 * (hi - lo) + 1e-5
    scales = np.array(scales)
    assert scales.min() >= 0.5 - 1e-9 and scales.max() <= 2.0 + 1e-9
    assert scales.min() < 0.8 and scales.max() > 1.25  # spread over the log-uniform range

    # make_scene's own predictions for the same scene seed: the same geometry up to the scale
    ref = make_scene(n_frames=N, size=(H, W), graph="complete", n_objects=2,
                     object_motion=0.1, seed=4)  # fmt: skip
    assert np.array_equal(ref.edges, pred.edges)
    ratio = (ref.pairwise_scales / scales)[:, None, None, None]
    assert_close(ref.pts_i, ratio * pred.pts_i, rel=1e-5)
    assert_close(ref.pts_j, ratio * pred.pts_j, rel=1e-5)


def test_same_frame_pair(scene):
    backend = SimulatedBackend(scene, scale_range=(0.5, 2.0))
    pts1, conf1, pts2, conf2 = backend.decode(np.array([2]), np.array([2]), (H, W))
    assert_close(pts2, pts1, rel=1e-6)
    s = backend.pair_scale(2, 2)
    assert_close(pts1[0], s * camera_points(scene, 2), rel=1e-5)
    noisy = SimulatedBackend(scene, depth_noise=0.05)
    p1, _, p2, _ = noisy.decode(np.array([2]), np.array([2]), (H, W))
    assert not np.allclose(p1, p2)  # independent noise draws for the two views


def test_deterministic_and_order_independent(scene):
    kw = dict(depth_noise=0.05, pose_noise=0.02, scale_range=(0.5, 2.0), seed=11)
    a, b = SimulatedBackend(scene, **kw), SimulatedBackend(scene, **kw)
    i = np.array([0, 1, 5, 3, 3, 2])
    j = np.array([1, 0, 2, 3, 4, 5])
    out_a = a.decode(i, j, (H, W))
    parts = [b.decode(i[k : k + 1], j[k : k + 1], (H, W)) for k in reversed(range(len(i)))]
    for field in range(4):
        batched = np.stack([p[field][0] for p in reversed(parts)])
        assert np.array_equal(out_a[field], batched)
    again = a.decode(i, j, (H, W))  # the same backend, called again
    assert all(np.array_equal(x, y) for x, y in zip(out_a, again, strict=True))
    other = SimulatedBackend(scene, **{**kw, "seed": 12}).decode(i, j, (H, W))
    assert not np.array_equal(out_a[0], other[0])
    assert not np.array_equal(out_a[0][0], out_a[2][1])  # (0,1) and (1,0) are distinct draws


def test_counters(scene):
    backend = SimulatedBackend(scene)
    pairs = [(0, 1), (1, 0), (1, 3), (3, 1)]
    infer_pairs(backend, normalized(scene.images), pairs, batch_size=3, progress=False)
    assert backend.encoded == 3 and backend.decoded == 4  # frames 0, 1, 3 once each
    tokens = backend.encode(normalized(scene.images[[5, 4]]))
    assert tokens.dtype == np.int64 and tokens.tolist() == [5, 4]
    backend.decode(tokens, tokens[::-1], (H, W))
    assert backend.encoded == 5 and backend.decoded == 6


def test_unknown_image_is_rejected(scene):
    backend = SimulatedBackend(scene)
    images = normalized(scene.images[:2])
    changed = scene.images[1].copy()
    changed[3, 4, 1] ^= 1  # one level on one pixel
    with pytest.raises(ValueError, match=r"images\[1\]: image does not belong to the simulated"):
        backend.encode(np.stack([images[0], normalized(changed[None])[0]]))
    other = make_scene(n_frames=2, size=(H, W), graph=None, seed=99)
    with pytest.raises(ValueError, match="does not belong to the simulated scene"):
        backend.encode(normalized(other.images))
    with pytest.raises(ValueError, match="does not belong"):
        backend.encode(images + 0.3 / 127.5)  # between uint8 levels
    with pytest.raises(ValueError, match=r"images must have shape \(B,3,32,48\)"):
        backend.encode(images[:, :, :16])
    with pytest.raises(ValueError, match="built for 32x48"):
        backend.decode(np.array([0]), np.array([1]), (16, 48))
    assert backend.encoded == 0


def test_graph_none_scene_is_cheap_and_consistent():
    kw = dict(n_frames=5, size=(24, 32), n_objects=2, seed=7)
    lazy = make_scene(graph=None, **kw)
    full = make_scene(graph="swin-2", depth_noise=0.1, pose_noise=0.01, **kw)
    for name in ("images", "depths", "poses", "labels", "dynamic_masks", "boundaries",
                 "object_centers", "object_radii"):  # fmt: skip
        assert np.array_equal(getattr(lazy, name), getattr(full, name)), name
    assert lazy.focal == full.focal
    assert lazy.edges.shape == (0, 2) and lazy.edges.dtype == np.int64
    assert lazy.pts_i.shape == lazy.pts_j.shape == (0, 24, 32, 3)
    assert lazy.conf_i.shape == lazy.conf_j.shape == (0, 24, 32)
    assert lazy.flow_ij.shape == lazy.flow_ji.shape == (0, 2, 24, 32)
    assert lazy.pairwise_scales.shape == (0,)
    assert lazy.depths.dtype == np.float32
    per_pixel = 3 + 4 + 4 + 1 + 1  # image, depth, label, dynamic mask, boundary
    total = sum(np.asarray(v).nbytes for v in vars(lazy).values() if isinstance(v, np.ndarray))
    assert total <= 5 * 24 * 32 * per_pixel + 4096
    # the backend gives the same predictions on either scene (same depths, poses, boundaries)
    tok = np.array([0, 3, 4]), np.array([2, 3, 1])
    out_lazy = SimulatedBackend(lazy, depth_noise=0.1).decode(*tok, (24, 32))
    out_full = SimulatedBackend(full, depth_noise=0.1).decode(*tok, (24, 32))
    assert all(np.array_equal(a, b) for a, b in zip(out_lazy, out_full, strict=True))


def test_depth_noise_statistics(scene):
    sigma = 0.08
    backend = SimulatedBackend(scene, depth_noise=sigma)
    i, j = np.array(make_pairs(N, "complete")).T
    pts1, _, pts2, _ = backend.decode(i, j, (H, W))
    errs = []
    for e in range(len(i)):
        err_i = np.log(pts1[e, ..., 2] / scene.depths[i[e]])
        back = to_camera_j(scene, i[e], j[e], pts2[e].astype(np.float64))
        err_j = np.log(back[..., 2] / scene.depths[j[e]])
        for err in (err_i, err_j):
            assert err.std() == pytest.approx(sigma, rel=0.01)  # unit-std field times sigma
            # smooth: neighbouring pixels are strongly correlated
            a, b = err[:, 1:].ravel(), err[:, :-1].ravel()
            assert np.corrcoef(a, b)[0, 1] > 0.9
            errs.append(err)
        # the noise only scales depth: pts1 stays on the pixel rays
        assert_close(pts1[e, ..., :2] / pts1[e, ..., 2:], camera_points(scene, i[e])[..., :2]
                     / scene.depths[i[e], ..., None], rel=1e-5)  # fmt: skip
    errs = np.array(errs)
    assert abs(errs.mean()) < sigma  # roughly centred
    assert not np.allclose(errs[0], errs[1])  # views draw independent fields


def test_pose_noise_statistics(scene):
    sigma = 0.03
    backend = SimulatedBackend(scene, pose_noise=sigma)
    i, j = np.array(make_pairs(N, "complete")).T
    pts1, _, pts2, _ = backend.decode(i, j, (H, W))
    rotvecs, trans = [], []
    for e in range(len(i)):
        assert_close(pts1[e], camera_points(scene, i[e]), rel=1e-5)  # view 1 is exact
        # exact frame-j points in camera i, then the affine map to the prediction (least squares)
        exact = to_camera_j(scene, j[e], i[e], camera_points(scene, j[e])).reshape(-1, 3)
        design = np.concatenate([exact, np.ones((len(exact), 1))], 1)
        sol = np.linalg.lstsq(design, pts2[e].reshape(-1, 3).astype(np.float64), rcond=None)[0]
        rot, t = sol[:3].T, sol[3]
        assert_close(rot @ rot.T, np.eye(3), rel=1e-4)  # a rigid perturbation
        rotvecs.append(cv2.Rodrigues(rot)[0].ravel())
        trans.append(t)
    rotvecs, trans = np.array(rotvecs), np.array(trans)
    for comp in (rotvecs, trans):  # N(0, sigma^2) per component, 90 samples each
        assert 0.7 * sigma < comp.std() < 1.4 * sigma
        assert abs(comp.mean()) < 0.5 * sigma


def test_scene_video_round_trip(scene, tmp_path):
    path = scene_video(scene, tmp_path / "clip.avi", fps=10)
    frames = load_frames(path, size=max(H, W))
    assert np.array_equal(frames.images, scene.images)  # FFV1 is lossless
    backend = SimulatedBackend(scene)
    assert backend.encode(frames.normalized()).tolist() == list(range(N))
    lossy = load_frames(scene_video(scene, tmp_path / "clip.mp4"), size=max(H, W))
    assert lossy.images.shape == scene.images.shape
    with pytest.raises(ValueError, match="must end in one of"):
        scene_video(scene, tmp_path / "clip.gif")


def test_bad_arguments(scene):
    with pytest.raises(ValueError, match="conf_range"):
        SimulatedBackend(scene, conf_range=(0.5, 2.0))
    with pytest.raises(ValueError, match="scale_range"):
        SimulatedBackend(scene, scale_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="depth_noise"):
        SimulatedBackend(scene, depth_noise=-0.1)
    backend = SimulatedBackend(scene)
    assert backend.name == "simulated" and backend.image_size == (H, W)
    with pytest.raises(ValueError, match="out of range"):
        backend.decode(np.array([0]), np.array([N]), (H, W))
