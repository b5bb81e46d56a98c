"""Atomic writes: a temporary file beside the target, then a rename, so nothing the user has is
left half-written or lost."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator

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


def inputs_inside(
    folders: Iterable[str | os.PathLike[str]], inputs: Iterable[str | os.PathLike[str]]
) -> dict[str, str]:
    """``{input: folder}`` for every existing input that is one of ``folders`` or lies inside
    one (compared as real paths, so links and ``..`` do not hide it): replacing that folder
    would delete the input. Inputs that are not paths (a camera index, a URL) never match."""
    owners = {os.path.realpath(os.fspath(f)): os.fspath(f) for f in folders}
    found: dict[str, str] = {}
    for inp in inputs:
        if not isinstance(inp, (str, os.PathLike)) or not os.path.exists(inp):
            continue
        p = os.path.realpath(os.fspath(inp))
        while True:
            if p in owners:
                found[os.fspath(inp)] = owners[p]
                break
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
    return found


def check_output_dir(
    path: str | os.PathLike[str],
    overwrite: bool,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> str:
    """``path`` as a string, after refusing a folder that is or contains one of ``inputs``
    (replacing it would delete the input, even with ``overwrite``), then an existing non-empty
    folder (or a file) unless ``overwrite``. Raises FileExistsError naming it."""
    path = os.fspath(path)
    inside = inputs_inside([path], inputs) if os.path.isdir(path) else {}
    if inside:
        inp = next(iter(inside))
        raise FileExistsError(f"output folder {path} is or contains the input {inp}; writing "
                              "there would delete it: choose another output folder")  # fmt: skip
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path} exists and is not a folder")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True (--overwrite)")
    return path


def partial_dir(path: str | os.PathLike[str]) -> str:
    """A new empty temporary folder beside ``path`` (``.NAME.partial-XXXX``, so that a crashed
    run's leftovers are recognisable), for :func:`commit_dir` to rename into place."""
    path = os.fspath(path).rstrip(os.sep)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)


def commit_dir(tmp: str, path: str | os.PathLike[str]) -> None:
    """Rename the complete folder ``tmp`` to ``path``; an existing ``path`` is moved aside first
    and deleted only once the new one is in place (put back if the rename fails). The caller
    checked ``path`` (:func:`check_output_dir`)."""
    path = os.fspath(path).rstrip(os.sep)
    parent = os.path.dirname(os.path.abspath(path))
    backup = None
    if os.path.exists(path):
        backup = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
        os.replace(path, os.path.join(backup, "old"))
    try:
        os.replace(tmp, path)
    except BaseException:
        if backup is not None:  # put the user's folder back
            os.replace(os.path.join(backup, "old"), path)
            os.rmdir(backup)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (an existing
    folder is moved aside first and deleted only once the new one is in place); on any error,
    or an interrupt, the temporary folder is removed and ``path`` is untouched."""
    path = check_output_dir(path, overwrite).rstrip(os.sep)
    tmp = partial_dir(path)
    try:
        yield tmp
        commit_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
