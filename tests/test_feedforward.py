"""Feed-forward ("real-time") mode: the official oneref-mid pairs and per-pair files, PnP cameras
recovered on exact geometry, the CLI's ``run --real-time``, and early refusals."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from monst3r_rt import geometry
from monst3r_rt.feedforward import feedforward_cameras, feedforward_pairs, register_frame
from monst3r_rt.inference import PairwisePredictions
from monst3r_rt.synthetic import make_scene


def _rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (radians) of ``a bᵀ``, an independent rotation error."""
    cos = (np.trace(a @ b.T) - 1) / 2
    return float(np.arccos(np.clip(cos, -1.0, 1.0)))


# ---- cameras on exact geometry (no network) ---------------------------------------------------
@pytest.mark.parametrize("focal_factor", [0.7, 1.6])
def test_register_frame_recovers_focal_and_pose(focal_factor):
    """A pointmap made from a known camera (focal off the search grid, pose away from the world
    origin) gives back that camera."""
    h, w = 60, 80
    focal = focal_factor * max(h, w)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    depth = 3.0 + np.sin(4 * xx) + 0.5 * np.cos(5 * yy) + 2 * xx  # a bumpy, slanted surface
    cam = geometry.unproject_depth(depth, focal)
    pose = geometry.sim3_matrix(1.0, geometry.rotvec_to_rotmat([0.1, -0.2, 0.05]), [0.3, -0.1, 0.4])
    world = geometry.transform_points(pose, cam).astype(np.float32)
    got_focal, got_pose = register_frame(world, np.ones((h, w), bool))
    assert abs(got_focal / focal - 1) < 5e-4
    assert _rotation_angle(got_pose[:3, :3], pose[:3, :3]) < 5e-4
    np.testing.assert_allclose(got_pose[:3, 3], pose[:3, 3], atol=2e-3 * depth.max())


def _scene_preds(scale: float = 0.7, n: int = 5):
    sc = make_scene(n_frames=n, size=(48, 64), graph="oneref-mid", n_objects=0,
                    scale_range=(scale, scale), seed=3)  # fmt: skip
    preds = PairwisePredictions(edges=sc.edges, pts_i=sc.pts_i, pts_j=sc.pts_j,
                                conf_i=sc.conf_i, conf_j=sc.conf_j)  # fmt: skip
    return sc, preds


def test_feedforward_cameras_on_exact_geometry():
    scale, n = 0.7, 5
    sc, preds = _scene_preds(scale, n)
    mid = n // 2
    assert preds.edges.tolist() == [[mid, j] for j in range(n)]
    cams = feedforward_cameras(preds, min_conf_thr=1.0)
    assert cams.failed == []
    np.testing.assert_array_equal(cams.poses[mid], np.eye(4))
    np.testing.assert_allclose(cams.focals, sc.focal, rtol=5e-4)
    # ground truth relative to the middle camera, translations in the predictions' scale
    t_scale = np.abs(sc.poses[:, :3, 3] - sc.poses[mid, :3, 3]).max() * scale
    for j in range(n):
        rel = np.linalg.inv(sc.poses[mid]) @ sc.poses[j]
        assert _rotation_angle(cams.poses[j, :3, :3], rel[:3, :3]) < 5e-4, j
        np.testing.assert_allclose(cams.poses[j, :3, 3], scale * rel[:3, 3],
                                   atol=2e-3 * max(t_scale, 1e-3), err_msg=str(j))  # fmt: skip
    np.testing.assert_allclose(cams.depths, scale * sc.depths, rtol=2e-3)


def test_feedforward_cameras_refuse_other_pairs():
    sc = make_scene(n_frames=4, size=(16, 16), graph="swin-1-noncyclic", n_objects=0)
    preds = PairwisePredictions(edges=sc.edges, pts_i=sc.pts_i, pts_j=sc.pts_j,
                                conf_i=sc.conf_i, conf_j=sc.conf_j)  # fmt: skip
    with pytest.raises(ValueError, match=r"oneref-mid pairs of 4 frames \(mid = 2, j\)"):
        feedforward_cameras(preds)


def test_feedforward_pairs_are_oneref_mid_unsymmetrised():
    for n in (3, 5, 8):
        mid = n // 2
        assert feedforward_pairs(n) == [(mid, j) for j in range(n)]
    assert feedforward_pairs(2) == [(1, 0), (1, 1), (0, 1), (1, 1)]  # make_pairs' 2-frame rule


