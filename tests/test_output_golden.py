"""Golden lines of the text output formats, written out by hand for a known pose and intrinsics.

The round-trip tests read the files back through the package's own readers, which would accept
a convention error made the same way in writer and reader (quaternion order, world-to-camera vs
camera-to-world, a transposed rotation). Here every expected line is a literal derived below
from the pose, independently of the package.

The pose of frame 1: the unit quaternion (x, y, z, w) = (1, 2, 4, 10) / 11 (1 + 4 + 16 + 100 =
121), whose components all differ, so any reordering shows. With 121·(x², y², z²) = (1, 4, 16)
and 121·(xy, xz, yz, xw, yw, zw) = (2, 4, 8, 10, 20, 40), the usual quaternion-to-matrix formula
gives 121·R = M:

    M00 = 121 − 2(4 + 16) = 81     M01 = 2(2 − 40) = −76     M02 = 2(4 + 20) = 48
    M10 = 2(2 + 40) = 84           M11 = 121 − 2(1 + 16) = 87 M12 = 2(8 − 10) = −4
    M20 = 2(4 − 20) = −32          M21 = 2(8 + 10) = 36      M22 = 121 − 2(1 + 4) = 111

(each row has norm 121). The camera-to-world translation t = −R·u with the
world-to-camera translation u = (−1.21, 2.42, −3.63) = 1.21·(−1, 2, −3):
t = −0.01·(81·−1 − 76·2 + 48·−3, 84·−1 + 87·2 − 4·−3, −32·−1 + 36·2 + 111·−3)
  = −0.01·(−377, 102, −229) = (3.77, −1.02, 2.29).
World-to-camera (COLMAP) is [Rᵀ | u], whose quaternion is the conjugate (−1, −2, −4, 10) / 11.

Decimals: 1/11 = 0.0909090909…, 2/11 = 0.1818181818…, 4/11 = 0.3636363636…,
10/11 = 0.9090909090… (rounded: 0.90909091 at 8 places, 0.9090909091 at 10).
Frame 0 is the identity. Intrinsics: f = 500.25 px, principal point (4, 3) for an 8x6 image.
"""

from __future__ import annotations

import numpy as np
import pytest

from monst3r_rt.reconstruction import Reconstruction

H, W = 6, 8
R1 = np.array([[81, -76, 48], [84, 87, -4], [-32, 36, 111]], dtype=np.float64) / 121
T1 = np.array([3.77, -1.02, 2.29])


def _hamilton(p: tuple, q: tuple) -> tuple:
    """Quaternion product, (w, x, y, z) tuples of integers."""
    pw, px, py, pz = p
    qw, qx, qy, qz = q
    return (
        pw * qw - px * qx - py * qy - pz * qz,
        pw * qx + px * qw + py * qz - pz * qy,
        pw * qy - px * qz + py * qw + pz * qx,
        pw * qz + px * qy - py * qx + pz * qw,
    )


