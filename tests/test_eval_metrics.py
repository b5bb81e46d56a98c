"""monst3r_rt.eval: pose metrics against evo (the official evaluation's library), depth metrics
against closed forms and a torch replica of the official L1 alignment, DAVIS J&F against a
brute-force twin, and Sintel's binary formats byte by byte."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from monst3r_rt.eval import (
    DEPTH_DATASET_SETTINGS,
    SINTEL_TAG,
    aggregate_depth_metrics,
    depth_metrics,
    mask_metrics,
    pose_metrics,
    read_cam,
    read_dpt,
    write_cam,
    write_dpt,
)
from monst3r_rt.geometry import rotvec_to_rotmat


# ------------------------------------------------------------------------------------------------
# poses
# ------------------------------------------------------------------------------------------------
def _random_traj(rng: np.random.Generator, n: int = 30) -> np.ndarray:
    poses = np.tile(np.eye(4), (n, 1, 1))
    rotvecs = np.cumsum(rng.normal(0, 0.1, (n, 3)), axis=0)
    poses[:, :3, :3] = [rotvec_to_rotmat(r) for r in rotvecs]
    poses[:, :3, 3] = np.cumsum(rng.normal(0, 0.3, (n, 3)), axis=0) + rng.normal(0, 5, 3)
    return poses


def _sim3_noisy_prediction(rng: np.random.Generator, gt: np.ndarray, noise: float) -> np.ndarray:
    """gt seen in another frame and scale (a random Sim(3)), plus rotation / position noise."""
    s = rng.uniform(0.2, 5.0)
    trf = np.eye(4)
    trf[:3, :3] = rotvec_to_rotmat(rng.normal(0, 1.5, 3))
    trf[:3, 3] = rng.normal(0, 3, 3)
    pred = gt.copy()
    pred[:, :3, 3] *= s
    pred = trf[None] @ pred
    if noise:
        pred[:, :3, :3] = [rotvec_to_rotmat(r) for r in rng.normal(0, noise, (len(gt), 3))] @ pred[
            :, :3, :3
        ]
        pred[:, :3, 3] += rng.normal(0, noise * s, (len(gt), 3))
    return pred


def _evo_official(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """What ``vo_eval.py::eval_metrics`` computes: TUM-like (xyz, wxyz) trajectories with frame
    indices as timestamps, associated, then evo APE / RPE with Sim(3) alignment."""
    evo_sync = pytest.importorskip("evo.core.sync")
    from evo import main_ape, main_rpe
    from evo.core.metrics import PoseRelation, Unit
    from evo.core.trajectory import PoseTrajectory3D
    from scipy.spatial.transform import Rotation

    def make(poses: np.ndarray) -> PoseTrajectory3D:
        wxyz = Rotation.from_matrix(poses[:, :3, :3]).as_quat()[:, [3, 0, 1, 2]]
        t = np.arange(len(poses), dtype=float)
        return PoseTrajectory3D(
            positions_xyz=poses[:, :3, 3], orientations_quat_wxyz=wxyz, timestamps=t
        )

    ref, est = evo_sync.associate_trajectories(make(gt), make(pred))
    ate = main_ape.ape(
        ref, est, pose_relation=PoseRelation.translation_part, align=True, correct_scale=True
    ).stats["rmse"]
    kw = dict(align=True, correct_scale=True, delta=1, delta_unit=Unit.frames,
              rel_delta_tol=0.01, all_pairs=True)  # fmt: skip
    rot = main_rpe.rpe(ref, est, pose_relation=PoseRelation.rotation_angle_deg, **kw)
    trans = main_rpe.rpe(ref, est, pose_relation=PoseRelation.translation_part, **kw)
    return ate, trans.stats["rmse"], rot.stats["rmse"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pose_metrics_match_evo(seed: int) -> None:
    pytest.importorskip("evo")
    pytest.importorskip("scipy")
    rng = np.random.default_rng(seed)
    gt = _random_traj(rng)
    pred = _sim3_noisy_prediction(rng, gt, noise=0.03)
    m = pose_metrics(pred, gt)
    ate, rpe_t, rpe_r = _evo_official(pred, gt)
    assert ate > 1e-3 and rpe_t > 1e-3 and rpe_r > 0.1  # a real error, not a trivial match
    assert m["ate"] == pytest.approx(ate, rel=1e-9, abs=1e-12)
    assert m["rpe_trans"] == pytest.approx(rpe_t, rel=1e-9, abs=1e-12)
    assert m["rpe_rot"] == pytest.approx(rpe_r, rel=1e-9, abs=1e-12)


def test_pose_metrics_perfect_up_to_sim3() -> None:
    rng = np.random.default_rng(3)
    gt = _random_traj(rng)
    pred = _sim3_noisy_prediction(rng, gt, noise=0.0)
    m = pose_metrics(pred, gt)
    spread = np.linalg.norm(gt[:, :3, 3] - gt[:, :3, 3].mean(0), axis=1).max()
    assert m["ate"] < 1e-9 * spread
    assert m["rpe_trans"] < 1e-9 * spread
    assert m["rpe_rot"] < 1e-6  # degrees
    pred_spread = np.linalg.norm(pred[:, :3, 3] - pred[:, :3, 3].mean(0), axis=1).max()
    assert m["scale"] == pytest.approx(spread / pred_spread, rel=1e-9)


def test_pose_metrics_rpe_closed_form() -> None:
    """Ground truth with identity rotations moving in the xy plane; the prediction identical but
    rotated about its own z by ``a`` at odd frames: positions agree (ATE 0), every pair has a
    relative rotation error of exactly ``a``, and pair (i, i+1) a relative translation error
    ``|R_iᵀ d − d| = 2 sin(a/2) |d|`` (d = p_{i+1} − p_i) when i is odd, 0 when i is even."""
    n, ang = 8, 0.2
    gt = np.tile(np.eye(4), (n, 1, 1))
    gt[:, 0, 3] = np.arange(n)
    gt[:, 1, 3] = np.arange(n) ** 2 * 0.1
    pred = gt.copy()
    pred[1::2, :3, :3] = rotvec_to_rotmat([0, 0, ang])
    m = pose_metrics(pred, gt)
    assert m["ate"] == pytest.approx(0, abs=1e-12)
    d = np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1)
    err = np.where(np.arange(n - 1) % 2 == 1, 2 * math.sin(ang / 2) * d, 0.0)
    assert m["rpe_trans"] == pytest.approx(math.sqrt(np.mean(err**2)), rel=1e-12)
    assert m["rpe_rot"] == pytest.approx(math.degrees(ang), rel=1e-12)


def test_pose_metrics_errors() -> None:
    gt = _random_traj(np.random.default_rng(4), 10)
    with pytest.raises(ValueError, match=r"pred_c2w \(9, 4, 4\) and gt_c2w \(10, 4, 4\)"):
        pose_metrics(gt[:9], gt)
    with pytest.raises(ValueError, match=r"gt_c2w must be \(N,4,4\).*\(10, 3, 4\)"):
        pose_metrics(gt, gt[:, :3])
    bad = gt.copy()
    bad[3, 0, 3] = np.nan
    with pytest.raises(
        ValueError, match=r"pred_c2w \(10, 4, 4\) has non-finite values in frames \[3\]"
    ):
        pose_metrics(bad, gt)
    with pytest.raises(ValueError, match="at least 2 poses"):
        pose_metrics(gt[:1], gt[:1])
    skew = gt.copy()
    skew[2, :3, :3] *= 1.1
    with pytest.raises(ValueError, match=r"gt_c2w .*frames \[2\] are not rigid"):
        pose_metrics(gt, skew)
    line = np.tile(np.eye(4), (5, 1, 1))
    line[:, 0, 3] = np.arange(5)  # collinear positions: evo raises "Degenerate covariance rank"
    with pytest.raises(ValueError, match="degenerate covariance rank"):
        pose_metrics(line, line)


# ------------------------------------------------------------------------------------------------
# depth
# ------------------------------------------------------------------------------------------------
def _gt_depth(rng: np.random.Generator, shape=(3, 12, 16)) -> np.ndarray:
    return rng.uniform(1.0, 30.0, shape)


def test_depth_metrics_perfect_up_to_scale_and_shift() -> None:
    rng = np.random.default_rng(0)
    gt = _gt_depth(rng)
    m = depth_metrics((gt / 3.7).astype(np.float32), gt, align="median")
    assert m["abs_rel"] < 1e-6 and m["rmse"] < 1e-5 and m["log_rmse"] < 1e-6  # float32 pred
    assert m["delta_1_25"] == 1.0 and m["scale"] == pytest.approx(3.7, rel=1e-6)
    assert m["valid_pixels"] == gt.size and m["invalid_pred"] == 0
    m = depth_metrics((gt - 2.0) / 3.7, gt, align="scale_shift")
    assert m["abs_rel"] < 1e-12 and m["delta_1_25"] == 1.0
    assert (m["scale"], m["shift"]) == pytest.approx((3.7, 2.0), rel=1e-12)


def test_depth_metrics_hand_computed_perturbation() -> None:
    """gt = 2 everywhere; pred = 2 on 40 % of the pixels and 2.2 (×1.1) on 60 %: the median
    prediction is 2.2, so s = 2/2.2, the 60 % become exact and the 40 % become 2/1.1."""
    gt = np.full((2, 5, 10), 2.0)
    pred = gt.copy()
    flat = pred.reshape(-1)
    flat[np.random.default_rng(1).permutation(flat.size)[:60]] *= 1.1
    m = depth_metrics(pred, gt, align="median")
    err = 2.0 - 2.0 / 1.1
    assert m["scale"] == pytest.approx(1 / 1.1, rel=1e-12)
    assert m["abs_rel"] == pytest.approx(0.4 * err / 2.0, rel=1e-12)
    assert m["sq_rel"] == pytest.approx(0.4 * err**2 / 2.0, rel=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(0.4) * err, rel=1e-12)
    assert m["log_rmse"] == pytest.approx(math.sqrt(0.4) * math.log(1.1), rel=1e-12)
    assert m["delta_1_25"] == 1.0  # ratio 1.1
    flat[flat > 2.0] = 3.0  # ×1.5 instead: the 40 % now have ratio 1.5 ≥ 1.25, < 1.25²
    m = depth_metrics(pred, gt, align="median")
    assert m["delta_1_25"] == pytest.approx(0.6) and m["delta_1_25_2"] == 1.0


def test_depth_metrics_median_is_the_lower_middle_value() -> None:
    """torch.median (the official code) takes the lower middle value of an even count."""
    gt = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    pred = np.array([[[1.0, 1.0, 3.0, 3.0]]])
    assert depth_metrics(pred, gt)["scale"] == 2.0  # lower medians 2 / 1, not 2.5 / 2


def test_depth_metrics_scale_shift_is_least_squares() -> None:
    rng = np.random.default_rng(2)
    gt = _gt_depth(rng)
    pred = 0.3 * gt + 1.0 + rng.normal(0, 0.5, gt.shape)
    m = depth_metrics(pred, gt, align="scale_shift")
    a = np.stack([pred.ravel(), np.ones(pred.size)], 1)
    s, t = np.linalg.lstsq(a, gt.ravel(), rcond=None)[0]  # official align_with_lstsq
    assert (m["scale"], m["shift"]) == pytest.approx((s, t), rel=1e-9)
    aligned = s * pred + t
    assert m["abs_rel"] == pytest.approx(np.mean(np.abs(aligned - gt) / gt), rel=1e-9)


def test_depth_metrics_lad_matches_torch_adam_replica() -> None:
    """``align="lad"`` against the official ``absolute_value_scaling2`` written in torch from the
    spec (Adam lr 1e-4, ≤ 1000 steps, stop on |Δloss| < 1e-6, init s = median ratio, t = 0)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    gt = _gt_depth(rng, (2, 10, 12))
    pred = 0.5 * gt + rng.normal(0, 1.0, gt.shape)
    m = depth_metrics(pred, gt, align="lad")

    p, g = torch.from_numpy(pred.ravel()), torch.from_numpy(gt.ravel())
    s0 = (torch.median(g) / torch.median(p)).item()
    s = torch.tensor([s0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([s, t], lr=1e-4)
    prev = None
    for _ in range(1000):
        opt.zero_grad()
        loss = torch.sum(torch.abs(s * p + t - g))
        loss.backward()
        opt.step()
        if prev is not None and abs(prev - loss.item()) < 1e-6:
            break
        prev = loss.item()
    assert (m["scale"], m["shift"]) == pytest.approx((s.item(), t.item()), rel=1e-9, abs=1e-12)
    assert abs(m["scale"] - s0) <= 0.1 + 1e-9  # lr 1e-4 × 1000 steps bounds the move
    l1 = lambda a, b: np.abs(a * pred + b - gt).sum()  # noqa: E731
    assert l1(m["scale"], m["shift"]) < l1(s0, 0.0)


def _depth_metrics_reference(pred, gt, align, max_depth, post_clip_max):
    """Straightforward full-array NumPy twin of the official metrics (float64 everywhere)."""
    p_all, g_all = pred.astype(np.float64), gt.astype(np.float64)
    with np.errstate(invalid="ignore"):
        use = np.isfinite(g_all) & (g_all > 0) & (g_all < max_depth) & np.isfinite(p_all)
    p, g = p_all[use], g_all[use]
    if align == "median":
        lower = lambda x: np.sort(x)[(x.size - 1) // 2]  # noqa: E731  torch's lower median
        s, t = lower(g) / lower(p), 0.0
    else:
        s, t = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), g, rcond=None)[0]
    a = np.minimum(s * p + t, post_clip_max)
    a_pos = np.maximum(a, 1e-5)
    ratio = np.maximum(a_pos / g, g / a_pos)
    return {"abs_rel": np.mean(np.abs(a - g) / g), "sq_rel": np.mean((a - g) ** 2 / g),
            "rmse": np.sqrt(np.mean((a - g) ** 2)),
            "log_rmse": np.sqrt(np.mean((np.log(a_pos) - np.log(g)) ** 2)),
            "delta_1_25": np.mean(ratio < 1.25), "delta_1_25_2": np.mean(ratio < 1.25**2),
            "delta_1_25_3": np.mean(ratio < 1.25**3), "valid_pixels": p.size,
            "scale": s, "shift": t}  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depth_metrics_chunked_matches_full_array_reference(dtype) -> None:
    """Chunk sizes that split frames and pixels (several chunks) give the full-array result:
    invalid gt (0, < 0, NaN, ≥ max_depth), non-finite and ≤ 0 predictions, the post clip."""
    rng = np.random.default_rng(11)
    gt = rng.uniform(0.5, 90.0, (7, 9, 13))
    gt[0, :2] = 0
    gt[1, 3] = -1.0
    gt[2, :, 4] = np.nan
    gt[3, 0, 0] = 70.0  # at the cap: not ground truth
    pred = 1.9 * gt + rng.normal(0, 4.0, gt.shape) + 3.0
    pred[4, 2, :5] = np.inf
    pred[5, 1, :3] = np.nan
    pred[6, 5, :4] = -2.0
    pred[6, 6, :2] = 0.0
    gt, pred = gt.astype(dtype), pred.astype(dtype)
    n_bad = int(np.count_nonzero(~np.isfinite(pred) & (gt > 0) & (gt < 70)))
    for align in ("median", "scale_shift"):
        ref = _depth_metrics_reference(pred, gt, align, 70.0, 70.0)
        for chunk in (50, 117, 10**6):
            m = depth_metrics(pred, gt, align, 70.0, post_clip_max=70.0, chunk=chunk)
            assert m["invalid_pred"] == n_bad > 0
            assert m["valid_pixels"] == ref["valid_pixels"]
            for k, v in ref.items():
                assert m[k] == pytest.approx(v, rel=1e-12, abs=1e-12), (align, chunk, k)
    lad = [depth_metrics(pred, gt, "lad", 70.0, chunk=c) for c in (50, 10**6)]
    assert lad[0] == pytest.approx(lad[1], rel=1e-10, abs=1e-12)
    with pytest.raises(ValueError, match="chunk"):
        depth_metrics(pred, gt, chunk=0)


def test_depth_metrics_max_depth_and_post_clip() -> None:
    rng = np.random.default_rng(4)
    gt = _gt_depth(rng)
    pred = gt * 0.5 * rng.uniform(0.8, 1.25, gt.shape)
    far = np.zeros(gt.shape, bool)
    far[:, :3] = True
    gt_far = gt.copy()
    gt_far[far] = 100.0
    gt_far[0, 0, 0] = 70.0  # at the cap: ignored too (official mask is gt < max_depth)
    pred_far = pred.copy()
    pred_far[far] = 1e6  # garbage where the ground truth is ignored
    ref = depth_metrics(pred[~far][None, None], gt[~far][None, None])
    m = depth_metrics(pred_far, gt_far, max_depth=70.0)
    assert m["valid_pixels"] == np.count_nonzero(~far)
    for k in ("abs_rel", "rmse", "log_rmse", "delta_1_25", "scale"):
        assert m[k] == pytest.approx(ref[k], rel=1e-12)
    # post_clip_max clamps the aligned prediction from above, before the metrics
    gt2 = np.array([[[10.0, 20.0, 60.0]]])
    pred2 = np.array([[[10.0, 20.0, 90.0]]])
    m = depth_metrics(pred2, gt2, max_depth=70.0, post_clip_max=70.0)
    assert m["abs_rel"] == pytest.approx((10.0 / 60.0) / 3, rel=1e-12)
    assert DEPTH_DATASET_SETTINGS["sintel"] == {"max_depth": 70.0, "post_clip_max": 70.0}
    assert DEPTH_DATASET_SETTINGS["kitti"]["max_depth"] is None


def test_depth_metrics_invalid_values() -> None:
    gt = np.ones((1, 2, 5))
    gt[0, 1, 0] = 0.0  # ignored ground truth: zero, negative, NaN, inf
    gt[0, 1, 1] = -3.0
    gt[0, 1, 2] = np.nan
    gt[0, 1, 3] = np.inf
    pred = np.ones((1, 2, 5))
    pred[0, 0, 4] = np.nan  # valid gt, invalid prediction: left out and counted
    pred[0, 1, 4] = np.inf
    m = depth_metrics(pred, gt)
    assert m["invalid_pred"] == 2 and m["valid_pixels"] == 4 and m["abs_rel"] == 0.0
    # predictions ≤ 0: full error in AbsRel/RMSE, clamped to 1e-5 for log and δ
    gt = np.ones((1, 1, 5))
    for bad, abs_rel in ((0.0, 0.2), (-1.0, 0.4)):
        pred = np.array([[[1.0, 1.0, 1.0, 1.0, bad]]])
        m = depth_metrics(pred, gt)
        assert m["abs_rel"] == pytest.approx(abs_rel, rel=1e-12)
        assert m["rmse"] == pytest.approx(abs(1 - bad) / math.sqrt(5), rel=1e-12)
        assert m["log_rmse"] == pytest.approx(-math.log(1e-5) / math.sqrt(5), rel=1e-12)
        assert m["delta_1_25"] == pytest.approx(0.8)


def test_depth_metrics_errors() -> None:
    gt = np.ones((2, 4, 5))
    with pytest.raises(ValueError, match=r"pred \(2, 4, 6\) and gt \(2, 4, 5\) differ"):
        depth_metrics(np.ones((2, 4, 6)), gt)
    with pytest.raises(ValueError, match=r"pred must be \(N,H,W\), got \(4, 5\)"):
        depth_metrics(np.ones((4, 5)), gt)
    with pytest.raises(ValueError, match="no valid pixel"):
        depth_metrics(gt, gt * 100, max_depth=70)
    with pytest.raises(ValueError, match="align must be"):
        depth_metrics(gt, gt, align="mean")
    with pytest.raises(ValueError, match="median prediction"):
        depth_metrics(-gt, gt)
    with pytest.raises(ValueError, match="constant"):
        depth_metrics(gt, gt * np.arange(1, 41).reshape(gt.shape), align="scale_shift")


def test_aggregate_depth_metrics_weights_by_pixels() -> None:
    a = {"abs_rel": 0.1, "valid_pixels": 300, "invalid_pred": 1}
    b = {"abs_rel": 0.5, "valid_pixels": 100, "invalid_pred": 0}
    rest = {k: 0.0 for k in ("sq_rel", "rmse", "log_rmse", "delta_1_25", "delta_1_25_2",
                             "delta_1_25_3")}  # fmt: skip
    out = aggregate_depth_metrics([{**a, **rest}, {**b, **rest}])
    assert out["abs_rel"] == pytest.approx(0.2) and out["valid_pixels"] == 400
    assert out["invalid_pred"] == 1
    with pytest.raises(ValueError):
        aggregate_depth_metrics([])


# ------------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------------
def _brute_boundary(seg: np.ndarray) -> np.ndarray:
    """A pixel is on the boundary when it differs from its right, lower or lower-right neighbour
    (the ones that exist; the last row compares only to the right, the last column only down)."""
    h, w = seg.shape
    b = np.zeros_like(seg)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                nbrs = [(y, x + 1)]
            elif x == w - 1:
                nbrs = [(y + 1, x)]
            else:
                nbrs = [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
            b[y, x] = any(seg[y, x] != seg[q] for q in nbrs)
    return b


def _brute_f(pred: np.ndarray, gt: np.ndarray, radius: float) -> float:
    pb, gb = _brute_boundary(pred), _brute_boundary(gt)
    pp, gp = np.argwhere(pb), np.argwhere(gb)
    if len(pp) == 0 or len(gp) == 0:
        prec, rec = float(len(pp) == 0), float(len(gp) == 0)
    else:
        d = np.linalg.norm(pp[:, None] - gp[None], axis=-1)
        prec, rec = np.mean(d.min(1) <= radius), np.mean(d.min(0) <= radius)
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def _blobs(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((n, h, w), bool)
    for i in range(n):
        for _ in range(3):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 12)
            out[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return out


def test_mask_metrics_identical_and_disjoint() -> None:
    m = _blobs(np.random.default_rng(0), 3, 40, 60)
    assert mask_metrics(m, m) == {"iou": 1.0, "j": 1.0, "f": 1.0, "jf": 1.0}
    a = np.zeros((2, 100, 100), bool)
    b = a.copy()
    a[:, 5:20, 5:20] = True
    b[:, 60:90, 60:90] = True
    assert mask_metrics(a, b) == {"iou": 0.0, "j": 0.0, "f": 0.0, "jf": 0.0}
    empty = np.zeros((1, 10, 10), bool)
    assert mask_metrics(empty, empty)["jf"] == 1.0
    square = empty.copy()
    square[0, 3:6, 3:6] = True
    out = mask_metrics(empty, square)
    assert out["j"] == 0.0 and out["f"] == 0.0  # precision 1, recall 0
    # DAVIS quirk kept: a full mask has no boundary, so full vs full (or vs empty) has F = 1
    assert mask_metrics(~empty, empty)["f"] == 1.0


def test_mask_metrics_hand_checked() -> None:
    """10×10 image: tolerance ceil(0.008·√200) = 1 px. A single pixel's boundary is the 2×2
    block up-left of it; gt at (4,4) → rows 3–4, cols 3–4; pred at (4,6) → cols 5–6. Column 5 is
    within 1 px of column 4 and vice versa, the others are not: P = R = 1/2, F = 1/2, J = 0."""
    gt = np.zeros((1, 10, 10), bool)
    pred = gt.copy()
    gt[0, 4, 4] = True
    pred[0, 4, 6] = True
    assert mask_metrics(pred, gt) == pytest.approx({"iou": 0.0, "j": 0.0, "f": 0.5, "jf": 0.25})
    # two frames: one identical (4 px), one 2×2 pred half inside a 2×4 gt
    gt = np.zeros((2, 10, 10), bool)
    pred = gt.copy()
    gt[0, 2:4, 2:4] = pred[0, 2:4, 2:4] = True
    gt[1, 2:4, 2:6] = True
    pred[1, 2:4, 2:4] = True
    out = mask_metrics(pred, gt)
    assert out["j"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["iou"] == pytest.approx((4 + 4) / (4 + 8))  # pooled over frames


@pytest.mark.parametrize("shape", [(3, 40, 60), (2, 33, 47)])
def test_mask_metrics_match_brute_force(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    gt = _blobs(rng, *shape)
    pred = gt.copy()
    pred[:, rng.integers(0, shape[1], 8), :] ^= True  # boundary noise
    pred = np.roll(pred, (1, 2), axis=(1, 2)) | _blobs(rng, *shape)
    radius = math.ceil(0.008 * math.hypot(shape[1], shape[2]))
    j = [np.sum(p & g) / np.sum(p | g) for p, g in zip(pred, gt, strict=True)]
    f = [_brute_f(p, g, radius) for p, g in zip(pred, gt, strict=True)]
    out = mask_metrics(pred, gt)
    assert 0 < out["f"] < 1 and 0 < out["j"] < 1
    assert out["j"] == pytest.approx(np.mean(j), rel=1e-12)
    assert out["f"] == pytest.approx(np.mean(f), rel=1e-12)
    assert out["jf"] == pytest.approx((out["j"] + out["f"]) / 2, rel=1e-12)
    out3 = mask_metrics(pred, gt, bound_th=3)  # ≥ 1: pixels
    assert out3["f"] == pytest.approx(
        np.mean([_brute_f(p, g, 3) for p, g in zip(pred, gt, strict=True)])
    )


def test_mask_metrics_errors() -> None:
    m = np.zeros((2, 4, 5), bool)
    with pytest.raises(ValueError, match=r"pred \(2, 4, 5\) and gt \(1, 4, 5\) differ"):
        mask_metrics(m, m[:1])
    with pytest.raises(ValueError, match="gt must be bool"):
        mask_metrics(m, m.astype(np.float32))
    with pytest.raises(ValueError, match=r"pred must be \(N,H,W\)"):
        mask_metrics(m[0], m[0])


# ------------------------------------------------------------------------------------------------
# Sintel files
# ------------------------------------------------------------------------------------------------
def test_dpt_cam_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.1, 50, (7, 9)).astype(np.float32)
    write_dpt(tmp_path / "a.dpt", depth)
    out = read_dpt(tmp_path / "a.dpt")
    assert out.dtype == np.float32 and out.shape == (7, 9) and np.array_equal(out, depth)
    k = np.array([[500.0, 0, 511.5], [0, 500.0, 217.5], [0, 0, 1]])
    ext = np.hstack([rotvec_to_rotmat(rng.normal(size=3)), rng.normal(size=(3, 1))])
    write_cam(tmp_path / "a.cam", k, ext)
    k2, ext2 = read_cam(tmp_path / "a.cam")
    assert k2.dtype == ext2.dtype == np.float64
    assert np.array_equal(k2, k) and np.array_equal(ext2, ext)
    write_cam(tmp_path / "b.cam", k, np.vstack([ext, [0, 0, 0, 1]]))  # (4,4) accepted
    assert (tmp_path / "b.cam").read_bytes() == (tmp_path / "a.cam").read_bytes()


def test_dpt_cam_bytes_from_the_format(tmp_path) -> None:
    # .dpt: float32 tag, int32 width, int32 height, row-major float32 data (little-endian)
    vals = [1.0, 2.5, 3.0, 4.0, 5.5, 6.0]
    (tmp_path / "s.dpt").write_bytes(struct.pack("<fii6f", 202021.25, 3, 2, *vals))
    assert np.array_equal(read_dpt(tmp_path / "s.dpt"), np.reshape(vals, (2, 3)))
    write_dpt(tmp_path / "w.dpt", np.reshape(vals, (2, 3)))
    assert (tmp_path / "w.dpt").read_bytes() == (tmp_path / "s.dpt").read_bytes()
    # .cam: float32 tag, 9 float64 K, 12 float64 [R|t] (world-to-camera), row-major
    kv = [float(i) for i in range(1, 10)]
    ev = [float(i) / 4 for i in range(12)]
    (tmp_path / "s.cam").write_bytes(struct.pack("<f21d", SINTEL_TAG, *kv, *ev))
    k, ext = read_cam(tmp_path / "s.cam")
    assert np.array_equal(k, np.reshape(kv, (3, 3))) and np.array_equal(ext, np.reshape(ev, (3, 4)))
    write_cam(tmp_path / "w.cam", k, ext)
    assert (tmp_path / "w.cam").read_bytes() == (tmp_path / "s.cam").read_bytes()


def test_dpt_cam_errors(tmp_path) -> None:
    good = struct.pack("<fii6f", SINTEL_TAG, 3, 2, *range(6))
    cases = {
        "short.dpt": (good[:8], "truncated"),
        "cut.dpt": (good[:-4], "truncated: 32 bytes, expected 36"),
        "long.dpt": (good + b"\0" * 4, "trailing bytes"),
        "tag.dpt": (struct.pack("<f", 1.0) + good[4:], "wrong tag"),
        "size.dpt": (struct.pack("<fii", SINTEL_TAG, -3, 2), "invalid size"),
    }
    for name, (data, msg) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"{name}.*{msg}"):
            read_dpt(tmp_path / name)
    cam = struct.pack("<f21d", SINTEL_TAG, *range(21))
    for name, data, msg in (
        ("cut.cam", cam[:-8], "truncated"),
        ("long.cam", cam + b"\0", "trailing bytes"),
        ("tag.cam", b"\0\0\0\0" + cam[4:], "wrong tag"),
    ):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"{name}.*{msg}"):
            read_cam(tmp_path / name)
    with pytest.raises(ValueError, match=r"k must be \(3,3\)"):
        write_cam(tmp_path / "x.cam", np.eye(4), np.eye(4))
    with pytest.raises(ValueError, match=r"depth must be .*\(2, 2, 2\)"):
        write_dpt(tmp_path / "x.dpt", np.ones((2, 2, 2)))
