"""One interface for every way of running the network: ``encode`` once per frame, ``decode`` per
pair. :func:`~monst3r_rt.inference.infer_pairs` and the Pipeline go through it.

- :class:`TorchBackend`: the PyTorch model (CPU or CUDA; fp32, fp16, bf16), tokens stay on the
  device as torch tensors;
- :class:`OnnxRuntimeBackend`: an exported engine folder (``encoder.onnx`` + ``decoder.onnx``) in
  onnxruntime (CPU; the CUDA / TensorRT execution providers when onnxruntime has them);
- TensorRT engines: see :mod:`monst3r_rt.deploy.tensorrt` (imported only when used).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .export import DECODER, ENCODER, Manifest

__all__ = [
    "Backend", "TorchBackend", "OnnxRuntimeBackend", "check_backend", "select_backend",
    "as_backend",
]  # fmt: skip

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class Backend:
    """``encode(images) -> tokens`` and ``decode(tokens_i, tokens_j) -> (pts1, conf1, pts2,
    conf2)``; tokens are whatever the backend keeps on its device, outputs are float32 numpy.

    Attributes:
        name: e.g. ``"torch-cpu-fp32"``, ``"onnxruntime-cpu"``.
        image_size: the ``(H, W)`` a fixed-shape backend was built for, or None (any size).
    """

    name = "backend"
    image_size: tuple[int, int] | None = None

    def encode(self, images: np.ndarray) -> Any:
        """(B,3,H,W) float32 in [-1, 1] → tokens (B,T,C)."""
        raise NotImplementedError

    def decode(self, tokens1: Any, tokens2: Any, image_size: tuple[int, int]) -> Outputs:
        """Pairs of tokens → ``pts1`` (B,H,W,3), ``conf1`` (B,H,W), ``pts2`` (B,H,W,3) in view
        1's camera frame, ``conf2`` (B,H,W), float32 numpy."""
        raise NotImplementedError

    def cat(self, tokens: list[Any]) -> Any:
        """Concatenate token batches along the batch axis."""
        return np.concatenate(tokens)

    def take(self, tokens: Any, index: np.ndarray) -> Any:
        """Rows ``index`` of a token batch."""
        return tokens[index]

    def check_size(self, image_size: tuple[int, int]) -> None:
        if self.image_size is not None and tuple(image_size) != tuple(self.image_size):
            raise ValueError(
                f"backend {self.name} was built for {self.image_size[0]}x{self.image_size[1]} "
                f"(H x W) but the frames are {image_size[0]}x{image_size[1]}; export an engine "
                "for this resolution (monst3r-rt export --size WxH)"
            )


class TorchBackend(Backend):
    """The PyTorch network.

    Args:
        net: a :class:`~monst3r_rt.network.PointmapNet`.
        device: torch device.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (the post-processing stays float32).
    """

    def __init__(self, net: Any, device: str = "cpu", precision: str = "fp32"):
        import torch

        dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        if precision not in dtypes:
            raise ValueError(f"precision must be one of {sorted(dtypes)}, got {precision!r}")
        self.torch = torch
        self.device = torch.device(device)
        self.dtype = dtypes[precision]
        self.net = net.to(self.device, self.dtype).eval()
        self.name = f"torch-{self.device.type}-{precision}"

    def encode(self, images: np.ndarray) -> Any:
        x = self.torch.as_tensor(np.ascontiguousarray(images)).to(self.device, self.dtype)
        with self.torch.inference_mode():
            return self.net.encode(x)

    def decode(self, tokens1: Any, tokens2: Any, image_size: tuple[int, int]) -> Outputs:
        with self.torch.inference_mode():
            res = self.net.decode(tokens1, tokens2, image_size)
        return tuple(t.float().cpu().numpy() for t in res)  # type: ignore[return-value]

    def cat(self, tokens: list[Any]) -> Any:
        return self.torch.cat(tokens)

    def take(self, tokens: Any, index: np.ndarray) -> Any:
        return tokens[self.torch.from_numpy(np.asarray(index, np.int64)).to(self.device)]


