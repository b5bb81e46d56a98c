"""Optical flow between the frames of a pair graph, and its forward-backward consistency.

``compute_flow`` runs OpenCV's DIS (no weights, CPU) by default; ``method="raft"`` runs
torchvision's RAFT with weights the user supplies; any callable ``f(src, dst) -> flow`` on
(B,H,W,3) uint8 batches plugs in another learned flow (SEA-RAFT, as the official code uses, for
example). Each unordered pair is computed once in each direction, even when both orientations
are edges of the graph (the official code runs RAFT four times per unordered pair).

Flow convention: (…,2,H,W) float32 in pixels, channel 0 along x (columns), 1 along y (rows);
``flow_ij`` maps a pixel of frame i to its position in frame j.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from ._progress import progress as _progress
from .pairs import check_pairs

__all__ = ["compute_flow", "dis_flow", "forward_backward_error", "DIS_PRESETS"]

# Measured on the TartanAir pairs (benchmarks/motion_bench.py): "medium" has about half the
# median end-point error of "fast" for ~5x its time, and fits the 65-frame budget; default.
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check_images(images: Any) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N,H,W,3), got {images.shape}")
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise ValueError("float images must be finite and in [0, 1] (or pass uint8 RGB)")
        return np.round(images * 255).astype(np.uint8)
    raise ValueError(f"images must be uint8 RGB or float in [0, 1], got dtype {images.dtype}")


def _dis_preset(preset: str) -> int:
    if preset not in DIS_PRESETS:
        raise ValueError(f"unknown DIS preset {preset!r}; choose one of {sorted(DIS_PRESETS)}")
    return DIS_PRESETS[preset]


def dis_flow(src: np.ndarray, dst: np.ndarray, preset: str = "medium") -> np.ndarray:
    """DIS flow of a batch of ordered pairs.

    Args:
        src, dst: (B,H,W,3) uint8 RGB.
        preset: ``"ultrafast"``, ``"fast"`` or ``"medium"``.

    Returns:
        (B,2,H,W) float32 flow src → dst in pixels.
    """
    dis = cv2.DISOpticalFlow_create(_dis_preset(preset))
    out = np.empty((len(src), 2, *src.shape[1:3]), np.float32)
    for b, (a, c) in enumerate(zip(src, dst, strict=True)):
        ga = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
        gc = cv2.cvtColor(np.ascontiguousarray(c), cv2.COLOR_RGB2GRAY)
        out[b] = np.moveaxis(dis.calc(ga, gc, None), -1, 0)
    return out


class RaftFlow:
    """torchvision's RAFT (large or small, picked from the weights) as a flow callable.

    Args:
        weights: path to a torchvision RAFT ``state_dict`` (``.pth``; e.g. the file behind
            ``Raft_Large_Weights.C_T_SKHT_V2``), read with ``torch.load(weights_only=True)``.
        device: torch device.
        iters: refinement iterations (``num_flow_updates``).
        batch_size: pairs per forward pass.
    """

    def __init__(
        self,
        weights: str | os.PathLike[str],
        device: str = "cpu",
        iters: int = 20,
        batch_size: int = 8,
    ):
        try:
            import torch
            from torchvision.models.optical_flow import raft_large, raft_small
        except Exception as exc:  # ImportError, or a torchvision built for another torch
            raise RuntimeError(
                f"method='raft' needs torch and a matching torchvision ({exc}); install "
                "torchvision for your torch build, or use method='dis'"
            ) from exc
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"RAFT weights not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        errors = []
        for build in (raft_large, raft_small):
            model = build(weights=None, progress=False)
            try:
                model.load_state_dict(state)
            except (RuntimeError, TypeError) as exc:
                errors.append(f"{build.__name__}: {str(exc).splitlines()[0]}")
                continue
            break
        else:
            raise ValueError(f"{path}: not a torchvision RAFT state_dict ({'; '.join(errors)})")
        self.torch = torch
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.iters = iters
        self.batch_size = batch_size

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        torch = self.torch
        h, w = src.shape[1:3]
        ph, pw = (-h) % 8, (-w) % 8
        out = np.empty((len(src), 2, h, w), np.float32)

        def prep(x: np.ndarray) -> Any:
            t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()
            t = t.to(self.device) / 127.5 - 1.0  # RAFT's normalisation to [-1, 1]
            return torch.nn.functional.pad(t, (0, pw, 0, ph), mode="replicate")

        with torch.inference_mode():
            for s in range(0, len(src), self.batch_size):
                a, b = prep(src[s : s + self.batch_size]), prep(dst[s : s + self.batch_size])
                flow = self.model(a, b, num_flow_updates=self.iters)[-1]
                out[s : s + len(a)] = flow[:, :, :h, :w].float().cpu().numpy()
        return out


def _flow_fn(method: str | FlowFn, preset: str, weights: Any, device: str) -> FlowFn:
    if callable(method):
        return method
    if method == "dis":
        _dis_preset(preset)  # fail before any work
        return lambda a, b: dis_flow(a, b, preset)
    if method == "raft":
        if weights is None:
            raise ValueError(
                "method='raft' needs weights=PATH to a torchvision RAFT state_dict (this package "
                "never downloads them); or use method='dis'"
            )
        return RaftFlow(weights, device=device)
    raise ValueError(f"unknown flow method {method!r}: use 'dis', 'raft' or a callable")


def compute_flow(
    images: Any,
    edges: Sequence[tuple[int, int]] | np.ndarray,
    method: str | FlowFn = "dis",
    *,
    preset: str = "medium",
    weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    workers: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Optical flow of every edge, both directions.

    Args:
        images: (N,H,W,3) uint8 RGB (float in [0, 1] is accepted).
        edges: E ordered pairs (i, j).
        method: ``"dis"`` (OpenCV DIS, default), ``"raft"`` (torchvision RAFT, needs ``weights``)
            or a callable ``f(src, dst)`` mapping (B,H,W,3) uint8 batches to (B,2,H,W) flow.
        preset: DIS quality preset, ``"ultrafast"``, ``"fast"`` or ``"medium"``.
        weights: RAFT state_dict path (``method="raft"``).
        device: torch device for RAFT.
        workers: threads for DIS (default: the CPU count, at most 8); OpenCV releases the GIL.
        progress: show a progress bar.

    Returns:
        ``(flow_ij, flow_ji)``, each (E,2,H,W) float32 in pixels: i → j and j → i.
    """
    images = _check_images(images)
    n, h, w, _ = images.shape
    edges = check_pairs(edges, n)
    fn = _flow_fn(method, preset, weights, device)
    # each unordered pair once: (a, b) with a < b, both directions
    unordered = sorted({(min(i, j), max(i, j)) for i, j in edges.tolist() if i != j})
    slot = {p: k for k, p in enumerate(unordered)}
    fwd = np.empty((len(unordered), 2, h, w), np.float32)  # a → b
    bwd = np.empty((len(unordered), 2, h, w), np.float32)  # b → a
    chunk = 8
    starts = list(range(0, len(unordered), chunk))

    def run(s: int) -> None:
        idx = np.asarray(unordered[s : s + chunk])
        a, b = images[idx[:, 0]], images[idx[:, 1]]
        fwd[s : s + len(idx)] = _checked(fn(a, b), len(idx), h, w)
        bwd[s : s + len(idx)] = _checked(fn(b, a), len(idx), h, w)

    if method == "dis" and len(starts) > 1:
        n_workers = workers or min(os.cpu_count() or 1, 8)
        with ThreadPoolExecutor(n_workers) as pool:
            for _ in _progress(pool.map(run, starts), len(starts), "flow", progress):
                pass
    else:
        for s in _progress(starts, len(starts), "flow", progress):
            run(s)

    flow_ij = np.zeros((len(edges), 2, h, w), np.float32)  # self-pairs keep zero flow
    flow_ji = np.zeros((len(edges), 2, h, w), np.float32)
    for e, (i, j) in enumerate(edges.tolist()):
        if i == j:
            continue
        k = slot[(min(i, j), max(i, j))]
        flow_ij[e], flow_ji[e] = (fwd[k], bwd[k]) if i < j else (bwd[k], fwd[k])
    return flow_ij, flow_ji


