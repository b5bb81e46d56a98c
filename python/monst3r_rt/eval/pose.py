"""Camera-pose metrics of the official evaluation (``dust3r/utils/vo_eval.py::eval_metrics``, which
calls ``evo``), in NumPy.

The official protocol (spec §6.4): the prediction and the ground truth become evo
``PoseTrajectory3D`` objects whose timestamps are the frame indices (the prediction takes the
ground truth's timestamps when the counts match, so frame ``i`` is matched with frame ``i``), then

- ATE: ``evo.main_ape.ape(pose_relation=translation_part, align=True, correct_scale=True)``:
  RMSE of the position error after a Sim(3) Umeyama alignment of the predicted positions onto the
  ground-truth positions;
- RPE translation / rotation: ``evo.main_rpe.rpe(pose_relation=translation_part |
  rotation_angle_deg, align=True, correct_scale=True, delta=1, delta_unit=frames,
  all_pairs=True)``: the same Sim(3) alignment, then for every consecutive pair ``(i, i+1)`` the
  error ``E = (Q_i⁻¹ Q_{i+1})⁻¹ (P_i⁻¹ P_{i+1})`` (Q ground truth, P aligned prediction), RMSE of
  ``|t(E)|`` and of the rotation angle of ``R(E)`` in degrees. With ``delta=1``, ``all_pairs``
  True and False give the same pairs.

The dataset score is the unweighted mean over sequences (``calculate_averages``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..geometry import pair_moments, umeyama

__all__ = ["pose_metrics"]

_ORTHO_TOL = 1e-4  # |RᵀR − I| accepted for a rotation block (float32 poses pass)


def _check_poses(name: str, poses: Any) -> np.ndarray:
    arr = np.asarray(poses)
    if arr.ndim != 3 or arr.shape[1:] != (4, 4):
        raise ValueError(f"pose_metrics: {name} must be (N,4,4) camera-to-world, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"pose_metrics: {name} must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr).all(axis=(1, 2))
    if bad.any():
        raise ValueError(
            f"pose_metrics: {name} {arr.shape} has non-finite values in frames "
            f"{np.flatnonzero(bad)[:10].tolist()}"
        )
    bottom = np.abs(arr[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1) > 1e-6
    rot = arr[:, :3, :3]
    ortho = np.abs(rot.transpose(0, 2, 1) @ rot - np.eye(3)).max(axis=(1, 2)) > _ORTHO_TOL
    bad = bottom | ortho | (np.linalg.det(rot) < 0)
    if bad.any():
        raise ValueError(
            f"pose_metrics: {name} {arr.shape}: frames {np.flatnonzero(bad)[:10].tolist()} are "
            "not rigid poses (bottom row [0,0,0,1] and a rotation block)"
        )
    return arr


def _rotation_angle(rot: np.ndarray) -> np.ndarray:
    """(M,) rotation angles in [0, π] of (M,3,3) rotations, from ``atan2(sin, cos)`` (accurate at
    small and large angles alike, unlike ``arccos``)."""
    cos = (np.trace(rot, axis1=1, axis2=2) - 1.0) / 2.0
    axis = np.stack(
        [rot[:, 2, 1] - rot[:, 1, 2], rot[:, 0, 2] - rot[:, 2, 0], rot[:, 1, 0] - rot[:, 0, 1]], -1
    )
    return np.arctan2(np.linalg.norm(axis, axis=-1) / 2.0, cos)


def _rmse(err: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(err))))


def pose_metrics(pred_c2w: Any, gt_c2w: Any) -> dict[str, float]:
    """ATE, RPE-translation and RPE-rotation of a predicted trajectory, as the official evaluation
    computes them with evo (module docstring).

    Args:
        pred_c2w: (N,4,4) predicted camera-to-world poses (any real dtype; used in float64), in the
            prediction's arbitrary frame and scale.
        gt_c2w: (N,4,4) ground-truth camera-to-world poses; frame ``i`` of both is the same image
            (the official code sets the prediction's timestamps to the ground truth's).

    Returns:
        ``{"ate", "rpe_trans", "rpe_rot", "scale"}``: ATE and RPE-translation RMSE in the ground
        truth's units (metres), RPE-rotation RMSE in degrees, and ``scale`` the Sim(3) scale
        applied to the prediction (ground-truth units per prediction unit).

    Raises:
        ValueError: naming the array and its shape when an input is not (N,4,4), is not finite,
            has a frame that is not a rigid pose, when the lengths differ or N < 2; and, as
            evo raises ``"Degenerate covariance rank"`` (sequences the official run skips), when
            the position cross-covariance has rank < 2 (e.g. all positions on one line).
    """
    pred = _check_poses("pred_c2w", pred_c2w)
    gt = _check_poses("gt_c2w", gt_c2w)
    if pred.shape != gt.shape:
        raise ValueError(
            f"pose_metrics: pred_c2w {pred.shape} and gt_c2w {gt.shape} have different lengths"
        )
    if pred.shape[0] < 2:
        raise ValueError(f"pose_metrics: need at least 2 poses, got pred_c2w {pred.shape}")

    src, dst = pred[:, :3, 3], gt[:, :3, 3]
    # evo's rank test: fewer than 2 singular values of the centred cross-covariance above eps
    cov = (dst - dst.mean(0)).T @ (src - src.mean(0)) / len(src)
    if np.count_nonzero(np.linalg.svd(cov, compute_uv=False) > np.finfo(np.float64).eps) < 2:
        raise ValueError(
            f"pose_metrics: degenerate covariance rank of the positions of pred_c2w {pred.shape} "
            "and gt_c2w: Umeyama alignment is not possible (evo raises here too)"
        )
    scale, rot, trans = umeyama(pair_moments(src, dst), with_scale=True)

    # aligned prediction: evo scales the positions, then left-multiplies by [R | t]
    al_rot = rot @ pred[:, :3, :3]
    al_pos = scale * src @ rot.T + trans
    ate = _rmse(np.linalg.norm(al_pos - dst, axis=-1))

    # relative motions i -> i+1: rotation R_iᵀ R_{i+1}, translation R_iᵀ (p_{i+1} − p_i)
    def relative(r: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rt = r[:-1].transpose(0, 2, 1)
        return rt @ r[1:], np.einsum("nij,nj->ni", rt, p[1:] - p[:-1])

    q_rot, q_pos = relative(gt[:, :3, :3], dst)
    p_rot, p_pos = relative(al_rot, al_pos)
    q_rot_t = q_rot.transpose(0, 2, 1)
    err_rot = q_rot_t @ p_rot
    err_pos = np.einsum("nij,nj->ni", q_rot_t, p_pos - q_pos)
    return {
        "ate": ate,
        "rpe_trans": _rmse(np.linalg.norm(err_pos, axis=-1)),
        "rpe_rot": _rmse(np.degrees(_rotation_angle(err_rot))),
        "scale": float(scale),
    }
