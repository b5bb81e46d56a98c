"""The global-alignment objective evaluated by the ``_core`` kernels (CPU or CUDA).

``L = L_align + w_smooth·L_smooth (+ w_flow·L_flow)`` with (spec §4.5)

- ``L_align = Σ_e Σ_p [w_i‖X_i − P_e pred_i‖ + w_j‖X_j − P_e pred_j‖] / (E·H·W)``, ``w = log conf``;
- ``L_smooth = Σ_t ‖R_tᵀR_{t+1} − I‖_F + translation_weight·‖R_tᵀ(T_{t+1} − T_t)‖``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _core
from ..geometry import relative_pose_rt
from . import params as P


@dataclass
class AlignData:
    """Validated, contiguous inputs of one alignment problem (host arrays).

    Attributes:
        edges: (E,2) int64 frame indices.
        pts_i, pts_j: (E,H,W,3) pointmaps in camera i's frame; invalid pixels zeroed.
        w_i, w_j: (E,H,W) ``log(conf)``; 0 where the prediction was not finite.
        pp: (N,2) principal points (W/2, H/2).
        n_frames: N.
        diagnostics: counts of what was dropped.
    """

    edges: np.ndarray
    pts_i: np.ndarray
    pts_j: np.ndarray
    w_i: np.ndarray
    w_j: np.ndarray
    pp: np.ndarray
    n_frames: int
    diagnostics: dict[str, int] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.pts_i.shape[1]), int(self.pts_i.shape[2])

    def astype(self, dtype: type) -> AlignData:
        """A copy with floating arrays in ``dtype`` (float64 for gradient checks)."""
        cast = {k: getattr(self, k).astype(dtype) for k in ("pts_i", "pts_j", "w_i", "w_j", "pp")}
        return AlignData(self.edges, n_frames=self.n_frames, diagnostics=self.diagnostics, **cast)


@dataclass
class FlowData:
    """Measured flow of every edge and the static mask (inputs of the flow term).

    Attributes:
        flow_ij: (E,2,H,W) flow from view i to view j in pixels, channels (x, y).
        flow_ji: (E,2,H,W) flow from view j to view i.
        static: (N,H,W) 1.0 where a pixel is static (drives the term), 0.0 where it moves.
    """

    flow_ij: np.ndarray
    flow_ji: np.ndarray
    static: np.ndarray

    def astype(self, dtype: type) -> FlowData:
        return FlowData(*(np.ascontiguousarray(a, dtype=dtype) for a in self._arrays()))

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.flow_ij, self.flow_ji, self.static


Kernel = Callable[[AlignData, P.Geometry, dict[str, Any]], tuple]


def cpu_kernel(data: AlignData, geo: P.Geometry, flow_args: dict[str, Any]) -> tuple:
    """One fused pass of the C++/OpenMP kernel (see ``_core.align_energy_grad``)."""
    return _core.align_energy_grad(
        data.edges, data.pts_i, data.pts_j, data.w_i, data.w_j,
        np.ascontiguousarray(geo.depth_log), geo.rot, geo.trans, geo.focal, data.pp,
        geo.edge_rot, geo.edge_trans, geo.edge_scale, **flow_args,
    )  # fmt: skip


def relative_poses(
    edges: np.ndarray, rot: np.ndarray, trans: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(E,2,3,3) R_rel and (E,2,3) t_rel of both flow directions of every edge: i→j then j→i,
    from camera-to-world ``rot`` (N,3,3) and ``trans`` (N,3).

    Direction i→j maps camera i to camera j (:func:`monst3r_rt.geometry.relative_pose_rt`):
    ``R_rel = R_jᵀR_i``, ``t_rel = R_jᵀ(T_i − T_j)``.
    """
    i, j = edges[:, 0], edges[:, 1]
    r_ij, t_ij = relative_pose_rt(rot[i], trans[i], rot[j], trans[j])
    r_ji, t_ji = relative_pose_rt(rot[j], trans[j], rot[i], trans[i])
    return np.stack([r_ij, r_ji], 1), np.stack([t_ij, t_ji], 1)  # C-contiguous


def _flow_chain(edges, rot, trans, g_flow, g_rot, g_trans, g_focal) -> None:
    """Add the gradient of the flow term w.r.t. (R_rel, t_rel, f_src, f_tgt) to the frames'."""
    for d, (src, tgt) in enumerate(((edges[:, 0], edges[:, 1]), (edges[:, 1], edges[:, 0]))):
        gr = g_flow[:, d, :9].reshape(-1, 3, 3)
        gt = g_flow[:, d, 9:12]
        # R_rel = R_tᵀ R_s: d/dR_s = R_t G, d/dR_t = R_s Gᵀ
        np.add.at(g_rot, src, rot[tgt] @ gr)
        np.add.at(g_rot, tgt, rot[src] @ gr.transpose(0, 2, 1))
        # t_rel = R_tᵀ (T_s − T_t): d/dT_s = R_t g, d/dT_t = −R_t g, d/dR_t = (T_s − T_t) gᵀ
        rg = np.einsum("eij,ej->ei", rot[tgt], gt)
        np.add.at(g_trans, src, rg)
        np.add.at(g_trans, tgt, -rg)
        np.add.at(g_rot, tgt, np.einsum("ei,ej->eij", trans[src] - trans[tgt], gt))
        np.add.at(g_focal, src, g_flow[:, d, 12])
        np.add.at(g_focal, tgt, g_flow[:, d, 13])


