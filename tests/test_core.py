"""The compiled core: what it was built with, and the depth_to_points kernel twins."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from tolerance import assert_close

import monst3r_rt
from conftest import cuda_arrays_available
from monst3r_rt import _core
from monst3r_rt.geometry import depth_to_points


def reference_depth_to_points(depth, focal, pp):
    """Slow, obvious reference: a Python loop over views with K^-1 in float64."""
    n, h, w = depth.shape
    out = np.zeros((n, h, w, 3))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    for i in range(n):
        kinv = np.linalg.inv(
            np.array([[focal[i], 0, pp[i, 0]], [0, focal[i], pp[i, 1]], [0, 0, 1]])
        )
        rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ kinv.T
        out[i] = rays * depth[i][..., None]
    return out


def test_build_info_is_complete():
    info = _core.build_info()
    assert info["version"] == monst3r_rt.__version__
    assert info["compiler"]
    assert info["omp_threads"] >= 1
    assert info["cuda"] == _core.has_cuda
    if info["cuda"]:
        assert "sm_87" in info["cuda_architectures"]  # Jetson Orin
        assert "sm_90" in info["cuda_architectures"]  # Hopper
        assert info["cuda_version"]
    else:
        assert info["cuda_reason"]


@pytest.mark.skipif(os.environ.get("MONST3R_RT_EXPECT_CUDA") != "1", reason="CI-only build check")
def test_ci_build_compiled_cuda():
    """CI sets MONST3R_RT_EXPECT_CUDA=1 so the CUDA sources are compiled on every run."""
    assert _core.build_info()["cuda"], _core.build_info()["cuda_reason"]


def test_cuda_device_count_never_raises():
    count = _core.cuda_device_count()
    status = _core.cuda_status()
    assert count == status["device_count"] >= 0
    assert len(status["devices"]) == count
    if count == 0:
        assert status["reason"]


def test_depth_to_points_matches_reference(rng):
    n, h, w = 3, 7, 11
    depth = rng.uniform(0.5, 5.0, (n, h, w)).astype(np.float32)
    focal = rng.uniform(100, 600, n).astype(np.float32)
    pp = rng.uniform(2, 6, (n, 2)).astype(np.float32)
    got = depth_to_points(depth, focal, pp)
    assert got.shape == (n, h, w, 3) and got.dtype == np.float32
    # x, y near the optical axis round like the depth they are computed from
    assert_close(got, reference_depth_to_points(depth, focal, pp), rel=1e-6, rtol=1e-6)


def test_depth_to_points_closed_form():
    """Default principal point is (W/2, H/2): pixel (W/2, H/2) lies on the optical axis."""
    depth = np.full((1, 4, 6), 2.0, np.float32)
    pts = depth_to_points(depth, np.float32(4.0))
    np.testing.assert_array_equal(pts[0, 2, 3], [0.0, 0.0, 2.0])
    np.testing.assert_allclose(pts[0, 0, 0], [(0 - 3) / 4 * 2, (0 - 2) / 4 * 2, 2.0])


def test_depth_to_points_thread_count_does_not_change_result(rng):
    depth = rng.uniform(1, 2, (2, 33, 17)).astype(np.float32)
    focal = np.array([50.0, 70.0], np.float32)
    before = _core.num_threads()
    try:  # 1 thread vs 4, set explicitly: not whatever this machine's core count gives
        _core.set_num_threads(1)
        one = depth_to_points(depth, focal)
        _core.set_num_threads(4)
        four = depth_to_points(depth, focal)
    finally:
        _core.set_num_threads(before)
    np.testing.assert_array_equal(one, four)


@pytest.mark.parametrize(
    ("depth", "focal", "pp", "message"),
    [
        (
            np.ones((4, 4), np.float32),
            np.ones(1, np.float32),
            np.ones((1, 2)),
            r"depth .*\(N,H,W\)",
        ),
        (
            np.ones((2, 4, 4), np.float32),
            np.ones(3, np.float32),
            np.ones((2, 2)),
            r"focal .*got \(3,\)",
        ),
        (np.ones((2, 4, 4), np.float32), np.ones(2, np.float32), np.ones((2, 3)), r"pp .*\(2,3\)"),
    ],
)
def test_depth_to_points_bad_shapes_name_the_input(depth, focal, pp, message):
    with pytest.raises(ValueError, match=message):
        _core.depth_to_points(depth, focal, pp)


def _cuda_or_skip():
    ok, reason = cuda_arrays_available()
    if not ok:
        pytest.skip(reason)
    return pytest.importorskip("torch")


def test_cuda_twin_matches_cpu(rng):
    torch = _cuda_or_skip()
    depth = rng.uniform(0.5, 5.0, (4, 37, 53)).astype(np.float32)
    focal = rng.uniform(100, 600, 4).astype(np.float32)
    pp = rng.uniform(10, 30, (4, 2)).astype(np.float32)
    cpu = depth_to_points(depth, focal, pp)
    dev = [torch.from_numpy(a).cuda() for a in (depth, focal, pp)]
    gpu = depth_to_points(*dev)
    torch.cuda.synchronize()
    assert_close(gpu.cpu().numpy(), cpu, rel=1e-6, rtol=1e-6)


def test_cuda_host_parameters_are_copied_and_cuda_ones_checked(rng):
    """Host focal / pp next to CUDA depth (the review's CPU-tensor focal) are copied to the GPU;
    a CUDA focal of the wrong dtype is refused by name, not reinterpreted."""
    torch = _cuda_or_skip()
    depth = rng.uniform(0.5, 5.0, (3, 9, 13)).astype(np.float32)
    focal = rng.uniform(100, 600, 3).astype(np.float32)
    cpu = depth_to_points(depth, focal)
    d = torch.from_numpy(depth).cuda()
    for f in (focal, torch.from_numpy(focal)):
        np.testing.assert_allclose(depth_to_points(d, f).cpu().numpy(), cpu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(depth_to_points(d, 250.0).cpu().numpy(),
                               depth_to_points(depth, 250.0), rtol=1e-6, atol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match=r"focal: expected float32 on cuda:\d+ with shape \(3,\), "
                       r"got float64"):  # fmt: skip
        depth_to_points(d, torch.from_numpy(focal).double().cuda())


def test_cuda_device_guard_restores_the_current_device(rng):
    """A tensor on the last GPU runs there, and the caller's current device is left as it was."""
    torch = _cuda_or_skip()
    last = torch.cuda.device_count() - 1
    depth = rng.uniform(0.5, 5.0, (2, 8, 8)).astype(np.float32)
    before = torch.cuda.current_device()
    gpu = depth_to_points(torch.from_numpy(depth).to(f"cuda:{last}"), 300.0)
    assert gpu.device.index == last
    assert torch.cuda.current_device() == before
    np.testing.assert_allclose(gpu.cpu().numpy(), depth_to_points(depth, 300.0), rtol=1e-6)


def test_cuda_array_without_cuda_kernels_is_a_clear_error():
    """The wrapper says why before anything else (the entry points: test_cuda_boundary.py)."""
    if _core.has_cuda:
        pytest.skip("built with CUDA kernels: covered by test_cuda_boundary.py")
    from fake_dlpack import cuda

    with pytest.raises(RuntimeError, match="depth is a CUDA array .* without CUDA kernels"):
        depth_to_points(cuda(2, 4, 4), 1.0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monst3r_rt.cli", *args], capture_output=True, text=True, check=False
    )


def test_cli_version():
    res = _cli("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"monst3r-rt {monst3r_rt.__version__}"


def test_cli_doctor_table_is_truthful():
    import json

    res = _cli("doctor", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: (r["ok"], r["detail"]) for r in json.loads(res.stdout)}
    assert rows["CPU kernels"][0] is True
    assert rows["CUDA kernels compiled"][0] is _core.has_cuda
    assert rows["GPU visible"][0] is (_core.cuda_device_count() > 0)
    for name in ("torch", "onnxruntime", "cupy"):
        ok, detail = rows[name]
        assert detail, f"{name}: no version or reason"
        assert ok is (importlib.util.find_spec(name) is not None) or "import failed" in detail
    ok, detail = rows["TensorRT"]  # the real library, not tensorrt-stubs' namespace package
    spec = importlib.util.find_spec("tensorrt")
    real = spec is not None and hasattr(importlib.import_module("tensorrt"), "Builder")
    assert ok is real and detail
    table = _cli("doctor").stdout
    for name in rows:
        assert name in table


def test_public_api_names_resolve():
    """Every name in monst3r_rt.__all__ imports (the lazy table has no stale entry)."""
    pytest.importorskip("torch")
    for name in monst3r_rt.__all__:
        assert getattr(monst3r_rt, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        monst3r_rt.nope  # noqa: B018
