"""``monst3r_rt.bench.run``: plan every requested combination, validate all options before any
work, then measure them one by one (progress bar; rows reach ``on_record`` as they are measured,
so an interrupted run keeps what it measured)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from typing import Any

from .records import Record
from .schema import STAGES

__all__ = ["run", "check_options", "parse_size", "BACKENDS", "PRECISIONS", "STAGES",
           "SCALE_FRAMES", "QUICK_STAGES"]  # fmt: skip

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
SCALE_FRAMES = (16, 32, 65, 128)
QUICK_STAGES = ("encoder", "decoder", "pair", "stream")
SOLVERS = ("adam", "lm")


def parse_size(size: Any) -> tuple[int, int]:
    """``"512x288"`` (W x H, as on the command line) or ``(H, W)`` → ``(H, W)``, multiples of 16."""
    if isinstance(size, str):
        try:
            w, h = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise ValueError(f"size must be WxH, e.g. 512x288, got {size!r}") from None
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be (H, W) or 'WxH', got {size!r}") from None
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise ValueError(f"size {w}x{h} (W x H) must be positive multiples of 16")
    return h, w


def _names(what: str, values: Any, allowed: Sequence[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [v.strip() for v in values.split(",") if v.strip()]
    values = tuple(values)
    if not values:
        raise ValueError(f"no {what} given; use some of {', '.join(allowed)}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {', '.join(map(repr, bad))}; use some of "
                         f"{', '.join(allowed)}")  # fmt: skip
    return tuple(dict.fromkeys(values))


def _ints(what: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, (int, str)):
        values = [values] if isinstance(values, int) else values.split(",")
    try:
        out = tuple(int(v) for v in values)
    except ValueError:
        raise ValueError(f"{what} must be positive integers, got {values!r}") from None
    if not out or any(v < 1 for v in out):
        raise ValueError(f"{what} must be positive integers, got {values!r}")
    return tuple(dict.fromkeys(out))


def check_options(*, weights: Any = None, random: bool = False, size: Any = "512x288",
                  backends: Any = BACKENDS, precisions: Any = ("fp32",), batches: Any = (1,),
                  stages: Any = STAGES, frames: int | None = None, warmup: int = 1,
                  repeat: int = 5, device: str = "auto", engine: Any = None,
                  scale: bool = False, quick: bool = False, clip: Any = None,
                  config: Any = None) -> dict[str, Any]:  # fmt: skip
    """Validate every option together, loading nothing; returns the resolved settings.

    Raises:
        ValueError: an unknown backend, precision, stage, device or size, a bad count, or
            neither/both of ``weights`` and ``random`` (the message says what to change);
        RuntimeError: ``device="cuda"`` without a GPU visible to torch;
        FileNotFoundError: ``weights``, ``engine`` or ``clip`` missing.
    """
    import os

    if (weights is None) == (not random):
        raise ValueError("pass exactly one of --weights W (a checkpoint) or --random (the "
                         "full-size architecture with random weights)")  # fmt: skip
    if config is not None and weights is not None:
        raise ValueError("config (the architecture of random weights) applies to --random only")
    h, w = parse_size(size)
    st = _names("stage", QUICK_STAGES if quick and stages == STAGES else stages, STAGES)
    bk = _names("backend", backends, BACKENDS)
    pr = _names("precision", precisions, PRECISIONS)
    bt = _ints("batch", batches)
    if quick:
        bt = bt[:1]
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if frames is not None and (isinstance(frames, bool) or int(frames) < 2):
        raise ValueError(f"frames must be at least 2, got {frames!r}")
    if warmup < 0 or repeat < 1:
        raise ValueError(f"need warmup >= 0 and repeat >= 1, got {warmup} and {repeat}")
    for what, path in (("weights", weights), ("engine", engine), ("clip", clip)):
        if (
            path is not None
            and not os.path.exists(path)
            and not (
                what == "weights" and "/" in str(path) and not str(path).startswith((".", "/"))
            )
        ):  # a Hub id for weights is resolved later
            raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        import torch
    except ImportError:
        raise RuntimeError(
            "monst3r-rt bench needs torch (pip install 'monst3r-rt[torch]')"
        ) from None
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise RuntimeError("--device cuda: torch sees no CUDA GPU; use --device cpu or auto")
    dev = "cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu"
    if quick:
        warmup, repeat = min(warmup, 1), min(repeat, 3)
    ns = SCALE_FRAMES if scale else (int(frames) if frames else 16,)
    return {"weights": None if weights is None else str(weights), "size": [h, w],
            "backends": list(bk), "precisions": list(pr), "batches": list(bt), "stages": list(st),
            "frames": frames, "scale_frames": list(ns), "warmup": warmup, "repeat": repeat,
            "device": dev, "engine": None if engine is None else str(engine),
            "scale": bool(scale), "quick": bool(quick), "clip": None if clip is None else str(clip),
            "config": "custom" if config is not None else "monst3r"}  # fmt: skip


class _Bar:
    """tqdm over the planned measured calls (stderr), silent without tqdm or when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc="bench", unit="call", leave=False)
            except ImportError:
                pass

    def label(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def catch_up(self, done: int) -> None:
        if self.bar is not None and done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(*, weights: str | None = None, random: bool = False, size: Any = "512x288",
        backends: Any = BACKENDS, precisions: Any = ("fp32",), batches: Any = (1,),
        stages: Any = STAGES, frames: int | None = None, warmup: int = 1, repeat: int = 5,
        device: str = "auto", engine: str | None = None, export: bool = False,
        scale: bool = False, quick: bool = False, clip: str | None = None,
        config: dict[str, Any] | None = None, progress: bool = False,
        on_record: Callable[[Record], None] | None = None,
        settings: dict[str, Any] | None = None) -> list[Record]:  # fmt: skip
    """Measure every requested combination; what cannot run here is a row with its reason.

    Args:
        weights: a checkpoint (path or Hub id), or ``random=True`` for the full-size MonST3R
            architecture (``MONST3R_KWARGS``) with random weights (same cost, no download);
            ``config`` replaces that architecture (tests: a tiny one).
        size: ``"WxH"`` or ``(H, W)``, multiples of 16.
        backends, precisions, stages: lists or comma-separated strings (see the CLI).
        batches: frames (encoder) or pairs (decoder, pair) per call.
        frames: frames of the stream (measured pushes; default ``repeat``), align and pipeline
            (default 16) rows; ``scale=True`` measures align/pipeline at N = 16, 32, 65, 128.
        warmup, repeat: unmeasured and measured calls per row (align and pipeline rows: at most
            1 and 3, each call being a whole job; pipeline rows: no warm-up, weight loading
            included in the first call).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        engine: an export folder (``monst3r-rt export``) for onnxruntime / tensorrt rows.
        export: without ``engine``, export this run's network into a temporary folder first
            (otherwise those rows are skipped with the reason).
        quick: stages encoder, decoder, pair, stream (unless given), one batch size, at most 1
            warm-up and 3 repeats.
        clip: a video or image folder for the stream and pipeline rows instead of a generated
            synthetic scene.
        progress: a progress bar on stderr.
        on_record: called with each row as soon as it is measured.
        settings: filled with the resolved settings (for the JSON document).

    Returns:
        the rows in measuring order: per network stage its official baseline first, then
        backend × precision × batch; then stream, align (adam, lm) × N, pipeline × N.

    Raises:
        ValueError / RuntimeError / FileNotFoundError from :func:`check_options`, before any
        work; KeyboardInterrupt passes through (rows measured so far went to ``on_record``).
    """
    opts = check_options(weights=weights, random=random, size=size, backends=backends,
                         precisions=precisions, batches=batches, stages=stages, frames=frames,
                         warmup=warmup, repeat=repeat, device=device, engine=engine,
                         scale=scale, quick=quick, clip=clip, config=config)  # fmt: skip
    opts["export"] = bool(export)
    if settings is not None:
        settings.update(opts)
    from . import stages as S

    def make_net() -> Any:
        import torch

        from ..network import MONST3R_KWARGS, PointmapNet, load_model

        if opts["weights"] is not None:
            return load_model(opts["weights"])
        torch.manual_seed(0)
        return PointmapNet(**(config if config is not None else MONST3R_KWARGS))

    ctx = S.Context(make_net=make_net, weights=opts["weights"], size=tuple(opts["size"]),
                    device=opts["device"], warmup=opts["warmup"], repeat=opts["repeat"],
                    engine=opts["engine"], export=opts["export"], clip=opts["clip"])  # fmt: skip
    st, bk, pr, bt = opts["stages"], opts["backends"], opts["precisions"], opts["batches"]
    stream_n = int(frames) if frames else ctx.repeat
    ns = opts["scale_frames"]
    # the plan: (label, calls, thunk) — thunks return a Record or raise (→ a row with the reason)
    plan: list[tuple[str, int, Callable[[], Record], Callable[[str, str], Record]]] = []
    per = ctx.warmup + ctx.repeat
    net_stages = [s for s in st if s in S.NETWORK_STAGES]
    for s in net_stages:
        plan.append((f"{s} official", per, lambda s=s: S.baseline_row(ctx, s),
                     lambda st_, why, s=s: ctx.row(s, "official", baseline=True, status=st_,
                                                   reason=why)))  # fmt: skip
    for kind in bk:
        for p in pr:
            key = (kind, p)
            for s in net_stages:
                for b in bt:
                    plan.append((f"{s} {kind} {p} b{b}", per,
                                 lambda s=s, b=b, key=key: S.network_row(
                                     ctx, s, ctx.backend(key), key[0], key[1], b),
                                 lambda st_, why, s=s, b=b, kind=kind, p=p: ctx.row(
                                     s, kind, p, batch=b, status=st_, reason=why)))  # fmt: skip
            if "stream" in st:
                plan.append((f"stream {kind} {p}", ctx.warmup + stream_n,
                             lambda key=key: S.stream_row(ctx, ctx.backend(key), key[0],
                                                          key[1], stream_n),
                             lambda st_, why, kind=kind, p=p: ctx.row(
                                 "stream", kind, p, frames=stream_n, status=st_,
                                 reason=why)))  # fmt: skip
    if "align" in st:
        for solver in SOLVERS:
            for n in ns:
                plan.append((f"align {solver} N={n}", min(ctx.warmup, 1) + min(ctx.repeat, 3),
                             lambda solver=solver, n=n: S.align_row(ctx, solver, n),
                             lambda st_, why, solver=solver, n=n: ctx.row(
                                 "align", "none", variant=solver, frames=n, status=st_,
                                 reason=why)))  # fmt: skip
    if "pipeline" in st:
        for kind in bk:
            for p in pr:
                for n in ns:
                    plan.append((f"pipeline {kind} {p} N={n}", min(ctx.repeat, 3),
                                 lambda kind=kind, p=p, n=n: S.pipeline_row(ctx, kind, p, n),
                                 lambda st_, why, kind=kind, p=p, n=n: ctx.row(
                                     "pipeline", kind, p, frames=n, status=st_,
                                     reason=why)))  # fmt: skip

    bar = _Bar(sum(c for _, c, _, _ in plan), progress)
    records: list[Record] = []
    done = 0

    def emit(rec: Record) -> None:
        records.append(rec)
        if on_record is not None:
            on_record(rec)

    try:
        for label, calls, thunk, fallback in plan:
            bar.label(label)
            ctx.step = bar.step
            try:
                rec = thunk()
            except (KeyboardInterrupt, SystemExit):
                raise
            except ValueError as exc:  # cannot run here
                rec = fallback("skipped", str(exc))
            except Exception as exc:  # noqa: BLE001 - a row with the reason, never a crash
                rec = fallback("failed", f"{type(exc).__name__}: {exc}")
            done += calls
            bar.catch_up(done)  # a skipped row's planned calls count as done
            _speedup(rec, records)
            emit(rec)
    finally:
        bar.close()
        ctx.release()
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    return records


def _speedup(rec: Record, done: list[Record]) -> None:
    """``throughput / baseline throughput`` for the same stage, device and size."""
    if not rec.ok or rec.throughput is None:
        return
    if rec.baseline:
        rec.speedup = 1.0
        return
    for b in done:
        if b.baseline and b.ok and b.stage == rec.stage and b.device == rec.device and (
            tuple(b.size) == tuple(rec.size)) and b.throughput:  # fmt: skip
            rec.speedup = rec.throughput / b.throughput
            return
