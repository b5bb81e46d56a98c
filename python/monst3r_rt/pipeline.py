"""The main job: video → frames → encode-once pairwise inference → flow and dynamic masks →
global alignment → :class:`~monst3r_rt.reconstruction.Reconstruction`."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .align import AlignConfig, global_align
from .align.config import DEVICES, phrase
from .deploy.backends import BACKENDS, check_backend
from .reconstruction import Reconstruction
from .runinfo import describe_input, versions, weights_used
from .runinfo import weights_fingerprint as weights_fingerprint  # re-exported (public)

OFFICIAL_WEIGHTS = "Junyi42/MonST3R_PO-TA-S-W_ViTLarge_BaseDecoder_512_dpt"
SIZES = (224, 512)
FLOWS = ("dis", "raft")
MASKS = ("official", "robust")
MODES = ("offline", "feedforward")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")


@dataclass(frozen=True)
class RunPlan:
    """What :meth:`Pipeline.run` will run, decided by :meth:`Pipeline.check` before any work.

    Attributes:
        backend: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        network_device: torch device of the network (torch backend) and of RAFT.
        align_device: ``"cpu"`` or ``"cuda"``, where the global alignment runs.
    """

    backend: str
    network_device: str
    align_device: str


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
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``. ``auto`` runs the network on the GPU when
            torch sees one, and the alignment there only when its solver has a CUDA path and
            ``_core`` was built with CUDA; the run's ``meta["devices"]`` says what ran where.
        size: long side of the model resolution (512 or 224).
        graph: pair graph (:func:`~monst3r_rt.pairs.make_pairs`).
        batch_size: frames per encoder batch and pairs per decoder batch.
        align: global-alignment settings.
        flow: ``"dis"``, ``"raft"`` (needs ``flow_weights`` and torchvision), a flow callable, or
            None (no flow term, no masks).
        masks: ``"official"`` or ``"robust"`` (:func:`~monst3r_rt.masks.dynamic_masks`), computed
            from the flow; None (default): ``"official"`` when there is a flow, else no masks.
            Asking for masks with ``flow=None`` is an error.
        flow_weights: RAFT weights for ``flow="raft"``.
        engine: export folder of ``monst3r-rt export`` (for onnxruntime / tensorrt).
        precision: torch backend precision, ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        mode: ``"offline"`` (pair graph, flow, masks, global alignment) or ``"feedforward"``:
            the official real-time mode (``demo.py --real_time``), :mod:`monst3r_rt.feedforward`:
            ``oneref-mid`` pairs, no flow, no masks, no alignment, plus PnP cameras; it takes
            only the default ``graph``, ``align``, ``flow`` and no ``masks`` / ``flow_weights``.
        cli: phrase errors as ``monst3r-rt run`` options (set by the command line).
    """

    weights: str | os.PathLike[str] | None = None
    backend: str = "auto"
    device: str = "auto"
    size: int = 512
    graph: str = "swinstride-5-noncyclic"
    batch_size: int = 16
    align: AlignConfig = field(default_factory=AlignConfig)
    flow: str | Callable | None = "dis"
    masks: str | None = None
    flow_weights: str | os.PathLike[str] | None = None
    engine: str | os.PathLike[str] | None = None
    precision: str = "fp32"
    mode: str = "offline"
    cli: bool = field(default=False, repr=False)
    _net: Any = field(default=None, init=False, repr=False)
    _backend: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.check()

    def check(self, num_frames: int | None = None) -> RunPlan:
        """Validate every setting together and decide what runs where, loading nothing (no
        weights, frames, graphs or flow model). Construction and :meth:`run` call it first.

        Args:
            num_frames: :meth:`run`'s frame cap, checked too when given.

        Raises:
            ValueError for an impossible combination (the message says what to change);
            RuntimeError / ImportError / FileNotFoundError for what this machine lacks.
        """
        cli = self.cli
        self._check_values(num_frames)
        network_device = self._torch_device()
        if self.device == "cuda" and not _torch_sees_gpu():
            asked = phrase(cli, "device='cuda'", "--device cuda")
            other = phrase(cli, "device='cpu' or 'auto'", "--device cpu or --device auto")
            raise RuntimeError(f"{asked}: torch sees no CUDA GPU; use {other}")
        backend = check_backend(self.backend, has_net=True, engine_dir=self.engine,
                                device=network_device, precision=self.precision)  # fmt: skip
        self._check_weights(backend)
        self._check_engine_size(backend, cli)
        if self.mode == "feedforward":  # no alignment: the registration runs on the CPU
            return RunPlan(backend, network_device, "cpu")
        self._check_flow(cli)
        align_device = self.align.check(self.device, flow=self.flow is not None, cli=cli)
        return RunPlan(backend, network_device, align_device)

    def _check_values(self, num_frames: int | None) -> None:
        """Each setting on its own: names in their lists, sizes and counts in range."""
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; use one of {MODES}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; use one of {BACKENDS}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.masks is not None and self.masks not in MASKS:
            raise ValueError(f"masks must be one of {MASKS} or None, got {self.masks!r}")
        if isinstance(self.size, bool) or self.size not in SIZES:
            raise ValueError(
                f"size must be one of {SIZES} (long side in pixels), got {self.size!r}"
            )
        batch = self.batch_size
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch!r}")
        if num_frames is not None and num_frames < 2:
            raise ValueError(f"num_frames must be at least 2 (a pair), got {num_frames}")
        if self.mode == "feedforward":
            self._check_feedforward()
        else:
            self._check_graph(num_frames)

    def _check_feedforward(self) -> None:
        """Options that mean nothing without a pair graph, flow or alignment are refused (the
        defaults are accepted: they are what the user did not choose)."""
        from .pairs import DEFAULT_GRAPH

        cli = self.cli
        mode = phrase(cli, "mode='feedforward'", "--real-time")
        refused = []
        if self.graph not in (DEFAULT_GRAPH, "oneref-mid"):
            refused.append(phrase(cli, f"graph={self.graph!r}", f"--graph {self.graph}"))
        if self.align != AlignConfig():
            changed = [k for k, v in self.align.to_dict().items() if v != getattr(AlignConfig(), k)]
            refused.append(phrase(cli, f"align (changed: {', '.join(changed)})",
                                  " ".join(f"--{k}" for k in changed)))  # fmt: skip
        if self.flow not in ("dis", None):
            refused.append(phrase(cli, f"flow={_name(self.flow)!r}", f"--flow {self.flow}"))
        if self.masks is not None:
            refused.append(phrase(cli, f"masks={self.masks!r}", f"--masks {self.masks}"))
        if self.flow_weights is not None:
            refused.append(phrase(cli, "flow_weights", "--flow-weights"))
        if refused:
            raise ValueError(
                f"{mode} runs the official oneref-mid pairs with no flow, masks or global "
                f"alignment; drop {', '.join(refused)}"
            )

    def _check_graph(self, num_frames: int | None) -> None:
        """The pair graph's name (and its reference frame when the frame count is known)."""
        from .pairs import make_pairs

        n = num_frames or 16
        ref = str(self.graph).removeprefix("oneref-")
        if num_frames is None and ref.isdigit():
            n = max(n, int(ref) + 1)  # the reference frame's range needs the frame count
        make_pairs(n, self.graph, symmetrize=False)

    def _check_weights(self, backend: str) -> None:
        if backend != "torch" or self.weights is None:
            return
        path = os.path.expanduser(os.fspath(self.weights))
        if not os.path.exists(path) and path.endswith(_WEIGHT_SUFFIXES):
            raise FileNotFoundError(f"{path}: no such weights file")

    def _check_engine_size(self, backend: str, cli: bool) -> None:
        if backend == "torch":
            return
        from .deploy.export import Manifest

        m = Manifest.load(self.engine)  # type: ignore[arg-type]
        long_side = max(m.height, m.width)
        if long_side != self.size:
            asked = phrase(cli, f"size={self.size}", f"--size {self.size}")
            fix = phrase(cli, f"size={long_side}", f"--size {long_side}")
            raise ValueError(
                f"the engine in {self.engine} is {m.width}x{m.height} (WxH) but {asked} makes "
                f"frames with a long side of {self.size}; use {fix} or export an engine for "
                f"{self.size}"
            )

    def _check_flow(self, cli: bool) -> None:
        if self.flow is None:
            if self.masks is not None:
                masks = phrase(cli, f"masks={self.masks!r}", f"--masks {self.masks}")
                fix = phrase(cli, "set flow='dis' or masks=None", "drop --no-flow or --masks")
                raise ValueError(
                    f"{masks} needs the flow term (masks are computed from the flow): {fix}"
                )
            return
        raft = phrase(cli, "flow='raft'", "--flow raft")
        if self.flow_weights is not None and self.flow != "raft":
            weights = phrase(cli, "flow_weights", "--flow-weights")
            raise ValueError(f"{weights} applies to RAFT only: use {raft} or drop it")
        if callable(self.flow):
            return
        if self.flow not in FLOWS:
            raise ValueError(f"flow must be one of {FLOWS}, a callable or None, got {self.flow!r}")
        if self.flow == "raft":
            self._check_raft(cli, raft)

    def _check_raft(self, cli: bool, raft: str) -> None:
        dis = phrase(cli, "flow='dis'", "--flow dis")
        if self.flow_weights is None:
            weights = phrase(cli, "flow_weights=PATH", "--flow-weights PATH")
            raise ValueError(
                f"{raft} needs {weights} (a torchvision RAFT state_dict; never downloaded), "
                f"or use {dis}"
            )
        if not os.path.isfile(os.fspath(self.flow_weights)):
            raise FileNotFoundError(f"RAFT weights not found: {os.fspath(self.flow_weights)}")
        try:
            importlib.import_module("torchvision.models.optical_flow")
        except Exception as exc:  # noqa: BLE001 - missing, or built for another torch
            raise RuntimeError(
                f"RAFT needs torch and a matching torchvision ({type(exc).__name__}: {exc}); "
                f"install torchvision (pip install 'monst3r-rt[raft]') or use {dis}"
            ) from exc

    @property
    def masks_method(self) -> str:
        """The masks computed from the flow (``masks``, or ``"official"`` by default)."""
        return self.masks or "official"

    @property
    def weights_source(self) -> str:
        return OFFICIAL_WEIGHTS if self.weights is None else os.fspath(self.weights)

    def _torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        return "cuda" if _torch_sees_gpu() else "cpu"

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

    def _weights_used(self) -> tuple[str | None, str | None]:
        return weights_used(self.weights_source, self._backend)

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
                they replace the computed ones (offline mode only).
            on_stage: called with each stage's name as it starts (for a CLI's status line).

        Returns:
            a :class:`Reconstruction`; ``meta`` holds the mode, input, weights, versions, config
            and per-stage timings. In ``mode="feedforward"``: poses (middle frame = identity) and
            focals by PnP, depths = z of ``pts3d`` in each frame's camera, ``conf`` = ``conf_j``,
            no dynamic masks (all False), ``pts3d`` = each frame's ``pts_j`` (in the middle
            frame's camera), and ``save`` also writes the official per-pair files
            (:func:`~monst3r_rt.feedforward.write_realtime_files`).
        """
        from .flow import compute_flow
        from .frames import load_frames
        from .inference import infer_pairs
        from .masks import dynamic_masks as compute_masks
        from .pairs import make_pairs

        plan = self.check(num_frames=num_frames)  # every combination, before any work
        feedforward = self.mode == "feedforward"
        if feedforward and dynamic_masks is not None:
            mode = phrase(self.cli, "mode='feedforward'", "--real-time")
            raise ValueError(f"{mode} has no dynamic masks: drop dynamic_masks")
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
        if feedforward:
            from .feedforward import feedforward_pairs

            pairs = feedforward_pairs(n)
        else:
            pairs = make_pairs(n, self.graph)
        t = stage("pairs")
        preds = infer_pairs(backend, frames, pairs, self.batch_size, progress=progress)
        timings["pairs"] = time.perf_counter() - t
        if feedforward:
            asked = {"num_frames": num_frames, "stride": stride, "fps": fps}
            return self._feedforward(source, frames, preds, plan, timings, stage, asked)

        flows = masks = None
        if self.flow is not None:
            t = stage("flow")
            flows = compute_flow(frames.images, preds.edges, self.flow, weights=self.flow_weights,
                                 device=plan.network_device, progress=progress)  # fmt: skip
            timings["flow"] = time.perf_counter() - t
            if dynamic_masks is None:
                t = stage("masks")
                masks = compute_masks(preds, *flows, method=self.masks_method, num_frames=n,
                                      progress=progress)  # fmt: skip
                timings["masks"] = time.perf_counter() - t
        if dynamic_masks is not None:
            masks = np.asarray(dynamic_masks, bool)
            if masks.shape != (n, *frames.shape):
                raise ValueError(
                    f"dynamic_masks must have shape {(n, *frames.shape)}, got {masks.shape}"
                )

        t = stage("align")
        res = global_align(preds, images=frames.images, flows=flows, dynamic_masks=masks,
                           config=self.align, device=plan.align_device,
                           progress=progress)  # fmt: skip
        timings["align"] = time.perf_counter() - t
        del preds, flows

        meta = self._meta(source, plan, res.diagnostics["device"], timings, len(pairs), {
            "graph": self.graph, "flow": _name(self.flow),
            "masks": "user" if dynamic_masks is not None else (
                self.masks_method if self.flow is not None else None),
            "num_frames": num_frames, "stride": stride, "fps": fps,
            "align": self.align.to_dict(),
        })  # fmt: skip
        meta["align_diagnostics"] = res.diagnostics
        if masks is None:
            masks = np.zeros_like(res.conf, bool)
        return Reconstruction(
            frames=frames.images, depths=res.depths, poses=res.poses, intrinsics=res.intrinsics,
            conf=res.conf, dynamic_masks=masks, pts3d=res.pts3d, names=list(frames.names),
            meta=meta,
        )  # fmt: skip

    def _meta(self, source: Any, plan: RunPlan, align_device: str, timings: dict[str, float],
              pairs: int, config: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """``run.json``'s record of a run (both modes)."""
        weights, weights_hash = self._weights_used()  # hashes the weights file once
        return {
            "mode": self.mode,
            "input": describe_input(source),
            "backend": self._backend.name,
            "devices": {"network": plan.network_device, "align": align_device},
            "weights": weights,
            "weights_hash": weights_hash,
            "versions": versions(),
            "config": {
                "mode": self.mode,
                "backend": self.backend,
                "device": self._torch_device(),
                "size": self.size,
                "batch_size": self.batch_size,
                **config,
            },
            "pairs": pairs,
            "timings": timings,
        }

    def _feedforward(self, source: Any, frames: Any, preds: Any, plan: RunPlan,
                     timings: dict[str, float], stage: Callable[[str], float],
                     config: dict[str, Any]) -> Reconstruction:  # fmt: skip
        """The rest of :meth:`run` in ``mode="feedforward"``: cameras by PnP, no alignment."""
        from .feedforward import FEEDFORWARD_GRAPH, feedforward_cameras, write_realtime_files
        from .geometry import intrinsic_matrix

        t = stage("cameras")
        cams = feedforward_cameras(preds, min_conf_thr=self.align.min_conf_thr)
        timings["cameras"] = time.perf_counter() - t
        h, w = preds.image_size
        intrinsics = np.stack([intrinsic_matrix(f, (w / 2, h / 2)) for f in cams.focals])
        config = {"graph": FEEDFORWARD_GRAPH, "flow": None, "masks": None, **config}
        meta = self._meta(source, plan, "none", timings, len(preds), config)
        meta["feedforward"] = {
            "reference_frame": len(frames.images) // 2,
            "failed_frames": cams.failed,
        }
        images = frames.images
        n = len(images)  # edge j = (mid, j) for j < n (2 frames: mirrored edges follow)
        return Reconstruction(
            frames=images, depths=cams.depths, poses=cams.poses.astype(np.float32),
            intrinsics=intrinsics.astype(np.float32), conf=preds.conf_j[:n],
            dynamic_masks=np.zeros((n, h, w), bool), pts3d=preds.pts_j[:n],
            names=list(frames.names), meta=meta,
            extra_writers=[lambda d: write_realtime_files(d, preds, images)],
        )  # fmt: skip


def _torch_sees_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _name(flow: Any) -> str | None:
    return flow if flow is None or isinstance(flow, str) else getattr(flow, "__name__", "callable")
