"""One function per stage of ``monst3r-rt bench``; each returns :class:`Record` rows and never
raises for a combination that cannot run (the row says why)."""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .harness import Measurement, measure, percentiles
from .records import Record

__all__ = ["Context", "network_row", "baseline_row", "stream_row", "align_row", "pipeline_row",
           "NETWORK_STAGES", "UNITS"]  # fmt: skip

NETWORK_STAGES = ("encoder", "decoder", "pair")
UNITS = {"encoder": "frames/s", "decoder": "pairs/s", "pair": "pairs/s", "stream": "frames/s",
         "align": "iterations/s", "pipeline": "frames/s"}  # fmt: skip


@dataclass
class Context:
    """What every stage of one run shares: the network, inputs, settings and temporary files.

    Attributes:
        make_net: builds the float32 network (random weights or a checkpoint) on first use.
        weights: checkpoint path, or None for random weights (``weights_label`` ``"random"``).
        size: ``(H, W)`` in pixels.
        device: ``"cpu"`` or ``"cuda"`` (resolved).
        engine: an export folder for onnxruntime / tensorrt rows, or None.
        export: without ``engine``, export this run's network once into a temporary folder.
    """

    make_net: Callable[[], Any]
    weights: str | None
    size: tuple[int, int]
    device: str
    warmup: int
    repeat: int
    engine: str | None = None
    export: bool = False
    clip: str | None = None
    step: Callable[[], None] | None = None
    tmp: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="monst3r-bench-"))
    _net: Any = None
    _images: np.ndarray | None = None
    _exports: dict[str, Any] = field(default_factory=dict)
    _ckpt: str | None = None
    _held: tuple[tuple[str, str], Any] | None = None

    def backend(self, key: tuple[str, str]) -> Any:
        """The backend of ``key = (kind, precision)`` (:func:`build_backend`), built once and
        kept until another key is asked for (one backend in memory at a time); a build error is
        raised again for every row that needs it."""
        if self._held is None or self._held[0] != key:
            self._held = None
            try:
                self._held = (key, build_backend(self, *key))
            except Exception as exc:  # noqa: BLE001 - kept for the rows that follow
                self._held = (key, exc)
        got = self._held[1]
        if isinstance(got, Exception):
            raise got
        return got

    def release(self) -> None:
        """Drop the held backend and the network."""
        self._held = None
        self._net = None

    @property
    def weights_label(self) -> str:
        return "random" if self.weights is None else str(self.weights)

    @property
    def net(self) -> Any:
        """The float32 network on ``device`` (the baseline's and torch fp32's)."""
        if self._net is None:
            self._net = self.make_net().to(self.device).eval()
        return self._net

    def images(self, n: int) -> np.ndarray:
        """(n,3,H,W) float32 in [-1, 1], fixed seed (a pool grown on demand)."""
        if self._images is None or len(self._images) < n:
            h, w = self.size
            rng = np.random.default_rng(0)
            self._images = rng.uniform(-1, 1, (n, 3, h, w)).astype(np.float32)
        return self._images[:n]

    def row(self, stage: str, backend: str, precision: str = "fp32", **kw: Any) -> Record:
        return Record(stage=stage, backend=backend, precision=precision, device=self.device,
                      size=tuple(self.size), weights=self.weights_label, unit=UNITS[stage],
                      **kw)  # fmt: skip

    def checkpoint(self) -> str:
        """A checkpoint file of the network (the given one, or the random one written once)."""
        if self.weights is not None:
            return self.weights
        if self._ckpt is None:
            from ..network import save_checkpoint

            net = self.net
            self._ckpt = str(save_checkpoint(net, os.path.join(self.tmp, "random.pth")))
        return self._ckpt

    def engine_for(self, precision: str) -> str:
        """An export folder of ``precision``: ``engine`` if given (its precision must match),
        else one exported now into the temporary folder (``export=True``).

        Raises:
            ValueError: with the reason the row is skipped.
        """
        from ..deploy.export import Manifest

        if self.engine is not None:
            m = Manifest.load(self.engine)
            if m.precision != precision:
                raise ValueError(f"the engine {self.engine} is {m.precision} (fixed at export)")
            if (m.height, m.width) != tuple(self.size):
                raise ValueError(f"the engine {self.engine} was exported for {m.width}x{m.height}"
                                 f", not {self.size[1]}x{self.size[0]}")  # fmt: skip
            return self.engine
        if not self.export:
            raise ValueError("needs an exported engine: --engine DIR (monst3r-rt export --size "
                             "WxH), or --export to export this run's network into a temporary "
                             "folder first (minutes at full size)")  # fmt: skip
        if precision not in self._exports:
            from ..deploy.export import export_onnx

            folder = os.path.join(self.tmp, f"engine-{precision}")
            net = copy.deepcopy(self.net).to("cpu").float()
            try:
                export_onnx(net, folder, self.size, precision=precision, validate=False)
                self._exports[precision] = folder
            except Exception as exc:  # noqa: BLE001 - the reason of the skipped rows
                self._exports[precision] = exc
        got = self._exports[precision]
        if isinstance(got, Exception):
            raise ValueError(f"export failed: {got}")
        return got


