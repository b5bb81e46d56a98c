"""Per-pixel ops of the alignment's outer loop: the fused Adam step (vs torch.optim.Adam and the
former NumPy step) and world points (vs a NumPy twin and depth_to_points + pose)."""

from __future__ import annotations

import numpy as np
import pytest

from monst3r_rt import _core
from monst3r_rt.align.config import AlignConfig
from monst3r_rt.align.solvers import adam, adam_step
from monst3r_rt.geometry import depth_to_points, world_points


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


NITER = 12
LR_AT = AlignConfig(niter=NITER).lr_at  # official linear schedule 0.01 → 0.001


def _torch_cuda(torch) -> None:
    from conftest import cuda_arrays_available

    ok, reason = cuda_arrays_available()
    if not ok:
        pytest.skip(reason)
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")


# ---- Adam ---------------------------------------------------------------------------------------


def _grad_sequence(rng, shape, dtype):
    """Gradients of varied magnitudes, exact zeros included (eps and the zero path matter)."""
    scale = 10.0 ** rng.uniform(-9, 1, shape)
    out = [rng.normal(0, 1, shape) * scale for _ in range(NITER)]
    for g in out:
        g[rng.random(shape) < 0.05] = 0
    return [g.astype(dtype) for g in out]


def _torch_adam(torch, p0, grads, betas=(0.9, 0.9), eps=1e-8):
    """torch.optim.Adam fed the given gradient sequence, lr set per iteration as the official
    loop does; returns (param, exp_avg, exp_avg_sq) as numpy."""
    p = torch.tensor(p0, requires_grad=True)
    opt = torch.optim.Adam([p], lr=LR_AT(0), betas=betas, eps=eps)
    for it, g in enumerate(grads):
        for group in opt.param_groups:
            group["lr"] = LR_AT(it)
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    st = opt.state[p]
    return p.detach().numpy(), st["exp_avg"].numpy(), st["exp_avg_sq"].numpy()


def _assert_close(got, ref, dtype, what):
    tol = 2e-6 if dtype == np.float32 else 1e-13
    scale = max(float(np.abs(ref).max()), np.finfo(dtype).tiny)
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * scale, err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("betas", [(0.9, 0.9), (0.3, 0.999)])
def test_adam_step_matches_torch_optim_adam(torch, rng, dtype, betas):
    shape = (3, 17, 29)
    p0 = rng.normal(0, 1, shape).astype(dtype)
    grads = _grad_sequence(rng, shape, dtype)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for it, g in enumerate(grads):
        adam_step(p, m, v, g, it + 1, LR_AT(it), betas)
    ref = _torch_adam(torch, p0, grads, betas)
    assert not np.allclose(p, p0)  # it moved
    for got, want, what in zip((p, m, v), ref, ("param", "exp_avg", "exp_avg_sq"), strict=True):
        _assert_close(got, want, dtype, what)


def _numpy_adam(objective, params, niter, lr_at, betas=(0.9, 0.9), eps=1e-8):
    """The former NumPy implementation of ``solvers.adam`` (reference twin)."""
    b1, b2 = betas
    p = {k: v.copy() for k, v in params.items()}
    m = {k: v * 0 for k, v in p.items()}
    v2 = {k: v * 0 for k, v in p.items()}
    history = []
    for it in range(niter):
        energy, grads = objective(p, it)
        history.append(energy)
        lr = lr_at(it)
        bc1, bc2 = 1 - b1 ** (it + 1), 1 - b2 ** (it + 1)
        for k, g in grads.items():
            m[k] *= b1
            m[k] += (1 - b1) * g
            v2[k] *= b2
            v2[k] += (1 - b2) * g * g
            p[k] -= (lr / bc1) * m[k] / (v2[k] ** 0.5 / bc2**0.5 + eps)
    return p, history


def _problem(torch, rng, dtype):
    """Parameters of the alignment's shapes and a smooth non-quadratic objective of them."""
    params = {
        "log_depth": rng.normal(1, 0.3, (4, 9, 13)),
        "im_poses": rng.normal(0, 1, (4, 7)),
        "focal": np.array([60.0]),
    }
    params = {k: v.astype(dtype) for k, v in params.items()}
    target = {k: rng.normal(0, 1, v.shape).astype(dtype) for k, v in params.items()}

    def objective(p, it):
        energy = 0.0
        grads = {}
        for k, x in p.items():
            d = x - target[k]
            energy += float(np.sum(np.log1p(d * d)))
            grads[k] = (2 * d / (1 + d * d)).astype(dtype)
        return energy, grads

    def torch_energy(p):
        return sum(torch.log1p((p[k] - torch.from_numpy(target[k])) ** 2).sum() for k in p)

    return params, objective, torch_energy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_loop_matches_former_numpy_and_torch(torch, rng, dtype):
    params, objective, torch_energy = _problem(torch, rng, dtype)
    got, hist = adam(objective, params, NITER, LR_AT)
    old, old_hist = _numpy_adam(objective, params, NITER, LR_AT)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.Adam(list(tp.values()), lr=LR_AT(0), betas=(0.9, 0.9), eps=1e-8)
    for it in range(NITER):
        for group in opt.param_groups:
            group["lr"] = LR_AT(it)
        opt.zero_grad()
        torch_energy(tp).backward()
        opt.step()
    assert hist[-1] < hist[0]
    np.testing.assert_allclose(hist, old_hist, rtol=1e-5 if dtype == np.float32 else 1e-12)
    for k in params:
        assert got[k].dtype == dtype and got[k].shape == params[k].shape
        assert not np.shares_memory(got[k], params[k])
        _assert_close(got[k], old[k], dtype, f"{k} vs former numpy")
        _assert_close(got[k], tp[k].detach().numpy(), dtype, f"{k} vs torch")


