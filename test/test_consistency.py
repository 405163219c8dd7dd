"""The consistency gate: a revisit's closures are published once two agree; a closure that the
odometry and its revisit's other closures contradict is never published."""

from __future__ import annotations

import numpy as np
from _engine_scene import base_pose as _pose

from clino_vpr_ros.consistency import ConsistencyConfig, ConsistencyGate, disagreement
from clino_vpr_ros.engine import LoopClosure

ON = ConsistencyConfig(enabled=True, window=10, max_rotation_deg=6.0, max_translation_m=2.0)


# session 2's odometry frame in session 1's: a revisit seen from another origin and heading
ODOM1_T_ODOM2 = _pose(40.0, -7.0, 70.0)


def _closure(k: int, metric: bool = True, yaw_error_deg: float = 0.0, shift_m: float = 0.0,
             poses: bool = True, aliased_m: float = 0.0, heading_deg: float = 8.0) -> LoopClosure:
    """Closure of live keyframe k (driving along x in session 2's frame, every 2 m) with the session-1
    keyframe 1.5 m beside it, exact unless given an error; ``aliased_m``: the match is in fact a
    keyframe that far down the road that looks the same (the verified pose is the near one's);
    ``heading_deg``: the true heading difference of the two views."""
    q = _pose(2.0 * k, 0.0, 5.0)
    m = ODOM1_T_ODOM2 @ q @ _pose(0.5, 1.5, heading_deg)  # the map keyframe, in session 1's frame
    T = np.linalg.inv(ODOM1_T_ODOM2 @ q) @ m @ _pose(shift_m, 0.0, yaw_error_deg)
    if not metric:
        T[:3, 3] /= np.linalg.norm(T[:3, 3])
    m = m @ _pose(aliased_m, 0.0, 0.0)
    return LoopClosure(float(k), 100.0 + k, "s2", "s1", k, 100 + k, 0.6, True, 40, T, metric, np.eye(6),
                       q if poses else None, m if poses else None)


def _run(gate: ConsistencyGate, closures: list[tuple[int, LoopClosure]]) -> list[list[float]]:
    """What is published after each keyframe: query stamps."""
    return [[c.query_stamp for c in gate.submit("s1", row, [(row, c)])] for row, c in closures]


def test_right_closures_agree_and_a_wrong_rotation_does_not() -> None:
    a, b = _closure(3), _closure(7, metric=False)
    d = disagreement(a, b)
    assert d.rotation_deg < 1e-6 and np.isnan(d.translation_m)  # odometry predicts b exactly; b has no metric translation
    assert abs(d.distance_m - np.hypot(0.5, 1.5)) < 1e-6 and abs(d.predicted_rotation_deg - 8.0) < 1e-6  # where b's match is
    d = disagreement(a, _closure(7))
    assert d.rotation_deg < 1e-6 and d.translation_m < 1e-6
    assert disagreement(a, _closure(7, metric=False, aliased_m=23.0)).distance_m > 20.0
    assert disagreement(a, _closure(7, yaw_error_deg=20.0)).rotation_deg > 19.0
    assert disagreement(a, _closure(7, shift_m=5.0)).translation_m > 4.9


def test_the_first_closure_waits_for_a_second_that_agrees_then_both_are_published() -> None:
    out = _run(ConsistencyGate(ON), [(k, _closure(k)) for k in (10, 11, 12)])
    assert out == [[], [10.0, 11.0], [12.0]]


def test_a_wrong_closure_inside_a_revisit_is_dropped() -> None:
    gate = ConsistencyGate(ON)
    out = _run(gate, [(10, _closure(10)), (11, _closure(11)), (12, _closure(12, yaw_error_deg=20.0)),
                      (13, _closure(13, metric=False)), (14, _closure(14, shift_m=6.0)), (15, _closure(15)),
                      (16, _closure(16, metric=False, aliased_m=23.0)), (17, _closure(17, metric=False, yaw_error_deg=10.0)),
                      (18, _closure(18, metric=False, heading_deg=36.0, yaw_error_deg=-16.0))])
    # 12: rotation off; 14: metric translation off; 16: a look-alike block 23 m on, direction only;
    # 17: a direction-only closure is allowed the essential matrix's noisier rotation; 18: the right
    # place seen 36 deg apart, beyond a revisit, whose essential matrix said 20 deg
    assert out == [[], [10.0, 11.0], [], [13.0], [], [15.0], [], [17.0], []]
    assert gate.dropped == 4


def test_a_wrong_first_closure_is_never_published() -> None:
    """A turn whose essential matrix picked a wrong rotation opens the revisit: the right closures
    after it confirm each other and the wrong one stays held back until it expires."""
    gate = ConsistencyGate(ON)
    out = _run(gate, [(20, _closure(20, metric=False, yaw_error_deg=35.0)), (21, _closure(21)), (22, _closure(22)),
                      (23, _closure(23))] + [(k, _closure(k)) for k in range(24, 40)])
    published = [s for step in out for s in step]
    assert 20.0 not in published
    assert published == [float(k) for k in range(21, 40)]


def test_an_isolated_closure_expires_unpublished_and_a_later_revisit_starts_afresh() -> None:
    gate = ConsistencyGate(ON)
    out = _run(gate, [(5, _closure(5)), (40, _closure(40)), (41, _closure(41, yaw_error_deg=3.0))])
    assert out == [[], [], [40.0, 41.0]]


def test_off_or_without_odometry_every_closure_is_published_at_once() -> None:
    closures = [(k, _closure(k, yaw_error_deg=30.0 * (k % 2))) for k in range(5)]
    assert _run(ConsistencyGate(ConsistencyConfig()), closures) == [[float(k)] for k in range(5)]
    no_odom = [(k, _closure(k, yaw_error_deg=30.0 * (k % 2), poses=False)) for k in range(5)]
    assert _run(ConsistencyGate(ON), no_odom) == [[float(k)] for k in range(5)]


def test_maps_are_kept_apart() -> None:
    gate = ConsistencyGate(ON)
    assert gate.submit("s1", 3, [(3, _closure(3))]) == []
    assert gate.submit("other", 4, [(4, _closure(4))]) == []  # another map's closure confirms nothing of s1
    assert [c.query_stamp for c in gate.submit("s1", 5, [(5, _closure(5))])] == [3.0, 5.0]
