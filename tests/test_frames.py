"""Frame loading: official resize/crop geometry, decoding conversions, sources and bad input."""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from monst3r_rt.frames import (
    FrameError,
    Frames,
    load_frames,
    pil_resize,
    preprocess_image,
    target_size,
)

# ------------------------------------------------------------------------------------------
# helpers


def _pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Deterministic RGB uint8 test image (H, W, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    img = img + rng.integers(-10, 10, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_rgb(path: Path, rgb: np.ndarray, params: list[int] | None = None) -> Path:
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]), params or [])
    return path


def _jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """Encode a JPEG and splice in an APP1 Exif segment holding only the Orientation tag."""
    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 100]
    )
    assert ok
    data = buf.tobytes()
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert data[:2] == b"\xff\xd8"
    return data[:2] + app1 + data[2:]


# ------------------------------------------------------------------------------------------
# geometry (spec §2.1 worked examples)


@pytest.mark.parametrize(
    "w,h,resized,final",
    [
        (1920, 1080, (512, 288), (512, 288)),
        (854, 480, (512, 288), (512, 288)),
        (1024, 436, (512, 218), (512, 208)),
        (640, 480, (512, 384), (512, 384)),
        (1242, 375, (512, 155), (512, 144)),
        (1296, 968, (512, 382), (512, 368)),
        (1080, 1920, (288, 512), (288, 512)),
        (500, 500, (512, 512), (512, 384)),  # square -> 512x384
        (2000, 2000, (512, 512), (512, 384)),
        (300, 200, (512, 341), (512, 336)),  # upscaling
    ],
)
def test_target_size_512(w: int, h: int, resized: tuple, final: tuple) -> None:
    geo = target_size(w, h, 512)
    assert geo["resized"] == resized
    assert geo["final"] == final
    assert geo["filter"] == ("lanczos" if max(w, h) > 512 else "bicubic")


def test_square_ok_keeps_square() -> None:
    assert target_size(700, 700, 512, square_ok=True)["final"] == (512, 512)


@pytest.mark.parametrize(
    "w,h,resized",
    [
        (1920, 1080, (398, 224)),
        (640, 480, (299, 224)),
        (1080, 1920, (224, 398)),
        (224, 224, (224, 224)),
        (100, 80, (280, 224)),
    ],
)
def test_target_size_224(w: int, h: int, resized: tuple) -> None:
    geo = target_size(w, h, 224)
    assert geo["resized"] == resized
    assert geo["final"] == (224, 224)


def test_crop_is_centred_official_box() -> None:
    # 512x300 needs no resize; crop rows cy-halfh .. cy+halfh = 150-144 .. 150+144
    img = _pattern(300, 512)
    out = preprocess_image(img, 512)
    assert out.shape == (288, 512, 3)
    np.testing.assert_array_equal(out, img[6:294])
    # odd sizes: 515x301 upscale is not needed (long side > 512 -> lanczos to 512x299)
    geo = target_size(515, 301, 512)
    assert geo["resized"] == (512, 299) and geo["box"] == (0, 5, 512, 293)


# golden hashes of PIL.Image.resize output (Pillow 13) on _golden_input()
_GOLDEN = {
    ((17, 10), "lanczos"): "027cf80136add724",
    ((53, 31), "bicubic"): "e0373827db29f00c",
    ((40, 9), "lanczos"): "16329847603545bc",
    ((11, 23), "lanczos"): "57042dd693c3cfcc",
}


def _golden_input() -> np.ndarray:
    yy, xx = np.mgrid[0:23, 0:40]
    chans = [(xx * 37 + yy * 11) % 256, (xx * xx + 3 * yy) % 256, ((xx ^ yy) * 29) % 256]
    return np.stack(chans, -1).astype(np.uint8)


@pytest.mark.parametrize("size,filt", list(_GOLDEN))
def test_pil_resize_matches_pillow_golden(size: tuple[int, int], filt: str) -> None:
    out = pil_resize(_golden_input(), size, filt)
    assert out.shape == (size[1], size[0], 3)
    assert hashlib.sha256(out.tobytes()).hexdigest()[:16] == _GOLDEN[(size, filt)]


