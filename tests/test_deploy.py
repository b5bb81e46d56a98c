"""Deployment on a tiny network: ONNX graphs vs PyTorch (landscape, portrait, fp16), encoder +
decoder == the full model, the backends behind infer_pairs, engine cache keys, TensorRT skips."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("polygraphy")

from tiny_models import TINY_DPT  # noqa: E402

from monst3r_rt import cli, make_pairs  # noqa: E402
from monst3r_rt.deploy.backends import OnnxRuntimeBackend, TorchBackend, select_backend  # noqa: E402
from monst3r_rt.deploy.export import GOLDEN, Manifest, compare_to_golden, export_onnx  # noqa: E402
from monst3r_rt.deploy.tensorrt import engine_cache_key, tensorrt_available  # noqa: E402
from monst3r_rt.frames import load_frames  # noqa: E402
from monst3r_rt.inference import infer_pairs  # noqa: E402
from monst3r_rt.network import PointmapNet, save_checkpoint  # noqa: E402

H, W = 48, 80


@pytest.fixture(scope="module")
def net() -> PointmapNet:
    torch.manual_seed(0)
    return PointmapNet(**TINY_DPT).eval()


@pytest.fixture(scope="module")
def fp32_dir(net, tmp_path_factory):
    out = tmp_path_factory.mktemp("eng") / "fp32"
    export_onnx(net, out, (H, W), precision="fp32", weights="tiny", weights_hash="sha256:x")
    return out


def _images(n: int, h: int = H, w: int = W, seed: int = 3) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.zeros(n, 3, h, w).uniform_(-1, 1, generator=g).numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_export_writes_graphs_manifest_and_passes_validation(fp32_dir):
    assert sorted(os.listdir(fp32_dir)) == sorted(
        ["encoder.onnx", "decoder.onnx", "manifest.json", GOLDEN]
    )
    m = Manifest.load(fp32_dir)
    assert (m.height, m.width, m.precision, m.opset) == (H, W, "fp32", 17)
    assert m.tokens == [(H // 16) * (W // 16), TINY_DPT["enc_embed_dim"]]
    assert m.validation["passed"] and all(r["max_rel"] <= 1e-4 for r in m.validation["rows"])
    assert set(m.onnx_sha256) == {"encoder.onnx", "decoder.onnx"}
    json.dumps(m.validation)  # the error table is JSON


def test_onnx_encoder_plus_decoder_equals_the_full_model(net, fp32_dir):
    ort = OnnxRuntimeBackend(fp32_dir)
    img = _images(6)
    tokens = ort.encode(img)
    got = ort.decode(tokens[:3], tokens[3:], (H, W))  # a batch size not seen at export
    with torch.inference_mode():
        want = net(torch.from_numpy(img[:3]), torch.from_numpy(img[3:]))
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w.numpy()) < 1e-4


def test_portrait_export_matches_pytorch_portrait(net, tmp_path):
    out = tmp_path / "portrait"
    m = export_onnx(net, out, (W, H))  # 80x48 (H x W): portrait, patchified as is
    assert m.validation["passed"]
    ort = OnnxRuntimeBackend(out)
    img = _images(2, W, H)
    tok = ort.encode(img)
    got = ort.decode(tok[:1], tok[1:], (W, H))
    with torch.inference_mode():
        want = net(torch.from_numpy(img[:1]), torch.from_numpy(img[1:]))
    assert got[0].shape == (1, W, H, 3)
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w.numpy()) < 1e-4


def test_fp16_export_within_tolerance(net, tmp_path):
    m = export_onnx(net, tmp_path / "fp16", (H, W), precision="fp16")
    rows = {(r["graph"], r["output"]): r for r in m.validation["rows"]}
    assert rows[("decoder.onnx", "pts1")]["mean_abs"] <= 1e-2
    assert rows[("decoder.onnx", "pts2")]["mean_abs"] <= 1e-2
    # the graph really is half precision inside, with FP32 inputs and outputs
    import onnx

    graph = onnx.load(str(tmp_path / "fp16" / "encoder.onnx"), load_external_data=False).graph
    half = onnx.TensorProto.FLOAT16
    assert any(t.data_type == half for t in graph.initializer)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(n.op_type == "LayerNormalization" for n in graph.node)


def test_export_bad_requests(net, tmp_path):
    with pytest.raises(ValueError, match="bf16 export is not supported"):
        export_onnx(net, tmp_path / "b", (H, W), precision="bf16")
    with pytest.raises(ValueError, match="multiples of 16"):
        export_onnx(net, tmp_path / "b", (50, W))
    assert not (tmp_path / "b").exists()


def test_infer_pairs_through_onnxruntime_equals_torch(net, fp32_dir):
    frames = _images(5)
    pairs = make_pairs(5, "swin-2")
    want = infer_pairs(net, frames, pairs, batch_size=4, progress=False)
    got = infer_pairs(OnnxRuntimeBackend(fp32_dir), frames, pairs, batch_size=3, progress=False)
    for name in ("pts_i", "pts_j", "conf_i", "conf_j"):
        assert _rel(getattr(got, name), getattr(want, name)) < 1e-4
    with pytest.raises(ValueError, match="built for 48x80"):
        infer_pairs(OnnxRuntimeBackend(fp32_dir), _images(2, 64, 64), [(0, 1)], progress=False)


def test_torch_backend_half_precision_is_close(net):
    frames = _images(3)
    want = infer_pairs(net, frames, [(0, 1), (1, 2)], progress=False)
    half = TorchBackend(PointmapNet(**TINY_DPT).eval(), precision="bf16")
    half.net.load_state_dict(net.state_dict())
    got = infer_pairs(half, frames, [(0, 1), (1, 2)], progress=False)
    assert np.abs(got.pts_i - want.pts_i).mean() < 5e-2 * np.abs(want.pts_i).mean()


def _pytorch_on_golden_inputs(net, gold) -> dict[str, np.ndarray]:
    """The float32 PyTorch model on the golden file's inputs, computed here (not by export)."""
    with torch.inference_mode():
        tokens = net.encode(torch.from_numpy(gold["in.images"]))
        t1, t2 = (torch.from_numpy(gold[f"in.{n}"]) for n in ("tokens1", "tokens2"))
        outs = net.decode(t1, t2, (H, W))
    names = ["tokens", "pts1", "conf1", "pts2", "conf2"]
    return dict(zip(names, (t.numpy() for t in (tokens, *outs)), strict=True))


