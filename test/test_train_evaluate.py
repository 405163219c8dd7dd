"""Recall@K, loop-closure precision/recall and the plots of clino_vpr_ros.evaluate (no torch needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from clino_vpr_ros.datasets import parse_utm, read_downloader_set
from clino_vpr_ros.evaluate import (
    loop_closure_pr,
    plot_pr_curve,
    plot_trajectories_with_closures,
    recall_at_k,
)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_recall_at_k_counts_a_hit_within_the_radius_among_the_top_k() -> None:
    db = _unit(np.eye(4))  # 4 database places, orthogonal descriptors
    db_xy = np.array([[0, 0], [100, 0], [200, 0], [300, 0]], float)
    # q0 looks like db0 and is there: hit at 1. q1 looks like db2 most, db1 second, is at db1: hit at 2.
    # q2 is 1 km away from everything: no positive, excluded.
    queries = _unit([[1, 0.1, 0, 0], [0, 0.5, 1, 0], [0, 0, 0, 1]])
    q_xy = np.array([[3, 4], [100, 10], [5000, 0]], float)
    r = recall_at_k(db, queries, db_xy, q_xy, ks=(1, 2, 3), radius_m=25.0)
    assert r == {1: 0.5, 2: 1.0, 3: 1.0}
    # a tighter radius turns q1's database place into a negative: q1 is then excluded too
    assert recall_at_k(db, queries, db_xy, q_xy, ks=(1,), radius_m=8.0) == {1: 1.0}


def test_recall_at_k_rejects_mismatched_inputs() -> None:
    db = _unit(np.eye(3))
    with pytest.raises(ValueError, match="shape"):
        recall_at_k(db, db, np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no query"):
        recall_at_k(db, db, np.zeros((3, 2)), np.full((3, 2), 1e4))


def test_loop_closure_pr_precision_recall_and_max_recall_at_full_precision() -> None:
    # 4 reported closures, best score first: correct, correct, wrong (too far), correct but temporally adjacent
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    q = np.array([[0, 0], [50, 0], [100, 0], [150, 0]], float)
    m = np.array([[1, 0], [52, 0], [180, 0], [150, 1]], float)
    gaps = np.array([100.0, np.inf, 100.0, 2.0])
    res = loop_closure_pr(scores, q, m, query_ids=np.arange(4), n_gt_queries=4, time_gaps_s=gaps,
                          radius_m=10.0, min_time_gap_s=30.0)
    assert res.n_correct == 2
    assert res.max_recall_at_100_precision == pytest.approx(0.5)  # first two accepted: 2 of 4 loop queries
    assert res.precision == pytest.approx(0.5) and res.recall == pytest.approx(0.5)
    assert res.auc == pytest.approx(0.5)  # precision 1 over recall 0..0.5, nothing after
    np.testing.assert_allclose(res.thresholds, scores)
    np.testing.assert_allclose(res.curve[:, 0], [1, 1, 2 / 3, 0.5])


def test_loop_closure_pr_counts_each_query_once_for_recall() -> None:
    scores = np.array([0.9, 0.8])
    xy = np.zeros((2, 2))
    res = loop_closure_pr(scores, xy, xy, query_ids=np.array([7, 7]), n_gt_queries=2, radius_m=5.0)
    assert res.recall == pytest.approx(0.5)
    assert res.precision == pytest.approx(1.0)


def test_plots_write_png_files(tmp_path) -> None:
    res = loop_closure_pr(np.array([0.9, 0.5]), np.zeros((2, 2)), np.array([[0, 0], [50, 0]], float),
                          np.arange(2), 2, radius_m=5.0)
    pr = plot_pr_curve({"test": res}, tmp_path / "pr.png")
    t = np.linspace(0, 2 * np.pi, 50)
    traj = plot_trajectories_with_closures(
        {"a": np.c_[np.cos(t), np.sin(t)] * 20, "b": np.c_[np.cos(t), np.sin(t)] * 21},
        [((20.0, 0.0), (21.0, 0.0), True), ((0.0, 20.0), (0.0, -21.0), False)], tmp_path / "traj.png")
    for path in (pr, traj):  # real pictures with something drawn, not an empty canvas
        picture = cv2.imread(str(path))
        assert picture is not None and min(picture.shape[:2]) > 200 and picture.std() > 10


def test_downloader_names_give_utm_positions(tmp_path) -> None:
    assert parse_utm("@500123.45@4649776.22@33@T@41.9@12.5@pano@@.jpg") == (500123.45, 4649776.22)
    with pytest.raises(ValueError, match="downloader-format"):
        parse_utm("IMG_0001.jpg")
    with pytest.raises(FileNotFoundError, match="images/test/database"):
        read_downloader_set(tmp_path)


def test_evaluate_module_imports_without_torch() -> None:
    code = "import sys, clino_vpr_ros.evaluate, clino_vpr_ros.datasets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_eval_loops_cli_scores_closures_against_session_ground_truth(tmp_path, capsys) -> None:
    from clino_vpr_ros.evaluate import main
    from clino_vpr_ros.synth import generate_session, generate_town, get_condition, read_session_groundtruth
    from clino_vpr_ros.synth.writers import write_session_groundtruth

    gt_dir = tmp_path / "session"
    gt_dir.mkdir()
    write_session_groundtruth(generate_session(generate_town(5), "a", 1, get_condition("day")), gt_dir)
    stamps, poses, loops, _ = read_session_groundtruth(gt_dir)
    queries = np.unique(loops[:, 0])
    first_match = {q: loops[loops[:, 0] == q][0, 1] for q in queries}
    half = queries[: len(queries) // 2]
    rows = [(q, first_match[q], 0.9) for q in half]  # true loops for half of the loop queries, top scores
    far = np.linalg.norm(poses[:, None, :2, 3] - poses[None, :, :2, 3], axis=2) > 50
    i, j = np.argwhere(far)[[0, 7, 19]].T
    rows += [(stamps[a], stamps[b], 0.5) for a, b in zip(i, j)]  # 3 wrong closures, lower scores
    rows += [(stamps[40], stamps[39], 0.95)]  # temporally adjacent frames: not a loop, highest score
    csv_path = tmp_path / "closures.csv"
    csv_path.write_text("query_stamp,match_stamp,query_session,match_session,score,verified,inliers\n"
                        + "".join(f"{q:.9f},{m:.9f},a,a,{s},true,50\n" for q, m, s in rows))
    assert main(["loops", "--closures", str(csv_path), "--groundtruth", str(gt_dir), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "out" / "loop_closure_pr.json").read_text())
    assert res["n_gt_queries"] == len(queries) and res["n_correct"] == len(half)
    assert res["precision"] == pytest.approx(len(half) / len(rows))
    assert res["recall"] == pytest.approx(len(half) / len(queries))
    assert res["max_recall_at_100_precision"] == 0.0  # the adjacent-frame pair outranks every true loop
    assert "max recall@100%P" in out
    curve = cv2.imread(str(tmp_path / "out" / "pr_curve.png"))
    assert curve is not None and curve.std() > 10  # a drawn curve, not a blank canvas


def test_geometric_reranking_puts_the_verified_place_first_even_at_night(tmp_path) -> None:
    """The descriptor ranks the wrong room first; verification (with CLAHE) restores the right one,
    although the query is a dark, low-contrast revisit of the right room."""
    import cv2

    from _engine_scene import Room, base_pose
    from clino_vpr_ros.evaluate import recall_of_ranking, rerank_by_verification

    right, wrong = Room(1, width=320, height_px=240), Room(2, width=320, height_px=240)
    db_paths = [tmp_path / "db_right.png", tmp_path / "db_wrong.png"]
    cv2.imwrite(str(db_paths[0]), right.render(base_pose(0.0, 0.0, 0.0))[0])
    cv2.imwrite(str(db_paths[1]), wrong.render(base_pose(0.0, 0.0, 0.0))[0])
    night = (right.render(base_pose(0.5, 0.8, 8.0))[0].astype(np.float32) * 0.15 + 4).astype(np.uint8)
    q_paths = [tmp_path / "q_night.png"]
    cv2.imwrite(str(q_paths[0]), night)
    db_xy, q_xy = np.array([[0.0, 0.0], [100.0, 0.0]]), np.array([[1.0, 1.0]])
    descriptor_ranking = np.array([[1, 0]])
    assert recall_of_ranking(descriptor_ranking, db_xy, q_xy, ks=(1,)) == {1: 0.0}
    reranked = rerank_by_verification(descriptor_ranking, db_paths, q_paths, top=2, progress=False)
    np.testing.assert_array_equal(reranked, [[0, 1]])
    assert recall_of_ranking(reranked, db_xy, q_xy, ks=(1,)) == {1: 1.0}
    with pytest.raises(ValueError, match="indices"):
        recall_of_ranking(np.array([[2, 0]]), db_xy, q_xy)
