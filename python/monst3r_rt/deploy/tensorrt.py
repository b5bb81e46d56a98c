"""Everything that touches TensorRT, in one module, imported only when used.

Engines are built strongly typed from the exported ONNX graphs (precision lives in the graph), with
one optimisation profile in which only the batch is dynamic, and cached on disk under a key of
(TensorRT version, GPU SM, resolution, batch range, precision, ONNX hash): any change rebuilds.
Only APIs present in both TensorRT 10.3 (JetPack 6) and 11.x are used: ``STRONGLY_TYPED`` by
name (its number differs between majors), ``parse_from_file`` (finds external weights),
``set_memory_pool_limit``, ``build_serialized_network``, ``set_input_shape`` /
``set_tensor_address`` / ``execute_async_v3``. torch owns every buffer and the stream.

TensorRT cannot be installed on the machines this project is developed on (it comes from NVIDIA's
own index, or JetPack); this module is type-checked there with ``tensorrt-stubs`` and its tests
skip with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends import Backend, Outputs
from .export import DECODER, ENCODER, Manifest, file_sha256

if TYPE_CHECKING:  # pragma: no cover
    import tensorrt as trt

__all__ = [
    "import_tensorrt",
    "tensorrt_available",
    "engine_cache_key",
    "build_engines",
    "TensorRTBackend",
]


_NOT_INSTALLED = (
    "TensorRT is not installed: pip install 'monst3r-rt[trt]' (NVIDIA's index) or use JetPack's; "
    "or pick backend 'onnxruntime' / 'torch'"
)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or RuntimeError saying why not. Type stubs alone
    (``tensorrt-stubs`` makes ``import tensorrt`` succeed as an empty namespace package) do not
    count as TensorRT."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(_NOT_INSTALLED) from exc
    if not hasattr(trt, "Builder"):
        raise RuntimeError(f"{_NOT_INSTALLED} (only its type stubs were found)")
    return trt


def tensorrt_available() -> tuple[bool, str]:
    """Whether TensorRT and a CUDA GPU (through torch) are usable here, and why not."""
    try:
        import_tensorrt()
    except RuntimeError as exc:
        return False, str(exc)
    try:
        import torch
    except ImportError:
        return False, "the TensorRT backend needs torch with CUDA for its buffers and stream"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to torch"
    return True, ""


def engine_cache_key(trt_version: str, sm: str, manifest: Manifest, graph: str,
                     batch: tuple[int, int, int], onnx_hash: str) -> str:  # fmt: skip
    """A short hex key naming one engine: any component that changes gives another key."""
    parts = {"trt": trt_version, "sm": sm, "hw": [manifest.height, manifest.width],
             "precision": manifest.precision, "graph": graph, "batch": list(batch),
             "onnx": onnx_hash}  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _gpu_sm() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


def _engine_path(folder: str, graph: str, key: str) -> str:
    return os.path.join(folder, f"{graph.removesuffix('.onnx')}.{key}.engine")


def build_engines(
    folder: str | os.PathLike[str],
    workspace_gib: float = 2.0,
    max_batch: int = 16,
    timing_cache: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> dict[str, str]:
    """Build (or find in the cache) the encoder and decoder engines of an export folder.

    Args:
        folder: written by ``monst3r-rt export``.
        workspace_gib: builder workspace (keep 1–2 GiB on Jetson, whose GPU shares DRAM).
        max_batch: largest batch of the profile (min 1, opt ``max_batch // 2``).
        timing_cache: a file to read and update (speeds up rebuilds); default inside ``folder``.
        force: rebuild even when a cached engine matches.

    Returns:
        ``{graph: engine path}``.
    """
    import_tensorrt()  # the reason, when it is missing
    import tensorrt as trt  # typed by tensorrt-stubs in CI

    folder = os.fspath(folder)
    manifest = Manifest.load(folder)
    logger = trt.Logger(trt.Logger.WARNING)
    sm = _gpu_sm()
    batch = (1, max(1, max_batch // 2), max_batch)
    cache_path = os.fspath(timing_cache or os.path.join(folder, "timing.cache"))
    out = {}
    for graph in (ENCODER, DECODER):
        onnx_path = os.path.join(folder, graph)
        key = engine_cache_key(trt.__version__, sm, manifest, graph, batch, file_sha256(onnx_path))
        path = _engine_path(folder, graph, key)
        out[graph] = path
        if os.path.isfile(path) and not force:
            continue
        builder = trt.Builder(logger)
        flag = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flag)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(onnx_path):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = list(_shape(tensor.shape)[1:])  # all fixed but the batch
            shapes = [trt.Dims([b, *rest]) for b in batch]
            profile.set_shape(tensor.name, shapes[0], shapes[1], shapes[2])
        config.add_optimization_profile(profile)
        cache_bytes = b""
        if os.path.isfile(cache_path):
            with open(cache_path, "rb") as f:
                cache_bytes = f.read()
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=True)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"{onnx_path}: the TensorRT build failed (see the log above)")
        _write_atomic(path, bytes(serialized))
        _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    return out


def _shape(dims: Any) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple of ints."""
    return tuple(int(dims[k]) for k in range(len(dims)))


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.partial-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class _Engine:
    """One deserialised engine with its execution context, torch-owned static input and output
    buffers preallocated per batch size, and CUDA-graph replay: the second call with an unchanged
    batch size captures ``execute_async_v3`` into a graph that later calls replay. A call with
    another batch size changes the context's shapes, which invalidates the graph (it is captured
    again once that size repeats)."""

    def __init__(self, runtime: trt.Runtime, path: str, cuda_graphs: bool = True):
        import tensorrt as trt

        with open(path, "rb") as f:
            self.engine = runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError(f"{path}: cannot deserialise (built by another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.cuda_graphs = cuda_graphs
        self._buffers: dict[int, dict[str, Any]] = {}
        self._shape_batch = -1  # batch size the context's shapes are set for
        self._calls = 0  # consecutive calls at that batch size
        self._graph: Any = None

    def _bind(self, b: int, feeds: dict[str, Any]) -> dict[str, Any]:
        import torch

        if b not in self._buffers:
            bufs = {n: torch.empty(tuple(x.shape), dtype=x.dtype, device="cuda")
                    for n, x in feeds.items()}  # fmt: skip
            for n, x in bufs.items():
                self.context.set_input_shape(n, tuple(x.shape))
            for n in self.outputs:
                shape = _shape(self.context.get_tensor_shape(n))
                bufs[n] = torch.empty(shape, dtype=torch.float32, device="cuda")
            self._buffers[b] = bufs
            self._shape_batch = -1
        bufs = self._buffers[b]
        if self._shape_batch != b:
            for n in self.inputs:
                self.context.set_input_shape(n, tuple(bufs[n].shape))
            for n in (*self.inputs, *self.outputs):
                self.context.set_tensor_address(n, int(bufs[n].data_ptr()))
            self._shape_batch, self._calls, self._graph = b, 0, None
        return bufs

    def run(self, feeds: dict[str, Any], stream: Any) -> dict[str, Any]:
        """Enqueue one inference on ``stream``, which must be torch's current stream and must
        already wait for the work that produced ``feeds`` (see :meth:`TensorRTBackend._on_stream`).
        Returns the engine's own output buffers: copy them (on a stream that waits for
        ``stream``) before the next call overwrites them."""
        import torch

        b = int(next(iter(feeds.values())).shape[0])
        bufs = self._bind(b, feeds)
        for n, x in feeds.items():
            bufs[n].copy_(x, non_blocking=True)
        self._calls += 1
        if self._graph is not None:
            self._graph.replay()
        elif self.cuda_graphs and self._calls >= 2:  # warmed up at this shape: capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                ok = self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
            if not ok:
                raise RuntimeError("TensorRT execute_async_v3 failed during CUDA-graph capture")
            self._graph = graph
            graph.replay()
        elif not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return {n: bufs[n] for n in self.outputs}


class TensorRTBackend(Backend):
    """Engines of an export folder (built on first use, then cached) on the current CUDA device.

    Tokens stay on the GPU as torch tensors; every engine enqueue goes on the backend's own
    torch stream, which waits for the caller's current stream (where the tokens were gathered)
    and which the caller's stream then waits for (``wait_stream`` both ways, no host sync but
    the final copy to NumPy); repeated calls at one batch size replay a CUDA graph
    (``cuda_graphs=False`` to turn that off).
    """

    def __init__(self, folder: str | os.PathLike[str], max_batch: int = 16,
                 cuda_graphs: bool = True):  # fmt: skip
        ok, why = tensorrt_available()
        if not ok:
            raise RuntimeError(f"backend 'tensorrt' is not usable here: {why}")
        import tensorrt as trt
        import torch

        self.torch = torch
        self.manifest = Manifest.load(folder)
        self.image_size = (self.manifest.height, self.manifest.width)
        paths = build_engines(folder, max_batch=max_batch)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # outlives the engines
        self.encoder = _Engine(self.runtime, paths[ENCODER], cuda_graphs)
        self.decoder = _Engine(self.runtime, paths[DECODER], cuda_graphs)
        self.stream = torch.cuda.Stream()
        self.name = f"tensorrt-{_gpu_sm()}-{self.manifest.precision}"

    def _on_stream(self, engine: _Engine, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run ``engine`` on the backend's stream, ordered after the caller's stream (which
        produced ``feeds`` and may still be reading the outputs of the previous call), and make
        the caller's stream wait for it before it touches the outputs."""
        caller = self.torch.cuda.current_stream()
        self.stream.wait_stream(caller)
        with self.torch.cuda.stream(self.stream):
            out = engine.run(feeds, self.stream)
        caller.wait_stream(self.stream)
        return out

    def encode(self, images: np.ndarray) -> Any:
        self.check_size(images.shape[2:4])
        x = self.torch.as_tensor(np.ascontiguousarray(images, np.float32)).cuda()
        out = self._on_stream(self.encoder, {"images": x})
        return out["tokens"].clone()  # on the caller's stream, which now waits for the engine

    def decode(self, tokens1: Any, tokens2: Any, image_size: tuple[int, int]) -> Outputs:
        self.check_size(image_size)
        feeds = {"tokens1": tokens1.contiguous(), "tokens2": tokens2.contiguous()}
        out = self._on_stream(self.decoder, feeds)
        return tuple(out[n].cpu().numpy() for n in ("pts1", "conf1", "pts2", "conf2"))  # type: ignore[return-value]

    def cat(self, tokens: list[Any]) -> Any:
        return self.torch.cat(tokens)

    def take(self, tokens: Any, index: np.ndarray) -> Any:
        return tokens[self.torch.from_numpy(np.asarray(index, np.int64)).cuda()]