def test_golden_file_holds_pytorch_outputs(net, fp32_dir):
    """golden_onnxrt.npz: its inputs are what the export fed (the decoder's tokens are PyTorch's
    encoding of its images), and its onnxruntime outputs agree with PyTorch computed here, so a
    replay that matches the file matches the model."""
    with np.load(fp32_dir / GOLDEN) as g:
        gold = {k: g[k] for k in g.files}
    want = _pytorch_on_golden_inputs(net, gold)
    b = len(gold["in.tokens1"])
    enc = np.concatenate([gold["in.tokens1"], gold["in.tokens2"]])
    assert len(gold["in.images"]) == 2 * b and _rel(enc, want["tokens"]) < 1e-6
    for name, ref in want.items():
        assert gold[f"out.{name}"].shape == ref.shape, name
        assert _rel(gold[f"out.{name}"], ref) < 1e-4, name


def test_golden_replay_through_a_backend(net, fp32_dir, tmp_path):
    """verify-engine's replay with onnxruntime and torch standing in for TensorRT: the table
    passes, and each backend's outputs on the golden inputs agree with PyTorch computed here;
    a golden file that disagrees with the model fails the replay."""
    with np.load(fp32_dir / GOLDEN) as g:
        gold = {k: g[k] for k in g.files}
    want = _pytorch_on_golden_inputs(net, gold)
    for backend in (OnnxRuntimeBackend(fp32_dir), TorchBackend(net)):
        table = compare_to_golden(fp32_dir, backend)
        assert table["passed"] and len(table["rows"]) == 5, table
        got = {"tokens": np.asarray(backend.encode(gold["in.images"]))}
        t1, t2 = (gold[f"in.{n}"] for n in ("tokens1", "tokens2"))
        if isinstance(backend, TorchBackend):
            t1, t2 = torch.from_numpy(t1), torch.from_numpy(t2)
        outs = backend.decode(t1, t2, (H, W))
        got.update(zip(["pts1", "conf1", "pts2", "conf2"], outs, strict=True))
        for name, ref in want.items():
            assert _rel(np.asarray(got[name]), ref) < 1e-4, (backend.name, name)
    # a wrong golden file (1 % off on pts1) is caught, against the tolerance of the replay
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in os.listdir(fp32_dir):
        if f != GOLDEN:
            shutil.copy(fp32_dir / f, bad / f)
    np.savez(bad / GOLDEN, **dict(gold, **{"out.pts1": gold["out.pts1"] * 1.01}))
    table = compare_to_golden(bad, OnnxRuntimeBackend(bad))
    failed = [r["output"] for r in table["rows"] if not r["pass"]]
    assert not table["passed"] and failed == ["pts1"], table


