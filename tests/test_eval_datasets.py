"""monst3r_rt.eval readers, scoring and driver: tiny datasets written in each dataset's exact
on-disk format (Sintel .dpt/.cam, TUM/Bonn list files and 16-bit PNGs, KITTI 16-bit PNG / 256,
DAVIS palette PNGs) read back against the values written; output folders in this package's
layout and the official demo.py layout scored against closed-form expectations."""

from __future__ import annotations

import csv
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from monst3r_rt.eval import (
    PAPER,
    Bonn,
    DatasetError,
    Davis,
    KittiDepth,
    Sintel,
    TUMDynamics,
    associate,
    evaluate,
    markdown_table,
    pose_metrics,
    read_prediction,
    score_sequence,
    write_cam,
    write_dpt,
)
from monst3r_rt.fileio import write_official_traj
from monst3r_rt.geometry import rotmat_to_quat_xyzw, rotvec_to_rotmat
from monst3r_rt.reconstruction import Reconstruction

H, W = 12, 16


def _traj(rng: np.random.Generator, n: int) -> np.ndarray:
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, :3] = [rotvec_to_rotmat(r) for r in np.cumsum(rng.normal(0, 0.1, (n, 3)), 0)]
    poses[:, :3, 3] = np.cumsum(rng.normal(0, 0.3, (n, 3)), 0)
    return poses


def _img(path, rng, h=H, w=W) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _png16(path, values) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), np.asarray(values, np.uint16))


# ------------------------------------------------------------------------------------------------
# Sintel
# ------------------------------------------------------------------------------------------------
def _sintel_seq(root, seq, rng, n=5, depth=None):
    """Writes a Sintel sequence; returns (depth (n,H,W), c2w (n,4,4))."""
    tr = root / "training"
    for k in ("final", "depth", "camdata_left"):
        (tr / k / seq).mkdir(parents=True, exist_ok=True)
    depth = rng.uniform(1, 20, (n, H, W)).astype(np.float32) if depth is None else depth
    c2w = _traj(rng, n)
    k = np.array([[50.0, 0, 8], [0, 50, 6], [0, 0, 1]])
    for i in range(n):
        name = f"frame_{i + 1:04d}"
        _img(tr / "final" / seq / f"{name}.png", rng)
        write_dpt(tr / "depth" / seq / f"{name}.dpt", depth[i])
        write_cam(tr / "camdata_left" / seq / f"{name}.cam", k, np.linalg.inv(c2w[i])[:3])
    return depth, c2w


def test_sintel_reader_round_trip_and_missing_files(tmp_path, rng):
    depth, c2w = _sintel_seq(tmp_path, "alley_2", rng)
    ds = Sintel(tmp_path)
    assert len(ds.sequences()) == 23 and len(ds.pose_sequences()) == 14
    assert set(ds.pose_sequences()) <= set(ds.sequences())
    data = ds.load("alley_2")
    assert [os.path.basename(p) for p in data.images] == [
        f"frame_{i:04d}.png" for i in (1, 2, 3, 4, 5)
    ]
    np.testing.assert_array_equal(data.depth, depth)
    np.testing.assert_allclose(data.poses, c2w, atol=1e-12)
    # a missing camera file is named
    os.remove(tmp_path / "training/camdata_left/alley_2/frame_0003.cam")
    with pytest.raises(DatasetError, match="frame_0003.cam"):
        ds.load("alley_2")
    # an extra depth file (frame count differs from the ground truth): an error, not a truncation
    write_cam(tmp_path / "training/camdata_left/alley_2/frame_0003.cam", np.eye(3), np.eye(4)[:3])
    write_dpt(tmp_path / "training/depth/alley_2/frame_0006.dpt", depth[0])
    with pytest.raises(ValueError, match="6 .dpt files for 5 frames"):
        ds.load("alley_2")
    # a sequence that is not there is named, with all other problems, by check_all
    with pytest.raises(DatasetError, match="final/cave_2"):
        ds.check_all(["alley_2", "cave_2"])


