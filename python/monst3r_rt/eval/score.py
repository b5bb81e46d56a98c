"""Scoring output folders against a dataset's ground truth, and the result files (CSV, JSON,
Markdown tables laid out like the paper's Tables 1 and 2, the paper's numbers beside ours).

Two prediction layouts are read (:func:`read_prediction`):

- this package's output folder (``reconstruction.npz``, :meth:`monst3r_rt.Reconstruction.load`);
- the official ``demo.py`` / ``pose_eval.py`` folder (spec §5.1): ``frame_{i}.npy`` depth
  (zero-padded ``frame_0000.npy`` or not, ``frame_0.npy``: the number is parsed, as the official
  readers do), ``pred_traj.txt`` (``t x y z qw qx qy qz``, camera-to-world) and
  ``dynamic_mask_{i}.png``.

Scoring (:func:`score_sequence`) follows spec §6.3–6.4: predicted depth resized to the ground
truth's size with ``cv2.INTER_CUBIC``, one alignment per sequence (default ``"lad"``, the
paper's "per-sequence scale & shift") with the dataset's caps (:data:`DEPTH_DATASET_SETTINGS`);
poses by :func:`pose_metrics`; masks by :func:`mask_metrics` after a nearest-neighbour resize.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..fileio import read_official_traj
from ..reconstruction import NPZ, Reconstruction
from .datasets import SequenceData
from .depth import DEPTH_DATASET_SETTINGS, aggregate_depth_metrics, depth_metrics
from .pose import pose_metrics
from .segmentation import mask_metrics

__all__ = [
    "Prediction", "read_prediction", "score_sequence", "aggregate", "PAPER", "markdown_table",
    "write_results", "DEPTH_KEYS", "POSE_KEYS", "MASK_KEYS",
]  # fmt: skip

DEPTH_KEYS = ("abs_rel", "delta_1_25")
POSE_KEYS = ("ate", "rpe_trans", "rpe_rot")
MASK_KEYS = ("j", "f", "jf")

#: The paper's numbers (arXiv 2410.03825, spec §6.5; δ as a fraction). Video depth: per-sequence
#: scale & shift. TUM-dynamics: ATE 0.063 in one transcription, 0.074 in another (unconfirmed
#: against the PDF); its RPE translation is not confirmed, so it is left out.
PAPER: dict[str, dict[str, float]] = {
    "sintel": {
        "abs_rel": 0.335,
        "delta_1_25": 0.585,
        "ate": 0.108,
        "rpe_trans": 0.042,
        "rpe_rot": 0.732,
    },  # fmt: skip
    "bonn": {"abs_rel": 0.063, "delta_1_25": 0.964},
    "kitti": {"abs_rel": 0.104, "delta_1_25": 0.895},
    "tum": {"ate": 0.063, "rpe_rot": 1.217},
    "davis": {},
}

_FRAME_NPY = re.compile(r"^frame_(\d+)\.npy$")
_MASK_PNG = re.compile(r"^dynamic_mask_(\d+)\.png$")


@dataclass
class Prediction:
    """A method's output for one sequence.

    Attributes:
        depths: (N,h,w) float depth (arbitrary scale), or a sequence of N (h,w) arrays.
        poses: (N,4,4) camera-to-world, or None (no trajectory file).
        masks: (N,h,w) bool dynamic masks, or None.
        layout: ``"monst3r_rt"`` or ``"official"``.
        folder: where it was read.
    """

    depths: Any
    poses: np.ndarray | None
    masks: Any
    layout: str
    folder: str

    def __len__(self) -> int:
        return len(self.depths)


def _numbered(folder: str, pattern: re.Pattern[str], what: str) -> list[str]:
    """Files matching ``pattern`` by parsed frame number, which must run 0..N-1."""
    found: dict[int, str] = {}
    for f in os.listdir(folder):
        m = pattern.match(f)
        if m:
            i = int(m.group(1))
            if i in found:
                raise ValueError(f"{folder}: frame {i} has two {what} files: {found[i]}, {f}")
            found[i] = f
    if found:
        missing = sorted(set(range(max(found) + 1)) - set(found))
        if missing:
            raise ValueError(f"{folder}: {what} files of frames {missing[:10]} are missing "
                             f"(found {len(found)}, numbered up to {max(found)})")  # fmt: skip
    return [os.path.join(folder, found[i]) for i in sorted(found)]


def read_prediction(folder: str | os.PathLike[str]) -> Prediction:
    """Read one sequence's output folder, this package's layout (``reconstruction.npz``) or the
    official demo's (module docstring).

    Raises:
        FileNotFoundError: naming the folder when it is missing or has neither layout.
        ValueError: on numbered files with gaps or duplicates, or a trajectory whose length
            differs from the depth count.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: missing prediction folder")
    if os.path.isfile(os.path.join(folder, NPZ)):
        rec = Reconstruction.load(folder, mmap=True)
        return Prediction(rec.depths, np.asarray(rec.poses, np.float64), rec.dynamic_masks,
                          "monst3r_rt", folder)  # fmt: skip
    depth_files = _numbered(folder, _FRAME_NPY, "frame_*.npy depth")
    if not depth_files:
        raise FileNotFoundError(
            f"{folder}: no prediction: neither {NPZ} (monst3r_rt) nor frame_*.npy depth files "
            "(official demo.py layout)"
        )
    depths = [np.load(p, allow_pickle=False) for p in depth_files]
    for p, d in zip(depth_files, depths, strict=True):
        if d.ndim != 2:
            raise ValueError(f"{p}: depth must be (H,W), got {d.shape}")
    poses = None
    traj = os.path.join(folder, "pred_traj.txt")
    if os.path.isfile(traj):
        poses = read_official_traj(traj)[1]
        if len(poses) != len(depths):
            raise ValueError(f"{traj}: {len(poses)} poses for {len(depths)} frame_*.npy depths")
    masks = None
    mask_files = _numbered(folder, _MASK_PNG, "dynamic_mask_*.png")
    if mask_files:
        if len(mask_files) != len(depths):
            raise ValueError(f"{folder}: {len(mask_files)} dynamic_mask_*.png for "
                             f"{len(depths)} frame_*.npy depths")  # fmt: skip
        masks = [cv2.imread(p, cv2.IMREAD_GRAYSCALE) > 0 for p in mask_files]
    return Prediction(depths, poses, masks, "official", folder)


