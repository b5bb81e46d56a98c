"""Optimisers over the official parameterisation (NumPy; the energy comes from the kernels)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np  # noqa: F401 - documents the array type of Params

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
    # numpy arrays or torch tensors (log_depth on the GPU): only operators common to both
    p = {k: v.clone() if hasattr(v, "clone") else v.copy() for k, v in params.items()}
    m = {k: v * 0 for k, v in p.items()}
    v2 = {k: v * 0 for k, v in p.items()}
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
            denom = v2[k] ** 0.5 / bc2**0.5 + eps
            p[k] -= (lr / bc1) * m[k] / denom
    return p, history
