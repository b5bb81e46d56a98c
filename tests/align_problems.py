"""Small random alignment problems shared by the alignment tests (no ground truth needed)."""

from __future__ import annotations

import numpy as np

from monst3r_rt.align.objective import AlignData, FlowData


def random_problem(
    n: int = 4,
    h: int = 6,
    w: int = 8,
    seed: int = 0,
    dtype: type = np.float64,
    flow: bool = False,
    edges: np.ndarray | None = None,
) -> tuple[AlignData, dict[str, np.ndarray], FlowData | None]:
    """A random, well-conditioned problem: pointmaps near a plausible scene, parameters near it.
    ``edges``: (E,2) pairs of the n frames; default every ordered pair at most 2 frames apart."""
    rng = np.random.default_rng(seed)
    if edges is None:
        edges = np.array([(i, j) for i in range(n) for j in range(n) if i != j and abs(i - j) <= 2])
    e = len(edges)
    pts_i = rng.normal(0, 0.5, (e, h, w, 3)) + [0, 0, 3]
    pts_j = rng.normal(0, 0.5, (e, h, w, 3)) + [0, 0, 3]
    conf_i = 1 + rng.exponential(2, (e, h, w))
    conf_j = 1 + rng.exponential(2, (e, h, w))
    pp = np.tile([w / 2, h / 2], (n, 1))
    data = AlignData(
        edges=edges.astype(np.int64),
        pts_i=np.ascontiguousarray(pts_i, dtype=dtype),
        pts_j=np.ascontiguousarray(pts_j, dtype=dtype),
        w_i=np.log(conf_i).astype(dtype),
        w_j=np.log(conf_j).astype(dtype),
        pp=pp.astype(dtype),
        n_frames=n,
    )
    q = rng.normal(0, 0.1, (n, 4)) + [0, 0, 0, 1]
    params = {
        "log_depth": rng.normal(np.log(3), 0.2, (n, h, w)).astype(dtype),
        "im_poses": np.concatenate([q, rng.normal(0, 0.3, (n, 3))], 1).astype(dtype),
        "focal": np.array([20 * np.log(6.0)], dtype),
        "pw_poses": np.concatenate(
            [
                rng.normal(0, 0.1, (e, 4)) + [0, 0, 0, 1],
                rng.normal(0, 0.3, (e, 3)),
                rng.normal(0, 0.2, (e, 1)),
            ],
            1,
        ).astype(dtype),  # fmt: skip
    }
    fd = None
    if flow:
        fd = FlowData(
            flow_ij=rng.normal(0, 1.5, (e, 2, h, w)).astype(dtype),
            flow_ji=rng.normal(0, 1.5, (e, 2, h, w)).astype(dtype),
            static=(rng.random((n, h, w)) > 0.2).astype(dtype),
        )
    return data, params, fd