def evaluate(
    data: AlignData,
    params: dict[str, np.ndarray],
    *,
    temporal_smoothing_weight: float = 0.01,
    translation_weight: float = 1.0,
    flow: FlowData | None = None,
    flow_loss_weight: float = 0.01,
    flow_loss_threshold: float = 25.0,
    pixel_loss_threshold: float = 50.0,
    kernel: Kernel | None = None,
    pin_scale: bool = True,
) -> tuple[float, dict[str, np.ndarray], dict[str, float]]:
    """Energy, gradients with respect to every parameter, and the value of each term.

    Args:
        data: the problem (see :class:`AlignData`), float32 or float64.
        params: ``log_depth`` (N,H,W), ``im_poses`` (N,7), ``focal`` (1,) or (N,),
            ``pw_poses`` (E,8), in the dtype of ``data``.
        flow: measured flows and static masks; None = no flow term (e.g. before its start
            iteration). The term is the sum of one masked mean per direction (i→j over all
            edges, j→i over all edges), zeroed when above ``flow_loss_threshold`` (official
            gate).
        kernel: the fused kernel to call, :func:`cpu_kernel` by default; the CUDA one
            (:class:`monst3r_rt.align.cuda.CudaKernel`) keeps ``log_depth`` and its gradient on
            the GPU (torch tensors) and everything else on the host.
        pin_scale: the official gauge (geometric mean of the pairwise scales = 0.5); False
            when frozen frames fix the scale (windowed alignment).

    Returns:
        ``(energy, grads, terms)``; ``grads`` has the keys and shapes of ``params``; ``terms``
        holds ``align``, ``smooth`` and ``flow`` (after the gate).
    """
    n = data.n_frames
    geo = P.geometry(params, n, pin_scale)
    flow_args: dict[str, object] = {}
    if flow is not None:
        f_rot, f_trans = relative_poses(data.edges, geo.rot, geo.trans)
        flow_args = dict(
            flow_ij=flow.flow_ij, flow_ji=flow.flow_ji, static_mask=flow.static,
            flow_rot=f_rot, flow_trans=f_trans, pixel_thr=pixel_loss_threshold,
        )  # fmt: skip
    out = (kernel or cpu_kernel)(data, geo, flow_args)
    energy, g_depth, g_frame, g_edge = out[:4]
    h, w = data.shape
    norm = 1.0 / (len(data.edges) * h * w)
    g_rot = g_frame[:, :9].reshape(n, 3, 3) * norm
    g_trans = g_frame[:, 9:12] * norm
    g_focal = g_frame[:, 12] * norm
    g_depth = g_depth * norm
    smooth, gs_rot, gs_trans = P.smoothness(geo.rot, geo.trans, translation_weight)
    g_rot = g_rot + temporal_smoothing_weight * gs_rot
    g_trans = g_trans + temporal_smoothing_weight * gs_trans
    terms = {"align": energy * norm, "smooth": smooth, "flow": 0.0}
    if flow is not None:
        stats, g_depth_flow, g_flow = out[4:]
        # official: one masked mean per direction (over all edges), summed, then gated
        counts = np.array([stats[1], stats[3]])
        means = np.where(counts > 0, np.array([stats[0], stats[2]]) / np.maximum(counts, 1), 0)
        value = float(means.sum())
        if 0 < value <= flow_loss_threshold:
            scale = np.where(counts > 0, flow_loss_weight / np.maximum(counts, 1), 0)
            terms["flow"] = value
            g_depth = g_depth + scale[0] * g_depth_flow[0] + scale[1] * g_depth_flow[1]
            g_flow = g_flow * scale[None, :, None]
            _flow_chain(data.edges, geo.rot, geo.trans, g_flow, g_rot, g_trans, g_focal)
    grads = P.chain(
        params,
        g_depth,
        g_rot,
        g_trans,
        g_focal,
        g_edge[:, :9].reshape(-1, 3, 3) * norm,
        g_edge[:, 9:12] * norm,
        g_edge[:, 12] * norm,
        pin_scale,
    )
    total = terms["align"] + temporal_smoothing_weight * smooth + flow_loss_weight * terms["flow"]
    return total, grads, terms
