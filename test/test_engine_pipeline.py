"""End to end: ONNX encoder + engine on held-out synthetic sequences with ground truth.

Uses the shipped ``models/clino-vpr-tiny.onnx``, as a robot would.

A published closure is correct when what a back end would use agrees with ground truth: for a
metric closure the relative pose (translation error < 1 m, rotation error < 5 deg; two views of
the same facade from 13 m apart are a correct closure), otherwise the two keyframes lie within
8 m and 30 deg of each other.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from clino_vpr_ros.engine import EngineConfig, LoopClosure
from clino_vpr_ros.merge import load_closures
from clino_vpr_ros.merge import main as merge_main
from clino_vpr_ros.pipeline import LoopClosurePipeline
from clino_vpr_ros.session_map import SessionMap, SessionMapBuilder
from clino_vpr_ros.synth import CONDITIONS, SessionConfig, TownConfig, generate_session, generate_town

pytestmark = pytest.mark.runtime  # also run on the Humble-pinned versions (scripts/test_humble.sh)

log = logging.getLogger(__name__)
HELD_OUT_TOWN = 9001  # not a training town
TRUE_RADIUS_M = 8.0  # a closure is true when the two keyframes are this close (and face alike)
TRUE_YAW_DEG = 30.0


@pytest.fixture(scope="module")
def model_path(shipped_model: Path) -> Path:
    return shipped_model


def _run(pipe: LoopClosurePipeline, s) -> tuple[dict[int, int], list[LoopClosure]]:
    """Feed a session; returns keyframe id -> frame index and the published closures."""
    kf_frame, closures = {}, []
    for i, f in enumerate(s.frames):
        if not pipe.engine.wants_frame(f.stamp):  # skip rendering frames the pipeline would not encode
            continue
        out = s.render(i)
        r = pipe.process(f.stamp, out.rgb, "rgb8", s.K, f.odom_T_base, out.depth)
        if r.frame_result.is_keyframe:
            kf_frame[r.frame_result.keyframe_id] = i
        closures += r.frame_result.closures
    return kf_frame, closures


def _angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def _is_correct(c: LoopClosure, wq: np.ndarray, wm: np.ndarray) -> bool:
    """wq, wm: ground-truth world poses of the query and match keyframes."""
    if c.metric:
        truth = np.linalg.inv(wq) @ wm
        return bool(np.linalg.norm(c.T_query_match[:3, 3] - truth[:3, 3]) < 1.0
                    and _angle_deg(c.T_query_match[:3, :3].T @ truth[:3, :3]) < 5.0)
    return bool(np.linalg.norm(wq[:2, 3] - wm[:2, 3]) <= TRUE_RADIUS_M and _angle_deg(wq[:3, :3].T @ wm[:3, :3]) <= TRUE_YAW_DEG)


@pytest.fixture(scope="module")
def town_sessions():
    town = generate_town(HELD_OUT_TOWN)
    cfg = SessionConfig(image_size=(240, 320), n_frames=240)
    s0 = generate_session(town, "s0", 21, CONDITIONS["day"], cfg)
    s1 = generate_session(town, "s1", 22, CONDITIONS["morning"], SessionConfig(image_size=(240, 320), n_frames=240,
                                                                             odom_offset=(3.0, 2.0, 10.0), start_time_s=3600.0))
    return s0, s1


def test_no_false_closure_and_inter_session_closures_carry_both_ids(model_path: Path, town_sessions, tmp_path: Path,
                                                                     record_property) -> None:
    s0, s1 = town_sessions
    pipe0 = LoopClosurePipeline.from_files(model_path, EngineConfig(), "s0", base_T_camera=s0.base_T_camera)
    kf0, closures0 = _run(pipe0, s0)
    map0 = pipe0.engine.save_map(tmp_path / "s0.npz")

    pipe1 = LoopClosurePipeline.from_files(model_path, EngineConfig(), "s1", prior_maps=[map0], base_T_camera=s1.base_T_camera)
    kf1, closures1 = _run(pipe1, s1)
    frames = {"s0": (s0, kf0), "s1": (s1, kf1)}

    false = []
    for c in closures0 + closures1:
        assert c.verified and c.inliers >= EngineConfig().verify.min_inliers
        sq, kq = frames[c.query_session]
        sm, km = frames[c.match_session]
        if not _is_correct(c, sq.world_T_base[kq[c.query_id]], sm.world_T_base[km[c.match_id]]):
            false.append(c)
    total = len(closures0) + len(closures1)
    inter = [c for c in closures1 if c.inter_session]
    assert all(c.query_session == "s1" and c.match_session == "s0" for c in inter)
    # recall at keyframe level: keyframes with a true revisit available that got a closure
    revisits = s0.gt_loop_pairs(radius_m=TRUE_RADIUS_M, max_yaw_deg=TRUE_YAW_DEG)
    kf_with_gt = {k for k, i in kf0.items() if i in set(revisits[:, 0])}
    recall = len({c.query_id for c in closures0}) / max(1, len(kf_with_gt))
    record_property("closures", total)
    record_property("inter_session", len(inter))
    record_property("intra_session_keyframe_recall", round(recall, 3))
    log.info("model %s: %d closures (%d inter-session), 0 false expected, keyframe recall %.3f",
             model_path.name, total, len(inter), recall)
    print(f"\n[engine e2e] model={model_path.name} closures={total} inter={len(inter)} false={len(false)} "
          f"intra-session keyframe recall={recall:.3f} stats0={pipe0.engine.stats()} stats1={pipe1.engine.stats()}")
    assert not false, f"{len(false)} false closures of {total}"
    assert total >= 1 and inter, "the engine found no loop closure at all"
    for c in inter:
        assert c.query_pose is not None and c.match_pose is not None

    # offline: the two saved maps alone (no images) are enough to find closures and merge the sessions;
    # detected with the engine settings of the live runs above (EngineConfig() is the single_frame preset)
    map1 = pipe1.engine.save_map(tmp_path / "s1.npz")
    assert merge_main([str(map0), str(map1), "--out", str(tmp_path / "merged.npz"), "--engine-preset", "single_frame",
                       "--save-closures", str(tmp_path / "found.json")]) == 0
    found = [c for c in load_closures(tmp_path / "found.json") if c.inter_session]
    assert found and all(
        _is_correct(c, s1.world_T_base[kf1[c.query_id]], s0.world_T_base[kf0[c.match_id]]) for c in found)
    report = json.loads((tmp_path / "merged.report.json").read_text())
    T = np.array(report["session_T"]["s1"])
    truth = np.linalg.inv(s0.world_T_odom) @ s1.world_T_odom  # drifting odometry: only roughly rigid
    print(f"[engine e2e] offline merge: {len(found)} inter-session closures, offset error "
          f"{np.linalg.norm(T[:2, 3] - truth[:2, 3]):.2f} m")
    assert np.linalg.norm(T[:2, 3] - truth[:2, 3]) < 3.0


def test_no_false_closure_in_a_town_where_every_block_has_a_twin(model_path: Path, record_property) -> None:
    """Perceptual aliasing: every block's facade style is shared with another block, fog on top."""
    town = generate_town(HELD_OUT_TOWN + 1, TownConfig(aliasing_fraction=1.0))
    s = generate_session(town, "fog", 23, CONDITIONS["overcast_fog"], SessionConfig(image_size=(240, 320), n_frames=300))
    pipe = LoopClosurePipeline.from_files(model_path, EngineConfig(), "fog", base_T_camera=s.base_T_camera)
    kf, closures = _run(pipe, s)
    false = [c for c in closures if not _is_correct(c, s.world_T_base[kf[c.query_id]], s.world_T_base[kf[c.match_id]])]
    record_property("closures", len(closures))
    print(f"\n[engine aliasing] model={model_path.name} closures={len(closures)} false={len(false)} stats={pipe.engine.stats()}")
    assert not false, f"{len(false)} false closures of {len(closures)}"


def test_prior_map_of_another_model_is_refused(model_path: Path, tmp_path: Path) -> None:
    b = SessionMapBuilder("old", "another-model", 512)
    b.append(0, 0.0, np.full(512, 512**-0.5, np.float32), None, None, None)
    path = b.snapshot().save(tmp_path / "old.npz")
    with pytest.raises(ValueError, match="another-model"):
        LoopClosurePipeline.from_files(model_path, EngineConfig(), "new", prior_maps=[path])
    assert len(SessionMap.load(path)) == 1
