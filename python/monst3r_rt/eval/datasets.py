"""Readers of the evaluation datasets in the official protocol's frames (spec §6.2).

Each reader takes the dataset's root folder (the layout below each class, as the dataset's own
archives extract), lists the official sequences (:meth:`sequences`) and loads one
(:meth:`load`) as a :class:`SequenceData`. Readers validate the layout before reading any
pixel: a missing folder or file is a :class:`DatasetError` naming it, and a sequence whose
ground-truth count differs from its frame count is an error, never a silent truncation.

Ground-truth conventions of every reader: depth (N,H,W) float32 **metres** (Sintel: scene
units) with invalid pixels = 0 (the official loaders' −1; both are excluded by the metrics'
``gt > 0``); poses (N,4,4) float64 camera-to-world, OpenCV axes; masks (N,H,W) bool.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from ..fileio import read_tum
from .sintel_io import read_cam, read_dpt

__all__ = [
    "DatasetError", "SequenceData", "Dataset", "Sintel", "TUMDynamics", "Bonn", "KittiDepth",
    "Davis", "DATASETS", "get_dataset", "associate", "SINTEL_POSE_SEQUENCES",
    "SINTEL_DEPTH_SEQUENCES", "TUM_SEQUENCES", "BONN_SEQUENCES",
]  # fmt: skip


class DatasetError(FileNotFoundError):
    """A dataset folder does not have the expected layout (the message names what is missing)."""


@dataclass
class SequenceData:
    """One evaluation sequence in the official protocol's frames.

    Attributes:
        name: sequence name (the output subfolder).
        images: N image paths, in order (the frames the method is run on).
        depth: (N,H,W) float32 ground-truth depth (metres; invalid = 0), or None.
        poses: (N,4,4) float64 ground-truth camera-to-world, or None.
        masks: (N,H,W) bool ground-truth dynamic masks (True = moving object), or None.
        timestamps: (N,) float64 seconds (or frame indices where the dataset has none).
    """

    name: str
    images: list[str]
    depth: np.ndarray | None = None
    poses: np.ndarray | None = None
    masks: np.ndarray | None = None
    timestamps: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        n = len(self.images)
        if n == 0:
            raise DatasetError(f"sequence {self.name}: no frames")
        if len(self.timestamps) == 0:
            self.timestamps = np.arange(n, dtype=np.float64)
        for what, arr in (("depth", self.depth), ("poses", self.poses), ("masks", self.masks),
                          ("timestamps", self.timestamps)):  # fmt: skip
            if arr is not None and len(arr) != n:
                raise ValueError(
                    f"sequence {self.name}: {len(arr)} ground-truth {what} for {n} frames"
                )


def _need_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: missing folder ({what})")
    return path


def _need_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: missing file ({what})")
    return path


def _list(folder: str, exts: tuple[str, ...], what: str) -> list[str]:
    _need_dir(folder, what)
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(exts))
    if not files:
        raise DatasetError(f"{folder}: no {'/'.join(exts)} files ({what})")
    return [os.path.join(folder, f) for f in files]


def _read_png16(path: str, divisor: float) -> np.ndarray:
    """(H,W) float32 metres from a 16-bit PNG storing ``metres · divisor`` (0 = invalid)."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"{path}: cannot read the depth PNG")
    if img.dtype != np.uint16 or img.ndim != 2:
        raise ValueError(f"{path}: depth PNG must be 16-bit single-channel, got {img.dtype} "
                         f"{img.shape}")  # fmt: skip
    return (img.astype(np.float32) / np.float32(divisor)).astype(np.float32)


def _stack(maps: list[np.ndarray], paths: list[str], what: str) -> np.ndarray:
    shapes = {m.shape for m in maps}
    if len(shapes) > 1:
        first = maps[0].shape
        bad = next(p for m, p in zip(maps, paths, strict=True) if m.shape != first)
        raise ValueError(f"{bad}: {what} shape differs from the sequence's first {first}")
    return np.stack(maps)


