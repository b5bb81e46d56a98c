"""MPI Sintel's binary ground-truth files (the Sintel SDK's ``sintel_io.py``; the official
evaluation reads ``.cam`` with the same layout in ``vo_eval.py::sintel_cam_read``).

Both formats are little-endian and start with the float32 tag ``202021.25``:

- ``.dpt`` depth: tag (float32), width (int32), height (int32), then ``height·width`` float32
  depths in row-major order (z-depth, the scene's units);
- ``.cam`` camera: tag (float32), the 3×3 intrinsic matrix ``K`` (9 float64, row-major), the 3×4
  world-to-camera extrinsic ``[R | t]`` (12 float64, row-major), so that a world point ``X``
  projects to ``x ~ K [R | t] X``. The official pose evaluation inverts it to camera-to-world
  (and mean-centres the positions, which the Sim(3)-aligned metrics ignore).
"""

from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np

__all__ = ["read_dpt", "write_dpt", "read_cam", "write_cam", "SINTEL_TAG"]

#: The float32 tag opening every Sintel ``.dpt``/``.cam`` (and ``.flo``) file.
SINTEL_TAG = 202021.25
_TAG_BYTES = struct.pack("<f", SINTEL_TAG)
_CAM_BYTES = 4 + 8 * (9 + 12)
_MAX_PIXELS = 100_000_000  # the SDK's sanity bound


def _read(path: str | os.PathLike[str], kind: str, minimum: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < minimum:
        raise ValueError(
            f"{kind}: {os.fspath(path)} is truncated: {len(data)} bytes, the header needs {minimum}"
        )
    if data[:4] != _TAG_BYTES:
        tag = struct.unpack("<f", data[:4])[0]
        raise ValueError(
            f"{kind}: {os.fspath(path)} has the wrong tag {tag!r} (expected {SINTEL_TAG}, "
            "little-endian float32): not a Sintel file"
        )
    return data


def read_dpt(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a Sintel ``.dpt`` depth map.

    Returns:
        (H,W) float32 depth.

    Raises:
        ValueError: naming the file on a wrong tag, a non-positive or implausible size, or a
            data length other than ``4·H·W`` bytes after the 12-byte header.
    """
    data = _read(path, "read_dpt", 12)
    width, height = struct.unpack("<ii", data[4:12])
    if width <= 0 or height <= 0 or width * height > _MAX_PIXELS:
        raise ValueError(f"read_dpt: {os.fspath(path)} has an invalid size {width}x{height}")
    need = 12 + 4 * width * height
    if len(data) != need:
        what = "is truncated" if len(data) < need else "has trailing bytes"
        raise ValueError(
            f"read_dpt: {os.fspath(path)} {what}: {len(data)} bytes, expected {need} for "
            f"{width}x{height}"
        )
    return np.frombuffer(data, "<f4", width * height, 12).reshape(height, width).astype(np.float32)


def write_dpt(path: str | os.PathLike[str], depth: Any) -> None:
    """Write a (H,W) depth map (stored as float32) as a Sintel ``.dpt`` file.

    Raises:
        ValueError: when ``depth`` is not a non-empty (H,W) real array.
    """
    d = np.asarray(depth)
    if d.ndim != 2 or d.size == 0 or not np.issubdtype(d.dtype, np.number):
        raise ValueError(
            f"write_dpt: depth must be a non-empty real (H,W), got {d.shape} {d.dtype}"
        )
    h, w = d.shape
    with open(path, "wb") as f:
        f.write(_TAG_BYTES + struct.pack("<ii", w, h) + np.ascontiguousarray(d, "<f4").tobytes())


def read_cam(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a Sintel ``.cam`` camera file.

    Returns:
        ``(K, world_to_camera)``: (3,3) and (3,4) float64.

    Raises:
        ValueError: naming the file on a wrong tag or a length other than 172 bytes.
    """
    data = _read(path, "read_cam", _CAM_BYTES)
    if len(data) != _CAM_BYTES:
        raise ValueError(
            f"read_cam: {os.fspath(path)} has trailing bytes: {len(data)}, expected {_CAM_BYTES}"
        )
    vals = np.frombuffer(data, "<f8", 21, 4).astype(np.float64)
    return vals[:9].reshape(3, 3), vals[9:].reshape(3, 4)


def write_cam(path: str | os.PathLike[str], k: Any, world_to_camera: Any) -> None:
    """Write a Sintel ``.cam`` file from ``k`` (3,3) and ``world_to_camera`` (3,4), or (4,4)
    whose last row is dropped; both stored as float64.

    Raises:
        ValueError: naming the array on a wrong shape.
    """
    k = np.asarray(k, np.float64)
    ext = np.asarray(world_to_camera, np.float64)
    if k.shape != (3, 3):
        raise ValueError(f"write_cam: k must be (3,3), got {k.shape}")
    if ext.shape not in ((3, 4), (4, 4)):
        raise ValueError(f"write_cam: world_to_camera must be (3,4) or (4,4), got {ext.shape}")
    with open(path, "wb") as f:
        f.write(
            _TAG_BYTES
            + np.ascontiguousarray(np.concatenate([k.ravel(), ext[:3].ravel()]), "<f8").tobytes()
        )
