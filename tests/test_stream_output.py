"""The streaming output folder: frames spilled one at a time, then finalized, give the offline
folder (``Reconstruction.save``) file for file; lazy arrays index like NumPy; the user's folder
is untouched until the final rename; interrupts leave a valid folder or nothing; memory stays
per frame. Also the frame-at-a-time writer's pieces: the streamed ``.npz`` and the thinning."""

from __future__ import annotations

import os
import tracemalloc
import zipfile

import numpy as np
import pytest

from monst3r_rt import fileio, reconstruction
from monst3r_rt.geometry import rotvec_to_rotmat, world_points
from monst3r_rt.reconstruction import Reconstruction, thin_points
from monst3r_rt.stream.output import FrameArray, StreamWriter

_PER_PIXEL = ("frames", "depths", "conf", "dynamic_masks", "pts3d")
_ALL = (*_PER_PIXEL, "poses", "intrinsics")


def _recon(n: int = 5, h: int = 12, w: int = 16, seed: int = 0) -> Reconstruction:
    """A random reconstruction whose world points are its depths back-projected (as the pipeline
    makes them), with invalid depths (NaN, 0), dynamic pixels and confidences around 1.1."""
    rng = np.random.default_rng(seed)
    depths = rng.uniform(0.5, 4, (n, h, w)).astype(np.float32)
    depths[0, 0, :3] = np.nan
    depths[1 % n, 2, 2] = 0
    poses = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    for i in range(n):
        poses[i, :3, :3] = rotvec_to_rotmat(rng.normal(0, 0.1, 3))
        poses[i, :3, 3] = rng.normal(0, 1, 3)
    k = np.tile(np.array([[20, 0, w / 2], [0, 21, h / 2], [0, 0, 1]], np.float32), (n, 1, 1))
    return Reconstruction(
        frames=rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8),
        depths=depths,
        poses=poses,
        intrinsics=k,
        conf=rng.uniform(1, 3, (n, h, w)).astype(np.float32),
        dynamic_masks=rng.random((n, h, w)) < 0.2,
        pts3d=world_points(depths, poses, k),
        names=[f"src_{i:03d}.jpg" for i in range(n)],
        meta={"input": "clip.mp4", "config": {"size": [h, w]}},
    )


def _stream(rec: Reconstruction, out, n: int | None = None, **kw) -> Reconstruction:
    n = len(rec) if n is None else n
    writer = StreamWriter(out, overwrite=kw.pop("overwrite", False))
    for i in range(n):
        writer.write_frame(i, rec.frames[i], rec.depths[i], rec.conf[i], rec.dynamic_masks[i],
                           rec.names[i])  # fmt: skip
    return writer.finalize(rec.poses[:n], rec.intrinsics[:n], meta=rec.meta, **kw)


def _tree(d) -> set[str]:
    out = set()
    for root, dirs, files in os.walk(d):
        rel = os.path.relpath(root, d)
        out |= {os.path.normpath(os.path.join(rel, x)) for x in dirs + files}
    return out


def _assert_same_folder(a, b) -> None:
    """Same files and folders; every file byte-identical (the .npz: every entry's bytes)."""
    assert _tree(a) == _tree(b)
    for rel in sorted(_tree(a)):
        pa, pb = os.path.join(a, rel), os.path.join(b, rel)
        if os.path.isdir(pa):
            continue
        if rel.endswith(".npz"):
            with zipfile.ZipFile(pa) as za, zipfile.ZipFile(pb) as zb:
                assert za.namelist() == zb.namelist(), rel
                for name in za.namelist():
                    assert za.read(name) == zb.read(name), f"{rel}:{name}"
        else:
            with open(pa, "rb") as fa, open(pb, "rb") as fb:
                assert fa.read() == fb.read(), rel


def _assert_same_recon(got: Reconstruction, want: Reconstruction, names=_ALL) -> None:
    for k in names:
        g, w = np.asarray(getattr(got, k)), np.asarray(getattr(want, k))
        assert g.dtype == w.dtype and g.shape == w.shape, k
        np.testing.assert_array_equal(g, w, err_msg=k)
    assert got.names == want.names


