"""Optimisers over the official parameterisation (NumPy; the energy comes from the kernels)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Params = dict[str, np.ndarray]
Objective = Callable[[Params, int], tuple[float, Params]]


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

    Args:
        objective: ``(params, iteration) -> (energy, grads)``.
        params: initial parameters (not modified).
        niter: iterations.
        lr_at: learning rate of each iteration.
        callback: called with ``(iteration, energy)`` after each evaluation.

    Returns:
        Final parameters and the energy of every iteration (evaluated before its step).
    """
    b1, b2 = betas
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    history: list[float] = []
    for it in range(niter):
        energy, grads = objective(p, it)
        history.append(energy)
        if callback is not None:
            callback(it, energy)
        lr = lr_at(it)
        bc1 = 1 - b1 ** (it + 1)
        bc2 = 1 - b2 ** (it + 1)
        for k, g in grads.items():
            m[k] *= b1
            m[k] += (1 - b1) * g
            v2[k] *= b2
            v2[k] += (1 - b2) * g * g
            denom = np.sqrt(v2[k]) / np.sqrt(bc2) + eps
            p[k] -= (lr / bc1) * m[k] / denom
    return p, history