def _fill(rec: Record, m: Measurement, items: float) -> Record:
    """Latency percentiles, throughput (``items`` per call) and memory of a measurement."""
    rec.samples = len(m.samples_s)
    rec.p50_ms, rec.p95_ms, rec.p99_ms = percentiles(m.samples_s)
    rec.mean_ms = m.mean_s * 1e3
    rec.throughput = items / m.mean_s if m.mean_s > 0 else None
    rec.peak_rss_mb = m.memory.rss_mb
    rec.peak_gpu_allocated_mb = m.memory.gpu_allocated_mb
    rec.peak_gpu_reserved_mb = m.memory.gpu_reserved_mb
    rec.extra["timer"] = m.timer
    return rec


def build_backend(ctx: Context, kind: str, precision: str) -> Any:
    """A :class:`~monst3r_rt.Backend` of ``kind`` in ``precision``.

    Raises:
        ValueError: the combination cannot run here (the message is the row's reason).
    """
    if kind == "torch":
        from ..deploy.backends import TorchBackend

        if ctx.device == "cpu" and precision == "fp16":
            raise ValueError("fp16 on CPU: PyTorch has no fast fp16 CPU kernels (use bf16 or "
                             "a GPU)")  # fmt: skip
        net = ctx.net if precision == "fp32" else copy.deepcopy(ctx.net)
        return TorchBackend(net, device=ctx.device, precision=precision)
    if kind == "onnxruntime":
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            raise ValueError("onnxruntime is not installed (pip install 'monst3r-rt[onnx]')")
        from ..deploy.backends import OnnxRuntimeBackend

        return OnnxRuntimeBackend(ctx.engine_for(precision))
    if kind == "tensorrt":
        from ..deploy.tensorrt import tensorrt_available

        ok, why = tensorrt_available()
        if not ok:
            raise ValueError(f"TensorRT is not usable here: {why}")
        folder = ctx.engine_for(precision)
        from ..deploy.tensorrt import TensorRTBackend, build_engines

        build_engines(folder)  # cached by the engine key: a no-op once built
        return TensorRTBackend(folder)
    raise ValueError(f"unknown backend {kind!r}")


def network_row(ctx: Context, stage: str, backend: Any, kind: str, precision: str,
                batch: int) -> Record:  # fmt: skip
    """``encoder``: ``batch`` frames per call (frames/s); ``decoder``: ``batch`` pairs decoded
    from cached tokens (pairs/s); ``pair``: ``batch`` pairs encoded (both images) and decoded."""
    rec = ctx.row(stage, kind, precision, batch=batch, runtime=backend.name)
    h, w = ctx.size
    imgs = ctx.images(2 * batch)
    first, second = np.arange(batch), np.arange(batch, 2 * batch)
    if stage == "encoder":

        def fn(k: int) -> Any:
            return backend.encode(imgs[:batch])
    elif stage == "decoder":
        tok = backend.encode(imgs)
        t1, t2 = backend.take(tok, first), backend.take(tok, second)

        def fn(k: int) -> Any:
            return backend.decode(t1, t2, (h, w))
    else:

        def fn(k: int) -> Any:
            tok = backend.encode(imgs)
            return backend.decode(backend.take(tok, first), backend.take(tok, second), (h, w))

    m = measure(fn, ctx.warmup, ctx.repeat, ctx.device, ctx.step)
    return _fill(rec, m, batch)


