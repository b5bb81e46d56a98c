"""Frame sources for the streaming mode: video files, image folders, cameras and URLs
(OpenCV capture), and :func:`stream_video`, which pushes a source through a :class:`Stream`.

Live sources (a camera index such as ``0``, or a URL such as ``rtsp://...``) are read by a
thread; frames that arrive while one is being processed are dropped (only the newest waits),
unless ``drop=False`` queues them. Files and folders are read one frame at a time, never dropped.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np

from .._atomic import check_output_dir
from ..frames import FrameError, iter_frames, to_rgb8
from ..reconstruction import Reconstruction
from .config import FrameResult
from .session import Stream

__all__ = ["FrameSource", "VideoStream", "stream_video", "is_live"]


def is_live(source: Any) -> bool:
    """A camera index (int or digits) or a URL (``scheme://``)."""
    if isinstance(source, int) and not isinstance(source, bool):
        return True
    return isinstance(source, str) and (source.isdigit() or "://" in source)


class FrameSource:
    """Iterate ``(name, (H,W,3) uint8 RGB)`` over a source.

    Args:
        source: video file, image folder or file list (as ``load_frames``), a camera index, or
            a URL.
        drop: live sources only: keep only the newest unread frame (True, default for live) or
            queue every frame (False).
        timeout: seconds a live source may deliver nothing before it is declared stopped.
    """

    def __init__(self, source: Any, *, drop: bool | None = None, timeout: float = 10.0):
        self.source = source
        self.live = is_live(source)
        self.drop = self.live if drop is None else bool(drop) and self.live
        self.timeout = timeout
        self.dropped = 0
        self.delivered = 0
        self._cap: Any = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=1 if self.drop else 0)
        self._stop = threading.Event()
        if self.live:
            self._open_capture()
        elif isinstance(source, (str, os.PathLike)) and not os.path.exists(os.fspath(source)):
            raise FrameError(f"path does not exist: {os.fspath(source)!r}")

    def _open_capture(self) -> None:
        arg = int(self.source) if str(self.source).isdigit() else self.source
        self._cap = cv2.VideoCapture(arg)
        if not self._cap.isOpened():
            raise FrameError(f"cannot open camera/stream {self.source!r}")

    def describe(self) -> str:
        return f"camera {self.source}" if str(self.source).isdigit() else repr(self.source)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        if not self.live:
            for name, rgb in iter_frames(self.source):
                self.delivered += 1
                yield name, rgb
            return
        self._thread = threading.Thread(target=self._read_live, daemon=True)
        self._thread.start()
        k = 0
        while True:
            try:
                item = self._queue.get(timeout=self.timeout)
            except queue.Empty:
                raise FrameError(
                    f"{self.describe()} stopped delivering frames (nothing for "
                    f"{self.timeout:g} s after {self.delivered} frames)"
                ) from None
            if item is None:  # the capture ended
                return
            self.delivered += 1
            yield f"frame_{k:06d}", item
            k += 1

    def _read_live(self) -> None:
        while not self._stop.is_set():
            ok, frame = self._cap.read()
            if not ok or frame is None:
                self._queue.put(None)
                return
            rgb = to_rgb8(frame, f"frame of {self.describe()}", bgr=frame.ndim == 3)
            if self.drop:
                try:  # keep only the newest frame
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass
            self._queue.put(rgb)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._cap is not None:
            self._cap.release()


def _close_quietly(source: FrameSource, stream: Stream) -> None:
    """A :class:`VideoStream` that was left open (garbage-collected or alive at exit): finalise
    its output as ``close()`` would; a failure is a warning (a finaliser cannot raise)."""
    source.close()
    if stream.closed:
        return
    try:
        if stream.num_frames == 0:
            stream.abort()
        else:
            stream.close()
    except Exception as exc:
        warnings.warn(f"VideoStream left open: closing its stream failed: {exc}", stacklevel=1)


class VideoStream:
    """Iterator of :class:`FrameResult` over a source through a :class:`Stream`; the stream is
    closed when the source ends, when iteration stops early (``close()``, Ctrl-C) or on an
    error, and :attr:`reconstruction` then holds ``Stream.close()``'s result (refined poses;
    the output folder is finalised). After a ``break``, call ``close()`` (or iterate inside a
    ``with`` block) for the result; a stream left open is still finalised when the
    VideoStream is garbage-collected, or at interpreter exit."""

    def __init__(
        self,
        source: Any,
        *,
        max_frames: int | None = None,
        drop: bool | None = None,
        timeout: float = 10.0,
        **stream_kwargs: Any,
    ):
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be ≥ 1, got {max_frames}")
        if stream_kwargs.get("output") is not None:  # before the source is opened
            check_output_dir(stream_kwargs["output"], bool(stream_kwargs.get("overwrite")),
                             [source])  # fmt: skip
        self.source = FrameSource(source, drop=drop, timeout=timeout)
        try:
            self.stream = Stream(**{"input": source, **stream_kwargs})
        except BaseException:
            self.source.close()
            raise
        # ``break`` out of the loop: closed when garbage-collected, or at the latest at
        # interpreter exit (atexit, while everything close() needs is still alive)
        self._finalizer = weakref.finalize(self, _close_quietly, self.source, self.stream)
        self.max_frames = max_frames
        self.reconstruction: Reconstruction | None = None
        self.names: list[str] = []
        self._it = iter(self.source)
        self.started = time.perf_counter()

    def __iter__(self) -> VideoStream:
        return self

    def __next__(self) -> FrameResult:
        if self.reconstruction is not None or self.stream.closed:
            raise StopIteration
        if self.max_frames is not None and self.stream.num_frames >= self.max_frames:
            self.close()
            raise StopIteration
        try:
            name, rgb = next(self._it)
            res = self.stream.push(rgb, name)
        except StopIteration:
            self.close()
            raise
        except BaseException:
            self.close()  # what was processed is kept
            raise
        self.names.append(name)
        return res

    def close(self) -> Reconstruction | None:
        """Stop reading and close the stream (idempotent); returns the reconstruction (None when
        no frame was processed)."""
        self._finalizer.detach()
        self.source.close()
        if not self.stream.closed:
            if self.stream.num_frames == 0:
                self.stream.abort()
                return None
            self.reconstruction = self.stream.close()
        return self.reconstruction

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def stream_video(source: Any, **kwargs: Any) -> VideoStream:
    """Stream a video file, image folder, camera index (``0``) or URL through a
    :class:`Stream`: ``for res in stream_video("clip.mp4", weights=..., output="out"): ...``.

    Keyword arguments: ``max_frames``, ``drop`` (live sources: drop frames that arrive while
    one is processed; default True for live sources), ``timeout`` (seconds without a frame
    before a live source counts as stopped), and every :class:`Stream` argument (``input``,
    what ``run.json`` records as the input, defaults to ``source``).

    Returns:
        a :class:`VideoStream` (iterate it; ``.reconstruction`` after the end).
    """
    return VideoStream(source, **kwargs)
