"""`clino-vpr bag`: the pipeline over a real ROS 2 bag written with rosbags, outputs read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clino_vpr_ros.bag import BagRunConfig, main, run_bag
from clino_vpr_ros.evaluate import evaluate_closures, read_closures_csv
from clino_vpr_ros.synth.cli import two_sessions
from clino_vpr_ros.synth.writers import write_bag

HELD_OUT_TOWN = 950  # the demo's town; never a training town (training used 0..99)


@pytest.fixture(scope="module")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's first session (a lap of a block and back to the start) as a bag of JPEG frames."""
    session, _ = two_sessions(HELD_OUT_TOWN)
    assert len(session.gt_loop_pairs()) > 0, "the generated route must revisit places"
    return write_bag(session, tmp_path_factory.mktemp("bag") / "bagtest", compressed=True, progress=False)


def test_bag_closures_are_right_and_written_as_the_node_publishes_them(session_dir: Path, tmp_path: Path,
                                                                        shipped_model: Path) -> None:
    from rosbags.highlevel import AnyReader

    res = run_bag(BagRunConfig(bag=session_dir, out=tmp_path / "out", model=shipped_model,
                               save_map=tmp_path / "bagtest.map"))
    assert res.frames == 240 and res.skipped == 0
    assert len(res.closures) >= 1, "the session drives a loop; at least one closure must be found"
    table = read_closures_csv(res.csv)
    assert len(table["score"]) == len(res.closures)
    pr = evaluate_closures(table, [session_dir])
    assert pr.precision == 1.0, f"{pr.n_closures - pr.n_correct} false closures among {pr.n_closures}"
    with AnyReader([res.bag]) as reader:
        lio = [reader.deserialize(raw, c.msgtype).data for c, _, raw in reader.messages()
               if c.topic == "/loop_closure_detection"]
        edges = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages() if c.topic == "/loop_closures"]
    assert all(len(d) == 2 for d in lio), "LIO-SAM reads exactly [t_query, t_match]"
    np.testing.assert_allclose(np.array(lio), np.c_[table["query_stamp"], table["match_stamp"]], atol=1e-6)
    assert [e.header.frame_id for e in edges] == [f"s1/{c.query_id}" for c in res.closures]
    # the edge carries what a pose-graph back end needs, as the node publishes it (docs/ros_interface.md)
    np.testing.assert_allclose([e.twist.twist.linear.x for e in edges], table["match_stamp"], atol=1e-6)
    np.testing.assert_allclose([e.twist.twist.linear.y for e in edges], table["score"], atol=1e-5)
    assert all(e.twist.twist.angular.x == 1.0 and e.pose.covariance[0] > 0 for e in edges), "verified, with covariance"
    assert res.map is not None and res.map.is_file()
    # a second run never replaces that map: refused before the bag is read, nothing written
    saved = res.map.read_bytes()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        main([str(session_dir), "--out", str(tmp_path / "again"), "--save-map", str(res.map)])
    with pytest.raises(ValueError, match="also a map this run reads"):
        main([str(session_dir), "--out", str(tmp_path / "again"), "--prior-map", str(res.map),
              "--save-map", str(res.map), "--overwrite"])
    assert res.map.read_bytes() == saved and not (tmp_path / "again").exists()


def test_bag_cli_prints_precision_recall_from_ground_truth(session_dir: Path, tmp_path: Path, shipped_model: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    assert main([str(session_dir), "--out", str(tmp_path / "cli"), "--model", str(shipped_model)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("precision=1.000 recall="), last


def test_missing_bag_and_wrong_topic_say_what_was_expected(session_dir: Path, tmp_path: Path,
                                                           shipped_model: Path) -> None:
    with pytest.raises(FileNotFoundError, match="expected a ROS 2 bag folder"):
        run_bag(BagRunConfig(bag=tmp_path / "nope", out=tmp_path, model=shipped_model))
    with pytest.raises(ValueError, match="image topic '/front/image' not in the bag"):
        run_bag(BagRunConfig(bag=session_dir, out=tmp_path, model=shipped_model, image_topic="/front/image"))
