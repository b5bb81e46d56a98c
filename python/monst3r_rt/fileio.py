"""Writers (and readers, for round trips) of the output formats: the official demo's files, TUM
trajectories, 16-bit depth PNGs, PLY point clouds, a glTF binary scene and COLMAP text models.

Poses are camera-to-world 4x4 in OpenCV axes (x right, y down, z forward) unless a format says
otherwise. Every writer takes a path inside a folder that :func:`monst3r_rt._atomic.atomic_dir`
renames into place once complete.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from numpy.lib import format as npformat

from .geometry import (
    frustum_lines,
    quat_wxyz_to_rotmat,
    quat_xyzw_to_rotmat,
    rotmat_to_quat_wxyz,
    rotmat_to_quat_xyzw,
    transform_points,
)

__all__ = [
    "write_official_traj", "read_official_traj", "write_tum", "read_tum", "write_intrinsics",
    "write_depth_png", "read_depth_png", "write_ply", "read_ply", "write_glb", "read_glb",
    "write_colmap", "read_colmap_images", "write_npz", "open_npz_lazy",
]  # fmt: skip


def _poses(t: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """(N,4,4) ``[R | t]`` from translations (N,3) and rotations (N,3,3)."""
    out = np.tile(np.eye(4), (len(t), 1, 1))
    out[:, :3, :3] = rot
    out[:, :3, 3] = t
    return out


# ---- trajectories -------------------------------------------------------------------------------
def write_official_traj(path: str, poses: np.ndarray, times: Sequence[float] | None = None) -> None:
    """``pred_traj.txt`` as the official demo writes it: ``t x y z qw qx qy qz`` per line
    (camera-to-world, scalar-first quaternion; ``t`` = frame index)."""
    times = np.arange(len(poses), dtype=float) if times is None else np.asarray(times, float)
    q = rotmat_to_quat_wxyz(poses[:, :3, :3], positive_w=True)
    rows = np.column_stack([times, poses[:, :3, 3], q])
    np.savetxt(path, rows, fmt="%.8f")


def read_official_traj(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(times (N,), poses (N,4,4))`` from a ``pred_traj.txt``."""
    rows = np.loadtxt(path, ndmin=2)
    return rows[:, 0], _poses(rows[:, 1:4], quat_wxyz_to_rotmat(rows[:, 4:8]))


def write_tum(path: str, poses: np.ndarray, times: Sequence[float] | None = None) -> None:
    """TUM RGB-D trajectory (``t tx ty tz qx qy qz qw``, camera-to-world; evo reads it)."""
    times = np.arange(len(poses), dtype=float) if times is None else np.asarray(times, float)
    q = rotmat_to_quat_xyzw(poses[:, :3, :3], positive_w=True)
    rows = np.column_stack([times, poses[:, :3, 3], q])
    with open(path, "w") as f:
        f.write("# timestamp tx ty tz qx qy qz qw (camera-to-world)\n")
        np.savetxt(f, rows, fmt="%.8f")


