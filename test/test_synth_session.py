"""Synthetic sessions: revisit routes, viewpoint change, inter-session overlap, drifting odometry."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from clino_vpr_ros.synth import (
    CONDITIONS, SessionConfig, generate_session, generate_town, gt_cross_session_pairs,
)

CFG = SessionConfig(n_frames=200, image_size=(60, 80))


@pytest.fixture(scope="module")
def town():
    return generate_town(951)


def _yaw(t: np.ndarray) -> np.ndarray:
    return np.arctan2(t[..., 1, 0], t[..., 0, 0])


def test_session_is_deterministic_and_well_formed(town) -> None:
    a = generate_session(town, "a", 3, CONDITIONS["day"], CFG)
    b = generate_session(town, "a", 3, CONDITIONS["day"], CFG)
    np.testing.assert_array_equal(a.world_T_base, b.world_T_base)
    np.testing.assert_array_equal(a.odom_T_base, b.odom_T_base)
    assert len(a.frames) == 200 and a.K.shape == (3, 3) and a.image_size == (60, 80)
    np.testing.assert_allclose(np.diff(a.stamps), 1.0 / CFG.rate_hz)
    steps = np.linalg.norm(np.diff(a.world_T_base[:, :2, 3], axis=0), axis=1)
    np.testing.assert_allclose(steps, CFG.speed_mps / CFG.rate_hz, rtol=0.15)
    # optical frame: z forward = base x, y down = -base z, 1.6 m above base_link
    np.testing.assert_allclose(a.base_T_camera[:3, 2], [1, 0, 0])
    np.testing.assert_allclose(a.base_T_camera[:3, 1], [0, 0, -1])
    assert a.base_T_camera[2, 3] == pytest.approx(1.6)
    out = a.render(10)
    assert out.rgb.shape == (60, 80, 3)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_session_revisits_its_places_with_viewpoint_change(town, seed: int) -> None:
    s = generate_session(town, "s", seed, CONDITIONS["day"], CFG)
    pairs = s.gt_loop_pairs(radius_m=8.0, max_yaw_deg=30.0, min_gap_s=20.0)
    assert len(pairs) > 50
    st, poses = s.stamps, s.world_T_base
    assert np.all(st[pairs[:, 0]] - st[pairs[:, 1]] >= 20.0)
    # nearest earlier visit of each revisiting frame: laterally offset by >= 2 m typically, yaw differs
    best = {}
    for q, m in pairs:
        d = np.linalg.norm(poses[q, :2, 3] - poses[m, :2, 3])
        if q not in best or d < best[q][0]:
            best[q] = (d, m)
    dists = np.array([d for d, _ in best.values()])
    assert np.median(dists) >= 2.0
    dyaw = np.array([abs((_yaw(poses[q]) - _yaw(poses[m]) + math.pi) % (2 * math.pi) - math.pi) for q, (_, m) in best.items()])
    assert np.degrees(dyaw).max() > 5.0  # heading jitter between passes


def test_two_sessions_of_a_town_overlap(town) -> None:
    for s1_seed, s2_seed in ((1, 2), (3, 4), (5, 6)):
        s1 = generate_session(town, "s1", s1_seed, CONDITIONS["day"], CFG)
        s2 = generate_session(town, "s2", s2_seed, CONDITIONS["dusk"], CFG)
        pairs = gt_cross_session_pairs(s2, s1)
        assert len(np.unique(pairs[:, 0])) >= 0.25 * len(s2.frames)


def test_odometry_drift_grows_with_distance_and_offset_is_known(town) -> None:
    offset = (4.0, -3.0, 7.0)
    s = generate_session(town, "s2", 4, CONDITIONS["dusk"], replace(CFG, odom_offset=offset))
    expected = np.linalg.inv(s.world_T_odom) @ s.world_T_base  # drift-free odometry
    np.testing.assert_allclose(s.world_T_odom[:2, 3], offset[:2])
    assert math.degrees(_yaw(s.world_T_odom)) == pytest.approx(offset[2])
    err = np.linalg.norm(s.odom_T_base[:, :2, 3] - expected[:, :2, 3], axis=1)
    assert err[0] == pytest.approx(0.0, abs=1e-9)
    assert err[-1] > err[len(err) // 4] > 0.0
    assert err[-1] > 0.5  # metres after ~280 m: visible drift a loop closure must correct


def test_session_config_validation() -> None:
    with pytest.raises(ValueError, match="route"):
        SessionConfig(route="zigzag")
    with pytest.raises(ValueError, match="n_frames"):
        generate_session(generate_town(0), "s", 1, CONDITIONS["day"], SessionConfig(n_frames=20))
