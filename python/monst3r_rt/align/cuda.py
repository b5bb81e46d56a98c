"""The CUDA kernels behind :func:`objective.evaluate`: inputs resident on the GPU (torch).

The per-pixel arrays (pointmaps, weights, flows, log-depth and its gradient) live on the device;
the per-frame and per-edge quantities (a few kB) go back and forth each iteration, so the chain
rule and the optimiser's small parameters stay in NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core
from .._device import on_device
from . import params as P
from .objective import AlignData, FlowData

# Gradient-block sizes, from the compiled core (never retyped here).
_FRAME, _EDGE, _FLOW = _core.ALIGN_FRAME_BLOCK, _core.ALIGN_EDGE_BLOCK, _core.ALIGN_FLOW_BLOCK


def require_cuda(asked: str = "device='cuda'") -> Any:
    """torch with a usable GPU and ``_core`` built with CUDA, or a RuntimeError saying why not
    (starting with ``asked``, the request as the user wrote it: ``--device cuda`` on the CLI)."""
    if not _core.has_cuda:
        reason = _core.build_info()["cuda_reason"]
        raise RuntimeError(f"{asked}: monst3r_rt._core has no CUDA kernels ({reason})")
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(
            f"{asked} needs torch with CUDA: pip install 'monst3r-rt[torch]'"
        ) from exc
    if not torch.cuda.is_available() or _core.cuda_device_count() == 0:
        raise RuntimeError(f"{asked}: no usable GPU ({_core.cuda_status()['reason']})")
    return torch


class CudaKernel:
    """Callable with the signature of :func:`objective.cpu_kernel`, running the CUDA twin.

    Args:
        data: the problem; its arrays are copied to the GPU once.
        flow: flows and static masks, copied once (None: no flow term).
        device: torch device, default ``"cuda"``.
    """

    def __init__(self, data: AlignData, flow: FlowData | None = None, device: str = "cuda"):
        torch = require_cuda()
        self.torch = torch
        dev = torch.device(device)
        if dev.index is None:  # "cuda" → "cuda:<current>", so device comparisons are exact
            dev = torch.device(dev.type, torch.cuda.current_device())
        self.device = dev
        self.np_dtype = np.float64 if data.pts_i.dtype == np.float64 else np.float32
        dt = torch.float64 if self.np_dtype == np.float64 else torch.float32
        self.dt = dt  # the problem's torch dtype
        self.n, self.e = data.n_frames, len(data.edges)
        self.h, self.w = data.shape
        if self.e and (data.edges.min() < 0 or data.edges.max() >= self.n):
            raise ValueError(f"edges reference frames outside 0..{self.n - 1}")

        up = self.upload
        self.inputs = {
            "edges": up(data.edges, torch.int64),
            "pts_i": up(data.pts_i), "pts_j": up(data.pts_j),
            "w_i": up(data.w_i), "w_j": up(data.w_j), "pp": up(data.pp),
        }  # fmt: skip
        n, e, h, w = self.n, self.e, self.h, self.w
        f64 = dict(dtype=torch.float64, device=self.device)
        self.out = {  # the summed blocks are float64 (double atomics); overwritten by each call
            "energy": torch.zeros(1, **f64),
            "grad_log_depth": torch.zeros((n, h, w), dtype=dt, device=self.device),
            "grad_frame": torch.zeros((n, _FRAME), **f64),
            "grad_edge": torch.zeros((e, _EDGE), **f64),
        }
        self.flow = None
        if flow is not None:
            self.flow = {
                "flow_ij": up(flow.flow_ij), "flow_ji": up(flow.flow_ji),
                "static_mask": up(flow.static),
                "flow_stats": torch.zeros(4, **f64),
                "grad_log_depth_flow": torch.zeros((2, n, h, w), dtype=dt, device=self.device),
                "grad_flow": torch.zeros((e, 2, _FLOW), **f64),
            }  # fmt: skip
        self.dt = dt

    def upload(self, a: Any, dtype: Any = None) -> Any:
        """A host array as a contiguous tensor on this kernel's device, in ``dtype`` (default the
        problem's); a device tensor passes through unchanged (the ``_core`` entry points check
        every array's device, dtype, shape and contiguity and name the one that is wrong)."""
        if isinstance(a, self.torch.Tensor):
            return a
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device, dtype or self.dt)

    def __call__(self, data: AlignData, geo: P.Geometry, flow_args: dict[str, Any]) -> tuple:
        up = self.upload
        frames = dict(log_depth=up(geo.depth_log), rot=up(geo.rot), trans=up(geo.trans),
                      focal=up(geo.focal))  # fmt: skip
        edges = dict(edge_rot=up(geo.edge_rot), edge_trans=up(geo.edge_trans),
                     edge_scale=up(geo.edge_scale))  # fmt: skip
        flow: dict[str, Any] = {}
        if flow_args:
            if self.flow is None:
                raise ValueError("this CudaKernel was built without flows")
            rel = dict(flow_rot=up(flow_args["flow_rot"]), flow_trans=up(flow_args["flow_trans"]))
            flow = dict(self.flow, **rel, pixel_thr=float(flow_args.get("pixel_thr", 50.0)))
        o = self.out
        with on_device(o["energy"]) as stream:
            _core.align_energy_grad_cuda(**self.inputs, **frames, **edges, **o, **flow,
                                         stream=stream)  # fmt: skip
        host = {k: o[k].cpu().numpy().astype(self.np_dtype) for k in ("grad_frame", "grad_edge")}
        result = (float(o["energy"].item()), o["grad_log_depth"].clone(), host["grad_frame"],
                  host["grad_edge"])  # fmt: skip
        if not flow:
            return result
        f = self.flow
        assert f is not None
        stats = tuple(float(v) for v in f["flow_stats"].cpu().numpy())
        g_flow = f["grad_flow"].cpu().numpy().astype(self.np_dtype)
        return (*result, stats, f["grad_log_depth_flow"].clone(), g_flow)
