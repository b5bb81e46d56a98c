"""The streaming mode's output folder: per-frame files spilled to a temporary folder beside the
output as frames arrive (memory flat for any stream length), the pose-dependent files written at
close, then one rename into place (also from a Ctrl-C handler: the folder of the frames so far).

The folder is the offline one (:meth:`monst3r_rt.reconstruction.Reconstruction.save`), file for
file: the same code writes it, :meth:`Reconstruction.write_files`, driven by lazy per-frame
arrays (:class:`FrameArray`) over the spilled files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .._atomic import check_output_dir, commit_dir, partial_dir
from ..geometry import world_points
from ..reconstruction import FRAME_FILES, Reconstruction, read_frame_file, write_frame_files

__all__ = ["FrameArray", "StreamWriter"]

SPILL = ".spill"
"""Subfolder of the temporary folder for the raw per-frame arrays the official files don't hold
exactly (the raw confidence: ``conf_XXXX.npy`` holds its log); removed before the rename."""


class FrameArray:
    """A read-only (N, *frame_shape) array whose frames are read on demand by ``read(i)``.

    Indexes like NumPy (an int, slice, index or boolean array, or a tuple of them; the first
    index picks frames, the rest apply to those frames): only the frames picked are read. Other
    keys (a multi-axis boolean mask, ``None``/``...`` first) and ``np.asarray`` read every frame.
    Results are new arrays (writing to them changes nothing here).
    """

    def __init__(
        self,
        length: int,
        frame_shape: Sequence[int],
        dtype: Any,
        read: Callable[[int], np.ndarray],
        name: str = "array",
    ) -> None:
        self._n = int(length)
        self._frame_shape = tuple(int(s) for s in frame_shape)
        self._dtype = np.dtype(dtype)
        self._read = read
        self._name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._n, *self._frame_shape)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def ndim(self) -> int:
        return 1 + len(self._frame_shape)

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"FrameArray({self._name}, shape={self.shape}, dtype={self._dtype})"

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` (0 ≤ i < N), checked against the frame shape and cast to the dtype."""
        out = np.asarray(self._read(i), self._dtype)
        if out.shape != self._frame_shape:
            raise ValueError(f"{self._name} frame {i}: read shape {out.shape}, expected "
                             f"{self._frame_shape}")  # fmt: skip
        return out

    def _stack(self, ids: Iterator[int] | Sequence[int]) -> np.ndarray:
        ids = list(ids)
        out = np.empty((len(ids), *self._frame_shape), self._dtype)
        for j, i in enumerate(ids):
            out[j] = self.frame(int(i))
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.frame(i) for i in range(self._n))

    def __getitem__(self, key: Any) -> Any:
        keys = key if isinstance(key, tuple) else (key,)
        first, rest = (keys[0], keys[1:]) if keys else (slice(None), ())
        if first is None or first is Ellipsis:
            return np.asarray(self)[key]
        if not isinstance(first, slice | int | np.integer):
            first = np.asarray(first)
            if first.dtype == bool and first.ndim > 1:  # a mask over several axes
                return np.asarray(self)[key]
            if first.size == 0:
                first = first.astype(np.intp)
        sel = np.arange(self._n)[first]  # NumPy's own rules: negatives, bounds, booleans
        if np.ndim(sel) == 0:  # an int: as NumPy, it counts as an advanced index with the rest
            return self.frame(int(sel))[None][(0, *rest)]
        if isinstance(first, slice):
            return self._stack(sel)[(slice(None), *rest)]
        ids, inverse = np.unique(sel, return_inverse=True)
        return self._stack(ids)[(inverse.reshape(np.shape(sel)), *rest)]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError(f"{self._name}: a FrameArray cannot be viewed without a copy")
        out = self._stack(range(self._n))
        return out if dtype is None else out.astype(dtype, copy=False)


