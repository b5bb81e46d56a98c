"""A synthetic dynamic scene with ground truth, for tests and benchmarks (numpy + OpenCV only).

The static background is the inside of an axis-aligned box room (walls, floor, ceiling a few
metres away) seen by a smoothly moving, forward-facing camera (translation plus small rotations).
``n_objects`` textured spheres translate independently between frames. Depth is rendered by
analytic ray casting. Conventions:

- camera frame: x right, y down, z forward; pinhole with focal ``f`` and principal point
  ``(W/2, H/2)``; pixel ``(x, y)`` has its centre at integer coordinates;
- ``poses`` are camera-to-world 4x4 matrices; world units are metres (before the per-edge scales);
- pairwise predictions follow the official DUSt3R/MonST3R convention: for edge ``e = (i, j)``,
  ``pts_i[e]`` are frame i's points in camera i's frame and ``pts_j[e]`` are frame j's points (at
  time j, i.e. with the objects where they are in frame j) expressed in camera i's frame, both
  multiplied by a per-edge scale ``pairwise_scales[e]``;
- flows are true optical flow in pixels, ``flow[:, 0]`` along x (columns) and ``flow[:, 1]`` along y
  (rows), including object motion and ignoring occlusions.

Everything is deterministic for a given ``seed``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import cv2
import numpy as np

from .deploy.backends import Backend, Outputs
from .geometry import (
    intrinsic_matrix,
    pixel_grid,
    project,
    rotvec_to_rotmat,
    transform_points,
    unproject_depth,
)
from .pairs import make_pairs

__all__ = [
    "SyntheticScene", "SimulatedBackend", "make_scene", "scene_video", "unproject_depth",
    "project_points",
]  # fmt: skip

# room bounds (metres): x in [-3, 3], y in [-1.6, 1.6] (y down: floor at +1.6), z in [-1.5, 7]
_ROOM_LO = np.array([-3.0, -1.6, -1.5])
_ROOM_HI = np.array([3.0, 1.6, 7.0])


@dataclass
class SyntheticScene:
    """Ground truth and pairwise predictions of a synthetic sequence.

    Attributes:
        images: (N,H,W,3) uint8 RGB.
        depths: (N,H,W) float32 z-depth in metres.
        poses: (N,4,4) float64 camera-to-world.
        focal: focal length in pixels (all frames); principal point ``(W/2, H/2)``.
        dynamic_masks: (N,H,W) bool, pixels showing a moving object.
        edges: (E,2) int64 frame pairs ``(i, j)`` (``monst3r_rt.pairs.make_pairs`` order); (0,2)
            when the scene was made with ``graph=None`` (then every per-edge array below has a
            leading 0; :class:`SimulatedBackend` predicts pairs on demand).
        pts_i: (E,H,W,3) float32 frame-i points in camera i's frame, times ``pairwise_scales``.
        pts_j: (E,H,W,3) float32 frame-j points (time j) in camera i's frame, times the scale.
        conf_i: (E,H,W) float32 confidences (>= 1) of ``pts_i``.
        conf_j: (E,H,W) float32 confidences of ``pts_j``.
        flow_ij: (E,2,H,W) float32 optical flow from frame i to frame j (pixels; ch0 x, ch1 y).
        flow_ji: (E,2,H,W) float32 optical flow from frame j to frame i.
        pairwise_scales: (E,) float64 per-edge scale of the predictions.
        object_centers: (N,K,3) float64 world sphere centres per frame.
        object_radii: (K,) float64 sphere radii in metres.
        labels: (N,H,W) int32 per-pixel surface label: -1 background, k >= 0 sphere k.
        boundaries: (N,H,W) bool object boundaries (a label change to a 4-neighbour, dilated by
            one pixel), where predicted confidences are low; None for scenes built by hand.
    """

    images: np.ndarray
    depths: np.ndarray
    poses: np.ndarray
    focal: float
    dynamic_masks: np.ndarray
    edges: np.ndarray
    pts_i: np.ndarray
    pts_j: np.ndarray
    conf_i: np.ndarray
    conf_j: np.ndarray
    flow_ij: np.ndarray
    flow_ji: np.ndarray
    pairwise_scales: np.ndarray
    object_centers: np.ndarray
    object_radii: np.ndarray
    labels: np.ndarray
    boundaries: np.ndarray | None = None

    @property
    def intrinsics(self) -> np.ndarray:
        """(3,3) float64 pinhole matrix K."""
        h, w = self.depths.shape[1:]
        return intrinsic_matrix(self.focal, (w / 2, h / 2))


def project_points(pts_cam: np.ndarray, focal: float, h: int, w: int) -> np.ndarray:
    """Pixel coordinates (...,2) ``(x, y)`` of camera-frame points (...,3) in an (H, W) image
    with the scene's principal point ``(W/2, H/2)`` (:func:`monst3r_rt.geometry.project`)."""
    return project(pts_cam, focal, (w / 2, h / 2))