# ---- (a), (b): the offline folder, file for file ------------------------------------------------
def test_stream_folder_equals_offline_save(tmp_path):
    rec = _recon()
    rec.save(tmp_path / "offline")
    back = _stream(rec, tmp_path / "stream")
    _assert_same_folder(tmp_path / "offline", tmp_path / "stream")
    assert sorted(os.listdir(tmp_path)) == ["offline", "stream"]  # no temporary folder left
    _assert_same_recon(back, rec)
    assert back.meta == rec.meta
    loaded = Reconstruction.load(tmp_path / "stream")
    _assert_same_recon(loaded, rec)
    assert loaded.meta == rec.meta


def test_finalize_result_is_lazy_and_saves_again(tmp_path):
    """The result's arrays are read-only maps of the final folder; point_cloud, save and the
    headless viewer work on it as on the in-memory one."""
    from monst3r_rt.viewer import render_png

    rec = _recon()
    back = _stream(rec, tmp_path / "stream")
    for k in _PER_PIXEL:
        arr = getattr(back, k)
        assert not arr.flags.writeable and not arr.flags.owndata, k
    for frame in (None, 2):
        for static in (False, True):
            got = back.point_cloud(frame, static_only=static)
            want = rec.point_cloud(frame, static_only=static)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    back.save(tmp_path / "again")
    rec.save(tmp_path / "offline")
    _assert_same_folder(tmp_path / "offline", tmp_path / "again")
    img = render_png(back, tmp_path / "a.png", size=(40, 60))
    np.testing.assert_array_equal(img, render_png(rec, tmp_path / "b.png", size=(40, 60)))


def test_view_png_bad_requests_are_one_line_errors(tmp_path, capsys):
    """``monst3r-rt view OUT --png`` refuses a frame outside 0..N-1, an image type OpenCV cannot
    write and a missing folder with a one-line error (exit 2), before rendering anything."""
    from monst3r_rt import cli

    _recon().save(tmp_path / "out")
    for png, extra, message in [
        ("x.png", ["--frame", "5"], "frame 5 is out of range: the reconstruction has 5 frames"),
        ("x.png", ["--frame", "-1"], "frame -1 is out of range"),
        ("x.txt", [], "cannot write this image type"),
        (os.path.join("missing", "x.png"), [], "does not exist"),
    ]:
        code = cli.main(["view", str(tmp_path / "out"), "--png", str(tmp_path / png), *extra])
        err = capsys.readouterr().err
        assert code == 2 and "monst3r-rt view: error: " in err and message in err, err
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert cli.main(["view", str(tmp_path / "out"), "--png", str(tmp_path / "x.png")]) == 0


# ---- (c) lazy per-frame arrays ------------------------------------------------------------------
_KEYS = [
    3, -1, np.int64(2), slice(1, 4), slice(None, None, -2), slice(7, 9), [4, 0, 4], [],
    np.array([[0, 1], [2, 0]]), np.array([True, False, True, False, True]),
    (2, slice(1, 3)), (slice(None), [1, 2], [0, 3]), (0, slice(None), [1, 2]), ([0, 2], 1),
    (np.array([1, 3]), Ellipsis, 0), (slice(1, 3), Ellipsis), (-2, 1, 2),
    np.zeros((5, 4, 6), bool) | (np.arange(6) % 2 == 0), Ellipsis, (None, 1),
]  # fmt: skip


@pytest.mark.parametrize("key", _KEYS, ids=[repr(k)[:40] for k in _KEYS])
def test_frame_array_indexes_like_numpy(key):
    full = np.random.default_rng(1).normal(size=(5, 4, 6)).astype(np.float32)
    reads = []

    def read(i):
        reads.append(i)
        return full[i] + 0  # a copy, as from a file

    lazy = FrameArray(5, (4, 6), np.float32, read, "test")
    got, want = lazy[key], full[key]
    assert np.shape(got) == want.shape and np.asarray(got).dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    if not isinstance(key, np.ndarray) or key.dtype != bool or key.ndim == 1:
        if key is not Ellipsis and not (isinstance(key, tuple) and key[0] is None):
            picked = np.arange(5)[key[0] if isinstance(key, tuple) else key]
            assert sorted(set(reads)) == sorted(set(np.ravel(picked).tolist()))  # only those read


