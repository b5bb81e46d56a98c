"""Pair graphs over a frame sequence (official ``dust3r/image_pairs.py::make_pairs`` semantics).

Supported graph strings (``W`` a window size, ``R`` a frame index):

=============================  ==========================================================
``complete``                   all ``(i, j)`` with ``j < i``, ordered by ``i`` then ``j``
``swin[-W][-noncyclic]``       unordered ``{i, i+k}`` for ``k = 1..W``
``swinstride[-W][-noncyclic]`` ``k in {1, 3, 5, ..., 2W-1}``
``swin2stride[-W][-noncyclic]`` ``k in {1, 4, 7, ..., 3W-2}``
``swinskip_start[-W][-noncyclic]`` ``k in {2, 3, ..., W+1}``
``logwin[-W][-noncyclic]``     ``{i, i +- 2^m}`` for ``m = 0..W-1``
``oneref[-R]``                 ``(R, j)`` for every ``j`` *including* ``j = R`` (MonST3R);
                               ``oneref-mid`` means ``R = n // 2`` (an extension)
=============================  ==========================================================

A missing ``W`` means 3, as in the official code. Cyclic variants wrap ``i + k`` modulo ``n``;
``-noncyclic`` drops out-of-range partners. As in the official code, a cyclic ``swin*`` window
that wraps onto the frame itself (``k % n == 0``) yields a self pair ``(i, i)``.

Order: the sliding-window and log-window graphs collect unordered ``(min, max)`` pairs in a Python
``set`` and emit them in the set's iteration order. We build the same set with the same insertion
sequence, so the order equals the official one on CPython (>= 3.8, whose int-tuple hashes are
deterministic). With ``symmetrize`` the reversed pairs are appended after all forward pairs, so
edge ``e`` and edge ``e + E/2`` are mirrors. Symmetrisation is skipped for ``oneref*`` and for
strings starting with ``swin-1`` (which, as officially, also matches ``swin-10`` etc.), unless
``n == 2`` or ``force_symmetrize``.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["make_pairs", "pairs_array", "DEFAULT_GRAPH"]

DEFAULT_GRAPH = "swinstride-5-noncyclic"

_SWIN_RE = re.compile(
    r"^(?P<kind>swin|swinstride|swin2stride|swinskip_start|logwin)"
    r"(?:-(?P<w>\d+))?(?P<nc>-noncyclic)?$"
)
_ONEREF_RE = re.compile(r"^oneref(?:-(?P<r>\d+|mid))?$")

# kind -> (start offset, stride)
_SWIN_OFFSETS = {
    "swin": (1, 1),
    "swinstride": (1, 2),
    "swin2stride": (1, 3),
    "swinskip_start": (2, 1),
}


def _unordered_to_list(pairs_set: set[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(int(i), int(j)) for i, j in pairs_set]


def make_pairs(
    n: int,
    graph: str = DEFAULT_GRAPH,
    symmetrize: bool = True,
    force_symmetrize: bool = False,
) -> list[tuple[int, int]]:
    """Return the ordered list of ``(i, j)`` frame-index pairs for ``n`` frames.

    Args:
        n: number of frames (>= 2).
        graph: scene-graph string, see the module docstring.
        symmetrize: append the reversed pairs (subject to the official exceptions).
        force_symmetrize: symmetrise even for ``oneref*`` / ``swin-1*``.

    Returns:
        list of ``(i, j)`` index tuples; ``i`` is view 1, ``j`` view 2.

    Raises:
        ValueError: on ``n < 2``, an unknown or malformed graph string, ``W < 1`` or an
        out-of-range reference index.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"make_pairs: n must be an int, got {type(n).__name__}")
    n = int(n)
    if n < 2:
        raise ValueError(f"make_pairs: need at least 2 frames, got n={n}")
    if not isinstance(graph, str):
        raise ValueError(f"make_pairs: graph must be a string, got {type(graph).__name__}")

    pairs: list[tuple[int, int]]
    m_swin = _SWIN_RE.match(graph)
    m_ref = _ONEREF_RE.match(graph)
    if graph == "complete":
        pairs = [(i, j) for i in range(n) for j in range(i)]
    elif m_swin is not None:
        kind = m_swin.group("kind")
        winsize = int(m_swin.group("w")) if m_swin.group("w") is not None else 3
        if winsize < 1:
            raise ValueError(f"make_pairs: window size must be >= 1 in {graph!r}")
        cyclic = m_swin.group("nc") is None
        seen: set[tuple[int, int]] = set()
        if kind == "logwin":
            offsets = [2**m for m in range(winsize)]
            for i in range(n):
                for j in [i - o for o in offsets] + [i + o for o in offsets]:
                    if cyclic:
                        j %= n
                    if j < 0 or j >= n or j == i:
                        continue
                    seen.add((i, j) if i < j else (j, i))
        else:
            start, stride = _SWIN_OFFSETS[kind]
            for i in range(n):
                for k in range(start, stride * winsize + start, stride):
                    j = i + k
                    if cyclic:
                        j %= n
                    if j >= n:
                        continue
                    seen.add((i, j) if i < j else (j, i))
        pairs = _unordered_to_list(seen)
    elif m_ref is not None:
        r = m_ref.group("r")
        ref = 0 if r is None else (n // 2 if r == "mid" else int(r))
        if not 0 <= ref < n:
            raise ValueError(
                f"make_pairs: reference index {ref} out of range for n={n} ({graph!r})"
            )
        pairs = [(ref, j) for j in range(n)]
    else:
        raise ValueError(
            f"make_pairs: unknown scene graph {graph!r}; expected 'complete', "
            "'swin|swinstride|swin2stride|swinskip_start|logwin[-W][-noncyclic]' or "
            "'oneref[-R|-mid]'"
        )

    if not pairs:
        raise ValueError(f"make_pairs: graph {graph!r} gives no pairs for n={n}")

    skip = graph.startswith("oneref") or graph.startswith("swin-1")
    if (symmetrize and not skip) or n == 2 or force_symmetrize:
        pairs = pairs + [(j, i) for i, j in pairs]
    return pairs


def pairs_array(pairs: list[tuple[int, int]]) -> np.ndarray:
    """Convert a pair list to an ``(E, 2)`` int64 array (column 0 = view 1, column 1 = view 2)."""
    arr = np.asarray(pairs, dtype=np.int64)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"pairs_array: expected a list of 2-tuples, got shape {arr.shape}")
    return arr


def check_pairs(pairs: object, n: int) -> np.ndarray:
    """(E,2) int64 pairs after checking their shape and that every index is in ``0..n-1``;
    ValueError naming the first bad pair otherwise."""
    edges = np.asarray(pairs, dtype=np.int64)
    if edges.size == 0:
        raise ValueError("pairs is empty")
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise ValueError(f"pairs must be a sequence of (i, j) pairs, got shape {edges.shape}")
    bad = (edges < 0) | (edges >= n)
    if bad.any():
        e = int(np.argwhere(bad)[0, 0])
        pair = tuple(edges[e].tolist())
        raise ValueError(f"pair {e} = {pair} references a frame outside 0..{n - 1}")
    return edges
