"""The batch loops: in-process (one worker) and Ray (one actor per GPU or CPU slot, a bounded
queue per actor, retries of videos whose worker died)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from .._atomic import inputs_inside
from .fingerprint import config_fingerprint, stored_fingerprint
from .inputs import BatchInput, expand_inputs
from .report import BatchReport, VideoResult
from .worker import BatchError, Worker, WorkerLostError, clean_partials, wait_gone


class _Progress:
    """A bar over videos (tqdm when installed and enabled): done / skipped / failed, aggregate
    frames/s of this batch and tqdm's ETA."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = None
        self._t0 = time.perf_counter()
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, desc="videos", unit="video", file=sys.stderr)

    def update(self, report: BatchReport) -> None:
        if self._bar is None:
            return
        fps = report.frames / max(time.perf_counter() - self._t0, 1e-9)
        self._bar.set_postfix_str(f"done={len(report.done)} skipped={len(report.skipped)} "
                                  f"failed={len(report.failed)} {fps:.1f} frames/s")  # fmt: skip
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _check_out_root(out_root: str) -> str:
    out_root = os.path.abspath(os.path.expanduser(out_root))
    try:
        os.makedirs(out_root, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_root):
            pass
    except OSError as exc:
        raise BatchError(f"OUT_ROOT {out_root} is not a writable folder: {exc}") from exc
    return out_root


def _plan(items: list[BatchInput], out_root: str, fingerprint: str,
          overwrite: bool) -> tuple[list[BatchInput], list[BatchInput]]:  # fmt: skip
    """(to run, to skip). A non-empty folder of that name not written by a batch is refused
    before any work unless ``overwrite``."""
    todo, skip = [], []
    foreign = []
    for item in items:
        folder = os.path.join(out_root, item.name)
        stored = stored_fingerprint(folder)
        if stored == fingerprint:
            skip.append(item)
            continue
        if stored is None and os.path.isdir(folder) and os.listdir(folder) and not overwrite:
            foreign.append(folder)
        elif os.path.exists(folder) and not os.path.isdir(folder):
            foreign.append(folder)
        todo.append(item)
    inside = inputs_inside([os.path.join(out_root, t.name) for t in todo],
                           [t.path for t in items])  # fmt: skip
    if inside:
        inp, folder = next(iter(inside.items()))
        raise BatchError(f"{len(inside)} input(s) lie in an output folder (e.g. {inp} in "
                         f"{folder}); writing it would delete them: choose another "
                         "OUT_ROOT")  # fmt: skip
    if foreign:
        raise BatchError(f"{len(foreign)} output folder(s) exist and were not written by a "
                         f"batch (e.g. {foreign[0]}); pass overwrite=True (--overwrite) to "
                         "replace them")  # fmt: skip
    return todo, skip


