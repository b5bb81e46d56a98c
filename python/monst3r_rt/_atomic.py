"""Atomic writes: a temporary file beside the target, then a rename, so nothing the user has is
left half-written or lost."""

from __future__ import annotations

import os
import tempfile

import numpy as np


def savez_atomic(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` into ``path`` atomically (no pickles; the folder must exist)."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
