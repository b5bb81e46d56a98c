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

import functools
from collections.abc import Sequence

import cv2
import numpy as np

from .. import _core
from .params import BASE_SCALE, FOCAL_BREAK, rotmat_to_quat_xyzw, signed_expm1, signed_log1p

__all__ = [
    "estimate_focal",
    "weighted_procrustes",
    "max_spanning_tree",
    "fast_pnp",
    "init_mst",
    "signed_log1p",
    "signed_expm1",
    "rotmat_to_quat_xyzw",
]


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> np.ndarray:
    """(H,W,2) float32 pixel coordinates ``(x, y)`` (column, row); cached, read-only."""
    ys, xs = np.mgrid[:h, :w]
    grid = np.stack([xs, ys], axis=-1).astype(np.float32)
    grid.flags.writeable = False
    return grid


def _apply(trf: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 4x4 (possibly scaled) transform to (...,3) points (non-finite points stay so)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return pts @ trf[:3, :3].T + trf[:3, 3]


def _finite_mean(a: np.ndarray) -> float:
    """Mean over the finite entries (all of them for clean inputs, as officially)."""
    a = np.asarray(a, dtype=np.float64)
    fin = np.isfinite(a)
    return float(a.mean()) if fin.all() else float(a[fin].mean()) if fin.any() else 1.0


def _srt_to_4x4(s: float, rot: np.ndarray, t: np.ndarray) -> np.ndarray:
    trf = np.eye(4)
    trf[:3, :3] = s * rot
    trf[:3, 3] = t
    return trf


# ------------------------------------------------------------------------------------------------
# focal, registration, spanning tree, PnP
# ------------------------------------------------------------------------------------------------
def estimate_focal(
    pts: np.ndarray,
    pp: Sequence[float] | np.ndarray | None = None,
    iters: int = 10,
    weights: np.ndarray | None = None,
    threads: int = 0,
) -> float:
    """Focal length of a camera-frame pointmap (``post_process.estimate_focal_knowing_depth``,
    ``focal_mode='weiszfeld'``, no clipping).

    Minimises ``sum_p |pixel_p - pp - f * (x_p, y_p) / z_p|`` (an L1 over 2-D residual norms) by
    iteratively re-weighted least squares: the closed-form L2 solution, then ``iters`` re-weightings
    by ``1 / max(residual, 1e-8)``. Non-finite ``x/z`` or ``y/z`` are replaced by 0 as officially;
    pixels whose point has a non-finite coordinate (masked predictions) are left out (an
    extension). Runs in the C++ core (``_core.estimate_focal``, float64 accumulation).

    Args:
        pts: (H,W,3) points in the camera frame (any unit).
        pp: principal point ``(cx, cy)`` in pixels; default ``(W/2, H/2)``.
        iters: number of IRLS iterations (10 officially).
        weights: optional (H,W) non-negative per-pixel weights multiplying the IRLS weights
            (an extension; ``None`` is the official behaviour).
        threads: OpenMP threads of the kernel (0: the core's setting; 1 inside a thread pool).

    Returns:
        The focal length in pixels.
    """
    pts = np.asarray(pts)
    if pts.ndim != 3 or pts.shape[-1] != 3:
        raise ValueError(f"estimate_focal: pts must have shape (H,W,3), got {pts.shape}")
    h, w, _ = pts.shape
    if weights is not None:
        weights = np.asarray(weights, np.float32)
        if weights.shape != (h, w):
            raise ValueError(
                f"estimate_focal: weights must have shape {(h, w)}, got {weights.shape}"
            )
    cx, cy = (w / 2, h / 2) if pp is None else (float(pp[0]), float(pp[1]))
    focal = _core.estimate_focal(
        np.ascontiguousarray(pts, np.float32), weights, cx, cy, iters, threads
    )
    if not np.isfinite(focal):
        raise ValueError("estimate_focal: no finite point with a positive weight")
    return float(focal)


def weighted_procrustes(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray | None = None,
    with_scale: bool = True,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted Umeyama similarity ``dst ~= s * R @ src + T``
    (``roma.rigid_points_registration(src, dst, weights, compute_scaling=True)`` semantics).

    Minimises ``sum_k w_k |s R x_k + T - y_k|^2``. Weights are normalised to sum 1; the rotation is
    the special Procrustes solution of the weighted cross-covariance (the smallest singular value
    is sign-flipped when ``det(U V^T) < 0``); the scale is ``trace(D S) / sigma_x^2``. Pairs with
    a non-finite coordinate or weight get weight 0 (masked predictions; an extension).

    Args:
        src: (M,3) (or (...,3), flattened) source points.
        dst: (M,3) target points, same shape as ``src``.
        weights: (M,) non-negative weights (or any shape with M elements); ``None`` = uniform.
        with_scale: estimate ``s``; otherwise ``s = 1`` (rigid registration).

    Returns:
        ``(s, R, T)``: float scale, (3,3) float64 rotation, (3,) float64 translation.

    Raises:
        ValueError: on mismatched shapes, non-positive total weight, or a degenerate source
            (all weighted points coincide) when ``with_scale``.
    """
    x = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    y = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if x.shape != y.shape:
        raise ValueError(f"weighted_procrustes: src {x.shape} and dst {y.shape} differ")
    if weights is None:
        w = np.ones(len(x))
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (len(x),):
            raise ValueError(
                f"weighted_procrustes: weights must have {len(x)} elements, got {w.size}"
            )
    finite = np.isfinite(x).all(-1) & np.isfinite(y).all(-1) & np.isfinite(w)
    if not finite.all():
        w = np.where(finite, w, 0.0)
        x = np.where(finite[:, None], x, 0.0)
        y = np.where(finite[:, None], y, 0.0)
    total = w.sum()
    if not total > 0:
        raise ValueError("weighted_procrustes: the weights must have a positive sum")
    w = w / total
    xmean = w @ x
    ymean = w @ y
    xhat = x - xmean
    yhat = y - ymean
    cov = (yhat * w[:, None]).T @ xhat  # sum_k w_k y_k x_k^T
    u, sv, vt = np.linalg.svd(cov)
    if np.linalg.det(u @ vt) < 0:
        u[:, -1] *= -1
        sv[-1] *= -1
    rot = u @ vt
    if with_scale:
        sigma2_x = float(w @ (xhat * xhat).sum(-1))
        if not sigma2_x > 0:
            raise ValueError("weighted_procrustes: degenerate source (zero weighted variance)")
        s = float(sv.sum() / sigma2_x)
    else:
        s = 1.0
    t = ymean - s * rot @ xmean
    return s, rot, t


def connected_components(n: int, edges: np.ndarray) -> list[list[int]]:
    """Connected components (sorted lists of nodes, sorted by smallest node) of an undirected
    graph on ``n`` nodes."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in np.asarray(edges, dtype=np.int64).reshape(-1, 2).tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for a in range(n):
        groups.setdefault(find(a), []).append(a)
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

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    tree: list[int] = []
    for e in np.argsort(-scores, kind="stable").tolist():
        ri, rj = find(int(edges[e, 0])), find(int(edges[e, 1]))
        if ri == rj:
            continue
        parent[ri] = rj
        tree.append(e)
        if len(tree) == n - 1:
            break
    return tree


def fast_pnp(
    pts3d: np.ndarray,
    focal: float | None,
    mask: np.ndarray,
    pp: Sequence[float] | np.ndarray | None = None,
    niter: int = 10,
    reproj_error: float = 5.0,
) -> tuple[float, np.ndarray] | None:
    """Camera pose (and focal, when unknown) from a world-frame pointmap by RANSAC-PnP
    (``init_im_poses.fast_pnp``).

    ``cv2.solvePnPRansac`` with SQPnP, ``niter`` iterations and a ``reproj_error`` pixel threshold
    on the masked pixels. With ``focal=None`` 21 focals on ``geomspace(S/2, 3S)``
    (``S = max(H, W)``) are tried and the one with the most inliers wins (first one on ties).

    Args:
        pts3d: (H,W,3) world points seen at each pixel.
        focal: focal length in pixels, or ``None`` to search it.
        mask: (H,W) bool, pixels to use (pixels with non-finite points are dropped).
        pp: principal point ``(cx, cy)``; default ``(W/2, H/2)``.
        niter: RANSAC iterations (10 in ``init='mst'``, 100 in ``PairViewer``).
        reproj_error: RANSAC inlier threshold in pixels.

    Returns:
        ``(focal, cam2world)`` with a (4,4) float64 camera-to-world matrix, or ``None`` if fewer
        than 4 pixels are masked or every PnP attempt failed.
    """
    pts3d = np.asarray(pts3d)
    mask = np.asarray(mask, dtype=bool)
    if pts3d.ndim != 3 or pts3d.shape[-1] != 3:
        raise ValueError(f"fast_pnp: pts3d must have shape (H,W,3), got {pts3d.shape}")
    h, w, _ = pts3d.shape
    if mask.shape != (h, w):
        raise ValueError(f"fast_pnp: mask must have shape {(h, w)}, got {mask.shape}")
    mask = mask & np.isfinite(pts3d).all(-1)
    if mask.sum() < 4:
        return None
    obj = np.ascontiguousarray(pts3d[mask], dtype=np.float32)
    img = np.ascontiguousarray(_pixel_grid(h, w)[mask])
    if focal is None:
        size = max(w, h)
        candidates = np.geomspace(size / 2, size * 3, 21).tolist()
    else:
        candidates = [float(focal)]
    cx, cy = (w / 2, h / 2) if pp is None else (float(pp[0]), float(pp[1]))
    best: tuple[int, np.ndarray, np.ndarray, float] | None = None
    for f in candidates:
        k = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]], dtype=np.float32)
        try:
            ok, rvec, tvec, inliers = cv2.solvePnPRansac(
                obj,
                img,
                k,
                None,
                iterationsCount=niter,
                reprojectionError=reproj_error,
                flags=cv2.SOLVEPNP_SQPNP,
            )
        except cv2.error:
            continue
        if not ok or inliers is None:
            continue
        score = len(inliers)
        if best is None or score > best[0]:
            best = (score, rvec, tvec, f)
    if best is None or best[0] == 0:
        return None
    _, rvec, tvec, best_focal = best
    rot_w2c = cv2.Rodrigues(np.asarray(rvec, np.float64))[0]
    t_w2c = np.asarray(tvec, np.float64).reshape(3)
    cam2world = np.eye(4)
    cam2world[:3, :3] = rot_w2c.T
    cam2world[:3, 3] = -rot_w2c.T @ t_w2c
    return float(best_focal), cam2world


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
        if i in done:
            key = (i, j)
            s, rot, t = weighted_procrustes(pred_i(key), pts3d[i], conf_i[key_to_e[key]])
            pts3d[j] = _apply(_srt_to_4x4(s, rot, t), pred_j(key))
            done.add(j)
            last_key = key
            if im_poses[i] is None:
                im_poses[i] = _srt_to_4x4(1.0, rot, t)
        elif j in done:
            key = (i, j)
            s, rot, t = weighted_procrustes(pred_j(key), pts3d[j], conf_j[key_to_e[key]])
            pts3d[i] = _apply(_srt_to_4x4(s, rot, t), pred_i(key))
            done.add(i)
            last_key = key
            if im_poses[i] is None:
                im_poses[i] = _srt_to_4x4(1.0, rot, t)
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
    for e, (i, j) in enumerate(edges.tolist()):
        key = (i, j)
        s, rot, t = weighted_procrustes(pred_i(key), pts3d[i], conf_i[key_to_e[key]])
        pw_poses[e, :4] = rotmat_to_quat_xyzw(rot)
        pw_poses[e, 4:7] = signed_log1p(t / s)
        pw_poses[e, 7] = np.log(s)
    s_factor = float(np.exp(np.log(BASE_SCALE) - np.mean(pw_poses[:, 7], dtype=np.float64)))

    poses = np.stack(im_poses).astype(np.float64)
    poses[:, :3, 3] *= s_factor
    log_depth = np.zeros((n, h, w), dtype=np.float32)
    im_params = np.zeros((n, 7), dtype=np.float32)
    for k in range(n):
        pts = pts3d[k] * s_factor
        rot, t = poses[k, :3, :3], poses[k, :3, 3]
        world2cam = np.linalg.inv(poses[k])
        depth = _apply(world2cam, pts)[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            ld = np.log(depth)
        log_depth[k] = np.nan_to_num(ld, nan=0.0, neginf=0.0, posinf=np.finfo(np.float32).max)
        im_params[k, :4] = rotmat_to_quat_xyzw(rot)
        im_params[k, 4:] = signed_log1p(t)

    return {
        "log_depth": log_depth,
        "im_poses": im_params,
        "focal": (FOCAL_BREAK * np.log(focal_values)).astype(np.float32),
        "pw_poses": pw_poses,
    }
