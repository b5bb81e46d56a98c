"""Settings of the streaming mode and what it returns per frame."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..align.config import AlignConfig
from ..align.incremental import default_config
from .motion import MASK_METHODS

__all__ = ["StreamConfig", "FrameResult", "REFINE_MODES", "KEEP"]

REFINE_MODES = ("thread", "sync", "off")
KEEP = ("all", "none")


@dataclass
class StreamConfig:
    """Settings of :class:`monst3r_rt.Stream` (defaults in brackets).

    Keyframes — a frame becomes the new keyframe when, after tracking it against the current one,
        keyframe_overlap: fewer than this fraction of the keyframe's confident pixels are seen
            in front of the frame's camera and inside its image [0.6], or
        keyframe_baseline: the camera moved more than this fraction of the keyframe's median
            depth [0.2], or
        keyframe_max_gap: this many frames passed since the keyframe [30].
        keyframe_links: pairs decoded for a new keyframe, with the 1..3 previous keyframes (its
            tracking pair is the first; the others reuse cached tokens) [2].

    Tracking —
        conf_threshold: raw confidence above which a pixel is used for tracking and counts for
            the overlap [1.5].
        track_stride: every k-th pixel (both axes) enters the tracking solve [2].
        track_iters: Gauss–Newton/IRLS iterations of the Sim(3) tracking [10].
        track_huber: Huber threshold on the depth-relative residual (0.05 = 5 % of the depth).
        track_axial_weight: weight of a residual's component along the keyframe pixel's viewing
            ray relative to the perpendicular one [0.01]: pointmap errors are mostly depth
            errors, which an isotropic residual turns into camera-centre errors (MASt3R-SLAM
            tracks on ray errors for the same reason).
        shared_focal: one focal for the stream, the running mean of the per-frame Weiszfeld
            estimates (True, as the offline job), or a focal per frame (False).

    Refinement (the global-alignment objective over the newest keyframes, off the critical
    path) —
        refine_objective: ``"rays"`` [default]: a dense Sim(3) pose graph over the keyframes
            with the tracking's residual (depth-relative, along-ray errors down-weighted;
            :mod:`monst3r_rt.stream.refine`); ``"alignment"``: the global alignment's objective
            (:class:`monst3r_rt.align.incremental.KeyframeAligner`, the offline engine), whose
            isotropic point distances turn depth errors into pose errors (measured worse).
        refine: ``"thread"`` (a worker thread) [default], ``"sync"`` (inside ``push``, for
            debugging and exact reproducibility studies) or ``"off"``.
        window: keyframes in the sliding window [8]; the oldest ``window_frozen`` [1] of them
            are frozen (they fix the gauge).
        refine_lag: a refinement started at keyframe k is applied at the latest when frame
            k + ``refine_lag`` is pushed (``push`` waits for it then; the next keyframe and
            ``close`` also wait): results never depend on thread timing [3].
        refine_pixels: the refinement runs on keyframe maps decimated by the largest power of
            two stride (≤ 16) that keeps at least this many pixels [4096].
        final_refine: ``close()`` solves once over all keyframes [True].
        align: ``refine_objective="alignment"``'s solver settings
            (:func:`monst3r_rt.align.incremental.default_config`: LM, 10 iterations, no
            camera-smoothness term).

    Dynamic masks —
        masks: ``"flow"`` (DIS flow t → t−k against the tracked ego-flow), ``"geometric"``
            (no flow: depth disagreement with the keyframe) or ``"none"`` [flow].
        mask_threshold: score above which a pixel is moving [0.5].
        mask_gap: k, the frame the flow goes back to (t−k; fewer at the stream's start): a few
            frames apart, object motion stands out from the flow's noise much better than
            between consecutive frames [3].
        flow_preset: DIS preset [``"fast"``].

    Memory —
        keep: ``"all"`` keeps every frame's per-pixel arrays in memory and ``close()`` returns
            them; ``"none"`` keeps nothing per-pixel beyond the keyframe window (needs an
            ``output`` folder: ``close()`` then returns a Reconstruction whose per-pixel arrays
            are read from the folder on demand) [all].
    """

    keyframe_overlap: float = 0.6
    keyframe_baseline: float = 0.2
    keyframe_max_gap: int = 30
    keyframe_links: int = 2
    conf_threshold: float = 1.5
    track_stride: int = 2
    track_iters: int = 10
    track_huber: float = 0.05
    track_axial_weight: float = 0.01
    shared_focal: bool = True
    refine_objective: str = "rays"
    refine: str = "thread"
    window: int = 8
    window_frozen: int = 1
    refine_lag: int = 3
    refine_pixels: int = 4096
    final_refine: bool = True
    align: AlignConfig = field(default_factory=default_config)
    masks: str = "flow"
    mask_threshold: float = 0.5
    mask_gap: int = 3
    flow_preset: str = "fast"
    keep: str = "all"

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        choices = {
            "refine": REFINE_MODES,
            "refine_objective": ("rays", "alignment"),
            "masks": MASK_METHODS,
            "keep": KEEP,
            "flow_preset": ("ultrafast", "fast", "medium"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"StreamConfig.{name} must be one of {list(allowed)}, "
                    f"got {getattr(self, name)!r}"
                )
        ranges = {
            "keyframe_overlap": (0.0, 1.0),
            "mask_threshold": (0.0, 1.0),
            "track_axial_weight": (1e-6, 1.0),
        }
        for name, (lo, hi) in ranges.items():
            if not lo <= getattr(self, name) <= hi:
                raise ValueError(f"StreamConfig.{name} must be in [{lo}, {hi}]")
        positive = (
            "keyframe_baseline",
            "keyframe_max_gap",
            "mask_gap",
            "track_stride",
            "track_iters",
            "track_huber",
            "window",
            "refine_pixels",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"StreamConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 1 <= self.keyframe_links <= 3:
            raise ValueError(f"StreamConfig.keyframe_links must be 1..3, got {self.keyframe_links}")
        if not 1 <= self.window_frozen < self.window:
            raise ValueError("StreamConfig.window_frozen must be ≥ 1 and < window")
        if self.refine_lag < 0:
            raise ValueError(f"StreamConfig.refine_lag must be ≥ 0, got {self.refine_lag}")
        if self.conf_threshold < 1:
            raise ValueError("StreamConfig.conf_threshold is a raw confidence (≥ 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FrameResult:
    """What :meth:`Stream.push` returns for frame t (causal: computed from frames 0..t).

    Attributes:
        index: t, the frame's position in the stream (0-based).
        pose: (4,4) float64 camera-to-world; world = the first frame's camera, in the units of
            its depth. Later refinement may move it; ``close()`` returns the refined poses.
        depth: (H,W) float32 z-depth at model resolution (NaN where the network's output was not
            finite).
        intrinsics: (3,3) float64 pinhole K in pixels of the model resolution.
        conf: (H,W) float32 raw network confidence (≥ 1; 1 where masked).
        dynamic_mask: (H,W) bool, True = moving.
        keyframe: whether the frame became a keyframe.
        timings: stage → seconds for this push (``"network"``: encoder and every decoder pass of
            this push; ``"track"``, ``"focal"``, ``"mask"``, ``"keyframe"``, ``"refine_wait"``,
            ``"output"``, ``"total"``).
        decodes: decoder passes run by this push.
    """

    index: int
    pose: np.ndarray
    depth: np.ndarray
    intrinsics: np.ndarray
    conf: np.ndarray
    dynamic_mask: np.ndarray
    keyframe: bool
    timings: dict[str, float]
    decodes: int = 1
