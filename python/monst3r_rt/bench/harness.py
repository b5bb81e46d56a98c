"""The timing core of ``monst3r-rt bench`` and of the ``benchmarks/`` scripts: warm-up, repeats,
percentiles, peak host RSS and (on a GPU) peak device memory and CUDA-event timing.

Latencies are wall-clock seconds between the start and the end of one call of the measured
function: ``time.perf_counter`` on the CPU; on a GPU, CUDA events recorded on the current stream
around the call and read after a synchronisation (so queued kernels are counted). The harness adds
two clock reads (or two event records) and one list append per sample; against the stages it
measures (milliseconds to seconds) that is far below 1 %.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Measurement", "measure", "percentiles", "rss_mb", "peak_rss_mb", "reset_peak_rss",
    "MemoryPeak",
]  # fmt: skip


def _status_kb(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def rss_mb() -> float:
    """Current resident set size of this process in MiB (``VmRSS``; ``ru_maxrss`` elsewhere)."""
    kb = _status_kb("VmRSS")
    if kb is None:
        return peak_rss_mb()
    return kb / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) to the current RSS by writing ``5`` to
    ``/proc/self/clear_refs`` (Linux ≥ 4.0). Returns False where that is not possible: then
    :func:`peak_rss_mb` is the process's peak since it started."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size in MiB since the last :func:`reset_peak_rss` (``VmHWM``), or the
    process's lifetime peak (``ru_maxrss``) where ``/proc`` is not available."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return kb / 1024


def percentiles(samples_s: Any, qs: tuple[float, ...] = (50, 95, 99)) -> list[float]:
    """Percentiles (linear interpolation, numpy's default) of latencies in seconds → ms."""
    a = np.asarray(samples_s, dtype=np.float64)
    if a.size == 0:
        return [float("nan")] * len(qs)
    return [float(v) * 1e3 for v in np.percentile(a, qs)]


@dataclass
class MemoryPeak:
    """Peak memory of a measured block: host RSS (MiB) and, on a GPU, torch's peak allocated
    and reserved device memory (MiB; None without CUDA)."""

    rss_mb: float = float("nan")
    gpu_allocated_mb: float | None = None
    gpu_reserved_mb: float | None = None


def _torch_cuda(device: str) -> Any:
    if not str(device).startswith("cuda"):
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


class _Peak:
    """Context manager resetting the peak counters on entry and reading them on exit."""

    def __init__(self, device: str = "cpu"):
        self.torch = _torch_cuda(device)
        self.peak = MemoryPeak()

    def __enter__(self) -> MemoryPeak:
        reset_peak_rss()
        if self.torch is not None:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        return self.peak

    def __exit__(self, *exc: object) -> None:
        self.peak.rss_mb = peak_rss_mb()
        if self.torch is not None:
            self.torch.cuda.synchronize()
            self.peak.gpu_allocated_mb = self.torch.cuda.max_memory_allocated() / 2**20
            self.peak.gpu_reserved_mb = self.torch.cuda.max_memory_reserved() / 2**20


def memory_peak(device: str = "cpu") -> _Peak:
    """``with memory_peak(device) as peak: ...`` → ``peak`` (:class:`MemoryPeak`) filled on exit."""
    return _Peak(device)


@dataclass
class Measurement:
    """Latencies of ``repeat`` calls after ``warmup`` calls.

    Attributes:
        samples_s: (repeat,) seconds per call.
        memory: peak memory over the warm-up and the repeats.
        timer: ``"perf_counter"`` or ``"cuda_events"``.
        result: the measured function's return value of the last call.
    """

    samples_s: list[float]
    memory: MemoryPeak = field(default_factory=MemoryPeak)
    timer: str = "perf_counter"
    result: Any = None

    @property
    def p50_ms(self) -> float:
        return percentiles(self.samples_s, (50,))[0]

    @property
    def mean_s(self) -> float:
        return float(np.mean(self.samples_s)) if self.samples_s else float("nan")


def measure(
    fn: Callable[[int], Any],
    warmup: int = 1,
    repeat: int = 5,
    device: str = "cpu",
    on_sample: Callable[[], None] | None = None,
) -> Measurement:
    """Call ``fn(k)`` ``warmup`` times unmeasured, then ``repeat`` times measured.

    Args:
        fn: the work; receives the call index (warm-up calls get negative indices), so it can
            vary its inputs between calls.
        warmup: calls before measuring (first-call allocations, kernel selection, caches).
        repeat: measured calls (≥ 1).
        device: ``"cuda..."``: time with CUDA events on the current stream and report torch's
            peak device memory; otherwise ``time.perf_counter``.
        on_sample: called after each call (a progress bar's step).

    Returns:
        a :class:`Measurement`; peak RSS covers warm-up and repeats.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    torch = _torch_cuda(device)
    samples: list[float] = []
    result = None
    with memory_peak(device) as peak:
        for k in range(-warmup, 0):
            result = fn(k)
            if on_sample is not None:
                on_sample()
        if torch is not None:
            torch.cuda.synchronize()
            for k in range(repeat):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                result = fn(k)
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / 1e3)
                if on_sample is not None:
                    on_sample()
        else:
            for k in range(repeat):
                t = time.perf_counter()
                result = fn(k)
                samples.append(time.perf_counter() - t)
                if on_sample is not None:
                    on_sample()
    return Measurement(samples, peak, "cuda_events" if torch is not None else "perf_counter",
                       result)  # fmt: skip


def cpu_threads() -> int:
    """Threads torch uses for intra-op work (``os.cpu_count()`` without torch)."""
    try:
        import torch

        return int(torch.get_num_threads())
    except ImportError:
        return os.cpu_count() or 1
