"""Feed-forward ("real-time") mode: the official ``demo.py --real_time`` reproduced, plus cameras.

The official mode (``get_reconstructed_scene_realtime``) runs the network on the ``oneref-mid``
pairs ``(mid, j)``, ``j = 0..N-1`` (``mid = N // 2``, the self pair included, not symmetrised) and
keeps the raw pointmaps: everything is in the middle frame's camera, with no global alignment, no
poses, no intrinsics and no masks. :func:`write_realtime_files` writes its per-pair files.

Cameras (an addition): pair ``(mid, j)`` gives frame j's points in the middle camera *on frame j's
own pixel grid*, i.e. 3-D/2-D correspondences, so frame j's camera is a PnP problem with an
unknown focal (principal point at the image centre):

- the middle frame: pose = identity, focal by Weiszfeld
  (:func:`~monst3r_rt.geometry.estimate_focal`) on its own pointmap ``pts_i`` of the self pair;
- any other frame j (:func:`register_frame`): the official initialisation's focal search
  (:func:`~monst3r_rt.geometry.fast_pnp` at the 21 focals of ``geomspace(S/2, 3S)``,
  ``S = max(H, W)``), scored by the median reprojection error instead of the inlier count (on
  clean geometry every focal of the grid can have all points as inliers), then a golden-section
  search of ``log f`` between the best focal's grid neighbours, each step a PnP at a fixed focal;
  the final pose is a PnP at the found focal on all confident pixels. On exact geometry it
  recovers the focal and pose to about 1e-4 relative.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import estimate_focal, fast_pnp, pixel_grid, project, transform_points
from .inference import PairwisePredictions
from .pairs import make_pairs

__all__ = [
    "FEEDFORWARD_GRAPH",
    "FeedforwardCameras",
    "feedforward_pairs",
    "register_frame",
    "feedforward_cameras",
    "write_realtime_files",
]

FEEDFORWARD_GRAPH = "oneref-mid"
MAX_SEARCH_POINTS = 4096  # pixels used by the focal search (a regular subsample)
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def feedforward_pairs(n: int) -> list[tuple[int, int]]:
    """The official real-time pairs: ``(n // 2, j)`` for ``j = 0..n-1``, not symmetrised —
    except with 2 frames, where ``make_pairs`` symmetrises whatever is asked, as officially:
    ``(1, 0), (1, 1), (0, 1), (1, 1)``."""
    return make_pairs(n, FEEDFORWARD_GRAPH, symmetrize=False)


def _subsample(mask: np.ndarray, limit: int) -> np.ndarray:
    """``mask`` thinned on a regular pixel stride to at most about ``limit`` pixels."""
    count = int(mask.sum())
    if count <= limit:
        return mask
    step = int(np.ceil(np.sqrt(count / limit)))
    out = np.zeros_like(mask)
    out[::step, ::step] = mask[::step, ::step]
    return out if out.sum() >= 4 else mask


def _reprojection(pts3d: np.ndarray, focal: float, mask: np.ndarray) -> tuple[float, np.ndarray]:
    """Median reprojection error (pixels) of the masked points under the PnP pose at ``focal``,
    and that camera-to-world pose (inf and None when PnP fails)."""
    res = fast_pnp(pts3d, focal, mask)
    if res is None:
        return np.inf, None
    h, w = mask.shape
    cam = transform_points(np.linalg.inv(res[1]), pts3d[mask].astype(np.float64))
    err = np.linalg.norm(project(cam, focal, (w / 2, h / 2)) - pixel_grid(h, w)[mask], axis=-1)
    err = err[np.isfinite(err)]
    return (float(np.median(err)) if err.size else np.inf), res[1]


def register_frame(
    pts3d: np.ndarray, mask: np.ndarray, rtol: float = 1e-6
) -> tuple[float, np.ndarray] | None:
    """Focal and camera-to-world pose of a camera from a pointmap seen on its own pixel grid.

    Args:
        pts3d: (H,W,3) points in the world frame (any unit), pixel ``(x, y)`` of this camera
            seeing ``pts3d[y, x]``; principal point ``(W/2, H/2)``.
        mask: (H,W) bool, pixels to use (non-finite points are dropped).
        rtol: relative width of the final focal bracket.

    Returns:
        ``(focal in pixels, (4,4) float64 camera-to-world)``, or None when fewer than 4 pixels
        are usable or every PnP fails.
    """
    pts3d = np.asarray(pts3d)
    mask = np.asarray(mask, bool) & np.isfinite(pts3d).all(-1)
    if mask.sum() < 4:
        return None
    h, w = mask.shape
    sub = _subsample(mask, MAX_SEARCH_POINTS)
    grid = np.geomspace(max(h, w) / 2, max(h, w) * 3, 21)  # fast_pnp's focal candidates
    costs = [_reprojection(pts3d, float(f), sub)[0] for f in grid]
    k = int(np.argmin(costs))
    if not np.isfinite(costs[k]):
        return None
    lo, hi = np.log(grid[max(k - 1, 0)]), np.log(grid[min(k + 1, len(grid) - 1)])
    x1, x2 = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    c1 = _reprojection(pts3d, float(np.exp(x1)), sub)[0]
    c2 = _reprojection(pts3d, float(np.exp(x2)), sub)[0]
    while hi - lo > rtol:
        if c1 <= c2:
            hi, x2, c2 = x2, x1, c1
            x1 = hi - _GOLDEN * (hi - lo)
            c1 = _reprojection(pts3d, float(np.exp(x1)), sub)[0]
        else:
            lo, x1, c1 = x1, x2, c2
            x2 = lo + _GOLDEN * (hi - lo)
            c2 = _reprojection(pts3d, float(np.exp(x2)), sub)[0]
    focal = float(np.exp((lo + hi) / 2))
    res = fast_pnp(pts3d, focal, mask)
    return None if res is None else (focal, res[1])


@dataclass
class FeedforwardCameras:
    """Cameras of the feed-forward mode, world = the middle frame's camera.

    Attributes:
        poses: (N,4,4) float64 camera-to-world (the middle frame: identity).
        focals: (N,) float64 focal lengths in pixels.
        depths: (N,H,W) float32 z-depth of each frame's ``pts_j`` in its own camera.
        failed: frames whose registration failed (identity pose, the middle frame's focal).
    """

    poses: np.ndarray
    focals: np.ndarray
    depths: np.ndarray
    failed: list[int]


def feedforward_cameras(
    preds: PairwisePredictions, min_conf_thr: float = 3.0
) -> FeedforwardCameras:
    """Per-frame cameras of ``oneref-mid`` predictions (see the module docstring).

    Args:
        preds: the :func:`feedforward_pairs` predictions, edge ``j`` = pair ``(mid, j)`` for
            ``j < N`` (the mirrored edges of a 2-frame clip are not used).
        min_conf_thr: PnP uses pixels with ``conf_j`` above this (the official initialisation's
            3); all finite pixels when fewer than 4 pass.

    Returns:
        :class:`FeedforwardCameras`.
    """
    n = preds.num_frames
    if not np.array_equal(preds.edges, np.asarray(feedforward_pairs(n), np.int64).reshape(-1, 2)):
        raise ValueError(
            f"feedforward_cameras: the edges must be the {FEEDFORWARD_GRAPH} pairs of {n} frames "
            f"(mid = {n // 2}, j) for j = 0..{n - 1}, got {preds.edges.tolist()[:3]}..."
        )
    mid = n // 2
    poses = np.tile(np.eye(4), (n, 1, 1))
    focals = np.full(n, estimate_focal(preds.pts_i[mid]))
    failed: list[int] = []
    for j in range(n):
        if j == mid:
            continue
        pts, conf = preds.pts_j[j], preds.conf_j[j]
        mask = conf > min_conf_thr
        if (mask & np.isfinite(pts).all(-1)).sum() < 4:
            mask = np.ones_like(mask)
        res = register_frame(pts, mask)
        if res is None:
            failed.append(j)
        else:
            focals[j], poses[j] = res
    depths = np.stack([transform_points(np.linalg.inv(poses[j]), preds.pts_j[j])[..., 2]
                       for j in range(n)]).astype(np.float32)  # fmt: skip
    return FeedforwardCameras(poses=poses, focals=focals, depths=depths, failed=failed)


def write_realtime_files(
    folder: str | os.PathLike[str], preds: PairwisePredictions, images: np.ndarray
) -> list[str]:
    """The official real-time mode's per-pair files, pair ``b`` = ``preds.edges[b] = (i, j)``.

    ``pts3d1_p{b}.npy`` / ``pts3d2_p{b}.npy``: (H,W,6) float32, view i's / view j's xyz (both in
    camera i's frame) then its rgb in [0, 1] (``image / 255``); ``conf1_p{b}.npy`` /
    ``conf2_p{b}.npy``: (H,W) float32 raw confidence; ``img1_p{b}.png`` / ``img2_p{b}.png``:
    the two RGB images. No zero padding in ``b``, as officially.

    Args:
        folder: an existing folder.
        preds: pairwise predictions.
        images: (N,H,W,3) uint8 RGB frames at model resolution.

    Returns:
        the names written, in order.
    """
    folder = os.fspath(folder)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:3] != preds.image_size or images.shape[3] != 3:
        raise ValueError(
            f"images must have shape (N,{preds.image_size[0]},{preds.image_size[1]},3), "
            f"got {images.shape}"
        )
    rgb = images.astype(np.float32) / 255.0
    names: list[str] = []
    for b, (i, j) in enumerate(preds.edges.tolist()):
        arrays: Sequence[tuple[str, np.ndarray]] = (
            (f"pts3d1_p{b}.npy", np.concatenate([preds.pts_i[b], rgb[i]], -1)),
            (f"pts3d2_p{b}.npy", np.concatenate([preds.pts_j[b], rgb[j]], -1)),
            (f"conf1_p{b}.npy", preds.conf_i[b]),
            (f"conf2_p{b}.npy", preds.conf_j[b]),
        )
        for name, arr in arrays:
            np.save(os.path.join(folder, name), arr.astype(np.float32))
            names.append(name)
        for name, k in ((f"img1_p{b}.png", i), (f"img2_p{b}.png", j)):
            cv2.imwrite(os.path.join(folder, name), images[k][..., ::-1])
            names.append(name)
    return names
