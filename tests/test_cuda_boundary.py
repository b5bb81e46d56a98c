"""The checked CUDA boundary (csrc/include/monst3r/cuda_args.h), without a GPU.

Every CUDA entry point checks its DLPack arrays (device, dtype, every dimension, layout) before
any CUDA call, so the checks run here: on CPU torch tensors and NumPy arrays, and on a fake
DLPack producer that describes device memory which does not exist (the checks never
dereference a pointer). Entry points are only ever given at least one wrong array, except in
the tests that skip when a GPU is present (the launch would then use the fake pointers).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from fake_dlpack import cuda

from monst3r_rt import _core

torch = pytest.importorskip("torch")


def d2p_args(n=8, h=4, w=5, **override):
    """Valid (fake) arguments of depth_to_points_cuda, with some replaced."""
    args = dict(depth=cuda(n, h, w), focal=cuda(n), pp=cuda(n, 2), points=cuda(n, h, w, 3))
    args.update(override)
    return args


def raises(exc, message: str, fn, **kw):
    with pytest.raises(exc, match=re.escape(message)):
        fn(**kw)


# ---- messages: the array, expected vs actual ---------------------------------------------------


def test_host_focal_next_to_cuda_depth_names_focal():
    raises(ValueError, "focal: expected float32 on cuda:0 with shape (8,), got float64 on cpu "
           "with shape (8,) (host arrays are not copied to the GPU", _core.depth_to_points_cuda,
           **d2p_args(focal=np.ones(8)))  # fmt: skip
    raises(ValueError, "focal: expected float32 on cuda:0 with shape (8,), got float32 on cpu "
           "with shape (8,)", _core.depth_to_points_cuda,
           **d2p_args(focal=torch.ones(8)))  # fmt: skip


@pytest.mark.parametrize("make", [np.ones, torch.ones])
def test_host_arrays_are_refused_first_array_first(make):
    raises(
        ValueError,
        "depth: expected float32 on cuda with shape (N,H,W), got float32 on cpu with shape (2,4,4)",
        _core.depth_to_points_cuda,
        **d2p_args(depth=make((2, 4, 4), dtype=np.float32 if make is np.ones else None)),
    )


def test_every_dimension_is_checked_against_the_other_arrays():
    raises(ValueError, "focal: expected float32 on cuda:0 with shape (8,), got float32 on "
           "cuda:0 with shape (7,) (N=8 from depth)", _core.depth_to_points_cuda,
           **d2p_args(focal=cuda(7)))  # fmt: skip
    raises(
        ValueError,
        "pp: expected float32 on cuda:0 with shape (8,2), got float32 on cuda:0 with shape (8,3)",
        _core.depth_to_points_cuda,
        **d2p_args(pp=cuda(8, 3)),
    )
    raises(
        ValueError,
        "points: expected float32 on cuda:0 with shape (8,4,5,3), got float32 on "
        "cuda:0 with shape (8,5,4,3) (N=8 from depth; H=4 from depth; W=5 from depth)",
        _core.depth_to_points_cuda,
        **d2p_args(points=cuda(8, 5, 4, 3)),
    )
    raises(
        ValueError,
        "depth: expected float32 on cuda with shape (N,H,W), got float32 on "
        "cuda:0 with shape (8,20)",
        _core.depth_to_points_cuda,
        **d2p_args(depth=cuda(8, 20)),
    )


def test_dtype_is_checked():
    raises(
        ValueError,
        "focal: expected float32 on cuda:0 with shape (8,), got float64 on cuda:0",
        _core.depth_to_points_cuda,
        **d2p_args(focal=cuda(8, dtype="float64")),
    )
    raises(
        ValueError,
        "depth: expected float32 on cuda with shape (N,H,W), got float16 on cuda:0",
        _core.depth_to_points_cuda,
        **d2p_args(depth=cuda(8, 4, 5, dtype="float16")),
    )


def test_layout_is_checked():
    transposed = cuda(8, 2, strides=(1, 8))
    raises(ValueError, "pp: expected float32 on cuda:0 with shape (8,2), got float32 on cuda:0 "
           "with shape (8,2) and strides (1,8) (not C-contiguous", _core.depth_to_points_cuda,
           **d2p_args(pp=transposed))  # fmt: skip
    # a size-1 dimension may carry any stride; explicit compact strides are contiguous
    spec = [("a", cuda(8, 1, 3, strides=(3, 99, 1)), "float32", (8, 1, 3)),
            ("b", cuda(8, 3, strides=(3, 1)), "float32", (8, 3))]  # fmt: skip
    assert _core.check_cuda_arrays(spec)["dims"] == {}


def test_mixed_devices_are_refused():
    raises(ValueError, "focal: expected float32 on cuda:0 with shape (8,), got float32 on cuda:1 "
           "with shape (8,) (cuda:0 from depth)", _core.depth_to_points_cuda,
           **d2p_args(focal=cuda(8, device=1)))  # fmt: skip
    summary = _core.check_cuda_arrays([("x", cuda(3, device=2), "float32", ("N",))])
    assert summary == {"device": 2, "dtype": None, "dims": {"N": 3}}


def test_pinned_and_managed_memory_are_named():
    raises(
        ValueError,
        "got float32 on cuda_managed:0",
        _core.check_cuda_arrays,
        specs=[("x", cuda(3, device_type=13), "float32", (3,))],
    )
    raises(
        ValueError,
        "got float32 on cuda_host (pinned host memory)",
        _core.check_cuda_arrays,
        specs=[("x", cuda(3, device_type=3), "float32", (3,))],
    )


def test_objects_without_dlpack_are_a_type_error():
    raises(
        TypeError,
        "focal: expected float32 on cuda:0 with shape (8,), got a float (not a DLPack array",
        _core.depth_to_points_cuda,
        **d2p_args(focal=1.0),
    )
    raises(
        TypeError,
        "pp: expected float32 on cuda:0 with shape (8,2), got None",
        _core.depth_to_points_cuda,
        **d2p_args(pp=None),
    )


def test_unexportable_host_array_is_still_described():
    ro = np.ones((8, 2), np.float32)
    ro.setflags(write=False)  # NumPy cannot export a read-only array through DLPack
    raises(
        ValueError,
        "pp: expected float32 on cuda:0 with shape (8,2), got float32 on cpu with shape (8,2)",
        _core.depth_to_points_cuda,
        **d2p_args(pp=ro),
    )


def test_real_dtype_is_bound_by_the_first_array():
    spec = [("a", cuda(4, dtype="float64"), "real", ("N",)), ("b", cuda(4), "real", ("N",))]
    raises(
        ValueError,
        "b: expected float64 on cuda:0 with shape (4,), got float32 on cuda:0 "
        "with shape (4,) (float64 from a)",
        _core.check_cuda_arrays,
        specs=spec,
    )
    raises(
        ValueError,
        "a: expected float32 or float64 on cuda",
        _core.check_cuda_arrays,
        specs=[("a", cuda(4, dtype="int64"), "real", ("N",))],
    )
    summary = _core.check_cuda_arrays([spec[0], ("c", cuda(4, 2, dtype="float64"), "real",
                                                 ("N", 2))])  # fmt: skip
    assert summary == {"device": 0, "dtype": "float64", "dims": {"N": 4}}


def test_repeated_symbol_within_one_array():
    raises(ValueError, "m: expected float32 on cuda with shape (K,K), got float32 on cuda:0 "
           "with shape (3,4)", _core.check_cuda_arrays,
           specs=[("m", cuda(3, 4), "float32", ("K", "K"))])  # fmt: skip


def test_optional_arrays():
    out = _core.check_cuda_arrays([("a", cuda(5), "float32", ("N",)),
                                   ("b", None, "float32", ("N", 2), True)])  # fmt: skip
    assert out["dims"] == {"N": 5}
    raises(
        ValueError,
        "b: expected float32 on cuda:0 with shape (5,2)",
        _core.check_cuda_arrays,
        specs=[("a", cuda(5), "float32", ("N",)), ("b", cuda(5), "float32", ("N", 2), True)],
    )


# ---- the stream handed to each producer (DLPack protocol) --------------------------------------


@pytest.mark.parametrize(("stream", "sent"), [(0, 1), (0x5F00, 0x5F00)])
def test_consumer_stream_is_passed_to_dlpack(stream, sent):
    args = d2p_args(pp=cuda(8, 3))  # pp is wrong: nothing is launched
    with pytest.raises(ValueError, match="pp:"):
        _core.depth_to_points_cuda(**args, stream=stream)
    # 0 (legacy default stream) is sent as 1: the protocol reserves 0
    assert args["depth"].streams == [sent] and args["focal"].streams == [sent]
    a = cuda(3)
    _core.check_cuda_arrays([("a", a, "float32", (3,))])
    assert a.streams == [-1]  # validation only: "do not synchronise"


# ---- every entry point declares its arrays -----------------------------------------------------


def ego_args(m=3, h=4, w=5, **override):
    args = dict(depth=cuda(m, h, w), focal_src=cuda(m), pp_src=cuda(m, 2), focal_tgt=cuda(m),
                pp_tgt=cuda(m, 2), rot=cuda(m, 3, 3), trans=cuda(m, 3))  # fmt: skip
    args.update(override)
    return args


def test_ego_flow_cuda_checks_its_arrays():
    raises(ValueError, "rot: expected float32 on cuda:0 with shape (3,3,3), got float32 on "
           "cuda:0 with shape (3,9)", _core.ego_flow_cuda,
           **ego_args(rot=cuda(3, 9), flow=cuda(3, 2, 4, 5)))  # fmt: skip
    raises(ValueError, "measured: expected float32 on cuda:0 with shape (3,2,4,5), got float32 "
           "on cpu", _core.ego_flow_cuda, **ego_args(measured=np.zeros((3, 2, 4, 5), np.float32),
                                                     error=cuda(3, 4, 5)))  # fmt: skip
    raises(ValueError, "error needs measured", _core.ego_flow_cuda, **ego_args(error=cuda(3, 4, 5)))
    raises(ValueError, "pass flow and/or error", _core.ego_flow_cuda, **ego_args())


def align_args(n=5, e=6, h=4, w=3, dtype="float32", flow=False, **override):
    r = dtype
    args = dict(
        edges=cuda(e, 2, dtype="int64"), pts_i=cuda(e, h, w, 3, dtype=r),
        pts_j=cuda(e, h, w, 3, dtype=r), w_i=cuda(e, h, w, dtype=r), w_j=cuda(e, h, w, dtype=r),
        log_depth=cuda(n, h, w, dtype=r), rot=cuda(n, 3, 3, dtype=r), trans=cuda(n, 3, dtype=r),
        focal=cuda(n, dtype=r), pp=cuda(n, 2, dtype=r), edge_rot=cuda(e, 3, 3, dtype=r),
        edge_trans=cuda(e, 3, dtype=r), edge_scale=cuda(e, dtype=r),
        energy=cuda(1, dtype="float64"), grad_log_depth=cuda(n, h, w, dtype=r),
        grad_frame=cuda(n, _core.ALIGN_FRAME_BLOCK, dtype="float64"),
        grad_edge=cuda(e, _core.ALIGN_EDGE_BLOCK, dtype="float64"),
    )  # fmt: skip
    if flow:
        args.update(
            flow_ij=cuda(e, 2, h, w, dtype=r), flow_ji=cuda(e, 2, h, w, dtype=r),
            static_mask=cuda(n, h, w, dtype=r), flow_rot=cuda(e, 2, 3, 3, dtype=r),
            flow_trans=cuda(e, 2, 3, dtype=r), flow_stats=cuda(4, dtype="float64"),
            grad_log_depth_flow=cuda(2, n, h, w, dtype=r),
            grad_flow=cuda(e, 2, _core.ALIGN_FLOW_BLOCK, dtype="float64"),
        )  # fmt: skip
    args.update(override)
    return args


def test_align_cuda_checks_its_arrays():
    raises(
        ValueError,
        "pts_j: expected float32 on cuda:0 with shape (6,4,3,3), got float64",
        _core.align_energy_grad_cuda,
        **align_args(pts_j=cuda(6, 4, 3, 3, dtype="float64")),
    )
    raises(ValueError, "grad_frame: expected float64 on cuda:0 with shape (5,13), got float64 on "
           "cuda:0 with shape (5,12)", _core.align_energy_grad_cuda,
           **align_args(grad_frame=cuda(5, 12, dtype="float64")))  # fmt: skip
    raises(ValueError, "grad_log_depth: expected float64 on cuda:0 with shape (5,4,3), got "
           "float32", _core.align_energy_grad_cuda,
           **align_args(dtype="float64", grad_log_depth=cuda(5, 4, 3)))  # fmt: skip
    raises(ValueError, "flow_ji: expected float32 on cuda:0 with shape (6,2,4,3), got float32 on "
           "cuda:0 with shape (6,2,3,4)", _core.align_energy_grad_cuda,
           **align_args(flow=True, flow_ji=cuda(6, 2, 3, 4)))  # fmt: skip
    raises(
        ValueError,
        "missing: flow_stats, grad_log_depth_flow, grad_flow",
        _core.align_energy_grad_cuda,
        **align_args(flow=True, flow_stats=None, grad_log_depth_flow=None, grad_flow=None),
    )


def moments_args(b=2, p=7, **override):
    args = dict(src=cuda(b, p, 3), dst=cuda(b, p, 3), weights=cuda(b, p),
                out=cuda(b, 17, dtype="float64"))  # fmt: skip
    args.update(override)
    return args


def test_pair_moments_cuda_checks_its_arrays():
    raises(ValueError, "dst: expected float32 on cuda:0 with shape (2,7,3), got float32 on "
           "cuda:0 with shape (2,6,3) (B=2 from src; P=7 from src)", _core.pair_moments_cuda,
           **moments_args(dst=cuda(2, 6, 3)))  # fmt: skip
    raises(ValueError, "out: expected float64 on cuda:0 with shape (2,17), got float32",
           _core.pair_moments_cuda, **moments_args(out=cuda(2, 17)))  # fmt: skip
    host = np.ones((2, 7), np.float32)
    raises(ValueError, "weights: expected float32 on cuda:0 with shape (2,7), got float32 on cpu",
           _core.pair_moments_cuda, **moments_args(weights=host))  # fmt: skip


def adam_args(p=11, dtype="float32", **override):
    names = ("param", "exp_avg", "exp_avg_sq", "grad")
    args = {name: cuda(p, dtype=dtype) for name in names} | dict(step=1, lr=0.01)
    args.update(override)
    return args


def world_args(n=2, h=4, w=5, **override):
    args = dict(depth=cuda(n, h, w), cam_to_world=cuda(n, 4, 4), intrinsics=cuda(n, 3, 3),
                points=cuda(n, h, w, 3))  # fmt: skip
    args.update(override)
    return args


@pytest.mark.parametrize(("first", "second"), [("param", "exp_avg"), ("exp_avg", "grad"),
                                               ("param", "grad")])  # fmt: skip
def test_adam_cuda_refuses_one_array_passed_twice(first, second):
    """In place: as on the CPU, two arguments on one address are refused before any launch."""
    same = cuda(11)
    raises(ValueError, f"{second} and {first} must be different arrays", _core.adam_step_cuda,
           **adam_args(**{first: same, second: same}))  # fmt: skip
    if _core.cuda_device_count() == 0:  # with a GPU the launch would read the fake pointers
        empty = cuda(0)  # nothing is written: no address to share, the checks pass
        with pytest.raises(RuntimeError, match="adam_step_cuda"):  # (the launch fails)
            _core.adam_step_cuda(**adam_args(p=0, **{first: empty, second: empty}))


def test_adam_and_world_points_cuda_check_their_arrays():
    raises(ValueError, "exp_avg_sq: expected float64 on cuda:0 with shape (11,), got float32",
           _core.adam_step_cuda, **adam_args(dtype="float64", exp_avg_sq=cuda(11)))  # fmt: skip
    raises(ValueError, "grad: expected float32 on cuda:0 with shape (11,), got float32 on "
           "cuda:0 with shape (10,)", _core.adam_step_cuda, **adam_args(grad=cuda(10)))  # fmt: skip
    raises(ValueError, "intrinsics: expected float32 on cuda:0 with shape (2,3,3), got float32 "
           "on cuda:0 with shape (2,4,4)", _core.world_points_cuda,
           **world_args(intrinsics=cuda(2, 4, 4)))  # fmt: skip


# ---- the Python wrappers' host-side checks on the CUDA path -------------------------------------


@pytest.fixture
def kernels_claimed(monkeypatch):
    """The wrappers' "_core has CUDA kernels" gate open, so that their host-side checks run on
    fake arrays: they must refuse before any CUDA call or allocation."""
    monkeypatch.setattr(_core, "has_cuda", True)


def _pinholes(n=2):
    k = np.tile(np.diag([500.0, 400.0, 1.0]).astype(np.float32), (n, 1, 1))
    k[:, :2, 2] = (2.5, 2.0)
    return k


@pytest.mark.parametrize(("row", "col", "value"), [(0, 1, 0.5), (1, 1, 0.0), (0, 0, np.nan),
                                                   (2, 2, 2.0)])  # fmt: skip
def test_world_points_cuda_checks_host_intrinsics_as_the_cpu_path(kernels_claimed, row, col, value):
    from monst3r_rt.geometry import world_points

    pose, k = np.tile(np.eye(4, dtype=np.float32), (2, 1, 1)), _pinholes()
    k[1, row, col] = value
    with pytest.raises(ValueError) as on_cpu:
        world_points(np.ones((2, 4, 5), np.float32), pose, k)
    with pytest.raises(ValueError) as on_gpu:
        world_points(cuda(2, 4, 5), pose, k)
    assert str(on_gpu.value) == str(on_cpu.value)
    assert str(on_gpu.value).startswith("intrinsics[1] must be [[fx, 0, cx], [0, fy, cy]")
    with pytest.raises(ValueError, match=r"intrinsics must broadcast to \(2, 3, 3\)"):
        world_points(cuda(2, 4, 5), pose, k[:, :2])


def test_other_dlpack_producers_are_named_not_imported(kernels_claimed):
    """Valid intrinsics pass the check; the upload next to a producer that is neither torch nor
    CuPy is a TypeError naming the supported libraries (not a missing-module error)."""
    from monst3r_rt._device import empty_like_shape
    from monst3r_rt.geometry import world_points

    pose = np.tile(np.eye(4, dtype=np.float32), (2, 1, 1))
    message = r"fake_dlpack\.FakeCudaArray: monst3r_rt allocates its outputs with torch or CuPy"
    with pytest.raises(TypeError, match=message):
        world_points(cuda(2, 4, 5), pose, _pinholes())
    with pytest.raises(TypeError, match=message):
        empty_like_shape(cuda(2), (3,))


@pytest.mark.parametrize(
    ("src", "dst", "weights"),
    [((4, 5, 3), (4, 6, 3), None), ((4, 5, 2), (4, 5, 2), None), ((4, 5, 3), (4, 5, 3), (4, 6)),
     ((4, 5, 3), (4, 5, 3), (21,))],
)  # fmt: skip
def test_pair_moments_cuda_checks_shapes_as_the_cpu_path(kernels_claimed, src, dst, weights):
    from monst3r_rt.geometry import pair_moments

    host = [None if s is None else np.zeros(s, np.float32) for s in (src, dst, weights)]
    with pytest.raises(ValueError) as on_cpu:
        pair_moments(*host)
    with pytest.raises(ValueError) as on_gpu:
        pair_moments(*(None if s is None else cuda(*s) for s in (src, dst, weights)))
    assert str(on_gpu.value) == str(on_cpu.value)
    named = "weights" if weights is not None else "src"
    assert str(on_gpu.value).startswith(f"pair_moments: {named} "), on_gpu.value


def lm_args(n=5, e=6, h=4, w=3, flow=False, **override):
    base = align_args(n=n, e=e, h=h, w=w, flow=flow)
    for k in ("energy", "grad_log_depth", "grad_frame", "grad_edge", "flow_stats",
              "grad_log_depth_flow", "grad_flow"):  # fmt: skip
        base.pop(k, None)
    base["static_mask"] = base.get("static_mask")
    base.update(
        csr_offsets=cuda(n + 1, dtype="int64"), csr_entries=cuda(2 * e, dtype="int64"),
        energy=cuda(1, dtype="float64"),
        frame_acc=cuda(n, _core.LM_FRAME_ACC, dtype="float64"),
        edge_acc=cuda(e, 2, _core.LM_EDGE_ACC, dtype="float64"),
    )  # fmt: skip
    if flow:
        base["flow_acc"] = cuda(e, 2, _core.LM_FLOW_ACC, dtype="float64")
    base.update(override)
    return {"arrays": {k: v for k, v in base.items() if v is not None}, "eps": 1e-3}


def lm_features_args(flow=False, incident=4, rows=None, **override):
    targets = 2 if flow else 0
    rows = rows or _core.LM_EDGE_FEATURES * incident + _core.LM_TARGET_FEATURES * targets
    override = {"x": cuda(rows, 12)} | override
    args = lm_args(flow=flow, targets=cuda(targets, dtype="int64") if flow else None, **override)
    for k in ("energy", "frame_acc", "edge_acc", "flow_acc"):
        args["arrays"].pop(k, None)
    return args | dict(frame=1, p0=0, p1=12, incident=incident)


def lm_backsub_args(n=5, e=6, h=4, w=3, **override):
    args = lm_args(n=n, e=e, h=h, w=w, dframe=cuda(n, 7, dtype="float64"),
                   dedge=cuda(e, 7, dtype="float64"), dl=cuda(n, h, w), **override)  # fmt: skip
    for k in ("energy", "frame_acc", "edge_acc"):
        args["arrays"].pop(k, None)
    return args


def test_lm_cross_features_cuda_checks_rows_and_targets():
    raises(ValueError, "x must have 16 rows (4 x incident 4 + 7 x targets 0), got 15",
           _core.lm_cross_features_cuda, **lm_features_args(rows=15))  # fmt: skip
    raises(ValueError, "x must have p1 - p0 = 12 columns, got 11", _core.lm_cross_features_cuda,
           **lm_features_args(x=cuda(16, 11)))  # fmt: skip
    args = lm_features_args(flow=True)
    args["arrays"].pop("targets")
    args["incident"] = 4
    args["arrays"]["x"] = cuda(16, 12)
    raises(ValueError, "targets must be given exactly when the flow term is on",
           _core.lm_cross_features_cuda, flow_scale=(1.0, 1.0), **args)  # fmt: skip


def test_lm_cuda_checks_its_arrays():
    raises(ValueError, "edge_acc: expected float64 on cuda:0 with shape (6,2,129), got float64 "
           "on cuda:0 with shape (6,2,128)", _core.lm_accumulate_cuda,
           **lm_args(edge_acc=cuda(6, 2, 128, dtype="float64")))  # fmt: skip
    raises(ValueError, "csr_offsets must have N+1 and csr_entries 2E entries",
           _core.lm_accumulate_cuda, **lm_args(csr_offsets=cuda(5, dtype="int64")))  # fmt: skip
    raises(ValueError, "frozen: expected uint8 on cuda:0 with shape (5,), got float32",
           _core.lm_accumulate_cuda, **lm_args(frozen=cuda(5)))  # fmt: skip
    raises(ValueError, "the flow term needs all of flow_ij", _core.lm_accumulate_cuda,
           **lm_args(flow_ij=cuda(6, 2, 4, 3)))  # fmt: skip
    raises(ValueError, "flow_acc is required with the flow term", _core.lm_accumulate_cuda,
           flow_scale=(1.0, 1.0), **lm_args(flow=True, flow_acc=None))  # fmt: skip


def test_block_sizes_are_the_cpu_kernels():
    """The exported sizes are those of the CPU outputs, and the CUDA wrapper uses them."""
    from align_problems import random_problem

    from monst3r_rt.align import cuda as align_cuda
    from monst3r_rt.align import params as P
    from monst3r_rt.align.objective import cpu_kernel, relative_poses

    data, params, flow = random_problem(seed=1, flow=True)
    geo = P.geometry(params, data.n_frames)
    f_rot, f_trans = relative_poses(data.edges, geo.rot, geo.trans)
    out = cpu_kernel(
        data,
        geo,
        dict(
            flow_ij=flow.flow_ij,
            flow_ji=flow.flow_ji,
            static_mask=flow.static,
            flow_rot=f_rot,
            flow_trans=f_trans,
        ),
    )
    assert out[2].shape[1] == _core.ALIGN_FRAME_BLOCK == align_cuda._FRAME
    assert out[3].shape[1] == _core.ALIGN_EDGE_BLOCK == align_cuda._EDGE
    assert out[6].shape[2] == _core.ALIGN_FLOW_BLOCK == align_cuda._FLOW


@pytest.mark.parametrize(
    ("entry", "args"),
    [
        ("depth_to_points_cuda", d2p_args()),
        (
            "ego_flow_cuda",
            ego_args(measured=cuda(3, 2, 4, 5), flow=cuda(3, 2, 4, 5), error=cuda(3, 4, 5)),
        ),  # fmt: skip
        ("align_energy_grad_cuda", align_args()),
        ("align_energy_grad_cuda", align_args(dtype="float64", flow=True)),
        ("pair_moments_cuda", moments_args()),
        ("pair_moments_cuda", moments_args(weights=None)),
        ("adam_step_cuda", adam_args()),
        ("adam_step_cuda", adam_args(dtype="float64")),
        ("world_points_cuda", world_args()),
        ("lm_accumulate_cuda", lm_args()),
        ("lm_accumulate_cuda", lm_args(flow=True)),
        ("lm_backsub_cuda", lm_backsub_args()),
        ("lm_cross_features_cuda", lm_features_args()),
    ],
)
def test_valid_arrays_pass_every_check(entry, args):
    """All arrays right: the checks pass and only the launch fails (no kernels or no GPU)."""
    if _core.cuda_device_count() > 0:
        pytest.skip("a GPU is present: the launch would read the fake pointers")
    with pytest.raises(RuntimeError, match=entry) as info:
        getattr(_core, entry)(**args)
    assert ("without CUDA kernels" in str(info.value)) is (not _core.has_cuda)