class StreamWriter:
    """Writes the output folder of a stream, one frame at a time.

    Frames' pose-independent files go to a temporary folder beside ``out_dir``
    (``.NAME.partial-XXXX``, as :func:`monst3r_rt._atomic.atomic_dir`) as they arrive; nothing is
    kept in memory but the names. :meth:`finalize` writes the pose-dependent files and renames
    the folder into place; :meth:`abort` (or leaving a ``with`` block without finalizing)
    removes it. ``out_dir`` itself is untouched until that rename.

    Args:
        out_dir: the output folder; refused if it exists and is not empty, unless ``overwrite``
            (then it is replaced only at the rename).
    """

    def __init__(self, out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self._out = check_output_dir(out_dir, overwrite).rstrip(os.sep)
        self._overwrite = overwrite
        self._names: list[str] = []
        self._size: tuple[int, int] | None = None
        self._tmp: str | None = partial_dir(self._out)
        try:
            os.mkdir(os.path.join(self._tmp, SPILL))
        except BaseException:
            self.abort()
            raise

    @property
    def out_dir(self) -> str:
        """The output folder."""
        return self._out

    @property
    def frames_written(self) -> int:
        """How many frames :meth:`write_frame` has completed (indices 0..frames_written−1)."""
        return len(self._names)

    @property
    def closed(self) -> bool:
        """Whether :meth:`finalize` or :meth:`abort` has run."""
        return self._tmp is None

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # a no-op after finalize()

    def _open_tmp(self) -> str:
        if self._tmp is None:
            raise RuntimeError(f"{self._out}: the stream writer is closed (finalized or aborted)")
        return self._tmp

    def write_frame(
        self,
        index: int,
        image: np.ndarray,
        depth: np.ndarray,
        conf: np.ndarray,
        dynamic_mask: np.ndarray,
        name: str | None = None,
    ) -> None:
        """Spill frame ``index``'s files (:data:`monst3r_rt.reconstruction.FRAME_FILES`, and its
        raw confidence) to the temporary folder; nothing is kept in memory.

        Args:
            index: must be :attr:`frames_written` (frames come in order 0, 1, ...).
            image: (H,W,3) uint8 RGB at model resolution (H, W fixed by frame 0).
            depth: (H,W) z-depth (stored float32; :meth:`finalize` may rescale it).
            conf: (H,W) raw confidence ≥ 1 (stored float32).
            dynamic_mask: (H,W) bool, True = moving.
            name: the frame's name (source file or video frame); default ``frame_XXXX``.
        """
        tmp = self._open_tmp()
        if index != self.frames_written:
            raise ValueError(f"frame index {index}: expected {self.frames_written} (frames are "
                             f"written in order 0, 1, ..., N-1)")  # fmt: skip
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"frame {index}: image must be (H,W,3) uint8 RGB, got "
                             f"{image.shape} {image.dtype}")  # fmt: skip
        h, w = self._size or image.shape[:2]
        arrays = {
            "image": image,
            "depth": np.asarray(depth, np.float32),
            "conf": np.asarray(conf, np.float32),
            "dynamic_mask": np.asarray(dynamic_mask),
        }
        for what, arr in arrays.items():
            want = (h, w, 3) if what == "image" else (h, w)
            if arr.shape != want:
                first = " (as frame 0)" if self._size else ""
                raise ValueError(f"frame {index}: {what} must have shape {want}{first}, got "
                                 f"{arr.shape}")  # fmt: skip
        # an interrupted frame leaves files that finalize() drops (it keeps frames_written)
        write_frame_files(tmp, index, **{**arrays, "dynamic_mask": arrays["dynamic_mask"] != 0})
        np.save(_spilled_conf(tmp, index), arrays["conf"])
        self._size = (h, w)
        self._names.append(f"frame_{index:04d}" if name is None else str(name))

    def finalize(
        self,
        poses: np.ndarray,
        intrinsics: np.ndarray,
        depth_scales: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Reconstruction:
        """Write the remaining files of the frames written so far and rename the folder into
        place (replacing an existing ``out_dir`` only with ``overwrite``). Bad arguments (and an
        ``out_dir`` filled meanwhile, without ``overwrite``) raise ValueError (FileExistsError)
        and leave the writer open (fix them, or :meth:`abort`); any later error or
        interrupt removes the temporary folder and leaves ``out_dir`` untouched. Safe to call
        from a ``KeyboardInterrupt`` handler: no partial folder ever appears at ``out_dir``.

        Args:
            poses: (N,4,4) camera-to-world, OpenCV axes, N = :attr:`frames_written` (stored
                float32).
            intrinsics: (N,3,3) pinhole K in pixels (stored float32).
            depth_scales: (N,) positive factors applied to each frame's spilled depth (float32
                product) before anything is written; None = 1.
            meta: run information for ``run.json`` (and the result's ``meta``).

        Returns:
            the :class:`Reconstruction`, its arrays read-only memory maps of the final folder's
            ``reconstruction.npz`` (nothing loaded; exact, unlike ``conf_XXXX.npy``'s log).
        """
        tmp = self._open_tmp()
        n = self.frames_written
        meta = dict(meta or {})
        if n == 0:
            raise ValueError(f"{self._out}: no frame was written; nothing to finalize (abort())")
        poses = _per_frame(poses, (n, 4, 4), "poses")
        intrinsics = _per_frame(intrinsics, (n, 3, 3), "intrinsics")
        scales = None
        if depth_scales is not None:
            scales = _per_frame(depth_scales, (n,), "depth_scales")
            bad = np.flatnonzero(~(np.isfinite(scales) & (scales > 0)))
            if bad.size:
                raise ValueError(f"depth_scales must be finite and > 0, frame {bad[0]} has "
                                 f"{scales[bad[0]]}")  # fmt: skip
        check_output_dir(self._out, self._overwrite)  # it may have been filled meanwhile
        try:
            for pattern in FRAME_FILES.values():  # a frame interrupted mid-write
                path = os.path.join(tmp, pattern.format(n))
                if os.path.exists(path):
                    os.remove(path)
            for i in np.flatnonzero(scales != 1) if scales is not None else ():
                depth = read_frame_file(tmp, i, "depth") * scales[i]
                write_frame_files(tmp, i, depth=depth)
            self._source(tmp, poses, intrinsics, meta).write_files(tmp, frame_files=False)
            shutil.rmtree(os.path.join(tmp, SPILL))
            commit_dir(tmp, self._out)
            self._tmp = None
        except BaseException:
            self.abort()
            raise
        rec = Reconstruction.load(self._out, mmap=True)
        rec.meta = meta
        return rec

    def _source(
        self, tmp: str, poses: np.ndarray, intrinsics: np.ndarray, meta: dict[str, Any]
    ) -> Reconstruction:
        """The reconstruction of the spilled frames, its per-pixel arrays lazy (FrameArray)."""
        n, (h, w) = self.frames_written, self._size

        def read(kind: str) -> Callable[[int], np.ndarray]:
            if kind == "conf":  # the raw confidence (conf_XXXX.npy holds its log)
                return lambda i: np.load(_spilled_conf(tmp, i))
            return lambda i: read_frame_file(tmp, i, kind)

        depths = FrameArray(n, (h, w), np.float32, read("depth"), "depths")

        def pts3d(i: int) -> np.ndarray:
            return world_points(depths.frame(i)[None], poses[i : i + 1], intrinsics[i : i + 1])[0]

        return Reconstruction(
            frames=FrameArray(n, (h, w, 3), np.uint8, read("image"), "frames"),
            depths=depths,
            poses=poses,
            intrinsics=intrinsics,
            conf=FrameArray(n, (h, w), np.float32, read("conf"), "conf"),
            dynamic_masks=FrameArray(n, (h, w), bool, read("dynamic_mask"), "dynamic_masks"),
            pts3d=FrameArray(n, (h, w, 3), np.float32, pts3d, "pts3d"),
            names=list(self._names),
            meta=meta,
        )

    def abort(self) -> None:
        """Remove the temporary folder; ``out_dir`` is left as it was. Idempotent."""
        if self._tmp is not None:
            tmp, self._tmp = self._tmp, None
            shutil.rmtree(tmp, ignore_errors=True)


def _spilled_conf(tmp: str, index: int) -> str:
    return os.path.join(tmp, SPILL, FRAME_FILES["conf"].format(index))


def _per_frame(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``value`` as float32 of ``shape``, or a ValueError naming it."""
    arr = np.asarray(value, np.float32)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (one per frame written), got "
                         f"{arr.shape}")  # fmt: skip
    return arr
