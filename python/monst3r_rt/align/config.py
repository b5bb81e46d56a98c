"""Alignment settings; the defaults are the official demo's (spec §4.1, §4.5, §4.7).

:data:`SOLVERS` says what each solver supports; :meth:`AlignConfig.check` validates a whole
request against it (and against what this machine can run) before any work, and resolves
``device="auto"``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SolverSupport:
    """What a solver can do.

    Attributes:
        flow: the flow term (``flows=`` / ``Pipeline(flow=...)``).
        windows: windowed alignment (``AlignConfig.window``).
        cuda: a CUDA path (``device="cuda"``).
        needs: optional modules it imports, with the pip extra that installs them.
    """

    flow: bool
    windows: bool
    cuda: bool
    needs: tuple[tuple[str, str], ...] = ()


# One row per solver: when a solver gains a capability, flip it here (tests follow the table).
SOLVERS: dict[str, SolverSupport] = {
    "adam": SolverSupport(flow=True, windows=True, cuda=True),
    "lm": SolverSupport(flow=True, windows=True, cuda=True, needs=(("scipy", "solvers"),)),
}
DEVICES = ("auto", "cpu", "cuda")


def cuda_unavailable(asked: str = "device='cuda'") -> str | None:
    """Why the alignment's CUDA kernels cannot run here (``_core`` built without CUDA, no torch
    with CUDA, no usable GPU), or None when they can; the reason starts with ``asked`` (the
    request as the user wrote it)."""
    from .cuda import require_cuda

    try:
        require_cuda(asked)
    except RuntimeError as exc:
        return str(exc)
    return None


def _resolve_device(device: str, caps: SolverSupport, cli: bool, no_path: str, adam: str) -> str:
    """``device`` checked against the solver's CUDA path and this machine; ``auto`` → what runs."""
    other = phrase(cli, "device='cpu' or 'auto'", "--device cpu or --device auto")
    if device == "cuda" and not caps.cuda:
        raise ValueError(f"{no_path}: use {other}, or {adam}")
    asked = phrase(cli, "device='cuda'", "--device cuda")
    reason = cuda_unavailable(asked) if device != "cpu" and caps.cuda else None
    if device == "cuda" and reason is not None:
        raise RuntimeError(f"{reason}; use {other}")
    if device == "auto":
        return "cuda" if caps.cuda and reason is None else "cpu"
    return device


def phrase(cli: bool, api: str, flag: str) -> str:
    """An option as the user wrote it: the Python argument ``api`` or the CLI ``flag``."""
    return flag if cli else api


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

    def check(self, device: str = "cpu", flow: bool = False, cli: bool = False) -> str:
        """Validate this configuration with the rest of a request, before any work.

        Args:
            device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
            flow: whether the flow term is requested (flows given).
            cli: phrase the fixes as command-line options instead of Python arguments.

        Returns:
            the device the alignment will run on: ``"auto"`` resolves to ``"cuda"`` only when the
            solver has a CUDA path and :func:`cuda_unavailable` finds nothing missing.

        Raises:
            ValueError: a combination the solver does not support (the message says what to
                change); RuntimeError / ImportError: something this machine lacks.
        """
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        caps = SOLVERS[self.solver]
        name = phrase(cli, f"solver={self.solver!r}", f"--solver {self.solver}")
        adam = phrase(cli, "solver='adam'", "--solver adam")
        if flow and not caps.flow:
            no_flow = phrase(cli, "flows=None (Pipeline(flow=None))", "--no-flow")
            raise ValueError(f"{name} does not support the flow term yet: use {no_flow} or {adam}")
        if self.window is not None and not caps.windows:
            # the command line has no window option: there, only the solver can change
            fix = phrase(cli, f"window=None or {adam}", adam)
            raise ValueError(f"{name} does not support windows yet: use {fix}")
        if self.window is not None and not self.shared_focal:
            raise ValueError(
                "windowed alignment needs shared_focal=True (one focal for the video); "
                "use shared_focal=True or window=None"
            )
        for module, extra in caps.needs:
            if importlib.util.find_spec(module) is None:
                raise ImportError(
                    f"{name} needs {module}: pip install 'monst3r-rt[{extra}]' (or use {adam})"
                )
        return _resolve_device(device, caps, cli, f"{name} has no CUDA path yet", adam)

    def lr_at(self, iteration: int) -> float:
        """Learning rate at ``iteration`` (0-based), official formulas."""
        import math

        t = iteration / max(self.niter, 1)
        if self.schedule == "linear":
            return self.lr + (self.lr_min - self.lr) * t
        return self.lr_min + (self.lr - self.lr_min) * 0.5 * (1 + math.cos(math.pi * t))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