def test_two_frames_use_the_first_edges():
    sc = make_scene(n_frames=2, size=(32, 40), graph="oneref-mid", n_objects=0, seed=2)
    preds = PairwisePredictions(edges=sc.edges, pts_i=sc.pts_i, pts_j=sc.pts_j,
                                conf_i=sc.conf_i, conf_j=sc.conf_j)  # fmt: skip
    assert len(preds) == 4
    cams = feedforward_cameras(preds, min_conf_thr=1.0)
    assert cams.poses.shape == (2, 4, 4) and cams.depths.shape == (2, 32, 40)
    np.testing.assert_allclose(cams.focals, sc.focal, rtol=1e-3)


# ---- the pipeline on a tiny random-weight network ------------------------------------------------
torch_needed = pytest.mark.skipif(
    __import__("importlib").util.find_spec("torch") is None, reason="needs torch"
)


@pytest.fixture(scope="module")
def ffwd_run(workdir, tmp_path_factory):
    """A feed-forward run on 18 frames (two decoder batches of 16), its predictions as the
    network gave them, the decoder's batch sizes, and its saved folder."""
    pytest.importorskip("torch")
    import monst3r_rt.inference as inference
    from monst3r_rt.pipeline import Pipeline

    _, ckpt = workdir
    sc = make_scene(n_frames=18, size=(56, 56), n_objects=1, seed=1)
    seen: dict = {"batches": []}
    real = inference.infer_pairs

    def spy(net, frames, pairs, batch_size=16, **kw):
        decode = net.decode

        def counting(t1, t2, size):
            seen["batches"].append(len(t1) if hasattr(t1, "__len__") else None)
            return decode(t1, t2, size)

        net.decode = counting
        try:
            seen["pairs"] = [tuple(p) for p in pairs]
            seen["batch_size"] = batch_size
            seen["preds"] = real(net, frames, pairs, batch_size, **kw)
        finally:
            del net.decode
        return seen["preds"]

    mp = pytest.MonkeyPatch()
    mp.setattr(inference, "infer_pairs", spy)
    try:
        pipe = Pipeline(weights=ckpt, device="cpu", size=224, mode="feedforward")
        recon = pipe.run(list(sc.images), progress=False)
    finally:
        mp.undo()
    out = tmp_path_factory.mktemp("ffwd") / "out"
    recon.save(out)
    return recon, seen, out


@torch_needed
def test_pairs_and_one_decoder_call_per_16_pairs(ffwd_run):
    recon, seen, _ = ffwd_run
    n = len(recon)
    assert n == 18 and seen["pairs"] == [(9, j) for j in range(n)]  # (mid, mid) included
    assert seen["batch_size"] == 16 and len(seen["batches"]) == 2
    assert recon.meta["pairs"] == n and recon.meta["mode"] == "feedforward"
    assert recon.meta["config"]["graph"] == "oneref-mid"


@torch_needed
def test_reconstruction_fields(ffwd_run):
    recon, seen, _ = ffwd_run
    preds, n, mid = seen["preds"], len(recon), len(recon) // 2
    h, w = recon.depths.shape[1:]
    np.testing.assert_array_equal(recon.pts3d, preds.pts_j)
    np.testing.assert_array_equal(recon.conf, preds.conf_j)
    assert not recon.dynamic_masks.any()
    np.testing.assert_array_equal(recon.poses[mid], np.eye(4))
    np.testing.assert_allclose(recon.intrinsics[:, 0, 2], w / 2)
    np.testing.assert_allclose(recon.intrinsics[:, 1, 2], h / 2)
    # the middle focal is Weiszfeld on its own pointmap (view 1 of the self pair)
    focal = geometry.estimate_focal(preds.pts_i[mid])
    np.testing.assert_allclose(recon.intrinsics[mid, 0, 0], focal, rtol=1e-6)
    # depth = z of each frame's points in its own camera (independent inverse: Rᵀ(X − t))
    poses = recon.poses.astype(np.float64)
    cam_z = np.einsum("nj,nhwj->nhw", poses[:, :3, 2], recon.pts3d - poses[:, None, None, :3, 3])
    np.testing.assert_allclose(recon.depths, cam_z, rtol=1e-4, atol=1e-5 * np.abs(cam_z).max())
    assert np.isfinite(recon.depths).all() and n == len(recon.poses)


