"""Dynamic (moving-object) masks from pairwise pointmaps and optical flow (spec §4.6).

For every mirrored pair ``(a, b)`` / ``(b, a)`` of a symmetrised graph, a two-view reconstruction
(focals, relative pose, depths) predicts the flow that camera motion alone would cause (the
ego-flow, :mod:`monst3r_rt.egoflow`); where the measured flow disagrees, something moved.

- ``method="official"``: the official recipe (``get_motion_mask_from_pairs``): the two-view
  reconstruction of ``PairViewer`` (Weiszfeld focals, relative pose by PnP-RANSAC, depths from the
  more confident direction), per-pixel error ``‖ego − flow‖``, min-max normalised per pair and
  direction, averaged per frame over its pairs, ``> threshold``.
- ``method="robust"``: the relative pose by closed-form confidence-weighted registration of the
  two pointmaps of the same view (pixel-aligned, so no RANSAC), the error measured against a
  per-map noise scale instead of min-max (a static pair stays static), votes weighted by the
  network confidence and dropped where the flow fails its forward-backward check (occlusions,
  pixels leaving the frame — the official code computes that check and never uses it).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._progress import progress as _progress
from .egoflow import ego_flow_error
from .flow import forward_backward_error
from .geometry import (
    estimate_focal,
    fast_pnp,
    intrinsic_matrix,
    pnp_ransac,
    project,
    relative_pose,
    transform_points,
    unproject,
    weighted_procrustes,
)

__all__ = ["dynamic_masks", "mirror_pairs", "two_view", "TwoView", "robust_scores"]

MIN_CONF = 3.0  # official min_conf_thr: PnP uses pixels with conf > 3


@dataclass
class TwoView:
    """Two-view reconstruction of frames ``(a, b)`` (index 0 = a, 1 = b).

    Attributes:
        focals: (2,) focal lengths in pixels.
        poses: (2,4,4) camera-to-world; one of them is the identity.
        depths: (2,H,W) z-depths, in the unit of ``poses``' translations.
    """

    focals: np.ndarray
    poses: np.ndarray
    depths: np.ndarray


def mirror_pairs(edges: np.ndarray) -> np.ndarray:
    """(P,2) indices ``(k, m)`` of edges ``k = (a, b)`` whose mirror ``m = (b, a)`` exists, in the
    order of first appearance (for ``make_pairs`` graphs: ``m = k + E/2``, as officially).
    Self-pairs ``(a, a)`` are skipped. Raises ValueError naming an edge without a mirror."""
    edges = np.asarray(edges, np.int64).reshape(-1, 2)
    where = {}
    for e, (i, j) in enumerate(edges.tolist()):
        where.setdefault((i, j), e)
    out, used = [], set()
    for e, (i, j) in enumerate(edges.tolist()):
        if i == j or e in used:
            continue
        m = where.get((j, i))
        if m is None:
            raise ValueError(
                f"dynamic masks need a symmetrised pair graph: edge {e} = ({i}, {j}) has no "
                f"mirror ({j}, {i}) (make_pairs symmetrises by default)"
            )
        if m in used:
            continue
        used.update((e, m))
        out.append((e, m))
    return np.asarray(out, np.int64).reshape(-1, 2)


def two_view(preds: Any, k: int, m: int, method: str = "official", threads: int = 0) -> TwoView:
    """Two-view reconstruction of edge ``k = (a, b)`` and its mirror ``m = (b, a)``.

    ``official`` is ``PairViewer`` (spec §4.10); ``robust`` registers ``pts_i[k]`` (view a in
    camera a) onto ``pts_j[m]`` (view a in camera b) with weights ``conf_i[k]·conf_j[m]``.
    """
    h, w = preds.pts_i.shape[1:3]
    pp = (w / 2, h / 2)
    # official naming: edge "0_1" = k, edge "1_0" = m
    pred_i = {0: preds.pts_i[k], 1: preds.pts_i[m]}  # view x in camera x
    pred_j = {0: preds.pts_j[k], 1: preds.pts_j[m]}  # view 1-x in camera x
    conf_i = {0: preds.conf_i[k], 1: preds.conf_i[m]}
    conf_j = {0: preds.conf_j[k], 1: preds.conf_j[m]}
    focals = np.array([estimate_focal(pred_i[x], pp, threads=threads) for x in (0, 1)])
    if method == "robust":
        sub = (slice(None, None, 2), slice(None, None, 2))  # a quarter of the pixels suffices
        s, rot, t = weighted_procrustes(
            pred_i[0][sub], pred_j[1][sub], (conf_i[0] * conf_j[1])[sub], threads=threads
        )
        a_to_b = np.eye(4)  # camera a → camera b, in edge k's scale
        a_to_b[:3, :3], a_to_b[:3, 3] = rot, t / s
        poses = np.stack([np.eye(4), np.linalg.inv(a_to_b)])
        depths = np.stack([pred_i[0][..., 2], pred_i[1][..., 2] / s])
        return TwoView(focals, poses, depths)
    rel = []
    im_conf = {0: np.maximum(conf_i[0], conf_j[1]), 1: np.maximum(conf_j[0], conf_i[1])}
    for x in (0, 1):
        res = fast_pnp(pred_j[1 - x], float(focals[x]), im_conf[x] > MIN_CONF, pp, niter=100)
        rel.append(np.eye(4) if res is None else res[1])  # camera x → camera 1-x
    score = [float(conf_i[x].mean() * conf_j[x].mean()) for x in (0, 1)]
    if score[0] > score[1]:  # world = camera a
        poses = np.stack([np.eye(4), rel[1]])
        view_b = transform_points(np.linalg.inv(rel[1]), pred_j[0])  # in camera b
        depths = np.stack([pred_i[0][..., 2], view_b[..., 2]])
    else:  # world = camera b
        poses = np.stack([rel[0], np.eye(4)])
        view_a = transform_points(np.linalg.inv(rel[0]), pred_j[1])  # in camera a
        depths = np.stack([view_a[..., 2], pred_i[1][..., 2]])
    return TwoView(focals, poses, depths)


def _check(preds: Any, flow_ij: np.ndarray, flow_ji: np.ndarray) -> tuple[int, int, int]:
    for name in ("edges", "pts_i", "pts_j", "conf_i", "conf_j"):
        if not hasattr(preds, name):
            raise TypeError(f"preds must be PairwisePredictions-like; it has no {name!r}")
    e, h, w = preds.pts_i.shape[:3]
    for name, f in (("flow_ij", flow_ij), ("flow_ji", flow_ji)):
        if f.shape != (e, 2, h, w):
            raise ValueError(f"{name} must have shape {(e, 2, h, w)} (one per edge), got {f.shape}")
    return e, h, w


def dynamic_masks(
    preds: Any,
    flow_ij: np.ndarray,
    flow_ji: np.ndarray,
    threshold: float = 0.35,
    method: str = "official",
    *,
    num_frames: int | None = None,
    fb_threshold: float = 3.0,
    return_score: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Per-frame moving-object masks.

    Args:
        preds: :class:`~monst3r_rt.inference.PairwisePredictions` of a symmetrised graph.
        flow_ij, flow_ji: (E,2,H,W) measured flow of every edge, i → j and j → i (pixels), e.g.
            from :func:`~monst3r_rt.flow.compute_flow`.
        threshold: a pixel is dynamic when its per-frame score exceeds this (official 0.35).
        method: ``"official"`` or ``"robust"`` (see the module docstring).
        num_frames: N (default: 1 + the largest frame index in the edges).
        fb_threshold: ``robust`` only: forward-backward error (pixels) above which a flow
            vector does not vote.
        return_score: also return the (N,H,W) float32 score that was thresholded.
        workers: threads for the per-pair reconstructions (default: CPU count, at most 8).
        progress: show a progress bar.

    Returns:
        (N,H,W) bool, True = moving. Frames in no pair are all False.
    """
    if method not in ("official", "robust"):
        raise ValueError(f"unknown mask method {method!r}: use 'official' or 'robust'")
    flow_ij = np.asarray(flow_ij, np.float32)
    flow_ji = np.asarray(flow_ji, np.float32)
    e, h, w = _check(preds, flow_ij, flow_ji)
    edges = np.asarray(preds.edges, np.int64).reshape(-1, 2)
    n = int(edges.max()) + 1 if num_frames is None else int(num_frames)
    pairs = mirror_pairs(edges)
    p = len(pairs)

    # measured flow of each map: a → b is edge k's flow_ij, b → a its flow_ji (as officially)
    k, m = pairs[:, 0], pairs[:, 1]
    measured = np.empty((2 * p, 2, h, w), np.float32)
    measured[0::2], measured[1::2] = flow_ij[k], flow_ji[k]
    if method == "robust":
        fb = np.empty((2 * p, h, w), np.float32)
        fb[0::2] = forward_backward_error(flow_ij[k], flow_ji[k])
        fb[1::2] = forward_backward_error(flow_ji[k], flow_ij[k])
        valid = fb < np.maximum(fb_threshold, 0.05 * np.linalg.norm(measured, axis=1))
        # network confidence of the source view's two pointmaps (its own and the cross-view one)
        conf = np.empty((2 * p, h, w), np.float32)
        conf[0::2] = np.minimum(preds.conf_i[k], preds.conf_j[m])
        conf[1::2] = np.minimum(preds.conf_i[m], preds.conf_j[k])

    depth = np.empty((2 * p, h, w), np.float32)
    focal_src = np.empty(2 * p, np.float32)
    focal_tgt = np.empty(2 * p, np.float32)
    rot = np.empty((2 * p, 3, 3), np.float32)
    trans = np.empty((2 * p, 3), np.float32)
    n_workers = workers or min(os.cpu_count() or 1, 8)
    kernel_threads = 1 if n_workers > 1 else 0

    def reconstruct(q: int) -> None:  # one mirrored pair: both directions
        tv = two_view(preds, int(pairs[q, 0]), int(pairs[q, 1]), method, kernel_threads)
        for d, (src, tgt) in enumerate(((0, 1), (1, 0))):
            x = 2 * q + d
            r, t = relative_pose(tv.poses[src], tv.poses[tgt])
            if method == "robust":
                r, t = _flow_pose(tv.depths[src], tv.focals[src], tv.focals[tgt], measured[x],
                                  valid[x] & (conf[x] > 1.0), r, t)  # fmt: skip
            depth[x], rot[x], trans[x] = tv.depths[src], r, t
            focal_src[x], focal_tgt[x] = tv.focals[src], tv.focals[tgt]

    # OpenCV, the C++ focal kernel and large NumPy ops release the GIL: pairs run in threads,
    # each kernel single-threaded (nested OpenMP teams would oversubscribe the cores)
    with ThreadPoolExecutor(n_workers) as pool:
        list(_progress(pool.map(reconstruct, range(p)), p, "two-view", progress))
    err = ego_flow_error(np.nan_to_num(depth, nan=0.0), focal_src, focal_tgt, rot, trans, measured)
    frames = edges[k].reshape(-1)  # frame of each map: a, b, a, b, ...

    if method == "official":
        score_maps = _minmax(err)
        weights = np.ones_like(score_maps)
    else:
        score_maps = robust_scores(err, valid)
        weights = np.where(valid, np.log(np.maximum(conf, 1.0 + 1e-6)), 0.0).astype(np.float32)
    score = np.zeros((n, h, w), np.float32)
    total = np.zeros((n, h, w), np.float32)
    for x, f in enumerate(frames.tolist()):
        score[f] += score_maps[x] * weights[x]
        total[f] += weights[x]
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(total > 0, score / total, 0.0).astype(np.float32)
    masks = score > threshold
    return (masks, score) if return_score else masks


