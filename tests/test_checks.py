"""Every impossible combination is refused before any work, with a message saying what to
change; ``device="auto"`` resolves to what can run here. The refusals of a capability a solver
lacks (:data:`monst3r_rt.align.config.SOLVERS`) are tested on a crippled copy of the table, so
that they stay covered whatever the real table grants; what the real table grants must pass."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import monst3r_rt
from monst3r_rt import _core, cli
from monst3r_rt.align import AlignConfig, global_align
from monst3r_rt.align import driver as align_driver
from monst3r_rt.align.config import SOLVERS, SolverSupport, cuda_unavailable
from monst3r_rt.synthetic import make_scene

CAPABILITIES = ("flow", "windows", "cuda")
STAGE_LINE = "[monst3r-rt] "  # the CLI's status line as each stage starts


@pytest.fixture(scope="module")
def scene():
    return make_scene(n_frames=4, size=(16, 24), n_objects=0, seed=3)


@pytest.fixture
def no_align_work(monkeypatch):
    """global_align's first step (input preparation) fails the test if it is reached."""

    def forbidden(*_a, **_k):
        raise AssertionError("global_align started working before refusing the request")

    monkeypatch.setattr(align_driver, "prepare", forbidden)


@pytest.fixture
def no_stage_work(monkeypatch):
    """Every expensive stage of a run fails the test if it is reached: reading frames, loading
    weights or an engine, pairwise inference, flow, masks, alignment."""
    import monst3r_rt.deploy.backends as backends
    import monst3r_rt.flow
    import monst3r_rt.frames
    import monst3r_rt.inference
    import monst3r_rt.masks

    def forbidden(*_a, **_k):
        raise AssertionError("a stage ran before the request was refused")

    for module, name in [
        (monst3r_rt.frames, "load_frames"), (monst3r_rt.inference, "infer_pairs"),
        (monst3r_rt.flow, "compute_flow"), (monst3r_rt.masks, "dynamic_masks"),
        (backends, "select_backend"), (align_driver, "prepare"),
    ]:  # fmt: skip
        monkeypatch.setattr(module, name, forbidden)
    if importlib.util.find_spec("torch") is not None:
        import monst3r_rt.network

        monkeypatch.setattr(monst3r_rt.network, "load_model", forbidden)


@pytest.fixture
def lm_lacks_all(monkeypatch):
    """The capability table with solver 'lm' lacking the flow term, windows and CUDA (and needing
    no optional module), as a solver without them would be declared."""
    monkeypatch.setitem(SOLVERS, "lm", SolverSupport(flow=False, windows=False, cuda=False))


def _align(sc, **kw):
    return global_align(sc.edges, sc.pts_i, sc.pts_j, sc.conf_i, sc.conf_j, **kw)


# what each refusal says, as a Python argument and as a command-line option
REFUSALS = {
    "flow": ("solver='lm' does not support the flow term yet: use flows=None (Pipeline(flow=None))"
             " or solver='adam'",
             "--solver lm does not support the flow term yet: use --no-flow or --solver adam"),
    "windows": ("solver='lm' does not support windows yet: use window=None or solver='adam'",
                "--solver lm does not support windows yet: use --solver adam"),
    "cuda": ("solver='lm' has no CUDA path yet: use device='cpu' or 'auto', or solver='adam'",
             "--solver lm has no CUDA path yet: use --device cpu or --device auto, or --solver "
             "adam"),
}  # fmt: skip


def _lacking(capability: str) -> tuple[AlignConfig, dict]:
    """An LM config and ``check`` arguments that ask for ``capability``."""
    cfg = AlignConfig(solver="lm", niter=2, window=(3, 1) if capability == "windows" else None)
    return cfg, {"flow": capability == "flow", "device": "cuda" if capability == "cuda" else "cpu"}


# ---- global_align --------------------------------------------------------------------------------
@pytest.mark.parametrize("capability", CAPABILITIES)
def test_check_refuses_what_the_table_says_a_solver_lacks_in_both_wordings(
    lm_lacks_all, capability
):
    cfg, kw = _lacking(capability)
    api, flag = REFUSALS[capability]
    with pytest.raises(ValueError) as err:
        cfg.check(**kw)
    assert str(err.value) == api
    with pytest.raises(ValueError) as err:
        cfg.check(**kw, cli=True)
    assert str(err.value) == flag
    assert "=" not in flag and "--window" not in flag  # no Python argument, no such flag


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_global_align_refuses_what_the_table_says_a_solver_lacks(
    scene, no_align_work, lm_lacks_all, capability
):
    cfg, kw = _lacking(capability)
    flows = (scene.flow_ij, scene.flow_ji) if kw["flow"] else None
    with pytest.raises(ValueError) as err:
        _align(scene, config=cfg, flows=flows, device=kw["device"])
    assert str(err.value) == REFUSALS[capability][0]


