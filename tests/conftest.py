"""Shared fixtures and skip conditions. Tests never need a GPU, TensorRT or the network."""

from __future__ import annotations

import numpy as np
import pytest


def cuda_arrays_available() -> tuple[bool, str]:
    """Whether CUDA twins can be exercised here, and why not."""
    from monst3r_rt import _core

    if not _core.has_cuda:
        return False, "monst3r_rt._core built without CUDA kernels"
    if _core.cuda_device_count() == 0:
        return False, f"no usable GPU ({_core.cuda_status()['reason']})"
    try:
        import torch

        if torch.cuda.is_available():
            return True, ""
    except ImportError:
        pass
    try:
        import cupy  # noqa: F401

        return True, ""
    except ImportError:
        return False, "a GPU is present but neither torch with CUDA nor cupy is installed"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny official-layout checkpoint (random weights) and an 8-frame clip (PNG folder and
    an AVI video) for end-to-end runs of the pipeline and the command line."""
    torch = pytest.importorskip("torch")
    import cv2
    from tiny_models import TINY_LINEAR

    from monst3r_rt.network import PointmapNet, save_checkpoint
    from monst3r_rt.synthetic import make_scene

    d = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    ckpt = save_checkpoint(PointmapNet(**TINY_LINEAR), d / "tiny.pth")
    sc = make_scene(n_frames=8, size=(120, 160), n_objects=1, object_motion=0.1, seed=0)
    (d / "clip").mkdir()
    for i, im in enumerate(sc.images):
        cv2.imwrite(str(d / "clip" / f"{i:03d}.png"), im[..., ::-1])
    video = cv2.VideoWriter(str(d / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for im in sc.images:
        video.write(im[..., ::-1])
    video.release()
    return d, ckpt


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