# ------------------------------------------------------------------------------------------------
# TUM and Bonn
# ------------------------------------------------------------------------------------------------
def test_associate_matches_brute_force(rng):
    a = np.sort(rng.uniform(0, 10, 200))
    b = np.sort(rng.uniform(0, 10, 600))
    pairs = associate(a, b, 0.02)
    # reference: TUM's associate.py, written out as its loop
    cand = sorted((abs(x - y), i, j) for i, x in enumerate(a) for j, y in enumerate(b)
                  if abs(x - y) < 0.02)  # fmt: skip
    ua, ub, ref = set(), set(), []
    for _, i, j in cand:
        if i not in ua and j not in ub:
            ua.add(i)
            ub.add(j)
            ref.append((i, j))
    assert pairs == sorted(ref) and len(pairs) > 50


def test_tum_reader_association_and_subsampling(tmp_path, rng):
    seq = "rgbd_dataset_freiburg3_walking_xyz"
    d = tmp_path / seq
    (d / "rgb").mkdir(parents=True)
    t_rgb = 1305031102.0 + np.arange(300) / 30.0
    with open(d / "rgb.txt", "w") as f:
        f.write("# color images\n# file: 'x.bag'\n# timestamp filename\n")
        for t in t_rgb:
            f.write(f"{t:.6f} rgb/{t:.6f}.png\n")
            (d / "rgb" / f"{t:.6f}.png").write_bytes(b"")
    t_gt = 1305031102.0 + 0.003 + np.arange(0, 10.5, 0.01)
    t_gt = t_gt[np.abs(t_gt - t_rgb[5]) > 0.025]  # frame 5: no gt within 0.02 s, dropped
    poses = _traj(rng, len(t_gt))
    q = rotmat_to_quat_xyzw(poses[:, :3, :3], positive_w=True)
    with open(d / "groundtruth.txt", "w") as f:
        f.write("# ground truth trajectory\n# timestamp tx ty tz qx qy qz qw\n")
        for t, p, qq in zip(t_gt, poses, q, strict=True):
            f.write(f"{t:.4f} " + " ".join(f"{v:.9f}" for v in (*p[:3, 3], *qq)) + "\n")
    data = TUMDynamics(tmp_path).load(seq)
    kept = [t for k, t in enumerate(t_rgb) if k != 5][::3][:90]
    assert len(data.images) == 90
    np.testing.assert_allclose(data.timestamps, kept, atol=1e-6)
    nearest = [int(np.argmin(np.abs(t_gt - t))) for t in kept]
    np.testing.assert_allclose(data.poses, poses[nearest], atol=1e-6)
    assert data.depth is None
    with pytest.raises(DatasetError, match="rgbd_dataset_freiburg3_sitting_rpy"):
        TUMDynamics(tmp_path).check("rgbd_dataset_freiburg3_sitting_rpy")


def test_bonn_reader_frames_30_to_140_and_depth_scale(tmp_path, rng):
    d = tmp_path / "rgbd_bonn_dataset" / "rgbd_bonn_crowd2"
    raw = rng.integers(0, 60000, (150, 4, 5)).astype(np.uint16)
    raw[:, 0, 0] = 0
    for i in range(150):
        name = f"{1548266469.0 + i / 30:.5f}.png"
        _img(d / "rgb" / name, rng, 4, 5)
        _png16(d / "depth" / name, raw[i])
    data = Bonn(tmp_path).load("rgbd_bonn_crowd2")
    assert len(data.images) == 110 and data.depth.dtype == np.float32
    np.testing.assert_allclose(data.depth, raw[30:140] / 5000.0, rtol=1e-6)
    assert (data.depth[:, 0, 0] == 0).all()
    np.testing.assert_allclose(data.timestamps[0], 1548266469.0 + 1.0, atol=1e-4)
    os.remove(sorted((d / "depth").iterdir())[-1])
    with pytest.raises(ValueError, match="150 rgb and 149 depth"):
        Bonn(tmp_path).load("rgbd_bonn_crowd2")


