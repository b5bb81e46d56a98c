"""Tiny PointmapNet configurations shared by the network tests (official argument names)."""

from __future__ import annotations

import math

TINY_DPT = dict(
    pos_embed="RoPE100",
    img_size=(64, 64),
    head_type="dpt",
    output_mode="pts3d",
    depth_mode=("exp", -math.inf, math.inf),
    conf_mode=("exp", 1, math.inf),
    enc_embed_dim=32,
    enc_depth=2,
    enc_num_heads=2,
    dec_embed_dim=32,
    dec_depth=10,
    dec_num_heads=2,
)
TINY_LINEAR = dict(TINY_DPT, head_type="linear", dec_depth=2, img_size=(32, 48))
