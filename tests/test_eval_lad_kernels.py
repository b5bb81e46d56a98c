"""monst3r_rt._core LAD alignment kernels (``lad_sums``, ``lad_partition``, used by
``depth_metrics(align="lad")``) against a NumPy float64 twin: residual signs with r == 0 exactly,
the fixed/active split and its compaction order, thread-count independence, input checks."""

from __future__ import annotations

import numpy as np
import pytest

from monst3r_rt import _core


def _sums_ref(p, g, s, t):
    r = p.astype(np.float64) * s + t - g.astype(np.float64)
    sg = np.sign(r)
    return np.array([sg @ p.astype(np.float64), sg.sum(), np.abs(r).sum()])


def _values(rng, m, dtype):
    """Dyadic values (exact in float32) with s·p + t == g exactly for a third of the pixels."""
    p = rng.integers(-40, 400, m) / 8.0
    s, t = 0.75, 0.5
    g = rng.integers(0, 320, m) / 8.0
    g[::3] = s * p[::3] + t
    return p.astype(dtype), g.astype(dtype), s, t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lad_sums_match_numpy_float64(dtype) -> None:
    rng = np.random.default_rng(0)
    p, g, s, t = _values(rng, 600_001, dtype)  # > 2 × 2^18: two threads really share it
    assert (p.astype(np.float64) * s + t == g).sum() >= 200_000
    ref = _sums_ref(p, g, s, t)
    got = np.array(_core.lad_sums(p, g, s, t))
    assert got[1] == ref[1]  # a count: exact, so r == 0 contributes 0
    scale = np.abs(p.astype(np.float64)).sum() + np.abs(g.astype(np.float64)).sum()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * scale)
    one, two = _core.lad_sums(p, g, s, t, 1), _core.lad_sums(p, g, s, t, 2)
    assert one == two  # bit-identical whatever the thread count
    # generic (non-dyadic) values
    pr = rng.uniform(-1, 30, 10_007).astype(dtype)
    gr = rng.uniform(0.1, 20, 10_007).astype(dtype)
    np.testing.assert_allclose(
        _core.lad_sums(pr, gr, 0.61, -0.2), _sums_ref(pr, gr, 0.61, -0.2), rtol=1e-12, atol=1e-9
    )
    assert _core.lad_sums(p[:0], g[:0], s, t) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lad_partition_matches_numpy_float64(dtype) -> None:
    rng = np.random.default_rng(1)
    m = 300_003
    g = rng.uniform(0.5, 20, m)
    p = (g * 2.5 * (1 + rng.normal(0, 0.03, m))).astype(dtype)
    g = g.astype(dtype)
    s, t, rho = 0.4, 0.01, 1e-3
    pd, gd = p.astype(np.float64), g.astype(np.float64)
    r = pd * s + t - gd
    act = np.abs(r) <= rho * (np.abs(pd) + 1.0)
    sg = np.sign(r[~act])
    ref = np.array([sg @ pd[~act], sg.sum(), sg @ gd[~act]])
    lin, pa, ga = _core.lad_partition(p, g, s, t, rho)
    assert 0 < act.sum() < m and pa.dtype == ga.dtype == dtype
    np.testing.assert_array_equal(pa, p[act])  # compaction keeps the input order
    np.testing.assert_array_equal(ga, g[act])
    assert lin[1] == ref[1]
    np.testing.assert_allclose(lin, ref, rtol=0, atol=1e-12 * (np.abs(pd).sum() + gd.sum()))
    one, two = _core.lad_partition(p, g, s, t, rho, 1), _core.lad_partition(p, g, s, t, rho, 2)
    assert one[0] == two[0]
    np.testing.assert_array_equal(one[1], two[1])
    # the fixed pixels' sign does not change anywhere in the box: linear share is exact there
    for ds, dt in ((rho, -rho), (-rho, rho), (rho, rho)):
        full = _sums_ref(p, g, s + ds, t + dt)
        a = _core.lad_sums(pa, ga, s + ds, t + dt)
        np.testing.assert_allclose(
            [a[0] + lin[0], a[1] + lin[1], a[2] + (s + ds) * lin[0] + (t + dt) * lin[1] - lin[2]],
            full,
            rtol=1e-12,
            atol=1e-9,
        )


def test_lad_kernels_check_inputs() -> None:
    p = np.ones(5, np.float32)
    with pytest.raises(ValueError, match=r"g must be a C-contiguous float32 array of shape \(5,\)"):
        _core.lad_sums(p, np.ones(4, np.float32), 1.0, 0.0)
    with pytest.raises(ValueError, match=r"g must be .*float32.*got float64 \(5,\)"):
        _core.lad_partition(p, np.ones(5), 1.0, 0.0, 1e-3)
    with pytest.raises(ValueError, match=r"p must be 1-D \(M,\), got \(5,1\)"):
        _core.lad_sums(p[:, None], p, 1.0, 0.0)
    with pytest.raises(ValueError, match="p must be float32 or float64, got int64"):
        _core.lad_sums(np.ones(5, np.int64), p, 1.0, 0.0)
    with pytest.raises(ValueError, match="non-contiguous"):
        _core.lad_sums(np.ones(10, np.float32)[::2], p, 1.0, 0.0)
    with pytest.raises(ValueError, match="s must be finite"):
        _core.lad_sums(p, p, float("nan"), 0.0)
    with pytest.raises(ValueError, match="rho must be finite and >= 0"):
        _core.lad_partition(p, p, 1.0, 0.0, -1.0)
