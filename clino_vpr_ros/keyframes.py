"""Keyframe selection: elapsed time, travelled distance / rotation (with odometry), descriptor novelty.

Only keyframes are indexed and used as loop-closure queries, so selection decides both the map
density and the query rate. A frame becomes a keyframe when at least ``min_interval_s`` has passed
since the last keyframe AND one of the enabled triggers fires:

* motion: travelled distance >= ``min_distance_m`` or rotation >= ``min_rotation_deg``
  (only when the frame carries an odometry pose);
* novelty: cosine similarity to the last keyframe's descriptor < ``novelty_threshold``;
* ``max_interval_s``: a forced keyframe after this long, even with no motion or novelty.

When no trigger can be evaluated (no odometry, novelty disabled, no max interval), time alone
decides. The first frame is always a keyframe.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyframeConfig:
    """Keyframe selection thresholds; set a trigger to ``None`` to disable it."""

    min_interval_s: float = 0.5
    max_interval_s: float | None = None
    min_distance_m: float | None = 1.0
    min_rotation_deg: float | None = 15.0
    novelty_threshold: float | None = 0.9

    def __post_init__(self) -> None:
        if self.min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {self.min_interval_s}")
        for name in ("max_interval_s", "min_distance_m", "min_rotation_deg"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None (disabled), got {value}")
        if self.novelty_threshold is not None and not -1.0 <= self.novelty_threshold <= 1.0:
            raise ValueError(f"novelty_threshold is a cosine similarity in [-1, 1], got {self.novelty_threshold}")


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle of a 3x3 rotation matrix in degrees."""
    cos = (float(np.trace(R)) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


class KeyframeSelector:
    """Stateful keyframe decision for one stream of frames (one session)."""

    def __init__(self, cfg: KeyframeConfig = KeyframeConfig()) -> None:
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self._last_stamp: float | None = None
        self._last_pose: np.ndarray | None = None
        self._last_descriptor: np.ndarray | None = None

    def time_gate_open(self, stamp: float) -> bool:
        """Cheap pre-check (no descriptor needed): False when the frame cannot become a keyframe."""
        return self._last_stamp is None or stamp - self._last_stamp >= self.cfg.min_interval_s

    def motion_triggered(self, odom_T_base: np.ndarray | None) -> bool | None:
        """True/False when motion thresholds can be evaluated, None otherwise."""
        cfg = self.cfg
        if odom_T_base is None or (cfg.min_distance_m is None and cfg.min_rotation_deg is None):
            return None
        if self._last_pose is None:
            return True  # the first posed frame anchors the motion reference (odometry came up late)
        delta = np.linalg.inv(self._last_pose) @ odom_T_base
        if cfg.min_distance_m is not None and np.linalg.norm(delta[:3, 3]) >= cfg.min_distance_m:
            return True
        if cfg.min_rotation_deg is not None and rotation_angle_deg(delta[:3, :3]) >= cfg.min_rotation_deg:
            return True
        return False

    def novelty_triggered(self, descriptor: np.ndarray | None) -> bool | None:
        if self.cfg.novelty_threshold is None or descriptor is None or self._last_descriptor is None:
            return None
        return float(descriptor @ self._last_descriptor) < self.cfg.novelty_threshold

    def accept(self, stamp: float, descriptor: np.ndarray | None, odom_T_base: np.ndarray | None = None) -> bool:
        """Decide whether this frame is a keyframe and, if so, remember it as the last keyframe.

        Args:
            stamp: frame time in seconds.
            descriptor: float32 (D,) L2-normalised, or None (novelty not evaluated).
            odom_T_base: float64 (4,4) base pose in the odometry frame, or None.
        """
        if self._last_stamp is None:
            return self._remember(stamp, descriptor, odom_T_base)
        if stamp < self._last_stamp:
            log.warning("frame stamp %.3f is older than the last keyframe %.3f; ignored", stamp, self._last_stamp)
            return False
        if not self.time_gate_open(stamp):
            return False
        triggers = [self.motion_triggered(odom_T_base), self.novelty_triggered(descriptor)]
        if self.cfg.max_interval_s is not None:
            triggers.append(stamp - self._last_stamp >= self.cfg.max_interval_s)
        evaluated = [t for t in triggers if t is not None]
        if evaluated and not any(evaluated):
            return False
        return self._remember(stamp, descriptor, odom_T_base)

    def _remember(self, stamp: float, descriptor: np.ndarray | None, odom_T_base: np.ndarray | None) -> bool:
        self._last_stamp = stamp
        if odom_T_base is not None:
            self._last_pose = np.array(odom_T_base, dtype=np.float64)
        if descriptor is not None:
            self._last_descriptor = np.array(descriptor, dtype=np.float32)
        return True
