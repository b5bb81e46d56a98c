"""Batch inputs: video files, frame folders, globs and text manifests → a list of
:class:`BatchInput` with unique, stable output names."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

MANIFEST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = ("*", "?", "[")


@dataclass(frozen=True)
class BatchInput:
    """One video of a batch.

    Attributes:
        path: absolute path of the video file or frame folder.
        name: its output folder's name under ``OUT_ROOT`` (unique within the batch).
    """

    path: str
    name: str


def _is_glob(text: str) -> bool:
    return any(c in text for c in _GLOB_CHARS)


def _expand_one(item: str, base: str | None, origin: str, seen_manifests: set[str]) -> list[str]:
    text = os.path.expanduser(item.strip())
    if base is not None and not os.path.isabs(text):
        text = os.path.join(base, text)
    if _is_glob(text) and not os.path.exists(text):
        hits = sorted(glob.glob(text))
        if not hits:
            raise FileNotFoundError(f"{origin}: the pattern {item!r} matches nothing")
        return [os.path.abspath(h) for h in hits]
    if not os.path.exists(text):
        raise FileNotFoundError(f"{origin}: no such video, frame folder or manifest: {item!r}")
    path = os.path.abspath(text)
    if os.path.isfile(path) and path.lower().endswith(MANIFEST_SUFFIXES):
        if path in seen_manifests:
            raise ValueError(f"{path}: manifest includes itself")
        seen_manifests.add(path)
        out: list[str] = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    out += _expand_one(line, os.path.dirname(path), f"{path}:{lineno}",
                                       seen_manifests)  # fmt: skip
        return out
    return [path]


def _stem(path: str) -> str:
    base = os.path.basename(path.rstrip(os.sep))
    stem = base if os.path.isdir(path) else os.path.splitext(base)[0]
    return (stem.lstrip(".") or "video").replace(os.sep, "_")


def _short_hash(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:8]


def expand_inputs(items: Iterable[str | os.PathLike[str]]) -> list[BatchInput]:
    """Expand the command line's INPUTS into the batch's videos, checking each exists.

    Args:
        items: video files, frame folders, glob patterns (``clips/*.mp4``) or text manifests
            (``.txt`` / ``.lst`` / ``.list``: one input per line, relative to the manifest's
            folder; blank lines and ``#`` comments ignored; lines may be globs or manifests).

    Returns:
        the videos in the given order, duplicates (same absolute path) dropped. ``name`` is the
        file's stem (a folder's name); inputs whose stems collide all get ``-`` and the first 8
        hex digits of the sha256 of their absolute path appended, so a name depends only on the
        path and on which other inputs share its stem.

    Raises:
        FileNotFoundError naming the missing input (or the pattern that matches nothing) and the
        manifest line it came from; ValueError for an empty list.
    """
    paths: list[str] = []
    seen: set[str] = set()
    manifests: set[str] = set()
    for item in items:
        for p in _expand_one(os.fspath(item), None, "input", manifests):
            if p not in seen:
                seen.add(p)
                paths.append(p)
    if not paths:
        raise ValueError("no input videos given")
    stems = [_stem(p) for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        key = s.lower()  # case-insensitive file systems
        counts[key] = counts.get(key, 0) + 1
    return [
        BatchInput(p, s if counts[s.lower()] == 1 else f"{s}-{_short_hash(p)}")
        for p, s in zip(paths, stems, strict=True)
    ]
