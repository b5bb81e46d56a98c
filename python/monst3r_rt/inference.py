"""Encode-once pairwise inference: every frame through the encoder once, pairs decoded in batches.

The official pipeline re-encodes both images of every pair (about 2E/N ≈ 18 encodes per frame for
``swinstride-5``); here each frame's encoder tokens are computed once and shared by all its pairs,
which gives the same numbers up to float rounding.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._atomic import savez_atomic
from ._progress import progress as _progress
from .pairs import check_pairs

if TYPE_CHECKING:
    import torch


_FIELDS = ("edges", "pts_i", "pts_j", "conf_i", "conf_j")


@dataclass
class PairwisePredictions:
    """Network output for a pair graph, in the official conventions.

    Attributes:
        edges: (E,2) int64 frame indices (i, j).
        pts_i: (E,H,W,3) float32, view i's pointmap in camera i's frame
            (official ``pred1['pts3d']``).
        pts_j: (E,H,W,3) float32, view j's pointmap in camera i's frame
            (official ``pred2['pts3d_in_other_view']``).
        conf_i: (E,H,W) float32 ≥ 1, confidence of ``pts_i``.
        conf_j: (E,H,W) float32 ≥ 1, confidence of ``pts_j``.
    """

    edges: np.ndarray
    pts_i: np.ndarray
    pts_j: np.ndarray
    conf_i: np.ndarray
    conf_j: np.ndarray

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.edges, dtype=np.int64).reshape(-1, 2)
        e = len(self.edges)
        for name in ("pts_i", "pts_j", "conf_i", "conf_j"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float32))
        if self.pts_i.ndim != 4 or self.pts_i.shape[0] != e or self.pts_i.shape[3] != 3:
            raise ValueError(f"pts_i must have shape ({e},H,W,3), got {self.pts_i.shape}")
        hw = self.pts_i.shape[1:3]
        for name, shape in (
            ("pts_j", (e, *hw, 3)),
            ("conf_i", (e, *hw)),
            ("conf_j", (e, *hw)),
        ):
            got = getattr(self, name).shape
            if got != shape:
                raise ValueError(f"{name} must have shape {shape}, got {got}")

    def __len__(self) -> int:
        return len(self.edges)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the pointmaps."""
        return int(self.pts_i.shape[1]), int(self.pts_i.shape[2])

    @property
    def num_frames(self) -> int:
        """1 + the largest frame index referenced by an edge."""
        return int(self.edges.max()) + 1 if len(self.edges) else 0

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an ``.npz`` atomically (temporary file in the same folder, then rename)."""
        savez_atomic(path, {k: getattr(self, k) for k in _FIELDS})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PairwisePredictions:
        """Read a file written by :meth:`save`; errors name the file and what is missing."""
        try:
            with np.load(os.fspath(path), allow_pickle=False) as data:
                missing = [k for k in _FIELDS if k not in data.files]
                if missing:
                    raise ValueError(f"{path}: not a PairwisePredictions file, missing {missing}")
                return cls(**{k: data[k] for k in _FIELDS})
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: cannot read pairwise predictions: {exc}") from exc


def _as_image_tensor(frames: Any) -> torch.Tensor:
    """Frames / (N,3,H,W) array / tensor → (N,3,H,W) float32 tensor normalised to [-1, 1]."""
    import torch

    if hasattr(frames, "normalized"):
        frames = frames.normalized()
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        got = tuple(frames.shape) if hasattr(frames, "shape") else type(frames).__name__
        raise ValueError(f"frames must be Frames or an (N,3,H,W) normalised array, got {got}")
    if not frames.is_floating_point():
        raise ValueError(f"frames must be float normalised to [-1, 1], got dtype {frames.dtype}")
    return frames


def infer_pairs(
    net: Any,
    frames: Any,
    pairs: Sequence[tuple[int, int]] | np.ndarray,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = True,
) -> PairwisePredictions:
    """Run the network on every pair, encoding each frame once.

    Args:
        net: a :class:`PointmapNet` (run in PyTorch, float32, on ``device``) or any
            :class:`~monst3r_rt.deploy.backends.Backend` (torch in fp16/bf16, onnxruntime,
            TensorRT).
        frames: :class:`~monst3r_rt.frames.Frames`, or (N,3,H,W) float images in [-1, 1].
        pairs: E ordered pairs (i, j), e.g. from :func:`~monst3r_rt.pairs.make_pairs`.
        batch_size: frames per encoder batch and pairs per decoder batch.
        device: torch device string for a bare network, e.g. ``"cpu"`` or ``"cuda"``.
        progress: show a progress bar (tqdm) while encoding and decoding.

    Returns:
        :class:`PairwisePredictions` with numpy float32 arrays on the host.
    """
    from .deploy.backends import as_backend

    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    images = _as_image_tensor(frames).detach().cpu().float().numpy()
    n, _, h, w = images.shape
    edges = check_pairs(pairs, n)
    backend = as_backend(net, device)
    backend.check_size((h, w))

    used = np.unique(edges)
    slot = np.full(n, -1, dtype=np.int64)
    slot[used] = np.arange(len(used))
    e = len(edges)
    out = {
        "pts_i": np.empty((e, h, w, 3), np.float32),
        "pts_j": np.empty((e, h, w, 3), np.float32),
        "conf_i": np.empty((e, h, w), np.float32),
        "conf_j": np.empty((e, h, w), np.float32),
    }
    tokens = []
    starts = range(0, len(used), batch_size)
    for s in _progress(starts, len(starts), "encode frames", progress):
        tokens.append(backend.encode(images[used[s : s + batch_size]]))
    feats = backend.cat(tokens)
    del tokens
    starts = range(0, e, batch_size)
    for s in _progress(starts, len(starts), "decode pairs", progress):
        b = edges[s : s + batch_size]
        fi = backend.take(feats, slot[b[:, 0]])
        fj = backend.take(feats, slot[b[:, 1]])
        res = backend.decode(fi, fj, (h, w))
        for name, t in zip(("pts_i", "conf_i", "pts_j", "conf_j"), res, strict=True):
            out[name][s : s + len(b)] = t
    return PairwisePredictions(edges=edges, **out)