def test_auto_device_avoids_a_solver_without_a_cuda_path(lm_lacks_all, monkeypatch):
    import monst3r_rt.align.config as config

    monkeypatch.setattr(config, "cuda_unavailable", lambda *_: None)  # as if CUDA could run
    assert AlignConfig(solver="lm").check("auto") == "cpu"
    assert AlignConfig(solver="adam").check("auto") == "cuda"


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_capabilities_the_table_grants_pass_the_check(solver):
    caps = SOLVERS[solver]
    cfg = AlignConfig(solver=solver, window=(4, 1) if caps.windows else None)
    if importlib.util.find_spec("scipy") is None and caps.needs:
        pytest.skip("scipy is not installed")
    assert cfg.check("cpu", flow=caps.flow) == "cpu"
    assert cfg.check("auto", flow=caps.flow) in ("cpu", "cuda")


def test_global_align_refuses_other_bad_combinations(scene, no_align_work, monkeypatch):
    with pytest.raises(ValueError, match="device must be one of"):
        _align(scene, device="gpu")
    with pytest.raises(ValueError, match="needs shared_focal=True"):
        _align(scene, config=AlignConfig(window=(3, 1), shared_focal=False))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "scipy" else
                        real(n, *a))  # fmt: skip
    with pytest.raises(ImportError, match=r"needs scipy: pip install 'monst3r-rt\[solvers\]'"):
        _align(scene, config=AlignConfig(solver="lm"))


def test_cuda_without_cuda_kernels_or_gpu_is_refused_early(scene, no_align_work, monkeypatch):
    monkeypatch.setattr(_core, "has_cuda", False)  # refused here whatever this machine has
    with pytest.raises(RuntimeError, match=r"^device='cuda': .*; use device='cpu' or 'auto'$"):
        _align(scene, device="cuda")
    with pytest.raises(RuntimeError) as err:
        AlignConfig().check("cuda", cli=True)
    message = str(err.value)
    assert message.startswith("--device cuda: monst3r_rt._core has no CUDA kernels"), message
    assert message.endswith("; use --device cpu or --device auto"), message
    assert "device='" not in message, message


def test_auto_device_resolves_to_what_can_run_and_is_reported(scene):
    expect = "cuda" if cuda_unavailable() is None else "cpu"
    res = _align(scene, device="auto", config=AlignConfig(niter=2))
    assert res.diagnostics["device"] == expect
    assert _align(scene, config=AlignConfig(niter=0)).diagnostics["device"] == "cpu"


def test_auto_with_a_cuda_torch_and_a_cpu_only_core_aligns_on_the_cpu(monkeypatch, workdir):
    """The reported failure: torch sees a GPU, ``_core`` has no CUDA kernels. ``auto`` runs the
    network on the GPU and the alignment on the CPU; an explicit ``cuda`` is refused up front."""
    torch = pytest.importorskip("torch")
    if _core.has_cuda:
        pytest.skip("this _core has CUDA kernels")
    from monst3r_rt.pipeline import Pipeline

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert AlignConfig().check("auto") == "cpu"
    _, ckpt = workdir
    plan = Pipeline(weights=ckpt, size=224, device="auto").check()
    assert (plan.backend, plan.network_device, plan.align_device) == ("torch", "cuda", "cpu")
    with pytest.raises(RuntimeError, match="_core has no CUDA kernels.*use device='cpu' or 'auto'"):
        Pipeline(weights=ckpt, size=224, device="cuda")


# ---- Pipeline ------------------------------------------------------------------------------------
def _fake_engine(folder: Path, height: int = 288, width: int = 512, precision: str = "fp32"):
    """An engine folder's manifest alone: what the checks read (no graphs)."""
    from monst3r_rt.deploy.export import Manifest

    folder.mkdir()
    Manifest(height=height, width=width, precision=precision, opset=17, weights="w",
             weights_hash="h", tokens=[10, 8]).save(str(folder))  # fmt: skip
    return folder


