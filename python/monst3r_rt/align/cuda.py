"""The CUDA kernels behind :func:`objective.evaluate`: inputs resident on the GPU (torch).

The per-pixel arrays (pointmaps, weights, flows, log-depth and its gradient) live on the device;
the per-frame and per-edge quantities (a few kB) go back and forth each iteration, so the chain
rule and the optimiser's small parameters stay in NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core
from . import params as P
from .objective import AlignData, FlowData

_FRAME, _EDGE, _FLOW = 13, 13, 14


def require_cuda() -> Any:
    """torch with a usable GPU and ``_core`` built with CUDA, or a RuntimeError saying why not."""
    if not _core.has_cuda:
        reason = _core.build_info()["cuda_reason"]
        raise RuntimeError(f"device='cuda': monst3r_rt._core has no CUDA kernels ({reason})")
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(
            "device='cuda' needs torch with CUDA: pip install 'monst3r-rt[torch]'"
        ) from exc
    if not torch.cuda.is_available() or _core.cuda_device_count() == 0:
        raise RuntimeError(f"device='cuda': no usable GPU ({_core.cuda_status()['reason']})")
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
        self.device = torch.device(device)
        dt = torch.float64 if data.pts_i.dtype == np.float64 else torch.float32
        self.dtype_name = "float64" if dt == torch.float64 else "float32"

        def up(a: np.ndarray, dtype: Any = dt) -> Any:
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, dtype)

        self.n, self.e = data.n_frames, len(data.edges)
        self.h, self.w = data.shape
        self.inputs = {
            "edges": up(data.edges, torch.int64),
            "pts_i": up(data.pts_i), "pts_j": up(data.pts_j),
            "w_i": up(data.w_i), "w_j": up(data.w_j), "pp": up(data.pp),
        }  # fmt: skip
        n, e, h, w = self.n, self.e, self.h, self.w
        self.out = {
            "energy": torch.zeros(1, dtype=torch.float64, device=self.device),
            "g_depth": torch.zeros((n, h, w), dtype=dt, device=self.device),
            "g_frame": torch.zeros((n, _FRAME), dtype=dt, device=self.device),
            "g_edge": torch.zeros((e, _EDGE), dtype=dt, device=self.device),
        }
        self.flow = None
        if flow is not None:
            self.flow = {
                "flow_ij": up(flow.flow_ij), "flow_ji": up(flow.flow_ji),
                "static": up(flow.static),
                "stats": torch.zeros(4, dtype=torch.float64, device=self.device),
                "g_depth": torch.zeros((2, n, h, w), dtype=dt, device=self.device),
                "g_flow": torch.zeros((e, 2, _FLOW), dtype=dt, device=self.device),
            }  # fmt: skip
        self.dt = dt

    def upload_log_depth(self, log_depth: np.ndarray) -> Any:
        """(N,H,W) log-depth as a device tensor (the optimiser keeps it there)."""
        return self.torch.from_numpy(np.ascontiguousarray(log_depth)).to(self.device, self.dt)

    def __call__(self, data: AlignData, geo: P.Geometry, flow_args: dict[str, Any]) -> tuple:
        torch = self.torch

        def up(a: Any) -> Any:
            if isinstance(a, torch.Tensor):
                if a.device != self.device or a.dtype != self.dt or not a.is_contiguous():
                    raise ValueError(
                        f"log_depth must be a contiguous {self.dt} tensor on {self.device}"
                    )
                return a
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, self.dt)

        small = [up(geo.depth_log), up(geo.rot), up(geo.trans), up(geo.focal)]
        edge = [up(geo.edge_rot), up(geo.edge_trans), up(geo.edge_scale)]
        i, o = self.inputs, self.out
        ptrs = [i["edges"], i["pts_i"], i["pts_j"], i["w_i"], i["w_j"], *small, i["pp"], *edge]
        ptrs += [o["energy"], o["g_depth"], o["g_frame"], o["g_edge"]]
        use_flow = bool(flow_args)
        if use_flow:
            if self.flow is None:
                raise ValueError("this CudaKernel was built without flows")
            f = self.flow
            rel = [up(flow_args["flow_rot"]), up(flow_args["flow_trans"])]
            ptrs += [f["flow_ij"], f["flow_ji"], f["static"], *rel]
            ptrs += [f["stats"], f["g_depth"], f["g_flow"]]
        addresses = [int(t.data_ptr()) for t in ptrs] + [0] * (25 - len(ptrs))
        stream = int(torch.cuda.current_stream(self.device).cuda_stream)
        pixel_thr = float(flow_args.get("pixel_thr", 50.0))
        _core.align_energy_grad_cuda(
            self.dtype_name, addresses, self.n, self.e, self.h, self.w, pixel_thr, stream
        )
        result = (
            float(o["energy"].item()),
            o["g_depth"].clone(),
            o["g_frame"].cpu().numpy(),
            o["g_edge"].cpu().numpy(),
        )
        if not use_flow:
            return result
        stats = tuple(float(v) for v in self.flow["stats"].cpu().numpy())
        return (*result, stats, self.flow["g_depth"].clone(), self.flow["g_flow"].cpu().numpy())
