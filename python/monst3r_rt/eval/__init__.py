"""Evaluation of the paper's protocol (spec §6): metrics in NumPy (camera poses: ATE / RPE as
``evo`` computes them; per-sequence video depth; DAVIS mask J&F), Sintel's binary ground-truth
files, dataset readers (:mod:`.datasets`), scoring of output folders (:mod:`.score`, this
package's layout and the official demo.py's) and the ``monst3r-rt eval`` driver
(:mod:`.runner`)."""

from __future__ import annotations

from .datasets import (
    DATASETS,
    Bonn,
    Dataset,
    DatasetError,
    Davis,
    KittiDepth,
    SequenceData,
    Sintel,
    TUMDynamics,
    associate,
    get_dataset,
)
from .depth import DEPTH_DATASET_SETTINGS, aggregate_depth_metrics, depth_metrics
from .pose import pose_metrics
from .runner import evaluate, make_stream_factory, run_sequence
from .score import (
    PAPER,
    Prediction,
    aggregate,
    markdown_table,
    read_prediction,
    score_sequence,
    write_results,
)
from .segmentation import mask_metrics
from .sintel_io import SINTEL_TAG, read_cam, read_dpt, write_cam, write_dpt

__all__ = [
    "pose_metrics", "depth_metrics", "aggregate_depth_metrics", "DEPTH_DATASET_SETTINGS",
    "mask_metrics", "read_dpt", "write_dpt", "read_cam", "write_cam", "SINTEL_TAG",
    "DATASETS", "Dataset", "DatasetError", "SequenceData", "Sintel", "TUMDynamics", "Bonn",
    "KittiDepth", "Davis", "associate", "get_dataset", "Prediction", "read_prediction",
    "score_sequence", "aggregate", "markdown_table", "write_results", "PAPER", "evaluate",
    "run_sequence", "make_stream_factory",
]  # fmt: skip
