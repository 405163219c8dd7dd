"""Quaternions <-> rotation matrices, one convention for the whole package: (x, y, z, w), the ROS order.

Written against SciPy 1.8 (Ubuntu 22.04 / Humble): ``Rotation.as_quat(canonical=True)`` (SciPy 1.11+)
is not used; the sign is fixed here (w >= 0). A quaternion that is not a unit quaternion is refused
with the rule tf2 applies to every transform (``|x² + y² + z² + w² - 1| < 0.01``,
QUATERNION_NORMALIZATION_TOLERANCE in tf2's buffer_core): what tf2 would drop, we drop too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

#: largest accepted |x² + y² + z² + w² - 1| (tf2's QUATERNION_NORMALIZATION_TOLERANCE)
UNIT_QUATERNION_TOLERANCE = 0.01


def unit_quaternion_error(q: Sequence[float]) -> str | None:
    """Why (x, y, z, w) is not a usable unit quaternion, or None when it is."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        return f"quaternion {q.tolist()} must be 4 finite numbers [qx, qy, qz, qw]"
    norm2 = float(q @ q)
    if abs(norm2 - 1.0) >= UNIT_QUATERNION_TOLERANCE:
        return (f"quaternion [qx, qy, qz, qw] = {q.tolist()} is not a unit quaternion (norm {norm2 ** 0.5:.6f}); "
                f"expected |qx²+qy²+qz²+qw² - 1| < {UNIT_QUATERNION_TOLERANCE} as tf2 requires")
    return None


def quaternion_to_matrix(q: Sequence[float]) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> float64 (3, 3) rotation; ValueError unless (nearly) unit.

    The small remaining deviation (rounding in a message) is normalised away.
    """
    error = unit_quaternion_error(q)
    if error:
        raise ValueError(error)
    return Rotation.from_quat(np.asarray(q, dtype=np.float64)).as_matrix()


def matrix_to_quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    """float (3, 3) rotation -> unit quaternion (x, y, z, w) with w >= 0 (q and -q are one rotation)."""
    q = Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()
    if q[3] < 0:
        q = -q
    return tuple(float(v) for v in q)
