"""``Stream``: frames in one at a time; pose, depth, intrinsics, confidence and dynamic mask out per
frame, causally, with one encoder and (on average) at most two decoder passes per frame.

Per pushed frame t (current keyframe K):

1. encode t once; decode the pair (t, K) against K's cached tokens: ``pts1`` is t's pointmap in
   its own camera, ``pts2`` is K's pointmap *in t's camera on K's pixel grid*, so every K pixel
   is a point correspondence between t's camera and K's (known) world points — no matching;
2. track: the Sim(3) that maps ``pts2`` onto K's world points (closed-form start, robust
   Gauss–Newton/IRLS, weights log-confidence × K's static mask; C++ kernel with a CUDA twin:
   :func:`monst3r_rt.stream.tracking.track_sim3`) gives t's camera-to-world pose and the scale of
   its depth (``depth = s · pts1_z``); focal by Weiszfeld on ``pts1`` (running mean when shared);
3. dynamic mask from the flow t → t−k against the tracked ego-flow (:mod:`.motion`);
4. keyframe rule (overlap, baseline, gap): a new keyframe is decoded against 1–2 more previous
   keyframes (cached tokens) and the keyframe graph is refined with the global-alignment
   objective over a sliding window (:class:`monst3r_rt.align.incremental.KeyframeAligner`) in a
   worker thread; frames keep their pose relative to their keyframe, so they follow it.

``close()`` solves once over all keyframes, re-expresses every frame and finalises the output
folder (spilled frame by frame while streaming).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._atomic import check_output_dir
from ..align.incremental import KeyframeAligner, RefineResult
from ..frames import FrameError, preprocess_image, to_rgb8
from ..geometry import estimate_focal, intrinsic_matrix, project, transform_points, world_points
from ..reconstruction import Reconstruction
from ..runinfo import describe_input, versions, weights_used
from .config import FrameResult, StreamConfig
from .motion import flow_mask, geometric_mask
from .refine import KeyframeGraph
from .stats import LatencyStats
from .tracking import track_sim3

__all__ = ["Stream"]


@dataclass
class _Keyframe:
    """A keyframe's cached state (decimated by the tracking stride)."""

    frame: int
    tokens: Any
    cam_pts: np.ndarray  # (h,w,3) float32 points in its camera, scale at creation
    weight: np.ndarray  # (h,w) float32 tracking weight of its pixels (log conf × static)
    depth_median: float


@dataclass
class _FrameRecord:
    """What is kept per frame (no per-pixel data): its pose relative to its keyframe."""

    keyframe: int  # frame index of the keyframe it was tracked against (itself for keyframes)
    rel: np.ndarray  # (4,4) rigid pose in its keyframe's camera, keyframe units at tracking
    kf_scale: float  # its keyframe's cumulative refinement scale when it was tracked
    focal: float


def _decimate(a: np.ndarray, k: int) -> np.ndarray:
    return np.ascontiguousarray(a[::k, ::k])


