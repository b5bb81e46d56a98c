"""Checkpoint loading/saving: official .pth and Hugging Face layouts, aliases, safety."""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from tiny_models import TINY_DPT as _TINY_DPT  # noqa: E402

from monst3r_rt.network import (  # noqa: E402
    CheckpointError,
    PointmapNet,
    load_model,
    parse_constructor_string,
    save_checkpoint,
)

TINY_DPT = dict(_TINY_DPT, patch_embed_cls="PatchEmbedDust3R", landscape_only=False)
TINY_LINEAR = dict(TINY_DPT, head_type="linear", dec_depth=2, img_size=(32, 48))

TINY_LINEAR_STR = (
    "AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', "
    "img_size=(32, 48), head_type='linear', output_mode='pts3d', "
    "depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), enc_embed_dim=32, "
    "enc_depth=2, enc_num_heads=2, dec_embed_dim=32, dec_depth=2, dec_num_heads=2, "
    "freeze='encoder')"
)


def _perturb(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in net.named_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return net


@pytest.fixture(scope="module")
def dpt_net() -> PointmapNet:
    torch.manual_seed(0)
    return _perturb(PointmapNet(**TINY_DPT), 1).eval()


@pytest.fixture(scope="module")
def linear_net() -> PointmapNet:
    torch.manual_seed(0)
    return _perturb(PointmapNet(**TINY_LINEAR), 2).eval()


def _imgs(h: int = 32, w: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    return tuple(torch.rand(1, 3, h, w, generator=g) * 2 - 1 for _ in range(2))  # type: ignore


def _assert_same_outputs(a: PointmapNet, b: PointmapNet) -> None:
    i1, i2 = _imgs()
    with torch.no_grad():
        oa, ob = a(i1, i2), b(i1, i2)
    for x, y in zip(oa, ob, strict=True):
        assert torch.equal(x, y)
    assert oa[0].std() > 0


# ---------------------------------------------------------------- round trips
def test_pth_roundtrip_dpt(dpt_net: PointmapNet, tmp_path: Path) -> None:
    path = save_checkpoint(dpt_net, tmp_path / "m.pth")
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"model", "args"}
    assert isinstance(raw["args"], argparse.Namespace)
    assert raw["args"].model.startswith("AsymmetricCroCo3DStereo(pos_embed='RoPE100'")
    assert "depth_mode=('exp', -inf, inf)" in raw["args"].model
    sd = raw["model"]
    assert "downstream_head1.dpt.scratch.layer_rn.2.weight" in sd
    assert "downstream_head1.dpt.scratch.layer3_rn.weight" in sd
    assert "mask_token" in sd
    loaded = load_model(path)
    assert not loaded.training
    _assert_same_outputs(dpt_net, loaded)
    assert loaded.config["head_type"] == "dpt"


def test_hf_roundtrip_dpt(dpt_net: PointmapNet, tmp_path: Path) -> None:
    out = save_checkpoint(dpt_net, tmp_path / "hf", format="hf")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    text = (out / "config.json").read_text()
    assert "Infinity" in text
    cfg = json.loads(text)
    assert cfg["depth_mode"] == ["exp", -math.inf, math.inf]
    assert cfg["img_size"] == [64, 64] and cfg["landscape_only"] is False
    tensors = safetensors_torch.load_file(str(out / "model.safetensors"))
    assert not any(".layer_rn." in k for k in tensors)
    assert "downstream_head2.dpt.scratch.layer1_rn.weight" in tensors
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    assert (
        meta["downstream_head2.dpt.scratch.layer_rn.0.weight"]
        == "downstream_head2.dpt.scratch.layer1_rn.weight"
    )
    _assert_same_outputs(dpt_net, load_model(out))
    _assert_same_outputs(dpt_net, load_model(out / "model.safetensors"))


@pytest.mark.parametrize("fmt", ["pth", "hf"])
def test_linear_roundtrip(linear_net: PointmapNet, tmp_path: Path, fmt: str) -> None:
    out = save_checkpoint(linear_net, tmp_path / ("m.pth" if fmt == "pth" else "hf"), format=fmt)
    loaded = load_model(out)
    assert loaded.head_type == "linear"
    assert "downstream_head1.proj.weight" in loaded.state_dict()
    _assert_same_outputs(linear_net, loaded)


def test_load_dtype_and_meta_free(linear_net: PointmapNet, tmp_path: Path) -> None:
    out = save_checkpoint(linear_net, tmp_path / "m.pth")
    net = load_model(out, dtype=torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in net.parameters())
    assert all(b.device.type == "cpu" for b in net.buffers())
    i1, i2 = _imgs()
    with torch.no_grad():
        pts, *_ = net(i1.double(), i2.double())
    assert pts.dtype == torch.float32


def test_overwrite(linear_net: PointmapNet, tmp_path: Path) -> None:
    p = save_checkpoint(linear_net, tmp_path / "m.pth")
    with pytest.raises(FileExistsError, match="m.pth"):
        save_checkpoint(linear_net, p)
    save_checkpoint(linear_net, p, overwrite=True)
    d = save_checkpoint(linear_net, tmp_path / "hf", format="hf")
    with pytest.raises(FileExistsError):
        save_checkpoint(linear_net, d, format="hf")
    save_checkpoint(linear_net, d, format="hf", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["hf", "m.pth"]  # no temp leftovers
    load_model(d)


# ---------------------------------------------------------------- official-layout variants
def _official_pth(path: Path, sd: dict, model_str: str, **extra: object) -> Path:
    torch.save({"model": sd, "args": argparse.Namespace(model=model_str, lr=1e-4), **extra}, path)
    return path


def test_official_string_with_many_ar_and_training_keys(
    linear_net: PointmapNet, tmp_path: Path
) -> None:
    sd = linear_net.state_dict()
    p = _official_pth(
        tmp_path / "o.pth",
        sd,
        TINY_LINEAR_STR,
        epoch=3,
        best_so_far=0.5,
        optimizer={"state": {}, "param_groups": [{"lr": 1e-4}]},
    )
    net = load_model(p)
    assert net.config["patch_embed_cls"] == "PatchEmbedDust3R"
    assert net.config["landscape_only"] is False
    _assert_same_outputs(linear_net, net)


def test_alias_keys_either_name(dpt_net: PointmapNet, tmp_path: Path) -> None:
    sd = dpt_net.state_dict()
    only_alias = {k: v for k, v in sd.items() if not re.search(r"scratch\.layer\d_rn\.", k)}
    assert any(".layer_rn.3." in k for k in only_alias)
    assert not any("layer4_rn" in k for k in only_alias)
    p = _official_pth(tmp_path / "a.pth", only_alias, dpt_net.constructor_string())
    _assert_same_outputs(dpt_net, load_model(p))
    only_canon = {k: v for k, v in sd.items() if ".layer_rn." not in k}
    assert len(only_canon) == len(sd) - 8 == len(only_alias)
    p = _official_pth(tmp_path / "c.pth", only_canon, dpt_net.constructor_string())
    _assert_same_outputs(dpt_net, load_model(p))


def test_missing_dec_blocks2_copied(linear_net: PointmapNet, tmp_path: Path) -> None:
    sd = {
        k: v
        for k, v in linear_net.state_dict().items()
        if not k.startswith("dec_blocks2") and k != "mask_token"
    }
    p = _official_pth(tmp_path / "d.pth", sd, TINY_LINEAR_STR)
    net = load_model(p)
    lsd = net.state_dict()
    for k, v in lsd.items():
        if k.startswith("dec_blocks."):
            k2 = "dec_blocks2." + k[len("dec_blocks.") :]
            assert torch.equal(lsd[k2], v)
            assert lsd[k2].data_ptr() != v.data_ptr()
    assert not torch.equal(
        lsd["dec_blocks.0.attn.qkv.weight"],
        linear_net.state_dict()["dec_blocks2.0.attn.qkv.weight"],
    )
    save_checkpoint(net, tmp_path / "hf", format="hf")  # no shared storage


def test_unexpected_and_missing_keys_listed(linear_net: PointmapNet, tmp_path: Path) -> None:
    sd = dict(linear_net.state_dict())
    sd["downstream_head1.bogus.weight"] = torch.zeros(3)
    p = _official_pth(tmp_path / "u.pth", sd, TINY_LINEAR_STR)
    with pytest.raises(CheckpointError, match=r"u\.pth.*unexpected 1 key.*bogus"):
        load_model(p)
    sd = dict(linear_net.state_dict())
    del sd["enc_norm.weight"]
    p = _official_pth(tmp_path / "m.pth", sd, TINY_LINEAR_STR)
    with pytest.raises(CheckpointError, match=r"missing 1 key.*enc_norm\.weight"):
        load_model(p)
    sd = dict(linear_net.state_dict())
    sd["enc_norm.weight"] = torch.zeros(7)
    p = _official_pth(tmp_path / "s.pth", sd, TINY_LINEAR_STR)
    with pytest.raises(CheckpointError, match=r"enc_norm\.weight.*\(7,\)"):
        load_model(p)
    # DPT state dict against a linear constructor: many keys, count reported
    p = _official_pth(
        tmp_path / "x.pth",
        dict(linear_net.state_dict()),
        TINY_LINEAR_STR.replace("'linear'", "'dpt'").replace("dec_depth=2", "dec_depth=10"),
    )
    with pytest.raises(CheckpointError, match=r"missing \d+ key.*more"):
        load_model(p)


# ---------------------------------------------------------------- failures
def test_load_failures_name_the_file(tmp_path: Path, linear_net: PointmapNet) -> None:
    with pytest.raises(CheckpointError, match="nope.pth"):
        load_model(tmp_path / "nope.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt.pth"):
        load_model(bad)
    bare = tmp_path / "bare.pth"
    torch.save(linear_net.state_dict(), bare)
    with pytest.raises(CheckpointError, match=r"bare\.pth.*no 'args'"):
        load_model(bare)
    only_model = tmp_path / "only_model.pth"
    torch.save({"model": linear_net.state_dict()}, only_model)
    with pytest.raises(CheckpointError, match=r"only_model\.pth.*no 'args'"):
        load_model(only_model)
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    with pytest.raises(CheckpointError, match="emptydir"):
        load_model(empty_dir)
    hf = save_checkpoint(linear_net, tmp_path / "hf", format="hf")
    (hf / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(hf)
    (hf / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(hf)
    lonely = tmp_path / "lonely" / "w.safetensors"
    lonely.parent.mkdir()
    lonely.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(lonely)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch_save", "raw_pickle"])
def test_malicious_pickle_refused(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    if container == "torch_save":
        torch.save({"model": {}, "args": _Evil(str(marker))}, path)
    else:
        path.write_bytes(pickle.dumps({"model": {}, "args": _Evil(str(marker))}, protocol=2))
    with pytest.raises(CheckpointError, match=r"evil\.pth.*(refused|cannot read)"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text,needle",
    [
        ("AsymmetricCroCo3DStereo(x=__import__('os'))", "__import__"),
        ("AsymmetricCroCo3DStereo(x=os.system)", "os.system"),
        ("AsymmetricCroCo3DStereo(x=(1, open('f')))", "open"),
        ("Evil(enc_depth=2)", "Evil"),
        ("os.AsymmetricCroCo3DStereo(enc_depth=2)", "os.AsymmetricCroCo3DStereo"),
        ("AsymmetricCroCo3DStereo(2)", "positional"),
        ("AsymmetricCroCo3DStereo(**kw)", "kw"),
        ("AsymmetricCroCo3DStereo(x=nan)", "nan"),
        ("AsymmetricCroCo3DStereo(x=-'a')", "unary"),
        ("AsymmetricCroCo3DStereo(x=1", "cannot parse"),
        ("[AsymmetricCroCo3DStereo()]", "not a call"),
    ],
)
def test_constructor_string_rejected(text: str, needle: str) -> None:
    with pytest.raises(CheckpointError, match=r"ckpt\.pth.*" + re.escape(needle)):
        parse_constructor_string(text, "ckpt.pth")


def test_constructor_string_in_file_rejected(tmp_path: Path, linear_net: PointmapNet) -> None:
    p = _official_pth(
        tmp_path / "inj.pth",
        linear_net.state_dict(),
        "AsymmetricCroCo3DStereo(enc_depth=__import__('os').getpid())",
    )
    with pytest.raises(CheckpointError, match=r"inj\.pth.*__import__"):
        load_model(p)


def test_official_constructor_strings_parse() -> None:
    monst3r = (
        "AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', "
        "img_size=(512, 512), head_type='dpt', output_mode='pts3d', "
        "depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf),     enc_embed_dim=1024, "
        "enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12,     "
        "dec_num_heads=12, freeze='encoder')"
    )
    kw = parse_constructor_string(monst3r, "x")
    assert kw["depth_mode"] == ("exp", -math.inf, math.inf)
    assert kw["img_size"] == (512, 512) and kw["freeze"] == "encoder"
    dust3r_224 = (
        "AsymmetricCroCo3DStereo(pos_embed='RoPE100', img_size=(224, 224), head_type='linear', "
        "output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
        "enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, "
        "dec_num_heads=12)"
    )
    for s in (monst3r, dust3r_224, monst3r.replace("'dpt'", "'linear'")):
        with torch.device("meta"):
            net = PointmapNet(**parse_constructor_string(s, "x"))
        n_alias = sum(".layer_rn." in k for k in net.state_dict())
        assert n_alias == (8 if "'dpt'" in s else 0)


# ---------------------------------------------------------------- hub (no network)
def test_hub_repo_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, linear_net: PointmapNet
) -> None:
    hub = pytest.importorskip("huggingface_hub")
    repo = "Junyi42/MonST3R_PO-TA-S-W_ViTLarge_BaseDecoder_512_dpt"

    def offline(repo_id: str, **kw: object) -> str:
        raise OSError("offline and not in cache")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match=r"MonST3R_PO-TA-S-W.*local path"):
        load_model(repo)

    local = save_checkpoint(linear_net, tmp_path / "snap", format="hf")
    calls: list[str] = []

    def cached(repo_id: str, **kw: object) -> str:
        calls.append(repo_id)
        return str(local)

    monkeypatch.setattr(hub, "snapshot_download", cached)
    _assert_same_outputs(linear_net, load_model(repo))
    assert calls == [repo]
