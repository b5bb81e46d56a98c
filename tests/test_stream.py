"""The streaming mode on a simulated network (ground-truth-derived predictions of a rendered
dynamic scene): trajectory and depth recovery, agreement with the offline alignment, masks, one
encode per frame, bounded memory, the output folder, interrupts and bad input."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from tolerance import assert_poses_close, scale_of

from monst3r_rt import Backend, Stream, StreamConfig, stream_video
from monst3r_rt.frames import FrameError
from monst3r_rt.geometry import pair_moments, umeyama
from monst3r_rt.reconstruction import Reconstruction
from monst3r_rt.synthetic import SimulatedBackend, make_scene

SIZE = (64, 112)  # (H, W): multiples of 16, so preprocessing at size=112 keeps the frames as is


def ate(pred: np.ndarray, gt: np.ndarray) -> float:
    """RMSE of camera centres after the Sim(3) (Umeyama) alignment of pred onto gt."""
    s, r, t = umeyama(pair_moments(pred[:, :3, 3], gt[:, :3, 3]))
    moved = s * pred[:, :3, 3] @ r.T + t
    return float(np.sqrt(np.mean(np.sum((moved - gt[:, :3, 3]) ** 2, -1))))


@pytest.fixture(scope="module")
def scene():
    return make_scene(n_frames=24, size=SIZE, graph=None, n_objects=1, object_motion=0.08, seed=3)


def _run(scene, n=None, *, config=None, backend=None, output=None, **bk):
    backend = backend or SimulatedBackend(scene, **bk)
    cfg = config or StreamConfig(refine="sync", keyframe_max_gap=5)
    stream = Stream(backend=backend, size=SIZE[1], config=cfg, output=output)
    results = [stream.push(im) for im in scene.images[:n]]
    return stream, results, stream.close()


def test_exact_predictions_recover_trajectory_and_depth(scene):
    stream, results, rec = _run(scene, scale_range=(0.5, 2.0))
    gt = scene.poses
    extent = scale_of(gt[:, :3, 3] - gt[:1, :3, 3])
    causal = np.stack([r.pose for r in results])
    assert ate(causal, gt) < 1e-3 * extent
    assert ate(rec.poses.astype(np.float64), gt) < 1e-3 * extent
    # depths exact up to one scale for the whole stream
    ratio = rec.depths / scene.depths
    assert np.nanstd(ratio) < 1e-3 * np.nanmedian(ratio)
    # the first camera is the world
    assert np.allclose(results[0].pose, np.eye(4))
    # intrinsics: the shared focal is the scene's
    assert np.allclose(rec.intrinsics[:, 0, 0], scene.focal, rtol=1e-3)


def test_one_encode_per_frame_and_decoder_budget(scene):
    backend = SimulatedBackend(scene)
    stream, results, _ = _run(scene, backend=backend)
    n = len(scene.images)
    assert backend.encoded == n == stream.encodes
    assert backend.decoded == stream.decodes == sum(r.decodes for r in results)
    kfs = sum(r.keyframe for r in results)
    # one pass per frame, one more per keyframe link beyond the tracking pair
    assert stream.decodes <= n + (StreamConfig().keyframe_links - 1) * kfs
    assert stream.decodes / n <= 2.0
    assert results[0].keyframe and kfs >= 2


def test_noisy_predictions_close_to_offline_alignment(scene):
    from monst3r_rt import global_align, infer_pairs, load_frames, make_pairs
    from monst3r_rt.align import AlignConfig

    noise = dict(depth_noise=0.03, pose_noise=0.01, scale_range=(0.5, 2.0), seed=1)
    _, results, rec = _run(scene, **noise)
    frames = load_frames(list(scene.images), size=SIZE[1])
    preds = infer_pairs(
        SimulatedBackend(scene, **noise),
        frames,
        make_pairs(len(scene.images), "swinstride-5-noncyclic"),
        progress=False,
    )
    off = global_align(preds, config=AlignConfig(solver="lm"))
    gt = scene.poses
    offline = ate(off.poses.astype(np.float64), gt)
    assert ate(rec.poses.astype(np.float64), gt) < 1.5 * offline + 1e-3 * scale_of(gt[:, :3, 3])
    assert ate(np.stack([r.pose for r in results]), gt) < 3.0 * offline + 1e-2


def test_masks_recover_moving_objects():
    # DIS needs a few pixels of object motion: a larger frame than the other tests'
    scene = make_scene(
        n_frames=12, size=(144, 256), graph=None, n_objects=2, object_motion=0.05, seed=3
    )
    stream = Stream(backend=SimulatedBackend(scene), size=256, config=StreamConfig(refine="off"))
    results = [stream.push(im) for im in scene.images]
    rec = stream.close()
    assert all(
        np.array_equal(r.dynamic_mask, m) for r, m in zip(results, rec.dynamic_masks, strict=True)
    )
    gt = scene.dynamic_masks
    inter = (rec.dynamic_masks[1:] & gt[1:]).sum()
    union = (rec.dynamic_masks[1:] | gt[1:]).sum()
    assert inter / union > 0.5
    false_pos = (rec.dynamic_masks[1:] & ~gt[1:]).sum() / (~gt[1:]).sum()
    assert false_pos < 0.05
    assert not rec.dynamic_masks[0].any()  # no previous frame: nothing can be called moving
    # the geometric (flow-free) fallback finds the object too
    stream = Stream(
        backend=SimulatedBackend(scene),
        size=256,
        config=StreamConfig(refine="off", masks="geometric"),
    )
    for im in scene.images:
        stream.push(im)
    geo = stream.close()
    hit = (geo.dynamic_masks[1:] & gt[1:]).sum() / gt[1:].sum()
    false_pos = (geo.dynamic_masks[1:] & ~gt[1:]).sum() / (~gt[1:]).sum()
    assert hit > 0.35 and false_pos < 0.08  # weaker than the flow's (documented), far from chance


def test_thread_refinement_is_deterministic(scene):
    cfg = StreamConfig(refine="thread", refine_lag=2, keyframe_max_gap=4)
    _, a, ra = _run(scene, config=cfg, depth_noise=0.03, pose_noise=0.01)
    _, b, rb = _run(scene, config=cfg, depth_noise=0.03, pose_noise=0.01)
    assert all(np.array_equal(x.pose, y.pose) for x, y in zip(a, b, strict=True))
    assert np.array_equal(ra.poses, rb.poses)


def test_keep_none_memory_is_flat_and_output_matches_offline_layout(scene, tmp_path):
    out = tmp_path / "stream"
    cfg = StreamConfig(refine="sync", keep="none", keyframe_max_gap=3, window=3)
    stream = Stream(backend=SimulatedBackend(scene), size=SIZE[1], config=cfg, output=out)
    held = []
    for im in scene.images:
        stream.push(im)
        held.append(stream.held_bytes())
    rec = stream.close()
    window = cfg.window * 3 + 2  # frames by the time the window is full (a keyframe every 3)
    assert max(held[window:]) <= held[window]
    # the folder is the offline one: same files, readable, equal to what close() returned
    ref = tmp_path / "offline"
    loaded = Reconstruction.load(out)
    loaded.save(ref)
    assert sorted(_tree(out)) == sorted(_tree(ref))
    assert len(loaded) == len(scene.images)
    np.testing.assert_array_equal(np.asarray(rec.depths[5]), loaded.depths[5])
    np.testing.assert_allclose(rec.poses, loaded.poses)
    assert loaded.meta["mode"] == "stream"


def _tree(d) -> list[str]:
    return [os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs]


class _Interrupting(Backend):
    """Delegates to a backend and raises KeyboardInterrupt at the encode of frame ``at``."""

    def __init__(self, inner, at: int):
        self.inner, self.at, self.n = inner, at, 0
        self.name, self.image_size = "interrupting", inner.image_size

    def encode(self, images):
        if self.n == self.at:
            raise KeyboardInterrupt
        self.n += 1
        return self.inner.encode(images)

    def decode(self, t1, t2, size):
        return self.inner.decode(t1, t2, size)


def test_interrupt_leaves_a_valid_folder(scene, tmp_path):
    out = tmp_path / "out"
    backend = _Interrupting(SimulatedBackend(scene), at=7)
    with pytest.raises(KeyboardInterrupt):
        with Stream(
            backend=backend, size=SIZE[1], config=StreamConfig(refine="sync"), output=out
        ) as s:
            for im in scene.images:
                s.push(im)
    rec = Reconstruction.load(out)
    assert len(rec) == 7
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary folder


class _NaNs(Backend):
    def __init__(self, inner):
        self.inner, self.name, self.image_size = inner, "nans", inner.image_size

    def encode(self, images):
        return self.inner.encode(images)

    def decode(self, t1, t2, size):
        p1, c1, p2, c2 = (a.copy() for a in self.inner.decode(t1, t2, size))
        p1[:, :4, :4] = np.nan
        p2[:, -4:, :4] = np.inf
        c1[:, 10:12, 10:12] = np.nan
        return p1, c1, p2, c2


def test_bad_input(scene, tmp_path):
    backend = _NaNs(SimulatedBackend(scene))
    stream = Stream(backend=backend, size=SIZE[1], config=StreamConfig(refine="sync"))
    r = [stream.push(im) for im in scene.images[:6]][-1]
    assert np.isfinite(r.pose).all() and np.isnan(r.depth[:4, :4]).all()
    assert np.isnan(r.depth[10:12, 10:12]).all() and (r.conf[10:12, 10:12] == 1).all()
    assert np.isfinite(r.depth[16:, 16:]).all()
    # a frame of another aspect ratio: a clear error naming the frame and both sizes
    with pytest.raises(FrameError, match="frame 6.*112x64"):
        stream.push(np.zeros((64, 64, 3), np.uint8))
    rec = stream.close()
    assert stream.close() is rec  # a second close() (after a with-block) returns the same
    with pytest.raises(RuntimeError, match="after close"):
        stream.push(scene.images[0])
    # grayscale frames are converted as load_frames does; float frames refused like it
    s2 = Stream(backend=SimulatedBackend(scene), size=SIZE[1])
    with pytest.raises(FrameError, match="pixel type"):
        s2.push(scene.images[0].astype(np.float32))
    s2.abort()
    # an existing non-empty output folder is refused before any work; keep='none' needs output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        Stream(backend=SimulatedBackend(scene), output=tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(ValueError, match="keep='none'"):
        Stream(backend=SimulatedBackend(scene), config=StreamConfig(keep="none"))
    with pytest.raises(ValueError, match="StreamConfig.masks"):
        Stream(backend=SimulatedBackend(scene), config=StreamConfig(masks="magic"))


def test_stream_video_folder_and_max_frames(scene, tmp_path):
    import cv2

    folder = tmp_path / "clip"
    folder.mkdir()
    for i, im in enumerate(scene.images[:8]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), im[..., ::-1])
    video = stream_video(
        folder,
        max_frames=5,
        backend=SimulatedBackend(scene),
        size=SIZE[1],
        config=StreamConfig(refine="sync"),
        output=tmp_path / "out",
    )
    got = [r.index for r in video]
    assert got == [0, 1, 2, 3, 4]
    assert len(video.reconstruction) == 5 and len(Reconstruction.load(tmp_path / "out")) == 5
    with pytest.raises(FrameError, match="does not exist"):
        stream_video(tmp_path / "missing", backend=SimulatedBackend(scene))


def test_stream_video_left_open_is_finalised_with_the_source_names(scene, tmp_path):
    """``break`` out of a stream_video loop, then garbage collection: the output folder is
    finalised (not left as a ``.out.partial-*`` folder), and its names are the source files."""
    import gc

    import cv2

    folder = tmp_path / "clip"
    folder.mkdir()
    names = [f"img_{i * 3:03d}.png" for i in range(6)]  # not the frame indices
    for name, im in zip(names, scene.images, strict=False):
        cv2.imwrite(str(folder / name), im[..., ::-1])
    video = stream_video(folder, backend=SimulatedBackend(scene), size=SIZE[1],
                         config=StreamConfig(refine="thread"), output=tmp_path / "out")  # fmt: skip
    for res in video:
        if res.index == 2:
            break
    del video, res
    gc.collect()
    assert sorted(os.listdir(tmp_path)) == ["clip", "out"]
    rec = Reconstruction.load(tmp_path / "out")
    assert len(rec) == 3 and rec.names == names[:3]


def test_an_output_folder_holding_the_input_is_refused(scene, tmp_path, capsys):
    """``-o`` that is the input folder, or a folder holding the input, would be replaced by the
    output: refused before any work even with ``--overwrite`` (run, stream, stream_video); the
    input is untouched."""
    from monst3r_rt import cli

    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "000.png").write_bytes(b"x")
    for cmd, src, out in [
        ("stream", folder, folder),
        ("run", folder, folder),
        ("run", folder / "000.png", folder),
        ("stream", folder, tmp_path),
    ]:
        code = cli.main([cmd, str(src), "-o", str(out), "--overwrite", "--weights", "none.pth"])
        err = capsys.readouterr().err
        assert code == 2 and f"is or contains the input {src}" in err, err
    with pytest.raises(FileExistsError, match="choose another output folder"):
        stream_video(folder, backend=SimulatedBackend(scene), output=folder, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["clip"] and os.listdir(folder) == ["000.png"]


def test_cli_stream(workdir, tmp_path, capsys):
    """``monst3r-rt stream`` on the tiny random-weight checkpoint: a valid output folder, the
    summary, and the same refusals as ``run``."""
    pytest.importorskip("torch")
    from monst3r_rt import cli

    d, ckpt = workdir
    out = tmp_path / "live"
    args = [
        "stream",
        str(d / "clip"),
        "-o",
        str(out),
        "--weights",
        str(ckpt),
        "--size",
        "224",
        "--device",
        "cpu",
        "--max-frames",
        "6",
        "-q",
    ]
    assert cli.main(args) == 0
    summary = capsys.readouterr().out
    assert "decoder passes" in summary and "network" in summary and str(out) in summary
    rec = Reconstruction.load(out)
    assert len(rec) == 6 and rec.meta["mode"] == "stream" and rec.meta["encodes"] == 6
    assert cli.main(args) == 2  # an existing output folder is refused before any work
    assert "not empty" in capsys.readouterr().err
    target = tmp_path / "never"
    code = cli.main(
        ["stream", str(tmp_path / "missing.mp4"), "-o", str(target), "--weights", str(ckpt), "-q"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "missing.mp4" in err and not target.exists()
    code = cli.main(["stream", "7", "-o", str(target), "--weights", str(ckpt), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "camera" in err and not target.exists()


def test_cli_stream_says_what_was_kept_after_an_error_or_interrupt(
    workdir, tmp_path, capsys, monkeypatch
):
    """A frame that cannot be read ends ``monst3r-rt stream`` with exit status 2 and says that
    the frames before it were finalised; Ctrl-C before the first frame says nothing was
    written (and nothing is)."""
    pytest.importorskip("torch")
    import shutil

    from monst3r_rt import cli

    d, ckpt = workdir
    clip = tmp_path / "clip"
    shutil.copytree(d / "clip", clip)
    third = sorted(os.listdir(clip))[2]
    (clip / third).write_bytes(b"not an image")
    base = ["--weights", str(ckpt), "--size", "224", "--device", "cpu", "-q"]
    out = tmp_path / "out"
    assert cli.main(["stream", str(clip), "-o", str(out), *base]) == 2
    err = capsys.readouterr().err
    assert f"stopped after 2 frames; output finalised in {out}" in err and third in err
    assert len(Reconstruction.load(out)) == 2

    def ctrl_c(self, image, name=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(Stream, "push", ctrl_c)
    never = tmp_path / "never"
    assert cli.main(["stream", str(d / "clip"), "-o", str(never), *base]) == 130
    assert "interrupted after 0 frames; nothing was written" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["clip", "out"]


def _keyframe_problem(noise: dict, frames=(0, 4, 8, 12), links: int = 2):
    """Ground-truth keyframes (world = frame 0's camera) and the simulated pairs linking each to
    its ``links`` predecessors."""
    from monst3r_rt.geometry import unproject_depth

    sc = make_scene(n_frames=max(frames) + 1, size=(48, 64), graph=None, n_objects=0, seed=5)
    bk = SimulatedBackend(sc, **noise)
    g0 = np.linalg.inv(sc.poses[0])
    gt = {k: g0 @ sc.poses[k] for k in frames}
    cams = {k: unproject_depth(sc.depths[k], sc.focal).astype(np.float32) for k in frames}
    pairs = [(t, m) for a, t in enumerate(frames) for m in frames[max(0, a - links) : a]]
    return sc, bk, gt, cams, pairs


def _perturb(pose: np.ndarray, rng) -> np.ndarray:
    from monst3r_rt.geometry import rotvec_to_rotmat

    out = pose.copy()
    out[:3, :3] = rotvec_to_rotmat(rng.normal(scale=0.02, size=3)) @ pose[:3, :3]
    out[:3, 3] += rng.normal(scale=0.05, size=3)
    return out


def test_pose_graph_refinement_recovers_exact_keyframes():
    """The ray pose graph on exact pairs, started from perturbed poses, returns to the truth;
    the first keyframe is the frozen gauge."""
    from monst3r_rt.stream.refine import KeyframeGraph

    _, bk, gt, cams, pairs = _keyframe_problem({})
    rng = np.random.default_rng(0)
    graph = KeyframeGraph(sweeps=60, iters=10)  # block-coordinate descent: linear convergence
    for k, pose in gt.items():
        graph.add_keyframe(
            k,
            cams[k],
            np.ones(cams[k].shape[:2], np.float32),
            pose if k == 0 else _perturb(pose, rng),
        )
    for t, m in pairs:
        _, _, p2, c2 = bk.predict(t, m)
        graph.add_edge(t, m, p2, np.log(c2), 1.0)
    res = graph.refine(None, 1)
    assert sorted(res.keyframes) == [4, 8, 12]
    for k, pose in gt.items():
        assert_poses_close(graph.nodes[k].pose[None], pose[None], rel=1e-4)


def test_keyframe_aligner_keeps_the_gauge():
    """The global-alignment objective over keyframes, one frozen: exact keyframes stay exact
    (regression: with a free scale gauge the solve shrank the others towards the frozen one)."""
    from monst3r_rt.align.incremental import KeyframeAligner

    sc, bk, gt, cams, pairs = _keyframe_problem({"scale_range": (0.5, 2.0)})
    al = KeyframeAligner()
    for k, pose in gt.items():
        al.add_keyframe(k, cams[k][..., 2], pose, sc.focal)
    for t, m in pairs:
        p1, c1, p2, c2 = bk.predict(t, m)
        al.add_edge(t, m, p1, p2, c1, c2)
    res = al.refine(None, 1)
    assert sorted(res.keyframes) == [4, 8, 12]
    extent = scale_of(np.stack([p[:3, 3] for p in gt.values()]))
    for k, pose in gt.items():
        assert np.linalg.norm(al.pose(k)[:3, 3] - pose[:3, 3]) < 1e-3 * extent
    assert all(abs(s - 1) < 1e-3 for s in res.scales.values())


def test_cli_stream_records_a_rerun_file(scene, tmp_path, monkeypatch):
    """``--save x.rrd``: the live viewer logs every frame headless (extra ``viz``)."""
    pytest.importorskip("rerun")
    import cv2

    from monst3r_rt import cli
    from monst3r_rt.stream import session

    folder = tmp_path / "clip"
    folder.mkdir()
    for i, im in enumerate(scene.images[:5]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), im[..., ::-1])
    backend = SimulatedBackend(scene)
    real = session.Stream.__init__

    def with_backend(self, *args, **kw):  # the CLI loads weights; the test hands in the simulator
        kw.update(backend=backend, size=SIZE[1])
        real(self, **kw)

    monkeypatch.setattr(session.Stream, "__init__", with_backend)
    rrd = tmp_path / "live.rrd"
    args = ["stream", str(folder), "-o", str(tmp_path / "out"), "--save", str(rrd), "-q"]
    assert cli.main(args) == 0
    assert rrd.stat().st_size > scene.images[:5].nbytes // 4  # complete on return: the images
    assert len(Reconstruction.load(tmp_path / "out")) == 5


def test_a_failed_refinement_does_not_end_the_stream(scene, monkeypatch):
    """A singular solve (degenerate predictions) is recorded; poses stay as tracked."""
    from monst3r_rt.stream.refine import KeyframeGraph

    def singular(self, window, frozen=1):
        raise RuntimeError("Factor is exactly singular")

    monkeypatch.setattr(KeyframeGraph, "refine", singular)
    for mode in ("sync", "thread"):
        stream = Stream(backend=SimulatedBackend(scene), size=SIZE[1],
                        config=StreamConfig(refine=mode, keyframe_max_gap=5))  # fmt: skip
        results = [stream.push(im) for im in scene.images[:12]]
        rec = stream.close()
        assert stream.refine_failures and "singular" in stream.refine_failures[0]
        assert rec.meta["refine_failures"] == stream.refine_failures
        assert_poses_close(rec.poses, np.stack([r.pose for r in results]), rel=1e-6)


def test_flow_mask_is_insensitive_to_a_small_rotation_error():
    """The masks' rotation correction: a 0.3° error in the tracked pose leaves the mask as with
    the true pose, and the moving objects are found; without the object nothing is marked."""
    from monst3r_rt.geometry import rotvec_to_rotmat
    from monst3r_rt.stream.motion import flow_mask

    sc = make_scene(n_frames=6, size=(144, 256), graph=None, n_objects=2, object_motion=0.05,
                    seed=7)  # fmt: skip
    t = 5
    gt = sc.dynamic_masks[t]
    wrong = sc.poses[t].copy()
    wrong[:3, :3] = wrong[:3, :3] @ rotvec_to_rotmat([0.005, -0.003, 0.002])
    args = (sc.images[t], sc.images[t - 3], sc.depths[t], sc.focal, sc.focal)
    exact, _ = flow_mask(*args, sc.poses[t], sc.poses[t - 3])
    tilted, _ = flow_mask(*args, wrong, sc.poses[t - 3])
    assert (exact != tilted).mean() < 0.005
    assert (exact & gt).sum() / gt.sum() > 0.7 and (exact & ~gt).sum() / (~gt).sum() < 0.05
    still = make_scene(n_frames=6, size=(144, 256), graph=None, n_objects=0, seed=7)
    static, _ = flow_mask(still.images[t], still.images[t - 3], still.depths[t], still.focal,
                          still.focal, wrong, still.poses[t - 3])  # fmt: skip
    assert static.mean() < 0.02


class _FakeCamera:
    """A cv2.VideoCapture stand-in: delivers ``frames`` (BGR), then blocks in ``read`` until
    released (a camera that stops): however slowly the frames are processed, it never ends
    the capture by itself, so only the source's timeout can end the stream."""

    def __init__(self, frames):
        self.frames, self.k = list(frames), 0
        self.released = threading.Event()

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return True

    def read(self):
        if self.k < len(self.frames):
            self.k += 1
            return True, self.frames[self.k - 1][..., ::-1].copy()
        self.released.wait(60)  # bounded: a leaked thread does not outlive the test run
        return False, None

    def release(self):
        self.released.set()


def test_live_source_that_stops_keeps_what_was_processed(scene, tmp_path, monkeypatch):
    """A camera that stops delivering: a clear error naming it, and the frames processed so far
    in a valid output folder; ``drop=False`` queues every frame."""
    import cv2

    monkeypatch.setattr(cv2, "VideoCapture", lambda arg: _FakeCamera(scene.images[:4]))
    out = tmp_path / "cam"
    video = stream_video(0, drop=False, timeout=1.0, backend=SimulatedBackend(scene),
                         size=SIZE[1], config=StreamConfig(refine="sync"), output=out)  # fmt: skip
    got = []
    with pytest.raises(FrameError, match="camera 0 stopped delivering frames"):
        for res in video:
            got.append(res.index)
    assert got == [0, 1, 2, 3] and video.source.dropped == 0
    assert len(Reconstruction.load(out)) == 4


def test_interrupt_inside_the_output_step_keeps_the_complete_frames(scene, tmp_path, monkeypatch):
    """Ctrl-C while a frame is being spilled: that frame is dropped, the others are written."""
    from monst3r_rt.stream.output import StreamWriter

    real = StreamWriter.write_frame

    def interrupted(self, index, *args, **kw):
        if index == 5:
            raise KeyboardInterrupt
        return real(self, index, *args, **kw)

    monkeypatch.setattr(StreamWriter, "write_frame", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with Stream(backend=SimulatedBackend(scene), size=SIZE[1],
                    config=StreamConfig(refine="sync"), output=out) as s:  # fmt: skip
            for im in scene.images:
                s.push(im)
    assert len(Reconstruction.load(out)) == 5


# keys of run.json that only one mode has (every other key is in both, with the same meaning)
OFFLINE_ONLY_KEYS = {"align_diagnostics"}  # the global alignment's report
STREAM_ONLY_KEYS = {"latency", "encodes", "decodes", "keyframes", "refinements", "lost",
                    "refine_failures", "focal_fallbacks"}  # fmt: skip


def test_streamed_run_json_has_the_offline_keys(workdir, tmp_path, monkeypatch):
    """A folder of ``stream_video(output=...)`` records what ``Pipeline.run`` + ``save`` records
    (input, weights and their sha256, versions, config, timings, ...) for the same checkpoint,
    clip and size; the weights are hashed by close(), not before the first frame."""
    pytest.importorskip("torch")
    import hashlib
    import json

    from monst3r_rt import Pipeline, runinfo
    from monst3r_rt.align import AlignConfig

    d, ckpt = workdir
    clip = d / "clip"
    Pipeline(weights=ckpt, device="cpu", size=224, batch_size=8, align=AlignConfig(niter=5),
             flow=None).run(clip, num_frames=4, progress=False).save(tmp_path / "off")  # fmt: skip
    hashed = []
    real = runinfo.weights_fingerprint
    monkeypatch.setattr(runinfo, "weights_fingerprint", lambda s: hashed.append(s) or real(s))
    video = stream_video(clip, max_frames=4, weights=ckpt, device="cpu", size=224,
                         output=tmp_path / "st")  # fmt: skip
    next(video)
    assert hashed == []  # nothing hashed before (or for) the first frame
    for _ in video:
        pass
    assert hashed == [str(ckpt)]
    off = json.loads((tmp_path / "off" / "run.json").read_text())
    st = json.loads((tmp_path / "st" / "run.json").read_text())
    assert set(off) - set(st) == OFFLINE_ONLY_KEYS
    assert set(st) - set(off) == STREAM_ONLY_KEYS
    sha = "sha256:" + hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert st["mode"] == "stream" and off["mode"] == "offline"
    assert st["input"] == off["input"] == str(clip)
    assert st["weights"] == off["weights"] == str(ckpt)
    assert st["weights_hash"] == off["weights_hash"] == sha
    assert st["versions"] == off["versions"] == runinfo.versions()
    assert st["backend"] == off["backend"] and st["devices"]["network"] == "cpu"
    for k in ("mode", "backend", "device", "size"):  # the offline config's common part
        assert k in st["config"], k
    assert st["config"]["size"] == off["config"]["size"] == 224
    assert st["config"]["device"] == off["config"]["device"] == "cpu"
    assert st["pairs"] == st["decodes"] >= 4
    assert set(st["timings"]) == {"load_weights", "push", "final_refine"}
    assert all(v >= 0 for v in st["timings"].values())
    lat = st["latency"]
    assert st["timings"]["push"] == pytest.approx(lat["total"]["total_s"], rel=1e-9)
    assert all(0 <= v["p50_ms"] <= v["p95_ms"] for v in lat.values())
    assert lat["network"]["total_s"] <= lat["total"]["total_s"]


def test_stream_input_is_recorded_as_given(scene, tmp_path):
    """Frames pushed by hand record no input unless ``Stream(input=...)`` names it; a Backend
    instance records the weights given with it (none: null)."""
    import json

    for kw, want in (({}, None), ({"input": tmp_path / "cam.mp4"}, str(tmp_path / "cam.mp4"))):
        out = tmp_path / f"out{len(kw)}"
        st = Stream(backend=SimulatedBackend(scene), size=SIZE[1], output=out, **kw)
        for im in scene.images[:3]:
            st.push(im)
        st.close()
        meta = json.loads((out / "run.json").read_text())
        assert meta["input"] == want and meta["weights"] is None and meta["weights_hash"] is None


def test_cli_stream_errors_name_the_options(workdir, tmp_path, capsys, monkeypatch):
    """``monst3r-rt stream`` phrases a setting it cannot run as its flags (as ``run`` does);
    the Python API keeps the argument names."""
    from monst3r_rt import cli, pipeline

    d, ckpt = workdir
    monkeypatch.setattr(pipeline, "_torch_sees_gpu", lambda: False)  # no GPU, whatever is here
    out = tmp_path / "out"
    code = cli.main(["stream", str(d / "clip"), "-o", str(out), "--weights", str(ckpt),
                     "--device", "cuda", "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--device cuda" in err and "--device cpu" in err, err
    assert "device='cuda'" not in err and not out.exists()
    with pytest.raises(RuntimeError, match="device='cuda'"):
        Stream(weights=ckpt, device="cuda")