def associate(
    first: np.ndarray, second: np.ndarray, max_difference: float = 0.02, offset: float = 0.0
) -> list[tuple[int, int]]:
    """TUM's ``associate.py``: greedily match timestamps closest first, each used at most once,
    pairs with ``|a − (b + offset)| < max_difference``; returns index pairs sorted by ``first``.

    Args:
        first: (N,) timestamps (seconds), e.g. of ``rgb.txt``.
        second: (M,) timestamps, e.g. of ``groundtruth.txt``.
    """
    a = np.asarray(first, np.float64)
    b = np.asarray(second, np.float64) + offset
    diff = np.abs(a[:, None] - b[None, :])
    ia, ib = np.nonzero(diff < max_difference)
    order = np.lexsort((ib, ia, diff[ia, ib]))  # smallest difference first (ties: file order)
    used_a, used_b, pairs = set(), set(), []
    for k in order:
        i, j = int(ia[k]), int(ib[k])
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    return sorted(pairs)


def _read_file_list(path: str) -> tuple[np.ndarray, list[list[str]]]:
    """A TUM list file (``timestamp data...`` lines, ``#`` comments): timestamps and the rest."""
    _need_file(path, "TUM-format list")
    stamps, rest = [], []
    with open(path) as f:
        for line in f:
            parts = line.replace(",", " ").split()
            if not parts or parts[0].startswith("#"):
                continue
            stamps.append(float(parts[0]))
            rest.append(parts[1:])
    if not stamps:
        raise DatasetError(f"{path}: no entries")
    return np.array(stamps), rest


class Dataset:
    """Base reader. ``root`` is the dataset folder; :meth:`check` validates every official
    sequence's layout (listing all that is missing); ``load(seq)`` reads one."""

    name = ""
    #: the metrics the dataset is scored on: subset of {"depth", "pose", "mask"}
    tasks: tuple[str, ...] = ()

    def __init__(self, root: str | os.PathLike[str]):
        self.root = os.fspath(root)
        _need_dir(self.root, f"{self.name} dataset root")

    def sequences(self) -> list[str]:
        """The official evaluation sequences (names)."""
        raise NotImplementedError

    def pose_sequences(self) -> list[str]:
        """The sequences scored on poses (a subset of :meth:`sequences`)."""
        return self.sequences() if "pose" in self.tasks else []

    def check(self, sequence: str) -> None:
        """Validate one sequence's layout without reading pixels (DatasetError naming what is
        missing)."""
        raise NotImplementedError

    def check_all(self, sequences: list[str] | None = None) -> None:
        """Validate every (given) sequence; one DatasetError listing all problems."""
        errors = []
        for s in sequences or self.sequences():
            try:
                self.check(s)
            except (DatasetError, ValueError) as exc:
                errors.append(str(exc))
        if errors:
            raise DatasetError(f"{self.name} at {self.root}: " + "; ".join(errors))

    def load(self, sequence: str) -> SequenceData:
        raise NotImplementedError


# ---- Sintel -------------------------------------------------------------------------------------
SINTEL_POSE_SEQUENCES = [
    "alley_2", "ambush_4", "ambush_5", "ambush_6", "cave_2", "cave_4", "market_2", "market_5",
    "market_6", "shaman_3", "sleeping_1", "sleeping_2", "temple_2", "temple_3",
]  # fmt: skip
SINTEL_DEPTH_SEQUENCES = [
    "alley_1", "alley_2", "ambush_2", "ambush_4", "ambush_5", "ambush_6", "ambush_7", "bamboo_1",
    "bamboo_2", "bandage_1", "bandage_2", "cave_2", "cave_4", "market_2", "market_5", "market_6",
    "mountain_1", "shaman_2", "shaman_3", "sleeping_1", "sleeping_2", "temple_2", "temple_3",
]  # fmt: skip


