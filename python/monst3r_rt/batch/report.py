"""BatchReport: what a batch did, per video, and ``OUT_ROOT/batch_report.jsonl``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

REPORT_FILE = "batch_report.jsonl"


@dataclass
class VideoResult:
    """One video's outcome.

    Attributes:
        input: absolute path of the video / frame folder.
        name: output folder name under ``OUT_ROOT``.
        status: ``"done"``, ``"skipped"`` (complete output with the same fingerprint) or
            ``"failed"``.
        output: the output folder (``OUT_ROOT/name``; absent for a failure).
        seconds: wall time of the video's last attempt (0 when skipped), s.
        frames: frames reconstructed (0 when skipped or failed).
        attempts: tries used (a worker that died mid-video costs one).
        worker: id of the worker that ran it (None when skipped).
        error: ``"Type: message"`` of a failure.
    """

    input: str
    name: str
    status: str
    output: str | None = None
    seconds: float = 0.0
    frames: int = 0
    attempts: int = 0
    worker: str | None = None
    error: str | None = None


@dataclass
class BatchReport:
    """Everything a batch did.

    Attributes:
        out_root: the output root.
        mode: ``"offline"`` or ``"stream"``.
        fingerprint: the batch's configuration fingerprint.
        results: one :class:`VideoResult` per video, in completion order.
        seconds: wall time of the whole batch, s.
        workers: per worker id, ``{"load_seconds": s, "loads": n, "videos": n}`` (weights are
            loaded once per worker: ``loads`` is 1 unless the worker was restarted).
        interrupted: the batch was stopped (Ctrl-C) before every video was processed.
        inputs: how many videos the batch was given (0: unknown, the results' count is used).
    """

    out_root: str
    mode: str
    fingerprint: str
    results: list[VideoResult] = field(default_factory=list)
    seconds: float = 0.0
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    interrupted: bool = False
    inputs: int = 0

    def _by(self, status: str) -> list[VideoResult]:
        return [r for r in self.results if r.status == status]

    @property
    def done(self) -> list[VideoResult]:
        return self._by("done")

    @property
    def skipped(self) -> list[VideoResult]:
        return self._by("skipped")

    @property
    def failed(self) -> list[VideoResult]:
        return self._by("failed")

    @property
    def frames(self) -> int:
        """Frames reconstructed in this batch (skipped videos excluded)."""
        return sum(r.frames for r in self.results)

    @property
    def path(self) -> str:
        """``OUT_ROOT/batch_report.jsonl``."""
        return os.path.join(self.out_root, REPORT_FILE)

    def start_file(self) -> None:
        """Truncate the jsonl (it holds the latest batch)."""
        with open(self.path, "w", encoding="utf-8"):
            pass

    def add(self, result: VideoResult) -> None:
        """Record a result and append its line to the jsonl at once (a crash keeps it)."""
        self.results.append(result)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(result)) + "\n")

    def table(self) -> str:
        """The final summary: counts, frames, time, throughput, and each failure."""
        s = max(self.seconds, 1e-9)
        rows = [
            ("videos", str(max(self.inputs, len(self.results)))),
            ("done", str(len(self.done))),
            ("skipped", str(len(self.skipped))),
            ("failed", str(len(self.failed))),
            ("frames", str(self.frames)),
            ("seconds", f"{self.seconds:.2f}"),
            ("videos/s", f"{len(self.done) / s:.3f}"),
            ("frames/s", f"{self.frames / s:.2f}"),
            ("workers", str(len(self.workers))),
        ]
        if self.interrupted:
            rows.append(("interrupted", "yes (finished folders are complete)"))
            rows.append(("not run", str(max(self.inputs - len(self.results), 0))))
        rows += [(f"failed {r.name}", r.error or "") for r in self.failed]
        rows.append(("report", self.path))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
