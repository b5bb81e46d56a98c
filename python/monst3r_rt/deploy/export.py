"""ONNX export of the pointmap network as two graphs, and their validation against PyTorch.

- ``encoder.onnx``: ``images`` (B,3,H,W) float32 in [-1, 1] → ``tokens`` (B,T,C) float32, run once
  per frame;
- ``decoder.onnx``: ``tokens1``, ``tokens2`` (B,T,C) → ``pts1`` (B,H,W,3), ``conf1`` (B,H,W),
  ``pts2`` (B,H,W,3), ``conf2`` (B,H,W), all float32, run per pair.

One graph pair per fixed H×W (portrait is its own graph, as the official demo patchifies portrait
images in their own orientation); only the batch is dynamic. Attention is the explicit MatMul →
Softmax → MatMul form (TensorRT 10.3 parses it; no ``Attention`` op). ``fp16`` / ``bf16`` graphs
have a low-precision body with FP32 LayerNorm, FP32 softmax statistics, FP32 post-processing and
FP32 inputs and outputs, so that TensorRT builds them strongly typed (spec: deployment.md).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .._version import __version__
from ..runinfo import sha256_of_files

PRECISIONS = {"fp32": "float32", "fp16": "float16"}
# bf16: ONNX Conv accepts bfloat16 only from opset 22, which the TorchScript exporter cannot write;
# a bf16 graph at opset 17 is invalid ONNX. bf16 runs through the torch backend instead.
ENCODER, DECODER, MANIFEST = "encoder.onnx", "decoder.onnx", "manifest.json"
GOLDEN = "golden_onnxrt.npz"  # fixed inputs and onnxruntime's outputs, replayed by verify-engine
# validation tolerances (issue: fp32 max relative error; fp16/bf16 mean absolute error on pts)
FP32_MAX_REL = 1e-4
LOW_MEAN_ABS = 1e-2


@dataclass
class Manifest:
    """What an engine folder holds (``manifest.json``)."""

    height: int
    width: int
    precision: str
    opset: int
    weights: str
    weights_hash: str
    tokens: list[int]  # (T, C) of the encoder output
    inputs: dict[str, list[Any]] = field(default_factory=dict)
    outputs: dict[str, list[Any]] = field(default_factory=dict)
    onnx_sha256: dict[str, str] = field(default_factory=dict)
    monst3r_rt: str = __version__
    validation: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: str) -> None:
        with open(os.path.join(folder, MANIFEST), "w") as f:
            json.dump(asdict(self), f, indent=2)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Manifest:
        path = os.path.join(os.fspath(folder), MANIFEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder}: not an engine folder (no {MANIFEST})")
        with open(path) as f:
            return cls(**json.load(f))


def file_sha256(path: str) -> str:
    """sha256 of an ONNX graph together with its external data file, when there is one."""
    return sha256_of_files(path, path + ".data")


def _graphs(net: Any, size: tuple[int, int], precision: str) -> tuple[Any, Any]:
    import torch

    dtype = getattr(torch, PRECISIONS[precision])
    body = copy.deepcopy(net).eval().set_fused_attention(False).to(dtype)
    body.to(memory_format=torch.contiguous_format)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = body

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net.encode(images.to(dtype)).float()

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = body

        def forward(self, tokens1: torch.Tensor, tokens2: torch.Tensor) -> tuple:
            return self.net.decode(tokens1.to(dtype), tokens2.to(dtype), size)

    return Encoder().eval(), Decoder().eval()


def export_onnx(
    net: Any,
    out_dir: str | os.PathLike[str],
    size: tuple[int, int],
    precision: str = "fp32",
    opset: int = 17,
    weights: str = "",
    weights_hash: str = "",
    validate: bool = True,
    overwrite: bool = False,
) -> Manifest:
    """Export ``net`` at ``size = (H, W)`` into ``out_dir`` (written atomically).

    Args:
        net: a :class:`~monst3r_rt.network.PointmapNet` (float32).
        out_dir: engine folder to create (``encoder.onnx``, ``decoder.onnx``, ``manifest.json``).
        size: ``(H, W)`` in pixels, multiples of 16.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (body precision; I/O stay FP32).
        opset: ONNX opset (17: ``LayerNormalization``, parsed by TensorRT 10.3).
        weights, weights_hash: recorded in the manifest.
        validate: compare both graphs with PyTorch through polygraphy (onnxruntime) and record the
            error table in the manifest; raises if a tolerance is exceeded.
        overwrite: replace an existing non-empty folder.

    Returns:
        the :class:`Manifest` written.
    """
    import torch

    from .._atomic import atomic_dir

    if precision == "bf16":
        raise ValueError(
            "bf16 export is not supported: ONNX Conv takes bfloat16 only from opset 22, which the "
            "TorchScript exporter cannot write (an opset-17 bf16 graph is invalid); use "
            "precision='fp16', or the torch backend in bf16"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    h, w = (int(v) for v in size)
    p = net.patch_size
    if h <= 0 or w <= 0 or h % p or w % p:
        raise ValueError(f"size {(h, w)} must be positive multiples of {p}")
    enc, dec = _graphs(net, (h, w), precision)
    images = torch.zeros(2, 3, h, w).uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        tokens = enc(images)
    t, c = int(tokens.shape[1]), int(tokens.shape[2])
    batch = {0: "batch"}
    outputs = ["pts1", "conf1", "pts2", "conf2"]
    manifest = Manifest(
        height=h, width=w, precision=precision, opset=opset, weights=weights,
        weights_hash=weights_hash, tokens=[t, c],
        inputs={"encoder": [["images", ["batch", 3, h, w], "float32"]],
                "decoder": [["tokens1", ["batch", t, c], "float32"],
                            ["tokens2", ["batch", t, c], "float32"]]},
        outputs={"encoder": [["tokens", ["batch", t, c], "float32"]],
                 "decoder": [[n, ["batch", h, w, 3] if n.startswith("pts") else ["batch", h, w],
                              "float32"] for n in outputs]},
    )  # fmt: skip
    with atomic_dir(out_dir, overwrite) as tmp:
        kw = dict(dynamo=False, opset_version=opset, do_constant_folding=True)
        with torch.inference_mode(False), torch.no_grad(), _quiet():
            torch.onnx.export(enc, (images,), os.path.join(tmp, ENCODER), input_names=["images"],
                              output_names=["tokens"],
                              dynamic_axes={"images": batch, "tokens": batch}, **kw)  # fmt: skip
            torch.onnx.export(dec, (tokens, tokens.flip(0)), os.path.join(tmp, DECODER),
                              input_names=["tokens1", "tokens2"], output_names=outputs,
                              dynamic_axes={n: batch for n in ["tokens1", "tokens2", *outputs]},
                              **kw)  # fmt: skip
        manifest.onnx_sha256 = {n: file_sha256(os.path.join(tmp, n)) for n in (ENCODER, DECODER)}
        if validate:
            manifest.validation = validate_export(net, tmp, manifest)
        manifest.save(tmp)
    return manifest


class _quiet:
    """Silence the exporter's tracer warnings (shape checks that are constants per graph)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