class Sintel(Dataset):
    """MPI Sintel, training set, ``final`` pass: video depth on all 23 training sequences and
    camera pose on the 14 of :data:`SINTEL_POSE_SEQUENCES`, all frames, stride 1.

    Layout (``MPI-Sintel-complete.zip`` and ``MPI-Sintel-depth-training-20150305.zip`` from
    http://sintel.is.tue.mpg.de/downloads extracted into the same ``root``)::

        root/training/final/<seq>/frame_0001.png ...
        root/training/depth/<seq>/frame_0001.dpt ...        (float32 depth, read_dpt)
        root/training/camdata_left/<seq>/frame_0001.cam ... (K and world-to-camera, read_cam)

    Depth is in the scene's units (the official cap 70 applies to them). Poses are the inverted
    ``.cam`` extrinsics (camera-to-world); the official code also mean-centres the positions,
    which the Sim(3)-aligned metrics ignore, so it is not done here.
    """

    name = "sintel"
    tasks = ("depth", "pose")

    def sequences(self) -> list[str]:
        return list(SINTEL_DEPTH_SEQUENCES)

    def pose_sequences(self) -> list[str]:
        return list(SINTEL_POSE_SEQUENCES)

    def _files(self, seq: str) -> tuple[list[str], list[str], list[str]]:
        tr = os.path.join(self.root, "training")
        images = _list(
            os.path.join(tr, "final", seq), (".png",), f"Sintel final-pass images of {seq}"
        )
        out = [images]
        for kind, ext in (("depth", ".dpt"), ("camdata_left", ".cam")):
            folder = _need_dir(os.path.join(tr, kind, seq), f"Sintel {kind} of {seq}")
            paths = []
            for im in images:
                p = os.path.join(folder, os.path.splitext(os.path.basename(im))[0] + ext)
                if not os.path.isfile(p):
                    raise DatasetError(
                        f"{p}: missing file (Sintel {kind} of {os.path.basename(im)})"
                    )
                paths.append(p)
            extra = len([f for f in os.listdir(folder) if f.endswith(ext)]) - len(paths)
            if extra:
                raise ValueError(
                    f"{folder}: {len(paths) + extra} {ext} files for {len(images)} frames in "
                    f"{os.path.dirname(images[0])}"
                )
            out.append(paths)
        return out[0], out[1], out[2]

    def check(self, sequence: str) -> None:
        self._files(sequence)

    def load(self, sequence: str) -> SequenceData:
        images, dpts, cams = self._files(sequence)
        depth = _stack([read_dpt(p) for p in dpts], dpts, "depth")
        depth[~np.isfinite(depth) | (depth < 0)] = 0
        poses = []
        for p in cams:
            w2c = np.eye(4)
            w2c[:3] = read_cam(p)[1]
            poses.append(np.linalg.inv(w2c))
        return SequenceData(sequence, images, depth=depth, poses=np.stack(poses))


# ---- TUM RGB-D dynamic and Bonn -----------------------------------------------------------------
TUM_SEQUENCES = [
    f"rgbd_dataset_freiburg3_{a}_{b}"
    for a in ("sitting", "walking")
    for b in ("static", "xyz", "halfsphere", "rpy")
]
BONN_SEQUENCES = [
    f"rgbd_bonn_{s}" for s in ("balloon2", "crowd2", "crowd3", "person_tracking2", "synchronous")
]


def _tum_folder_check(seq_dir: str, files: tuple[str, ...]) -> None:
    _need_dir(seq_dir, "sequence folder")
    for f in files:
        _need_file(os.path.join(seq_dir, f), "TUM-format list")


class TUMDynamics(Dataset):
    """TUM RGB-D, freiburg3 dynamic sequences (:data:`TUM_SEQUENCES`), camera pose.

    Frames as ``prepare_tum.py``: ``rgb.txt`` associated with ``groundtruth.txt`` (TUM
    ``associate.py``, Δt < 0.02 s, offset 0), then every 3rd matched frame, the first 90.

    Layout (the ``.tgz`` archives of https://cvg.cit.tum.de/data/datasets/rgbd-dataset/download,
    e.g. ``rgbd_dataset_freiburg3_walking_xyz.tgz``, extracted into ``root``)::

        root/rgbd_dataset_freiburg3_walking_xyz/rgb.txt          (timestamp rgb/<t>.png)
        root/rgbd_dataset_freiburg3_walking_xyz/groundtruth.txt  (t tx ty tz qx qy qz qw)
        root/rgbd_dataset_freiburg3_walking_xyz/rgb/<t>.png

    Ground truth: poses only (depth None).
    """

    name = "tum"
    tasks = ("pose",)
    stride, max_frames, max_difference = 3, 90, 0.02

    def sequences(self) -> list[str]:
        return list(TUM_SEQUENCES)

    def check(self, sequence: str) -> None:
        _tum_folder_check(os.path.join(self.root, sequence), ("rgb.txt", "groundtruth.txt"))

    def load(self, sequence: str) -> SequenceData:
        d = os.path.join(self.root, sequence)
        self.check(sequence)
        t_rgb, rgb = _read_file_list(os.path.join(d, "rgb.txt"))
        gt_path = os.path.join(d, "groundtruth.txt")
        t_gt, poses = read_tum(gt_path)
        pairs = associate(t_rgb, t_gt, self.max_difference)[:: self.stride][: self.max_frames]
        if len(pairs) < 2:
            raise ValueError(f"{d}: {len(pairs)} rgb/groundtruth matches within "
                             f"{self.max_difference} s")  # fmt: skip
        images = [os.path.join(d, rgb[i][0]) for i, _ in pairs]
        for p in images:
            _need_file(p, "image listed in rgb.txt")
        return SequenceData(sequence, images, poses=poses[[j for _, j in pairs]],
                            timestamps=t_rgb[[i for i, _ in pairs]])  # fmt: skip