def baseline_row(ctx: Context, stage: str) -> Record:
    """The official per-pair code path, torch fp32, batch 1, on this run's device: ``encoder``
    = the two images of a pair encoded together (as the official forward does; 2 frames per
    call), ``decoder`` = one pair decoded from its tokens, ``pair`` = ``net(img1, img2)``."""
    import torch

    net = ctx.net
    rec = ctx.row(stage, "official", "fp32", baseline=True, runtime=f"torch-{ctx.device}-fp32")
    x = torch.from_numpy(ctx.images(2)).to(ctx.device)
    h, w = ctx.size
    with torch.inference_mode():
        tok = net.encode(x)
    if stage == "encoder":

        def fn(k: int) -> Any:
            with torch.inference_mode():
                return net.encode(x)
    elif stage == "decoder":

        def fn(k: int) -> Any:
            with torch.inference_mode():
                return net.decode(tok[:1], tok[1:], (h, w))
    else:

        def fn(k: int) -> Any:
            with torch.inference_mode():
                return net(x[:1], x[1:])

    m = measure(fn, ctx.warmup, ctx.repeat, ctx.device, ctx.step)
    return _fill(rec, m, 2 if stage == "encoder" else 1)


def clip_images(ctx: Context, n: int) -> np.ndarray:
    """(n,H,W,3) uint8: the given clip's first n frames at ``size``, or a generated scene."""
    h, w = ctx.size
    if ctx.clip is not None:
        from ..frames import load_frames

        frames = load_frames(ctx.clip, size=max(h, w), num_frames=n)
        if len(frames) < n:
            raise ValueError(f"{ctx.clip} has {len(frames)} frames, {n} needed")
        return frames.images
    from ..synthetic import make_scene

    return make_scene(n_frames=n, size=(h, w), graph=None, n_objects=2, object_motion=0.05,
                      seed=7).images  # fmt: skip


def stream_row(ctx: Context, backend: Any, kind: str, precision: str, frames: int) -> Record:
    """Per-frame latency of :class:`~monst3r_rt.Stream` over ``frames`` measured pushes (after
    ``warmup`` pushes), with the p50 of each of its stages (:class:`~monst3r_rt.stream.stats.
    LatencyStats`)."""
    from ..stream import Stream, StreamConfig
    from ..stream.stats import LatencyStats

    rec = ctx.row("stream", kind, precision, runtime=backend.name, frames=frames)
    images = clip_images(ctx, ctx.warmup + frames)
    stats = LatencyStats()
    stream = Stream(backend=backend, size=max(ctx.size), config=StreamConfig(refine="thread"))
    try:

        def fn(k: int) -> Any:
            res = stream.push(images[k + ctx.warmup])
            if k >= 0:
                stats.add(res)
            return res

        m = measure(fn, ctx.warmup, frames, ctx.device, ctx.step)
    finally:
        stream.abort()
    _fill(rec, m, 1)
    rec.breakdown = {s: stats.percentile(s, 50) for s in stats.timings if s != "total"}
    rec.extra.update(p95_ms={s: stats.percentile(s, 95) for s in stats.timings},
                     decodes_per_frame=stats.decodes / max(stats.frames, 1),
                     keyframes=stats.keyframes)  # fmt: skip
    return rec


def _available_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _check_memory(what: str, n: int, size: tuple[int, int], flows: bool) -> None:
    """Refuse (ValueError, the row's reason) a problem whose pairwise arrays would not fit."""
    from ..pairs import make_pairs

    e = len(make_pairs(n, "swinstride-5-noncyclic"))
    floats = 8 + (8 if flows else 0)  # pts_i, pts_j, conf_i, conf_j (+ flows both ways)
    need = 2.5 * e * size[0] * size[1] * floats * 4 / 2**20  # arrays, working copies, objective
    have = _available_mb()
    if have is not None and need > 0.8 * have:
        raise ValueError(f"{what} at N={n}, {size[1]}x{size[0]} needs about {need / 1024:.1f} "
                         f"GiB ({e} pairs); {have / 1024:.1f} GiB available")  # fmt: skip