def _checked(flow: Any, b: int, h: int, w: int) -> np.ndarray:
    flow = np.asarray(flow, dtype=np.float32)
    if flow.shape != (b, 2, h, w):
        raise ValueError(f"the flow method returned shape {flow.shape}, expected {(b, 2, h, w)}")
    return flow


def forward_backward_error(flow_fw: np.ndarray, flow_bw: np.ndarray) -> np.ndarray:
    """Forward-backward consistency error ``‖F_fw(x) + F_bw(x + F_fw(x))‖₂`` per pixel.

    Args:
        flow_fw: (E,2,H,W) flow from the source frame to the target frame.
        flow_bw: (E,2,H,W) flow from the target frame back to the source frame.

    Returns:
        (E,H,W) float32 error in pixels; ``inf`` where ``x + F_fw(x)`` leaves the image
        (the official ``OccMask`` treats those pixels as invalid too).
    """
    flow_fw = np.asarray(flow_fw, np.float32)
    flow_bw = np.asarray(flow_bw, np.float32)
    if flow_fw.ndim != 4 or flow_fw.shape[1] != 2 or flow_bw.shape != flow_fw.shape:
        raise ValueError(
            f"flows must both have shape (E,2,H,W), got {flow_fw.shape} and {flow_bw.shape}"
        )
    e, _, h, w = flow_fw.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = np.empty((e, h, w), np.float32)
    for k in range(e):
        mx = gx + flow_fw[k, 0]
        my = gy + flow_fw[k, 1]
        back = cv2.remap(
            np.ascontiguousarray(np.moveaxis(flow_bw[k], 0, -1)),
            mx,
            my,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        err = np.hypot(flow_fw[k, 0] + back[..., 0], flow_fw[k, 1] + back[..., 1])
        outside = (mx < 0) | (mx > w - 1) | (my < 0) | (my > h - 1)
        out[k] = np.where(outside, np.inf, err)
    return out
