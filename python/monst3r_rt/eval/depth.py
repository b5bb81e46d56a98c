"""Video-depth metrics of the official evaluation (``depth_metric.ipynb`` calling
``dust3r/depth_eval.py::depth_evaluation``; spec §6.3), in NumPy float64.

One call scores one **sequence**: all frames are stacked and a single alignment is fitted over
every valid pixel of the sequence (not per frame). Valid pixels are those with a finite ground
truth ``0 < gt < max_depth`` (strictly below the cap, as the official mask). The official
settings per dataset are in :data:`DEPTH_DATASET_SETTINGS`; the dataset score is the mean over
sequences weighted by valid-pixel count (:func:`aggregate_depth_metrics`).

Alignments (``align``):

- ``"median"`` (official ``align_with_*=False``): ``s = median(gt) / median(pred)``, ``t = 0``.
  Medians are torch's: the *lower* of the two middle values for an even count.
- ``"scale_shift"`` (official ``align_with_lstsq``): least-squares ``s, t`` minimising
  ``Σ (s·pred + t − gt)²`` (closed form).
- ``"lad"`` (official ``align_with_lad2``, the notebook default behind the paper's
  "per-sequence scale & shift" numbers): ``Σ |s·pred + t − gt|`` decreased by Adam (lr 1e-4,
  betas 0.9/0.999, eps 1e-8, at most 1000 steps, stop once the loss changes by < 1e-6) from
  ``s = median(gt)/median(pred)``, ``t = 0``. This replays those steps (in float64, where the
  official code uses the predictions' dtype); each step is a pass over the sequence's pixels.

After alignment ``post_clip_max`` (Sintel: 70) clamps the prediction from above. AbsRel, SqRel and
RMSE use the aligned prediction as it is (a negative value counts with its full error); before
logRMSE and the δ thresholds the prediction is clamped to ≥ 1e-5, as the official code does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import _core

__all__ = ["depth_metrics", "aggregate_depth_metrics", "DEPTH_DATASET_SETTINGS"]

#: Official keyword settings of :func:`depth_metrics` per video-depth dataset (spec §6.3):
#: ``max_depth`` drops ground truth at or above the cap; ``post_clip_max`` clamps the aligned
#: prediction. The paper's table uses ``align="lad"``.
DEPTH_DATASET_SETTINGS: dict[str, dict[str, float | None]] = {
    "sintel": {"max_depth": 70.0, "post_clip_max": 70.0},
    "bonn": {"max_depth": 70.0, "post_clip_max": None},
    "kitti": {"max_depth": None, "post_clip_max": None},
}

_PRED_FLOOR = 1e-5  # official clamp before log and ratios
_LAD_LR, _LAD_ITERS, _LAD_TOL = 1e-4, 1000, 1e-6
_ADAM_B1, _ADAM_B2, _ADAM_EPS = 0.9, 0.999, 1e-8
_LAD_BOX = 1e-3  # half-width of the box of fixed residual signs, relative to the initial scale


#: Pixels per chunk of the passes over a sequence's valid pixels (float64 temporaries of this
#: size, a few at a time, instead of full-sequence arrays).
_CHUNK = 1 << 19


def _chunks(n: int, chunk: int) -> range:
    return range(0, n, chunk)


def _lower_median(x: np.ndarray) -> float:
    """torch.median: the lower middle value for an even count (``x`` is left unchanged)."""
    k = (x.size - 1) // 2
    return float(np.partition(x, k)[k])


def _median_scale(p: np.ndarray, g: np.ndarray) -> float:
    mp = _lower_median(p)
    if not mp > 0:
        raise ValueError(
            f"depth_metrics: the median prediction over the valid pixels is {mp}, not positive; "
            "median scaling is undefined"
        )
    return _lower_median(g) / mp


def _lstsq_scale_shift(p: np.ndarray, g: np.ndarray, chunk: int) -> tuple[float, float]:
    """Least-squares ``s, t`` of ``Σ (s p + t − g)²``: means, then centred sums, per chunk in
    float64 (centred, so no cancellation for depths far from 0)."""
    n = p.size
    sp = sg = 0.0
    for i in _chunks(n, chunk):
        sp += float(p[i : i + chunk].sum(dtype=np.float64))
        sg += float(g[i : i + chunk].sum(dtype=np.float64))
    mp, mg = sp / n, sg / n
    var = cov = 0.0
    for i in _chunks(n, chunk):
        pc = p[i : i + chunk].astype(np.float64) - mp
        var += float(pc @ pc)
        cov += float(pc @ (g[i : i + chunk].astype(np.float64) - mg))
    if not var > 0:
        raise ValueError("depth_metrics: pred is constant over the valid pixels; "
                         "scale_shift alignment is undefined")  # fmt: skip
    scale = cov / var
    return scale, mg - scale * mp


def _lad_adam(p: np.ndarray, g: np.ndarray, s: float) -> tuple[float, float]:
    """The official ``absolute_value_scaling2``: Adam on ``Σ|s p + t − g|`` from ``(s, 0)``.

    Exact, but not a full pass per step: around a centre ``c`` the pixels with
    ``|r(c)| > ρ(|p| + 1)`` keep the sign of their residual while ``|x − c|∞ ≤ ρ``, so their
    share of the loss and gradient is linear in ``(s, t)`` and summed once; each step passes only
    over the other ("active") pixels, and the partition is redone when ``x`` leaves the box. Both
    passes run in :mod:`monst3r_rt._core` (``lad_partition``, ``lad_sums``: OpenMP, float64 sums
    over fixed chunks, independent of the thread count). ``p``, ``g``: (M,) valid values, any real
    dtype (float32/float64 pairs are used as they are, others as float64)."""
    if not (p.dtype == g.dtype and p.dtype in (np.float32, np.float64)):
        p, g = p.astype(np.float64), g.astype(np.float64)  # exact for every real input dtype
    p, g = np.ascontiguousarray(p), np.ascontiguousarray(g)
    x = np.array([s, 0.0])
    m = np.zeros(2)
    v = np.zeros(2)
    prev = None
    rho = _LAD_BOX * max(1.0, abs(s))
    centre = None
    for k in range(1, _LAD_ITERS + 1):
        if centre is None or np.abs(x - centre).max() > rho:
            centre = x.copy()
            lin, pa, ga = _core.lad_partition(p, g, float(centre[0]), float(centre[1]), rho)
        sp, sn, sr = _core.lad_sums(pa, ga, float(x[0]), float(x[1]))  # Σσp, Σσ, Σ|r| (active)
        loss = sr + x[0] * lin[0] + x[1] * lin[1] - lin[2]  # Σ|r|
        grad = np.array([sp + lin[0], sn + lin[1]])
        m = _ADAM_B1 * m + (1 - _ADAM_B1) * grad
        v = _ADAM_B2 * v + (1 - _ADAM_B2) * grad * grad
        denom = np.sqrt(v) / np.sqrt(1 - _ADAM_B2**k) + _ADAM_EPS
        x = x - (_LAD_LR / (1 - _ADAM_B1**k)) * m / denom
        if prev is not None and abs(prev - loss) < _LAD_TOL:
            break
        prev = loss
    return float(x[0]), float(x[1])


def _check_depths(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred), np.asarray(gt)
    for name, a in (("pred", p), ("gt", g)):
        if a.ndim != 3:
            raise ValueError(f"depth_metrics: {name} must be (N,H,W), got {a.shape}")
        if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
            raise ValueError(f"depth_metrics: {name} must be real numbers, got dtype {a.dtype}")
    if p.shape != g.shape:
        raise ValueError(
            f"depth_metrics: pred {p.shape} and gt {g.shape} differ (resize the prediction to the "
            "ground truth's resolution first; the official notebook uses cv2.INTER_CUBIC)"
        )
    return p, g


def _valid_values(
    p_all: np.ndarray, g_all: np.ndarray, max_depth: float | None, chunk: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """The valid pixels' ``(pred, gt)`` values, (M,) each in their own dtype (float32 input:
    no float64 copy of the sequence), and the count of valid-gt pixels with a non-finite
    prediction; computed per chunk of frames."""
    n = p_all.shape[0]
    per = max(1, chunk // max(1, p_all[0].size))
    ps, gs, invalid = [], [], 0
    for i in range(0, n, per):
        pc, gc = p_all[i : i + per], g_all[i : i + per]
        with np.errstate(invalid="ignore"):  # NaN compares False: 0 < gt < cap (or +inf)
            ok = gc > 0
            ok &= gc < (np.inf if max_depth is None else max_depth)
        n_ok = np.count_nonzero(ok)
        ok &= np.isfinite(pc)
        invalid += int(n_ok - np.count_nonzero(ok))
        ps.append(pc[ok])
        gs.append(gc[ok])
    return np.concatenate(ps), np.concatenate(gs), invalid


def depth_metrics(
    pred: Any,
    gt: Any,
    align: str = "median",
    max_depth: float | None = None,
    *,
    post_clip_max: float | None = None,
    chunk: int = _CHUNK,
) -> dict[str, float | int]:
    """Depth metrics of one sequence after one per-sequence alignment (module docstring).

    Args:
        pred: (N,H,W) predicted depth (any real dtype; used in float64), up to scale (and shift).
        gt: (N,H,W) ground-truth depth, same shape. Pixels with ``gt`` ≤ 0, non-finite, or
            ≥ ``max_depth`` are ignored (not ground truth).
        align: ``"median"``, ``"scale_shift"`` (least squares) or ``"lad"`` (official L1 Adam).
        max_depth: ground-truth cap in gt units, or None (only ``gt > 0``). Official: Sintel and
            Bonn 70, KITTI None (:data:`DEPTH_DATASET_SETTINGS`).
        post_clip_max: clamp of the aligned prediction from above (official Sintel: 70), or None.
        chunk: pixels per pass chunk (memory: a few float64 arrays of this size; the valid
            values themselves are kept once in the inputs' dtypes). Results do not depend on it
            beyond float64 summation-order rounding.

    Prediction handling: a non-finite prediction at a valid ground-truth pixel is left out of the
    alignment and the metrics and counted in ``invalid_pred`` (check it is 0 for a fair score);
    predictions ≤ 0 are kept (they enter the fit and AbsRel/RMSE as they are, and the log and δ
    terms after the official clamp to 1e-5).

    Returns:
        ``abs_rel``, ``sq_rel``, ``rmse``, ``log_rmse`` (gt units); ``delta_1_25``,
        ``delta_1_25_2``, ``delta_1_25_3`` as **fractions** in [0, 1] (as ``depth_evaluation``
        returns them; the paper prints ×100, e.g. 58.5); ``valid_pixels`` (int, pixels scored:
        the weight of the sequence in the dataset mean); ``invalid_pred`` (int); ``scale`` and
        ``shift`` of the alignment (``aligned = scale·pred + shift``).

    Raises:
        ValueError: naming the array and shapes on bad input; when no pixel is valid; when the
            median prediction is not positive (``"median"``/``"lad"``), or the prediction is
            constant over the valid pixels (``"scale_shift"``); on an unknown ``align``.
    """
    if align not in ("median", "scale_shift", "lad"):
        raise ValueError(
            f"depth_metrics: align must be 'median', 'scale_shift' or 'lad', got {align!r}"
        )
    if chunk < 1:
        raise ValueError(f"depth_metrics: chunk must be >= 1, got {chunk}")
    p_all, g_all = _check_depths(pred, gt)
    p, g, invalid_pred = _valid_values(p_all, g_all, max_depth, chunk)
    if p.size == 0:
        raise ValueError(
            f"depth_metrics: no valid pixel in gt {g_all.shape} (0 < gt < max_depth={max_depth}, "
            f"finite prediction; {invalid_pred} valid-gt pixels have a non-finite prediction)"
        )

    if align == "median":
        scale, shift = _median_scale(p, g), 0.0
    elif align == "lad":
        scale, shift = _lad_adam(p, g, _median_scale(p, g))
    else:
        scale, shift = _lstsq_scale_shift(p, g, chunk)

    # sums of |d|/g, d²/g, d², log², and the δ counts, per chunk in float64
    acc = np.zeros(7)
    for i in _chunks(p.size, chunk):
        gc = g[i : i + chunk].astype(np.float64)
        a = p[i : i + chunk].astype(np.float64)
        a *= scale
        a += shift
        if post_clip_max is not None:
            np.minimum(a, post_clip_max, out=a)
        diff = a - gc
        sq = diff * diff
        np.maximum(a, _PRED_FLOOR, out=a)  # a_pos
        lg = np.log(a)
        lg -= np.log(gc)
        ratio = np.maximum(a / gc, gc / a)
        acc += [
            float((np.abs(diff) / gc).sum()),
            float((sq / gc).sum()),
            float(sq.sum()),
            float(lg @ lg),
            float(np.count_nonzero(ratio < 1.25)),
            float(np.count_nonzero(ratio < 1.25**2)),
            float(np.count_nonzero(ratio < 1.25**3)),
        ]
    mean = acc / p.size
    return {
        "abs_rel": float(mean[0]),
        "sq_rel": float(mean[1]),
        "rmse": float(np.sqrt(mean[2])),
        "log_rmse": float(np.sqrt(mean[3])),
        "delta_1_25": float(mean[4]),
        "delta_1_25_2": float(mean[5]),
        "delta_1_25_3": float(mean[6]),
        "valid_pixels": int(p.size),
        "invalid_pred": invalid_pred,
        "scale": float(scale),
        "shift": float(shift),
    }


_AVERAGED = ("abs_rel", "sq_rel", "rmse", "log_rmse", "delta_1_25", "delta_1_25_2", "delta_1_25_3")


def aggregate_depth_metrics(per_sequence: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    """Dataset score of :func:`depth_metrics` results: each metric averaged over the sequences
    weighted by ``valid_pixels`` (the official notebook's weighting); ``valid_pixels`` and
    ``invalid_pred`` summed.

    Raises:
        ValueError: when the list is empty or the pixel counts sum to 0.
    """
    if not per_sequence:
        raise ValueError("aggregate_depth_metrics: no sequence results")
    w = np.array([float(r["valid_pixels"]) for r in per_sequence])
    if not w.sum() > 0:
        raise ValueError("aggregate_depth_metrics: valid_pixels sum to 0")
    out: dict[str, float | int] = {
        k: float(np.dot(w, [float(r[k]) for r in per_sequence]) / w.sum()) for k in _AVERAGED
    }
    out["valid_pixels"] = int(w.sum())
    out["invalid_pred"] = int(sum(int(r.get("invalid_pred", 0)) for r in per_sequence))
    return out
