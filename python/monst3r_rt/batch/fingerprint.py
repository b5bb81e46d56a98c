"""The configuration fingerprint of a run: what decides whether an existing output folder is
still valid (resume) or must be recomputed. ``monst3r-rt batch`` records it in each video's
``run.json`` under ``batch``, ``monst3r-rt eval`` in each sequence's under ``eval``."""

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
        weights_hash: :func:`weights_hash` of the weights (the sha256 of a local file, the repo
            id for a Hub id, or an engine's recorded hash).

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


def weights_hash(weights: str | os.PathLike[str] | None, engine: str | os.PathLike[str] | None
                 = None) -> str:  # fmt: skip
    """The weights' fingerprint without loading them: the hash an export folder ``engine``
    recorded when one is given, else :func:`monst3r_rt.runinfo.weights_fingerprint` of
    ``weights`` (the official weights' Hub id for None)."""
    if engine is not None:  # an export records its weights' hash
        from ..deploy.export import Manifest

        return Manifest.load(engine).weights_hash
    from ..pipeline import OFFICIAL_WEIGHTS
    from ..runinfo import weights_fingerprint

    return weights_fingerprint(OFFICIAL_WEIGHTS if weights is None else weights)


def options_fingerprint(mode: str, options: dict[str, Any]) -> str:
    """:func:`config_fingerprint` of pipeline options as :func:`~monst3r_rt.batch.run_many` takes
    them (``mode`` ``"offline"`` or ``"stream"``; defaults filled in, so giving a default
    explicitly changes nothing) with the :func:`weights_hash` of their ``weights`` / ``engine``.
    Loads nothing; raises :class:`~monst3r_rt.batch.BatchError` for an unknown option."""
    from .worker import normalize_options

    opts = normalize_options(mode, options)
    return config_fingerprint(mode, opts, weights_hash(opts["weights"], opts["engine"]))


def stored_fingerprint(folder: str | os.PathLike[str], section: str = "batch") -> str | None:
    """``<section>.fingerprint`` of a complete output folder's ``run.json`` (None when the
    folder, its ``run.json`` or ``reconstruction.npz`` is missing, or it records none: not
    written by a batch (``section="batch"``) / an evaluation (``"eval"``))."""
    from ..reconstruction import NPZ

    folder = os.fspath(folder)
    run = os.path.join(folder, "run.json")
    if not (os.path.isfile(run) and os.path.isfile(os.path.join(folder, NPZ))):
        return None
    try:
        with open(run, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    record = meta.get(section) if isinstance(meta, dict) else None
    return record.get("fingerprint") if isinstance(record, dict) else None


def record_run(folder: str | os.PathLike[str], section: str, record: dict[str, Any]) -> None:
    """Add ``record`` to ``folder/run.json`` under ``section`` (e.g. ``{"fingerprint": ...}``
    for :func:`stored_fingerprint`). The folder is a temporary one not yet renamed into place,
    so the file is rewritten directly."""
    path = os.path.join(os.fspath(folder), "run.json")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    meta[section] = record
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, default=str)
