"""The fleet tier against a real Milvus server: push, status, filtered search, engine closures
from another robot's keyframes, and an outage with catch-up."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from _engine_scene import BASE_T_CAMERA, Room, base_pose, thumbnail_descriptor
from clino_vpr_ros.candidates import CandidateConfig
from clino_vpr_ros.engine import EngineConfig, FrameInput, LoopClosureEngine
from clino_vpr_ros.fleet import FleetConfig, FleetLink, KeyframeRecord, LocalFleetIndex, MilvusFleetIndex
from clino_vpr_ros.fleet_cli import main as fleet_main
from clino_vpr_ros.index import IndexConfig
from clino_vpr_ros.keyframes import KeyframeConfig
from clino_vpr_ros.session_map import SessionMapBuilder


def _collection() -> str:
    return f"t{uuid.uuid4().hex[:10]}"  # each test its own collection on the shared server


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _map(path, session: str, fingerprint: str, n: int, dim: int = 16, seed: int = 0):
    b = SessionMapBuilder(session, fingerprint, dim)
    for i, d in enumerate(_unit(np.random.default_rng(seed), n, dim)):
        b.append(i, float(i), d, np.eye(4), None, None)
    return b.snapshot().save(path)


def test_push_is_idempotent_status_lists_robots_and_another_encoder_is_refused(milvus_server, tmp_path, capsys) -> None:
    uri, coll = milvus_server.uri, _collection()
    a = _map(tmp_path / "a.npz", "day1", "enc-A", 40, seed=1)
    b = _map(tmp_path / "b.npz", "day2", "enc-A", 25, seed=2)
    assert fleet_main(["push", "--uri", uri, "--collection", coll, "--robot", "r1", str(a)]) == 0
    assert fleet_main(["push", "--uri", uri, "--collection", coll, "--robot", "r2", str(b)]) == 0
    capsys.readouterr()
    assert fleet_main(["push", "--uri", uri, "--collection", coll, "--robot", "r1", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "0 added, 40 already in the fleet" in out and "0 added, 25 already in the fleet" in out
    assert "65 keyframes (0 added now)" in out
    assert fleet_main(["status", "--uri", uri, "--collection", coll]) == 0
    out = capsys.readouterr().out
    assert "encoder enc-A (16-d)" in out and "2 robot(s): r1, r2; 2 session(s); 65 keyframes" in out
    assert "day1" in out and str(a.resolve()) in out
    other = _map(tmp_path / "other.npz", "day3", "enc-B", 10, seed=3)
    assert fleet_main(["push", "--uri", uri, "--collection", coll, str(other)]) == 2
    assert "refused" in capsys.readouterr().err
    index = MilvusFleetIndex(FleetConfig(uri=uri, collection=coll), "enc-A", 16)
    assert index.count() == 65  # nothing of the other encoder arrived
    index.close()


def test_search_excludes_the_sessions_recent_keyframes_inside_the_search_like_the_local_backend(milvus_server) -> None:
    rng = np.random.default_rng(4)
    x = _unit(rng, 200, 16)
    base = x[0]
    # session "live": 100 keyframes all close to `base` (stamps 0..99); session "old": 100 unrelated ones
    live = (base + 0.05 * _unit(rng, 100, 16))
    live /= np.linalg.norm(live, axis=1, keepdims=True)
    recs = [KeyframeRecord("r1", "live", i, float(i), live[i], None, "fp", "/maps/live.npz", i) for i in range(100)]
    recs += [KeyframeRecord("r2", "old", i, float(i), x[100 + i], None, "fp", "/maps/old.npz", i) for i in range(100)]
    milvus = MilvusFleetIndex(FleetConfig(uri=milvus_server.uri, collection=_collection()), "fp", 16)
    local = LocalFleetIndex("fp", 16)
    assert milvus.add(recs) == local.add(recs) == 200
    for backend in (milvus, local):
        hits = backend.search(base, 10, exclude_session="live", exclude_after=69.5)[0]
        # the filter runs inside the search: still 10 results, all of them allowed, best first
        assert len(hits) == 10 and all(h.session == "live" and h.stamp <= 69.5 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        whole = backend.search(base, 5, exclude_session="live")[0]
        assert len(whole) == 5 and {h.session for h in whole} == {"old"} and whole[0].robot == "r2"
    m = [h.kf_id for h in milvus.search(base, 10, exclude_session="live", exclude_after=69.5)[0]]
    f = [h.kf_id for h in local.search(base, 10, exclude_session="live", exclude_after=69.5)[0]]
    assert len(set(m) & set(f)) >= 9  # the server's HNSW finds (nearly) the exact answer
    assert milvus.add(recs) == 0 and milvus.count() == 200  # idempotent
    milvus.close()


def _room_engine(session: str, fleet: FleetLink | None, tmp_path) -> LoopClosureEngine:
    cfg = EngineConfig(keyframes=KeyframeConfig(min_interval_s=0.0, min_distance_m=0.5, novelty_threshold=None),
                       index=IndexConfig(exclude_recent_s=5.0, exclude_recent_keyframes=5),
                       candidates=CandidateConfig(min_score=0.5, min_normalized_score=0.5))
    engine = LoopClosureEngine(cfg, 192, "thumb", session, BASE_T_CAMERA)
    if fleet is not None:
        engine.attach_fleet(fleet)
    return engine


def _lap(engine: LoopClosureEngine, room: Room, t0: float, offset: float, n: int = 24, depth: bool = True
         ) -> tuple[list, dict]:
    closures, poses = [], {}
    for i in range(n):
        a = 2 * np.pi * i / n
        world_T_base = base_pose(4 * np.cos(a) + offset, 4 * np.sin(a), np.degrees(a) + 90)
        rgb, d = room.render(world_T_base)
        r = engine.process(FrameInput(t0 + i, thumbnail_descriptor(rgb), rgb, room.K, world_T_base, d if depth else None))
        poses[r.keyframe_id] = world_T_base
        closures += r.closures
    return closures, poses


def _wait(condition, what: str, deadline_s: float = 300.0) -> None:
    """Wait on a condition (not on time); the deadline only turns a hang into a failure."""
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _robot_b_after_robot_a(uri: str, tmp_path, tag: str, depth: bool) -> tuple[list, dict, dict, FleetLink]:
    """Robot A maps the room and its keyframes go to the fleet (its map on "shared storage"); then
    robot B drives it 15 cm to the side: (B's closures, A's poses, B's poses, B's stopped link)."""
    room = Room(3, width=320, height_px=240)
    cfg = FleetConfig(uri=uri, collection=_collection(), robot_id="r1", timeout_s=10)
    map_a = tmp_path / f"robot_a_{tag}.npz"
    link_a = FleetLink(cfg, "thumb", 192, f"a-{tag}", map_a)
    engine_a = _room_engine(f"a-{tag}", link_a, tmp_path)
    _, poses_a = _lap(engine_a, room, 0.0, 0.0, depth=depth)
    engine_a.save_map(map_a)  # the features the fleet points to
    _wait(lambda: link_a.state.online and link_a.state.pending == 0, "robot A's keyframes in the fleet")
    link_a.stop()
    link_b = FleetLink(FleetConfig(uri=uri, collection=cfg.collection, robot_id="r2", timeout_s=10), "thumb", 192,
                       f"b-{tag}", tmp_path / f"robot_b_{tag}.npz")
    engine_b = _room_engine(f"b-{tag}", link_b, tmp_path)
    _wait(lambda: link_b.state.online, "robot B connected")
    closures, poses_b = _lap(engine_b, room, 1000.0, 0.15, depth=depth)
    link_b.stop()
    assert closures, engine_b.stats()
    return closures, poses_a, poses_b, link_b


def test_a_robot_gets_verified_closures_from_another_robots_keyframes_in_the_fleet(milvus_server, tmp_path) -> None:
    closures, poses_a, poses_b, link_b = _robot_b_after_robot_a(milvus_server.uri, tmp_path, "day1", depth=True)
    for c in closures:
        assert c.match_session == "a-day1" and c.query_session == "b-day1" and c.inter_session
        assert c.verified and c.metric
        truth = np.linalg.inv(poses_b[c.query_id]) @ poses_a[c.match_id]
        assert np.linalg.norm(c.T_query_match[:3, 3] - truth[:3, 3]) < 0.3
    assert link_b.diagnostics()["fleet_online"] == "true"


def test_rgb_only_fleet_closures_get_no_metric_translation_made_up_from_the_wrong_neighbours(milvus_server, tmp_path
                                                                                            ) -> None:
    """A fleet hit's row lives in another robot's map: the live session's keyframes at that row
    number are not its neighbours, so nothing may be triangulated from them."""
    closures, poses_a, poses_b, _ = _robot_b_after_robot_a(milvus_server.uri, tmp_path, "rgb", depth=False)
    fleet_closures = [c for c in closures if c.match_session == "a-rgb"]
    assert fleet_closures
    for c in fleet_closures:
        assert c.verified and not c.metric, "a fleet closure without depth must stay direction-only"
        truth = np.linalg.inv(poses_b[c.query_id]) @ poses_a[c.match_id]
        assert np.degrees(np.arccos(np.clip((np.trace(c.T_query_match[:3, :3].T @ truth[:3, :3]) - 1) / 2, -1, 1))) < 3.0


def test_outage_keeps_the_robot_working_and_every_keyframe_arrives_after_the_server_returns(milvus_server, tmp_path) -> None:
    cfg = FleetConfig(uri=milvus_server.uri, collection=_collection(), robot_id="r1", timeout_s=5, retry_period_s=0.2)
    link = FleetLink(cfg, "fp", 16, "s1", tmp_path / "s1.npz")
    engine = LoopClosureEngine(EngineConfig(keyframes=KeyframeConfig(min_interval_s=0.0, min_distance_m=None,
                                                                     min_rotation_deg=None, novelty_threshold=None)),
                               16, "fp", "s1")
    engine.attach_fleet(link)
    x = _unit(np.random.default_rng(5), 90, 16)
    for i in range(30):
        engine.process(FrameInput(float(i), x[i]))
    _wait(lambda: link.state.online and link.state.pending == 0, "the first 30 keyframes written")
    milvus_server.stop()
    try:
        for i in range(30, 90):  # the robot keeps working on its local index
            assert engine.process(FrameInput(float(i), x[i])).is_keyframe
        _wait(lambda: not link.state.online, "the link to notice the outage")
        diag = link.diagnostics()
        assert diag["fleet_online"] == "false" and diag["fleet_error"] and int(diag["fleet_pending"]) > 0
        assert engine.stats()["keyframes"] == 90
    finally:
        milvus_server.start()
    _wait(lambda: link.state.online and link.state.pending == 0, "the catch-up after the restart")
    link.stop()
    index = MilvusFleetIndex(FleetConfig(uri=cfg.uri, collection=cfg.collection, timeout_s=30), "fp", 16)
    assert index.count() == 90
    rows = list(index.iterate(["kf_id"]))
    assert sorted(r["kf_id"] for r in rows) == list(range(90))  # each keyframe exactly once
    index.close()


def test_recall_while_robots_stream_matches_exact_filtered_search(milvus_server) -> None:
    """10 robots stream 16k model-shaped keyframes into the real server while querying it with the
    session/time filter; every answer must be as good as exact filtered search over what was written
    (Strong). With Milvus 2.3's default interim IVF index on growing segments: 0.925."""
    from clino_vpr_ros.bench.descriptors import Town, session
    from clino_vpr_ros.bench.fleet import _exact_filtered_top1, hit_is_correct

    dim, robots, per_robot, rounds = 128, 10, 1600, 40
    town = Town(6000, dim, seed=3)
    rng = np.random.default_rng(3)
    drives = [session(town, int(rng.integers(0, 4000)), per_robot, r % 3, seed=r) for r in range(robots)]
    milvus = MilvusFleetIndex(FleetConfig(uri=milvus_server.uri, collection=_collection(), timeout_s=30, batch=5000),
                              "fp", dim)
    store = np.empty((robots * per_robot, dim), np.float32)
    sess, stamps, rows_of = np.empty(len(store), np.int32), np.empty(len(store)), [[] for _ in range(robots)]
    n, step, hits_ok = 0, per_robot // rounds, []
    for rnd in range(rounds):  # each round: every robot writes its next `step` keyframes (stamp = index)
        recs = []
        for r in range(robots):
            for i in range(rnd * step, (rnd + 1) * step):
                store[n], sess[n], stamps[n] = drives[r][i], r, float(i)
                rows_of[r].append(n)
                recs.append(KeyframeRecord(f"r{r}", f"s{r}", i, float(i), drives[r][i], None, "fp", f"/m/s{r}.npz", i))
                n += 1
        milvus.insert(recs)
        for r in rng.choice(robots, 2, replace=False):  # robots ask with their newest keyframe
            q, after = drives[r][(rnd + 1) * step - 1], (rnd + 1) * step - 1 - 30.0
            _, truth = _exact_filtered_top1(store, sess, stamps, n, q, int(r), after)
            hit = milvus.search(q, 1, exclude_session=f"s{r}", exclude_after=after)[0]
            row = rows_of[int(hit[0].session[1:])][hit[0].kf_id] if hit else None
            hits_ok.append(hit_is_correct(store, sess, stamps, n, q, int(r), after, truth, row))
    assert milvus.count() == n
    assert np.mean(hits_ok) >= 0.99, f"recall@1 {np.mean(hits_ok):.3f} against exact filtered search ({len(hits_ok)} queries)"
    milvus.close()