def test_frame_array_basics_and_errors():
    full = np.arange(5 * 2 * 3, dtype=np.float64).reshape(5, 2, 3)
    lazy = FrameArray(5, (2, 3), np.float32, lambda i: full[i], "depths")
    assert lazy.shape == (5, 2, 3) and lazy.dtype == np.float32 and len(lazy) == 5
    assert np.shape(lazy) == (5, 2, 3) and lazy.ndim == 3
    np.testing.assert_array_equal(np.asarray(lazy), full.astype(np.float32))
    assert np.asarray(lazy, np.float64).dtype == np.float64
    np.testing.assert_array_equal(np.stack(list(lazy)), full)
    for bad in (5, -6, [0, 5]):
        with pytest.raises(IndexError):
            lazy[bad]
    out = lazy[1]
    out[:] = -1  # a copy: the array is unchanged
    np.testing.assert_array_equal(lazy[1], full[1])
    with pytest.raises(TypeError):
        lazy[0] = 0
    wrong = FrameArray(2, (2, 2), np.float32, lambda i: np.zeros((2, 3)), "conf")
    with pytest.raises(ValueError, match=r"conf frame 1: read shape \(2, 3\), expected \(2, 2\)"):
        wrong[1]


def test_reconstruction_of_lazy_arrays(tmp_path):
    """A Reconstruction accepts lazy arrays; point_cloud and save only index them per frame."""
    rec = _recon()
    lazy = {k: FrameArray(len(rec), getattr(rec, k).shape[1:], getattr(rec, k).dtype,
                          getattr(rec, k).__getitem__, k) for k in _PER_PIXEL}  # fmt: skip
    other = Reconstruction(**lazy, poses=rec.poses, intrinsics=rec.intrinsics, names=rec.names,
                           meta=rec.meta)  # fmt: skip
    for got, want in zip(other.point_cloud(), rec.point_cloud(), strict=True):
        np.testing.assert_array_equal(got, want)
    other.save(tmp_path / "lazy")
    rec.save(tmp_path / "eager")
    _assert_same_folder(tmp_path / "lazy", tmp_path / "eager")
    with pytest.raises(ValueError, match=r"conf must have shape \(5, 12, 16\)"):
        Reconstruction(**{**lazy, "conf": FrameArray(4, (12, 16), np.float32, None)},
                       poses=rec.poses, intrinsics=rec.intrinsics)  # fmt: skip


# ---- (d) depth scales ---------------------------------------------------------------------------
def test_depth_scales_applied(tmp_path):
    rec = _recon()
    scales = np.array([1.0, 2.0, 0.5, 1.0, 3.25])
    back = _stream(rec, tmp_path / "stream", depth_scales=scales)
    depths = rec.depths * scales.astype(np.float32)[:, None, None]
    assert depths.dtype == np.float32
    scaled = Reconstruction(rec.frames, depths, rec.poses, rec.intrinsics, rec.conf,
                            rec.dynamic_masks, world_points(depths, rec.poses, rec.intrinsics),
                            rec.names, rec.meta)  # fmt: skip
    _assert_same_recon(back, scaled)
    np.testing.assert_array_equal(np.load(tmp_path / "stream" / "frame_0004.npy"), depths[4])
    scaled.save(tmp_path / "offline")
    _assert_same_folder(tmp_path / "offline", tmp_path / "stream")


