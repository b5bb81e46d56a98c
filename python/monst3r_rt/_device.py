"""Array interop for the CUDA entry points of ``_core``: numpy / torch / CuPy detection and the
raw device pointer + stream that the kernels take (pybind11 has no DLPack caster)."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_cuda_array(x: Any) -> bool:
    """True for a torch CUDA tensor or any object exposing ``__cuda_array_interface__`` (CuPy)."""
    if hasattr(x, "__cuda_array_interface__"):
        return True
    return type(x).__module__.startswith("torch") and getattr(x, "is_cuda", False)


def device_pointer(x: Any, name: str, shape: tuple[int, ...]) -> int:
    """Raw device pointer of a contiguous float32 CUDA array ``x`` of the given shape.

    Raises ValueError naming ``name`` when dtype, shape or layout are wrong.
    """
    if hasattr(x, "__cuda_array_interface__") and not type(x).__module__.startswith("torch"):
        iface = x.__cuda_array_interface__
        if iface["typestr"] != "<f4":
            raise ValueError(f"{name} must be float32, got typestr {iface['typestr']}")
        if tuple(iface["shape"]) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(iface['shape'])}")
        if iface.get("strides") is not None and not x.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        return int(iface["data"][0])
    import torch

    if x.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return int(x.data_ptr())


def current_stream(x: Any) -> int:
    """The cudaStream_t handle that work on ``x`` should be queued on (torch or CuPy current)."""
    if type(x).__module__.startswith("torch"):
        import torch

        return int(torch.cuda.current_stream(x.device).cuda_stream)
    import cupy

    return int(cupy.cuda.get_current_stream().ptr)


def empty_like_shape(x: Any, shape: tuple[int, ...]) -> Any:
    """A new float32 array of ``shape`` on the same device and library as ``x``."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch.empty(shape, dtype=torch.float32, device=x.device)
    import cupy

    return cupy.empty(shape, dtype=np.float32)