def _resize_stack(frames: Any, size: tuple[int, int], interp: int) -> np.ndarray:
    """(N,H,W) from N (h,w) frames resized to ``size`` = (H,W) (cv2 with ``interp``)."""
    h, w = size
    out = []
    for f in frames:
        f = np.asarray(f)
        out.append(f if f.shape == (h, w) else cv2.resize(f, (w, h), interpolation=interp))
    return np.stack(out)


def score_sequence(
    pred: Prediction,
    gt: SequenceData,
    dataset: str,
    *,
    align: str = "lad",
    tasks: Sequence[str] = ("depth", "pose", "mask"),
) -> dict[str, Any]:
    """Metrics of one sequence (the ground truth's tasks among ``tasks``).

    Args:
        pred: the method's output (:func:`read_prediction`).
        gt: the sequence's ground truth (a dataset reader's ``load``).
        dataset: a key of :data:`DEPTH_DATASET_SETTINGS` for the depth caps (others: no caps).
        align: depth alignment, ``"lad"`` (paper), ``"median"`` or ``"scale_shift"``.
        tasks: which of depth / pose / mask to score when the ground truth has them.

    Returns:
        a flat dict: ``frames``; with depth, every :func:`depth_metrics` key plus
        ``nonpositive_pred`` (valid-gt pixels whose resized prediction is ≤ 0: kept, as the
        official code does; non-finite ones are left out and counted in ``invalid_pred``); with
        poses ``ate``, ``rpe_trans``, ``rpe_rot`` (``pose_error`` instead when the trajectory is
        degenerate, a sequence the official evaluation skips); with masks ``j``, ``f``, ``jf``,
        ``iou``.

    Raises:
        ValueError: naming the folder when the prediction's frame count differs from the ground
            truth's, or when a task's ground truth exists and the prediction lacks it.
    """
    n = len(gt.images)
    if len(pred) != n:
        raise ValueError(
            f"{pred.folder}: {len(pred)} predicted frames, the ground truth of {gt.name} has {n} "
            "(run the method on exactly the dataset reader's frames)"
        )
    out: dict[str, Any] = {"frames": n}
    if "depth" in tasks and gt.depth is not None:
        d = _resize_stack(pred.depths, gt.depth.shape[1:], cv2.INTER_CUBIC)
        settings = DEPTH_DATASET_SETTINGS.get(dataset, {"max_depth": None, "post_clip_max": None})
        out.update(depth_metrics(d, gt.depth, align, **settings))
        valid = np.isfinite(gt.depth) & (gt.depth > 0)
        if settings["max_depth"] is not None:
            valid &= gt.depth < settings["max_depth"]
        out["nonpositive_pred"] = int(np.count_nonzero(valid & (d <= 0)))
    if "pose" in tasks and gt.poses is not None:
        if pred.poses is None:
            raise ValueError(f"{pred.folder}: no trajectory (pred_traj.txt) to score poses")
        try:
            out.update({k: v for k, v in pose_metrics(pred.poses, gt.poses).items()
                        if k in POSE_KEYS})  # fmt: skip
        except ValueError as exc:
            if "degenerate" not in str(exc):
                raise
            out["pose_error"] = str(exc)
    if "mask" in tasks and gt.masks is not None:
        if pred.masks is None:
            raise ValueError(f"{pred.folder}: no dynamic masks to score")
        m = _resize_stack([np.asarray(x, np.uint8) for x in pred.masks], gt.masks.shape[1:],
                          cv2.INTER_NEAREST)  # fmt: skip
        out.update(mask_metrics(m > 0, gt.masks))
    return out


