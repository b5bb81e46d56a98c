"""global_align end to end on synthetic scenes with ground truth, bad input, result I/O."""

from __future__ import annotations

import numpy as np
import pytest

import monst3r_rt
from monst3r_rt.align import AlignConfig, AlignResult, global_align
from monst3r_rt.geometry import weighted_procrustes
from monst3r_rt.inference import PairwisePredictions
from monst3r_rt.synthetic import make_scene


def ate(poses: np.ndarray, gt: np.ndarray) -> float:
    """RMSE of camera centres after Sim(3) alignment, relative to the trajectory's extent."""
    s, r, t = weighted_procrustes(poses[:, :3, 3], gt[:, :3, 3], np.ones(len(gt)))
    aligned = s * poses[:, :3, 3] @ r.T + t
    extent = np.linalg.norm(gt[:, :3, 3] - gt[:, :3, 3].mean(0), axis=1).mean()
    return float(np.sqrt(np.mean(np.sum((aligned - gt[:, :3, 3]) ** 2, 1))) / extent)


def depth_error(depths: np.ndarray, gt: np.ndarray) -> float:
    """Abs Rel after one global scale (least squares in log space)."""
    scale = np.exp(np.mean(np.log(gt) - np.log(depths)))
    return float(np.mean(np.abs(depths * scale - gt) / gt))


def _run(scene, **kw):
    return global_align(scene.edges, scene.pts_i, scene.pts_j, scene.conf_i, scene.conf_j, **kw)


def test_exact_static_scene_is_recovered():
    """Exact predictions: the MST init is exact; Adam (official schedule) stays within its step
    size of it. The camera-smoothness prior biases a moving trajectory slightly (official)."""
    sc = make_scene(n_frames=10, size=(32, 48), n_objects=0, seed=1)
    init = _run(sc, config=AlignConfig(niter=0))
    assert ate(init.poses, sc.poses) < 1e-5 and depth_error(init.depths, sc.depths) < 1e-5
    res = _run(sc, config=AlignConfig(niter=300, temporal_smoothing_weight=0.0))
    assert ate(res.poses, sc.poses) < 5e-3
    assert depth_error(res.depths, sc.depths) < 1e-3
    assert res.focals == pytest.approx(sc.focal, rel=1e-3)
    smooth = _run(sc)  # official defaults
    assert ate(smooth.poses, sc.poses) < 0.03
    # outputs are consistent with each other
    np.testing.assert_allclose(res.intrinsics[:, 0, 0], res.focals)
    cam = np.linalg.inv(res.poses[3]) @ np.append(res.pts3d[3, 5, 7], 1)
    assert cam[2] == pytest.approx(res.depths[3, 5, 7], rel=1e-4)


def test_noisy_scene_error_is_bounded_and_optimisation_helps():
    sc = make_scene(n_frames=12, size=(32, 48), n_objects=1, depth_noise=0.03, pose_noise=0.02,
                    seed=2)  # fmt: skip
    init = _run(sc, config=AlignConfig(niter=0))
    res = _run(sc, config=AlignConfig(niter=200))
    assert res.energy[-1] < res.energy[0]
    assert ate(res.poses, sc.poses) < 0.1
    assert depth_error(res.depths, sc.depths) < 0.05
    assert depth_error(res.depths, sc.depths) <= depth_error(init.depths, sc.depths) * 1.05


def test_flow_term_runs_and_keeps_trajectory():
    sc = make_scene(n_frames=10, size=(32, 48), n_objects=1, depth_noise=0.02, seed=4)
    base = _run(sc, config=AlignConfig(niter=100))
    with_flow = _run(
        sc, flows=(sc.flow_ij, sc.flow_ji), dynamic_masks=sc.dynamic_masks,
        config=AlignConfig(niter=100),
    )  # fmt: skip
    assert ate(with_flow.poses, sc.poses) <= ate(base.poses, sc.poses) * 1.2 + 1e-3
    assert with_flow.dynamic_masks is not None and with_flow.dynamic_masks.dtype == bool


def test_predictions_object_and_lazy_export(tmp_path):
    sc = make_scene(n_frames=6, size=(16, 32), n_objects=0, seed=5)
    preds = PairwisePredictions(sc.edges, sc.pts_i, sc.pts_j, sc.conf_i, sc.conf_j)
    res = monst3r_rt.global_align(preds, config=monst3r_rt.AlignConfig(niter=5))
    path = tmp_path / "align.npz"
    res.save(path)
    back = AlignResult.load(path)
    for k in ("poses", "depths", "focals", "intrinsics", "pts3d", "conf", "energy"):
        np.testing.assert_array_equal(getattr(back, k), getattr(res, k))
    assert back.timings == res.timings and back.diagnostics == res.diagnostics
    assert [p.name for p in tmp_path.iterdir()] == ["align.npz"]