def test_adam_step_on_cpu_tensors_matches_numpy(torch, rng):
    arrays = [rng.normal(0, 1, (5, 7)).astype(np.float32) for _ in range(4)]
    arrays[2] = np.abs(arrays[2])
    tensors = [torch.from_numpy(a.copy()) for a in arrays]
    adam_step(*arrays, 3, 0.01)
    adam_step(*tensors, 3, 0.01)
    for a, t in zip(arrays[:3], tensors[:3], strict=True):
        np.testing.assert_array_equal(t.numpy(), a)


def test_adam_step_does_not_depend_on_threads(rng):
    shape = (2, 300, 300)  # above the kernel's threading threshold
    state = [rng.normal(0, 1, shape).astype(np.float32) for _ in range(4)]
    state[2] = np.abs(state[2])
    results = []
    before = _core.num_threads()
    try:
        for threads in (1, 2):
            _core.set_num_threads(threads)
            p, m, v, g = (a.copy() for a in state)
            adam_step(p, m, v, g, 5, 0.007)
            results.append((p, m, v))
    finally:
        _core.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_max_ulp(a, b, maxulp=1)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.__setitem__(3, a[3].astype(np.float64)), "grad must be float32 like param"),
        (lambda a: a.__setitem__(1, np.zeros((4, 5), np.float32)), r"exp_avg must have the shape"),
        (lambda a: a.__setitem__(2, np.zeros((5, 8), np.float32)[:, ::2]), "exp_avg_sq must be C"),
        (lambda a: a[1].setflags(write=False), "exp_avg must be writeable"),
        (lambda a: a.__setitem__(2, a[1]), "exp_avg_sq and exp_avg must be different"),
        (lambda a: a.__setitem__(0, a[0].astype(np.int32)), "param must be a float32 or float64"),
    ],
)
def test_adam_step_bad_arrays_are_named(change, message):
    arrays = [np.zeros((5, 4), np.float32) for _ in range(4)]
    change(arrays)
    with pytest.raises(ValueError, match=message):
        adam_step(*arrays, 1, 0.01)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(step=0), "step must be >= 1"),
        (dict(lr=-1.0), "lr must be finite"),
        (dict(betas=(0.9, 1.0)), "betas must be in"),
        (dict(eps=-1e-8), "eps must be >= 0"),
    ],
)
def test_adam_step_bad_hyperparameters(kwargs, message):
    arrays = [np.zeros(3, np.float64) for _ in range(4)]
    args = dict(step=1, lr=0.01) | kwargs
    with pytest.raises(ValueError, match=message):
        adam_step(*arrays, **args)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_step_cuda_twin_matches_cpu(torch, rng, dtype):
    _torch_cuda(torch)
    shape = (3, 40, 56)
    p0 = rng.normal(0, 1, shape).astype(dtype)
    grads = _grad_sequence(rng, shape, dtype)
    cpu = [p0.copy(), np.zeros_like(p0), np.zeros_like(p0)]
    gpu = [torch.from_numpy(a.copy()).cuda() for a in cpu]
    for it, g in enumerate(grads):
        adam_step(*cpu, g, it + 1, LR_AT(it))
        adam_step(*gpu, torch.from_numpy(g).cuda(), it + 1, LR_AT(it))
    for got, want in zip(gpu, cpu, strict=True):
        _assert_close(got.cpu().numpy(), want, dtype, "cuda vs cpu")
    want = np.dtype(dtype).name  # the CUDA boundary's format: array, expected, actual
    with pytest.raises(ValueError, match=rf"grad: expected {want} on cuda:0 with shape \(6720,\)"
                       r", got float32 on cuda:0 with shape \(3,\)"):  # fmt: skip
        adam_step(*gpu, torch.zeros(3, device="cuda"), 1, 0.01)
    with pytest.raises(ValueError, match="exp_avg and param must be different arrays"):
        adam_step(gpu[0], gpu[0], gpu[2], torch.from_numpy(grads[0]).cuda(), 1, 0.01)


