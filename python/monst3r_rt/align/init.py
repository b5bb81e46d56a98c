"""Initialisation of the global alignment: the official ``init='mst'`` (spec §4.4).

This is a numpy/OpenCV re-implementation of ``dust3r/cloud_opt/init_im_poses.py``
(``init_minimum_spanning_tree`` + ``init_from_pts3d``), producing the optimiser's parameters in
the conventions of spec §4.3:

- ``log_depth`` (N,H,W): ``D = exp(log_depth)``, z-depth in the scene's (arbitrary) unit;
- ``im_poses`` (N,7) ``[qx,qy,qz,qw, tx,ty,tz]``: camera-to-world rotation from the normalised XYZW
  quaternion, translation ``T = signed_expm1(tau)``;
- ``focal`` (1,) when shared, else (N,): ``f = exp(p / 20)`` pixels;
- ``pw_poses`` (E,8) ``[q(4), tau(3), s]``:
  ``P_e = [sigma_e R_e | sigma_e signed_expm1(tau_e)]`` with
  ``sigma_e = exp(s_e) * exp(log 0.5 - mean(s))``.

Pointmaps follow the official pair convention: for edge ``e = (i, j)``, ``pts_i[e]`` is view i's
pointmap and ``pts_j[e]`` view j's pointmap, both expressed in camera i's frame (x right, y down,
z forward). Pixel ``(x, y)`` has its centre at integer coordinates; the principal point is
``(W/2, H/2)``.

Where the official code relies on Python dicts keyed by ``"i_j"`` (so that a repeated edge uses
the *last* prediction and is scored once), the same semantics are kept here.
"""

from __future__ import annotations

import numpy as np

from ..geometry import (
    estimate_focal,
    fast_pnp,
    rotmat_to_quat_xyzw,
    sim3_matrix,
    transform_points,
    weighted_procrustes,
)
from .params import BASE_SCALE, FOCAL_BREAK, signed_log1p

__all__ = ["connected_components", "max_spanning_tree", "init_mst"]


def _finite_mean(a: np.ndarray) -> float:
    """Mean over the finite entries (all of them for clean inputs, as officially)."""
    a = np.asarray(a, dtype=np.float64)
    fin = np.isfinite(a)
    return float(a.mean()) if fin.all() else float(a[fin].mean()) if fin.any() else 1.0


# ------------------------------------------------------------------------------------------------
# spanning tree
# ------------------------------------------------------------------------------------------------
def _root(parent: list[int], a: int) -> int:
    """Root of node ``a`` in a union-find forest ``parent`` (with path halving)."""
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


