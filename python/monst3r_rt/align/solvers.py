"""Optimisers over the official parameterisation (the energy and the Adam step come from the
``_core`` kernels)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _core

Params = dict[str, np.ndarray]
Objective = Callable[[Params, int], tuple[float, Params]]


def adam_step(
    param: Any,
    exp_avg: Any,
    exp_avg_sq: Any,
    grad: Any,
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.9),
    eps: float = 1e-8,
) -> None:
    """One ``torch.optim.Adam`` step (no weight decay) in place, fused in one pass (``_core``).

    Args:
        param, exp_avg, exp_avg_sq: C-contiguous float32 or float64 arrays of one shape, updated
            in place: numpy arrays (CPU kernel) or torch tensors (CUDA kernel on CUDA tensors).
        grad: the gradient, same shape and dtype.
        step: 1-based step count (bias corrections ``1 − β^step``).
        lr: learning rate of this step.

    Raises:
        ValueError naming the array whose dtype, shape or layout is wrong.
    """
    if type(param).__module__.startswith("torch"):
        tensors = (param, exp_avg, exp_avg_sq, grad)
        if not param.is_cuda:  # CPU tensors: the numpy kernel on shared memory
            param, exp_avg, exp_avg_sq, grad = (t.numpy() for t in tensors)
        else:
            _adam_step_cuda(tensors, step, lr, betas, eps)
            return
    _core.adam_step(param, exp_avg, exp_avg_sq, grad, step, lr, betas[0], betas[1], eps)


def _adam_step_cuda(tensors: tuple, step: int, lr: float, betas: tuple, eps: float) -> None:
    """The CUDA twin on CUDA tensors (flattened views; ``_core`` checks dtype, device, length)."""
    from .._device import on_device

    with on_device(tensors[0]) as stream:
        flat = [t.reshape(-1) if t.is_contiguous() else t for t in tensors]
        _core.adam_step_cuda(*flat, step, lr, *betas, eps, stream=stream)


def _copy(x: Any, zero: bool = False) -> Any:
    """A C-contiguous copy of ``x`` (numpy array or torch tensor), or zeros like it."""
    if type(x).__module__.startswith("torch"):
        import torch

        out = x.clone(memory_format=torch.contiguous_format)
        return out.zero_() if zero else out
    return np.zeros_like(x, order="C") if zero else np.array(x, order="C")


def adam(
    objective: Objective,
    params: Params,
    niter: int,
    lr_at: Callable[[int], float],
    betas: tuple[float, float] = (0.9, 0.9),
    eps: float = 1e-8,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[Params, list[float]]:
    """Adam exactly as ``torch.optim.Adam`` (bias-corrected, no weight decay), official betas.

    Every parameter array takes one fused step per iteration (:func:`adam_step`).

    Args:
        objective: ``(params, iteration) -> (energy, grads)``; the gradients have the dtype of
            the parameters (numpy arrays; ``log_depth`` may be a torch CUDA tensor).
        params: initial parameters (not modified).
        niter: iterations.
        lr_at: learning rate of each iteration.
        callback: called with ``(iteration, energy)`` after each evaluation.

    Returns:
        Final parameters and the energy of every iteration (evaluated before its step).
    """
    p = {k: _copy(v) for k, v in params.items()}
    m = {k: _copy(v, zero=True) for k, v in p.items()}
    v2 = {k: _copy(v, zero=True) for k, v in p.items()}
    history: list[float] = []
    for it in range(niter):
        energy, grads = objective(p, it)
        history.append(energy)
        if callback is not None:
            callback(it, energy)
        lr = lr_at(it)
        for k, g in grads.items():
            if isinstance(g, np.ndarray):
                g = np.ascontiguousarray(g, dtype=p[k].dtype)
            adam_step(p[k], m[k], v2[k], g, it + 1, lr, betas, eps)
    return p, history
