"""gtsam pose-graph pieces shared by the multi-session merge and the trajectory evaluation.

Both build the same graph: each session's keyframes chained by odometry ``BetweenFactorPose3``
factors, and every loop closure as a ``BetweenFactorPose3`` whose covariance is floored (PnP
covariances alone are overconfident) behind a robust kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gtsam
import numpy as np

from clino_vpr_ros.engine import LoopClosure

#: (x, y, z, roll, pitch, yaw) -> gtsam's tangent order (rx, ry, rz, x, y, z)
PERM = [3, 4, 5, 0, 1, 2]
#: M-estimators wrapped with ``noiseModel.Robust`` ("none": plain Gaussian)
M_ESTIMATORS = ("huber", "cauchy", "none")


def odometry_noise(sigma_t_m: float, sigma_r_deg: float) -> gtsam.noiseModel.Base:
    """Diagonal noise of one odometry step (gtsam order: rotation first)."""
    return gtsam.noiseModel.Diagonal.Sigmas(np.array([math.radians(sigma_r_deg)] * 3 + [sigma_t_m] * 3))


def add_odometry_chain(graph: gtsam.NonlinearFactorGraph, keys: Sequence[int], poses: Sequence[np.ndarray],
                       noise: gtsam.noiseModel.Base) -> None:
    """Between factors for consecutive keyframes of one session: keys (N,), poses float64 (N,4,4) odom_T_base."""
    for a, b, pa, pb in zip(keys[:-1], keys[1:], poses[:-1], poses[1:]):
        graph.add(gtsam.BetweenFactorPose3(int(a), int(b), gtsam.Pose3(np.linalg.inv(pa) @ pb), noise))


def closure_covariance(c: LoopClosure, min_sigma_t_m: float, min_sigma_r_deg: float) -> np.ndarray:
    """float64 (6,6): the closure's covariance in gtsam's tangent order, each variance floored."""
    cov = np.asarray(c.covariance, np.float64)[np.ix_(PERM, PERM)].copy()
    floor = np.array([math.radians(min_sigma_r_deg)] * 3 + [min_sigma_t_m] * 3) ** 2
    return cov + np.diag(np.maximum(np.diag(cov), floor) - np.diag(cov))


def robust(noise: gtsam.noiseModel.Base, kind: str, k: float) -> gtsam.noiseModel.Base:
    """``noise`` behind a Huber or Cauchy kernel of width ``k`` (``kind`` in :data:`M_ESTIMATORS`)."""
    if kind == "huber":
        return gtsam.noiseModel.Robust.Create(gtsam.noiseModel.mEstimator.Huber.Create(k), noise)
    if kind == "cauchy":
        return gtsam.noiseModel.Robust.Create(gtsam.noiseModel.mEstimator.Cauchy.Create(k), noise)
    if kind == "none":
        return noise
    raise ValueError(f"unknown M-estimator {kind!r}; valid: {', '.join(M_ESTIMATORS)}")
