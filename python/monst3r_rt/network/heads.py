"""Prediction heads of the pointmap network and their post-processing.

* :class:`DPTHead` - DUSt3R's ``PixelwiseTaskWithDPT`` (``heads/dpt_head.py`` + CroCo's
  ``dpt_block.py``), state-dict prefix ``downstream_head{1,2}.dpt.``.
* :class:`LinearHead` - DUSt3R's ``LinearPts3d`` (``*_linear`` checkpoints), prefix
  ``downstream_head{1,2}.proj``.
* :func:`postprocess` - ``reg_dense_depth`` / ``reg_dense_conf`` (``heads/postprocess.py``).

Heads take the list of decoder token tensors of one view, ``[enc_out, dec_1, ..., dec_L]``
(``dec_L`` already through ``dec_norm``), each ``(B, T, C_i)``, plus the image size ``(H, W)``
and return ``(pts (B, H, W, 3), conf (B, H, W))`` in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import interpolate2x

__all__ = ["DPTHead", "LinearHead", "postprocess", "expm1", "DEPTH_MODES", "CONF_MODES"]

DEPTH_MODES = ("linear", "square", "exp")
CONF_MODES = ("exp", "sigmoid")


def expm1(x: torch.Tensor) -> torch.Tensor:
    """``exp(x) - 1`` accurate near 0 and exportable (ONNX has no Expm1 op).

    Uses the 5th-order Taylor series below ``|x| < 0.1`` (truncation < 2e-8 relative) and
    ``exp(x) - 1`` elsewhere; both branches are evaluated (``where``), no data-dependent shapes.
    """
    small = x.abs() < 0.1
    taylor = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0)))))
    return torch.where(small, taylor, torch.exp(x) - 1.0)


def postprocess(
    out: torch.Tensor,
    depth_mode: Sequence[object],
    conf_mode: Sequence[object],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw head output ``(B, 4, H, W)`` -> ``(pts (B, H, W, 3), conf (B, H, W))``, float32.

    With the released modes ``depth_mode=('exp', -inf, inf)`` and ``conf_mode=('exp', 1, inf)``:
    ``d = |xyz|``, ``pts = xyz / max(d, 1e-8) * expm1(d)`` (camera units, arbitrary scale) and
    ``conf = 1 + exp(c)`` (>= 1). Always computed in float32 (FP16 overflows beyond ``d`` ~ 11).
    """
    fmap = out.float().permute(0, 2, 3, 1)
    xyz = fmap[..., 0:3]
    mode = depth_mode[0]
    d = xyz.norm(dim=-1, keepdim=True)
    unit = xyz / d.clamp(min=1e-8)
    if mode == "linear":
        pts = xyz
    elif mode == "square":
        pts = unit * d.square()
    elif mode == "exp":
        pts = unit * expm1(d)
    else:  # pragma: no cover - validated by the model constructor
        raise ValueError(f"unsupported depth_mode {depth_mode!r}")

    c = fmap[..., 3]
    cmode, vmin, vmax = conf_mode[0], float(conf_mode[1]), float(conf_mode[2])  # type: ignore[arg-type]
    if cmode == "exp":
        e = torch.exp(c)
        if not math.isinf(vmax):
            e = e.clamp(max=vmax - vmin)
        conf = vmin + e
    elif cmode == "sigmoid":
        conf = (vmax - vmin) * torch.sigmoid(c) + vmin
    else:  # pragma: no cover - validated by the model constructor
        raise ValueError(f"unsupported conf_mode {conf_mode!r}")
    return pts, conf


class LinearHead(nn.Module):
    """DUSt3R ``LinearPts3d``: one Linear per token to ``(3+1)·p²`` values, then pixel shuffle.

    Uses only the last decoder output (after ``dec_norm``).
    """

    def __init__(
        self,
        dec_embed_dim: int,
        patch_size: int,
        depth_mode: Sequence[object],
        conf_mode: Sequence[object],
    ) -> None:
        super().__init__()
        self.patch_size = int(patch_size)
        self.depth_mode = tuple(depth_mode)
        self.conf_mode = tuple(conf_mode)
        self.proj = nn.Linear(dec_embed_dim, 4 * self.patch_size**2)

    def forward(
        self, tokens: Sequence[torch.Tensor], image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens[-1]`` ``(B, T, C_dec)`` -> ``(pts (B,H,W,3), conf (B,H,W))``."""
        h_img, w_img = image_size
        p = self.patch_size
        x = tokens[-1]
        b = x.shape[0]
        feat = self.proj(x).transpose(-1, -2).reshape(b, -1, h_img // p, w_img // p)
        feat = F.pixel_shuffle(feat, p)  # (B, 4, H, W)
        return postprocess(feat, self.depth_mode, self.conf_mode)


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` with 3x3 convs (bias, no BN)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(x))
        out = self.conv2(F.relu(out))
        return out + x


class FeatureFusionBlock(nn.Module):
    """DPT fusion: ``out = xs[0] (+ RCU1(xs[1]))``; ``RCU2``; bilinear ×2; 1x1 ``out_conv``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, stride=1, padding=0, bias=True)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = x
        if skip is not None:
            out = out + self.resConfUnit1(skip)
        out = self.resConfUnit2(out)
        out = interpolate2x(out)
        return self.out_conv(out)


