"""Encode-once pairwise inference against the per-pair forward, and PairwisePredictions I/O."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_models import TINY_DPT  # noqa: E402
from tolerance import assert_close, assert_points_close  # noqa: E402

from monst3r_rt.inference import PairwisePredictions, infer_pairs  # noqa: E402
from monst3r_rt.network import PointmapNet  # noqa: E402
from monst3r_rt.pairs import make_pairs  # noqa: E402


@pytest.fixture(scope="module")
def net() -> PointmapNet:
    torch.manual_seed(0)
    model = PointmapNet(**TINY_DPT).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial weights, scaled so that outputs stay O(1)
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(0.5 * torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif not name.endswith("weight"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _frames(n: int, h: int = 32, w: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1


def test_encode_once_equals_per_pair_forward(net):
    images = _frames(7)
    pairs = make_pairs(7, "swinstride-2-noncyclic", symmetrize=True)
    preds = infer_pairs(net, images, pairs, batch_size=3, progress=False)
    assert len(preds) == len(pairs)
    np.testing.assert_array_equal(preds.edges, np.asarray(pairs))
    with torch.no_grad():
        for e, (i, j) in enumerate(pairs):
            p1, c1, p2, c2 = net(images[i : i + 1], images[j : j + 1])
            assert_points_close(preds.pts_i[e], p1[0].numpy(), rtol=1e-4)
            assert_close(preds.conf_i[e], c1[0].numpy(), rel=1e-6, rtol=1e-4)
            assert_points_close(preds.pts_j[e], p2[0].numpy(), rtol=1e-4)
            assert_close(preds.conf_j[e], c2[0].numpy(), rel=1e-6, rtol=1e-4)
    # outputs depend on the pair: the mirror edge is not a copy
    assert not np.allclose(preds.pts_i[0], preds.pts_i[len(pairs) // 2])
    assert (preds.conf_i >= 1).all()


def test_batch_size_does_not_change_results(net):
    images = _frames(5, seed=1)
    pairs = [(0, 1), (3, 2), (4, 0)]
    a = infer_pairs(net, images, pairs, batch_size=1, progress=False)
    b = infer_pairs(net, images, pairs, batch_size=16, progress=False)
    assert_points_close(a.pts_j, b.pts_j, rtol=1e-4)
    assert_close(a.conf_j, b.conf_j, rel=1e-6, rtol=1e-4)


def test_portrait_frames(net):
    images = _frames(3, h=48, w=32, seed=2)
    preds = infer_pairs(net, images, [(0, 1), (1, 2)], progress=False)
    assert preds.pts_i.shape == (2, 48, 32, 3)
    assert preds.image_size == (48, 32)


def test_save_load_round_trip(tmp_path, net):
    preds = infer_pairs(net, _frames(3, seed=3), [(0, 1), (2, 0)], progress=False)
    path = tmp_path / "preds.npz"
    preds.save(path)
    back = PairwisePredictions.load(path)
    for name in ("edges", "pts_i", "pts_j", "conf_i", "conf_j"):
        np.testing.assert_array_equal(getattr(back, name), getattr(preds, name))
    assert [p.name for p in tmp_path.iterdir()] == ["preds.npz"]  # no temporary left behind


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, edges=np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"bad\.npz.*missing"):
        PairwisePredictions.load(bad)
    with pytest.raises(ValueError, match=r"nothere\.npz"):
        PairwisePredictions.load(tmp_path / "nothere.npz")


def test_bad_inputs(net):
    images = _frames(3)
    with pytest.raises(ValueError, match=r"pair 1 = \(1, 3\).*0\.\.2"):
        infer_pairs(net, images, [(0, 1), (1, 3)], progress=False)
    with pytest.raises(ValueError, match="empty"):
        infer_pairs(net, images, [], progress=False)
    with pytest.raises(ValueError, match=r"\(N,3,H,W\)"):
        infer_pairs(net, images[:, :2], [(0, 1)], progress=False)
    with pytest.raises(ValueError, match="shape"):
        PairwisePredictions(
            edges=[(0, 1)],
            pts_i=np.zeros((1, 4, 4, 3)),
            pts_j=np.zeros((1, 4, 5, 3)),
            conf_i=np.ones((1, 4, 4)),
            conf_j=np.ones((1, 4, 4)),
        )
