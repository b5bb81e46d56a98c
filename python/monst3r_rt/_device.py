"""Array interop for the CUDA entry points of ``_core``.

The entry points take the arrays themselves (any DLPack producer: torch tensors, CuPy arrays)
and check device, dtype, shape and layout in C++ (``csrc/include/monst3r/cuda_args.h``); this
module only finds the device and stream to run on, allocates outputs next to an input and copies
small host parameters there, with the input's library: torch or CuPy (another producer is a
TypeError saying so). Calling a CUDA entry point::

    with on_device(depth) as stream:
        out = empty_like_shape(depth, (n, h, w, 3))
        _core.depth_to_points_cuda(depth, focal, pp, out, stream=stream)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from . import _core

_KDLCUDA = 2  # DLPack device type of CUDA memory


def is_cuda_array(x: Any) -> bool:
    """True for a DLPack array in CUDA device memory (torch CUDA tensor, CuPy array, ...)."""
    device = getattr(x, "__dlpack_device__", None)
    if device is None:
        return False
    try:
        return int(device()[0]) == _KDLCUDA
    except Exception:  # noqa: BLE001 - a producer that cannot say is not a CUDA array
        return False


def require_cuda_kernels(what: str) -> None:
    """RuntimeError when ``_core`` has no CUDA kernels; ``what`` names the CUDA input."""
    if not _core.has_cuda:
        raise RuntimeError(
            f"{what} is a CUDA array but monst3r_rt._core was built without CUDA kernels: "
            f"{_core.build_info()['cuda_reason']}"
        )


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _library(x: Any) -> str:
    """``"torch"`` or ``"cupy"``: the library that allocates next to the CUDA array ``x``, or a
    TypeError for another DLPack producer (JAX, ...), which the wrappers cannot allocate with."""
    module = type(x).__module__.split(".")[0]
    if module in ("torch", "cupy"):
        return module
    raise TypeError(
        f"a CUDA array of type {type(x).__module__}.{type(x).__qualname__}: monst3r_rt allocates "
        "its outputs with torch or CuPy only; pass a torch CUDA tensor or a CuPy array (e.g. "
        "torch.from_dlpack(x))"
    )


@contextmanager
def on_device(x: Any) -> Iterator[int]:
    """Make the GPU of the CUDA array ``x`` current in its library and yield the cudaStream_t
    (an int, 0 = legacy default) current there: torch's or CuPy's current stream, 0 for other
    producers. torch refuses to export (``__dlpack__``) a tensor of another device than the
    current one, so entry points are called inside this context."""
    if _is_torch(x):
        import torch

        with torch.cuda.device(x.device):
            yield int(torch.cuda.current_stream(x.device).cuda_stream)
    elif type(x).__module__.startswith("cupy"):
        import cupy

        with cupy.cuda.Device(x.device.id):
            yield int(cupy.cuda.get_current_stream().ptr)
    else:
        yield 0


def empty_like_shape(x: Any, shape: tuple[int, ...], dtype: Any = np.float32) -> Any:
    """A new array of ``shape`` and ``dtype`` (a NumPy dtype) on the device and library of ``x``
    (torch or CuPy; TypeError for another library)."""
    if _library(x) == "torch":
        import torch

        return torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name), device=x.device)
    import cupy

    with cupy.cuda.Device(x.device.id):
        return cupy.empty(shape, dtype=dtype)


def like(ref: Any, a: np.ndarray) -> Any:
    """The host array ``a`` copied to the device and library of ``ref`` (torch or CuPy;
    TypeError for another library)."""
    a = np.ascontiguousarray(a)
    if _library(ref) == "torch":
        import torch

        return torch.from_numpy(a).to(ref.device)
    import cupy

    with cupy.cuda.Device(ref.device.id):
        return cupy.asarray(a)


def per_view(ref: Any, x: Any, shape: tuple[int, ...], name: str) -> Any:
    """A small per-view parameter (focal, principal point, pose) for a CUDA entry point.

    CUDA arrays are passed through unchanged (the entry point checks their device, dtype and
    shape). Host values (Python scalars, NumPy arrays, CPU tensors) are broadcast to ``shape``,
    converted to float32 and copied next to ``ref``: a few bytes per view.
    """
    if is_cuda_array(x):
        return x
    return like(ref, host_per_view(x, shape, name))


def host_per_view(x: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The host value ``x`` (scalar, NumPy array, CPU tensor) as a float32 array broadcast to
    ``shape``, or a ValueError naming ``name``: what :func:`per_view` uploads."""
    arr = np.asarray(x, dtype=np.float32)
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(f"{name} must broadcast to {shape}, got {arr.shape}") from None