class OnnxRuntimeBackend(Backend):
    """An engine folder written by ``monst3r-rt export`` run in onnxruntime.

    Args:
        folder: ``encoder.onnx``, ``decoder.onnx``, ``manifest.json``.
        providers: onnxruntime execution providers in order of preference; default: TensorRT and
            CUDA when this onnxruntime has them, then CPU.
        threads: intra-op threads (0: onnxruntime's default).
    """

    def __init__(self, folder: str | os.PathLike[str], providers: list[str] | None = None,
                 threads: int = 0):  # fmt: skip
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeError(
                "backend 'onnxruntime' needs: pip install 'monst3r-rt[onnx]'"
            ) from exc
        folder = os.fspath(folder)
        self.manifest = Manifest.load(folder)
        self.image_size = (self.manifest.height, self.manifest.width)
        available = ort.get_available_providers()
        if providers is None:
            wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
            providers = [p for p in wanted if p in available]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.sessions = {
            g: ort.InferenceSession(os.path.join(folder, g), opts, providers=providers)
            for g in (ENCODER, DECODER)
        }
        used = self.sessions[ENCODER].get_providers()[0]
        self.name = f"onnxruntime-{used.replace('ExecutionProvider', '').lower()}-"
        self.name += self.manifest.precision

    def encode(self, images: np.ndarray) -> np.ndarray:
        self.check_size(images.shape[2:4])
        feed = {"images": np.ascontiguousarray(images, np.float32)}
        return self.sessions[ENCODER].run(["tokens"], feed)[0]

    def decode(self, tokens1: Any, tokens2: Any, image_size: tuple[int, int]) -> Outputs:
        self.check_size(image_size)
        feed = {"tokens1": np.ascontiguousarray(tokens1), "tokens2": np.ascontiguousarray(tokens2)}
        out = self.sessions[DECODER].run(["pts1", "conf1", "pts2", "conf2"], feed)
        return tuple(out)  # type: ignore[return-value]


def as_backend(net: Any, device: str = "cpu") -> Backend:
    """A :class:`Backend` as is, or a PointmapNet wrapped in a float32 :class:`TorchBackend`."""
    if isinstance(net, Backend):
        return net
    return TorchBackend(net, device=device, precision="fp32")


BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")


def check_backend(
    kind: str = "auto",
    *,
    has_net: bool = True,
    engine_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> str:
    """Resolve and validate a backend choice without loading anything (no weights, no graphs).

    ``auto``: tensorrt (an engine folder, TensorRT and a GPU) > torch-cuda > onnxruntime (an
    engine folder) > torch-cpu.

    Args:
        kind: ``"auto"``, ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        has_net: whether PyTorch weights are available (``backend="torch"``).
        engine_dir: an exported engine folder (for ``onnxruntime`` / ``tensorrt``).
        device: torch device of ``torch``.
        precision: ``torch``'s precision; an engine's is fixed at export, so another value than
            the default ``fp32`` must match the engine's.

    Returns:
        the backend kind that will run.

    Raises:
        ValueError: an impossible combination (the message says what to change);
        FileNotFoundError: ``engine_dir`` is not an engine folder; RuntimeError: the runtime
        (onnxruntime, TensorRT) is missing here.
    """
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}: use auto, torch, onnxruntime or tensorrt")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if kind == "auto":
        from .tensorrt import tensorrt_available

        if engine_dir is not None and tensorrt_available()[0]:
            kind = "tensorrt"
        elif engine_dir is None or (device == "cuda" and has_net):
            kind = "torch"
        else:
            kind = "onnxruntime"
    if kind == "torch":
        if not has_net:
            raise ValueError("backend 'torch' needs the network (weights)")
        return kind
    if engine_dir is None:
        raise ValueError(f"backend {kind!r} needs an engine folder (monst3r-rt export)")
    manifest = Manifest.load(engine_dir)
    if precision not in ("fp32", manifest.precision):
        raise ValueError(
            f"precision {precision!r} applies to the torch backend; the engine in {engine_dir} "
            f"is {manifest.precision} (set at export: monst3r-rt export --precision)"
        )
    if kind == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        raise RuntimeError("backend 'onnxruntime' needs: pip install 'monst3r-rt[onnx]'")
    if kind == "tensorrt":
        from .tensorrt import tensorrt_available

        ok, reason = tensorrt_available()
        if not ok:
            raise RuntimeError(f"backend 'tensorrt' is not usable here: {reason}")
    return kind


def select_backend(
    kind: str = "auto",
    *,
    net: Any = None,
    load_net: Callable[[], Any] | None = None,
    engine_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> Backend:
    """Pick a backend (:func:`check_backend` decides which, then it is built).

    Args:
        kind: ``"auto"``, ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        net: the PyTorch network, or ``load_net`` to load it only if torch is chosen.
        engine_dir: an exported engine folder (for ``onnxruntime`` / ``tensorrt``).
        device: torch device for ``torch``.
        precision: for ``torch``.
    """
    has_net = net is not None or load_net is not None
    kind = check_backend(kind, has_net=has_net, engine_dir=engine_dir, device=device,
                         precision=precision)  # fmt: skip
    if kind == "torch":
        model = net if net is not None else load_net()  # type: ignore[misc]
        return TorchBackend(model, device=device, precision=precision)
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(engine_dir)  # type: ignore[arg-type]
    from .tensorrt import TensorRTBackend

    return TensorRTBackend(engine_dir)  # type: ignore[arg-type]