def connected_components(n: int, edges: np.ndarray) -> list[list[int]]:
    """Connected components (sorted lists of nodes, sorted by smallest node) of an undirected
    graph on ``n`` nodes."""
    parent = list(range(n))

    for i, j in np.asarray(edges, dtype=np.int64).reshape(-1, 2).tolist():
        ri, rj = _root(parent, i), _root(parent, j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for a in range(n):
        groups.setdefault(_root(parent, a), []).append(a)
    return sorted(groups.values(), key=lambda g: g[0])


def max_spanning_tree(n: int, edges: np.ndarray, scores: np.ndarray) -> list[int]:
    """Maximum spanning tree by Kruskal's algorithm.

    Equivalent to ``scipy.sparse.csgraph.minimum_spanning_tree`` on ``-scores`` (edges are
    undirected for connectivity; the tree keeps each chosen edge's orientation): edges are visited
    by decreasing score, ties in input order (a stable sort), and an edge joining two different
    components is kept. Self-loops are never kept.

    Args:
        n: number of nodes (nodes are ``0..n-1``).
        edges: (E,2) int node pairs ``(i, j)``.
        scores: (E,) edge scores (higher = better).

    Returns:
        Indices into ``edges`` of the ``n - 1`` tree edges, in the order they were accepted
        (decreasing score).

    Raises:
        ValueError: on bad shapes, nodes out of ``[0, n)``, or a disconnected graph (the message
            lists the connected components).
    """
    edges = np.asarray(edges)
    scores = np.asarray(scores, dtype=np.float64)
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise ValueError(f"max_spanning_tree: edges must have shape (E,2), got {edges.shape}")
    if scores.shape != (len(edges),):
        raise ValueError(
            f"max_spanning_tree: scores must have shape ({len(edges)},), got {scores.shape}"
        )
    if n < 1:
        raise ValueError(f"max_spanning_tree: n must be >= 1, got {n}")
    if len(edges) and (edges.min() < 0 or edges.max() >= n):
        raise ValueError(
            f"max_spanning_tree: edge nodes must lie in [0, {n}), got {edges.tolist()}"
        )
    comps = connected_components(n, edges)
    if len(comps) > 1:
        raise ValueError(
            f"the pair graph is disconnected: {len(comps)} connected components {comps}; "
            "every frame must be linked to every other through pairs"
        )
    parent = list(range(n))

    tree: list[int] = []
    for e in np.argsort(-scores, kind="stable").tolist():
        ri, rj = _root(parent, int(edges[e, 0])), _root(parent, int(edges[e, 1]))
        if ri == rj:
            continue
        parent[ri] = rj
        tree.append(e)
        if len(tree) == n - 1:
            break
    return tree


# ------------------------------------------------------------------------------------------------
# init='mst'
# ------------------------------------------------------------------------------------------------
def _validate(
    edges: np.ndarray,
    pts_i: np.ndarray,
    pts_j: np.ndarray,
    conf_i: np.ndarray,
    conf_j: np.ndarray,
) -> tuple[np.ndarray, int, int, int]:
    edges = np.asarray(edges)
    if edges.ndim != 2 or edges.shape[1] != 2 or len(edges) == 0:
        raise ValueError(f"init_mst: edges must have shape (E,2) with E >= 1, got {edges.shape}")
    if not np.issubdtype(edges.dtype, np.integer):
        raise ValueError(f"init_mst: edges must be integers, got dtype {edges.dtype}")
    edges = edges.astype(np.int64)
    if edges.min() < 0:
        raise ValueError(
            f"init_mst: edges must be non-negative frame indices, min is {edges.min()}"
        )
    n = int(edges.max()) + 1
    if n < 2:
        raise ValueError(f"init_mst: needs at least 2 frames, the edges only reference {n}")
    e = len(edges)
    pts_i = np.asarray(pts_i)
    if pts_i.ndim != 4 or pts_i.shape[0] != e or pts_i.shape[-1] != 3:
        raise ValueError(f"init_mst: pts_i must have shape (E={e},H,W,3), got {pts_i.shape}")
    _, h, w, _ = pts_i.shape
    for name, arr, shape in (
        ("pts_j", pts_j, (e, h, w, 3)),
        ("conf_i", conf_i, (e, h, w)),
        ("conf_j", conf_j, (e, h, w)),
    ):
        if np.shape(arr) != shape:
            raise ValueError(f"init_mst: {name} must have shape {shape}, got {np.shape(arr)}")
    return edges, n, h, w


def init_mst(
    edges: np.ndarray,
    pts_i: np.ndarray,
    pts_j: np.ndarray,
    conf_i: np.ndarray,
    conf_j: np.ndarray,
    *,
    shared_focal: bool = True,
    min_conf_thr: float = 3.0,
) -> dict[str, np.ndarray]:
    """Initial depths, poses, focal(s) and pairwise poses from a maximum-confidence spanning tree
    (official ``init='mst'``, spec §4.4 steps 1-5).

    1. Edge score ``mean(conf_i[e]) * mean(conf_j[e])`` (raw confidence); maximum spanning tree.
    2. The strongest tree edge ``(i, j)`` defines the world (camera i): ``pts3d[i] = pts_i``,
       ``pts3d[j] = pts_j``, pose of i = I, focal of i by Weiszfeld on ``pts_i``.
    3. Remaining tree edges, strongest first (an edge with both ends unplaced goes to the back of
       the queue): register the placed view's prediction onto its world points (weighted by its
       confidence, with scale) and carry the other view over; the registration also gives the
       pose of camera i when unset. Official quirk kept: before each popped edge, a missing
       focal of its ``i`` is estimated from ``pts_i`` of the *previously processed* edge.
    4. Missing focals from the best-scoring edge starting at the image; missing poses by
       :func:`fast_pnp` on ``im_conf > min_conf_thr`` pixels (identity when PnP fails).
    5. Every edge's pairwise pose = registration of ``pts_i[e]`` onto ``pts3d[i]`` weighted by
       ``conf_i[e]``; the scale gauge is normalised (geometric mean of pairwise scales = 0.5) by
       scaling all points and pose translations; depth = z of ``inv(pose) @ pts3d``.

    Args:
        edges: (E,2) int frame pairs ``(i, j)``; frames are ``0..max(edges)``.
        pts_i: (E,H,W,3) view-i pointmaps in camera i's frame.
        pts_j: (E,H,W,3) view-j pointmaps in camera i's frame.
        conf_i: (E,H,W) raw confidences (>= 1) of ``pts_i``.
        conf_j: (E,H,W) raw confidences of ``pts_j``.
        shared_focal: one focal for all frames (the mean of the per-frame estimates).
        min_conf_thr: PnP mask threshold on the per-frame max confidence.

    Returns:
        dict of float32 arrays: ``log_depth`` (N,H,W), ``im_poses`` (N,7), ``focal`` (1,) or (N,)
        (``20 * log f``), ``pw_poses`` (E,8), in the conventions of the module docstring.

    Non-finite points or confidences (masked predictions) are tolerated: they get weight 0 in the
    registrations and the focal estimates, are left out of the PnP and of the edge scores, and
    a non-finite depth ends up as ``log_depth = 0`` (the official NaN rule).

    Raises:
        ValueError: on malformed inputs or a disconnected pair graph (components are listed).
    """
    edges, n, h, w = _validate(edges, pts_i, pts_j, conf_i, conf_j)
    comps = connected_components(n, edges)
    if len(comps) > 1:
        raise ValueError(
            f"init_mst: the pair graph is disconnected: {len(comps)} connected components {comps}"
        )

    # Official dicts keyed by "i_j": first occurrence fixes the order, the last prediction wins.
    key_to_e: dict[tuple[int, int], int] = {}
    for e, (i, j) in enumerate(edges.tolist()):
        key_to_e[(i, j)] = e

    def pred_i(key: tuple[int, int]) -> np.ndarray:
        return np.asarray(pts_i[key_to_e[key]], dtype=np.float64)

    def pred_j(key: tuple[int, int]) -> np.ndarray:
        return np.asarray(pts_j[key_to_e[key]], dtype=np.float64)

    # per-image max confidence (over every edge, as view 1 or view 2)
    im_conf = np.zeros((n, h, w), dtype=np.float32)
    for e, (i, j) in enumerate(edges.tolist()):
        np.maximum(im_conf[i], np.nan_to_num(conf_i[e], nan=0.0), out=im_conf[i])
        np.maximum(im_conf[j], np.nan_to_num(conf_j[e], nan=0.0), out=im_conf[j])

    # 1. edge scores (float32 means and product, as torch computes them)
    keys = list(key_to_e)
    key_score: dict[tuple[int, int], float] = {}
    for key in keys:
        e = key_to_e[key]
        mi = np.float32(_finite_mean(conf_i[e]))
        mj = np.float32(_finite_mean(conf_j[e]))
        key_score[key] = float(np.float32(mi * mj))

    # scipy's spanning tree visits the sparse entries in CSR order (row, then column) and sorts
    # them stably by weight; reproduce that order before Kruskal.
    csr_keys = sorted(keys)
    tree_idx = max_spanning_tree(
        n, np.array(csr_keys, dtype=np.int64), np.array([key_score[k] for k in csr_keys])
    )
    # todo = sorted(zip(score, row, col)), popped from the end (strongest; ties -> larger row/col)
    todo: list[tuple[float, int, int]] = sorted(
        (key_score[csr_keys[t]], csr_keys[t][0], csr_keys[t][1]) for t in tree_idx
    )

    pts3d: list[np.ndarray | None] = [None] * n
    im_poses: list[np.ndarray | None] = [None] * n
    im_focals: list[float | None] = [None] * n

    # 2. strongest edge defines the world frame
    _, i, j = todo.pop()
    last_key = (i, j)
    pts3d[i] = pred_i(last_key).copy()
    pts3d[j] = pred_j(last_key).copy()
    done = {i, j}
    im_poses[i] = np.eye(4)
    im_focals[i] = estimate_focal(pred_i(last_key))

    # 3. chain the remaining tree edges
    while todo:
        score, i, j = todo.pop()
        if im_focals[i] is None:
            # official quirk: uses the pointmap of the previously processed edge
            im_focals[i] = estimate_focal(pred_i(last_key))
        if i in done or j in done:
            key = (i, j)
            e = key_to_e[key]
            # both predictions are in camera i's frame: the registration is camera i's pose
            pred = {i: pred_i(key), j: pred_j(key)}
            conf = {i: conf_i[e], j: conf_j[e]}
            placed, new = (i, j) if i in done else (j, i)
            s, rot, t = weighted_procrustes(pred[placed], pts3d[placed], conf[placed])
            pts3d[new] = transform_points(sim3_matrix(s, rot, t), pred[new])
            done.add(new)
            last_key = key
            if im_poses[i] is None:
                im_poses[i] = sim3_matrix(1.0, rot, t)
        else:
            todo.insert(0, (score, i, j))  # try again later

    # 4. missing focals (best-scoring edge starting at the image), then missing poses by PnP
    order = np.argsort([-key_score[k] for k in keys], kind="stable")
    for idx in order.tolist():
        i, j = keys[idx]
        if im_focals[i] is None:
            im_focals[i] = estimate_focal(pred_i((i, j)))
    for i in range(n):
        if im_poses[i] is None:
            res = fast_pnp(pts3d[i], im_focals[i], im_conf[i] > min_conf_thr)
            if res is not None:
                im_focals[i], im_poses[i] = res
        if im_poses[i] is None:
            im_poses[i] = np.eye(4)
    known = [f for f in im_focals if f is not None]
    if shared_focal:
        # officially sum(im_focals) would raise on a frame without any focal; we average the known
        focal_values = np.array([float(np.mean(known))])
    else:
        # officially an unknown focal keeps its initial value max(H, W)
        focal_values = np.array([float(max(h, w)) if f is None else f for f in im_focals])
    # an estimate that is not a positive number (pointmaps behind the camera, e.g. untrained
    # weights) falls back to that initial value too, instead of a NaN log-focal
    ok = np.isfinite(focal_values) & (focal_values > 0)
    focal_values = np.where(ok, focal_values, float(max(h, w)))

    # 5. pairwise poses for every edge, then the scale normalisation
    pw_poses = np.zeros((len(edges), 8), dtype=np.float32)
    pw_rot = np.empty((len(edges), 3, 3))
    for e, (i, j) in enumerate(edges.tolist()):
        key = (i, j)
        s, pw_rot[e], t = weighted_procrustes(pred_i(key), pts3d[i], conf_i[key_to_e[key]])
        pw_poses[e, 4:7] = signed_log1p(t / s)
        pw_poses[e, 7] = np.log(s)
    pw_poses[:, :4] = rotmat_to_quat_xyzw(pw_rot)
    s_factor = float(np.exp(np.log(BASE_SCALE) - np.mean(pw_poses[:, 7], dtype=np.float64)))

    poses = np.stack(im_poses).astype(np.float64)
    poses[:, :3, 3] *= s_factor
    log_depth = np.zeros((n, h, w), dtype=np.float32)
    im_params = np.zeros((n, 7), dtype=np.float32)
    im_params[:, :4] = rotmat_to_quat_xyzw(poses[:, :3, :3])
    im_params[:, 4:] = signed_log1p(poses[:, :3, 3])
    for k in range(n):
        depth = transform_points(np.linalg.inv(poses[k]), pts3d[k] * s_factor)[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            ld = np.log(depth)
        log_depth[k] = np.nan_to_num(ld, nan=0.0, neginf=0.0, posinf=np.finfo(np.float32).max)

    return {
        "log_depth": log_depth,
        "im_poses": im_params,
        "focal": (FOCAL_BREAK * np.log(focal_values)).astype(np.float32),
        "pw_poses": pw_poses,
    }