def test_the_hand_derived_pose_is_a_rotation():
    """The derivation above, checked in exact integer arithmetic (no package code): M is a
    proper rotation times 121, and column k of M is q·e_k·q̄ for q = (10, 1, 2, 4) (w first)."""
    m = np.array([[81, -76, 48], [84, 87, -4], [-32, 36, 111]])
    assert (m @ m.T == 121**2 * np.eye(3, dtype=int)).all() and round(np.linalg.det(m)) == 121**3
    q, q_bar = (10, 1, 2, 4), (10, -1, -2, -4)
    for k in range(3):
        e = tuple(int(k == i) for i in range(3))
        rotated = _hamilton(_hamilton(q, (0, *e)), q_bar)
        assert rotated == (0, *m[:, k]), k
    np.testing.assert_allclose(-R1.T @ T1, [-1.21, 2.42, -3.63], rtol=0, atol=1e-14)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """An output folder of two frames: identity and the pose above (float64, so that no
    float32 rounding reaches the printed digits), and one confident static point."""
    poses = np.tile(np.eye(4), (2, 1, 1))
    poses[1, :3, :3], poses[1, :3, 3] = R1, T1
    k = np.tile(np.array([[500.25, 0, 4], [0, 500.25, 3], [0, 0, 1]], np.float32), (2, 1, 1))
    conf = np.ones((2, H, W), np.float32)
    conf[1, 2, 5] = 5.0  # the only point above the scene's confidence threshold (1.1)
    pts = np.zeros((2, H, W, 3), np.float32)
    pts[1, 2, 5] = [0.5, -1.0, 2.0]
    frames = np.zeros((2, H, W, 3), np.uint8)
    frames[1, 2, 5] = [255, 128, 0]
    rec = Reconstruction(frames, np.ones((2, H, W), np.float32), poses, k, conf,
                         np.zeros((2, H, W), bool), pts)  # fmt: skip
    folder = tmp_path_factory.mktemp("golden") / "out"
    rec.save(folder)
    return folder


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_pred_traj_official_scalar_first(out):
    """``t x y z qw qx qy qz``, camera-to-world, scalar first (spec §5.1, pitfall 8)."""
    assert _lines(out / "pred_traj.txt") == [
        "0.00000000 0.00000000 0.00000000 0.00000000 1.00000000 0.00000000 0.00000000 0.00000000",
        "1.00000000 3.77000000 -1.02000000 2.29000000 0.90909091 0.09090909 0.18181818 0.36363636",
    ]


def test_trajectory_tum_scalar_last(out):
    """TUM RGB-D: ``timestamp tx ty tz qx qy qz qw``, camera-to-world."""
    lines = [ln for ln in _lines(out / "trajectory_tum.txt") if not ln.startswith("#")]
    assert lines == [
        "0.00000000 0.00000000 0.00000000 0.00000000 0.00000000 0.00000000 0.00000000 1.00000000",
        "1.00000000 3.77000000 -1.02000000 2.29000000 0.09090909 0.18181818 0.36363636 0.90909091",
    ]


def test_pred_intrinsics_row_major(out):
    """One row-major K per line, ``%.6f`` (official)."""
    row = "500.250000 0.000000 4.000000 0.000000 500.250000 3.000000 0.000000 0.000000 1.000000"
    assert _lines(out / "pred_intrinsics.txt") == [row, row]


def test_colmap_cameras_pinhole(out):
    """``CAMERA_ID MODEL WIDTH HEIGHT fx fy cx cy``."""
    lines = [ln for ln in _lines(out / "colmap" / "cameras.txt") if not ln.startswith("#")]
    assert lines == [
        "1 PINHOLE 8 6 500.25000000 500.25000000 4.00000000 3.00000000",
        "2 PINHOLE 8 6 500.25000000 500.25000000 4.00000000 3.00000000",
    ]


def test_colmap_images_world_to_camera(out):
    """``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` world-to-camera (the conjugate
    quaternion and u = −Rᵀt), each followed by its (empty) line of 2-D points."""
    lines = [ln for ln in _lines(out / "colmap" / "images.txt") if not ln.startswith("#")]
    assert lines == [
        "1 1.0000000000 0.0000000000 0.0000000000 0.0000000000 "
        "0.0000000000 0.0000000000 0.0000000000 1 frame_0000.png",
        "",
        "2 0.9090909091 -0.0909090909 -0.1818181818 -0.3636363636 "
        "-1.2100000000 2.4200000000 -3.6300000000 2 frame_0001.png",
        "",
    ]


def test_colmap_points3d(out):
    """``POINT3D_ID X Y Z R G B ERROR`` (empty track) for the one confident static point."""
    lines = [ln for ln in _lines(out / "colmap" / "points3D.txt") if not ln.startswith("#")]
    assert lines == ["1 0.500000 -1.000000 2.000000 255 128 0 0.0"]
