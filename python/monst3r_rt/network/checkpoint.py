"""Safe loading and saving of MonST3R / DUSt3R checkpoints.

Supported sources (spec §1.9):

* Official ``.pth``: ``{'model': state_dict, 'args': Namespace(model=<constructor string>)}``.
  Loaded with ``torch.load(weights_only=True)`` and only :class:`argparse.Namespace` allowed
  beyond plain tensors/containers; the constructor string is parsed with :mod:`ast` (never
  evaluated).
* Hugging Face layout: a directory with ``config.json`` + ``model.safetensors``, a
  ``.safetensors`` file with ``config.json`` beside it, or a Hub repo id such as
  ``Junyi42/MonST3R_PO-TA-S-W_ViTLarge_BaseDecoder_512_dpt`` (downloaded via ``huggingface_hub``
  into its cache).

Every failure raises :class:`CheckpointError` (a :class:`ValueError`) naming the file.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .model import OFFICIAL_CLASS_NAME, PointmapNet

__all__ = [
    "CheckpointError",
    "load_model",
    "save_checkpoint",
    "parse_constructor_string",
    "load_state_dict_into",
]

#: Class names accepted in a ``.pth`` constructor string.
ALLOWED_CLASS_NAMES = frozenset({OFFICIAL_CLASS_NAME})

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_ALIAS_RE = re.compile(r"^(.*\.scratch\.)layer_rn\.(\d+)\.(.+)$")
_CANON_RE = re.compile(r"^(.*\.scratch\.)layer(\d+)_rn\.(.+)$")


class CheckpointError(ValueError):
    """A checkpoint could not be read, parsed or matched to the network."""


# ---------------------------------------------------------------- constructor string
def _literal(node: ast.AST, text: str, where: str) -> Any:
    """Evaluate a whitelisted literal node (numbers, strings, bools, None, tuples/lists, inf)."""
    if isinstance(node, ast.Constant) and (
        node.value is None or isinstance(node.value, (bool, int, float, str))
    ):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(e, text, where) for e in node.elts)
    if isinstance(node, ast.Name) and node.id == "inf":
        return math.inf
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand, text, where)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CheckpointError(
                f"{where}: unary sign on a non-number in constructor string: "
                f"{ast.get_source_segment(text, node)!r}"
            )
        return -v if isinstance(node.op, ast.USub) else v
    segment = ast.get_source_segment(text, node) or ast.dump(node)
    raise CheckpointError(
        f"{where}: constructor string has a non-literal value {segment!r} "
        f"({type(node).__name__}); only numbers, strings, tuples, inf and -inf are allowed"
    )


def parse_constructor_string(text: str, where: str = "<string>") -> dict[str, Any]:
    """Parse ``"AsymmetricCroCo3DStereo(k=v, ...)"`` into keyword arguments without evaluating it.

    Exactly one call of an allowed class name with literal keyword arguments is accepted; nested
    calls, attribute access, unknown names, positional or ``**`` arguments raise
    :class:`CheckpointError` naming ``where`` and the offending text.
    """
    if not isinstance(text, str):
        raise CheckpointError(f"{where}: constructor string must be str, got {type(text).__name__}")
    src = text.strip()
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as e:
        raise CheckpointError(f"{where}: cannot parse constructor string {src!r}: {e.msg}") from e
    call = tree.body
    if not isinstance(call, ast.Call):
        raise CheckpointError(f"{where}: constructor string is not a call: {src!r}")
    if not isinstance(call.func, ast.Name):
        raise CheckpointError(
            f"{where}: constructor must be a plain class name, got "
            f"{ast.get_source_segment(src, call.func)!r}"
        )
    if call.func.id not in ALLOWED_CLASS_NAMES:
        raise CheckpointError(
            f"{where}: unknown model class {call.func.id!r} in constructor string; "
            f"allowed: {sorted(ALLOWED_CLASS_NAMES)}"
        )
    if call.args:
        raise CheckpointError(
            f"{where}: positional arguments are not allowed in constructor string: "
            f"{ast.get_source_segment(src, call.args[0])!r}"
        )
    kwargs: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise CheckpointError(
                f"{where}: '**' arguments are not allowed in constructor string: "
                f"{ast.get_source_segment(src, kw)!r}"
            )
        if kw.arg in kwargs:
            raise CheckpointError(f"{where}: duplicate argument {kw.arg!r} in constructor string")
        kwargs[kw.arg] = _literal(kw.value, src, where)
    return kwargs


def _demo_normalise(kwargs: dict[str, Any]) -> dict[str, Any]:
    """What the official demo ``load_model`` does: PatchEmbedDust3R and ``landscape_only=False``."""
    out = dict(kwargs)
    if out.get("patch_embed_cls") == "ManyAR_PatchEmbed":
        out["patch_embed_cls"] = "PatchEmbedDust3R"
    out["landscape_only"] = False
    return out


def _build(kwargs: dict[str, Any], where: str) -> PointmapNet:
    """Build a network on the ``meta`` device (no weight initialisation)."""
    try:
        with torch.device("meta"):
            return PointmapNet(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: unsupported model configuration: {e}") from e


# ---------------------------------------------------------------- state dict
def _fmt_keys(keys: list[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return f"{len(keys)} key(s): {keys[:n]}{more}"


def load_state_dict_into(
    net: PointmapNet, state_dict: Mapping[str, Any], where: str = "<state_dict>"
) -> None:
    """Load an official-layout state dict into ``net`` (which may live on the ``meta`` device).

    Rules (spec §1.8): ``scratch.layer_rn.N`` and ``scratch.layer{N+1}_rn`` are aliases (either
    suffices); ``mask_token`` is optional; a missing ``dec_blocks2`` is copied from
    ``dec_blocks``. Any other missing or unexpected key, or a shape mismatch, raises
    :class:`CheckpointError`. Tensors are assigned (no copy) then the module is materialised.
    """
    sd: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(
                f"{where}: state dict entry {k!r} is not a tensor ({type(v).__name__})"
            )
        sd[k] = v
    # DPT scratch aliases.
    for k in list(sd):
        m = _ALIAS_RE.match(k)
        if m:
            other = f"{m.group(1)}layer{int(m.group(2)) + 1}_rn.{m.group(3)}"
            sd.setdefault(other, sd[k])
        m = _CANON_RE.match(k)
        if m:
            other = f"{m.group(1)}layer_rn.{int(m.group(2)) - 1}.{m.group(3)}"
            sd.setdefault(other, sd[k])
    # DUSt3R-from-CroCo: duplicate the decoder (official load_state_dict override).
    if not any(k.startswith("dec_blocks2") for k in sd):
        for k in list(sd):
            if k.startswith("dec_blocks."):
                # clone: the two decoders must not share storage (safetensors refuses that)
                sd["dec_blocks2." + k[len("dec_blocks.") :]] = sd[k].clone()

    own = net.state_dict(keep_vars=True)
    if "mask_token" in sd and tuple(sd["mask_token"].shape) != tuple(own["mask_token"].shape):
        del sd["mask_token"]  # unused at inference
    if "mask_token" not in sd:
        sd["mask_token"] = torch.zeros(own["mask_token"].shape, dtype=torch.float32)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + _fmt_keys(missing))
        if unexpected:
            parts.append("unexpected " + _fmt_keys(unexpected))
        raise CheckpointError(
            f"{where}: state dict does not match the model configuration: " + "; ".join(parts)
        )
    bad = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if bad:
        raise CheckpointError(
            f"{where}: {len(bad)} tensor shape mismatch(es): {bad[:5]}"
            + (" ..." if len(bad) > 5 else "")
        )
    # Cast to float32 where needed so that `.to(dtype)` later applies uniformly.
    sd = {
        k: (v.float() if v.is_floating_point() and v.dtype != torch.float32 else v)
        for k, v in sd.items()
    }
    net.load_state_dict(sd, strict=True, assign=True)


# ---------------------------------------------------------------- readers
def _read_pth(path: Path) -> tuple[dict[str, Any], Mapping[str, Any]]:
    where = str(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure becomes a CheckpointError
        msg = str(e)
        if "weights_only" in msg or "Unsupported global" in msg or "Weights only" in msg:
            first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
            raise CheckpointError(
                f"{where}: refused to load: the file contains pickled objects outside the "
                f"allow-list (tensors, containers, argparse.Namespace). Detail: {first}"
            ) from e
        raise CheckpointError(
            f"{where}: cannot read as a PyTorch checkpoint ({type(e).__name__}: {msg[:300]})"
        ) from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{where}: expected a dict with 'model' and 'args', got {type(ckpt).__name__}"
        )
    if "args" not in ckpt:
        hint = "it looks like a bare state dict" if "model" not in ckpt else "it has 'model' only"
        raise CheckpointError(
            f"{where}: checkpoint has no 'args' (the model constructor string); {hint}. "
            "Official .pth checkpoints are {'model': state_dict, 'args': Namespace(model=...)}"
        )
    if "model" not in ckpt or not isinstance(ckpt["model"], Mapping):
        raise CheckpointError(f"{where}: checkpoint has no 'model' state dict")
    args = ckpt["args"]
    model_str = args.get("model") if isinstance(args, Mapping) else getattr(args, "model", None)
    if not isinstance(model_str, str):
        raise CheckpointError(f"{where}: checkpoint 'args' has no string attribute 'model'")
    kwargs = _demo_normalise(parse_constructor_string(model_str, where))
    return kwargs, ckpt["model"]


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: config.json not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read config.json ({e})") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: config.json must hold a JSON object")
    return cfg


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as e:  # pragma: no cover - dependency
        raise CheckpointError(
            f"{path}: reading .safetensors needs the 'safetensors' package"
        ) from e
    if not path.is_file():
        raise CheckpointError(f"{path}: model.safetensors not found")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"{path}: cannot read safetensors file ({type(e).__name__}: {e})"
        ) from e


def _read_hf(config_path: Path, weights_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = _read_config_json(config_path)
    return cfg, _read_safetensors(weights_path)


def _download(repo_id: str) -> Path:
    try:
        import huggingface_hub
    except ImportError as e:
        raise CheckpointError(
            f"{repo_id}: not a local file or directory, and 'huggingface_hub' is not installed to "
            "fetch it; pass the path of a local .pth, .safetensors or model directory"
        ) from e
    try:
        local = huggingface_hub.snapshot_download(
            repo_id, allow_patterns=["config.json", "model.safetensors"]
        )
    except Exception as e:  # noqa: BLE001 - offline, 404, auth...
        raise CheckpointError(
            f"{repo_id}: not a local path and could not be fetched from the Hugging Face Hub "
            f"({type(e).__name__}: {str(e)[:200]}). If offline, download the checkpoint elsewhere "
            "and pass a local path: a directory with config.json + model.safetensors, a "
            ".safetensors file with config.json beside it, or an official .pth file"
        ) from e
    return Path(local)


def load_model(
    source: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PointmapNet:
    """Load a pointmap network from an official ``.pth``, a HF directory/file, or a Hub repo id.

    Args:
        source: ``.pth`` file; directory with ``config.json`` + ``model.safetensors``;
            ``.safetensors`` file with ``config.json`` beside it; or a Hub repo id
            (``owner/name``) fetched through ``huggingface_hub`` into its cache.
        device: target device.
        dtype: target floating dtype of the weights (float32 by default).

    Returns:
        A :class:`PointmapNet` in ``eval()`` mode.

    Raises:
        CheckpointError: missing/corrupt file, unsafe pickle, bad constructor string, or state
            dict not matching the configuration. The message names the file.
    """
    src = os.fspath(source)
    path = Path(src).expanduser()
    if path.is_dir():
        where = str(path)
        cfg, sd = _read_hf(path / "config.json", path / "model.safetensors")
    elif path.is_file():
        where = str(path)
        if path.suffix == ".safetensors":
            cfg, sd = _read_hf(path.parent / "config.json", path)
        else:
            cfg, sd = _read_pth(path)
    elif (
        isinstance(source, str)
        and _REPO_ID_RE.match(src)
        and not src.endswith((".pth", ".pt", ".safetensors", ".json"))
    ):
        local = _download(src)
        where = f"{src} ({local})"
        cfg, sd = _read_hf(local / "config.json", local / "model.safetensors")
    else:
        raise CheckpointError(f"{src}: no such file or directory")

    net = _build(cfg, where)
    load_state_dict_into(net, sd, where)
    net.reset_buffers("cpu")
    net = net.to(device=device, dtype=dtype).channels_last_heads()
    net.eval()
    return net


# ---------------------------------------------------------------- writers
def _hf_config(net: PointmapNet) -> str:
    return json.dumps(net.config, sort_keys=True, indent=2, allow_nan=True)


def _cpu_state_dict(net: PointmapNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def save_checkpoint(
    net: PointmapNet,
    path: str | os.PathLike[str],
    format: str = "pth",  # noqa: A002 - public keyword name
    overwrite: bool = False,
) -> Path:
    """Write ``net`` in an official layout, atomically (temp file/dir, then rename).

    Args:
        net: the network.
        path: ``.pth`` file path (``format='pth'``) or output directory (``format='hf'``).
        format: ``'pth'`` -> ``{'model': state_dict, 'args': Namespace(model=<constructor
            string>)}`` via ``torch.save`` (state dict with both ``layer_rn.N`` and
            ``layerN+1_rn`` names, like the official files); ``'hf'`` -> directory with
            ``config.json`` (constructor kwargs, ``Infinity`` literals) and ``model.safetensors``
            (aliases dropped, recorded in the metadata like ``safetensors.torch.save_model``).
        overwrite: replace an existing file/directory; otherwise :class:`FileExistsError`.

    Returns:
        The written path.
    """
    if format not in ("pth", "hf"):
        raise ValueError(f"format must be 'pth' or 'hf', got {format!r}")
    if not isinstance(net, PointmapNet):
        raise TypeError(f"net must be a PointmapNet, got {type(net).__name__}")
    out = Path(path).expanduser()
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
        if format == "pth" and out.is_dir():
            raise FileExistsError(f"{out} is a directory; cannot overwrite it with a .pth file")
        if format == "hf" and not out.is_dir():
            raise FileExistsError(
                f"{out} is not a directory; cannot overwrite it with an HF layout"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    sd = _cpu_state_dict(net)

    if format == "pth":
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        try:
            torch.save(
                {"model": sd, "args": argparse.Namespace(model=net.constructor_string())}, tmp
            )
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return out

    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {"format": "pt"}
    for k, v in sd.items():
        m = _ALIAS_RE.match(k)
        if m:
            metadata[k] = f"{m.group(1)}layer{int(m.group(2)) + 1}_rn.{m.group(3)}"
            continue
        tensors[k] = v.contiguous()
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmpdir / "config.json").write_text(_hf_config(net) + "\n", encoding="utf-8")
        save_file(tensors, str(tmpdir / "model.safetensors"), metadata=metadata)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmpdir, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmpdir, out)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return out
