"""What reaches LIO-SAM's loop_closure_detection (clino_vpr_ros/lio_sam.py): only closures it can place
and will not reject, at most one per period, the best one kept when they come faster."""

from __future__ import annotations

import numpy as np
import pytest

from clino_vpr_ros.engine import LoopClosure
from clino_vpr_ros.lio_sam import LioSamConfig, LioSamGate, rejection_reason, schedule

pytestmark = pytest.mark.runtime


def closure(t_query: float, t_match: float, session: str = "today", match_session: str = "today",
            verified: bool = True, inliers: int = 50) -> LoopClosure:
    return LoopClosure(t_query, t_match, session, match_session, int(t_query), int(t_match), 0.8, verified, inliers,
                       np.eye(4), False, np.eye(6))


def test_only_verified_intra_session_pairs_at_least_30_s_apart_are_for_lio_sam() -> None:
    assert rejection_reason(closure(100.0, 40.0)) == ""
    assert "inter-session" in rejection_reason(closure(86500.0, 40.0, match_session="yesterday"))
    assert "< 30.0 s" in rejection_reason(closure(100.0, 80.0))  # LIO-SAM's historyKeyframeSearchTimeDiff
    assert "verified" in rejection_reason(closure(100.0, 40.0, verified=False))
    assert rejection_reason(closure(100.0, 80.0), LioSamConfig(min_time_diff_s=10.0)) == ""


def test_gate_sends_at_most_one_per_period_and_keeps_the_best_waiting_one() -> None:
    gate = LioSamGate(LioSamConfig(min_period_s=1.0))
    gate.offer(closure(100.0, 10.0))
    first = gate.poll(now=0.0)
    assert first is not None and first.query_stamp == 100.0
    gate.offer(closure(100.2, 10.2, inliers=30))
    gate.offer(closure(100.4, 10.4, inliers=80))  # better: replaces the waiting one, which is counted
    gate.offer(closure(100.6, 10.6, inliers=40))
    gate.offer(closure(100.7, 40.0, match_session="yesterday"))
    assert gate.poll(now=0.5) is None and gate.pending  # LIO-SAM reads one per second: too soon
    second = gate.poll(now=1.0)
    assert second is not None and second.query_stamp == 100.4 and second.inliers == 80
    assert (gate.sent, gate.superseded, gate.refused) == (2, 2, 1) and not gate.pending


def test_offline_schedule_matches_what_the_node_would_send() -> None:
    found = [closure(100.0, 10.0), closure(100.3, 10.3, inliers=90), closure(100.5, 10.5, inliers=20),
             closure(100.6, 90.0), closure(200.0, 100.0, match_session="yesterday"), closure(300.0, 200.0)]
    sent = schedule(found, LioSamConfig(min_period_s=1.0))
    assert [(when, c.query_stamp) for when, c in sent] == [(100.0, 100.0), (101.0, 100.3), (300.0, 300.0)]
    assert all(when >= c.query_stamp for when, c in sent)
    assert np.all(np.diff([when for when, _ in sent]) >= 1.0)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        LioSamConfig(min_time_diff_s=-1.0)