def _refine_stride(h: int, w: int, pixels: int) -> int:
    """Largest power of two ≤ 16 dividing H and W that keeps ≥ ``pixels`` pixels (≥ 1)."""
    k = 1
    while (
        k < 16
        and h % (2 * k) == 0
        and w % (2 * k) == 0
        and (h // (2 * k)) * (w // (2 * k)) >= pixels
    ):
        k *= 2
    return k


class Stream:
    """Real-time streaming reconstruction (see the module docstring).

    Args:
        weights: checkpoint (as :class:`~monst3r_rt.Pipeline`), or None for the official weights.
        backend: ``"auto"``, ``"torch"``, ``"onnxruntime"``, ``"tensorrt"`` (as Pipeline), or a
            :class:`~monst3r_rt.Backend` instance (custom and test backends).
        engine: export folder for onnxruntime / tensorrt.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (network and kernels).
        precision: torch backend precision (``"fp32"``, ``"fp16"``, ``"bf16"``).
        size: long side of the model resolution (frames are preprocessed like
            ``load_frames(size=size)``).
        config: :class:`StreamConfig`.
        output: a folder: every frame is spilled beside it as it arrives and the folder is
            written atomically by ``close()`` in the offline job's formats.
        overwrite: replace an existing non-empty ``output`` (refused otherwise).
        input: what the frames come from, recorded as ``run.json``'s ``input`` (as the offline
            job records its source; :func:`~monst3r_rt.stream_video` passes its source); None
            (default) records ``null``, e.g. for frames pushed from your own loop. Never read.
        cli: phrase errors as ``monst3r-rt stream`` options (``--device``, ``--size``; set by the
            command line) instead of Python arguments.

    ``close()`` records in ``run.json`` (and the result's ``meta``) the keys of the offline
    job's ``run.json`` with the same meaning — ``mode`` (``"stream"``), ``input``, ``backend``,
    ``devices``, ``weights``, ``weights_hash``, ``versions``, ``config`` (``mode``,
    ``backend``, ``device``, ``size`` and the :class:`StreamConfig` fields), ``pairs`` (decoder
    passes), ``timings`` (seconds: ``load_weights`` (this constructor), ``push`` (all
    :meth:`push` calls), ``final_refine`` (``close()``'s wait and final solve)) — except the
    offline-only ``align_diagnostics``, plus the stream's own: ``latency`` (per-frame stage →
    ``{"total_s", "p50_ms", "p95_ms"}``, :meth:`LatencyStats.summary`), ``encodes``,
    ``decodes``, ``keyframes``, ``refinements``, ``lost``, ``refine_failures``,
    ``focal_fallbacks``. The weights' sha256 is computed by ``close()``, never before the first
    frame (:func:`monst3r_rt.runinfo.weights_fingerprint`: once per process per file). With a
    :class:`~monst3r_rt.Backend` instance, ``weights`` is recorded as given (None: unknown)
    unless the instance is an exported engine with its own record.

    Raises:
        ValueError / RuntimeError / FileExistsError before anything is loaded, for settings
        that cannot run (the message says what to change).
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        *,
        backend: Any = "auto",
        engine: str | os.PathLike[str] | None = None,
        device: str = "auto",
        precision: str = "fp32",
        size: int = 512,
        config: StreamConfig | None = None,
        output: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        input: Any = None,
        cli: bool = False,
    ):
        from ..deploy.backends import Backend

        t_load = time.perf_counter()
        self.config = cfg = config or StreamConfig()
        cfg.check()
        if cfg.keep == "none" and output is None:
            raise ValueError("StreamConfig(keep='none') needs an output folder (output=...)")
        if output is not None:  # before anything is loaded: nothing the user has is touched
            check_output_dir(output, overwrite)
        self.size = size
        align_device = "cpu"
        if isinstance(backend, Backend):
            self.backend = backend
            self._weights = None if weights is None else os.fspath(weights)
            net_device = getattr(backend, "device", None)
            net_device = None if net_device is None else str(net_device)
        else:
            from ..pipeline import Pipeline

            pipe = Pipeline(
                weights=weights,
                backend=backend,
                engine=engine,
                device=device,
                precision=precision,
                size=size,
                flow=None,
                cli=cli,
            )
            plan = pipe.check()
            align_device = plan.align_device
            net_device = plan.network_device
            self.backend = pipe.backend_for_run()
            self._weights = pipe.weights_source
        refine_device = align_device if cfg.refine_objective != "rays" else "cpu"
        self._meta: dict[str, Any] = {
            "mode": "stream",
            "input": describe_input(input),
            "devices": {"network": net_device, "align": refine_device},
            "config": {"mode": "stream", "backend": backend if isinstance(backend, str) else
                       getattr(backend, "name", "custom"), "device": net_device, "size": size,
                       **cfg.to_dict()},
        }  # fmt: skip
        if cfg.refine_objective == "rays":
            self._graph: Any = KeyframeGraph(
                huber=cfg.track_huber, axial_weight=cfg.track_axial_weight
            )
        else:
            self._graph = KeyframeAligner(cfg.align, device=align_device)
        self._writer = None
        if output is not None:
            from .output import StreamWriter

            self._writer = StreamWriter(output, overwrite=overwrite)
        self._pool = ThreadPoolExecutor(1, "monst3r-refine") if cfg.refine == "thread" else None
        self._pending: tuple[int, Future] | None = None
        self._keyframes: list[_Keyframe] = []
        self._kf_pose: dict[int, np.ndarray] = {}
        self._kf_scale: dict[int, float] = {}
        self._kf_static: dict[int, np.ndarray] = {}  # window keyframes' static masks (refine grid)
        self._records: list[_FrameRecord] = []
        self._kept: list[tuple[np.ndarray, ...]] = []
        # the last mask_gap frames (image, pose, focal): the flow reference of the masks
        self._prev: deque[tuple[np.ndarray, np.ndarray, float]] = deque(maxlen=cfg.mask_gap)
        self._log_focals: list[float] = []
        self._shape: tuple[int, int] | None = None
        self._closed = False
        self.last_image: np.ndarray | None = None  # the last frame at model resolution (uint8)
        self.encodes = 0
        self.lost = 0  # frames whose tracking failed (they keep the previous frame's pose)
        self.focal_fallbacks = 0  # frames whose focal could not be estimated (previous focal)
        self._last_track: tuple[np.ndarray, float] = (np.eye(4), 1.0)
        self.decodes = 0
        self.refinements: list[RefineResult] = []
        self.result: Reconstruction | None = None  # what close() returned
        self.refine_failures: list[str] = []  # errors of refinements that could not be solved
        self.stats = LatencyStats()  # per-stage latencies of every pushed frame
        self._timings = {"load_weights": time.perf_counter() - t_load, "push": 0.0,
                         "final_refine": 0.0}  # fmt: skip

    # ---- context manager -------------------------------------------------------------------------
    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._closed:
            try:
                self.close()
            except BaseException:
                if self._writer is not None:
                    self._writer.abort()
                if exc[0] is None:
                    raise

    # ---- per frame -------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` (or :meth:`abort`) was called."""
        return self._closed

    def abort(self) -> None:
        """End the stream without output: the temporary folder is removed, nothing is written
        (a no-op after :meth:`close`)."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._writer is not None:
            self._writer.abort()

    @property
    def num_frames(self) -> int:
        """Frames pushed so far."""
        return len(self._records)

    @property
    def keyframes(self) -> list[int]:
        """Frame indices of the keyframes so far."""
        return sorted(self._kf_pose)

    def push(self, image: np.ndarray, name: str | None = None) -> FrameResult:
        """Process one frame.

        Args:
            image: (H,W,3) uint8 RGB (grayscale, RGBA, uint16 and bool are converted, other
                pixel types refused, as ``load_frames`` does), any size; preprocessed to the model
                resolution like
                ``load_frames(size=size)``; every frame must give the first frame's resolution.
            name: the frame's name in the output's ``names`` (its source file, as the offline
                job records); default ``frame_XXXXXX`` (the frame index).

        Returns:
            :class:`FrameResult` for this frame.
        """
        if self._closed:
            raise RuntimeError("Stream.push() after close(): open a new Stream")
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        t = self.num_frames
        rgb = self._prepare(image, t)
        self._apply_due(t, timings)
        x = rgb.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        t0 = time.perf_counter()
        tokens = self.backend.encode(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
        self.encodes += 1
        ref = self._keyframes[-1] if self._keyframes else None
        pts1, conf1, pts2, conf2 = self._decode(tokens, tokens if ref is None else ref.tokens)
        timings["network"] = time.perf_counter() - t0
        pose, scale = self._track(ref, pts2, conf2, timings)
        t0 = time.perf_counter()
        focal_own = self._focal(pts1, conf1)
        self._log_focals.append(np.log(focal_own))
        focal = float(np.exp(np.mean(self._log_focals))) if self.config.shared_focal else focal_own
        depth = (scale * pts1[..., 2]).astype(np.float32)
        timings["focal"] = time.perf_counter() - t0
        mask = self._mask(rgb, depth, focal, pose, ref, timings)
        is_kf = ref is None or self._is_keyframe(ref, t, pose, pts2, conf2, focal)
        decodes = 1
        t0 = time.perf_counter()
        if is_kf:
            decodes += self._add_keyframe(
                t, tokens, pts1, conf1, pts2, conf2, scale, pose, focal, mask, ref, timings
            )
        timings["keyframe"] = time.perf_counter() - t0
        kf = t if is_kf else ref.frame  # type: ignore[union-attr]
        rel = np.linalg.inv(self._kf_pose[kf]) @ pose
        record = _FrameRecord(kf, rel, self._kf_scale[kf], focal)
        conf = np.where(np.isfinite(conf1), conf1, 1.0).astype(np.float32)
        t0 = time.perf_counter()
        self._records.append(record)
        if self._writer is not None:
            self._writer.write_frame(t, rgb, depth, conf, mask, name or f"frame_{t:06d}")
        if self.config.keep == "all":
            self._kept.append((rgb, depth, conf, mask))
        timings["output"] = time.perf_counter() - t0
        self._prev.append((rgb, pose, focal))
        self.last_image = rgb
        timings["total"] = time.perf_counter() - t_start
        k = intrinsic_matrix(focal, (depth.shape[1] / 2, depth.shape[0] / 2))
        result = FrameResult(t, pose, depth, k, conf, mask, is_kf, timings, decodes)
        self.stats.add(result)
        self._timings["push"] += timings["total"]
        return result

    def _prepare(self, image: Any, t: int) -> np.ndarray:
        """(H,W,3) uint8 RGB at model resolution; errors name the frame."""
        arr = np.asarray(image)
        rgb = preprocess_image(to_rgb8(arr, f"frame {t}", bgr=False), self.size)
        if self._shape is None:
            check = getattr(self.backend, "check_size", None)
            if check is not None:  # a fixed-size engine: say so before any network work
                check(rgb.shape[:2])
            self._shape = rgb.shape[:2]
        elif rgb.shape[:2] != self._shape:
            raise FrameError(
                f"frame {t}: preprocessed to {rgb.shape[1]}x{rgb.shape[0]} (WxH, from "
                f"{arr.shape[1]}x{arr.shape[0]}) but the stream runs at {self._shape[1]}x"
                f"{self._shape[0]}; every frame must have the first frame's aspect ratio"
            )
        return rgb

    def _decode(self, tokens: Any, other: Any) -> tuple[np.ndarray, ...]:
        """One decoder pass; non-finite outputs masked (points NaN, confidence 1)."""
        h, w = self._shape  # type: ignore[misc]
        pts1, conf1, pts2, conf2 = (
            np.asarray(a[0], np.float32) for a in self.backend.decode(tokens, other, (h, w))
        )
        self.decodes += 1
        out = []
        for pts, conf in ((pts1, conf1), (pts2, conf2)):
            bad = ~(np.isfinite(pts).all(-1) & np.isfinite(conf))
            if bad.any():
                pts, conf = pts.copy(), conf.copy()
                pts[bad], conf[bad] = np.nan, 1.0
            out += [pts, np.maximum(conf, 1.0)]
        return tuple(out)

    # ---- tracking --------------------------------------------------------------------------------
    def _world(self, kf: _Keyframe) -> np.ndarray:
        """(h,w,3) world points of a keyframe's decimated map (current pose and scale)."""
        pts = kf.cam_pts.astype(np.float64) * self._kf_scale[kf.frame]
        return transform_points(self._kf_pose[kf.frame], pts)

    def _track(self, ref: _Keyframe | None, pts2, conf2, timings) -> tuple[np.ndarray, float]:
        """Camera-to-world pose and depth scale of the frame from its pair with ``ref``."""
        t0 = time.perf_counter()
        if ref is None:
            timings["track"] = 0.0
            return np.eye(4), 1.0
        k = self.config.track_stride
        src = _decimate(pts2, k).reshape(-1, 3)
        dst = self._world(ref).reshape(-1, 3)
        w = ref.weight * np.log(_decimate(conf2, k))
        w = np.where(_decimate(conf2, k) > self.config.conf_threshold, w, 0).reshape(-1)
        z = np.maximum(ref.cam_pts[..., 2].reshape(-1), 1e-6) * self._kf_scale[ref.frame]
        # residuals along K's viewing rays (depth errors) weigh less than across them
        rays = ref.cam_pts.reshape(-1, 3) @ self._kf_pose[ref.frame][:3, :3].T
        # closed-form start each frame: cheap, and independent of the previous frame's errors
        try:
            fit = track_sim3(
                src.astype(np.float32),
                dst.astype(np.float32),
                w.astype(np.float32),
                (1.0 / z).astype(np.float32),
                iters=self.config.track_iters,
                huber=self.config.track_huber,
                axis=rays.astype(np.float32),
                axial_weight=self.config.track_axial_weight,
            )
            ok = fit.scale > 0 and np.isfinite(fit.scale) and np.isfinite(fit.trans).all()
        except ValueError:  # too few usable correspondences, or all of them degenerate
            ok = False
        timings["track"] = time.perf_counter() - t0
        if not ok:  # lost: keep the previous frame's pose and scale; counted in meta
            self.lost += 1
            return self._last_track
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = fit.rot, fit.trans
        self._last_track = (pose, float(fit.scale))
        return pose, float(fit.scale)

    def _focal(self, pts1: np.ndarray, conf1: np.ndarray) -> float:
        """Weiszfeld focal of the frame's own pointmap, on every 2nd pixel (exact for the
        decimated grid: the principal point and the focal halve)."""
        h, w = pts1.shape[:2]
        sub = _decimate(pts1, 2)
        weights = np.where(_decimate(conf1, 2) > self.config.conf_threshold, 1.0, 0.0)
        if not weights.any():
            weights = np.ones_like(weights)
        try:
            f = 2.0 * estimate_focal(sub, pp=(w / 4, h / 4), weights=weights.astype(np.float32))
        except ValueError:  # no finite point
            f = float("nan")
        if not (np.isfinite(f) and f > 0):  # a degenerate pointmap: the previous focal
            self.focal_fallbacks += 1
            return float(np.exp(self._log_focals[-1])) if self._log_focals else float(max(h, w))
        return f

    def _mask(self, rgb, depth, focal, pose, ref, timings) -> np.ndarray:
        t0 = time.perf_counter()
        mask = np.zeros(depth.shape, bool)
        method = self.config.masks
        if method == "flow" and self._prev:
            prev_rgb, prev_pose, prev_focal = self._prev[0]
            clean = np.where(np.isfinite(depth), depth, 0).astype(np.float32)
            mask = flow_mask(
                rgb,
                prev_rgb,
                clean,
                focal,
                prev_focal,
                pose,
                prev_pose,
                self.config.mask_threshold,
                self.config.flow_preset,
            )[0]
        elif method == "geometric" and ref is not None:
            kf_depth = self._kf_depth_full(ref)
            clean = np.where(np.isfinite(depth), depth, 0)
            mask = geometric_mask(
                clean,
                focal,
                pose,
                kf_depth,
                self._records[ref.frame].focal,
                self._kf_pose[ref.frame],
                self.config.mask_threshold,
            )[0]
        timings["mask"] = time.perf_counter() - t0
        return mask

    def _kf_depth_full(self, kf: _Keyframe) -> np.ndarray:
        """The keyframe's depth at model resolution, nearest-upsampled from its cached map."""
        k = self.config.track_stride
        z = np.nan_to_num(kf.cam_pts[..., 2], nan=0.0) * self._kf_scale[kf.frame]
        h, w = self._shape  # type: ignore[misc]
        return np.repeat(np.repeat(z, k, 0), k, 1)[:h, :w]

    # ---- keyframes and refinement ----------------------------------------------------------------
    def _is_keyframe(self, ref: _Keyframe, t: int, pose, pts2, conf2, focal) -> bool:
        cfg = self.config
        if t - ref.frame >= cfg.keyframe_max_gap:
            return True
        h, w = pts2.shape[:2]
        with np.errstate(invalid="ignore", divide="ignore"):
            u, v = np.moveaxis(project(pts2, focal, (w / 2, h / 2)), -1, 0)
            seen = (pts2[..., 2] > 0) & (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
        confident = conf2 > cfg.conf_threshold
        overlap = float((seen & confident).sum()) / max(1, int(confident.sum()))
        moved = np.linalg.norm(pose[:3, 3] - self._kf_pose[ref.frame][:3, 3])
        baseline = moved / max(ref.depth_median * self._kf_scale[ref.frame], 1e-9)
        return overlap < cfg.keyframe_overlap or baseline > cfg.keyframe_baseline

    def _add_keyframe(
        self, t, tokens, pts1, conf1, pts2, conf2, scale, pose, focal, mask, ref, timings
    ) -> int:
        """Make frame t a keyframe: cache its state, decode extra links, add it to the graph and
        schedule a refinement. Returns the extra decoder passes run."""
        cfg = self.config
        self._join(timings)  # the graph is about to change
        k = cfg.track_stride
        static = ~_decimate(mask, k)
        weight = np.log(_decimate(conf1, k)) * static
        cam = (scale * _decimate(pts1, k)).astype(np.float32)
        z = cam[..., 2][np.isfinite(cam[..., 2])]
        self._kf_pose[t] = pose.copy()
        self._kf_scale[t] = 1.0
        kf = _Keyframe(
            t, tokens, cam, weight.astype(np.float32), float(np.median(z)) if z.size else 1.0
        )
        h, w = self._shape  # type: ignore[misc]
        r = _refine_stride(h, w, cfg.refine_pixels)
        static_r = ~_decimate(mask, r)
        extra = 0
        links = [] if ref is None else [(ref, pts1, conf1, pts2, conf2)]
        older = self._keyframes[-cfg.keyframe_links : -1] if ref is not None else []
        t0 = time.perf_counter()
        for prev in reversed(older):
            links.append((prev, *self._decode(tokens, prev.tokens)))
            extra += 1
        timings["network"] += time.perf_counter() - t0
        if cfg.refine_objective == "rays":
            self._graph_rays(t, r, scale, pts1, conf1, pose, static_r, links)
        else:
            self._graph_alignment(t, r, scale, pts1, pose, focal, static_r, links)
        statics = {t: static_r}
        self._kf_static[t] = statics[t]
        self._keyframes.append(kf)
        keep = max(cfg.keyframe_links, 1)
        for old in self._keyframes[:-keep]:
            old.tokens = None  # only the newest keyframes' tokens are decoded against
        self._keyframes = self._keyframes[-keep:]
        for f in [f for f in self._kf_static if f not in self._kf_window()]:
            del self._kf_static[f]
        if ref is not None:
            self._schedule(t)
        return extra

    def _link_weight(self, conf: np.ndarray, static: np.ndarray | None, r: int) -> np.ndarray:
        """(h,w) weight of a map's pixels in the refinement: log-confidence above the threshold,
        0 on moving pixels."""
        c = _decimate(conf, r)
        w = np.where(c > self.config.conf_threshold, np.log(c), 0.0)
        return (w if static is None else w * static).astype(np.float32)

    def _graph_rays(self, t, r, scale, pts1, conf1, pose, static_r, links) -> None:
        """Add keyframe t and its links to the pose graph (:class:`.refine.KeyframeGraph`)."""
        cam = (scale * _decimate(pts1, r)).astype(np.float32)
        self._graph.add_keyframe(t, cam, self._link_weight(conf1, static_r, r), pose)
        own_z = cam[..., 2]
        for prev, p1, c1, p2, c2 in links:
            # pair units → t's units: t's depth in this pair against its tracked depth
            z = _decimate(p1, r)[..., 2]
            ok = np.isfinite(z) & np.isfinite(own_z) & (z > 0) & (own_z > 0)
            ok &= _decimate(c1, r) > self.config.conf_threshold
            s_e = float(np.median(own_z[ok] / z[ok])) if ok.sum() >= 8 else scale
            weight = self._link_weight(c2, self._kf_static.get(prev.frame), r)
            self._graph.add_edge(t, prev.frame, _decimate(p2, r), weight, s_e)

    def _graph_alignment(self, t, r, scale, pts1, pose, focal, static_r, links) -> None:
        """Add keyframe t and its links to the global-alignment graph (KeyframeAligner)."""
        depth = np.nan_to_num(scale * _decimate(pts1[..., 2], r), nan=0.0)
        self._graph.add_keyframe(t, depth, pose, focal / r)
        for prev, p1, c1, p2, c2 in links:
            prev_static = self._kf_static.get(prev.frame)
            c_i = np.where(static_r, _decimate(c1, r), 1.0)
            c_j = _decimate(c2, r)
            if prev_static is not None:
                c_j = np.where(prev_static, c_j, 1.0)
            self._graph.add_edge(t, prev.frame, _decimate(p1, r), _decimate(p2, r), c_i, c_j)

    def _kf_window(self) -> set[int]:
        return set(self.keyframes[-self.config.window :])

    def _schedule(self, t: int) -> None:
        cfg = self.config
        if cfg.refine == "off":
            return
        if cfg.refine == "sync":
            self._apply(self._refine_safely, cfg.window, cfg.window_frozen)
            return
        fut = self._pool.submit(self._refine_safely, cfg.window, cfg.window_frozen)  # type: ignore[union-attr]
        self._pending = (t, fut)

    def _apply_due(self, t: int, timings: dict[str, float]) -> None:
        """Apply a pending refinement when its lag is reached (deterministic, see refine_lag)."""
        timings["refine_wait"] = 0.0
        if self._pending is not None and t >= self._pending[0] + self.config.refine_lag:
            self._join(timings)

    def _join(self, timings: dict[str, float] | None = None) -> None:
        if self._pending is None:
            return
        t0 = time.perf_counter()
        _, fut = self._pending
        self._pending = None
        self._apply(fut.result)
        if timings is not None:
            timings["refine_wait"] = timings.get("refine_wait", 0.0) + time.perf_counter() - t0

    def _refine_safely(self, window: int | None, frozen: int) -> RefineResult | Exception:
        """A refinement, or the error that stopped it (degenerate predictions can make a solve
        singular): a failed refinement leaves the poses as tracked, it never ends the stream."""
        try:
            return self._graph.refine(window, frozen)
        except (ArithmeticError, ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
            return exc

    def _apply(self, solve: Callable[..., RefineResult | Exception], *args: Any) -> None:
        res = solve(*args)
        if isinstance(res, Exception):
            self.refine_failures.append(f"{type(res).__name__}: {res}")
            return
        for k, pose in res.poses.items():
            self._kf_pose[k] = pose
            self._kf_scale[k] *= res.scales[k]
        if res.keyframes:
            self.refinements.append(res)

    # ---- results ---------------------------------------------------------------------------------
    def poses(self) -> np.ndarray:
        """(N,4,4) float64 camera-to-world of every frame with the latest refinement applied."""
        return (
            np.stack([self._pose_of(r) for r in self._records])
            if self._records
            else (np.zeros((0, 4, 4)))
        )

    def _pose_of(self, r: _FrameRecord) -> np.ndarray:
        rel = r.rel.copy()
        rel[:3, 3] *= self._kf_scale[r.keyframe] / r.kf_scale
        return self._kf_pose[r.keyframe] @ rel

    def _depth_scales(self) -> np.ndarray:
        return np.array([self._kf_scale[r.keyframe] / r.kf_scale for r in self._records])

    def _intrinsics(self) -> np.ndarray:
        h, w = self._shape if self._shape else (0, 0)
        shared = float(np.exp(np.mean(self._log_focals))) if self._log_focals else 1.0
        focals = [shared if self.config.shared_focal else r.focal for r in self._records]
        return (
            np.stack([intrinsic_matrix(f, (w / 2, h / 2)) for f in focals])
            if focals
            else (np.zeros((0, 3, 3)))
        )

    def close(self) -> Reconstruction:
        """End the stream: wait for the refinement, solve once over all keyframes
        (``final_refine``), re-express every frame and finalise ``output``.

        Returns:
            a :class:`~monst3r_rt.Reconstruction` of every frame with refined poses (with
            ``keep="none"`` its per-pixel arrays are read from ``output`` on demand).
        """
        if self._closed:
            if self.result is None:
                raise RuntimeError("Stream.close(): the stream was aborted (or nothing pushed)")
            return self.result  # a second close() (e.g. after a with-block) returns the same
        self._closed = True
        t0 = time.perf_counter()
        try:
            self._join()
            if self.config.final_refine and self.config.refine != "off" and len(self._kf_pose) > 1:
                self._apply(self._refine_safely, None, 1)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
        self._timings["final_refine"] = time.perf_counter() - t0
        if not self._records:
            if self._writer is not None:
                self._writer.abort()
            raise RuntimeError("Stream.close(): no frame was pushed")
        self.result = self._finish()
        return self.result

    def _finish(self) -> Reconstruction:
        # an interrupt inside push() can leave one frame recorded but not written (or kept), or
        # the other way round: the result holds the frames that are complete everywhere
        n = len(self._records)
        if self._writer is not None:
            n = min(n, self._writer.frames_written)
        if self.config.keep == "all":
            n = min(n, len(self._kept))
        del self._records[n:], self._kept[n:]
        poses = self.poses()
        k = self._intrinsics()
        scales = self._depth_scales()
        weights, weights_hash = weights_used(self._weights, self.backend)  # hashed here, once
        meta = dict(
            self._meta,
            backend=getattr(self.backend, "name", "custom"),
            weights=weights,
            weights_hash=weights_hash,
            versions=versions(),
            pairs=self.decodes,
            timings=dict(self._timings),
            latency=self.stats.summary(),
            encodes=self.encodes,
            decodes=self.decodes,
            keyframes=self.keyframes,
            refinements=len(self.refinements),
            lost=self.lost,
            refine_failures=self.refine_failures,
            focal_fallbacks=self.focal_fallbacks,
        )
        if self._writer is not None:
            rec = self._writer.finalize(poses, k, scales, meta)
            if self.config.keep == "none":
                return rec
        images, depths, conf, masks = (np.stack(a) for a in zip(*self._kept, strict=True))
        depths = (depths * scales[:, None, None]).astype(np.float32)
        pts = world_points(
            np.nan_to_num(depths, nan=0.0), poses.astype(np.float32), k.astype(np.float32)
        )
        pts[~np.isfinite(depths)] = np.nan
        return Reconstruction(
            frames=images,
            depths=depths,
            poses=poses.astype(np.float32),
            intrinsics=k.astype(np.float32),
            conf=conf,
            dynamic_masks=masks,
            pts3d=pts,
            meta=meta,
        )

    def held_bytes(self) -> int:
        """Bytes of per-pixel arrays this stream holds in memory (keyframe caches, the refinement
        graph, kept frames) — flat in the stream length with ``keep="none"``, apart from the
        refinement graph's decimated keyframe maps."""
        total = sum(kf.cam_pts.nbytes + kf.weight.nbytes for kf in self._keyframes)
        total += sum(a.nbytes for a in self._kf_static.values())
        total += sum(a.nbytes for f in self._kept for a in f)
        total += sum(p[0].nbytes for p in self._prev)
        return total
