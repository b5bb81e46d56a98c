"""The main job: video → frames → encode-once pairwise inference → flow and dynamic masks →
global alignment → :class:`~monst3r_rt.reconstruction.Reconstruction`."""

from __future__ import annotations

import hashlib
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._version import __version__
from .align import AlignConfig, global_align
from .reconstruction import Reconstruction

OFFICIAL_WEIGHTS = "Junyi42/MonST3R_PO-TA-S-W_ViTLarge_BaseDecoder_512_dpt"
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_fingerprint(source: str) -> str:
    """sha256 of a local weights file (``.pth`` / ``.safetensors``, or a folder's
    ``model.safetensors``); the repo id itself for a Hub id."""
    if os.path.isdir(source):
        source = os.path.join(source, "model.safetensors")
    return f"sha256:{_sha256(source)}" if os.path.isfile(source) else source


@dataclass
class Pipeline:
    """MonST3R on a video, end to end.

    Args:
        weights: checkpoint path (official ``.pth``, Hugging Face folder or ``.safetensors``), a
            Hub repo id, or None for the official MonST3R weights through huggingface_hub's cache
            (offline with no cached copy: an error naming ``--weights PATH``).
        backend: ``"auto"`` (tensorrt > torch-cuda > onnxruntime > torch-cpu, from what is
            installed and given), ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``; the last two
            run an export folder (``engine``).
        device: ``"auto"`` (CUDA when torch sees a GPU), ``"cpu"`` or ``"cuda"``.
        size: long side of the model resolution (512 or 224).
        graph: pair graph (:func:`~monst3r_rt.pairs.make_pairs`).
        batch_size: frames per encoder batch and pairs per decoder batch.
        align: global-alignment settings.
        flow: ``"dis"``, ``"raft"`` (needs ``flow_weights``), a flow callable, or None (no flow
            term, no masks).
        masks: ``"official"`` or ``"robust"`` (:func:`~monst3r_rt.masks.dynamic_masks`).
        flow_weights: RAFT weights for ``flow="raft"``.
        engine: export folder of ``monst3r-rt export`` (for onnxruntime / tensorrt).
        precision: torch backend precision, ``"fp32"``, ``"fp16"`` or ``"bf16"``.
    """

    weights: str | os.PathLike[str] | None = None
    backend: str = "auto"
    device: str = "auto"
    size: int = 512
    graph: str = "swinstride-5-noncyclic"
    batch_size: int = 16
    align: AlignConfig = field(default_factory=AlignConfig)
    flow: str | Callable | None = "dis"
    masks: str = "official"
    flow_weights: str | os.PathLike[str] | None = None
    engine: str | os.PathLike[str] | None = None
    precision: str = "fp32"
    _net: Any = field(default=None, init=False, repr=False)
    _backend: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; use one of {BACKENDS}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.masks not in ("official", "robust"):
            raise ValueError(f"masks must be 'official' or 'robust', got {self.masks!r}")

    @property
    def weights_source(self) -> str:
        return OFFICIAL_WEIGHTS if self.weights is None else os.fspath(self.weights)

    def _torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"

    def network(self) -> Any:
        """The loaded network (loaded once, on first use)."""
        if self._net is None:
            from .network import CheckpointError, load_model

            try:
                self._net = load_model(self.weights_source, device=self._torch_device())
            except CheckpointError as exc:
                if self.weights is not None:
                    raise
                raise CheckpointError(
                    f"the official MonST3R weights ({OFFICIAL_WEIGHTS}) are not in the Hugging "
                    "Face cache and could not be downloaded; pass a local checkpoint with "
                    f"--weights PATH (Pipeline(weights=PATH)). Cause: {exc}"
                ) from exc
        return self._net

    def backend_for_run(self) -> Any:
        """The network backend this pipeline runs (chosen once; see ``backend``)."""
        from .deploy.backends import select_backend

        if self._backend is None:
            self._backend = select_backend(
                self.backend, load_net=self.network, engine_dir=self.engine,
                device=self._torch_device(), precision=self.precision,
            )  # fmt: skip
        return self._backend

    def _weights_used(self) -> tuple[str, str]:
        manifest = getattr(self._backend, "manifest", None)
        if manifest is not None:  # an exported engine: its own record of the weights
            return manifest.weights, manifest.weights_hash
        return self.weights_source, weights_fingerprint(self.weights_source)

    def run(
        self,
        source: Any,
        num_frames: int | None = None,
        stride: int = 1,
        fps: float | None = None,
        progress: bool = True,
        dynamic_masks: np.ndarray | None = None,
        on_stage: Callable[[str], None] | None = None,
    ) -> Reconstruction:
        """Reconstruct a video.

        Args:
            source: video file, folder of images, list of image paths, or RGB arrays.
            num_frames: keep at most this many frames (after ``stride`` / ``fps``).
            stride: keep every ``stride``-th frame.
            fps: resample a video to this frame rate (instead of ``stride``).
            progress: progress bars per stage (stderr).
            dynamic_masks: your own (N,H,W) bool masks at model resolution (True = moving);
                they replace the computed ones.
            on_stage: called with each stage's name as it starts (for a CLI's status line).

        Returns:
            a :class:`Reconstruction`; ``meta`` holds the input, weights, versions, config and
            per-stage timings.
        """
        from .flow import compute_flow
        from .frames import load_frames
        from .inference import infer_pairs
        from .masks import dynamic_masks as compute_masks
        from .pairs import make_pairs

        timings: dict[str, float] = {}

        def stage(name: str) -> float:
            if on_stage is not None:
                on_stage(name)
            return time.perf_counter()

        t = stage("frames")
        frames = load_frames(source, size=self.size, num_frames=num_frames, stride=stride, fps=fps)
        n = len(frames)
        if n < 2:
            raise ValueError(f"{source}: need at least 2 frames, got {n}")
        timings["frames"] = time.perf_counter() - t

        t = stage("network")
        backend = self.backend_for_run()
        timings["load_weights"] = time.perf_counter() - t
        pairs = make_pairs(n, self.graph)
        t = stage("pairs")
        preds = infer_pairs(backend, frames, pairs, self.batch_size, progress=progress)
        timings["pairs"] = time.perf_counter() - t

        flows = masks = None
        if self.flow is not None:
            t = stage("flow")
            flows = compute_flow(frames.images, preds.edges, self.flow, weights=self.flow_weights,
                                 device=self._torch_device(), progress=progress)  # fmt: skip
            timings["flow"] = time.perf_counter() - t
            if dynamic_masks is None:
                t = stage("masks")
                masks = compute_masks(preds, *flows, method=self.masks, num_frames=n,
                                      progress=progress)  # fmt: skip
                timings["masks"] = time.perf_counter() - t
        if dynamic_masks is not None:
            masks = np.asarray(dynamic_masks, bool)
            if masks.shape != (n, *frames.shape):
                raise ValueError(
                    f"dynamic_masks must have shape {(n, *frames.shape)}, got {masks.shape}"
                )

        t = stage("align")
        align_device = "cuda" if self._torch_device() == "cuda" else "cpu"
        res = global_align(preds, images=frames.images, flows=flows, dynamic_masks=masks,
                           config=self.align, device=align_device, progress=progress)  # fmt: skip
        timings["align"] = time.perf_counter() - t
        del preds, flows

        weights, weights_hash = self._weights_used()  # hashes the weights file once
        meta = {
            "input": str(source) if not isinstance(source, np.ndarray) else "array",
            "backend": backend.name,
            "weights": weights,
            "weights_hash": weights_hash,
            "versions": _versions(),
            "config": {
                "backend": self.backend, "device": self._torch_device(), "size": self.size,
                "graph": self.graph, "batch_size": self.batch_size, "flow": _name(self.flow),
                "masks": self.masks if dynamic_masks is None else "user",
                "num_frames": num_frames, "stride": stride, "fps": fps,
                "align": self.align.to_dict(),
            },
            "pairs": len(pairs),
            "timings": timings,
            "align_diagnostics": res.diagnostics,
        }  # fmt: skip
        if masks is None:
            masks = np.zeros_like(res.conf, bool)
        return Reconstruction(
            frames=frames.images, depths=res.depths, poses=res.poses, intrinsics=res.intrinsics,
            conf=res.conf, dynamic_masks=masks, pts3d=res.pts3d, names=list(frames.names),
            meta=meta,
        )  # fmt: skip


def _name(flow: Any) -> str | None:
    return flow if flow is None or isinstance(flow, str) else getattr(flow, "__name__", "callable")


def _versions() -> dict[str, str]:
    import cv2

    out = {"monst3r_rt": __version__, "python": platform.python_version(),
           "numpy": np.__version__, "opencv": cv2.__version__}  # fmt: skip
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:
        pass
    return out
