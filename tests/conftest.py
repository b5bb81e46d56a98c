"""Shared fixtures and skip conditions. Tests never need a GPU, TensorRT or the network."""

from __future__ import annotations

import numpy as np
import pytest


def cuda_arrays_available() -> tuple[bool, str]:
    """Whether CUDA twins can be exercised here, and why not."""
    from monst3r_rt import _core

    if not _core.has_cuda:
        return False, "monst3r_rt._core built without CUDA kernels"
    if _core.cuda_device_count() == 0:
        return False, f"no usable GPU ({_core.cuda_status()['reason']})"
    try:
        import torch

        if torch.cuda.is_available():
            return True, ""
    except ImportError:
        pass
    try:
        import cupy  # noqa: F401

        return True, ""
    except ImportError:
        return False, "a GPU is present but neither torch with CUDA nor cupy is installed"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
