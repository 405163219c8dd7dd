"""Geometric consistency between loop closures: a closure is published once a metric closure of its
revisit agrees with it.

One verified image pair can be wrong in a way no single-pair test sees: an aliased block whose
features match, or a turn where the essential matrix picks a wrong rotation. Two closures of the
same revisit, though, are tied together by odometry: from closure *a* (query keyframe ``qa``, map
keyframe ``ma``) and the odometry of both sessions, the pose of map keyframe ``mb`` in query
keyframe ``qb`` is predicted as ``inv(Q_b) Q_a T_a inv(M_a) M_b``, and closure *b*'s verified pose
must agree with it. Over the few metres between neighbouring keyframes the odometry's drift is small:
on validation towns 961/962 right metric closures predict each other within about 1 deg and 0.5 m.
A closure with a direction only (essential matrix) is checked against a metric one only: its
rotation is the noisy one (5-18 deg off for right closures there), so it is also held to where the
metric closure puts its match keyframe (distance, heading).

:class:`ConsistencyGate` holds a closure back until it and another closure of the same map within
``window`` query keyframes, one of them metric, agree (the first closures of a revisit are then
published together, one or a few keyframes late, as back-filling does anyway); every later closure
of that revisit is published when it agrees with the nearest published metric closure and dropped
when it does not. Closures without odometry poses cannot be predicted and pass unchecked. Nothing
here imports ROS.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from clino_vpr_ros.keyframes import rotation_angle_deg


class _Closure(Protocol):
    """What the gate reads of a loop closure (:class:`clino_vpr_ros.engine.LoopClosure`)."""

    T_query_match: np.ndarray
    metric: bool
    query_pose: np.ndarray | None
    match_pose: np.ndarray | None


@dataclass(frozen=True)
class ConsistencyConfig:
    """enabled: off publishes every verified closure at once (the former behaviour).
    window: two closures of one map count as the same revisit when their query keyframes are at most
    this many keyframes apart. Two metric closures agree when the rotation between one's verified
    pose and the one predicted from the other is at most ``max_rotation_deg`` and the translation
    at most ``max_translation_m``; a closure with a direction only (RGB, nothing triangulated)
    agrees with a metric one within ``max_rotation_direction_deg`` (its essential-matrix rotation is
    the noisier one: 5-18 deg off for right closures on validation towns) and when the metric one
    and odometry put its match keyframe at most ``max_distance_m`` from it (its own translation has
    no length to compare; a revisit is within 8 m), and when the heading difference they predict for
    it is at most ``max_heading_deg`` (the ``default`` preset's limit on a verified rotation, applied
    to the better estimate: an essential matrix's rotation can be 15 deg off, so a view of the right
    place from 36 deg passes its own check). Chosen on validation towns 961/962 (docs/loop_closure.md)."""

    enabled: bool = False
    window: int = 10
    max_rotation_deg: float = 5.0
    max_translation_m: float = 2.0
    max_rotation_direction_deg: float = 20.0
    max_distance_m: float = 8.0
    max_heading_deg: float = 25.0

    def __post_init__(self) -> None:
        if self.window < 1 or min(self.max_rotation_deg, self.max_translation_m, self.max_rotation_direction_deg,
                                  self.max_distance_m, self.max_heading_deg) <= 0:
            raise ValueError("consistency: need window >= 1 and positive rotation/translation limits")


def predicted_pose(a: _Closure, query_pose: np.ndarray, match_pose: np.ndarray) -> np.ndarray:
    """float64 (4,4): the pose of the map keyframe at ``match_pose`` in the query keyframe at
    ``query_pose`` (both (4,4) in their own session's odometry frame), predicted from closure ``a``
    and odometry. ``a`` must carry both poses."""
    return np.linalg.inv(query_pose) @ a.query_pose @ a.T_query_match @ np.linalg.inv(a.match_pose) @ match_pose


class Disagreement(NamedTuple):
    """Closure b against the pose predicted from closure a (:func:`disagreement`): rotation_deg between
    them; translation_m, their translation difference (NaN unless both are metric); distance_m, the
    length of the predicted translation and predicted_rotation_deg, the angle of the predicted
    rotation (both NaN unless a is metric). All NaN when a pose is missing."""

    rotation_deg: float
    translation_m: float
    distance_m: float
    predicted_rotation_deg: float


def disagreement(a: _Closure, b: _Closure) -> Disagreement:
    """Closure ``b``'s verified pose against the one predicted from closure ``a`` and odometry."""
    nan = float("nan")
    if any(p is None for p in (a.query_pose, a.match_pose, b.query_pose, b.match_pose)):
        return Disagreement(nan, nan, nan, nan)
    T = predicted_pose(a, b.query_pose, b.match_pose)
    return Disagreement(
        rotation_angle_deg(T[:3, :3].T @ b.T_query_match[:3, :3]),
        float(np.linalg.norm(T[:3, 3] - b.T_query_match[:3, 3])) if a.metric and b.metric else nan,
        float(np.linalg.norm(T[:3, 3])) if a.metric else nan,
        rotation_angle_deg(T[:3, :3]) if a.metric else nan)


@dataclass
class _Revisit:
    """The closures of one map held back (pending) or published (confirmed), with their query rows."""

    pending: list[tuple[int, _Closure]] = field(default_factory=list)
    confirmed: list[tuple[int, _Closure]] = field(default_factory=list)


class ConsistencyGate:
    """Holds verified closures until another closure of the same revisit agrees (module docstring).

    Keys name a map (the engine uses its source and match session); ``row`` is the query keyframe's
    row in the live session (closures of one call may be for earlier rows: back-filling)."""

    def __init__(self, cfg: ConsistencyConfig) -> None:
        self.cfg = cfg
        self._maps: dict[Hashable, _Revisit] = {}
        self.dropped = 0  # closures that disagreed with their revisit

    def agrees(self, a: _Closure, b: _Closure) -> bool:
        """Whether closures ``a`` and ``b`` (at least one metric) agree (see :class:`ConsistencyConfig`)."""
        metric, other = (a, b) if a.metric else (b, a)
        d = disagreement(metric, other)
        if other.metric:
            return d.rotation_deg <= self.cfg.max_rotation_deg and d.translation_m <= self.cfg.max_translation_m
        return (d.rotation_deg <= self.cfg.max_rotation_direction_deg and d.distance_m <= self.cfg.max_distance_m
                and d.predicted_rotation_deg <= self.cfg.max_heading_deg)

    def submit(self, key: Hashable, current_row: int, closures: Sequence[tuple[int, _Closure]]) -> list[_Closure]:
        """The closures to publish now: of ``closures`` ((row, closure), verified, of map ``key``) and
        of those held back earlier; ``current_row`` is the newest live keyframe's row (older held-back
        closures expire).

        A closure is published once it agrees with a metric closure of its revisit: the nearest
        metric one already published, or, while there is none, one held back (two closures with a
        direction only never confirm each other: their rotations are too noisy)."""
        if not self.cfg.enabled:
            return [c for _, c in closures]
        rev = self._maps.setdefault(key, _Revisit())
        near = lambda r, items: [(q, c) for q, c in items if abs(q - r) <= self.cfg.window]  # noqa: E731
        rev.pending = near(current_row, rev.pending)
        rev.confirmed = near(current_row, [(q, c) for q, c in rev.confirmed if c.metric])[-self.cfg.window:]
        out: list[_Closure] = []
        for row, c in closures:
            if c.query_pose is None or c.match_pose is None:
                out.append(c)  # no odometry to predict from: nothing to check
                continue
            refs = near(row, rev.confirmed)
            if refs:  # the revisit is established: agree with its nearest metric closure or go
                if self.agrees(min(refs, key=lambda rc: abs(rc[0] - row))[1], c):
                    rev.confirmed += [(row, c)] if c.metric else []
                    out.append(c)
                else:
                    self.dropped += 1
                continue
            partners = [(q, p) for q, p in near(row, rev.pending) if (p.metric or c.metric) and self.agrees(p, c)]
            if not partners:
                rev.pending.append((row, c))
                continue
            taken = {id(p) for _, p in partners}
            rev.pending = [(q, p) for q, p in rev.pending if id(p) not in taken]
            rev.confirmed += [(q, p) for q, p in partners + [(row, c)] if p.metric]
            out += [p for _, p in partners] + [c]  # published together, the held-back ones first
        return out

    def reset(self) -> None:
        self._maps.clear()
        self.dropped = 0