# ------------------------------------------------------------------------------------------------
# KITTI and DAVIS
# ------------------------------------------------------------------------------------------------
def test_kitti_reader_png_over_256_first_110(tmp_path, rng):
    drive = "2011_09_26_drive_0002_sync"
    gt = tmp_path / "val" / drive / "proj_depth" / "groundtruth" / "image_02"
    img = tmp_path / "raw" / "2011_09_26" / drive / "image_02" / "data"
    raw = rng.integers(0, 30000, (112, 3, 4)).astype(np.uint16)
    for i in range(112):
        name = f"{i + 5:010d}.png"
        _png16(gt / name, raw[i])
        _img(img / name, rng, 3, 4)
    ds = KittiDepth(tmp_path)
    assert ds.sequences() == [drive]
    data = ds.load(drive)
    assert len(data.images) == 110 and data.images[0].endswith("0000000005.png")
    np.testing.assert_allclose(data.depth, raw[:110] / 256.0, rtol=1e-6)
    os.remove(img / "0000000010.png")
    with pytest.raises(DatasetError, match="0000000010.png"):
        ds.load(drive)


def test_davis_reader_palette_masks(tmp_path, rng):
    seq = "bear"
    labels = rng.integers(0, 3, (3, 6, 7)).astype(np.uint8)
    palette = [200, 10, 10, 0, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9)  # index 0 is not black
    for i in range(3):
        _img(tmp_path / "JPEGImages" / "480p" / seq / f"{i:05d}.jpg", rng, 6, 7)
        (tmp_path / "Annotations" / "480p" / seq).mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(labels[i], "P")
        im.putpalette(palette)
        im.save(tmp_path / "Annotations" / "480p" / seq / f"{i:05d}.png")
    ds = Davis(tmp_path)
    assert ds.sequences() == [seq]
    data = ds.load(seq)
    np.testing.assert_array_equal(data.masks, labels != 0)
    os.remove(tmp_path / "Annotations" / "480p" / seq / "00001.png")
    with pytest.raises(DatasetError, match="00001.png"):
        ds.load(seq)


# ------------------------------------------------------------------------------------------------
# scoring output folders
# ------------------------------------------------------------------------------------------------
def _recon(depth: np.ndarray, poses: np.ndarray) -> Reconstruction:
    n, h, w = depth.shape
    k = np.tile(np.array([[20.0, 0, w / 2], [0, 20, h / 2], [0, 0, 1]], np.float32), (n, 1, 1))
    return Reconstruction(
        frames=np.zeros((n, h, w, 3), np.uint8), depths=depth.astype(np.float32),
        poses=poses.astype(np.float32), intrinsics=k, conf=np.full((n, h, w), 2.0, np.float32),
        dynamic_masks=np.zeros((n, h, w), bool), pts3d=np.zeros((n, h, w, 3), np.float32),
    )  # fmt: skip


def _official(folder, depth: np.ndarray, poses: np.ndarray) -> None:
    os.makedirs(folder)
    for i, d in enumerate(depth):
        np.save(os.path.join(folder, f"frame_{i}.npy"), d.astype(np.float32))  # unpadded
        np.save(os.path.join(folder, f"conf_{i}.npy"), np.zeros_like(d))  # not a depth file
        cv2.imwrite(os.path.join(folder, f"dynamic_mask_{i}.png"), np.zeros(d.shape, np.uint8))
    write_official_traj(os.path.join(folder, "pred_traj.txt"), poses)


def _sim3(poses: np.ndarray, s: float, rng) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = rotvec_to_rotmat(rng.normal(0, 1, 3))
    t[:3, 3] = rng.normal(0, 2, 3)
    out = t @ poses
    out[:, :3, 3] = (t[:3, :3] @ poses[:, :3, 3].T).T * s + t[:3, 3]
    return out


@pytest.fixture
def sintel_case(tmp_path, rng):
    """Two Sintel sequences with constant depth 5 (plus invalid 0 and capped 80 pixels), a
    prediction = 3.7 × gt except a known pixel set at 2× (AbsRel = δ-miss = its fraction)."""
    root = tmp_path / "sintel"
    gts, preds, fracs = {}, {}, {}
    for seq in ("alley_2", "alley_1"):
        depth = np.full((5, H, W), 5.0, np.float32)
        depth[:, 0, :] = 0  # invalid
        depth[:, 1, :3] = 80  # at or above the cap 70: not ground truth
        gts[seq] = (depth, _sintel_seq(root, seq, rng, depth=depth)[1])
        pred = 3.7 * depth.copy()
        pred[:, 0, :] = np.nan  # prediction where the gt is invalid: ignored
        bad = np.zeros(depth.shape, bool)
        bad[:, 5:7, :] = True
        pred[bad] *= 2
        valid = (depth > 0) & (depth < 70)
        fracs[seq] = (bad & valid).sum() / valid.sum()
        preds[seq] = (pred, _sim3(gts[seq][1], 0.3, rng))
    return root, gts, preds, fracs