@pytest.mark.parametrize(
    "w,h,size",
    [(640, 480, 512), (1242, 375, 512), (333, 517, 224), (300, 200, 512), (500, 500, 512)],
)
def test_preprocess_matches_pillow_if_installed(w: int, h: int, size: int) -> None:
    image_mod = pytest.importorskip("PIL.Image")
    img = _pattern(h, w, seed=3)
    pil = image_mod.fromarray(img)
    geo = target_size(w, h, size)
    filt = image_mod.LANCZOS if geo["filter"] == "lanczos" else image_mod.BICUBIC
    ref = np.asarray(pil.resize(geo["resized"], filt).crop(geo["box"]))
    np.testing.assert_array_equal(preprocess_image(img, size), ref)


def test_cv2_resample_is_close() -> None:
    img = cv2.GaussianBlur(_pattern(480, 640, seed=1), (7, 7), 2.0)
    exact = preprocess_image(img, 512)
    approx = preprocess_image(img, 512, resample="cv2")
    assert exact.shape == approx.shape
    assert np.abs(exact.astype(int) - approx.astype(int)).mean() < 2.0


# ------------------------------------------------------------------------------------------
# sources


@pytest.mark.parametrize(
    "w,h,final",
    [
        (1920, 1080, (512, 288)),
        (640, 480, (512, 384)),
        (1242, 375, (512, 144)),
        (1080, 1920, (288, 512)),
        (600, 600, (512, 384)),
    ],
)
def test_folder_worked_examples(tmp_path: Path, w: int, h: int, final: tuple) -> None:
    for k in range(2):
        _write_rgb(tmp_path / f"f{k}.png", _pattern(h, w, seed=k))
    fr = load_frames(tmp_path)
    assert isinstance(fr, Frames)
    assert len(fr) == 2
    assert fr.images.shape == (2, final[1], final[0], 3) and fr.images.dtype == np.uint8
    assert fr.shape == (final[1], final[0])
    assert fr.true_shape.tolist() == [[final[1], final[0]]] * 2
    assert fr.true_shape.dtype == np.int32
    assert fr.original_sizes.tolist() == [[w, h], [w, h]]


def test_folder_224(tmp_path: Path) -> None:
    _write_rgb(tmp_path / "a.png", _pattern(480, 640))
    fr = load_frames(tmp_path, size=224)
    assert fr.images.shape == (1, 224, 224, 3)


def test_folder_sorting_filtering_stride_cap(tmp_path: Path) -> None:
    names = ["b.png", "a.jpg", "c.JPEG", "d.bmp", "e.tif", "f.webp", "frame_10.png", "frame_2.png"]
    for k, n in enumerate(names):
        _write_rgb(tmp_path / n, np.full((48, 64, 3), 10 * k, np.uint8))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub.png").mkdir()  # a directory with an image-like name is ignored
    fr = load_frames(tmp_path, size=224)
    assert fr.names == sorted(names)  # plain string order, as official (frame_10 < frame_2)
    assert fr.indices.tolist() == list(range(len(names)))
    fr2 = load_frames(tmp_path, size=224, stride=3)
    assert fr2.names == sorted(names)[::3]
    fr3 = load_frames(tmp_path, size=224, stride=2, num_frames=3)
    assert fr3.names == sorted(names)[::2][:3]
    np.testing.assert_array_equal(fr3.images, fr.images[::2][:3])


