"""Keyframe selection, the faiss index, candidate filtering and engine input validation (no encoder)."""

from __future__ import annotations

import numpy as np
import pytest

from _engine_scene import BASE_T_CAMERA, Room, base_pose, thumbnail_descriptor
from clino_vpr_ros.candidates import Candidate, CandidateConfig, CandidateFilter
from clino_vpr_ros.engine import ENGINE_PRESETS, EngineConfig, FrameInput, LoopClosureEngine, get_engine_config
from clino_vpr_ros.index import IndexConfig, KeyframeIndex
from clino_vpr_ros.keyframes import KeyframeConfig, KeyframeSelector

pytestmark = pytest.mark.runtime  # also run on the Humble-pinned versions (scripts/test_humble.sh)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_keyframes_by_time_motion_and_novelty() -> None:
    rng = np.random.default_rng(0)
    d = _unit(rng, 2, 16)
    sel = KeyframeSelector(KeyframeConfig(min_interval_s=1.0, min_distance_m=1.0, min_rotation_deg=15.0, novelty_threshold=0.9))
    assert sel.accept(0.0, d[0], base_pose(0, 0, 0))  # first frame
    assert not sel.accept(0.5, d[1], base_pose(5, 0, 0))  # too soon, whatever else
    assert not sel.accept(2.0, d[0], base_pose(0.5, 0, 5))  # same view, barely moved
    assert sel.accept(3.0, d[0], base_pose(1.2, 0, 0))  # travelled 1.2 m
    assert sel.accept(4.0, d[0], base_pose(1.2, 0, 20))  # turned 20 deg
    assert sel.accept(5.0, d[1], base_pose(1.2, 0, 20))  # new view while standing still
    no_odom = KeyframeSelector(KeyframeConfig(min_interval_s=1.0, novelty_threshold=None))
    assert [no_odom.accept(t, d[0]) for t in (0.0, 0.4, 1.0, 1.5, 2.1)] == [True, False, True, False, True]


def test_keyframes_keep_coming_when_odometry_starts_after_the_first_keyframe() -> None:
    """A robot whose odometry comes up late must not be stuck at one keyframe."""
    d = _unit(np.random.default_rng(1), 1, 16)[0]
    sel = KeyframeSelector(KeyframeConfig(min_interval_s=1.0, min_distance_m=1.0, novelty_threshold=0.9))
    assert sel.accept(0.0, d)  # first frame, no pose yet
    assert sel.accept(1.0, d, base_pose(0, 0, 0))  # first pose: anchors the motion reference
    accepted = [sel.accept(1.0 + t, d, base_pose(2.0 * t, 0, 0)) for t in range(1, 6)]
    assert accepted == [True] * 5, "driving 2 m per second must keep making keyframes"


@pytest.mark.parametrize("kind", ["flat", "pq"])
def test_index_excludes_the_recent_past_and_maps_ids(kind: str) -> None:
    rng = np.random.default_rng(1)
    x = _unit(rng, 100, 32)
    index = KeyframeIndex(32, IndexConfig(kind=kind, exclude_recent_s=10.0, exclude_recent_keyframes=5))
    for i in range(100):
        index.add(1000 + i, x[i], float(i))  # one keyframe per second, ids offset from rows
    scores, ids, rows = index.search(x[42], 3)
    assert ids[0, 0] == 1042 and rows[0, 0] == 42 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert ids.dtype == np.int64
    # a query at t=99 may only see keyframes older than 89 s: keyframe 95 (itself recent) is excluded
    _, ids, rows = index.search(x[95], 3, query_stamp=99.0, exclude_recent=True)
    assert 1095 not in ids and np.all(rows[rows >= 0] <= 89)
    # by count: with a 0 s window, the last 5 keyframes are still excluded
    index2 = KeyframeIndex(32, IndexConfig(kind=kind, exclude_recent_s=0.0, exclude_recent_keyframes=5))
    index2.add(np.arange(10), x[:10], np.arange(10.0))
    _, ids, _ = index2.search(x[7], 10, query_stamp=100.0, exclude_recent=True)
    assert set(ids[0][ids[0] >= 0]) == {0, 1, 2, 3, 4} and np.sum(ids[0] == -1) == 5