def test_select_backend(net, fp32_dir):
    assert select_backend("auto", net=net).name == "torch-cpu-fp32"
    ok, _ = tensorrt_available()
    if not ok:
        assert select_backend("auto", engine_dir=fp32_dir).name.startswith("onnxruntime-cpu")
    with pytest.raises(ValueError, match="needs an engine folder"):
        select_backend("onnxruntime", net=net)
    with pytest.raises(ValueError, match="unknown backend"):
        select_backend("tvm", net=net, engine_dir=fp32_dir)


def test_engine_cache_key_changes_with_every_component(fp32_dir):
    m = Manifest.load(fp32_dir)
    base = ("10.3.0", "sm_87", m, "decoder.onnx", (1, 8, 16), "abc")
    key = engine_cache_key(*base)
    assert key == engine_cache_key(*base)
    variants = [
        ("10.16.0", *base[1:]),
        (base[0], "sm_90", *base[2:]),
        (*base[:2], replace(m, height=64), *base[3:]),
        (*base[:2], replace(m, precision="fp16"), *base[3:]),
        (*base[:3], "encoder.onnx", *base[4:]),
        (*base[:4], (1, 8, 32), base[5]),
        (*base[:5], "abd"),
    ]
    assert len({engine_cache_key(*v) for v in variants} | {key}) == len(variants) + 1


def test_tensorrt_backend_and_cli(fp32_dir, capsys):
    ok, reason = tensorrt_available()
    if ok:
        pytest.skip("TensorRT is available: the GPU smoke test is test_tensorrt_engines_match")
    from monst3r_rt.deploy.tensorrt import TensorRTBackend

    with pytest.raises(RuntimeError, match="not usable here"):
        TensorRTBackend(fp32_dir)
    assert cli.main(["verify-engine", str(fp32_dir)]) == 2
    assert "tensorrt" in capsys.readouterr().err.lower()


