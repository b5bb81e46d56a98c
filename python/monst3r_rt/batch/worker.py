"""Worker: holds one loaded network backend and turns one video into one complete output
folder. The Ray actor (:mod:`.scheduler`) wraps this same class."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import time
from typing import Any

from .._atomic import commit_dir, partial_dir
from .fingerprint import record_run, weights_hash
from .inputs import BatchInput
from .report import VideoResult

MODES = ("offline", "stream")
# option → default, per mode (Pipeline's fields and Pipeline.run's frame options; Stream's)
OFFLINE_DEFAULTS: dict[str, Any] = {
    "weights": None, "backend": "auto", "device": "auto", "size": 512,
    "graph": "swinstride-5-noncyclic", "batch_size": 16, "align": None, "flow": "dis",
    "masks": None, "flow_weights": None, "engine": None, "precision": "fp32",
    "real_time": False, "num_frames": None, "stride": 1, "fps": None,
}  # fmt: skip
STREAM_DEFAULTS: dict[str, Any] = {
    "weights": None, "backend": "auto", "device": "auto", "size": 512, "engine": None,
    "precision": "fp32", "config": None, "max_frames": None,
}  # fmt: skip
_RUN_OPTIONS = ("num_frames", "stride", "fps")


class BatchError(ValueError):
    """A batch that cannot start (bad option, missing input, unusable output root); raised
    before any video is processed."""


class WorkerLostError(RuntimeError):
    """The worker's device failed mid-video (a CUDA error poisons the process's context): the
    video is retried on a fresh worker, as when the worker's process dies."""


# messages of errors that leave a worker's GPU unusable (not a property of the video)
DEVICE_FAULTS = ("CUDA error", "cudaError", "CUDA driver", "CUBLAS_STATUS", "CUDNN_STATUS",
                 "device-side assert", "GPU is lost", "ECC error", "NVML")  # fmt: skip


def is_device_fault(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) reports a failed GPU rather than a bad video."""
    while exc is not None:
        if any(m in f"{type(exc).__name__}: {exc}" for m in DEVICE_FAULTS):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def normalize_options(mode: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with every default filled in (so that giving a default explicitly does not
    change the fingerprint). Raises :class:`BatchError` for an unknown mode or option."""
    if mode not in MODES:
        raise BatchError(f"mode must be one of {MODES}, got {mode!r}")
    defaults = OFFLINE_DEFAULTS if mode == "offline" else STREAM_DEFAULTS
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise BatchError(f"unknown option(s) for mode={mode!r}: {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(defaults))}")  # fmt: skip
    out = {**defaults, **options}
    if mode == "offline" and out["align"] is None:
        from ..align import AlignConfig

        out["align"] = AlignConfig()
    if mode == "stream" and out["config"] is None:
        from ..stream import StreamConfig

        out["config"] = StreamConfig()
    for key in ("weights", "flow_weights", "engine"):
        if isinstance(out.get(key), os.PathLike):
            out[key] = os.fspath(out[key])
    return out


