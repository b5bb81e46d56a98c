"""Evaluation metrics of the paper's protocol (spec §6), in NumPy: camera poses (ATE / RPE as
``evo`` computes them), per-sequence video depth, DAVIS mask J&F, and Sintel's binary
ground-truth files."""

from __future__ import annotations

from .depth import DEPTH_DATASET_SETTINGS, aggregate_depth_metrics, depth_metrics
from .pose import pose_metrics
from .segmentation import mask_metrics
from .sintel_io import SINTEL_TAG, read_cam, read_dpt, write_cam, write_dpt

__all__ = [
    "pose_metrics", "depth_metrics", "aggregate_depth_metrics", "DEPTH_DATASET_SETTINGS",
    "mask_metrics", "read_dpt", "write_dpt", "read_cam", "write_cam", "SINTEL_TAG",
]  # fmt: skip