class Bonn(Dataset):
    """Bonn RGB-D Dynamic, video depth on the 5 sequences of :data:`BONN_SEQUENCES`.

    Frames as ``prepare_bonn.py``: the name-sorted ``rgb/*.png`` and ``depth/*.png``, frames
    ``[30:140]`` (110 consecutive), paired by position (the dataset's rgb and depth folders are
    already associated; their counts must match). Depth PNGs are 16-bit, metres × 5000 (0 =
    invalid), as the official ``depth_read_bonn``. Poses are not read (video depth only).

    Layout (``rgbd_bonn_dataset.zip`` from
    https://www.ipb.uni-bonn.de/data/rgbd-dynamic-dataset/ extracted into ``root``)::

        root/rgbd_bonn_dataset/rgbd_bonn_balloon2/rgb/<t>.png
        root/rgbd_bonn_dataset/rgbd_bonn_balloon2/depth/<t>.png

    (``root`` may also be the ``rgbd_bonn_dataset`` folder itself.)
    """

    name = "bonn"
    tasks = ("depth",)
    first, last, depth_scale = 30, 140, 5000.0

    def __init__(self, root: str | os.PathLike[str]):
        super().__init__(root)
        inner = os.path.join(self.root, "rgbd_bonn_dataset")
        self.base = inner if os.path.isdir(inner) else self.root

    def sequences(self) -> list[str]:
        return list(BONN_SEQUENCES)

    def _files(self, seq: str) -> tuple[list[str], list[str]]:
        d = _need_dir(os.path.join(self.base, seq), "Bonn sequence folder")
        rgb = _list(os.path.join(d, "rgb"), (".png",), f"Bonn rgb of {seq}")
        dep = _list(os.path.join(d, "depth"), (".png",), f"Bonn depth of {seq}")
        if len(rgb) != len(dep):
            raise ValueError(f"{d}: {len(rgb)} rgb and {len(dep)} depth images (must match)")
        if len(rgb) < self.last:
            raise ValueError(f"{d}: {len(rgb)} frames, the protocol uses frames "
                             f"[{self.first}:{self.last}]")  # fmt: skip
        return rgb[self.first : self.last], dep[self.first : self.last]

    def check(self, sequence: str) -> None:
        self._files(sequence)

    def load(self, sequence: str) -> SequenceData:
        rgb, dep = self._files(sequence)
        depth = _stack([_read_png16(p, self.depth_scale) for p in dep], dep, "depth")
        stamps = []
        for p in rgb:
            try:
                stamps.append(float(os.path.splitext(os.path.basename(p))[0]))
            except ValueError:
                stamps = []
                break
        return SequenceData(sequence, rgb, depth=depth, timestamps=np.array(stamps))


# ---- KITTI --------------------------------------------------------------------------------------
class KittiDepth(Dataset):
    """KITTI depth (validation split, ``image_02``), video depth: every drive of
    ``val/`` (13 in the official download), the first 110 ground-truth frames of each
    (``prepare_kitti.py``). Depth PNGs are 16-bit, metres × 256 (0 = invalid).

    Layout (``data_depth_annotated.zip`` from https://www.cvlibs.net/datasets/kitti/
    eval_depth.php?benchmark=depth_prediction and the raw ``<drive>_sync.zip`` of the same
    drives, extracted into ``root``; the raw images may sit with or without their date
    folder)::

        root/val/<drive>/proj_depth/groundtruth/image_02/0000000005.png
        root/raw/<drive>/image_02/data/0000000005.png
        (or root/raw/<date>/<drive>/image_02/data/0000000005.png)
    """

    name = "kitti"
    tasks = ("depth",)
    max_frames, depth_scale = 110, 256.0

    def sequences(self) -> list[str]:
        val = _need_dir(os.path.join(self.root, "val"), "KITTI annotated depth, validation split")
        seqs = sorted(s for s in os.listdir(val) if os.path.isdir(os.path.join(val, s)))
        if not seqs:
            raise DatasetError(f"{val}: no drive folders")
        return seqs

    def _files(self, seq: str) -> tuple[list[str], list[str]]:
        gt_dir = os.path.join(self.root, "val", seq, "proj_depth", "groundtruth", "image_02")
        dep = _list(gt_dir, (".png",), f"KITTI ground-truth depth of {seq}")[: self.max_frames]
        cands = [os.path.join(self.root, "raw", seq, "image_02", "data"),
                 os.path.join(self.root, "raw", seq[:10], seq, "image_02", "data")]  # fmt: skip
        img_dir = next((c for c in cands if os.path.isdir(c)), None)
        if img_dir is None:
            raise DatasetError(f"{cands[0]}: missing folder (KITTI raw images of {seq}; also "
                               f"looked in {cands[1]})")  # fmt: skip
        images = [os.path.join(img_dir, os.path.basename(p)) for p in dep]
        for p in images:
            _need_file(p, f"KITTI raw image for the ground truth of {seq}")
        return images, dep

    def check(self, sequence: str) -> None:
        self._files(sequence)

    def load(self, sequence: str) -> SequenceData:
        images, dep = self._files(sequence)
        depth = _stack([_read_png16(p, self.depth_scale) for p in dep], dep, "depth")
        return SequenceData(sequence, images, depth=depth)


