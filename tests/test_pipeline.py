"""The main job end to end on a tiny random-weight checkpoint and a generated clip: every output
parses and agrees with the reconstruction, lossless reload, clear errors, nothing half-written."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tolerance import assert_close, assert_poses_close, scale_of  # noqa: E402

from monst3r_rt import (  # noqa: E402
    cli,
    fileio,
    make_pairs,  # noqa: E402
)
from monst3r_rt.align import AlignConfig  # noqa: E402
from monst3r_rt.pipeline import Pipeline  # noqa: E402
from monst3r_rt.reconstruction import Reconstruction  # noqa: E402
from monst3r_rt.synthetic import make_scene  # noqa: E402
from monst3r_rt.viewer import render_png  # noqa: E402


def _pipe(ckpt, **kw) -> Pipeline:
    return Pipeline(weights=ckpt, device="cpu", size=224, batch_size=8,
                    align=AlignConfig(niter=10), **kw)  # fmt: skip


@pytest.fixture(scope="module")
def recon(workdir) -> Reconstruction:
    d, ckpt = workdir
    return _pipe(ckpt).run(d / "clip", progress=False)


def test_reconstruction_is_consistent(recon):
    n, h, w = recon.depths.shape
    assert (n, h, w) == (8, 224, 224) and recon.frames.dtype == np.uint8
    assert recon.meta["pairs"] == len(make_pairs(8, "swinstride-5-noncyclic"))
    assert set(recon.meta["timings"]) >= {"frames", "pairs", "flow", "masks", "align"}
    assert recon.meta["weights_hash"].startswith("sha256:")
    # world points are the depths back-projected through K and the pose, every pixel: float32
    # rounding follows the scene's scale (translations ~100 here), not each pixel's depth
    w2c = np.linalg.inv(recon.poses.astype(np.float64))
    cam = np.einsum("nij,nhwj->nhwi", w2c[:, :3, :3], recon.pts3d) + w2c[:, None, None, :3, 3]
    assert_close(cam[..., 2], recon.depths, rel=1e-6, scale=scale_of(recon.pts3d, recon.poses))
    pts, rgb = recon.point_cloud(frame=2, conf_threshold=1.0)
    assert len(pts) == h * w and np.array_equal(rgb, recon.frames[2].reshape(-1, 3))
    static, _ = recon.point_cloud(frame=2, conf_threshold=1.0, static_only=True)
    assert len(static) == (~recon.dynamic_masks[2]).sum()


def test_output_folder_parses_and_round_trips(recon, tmp_path):
    out = tmp_path / "out"
    paths = recon.save(out)
    assert all(os.path.exists(p) for p in paths.values())
    n, h, w = recon.depths.shape
    names = ["frame_0000.npy", "frame_0007.png", "conf_0007.npy", "dynamic_mask_0007.png",
             "enlarged_dynamic_mask_0000.png", "depth/0007.png", "points/0007.ply"]  # fmt: skip
    for name in names:
        assert (out / name).is_file(), name
    # official files
    _, poses = fileio.read_official_traj(out / "pred_traj.txt")
    assert_poses_close(poses, recon.poses, err_msg="pred_traj.txt")
    k = np.loadtxt(out / "pred_intrinsics.txt").reshape(-1, 3, 3)
    np.testing.assert_allclose(k, recon.intrinsics, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.load(out / "frame_0003.npy"), recon.depths[3])
    np.testing.assert_allclose(np.load(out / "conf_0003.npy"), np.log(recon.conf[3]), rtol=1e-6)
    png = cv2.imread(str(out / "frame_0003.png"))[..., ::-1]
    np.testing.assert_array_equal(png, recon.frames[3])
    mask = cv2.imread(str(out / "dynamic_mask_0003.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask > 0, recon.dynamic_masks[3])
    # TUM trajectory (t tx ty tz qx qy qz qw) read back equals the poses
    times, tum = fileio.read_tum(out / "trajectory_tum.txt")
    np.testing.assert_array_equal(times, np.arange(n))
    assert_poses_close(tum, recon.poses, err_msg="trajectory_tum.txt")
    # 16-bit depth, scale in the PNG's metadata: quantisation error at most half a step
    scale = json.loads((out / "run.json").read_text())["depth_png_scale"]
    d16 = fileio.read_depth_png(out / "depth" / "0005.png")
    assert np.abs(d16 - recon.depths[5]).max() <= 0.5 / scale + 1e-6 * recon.depths.max()
    # PLY
    ply = fileio.read_ply(out / "points" / "0004.ply")
    np.testing.assert_array_equal(np.stack([ply["x"], ply["y"], ply["z"]], -1),
                                  recon.pts3d[4].reshape(-1, 3))  # fmt: skip
    np.testing.assert_array_equal(ply["red"], recon.frames[4, ..., 0].ravel())
    np.testing.assert_array_equal(ply["confidence"], recon.conf[4].ravel())
    np.testing.assert_array_equal(ply["dynamic"] == 1, recon.dynamic_masks[4].ravel())
    # GLB: the static point cloud and one frustum (8 segments) per camera
    gltf, blob = fileio.read_glb(out / "scene.glb")
    prims = gltf["meshes"][0]["primitives"]
    n_static = len(recon.point_cloud(static_only=True)[0])
    assert gltf["accessors"][prims[0]["attributes"]["POSITION"]]["count"] == n_static
    assert gltf["accessors"][prims[1]["attributes"]["POSITION"]]["count"] == 16 * n
    assert len(blob) == gltf["buffers"][0]["byteLength"]
    # COLMAP: images.txt holds the same cameras, cameras.txt the same intrinsics
    names, cposes = fileio.read_colmap_images(out / "colmap" / "images.txt")
    assert names == [f"frame_{i:04d}.png" for i in range(n)]
    # world-to-camera in the file: the float32 rotations' drift from SO(3) times the translation
    # (~136 here) reaches ~1.5e-5 on some CPUs; assert_poses_close scales with both
    assert_poses_close(cposes, recon.poses, err_msg="colmap/images.txt")
    cams = np.loadtxt(out / "colmap" / "cameras.txt", usecols=(4, 5, 6, 7))
    np.testing.assert_allclose(cams[:, 0], recon.intrinsics[:, 0, 0], rtol=1e-6)
    pts3d = np.loadtxt(out / "colmap" / "points3D.txt")
    assert pts3d.shape == (n_static, 8)
    # lossless reload
    back = Reconstruction.load(out)
    for name in ("frames", "depths", "poses", "intrinsics", "conf", "dynamic_masks", "pts3d"):
        np.testing.assert_array_equal(getattr(back, name), getattr(recon, name))
    assert back.names == recon.names and back.meta == json.loads(json.dumps(recon.meta))


def test_existing_output_refused_and_overwrite_is_safe(recon, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        recon.save(out)
    assert (out / "mine.txt").read_text() == "keep me"

    def boom(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio, "write_glb", boom)
    with pytest.raises(KeyboardInterrupt):  # interrupted in the middle of writing
        recon.save(out, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no partial folder left behind
    assert os.listdir(out) == ["mine.txt"]
    monkeypatch.undo()
    recon.save(out, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / "scene.glb").is_file()
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_cli_run_summary_and_errors(workdir, tmp_path, capsys):
    d, ckpt = workdir
    out = tmp_path / "run"
    args = ["run", str(d / "clip.avi"), "-o", str(out), "--weights", str(ckpt), "--size", "224",
            "--niter", "5", "--device", "cpu", "-q"]  # fmt: skip
    assert cli.main(args) == 0
    summary = capsys.readouterr().out
    assert "frames" in summary and "align s" in summary and str(out) in summary
    assert len(Reconstruction.load(out)) == 8
    # an existing output folder is refused before any work
    assert cli.main(args) == 2
    assert "not empty" in capsys.readouterr().err
    # bad inputs: one clear line, exit 2, nothing written
    bad = d / "bad"
    bad.mkdir()
    cases = [
        (tmp_path / "missing.mp4", "missing.mp4"),
        (bad, "bad"),  # empty folder
    ]
    for source, needle in cases:
        target = tmp_path / "never"
        code = cli.main(["run", str(source), "-o", str(target), "--weights", str(ckpt), "-q"])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err, err
        assert not target.exists()
    (bad / "000.png").write_bytes(b"not a png")
    (bad / "001.png").write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1])
    code = cli.main(["run", str(bad), "-o", str(tmp_path / "never"), "--weights", str(ckpt), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "000.png" in err
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_missing_weights_name_the_option(workdir, tmp_path, capsys):
    d, _ = workdir
    code = cli.main(["run", str(d / "clip"), "-o", str(tmp_path / "o"), "--weights",
                     str(tmp_path / "nope.pth"), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "nope.pth" in err


def test_user_masks_replace_computed_ones(workdir):
    d, ckpt = workdir
    masks = np.zeros((8, 224, 224), bool)
    masks[:, 50:90, 60:120] = True
    rec = _pipe(ckpt).run(d / "clip", progress=False, dynamic_masks=masks)
    np.testing.assert_array_equal(rec.dynamic_masks, masks)
    assert rec.meta["config"]["masks"] == "user"
    with pytest.raises(ValueError, match="dynamic_masks must have shape"):
        _pipe(ckpt).run(d / "clip", progress=False, dynamic_masks=masks[:, :10])


def test_headless_render_shows_the_scene(tmp_path):
    """On ground truth (a rendered scene), the still shows the background and the cameras."""
    sc = make_scene(n_frames=6, size=(60, 80), n_objects=1, seed=4)
    n = len(sc.images)
    k = np.tile(sc.intrinsics, (n, 1, 1)).astype(np.float32)
    rays = np.stack(np.meshgrid(np.arange(80), np.arange(60)), -1) - (40, 30)
    cam = np.concatenate([rays / sc.focal, np.ones((60, 80, 1))], -1)[None] * sc.depths[..., None]
    pts = np.einsum("nij,nhwj->nhwi", sc.poses[:, :3, :3], cam) + sc.poses[:, None, None, :3, 3]
    rec = Reconstruction(sc.images, sc.depths, sc.poses.astype(np.float32), k,
                         np.full(sc.depths.shape, 5, np.float32), sc.dynamic_masks,
                         pts.astype(np.float32))  # fmt: skip
    img = render_png(rec, tmp_path / "still.png", size=(120, 160))
    assert (tmp_path / "still.png").is_file() and img.shape == (120, 160, 3)
    assert (np.abs(img.astype(int) - 24).sum(-1) > 0).mean() > 0.1  # the room fills the view


def test_rerun_recording_headless(recon, tmp_path):
    pytest.importorskip("rerun", reason="the viewer's extra 'viz' (rerun-sdk) is not installed")
    from monst3r_rt.viewer import view

    view(recon, save=tmp_path / "rec.rrd")
    data = (tmp_path / "rec.rrd").read_bytes()
    assert data[:4] == b"RRF2" and len(data) > recon.frames.nbytes // 4  # the images are in it


def test_default_weights_offline_names_the_option(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*_a, **_k):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    from monst3r_rt.network import CheckpointError

    with pytest.raises(CheckpointError, match=r"--weights PATH"):
        Pipeline(device="cpu").network()