def align_row(ctx: Context, solver: str, frames: int) -> Record:
    """:func:`~monst3r_rt.global_align` (``solver`` ``"adam"`` or ``"lm"``, official settings) on
    a generated problem: a synthetic dynamic scene of ``frames`` frames at ``size``,
    swinstride-5 pairs with noisy predictions. Latency = one whole call; throughput = solver
    iterations per second of its optimisation phase."""
    from ..align import AlignConfig, global_align
    from ..synthetic import make_scene

    cfg = AlignConfig(solver=solver)
    device = cfg.check("auto" if ctx.device == "cuda" else "cpu")
    rec = ctx.row("align", "none", variant=solver, frames=frames)
    rec.device = device
    _check_memory("align", frames, ctx.size, flows=False)
    sc = make_scene(n_frames=frames, size=ctx.size, n_objects=2, object_motion=0.05,
                    depth_noise=0.02, pose_noise=0.01, seed=0)  # fmt: skip
    sc.flow_ij = sc.flow_ji = None  # type: ignore[assignment]  # not used: free them
    runs: list[Any] = []

    def fn(k: int) -> Any:
        res = global_align(sc.edges, sc.pts_i, sc.pts_j, sc.conf_i, sc.conf_j, config=cfg,
                           device=device)  # fmt: skip
        if k >= 0:
            runs.append(res.timings | {"iterations": len(res.energy)})
        return None

    m = measure(fn, min(ctx.warmup, 1), min(ctx.repeat, 3), device, ctx.step)
    _fill(rec, m, 1)
    its = runs[-1]["iterations"]
    opt = float(np.median([r["optimize"] for r in runs]))
    rec.throughput = its / opt if opt > 0 else None
    rec.breakdown = {k: float(np.median([r[k] for r in runs])) * 1e3
                     for k in ("prepare", "init", "optimize")}  # fmt: skip
    rec.extra.update(iterations=its, pairs=len(sc.edges))
    return rec


def pipeline_row(ctx: Context, kind: str, precision: str, frames: int) -> Record:
    """The main job (:class:`~monst3r_rt.Pipeline`: frames, network over swinstride-5 pairs,
    DIS flow, masks, 300 Adam iterations) on ``frames`` frames of the clip; latency = one run,
    throughput = frames per second, breakdown = seconds per stage (as ms)."""
    from ..pipeline import SIZES, Pipeline

    rec = ctx.row("pipeline", kind, precision, frames=frames)
    long_side = max(ctx.size)
    if long_side not in SIZES:
        raise ValueError(f"the pipeline runs at a long side of {' or '.join(map(str, SIZES))} "
                         f"pixels, not {long_side}")  # fmt: skip
    _check_memory("pipeline", frames, ctx.size, flows=True)
    engine = None if kind == "torch" else ctx.engine_for(precision)
    if kind == "torch" and ctx.device == "cpu" and precision == "fp16":
        raise ValueError("fp16 on CPU: PyTorch has no fast fp16 CPU kernels")
    if kind == "tensorrt":
        from ..deploy.tensorrt import tensorrt_available

        ok, why = tensorrt_available()
        if not ok:
            raise ValueError(f"TensorRT is not usable here: {why}")
    weights = ctx.checkpoint() if kind == "torch" else None
    pipe = Pipeline(weights=weights, backend=kind, engine=engine, device=ctx.device,
                    precision=precision, size=long_side)  # fmt: skip
    images = list(clip_images(ctx, frames))
    runs: list[dict[str, float]] = []

    def fn(k: int) -> Any:
        recon = pipe.run(images, progress=False)
        if k >= 0:
            runs.append(dict(recon.meta["timings"]))
        rec.runtime = str(recon.meta.get("backend", ""))
        return None

    m = measure(fn, 0, min(ctx.repeat, 3), ctx.device, ctx.step)
    _fill(rec, m, frames)
    rec.breakdown = {k: float(np.median([r[k] for r in runs])) * 1e3 for k in runs[-1]}
    return rec
