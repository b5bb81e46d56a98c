"""Per-stage latency statistics of a stream (the CLI's status line, ``stream_bench.py`` and
``monst3r-rt bench --stage stream`` read them)."""

from __future__ import annotations

import time

import numpy as np

from .config import FrameResult

__all__ = ["LatencyStats"]

STAGES = ("network", "track", "focal", "mask", "keyframe", "refine_wait", "output", "total")


class LatencyStats:
    """Collects :attr:`FrameResult.timings` and reports percentiles (milliseconds)."""

    def __init__(self) -> None:
        self.timings: dict[str, list[float]] = {}
        self.frames = 0
        self.keyframes = 0
        self.decodes = 0
        self.started = time.perf_counter()

    def add(self, res: FrameResult) -> None:
        self.frames += 1
        self.keyframes += int(res.keyframe)
        self.decodes += res.decodes
        for k, v in res.timings.items():
            self.timings.setdefault(k, []).append(v)
        rest = res.timings.get("total", 0.0) - res.timings.get("network", 0.0)
        self.timings.setdefault("non_network", []).append(rest)

    def percentile(self, stage: str, q: float) -> float:
        """The ``q``-th percentile of a stage's latency in milliseconds (NaN if never seen)."""
        v = self.timings.get(stage)
        return float(np.percentile(v, q) * 1e3) if v else float("nan")

    def fps(self) -> float:
        """Frames per second since the first frame (wall clock)."""
        dt = time.perf_counter() - self.started
        return self.frames / dt if dt > 0 else 0.0

    def status(self, dropped: int = 0) -> str:
        """One status line: frame, FPS, p50/p95 per main stage, keyframes."""
        parts = [f"frame {self.frames - 1}", f"{self.fps():.1f} FPS"]
        for s in ("network", "track", "mask", "non_network"):
            if s in self.timings:
                parts.append(f"{s} {self.percentile(s, 50):.0f}/{self.percentile(s, 95):.0f} ms")
        parts.append(f"keyframes {self.keyframes}")
        if dropped:
            parts.append(f"dropped {dropped}")
        return "  ".join(parts)

    def summary(self) -> dict[str, dict[str, float]]:
        """Every stage seen (:data:`STAGES` order, then ``non_network``) → ``{"total_s": seconds
        summed over the frames, "p50_ms", "p95_ms": percentiles of one frame's latency in
        milliseconds}`` (``run.json``'s ``latency`` of a streamed folder)."""
        return {
            s: {
                "total_s": float(np.sum(self.timings[s])),
                "p50_ms": self.percentile(s, 50),
                "p95_ms": self.percentile(s, 95),
            }
            for s in (*STAGES, "non_network")
            if s in self.timings
        }

    def rows(self) -> list[tuple[str, str]]:
        """(stage, "p50 / p95 ms") rows for every stage seen, then the decoder passes."""
        out = [
            (s, f"{self.percentile(s, 50):.1f} / {self.percentile(s, 95):.1f} ms")
            for s in (*STAGES, "non_network")
            if s in self.timings
        ]
        per = self.decodes / max(self.frames, 1)
        out.append(("decoder passes", f"{self.decodes} ({per:.2f} per frame)"))
        return out
