"""Sequence scoring, metric pose from a plain camera (triangulation + PnP), trajectory error with closures."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from clino_vpr_ros.engine import ENGINE_PRESETS, EngineConfig, LoopClosure, LoopClosureEngine
from clino_vpr_ros.sequence import SequenceConfig, backfill_rows, best_match, sequence_scores, track_positions
from clino_vpr_ros.session_map import SessionMap, SessionMapBuilder
from clino_vpr_ros.trajectory import SessionTrajectory, evaluate_ate
from clino_vpr_ros.triangulate import Neighbour, TriangulationConfig, camera_motion, triangulate_pair, with_triangulated_depths
from clino_vpr_ros.verify import LocalFeatures, VerifyConfig, ratio_matches, verify_pair


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_sequence_tells_an_aliased_twin_from_the_true_place() -> None:
    """The current view looks exactly like two places; only the keyframes that led to it tell which."""
    rng = np.random.default_rng(0)
    dim, n = 64, 80
    map_desc = _unit(rng.normal(size=(n, dim)))
    map_desc[44] = map_desc[14]  # block 44 is a twin of block 14 for a single frame
    pos, metric = track_positions(None, n)
    assert not metric
    query = _unit(map_desc[10:15] + 0.5 * rng.normal(size=(5, dim)) / math.sqrt(dim))  # drove through 10..14 again
    single = query[-1] @ map_desc.T
    assert abs(single[14] - single[44]) < 1e-6  # a single frame cannot choose
    scores, lengths = sequence_scores(query, np.arange(5.0), map_desc, pos, max_gap=0.5)
    m = best_match(scores, lengths, pos, SequenceConfig(), exclusion=5.0)
    assert m is not None and m.row == 14 and m.margin >= SequenceConfig().min_margin

    # arriving at the twin from an unrelated street: no place is accepted (the margin stays small)
    other = np.vstack([_unit(rng.normal(size=(4, dim))), query[-1:]])
    scores, lengths = sequence_scores(other, np.arange(5.0), map_desc, pos, max_gap=0.5)
    assert best_match(scores, lengths, pos, SequenceConfig(), exclusion=5.0) is None


def test_sequence_alignment_by_travelled_distance_copes_with_another_speed() -> None:
    """The map was driven at 1 m per keyframe, the revisit at 2 m per keyframe."""
    rng = np.random.default_rng(1)
    dim, n = 64, 60
    map_desc = _unit(rng.normal(size=(n, dim)))
    map_pos = np.arange(n, dtype=np.float64)
    rows = np.array([22, 24, 26, 28, 30])
    query = _unit(map_desc[rows] + 0.5 * rng.normal(size=(5, dim)) / math.sqrt(dim))
    scores, lengths = sequence_scores(query, rows.astype(np.float64), map_desc, map_pos, max_gap=0.6)
    m = best_match(scores, lengths, map_pos, SequenceConfig(), exclusion=5.0)
    assert m is not None and m.row == 30 and m.length == 5


def _pose(yaw_deg: float, t: tuple[float, float, float]) -> np.ndarray:
    """A camera pose in the world (optical frame: z forward); yaw about the camera's y (down) axis."""
    a = math.radians(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    T[:3, 3] = t
    return T


def _view(points: np.ndarray, world_T_cam: np.ndarray, K: np.ndarray, desc: np.ndarray, rng: np.random.Generator
          ) -> LocalFeatures:
    """Features of the points seen from a camera: projected pixels (+0.3 px noise), descriptors of the points."""
    Xc = (points - world_T_cam[:3, 3]) @ world_T_cam[:3, :3]
    uv = Xc[:, :2] / Xc[:, 2:3] @ K[:2, :2].T + K[:2, 2]
    seen = (Xc[:, 2] > 0.5) & (uv[:, 0] >= 0) & (uv[:, 0] < 640) & (uv[:, 1] >= 0) & (uv[:, 1] < 480)
    uv = uv[seen] + rng.normal(0, 0.3, size=(int(seen.sum()), 2))
    return LocalFeatures(uv.astype(np.float32), desc[seen], np.full(int(seen.sum()), np.nan, np.float32), (480, 640))


def test_rgb_only_closure_gets_a_metric_translation_from_triangulation() -> None:
    rng = np.random.default_rng(2)
    K = np.array([[320.0, 0, 320], [0, 320, 240], [0, 0, 1]])
    points = np.column_stack([rng.uniform(-12, 12, 400), rng.uniform(-4, 2, 400), rng.uniform(6, 30, 400)])
    desc = rng.integers(0, 256, size=(400, 128), dtype=np.uint8)
    match_pose = _pose(0.0, (0.0, 0.0, 0.0))
    # the keyframes before and after the match, 1 m apart along the drive (relative poses from odometry)
    neighbour_poses = [_pose(0.5 * d, (0.1 * d, 0.0, float(d))) for d in (-3, -2, -1, 1, 2, 3)]
    query_pose = _pose(8.0, (1.5, 0.1, 0.6))  # the revisit: 1.5 m to the side, turned 8 deg
    match = _view(points, match_pose, K, desc, rng)
    neighbours = [Neighbour(_view(points, p, K, desc, rng), K, camera_motion(match_pose, p, None)) for p in neighbour_poses]
    query = _view(points, query_pose, K, desc, rng)

    without_depth = verify_pair(query, K, match, K, VerifyConfig())
    assert without_depth.accepted and not without_depth.metric  # a plain pair: direction only

    triangulated = with_triangulated_depths(match, K, neighbours, VerifyConfig(), TriangulationConfig())
    assert triangulated is not None and np.isfinite(triangulated.depths).sum() >= 40
    v = verify_pair(query, K, triangulated, K, VerifyConfig())
    truth = np.linalg.inv(query_pose) @ match_pose
    assert v.accepted and v.metric and v.method == "pnp"
    assert np.linalg.norm(v.qcam_T_mcam[:3, 3] - truth[:3, 3]) < 0.1  # metres, true translation 1.6 m
    assert np.all(np.sqrt(np.diag(v.covariance)[:3]) < 0.5)


def test_triangulating_only_the_keypoints_paired_with_the_query_gives_the_same_metric_pose() -> None:
    """The engine triangulates only the match keypoints the query was matched with (PnP uses no
    other): the closure's pose must be the one triangulating every keypoint gives."""
    rng = np.random.default_rng(5)
    K = np.array([[320.0, 0, 320], [0, 320, 240], [0, 0, 1]])
    points = np.column_stack([rng.uniform(-12, 12, 600), rng.uniform(-4, 2, 600), rng.uniform(6, 30, 600)])
    desc = rng.integers(0, 256, size=(600, 128), dtype=np.uint8)
    match_pose, query_pose = _pose(0.0, (0.0, 0.0, 0.0)), _pose(20.0, (1.0, 0.1, 1.0))  # the query sees half the scene
    match = _view(points, match_pose, K, desc, rng)
    neighbours = [Neighbour(_view(points, p, K, desc, rng), K, camera_motion(match_pose, p, None))
                  for p in (_pose(0.5 * d, (0.1 * d, 0.0, float(d))) for d in (-3, -2, -1, 1, 2, 3))]
    query = _view(points, query_pose, K, desc, rng)
    pairs = ratio_matches(query, match, VerifyConfig())
    rows = np.unique(pairs[:, 1])
    assert 40 <= len(rows) < 0.8 * len(match)

    every = with_triangulated_depths(match, K, neighbours, VerifyConfig(), TriangulationConfig())
    paired = with_triangulated_depths(match, K, neighbours, VerifyConfig(), TriangulationConfig(), rows)
    assert every is not None and paired is not None
    np.testing.assert_array_equal(paired.depths[rows], every.depths[rows])
    assert np.isnan(np.delete(paired.depths, rows)).all()  # nothing else was triangulated
    # fewer pairs than a neighbour must share with the match: the match's other pairs still count
    full = triangulate_pair(match, K, neighbours[0], VerifyConfig(), TriangulationConfig())
    few = rows[np.isfinite(full[rows])][:5]
    assert len(few) == 5
    np.testing.assert_array_equal(triangulate_pair(match, K, neighbours[0], VerifyConfig(), TriangulationConfig(), few)[few],
                                  full[few])
    v_every = verify_pair(query, K, every, K, VerifyConfig())
    v_paired = verify_pair(query, K, paired, K, VerifyConfig(), pairs)
    assert v_paired.accepted and v_paired.metric and v_paired.inliers == v_every.inliers
    np.testing.assert_allclose(v_paired.qcam_T_mcam, v_every.qcam_T_mcam, atol=1e-9)
    truth = np.linalg.inv(query_pose) @ match_pose
    assert np.linalg.norm(v_paired.qcam_T_mcam[:3, 3] - truth[:3, 3]) < 0.1


def test_ratio_matches_are_opencvs_brute_force_ones_and_a_subset_keeps_its_pairs() -> None:
    """SIFT descriptors are matched as float32 (fast) but must pair exactly like OpenCV's brute force
    on the stored uint8 descriptors; matching some query keypoints gives exactly their pairs."""
    import cv2

    rng = np.random.default_rng(6)
    base = rng.integers(0, 256, size=(500, 128), dtype=np.uint8)
    noisy = np.clip(base.astype(int) + rng.integers(-40, 41, size=base.shape), 0, 255).astype(np.uint8)
    def features(desc: np.ndarray) -> LocalFeatures:
        return LocalFeatures(rng.uniform(0, 400, (len(desc), 2)).astype(np.float32), desc,
                             np.full(len(desc), np.nan, np.float32), (480, 640))

    a, b = features(noisy[:400]), features(base[rng.permutation(500)])
    cfg = VerifyConfig()
    reference = [(m[0].queryIdx, m[0].trainIdx) for m in cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors, b.descriptors, k=2)
                 if m[0].distance < cfg.ratio * m[1].distance]
    pairs = ratio_matches(a, b, cfg)
    assert len(pairs) > 300 and pairs.tolist() == [list(p) for p in reference]
    some = np.arange(0, 400, 3)
    assert ratio_matches(a, b, cfg, some).tolist() == [p for p in pairs.tolist() if p[0] % 3 == 0]
    orb = LocalFeatures(a.keypoints, a.descriptors[:, :32], a.depths, a.image_size)
    assert len(ratio_matches(orb, b, cfg)) == 0  # another feature type cannot be matched


