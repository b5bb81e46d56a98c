"""Rows of ``monst3r-rt bench`` (:class:`Record`), its JSON document, tables and ``--compare``."""

from __future__ import annotations

import datetime
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .schema import SCHEMA_NAME, SCHEMA_VERSION, validate

__all__ = ["Record", "make_document", "save_json", "load_json", "records_of", "compare",
           "Comparison", "format_table", "format_scale", "format_comparison",
           "markdown_table"]  # fmt: skip


@dataclass
class Record:
    """One row of the benchmark (see :mod:`monst3r_rt.bench.schema` for every field)."""

    stage: str
    backend: str
    precision: str = "fp32"
    batch: int = 1
    device: str = "cpu"
    size: tuple[int, int] = (288, 512)
    variant: str = ""
    runtime: str = ""
    frames: int | None = None
    weights: str = "random"
    baseline: bool = False
    status: str = "ok"
    reason: str = ""
    samples: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    throughput: float | None = None
    unit: str = "frames/s"
    speedup: float | None = None
    peak_rss_mb: float | None = None
    peak_gpu_allocated_mb: float | None = None
    peak_gpu_reserved_mb: float | None = None
    breakdown: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def key(self) -> tuple:
        """What identifies a row across runs (for ``--compare``)."""
        return (self.stage, self.variant, self.backend, self.precision, self.batch, self.device,
                tuple(self.size), self.frames)  # fmt: skip

    def label(self) -> str:
        name = self.backend if self.backend != "none" else ""
        if self.variant:
            name = f"{name} {self.variant}".strip()
        parts = [self.stage, name, self.precision if self.backend != "none" else "",
                 f"b{self.batch}" if self.stage in ("encoder", "decoder", "pair") else "",
                 f"N={self.frames}" if self.frames else "", self.device]  # fmt: skip
        return " ".join(p for p in parts if p)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = [int(v) for v in self.size]
        for k, v in d.items():  # JSON has no NaN: unmeasured is null
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["size"] = tuple(kw.get("size", (0, 0)))
        return cls(**kw)


def make_document(records: list[Record], machine: dict[str, Any], settings: dict[str, Any],
                  elapsed_s: float, interrupted: bool = False) -> dict[str, Any]:  # fmt: skip
    """The ``--json`` document (validated against :data:`~monst3r_rt.bench.schema.SCHEMA`)."""
    doc = {
        "schema": SCHEMA_NAME, "version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": float(elapsed_s), "interrupted": bool(interrupted),
        "machine": machine, "settings": settings, "records": [r.to_dict() for r in records],
    }  # fmt: skip
    validate(doc)
    return doc


def save_json(doc: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a document (atomically: a temporary file, then a rename)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def load_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a document written by ``--json``.

    Raises:
        FileNotFoundError; ValueError (:class:`~monst3r_rt.bench.schema.SchemaError`) naming the
        file and the offending field.
    """
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None
    try:
        validate(doc)
    except ValueError as exc:
        raise ValueError(f"{path}: not a monst3r-rt bench document: {exc}") from None
    return doc


def records_of(doc_or_records: Any) -> list[Record]:
    """Records of a document, a list of dicts or a list of :class:`Record`."""
    if isinstance(doc_or_records, dict):
        doc_or_records = doc_or_records["records"]
    return [r if isinstance(r, Record) else Record.from_dict(r) for r in doc_or_records]


@dataclass
class Comparison:
    """Per-row latency ratios ``new p50 / old p50`` (> 1: slower).

    Attributes:
        rows: ``(label, old_ms, new_ms, ratio, verdict)``; verdict ``"ok"``, ``"regressed"``,
            ``"only in new"``, ``"only in old"`` or ``"not measured"``.
        fail_above: the tolerated slow-down (0.1: 10 %).
    """

    rows: list[tuple[str, float | None, float | None, float | None, str]]
    fail_above: float

    @property
    def regressed(self) -> list[str]:
        return [r[0] for r in self.rows if r[4] == "regressed"]


def compare(old: Any, new: Any, fail_above: float = 0.10) -> Comparison:
    """Compare two runs row by row (rows matched by :meth:`Record.key`).

    Args:
        old, new: documents or record lists (:func:`records_of`).
        fail_above: a row whose p50 latency grew by more than this fraction is ``"regressed"``.
    """
    if not fail_above >= 0:
        raise ValueError(f"fail_above must be >= 0, got {fail_above!r}")
    a = {r.key(): r for r in records_of(old)}
    b = {r.key(): r for r in records_of(new)}
    rows: list[tuple[str, float | None, float | None, float | None, str]] = []
    for key, r in b.items():
        o = a.get(key)
        if o is None:
            rows.append((r.label(), None, r.p50_ms, None, "only in new"))
        elif not (o.ok and r.ok and o.p50_ms and r.p50_ms is not None):
            rows.append((r.label(), o.p50_ms, r.p50_ms, None, "not measured"))
        else:
            ratio = r.p50_ms / o.p50_ms
            verdict = "regressed" if ratio > 1 + fail_above else "ok"
            rows.append((r.label(), o.p50_ms, r.p50_ms, ratio, verdict))
    rows += [(o.label(), o.p50_ms, None, None, "only in old") for k, o in a.items() if k not in b]
    return Comparison(rows, fail_above)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table with padded columns (the benchmarks' and the bench command's format)."""
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]

    def line(r: list[Any]) -> str:
        return "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])  # fmt: skip


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, fmt)


