"""``PointmapNet``: the MonST3R / DUSt3R pairwise pointmap network (``AsymmetricCroCo3DStereo``).

Architecture (spec §1.3): a shared ViT encoder with RoPE, a linear projection to the decoder
width, two interleaved transformer decoders with cross-attention (one per view, each reading the
*previous* layer of the other), and one prediction head per view. The state-dict layout equals the
official one (``patch_embed``, ``enc_blocks``, ``enc_norm``, ``mask_token``, ``decoder_embed``,
``dec_blocks``, ``dec_blocks2``, ``dec_norm``, ``downstream_head1``, ``downstream_head2``).

Inference semantics are those of the official demo loader: ``PatchEmbedDust3R`` with
``landscape_only=False``, i.e. portrait images are patchified in their own orientation.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from .blocks import LAYER_NORM_EPS, Block, DecoderBlock, LayerNorm, PatchEmbed, RoPE2D
from .heads import CONF_MODES, DEPTH_MODES, DPTHead, LinearHead

__all__ = ["PointmapNet", "DEFAULT_KWARGS", "MONST3R_KWARGS", "OFFICIAL_CLASS_NAME"]

inf = math.inf

#: Class name written into (and accepted from) constructor strings of ``.pth`` checkpoints.
OFFICIAL_CLASS_NAME = "AsymmetricCroCo3DStereo"

#: Defaults of ``AsymmetricCroCo3DStereo.__init__`` and ``CroCoNet.__init__`` (official code).
DEFAULT_KWARGS: dict[str, Any] = {
    "output_mode": "pts3d",
    "head_type": "linear",
    "depth_mode": ("exp", -inf, inf),
    "conf_mode": ("exp", 1, inf),
    "freeze": "none",
    "landscape_only": True,
    "patch_embed_cls": "PatchEmbedDust3R",
    "img_size": 224,
    "patch_size": 16,
    "mask_ratio": 0.9,
    "enc_embed_dim": 768,
    "enc_depth": 12,
    "enc_num_heads": 12,
    "dec_embed_dim": 512,
    "dec_depth": 8,
    "dec_num_heads": 16,
    "mlp_ratio": 4,
    "norm_im2_in_dec": True,
    "pos_embed": "cosine",
}

#: Constructor arguments of the released MonST3R checkpoint as the official demo instantiates it.
MONST3R_KWARGS: dict[str, Any] = {
    "pos_embed": "RoPE100",
    "patch_embed_cls": "PatchEmbedDust3R",
    "img_size": (512, 512),
    "head_type": "dpt",
    "output_mode": "pts3d",
    "depth_mode": ("exp", -inf, inf),
    "conf_mode": ("exp", 1, inf),
    "enc_embed_dim": 1024,
    "enc_depth": 24,
    "enc_num_heads": 16,
    "dec_embed_dim": 768,
    "dec_depth": 12,
    "dec_num_heads": 12,
    "freeze": "encoder",
    "landscape_only": False,
}

#: Accepted and recorded, but without effect at inference.
TRAINING_ONLY_KWARGS = frozenset({"freeze", "mask_ratio", "landscape_only"})

_ROPE_RE = re.compile(r"^RoPE(\d+(?:\.\d*)?)$")


def _freeze_value(v: Any) -> Any:
    """Lists -> tuples, recursively (JSON configs give lists where the official code has tuples)."""
    if isinstance(v, (list, tuple)):
        return tuple(_freeze_value(x) for x in v)
    return v


def _pair(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    if isinstance(v, int):
        return (v, v)
    if (
        isinstance(v, tuple)
        and len(v) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    ):
        return (v[0], v[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")


def _check_int(cfg: dict[str, Any], name: str, minimum: int = 1) -> int:
    v = cfg[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


class PointmapNet(nn.Module):
    """MonST3R / DUSt3R pointmap network (re-implementation of ``AsymmetricCroCo3DStereo``).

    Keyword arguments (official names and defaults, see :data:`DEFAULT_KWARGS`):

    * ``output_mode`` - only ``'pts3d'``.
    * ``head_type`` - ``'dpt'`` (MonST3R, DUSt3R ``*_dpt``; needs ``dec_depth >= 10``) or
      ``'linear'`` (DUSt3R ``*_linear``).
    * ``depth_mode`` - ``(mode, -inf, inf)``, mode in ``linear|square|exp`` (released: ``exp``).
    * ``conf_mode`` - ``(mode, vmin, vmax)``, mode in ``exp|sigmoid`` (released:
      ``('exp', 1, inf)``, i.e. ``conf = 1 + exp(c)``).
    * ``img_size`` - training resolution, int or ``(H, W)``, multiple of ``patch_size``. Inputs
      of any size that is a multiple of ``patch_size`` are accepted.
    * ``patch_size`` (16), ``enc_embed_dim``, ``enc_depth``, ``enc_num_heads``,
      ``dec_embed_dim``, ``dec_depth``, ``dec_num_heads``, ``mlp_ratio`` (4),
      ``norm_im2_in_dec`` (True).
    * ``pos_embed`` - ``'RoPE<freq>'`` (e.g. ``'RoPE100'``); CroCo's default ``'cosine'`` is not
      supported.
    * ``patch_embed_cls`` - ``'PatchEmbedDust3R'`` or ``'ManyAR_PatchEmbed'`` (same weights; both
      run with the demo semantics: every image patchified in its own orientation).
    * ``freeze``, ``mask_ratio``, ``landscape_only`` - training-only; accepted and ignored.

    Unknown arguments raise :class:`TypeError` naming them.

    The explicitly passed arguments are kept in :attr:`config` (used for ``config.json`` and the
    ``.pth`` constructor string).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - set(DEFAULT_KWARGS))
        if unknown:
            raise TypeError(
                f"PointmapNet got unknown argument(s) {unknown}; accepted: {sorted(DEFAULT_KWARGS)}"
            )
        self.config: dict[str, Any] = {k: _freeze_value(v) for k, v in kwargs.items()}
        cfg = {**DEFAULT_KWARGS, **self.config}

        if cfg["output_mode"] != "pts3d":
            raise ValueError(f"output_mode must be 'pts3d', got {cfg['output_mode']!r}")
        if cfg["head_type"] not in ("dpt", "linear"):
            raise ValueError(f"head_type must be 'dpt' or 'linear', got {cfg['head_type']!r}")
        if cfg["patch_embed_cls"] not in ("PatchEmbedDust3R", "ManyAR_PatchEmbed"):
            raise ValueError(
                "patch_embed_cls must be 'PatchEmbedDust3R' or 'ManyAR_PatchEmbed', "
                f"got {cfg['patch_embed_cls']!r}"
            )
        if cfg["freeze"] not in ("none", "mask", "encoder"):
            raise ValueError(f"freeze must be 'none', 'mask' or 'encoder', got {cfg['freeze']!r}")
        m = _ROPE_RE.match(str(cfg["pos_embed"]))
        if m is None:
            raise ValueError(
                f"pos_embed={cfg['pos_embed']!r} is not supported; only 'RoPE<freq>' "
                "(e.g. 'RoPE100', used by every DUSt3R/MonST3R checkpoint)"
            )
        rope_base = float(m.group(1))
        dm = cfg["depth_mode"]
        if not (isinstance(dm, tuple) and len(dm) == 3 and dm[0] in DEPTH_MODES):
            raise ValueError(
                f"depth_mode must be (mode, vmin, vmax) with mode in {DEPTH_MODES}, got {dm!r}"
            )
        if dm[1] != -inf or dm[2] != inf:
            raise ValueError(f"depth_mode must be unbounded (-inf, inf), got {dm!r}")
        cm = cfg["conf_mode"]
        if not (isinstance(cm, tuple) and len(cm) == 3 and cm[0] in CONF_MODES):
            raise ValueError(
                f"conf_mode must be (mode, vmin, vmax) with mode in {CONF_MODES}, "
                f"got {cm!r} (models without confidence are not supported)"
            )
        for v in cm[1:]:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"conf_mode bounds must be numbers, got {cm!r}")

        patch_size = _check_int(cfg, "patch_size")
        img_size = _pair(cfg["img_size"], "img_size")
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size={img_size} must be a multiple of patch_size={patch_size}")
        enc_dim = _check_int(cfg, "enc_embed_dim")
        enc_depth = _check_int(cfg, "enc_depth")
        enc_heads = _check_int(cfg, "enc_num_heads")
        dec_dim = _check_int(cfg, "dec_embed_dim")
        dec_depth = _check_int(cfg, "dec_depth")
        dec_heads = _check_int(cfg, "dec_num_heads")
        mlp_ratio = cfg["mlp_ratio"]
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
        for dim, heads, side in ((enc_dim, enc_heads, "enc"), (dec_dim, dec_heads, "dec")):
            if dim % heads or (dim // heads) % 4:
                raise ValueError(
                    f"{side}_embed_dim={dim} must be divisible by {side}_num_heads={heads} with a "
                    "head dimension divisible by 4 (RoPE2D)"
                )
        if cfg["head_type"] == "dpt":
            if dec_depth <= 9:
                raise ValueError(
                    f"head_type='dpt' needs dec_depth > 9 (official assert), "
                    f"got dec_depth={dec_depth}"
                )
            if patch_size != 16:
                raise ValueError(f"head_type='dpt' needs patch_size=16, got {patch_size}")

        self.patch_size = patch_size
        self.img_size = img_size
        self.enc_embed_dim = enc_dim
        self.dec_embed_dim = dec_dim
        self.enc_depth = enc_depth
        self.dec_depth = dec_depth
        self.head_type: str = cfg["head_type"]
        self.depth_mode = dm
        self.conf_mode = cm

        max_grid = max(max(img_size) // patch_size, 64)
        # Module registration order follows CroCoNet / AsymmetricCroCo3DStereo so that the state
        # dict is ordered like the official one.
        self.patch_embed = PatchEmbed(patch_size, enc_dim)
        self.enc_rope = RoPE2D(enc_dim // enc_heads, base=rope_base, max_grid=max_grid)
        self.enc_blocks = nn.ModuleList(
            [Block(enc_dim, enc_heads, mlp_ratio) for _ in range(enc_depth)]
        )
        self.enc_norm = LayerNorm(enc_dim, eps=LAYER_NORM_EPS)
        # Unused at inference; kept because it is part of the official state dict.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_embed = nn.Linear(enc_dim, dec_dim, bias=True)
        self.dec_rope = RoPE2D(dec_dim // dec_heads, base=rope_base, max_grid=max_grid)
        norm_mem = bool(cfg["norm_im2_in_dec"])
        self.dec_blocks = nn.ModuleList(
            [DecoderBlock(dec_dim, dec_heads, mlp_ratio, norm_mem) for _ in range(dec_depth)]
        )
        self.dec_norm = LayerNorm(dec_dim, eps=LAYER_NORM_EPS)
        self.dec_blocks2 = nn.ModuleList(
            [DecoderBlock(dec_dim, dec_heads, mlp_ratio, norm_mem) for _ in range(dec_depth)]
        )
        self.downstream_head1: nn.Module
        self.downstream_head2: nn.Module
        if self.head_type == "dpt":
            self.downstream_head1 = DPTHead(enc_dim, dec_dim, dec_depth, dm, cm, patch_size)
            self.downstream_head2 = DPTHead(enc_dim, dec_dim, dec_depth, dm, cm, patch_size)
        else:
            self.downstream_head1 = LinearHead(dec_dim, patch_size, dm, cm)
            self.downstream_head2 = LinearHead(dec_dim, patch_size, dm, cm)
        self.channels_last_heads()

    def channels_last_heads(self) -> PointmapNet:
        """Store the DPT heads' conv weights channels-last: oneDNN convolutions skip a layout
        reorder (about 8 % faster decoding on CPU, same values). Call again after assigning new
        weights (``load_model`` does)."""
        for head in (self.downstream_head1, self.downstream_head2):
            head.to(memory_format=torch.channels_last)
        return self

    # ------------------------------------------------------------------ helpers
    def constructor_string(self) -> str:
        """Official constructor string, e.g. ``"AsymmetricCroCo3DStereo(pos_embed=...)"``.

        Built from :attr:`config` with ``repr`` of literals (``inf`` prints as ``inf``).
        """
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{OFFICIAL_CLASS_NAME}({args})"

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute the RoPE tables (needed after building on the ``meta`` device)."""
        self.enc_rope.reset_tables(device)
        self.dec_rope.reset_tables(device)

    def set_fused_attention(self, fused: bool) -> PointmapNet:
        """Use ``scaled_dot_product_attention`` (default, fastest in PyTorch) or the explicit
        MatMul → Softmax → MatMul form (for ONNX export). Outputs agree to float rounding."""
        from .blocks import Attention, CrossAttention

        for m in self.modules():
            if isinstance(m, (Attention, CrossAttention)):
                m.fused = bool(fused)
        return self

    @property
    def _param_dtype(self) -> torch.dtype:
        return self.patch_embed.proj.weight.dtype

    def _check_image(self, img: Any, name: str) -> None:
        if not isinstance(img, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor (B,3,H,W), got {type(img).__name__}")
        shape = tuple(img.shape)
        if img.ndim != 4 or shape[1] != 3:
            raise ValueError(f"{name} must have shape (B,3,H,W), got {shape}")
        p = self.patch_size
        if shape[2] % p or shape[3] % p or shape[2] == 0 or shape[3] == 0:
            raise ValueError(
                f"{name} has shape {shape}: H={shape[2]} and W={shape[3]} must be positive "
                f"multiples of {p}"
            )
        if img.dtype != self._param_dtype:
            raise ValueError(
                f"{name} has dtype {img.dtype}, expected {self._param_dtype} (the model's dtype); "
                "images are float in [-1, 1]"
            )

    # ------------------------------------------------------------------ network
    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """Encode one batch of images.

        Args:
            img: ``(B, 3, H, W)`` in the model dtype (float32), normalised to ``[-1, 1]``;
                ``H``, ``W`` multiples of ``patch_size`` (16), landscape or portrait.

        Returns:
            Encoder tokens after ``enc_norm``: ``(B, T, enc_embed_dim)`` with
            ``T = (H/16)·(W/16)`` in row-major patch order. Patch positions are implied by
            ``(H, W)``, which must be passed again to :meth:`decode`.
        """
        self._check_image(img, "img")
        h = img.shape[2] // self.patch_size
        w = img.shape[3] // self.patch_size
        cos, sin = self.enc_rope.tables(h, w)
        x = self.patch_embed(img)
        for blk in self.enc_blocks:
            x = blk(x, cos, sin)
        return self.enc_norm(x)

    def decode(
        self,
        feat1: torch.Tensor,
        feat2: torch.Tensor,
        image_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode a pair from encoder tokens (see :meth:`encode`).

        Args:
            feat1: encoder tokens of view 1, ``(B, T, enc_embed_dim)``.
            feat2: encoder tokens of view 2, same shape.
            image_size: ``(H, W)`` in pixels of both images (needed because ``T = h·w`` does not
                determine the grid).

        Returns:
            ``(pts1, conf1, pts2_in_1, conf2)``: ``pts*`` ``(B, H, W, 3)`` float32 in view 1's
            camera frame (arbitrary scale), ``conf*`` ``(B, H, W)`` float32, ``>= 1`` with the
            released ``conf_mode``.
        """
        if len(image_size) != 2:
            raise ValueError(f"image_size must be (H, W), got {image_size!r}")
        h_img, w_img = int(image_size[0]), int(image_size[1])
        p = self.patch_size
        if h_img <= 0 or w_img <= 0 or h_img % p or w_img % p:
            raise ValueError(f"image_size {(h_img, w_img)} must be positive multiples of {p}")
        h, w = h_img // p, w_img // p
        expected = (h * w, self.enc_embed_dim)
        for name, f in (("feat1", feat1), ("feat2", feat2)):
            if not isinstance(f, torch.Tensor) or f.ndim != 3 or tuple(f.shape[1:]) != expected:
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(
                    f"{name} must have shape (B, {expected[0]}, {expected[1]}) for image_size "
                    f"{(h_img, w_img)}, got {got}"
                )
        if feat1.shape[0] != feat2.shape[0]:
            raise ValueError(
                f"feat1 {tuple(feat1.shape)} and feat2 {tuple(feat2.shape)} differ in batch size"
            )
        cos, sin = self.dec_rope.tables(h, w)
        out1: list[torch.Tensor] = [feat1]
        out2: list[torch.Tensor] = [feat2]
        f1 = self.decoder_embed(feat1)
        f2 = self.decoder_embed(feat2)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2, strict=True):
            # Both sides read the previous layer of the other side.
            f1, f2 = blk1(f1, f2, cos, sin, cos, sin), blk2(f2, f1, cos, sin, cos, sin)
            out1.append(f1)
            out2.append(f2)
        out1[-1] = self.dec_norm(out1[-1])
        out2[-1] = self.dec_norm(out2[-1])
        pts1, conf1 = self.downstream_head1(out1, (h_img, w_img))
        pts2, conf2 = self.downstream_head2(out2, (h_img, w_img))
        return pts1, conf1, pts2, conf2

    def forward(
        self, img1: torch.Tensor, img2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pairwise pointmaps: ``decode(encode(img1), encode(img2), (H, W))``, with both images
        encoded in one batch (equal to separate encodes up to float rounding).

        Args:
            img1: ``(B, 3, H, W)`` float in ``[-1, 1]``; ``H``, ``W`` multiples of 16.
            img2: same shape as ``img1``.

        Returns:
            ``(pts1, conf1, pts2_in_1, conf2)``; ``pts`` ``(B, H, W, 3)`` float32 in view 1's
            frame, ``conf`` ``(B, H, W)`` float32.
        """
        self._check_image(img1, "img1")
        self._check_image(img2, "img2")
        if img1.shape != img2.shape:
            raise ValueError(
                f"img1 {tuple(img1.shape)} and img2 {tuple(img2.shape)} must have the same shape"
            )
        # both views through the encoder as one batch, as the official model does
        f1, f2 = self.encode(torch.cat((img1, img2))).chunk(2)
        return self.decode(f1, f2, (img1.shape[2], img1.shape[3]))