def _rot_xyz(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` from angles in radians."""
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int = 4) -> np.ndarray:
    """(H,W) float64 smooth random field in [0, 1] (bicubic upsampling of a coarse grid)."""
    ch = max(2, cells)
    cw = max(2, int(round(cells * w / h)))
    coarse = rng.random((ch, cw)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    return np.clip(field, 0.0, 1.0)


def _trajectory(rng: np.random.Generator, n: int) -> np.ndarray:
    """(N,4,4) camera-to-world poses: a forward dolly with lateral sway and small rotations."""
    t = np.linspace(0.0, 1.0, n)
    amp = rng.uniform(0.2, 0.5, size=3)
    phase = rng.uniform(0, 2 * np.pi, size=6)
    poses = np.tile(np.eye(4), (n, 1, 1))
    for k in range(n):
        centre = np.array(
            [
                amp[0] * np.sin(np.pi * t[k] + phase[0]),
                0.3 * amp[1] * np.sin(2 * np.pi * t[k] + phase[1]),
                1.2 * t[k] + 0.1 * np.sin(np.pi * t[k] + phase[2]),
            ]
        )
        rx = 0.05 * np.sin(2 * np.pi * t[k] + phase[3])
        ry = 0.12 * np.sin(np.pi * t[k] + phase[4])
        rz = 0.03 * np.sin(2 * np.pi * t[k] + phase[5])
        poses[k, :3, :3] = _rot_xyz(rx, ry, rz)
        poses[k, :3, 3] = centre
    return poses


def _render(
    pose: np.ndarray, rays_cam: np.ndarray, centers: np.ndarray, radii: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast one frame: z-depth (H,W) and labels (H,W) (-1 room, k sphere k)."""
    c = pose[:3, 3]
    d = rays_cam @ pose[:3, :3].T  # world directions, camera-z component 1
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(d > 0, _ROOM_HI, _ROOM_LO)
        t_axis = (bound - c) / d
    t_axis = np.where(np.abs(d) < 1e-12, np.inf, t_axis)
    depth = t_axis.min(axis=-1)
    labels = np.full(depth.shape, -1, dtype=np.int32)
    aa = (d * d).sum(-1)
    for k, (ctr, rad) in enumerate(zip(centers, radii, strict=True)):
        oc = c - ctr
        bb = 2.0 * (d @ oc)
        cc = float(oc @ oc - rad * rad)
        disc = bb * bb - 4.0 * aa * cc
        hit = disc > 0
        t_hit = np.where(hit, (-bb - np.sqrt(np.where(hit, disc, 0.0))) / (2.0 * aa), np.inf)
        closer = (t_hit > 1e-6) & (t_hit < depth)
        depth = np.where(closer, t_hit, depth)
        labels[closer] = k
    return depth, labels


def _texture(pts: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] (...,3) from 3-D points (...,3): sums of random sinusoids per channel."""
    freq, phase = coeffs[..., :3], coeffs[..., 3]  # (3 channels, n_waves, 3), (3, n_waves)
    arg = np.einsum("...d,cwd->...cw", pts, freq) + phase
    return 0.5 + 0.5 * np.sin(arg).mean(axis=-1)


def _boundary(labels: np.ndarray) -> np.ndarray:
    """(H,W) bool object boundaries of an (H,W) label map: pixels whose label differs from a
    4-neighbour's, dilated by one pixel (3x3)."""
    boundary = np.zeros(labels.shape, dtype=bool)
    boundary[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    boundary[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    boundary[1:, :] |= labels[1:, :] != labels[:-1, :]
    boundary[:-1, :] |= labels[1:, :] != labels[:-1, :]
    return cv2.dilate(boundary.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def _check_ranges(what: str, scale_range: tuple[float, float], conf_range: tuple[float, float]):
    if conf_range[0] < 1 or conf_range[1] < conf_range[0]:
        raise ValueError(f"{what}: conf_range must satisfy 1 <= low <= high, got {conf_range}")
    if scale_range[0] <= 0 or scale_range[1] < scale_range[0]:
        raise ValueError(f"{what}: scale_range must satisfy 0 < low <= high, got {scale_range}")


def _pair_prediction(
    rng: np.random.Generator,
    depth_i: np.ndarray,
    depth_j: np.ndarray,
    pose_i: np.ndarray,
    pose_j: np.ndarray,
    boundary_i: np.ndarray,
    boundary_j: np.ndarray,
    focal: float,
    scale: float,
    depth_noise: float,
    pose_noise: float,
    conf_range: tuple[float, float],
) -> Outputs:
    """The simulated network output of one pair (i, j) (the model of :class:`SimulatedBackend`).

    Draws from ``rng`` in this order: the pose perturbation (if ``pose_noise > 0``), the depth
    noise fields of view i then view j (if ``depth_noise > 0``), the confidence fields of i then j.

    Args:
        depth_i, depth_j: (H,W) z-depths in metres (float64 arithmetic).
        pose_i, pose_j: (4,4) camera-to-world.
        boundary_i, boundary_j: (H,W) bool object boundaries (low confidence).

    Returns:
        ``pts_i`` (H,W,3), ``conf_i`` (H,W), ``pts_j`` (H,W,3) in camera i's frame, ``conf_j``
        (H,W), float32.
    """
    h, w = depth_i.shape
    lo, hi = conf_range
    rel = np.linalg.inv(pose_i) @ pose_j  # camera j -> camera i
    if pose_noise > 0:
        pert = np.eye(4)
        pert[:3, :3] = rotvec_to_rotmat(rng.normal(scale=pose_noise, size=3))
        pert[:3, 3] = rng.normal(scale=pose_noise, size=3)
        rel = pert @ rel

    def noise() -> np.ndarray:
        if depth_noise <= 0:
            return np.ones((h, w))
        field = _smooth_field(rng, h, w, cells=5) - 0.5
        field /= max(field.std(), 1e-6)
        return np.exp(depth_noise * field)

    def conf_field(boundary: np.ndarray) -> np.ndarray:
        field = lo + (hi - lo) * _smooth_field(rng, h, w)
        field = np.where(boundary, lo + 0.2 * (field - lo), field)
        return np.maximum(field, 1.0).astype(np.float32)

    pi = unproject_depth(depth_i, focal) * noise()[..., None]
    pj = transform_points(rel, unproject_depth(depth_j, focal) * noise()[..., None])
    pts_i = (scale * pi).astype(np.float32)
    pts_j = (scale * pj).astype(np.float32)
    conf_i = conf_field(boundary_i)
    conf_j = conf_field(boundary_j)
    return pts_i, conf_i, pts_j, conf_j


def make_scene(
    n_frames: int = 12,
    size: tuple[int, int] = (48, 64),
    graph: str | None = "swinstride-5-noncyclic",
    n_objects: int = 1,
    object_motion: float = 0.05,
    depth_noise: float = 0.0,
    pose_noise: float = 0.0,
    scale_range: tuple[float, float] = (0.5, 2.0),
    seed: int = 0,
    conf_range: tuple[float, float] = (1.5, 5.0),
) -> SyntheticScene:
    """Build a synthetic dynamic scene and its pairwise predictions.

    Images, depths, poses, labels and objects depend only on ``n_frames``, ``size``,
    ``n_objects``, ``object_motion`` and ``seed`` (not on ``graph`` or the noise settings).

    Args:
        n_frames: number of frames N (>= 2).
        size: ``(H, W)`` in pixels.
        graph: pair-graph string for :func:`monst3r_rt.pairs.make_pairs` (symmetrised), or None:
            no pairwise predictions (``edges`` is (0,2); cheap for long clips; use
            :class:`SimulatedBackend` for predictions on demand).
        n_objects: number of moving spheres.
        object_motion: per-frame displacement of each sphere in metres (random direction).
        depth_noise: std of a smooth multiplicative log-depth noise field applied per edge and
            per view to the predictions (0 = exact).
        pose_noise: per-edge perturbation of the relative pose in ``pts_j``: rotation angle std in
            radians and translation std in metres (0 = exact).
        scale_range: the per-edge scale is log-uniform in this range.
        seed: random seed.
        conf_range: ``(low, high)`` of the smooth confidence fields (low >= 1); pixels on object
            boundaries get low confidence.

    Returns:
        a :class:`SyntheticScene` (the noise model is :class:`SimulatedBackend`'s, with the random
        numbers drawn in sequence from the scene's generator instead of per pair).
    """
    h, w = size
    if n_frames < 2:
        raise ValueError(f"make_scene: n_frames must be >= 2, got {n_frames}")
    if h < 2 or w < 2:
        raise ValueError(f"make_scene: size must be at least (2, 2), got {size}")
    _check_ranges("make_scene", scale_range, conf_range)
    rng = np.random.default_rng(seed)
    focal = 0.9 * max(h, w)
    rays = unproject_depth(np.ones((h, w)), focal)  # camera-frame rays with unit z
    poses = _trajectory(rng, n_frames)

    # moving spheres: start in front of the camera path, drift with constant velocity
    radii = rng.uniform(0.4, 0.7, size=n_objects)
    start = np.stack(
        [
            rng.uniform(-1.2, 1.2, n_objects),
            rng.uniform(-0.6, 0.6, n_objects),
            rng.uniform(3.2, 4.5, n_objects),
        ],
        axis=-1,
    )
    direction = rng.normal(size=(n_objects, 3)) * np.array([1.0, 0.5, 0.5])
    direction /= np.maximum(np.linalg.norm(direction, axis=-1, keepdims=True), 1e-12)
    frames = np.arange(n_frames, dtype=np.float64)[:, None, None]
    centers = start[None] + frames * (object_motion * direction)[None]  # (N,K,3)

    # texture: background coloured by world point, spheres by their object-frame point
    n_waves = 4
    bg_coeffs = np.concatenate(
        [rng.uniform(-6, 6, (3, n_waves, 3)), rng.uniform(0, 2 * np.pi, (3, n_waves, 1))], -1
    )
    obj_coeffs = np.concatenate(
        [
            rng.uniform(-10, 10, (max(n_objects, 1), 3, n_waves, 3)),
            rng.uniform(0, 2 * np.pi, (max(n_objects, 1), 3, n_waves, 1)),
        ],
        -1,
    )

    edges = np.zeros((0, 2), dtype=np.int64)
    if graph is not None:
        edges = np.array(make_pairs(n_frames, graph), dtype=np.int64).reshape(-1, 2)
    n_edges = len(edges)

    # render frame by frame (no (N,H,W,3) float64 arrays); float64 depths only kept for edges
    depths = np.empty((n_frames, h, w), dtype=np.float32)
    depths64 = np.empty((n_frames if n_edges else 0, h, w))
    labels = np.empty((n_frames, h, w), dtype=np.int32)
    boundary = np.empty((n_frames, h, w), dtype=bool)
    images = np.empty((n_frames, h, w, 3), dtype=np.uint8)
    for k in range(n_frames):
        depth, labels[k] = _render(poses[k], rays, centers[k], radii)
        depths[k] = depth
        if n_edges:
            depths64[k] = depth
        world = transform_points(poses[k], unproject_depth(depth, focal))
        rgb = _texture(world, bg_coeffs)
        for o in range(n_objects):
            sel = labels[k] == o
            if sel.any():
                rgb[sel] = _texture(world[sel] - centers[k, o], obj_coeffs[o])
        images[k] = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
        boundary[k] = _boundary(labels[k])
    dynamic = labels >= 0

    lo, hi = np.log(scale_range[0]), np.log(scale_range[1])
    scales = np.exp(rng.uniform(lo, hi, size=n_edges))
    pts_i = np.empty((n_edges, h, w, 3), dtype=np.float32)
    pts_j = np.empty((n_edges, h, w, 3), dtype=np.float32)
    conf_i = np.empty((n_edges, h, w), dtype=np.float32)
    conf_j = np.empty((n_edges, h, w), dtype=np.float32)
    flow_ij = np.empty((n_edges, 2, h, w), dtype=np.float32)
    flow_ji = np.empty((n_edges, 2, h, w), dtype=np.float32)
    pixels = pixel_grid(h, w).astype(np.float64)

    def flow(src: int, dst: int) -> np.ndarray:
        moved = transform_points(poses[src], unproject_depth(depths64[src], focal))
        for o in range(n_objects):
            sel = labels[src] == o
            moved[sel] += centers[dst, o] - centers[src, o]
        w2c = np.linalg.inv(poses[dst])
        cam = transform_points(w2c, moved)
        return np.moveaxis(project_points(cam, focal, h, w) - pixels, -1, 0)

    for e, (i, j) in enumerate(edges.tolist()):
        pts_i[e], conf_i[e], pts_j[e], conf_j[e] = _pair_prediction(
            rng, depths64[i], depths64[j], poses[i], poses[j], boundary[i], boundary[j],
            focal, scales[e], depth_noise, pose_noise, conf_range,
        )  # fmt: skip
        flow_ij[e] = flow(i, j)
        flow_ji[e] = flow(j, i)

    return SyntheticScene(
        images=images,
        depths=depths,
        poses=poses,
        focal=float(focal),
        dynamic_masks=dynamic,
        edges=edges,
        pts_i=pts_i,
        pts_j=pts_j,
        conf_i=conf_i,
        conf_j=conf_j,
        flow_ij=flow_ij,
        flow_ji=flow_ji,
        pairwise_scales=scales,
        object_centers=centers,
        object_radii=radii,
        labels=labels,
        boundaries=boundary,
    )


class SimulatedBackend(Backend):
    """A :class:`~monst3r_rt.deploy.backends.Backend` that "runs the network" on the frames of a
    :class:`SyntheticScene` by returning ground-truth-derived pointmaps, for tests and benchmarks.

    ``encode`` recognises each image as a frame of the scene (the uint8 image
    ``round((x + 1) * 127.5)`` must equal one of ``scene.images`` exactly) and returns its frame
    index as the token (int64, shape (B,)). ``decode`` predicts each pair (i, j) with the official
    DUSt3R/MonST3R convention and this noise model (the same model as :func:`make_scene`'s
    per-edge predictions):

    - ``pts1`` = frame i's ground-truth points in camera i's frame (z-depth ``scene.depths[i]``
      unprojected with ``scene.focal``, principal point ``(W/2, H/2)``); ``pts2`` = frame j's
      points at time j (objects where they are in frame j) mapped into camera i's frame by the
      relative pose ``inv(poses[i]) @ poses[j]``; both multiplied by one per-pair scale ``s``,
      log-uniform in ``scale_range`` (metres x s);
    - pose noise (``pose_noise = σp > 0``): the relative pose is left-multiplied, in camera i's
      frame, by a rigid perturbation with rotation vector ~ N(0, σp² I₃) (radians) and
      translation ~ N(0, σp² I₃) (metres, before the scale); ``pts1`` is unaffected;
    - depth noise (``depth_noise = σd > 0``): each view's camera points are multiplied (before
      the pose) by ``exp(σd · z(x))`` where ``z`` is a smooth random field (bicubic upsampling of a
      uniform 5 x ~5W/H grid) normalised to unit spatial std: the log-depth error of every view
      has spatial std exactly σd, correlated over about a fifth of the image;
    - confidences: ``low + (high - low) · u(x)`` for ``conf_range = (low, high)``, ``u`` a smooth
      random field in [0, 1] (4 x ~4W/H grid), independent per view, pulled down to
      ``low + 0.2 (c - low)`` on object boundaries (``scene.boundaries``), and >= 1.

    The random numbers of pair (i, j) come from ``np.random.default_rng((seed, i, j))`` (scale
    first, then pose, depth i, depth j, confidence i, confidence j), so a pair always gives the same
    output whatever the order or batching of the calls; (i, j) and (j, i) are independent draws.
    ``i == j`` gives ``pts2 == pts1`` up to the independent noise draws.

    Args:
        scene: the scene (any ``graph``; ``make_scene(graph=None)`` is enough).
        depth_noise: σd, std of the multiplicative log-depth noise per view (0 = exact).
        pose_noise: σp, rotation (radians) and translation (metres) std of the relative-pose
            perturbation (0 = exact).
        scale_range: ``(low, high)``, the per-pair scale is log-uniform in it (``(1, 1)``: metric).
        conf_range: ``(low, high)`` of the confidences, ``1 <= low <= high``.
        seed: non-negative int; with the frame indices it seeds every pair.

    Attributes:
        name: ``"simulated"``. image_size: ``(H, W)`` of the scene.
        encoded: number of frames encoded so far. decoded: number of pairs decoded so far.
    """

    name = "simulated"

    def __init__(
        self,
        scene: SyntheticScene,
        *,
        depth_noise: float = 0.0,
        pose_noise: float = 0.0,
        scale_range: tuple[float, float] = (1.0, 1.0),
        conf_range: tuple[float, float] = (1.5, 5.0),
        seed: int = 0,
    ):
        _check_ranges("SimulatedBackend", scale_range, conf_range)
        if depth_noise < 0 or pose_noise < 0:
            raise ValueError(
                f"SimulatedBackend: depth_noise and pose_noise must be >= 0, got {depth_noise} "
                f"and {pose_noise}"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"SimulatedBackend: seed must be a non-negative int, got {seed!r}")
        n, h, w = scene.depths.shape
        if scene.images.shape != (n, h, w, 3) or scene.images.dtype != np.uint8:
            raise ValueError(
                f"SimulatedBackend: scene.images must be ({n},{h},{w},3) uint8, got "
                f"{scene.images.shape} {scene.images.dtype}"
            )
        self.scene = scene
        self.image_size = (h, w)
        self.depth_noise = float(depth_noise)
        self.pose_noise = float(pose_noise)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.conf_range = (float(conf_range[0]), float(conf_range[1]))
        self.seed = int(seed)
        self.encoded = 0
        self.decoded = 0
        self._boundaries = scene.boundaries
        if self._boundaries is None:
            self._boundaries = np.stack([_boundary(lab) for lab in scene.labels])
        self._index: dict[bytes, int] = {}
        for k in range(n):
            self._index.setdefault(_image_key(scene.images[k]), k)

    def frame_index(self, image: np.ndarray) -> int:
        """The scene frame shown by one (3,H,W) float image in [-1, 1]; ValueError if none."""
        x = (np.asarray(image, dtype=np.float64) + 1.0) * 127.5
        u = np.round(x)
        if np.abs(x - u).max(initial=0.0) > 0.01 or u.min(initial=0) < 0 or u.max(initial=0) > 255:
            raise ValueError("image does not belong to the simulated scene (not a uint8 image)")
        rgb = np.ascontiguousarray(u.astype(np.uint8).transpose(1, 2, 0))
        k = self._index.get(_image_key(rgb))
        if k is None or not np.array_equal(self.scene.images[k], rgb):
            raise ValueError("image does not belong to the simulated scene")
        return k

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(B,3,H,W) float in [-1, 1] → (B,) int64 frame indices; ValueError for an image that
        is not exactly a frame of the scene."""
        images = np.asarray(images)
        h, w = self.image_size
        if images.ndim != 4 or images.shape[1:] != (3, h, w):
            raise ValueError(f"images must have shape (B,3,{h},{w}), got {images.shape}")
        tokens = np.empty(len(images), dtype=np.int64)
        for b in range(len(images)):
            try:
                tokens[b] = self.frame_index(images[b])
            except ValueError as exc:
                raise ValueError(f"images[{b}]: {exc}") from None
        self.encoded += len(images)
        return tokens

    def pair_scale(self, i: int, j: int) -> float:
        """The scale of pair (i, j)'s predictions (metres → prediction units)."""
        return float(self._scale(np.random.default_rng((self.seed, int(i), int(j)))))

    def _scale(self, rng: np.random.Generator) -> float:
        lo, hi = np.log(self.scale_range[0]), np.log(self.scale_range[1])
        return float(np.exp(rng.uniform(lo, hi)))

    def predict(self, i: int, j: int) -> Outputs:
        """Pair (i, j) unbatched: ``pts1`` (H,W,3), ``conf1`` (H,W), ``pts2`` (H,W,3) in camera
        i's frame, ``conf2`` (H,W), float32 (does not count in :attr:`decoded`)."""
        n = len(self.scene.depths)
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"pair ({i}, {j}) is out of range for a scene of {n} frames")
        s = self.scene
        rng = np.random.default_rng((self.seed, int(i), int(j)))
        scale = self._scale(rng)
        return _pair_prediction(
            rng, s.depths[i].astype(np.float64), s.depths[j].astype(np.float64), s.poses[i],
            s.poses[j], self._boundaries[i], self._boundaries[j], s.focal, scale,
            self.depth_noise, self.pose_noise, self.conf_range,
        )  # fmt: skip

    def decode(
        self, tokens1: np.ndarray, tokens2: np.ndarray, image_size: tuple[int, int]
    ) -> Outputs:
        """(B,) frame-index tokens of views 1 and 2 → ``pts1`` (B,H,W,3), ``conf1`` (B,H,W),
        ``pts2`` (B,H,W,3) in view 1's camera frame, ``conf2`` (B,H,W), float32."""
        self.check_size(image_size)
        t1 = np.asarray(tokens1).reshape(-1)
        t2 = np.asarray(tokens2).reshape(-1)
        if t1.shape != t2.shape:
            raise ValueError(f"tokens1 and tokens2 must match, got {t1.shape} and {t2.shape}")
        res = [self.predict(int(i), int(j)) for i, j in zip(t1, t2, strict=True)]
        h, w = self.image_size
        shapes = ((h, w, 3), (h, w), (h, w, 3), (h, w))
        out = tuple(
            np.stack([r[k] for r in res]) if res else np.empty((0, *shapes[k]), np.float32)
            for k in range(4)
        )
        self.decoded += len(t1)
        return out  # type: ignore[return-value]


def _image_key(rgb: np.ndarray) -> bytes:
    """Digest of a contiguous (H,W,3) uint8 image."""
    return hashlib.blake2b(np.ascontiguousarray(rgb).data, digest_size=16).digest()


VIDEO_CODECS = {".avi": "FFV1", ".mkv": "FFV1", ".mp4": "mp4v"}


def scene_video(scene: SyntheticScene, path: str | os.PathLike[str], fps: float = 10.0) -> str:
    """Write ``scene.images`` as a video (OpenCV): ``.avi`` / ``.mkv`` in FFV1, lossless (the
    frames read back bit-exact, so :class:`SimulatedBackend` recognises them), ``.mp4`` in mp4v
    (lossy). Returns the path."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in VIDEO_CODECS:
        raise ValueError(f"scene_video: {path!r} must end in one of {sorted(VIDEO_CODECS)}")
    if fps <= 0:
        raise ValueError(f"scene_video: fps must be positive, got {fps}")
    _, h, w, _ = scene.images.shape
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*VIDEO_CODECS[ext]), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"scene_video: OpenCV cannot write {VIDEO_CODECS[ext]} to {path!r}")
    try:
        for img in scene.images:
            writer.write(np.ascontiguousarray(img[:, :, ::-1]))
    finally:
        writer.release()
    return path
