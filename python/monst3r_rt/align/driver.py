"""``global_align``: pairwise pointmaps in; per-frame depth, camera-to-world pose and focal out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .._progress import ProgressBar
from . import params as P
from .config import AlignConfig
from .init import connected_components
from .objective import AlignData, FlowData, evaluate
from .result import AlignResult


def _describe(components: list[list[int]]) -> str:
    def rng(c: list[int]) -> str:
        return f"{c[0]}..{c[-1]}" if c == list(range(c[0], c[-1] + 1)) and len(c) > 2 else str(c)

    return ", ".join(f"{{{rng(c)}}}" for c in components[:6]) + (
        " ..." if len(components) > 6 else ""
    )


def prepare(
    edges: Any,
    pts_i: Any,
    pts_j: Any,
    conf_i: Any,
    conf_j: Any,
    n_frames: int | None = None,
) -> AlignData:
    """Validate the pairwise inputs and build the kernels' arrays.

    Non-finite predictions are masked (weight 0) and counted in ``diagnostics``; every other
    problem raises ValueError naming the array, the expected and the actual shape.
    """
    edges = np.asarray(edges)
    if edges.ndim != 2 or edges.shape[1] != 2 or len(edges) == 0:
        raise ValueError(f"edges must be a non-empty (E,2) sequence of (i, j), got {edges.shape}")
    if not np.issubdtype(edges.dtype, np.integer):
        raise ValueError(f"edges must be integers, got dtype {edges.dtype}")
    edges = np.ascontiguousarray(edges, dtype=np.int64)
    e = len(edges)
    arrays = {"pts_i": pts_i, "pts_j": pts_j, "conf_i": conf_i, "conf_j": conf_j}
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    pi = arrays["pts_i"]
    if pi.ndim != 4 or pi.shape[0] != e or pi.shape[3] != 3:
        raise ValueError(f"pts_i must have shape ({e},H,W,3) for {e} edges, got {pi.shape}")
    h, w = pi.shape[1:3]
    for name, shape in (("pts_j", (e, h, w, 3)), ("conf_i", (e, h, w)), ("conf_j", (e, h, w))):
        if arrays[name].shape != shape:
            raise ValueError(f"{name} must have shape {shape} like pts_i, got {arrays[name].shape}")
    n = int(edges.max()) + 1 if n_frames is None else int(n_frames)
    if edges.min() < 0 or edges.max() >= n:
        bad = edges[(edges < 0).any(1) | (edges >= n).any(1)][0]
        raise ValueError(f"edge {tuple(bad.tolist())} references a frame outside 0..{n - 1}")
    if n < 2:
        raise ValueError(f"global alignment needs at least 2 frames, got {n}")
    unused = np.setdiff1d(np.arange(n), edges)
    if len(unused):
        first = int(unused[0])
        raise ValueError(
            f"{len(unused)} of {n} frames appear in no pair (first: frame {first}); "
            "check the edges or pass images= so that the frame count is known"
        )
    comps = connected_components(n, edges)
    if len(comps) > 1:
        raise ValueError(
            f"the pair graph is disconnected: {len(comps)} components {_describe(comps)}; "
            "every frame must be linked to the others by pairs"
        )

    diagnostics: dict[str, int] = {}
    out: dict[str, np.ndarray] = {}
    for side in ("i", "j"):
        # no copy of the pointmaps when they are already float32, contiguous and finite
        pts = np.ascontiguousarray(arrays[f"pts_{side}"], dtype=np.float32)
        conf = np.asarray(arrays[f"conf_{side}"], dtype=np.float32)
        valid = np.isfinite(pts).all(-1) & np.isfinite(conf)
        low = valid & (conf < 1)
        if low.any():
            raise ValueError(
                f"conf_{side} has {int(low.sum())} values < 1 (min {conf[low].min():.4g}); "
                "pass the network's raw confidence (1 + exp(c) ≥ 1)"
            )
        n_invalid = int(valid.size - np.count_nonzero(valid))
        diagnostics[f"invalid_pixels_{side}"] = n_invalid
        if n_invalid:
            pts = pts.copy() if np.shares_memory(pts, arrays[f"pts_{side}"]) else pts
            pts[~valid] = 0
            conf = np.where(valid, conf, 1)
        out[f"pts_{side}"] = pts
        out[f"w_{side}"] = np.log(conf)  # 0 where invalid (conf set to 1)
    diagnostics["invalid_pixels"] = (
        diagnostics["invalid_pixels_i"] + diagnostics["invalid_pixels_j"]
    )
    pp = np.tile(np.array([w / 2, h / 2], np.float32), (n, 1))
    return AlignData(edges=edges, pp=pp, n_frames=n, diagnostics=diagnostics, **out)


def prepare_flow(flows: Any, masks: np.ndarray | None, e: int, n: int, h: int, w: int) -> FlowData:
    """Validate ``(flow_ij, flow_ji)`` ((E,2,H,W) each, pixels) and build the flow term's data."""
    if not isinstance(flows, (tuple, list)) or len(flows) != 2:
        raise ValueError("flows must be a pair (flow_ij, flow_ji), each (E,2,H,W)")
    arrays = []
    for name, f in zip(("flow_ij", "flow_ji"), flows, strict=True):
        f = np.asarray(f)
        if f.shape != (e, 2, h, w):
            raise ValueError(f"{name} must have shape {(e, 2, h, w)}, got {f.shape}")
        bad = ~np.isfinite(f)
        if bad.any():
            edge = int(np.argwhere(bad)[0, 0])
            raise ValueError(
                f"{name} has {int(bad.sum())} non-finite values (first in edge {edge})"
            )
        arrays.append(np.ascontiguousarray(f, dtype=np.float32))
    static = np.ones((n, h, w), np.float32) if masks is None else (~masks).astype(np.float32)
    return FlowData(arrays[0], arrays[1], static)


