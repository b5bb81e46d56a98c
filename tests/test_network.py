"""PointmapNet: RoPE2D and post-processing against slow references, encode-once, shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_models import TINY_DPT, TINY_LINEAR  # noqa: E402
from tolerance import assert_close, assert_points_close  # noqa: E402

from monst3r_rt.network import MONST3R_KWARGS, PointmapNet  # noqa: E402
from monst3r_rt.network.blocks import RoPE2D, apply_rope  # noqa: E402
from monst3r_rt.network.heads import postprocess  # noqa: E402


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights everywhere (incl. LayerNorm affine and biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                gain = 0.2 if name.endswith(("head.4.weight", "proj.weight")) else 0.8
                p.copy_(gain * torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return net


@pytest.fixture(scope="module")
def dpt_net() -> PointmapNet:
    torch.manual_seed(0)
    return _randomize(PointmapNet(**TINY_DPT), 1).eval()


@pytest.fixture(scope="module")
def linear_net() -> PointmapNet:
    torch.manual_seed(0)
    return _randomize(PointmapNet(**TINY_LINEAR), 2).eval()


def _assert_outputs_close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    """A network output: points (…,3) per point relative to its norm; confidences relative to
    the batch's largest (float32 rounding of exp) plus ``rtol`` of each."""
    a, b = a.detach().double().numpy(), b.detach().double().numpy()
    if b.shape[-1] == 3:
        assert_points_close(a, b, rtol=rtol)
    else:
        assert_close(a, b, rel=rtol / 10, rtol=rtol)


def _imgs(b: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(b, 3, h, w, generator=g) * 2 - 1 for _ in range(2))  # type: ignore


