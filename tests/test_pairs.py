"""Pair graphs: compare make_pairs with an independent brute-force reading of the spec (§3)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from monst3r_rt.pairs import DEFAULT_GRAPH, make_pairs, pairs_array


def _reference_unordered(n: int, graph: str) -> set[tuple[int, int]]:
    """Brute force over all (a, b) with a <= b: is {a, b} an edge by the spec's definition?"""
    parts = graph.split("-")
    cyclic = parts[-1] != "noncyclic"
    kind = parts[0]
    w = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 3
    if kind == "logwin":
        deltas = [2**m for m in range(w)] + [-(2**m) for m in range(w)]
    else:
        start, step = {
            "swin": (1, 1),
            "swinstride": (1, 2),
            "swin2stride": (1, 3),
            "swinskip_start": (2, 1),
        }[kind]
        deltas = [start + step * t for t in range(w)]
    edges = set()
    for a, b in itertools.product(range(n), repeat=2):
        if a > b:
            continue
        for i in range(n):
            for d in deltas:
                j = (i + d) % n if cyclic else i + d
                if not 0 <= j < n:
                    continue
                if kind == "logwin" and j == i:
                    continue
                if {i, j} == {a, b} and (a != b or i == j):
                    edges.add((a, b))
    return edges


def _check_layout(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Symmetrised layout: second half mirrors the first half, element by element."""
    assert len(pairs) % 2 == 0
    half = len(pairs) // 2
    fwd, bwd = pairs[:half], pairs[half:]
    assert bwd == [(j, i) for i, j in fwd]
    return fwd


GRAPHS = [
    "swin-1",
    "swin-2",
    "swin-3",
    "swin-5",
    "swin-5-noncyclic",
    "swin-2-noncyclic",
    "swinstride-1",
    "swinstride-2",
    "swinstride-5",
    "swinstride-5-noncyclic",
    "swin2stride-3",
    "swin2stride-3-noncyclic",
    "swinskip_start-2",
    "swinskip_start-3-noncyclic",
    "logwin-1",
    "logwin-3",
    "logwin-3-noncyclic",
    "logwin-5",
    "logwin-5-noncyclic",
    "swin",
    "swinstride-noncyclic",
    "logwin",
]


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 10, 11, 16, 23])
def test_window_graphs_match_reference(n: int, graph: str) -> None:
    ref = _reference_unordered(n, graph)
    if not ref:  # e.g. swinskip_start-*-noncyclic on 2 frames
        with pytest.raises(ValueError, match="no pairs"):
            make_pairs(n, graph)
        return
    pairs = make_pairs(n, graph, symmetrize=True)
    skip_sym = graph.startswith("swin-1") and n != 2
    fwd = pairs if skip_sym else _check_layout(pairs)
    assert len(set(fwd)) == len(fwd), "forward pairs must be unique"
    assert all(i <= j for i, j in fwd), "forward pairs are stored as (min, max)"
    assert set(fwd) == ref
    assert all(0 <= i < n and 0 <= j < n for i, j in pairs)


@pytest.mark.parametrize("n", [10, 11, 20, 65, 90, 110])
def test_swinstride5_noncyclic_count(n: int) -> None:
    pairs = make_pairs(n, "swinstride-5-noncyclic")
    assert len(pairs) == 10 * n - 50
    assert make_pairs(n) == pairs  # the default graph
    assert DEFAULT_GRAPH == "swinstride-5-noncyclic"
    fwd = _check_layout(pairs)
    assert {abs(i - j) for i, j in fwd} == {1, 3, 5, 7, 9}


def test_named_counts() -> None:
    assert len(make_pairs(65)) == 600
    assert len(make_pairs(90)) == 850
    assert len(make_pairs(110)) == 1050
    # general formula 2 (W N - W^2) for N >= 2W
    for w in (1, 2, 3, 4, 6):
        assert len(make_pairs(40, f"swinstride-{w}-noncyclic")) == 2 * (w * 40 - w * w)


def test_small_n_noncyclic_window_larger_than_n() -> None:
    # N < 2W: offsets beyond N-1 simply drop out
    pairs = make_pairs(4, "swinstride-5-noncyclic")
    fwd = _check_layout(pairs)
    assert sorted(fwd) == [(0, 1), (0, 3), (1, 2), (2, 3)]


def test_cyclic_wraps_and_self_pair_quirk() -> None:
    fwd = _check_layout(make_pairs(5, "swin-2"))
    assert sorted(fwd) == sorted(
        {(0, 1), (1, 2), (2, 3), (3, 4), (0, 4), (0, 2), (1, 3), (2, 4), (0, 3), (1, 4)}
    )
    # official quirk: a cyclic window that wraps onto itself adds (i, i)
    fwd = _check_layout(make_pairs(3, "swin-3"))
    assert {(0, 0), (1, 1), (2, 2)} <= set(fwd)
    # logwin never produces self pairs
    assert all(i != j for i, j in make_pairs(4, "logwin-3"))


def test_order_matches_official_set_iteration() -> None:
    # the official code builds a set of (min, max) tuples in this insertion order
    n, offsets = 30, range(1, 10, 2)
    official: set[tuple[int, int]] = set()
    for i in range(n):
        for k in offsets:
            if i + k < n:
                official.add((i, i + k))
    fwd = _check_layout(make_pairs(n, "swinstride-5-noncyclic"))
    assert fwd == list(official)


def test_complete() -> None:
    for n in (2, 3, 6, 13):
        pairs = make_pairs(n, "complete")
        assert len(pairs) == n * (n - 1)
        fwd = _check_layout(pairs)
        assert fwd == [(i, j) for i in range(n) for j in range(i)]
    assert len(make_pairs(5, "complete", symmetrize=False)) == 10


def test_oneref() -> None:
    n = 7
    assert make_pairs(n, "oneref-3") == [(3, j) for j in range(n)]  # includes the self pair
    assert make_pairs(n, "oneref") == [(0, j) for j in range(n)]
    assert make_pairs(n, "oneref-mid") == [(n // 2, j) for j in range(n)]
    assert make_pairs(n, "oneref-3", force_symmetrize=True) == (
        [(3, j) for j in range(n)] + [(j, 3) for j in range(n)]
    )
    # n == 2 always symmetrises
    assert make_pairs(2, "oneref-1") == [(1, 0), (1, 1), (0, 1), (1, 1)]
    with pytest.raises(ValueError, match="out of range"):
        make_pairs(n, "oneref-7")


def test_swin1_prefix_skips_symmetrize() -> None:
    assert len(make_pairs(10, "swin-1-noncyclic")) == 9
    assert len(make_pairs(30, "swin-10-noncyclic")) == sum(30 - k for k in range(1, 11))  # quirk
    assert len(make_pairs(10, "swin-2-noncyclic")) == 2 * (9 + 8)
    assert len(make_pairs(2, "swin-1")) == 2
    assert len(make_pairs(10, "swin-1-noncyclic", force_symmetrize=True)) == 18


def test_no_symmetrize() -> None:
    pairs = make_pairs(12, "swinstride-5-noncyclic", symmetrize=False)
    assert len(pairs) == (10 * 12 - 50) // 2
    assert pairs == make_pairs(12)[: len(pairs)]


@pytest.mark.parametrize(
    "graph",
    [
        "",
        "nope",
        "swin-x",
        "swin-5-cyclic",
        "swin--5",
        "swin-0",
        "complete-3",
        "oneref-a",
        "oneref--1",
        "logwin-0-noncyclic",
        "swinstride-5-noncyclic-extra",
        "SWIN-5",
    ],
)
def test_invalid_graph(graph: str) -> None:
    with pytest.raises(ValueError):
        make_pairs(10, graph)


@pytest.mark.parametrize("n", [0, 1, -3])
def test_too_few_frames(n: int) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        make_pairs(n)


def test_bad_n_type() -> None:
    with pytest.raises(ValueError):
        make_pairs(3.0)  # type: ignore[arg-type]
    assert make_pairs(np.int64(3), "complete") == make_pairs(3, "complete")


def test_pairs_array() -> None:
    pairs = make_pairs(11)
    arr = pairs_array(pairs)
    assert arr.dtype == np.int64 and arr.shape == (len(pairs), 2)
    assert [tuple(r) for r in arr.tolist()] == pairs
    assert pairs_array([]).shape == (0, 2)