def aggregate(per_sequence: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The dataset score: depth metrics averaged over sequences weighted by valid pixels
    (:func:`aggregate_depth_metrics`), pose and mask metrics unweighted means over the sequences
    that have them (as the official ``calculate_averages``). ``sequences`` counts each task's
    sequences."""
    rows = list(per_sequence.values())
    out: dict[str, Any] = {}
    depth = [r for r in rows if "abs_rel" in r]
    if depth:
        out.update(aggregate_depth_metrics(depth))
        out["nonpositive_pred"] = int(sum(r.get("nonpositive_pred", 0) for r in depth))
        out["depth_sequences"] = len(depth)
    for keys, label in ((POSE_KEYS, "pose_sequences"), (("j", "f", "jf", "iou"), "mask_sequences")):
        have = [r for r in rows if keys[0] in r]
        if have:
            out.update({k: float(np.mean([r[k] for r in have])) for k in keys})
            out[label] = len(have)
    return out


def _fmt(v: Any, key: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if key.startswith("delta") or key in MASK_KEYS:
        return f"{100 * v:.1f}"
    return f"{v:.3f}"


_TITLES = {"sintel": "Sintel", "bonn": "Bonn", "kitti": "KITTI", "tum": "TUM-dynamics",
           "davis": "DAVIS"}  # fmt: skip
_HEAD = {"abs_rel": "Abs Rel ↓", "delta_1_25": "δ<1.25 ↑", "ate": "ATE ↓",
         "rpe_trans": "RPE trans ↓", "rpe_rot": "RPE rot (deg) ↓", "j": "J ↑", "f": "F ↑",
         "jf": "J&F ↑"}  # fmt: skip


def markdown_table(means: Mapping[str, Mapping[str, Any]], label: str = "monst3r_rt") -> str:
    """Markdown tables laid out like the paper's: Table 1 (video depth: Abs Rel and δ<1.25 per
    dataset), Table 2 (camera pose: ATE, RPE trans, RPE rot per dataset) and, for DAVIS, J/F;
    one row with the paper's MonST3R numbers (:data:`PAPER`, "–" where it has none) and one
    with ``label``'s.

    Args:
        means: dataset name → :func:`aggregate` result (datasets without a task are left out of
            that task's table).
    """
    parts = []
    for title, keys in (("Video depth (per-sequence scale & shift)", DEPTH_KEYS),
                        ("Camera pose", POSE_KEYS), ("Dynamic masks", MASK_KEYS)):  # fmt: skip
        names = [d for d, m in means.items() if keys[0] in m]
        if not names:
            continue
        head = "| " + title + " | " + " | ".join(
            f"{_TITLES.get(d, d)} {_HEAD[k]}" for d in names for k in keys) + " |"  # fmt: skip
        sep = "|---" * (1 + len(names) * len(keys)) + "|"
        rows = []
        for who, src in (("MonST3R (paper)", {d: PAPER.get(d, {}) for d in names}),
                         (label, {d: means[d] for d in names})):  # fmt: skip
            cells = [_fmt(src[d].get(k), k) for d in names for k in keys]
            rows.append(f"| {who} | " + " | ".join(cells) + " |")
        parts.append("\n".join([head, sep, *rows]))
    return "\n\n".join(parts) + "\n"


def _per_sequence_table(per_sequence: Mapping[str, Mapping[str, Any]]) -> str:
    keys = [k for k in (*DEPTH_KEYS, *POSE_KEYS, *MASK_KEYS)
            if any(k in r for r in per_sequence.values())]  # fmt: skip
    lines = ["| sequence | frames | " + " | ".join(_HEAD[k] for k in keys) + " |",
             "|---" * (2 + len(keys)) + "|"]  # fmt: skip
    for name, r in per_sequence.items():
        cells = [_fmt(r.get(k), k) for k in keys]
        lines.append(f"| {name} | {r.get('frames', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    folder: str | os.PathLike[str],
    dataset: str,
    per_sequence: Mapping[str, Mapping[str, Any]],
    *,
    skipped: Mapping[str, str] | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Write ``metrics.csv`` (one row per sequence, then ``mean``), ``metrics.json``
    (per-sequence, mean, the paper's numbers, skipped sequences with the reason, ``info``) and
    ``table.md`` (:func:`markdown_table`, its row labelled with ``info["mode"]`` when given —
    offline, stream or predictions —, then the per-sequence table and the skipped sequences).
    Returns the paths by kind.

    Raises:
        ValueError: when no sequence was scored.
    """
    if not per_sequence:
        raise ValueError(f"{dataset}: no sequence was scored")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    mean = aggregate(per_sequence)
    skipped = dict(skipped or {})
    skipped.update({s: r["pose_error"] for s, r in per_sequence.items() if "pose_error" in r})
    keys: list[str] = []
    for r in (*per_sequence.values(), mean):
        keys += [k for k in r if k not in keys and k != "pose_error"]
    paths = {k: os.path.join(folder, f) for k, f in
             (("csv", "metrics.csv"), ("json", "metrics.json"), ("table", "table.md"))}  # fmt: skip
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sequence", *keys])
        for name, r in (*per_sequence.items(), ("mean", mean)):
            w.writerow([name, *(r.get(k, "") for k in keys)])
    doc = {"dataset": dataset, "per_sequence": per_sequence, "mean": mean,
           "paper": PAPER.get(dataset, {}), "skipped": skipped,
           "info": dict(info or {})}  # fmt: skip
    with open(paths["json"], "w") as f:
        json.dump(doc, f, indent=2, default=float)
    mode = (info or {}).get("mode")  # the row says how the numbers were made
    label = f"monst3r_rt ({mode})" if mode else "monst3r_rt"
    md = [f"# {_TITLES.get(dataset, dataset)}: {len(per_sequence)} sequences\n",
          markdown_table({dataset: mean}, label), _per_sequence_table(per_sequence)]  # fmt: skip
    if skipped:
        md.append("Skipped sequences (not in the means):\n\n" +
                  "".join(f"- {s}: {why}\n" for s, why in skipped.items()))  # fmt: skip
    with open(paths["table"], "w") as f:
        f.write("\n".join(md))
    return paths
