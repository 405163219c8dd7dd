"""Metric relative pose without depth: triangulate the match keyframe from its neighbours, then PnP.

A plain camera gives a loop closure's translation only up to scale, but the robot's odometry is
metric. The match keyframe's local features are matched with those of its neighbouring keyframes
in the same session (whose poses relative to it come from odometry) and triangulated
(``cv2.triangulatePoints``) in the match camera frame; points with too little parallax, behind a
camera or with a large reprojection error are dropped, and each keypoint keeps the median depth
over its neighbours. The match's features then carry depths like a depth camera would give them,
and :func:`~clino_vpr_ros.verify.verify_pair` solves PnP for the query against those 3-D points:
a metric 6-DoF pose with the reprojection-Jacobian covariance. Depth from a sensor, when given,
stays the preferred source (it is used as is; nothing is triangulated).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from clino_vpr_ros.verify import LocalFeatures, VerifyConfig, ratio_matches


#: a neighbour sharing fewer ratio-test pairs with the match keyframe is not a second view of it
MIN_OVERLAP = 8


@dataclass(frozen=True)
class TriangulationConfig:
    """Defaults chosen on validation towns 961/962 (median translation error 0.13-0.22 m, 3 of 37 metric
    closures off by more than 1 m; with 1 deg parallax and 2 neighbours 8 of 39).

    neighbours: keyframes on each side of the match used as second views; min_parallax_deg:
    the angle between the two viewing rays of a point; max_reprojection_px: in both views;
    min_depth_m/max_depth_m: kept depth range; min_points: fewer triangulated points -> no depth;
    max_direction_disagreement_deg: the engine keeps a triangulated PnP pose only when its translation
    points within this of the plain essential matrix's (and the rotations agree within 5 deg)."""

    enabled: bool = True
    neighbours: int = 3
    min_parallax_deg: float = 3.0
    max_reprojection_px: float = 1.5
    min_depth_m: float = 0.3
    max_depth_m: float = 60.0
    min_points: int = 20
    max_direction_disagreement_deg: float = 20.0

    def __post_init__(self) -> None:
        if self.neighbours < 1 or self.min_points < 1 or self.max_reprojection_px <= 0:
            raise ValueError("neighbours and min_points must be >= 1, max_reprojection_px > 0")


@dataclass(frozen=True)
class Neighbour:
    """A second view of the match keyframe: its features, intrinsics (3,3) and ``mcam_T_ncam``
    float64 (4,4), the neighbour camera's pose in the match camera frame (from odometry)."""

    features: LocalFeatures
    K: np.ndarray
    mcam_T_ncam: np.ndarray


def camera_motion(odom_T_base_a: np.ndarray, odom_T_base_b: np.ndarray, base_T_camera: np.ndarray | None) -> np.ndarray:
    """acam_T_bcam (4,4): camera b's pose in camera a's frame from two odometry poses of one session."""
    bTc = np.eye(4) if base_T_camera is None else np.asarray(base_T_camera, np.float64)
    return np.linalg.inv(bTc) @ np.linalg.inv(odom_T_base_a) @ odom_T_base_b @ bTc


def _project(X: np.ndarray, T: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N,2) and depths (N,) of points X (N,3) given in a frame whose pose in the camera is T."""
    Xc = X @ T[:3, :3].T + T[:3, 3]
    z = Xc[:, 2]
    uv = (Xc[:, :2] / np.where(np.abs(z) < 1e-9, 1e-9, z)[:, None]) @ K[:2, :2].T + K[:2, 2]
    return uv, z


def triangulate_pair(match: LocalFeatures, K_match: np.ndarray, n: Neighbour, vcfg: VerifyConfig,
                     cfg: TriangulationConfig, rows: np.ndarray | None = None) -> np.ndarray:
    """float32 (N,) depth of each match keypoint seen again by the neighbour, NaN elsewhere.

    rows: int (R,) the match keypoints to triangulate (all when None); the others stay NaN. A
    keypoint gets the depth it gets when all are triangulated.
    """
    depths = np.full(len(match), np.nan, np.float32)
    if np.linalg.norm(n.mcam_T_ncam[:3, 3]) < 1e-3:  # no baseline, nothing to triangulate
        return depths
    pairs = ratio_matches(match, n.features, vcfg, rows)
    overlap = len(pairs)
    if rows is not None and overlap < MIN_OVERLAP:  # the rule counts all the match's pairs: the rest decide
        overlap += len(ratio_matches(match, n.features, vcfg, np.setdiff1d(np.arange(len(match)), rows)))
    if overlap < MIN_OVERLAP or len(pairs) == 0:
        return depths
    ncam_T_mcam = np.linalg.inv(n.mcam_T_ncam)
    xm = cv2.undistortPoints(match.keypoints[pairs[:, 0]].reshape(-1, 1, 2).astype(np.float64), K_match, None).reshape(-1, 2)
    xn = cv2.undistortPoints(n.features.keypoints[pairs[:, 1]].reshape(-1, 1, 2).astype(np.float64), n.K, None).reshape(-1, 2)
    Xh = cv2.triangulatePoints(np.eye(4)[:3], ncam_T_mcam[:3], xm.T, xn.T)
    X = (Xh[:3] / np.where(np.abs(Xh[3]) < 1e-12, 1e-12, Xh[3])).T  # (M,3) in the match camera frame
    uv_m, z_m = _project(X, np.eye(4), K_match)
    uv_n, z_n = _project(X, ncam_T_mcam, n.K)
    err = np.maximum(np.linalg.norm(uv_m - match.keypoints[pairs[:, 0]], axis=1),
                     np.linalg.norm(uv_n - n.features.keypoints[pairs[:, 1]], axis=1))
    centre_n = n.mcam_T_ncam[:3, 3]
    ray_m, ray_n = X, X - centre_n
    cos = np.sum(ray_m * ray_n, axis=1) / np.maximum(np.linalg.norm(ray_m, axis=1) * np.linalg.norm(ray_n, axis=1), 1e-12)
    parallax = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    ok = ((z_m > cfg.min_depth_m) & (z_m < cfg.max_depth_m) & (z_n > cfg.min_depth_m)
          & (err < cfg.max_reprojection_px) & (parallax >= cfg.min_parallax_deg))
    depths[pairs[ok, 0]] = z_m[ok]
    return depths


def with_triangulated_depths(match: LocalFeatures, K_match: np.ndarray, neighbours: Sequence[Neighbour],
                             vcfg: VerifyConfig, cfg: TriangulationConfig, rows: np.ndarray | None = None
                             ) -> LocalFeatures | None:
    """The match features with depths from triangulation (median over neighbours), or None when
    fewer than ``cfg.min_points`` keypoints got one.

    rows: int (R,) the match keypoints that need a depth (all when None). PnP only uses the match
    keypoints paired with the query, so the engine passes those: a keypoint's depth does not depend
    on which others are triangulated, and matching a few hundred keypoints with each neighbour
    instead of all of them saves most of the pose stage's cost.
    """
    if not neighbours:
        return None
    stack = np.stack([triangulate_pair(match, K_match, n, vcfg, cfg, rows) for n in neighbours])
    seen = np.isfinite(stack).any(0)
    depths = np.full(len(match), np.nan)
    depths[seen] = np.nanmedian(stack[:, seen], axis=0)
    if int(np.isfinite(depths).sum()) < cfg.min_points:
        return None
    return replace(match, depths=depths.astype(np.float32))