def test_list_of_paths_sorted_by_basename(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    p1 = _write_rgb(tmp_path / "x" / "b.png", np.full((40, 60, 3), 1, np.uint8))
    p2 = _write_rgb(tmp_path / "a.png", np.full((40, 60, 3), 2, np.uint8))
    srcs: list[str | os.PathLike[str]] = [p1, os.fspath(p2)]
    fr = load_frames(srcs)
    assert fr.names == ["a.png", "b.png"]
    fr = load_frames([p1, p2], sort_paths=False)
    assert fr.names == ["b.png", "a.png"]
    assert fr.images[0, 0, 0, 0] == 1


def test_single_image_path(tmp_path: Path) -> None:
    p = _write_rgb(tmp_path / "one.png", _pattern(480, 640))
    fr = load_frames(p)
    assert fr.names == ["one.png"] and fr.images.shape == (1, 384, 512, 3)


def test_list_of_arrays_and_stack() -> None:
    imgs = [_pattern(480, 640, seed=k) for k in range(4)]
    fr = load_frames(imgs)
    assert fr.images.shape == (4, 384, 512, 3)
    assert fr.names == [f"frame_{k:06d}" for k in range(4)]
    np.testing.assert_array_equal(fr.images[1], preprocess_image(imgs[1]))
    fr2 = load_frames(np.stack(imgs), stride=2)
    np.testing.assert_array_equal(fr2.images, fr.images[::2])
    assert fr2.indices.tolist() == [0, 2]
    # gray and uint16 arrays are converted
    gray = load_frames([imgs[0][:, :, 0]])
    assert np.array_equal(gray.images[0, :, :, 0], gray.images[0, :, :, 2])
    deep = load_frames([imgs[0].astype(np.uint16) * 257])
    np.testing.assert_array_equal(deep.images, fr.images[:1])


def test_array_source_errors() -> None:
    with pytest.raises(FrameError, match="float"):
        load_frames([np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(FrameError, match=r"\(N, H, W, C\)"):
        load_frames(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(FrameError, match="shape"):
        load_frames([np.zeros((10, 10, 5), np.uint8)])
    with pytest.raises(FrameError, match="empty"):
        load_frames([])
    with pytest.raises(FrameError, match="only paths or only numpy arrays"):
        load_frames(["a.png", np.zeros((4, 4, 3), np.uint8)])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# video


def _write_video(path: Path, n: int = 12, fps: float = 10.0) -> Path:
    fourcc = "MJPG" if path.suffix == ".avi" else "mp4v"
    code = cv2.VideoWriter_fourcc(*fourcc)  # type: ignore[attr-defined]
    wr = cv2.VideoWriter(str(path), code, fps, (64, 48))
    if not wr.isOpened():
        pytest.skip(f"cv2.VideoWriter cannot write {path.suffix} here")
    for k in range(n):
        frame = np.full((48, 64, 3), 20 * k, np.uint8)
        wr.write(frame)
    wr.release()
    return path


@pytest.mark.parametrize("ext", [".avi", ".mp4"])
def test_video_stride_num_frames_fps(tmp_path: Path, ext: str) -> None:
    vid = _write_video(tmp_path / f"clip{ext}")
    fr = load_frames(vid)
    assert len(fr) == 12
    assert fr.images.shape == (12, 384, 512, 3)
    assert fr.names[3] == f"clip{ext}_frame_3"
    means = fr.images.reshape(12, -1).mean(1)
    np.testing.assert_allclose(means, 20 * np.arange(12), atol=6)
    assert np.all(np.diff(means) > 0)
    fr = load_frames(vid, stride=3)
    assert fr.indices.tolist() == [0, 3, 6, 9]
    fr = load_frames(vid, stride=3, num_frames=2)
    assert fr.indices.tolist() == [0, 3]
    fr = load_frames(vid, fps=5)  # 10 fps video -> interval 2
    assert fr.indices.tolist() == [0, 2, 4, 6, 8, 10]
    fr = load_frames(str(vid), fps=5, stride=2, num_frames=10)
    assert fr.indices.tolist() == [0, 4, 8]
    fr = load_frames([vid], fps=3)  # round(10 / 3) = 3
    assert fr.indices.tolist() == [0, 3, 6, 9]


def test_truncated_video_warns_and_keeps_what_decodes(tmp_path: Path) -> None:
    vid = _write_video(tmp_path / "clip.avi", n=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a whole video, or one read only in part: no warning
        assert len(load_frames(vid)) == 12
        assert len(load_frames(vid, num_frames=3)) == 3
    data = vid.read_bytes()
    movi, idx1 = data.index(b"movi"), data.rindex(b"idx1")  # frame data between these
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: (movi + idx1) // 2])  # half the frames; the header still says 12
    with pytest.warns(UserWarning, match=r"cut\.avi.*reports 12 frames but only (\d+) could"):
        fr = load_frames(cut)
    assert 0 < len(fr) < 12


def test_fps_rejected_for_images(tmp_path: Path) -> None:
    _write_rgb(tmp_path / "a.png", _pattern(48, 64))
    with pytest.raises(FrameError, match="fps applies only to video"):
        load_frames(tmp_path, fps=5)
    with pytest.raises(FrameError, match="fps applies only to video"):
        load_frames([_pattern(48, 64)], fps=5)


def test_unopenable_video(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(FrameError, match="broken.mp4"):
        load_frames(bad)


# ------------------------------------------------------------------------------------------
# decoding conversions


def test_grayscale_png_to_rgb(tmp_path: Path) -> None:
    gray = _pattern(48, 64)[:, :, 0]
    assert cv2.imwrite(str(tmp_path / "g.png"), gray)
    fr = load_frames(tmp_path, size=224)
    ref = load_frames([np.repeat(gray[:, :, None], 3, 2)], size=224)
    np.testing.assert_array_equal(fr.images, ref.images)


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    rgb = _pattern(300, 512)
    alpha = np.zeros((300, 512, 1), np.uint8)
    alpha[:, 100:] = 255
    bgra = np.concatenate([rgb[:, :, ::-1], alpha], axis=2)
    assert cv2.imwrite(str(tmp_path / "a.png"), bgra)
    fr = load_frames(tmp_path / "a.png")
    np.testing.assert_array_equal(fr.images[0], rgb[6:294])  # colour kept, alpha ignored


def test_16bit_png_scaled(tmp_path: Path) -> None:
    rgb8 = _pattern(300, 512)
    deep = rgb8.astype(np.uint16) * 257  # exact 8->16 bit expansion
    assert cv2.imwrite(str(tmp_path / "c16.png"), np.ascontiguousarray(deep[:, :, ::-1]))
    assert cv2.imwrite(str(tmp_path / "g16.png"), deep[:, :, 1])
    fr = load_frames(tmp_path / "c16.png")
    np.testing.assert_array_equal(fr.images[0], rgb8[6:294])
    fr = load_frames(tmp_path / "g16.png")
    np.testing.assert_array_equal(fr.images[0, :, :, 0], rgb8[6:294, :, 1])
    # proper scaling, not truncation: 65535 -> 255, 128 (< 257) -> 0, 32896 -> 128
    vals = np.array([[0, 128, 129, 32896, 65535] * 20] * 30, np.uint16)
    assert cv2.imwrite(str(tmp_path / "v.png"), vals)
    out = load_frames(tmp_path / "v.png", size=224)  # bicubic enlarges; check via array path
    assert out.images.dtype == np.uint8
    arr = load_frames([vals], size=512).images  # 100x30 enlarged: values pass through bicubic
    assert arr.max() == 255 and arr.min() == 0


@pytest.mark.parametrize(
    "orientation,rot",
    [
        (1, None),
        (3, cv2.ROTATE_180),
        (6, cv2.ROTATE_90_CLOCKWISE),
        (8, cv2.ROTATE_90_COUNTERCLOCKWISE),
    ],
)
def test_exif_orientation_applied(tmp_path: Path, orientation: int, rot: int | None) -> None:
    # stored 512x288 (W x H); red block in the stored top-left corner
    stored = np.full((288, 512, 3), 40, np.uint8)
    stored[:64, :128] = (255, 0, 0)
    path = tmp_path / "exif.jpg"
    path.write_bytes(_jpeg_with_orientation(stored, orientation))
    fr = load_frames(path, size=224)  # any size: the decoded orientation is what we check
    upright = stored if rot is None else cv2.rotate(stored, rot)
    assert tuple(fr.original_sizes[0]) == (upright.shape[1], upright.shape[0])
    expect = preprocess_image(upright, 224)
    assert np.abs(fr.images[0].astype(int) - expect.astype(int)).mean() < 3.0


# ------------------------------------------------------------------------------------------
# normalisation


def test_normalized_values_and_layout() -> None:
    imgs = np.stack([_pattern(288, 512, seed=k) for k in range(2)])
    imgs[0, 0, 0] = (0, 255, 128)
    fr = load_frames(imgs)
    x = fr.normalized()
    assert x.shape == (2, 3, 288, 512) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x, imgs.transpose(0, 3, 1, 2) / 127.5 - 1.0, atol=1e-6)
    assert x[0, :, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1], abs=1e-6)
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_normalized_bit_exact_with_torch_imgnorm() -> None:
    torch = pytest.importorskip("torch")
    imgs = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    fr = Frames(images=imgs, names=["x"], original_sizes=np.array([[16, 16]]))
    t = torch.from_numpy(imgs.transpose(0, 3, 1, 2).copy()).float().div(255)
    t = t.sub(0.5).div(0.5)
    assert np.array_equal(fr.normalized(), t.numpy())


# ------------------------------------------------------------------------------------------
# bad input


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FrameError, match="does not exist.*nope"):
        load_frames(tmp_path / "nope")
    with pytest.raises(FrameError, match="does not exist.*gone.png"):
        load_frames([tmp_path / "gone.png"])


def test_directory_without_images(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(FrameError, match="no images"):
        load_frames(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FrameError, match="no images.*empty"):
        load_frames(empty)


def test_directory_with_only_video_hints(tmp_path: Path) -> None:
    _write_video(tmp_path / "clip.avi", n=3)
    with pytest.raises(FrameError, match="clip.avi"):
        load_frames(tmp_path)


def test_unreadable_and_truncated_files(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(FrameError, match="garbage.png"):
        load_frames(bad)
    good = _write_rgb(tmp_path / "full.jpg", _pattern(200, 300))
    data = good.read_bytes()
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(FrameError, match="trunc.jpg"):
        load_frames(trunc)
    pngdata = _write_rgb(tmp_path / "full.png", _pattern(200, 300)).read_bytes()
    tpng = tmp_path / "trunc.png"
    tpng.write_bytes(pngdata[: len(pngdata) // 2])
    with pytest.raises(FrameError, match="trunc.png"):
        load_frames(tpng)
    empty = tmp_path / "zero.jpg"
    empty.write_bytes(b"")
    with pytest.raises(FrameError, match="zero.jpg"):
        load_frames(empty)


def test_bad_file_inside_folder_is_named(tmp_path: Path) -> None:
    _write_rgb(tmp_path / "a.png", _pattern(48, 64))
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(FrameError, match="b.png"):
        load_frames(tmp_path)


def test_shape_mismatch_names_file_and_shapes(tmp_path: Path) -> None:
    _write_rgb(tmp_path / "a.png", _pattern(480, 640))
    _write_rgb(tmp_path / "b.png", _pattern(480, 640))
    _write_rgb(tmp_path / "c.png", _pattern(1080, 1920))
    with pytest.raises(FrameError) as ei:
        load_frames(tmp_path)
    msg = str(ei.value)
    assert "c.png" in msg and "a.png" in msg and "512x288" in msg and "512x384" in msg
    # stride skipping the odd one out is fine
    assert len(load_frames(tmp_path, num_frames=2)) == 2


def test_unsupported_file_and_params(tmp_path: Path) -> None:
    p = tmp_path / "doc.txt"
    p.write_text("x")
    with pytest.raises(FrameError, match="unsupported file type"):
        load_frames(p)
    with pytest.raises(FrameError, match="unsupported file type"):
        load_frames([p])
    arrs = [_pattern(48, 64)]
    with pytest.raises(ValueError, match="stride"):
        load_frames(arrs, stride=0)
    with pytest.raises(ValueError, match="num_frames"):
        load_frames(arrs, num_frames=0)
    with pytest.raises(ValueError, match="size"):
        load_frames(arrs, size=8)
    with pytest.raises(FrameError, match="unsupported frame source"):
        load_frames(42)  # type: ignore[arg-type]
    assert issubclass(FrameError, ValueError)


def test_pathlike_and_unicode_names(tmp_path: Path) -> None:
    p = _write_rgb(tmp_path / "ü-frame.png", _pattern(48, 64))
    # cv2.imwrite may not handle non-ASCII paths on every platform; write via imencode
    if not p.exists():
        ok, buf = cv2.imencode(".png", _pattern(48, 64))
        p.write_bytes(buf.tobytes())
    fr = load_frames(os.fspath(tmp_path))
    assert fr.names == ["ü-frame.png"]