# ---- (e), (f), (g) the user's folder, aborts, interrupts ----------------------------------------
def test_existing_folder_refused_and_untouched_until_finalize(tmp_path):
    rec = _recon(n=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        StreamWriter(out)
    assert sorted(os.listdir(tmp_path)) == ["out"]
    writer = StreamWriter(out, overwrite=True)
    for i in range(3):
        writer.write_frame(i, rec.frames[i], rec.depths[i], rec.conf[i], rec.dynamic_masks[i])
        assert os.listdir(out) == ["mine.txt"]
    partial = [p for p in os.listdir(tmp_path) if p != "out"]
    assert len(partial) == 1 and partial[0].startswith(".out.partial-")  # as atomic_dir names it
    writer.finalize(rec.poses, rec.intrinsics)
    assert not (out / "mine.txt").exists() and (out / "scene.glb").is_file()
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert Reconstruction.load(out).names == [f"frame_{i:04d}" for i in range(3)]


def test_abort_and_errors_leave_nothing(tmp_path, monkeypatch):
    rec = _recon(n=3)
    out = tmp_path / "out"
    writer = StreamWriter(out)
    writer.write_frame(0, rec.frames[0], rec.depths[0], rec.conf[0], rec.dynamic_masks[0])
    writer.abort()
    assert os.listdir(tmp_path) == [] and writer.closed
    with pytest.raises(RuntimeError, match="closed"):
        writer.write_frame(1, rec.frames[1], rec.depths[1], rec.conf[1], rec.dynamic_masks[1])
    # an exception in the middle of a stream, in a with block
    with pytest.raises(KeyError), StreamWriter(out) as writer:
        writer.write_frame(0, rec.frames[0], rec.depths[0], rec.conf[0], rec.dynamic_masks[0])
        raise KeyError("boom")
    assert os.listdir(tmp_path) == []

    # an interrupt while finalizing, over an existing folder: that folder is untouched
    def boom(*_a, **_k):
        raise KeyboardInterrupt

    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    writer = StreamWriter(out, overwrite=True)
    writer.write_frame(0, rec.frames[0], rec.depths[0], rec.conf[0], rec.dynamic_masks[0])
    monkeypatch.setattr(fileio, "write_glb", boom)
    with pytest.raises(KeyboardInterrupt):
        writer.finalize(rec.poses[:1], rec.intrinsics[:1])
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(out) == ["mine.txt"]
    assert writer.closed


def test_bad_input_names_frame_and_array(tmp_path):
    rec = _recon(n=3)
    writer = StreamWriter(tmp_path / "out")
    with pytest.raises(ValueError, match="frame index 1: expected 0"):
        writer.write_frame(1, rec.frames[0], rec.depths[0], rec.conf[0], rec.dynamic_masks[0])
    with pytest.raises(ValueError, match=r"frame 0: image must be \(H,W,3\) uint8"):
        writer.write_frame(0, rec.frames[0].astype(float), rec.depths[0], rec.conf[0],
                           rec.dynamic_masks[0])  # fmt: skip
    writer.write_frame(0, rec.frames[0], rec.depths[0], rec.conf[0], rec.dynamic_masks[0])
    with pytest.raises(ValueError, match=r"frame 1: conf must have shape \(12, 16\) \(as frame 0"):
        writer.write_frame(1, rec.frames[1], rec.depths[1], rec.conf[1, :5], rec.dynamic_masks[1])
    with pytest.raises(ValueError, match=r"poses must have shape \(1, 4, 4\).*got \(3, 4, 4\)"):
        writer.finalize(rec.poses, rec.intrinsics[:1])
    with pytest.raises(ValueError, match="depth_scales must be finite and > 0, frame 0"):
        writer.finalize(rec.poses[:1], rec.intrinsics[:1], depth_scales=[0.0])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "new.txt").write_text("written meanwhile")
    with pytest.raises(FileExistsError, match="not empty"):
        writer.finalize(rec.poses[:1], rec.intrinsics[:1])
    os.remove(tmp_path / "out" / "new.txt")
    assert writer.frames_written == 1 and not writer.closed  # bad arguments: still open
    writer.finalize(rec.poses[:1], rec.intrinsics[:1])
    assert len(Reconstruction.load(tmp_path / "out")) == 1