def test_score_both_layouts_against_closed_forms(sintel_case, tmp_path):
    root, gts, preds, fracs = sintel_case
    ds = Sintel(root)
    data = ds.load("alley_2")
    pred, poses = preds["alley_2"]
    ours, off = tmp_path / "ours", str(tmp_path / "official")
    _recon(pred, poses).save(ours)
    _official(off, pred, poses)
    results = []
    for folder, layout in ((ours, "monst3r_rt"), (off, "official")):
        p = read_prediction(folder)
        assert p.layout == layout and len(p) == 5
        r = score_sequence(p, data, "sintel", align="median")
        np.testing.assert_allclose(r["abs_rel"], fracs["alley_2"], rtol=1e-6)
        np.testing.assert_allclose(r["delta_1_25"], 1 - fracs["alley_2"], rtol=1e-6)
        assert r["invalid_pred"] == 0 and r["valid_pixels"] == 5 * (H - 1) * W - 5 * 3
        assert r["ate"] < 1e-5 and r["rpe_trans"] < 1e-5 and r["rpe_rot"] < 1e-3
        results.append(r)
    # the layouts agree on the depth metrics; their pose errors are float32 storage noise, each
    # bounded above (comparing two noise values would depend on the CPU's rounding)
    for k in ("abs_rel", "delta_1_25"):
        np.testing.assert_allclose(results[0][k], results[1][k], rtol=1e-5)
    # ground truth as prediction, at another resolution (cubic resize of a constant is exact)
    gt_pred = np.full((5, H // 2, W // 2), 2.0, np.float32)
    folder = str(tmp_path / "gt_official")
    _official(folder, gt_pred, data.poses)
    r = score_sequence(read_prediction(folder), data, "sintel", align="lad")
    assert r["abs_rel"] < 1e-3 and r["delta_1_25"] == 1.0 and r["ate"] < 1e-6  # %.8f text


def test_score_bad_inputs_are_named(sintel_case, tmp_path):
    root, gts, preds, _ = sintel_case
    data = Sintel(root).load("alley_2")
    pred, poses = preds["alley_2"]
    short = str(tmp_path / "short")
    _official(short, pred[:4], poses[:4])
    with pytest.raises(ValueError, match="4 predicted frames.*has 5"):
        score_sequence(read_prediction(short), data, "sintel")
    gap = str(tmp_path / "gap")
    _official(gap, pred, poses)
    os.remove(os.path.join(gap, "frame_2.npy"))
    with pytest.raises(ValueError, match=r"frames \[2\] are missing"):
        read_prediction(gap)
    with pytest.raises(FileNotFoundError, match="no prediction"):
        read_prediction(tmp_path)  # a folder with neither layout
    # NaN / negative predictions at valid gt pixels: counted, never silent
    bad = pred.copy()
    bad[0, 3, 3], bad[0, 4, 4] = np.nan, -1.0
    folder = str(tmp_path / "nan")
    _official(folder, bad, poses)
    r = score_sequence(read_prediction(folder), data, "sintel", align="median")
    assert r["invalid_pred"] == 1 and r["nonpositive_pred"] == 1


def test_evaluate_predictions_writes_csv_json_table(sintel_case, tmp_path):
    root, gts, preds, fracs = sintel_case
    pred_dir = tmp_path / "preds"
    _recon(*preds["alley_2"]).save(pred_dir / "alley_2")
    _official(str(pred_dir / "alley_1"), *preds["alley_1"])
    out = tmp_path / "results"
    res = evaluate("sintel", root, out, predictions=pred_dir, sequences=["alley_2", "alley_1"],
                   align="median", log=lambda s: None)  # fmt: skip
    # alley_1 is not a pose sequence: scored on depth only
    assert "ate" in res["per_sequence"]["alley_2"] and "ate" not in res["per_sequence"]["alley_1"]
    w = np.array([r["valid_pixels"] for r in res["per_sequence"].values()])
    want = np.dot(w, [fracs["alley_2"], fracs["alley_1"]]) / w.sum()
    np.testing.assert_allclose(res["mean"]["abs_rel"], want)
    with open(res["paths"]["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["sequence"] for r in rows] == ["alley_2", "alley_1", "mean"]
    np.testing.assert_allclose(float(rows[-1]["abs_rel"]), res["mean"]["abs_rel"])
    with open(res["paths"]["json"]) as f:
        doc = json.load(f)
    assert doc["paper"] == PAPER["sintel"] and doc["info"]["mode"] == "predictions"
    table = open(res["paths"]["table"]).read()
    assert "| MonST3R (paper) | 0.335 | 58.5 |" in table
    assert "| MonST3R (paper) | 0.108 | 0.042 | 0.732 |" in table
    ours = f"| monst3r_rt (predictions) | {res['mean']['abs_rel']:.3f} |"
    assert ours in table  # the row says how its numbers were made
    with pytest.raises(FileNotFoundError, match=r"\['alley_1'\]"):
        os.rename(pred_dir / "alley_1", tmp_path / "moved")
        evaluate("sintel", root, out, predictions=pred_dir, sequences=["alley_2", "alley_1"])


def test_markdown_table_layout():
    means = {"sintel": {"abs_rel": 0.3, "delta_1_25": 0.6, "ate": 0.1, "rpe_trans": 0.04,
                        "rpe_rot": 0.7},
             "bonn": {"abs_rel": 0.07, "delta_1_25": 0.95}}  # fmt: skip
    assert markdown_table(means, "ours") == (
        "| Video depth (per-sequence scale & shift) | Sintel Abs Rel ↓ | Sintel δ<1.25 ↑ "
        "| Bonn Abs Rel ↓ | Bonn δ<1.25 ↑ |\n"
        "|---|---|---|---|---|\n"
        "| MonST3R (paper) | 0.335 | 58.5 | 0.063 | 96.4 |\n"
        "| ours | 0.300 | 60.0 | 0.070 | 95.0 |\n\n"
        "| Camera pose | Sintel ATE ↓ | Sintel RPE trans ↓ | Sintel RPE rot (deg) ↓ |\n"
        "|---|---|---|---|\n"
        "| MonST3R (paper) | 0.108 | 0.042 | 0.732 |\n"
        "| ours | 0.100 | 0.040 | 0.700 |\n"
    )


# ------------------------------------------------------------------------------------------------
# runs: resumable, offline and stream plumbing (stub runners: no weights)
# ------------------------------------------------------------------------------------------------
class _StubPipeline:
    """Stands in for Pipeline: returns the ground truth of the frames it is given."""

    def __init__(self, gts):
        self.gts, self.calls = gts, []

    def run(self, images, progress=True):
        seq = os.path.basename(os.path.dirname(images[0]))
        self.calls.append(seq)
        depth, poses = self.gts[seq]
        return _recon(np.where(depth > 0, depth, 1.0), poses)


class _StubStream:
    def __init__(self, out, gts):
        self.out, self.gts, self.n = out, gts, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def push(self, image):
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        self.n += 1

    def close(self):
        depth, poses = self.gts[os.path.basename(self.out)]
        assert self.n == len(depth)
        rec = _recon(np.where(depth > 0, depth, 1.0), poses)
        rec.save(self.out)
        return rec


def test_evaluate_runs_resumes_and_streams(sintel_case, tmp_path):
    root, gts, _, _ = sintel_case
    pipe = _StubPipeline(gts)
    out = tmp_path / "res"
    seqs = ["alley_2", "alley_1"]
    res = evaluate("sintel", root, out, sequences=seqs, pipeline=pipe, align="median",
                   log=lambda s: None)  # fmt: skip
    assert pipe.calls == seqs
    assert res["mean"]["abs_rel"] < 1e-6 and res["mean"]["ate"] < 1e-5
    assert (out / "alley_2" / "reconstruction.npz").is_file()
    res2 = evaluate("sintel", root, out, sequences=seqs, pipeline=pipe, align="median",
                    log=lambda s: None)  # fmt: skip
    assert pipe.calls == seqs  # resumed: nothing run again
    assert res2["mean"] == res["mean"]
    # a foreign folder where an output belongs is refused before any run
    (tmp_path / "res2" / "alley_1").mkdir(parents=True)
    (tmp_path / "res2" / "alley_1" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="alley_1"):
        evaluate("sintel", root, tmp_path / "res2", sequences=seqs, pipeline=pipe)
    res3 = evaluate("sintel", root, tmp_path / "res3", sequences=seqs, mode="stream",
                    stream_factory=lambda o: _StubStream(o, gts), log=lambda s: None)  # fmt: skip
    assert res3["mean"]["delta_1_25"] == 1.0 and res3["mean"]["ate"] < 1e-5
    with pytest.raises(ValueError, match="need a run"):
        evaluate("sintel", root, tmp_path / "res4", sequences=seqs, mode="stream")


def test_pose_metrics_reference_for_sim3(rng):
    """The closed form the scoring tests rely on: a Sim(3) copy of a trajectory scores 0."""
    gt = _traj(rng, 10)
    r = pose_metrics(_sim3(gt, 0.3, rng), gt)
    assert r["ate"] < 1e-9 and r["rpe_rot"] < 1e-5


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def test_cli_eval_predictions_and_errors(sintel_case, tmp_path, capsys):
    from monst3r_rt.cli import main

    root, _, preds, _ = sintel_case
    _official(str(tmp_path / "preds" / "alley_2"), *preds["alley_2"])
    out = tmp_path / "out"
    argv = ["eval", "--dataset", "sintel", "--root", str(root), "--predictions",
            str(tmp_path / "preds"), "--sequences", "alley_2", "-o", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| MonST3R (paper) | 0.335 | 58.5 |" in text and "table.md" in text
    assert (out / "metrics.csv").is_file()
    assert main([*argv[:-5], "--sequences", "cave_2", "-o", str(tmp_path / "o2")]) == 2
    assert "cave_2" in capsys.readouterr().err  # missing dataset folder named, no traceback


def test_cli_eval_offline_run_tiny_checkpoint(workdir, tmp_path, rng, capsys):
    """The real pipeline on 4 tiny frames with a random checkpoint: plumbing and resume only."""
    from monst3r_rt.cli import main

    _, ckpt = workdir
    root = tmp_path / "sintel"
    _sintel_seq(root, "alley_2", rng, n=4)
    out = tmp_path / "out"
    argv = ["eval", "--dataset", "sintel", "--root", str(root), "--sequences", "alley_2",
            "-o", str(out), "--weights", str(ckpt), "--backend", "torch", "--device", "cpu",
            "--size", "224", "--niter", "5"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert "running offline on 4 frames" in capsys.readouterr().err
    with open(out / "metrics.json") as f:
        doc = json.load(f)
    assert doc["per_sequence"]["alley_2"]["frames"] == 4
    assert np.isfinite(doc["mean"]["abs_rel"])
    assert main(argv) == 0
    assert "not run again" in capsys.readouterr().err


def test_cli_eval_refuses_another_configuration(workdir, tmp_path, rng, capsys, monkeypatch):
    """``monst3r-rt eval`` into a results folder of another --niter, --size or --weights is a
    one-line error naming the folder and --overwrite, before any run; the same options resume
    without running; --overwrite recomputes."""
    torch = pytest.importorskip("torch")
    from tiny_models import TINY_LINEAR

    from monst3r_rt.cli import main
    from monst3r_rt.network import PointmapNet, save_checkpoint
    from monst3r_rt.pipeline import Pipeline

    _, ckpt = workdir
    torch.manual_seed(1)
    other = save_checkpoint(PointmapNet(**TINY_LINEAR), tmp_path / "other.pth")
    root = tmp_path / "sintel"
    _sintel_seq(root, "alley_2", rng, n=4)
    out = tmp_path / "out"
    runs = []
    real_run = Pipeline.run
    monkeypatch.setattr(Pipeline, "run", lambda self, *a, **k: runs.append(1) or
                        real_run(self, *a, **k))  # fmt: skip
    base = ["eval", "--dataset", "sintel", "--root", str(root), "--sequences", "alley_2",
            "-o", str(out), "--backend", "torch", "--device", "cpu", "-q"]  # fmt: skip
    argv = [*base, "--weights", str(ckpt), "--size", "224", "--niter", "5"]
    assert main(argv) == 0 and len(runs) == 1, capsys.readouterr().err
    assert main(argv) == 0 and len(runs) == 1  # same options: resumed
    capsys.readouterr()
    for change in (["--niter", "6"], ["--size", "512"], ["--weights", str(other)]):
        changed = [*base, "--weights", str(ckpt), "--size", "224", "--niter", "5", *change]
        assert main(changed) == 2
        err = capsys.readouterr().err.strip()
        assert str(out / "alley_2") in err and "--overwrite" in err and "\n" not in err, err
        assert len(runs) == 1
    assert main([*argv[:-1], "6", "--overwrite"]) == 0 and len(runs) == 2  # recomputed
    assert main([*argv[:-1], "6"]) == 0 and len(runs) == 2  # and now resumed


def test_evaluate_refuses_a_complete_folder_of_the_other_mode(sintel_case, tmp_path):
    """A rerun into a results folder whose sequence folders hold the other mode's complete runs
    is refused before any run (their numbers would be reported as this mode's); the same
    mode resumes."""
    root, gts, _, _ = sintel_case
    seqs = ["alley_2", "alley_1"]

    class Streamed(_StubStream):
        def close(self):
            rec = super().close()  # saved without a mode: add it as Stream.close() records it
            meta_path = os.path.join(self.out, "run.json")
            with open(meta_path) as f:
                meta = json.load(f)
            with open(meta_path, "w") as f:
                json.dump({**meta, "mode": "stream"}, f)
            return rec

    out = tmp_path / "res"
    evaluate("sintel", root, out, sequences=seqs[:1], mode="stream",
             stream_factory=lambda o: Streamed(o, gts), log=lambda s: None)  # fmt: skip
    pipe = _StubPipeline(gts)
    with pytest.raises(FileExistsError, match=r"alley_2 holds a complete 'stream' run"):
        evaluate("sintel", root, out, sequences=seqs, pipeline=pipe, log=lambda s: None)
    assert pipe.calls == [] and not (out / "alley_1").exists()
    made = []
    res = evaluate("sintel", root, out, sequences=seqs, mode="stream", align="median",
                   stream_factory=lambda o: made.append(o) or Streamed(o, gts),
                   log=lambda s: None)  # fmt: skip
    # written in a temporary folder of that name beside results/alley_1, then renamed there
    assert [(os.path.dirname(os.path.dirname(m)), os.path.basename(m)) for m in made] == [
        (str(out), "alley_1")] and res["mean"]["abs_rel"] < 1e-6  # fmt: skip


def test_evaluate_resumes_only_the_same_configuration(sintel_case, tmp_path):
    """With a configuration fingerprint, a complete sequence folder is resumed only when its
    run.json records the same one; another (or none) is refused before any run, naming the
    folder, unless overwrite recomputes it (replaced atomically, nothing left beside it)."""
    from monst3r_rt.batch import stored_fingerprint

    root, gts, _, _ = sintel_case
    seqs = ["alley_2", "alley_1"]
    out = tmp_path / "res"
    pipe = _StubPipeline(gts)

    def run(fp, **kw):
        return evaluate("sintel", root, out, sequences=seqs, pipeline=pipe, align="median",
                        fingerprint=fp, log=lambda s: None, **kw)  # fmt: skip

    first = run("sha256:a")
    assert pipe.calls == seqs and stored_fingerprint(out / "alley_1", "eval") == "sha256:a"
    assert run("sha256:a")["mean"] == first["mean"] and pipe.calls == seqs  # resumed
    assert run("sha256:a", overwrite=True) and pipe.calls == seqs  # same config: still kept
    for fp in ("sha256:b", None):  # another configuration; a folder that records none
        if fp is None:
            (out / "alley_2" / "run.json").write_text("{}")
            fp = "sha256:a"
        with pytest.raises(FileExistsError, match=r"holds a run of another configuration") as e:
            run(fp)
        msg = str(e.value)
        assert str(out / "alley_2") in msg and "--overwrite" in msg and "\n" not in msg
        assert pipe.calls == seqs  # refused before any run
    run("sha256:b", overwrite=True)
    assert pipe.calls == seqs * 2
    assert [stored_fingerprint(out / s, "eval") for s in seqs] == ["sha256:b"] * 2
    assert sorted(os.listdir(out)) == ["alley_1", "alley_2", "metrics.csv", "metrics.json",
                                       "table.md"]  # fmt: skip
    with open(out / "metrics.json") as f:
        assert json.load(f)["info"]["fingerprint"] == "sha256:b"


def test_evaluate_refuses_foreign_folder_before_any_run(sintel_case, tmp_path):
    """A non-empty <seq>/ without reconstruction.npz is refused, naming it, before the first run
    (offline and stream); our own leftover .<seq>.partial-* temporaries are removed."""
    root, gts, _, _ = sintel_case
    seqs = ["alley_2", "alley_1"]
    for mode in ("offline", "stream"):
        out = tmp_path / f"res_{mode}"
        (out / "alley_1").mkdir(parents=True)
        (out / "alley_1" / "x.txt").write_text("x")
        pipe, made = _StubPipeline(gts), []

        def factory(o, made=made):
            made.append(o)
            return _StubStream(o, gts)

        with pytest.raises(FileExistsError, match=str(out / "alley_1")):
            evaluate("sintel", root, out, sequences=seqs, mode=mode, pipeline=pipe,
                     stream_factory=factory, log=lambda s: None)  # fmt: skip
        assert pipe.calls == [] and made == [] and not (out / "alley_2").exists()
    # a file where a sequence folder belongs: refused too
    out = tmp_path / "res_file"
    out.mkdir()
    (out / "alley_1").write_text("x")
    pipe = _StubPipeline(gts)
    with pytest.raises(FileExistsError, match=str(out / "alley_1")):
        evaluate("sintel", root, out, sequences=seqs, pipeline=pipe, log=lambda s: None)
    assert pipe.calls == [] and not (out / "alley_2").exists()
    # a crashed run's temporary folder (ours, by its name) is cleaned, the sequence runs
    out = tmp_path / "res_partial"
    (out / ".alley_1.partial-abc123").mkdir(parents=True)
    (out / ".alley_1.partial-abc123" / "depth_0000.npy").write_text("x")
    (out / ".alley_1.old-abc").mkdir()  # not ours to clean: left alone
    pipe = _StubPipeline(gts)
    res = evaluate("sintel", root, out, sequences=seqs, pipeline=pipe, align="median",
                   log=lambda s: None)  # fmt: skip
    assert pipe.calls == seqs and res["mean"]["abs_rel"] < 1e-6
    assert sorted(os.listdir(out)) == [".alley_1.old-abc", "alley_1", "alley_2", "metrics.csv",
                                       "metrics.json", "table.md"]  # fmt: skip


def test_evaluate_stream_mode_real_stream_simulated_network(tmp_path):
    """evaluate(mode="stream") through the real Stream (make_stream_factory, as the CLI) with a
    simulated network giving exact predictions: the scores are those of a perfect method."""
    from monst3r_rt.eval import make_stream_factory
    from monst3r_rt.synthetic import SimulatedBackend, make_scene

    scene = make_scene(n_frames=8, size=(64, 112), graph=None, seed=0)
    root, seq = tmp_path / "sintel", "alley_2"
    tr = root / "training"
    for k in ("final", "depth", "camdata_left"):
        (tr / k / seq).mkdir(parents=True)
    k_mat = scene.intrinsics
    for i in range(len(scene.images)):
        name = f"frame_{i + 1:04d}"
        cv2.imwrite(str(tr / "final" / seq / f"{name}.png"), scene.images[i][..., ::-1])
        write_dpt(tr / "depth" / seq / f"{name}.dpt", scene.depths[i].astype(np.float32))
        write_cam(tr / "camdata_left" / seq / f"{name}.cam", k_mat,
                  np.linalg.inv(scene.poses[i])[:3])  # fmt: skip
    backend = SimulatedBackend(scene)
    factory = make_stream_factory(backend=backend, size=112)
    res = evaluate("sintel", root, tmp_path / "res", sequences=[seq], mode="stream",
                   stream_factory=factory, align="median", log=lambda s: None)  # fmt: skip
    assert backend.encoded == len(scene.images)  # every frame went through the network once
    r = res["per_sequence"][seq]
    assert r["frames"] == 8 and r["invalid_pred"] == 0
    assert r["abs_rel"] < 1e-4 and r["delta_1_25"] == 1.0
    extent = np.linalg.norm(scene.poses[:, :3, 3] - scene.poses[:1, :3, 3], axis=1).max()
    assert r["ate"] < 1e-4 * extent
    assert (tmp_path / "res" / seq / "reconstruction.npz").is_file()
