"""monst3r_rt: MonST3R 4D reconstruction from video, accelerated with C++/CUDA kernels and TensorRT.

Heavy dependencies (torch, onnxruntime, tensorrt, cupy) are optional and imported only by the
functions that need them, so ``import monst3r_rt`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

# public name -> module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    # frames → pairs → network → inference
    "Frames": "frames",
    "FrameError": "frames",
    "load_frames": "frames",
    "make_pairs": "pairs",
    "PointmapNet": "network",
    "load_model": "network",
    "save_checkpoint": "network",
    "CheckpointError": "network",
    "infer_pairs": "inference",
    "PairwisePredictions": "inference",
    "global_align": "align",
    "AlignConfig": "align",
    "AlignResult": "align",
    # motion: flow → ego-flow → dynamic masks
    "compute_flow": "flow",
    "ego_flow": "egoflow",
    "dynamic_masks": "masks",
    # the main job and the streaming mode
    "Stream": "stream",
    "StreamConfig": "stream",
    "FrameResult": "stream",
    "stream_video": "stream",
    "Backend": "deploy.backends",
    "Pipeline": "pipeline",
    "Reconstruction": "reconstruction",
    # kernels
    "depth_to_points": "geometry",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'monst3r_rt' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