def _pipeline_cases(tmp: Path, ckpt: Path) -> list[tuple[dict, type, str]]:
    raft = tmp / "raft.pth"
    raft.write_bytes(b"x")
    engine = _fake_engine(tmp / "engine")
    cases = [
        ({"flow": "raft"}, ValueError, r"flow='raft' needs flow_weights=PATH"),
        ({"flow": "raft", "flow_weights": tmp / "no.pth"}, FileNotFoundError, "no.pth"),
        ({"flow": "raft", "flow_weights": raft, "_no_torchvision": True}, RuntimeError,
         r"RAFT needs torch and a matching torchvision.*monst3r-rt\[raft\]"),
        ({"flow": "dis", "flow_weights": raft}, ValueError, "flow_weights applies to RAFT only"),
        ({"flow": "farneback"}, ValueError, "flow must be one of"),
        ({"flow": None, "masks": "robust"}, ValueError, "masks='robust' needs the flow term"),
        ({"masks": "sam2"}, ValueError, "masks must be one of"),
        ({"backend": "onnxruntime"}, ValueError, "needs an engine folder"),
        ({"backend": "onnxruntime", "engine": tmp}, FileNotFoundError, "not an engine folder"),
        ({"backend": "onnxruntime", "engine": engine, "size": 224}, ValueError,
         "512x288 .* long side of 224; use size=512"),
        ({"backend": "onnxruntime", "engine": engine, "size": 512, "precision": "fp16"},
         ValueError, "precision 'fp16' applies to the torch backend"),
        ({"backend": "tvm"}, ValueError, "unknown backend"),
        ({"precision": "fp8"}, ValueError, "precision must be one of"),
        ({"size": 300}, ValueError, r"size must be one of \(224, 512\)"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"graph": "swin-0"}, ValueError, "window size must be >= 1"),
        ({"graph": "circle"}, ValueError, "unknown scene graph"),
        ({"weights": tmp / "missing.pth"}, FileNotFoundError, "missing.pth"),
        ({"device": "tpu"}, ValueError, "device must be one of"),
    ]  # fmt: skip
    from monst3r_rt.deploy.tensorrt import tensorrt_available

    if not tensorrt_available()[0]:
        cases.append(({"backend": "tensorrt", "engine": engine, "size": 512}, RuntimeError,
                      "backend 'tensorrt' is not usable here"))  # fmt: skip
    if importlib.util.find_spec("torch") is None or not __import__("torch").cuda.is_available():
        cases.append(({"device": "cuda"}, RuntimeError, "torch sees no CUDA GPU"))
    return cases


def test_pipeline_refuses_impossible_combinations_at_construction(
    workdir, tmp_path, no_stage_work, monkeypatch
):
    from monst3r_rt.pipeline import Pipeline

    _, ckpt = workdir
    for kw, error, message in _pipeline_cases(tmp_path, ckpt):
        kw = dict({"weights": ckpt, "device": "cpu", "size": 224}, **kw)
        with monkeypatch.context() as m:
            if kw.pop("_no_torchvision", False):
                m.setitem(sys.modules, "torchvision", None)  # import fails, as when missing
            with pytest.raises(error, match=message):
                Pipeline(**kw)


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_pipeline_refuses_what_the_table_says_a_solver_lacks_in_both_wordings(
    workdir, no_stage_work, lm_lacks_all, monkeypatch, capability
):
    import monst3r_rt.pipeline as pipeline

    monkeypatch.setattr(pipeline, "_torch_sees_gpu", lambda: True)  # reach the solver's refusal
    _, ckpt = workdir
    cfg, kw = _lacking(capability)
    for cli_mode, message in zip((False, True), REFUSALS[capability], strict=True):
        with pytest.raises(ValueError) as err:
            pipeline.Pipeline(weights=ckpt, size=224, align=cfg, device=kw["device"],
                              flow="dis" if kw["flow"] else None, cli=cli_mode)  # fmt: skip
        assert str(err.value) == message


def test_pipeline_run_checks_again_before_reading_frames(workdir, no_stage_work):
    """Settings changed after construction, and run's own arguments, are checked first."""
    from monst3r_rt.pipeline import Pipeline

    d, ckpt = workdir
    pipe = Pipeline(weights=ckpt, device="cpu", size=224, flow=None)
    with pytest.raises(ValueError, match="num_frames must be at least 2"):
        pipe.run(d / "clip", num_frames=1, progress=False)
    pipe.flow = "raft"
    with pytest.raises(ValueError, match="needs flow_weights"):
        pipe.run(d / "clip", progress=False)