def read_tum(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(times (N,), poses (N,4,4))`` from a TUM trajectory."""
    rows = np.loadtxt(path, ndmin=2, comments="#")
    return rows[:, 0], _poses(rows[:, 1:4], quat_xyzw_to_rotmat(rows[:, 4:8]))


def write_intrinsics(path: str, intrinsics: np.ndarray) -> None:
    """``pred_intrinsics.txt``: one row-major 3x3 K per line, ``%.6f`` (official)."""
    np.savetxt(path, np.asarray(intrinsics).reshape(len(intrinsics), 9), fmt="%.6f")


# ---- 16-bit depth PNG with its scale in a tEXt chunk --------------------------------------------
def _png_with_text(png: bytes, key: str, value: str) -> bytes:
    data = key.encode("latin-1") + b"\0" + value.encode("latin-1")
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + data) & 0xFFFFFFFF)
    end = png.rindex(b"IEND") - 4  # before the IEND chunk's length field
    return png[:end] + chunk + png[end:]


def _png_text(png: bytes) -> dict[str, str]:
    out, pos = {}, 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        if kind == b"tEXt":
            key, _, value = png[pos + 8 : pos + 8 + length].partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + length
    return out


def write_depth_png(path: str, depth: np.ndarray, scale: float) -> None:
    """uint16 PNG of ``round(depth·scale)`` (0 = invalid), with ``depth_scale`` in a tEXt chunk:
    depth = value / depth_scale."""
    d = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0) * scale
    ok, buf = cv2.imencode(".png", np.clip(np.round(d), 0, 65535).astype(np.uint16))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    with open(path, "wb") as f:
        f.write(_png_with_text(buf.tobytes(), "depth_scale", repr(float(scale))))


def read_depth_png(path: str) -> np.ndarray:
    """Depth (H,W) float32 from :func:`write_depth_png` (0 where invalid)."""
    with open(path, "rb") as f:
        png = f.read()
    scale = float(_png_text(png)["depth_scale"])
    raw = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    return (raw.astype(np.float64) / scale).astype(np.float32)


# ---- PLY ----------------------------------------------------------------------------------------
_PLY_DTYPE = np.dtype([
    ("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
    ("confidence", "<f4"), ("dynamic", "u1"),
])  # fmt: skip


def write_ply(path: str, points: np.ndarray, colors: np.ndarray, conf: np.ndarray,
              dynamic: np.ndarray) -> None:  # fmt: skip
    """Binary little-endian PLY: x y z (float), red green blue (uchar), confidence (float),
    dynamic (uchar 0/1)."""
    v = np.empty(len(points), _PLY_DTYPE)
    v["x"], v["y"], v["z"] = np.asarray(points, np.float32).T
    v["red"], v["green"], v["blue"] = np.asarray(colors, np.uint8).T
    v["confidence"] = conf
    v["dynamic"] = dynamic
    props = "".join(
        f"property {'float' if v.dtype[n].kind == 'f' else 'uchar'} {n}\n" for n in v.dtype.names
    )
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(v)}\n{props}end_header\n"
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(v.tobytes())


def read_ply(path: str) -> np.ndarray:
    """The vertex table of a PLY written by :func:`write_ply` (structured array)."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    if header[:2] != ["ply", "format binary_little_endian 1.0"]:
        raise ValueError(f"{path}: not a binary little-endian PLY")
    count = int(next(h for h in header if h.startswith("element vertex")).split()[2])
    return np.frombuffer(data[end:], _PLY_DTYPE, count=count)


# ---- glTF binary --------------------------------------------------------------------------------
def write_glb(path: str, points: np.ndarray, colors: np.ndarray, poses: np.ndarray,
              intrinsics: np.ndarray, image_size: tuple[int, int]) -> None:  # fmt: skip
    """A glTF 2.0 binary scene: the point cloud (POINTS with vertex colours) and one frustum per
    camera (LINES, viridis-like ramp over time). Coordinates are the first camera's frame turned to
    glTF's axes (y up, −z forward), as viewers expect."""
    h, w = image_size
    to_gl = np.diag([1.0, -1.0, -1.0, 1.0]) @ np.linalg.inv(poses[0])
    pts = transform_points(to_gl, np.asarray(points, np.float64))
    extent = np.linalg.norm(poses[:, :3, 3] - poses[:, :3, 3].mean(0), axis=1).max()
    size = 0.1 * (extent if extent > 0 else 1.0)
    lines, line_rgb = [], []
    for n, (pose, k) in enumerate(zip(poses, intrinsics, strict=True)):
        seg = frustum_lines(to_gl @ pose, k, w, h, size)
        t = n / max(len(poses) - 1, 1)
        lines.append(seg)
        rgb = np.round(255 * np.array([0.27 + 0.7 * t, 0.9 * t, 0.33 + 0.2 * (1 - t)]))
        line_rgb.append(np.tile(rgb, (len(seg), 1)))
    prims = [(pts.astype(np.float32), np.asarray(colors, np.uint8), 0)]
    if lines:
        prims.append((np.concatenate(lines).astype(np.float32),
                      np.concatenate(line_rgb).astype(np.uint8), 1))  # fmt: skip
    blob, views, accessors, primitives = b"", [], [], []
    for xyz, rgb, mode in prims:
        if len(xyz) == 0:
            continue
        attrs = {}
        for name, arr, comp, norm in (("POSITION", xyz, 5126, False), ("COLOR_0", rgb, 5121, True)):
            raw = np.ascontiguousarray(arr).tobytes()
            views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(raw)})
            blob += raw + b"\0" * (-len(raw) % 4)
            acc = {"bufferView": len(views) - 1, "componentType": comp, "count": len(arr),
                   "type": "VEC3"}  # fmt: skip
            if norm:
                acc["normalized"] = True
            if name == "POSITION":
                acc["min"], acc["max"] = arr.min(0).tolist(), arr.max(0).tolist()
            accessors.append(acc)
            attrs[name] = len(accessors) - 1
        primitives.append({"attributes": attrs, "mode": mode})
    gltf = {
        "asset": {"version": "2.0", "generator": "monst3r_rt"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": primitives}], "buffers": [{"byteLength": len(blob)}],
        "bufferViews": views, "accessors": accessors,
    }  # fmt: skip
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + len(blob)
    with open(path, "wb") as f:
        f.write(struct.pack("<III", 0x46546C67, 2, total))
        f.write(struct.pack("<I4s", len(js), b"JSON") + js)
        f.write(struct.pack("<I4s", len(blob), b"BIN\0") + blob)


def read_glb(path: str) -> tuple[dict, bytes]:
    """``(gltf json, binary chunk)`` of a ``.glb``."""
    with open(path, "rb") as f:
        data = f.read()
    magic, version, total = struct.unpack("<III", data[:12])
    if magic != 0x46546C67 or version != 2 or total != len(data):
        raise ValueError(f"{path}: not a glTF 2.0 binary")
    (jlen,) = struct.unpack("<I", data[12:16])
    gltf = json.loads(data[20 : 20 + jlen])
    (blen,) = struct.unpack("<I", data[20 + jlen : 24 + jlen])
    return gltf, data[28 + jlen : 28 + jlen + blen]


# ---- COLMAP text model --------------------------------------------------------------------------
def write_colmap(folder: str, poses: np.ndarray, intrinsics: np.ndarray,
                 image_size: tuple[int, int], names: Sequence[str], points: np.ndarray,
                 colors: np.ndarray) -> None:  # fmt: skip
    """``cameras.txt`` (one PINHOLE camera per frame), ``images.txt`` (world-to-camera
    ``QW QX QY QZ TX TY TZ``) and ``points3D.txt`` (points with colour, error 0, empty tracks)."""
    os.makedirs(folder, exist_ok=True)
    h, w = image_size
    with open(os.path.join(folder, "cameras.txt"), "w") as f:
        f.write("# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[fx, fy, cx, cy]\n")
        for n, k in enumerate(intrinsics):
            f.write(f"{n + 1} PINHOLE {w} {h} {k[0, 0]:.8f} {k[1, 1]:.8f} {k[0, 2]:.8f} "
                    f"{k[1, 2]:.8f}\n")  # fmt: skip
    w2c = np.linalg.inv(poses)
    q = rotmat_to_quat_wxyz(w2c[:, :3, :3], positive_w=True)
    with open(os.path.join(folder, "images.txt"), "w") as f:
        f.write("# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME (world-to-camera)\n")
        f.write("# POINTS2D[] as (X, Y, POINT3D_ID): none\n")
        for n, name in enumerate(names):
            qw, qx, qy, qz = q[n]
            tx, ty, tz = w2c[n, :3, 3]
            f.write(f"{n + 1} {qw:.10f} {qx:.10f} {qy:.10f} {qz:.10f} {tx:.10f} {ty:.10f} "
                    f"{tz:.10f} {n + 1} {name}\n\n")  # fmt: skip
    with open(os.path.join(folder, "points3D.txt"), "w") as f:
        f.write("# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] (empty)\n")
        ids = np.arange(1, len(points) + 1)
        rows = np.column_stack([ids, points, colors, np.zeros(len(points))])
        np.savetxt(f, rows, fmt=["%d", "%.6f", "%.6f", "%.6f", "%d", "%d", "%d", "%.1f"])


def read_colmap_images(path: str) -> tuple[list[str], np.ndarray]:
    """``(names, camera-to-world poses (N,4,4))`` from a COLMAP ``images.txt``."""
    names, poses = [], []
    with open(path) as f:
        lines = [ln for ln in f if not ln.startswith("#")]
    for ln in lines[::2]:
        el = ln.split()
        qw, qx, qy, qz, tx, ty, tz = map(float, el[1:8])
        w2c = _poses(np.array([[tx, ty, tz]]), quat_wxyz_to_rotmat(np.array([[qw, qx, qy, qz]])))[0]
        poses.append(np.linalg.inv(w2c))
        names.append(el[9])
    return names, np.stack(poses)


# ---- .npz written and read one frame at a time --------------------------------------------------
def write_npz(path: str, arrays: Mapping[str, Any]) -> None:
    """An uncompressed ``.npz`` that ``np.load`` reads back exactly as if ``np.savez`` had written
    it, streamed one leading-axis slice at a time: each value only needs ``.shape``, ``.dtype``
    and ``value[i]`` (e.g. a lazy per-frame array), so memory stays O(one slice). Values without
    a ``.dtype`` go through ``np.asarray``; every entry is written in C order."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            if not hasattr(arr, "dtype"):
                arr = np.asarray(arr)
            shape, dtype = tuple(int(s) for s in np.shape(arr)), np.dtype(arr.dtype)
            if dtype.hasobject:
                raise ValueError(f"{path}: array {key!r} holds Python objects ({dtype})")
            header = {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False,
                      "shape": shape}  # fmt: skip
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                try:  # the version np.save picks: 1.0 unless the header is too long
                    npformat.write_array_header_1_0(f, header)
                except ValueError:
                    npformat.write_array_header_2_0(f, header)
                parts = [arr] if not shape else (arr[i] for i in range(shape[0]))
                for i, part in enumerate(parts):
                    part = np.asarray(part, dtype, order="C")
                    if part.shape != shape[1:] and shape:
                        raise ValueError(f"{path}: {key}[{i}] has shape {part.shape}, expected "
                                         f"{shape[1:]}")  # fmt: skip
                    f.write(part.reshape(-1).view(np.uint8).data)


def open_npz_lazy(path: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` by name, memory-mapped read-only where the entry is stored
    uncompressed (as :func:`write_npz` and ``np.savez`` write them): nothing is read until
    indexed. Compressed entries are read eagerly; pickled objects are refused."""
    path = os.fspath(path)
    out: dict[str, np.ndarray] = {}
    eager = []
    with open(path, "rb") as raw, zipfile.ZipFile(raw) as zf:
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            raw.seek(info.header_offset)
            local = raw.read(30)
            if local[:4] != b"PK\x03\x04":
                raise ValueError(f"{path}: entry {info.filename!r} has no local header")
            n_name, n_extra = struct.unpack("<HH", local[26:30])
            raw.seek(info.header_offset + 30 + n_name + n_extra)
            version = npformat.read_magic(raw) if info.compress_type == zipfile.ZIP_STORED else None
            if version not in ((1, 0), (2, 0)):
                eager.append(key)
                continue
            read_header = npformat.read_array_header_1_0 if version == (1, 0) else (
                npformat.read_array_header_2_0)  # fmt: skip
            shape, fortran, dtype = read_header(raw)
            if dtype.hasobject or math.prod(shape) == 0:
                eager.append(key)
                continue
            mm = np.memmap(path, dtype, "r", raw.tell(), shape, "F" if fortran else "C")
            out[key] = mm.view(np.ndarray)
    if eager:
        with np.load(path, allow_pickle=False) as data:
            out.update({k: data[k] for k in eager})
    return out