class _polygraphy_quiet:
    """Polygraphy logs every inference at INFO; keep warnings and errors only."""

    def __enter__(self) -> None:
        from polygraphy.logger import G_LOGGER

        self._old = G_LOGGER.module_severity
        G_LOGGER.module_severity = G_LOGGER.WARNING

    def __exit__(self, *exc: object) -> None:
        from polygraphy.logger import G_LOGGER

        G_LOGGER.module_severity = self._old


def _error_row(name: str, got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    diff = np.abs(got.astype(np.float64) - ref)
    scale = max(float(np.abs(ref).max()), 1e-12)
    return {"output": name, "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "max_rel": float(diff.max() / scale)}  # fmt: skip


def validate_export(net: Any, folder: str, manifest: Manifest, batch: int = 2) -> dict[str, Any]:
    """Run both graphs with onnxruntime through polygraphy's comparator against the float32
    PyTorch model on a fixed random input; returns the error table and raises ValueError when
    the precision's tolerance is exceeded (fp32: max relative error ≤ 1e-4 on every output;
    fp16/bf16: mean absolute error of pts ≤ 1e-2). Relative errors are against each output's
    largest magnitude."""
    import torch
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, IterationResult, RunResults, SimpleCompareFunc

    h, w = manifest.height, manifest.width
    gen = torch.Generator().manual_seed(1)
    images = torch.zeros(2 * batch, 3, h, w).uniform_(-1, 1, generator=gen)
    ref = copy.deepcopy(net).float().eval()
    with torch.inference_mode():
        tokens = ref.encode(images)
        outs = ref.decode(tokens[:batch], tokens[batch:], (h, w))
    golden = {
        ENCODER: {"tokens": tokens.numpy()},
        DECODER: dict(
            zip(["pts1", "conf1", "pts2", "conf2"], (o.numpy() for o in outs), strict=True)
        ),  # fmt: skip
    }
    feeds = {
        ENCODER: {"images": images.numpy()},
        DECODER: {"tokens1": tokens[:batch].numpy(), "tokens2": tokens[batch:].numpy()},
    }
    low = manifest.precision != "fp32"
    rows: list[dict[str, Any]] = []
    golden_ort: dict[str, np.ndarray] = {}
    ok = True
    t0 = time.perf_counter()
    for graph in (ENCODER, DECODER):
        runner = OnnxrtRunner(SessionFromOnnx(os.path.join(folder, graph),
                                              providers=["CPUExecutionProvider"]))  # fmt: skip
        with _polygraphy_quiet():
            results = Comparator.run([runner], data_loader=[feeds[graph]])
        torch_results = RunResults(
            [("pytorch-fp32", [IterationResult(outputs=golden[graph], runner_name="pytorch-fp32")])]
        )
        results.extend(torch_results)
        tol = 1e-2 if low else FP32_MAX_REL
        compare = SimpleCompareFunc(atol=tol, rtol=tol, check_error_stat="mean" if low else "max")
        with _polygraphy_quiet():
            Comparator.compare_accuracy(results, compare_func=compare)
        got = results[0][1][0]
        golden_ort.update({f"in.{k}": v for k, v in feeds[graph].items()})
        golden_ort.update({f"out.{k}": np.asarray(got[k]) for k in golden[graph]})
        for name, r in golden[graph].items():
            row = {"graph": graph, **_error_row(name, np.asarray(got[name]), r)}
            if low:
                row["pass"] = name != "pts1" and name != "pts2" or row["mean_abs"] <= LOW_MEAN_ABS
            else:
                row["pass"] = row["max_rel"] <= FP32_MAX_REL
            ok &= bool(row["pass"])
            rows.append(row)
    np.savez(os.path.join(folder, GOLDEN), **golden_ort)
    table = {"reference": "PyTorch float32", "runtime": "onnxruntime CPU (polygraphy)",
             "seconds": time.perf_counter() - t0, "rows": rows, "passed": ok}  # fmt: skip
    if not ok:
        raise ValueError(f"{folder}: exported graphs differ from PyTorch:\n{format_table(table)}")
    return table


def compare_to_golden(folder: str | os.PathLike[str], backend: Any) -> dict[str, Any]:
    """Replay the export's fixed inputs through ``backend`` (e.g. TensorRT engines) and compare
    with the onnxruntime outputs saved at export (same tolerances as the export's validation)."""
    folder = os.fspath(folder)
    manifest = Manifest.load(folder)
    with np.load(os.path.join(folder, GOLDEN)) as g:
        gold = {k: g[k] for k in g.files}
    size = (manifest.height, manifest.width)
    tokens = np.asarray(_host(backend.encode(gold["in.images"])))
    t1, t2 = (_device_like(backend, gold[f"in.{n}"]) for n in ("tokens1", "tokens2"))
    outs = backend.decode(t1, t2, size)
    got = {"tokens": tokens, **dict(zip(["pts1", "conf1", "pts2", "conf2"], outs, strict=True))}
    low = manifest.precision != "fp32"
    rows, ok = [], True
    for name, value in got.items():
        graph = ENCODER if name == "tokens" else DECODER
        row = {"graph": graph, **_error_row(name, np.asarray(value), gold[f"out.{name}"])}
        # fp32 engines may use TF32 matmuls (TensorRT's default): 10x the export tolerance
        limit = row["mean_abs"] <= LOW_MEAN_ABS if low else row["max_rel"] <= 10 * FP32_MAX_REL
        row["pass"] = limit
        ok &= bool(row["pass"])
        rows.append(row)
    return {"reference": "onnxruntime (saved at export)", "runtime": backend.name, "rows": rows,
            "passed": ok}  # fmt: skip


def _host(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _device_like(backend: Any, tokens: np.ndarray) -> Any:
    """Host tokens as the backend keeps them (torch tensors on its device, or numpy)."""
    torch_mod = getattr(backend, "torch", None)
    if torch_mod is None:
        return tokens
    device = getattr(backend, "device", "cuda")
    return torch_mod.from_numpy(tokens).to(device, getattr(backend, "dtype", torch_mod.float32))


def format_table(validation: dict[str, Any]) -> str:
    """The validation error table as text."""
    lines = [f"{'graph':<13} {'output':<7} {'max abs':>10} {'mean abs':>10} {'max rel':>10}  ok"]
    for r in validation.get("rows", []):
        mark = "yes" if r["pass"] else "NO"
        lines.append(f"{r['graph']:<13} {r['output']:<7} {r['max_abs']:>10.3e} "
                     f"{r['mean_abs']:>10.3e} {r['max_rel']:>10.3e}  {mark}")  # fmt: skip
    return "\n".join(lines)