def test_tensorrt_streams_meet_with_wait_stream():
    """Without a GPU: the order in which encode / decode touch the streams, with a recording
    stand-in for torch.cuda. The engine runs on the backend's stream only after that stream
    waits for the caller's (where the tokens were gathered: the race of the review), and the
    caller's stream waits for the engine before it reads the outputs (clone / copy to host)."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from monst3r_rt.deploy.tensorrt import TensorRTBackend

    log: list[tuple[str, ...]] = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_stream(self, other):
            log.append((self.name, "waits for", other.name))

    caller, own = Stream("caller"), Stream("backend")

    @contextmanager
    def on(stream):
        log.append(("enter", stream.name))
        yield
        log.append(("leave", stream.name))

    class Buffer:  # an engine output: reads are logged with the stream they run on
        def __init__(self, name):
            self.name = name

        def clone(self):
            log.append(("clone", self.name))
            return self

        def cpu(self):
            log.append(("to host", self.name))
            return SimpleNamespace(numpy=lambda: np.zeros(1))

    class Engine:
        def __init__(self, outputs):
            self.outputs = outputs

        def run(self, feeds, stream):
            log.append(("run", stream.name, *sorted(feeds)))
            return {n: Buffer(n) for n in self.outputs}

    def as_tensor(a):  # the H2D copy, on the caller's stream
        return SimpleNamespace(cuda=lambda: (log.append(("to device",)), a)[1])

    cuda = SimpleNamespace(current_stream=lambda: caller, stream=on)
    backend = object.__new__(TensorRTBackend)
    backend.torch = SimpleNamespace(cuda=cuda, as_tensor=as_tensor)
    backend.stream, backend.image_size = own, (H, W)
    backend.encoder = Engine(["tokens"])
    backend.decoder = Engine(["pts1", "conf1", "pts2", "conf2"])
    tokens = torch.zeros(2, 3)
    backend.decode(tokens, tokens, (H, W))
    assert log[:5] == [("backend", "waits for", "caller"), ("enter", "backend"),
                       ("run", "backend", "tokens1", "tokens2"), ("leave", "backend"),
                       ("caller", "waits for", "backend")]  # fmt: skip
    assert [e[0] for e in log[5:]] == ["to host"] * 4
    log.clear()
    backend.encode(np.zeros((1, 3, H, W), np.float32))
    assert log == [("to device",), ("backend", "waits for", "caller"), ("enter", "backend"),
                   ("run", "backend", "images"), ("leave", "backend"),
                   ("caller", "waits for", "backend"), ("clone", "tokens")]  # fmt: skip


def test_tensorrt_engines_match(fp32_dir):
    ok, reason = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT engines cannot be built here: {reason}")
    from monst3r_rt.deploy.tensorrt import TensorRTBackend

    table = compare_to_golden(fp32_dir, TensorRTBackend(fp32_dir))
    assert table["passed"], table


def test_cli_export(net, tmp_path, capsys):
    ckpt = save_checkpoint(net, tmp_path / "tiny.pth")
    out = tmp_path / "engines" / "x"
    args = ["export", "--weights", str(ckpt), "--size", f"{W}x{H}", "-o", str(out)]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "max rel" in text and f"exported {W}x{H} fp32" in text
    assert cli.main(args) == 2  # existing folder refused
    with pytest.raises(SystemExit):  # argparse: "size must be WxH"
        cli.main(["export", "--weights", str(ckpt), "--size", "80", "-o", str(out)])
    assert "size must be WxH" in capsys.readouterr().err


def test_pipeline_runs_an_onnxruntime_engine(tmp_path):
    from tiny_models import TINY_LINEAR

    from monst3r_rt.align import AlignConfig
    from monst3r_rt.pipeline import Pipeline
    from monst3r_rt.synthetic import make_scene

    torch.manual_seed(1)
    ckpt = save_checkpoint(PointmapNet(**TINY_LINEAR), tmp_path / "lin.pth")
    assert cli.main(["export", "--weights", str(ckpt), "--size", "224x224",
                     "-o", str(tmp_path / "eng")]) == 0  # fmt: skip
    clip = make_scene(n_frames=4, size=(60, 80), seed=0).images
    cfg = AlignConfig(niter=5)
    common = dict(device="cpu", size=224, graph="swin-2", align=cfg, flow=None)
    ref = Pipeline(weights=ckpt, backend="torch", **common)
    ort = Pipeline(backend="onnxruntime", engine=tmp_path / "eng", **common)
    # the pipelines' backends give the same pairwise predictions (random weights make the
    # aligned geometry chaotic, so that is where to compare)
    frames = load_frames(clip, size=224)
    pairs = make_pairs(len(frames), "swin-2")
    want = infer_pairs(ref.backend_for_run(), frames, pairs, progress=False)
    got = infer_pairs(ort.backend_for_run(), frames, pairs, progress=False)
    for name in ("pts_i", "pts_j", "conf_i", "conf_j"):
        assert _rel(getattr(got, name), getattr(want, name)) < 1e-4
    rec = ort.run(clip, progress=False)
    assert rec.depths.shape == (4, 224, 224) and np.isfinite(rec.depths).all()
    assert rec.meta["backend"] == "onnxruntime-cpu-fp32"
    assert rec.meta["weights_hash"] == ref._weights_used()[1]  # recorded by the export