def _minmax(err: np.ndarray) -> np.ndarray:
    """Official per-map min-max normalisation to [0, 1] (a constant map gives 0, not NaN)."""
    lo = err.min(axis=(1, 2), keepdims=True)
    span = err.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (err - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


# robust: a pixel scores 1 when its error is ROBUST_K noise scales above the map's median, the
# noise scale never below ROBUST_MIN_PX pixels (sub-pixel flow noise is not motion)
ROBUST_K = 6.0
ROBUST_MIN_PX = 1.0


def robust_scores(err: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-map scores in [0, 1]: the error above the map's median in units of its noise scale
    (1.4826·MAD over the flow-consistent pixels, at least ``ROBUST_MIN_PX``)."""
    scores = np.empty_like(err)
    for q in range(len(err)):
        e = err[q][valid[q] & np.isfinite(err[q])]
        if e.size == 0:
            e = err[q][np.isfinite(err[q])]
        med = float(np.median(e)) if e.size else 0.0
        mad = float(np.median(np.abs(e - med))) if e.size else 0.0
        scale = max(1.4826 * mad, ROBUST_MIN_PX)
        scores[q] = np.clip((err[q] - med) / (ROBUST_K * scale), 0.0, 1.0)
    return np.nan_to_num(scores, nan=0.0)


PNP_POINTS = 4000  # pixels sampled for the flow-based PnP


def _flow_pose(depth, f_src, f_tgt, flow, usable, rot0, t0):
    """Relative pose (source camera → target camera) that best explains the measured flow of
    the static pixels: RANSAC-PnP of the source view's points (depth) against their flowed
    positions in the target view, started from the registration's pose; that pose is kept when
    PnP fails or explains fewer pixels."""
    h, w = depth.shape
    ys, xs = np.nonzero(usable & np.isfinite(depth) & (depth > 0))
    if len(xs) < 12:
        return rot0, t0
    rng = np.random.default_rng(0)
    if len(xs) > PNP_POINTS:
        pick = rng.choice(len(xs), PNP_POINTS, replace=False)
        xs, ys = xs[pick], ys[pick]
    z = depth[ys, xs].astype(np.float64)
    pp = (w / 2, h / 2)
    obj = unproject(np.stack([xs, ys], -1), z, f_src, pp)
    img = np.stack([xs + flow[0, ys, xs], ys + flow[1, ys, xs]], -1).astype(np.float64)

    def inliers(r, t):
        proj = project(obj @ r.T + t, f_tgt, pp)
        return int((np.linalg.norm(proj - img, axis=-1) < PNP_REPROJ_PX).sum())

    best = (inliers(rot0, t0), rot0, t0)
    k_tgt = intrinsic_matrix(f_tgt, pp)
    res = pnp_ransac(obj.astype(np.float32), img.astype(np.float32), k_tgt, 100, PNP_REPROJ_PX)
    if res is not None:
        _, r, t = res
        score = inliers(r, t)
        if score > best[0]:
            best = (score, r, t)
    return best[1], best[2]


PNP_REPROJ_PX = 2.0