def run_many(
    inputs: list[str | os.PathLike[str]] | str,
    out_root: str | os.PathLike[str],
    *,
    mode: str = "offline",
    ray_address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 1,
    max_retries: int = 2,
    overwrite: bool = False,
    progress: bool = False,
    on_result: Callable[[VideoResult], None] | None = None,
    **pipeline_options: Any,
) -> BatchReport:
    """Reconstruct many videos, each into ``out_root/<name>/`` exactly as ``monst3r-rt run``
    (``mode="offline"``) or ``monst3r-rt stream -o`` (``mode="stream"``) writes it.

    Args:
        inputs: video files, frame folders, globs or text manifests (:func:`expand_inputs`).
        out_root: the output root (created). ``batch_report.jsonl`` there gets one line per
            video as it finishes (input, name, status, error, seconds, frames, attempts).
        mode: ``"offline"`` or ``"stream"``.
        ray_address: None: in-process (one worker, no Ray needed); ``"auto"``: a local Ray
            (or the one this process is already connected to); ``"ray://host:10001"`` /
            ``"host:6379"``: join that cluster. Needs ``pip install 'monst3r-rt[cluster]'``.
        workers: Ray actors (default: the cluster's GPUs // ``gpus_per_worker``, or its CPUs
            when it has no GPU; at most one per video). Ignored in-process.
        gpus_per_worker: GPUs per actor (0 on a cluster without GPUs, whatever is given).
        max_retries: extra attempts for a video whose worker died (process killed, GPU lost);
            a video that fails by itself (unreadable, too short) is not retried.
        overwrite: replace output folders that exist but were not written by a batch.
        progress: a progress bar on stderr (tqdm).
        on_result: called in this process with each :class:`VideoResult` as it arrives.
        **pipeline_options: ``mode="offline"``: :class:`~monst3r_rt.Pipeline`'s options
            (``weights``, ``backend``, ``device``, ``size``, ``graph``, ``batch_size``,
            ``align``, ``flow``, ``masks``, ``flow_weights``, ``engine``, ``precision``),
            ``real_time`` (bool: ``mode="feedforward"``) and ``num_frames``, ``stride``,
            ``fps``; ``mode="stream"``: ``weights``, ``backend``, ``device``, ``size``,
            ``engine``, ``precision``, ``config`` (:class:`~monst3r_rt.StreamConfig`),
            ``max_frames``.

    Returns:
        the :class:`BatchReport`. A video whose complete output folder carries the same
        configuration fingerprint (:func:`config_fingerprint`, in ``run.json`` under
        ``batch.fingerprint``) is skipped; a changed configuration re-runs it. On Ctrl-C the
        report comes back with ``interrupted=True``: finished folders are complete and nothing
        partial is left.

    Raises:
        BatchError (a ValueError) / FileNotFoundError / the Pipeline's errors before any work:
        for a missing input, an unusable ``out_root``, a bad option.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if max_retries < 0:
        raise BatchError(f"max_retries must be >= 0, got {max_retries}")
    if workers is not None and workers < 1:
        raise BatchError(f"workers must be >= 1, got {workers}")
    items = expand_inputs(inputs)
    probe = Worker(mode, pipeline_options)  # validates every option; loads nothing
    root = _check_out_root(os.fspath(out_root))
    fingerprint = config_fingerprint(mode, probe.options, probe.weights_hash())
    todo, skip = _plan(items, root, fingerprint, overwrite)
    report = BatchReport(out_root=root, mode=mode, fingerprint=fingerprint, inputs=len(items))
    report.start_file()
    bar = _Progress(len(items), progress)
    t0 = time.perf_counter()

    def record(result: VideoResult) -> None:
        report.add(result)
        bar.update(report)
        if on_result is not None:
            on_result(result)

    for item in skip:
        record(VideoResult(item.path, item.name, "skipped", output=os.path.join(root, item.name)))
    meta = {"fingerprint": fingerprint, "mode": mode}
    try:
        if not todo:
            pass
        elif ray_address is None:
            _run_local(probe, pipeline_options, todo, root, meta, record, report, max_retries)
        else:
            _run_ray(mode, pipeline_options, todo, root, meta, record, report, ray_address,
                     workers, gpus_per_worker, max_retries)  # fmt: skip
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        bar.close()
        report.seconds = time.perf_counter() - t0
    return report


def _run_local(worker: Worker, options: dict[str, Any], todo: list[BatchInput], root: str,
               meta: dict[str, Any], record: Callable[[VideoResult], None], report: BatchReport,
               max_retries: int) -> None:  # fmt: skip
    """One worker in this process; a device fault replaces it (weights reloaded) and retries."""
    queue = deque(todo)
    attempts: dict[str, int] = {}
    try:
        worker.load()
        while queue:
            item = queue.popleft()
            attempts[item.name] = attempts.get(item.name, 0) + 1
            try:
                record(worker.process(item, root, meta, attempts[item.name]))
            except WorkerLostError as exc:
                report.workers[worker.worker_id] = {**worker.stats(), "died": True}
                worker = Worker(worker.mode, options, f"local-{len(report.workers) + 1}")
                if attempts[item.name] <= max_retries:
                    queue.appendleft(item)
                else:
                    record(_lost(item, attempts[item.name], worker.worker_id, exc))
                worker.load()
    finally:
        report.workers[worker.worker_id] = worker.stats()


def _lost(item: BatchInput, attempts: int, worker: str, exc: BaseException) -> VideoResult:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return VideoResult(item.path, item.name, "failed", attempts=attempts, worker=worker,
                       error=f"worker died: {type(exc).__name__}: {first}")  # fmt: skip


def _ray_init(ray: Any, address: str) -> bool:
    """Connect (``"auto"``: start a local Ray unless one is running or RAY_ADDRESS is set);
    True when this call started it."""
    if ray.is_initialized():
        return False
    if address == "auto":
        ray.init(include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def _run_ray(mode: str, options: dict[str, Any], todo: list[BatchInput], root: str,
             meta: dict[str, Any], record: Callable[[VideoResult], None], report: BatchReport,
             address: str, workers: int | None, gpus_per_worker: float,
             max_retries: int) -> None:  # fmt: skip
    try:
        import ray
        from ray.exceptions import RayActorError, WorkerCrashedError
    except ImportError as exc:
        raise ImportError("--ray needs Ray: pip install 'monst3r-rt[cluster]'") from exc

    started = _ray_init(ray, address)
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    per_gpu = gpus_per_worker if gpus > 0 else 0
    if workers is None:
        workers = int(gpus // per_gpu) if per_gpu > 0 else int(resources.get("CPU", 1))
    workers = max(1, min(workers, len(todo)))
    actor_cls = ray.remote(Worker)
    run_id = uuid.uuid4().hex[:8]
    serial = [0]

    def new_actor(slot: int) -> tuple[Any, str]:
        serial[0] += 1
        name = f"monst3r-rt-batch-{run_id}-{slot}-{serial[0]}"
        actor = actor_cls.options(name=name, num_cpus=1, num_gpus=per_gpu,
                                  max_restarts=0).remote(mode, options, name)  # fmt: skip
        wheres[slot] = actor.where.remote()  # runs first: actor calls are in order
        return actor, name

    def kill(*slots: int) -> None:
        """Kill the actors in ``slots``, then wait until their processes have ended (all killed
        first, so the waits overlap): a killed actor's call fails at once, while its process
        may still be writing its temporary folder."""
        for slot in slots:
            ray.kill(actors[slot][0])
        for slot in slots:
            try:
                where = ray.get(wheres[slot], timeout=10)
            except Exception:  # noqa: BLE001 - died before it ran anything
                continue
            wait_gone(where)

    wheres: dict[int, Any] = {}

    actors = {slot: new_actor(slot) for slot in range(workers)}
    loads = {slot: actors[slot][0].load.remote() for slot in actors}
    pending = deque(todo)
    attempts: dict[str, int] = {}
    inflight: dict[Any, tuple[int, BatchInput]] = {}  # one video per actor: backpressure
    idle = list(actors)
    try:
        while pending or inflight:
            while idle and pending:
                slot, item = idle.pop(0), pending.popleft()
                attempts[item.name] = attempts.get(item.name, 0) + 1
                ref = actors[slot][0].process.remote(item, root, meta, attempts[item.name])
                inflight[ref] = (slot, item)
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                slot, item = inflight.pop(ref)
                idle.append(slot)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a dead worker, or an unsendable result
                    cause = getattr(exc, "cause", None)
                    lost = (RayActorError, WorkerCrashedError, WorkerLostError)
                    if not (isinstance(exc, lost) or isinstance(cause, WorkerLostError)):
                        result = VideoResult(item.path, item.name, "failed",
                                             attempts=attempts[item.name], worker=actors[slot][1],
                                             error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                    else:
                        kill(slot)  # a GPU fault leaves it alive but unusable
                        _collect_stats(ray, report, actors[slot][1], None)
                        actors[slot] = new_actor(slot)
                        loads[slot] = actors[slot][0].load.remote()
                        if attempts[item.name] <= max_retries:
                            pending.appendleft(item)  # next free worker, before the rest
                            continue
                        clean_partials(root, item.name)
                        result = _lost(item, attempts[item.name], actors[slot][1], exc)
                record(result)
        for actor, name in actors.values():
            _collect_stats(ray, report, name, actor)
    finally:
        kill(*actors)  # interrupted: killed attempts' processes end, then folders go
        for _, item in inflight.values():
            clean_partials(root, item.name)
        if started:
            ray.shutdown()


def _collect_stats(ray: Any, report: BatchReport, name: str, actor: Any | None) -> None:
    if actor is None:
        report.workers.setdefault(name, {"died": True})
        return
    try:
        report.workers[name] = ray.get(actor.stats.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - a worker that died just now
        report.workers.setdefault(name, {"died": True})
