"""Alignment settings; the defaults are the official demo's (spec §4.1, §4.5, §4.7)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class AlignConfig:
    """Settings of :func:`monst3r_rt.global_align`.

    Attributes:
        niter: optimiser iterations (official: 300).
        lr: initial learning rate (0.01); the linear schedule ends at ``lr_min`` (0.001).
        schedule: ``"linear"`` (official demo and eval) or ``"cosine"``.
        solver: ``"adam"`` (the official optimiser) or ``"lm"`` (second order).
        shared_focal: one focal for all frames (official demo: True).
        temporal_smoothing_weight: weight of the camera smoothness term (0.01).
        translation_weight: weight of its translation part (1.0).
        flow_loss_weight: weight of the flow term (0.01); active only when flows are given.
        flow_loss_start: fraction of ``niter`` after which the flow term starts (0.1).
        flow_loss_threshold: the iteration's flow term is zeroed above this value (25).
        pixel_loss_threshold: flow entries with a loss at or above this are dropped (50).
        init: ``"mst"`` (maximum-confidence spanning tree, official).
        min_conf_thr: confidence threshold of the PnP initialisation (3).
        window: ``(size, overlap)`` for windowed optimisation of long videos, or None.
        lm_iters: iteration cap of ``solver="lm"`` (``niter`` counts Adam's iterations).
        lm_ftol: ``solver="lm"`` stops once an iteration lowers the energy by less than this
            fraction (0.1 %: by then it is below Adam's 300-iteration energy on the benchmark).
    """

    niter: int = 300
    lr: float = 0.01
    lr_min: float = 1e-3
    schedule: str = "linear"
    solver: str = "adam"
    shared_focal: bool = True
    temporal_smoothing_weight: float = 0.01
    translation_weight: float = 1.0
    flow_loss_weight: float = 0.01
    flow_loss_start: float = 0.1
    flow_loss_threshold: float = 25.0
    pixel_loss_threshold: float = 50.0
    init: str = "mst"
    min_conf_thr: float = 3.0
    window: tuple[int, int] | None = None
    lm_iters: int = 30
    lm_ftol: float = 1e-3

    def __post_init__(self) -> None:
        if self.niter < 0:
            raise ValueError(f"niter must be ≥ 0, got {self.niter}")
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if self.solver not in ("adam", "lm"):
            raise ValueError(f"solver must be 'adam' or 'lm', got {self.solver!r}")
        if self.init != "mst":
            raise ValueError(f"init must be 'mst', got {self.init!r}")
        if self.window is not None:
            size, overlap = self.window
            if not 0 <= overlap < size:
                raise ValueError(
                    f"window=(size, overlap) needs 0 ≤ overlap < size, got {self.window}"
                )

    def lr_at(self, iteration: int) -> float:
        """Learning rate at ``iteration`` (0-based), official formulas."""
        import math

        t = iteration / max(self.niter, 1)
        if self.schedule == "linear":
            return self.lr + (self.lr_min - self.lr) * t
        return self.lr_min + (self.lr - self.lr_min) * 0.5 * (1 + math.cos(math.pi * t))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
