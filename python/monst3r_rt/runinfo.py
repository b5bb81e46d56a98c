"""What a run records about itself in ``run.json`` (offline :class:`~monst3r_rt.Pipeline` and
streamed :class:`~monst3r_rt.Stream` folders alike): the input, the weights and their sha256,
the package and library versions."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from typing import Any

import numpy as np

from ._version import __version__

__all__ = ["describe_input", "sha256_of_files", "versions", "weights_fingerprint", "weights_used"]


def sha256_of_files(*paths: str | os.PathLike[str]) -> str:
    """sha256 hex digest of the files' bytes one after the other (missing files are skipped),
    read in 1 MiB blocks."""
    h = hashlib.sha256()
    for path in paths:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """sha256 hex digest of a file; cached per (path, size, mtime, inode), so a file is hashed
    once per process unless it changes."""
    return sha256_of_files(path)


def weights_fingerprint(source: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a local weights file (``.pth`` / ``.safetensors``, or a folder's
    ``model.safetensors``); the repo id itself for a Hub id.

    A file is read once per process: the digest is cached by real path, size, modification
    time and inode (a file rewritten in place is hashed again)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        source = os.path.join(source, "model.safetensors")
    if not os.path.isfile(source):
        return source
    path = os.path.realpath(source)
    st = os.stat(path)
    return f"sha256:{_sha256(path, st.st_size, st.st_mtime_ns, st.st_ino)}"


def weights_used(
    source: str | os.PathLike[str] | None, backend: Any = None
) -> tuple[str | None, str | None]:
    """``(weights, weights_hash)`` as ``run.json`` records them.

    Args:
        source: the weights the run was asked for (path or Hub id), or None when unknown (a
            caller's own :class:`~monst3r_rt.Backend` instance).
        backend: the backend that ran; an exported engine (a ``manifest`` attribute) answers
            with its own record of the weights it was exported from.

    Returns:
        the weights and :func:`weights_fingerprint` of them; ``(None, None)`` for ``source=None``
        and a backend without a manifest.
    """
    manifest = getattr(backend, "manifest", None)
    if manifest is not None:
        return manifest.weights, manifest.weights_hash
    if source is None:
        return None, None
    return os.fspath(source), weights_fingerprint(source)


def describe_input(source: Any) -> str | None:
    """``run.json``'s ``input``: the source as text (a path, a camera index, a URL, a list of
    files), ``"array"`` for frames given as an array, None for no source."""
    if source is None:
        return None
    if isinstance(source, np.ndarray):
        return "array"
    return os.fspath(source) if isinstance(source, os.PathLike) else str(source)


def versions() -> dict[str, str]:
    """``{"monst3r_rt", "python", "numpy", "opencv"[, "torch"]}`` version strings (torch only
    when it is installed)."""
    import cv2

    out = {"monst3r_rt": __version__, "python": platform.python_version(),
           "numpy": np.__version__, "opencv": cv2.__version__}  # fmt: skip
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:
        pass
    return out
