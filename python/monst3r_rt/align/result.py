"""The output of global alignment, with a lossless ``.npz`` round trip."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._atomic import savez_atomic

_ARRAYS = ("poses", "depths", "focals", "intrinsics", "pts3d", "conf", "energy")


@dataclass
class AlignResult:
    """Per-frame geometry after global alignment (numpy, whatever device ran it).

    Attributes:
        poses: (N,4,4) float32 camera-to-world (OpenCV axes: x right, y down, z forward).
        depths: (N,H,W) float32 z-depth, in the scene's (arbitrary, consistent) unit.
        focals: (N,) float32 focal lengths in pixels.
        intrinsics: (N,3,3) float32 ``[[f,0,W/2],[0,f,H/2],[0,0,1]]``.
        pts3d: (N,H,W,3) float32 points in the world frame.
        conf: (N,H,W) float32, per frame the max raw confidence over its edges (as official).
        dynamic_masks: (N,H,W) bool, True = moving, or None.
        energy: (iterations,) float64 energy before each optimiser step.
        timings: seconds per stage.
        diagnostics: counts and notes (e.g. ``invalid_pixels`` dropped from the inputs).
    """

    poses: np.ndarray
    depths: np.ndarray
    focals: np.ndarray
    intrinsics: np.ndarray
    pts3d: np.ndarray
    conf: np.ndarray
    dynamic_masks: np.ndarray | None = None
    energy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    timings: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.poses)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an ``.npz`` atomically (temporary file beside ``path``, then rename)."""
        path = os.fspath(path)
        arrays = {k: np.asarray(getattr(self, k)) for k in _ARRAYS}
        if self.dynamic_masks is not None:
            arrays["dynamic_masks"] = np.asarray(self.dynamic_masks, dtype=bool)
        meta = {"timings": self.timings, "diagnostics": self.diagnostics}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        savez_atomic(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AlignResult:
        """Read a file written by :meth:`save`; errors name the file."""
        try:
            with np.load(os.fspath(path), allow_pickle=False) as data:
                missing = [k for k in (*_ARRAYS, "meta") if k not in data.files]
                if missing:
                    raise ValueError(f"{path}: not an AlignResult file, missing {missing}")
                meta = json.loads(bytes(data["meta"]).decode())
                masks = data["dynamic_masks"] if "dynamic_masks" in data.files else None
                return cls(**{k: data[k] for k in _ARRAYS}, dynamic_masks=masks, **meta)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: cannot read alignment result: {exc}") from exc
