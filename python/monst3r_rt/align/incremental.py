"""Incremental alignment of a growing keyframe graph: the global-alignment objective solved over a
sliding window of the newest keyframes, older keyframes frozen, the state kept between solves.

This is the streaming mode's refinement (:mod:`monst3r_rt.stream`). It reuses the offline engine
(:func:`monst3r_rt.align.driver.optimize`: the same objective, the same kernels and solvers); what
it adds is the state: every keyframe's depth, pose and focal and every edge's pairwise pose live
here between solves, so a new keyframe costs one small solve over the window instead of a
global one.

Conventions (the offline ones): an edge ``(i, j)`` holds view i's and view j's pointmaps, both in
camera i's frame (``pts_i``, ``pts_j``, (h,w,3) float32), with raw confidences ≥ 1; keyframes are
identified by the caller's integer ids (frame indices); poses are camera-to-world. The maps
handed in are usually decimated (every ``stride``-th pixel of the model resolution): the
principal point is then the decimated map's centre and focals are divided by the stride, which
the caller does.

The objective differs from the offline default in one documented way: the camera smoothness term
is off by default (``AlignConfig(temporal_smoothing_weight=0)``): keyframes are far apart in
time, and the official term is not scale-invariant (it pulls the trajectory towards a smaller
scale). Focals are frozen (the stream estimates them per frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..geometry import transform_points, unproject_depth, weighted_procrustes
from . import params as P
from .config import AlignConfig
from .driver import optimize, prepare

__all__ = ["KeyframeAligner", "RefineResult"]


@dataclass
class _Keyframe:
    log_depth: np.ndarray  # (h,w) float32
    pose: np.ndarray  # (4,4) float64 camera-to-world
    focal: float  # pixels of the decimated map


@dataclass
class _Edge:
    i: int
    j: int
    pts_i: np.ndarray  # (h,w,3) float32, camera i
    pts_j: np.ndarray  # (h,w,3) float32, camera i
    conf_i: np.ndarray  # (h,w) float32 ≥ 1 (1 where masked out)
    conf_j: np.ndarray
    pw: np.ndarray | None = None  # (8,) pairwise-pose parameters, None until first solved


@dataclass
class RefineResult:
    """What a solve changed.

    Attributes:
        poses: keyframe id → refined (4,4) float64 camera-to-world pose.
        scales: keyframe id → factor by which its depth changed (median over its pixels).
        keyframes: the ids that were free in the solve (frozen ones are not listed).
        energy: the objective's history over the solve.
        seconds: wall time of the solve.
    """

    poses: dict[int, np.ndarray] = field(default_factory=dict)
    scales: dict[int, float] = field(default_factory=dict)
    keyframes: list[int] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def default_config() -> AlignConfig:
    """LM, no camera smoothness, at most 10 iterations: the streaming refinement's settings."""
    return AlignConfig(solver="lm", temporal_smoothing_weight=0.0, lm_iters=10, lm_ftol=1e-3)