def _ms(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.1f}" if v < 10_000 else f"{v / 1e3:.1f} s"


def format_table(records: list[Record]) -> str:
    """The results as a Markdown table; skipped/failed rows carry their reason."""
    gpu = any(r.peak_gpu_allocated_mb is not None for r in records)
    header = ["stage", "backend", "runtime", "prec", "batch", "N", "p50 ms", "p95 ms", "p99 ms",
              "throughput", "vs official", "peak RSS MB"]  # fmt: skip
    if gpu:
        header += ["GPU alloc/res MB"]
    header += ["notes"]
    rows = []
    for r in records:
        name = (f"{r.backend} {r.variant}".strip() if r.backend != "none" else r.variant) or "-"
        if r.baseline:
            name = "official per-pair"
        row = [r.stage, name, r.runtime or "-", r.precision if r.backend != "none" else "-",
               r.batch if r.stage in ("encoder", "decoder", "pair") else "-",
               r.frames or "-", _ms(r.p50_ms), _ms(r.p95_ms), _ms(r.p99_ms),
               f"{_f(r.throughput, '.3g')} {r.unit}" if r.ok else "-",
               f"{r.speedup:.2f}x" if r.speedup is not None else "-",
               _f(r.peak_rss_mb, ".0f")]  # fmt: skip
        if gpu:
            row.append(f"{_f(r.peak_gpu_allocated_mb, '.0f')}/{_f(r.peak_gpu_reserved_mb, '.0f')}")
        if r.ok:
            unit = "s" if r.stage in ("pipeline", "align") else "ms"
            div = 1e3 if unit == "s" else 1.0
            notes = ", ".join(f"{k} {v / div:.3g}" for k, v in r.breakdown.items())
            row.append(f"p50 {unit}: {notes}" if notes else "")
        else:
            row.append(f"{r.status}: {r.reason}")
        rows.append(row)
    return markdown_table(header, rows)


def format_scale(records: list[Record]) -> str:
    """How time and memory grow with the number of frames (align / pipeline rows with several
    N): per series, p50 seconds, seconds per frame, and ratios against the smallest N."""
    series: dict[tuple, list[Record]] = {}
    for r in records:
        if r.stage in ("align", "pipeline") and r.ok and r.frames:
            series.setdefault((r.stage, r.variant, r.backend, r.precision, r.device), []).append(r)
    rows = []
    for key, rs in series.items():
        if len({r.frames for r in rs}) < 2:
            continue
        rs = sorted(rs, key=lambda r: r.frames)
        t0, m0, n0 = rs[0].p50_ms, rs[0].peak_rss_mb, rs[0].frames
        for r in rs:
            name = " ".join(p for p in (key[0], key[1], key[2] if key[2] != "none" else "") if p)
            s = r.p50_ms / 1e3
            mem = f"{r.peak_rss_mb / m0:.2f}x" if m0 and r.peak_rss_mb else "-"
            rows.append([name, r.frames, f"{s:.2f}", f"{s / r.frames:.3f}", f"{r.p50_ms / t0:.2f}x",
                         f"{r.frames / n0:.2f}x", _f(r.peak_rss_mb, ".0f"), mem])  # fmt: skip
    if not rows:
        return ""
    return markdown_table(["series", "N", "p50 s", "s per frame", "time vs first", "N vs first",
                           "peak RSS MB", "memory vs first"], rows)  # fmt: skip


def format_comparison(c: Comparison) -> str:
    rows = [[label, _ms(o), _ms(n), _f(ratio, ".2f") + ("x" if ratio is not None else ""), v]
            for label, o, n, ratio, v in c.rows]  # fmt: skip
    return markdown_table(["row", "old p50 ms", "new p50 ms", "new/old", "verdict"], rows)