def test_index_rejects_bad_descriptors_and_names_valid_kinds() -> None:
    index = KeyframeIndex(8)
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        index.add(0, np.ones(9, np.float32), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        index.add(0, np.full(8, np.nan, np.float32), 0.0)
    _, ids, _ = index.search(np.ones(8, np.float32) / np.sqrt(8), 2)
    assert ids.tolist() == [[-1, -1]]
    with pytest.raises(ValueError, match="flat, pq"):
        IndexConfig(kind="ivf")


def _cand(q: int, m: int, score: float = 0.9, session: str = "s") -> Candidate:
    return Candidate(q, float(q), session, m, m, float(m), score)


def test_candidates_need_consecutive_consistent_matches_and_are_not_flooded() -> None:
    f = CandidateFilter(CandidateConfig(min_score=0.5, min_normalized_score=0.8, min_consecutive=3,
                                        consistency_keyframes=2, suppress_s=10.0, suppress_keyframes=5))
    assert f.update(10, 0.9, [_cand(10, 50)]) == []
    assert f.update(11, 0.9, [_cand(11, 80)]) == []  # jumps elsewhere: restarts the count
    assert f.update(12, 0.9, [_cand(12, 81)]) == []
    ready = f.update(13, 0.9, [_cand(13, 82)])
    assert [c.match_seq for c in ready] == [82] and ready[0].consistency == 3
    f.mark_published(ready[0])
    assert f.update(14, 0.9, [_cand(14, 83)]) == []  # same place, 1 s later: suppressed
    assert len(f.update(30, 0.9, [_cand(30, 83)])) == 0  # count restarted after the gap
    # thresholds: absolute and adaptive (query looks like its own recent keyframes: 0.99)
    g = CandidateFilter(CandidateConfig(min_score=0.5, min_normalized_score=0.8, min_consecutive=1))
    assert g.update(0, 0.99, [_cand(0, 5, 0.45)]) == []
    assert g.update(1, 0.99, [_cand(1, 5, 0.7)]) == []  # 0.7 / 0.99 < 0.8
    assert len(g.update(2, 0.6, [_cand(2, 5, 0.7)])) == 1


def test_engine_refuses_nan_wrong_dimension_and_unnormalised_descriptors() -> None:
    engine = LoopClosureEngine(EngineConfig(), 16, "fp", "s")
    good = np.ones(16, np.float32) / 4.0
    assert engine.process(FrameInput(0.0, good)).is_keyframe
    with pytest.raises(ValueError, match=r"shape \(8,\), expected \(16,\)"):
        engine.process(FrameInput(1.0, np.ones(8, np.float32)))
    bad = good.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        engine.process(FrameInput(2.0, bad))
    with pytest.raises(ValueError, match="L2-normalised"):
        engine.process(FrameInput(3.0, good * 3))
    with pytest.raises(ValueError, match="odom_T_base"):
        engine.process(FrameInput(4.0, good, odom_T_base=np.eye(3)))
    assert engine.stats()["keyframes"] == 1


def test_presets_and_config_errors() -> None:
    assert {"default", "large_map"} <= set(ENGINE_PRESETS)
    assert get_engine_config("large_map").index.kind == "pq"
    with pytest.raises(ValueError, match="default"):
        get_engine_config("huge")
    with pytest.raises(ValueError, match="autosave_path"):
        EngineConfig(autosave_period_s=5.0)


def test_engine_closes_a_loop_in_a_room_with_a_correct_metric_pose(tmp_path) -> None:
    """Two laps around a textured room: closures are published only after 3 consistent keyframes,
    verified with PnP on depth, with the right relative pose; autosave writes the map."""
    room = Room(3, width=320, height_px=240)
    cfg = EngineConfig(
        keyframes=KeyframeConfig(min_interval_s=0.0, min_distance_m=0.5, novelty_threshold=None),
        index=IndexConfig(exclude_recent_s=5.0, exclude_recent_keyframes=5),
        candidates=CandidateConfig(min_score=0.5, min_normalized_score=0.5),
        autosave_period_s=10.0, autosave_path=str(tmp_path / "auto.npz"),
    )
    engine = LoopClosureEngine(cfg, 192, "thumb", "room", BASE_T_CAMERA)
    poses, closures, saved = {}, [], []
    n = 24
    for i in range(2 * n):
        a = 2 * np.pi * (i % n) / n
        world_T_base = base_pose(4 * np.cos(a) + 0.15 * (i >= n), 4 * np.sin(a), np.degrees(a) + 90)
        rgb, depth = room.render(world_T_base)
        r = engine.process(FrameInput(float(i), thumbnail_descriptor(rgb), rgb, room.K, world_T_base, depth))
        poses[r.keyframe_id] = world_T_base
        closures += r.closures
        if (p := engine.maybe_autosave(float(i))) is not None:
            saved.append(p)
    assert closures, engine.stats()
    for c in closures:
        assert c.verified and c.metric and c.inliers >= cfg.verify.min_inliers
        assert c.query_session == c.match_session == "room" and c.query_id > c.match_id
        truth = np.linalg.inv(poses[c.query_id]) @ poses[c.match_id]
        assert np.linalg.norm(c.T_query_match[:3, 3] - truth[:3, 3]) < 0.3
        cos = (np.trace(c.T_query_match[:3, :3].T @ truth[:3, :3]) - 1) / 2
        assert np.degrees(np.arccos(min(1.0, cos))) < 3.0
        assert c.covariance.shape == (6, 6) and np.all(np.linalg.eigvalsh(c.covariance) > 0)
    stats = engine.stats()
    assert stats["keyframes"] == stats["index_size"] == 2 * n and stats["published"] == len(closures)
    assert saved and saved[-1].exists()
    engine.reset()
    assert engine.stats()["keyframes"] == 0


def test_descriptor_only_stream_publishes_unverified_closures_only_when_asked() -> None:
    """No images: nothing can be verified; with publish_unverified the consistent revisit is published
    (verified=False, identity pose, huge covariance), without it nothing is. large-map index on the way."""
    rng = np.random.default_rng(3)
    places = _unit(rng, 30, 64)

    def run(publish: bool) -> tuple[list, dict]:
        cfg = EngineConfig(
            keyframes=KeyframeConfig(min_interval_s=0.0, min_distance_m=None, min_rotation_deg=None, novelty_threshold=None),
            index=IndexConfig(kind="pq", exclude_recent_s=5.0, exclude_recent_keyframes=5),
            publish_unverified=publish,
        )
        engine = LoopClosureEngine(cfg, 64, "fp", "s")
        out = []
        for t in range(60):  # 30 places, then the same 30 again (slightly perturbed)
            d = places[t % 30] + (0.05 * rng.standard_normal(64) if t >= 30 else 0.0)
            r = engine.process(FrameInput(float(t), (d / np.linalg.norm(d)).astype(np.float32)))
            out += r.closures
        return out, engine.stats()

    silent, stats = run(False)
    assert silent == [] and stats["unverifiable"] > 0 and stats["published"] == 0
    loud, _ = run(True)
    assert loud and all(not c.verified and not c.metric for c in loud)
    assert all(c.query_id - c.match_id == 30 for c in loud)  # the right places, each after 3 consistent keyframes
    assert all(c.covariance[0, 0] >= 1e6 for c in loud) and min(c.query_id for c in loud) >= 32


def test_gpu_request_without_gpu_falls_back_and_the_gpu_search_path_filters_like_the_selector(caplog) -> None:
    rng = np.random.default_rng(4)
    x = _unit(rng, 200, 16)
    with caplog.at_level("WARNING"):
        index = KeyframeIndex(16, get_engine_config("gpu").index)
    assert not index.on_gpu and "no GPU support" in caplog.text
    index.add(np.arange(200), x, np.arange(200.0))
    q = _unit(rng, 5, 16)
    for n_rows in (3, 50, 199):
        s_sel, r_sel = index._search_prefix(q, 4, n_rows)  # faiss IDSelectorRange (CPU)
        s_gpu, r_gpu = index._search_overfetch(q, 4, n_rows)  # the GPU code path, run on this CPU index
        np.testing.assert_array_equal(r_sel, r_gpu)
        assert np.all(r_gpu < n_rows)


def test_pq_index_reranks_its_code_shortlist_exactly_and_keeps_the_exclusion_window() -> None:
    """Past pq_min_size the pq kind searches a PCA-PQ shortlist and re-ranks it exactly: same
    top-1 as exact search on model-shaped descriptors, recent keyframes still excluded."""
    from clino_vpr_ros.bench.descriptors import Town, session

    town = Town(3000, 64, seed=2)
    x = np.concatenate([session(town, s, 500, s % 3, s) for s in range(0, 2500, 500)])
    cfg = IndexConfig(kind="pq", pq_min_size=1000, pq_pca_dim=48, exclude_recent_s=10.0, exclude_recent_keyframes=5)
    index = KeyframeIndex(64, cfg)
    for a in range(0, len(x), 250):
        index.add(np.arange(a, a + 250), x[a : a + 250], np.arange(a, a + 250, dtype=np.float64))
    assert index._codes is not None and index._codes.ntotal == len(index)  # trained at 1000, retrained at 2000
    queries = np.concatenate([session(town, int(p), 1, 1, 900 + i) for i, p in enumerate(range(100, 2900, 70))])
    exact = np.argmax(queries @ x[: len(x) - 9].T, axis=1)  # stamps <= 2490 are searchable
    found = [index.search(q, 3, query_stamp=float(len(x)), exclude_recent=True)[1][0, 0] for q in queries]
    assert np.mean(np.array(found) == exact) >= 0.95
    scores, ids, _ = index.search(x[-1], 5, query_stamp=float(len(x) - 1), exclude_recent=True)
    assert np.all(ids[0] <= len(x) - 1 - 10) and np.allclose(scores[0], x[ids[0]] @ x[-1], atol=1e-5)