# ---- DAVIS --------------------------------------------------------------------------------------
class Davis(Dataset):
    """DAVIS 2017 (or 2016) trainval, 480p: dynamic masks, all frames.

    Annotations are palette PNGs; every nonzero label counts as moving (the dynamic mask is the
    union of the objects). Sequences: ``ImageSets/2017/val.txt`` when present (or ``imageset``
    given), else every folder of ``JPEGImages/480p``.

    Layout (``DAVIS-2017-trainval-480p.zip`` from https://davischallenge.org/davis2017/code.html
    extracted, ``root`` = its ``DAVIS`` folder)::

        root/JPEGImages/480p/<seq>/00000.jpg ...
        root/Annotations/480p/<seq>/00000.png ...
    """

    name = "davis"
    tasks = ("mask",)

    def __init__(self, root: str | os.PathLike[str], resolution: str = "480p",
                 imageset: str | None = None):  # fmt: skip
        super().__init__(root)
        self.resolution = resolution
        self.imageset = imageset

    def sequences(self) -> list[str]:
        sets = self.imageset or os.path.join(self.root, "ImageSets", "2017", "val.txt")
        if os.path.isfile(sets):
            with open(sets) as f:
                return [s.strip() for s in f if s.strip()]
        if self.imageset:
            raise DatasetError(f"{sets}: missing file (DAVIS image set)")
        jp = _need_dir(os.path.join(self.root, "JPEGImages", self.resolution), "DAVIS images")
        return sorted(s for s in os.listdir(jp) if os.path.isdir(os.path.join(jp, s)))

    def _files(self, seq: str) -> tuple[list[str], list[str]]:
        images = _list(os.path.join(self.root, "JPEGImages", self.resolution, seq), (".jpg",),
                       f"DAVIS images of {seq}")  # fmt: skip
        ann = _need_dir(os.path.join(self.root, "Annotations", self.resolution, seq),
                        f"DAVIS annotations of {seq}")  # fmt: skip
        masks = [os.path.join(ann, os.path.splitext(os.path.basename(p))[0] + ".png")
                 for p in images]  # fmt: skip
        for p in masks:
            _need_file(p, f"DAVIS annotation of {seq}")
        return images, masks

    def check(self, sequence: str) -> None:
        self._files(sequence)

    def load(self, sequence: str) -> SequenceData:
        images, paths = self._files(sequence)
        maps = []
        for p in paths:
            try:
                with Image.open(p) as im:  # palette indices as stored (0 = background)
                    m = np.asarray(im)
            except OSError as exc:
                raise DatasetError(f"{p}: cannot read the annotation PNG ({exc})") from exc
            maps.append((m != 0).any(-1) if m.ndim == 3 else m != 0)
        return SequenceData(sequence, images, masks=_stack(maps, paths, "mask"))


DATASETS: dict[str, type[Dataset]] = {
    "sintel": Sintel, "tum": TUMDynamics, "bonn": Bonn, "kitti": KittiDepth, "davis": Davis,
}  # fmt: skip


def get_dataset(name: str, root: str | os.PathLike[str]) -> Dataset:
    """The reader of dataset ``name`` (a key of :data:`DATASETS`) at ``root``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; one of {sorted(DATASETS)}")
    return DATASETS[name](root)