def test_interrupted_stream_gives_the_frames_so_far(tmp_path, monkeypatch):
    """Frames 0-2 of 5 written, frame 3 interrupted while its files were being written, then
    finalize (as from a KeyboardInterrupt handler): the folder of frames 0-2, as offline."""
    rec = _recon(n=5)
    writer = StreamWriter(tmp_path / "stream")
    for i in range(3):
        writer.write_frame(i, rec.frames[i], rec.depths[i], rec.conf[i], rec.dynamic_masks[i],
                           rec.names[i])  # fmt: skip
    real = np.save

    def interrupted(path, *a, **k):  # frame 3's first file is written, then Ctrl-C
        real(path, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.write_frame(3, rec.frames[3], rec.depths[3], rec.conf[3], rec.dynamic_masks[3])
    monkeypatch.undo()
    assert writer.frames_written == 3
    back = writer.finalize(rec.poses[:3], rec.intrinsics[:3], meta=rec.meta)
    first3 = Reconstruction(*(getattr(rec, k)[:3] for k in ("frames", "depths", "poses",
                            "intrinsics", "conf", "dynamic_masks", "pts3d")), rec.names[:3],
                            rec.meta)  # fmt: skip
    first3.save(tmp_path / "offline")
    _assert_same_folder(tmp_path / "offline", tmp_path / "stream")
    _assert_same_recon(Reconstruction.load(tmp_path / "stream"), first3)
    _assert_same_recon(back, first3)


# ---- (h) memory ---------------------------------------------------------------------------------
def _finalize_peak(rec: Reconstruction, out) -> tuple[int, int]:
    """(peak bytes while writing any one frame, peak while finalizing): Python-tracked memory
    (NumPy's buffers included)."""
    writer = StreamWriter(out)
    frame_peak = 0
    for i in range(len(rec)):
        args = (rec.frames[i], rec.depths[i], rec.conf[i], rec.dynamic_masks[i], rec.names[i])
        tracemalloc.start()
        writer.write_frame(i, *args)
        frame_peak = max(frame_peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        held = [v for v in vars(writer).values() if isinstance(v, np.ndarray)]
        held += [x for v in vars(writer).values() if isinstance(v, list | tuple | dict)
                 for x in v if isinstance(x, np.ndarray)]  # fmt: skip
        assert not held  # the writer keeps no array
    tracemalloc.start()
    back = writer.finalize(rec.poses, rec.intrinsics)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    _assert_same_recon(back, rec)
    return frame_peak, peak


def test_memory_stays_per_frame(tmp_path, monkeypatch):
    """The writer keeps no array; writing a frame peaks at a few frames' bytes; finalizing
    (per-frame passes, streamed .npz) peaks at the same memory for 8 frames as for 32."""
    monkeypatch.setattr(reconstruction, "MAX_SCENE_POINTS", 100)
    peaks = {}
    _finalize_peak(_recon(n=2, h=48, w=64, seed=3), tmp_path / "warm-up")  # lazy imports, caches
    for n in (8, 32):
        rec = _recon(n=n, h=48, w=64, seed=3)
        per_frame = sum(getattr(rec, k)[0].nbytes for k in _PER_PIXEL)
        peaks[n] = _finalize_peak(rec, tmp_path / f"out{n}")
        assert peaks[n][0] < 3 * per_frame
    assert peaks[32][1] < peaks[8][1] + per_frame, peaks  # growth < one frame for 4x the frames
    assert peaks[32][1] < 32 * per_frame / 5, peaks


# ---- the frame-at-a-time writer's pieces --------------------------------------------------------
def test_scene_points_thinned_per_frame_as_whole(tmp_path, monkeypatch):
    """Gathering every k-th static point frame by frame (k from the total count) gives
    thin_points over the whole cloud: scene.glb and colmap/points3D.txt hold exactly those."""
    rec = _recon(n=6)
    n_static = len(rec.point_cloud(static_only=True)[0])
    limit = n_static // 7 + 1  # a step of 7 or 8, not a divisor of the frame sizes
    monkeypatch.setattr(reconstruction, "MAX_SCENE_POINTS", limit)
    want_pts, want_rgb = thin_points(*rec.point_cloud(static_only=True), limit)
    assert len(want_pts) <= limit
    rec.save(tmp_path / "out")
    rows = np.loadtxt(tmp_path / "out" / "colmap" / "points3D.txt", ndmin=2)
    assert len(rows) == len(want_pts)
    np.testing.assert_allclose(rows[:, 1:4], want_pts, rtol=0, atol=5e-7 + 1e-6)
    np.testing.assert_array_equal(rows[:, 4:7], want_rgb)
    gltf, blob = fileio.read_glb(tmp_path / "out" / "scene.glb")
    acc = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]
    assert acc["count"] == len(want_pts)


def test_streamed_npz_reads_back_as_savez(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f": rng.normal(size=(3, 4, 5)).astype(np.float32),
        "fortran": np.asfortranarray(rng.normal(size=(4, 6))),
        "b": rng.random((2, 3)) < 0.5,
        "names": np.array(["a", "bcd", "é"]),
        "scalar": np.array(2.5),
        "empty": np.zeros((0, 3), np.uint8),
        "u8": rng.integers(0, 255, (2, 2, 3), dtype=np.uint8),
    }
    fileio.write_npz(str(tmp_path / "s.npz"), arrays)
    np.savez(tmp_path / "ref.npz", **arrays)
    for path in (tmp_path / "s.npz", tmp_path / "ref.npz"):
        lazy = fileio.open_npz_lazy(path)
        with np.load(path, allow_pickle=False) as data:
            assert sorted(data.files) == sorted(arrays) == sorted(lazy)
            for k, v in arrays.items():
                for got in (data[k], lazy[k]):
                    assert got.dtype == v.dtype and got.shape == v.shape, k
                    np.testing.assert_array_equal(got, v, err_msg=k)
        assert not lazy["f"].flags.writeable
    with pytest.raises(ValueError, match="'x' holds Python objects"):
        fileio.write_npz(str(tmp_path / "o.npz"), {"x": np.array([None])})