def _pose2d(x: float, y: float, yaw: float) -> np.ndarray:
    T = np.eye(4)
    T[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    T[:2, 3] = (x, y)
    return T


def test_closures_halve_the_trajectory_error_of_drifting_odometry() -> None:
    """Two laps of a 40 m x 30 m block with biased odometry; closures at the second lap's keyframes."""
    rng = np.random.default_rng(3)
    lap = []
    for (x0, y0), (x1, y1) in zip([(0, 0), (40, 0), (40, 30), (0, 30)], [(40, 0), (40, 30), (0, 30), (0, 0)]):
        for s in np.arange(0, 1, 1 / 20):
            lap.append((x0 + s * (x1 - x0), y0 + s * (y1 - y0), math.atan2(y1 - y0, x1 - x0)))
    world = np.stack([_pose2d(x, y + 0.5 * k, a) for k in range(2) for x, y, a in lap])  # lap 2 is 0.5 m aside
    odom = [world[0]]
    for a, b in zip(world[:-1], world[1:]):
        rel = np.linalg.inv(a) @ b
        rel = rel @ _pose2d(0.01 * rel[0, 3], rng.normal(0, 0.01), math.radians(0.4))  # scale + heading bias
        odom.append(odom[-1] @ rel)
    odom = np.stack(odom)
    n = len(lap)
    stamps = np.arange(2 * n, dtype=np.float64)
    closures = []
    for q in range(n, 2 * n, 2):
        T = np.linalg.inv(world[q]) @ world[q - n]
        closures.append(LoopClosure(stamps[q], stamps[q - n], "s", "s", q, q - n, 0.9, True, 80, T, True,
                                    np.diag([0.05**2] * 3 + [0.01**2] * 3)))
    wrong = np.linalg.inv(world[n + 10]) @ world[50]  # one aliased, verified but wrong closure
    closures.append(LoopClosure(stamps[n + 10], stamps[50], "s", "s", n + 10, 50, 0.8, True, 30, wrong, True,
                                np.diag([0.05**2] * 3 + [0.01**2] * 3)))
    trajectory = SessionTrajectory("s", np.arange(2 * n), stamps, odom)
    report = evaluate_ate([trajectory], closures, {"s": (stamps, world)})
    assert report.closures_used == len(closures)
    assert report.odom["s"] > 1.0
    assert report.closed["s"] <= 0.5 * report.odom["s"], (report.odom, report.closed)


def test_backfill_rows_are_the_aligned_pairs_then_the_other_side() -> None:
    map_pos = np.arange(30, dtype=np.float64) * 1.5
    q_pos = np.array([100.0, 101.5, 103.0, 104.5, 106.0])  # another track, same spacing
    # the pairs the sequence score averaged, nothing else within the gap
    assert backfill_rows(10, q_pos, map_pos, max_gap=0.6).tolist() == [[6, -1], [7, -1], [8, -1], [9, -1], [10, -1]]
    assert backfill_rows(2, q_pos, map_pos, max_gap=0.6)[:, 0].tolist() == [-1, -1, 0, 1, 2]  # nothing before the map's start
    # a wider gap: the keyframe on the other side of the aligned position, and the map's first keyframe
    # for the query keyframe just before a revisit of the map's start; never one past the match
    assert backfill_rows(2, q_pos, map_pos, max_gap=1.6).tolist() == [[-1, -1], [0, -1], [0, -1], [1, 0], [2, 1]]
    q_half = q_pos + np.array([0.7, 0.7, 0.7, 0.7, 0.0])  # the earlier ones half-way between map keyframes
    assert backfill_rows(10, q_half, map_pos, max_gap=1.0).tolist() == [[6, 7], [7, 8], [8, 9], [9, 10], [10, -1]]


STREET_DIM, STREET_REVISIT = 64, 40  # descriptor size; the keyframe where the street's second drive starts


def _street_revisit(aliased: range = range(0)) -> tuple[SessionMap, dict[int, np.ndarray]]:
    """A street driven twice (keyframes 0-19, a detour, then 40-59 0.8 m aside), RGB only (no depth):
    the session map and each keyframe's camera pose (= its odometry pose).

    Global descriptors: one per place along the street (consecutive places alike) plus noise; local
    features: projections of the street's 3-D points. The revisit keyframes in ``aliased`` look as much
    like a detour keyframe (no local features there) as like their own place; their local features stay.
    """
    rng = np.random.default_rng(4)
    K = np.array([[320.0, 0, 320], [0, 320, 240], [0, 0, 1]])
    street = np.column_stack([rng.uniform(-12, 12, 1200), rng.uniform(-4, 2, 1200), rng.uniform(0, 60, 1200)])
    street_desc = rng.integers(0, 256, size=(1200, 128), dtype=np.uint8)
    places = _unit(np.cumsum(rng.normal(size=(20, STREET_DIM)), axis=0))  # a random walk: consecutive places alike
    builder = SessionMapBuilder("s", "fp", STREET_DIM, feature="sift")
    poses, descs = {}, []
    for k in range(60):
        if k < 20 or k >= STREET_REVISIT:
            p = k % STREET_REVISIT
            pose = _pose(3.0, (0.8, 0.0, 1.5 * p - 6.0)) if k >= STREET_REVISIT else _pose(0.0, (0.0, 0.0, 1.5 * p - 6.0))
            desc = _unit(places[p] + 0.3 * rng.normal(size=STREET_DIM) / math.sqrt(STREET_DIM))
            if k in aliased:
                desc = _unit(desc + descs[k - 30])
            feats = _view(street, pose, K, street_desc, rng)
        else:  # the detour: elsewhere, nothing in common with the street
            pose, desc, feats = _pose(0.0, (0.0, 0.0, 500.0 + 1.5 * k)), _unit(rng.normal(size=STREET_DIM)), None
        poses[k] = pose
        descs.append(desc)
        builder.append(k, 2.0 * k, desc, pose, K, feats)
    return builder.snapshot(), poses


def _replayed(smap: SessionMap, cfg: EngineConfig) -> list[LoopClosure]:
    """Every closure an engine with ``cfg`` publishes while ``smap``'s keyframes arrive in order."""
    engine = LoopClosureEngine(cfg, STREET_DIM, "fp", "s")
    return [c for row in range(len(smap)) for c in engine.replay_keyframe(smap, row).closures]


def test_backfill_closes_the_first_keyframes_of_a_revisit() -> None:
    """The street driven twice, default preset. The window must fill before a sequence is accepted;
    back-filling then gives the revisit's first keyframes their closures, late, against the places
    the sequence aligned them with, all correct and one per keyframe.
    """
    smap, _ = _street_revisit()
    first = STREET_REVISIT
    engine = LoopClosureEngine(ENGINE_PRESETS["default"], STREET_DIM, "fp", "s")
    found = [(row, c) for row in range(len(smap)) for c in engine.replay_keyframe(smap, row).closures]
    closures = [c for _, c in found]
    assert closures and all(c.query_id - first == c.match_id for c in closures), [(c.query_id, c.match_id) for c in closures]
    assert len({c.query_id for c in closures}) == len(closures)  # one closure per keyframe and map
    early = {c.query_id for row, c in found if c.query_id in range(first, first + 4)}
    assert len(early) >= 3
    assert all(row > c.query_id for row, c in found if c.query_id in early)  # published once the window was full


def test_follow_keeps_a_revisit_found_where_the_places_look_like_another_one() -> None:
    """The street driven twice, the last 10 revisit keyframes looking as much like a detour as like the
    street (a look-alike stretch: the sequence margin falls short, so no anchor comes after them and
    back-filling cannot reach them). Following the revisit from its last closure gives every one of them
    its right closure; without it they get none."""
    smap, _ = _street_revisit(aliased=range(50, 60))
    first = STREET_REVISIT
    default = ENGINE_PRESETS["default"]
    followed = _replayed(smap, default)
    assert all(c.query_id - first == c.match_id for c in followed), [(c.query_id, c.match_id) for c in followed]
    assert {c.query_id for c in followed} >= set(range(50, 60))
    unfollowed = _replayed(smap, replace(default, sequence=replace(default.sequence, follow=False)))
    assert not {c.query_id for c in unfollowed} & set(range(50, 60))


def test_metric_closures_beyond_the_place_radius_never_reach_the_back_end() -> None:
    """The revisit drives 0.8 m aside of the first pass: with ``max_translation_m`` below that no metric
    closure is published (views that share features from too far apart are not revisits); the
    ``default`` preset's 7.5 m (inside the ground truth's 8 m place radius) keeps them."""
    smap, _ = _street_revisit()
    default = ENGINE_PRESETS["default"]
    assert default.max_translation_m == 7.5
    kept = [c for c in _replayed(smap, default) if c.metric]
    assert len(kept) >= 10 and all(np.linalg.norm(c.T_query_match[:3, 3]) < 1.0 for c in kept)
    assert not [c for c in _replayed(smap, replace(default, max_translation_m=0.5)) if c.metric]


def test_rgb_only_revisit_closures_through_the_engine_carry_accurate_metric_translations() -> None:
    """The engine triangulates the match keyframe from its neighbours (only the keypoints paired with
    the query): the closures of an RGB-only revisit are metric and their translation is right."""
    smap, poses = _street_revisit()
    closures = _replayed(smap, ENGINE_PRESETS["default"])
    metric = [c for c in closures if c.metric]
    assert len(closures) >= 15 and len(metric) >= 0.8 * len(closures)
    for c in metric:
        truth = np.linalg.inv(poses[c.query_id]) @ poses[c.match_id]
        assert np.linalg.norm(c.T_query_match[:3, 3] - truth[:3, 3]) < 0.05, (c.query_id, c.match_id)  # true 0.8 m aside