def test_per_frame_conf_is_max_over_edges():
    sc = make_scene(n_frames=6, size=(16, 32), n_objects=0, seed=6)
    res = _run(sc, config=AlignConfig(niter=0))
    f = 2
    expect = np.max(
        [sc.conf_i[e] for e in range(len(sc.edges)) if sc.edges[e, 0] == f]
        + [sc.conf_j[e] for e in range(len(sc.edges)) if sc.edges[e, 1] == f],
        axis=0,
    )
    np.testing.assert_array_equal(res.conf[f], expect)


def test_non_finite_predictions_are_masked_and_counted():
    sc = make_scene(n_frames=6, size=(16, 32), n_objects=0, seed=7)
    pts_i = sc.pts_i.copy()
    pts_i[0, 0, :5] = np.nan
    conf_j = sc.conf_j.copy()
    conf_j[1, 2, 3] = np.inf
    res = global_align(sc.edges, pts_i, sc.pts_j, sc.conf_i, conf_j, config=AlignConfig(niter=5))
    assert res.diagnostics["invalid_pixels"] == 6
    assert np.isfinite(res.poses).all() and np.isfinite(res.depths).all()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.update(conf_i=a["conf_i"] * 0.5), r"conf_i has \d+ values < 1"),
        (lambda a: a.update(edges=np.vstack([a["edges"][:-1], [[0, 99]]])), r"appear in no pair"),
        (
            lambda a: a.update(
                edges=np.vstack([a["edges"][:-1], [[0, 6]]]), images=np.zeros((6, 16, 32, 3))
            ),
            r"frame outside 0\.\.5",
        ),
        (lambda a: a.update(pts_j=a["pts_j"][:, :-1]), r"pts_j must have shape"),
        (lambda a: a.update(conf_j=a["conf_j"][:-1]), r"conf_j must have shape"),
        (lambda a: a.update(edges=a["edges"][:, :1]), r"edges must be"),
    ],
)
def test_bad_input_names_the_problem(mutate, message):
    sc = make_scene(n_frames=6, size=(16, 32), n_objects=0, seed=8)
    args = dict(edges=sc.edges, pts_i=sc.pts_i, pts_j=sc.pts_j, conf_i=sc.conf_i, conf_j=sc.conf_j)
    mutate(args)
    with pytest.raises(ValueError, match=message):
        global_align(**args)


def test_disconnected_graph_and_single_frame():
    sc = make_scene(n_frames=6, size=(16, 32), n_objects=0, graph="swin-1-noncyclic", seed=9)
    keep = ~((sc.edges == [2, 3]).all(1) | (sc.edges == [3, 2]).all(1))
    with pytest.raises(ValueError, match=r"disconnected: 2 components \{0\.\.2\}, \{3\.\.5\}"):
        global_align(sc.edges[keep], sc.pts_i[keep], sc.pts_j[keep], sc.conf_i[keep],
                     sc.conf_j[keep])  # fmt: skip
    one = np.zeros((1, 2), np.int64)
    with pytest.raises(ValueError, match="at least 2 frames"):
        global_align(one, sc.pts_i[:1], sc.pts_j[:1], sc.conf_i[:1], sc.conf_j[:1])


def test_windowed_alignment_matches_full_video():
    sc = make_scene(n_frames=18, size=(24, 32), n_objects=1, depth_noise=0.02, seed=10)
    full = _run(sc, config=AlignConfig(niter=150))
    win = _run(sc, config=AlignConfig(niter=150, window=(10, 5)))
    assert win.diagnostics["windows"] == [[0, 10], [5, 15], [10, 18]]
    # swinstride-5 links frames up to 9 apart: those crossing every window are dropped
    assert win.diagnostics["edges_outside_windows"] > 0
    assert len(win.energy) == 3 * 150
    assert ate(win.poses, sc.poses) < max(2 * ate(full.poses, sc.poses), 0.05)
    assert depth_error(win.depths, sc.depths) < 0.05
    # continuity: no jump in the trajectory where windows meet
    steps = np.linalg.norm(np.diff(win.poses[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 3 * np.median(steps)


def test_window_config_is_validated():
    with pytest.raises(ValueError, match="overlap"):
        AlignConfig(window=(5, 5))