# ---- world points -------------------------------------------------------------------------------


def _random_cameras(rng, n):
    """(N,4,4) float32 rigid camera-to-world (random rotations, translations ~ metres) and
    (N,3,3) float32 intrinsics with fx ≠ fy and off-centre principal points."""
    poses = np.tile(np.eye(4), (n, 1, 1))
    for k in range(n):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        poses[k, :3, :3] = q * np.linalg.det(q)  # proper rotation
        poses[k, :3, 3] = rng.normal(0, 3, 3)
    k = np.zeros((n, 3, 3))
    k[:, 0, 0] = rng.uniform(80, 400, n)
    k[:, 1, 1] = k[:, 0, 0] * rng.uniform(0.8, 1.2, n)
    k[:, 0, 2] = rng.uniform(5, 25, n)
    k[:, 1, 2] = rng.uniform(3, 15, n)
    k[:, 2, 2] = 1
    return poses.astype(np.float32), k.astype(np.float32)


def _world_points_reference(depth, poses, k):
    """NumPy float64 twin: X = R·D·K⁻¹[x, y, 1] + t."""
    n, h, w = depth.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    pix = np.stack([x, y, np.ones_like(x)], -1)  # (H,W,3)
    rays = np.einsum("nij,hwj->nhwi", np.linalg.inv(k.astype(np.float64)), pix)
    cam = rays * depth.astype(np.float64)[..., None]
    p = poses.astype(np.float64)
    return np.einsum("nij,nhwj->nhwi", p[:, :3, :3], cam) + p[:, None, None, :3, 3]


def test_world_points_matches_numpy_reference(rng):
    n, h, w = 3, 11, 19
    depth = rng.uniform(0.5, 30, (n, h, w)).astype(np.float32)
    poses, k = _random_cameras(rng, n)
    got = world_points(depth, poses, k)
    ref = _world_points_reference(depth, poses, k)
    assert got.shape == (n, h, w, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def test_world_points_is_depth_to_points_then_pose(rng):
    n, h, w = 2, 8, 12
    depth = rng.uniform(1, 5, (n, h, w)).astype(np.float32)
    poses, k = _random_cameras(rng, n)
    k[:, 1, 1] = k[:, 0, 0]  # depth_to_points has one focal
    cam = depth_to_points(depth, k[:, 0, 0], k[:, :2, 2]).astype(np.float64)
    ref = np.einsum("nij,nhwj->nhwi", poses[:, :3, :3], cam) + poses[:, None, None, :3, 3]
    got = world_points(depth, poses, k)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    # the last row of the pose is not read
    poses[:, 3] = 7
    np.testing.assert_array_equal(world_points(depth, poses, k), got)


def _skewed(k):
    k = k.copy()
    k[:, 0, 1] = 0.5
    return k


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d, p, k: (d[0], p, k), r"depth must have shape \(N,H,W\), got \(4,5\)"),
        (lambda d, p, k: (d, p[:, :3], k), r"cam_to_world must have shape \(N,4,4\)"),
        (lambda d, p, k: (d, p, k[:1]), r"intrinsics must have shape \(N,3,3\).*got \(1,3,3\)"),
        (lambda d, p, k: (d, p, _skewed(k)), r"intrinsics\[0\] must be .* \(no skew\)"),
        (lambda d, p, k: (d, p, k * 0), r"intrinsics\[0\] must be"),
    ],
)
def test_world_points_bad_input_is_named(rng, change, message):
    poses, k = _random_cameras(rng, 2)
    depth = np.ones((2, 4, 5), np.float32)
    with pytest.raises(ValueError, match=message):
        world_points(*change(depth, poses, k))


def test_assemble_points_are_the_result_cameras():
    """global_align's pts3d are its depths seen through its own poses and intrinsics."""
    from monst3r_rt.align import global_align
    from monst3r_rt.synthetic import make_scene

    sc = make_scene(n_frames=5, size=(12, 16), n_objects=0, seed=3)
    res = global_align(
        sc.edges, sc.pts_i, sc.pts_j, sc.conf_i, sc.conf_j, config=AlignConfig(niter=5)
    )
    ref = _world_points_reference(res.depths, res.poses, res.intrinsics)
    np.testing.assert_allclose(res.pts3d, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.gpu
def test_world_points_cuda_twin_matches_cpu(torch, rng):
    _torch_cuda(torch)
    depth = rng.uniform(0.5, 30, (3, 20, 33)).astype(np.float32)
    poses, k = _random_cameras(rng, 3)
    got = world_points(*(torch.from_numpy(a).cuda() for a in (depth, poses, k)))
    ref = world_points(depth, poses, k)
    np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=0, atol=1e-6 * np.abs(ref).max())