@torch_needed
def test_official_per_pair_files(ffwd_run):
    recon, seen, out = ffwd_run
    preds, n, mid = seen["preds"], len(recon), len(recon) // 2
    h, w = recon.depths.shape[1:]
    names = {p.name for p in out.iterdir()}
    for b in range(n):
        p1, p2 = np.load(out / f"pts3d1_p{b}.npy"), np.load(out / f"pts3d2_p{b}.npy")
        assert p1.shape == p2.shape == (h, w, 6) and p1.dtype == p2.dtype == np.float32
        np.testing.assert_array_equal(p1[..., :3], preds.pts_i[b])
        np.testing.assert_array_equal(p2[..., :3], preds.pts_j[b])
        np.testing.assert_allclose(p1[..., 3:], recon.frames[mid] / 255.0, atol=1e-7)
        np.testing.assert_allclose(p2[..., 3:], recon.frames[b] / 255.0, atol=1e-7)
        for k, conf in (("1", preds.conf_i[b]), ("2", preds.conf_j[b])):
            c = np.load(out / f"conf{k}_p{b}.npy")
            assert c.shape == (h, w) and c.dtype == np.float32
            np.testing.assert_array_equal(c, conf)  # raw, not log
        for k, frame in (("1", mid), ("2", b)):
            png = cv2.imread(str(out / f"img{k}_p{b}.png"), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(png[..., ::-1], recon.frames[frame])
    official = {f"{s}_p{b}.{e}" for b in range(n)
                for s, e in (("pts3d1", "npy"), ("pts3d2", "npy"), ("conf1", "npy"),
                             ("conf2", "npy"), ("img1", "png"), ("img2", "png"))}  # fmt: skip
    assert official <= names and not any("_p0" in x and x not in official for x in names)
    # the offline folder is there too, and reads back
    from monst3r_rt.reconstruction import Reconstruction

    back = Reconstruction.load(out)
    np.testing.assert_array_equal(back.poses, recon.poses)
    assert json.loads((out / "run.json").read_text())["mode"] == "feedforward"


@torch_needed
def test_cli_run_real_time(workdir, tmp_path, capsys):
    from monst3r_rt import cli
    from monst3r_rt.reconstruction import Reconstruction

    d, ckpt = workdir
    out = tmp_path / "rt"
    args = ["run", str(d / "clip"), "-o", str(out), "--weights", str(ckpt), "--size", "224",
            "--device", "cpu", "--real-time", "-q"]  # fmt: skip
    assert cli.main(args) == 0
    assert "cameras s" in capsys.readouterr().out
    rec = Reconstruction.load(out)
    assert len(rec) == 8 and rec.meta["mode"] == "feedforward" and not rec.dynamic_masks.any()
    assert (out / "pts3d2_p7.npy").is_file() and (out / "img1_p0.png").is_file()


# ---- refusals before any work -----------------------------------------------------------------
@pytest.fixture
def no_work(monkeypatch):
    import monst3r_rt.frames
    import monst3r_rt.inference

    def forbidden(*_a, **_k):
        raise AssertionError("work started before the request was refused")

    monkeypatch.setattr(monst3r_rt.frames, "load_frames", forbidden)
    monkeypatch.setattr(monst3r_rt.inference, "infer_pairs", forbidden)


@torch_needed
def test_bad_combinations_refused_early(workdir, tmp_path, no_work, capsys):
    from monst3r_rt import cli
    from monst3r_rt.align import AlignConfig
    from monst3r_rt.pipeline import Pipeline

    d, ckpt = workdir
    base = {"weights": ckpt, "device": "cpu", "size": 224}
    with pytest.raises(ValueError, match=r"unknown mode 'online'.*'offline', 'feedforward'"):
        Pipeline(**base, mode="online")
    cases = [
        ({"graph": "swin-3"}, "graph='swin-3'"),
        ({"align": AlignConfig(niter=5, solver="lm")}, r"align \(changed: niter, solver\)"),
        ({"flow": "raft"}, "flow='raft'"),
        ({"masks": "robust"}, "masks='robust'"),
        ({"flow_weights": tmp_path / "r.pth"}, "flow_weights"),
    ]
    for kw, needle in cases:
        with pytest.raises(ValueError, match=f"mode='feedforward' runs .*{needle}"):
            Pipeline(**base, mode="feedforward", **kw)
    Pipeline(**base, mode="feedforward", graph="oneref-mid", flow=None)  # accepted
    pipe = Pipeline(**base, mode="feedforward")
    with pytest.raises(ValueError, match="no dynamic masks"):
        pipe.run(d / "clip", dynamic_masks=np.zeros((8, 224, 224), bool), progress=False)
    out = tmp_path / "never"
    args = ["run", str(d / "clip"), "-o", str(out), "--weights", str(ckpt), "--size", "224",
            "--device", "cpu", "--real-time", "--niter", "5", "--masks", "robust"]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--real-time runs" in err and "--niter" in err and "--masks robust" in err, err
    assert not out.exists()
