"""Float comparisons whose tolerance follows the magnitude of the data.

float32 rounding of a value is relative to the largest value it was computed from, not to the
value itself: an x coordinate near 0 of a point at depth 40, or the translation (136) of a
camera from a random-weight reconstruction, carry an absolute error of ~1e-7 times that scale.
A fixed ``atol`` is then either too tight on large scenes (CI red on another CPU) or too loose
on small ones, so the helpers here derive it from the reference array.
"""

from __future__ import annotations

import numpy as np


def scale_of(*arrays) -> float:
    """The largest finite magnitude over ``arrays`` (at least 1e-30, so that it can divide)."""
    vals = [np.abs(np.asarray(a, dtype=np.float64)) for a in arrays]
    top = max((float(v[np.isfinite(v)].max()) for v in vals if np.isfinite(v).any()), default=0)
    return max(top, 1e-30)


def assert_close(
    actual, desired, rel: float, rtol: float = 0.0, scale: float | None = None, err_msg: str = ""
) -> None:
    """``|actual − desired| ≤ rel · scale + rtol · |desired|`` element-wise; ``scale`` defaults
    to ``max|desired|`` (pass the magnitude the values were computed from when it is larger)."""
    desired = np.asarray(desired, dtype=np.float64)
    scale = scale_of(desired) if scale is None else scale
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), desired, rtol=rtol,
                               atol=rel * scale, err_msg=err_msg)  # fmt: skip


def rotation_drift(poses) -> float:
    """How far the rotations of (N,4,4) or (N,3,3) ``poses`` are from orthonormal (max entry of
    R Rᵀ − I): float32 rotations are a few ulps off, and writers that go through quaternions
    project them onto SO(3), which moves each entry (and each inverse translation) by that much."""
    rot = np.asarray(poses, dtype=np.float64)[..., :3, :3]
    return float(np.abs(rot @ np.swapaxes(rot, -1, -2) - np.eye(3)).max())


def assert_poses_close(actual, desired, rel: float = 1e-6, err_msg: str = "") -> None:
    """(N,4,4) rigid poses: rotation entries within ``tol = rel + 2·drift`` and translations
    within ``tol · max(1, max|t|)`` (rotation errors reach the translation through the inverse
    of world-to-camera formats); ``drift`` is :func:`rotation_drift` of ``desired``."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    tol = rel + 2 * rotation_drift(desired)
    t_scale = max(1.0, scale_of(desired[..., :3, 3]))
    np.testing.assert_allclose(actual[..., :3, :3], desired[..., :3, :3], rtol=0, atol=tol,
                               err_msg=f"rotations {err_msg}")  # fmt: skip
    np.testing.assert_allclose(actual[..., :3, 3], desired[..., :3, 3], rtol=0,
                               atol=tol * t_scale, err_msg=f"translations {err_msg}")  # fmt: skip
    np.testing.assert_allclose(actual[..., 3, :], desired[..., 3, :], rtol=0, atol=1e-12,
                               err_msg=f"bottom row {err_msg}")  # fmt: skip


def assert_points_close(actual, desired, rtol: float, err_msg: str = "") -> None:
    """(..., 3) points: each point's error norm within ``rtol`` of its own norm, plus
    ``rtol · 1e-3 · max norm`` (points at the origin). A coordinate near zero of a far point
    carries the rounding of the point's norm, which an element-wise ``rtol`` would miss."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    norm = np.linalg.norm(desired, axis=-1)
    err = np.linalg.norm(actual - desired, axis=-1)
    tol = rtol * (norm + 1e-3 * scale_of(norm))
    bad = ~(err <= tol)
    if bad.any():
        k = np.unravel_index(np.argmax(np.where(bad, err / tol, 0)), err.shape)
        raise AssertionError(
            f"{int(bad.sum())} of {err.size} points differ by more than {rtol:g} of their norm "
            f"(worst at {tuple(int(i) for i in k)}: error {err[k]:.3g}, norm {norm[k]:.3g}) "
            f"{err_msg}"
        )
