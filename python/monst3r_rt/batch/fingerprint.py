"""The configuration fingerprint of a batch: what decides whether an existing output folder is
still valid (resume) or must be recomputed."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, is_dataclass
from typing import Any

from .._version import __version__

# options that change only how fast or where a run goes, not what it writes
NEUTRAL_OPTIONS = frozenset({"batch_size", "device", "progress"})


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(value):
        return getattr(value, "__qualname__", type(value).__qualname__)
    if isinstance(value, float) and value != value:
        return "nan"
    return value


def config_fingerprint(mode: str, options: dict[str, Any], weights_hash: str) -> str:
    """``sha256:<hex>`` of everything that changes a video's output folder.

    Args:
        mode: ``"offline"`` or ``"stream"``.
        options: the pipeline options (as given to :func:`~monst3r_rt.batch.run_many`, defaults
            filled in); :data:`NEUTRAL_OPTIONS` (batch size, device) are left out.
        weights_hash: :func:`monst3r_rt.pipeline.weights_fingerprint` of the weights (the sha256
            of a local file, the repo id for a Hub id) or an engine's recorded hash.

    Returns:
        the fingerprint; it also covers the package version (``monst3r_rt.__version__``).
    """
    record = {
        "mode": mode,
        "options": {k: _plain(v) for k, v in sorted(options.items()) if k not in NEUTRAL_OPTIONS},
        "weights": weights_hash,
        "version": __version__,
    }
    blob = json.dumps(record, sort_keys=True, default=repr).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def stored_fingerprint(folder: str) -> str | None:
    """``batch.fingerprint`` of a complete output folder's ``run.json`` (None when the folder,
    its ``run.json`` or ``reconstruction.npz`` is missing, or it was not written by a batch)."""
    from ..reconstruction import NPZ

    run = os.path.join(folder, "run.json")
    if not (os.path.isfile(run) and os.path.isfile(os.path.join(folder, NPZ))):
        return None
    try:
        with open(run, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    batch = meta.get("batch") if isinstance(meta, dict) else None
    return batch.get("fingerprint") if isinstance(batch, dict) else None