class _Interpolate2x(nn.Module):
    """Parameter-free module standing at index 1 of the DPT ``head`` Sequential."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return interpolate2x(x)


class _Scratch(nn.Module):
    """``scratch``: ``layer{1..4}_rn`` (aliased as ``layer_rn.{0..3}``) and ``refinenet{1..4}``."""

    def __init__(self, layer_dims: Sequence[int], feature_dim: int) -> None:
        super().__init__()
        convs = [
            nn.Conv2d(c, feature_dim, kernel_size=3, stride=1, padding=1, bias=False)
            for c in layer_dims
        ]
        self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn = convs
        # Same modules registered twice, exactly as CroCo's make_scratch: both names are in the
        # state dict and share storage.
        self.layer_rn = nn.ModuleList(convs)
        self.refinenet1 = FeatureFusionBlock(feature_dim)
        self.refinenet2 = FeatureFusionBlock(feature_dim)
        self.refinenet3 = FeatureFusionBlock(feature_dim)
        self.refinenet4 = FeatureFusionBlock(feature_dim)


class DPTAdapter(nn.Module):
    """DUSt3R's ``DPTOutputAdapter_fix`` (regression head, ``stride_level=1``, no BN)."""

    def __init__(
        self,
        dim_tokens: Sequence[int],
        hooks: Sequence[int],
        patch_size: int = 16,
        num_channels: int = 4,
        layer_dims: Sequence[int] = (96, 192, 384, 768),
        feature_dim: int = 256,
        last_dim: int = 128,
    ) -> None:
        super().__init__()
        self.hooks = [int(i) for i in hooks]
        self.patch_size = int(patch_size)
        ld = list(layer_dims)
        self.scratch = _Scratch(ld, feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, kernel_size=3, stride=1, padding=1),
            _Interpolate2x(),
            nn.Conv2d(feature_dim // 2, last_dim, kernel_size=3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, num_channels, kernel_size=1, stride=1, padding=0),
        )
        self.act_postprocess = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(dim_tokens[0], ld[0], kernel_size=1),
                    nn.ConvTranspose2d(ld[0], ld[0], kernel_size=4, stride=4, padding=0),
                ),
                nn.Sequential(
                    nn.Conv2d(dim_tokens[1], ld[1], kernel_size=1),
                    nn.ConvTranspose2d(ld[1], ld[1], kernel_size=2, stride=2, padding=0),
                ),
                nn.Sequential(nn.Conv2d(dim_tokens[2], ld[2], kernel_size=1)),
                nn.Sequential(
                    nn.Conv2d(dim_tokens[3], ld[3], kernel_size=1),
                    nn.Conv2d(ld[3], ld[3], kernel_size=3, stride=2, padding=1),
                ),
            ]
        )

    def forward(self, tokens: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Token list -> raw output ``(B, num_channels, H, W)``."""
        h_img, w_img = image_size
        nh, nw = h_img // self.patch_size, w_img // self.patch_size
        layers = []
        for i, hook in enumerate(self.hooks):
            t = tokens[hook]
            b, _, c = t.shape
            x = t.transpose(1, 2).reshape(b, c, nh, nw)
            x = self.act_postprocess[i](x)
            layers.append(self.scratch.layer_rn[i](x))
        l1, l2, l3, l4 = layers
        path4 = self.scratch.refinenet4(l4)[:, :, : l3.shape[2], : l3.shape[3]]
        path3 = self.scratch.refinenet3(path4, l3)
        path2 = self.scratch.refinenet2(path3, l2)
        path1 = self.scratch.refinenet1(path2, l1)
        return self.head(path1)


class DPTHead(nn.Module):
    """DUSt3R ``PixelwiseTaskWithDPT`` for pts3d + confidence (4 output channels).

    Hooks ``[0, L*2//4, L*3//4, L]`` into ``[enc_out, dec_1..dec_L]`` with ``L = dec_depth``;
    token widths ``[enc_embed_dim, dec_embed_dim, dec_embed_dim, dec_embed_dim]``.
    """

    def __init__(
        self,
        enc_embed_dim: int,
        dec_embed_dim: int,
        dec_depth: int,
        depth_mode: Sequence[object],
        conf_mode: Sequence[object],
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        self.depth_mode = tuple(depth_mode)
        self.conf_mode = tuple(conf_mode)
        l2 = int(dec_depth)
        self.dpt = DPTAdapter(
            dim_tokens=[enc_embed_dim, dec_embed_dim, dec_embed_dim, dec_embed_dim],
            hooks=[0, l2 * 2 // 4, l2 * 3 // 4, l2],
            patch_size=patch_size,
            num_channels=4,
            feature_dim=256,
            last_dim=128,
        )

    def forward(
        self, tokens: Sequence[torch.Tensor], image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token list -> ``(pts (B,H,W,3), conf (B,H,W))`` float32."""
        return postprocess(self.dpt(tokens, image_size), self.depth_mode, self.conf_mode)
