"""A fake DLPack producer: CUDA (or other) memory that does not exist, for the boundary's checks.

The checks of ``_core``'s CUDA entry points read only the DLTensor header (device, dtype, shape,
strides), never the data, so they run on machines without a GPU with these objects.
"""

from __future__ import annotations

import ctypes
import itertools


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]  # fmt: skip


_CAPSULE_NAME = ctypes.c_char_p(b"dltensor")  # the capsule keeps this pointer: module lifetime
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_CODES = {"float32": (2, 32), "float64": (2, 64), "int64": (0, 64), "float16": (2, 16)}
_ADDRESSES = itertools.count(0x1000, 0x1000)  # one fake address per array: aliasing is visible


class FakeCudaArray:
    """A DLPack producer for CUDA memory that does not exist (a distinct fake data pointer per
    object, never read; the same object passed twice is one array passed twice).

    Records the ``stream`` each ``__dlpack__`` call was given; its capsule has no destructor
    (nothing to free) and points into this object, which the consumer keeps alive.
    """

    def __init__(self, shape, dtype="float32", device=0, strides=None, device_type=2):
        self.shape = tuple(shape)
        self.streams: list = []
        n = len(self.shape)
        self._shape = (ctypes.c_int64 * max(n, 1))(*self.shape)
        self._strides = None if strides is None else (ctypes.c_int64 * max(n, 1))(*strides)
        self._managed = _DLManagedTensor()
        t = self._managed.dl_tensor
        t.data, t.byte_offset = next(_ADDRESSES), 0
        t.device = _DLDevice(device_type, device)
        t.ndim = n
        t.dtype = _DLDataType(*_CODES[dtype], 1)
        t.shape = ctypes.cast(self._shape, ctypes.POINTER(ctypes.c_int64))
        if self._strides is not None:
            t.strides = ctypes.cast(self._strides, ctypes.POINTER(ctypes.c_int64))

    def __dlpack_device__(self):
        d = self._managed.dl_tensor.device
        return (d.device_type, d.device_id)

    def __dlpack__(self, stream=None):
        self.streams.append(stream)
        return _capsule_new(ctypes.addressof(self._managed), _CAPSULE_NAME, None)


def cuda(*shape: int, dtype: str = "float32", **kw) -> FakeCudaArray:
    """A fake array of ``shape`` on cuda:0 (``device=``, ``strides=``, ``device_type=``)."""
    return FakeCudaArray(shape, dtype, **kw)