class KeyframeAligner:
    """State of the keyframe graph and its windowed solves.

    Args:
        config: alignment settings (the solver, its iterations, the objective's weights);
            default :func:`default_config`. The flow term and windows do not apply here.
        device: where the solver runs (``"cpu"``/``"cuda"``, as :func:`global_align`).
    """

    def __init__(self, config: AlignConfig | None = None, device: str = "cpu"):
        self.config = config or default_config()
        self.device = self.config.check(device, flow=False)
        self.keyframes: dict[int, _Keyframe] = {}
        self.edges: list[_Edge] = []

    # ---- building the graph -------------------------------------------------------------------
    def add_keyframe(self, kf: int, depth: np.ndarray, pose: np.ndarray, focal: float) -> None:
        """A keyframe: ``depth`` (h,w) z-depth (world units), ``pose`` (4,4) camera-to-world,
        ``focal`` in pixels of this map."""
        if kf in self.keyframes:
            raise ValueError(f"keyframe {kf} was already added")
        depth = np.asarray(depth, np.float32)
        if self.keyframes:
            shape = next(iter(self.keyframes.values())).log_depth.shape
            if depth.shape != shape:
                raise ValueError(f"keyframe {kf}: depth must have shape {shape}, got {depth.shape}")
        with np.errstate(divide="ignore", invalid="ignore"):
            log_depth = np.log(np.where(depth > 0, depth, np.nan))
        fill = np.nanmedian(log_depth) if np.isfinite(log_depth).any() else 0.0
        log_depth = np.where(np.isfinite(log_depth), log_depth, fill).astype(np.float32)
        self.keyframes[kf] = _Keyframe(log_depth, np.asarray(pose, np.float64), float(focal))

    def add_edge(self, i: int, j: int, pts_i, pts_j, conf_i, conf_j) -> None:
        """An edge between two added keyframes (offline conventions, see the module doc);
        confidences of masked-out pixels (dynamic, invalid) should be 1 (zero weight)."""
        for k in (i, j):
            if k not in self.keyframes:
                raise ValueError(f"edge ({i}, {j}): keyframe {k} was not added")
        shape = self.keyframes[i].log_depth.shape
        arrays = {"pts_i": pts_i, "pts_j": pts_j, "conf_i": conf_i, "conf_j": conf_j}
        arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}
        for name, arr in arrays.items():
            want = (*shape, 3) if name.startswith("pts") else shape
            if arr.shape != want:
                raise ValueError(f"edge ({i}, {j}): {name} must have shape {want}, got {arr.shape}")
        self.edges.append(_Edge(i, j, **arrays))

    def pose(self, kf: int) -> np.ndarray:
        """(4,4) float64 camera-to-world of a keyframe (its latest solved value)."""
        return self.keyframes[kf].pose.copy()

    # ---- solving ------------------------------------------------------------------------------
    def refine(self, window: int | None, frozen: int = 1) -> RefineResult:
        """Solve over the newest ``window`` keyframes (all when None); the oldest ``frozen`` of
        them keep their depth and pose (the gauge). Edges with both ends in the window take part.

        Returns:
            :class:`RefineResult` (empty when fewer than ``frozen + 1`` keyframes are in the
            window or no edge lies in it).
        """
        import time

        t0 = time.perf_counter()
        ids = sorted(self.keyframes)
        if window is not None:
            ids = ids[-window:]
        frozen = max(1, min(frozen, len(ids) - 1))
        slot = {k: s for s, k in enumerate(ids)}
        edges = [e for e in self.edges if e.i in slot and e.j in slot]
        if len(ids) < 2 or not edges:
            return RefineResult()
        used = {k for e in edges for k in (e.i, e.j)}
        ids = [k for k in ids if k in used]  # a keyframe with no edge in the window stays put
        slot = {k: s for s, k in enumerate(ids)}
        if len(ids) < 2:
            return RefineResult()
        data = prepare(
            np.array([[slot[e.i], slot[e.j]] for e in edges], np.int64),
            np.stack([e.pts_i for e in edges]),
            np.stack([e.pts_j for e in edges]),
            np.stack([e.conf_i for e in edges]),
            np.stack([e.conf_j for e in edges]),
            len(ids),
        )
        params, gauge = self._params(ids, edges)
        fixed = np.zeros(len(ids), bool)
        fixed[:frozen] = True
        params, history = optimize(
            data,
            None,
            self.config,
            self.device,
            params,
            frozen=fixed,
            freeze_focal=True,
            pin_scale=True,
        )
        return self._store(ids, edges, params, gauge, fixed, history, time.perf_counter() - t0)

    def _params(self, ids: list[int], edges: list[_Edge]) -> tuple[dict[str, np.ndarray], float]:
        """The solver's parameters (:mod:`.params`) from the stored state, and the gauge ``c``.

        The scale gauge is the official one (the pairwise scales' geometric mean pinned to
        ``BASE_SCALE``), not the frozen keyframes alone: with a single frozen keyframe the
        objective, measured in world units, decreases by shrinking every other keyframe towards
        it. The world is multiplied by ``c`` so that the stored state satisfies the gauge; the
        solution is divided by ``c`` again (:meth:`_store`)."""
        kfs = [self.keyframes[k] for k in ids]
        pw = np.stack([e.pw if e.pw is not None else self._edge_init(e) for e in edges])
        gauge = float(P.BASE_SCALE / np.exp(np.mean(pw[:, 7])))
        pw[:, 7] += np.log(gauge)  # σ_e·c; τ = t_e/σ_e is unchanged by the common factor
        poses = np.stack([k.pose for k in kfs])
        im = np.zeros((len(ids), 7), np.float32)
        im[:, :4] = P.rotmat_to_quat(poses[:, :3, :3])
        im[:, 4:7] = P.signed_log1p(gauge * poses[:, :3, 3])
        params = {
            "log_depth": np.stack([k.log_depth for k in kfs]).astype(np.float32)
            + np.float32(np.log(gauge)),
            "im_poses": im,
            "focal": (P.FOCAL_BREAK * np.log([k.focal for k in kfs])).astype(np.float32),
            "pw_poses": pw.astype(np.float32),
        }
        return params, gauge

    def _edge_init(self, e: _Edge) -> np.ndarray:
        """Pairwise pose of a new edge: weighted Procrustes of its view-i map onto keyframe i's
        current world points."""
        kf = self.keyframes[e.i]
        cam = unproject_depth(np.exp(kf.log_depth.astype(np.float64)), kf.focal)
        world = transform_points(kf.pose, cam)
        w = np.log(e.conf_i).reshape(-1).astype(np.float64)
        ok = np.isfinite(e.pts_i).all(-1).reshape(-1) & (w > 0)
        src = e.pts_i.reshape(-1, 3)[ok].astype(np.float64)
        try:
            s, rot, t = weighted_procrustes(src, world.reshape(-1, 3)[ok], w[ok], with_scale=True)
        except ValueError:  # no usable pixel (degenerate prediction): start from keyframe i
            s, rot, t = 1.0, kf.pose[:3, :3], kf.pose[:3, 3]
        pw = np.zeros(8)
        pw[:4] = P.rotmat_to_quat(rot[None])[0]
        pw[4:7] = P.signed_log1p(t / s)
        pw[7] = np.log(s)
        return pw

    def _store(self, ids, edges, params, gauge, fixed, history, seconds) -> RefineResult:
        """Write a solve's parameters back into the state (world divided by the gauge ``c``
        again); report what moved."""
        geo = P.geometry(params, len(ids), pin_scale=True)
        out = RefineResult(energy=[float(x) for x in history], seconds=seconds)
        log_c = np.float32(np.log(gauge))
        for s, k in enumerate(ids):
            if fixed[s]:
                continue
            kf = self.keyframes[k]
            new = np.asarray(params["log_depth"][s], np.float32) - log_c
            pose = np.eye(4)
            pose[:3, :3] = geo.rot[s]
            pose[:3, 3] = geo.trans[s] / gauge
            out.scales[k] = float(np.exp(np.median(new - kf.log_depth)))
            out.poses[k] = pose
            out.keyframes.append(k)
            kf.log_depth, kf.pose = new, pose
        sigma = geo.edge_scale / gauge  # absolute pairwise scales, in the stored world
        for e, pw, sig in zip(edges, params["pw_poses"], sigma, strict=True):
            e.pw = np.asarray(pw, np.float64).copy()
            e.pw[7] = np.log(sig)
        return out
