"""Transformer building blocks of the MonST3R / DUSt3R pointmap network.

Everything here mirrors CroCo's modules (``croco/models/blocks.py``, ``pos_embed.py``) in
parameter names and arithmetic, but is written for export: RoPE uses precomputed cos/sin tables
indexed by constant patch grids (no ``int(tensor)``, no data-dependent shapes), and attention is an
explicit ``matmul -> softmax -> matmul``.

Token layout: ``(B, T, C)`` with ``T = h * w`` patches in row-major order, ``h = H / patch``,
``w = W / patch``. The position of token ``t`` is ``(row, col) = (t // w, t % w)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PatchEmbed",
    "RoPE2D",
    "apply_rope",
    "Mlp",
    "Attention",
    "CrossAttention",
    "Block",
    "DecoderBlock",
    "LAYER_NORM_EPS",
    "LayerNorm",
]

#: CroCo builds every LayerNorm with ``partial(nn.LayerNorm, eps=1e-6)``.
LAYER_NORM_EPS = 1e-6


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` whose statistics are computed in float32 when the model runs in float16 /
    bfloat16 (mixed-precision export keeps them in FP32); identical to ``nn.LayerNorm`` in
    float32, with the same state-dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        y = torch.nn.functional.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)
        return y.to(x.dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping patchify convolution (DUSt3R's ``PatchEmbedDust3R``; ``norm`` is Identity).

    The image is patchified in its own orientation (portrait stays portrait).

    Args:
        patch_size: patch side in pixels (16 for every released checkpoint).
        embed_dim: encoder width ``C``.
    """

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = int(patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, T, C)`` with ``T = (H/p)(W/p)`` in row-major patch order."""
        return self.proj(img).flatten(2).transpose(1, 2)


def _rope_half_table(dim_half: int, base: float, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``(n_pos, dim_half)`` float32 for one axis (CroCo ``RoPE2D.get_cos_sin``).

    ``inv_freq[k] = 1 / base^(2k / dim_half)`` for ``k < dim_half / 2``; the angle table is
    duplicated (``cat(theta, theta)``) for the half-split rotation.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, dim_half, 2, dtype=torch.float32) / dim_half))
    pos = torch.arange(n_pos, dtype=torch.float32)
    theta = pos[:, None] * inv_freq[None, :]
    emb = torch.cat((theta, theta), dim=-1)
    return emb.cos(), emb.sin()


class RoPE2D(nn.Module):
    """2-D rotary position embedding with precomputed tables (CroCo ``RoPE2D``, ``F0 = 1``).

    The head dimension ``dh`` is split in two halves: the first half is rotated by the patch row
    ``y``, the second by the patch column ``x``. Inside each half of size ``D = dh / 2`` element
    ``k`` is paired with element ``k + D/2`` ("rotate_half", not interleaved pairs).

    Tables cover positions ``0 .. max_grid - 1`` and are stored as non-persistent buffers (they
    never appear in the state dict). Larger grids are computed on the fly (a Python branch on
    static shapes only).

    Args:
        head_dim: attention head dimension ``dh`` (multiple of 4).
        base: RoPE frequency base (100 for ``pos_embed='RoPE100'``).
        max_grid: largest patch-grid side covered by the stored tables.
    """

    def __init__(self, head_dim: int, base: float = 100.0, max_grid: int = 64) -> None:
        super().__init__()
        if head_dim % 4 != 0:
            raise ValueError(f"RoPE2D needs a head dimension divisible by 4, got {head_dim}")
        self.head_dim = int(head_dim)
        self.base = float(base)
        self.max_grid = int(max_grid)
        cos, sin = _rope_half_table(self.head_dim // 2, self.base, self.max_grid)
        self.register_buffer("cos_table", cos, persistent=False)
        self.register_buffer("sin_table", sin, persistent=False)

    def reset_tables(self, device: torch.device | str | None = None) -> None:
        """Recompute the tables (e.g. after building the module on the ``meta`` device)."""
        dtype = self.cos_table.dtype if self.cos_table.is_floating_point() else torch.float32
        cos, sin = _rope_half_table(self.head_dim // 2, self.base, self.max_grid)
        self.cos_table = cos.to(device=device, dtype=dtype)
        self.sin_table = sin.to(device=device, dtype=dtype)

    def tables(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for an ``h x w`` patch grid: each ``(T, dh)``, ``T = h*w`` row-major.

        Columns ``[0, dh/2)`` hold the row (y) angles, ``[dh/2, dh)`` the column (x) angles.
        """
        d = self.head_dim // 2
        if max(h, w) > self.max_grid:
            cos_t, sin_t = _rope_half_table(d, self.base, max(h, w))
            cos_t = cos_t.to(device=self.cos_table.device, dtype=self.cos_table.dtype)
            sin_t = sin_t.to(device=self.sin_table.device, dtype=self.sin_table.dtype)
        else:
            cos_t, sin_t = self.cos_table, self.sin_table

        def grid(table: torch.Tensor) -> torch.Tensor:
            ty = table[:h].reshape(h, 1, d).expand(h, w, d)
            tx = table[:w].reshape(1, w, d).expand(h, w, d)
            return torch.cat((ty, tx), dim=-1).reshape(h * w, 2 * d)

        return grid(cos_t), grid(sin_t)


def apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``t`` ``(B, heads, T, dh)`` with tables ``(T, dh)`` from :meth:`RoPE2D.tables`.

    Per half ``u`` (size ``D``): ``u * cos + cat(-u[D/2:], u[:D/2]) * sin``.
    """
    q = t.shape[-1] // 4
    a, b, c, d = t.split(q, dim=-1)
    rotated = torch.cat((-b, a, -d, c), dim=-1)
    return t * cos.to(t.dtype) + rotated * sin.to(t.dtype)


class Mlp(nn.Module):
    """``fc1 -> GELU (exact) -> fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, fused: bool = False
) -> torch.Tensor:
    """``softmax(q k^T * scale) v``, shapes ``(B, heads, T, dh)``.

    ``fused`` uses PyTorch's ``scaled_dot_product_attention`` (faster in eager mode); the
    explicit MatMul → Softmax → MatMul form is what ONNX export needs (TensorRT 10.3 parses it).
    """
    if fused:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    attn = (q @ k.transpose(-2, -1)) * scale
    attn = attn.float().softmax(dim=-1).to(v.dtype)  # softmax statistics in FP32 (no-op in fp32)
    return attn @ v


class Attention(nn.Module):
    """Multi-head self-attention, RoPE on q and k (fused ``qkv`` Linear, layout (3, heads, dh))."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = int(num_heads)
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fused = True  # see PointmapNet.set_fused_attention

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, C)``; ``cos``/``sin`` ``(T, dh)`` -> ``(B, T, C)``."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, T, dh)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        out = _attend(q, k, v, self.scale, self.fused).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class CrossAttention(nn.Module):
    """Multi-head cross-attention (separate ``projq/projk/projv``), RoPE on q (query grid) and k."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = int(num_heads)
        self.scale = (dim // num_heads) ** -0.5
        self.projq = nn.Linear(dim, dim, bias=qkv_bias)
        self.projk = nn.Linear(dim, dim, bias=qkv_bias)
        self.projv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fused = True  # see PointmapNet.set_fused_attention

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        qcos: torch.Tensor,
        qsin: torch.Tensor,
        kcos: torch.Tensor,
        ksin: torch.Tensor,
    ) -> torch.Tensor:
        """``query`` ``(B, Tq, C)``, ``key``/``value`` ``(B, Tk, C)`` -> ``(B, Tq, C)``."""
        b, nq, c = query.shape
        nk = key.shape[1]
        dh = c // self.num_heads
        q = self.projq(query).reshape(b, nq, self.num_heads, dh).permute(0, 2, 1, 3)
        k = self.projk(key).reshape(b, nk, self.num_heads, dh).permute(0, 2, 1, 3)
        v = self.projv(value).reshape(b, nk, self.num_heads, dh).permute(0, 2, 1, 3)
        q = apply_rope(q, qcos, qsin)
        k = apply_rope(k, kcos, ksin)
        out = _attend(q, k, v, self.scale, self.fused).transpose(1, 2).reshape(b, nq, c)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm ViT encoder block: ``x += attn(norm1(x))``; ``x += mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """CroCo decoder block: self-attention, cross-attention to the other view, MLP (all pre-norm).

    ``x += attn(norm1(x))``; ``y_ = norm_y(y)``; ``x += cross_attn(norm2(x), y_, y_)``;
    ``x += mlp(norm3(x))``. ``norm_y`` is Identity when ``norm_mem`` is False.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_mem: bool = True
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias=True)
        self.norm2 = LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm3 = LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y: nn.Module = LayerNorm(dim, eps=LAYER_NORM_EPS) if norm_mem else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        xcos: torch.Tensor,
        xsin: torch.Tensor,
        ycos: torch.Tensor,
        ysin: torch.Tensor,
    ) -> torch.Tensor:
        """``x`` ``(B, Tx, C)`` this view, ``y`` ``(B, Ty, C)`` other view -> new ``x``."""
        x = x + self.attn(self.norm1(x), xcos, xsin)
        y_ = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y_, y_, xcos, xsin, ycos, ysin)
        return x + self.mlp(self.norm3(x))


def interpolate2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear ×2 upsampling with ``align_corners=True`` (DPT fusion and head)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