def clean_partials(out_root: str, name: str) -> list[str]:
    """Remove leftovers (``.NAME.partial-*``) of an attempt at ``name`` that was killed; returns
    the removed paths. Only the batch's own video of that name ever writes them."""
    stale = glob.glob(os.path.join(glob.escape(out_root), f".{glob.escape(name)}.partial-*"))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _alive(pid: int) -> bool:
    """Whether process ``pid`` can still run (a zombie, killed but not yet reaped, cannot)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def wait_gone(where: dict[str, Any] | None, timeout: float = 30.0) -> bool:
    """Wait (at most ``timeout`` s) until the process ``where`` (from :meth:`Worker.where`) has
    ended; True when it has. A process on another host cannot be watched: False at once (its
    leftovers are removed by the next attempt at that video)."""
    if not where or where.get("host") != socket.gethostname():
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(int(where["pid"])):
            return True
        time.sleep(0.01)
    return False


class Worker:
    """One batch worker: a validated :class:`~monst3r_rt.Pipeline` whose backend (weights or
    engine) is loaded once, by :meth:`load`, and reused for every video.

    Args:
        mode: ``"offline"`` (:meth:`Pipeline.run` + :meth:`Reconstruction.save`) or ``"stream"``
            (:func:`~monst3r_rt.stream_video` with ``output=``).
        options: pipeline options (see :func:`~monst3r_rt.batch.run_many`).
        worker_id: a label for reports (the Ray actor's name).

    Raises:
        BatchError / ValueError / RuntimeError / FileNotFoundError on construction for options
        that cannot run (nothing is loaded).
    """

    def __init__(self, mode: str, options: dict[str, Any], worker_id: str = "local") -> None:
        from ..pipeline import Pipeline

        self.mode = mode
        self.options = opts = normalize_options(mode, options)
        self.worker_id = worker_id
        if mode == "offline":
            kw = {k: v for k, v in opts.items() if k not in (*_RUN_OPTIONS, "real_time")}
            self.pipeline = Pipeline(**kw, mode="feedforward" if opts["real_time"] else "offline")
        else:
            opts["config"].check()
            self.pipeline = Pipeline(weights=opts["weights"], backend=opts["backend"],
                                     engine=opts["engine"], device=opts["device"],
                                     precision=opts["precision"], size=opts["size"],
                                     flow=None)  # fmt: skip
        self.loads = 0
        self.load_seconds = 0.0
        self.videos = 0

    def load(self) -> float:
        """Load the weights / engine (once); returns the seconds it took (0 when loaded)."""
        if self.loads:
            return 0.0
        t = time.perf_counter()
        self.pipeline.backend_for_run()
        self.loads += 1
        self.load_seconds = time.perf_counter() - t
        return self.load_seconds

    def weights_hash(self) -> str:
        """The weights' fingerprint, without loading them (:func:`.fingerprint.weights_hash`)."""
        return weights_hash(self.pipeline.weights_source, self.pipeline.engine)

    def where(self) -> dict[str, Any]:
        """``{"host", "pid"}`` of the process this worker runs in (the driver waits for a
        killed worker's process to end before removing its temporary folder)."""
        return {"host": socket.gethostname(), "pid": os.getpid()}

    def stats(self) -> dict[str, Any]:
        """``{"load_seconds", "loads", "videos", "pid"}`` of this worker."""
        return {"load_seconds": self.load_seconds, "loads": self.loads, "videos": self.videos,
                "pid": os.getpid()}  # fmt: skip

    def process(self, item: BatchInput, out_root: str, batch_meta: dict[str, Any],
                attempt: int = 1) -> VideoResult:  # fmt: skip
        """Reconstruct one video into ``out_root/item.name`` atomically.

        The run writes into a temporary ``.NAME.partial-*`` folder beside the target (with an
        ``owner.json`` naming this worker and process), adds ``batch_meta`` to its
        ``run.json`` under ``"batch"``, and renames it into place (replacing an older folder of
        that name). Any error leaves nothing but the old folder (if any); a killed process
        leaves the temporary folder, which the next attempt removes first.

        Returns:
            the :class:`VideoResult` (``"failed"`` with the error for a video that cannot be
            read or reconstructed; the exception is not raised).

        Raises:
            WorkerLostError when the device failed (:func:`is_device_fault`): this worker is
            unusable and the video must be retried elsewhere. KeyboardInterrupt propagates.
        """
        t0 = time.perf_counter()
        final = os.path.join(out_root, item.name)
        clean_partials(out_root, item.name)
        result = VideoResult(input=item.path, name=item.name, status="failed", attempts=attempt,
                             worker=self.worker_id)  # fmt: skip
        staging = partial_dir(final)
        try:
            with open(os.path.join(staging, "owner.json"), "w") as f:
                json.dump({"worker": self.worker_id, "pid": os.getpid()}, f)
            self.load()
            inner = os.path.join(staging, "out")
            frames = self._run(item.path, inner)
            record_run(inner, "batch", {**batch_meta, "input": item.path, "name": item.name})
            commit_dir(inner, final)
            result.status, result.output, result.frames = "done", final, frames
        except Exception as exc:  # noqa: BLE001 - a bad video is recorded, not raised
            if is_device_fault(exc):
                raise WorkerLostError(f"{self.worker_id}: {type(exc).__name__}: {exc}") from exc
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            result.seconds = time.perf_counter() - t0
            self.videos += 1
        return result

    def _run(self, source: str, out: str) -> int:
        """One video into the new folder ``out``; returns its frame count."""
        opts = self.options
        if self.mode == "offline":
            recon = self.pipeline.run(source, num_frames=opts["num_frames"],
                                      stride=opts["stride"], fps=opts["fps"],
                                      progress=False)  # fmt: skip
            recon.save(out)
            return len(recon)
        from ..stream import stream_video

        video = stream_video(source, max_frames=opts["max_frames"], drop=False,
                             backend=self.pipeline.backend_for_run(), size=opts["size"],
                             weights=self.pipeline.weights_source,
                             config=opts["config"], output=out)  # fmt: skip
        for _ in video:
            pass
        if video.reconstruction is None:
            raise ValueError(f"{source}: no frame could be read")
        return len(video.reconstruction)