# ---------------------------------------------------------------- RoPE2D
def _rope_naive(tokens: np.ndarray, h: int, w: int, base: float) -> np.ndarray:
    """Per-token, per-pair rotation with math.cos/sin: tokens (heads, T, dh), row-major grid."""
    heads, n, dh = tokens.shape
    d = dh // 2
    out = np.empty_like(tokens)
    for hd in range(heads):
        for t in range(n):
            y, x = divmod(t, w)
            for half, p in ((0, y), (1, x)):
                u = tokens[hd, t, half * d : (half + 1) * d]
                r = np.empty(d)
                for k in range(d // 2):
                    theta = p / base ** (2 * k / d)
                    c, s = math.cos(theta), math.sin(theta)
                    r[k] = u[k] * c - u[k + d // 2] * s
                    r[k + d // 2] = u[k + d // 2] * c + u[k] * s
                out[hd, t, half * d : (half + 1) * d] = r
    return out


@pytest.mark.parametrize("h,w,max_grid", [(3, 5, 8), (5, 3, 8), (6, 2, 4)])
def test_rope_matches_naive_loop(h: int, w: int, max_grid: int) -> None:
    dh = 16
    rope = RoPE2D(dh, base=100.0, max_grid=max_grid)
    g = torch.Generator().manual_seed(3)
    tok = torch.randn(2, 3, h * w, dh, generator=g)
    cos, sin = rope.tables(h, w)
    assert cos.shape == (h * w, dh)
    got = apply_rope(tok, cos, sin).numpy()
    for b in range(2):
        ref = _rope_naive(tok[b].double().numpy(), h, w, 100.0)
        assert_close(got[b], ref, rel=1e-6)
    # the rotation is not the identity except at the origin token
    assert np.abs(got[0, :, 1:] - tok[0, :, 1:].numpy()).max() > 0.1
    assert_close(got[0, :, 0], tok[0, :, 0].numpy(), rel=1e-7)


def test_rope_buffers_not_in_state_dict(dpt_net: PointmapNet) -> None:
    assert not any("rope" in k or "table" in k for k in dpt_net.state_dict())


# ---------------------------------------------------------------- post-processing
def test_postprocess_matches_numpy() -> None:
    g = torch.Generator().manual_seed(5)
    out = torch.randn(2, 4, 5, 7, generator=g) * 2.0
    out[0, :3, 0, 0] = 0.0  # zero vector: must give 0, not NaN
    pts, conf = postprocess(out, ("exp", -math.inf, math.inf), ("exp", 1, math.inf))
    assert pts.shape == (2, 5, 7, 3) and conf.shape == (2, 5, 7)
    assert pts.dtype == torch.float32 and conf.dtype == torch.float32
    f = out.double().numpy().transpose(0, 2, 3, 1)
    xyz = f[..., :3]
    d = np.linalg.norm(xyz, axis=-1, keepdims=True)
    ref_pts = xyz / np.maximum(d, 1e-8) * np.expm1(d)
    ref_conf = 1.0 + np.exp(f[..., 3])
    assert_points_close(pts.numpy(), ref_pts, rtol=1e-5)
    np.testing.assert_allclose(conf.numpy(), ref_conf, rtol=1e-5)
    assert (conf >= 1).all()
    assert torch.all(pts[0, 0, 0] == 0)
    # norm of the output point is expm1 of the raw norm
    np.testing.assert_allclose(
        np.linalg.norm(pts.numpy(), axis=-1), np.expm1(d[..., 0]), rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------- encoder block vs naive reference
def test_encoder_block_matches_naive_reference(dpt_net: PointmapNet) -> None:
    blk = dpt_net.enc_blocks[0]
    h, w, c, heads = 2, 3, 32, 2
    dh = c // heads
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, h * w, c, generator=g)
    cos, sin = dpt_net.enc_rope.tables(h, w)
    with torch.no_grad():
        got = blk(x, cos, sin)[0].double().numpy()
    sd = {k: v.double().numpy() for k, v in blk.state_dict().items()}

    def ln(v: np.ndarray, pre: str) -> np.ndarray:
        mu = v.mean(-1, keepdims=True)
        var = v.var(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + 1e-6) * sd[pre + ".weight"] + sd[pre + ".bias"]

    xs = x[0].double().numpy()
    y = ln(xs, "norm1")
    qkv = y @ sd["attn.qkv.weight"].T + sd["attn.qkv.bias"]  # (T, 3C), layout (3, heads, dh)
    attn_out = np.zeros((h * w, c))
    for hd in range(heads):
        q = qkv[:, 0 * c + hd * dh : 0 * c + (hd + 1) * dh]
        k = qkv[:, 1 * c + hd * dh : 1 * c + (hd + 1) * dh]
        v = qkv[:, 2 * c + hd * dh : 2 * c + (hd + 1) * dh]
        q = _rope_naive(q[None], h, w, 100.0)[0]
        k = _rope_naive(k[None], h, w, 100.0)[0]
        logits = q @ k.T / math.sqrt(dh)
        a = np.exp(logits - logits.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        attn_out[:, hd * dh : (hd + 1) * dh] = a @ v
    xs = xs + attn_out @ sd["attn.proj.weight"].T + sd["attn.proj.bias"]
    y = ln(xs, "norm2")
    hid = y @ sd["mlp.fc1.weight"].T + sd["mlp.fc1.bias"]
    hid = 0.5 * hid * (1 + np.vectorize(math.erf)(hid / math.sqrt(2)))
    xs = xs + hid @ sd["mlp.fc2.weight"].T + sd["mlp.fc2.bias"]
    assert_close(got, xs, rel=1e-6, rtol=1e-4)


# ---------------------------------------------------------------- encode once
@pytest.mark.parametrize("which", ["dpt", "linear"])
def test_encode_decode_equals_forward(
    which: str, dpt_net: PointmapNet, linear_net: PointmapNet
) -> None:
    net = dpt_net if which == "dpt" else linear_net
    i1, i2 = _imgs(2, 48, 80, 11)
    with torch.no_grad():
        fwd = net(i1, i2)
        f1, f2 = net.encode(i1), net.encode(i2)
        dec = net.decode(f1, f2, (48, 80))
    assert f1.shape == (2, 3 * 5, 32)
    for a, b in zip(fwd, dec, strict=True):  # forward batches both encodes: rounding only
        _assert_outputs_close(a, b, rtol=5e-5)
    pts1, conf1, pts2, conf2 = fwd
    assert pts1.shape == pts2.shape == (2, 48, 80, 3)
    assert conf1.shape == conf2.shape == (2, 48, 80)
    assert all(t.dtype == torch.float32 for t in fwd)
    assert all(torch.isfinite(t).all() for t in fwd)
    assert (conf1 >= 1).all() and (conf2 >= 1).all()
    # not trivially constant, and the two heads differ
    assert pts1.std() > 1e-3 and conf1.std() > 1e-3
    assert not torch.allclose(pts1, pts2)


@pytest.mark.parametrize("which", ["dpt", "linear"])
def test_batch_of_two_equals_two_singles(
    which: str, dpt_net: PointmapNet, linear_net: PointmapNet
) -> None:
    net = dpt_net if which == "dpt" else linear_net
    i1, i2 = _imgs(2, 32, 48, 12)
    with torch.no_grad():
        both = net(i1, i2)
        singles = [net(i1[b : b + 1], i2[b : b + 1]) for b in range(2)]
    for k in range(4):
        cat = torch.cat([s[k] for s in singles], 0)
        scale = float(cat.abs().max())
        torch.testing.assert_close(both[k], cat, rtol=1e-4, atol=1e-5 * scale)
    assert not torch.allclose(both[0][0], both[0][1])


def test_cross_view_dependence(dpt_net: PointmapNet) -> None:
    """View 1's prediction depends on view 2 (cross-attention) and vice versa."""
    i1, i2 = _imgs(1, 32, 48, 13)
    _, i3 = _imgs(1, 32, 48, 14)
    with torch.no_grad():
        a = dpt_net(i1, i2)
        b = dpt_net(i1, i3)
        c = dpt_net(i2, i1)
    assert (a[0] - b[0]).abs().max() > 1e-4
    assert (a[2] - b[2]).abs().max() > 1e-4
    assert not torch.allclose(a[0], c[2])  # asymmetric network


@pytest.mark.parametrize("which", ["dpt", "linear"])
def test_portrait_images(which: str, dpt_net: PointmapNet, linear_net: PointmapNet) -> None:
    net = dpt_net if which == "dpt" else linear_net
    i1, i2 = _imgs(2, 80, 48, 15)
    with torch.no_grad():
        pts1, conf1, pts2, conf2 = net(i1, i2)
        # no transposition: the transposed (landscape) input gives different numbers
        t1, _, _, _ = net(i1.transpose(2, 3).contiguous(), i2.transpose(2, 3).contiguous())
    assert pts1.shape == pts2.shape == (2, 80, 48, 3)
    assert conf1.shape == conf2.shape == (2, 80, 48)
    assert torch.isfinite(pts1).all() and torch.isfinite(pts2).all()
    assert not torch.allclose(pts1, t1.transpose(1, 2))


def test_odd_grid_dpt_crop(dpt_net: PointmapNet) -> None:
    """Odd patch grids (h=3, w=1 / 5) exercise the refinenet4 crop."""
    for hw in ((48, 16), (16, 80), (112, 48)):
        i1, i2 = _imgs(1, *hw, 16)
        with torch.no_grad():
            out = dpt_net(i1, i2)
        assert out[0].shape == (1, *hw, 3)


def test_float64_model_runs() -> None:
    torch.manual_seed(0)
    net = PointmapNet(**TINY_LINEAR).double().eval()
    i1, i2 = _imgs(1, 32, 32, 17)
    with torch.no_grad():
        pts, conf, _, _ = net(i1.double(), i2.double())
    assert pts.dtype == torch.float32 and pts.shape == (1, 32, 32, 3)


# ---------------------------------------------------------------- input validation
def test_bad_shapes_raise_value_error(linear_net: PointmapNet) -> None:
    good = torch.zeros(1, 3, 32, 48)
    with pytest.raises(ValueError, match=r"\(1, 4, 32, 48\)"):
        linear_net(torch.zeros(1, 4, 32, 48), torch.zeros(1, 4, 32, 48))
    with pytest.raises(ValueError, match=r"\(1, 3, 30, 48\)"):
        linear_net(torch.zeros(1, 3, 30, 48), torch.zeros(1, 3, 30, 48))
    with pytest.raises(ValueError, match=r"\(3, 32, 48\)"):
        linear_net(torch.zeros(3, 32, 48), torch.zeros(3, 32, 48))
    with pytest.raises(ValueError, match=r"\(1, 3, 32, 48\).*\(1, 3, 48, 32\)"):
        linear_net(good, torch.zeros(1, 3, 48, 32))
    with pytest.raises(ValueError, match=r"\(1, 3, 32, 48\).*\(2, 3, 32, 48\)"):
        linear_net(good, torch.zeros(2, 3, 32, 48))
    with pytest.raises(ValueError, match="float64"):
        linear_net(good.double(), good.double())
    with pytest.raises(ValueError, match="torch.Tensor"):
        linear_net(np.zeros((1, 3, 32, 48), np.float32), good)
    feats = linear_net.encode(good)
    with pytest.raises(ValueError, match=r"\(1, 6, 32\)"):
        linear_net.decode(feats, feats, (32, 32))
    with pytest.raises(ValueError, match="multiples"):
        linear_net.decode(feats, feats, (30, 48))


def test_constructor_validation() -> None:
    with pytest.raises(TypeError, match="bogus"):
        PointmapNet(**TINY_LINEAR, bogus=1)
    with pytest.raises(ValueError, match="dec_depth"):
        PointmapNet(**dict(TINY_DPT, dec_depth=8))
    with pytest.raises(ValueError, match="cosine"):
        PointmapNet(**dict(TINY_LINEAR, pos_embed="cosine"))
    with pytest.raises(ValueError, match="output_mode"):
        PointmapNet(**dict(TINY_LINEAR, output_mode="depth"))
    with pytest.raises(ValueError, match="conf_mode"):
        PointmapNet(**dict(TINY_LINEAR, conf_mode=None))
    # training-only arguments are accepted
    PointmapNet(**dict(TINY_LINEAR, freeze="encoder", landscape_only=True, mask_ratio=0.9))


# ---------------------------------------------------------------- full-size layout (meta device)
def test_full_size_layout_matches_spec() -> None:
    with torch.device("meta"):
        net = PointmapNet(**MONST3R_KWARGS)
    sd = net.state_dict()
    assert len(sd) == 1009
    assert len([k for k in sd if ".layer_rn." not in k]) == 1001
    assert sum(p.numel() for p in net.parameters()) == 571_171_208
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    expect = {
        "mask_token": (1, 1, 768),
        "patch_embed.proj.weight": (1024, 3, 16, 16),
        "enc_blocks.23.attn.qkv.weight": (3072, 1024),
        "enc_blocks.0.mlp.fc1.weight": (4096, 1024),
        "enc_norm.weight": (1024,),
        "decoder_embed.weight": (768, 1024),
        "dec_blocks.11.attn.qkv.weight": (2304, 768),
        "dec_blocks2.11.cross_attn.projk.bias": (768,),
        "dec_blocks2.0.norm_y.weight": (768,),
        "dec_blocks.0.mlp.fc2.weight": (768, 3072),
        "dec_norm.bias": (768,),
        "downstream_head1.dpt.act_postprocess.0.0.weight": (96, 1024, 1, 1),
        "downstream_head1.dpt.act_postprocess.0.1.weight": (96, 96, 4, 4),
        "downstream_head1.dpt.act_postprocess.1.1.weight": (192, 192, 2, 2),
        "downstream_head2.dpt.act_postprocess.2.0.weight": (384, 768, 1, 1),
        "downstream_head2.dpt.act_postprocess.3.1.weight": (768, 768, 3, 3),
        "downstream_head1.dpt.scratch.layer4_rn.weight": (256, 768, 3, 3),
        "downstream_head1.dpt.scratch.layer_rn.0.weight": (256, 96, 3, 3),
        "downstream_head2.dpt.scratch.refinenet4.resConfUnit1.conv2.bias": (256,),
        "downstream_head2.dpt.scratch.refinenet1.out_conv.weight": (256, 256, 1, 1),
        "downstream_head1.dpt.head.0.weight": (128, 256, 3, 3),
        "downstream_head1.dpt.head.2.weight": (128, 128, 3, 3),
        "downstream_head1.dpt.head.4.weight": (4, 128, 1, 1),
    }
    for k, s in expect.items():
        assert shapes.get(k) == s, k
    assert not any(k.startswith("dec_norm2") or "scratch.layer_rn.0.bias" in k for k in sd)
    assert not any("act_1_postprocess" in k for k in sd)
    enc = sum(p.numel() for n, p in net.named_parameters() if n.startswith(("patch_embed", "enc_")))
    heads = sum(p.numel() for n, p in net.named_parameters() if n.startswith("downstream"))
    assert round(enc / 1e6, 1) == 303.1 and round(heads / 1e6, 1) == 40.4


def test_fused_attention_equals_explicit(dpt_net: PointmapNet) -> None:
    """scaled_dot_product_attention (eager default) vs MatMul-Softmax-MatMul (ONNX export)."""
    i1, i2 = _imgs(2, 32, 48, 5)
    with torch.no_grad():
        fused = dpt_net.set_fused_attention(True)(i1, i2)
        explicit = dpt_net.set_fused_attention(False)(i1, i2)
        flags = {m.fused for m in dpt_net.modules() if hasattr(m, "fused")}
        dpt_net.set_fused_attention(True)
    assert flags == {False}  # every encoder, decoder and cross attention switched
    for a, b in zip(fused, explicit, strict=True):
        _assert_outputs_close(a, b, rtol=5e-5)


def test_decoder_recurrence_reads_previous_layer(dpt_net: PointmapNet) -> None:
    """Spec §1.3.4: f1_k = blk1(f1_{k-1}, f2_{k-1}); f2_k = blk2(f2_{k-1}, f1_{k-1})."""
    net = dpt_net
    i1, i2 = _imgs(1, 32, 48, 21)
    with torch.no_grad():
        e1, e2 = net.encode(i1), net.encode(i2)
        cos, sin = net.dec_rope.tables(2, 3)
        f1, f2 = net.decoder_embed(e1), net.decoder_embed(e2)
        l1, l2 = [e1], [e2]
        for k in range(net.dec_depth):
            n1 = net.dec_blocks[k](f1, f2, cos, sin, cos, sin)
            n2 = net.dec_blocks2[k](f2, f1, cos, sin, cos, sin)
            f1, f2 = n1, n2
            l1.append(f1)
            l2.append(f2)
        l1[-1], l2[-1] = net.dec_norm(l1[-1]), net.dec_norm(l2[-1])
        ref = (*net.downstream_head1(l1, (32, 48)), *net.downstream_head2(l2, (32, 48)))
        got = net.decode(e1, e2, (32, 48))
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)


def test_expm1_matches_torch() -> None:
    from monst3r_rt.network.heads import expm1

    x = torch.cat([torch.logspace(-9, 1.5, 400, dtype=torch.float64), torch.zeros(1)])
    x = torch.cat([x, -x]).float()
    torch.testing.assert_close(expm1(x), torch.expm1(x), rtol=2e-6, atol=1e-30)
