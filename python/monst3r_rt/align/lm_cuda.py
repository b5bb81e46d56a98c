"""The LM kernels on the GPU: :class:`CudaKernels`, the twin of :class:`lm_system.CpuKernels`.

The per-pixel inputs (pointmaps, weights, flows) and the log-depth live on the device (torch);
each state's per-frame and per-edge quantities (a few kB) are uploaded, the accumulators (O(N + E)
doubles) and each frame's coupling Gram matrix come back to the host, where the reduced system is
assembled and solved as on the CPU. The depth step stays on the device.

Arrays go to ``_core.lm_*_cuda`` by name (one dict, through the checked DLPack boundary: device,
dtype, shapes and layout are checked in C++); :meth:`CudaKernels._call` is the one call site.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core
from . import params as P
from .cuda import CudaKernel, require_cuda
from .lm_system import LmTerms, flow_targets
from .objective import AlignData, FlowData, relative_poses


def incident_csr(edges: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, its incident (edge, side) pairs as ``2·edge + side``, edges increasing (the CPU
    kernels' order): (offsets (N+1), entries (2E)) int64."""
    frame = edges.reshape(-1)  # entry 2e + side is frame edges[e, side]
    entries = np.argsort(frame, kind="stable").astype(np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(frame, minlength=n), out=offsets[1:])
    return offsets, entries


class CudaKernels:
    """LM kernels over device arrays, with the methods of :class:`lm_system.CpuKernels`.

    Args:
        data: the problem; its per-pixel arrays are copied to the GPU once (shared with the
            energy kernel, :class:`cuda.CudaKernel`, also used by ``evaluate``).
        flow: flows and static masks, or None.
    """

    def __init__(self, data: AlignData, flow: FlowData | None = None, device: str = "cuda"):
        torch = require_cuda()
        self.torch = torch
        self.energy_kernel = CudaKernel(data, flow, device)
        ek = self.energy_kernel
        self.device, self.dt = ek.device, ek.dt
        self.inputs = ek.inputs  # device copies: edges, pts_i, pts_j, w_i, w_j, pp
        self.flow_inputs = (
            None if ek.flow is None else [ek.flow[k] for k in ("flow_ij", "flow_ji", "static_mask")]
        )
        self.n, self.e = data.n_frames, len(data.edges)
        self.h, self.w = data.shape
        self.edges = data.edges
        offsets, entries = incident_csr(data.edges, self.n)
        self.up = ek.upload  # host arrays → device tensors (device tensors pass through)
        self.csr = [self.up(offsets, torch.int64), self.up(entries, torch.int64)]
        self.offsets = offsets

    def state(self, cur: dict[str, Any], geo: P.Geometry, terms: LmTerms, norm: float) -> dict:
        """Named device tensors of one state and the scalars of the kernels."""
        i = self.inputs
        arrays = {k: i[k] for k in ("edges", "pts_i", "pts_j", "w_i", "w_j", "pp")}
        arrays["log_depth"] = self.up(cur["log_depth"])
        for k in ("rot", "trans", "focal", "edge_rot", "edge_trans", "edge_scale"):
            arrays[k] = self.up(getattr(geo, k))
        scale = (0.0, 0.0)
        if terms.with_flow:
            if self.flow_inputs is None:
                raise ValueError("these CudaKernels were built without flows")
            f_rot, f_trans = relative_poses(self.edges, geo.rot, geo.trans)
            arrays.update(zip(("flow_ij", "flow_ji", "static_mask"), self.flow_inputs, strict=True))
            arrays["flow_rot"], arrays["flow_trans"] = self.up(f_rot), self.up(f_trans)
            scale = tuple(w / norm for w in terms.flow_weights)
        if terms.frozen is not None:
            arrays["frozen"] = self.up(terms.frozen.astype(np.uint8), self.torch.uint8)
        arrays["csr_offsets"], arrays["csr_entries"] = self.csr
        return {"arrays": arrays, "scale": scale, "pixel_thr": terms.pixel_thr,
                "flow": terms.with_flow}  # fmt: skip

    def _call(self, fn: str, st: dict, outputs: dict, eps: float, **kw: Any) -> None:
        """``_core.<fn>`` over the state's and the outputs' named device tensors."""
        from .._device import on_device

        arrays = {**st["arrays"], **{k: v for k, v in outputs.items() if v is not None}}
        with on_device(arrays["log_depth"]) as stream:
            getattr(_core, fn)(
                arrays, eps=eps, pixel_thr=st["pixel_thr"], flow_scale=st["scale"],
                stream=stream, **kw,
            )  # fmt: skip

    def _zeros(self, shape: tuple, dtype: Any) -> Any:
        return self.torch.zeros(shape, dtype=dtype, device=self.device)

    def accumulate(self, st: dict, eps: float) -> tuple:
        f64 = self.torch.float64
        out = [
            self._zeros((1,), f64),
            self._zeros((self.n, _core.LM_FRAME_ACC), f64),
            self._zeros((self.e, 2, _core.LM_EDGE_ACC), f64),
            self._zeros((self.e if st["flow"] else 0, 2, _core.LM_FLOW_ACC), f64),
        ]
        names = ("energy", "frame_acc", "edge_acc", "flow_acc")
        outputs = dict(zip(names, out, strict=True))
        if not st["flow"]:
            outputs["flow_acc"] = None
        self._call("lm_accumulate_cuda", st, outputs, eps)
        energy, facc, eacc, flow_acc = (t.cpu().numpy() for t in out)
        return float(energy[0]), facc, eacc, flow_acc

    def features(self, st: dict, eps: float, v: int, p0: int, p1: int) -> Any:
        k = int(self.offsets[v + 1] - self.offsets[v])
        targets = np.zeros(0, np.int64)
        if st["flow"]:
            targets = flow_targets(self.edges, np.flatnonzero((self.edges == v).any(1)), v)
        rows = _core.LM_EDGE_FEATURES * k + _core.LM_TARGET_FEATURES * len(targets)
        x = self._zeros((rows, p1 - p0), self.torch.float32)
        tg = self.up(targets, self.torch.int64) if len(targets) else None
        self._call(
            "lm_cross_features_cuda", st, {"targets": tg, "x": x}, eps,
            frame=v, p0=p0, p1=p1, incident=k,
        )  # fmt: skip
        return x

    def gram(self, x: Any) -> np.ndarray:
        xd = x.double()
        return (xd @ xd.T).cpu().numpy()

    def backsub(self, st: dict, eps: float, dframe: np.ndarray, dedge: np.ndarray) -> Any:
        f64 = self.torch.float64
        dl = self.torch.empty((self.n, self.h, self.w), dtype=self.dt, device=self.device)
        outputs = {"dframe": self.up(dframe, f64), "dedge": self.up(dedge, f64), "dl": dl}
        self._call("lm_backsub_cuda", st, outputs, eps)
        return dl

    def log_depth_step(self, log_depth: Any, dl: Any, alpha: float) -> Any:
        return (log_depth.double() + alpha * dl.double()).to(log_depth.dtype)

    def depth_scale(self, log_depth: Any) -> float:
        # on the host: np.median averages the two middle values (torch.median takes the lower),
        # so the IRLS floor is the CPU twin's exactly
        return float(np.median(np.exp(log_depth[:, ::4, ::4].double().cpu().numpy())))
