"""Multi-session merge: two sessions of one town with a known offset between their odometry frames."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from clino_vpr_ros.engine import LoopClosure, camera_to_base
from clino_vpr_ros.merge import MergeConfig, load_closures, main, merge_sessions, save_closures
from clino_vpr_ros.session_map import SessionMap, SessionMapBuilder
from clino_vpr_ros.synth import CONDITIONS, SessionConfig, generate_session, generate_town, gt_cross_session_pairs
from clino_vpr_ros.verify import VerifyConfig, extract_features, to_gray, verify_pair

pytestmark = pytest.mark.runtime  # also run on the Humble-pinned versions (scripts/test_humble.sh)

STEP = 3  # every 3rd frame is a keyframe
OFFSET = (6.0, -4.0, 25.0)  # session B's odometry frame in the world (A's odometry frame is the world)


def _keyframe_map(s, cfg: VerifyConfig) -> tuple[SessionMap, dict]:
    b = SessionMapBuilder(s.session_id, "fp", 8, base_T_camera=s.base_T_camera, feature=cfg.feature)
    feats = {}
    for i in range(0, len(s.frames), STEP):
        out = s.render(i)
        feats[i] = extract_features(to_gray(out.rgb), cfg, out.depth)
        b.append(i, s.frames[i].stamp, np.full(8, 8**-0.5, np.float32), s.frames[i].odom_T_base, s.K, feats[i])
    return b.snapshot(), feats


@pytest.fixture(scope="module")
def two_sessions():
    town = generate_town(1002)
    exact_odom = dict(odom_scale_error=0.0, odom_yaw_bias_deg_per_m=0.0, odom_trans_noise=0.0, odom_yaw_noise_deg=0.0,
                      image_size=(240, 320), n_frames=170)
    sa = generate_session(town, "A", 7, CONDITIONS["day"], SessionConfig(**exact_odom))
    sb = generate_session(town, "B", 8, CONDITIONS["day"], SessionConfig(**exact_odom, odom_offset=OFFSET, start_time_s=86400.0))
    cfg = VerifyConfig()
    (ma, fa), (mb, fb) = _keyframe_map(sa, cfg), _keyframe_map(sb, cfg)
    nearest: dict[int, tuple[int, float]] = {}
    for q, m in gt_cross_session_pairs(sb, sa, radius_m=3.0, max_yaw_deg=20.0):
        if q in fb and m in fa:
            d = float(np.linalg.norm(sb.world_T_base[q][:2, 3] - sa.world_T_base[m][:2, 3]))
            if q not in nearest or d < nearest[q][1]:
                nearest[q] = (m, d)
    closures = []
    for q, (m, _) in sorted(nearest.items()):
        v = verify_pair(fb[q], sb.K, fa[m], sa.K, cfg)
        if v.accepted:
            T, cov = camera_to_base(v, sb.base_T_camera, sa.base_T_camera)
            closures.append(LoopClosure(sb.frames[q].stamp, sa.frames[m].stamp, "B", "A", q, m, 0.9, True, v.inliers, T,
                                        v.metric, cov, sb.frames[q].odom_T_base, sa.frames[m].odom_T_base))
    truth = np.linalg.inv(sa.world_T_odom) @ sb.world_T_odom  # A's odometry frame from B's
    return ma, mb, closures, truth


def _with_wrong(closures: list[LoopClosure], n_frames: int = 170) -> tuple[list[LoopClosure], int]:
    """Add wrong closures (a true measurement attached to a keyframe 30 frames away): 20 % of the total."""
    n_wrong = len(closures) // 4
    picks = closures[:: max(1, len(closures) // n_wrong)][:n_wrong]
    wrong = [dataclasses.replace(c, match_id=int((c.match_id + 10 * STEP) % (n_frames - n_frames % STEP))) for c in picks]
    return closures + wrong, n_wrong


def _errors(T: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    cos = (np.trace(T[:3, :3].T @ truth[:3, :3]) - 1) / 2
    return float(np.linalg.norm(T[:3, 3] - truth[:3, 3])), math.degrees(math.acos(min(1.0, max(-1.0, cos))))


@pytest.mark.parametrize("robust", ["gnc", "cauchy"])
def test_merge_recovers_the_offset_despite_20_percent_wrong_closures(two_sessions, robust: str) -> None:
    ma, mb, closures, truth = two_sessions
    assert len(closures) >= 12, f"only {len(closures)} verified inter-session closures"
    fed, n_wrong = _with_wrong(closures)
    assert n_wrong / len(fed) == pytest.approx(0.2, abs=0.03)
    result = merge_sessions([ma, mb], fed, MergeConfig(robust=robust))
    t_err, r_err = _errors(result.session_T["B"], truth)
    print(f"\n[merge {robust}] {len(closures)} true + {n_wrong} wrong closures: offset error {t_err:.3f} m "
          f"{r_err:.3f} deg, true kept {int(result.inliers[: len(closures)].sum())}, wrong kept "
          f"{int(result.inliers[len(closures):].sum())}")
    assert t_err < 0.5 and r_err < 2.0, (t_err, r_err)
    np.testing.assert_allclose(result.session_T["A"], np.eye(4), atol=0.2)
    assert not result.inliers[len(closures):].any(), "a wrong closure was kept"
    assert result.inliers[: len(closures)].mean() > 0.8
    assert len(result.residuals) == len(fed)


def test_merge_cli_writes_map_report_and_plot(two_sessions, tmp_path) -> None:
    ma, mb, closures, truth = two_sessions
    fed, _ = _with_wrong(closures)
    pa, pb = ma.save(tmp_path / "a.npz"), mb.save(tmp_path / "b.npz")
    save_closures(tmp_path / "closures.json", fed)
    assert len(load_closures(tmp_path / "closures.json")) == len(fed)
    assert main([str(pa), str(pb), "--closures", str(tmp_path / "closures.json"), "--out", str(tmp_path / "merged.npz")]) == 0
    merged = SessionMap.load(tmp_path / "merged.npz", expected_fingerprint="fp")
    assert len(merged) == len(ma) + len(mb) and set(merged.session_ids) == {"A", "B"}
    report = json.loads((tmp_path / "merged.report.json").read_text())
    assert report["closures_used"] == len(fed) and report["inliers"] <= len(closures)
    assert _errors(np.array(report["session_T"]["B"]), truth)[0] < 0.5
    assert (tmp_path / "merged.png").stat().st_size > 10_000
    # the merged map is never replaced by accident, and an input map never even with --overwrite
    merged_bytes, a_bytes = (tmp_path / "merged.npz").read_bytes(), pa.read_bytes()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        main([str(pa), str(pb), "--closures", str(tmp_path / "closures.json"), "--out", str(tmp_path / "merged.npz")])
    with pytest.raises(ValueError, match="also a map this run reads"):
        main([str(pa), str(pb), "--closures", str(tmp_path / "closures.json"), "--out", str(pa), "--overwrite"])
    assert (tmp_path / "merged.npz").read_bytes() == merged_bytes and pa.read_bytes() == a_bytes
    # every keyframe of B now sits where A's frame says it is: compare with B's odometry mapped by the truth
    rows_b = merged.rows_of_session("B")
    for r in rows_b[:: max(1, len(rows_b) // 5)]:
        expected = truth @ mb.pose(int(np.flatnonzero(mb.ids == merged.ids[r])[0]))
        assert np.linalg.norm(merged.pose(int(r))[:3, 3] - expected[:3, 3]) < 0.5


def test_a_session_that_cannot_be_merged_is_an_error_with_the_reason_not_a_silent_drop(two_sessions) -> None:
    ma, mb, closures, _ = two_sessions
    unscaled = [dataclasses.replace(c, metric=False) for c in closures]  # RGB-only, nothing triangulated
    with pytest.raises(ValueError, match=r"session 'B'.*no metric translation.*--allow-unconnected"):
        merge_sessions([ma, mb], unscaled)
    with pytest.raises(ValueError, match=r"session 'B': no closure joins it"):
        merge_sessions([ma, mb], [])
    result = merge_sessions([ma, mb], unscaled, MergeConfig(allow_unconnected=True))
    assert result.unconnected_sessions == ["B"] and list(result.session_T) == ["A"]
