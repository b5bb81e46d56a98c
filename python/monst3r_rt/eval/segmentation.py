"""Mask metrics in the DAVIS convention (``davis2017-evaluation``: ``db_eval_iou`` and
``db_eval_boundary``), for dynamic-mask sequences.

- J (region similarity): per frame ``|P ∩ G| / |P ∪ G|`` (1 when both masks are empty),
  averaged over frames.
- F (boundary measure): per frame, the one-pixel boundary maps of both masks (a pixel is on the
  boundary when it differs from its right, lower or lower-right neighbour; the last row compares
  only to the right, the last column only downwards, the corner is never on it), each dilated
  (OpenCV) by a disk of radius ``ceil(bound_th · image diagonal)`` pixels (``bound_th`` = 0.008,
  ``x² + y² ≤ r²``); precision = predicted boundary pixels within the dilated ground-truth
  boundary / predicted boundary pixels, recall the converse, F = 2PR/(P+R) (0 when P + R = 0;
  P = R = 1 when both boundaries are empty, P = 1, R = 0 when only the prediction's is, and
  P = 0, R = 1 when only the ground truth's is), averaged over frames.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

__all__ = ["mask_metrics"]


def _check_masks(name: str, masks: Any) -> np.ndarray:
    arr = np.asarray(masks)
    if arr.ndim != 3:
        raise ValueError(f"mask_metrics: {name} must be (N,H,W), got {arr.shape}")
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"mask_metrics: {name} must be bool (or integer, nonzero = foreground), "
            f"got dtype {arr.dtype}"
        )
    return arr != 0


def _boundary(seg: np.ndarray) -> np.ndarray:
    """(H,W) bool boundary map of a (H,W) bool mask, DAVIS ``_seg2bmap``."""
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def _f_measure(pred: np.ndarray, gt: np.ndarray, kernel: np.ndarray) -> float:
    pb, gb = _boundary(pred), _boundary(gt)
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 or n_g == 0:
        precision, recall = (1.0 if n_p == 0 else 0.0), (1.0 if n_g == 0 else 0.0)
    else:
        p_dil = cv2.dilate(pb.astype(np.uint8), kernel) > 0
        g_dil = cv2.dilate(gb.astype(np.uint8), kernel) > 0
        precision = np.count_nonzero(pb & g_dil) / n_p
        recall = np.count_nonzero(gb & p_dil) / n_g
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def mask_metrics(pred: Any, gt: Any, bound_th: float = 0.008) -> dict[str, float]:
    """DAVIS J, F and J&F of a predicted mask sequence against the ground truth (module
    docstring).

    Args:
        pred: (N,H,W) bool predicted masks (integer arrays: nonzero is foreground).
        gt: (N,H,W) bool ground-truth masks, same shape.
        bound_th: boundary tolerance as a fraction of the image diagonal (< 1), or in pixels
            (≥ 1), as DAVIS.

    Returns:
        ``iou``: intersection over union of the whole sequence, pixels pooled over frames (1 when
        both are empty everywhere); ``j``: per-frame IoU averaged; ``f``: per-frame boundary
        F-measure averaged; ``jf``: ``(j + f) / 2``. All in [0, 1].

    Raises:
        ValueError: naming the array when an input is not (N,H,W) bool/integer, the shapes
            differ, or N = 0.
    """
    p, g = _check_masks("pred", pred), _check_masks("gt", gt)
    if p.shape != g.shape:
        raise ValueError(f"mask_metrics: pred {p.shape} and gt {g.shape} differ")
    if p.shape[0] == 0:
        raise ValueError(f"mask_metrics: pred {p.shape} has no frames")
    inter = np.count_nonzero(p & g, axis=(1, 2))
    union = np.count_nonzero(p | g, axis=(1, 2))
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    iou = 1.0 if union.sum() == 0 else float(inter.sum() / union.sum())
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*p.shape[1:]))
    kernel = _disk(int(radius))
    f = float(np.mean([_f_measure(pf, gf, kernel) for pf, gf in zip(p, g, strict=True)]))
    jm = float(np.mean(j))
    return {"iou": iou, "j": jm, "f": f, "jf": (jm + f) / 2}