# ---- command line --------------------------------------------------------------------------------
def _cli_env() -> dict[str, str]:
    root = str(Path(monst3r_rt.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=root if not path else os.pathsep.join([root, path]))


def _run_args(d: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(d / "clip"), "-o", str(out), "--weights", str(ckpt), "--size", "224",
            "--niter", "5", "--device", "cpu", *extra]  # fmt: skip


@pytest.mark.parametrize("capability", ["flow", "cuda"])  # the CLI has no window option
def test_cli_refuses_what_the_table_says_a_solver_lacks_early(
    workdir, tmp_path, capsys, no_stage_work, lm_lacks_all, monkeypatch, capability
):
    """``monst3r-rt run --solver lm`` asking for what the solver lacks: refused before frames,
    weights, network or flow, one line naming the fix in command-line words, nothing written."""
    import monst3r_rt.pipeline as pipeline

    monkeypatch.setattr(pipeline, "_torch_sees_gpu", lambda: True)  # reach the solver's refusal
    d, ckpt = workdir
    out = tmp_path / "out"
    extra = ["--solver", "lm"] if capability == "flow" else ["--solver", "lm", "--no-flow"]
    args = _run_args(d, ckpt, out, *extra)
    if capability == "cuda":
        args[args.index("--device") + 1] = "cuda"
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert REFUSALS[capability][1] in err, err
    assert STAGE_LINE not in err and "Traceback" not in err and "=" not in err, err
    assert not out.exists()


def _parse_output(out: Path, n: int) -> None:
    """Every trajectory format of an output folder parses to n finite poses."""
    from monst3r_rt import fileio
    from monst3r_rt.reconstruction import Reconstruction

    rec = Reconstruction.load(out)
    assert len(rec) == n and np.isfinite(rec.poses).all() and np.isfinite(rec.depths).all()
    for poses in (fileio.read_official_traj(out / "pred_traj.txt")[1],
                  fileio.read_tum(out / "trajectory_tum.txt")[1],
                  fileio.read_colmap_images(out / "colmap" / "images.txt")[1]):  # fmt: skip
        assert poses.shape == (n, 4, 4) and np.isfinite(poses).all()


@pytest.mark.skipif(not SOLVERS["lm"].flow, reason="solver 'lm' lacks the flow term")
def test_cli_lm_with_flow_end_to_end(workdir, tmp_path):
    pytest.importorskip("scipy")
    d, ckpt = workdir
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "monst3r_rt.cli", *_run_args(d, ckpt, out, "--solver", "lm", "-q")],
        capture_output=True, text=True, env=_cli_env(), timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _parse_output(out, 8)
    from monst3r_rt.reconstruction import Reconstruction

    meta = Reconstruction.load(out).meta
    assert meta["align_diagnostics"]["solver"] == "lm" and "flow" in meta["timings"]


def test_cli_lm_without_flow_runs(workdir, tmp_path, capsys):
    """What LM supports today runs through the command line, on the resolved devices."""
    pytest.importorskip("scipy")
    from monst3r_rt.reconstruction import Reconstruction

    d, ckpt = workdir
    out = tmp_path / "out"
    assert cli.main(_run_args(d, ckpt, out, "--solver", "lm", "--no-flow", "-q")) == 0
    _parse_output(out, 8)
    meta = Reconstruction.load(out).meta
    assert meta["align_diagnostics"]["solver"] == "lm" and "flow" not in meta["timings"]
    assert meta["devices"] == {"network": "cpu", "align": "cpu"}


def test_cli_refuses_impossible_combinations_early(workdir, tmp_path, capsys, no_stage_work):
    d, ckpt = workdir
    cases = [
        (["--flow", "raft"], "--flow raft needs --flow-weights PATH"),
        (["--no-flow", "--masks", "robust"], "--masks robust needs the flow term"),
        (["--no-flow", "--masks", "official"], "drop --no-flow or --masks"),
        (["--flow-weights", str(ckpt)], "--flow-weights applies to RAFT only"),
        (["--backend", "onnxruntime"], "needs an engine folder"),
        (["--num-frames", "1"], "num_frames must be at least 2"),
        (["--graph", "circle"], "unknown scene graph"),
    ]
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda: torch sees no CUDA GPU; use --device"))
    for extra, needle in cases:
        target = tmp_path / "never"
        code = cli.main(_run_args(d, ckpt, target, *extra))
        err = capsys.readouterr().err
        assert code == 2 and needle in err, (extra, err)
        assert STAGE_LINE not in err and not target.exists(), (extra, err)