def per_frame_conf(edges: np.ndarray, conf_i: np.ndarray, conf_j: np.ndarray, n: int) -> np.ndarray:
    """(N,H,W) max raw confidence of each frame over all its edges (official ``im_conf``)."""
    out = np.zeros((n, *conf_i.shape[1:]), np.float32)
    for e, (i, j) in enumerate(edges):
        np.maximum(out[i], np.nan_to_num(conf_i[e], nan=0.0), out=out[i])
        np.maximum(out[j], np.nan_to_num(conf_j[e], nan=0.0), out=out[j])
    return out


def global_align(
    edges: Any,
    pts_i: Any = None,
    pts_j: Any = None,
    conf_i: Any = None,
    conf_j: Any = None,
    *,
    images: Any = None,
    flows: tuple[Any, Any] | None = None,
    dynamic_masks: Any = None,
    config: AlignConfig | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> AlignResult:
    """MonST3R global alignment of pairwise pointmaps.

    Args:
        edges: (E,2) pairs (i, j), or a :class:`~monst3r_rt.inference.PairwisePredictions`
            (then the four arrays are taken from it).
        pts_i, pts_j: (E,H,W,3) float32, views i and j in camera i's frame.
        conf_i, conf_j: (E,H,W) float32 ≥ 1, raw network confidence.
        images: (N,H,W,3) float in [0,1] or uint8, optional (frame count and colours).
        flows: ``(flow_ij, flow_ji)``, each (E,2,H,W) float32 pixels, optional: enables the
            flow term.
        dynamic_masks: (N,H,W) bool, True = moving; static pixels drive the flow term.
        config: :class:`AlignConfig` (official demo defaults).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when the solver has a CUDA path and
            ``_core``'s CUDA kernels can run here); ``diagnostics["device"]`` says which ran.
        progress: show a progress bar over the optimiser's iterations (tqdm, stderr).

    Returns:
        :class:`AlignResult` with numpy arrays.

    Raises:
        ValueError / RuntimeError / ImportError: before any work, for a solver, device, flow or
            window combination that cannot run (:meth:`AlignConfig.check`).
    """
    cfg = config or AlignConfig()
    device = cfg.check(device, flow=flows is not None)
    if hasattr(edges, "pts_i") and pts_i is None:
        preds = edges
        edges, pts_i, pts_j = preds.edges, preds.pts_i, preds.pts_j
        conf_i, conf_j = preds.conf_i, preds.conf_j
    if any(a is None for a in (pts_i, pts_j, conf_i, conf_j)):
        raise ValueError("global_align needs pts_i, pts_j, conf_i and conf_j (or predictions)")
    n_frames = None if images is None else len(images)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    data = prepare(edges, pts_i, pts_j, conf_i, conf_j, n_frames)
    n = data.n_frames
    h, w = data.shape
    if images is not None:
        shape = tuple(np.shape(images))
        if shape != (n, h, w, 3):
            raise ValueError(
                f"images must have shape {(n, h, w, 3)} like the pointmaps, got {shape}"
            )
    masks = None
    if dynamic_masks is not None:
        masks = np.asarray(dynamic_masks, dtype=bool)
        if masks.shape != (n, h, w):
            raise ValueError(f"dynamic_masks must have shape {(n, h, w)}, got {masks.shape}")
    flow = None if flows is None else prepare_flow(flows, masks, len(data.edges), n, h, w)
    timings["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    windows = 1 if cfg.window is None else len(window_ranges(n, *cfg.window))
    bar = ProgressBar(cfg.niter * windows, "align", progress and cfg.solver == "adam")
    if cfg.window is None:
        params = _init(data, pts_i, pts_j, conf_i, conf_j, cfg)
        timings["init"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        params, history = optimize(data, flow, cfg, device, params, callback=bar.step)
        timings["optimize"] = time.perf_counter() - t0
        extra: dict[str, Any] = {}
    else:
        params, history, extra = _align_windows(
            data, flow, cfg, device, pts_i, pts_j, conf_i, conf_j, bar.step
        )
        timings["windows"] = time.perf_counter() - t0
    bar.close()
    result = assemble(params, data, conf_i, conf_j, masks)
    result.energy = np.asarray(history, dtype=np.float64)
    result.timings = timings
    result.diagnostics = dict(
        data.diagnostics, solver=cfg.solver, niter=cfg.niter, device=device, **extra
    )
    return result


def _init(data: AlignData, pts_i, pts_j, conf_i, conf_j, cfg: AlignConfig) -> dict[str, np.ndarray]:
    """Official MST initialisation; non-finite predictions are passed as NaN (ignored)."""
    from .init import init_mst

    def masked(pts: np.ndarray, side: str) -> np.ndarray:
        if not data.diagnostics.get(f"invalid_pixels_{side}"):
            return pts  # nothing to mask: no copy
        valid = np.isfinite(np.asarray(pts_i if side == "i" else pts_j)).all(-1)
        valid &= np.isfinite(np.asarray(conf_i if side == "i" else conf_j))
        return np.where(valid[..., None], pts, np.nan)

    params = init_mst(
        data.edges, masked(data.pts_i, "i"), masked(data.pts_j, "j"),
        conf_i, conf_j, shared_focal=cfg.shared_focal, min_conf_thr=cfg.min_conf_thr,
    )  # fmt: skip
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}


def optimize(
    data: AlignData,
    flow: FlowData | None,
    cfg: AlignConfig,
    device: str,
    params: dict[str, np.ndarray],
    frozen: np.ndarray | None = None,
    freeze_focal: bool = False,
    pin_scale: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Run the configured solver from ``params``; ``frozen`` (N,) bool frames keep their depth
    and pose (Adam: their gradients are zeroed; LM: their variables are removed)."""
    if cfg.solver == "lm":
        from .lm import solve_lm

        return solve_lm(
            data, params, niter=cfg.lm_iters, ftol=cfg.lm_ftol,
            temporal_smoothing_weight=cfg.temporal_smoothing_weight,
            translation_weight=cfg.translation_weight, flow=flow,
            flow_loss_weight=cfg.flow_loss_weight, flow_loss_threshold=cfg.flow_loss_threshold,
            pixel_loss_threshold=cfg.pixel_loss_threshold, frozen=frozen,
            freeze_focal=freeze_focal, pin_scale=pin_scale, device=device,
        )  # fmt: skip
    flow_start = cfg.niter * cfg.flow_loss_start
    kernel = None
    params = dict(params)
    if device == "cuda":
        from .cuda import CudaKernel

        kernel = CudaKernel(data, flow)
        params["log_depth"] = kernel.upload(params["log_depth"])

    def objective(p: dict[str, np.ndarray], it: int) -> tuple[float, dict[str, np.ndarray]]:
        energy, grads, _ = evaluate(
            data,
            p,
            temporal_smoothing_weight=cfg.temporal_smoothing_weight,
            translation_weight=cfg.translation_weight,
            flow=flow if (cfg.flow_loss_weight > 0 and it >= flow_start) else None,
            flow_loss_weight=cfg.flow_loss_weight,
            flow_loss_threshold=cfg.flow_loss_threshold,
            pixel_loss_threshold=cfg.pixel_loss_threshold,
            kernel=kernel,
            pin_scale=pin_scale,
        )
        if frozen is not None:
            grads["log_depth"][frozen] = 0
            grads["im_poses"][frozen] = 0
        if freeze_focal:
            grads["focal"][:] = 0
        return energy, grads

    from .solvers import adam

    params, history = adam(objective, params, cfg.niter, cfg.lr_at, callback=callback)
    if kernel is not None:
        params["log_depth"] = params["log_depth"].cpu().numpy()
    return params, history


def window_ranges(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Frame ranges [a, b) of overlapping windows covering 0..n−1."""
    out, start = [], 0
    while True:
        end = min(start + size, n)
        out.append((start, end))
        if end == n:
            return out
        start = end - overlap


def _similarity(params: dict[str, np.ndarray], s: float, rot: np.ndarray, t: np.ndarray) -> None:
    """Apply the world similarity X ↦ s·rot·X + t to a window's parameters, in place (the
    pairwise log-scales are returned unpinned: σ_e absolute)."""
    geo = P.geometry(params, len(params["im_poses"]))
    new_rot = rot @ geo.rot
    new_t = s * geo.trans @ rot.T + t
    params["im_poses"][:, :4] = P.rotmat_to_quat(new_rot)
    params["im_poses"][:, 4:7] = P.signed_log1p(new_t)
    params["log_depth"] += np.float32(np.log(s))
    sigma = s * geo.edge_scale
    edge_rot = rot @ geo.edge_rot
    edge_t = s * geo.edge_trans @ rot.T + t
    params["pw_poses"][:, :4] = P.rotmat_to_quat(edge_rot)
    params["pw_poses"][:, 4:7] = P.signed_log1p(edge_t / sigma[:, None])
    params["pw_poses"][:, 7] = np.log(sigma)


def _align_windows(
    data: AlignData, flow: FlowData | None, cfg: AlignConfig, device: str, pts_i, pts_j,
    conf_i, conf_j, callback: Callable[[int, float], None] | None = None,
) -> tuple[dict[str, np.ndarray], list[float], dict[str, Any]]:  # fmt: skip
    """Overlapping windows, each optimised with the previous window's overlap frozen, so the
    optimiser's memory is bounded by the window. Poses and scale stay continuous: each window's
    initialisation is mapped onto the frozen frames by a similarity before optimising."""
    from .init import weighted_procrustes

    size, overlap = cfg.window  # type: ignore[misc]
    if not cfg.shared_focal:
        raise ValueError("windowed alignment needs shared_focal=True (one focal for the video)")
    pts_i, pts_j = np.asarray(pts_i), np.asarray(pts_j)
    conf_i, conf_j = np.asarray(conf_i), np.asarray(conf_j)
    n = data.n_frames
    h, w = data.shape
    edges = data.edges
    full = {
        "log_depth": np.zeros((n, h, w), np.float32),
        "im_poses": np.zeros((n, 7), np.float32),
        "focal": None,
    }
    history: list[float] = []
    used = np.zeros(len(edges), bool)
    ranges = window_ranges(n, size, overlap)
    for k, (a, b) in enumerate(ranges):
        sel = np.flatnonzero((edges >= a).all(1) & (edges < b).all(1))
        used[sel] = True
        sub = prepare(edges[sel] - a, pts_i[sel], pts_j[sel], conf_i[sel], conf_j[sel], b - a)
        sub_flow = None
        if flow is not None:
            sub_flow = FlowData(flow.flow_ij[sel], flow.flow_ji[sel], flow.static[a:b])
        params = _init(sub, pts_i[sel], pts_j[sel], conf_i[sel], conf_j[sel], cfg)
        if k == 0:
            params, hist = optimize(sub, sub_flow, cfg, device, params, callback=callback)
        else:
            # map the window's own frame onto the frozen overlap (camera centres and points)
            ov = np.arange(a, ranges[k - 1][1])
            fixed = {key: full[key][ov] for key in ("log_depth", "im_poses")}
            fixed["focal"] = full["focal"]
            local = {key: params[key][ov - a] for key in ("log_depth", "im_poses")}
            local["focal"] = params["focal"]
            src = _world_points(local, sub.pp[: len(ov)])
            dst = _world_points(fixed, sub.pp[: len(ov)])
            stride = max(1, src.shape[0] // 20000)
            s, rot, t = weighted_procrustes(src[::stride], dst[::stride], None, with_scale=True)
            _similarity(params, s, rot, t)
            params["log_depth"][ov - a] = full["log_depth"][ov]
            params["im_poses"][ov - a] = full["im_poses"][ov]
            params["focal"] = full["focal"].copy()
            frozen = np.zeros(b - a, bool)
            frozen[ov - a] = True
            params, hist = optimize(
                sub, sub_flow, cfg, device, params, frozen=frozen, freeze_focal=True,
                pin_scale=False, callback=callback,
            )  # fmt: skip
        history.extend(hist)
        full["log_depth"][a:b] = params["log_depth"]
        full["im_poses"][a:b] = params["im_poses"]
        full["focal"] = params["focal"]
    out = {
        "log_depth": full["log_depth"],
        "im_poses": full["im_poses"],
        "focal": full["focal"],
        "pw_poses": np.tile(np.array([0, 0, 0, 1, 0, 0, 0, 0], np.float32), (len(edges), 1)),
    }
    extra = {"windows": [list(r) for r in ranges], "edges_outside_windows": int((~used).sum())}
    return out, history, extra


def _cameras(geo: P.Geometry, pp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,4,4) float32 camera-to-world poses and (N,3,3) float32 intrinsics of ``geo``."""
    n = len(geo.rot)
    poses = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    poses[:, :3, :3] = geo.rot
    poses[:, :3, 3] = geo.trans
    k = np.zeros((n, 3, 3), np.float32)
    k[:, 0, 0] = k[:, 1, 1] = geo.focal
    k[:, :2, 2] = pp
    k[:, 2, 2] = 1
    return poses, k


def _world_points(params: dict[str, np.ndarray], pp: np.ndarray) -> np.ndarray:
    """(M,3) world points of the given frames' depth maps (float64)."""
    from ..geometry import world_points

    n = len(params["im_poses"])
    identity = np.array([[0, 0, 0, 1, 0, 0, 0, 0]], np.float32)  # no edges needed here
    poses, k = _cameras(P.geometry(dict(params, pw_poses=identity), n), pp)
    world = world_points(np.exp(params["log_depth"]).astype(np.float32), poses, k)
    return world.reshape(-1, 3).astype(np.float64)


def assemble(
    params: dict[str, np.ndarray],
    data: AlignData,
    conf_i: Any,
    conf_j: Any,
    masks: np.ndarray | None,
) -> AlignResult:
    """Parameters → :class:`AlignResult` (poses, depths, intrinsics, world points, conf)."""
    from ..geometry import world_points

    n = data.n_frames
    geo = P.geometry(params, n)
    poses, k = _cameras(geo, data.pp)
    depths = np.exp(params["log_depth"]).astype(np.float32)
    pts3d = world_points(depths, poses, k)
    conf = per_frame_conf(data.edges, np.asarray(conf_i), np.asarray(conf_j), n)
    return AlignResult(
        poses=poses, depths=depths, focals=geo.focal.astype(np.float32), intrinsics=k,
        pts3d=pts3d, conf=conf, dynamic_masks=masks,
    )  # fmt: skip
