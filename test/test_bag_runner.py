"""`clino-vpr bag`: the pipeline over a real ROS 2 bag written with rosbags, outputs read back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clino_vpr_ros.bag import BagRunConfig, main, run_bag
from clino_vpr_ros.evaluate import evaluate_closures, read_closures_csv
from clino_vpr_ros.lio_sam import schedule
from clino_vpr_ros.synth import SessionConfig, generate_session, generate_town, get_condition
from clino_vpr_ros.synth.cli import DAY_S, SESSION_IMAGE_SIZE, two_sessions
from clino_vpr_ros.synth.session import Session
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
    # LIO-SAM's topic: what the node would send it (verified, intra-session, >= 30 s apart, 1 per second)
    expected = [(c.query_stamp, c.match_stamp) for _, c in schedule(res.closures)]
    assert expected and all(q - m >= 30.0 for q, m in expected)
    np.testing.assert_allclose(np.array(lio), np.array(expected), atol=1e-6)
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


# ---------------------------------------------------------------- what the bag runner reads
SHORT = 60  # frames: enough keyframes to check poses and the camera mount


def _rewrite(src: Path, dst: Path, odom_shift_s: float, corrupt_image: int | None = None,
             info_width: int | None = None) -> Path:
    """Copy a `clino-vpr synth sessions` folder, changing its bag as a real robot's would differ:
    /tf_static as a chain base_link -> camera_link -> camera_optical_frame (translation on the first
    link, rotation on the second), odometry stamped ``odom_shift_s`` after each image, and the
    ``corrupt_image``-th image replaced by bytes that do not deserialise; camera_info claiming
    ``info_width`` when given."""
    import shutil

    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    dst.mkdir(parents=True)
    for name in ("groundtruth.csv", "loops.csv", "session.json"):
        shutil.copy(src / name, dst / name)
    with AnyReader([src / "bag"], default_typestore=ts) as reader, Writer(dst / "bag", version=9) as writer:
        conns, n_image = {}, 0
        for conn, ns, raw in reader.messages():
            if conn.topic not in conns:
                conns[conn.topic] = writer.add_connection(conn.topic, conn.msgtype, typestore=ts)
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == "/tf_static":
                (tf,) = msg.transforms
                r, t = tf.transform.rotation, tf.transform.translation
                link = T["geometry_msgs/msg/TransformStamped"](
                    header=T["std_msgs/msg/Header"](stamp=tf.header.stamp, frame_id="base_link"),
                    child_frame_id="camera_link", transform=T["geometry_msgs/msg/Transform"](
                        translation=t, rotation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)))
                optical = T["geometry_msgs/msg/TransformStamped"](
                    header=T["std_msgs/msg/Header"](stamp=tf.header.stamp, frame_id="camera_link"),
                    child_frame_id=tf.child_frame_id, transform=T["geometry_msgs/msg/Transform"](
                        translation=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0), rotation=r))
                msg = T["tf2_msgs/msg/TFMessage"](transforms=[optical, link])
            elif conn.topic == "/odom":
                shift = int(round(odom_shift_s * 1e9))
                total = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec + shift
                msg.header.stamp = T["builtin_interfaces/msg/Time"](sec=total // 10**9, nanosec=total % 10**9)
                ns += shift
            elif conn.topic.endswith("camera_info") and info_width is not None:
                msg.width = info_width
            elif conn.msgtype.startswith("sensor_msgs/msg/") and "Image" in conn.msgtype:
                n_image += 1
                if n_image == corrupt_image:
                    writer.write(conns[conn.topic], ns, b"\x00\x01\x00\x00garbage")
                    continue
            writer.write(conns[conn.topic], ns, ts.serialize_cdr(msg, conn.msgtype))
    return dst


@pytest.fixture(scope="module")
def short_sessions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Session]:
    """Two short sessions (1.25 Hz: a lap in SHORT frames) of the held-out town, in the `clino-vpr synth
    sessions` layout <root>/s1, <root>/s2; and session 1."""
    town = generate_town(HELD_OUT_TOWN)
    cfg = SessionConfig(n_frames=SHORT, rate_hz=1.25, image_size=SESSION_IMAGE_SIZE)
    s1 = generate_session(town, "s1", 1, get_condition("day"), cfg)
    s2 = generate_session(town, "s2", 2, get_condition("dusk"), replace(cfg, start_time_s=DAY_S))
    root = tmp_path_factory.mktemp("short") / "sessions"
    return (write_bag(s1, root / "s1", compressed=True, progress=False),
            write_bag(s2, root / "s2", compressed=True, progress=False), s1)


def test_camera_mount_from_a_tf_chain_and_odometry_nearest_the_image_within_tolerance(
        short_sessions: tuple[Path, Path, Session], tmp_path: Path, shipped_model: Path) -> None:
    from clino_vpr_ros.session_map import SessionMap

    s1 = short_sessions[2]
    bag = _rewrite(short_sessions[0], tmp_path / "chain", odom_shift_s=0.03, corrupt_image=5)
    res = run_bag(BagRunConfig(bag=bag, out=tmp_path / "out", model=shipped_model, save_map=tmp_path / "chain.npz",
                               sync_tolerance_s=0.05))
    assert (res.frames, res.skipped) == (SHORT - 1, 1), "the undecodable image is skipped, the run goes on"
    smap = SessionMap.load(res.map)
    # base -> camera_link -> optical composed, not just the last link
    np.testing.assert_allclose(smap.base_T_camera(0), s1.base_T_camera, atol=1e-9)
    assert len(smap) >= 3
    for row in range(len(smap)):  # odometry 30 ms after the image is the one paired with it, as live
        i = int(np.argmin(np.abs(s1.stamps - smap.stamps[row])))
        np.testing.assert_allclose(smap.pose(row), s1.odom_T_base[i], atol=1e-9)

    late = _rewrite(short_sessions[0], tmp_path / "late", odom_shift_s=0.08)
    res = run_bag(BagRunConfig(bag=late, out=tmp_path / "out2", model=shipped_model, save_map=tmp_path / "late.npz",
                               sync_tolerance_s=0.05, engine_preset="no_odometry"))
    assert all(SessionMap.load(res.map).pose(r) is None for r in range(len(SessionMap.load(res.map)))), \
        "odometry further than sync_tolerance_s from every image poses nothing (the node's rule)"


def test_prior_map_evaluation_finds_the_earlier_session_or_says_what_to_pass(
        short_sessions: tuple[Path, Path, Session], tmp_path: Path, shipped_model: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    s1_dir, s2_dir, _ = short_sessions
    prior = tmp_path / "s1.npz"
    assert main([str(s1_dir), "--out", str(tmp_path / "o1"), "--model", str(shipped_model), "--save-map", str(prior)]) == 0
    capsys.readouterr()
    assert main([str(s2_dir), "--out", str(tmp_path / "o2"), "--model", str(shipped_model), "--prior-map", str(prior)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("precision=")  # s1 found beside s2
    alone = tmp_path / "alone" / "s2"
    shutil.copytree(s2_dir, alone)
    assert main([str(alone), "--out", str(tmp_path / "o3"), "--model", str(shipped_model), "--prior-map", str(prior)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "ground truth of prior session(s) ['s1'] not found" in last and "--groundtruth" in last


def test_images_of_another_size_than_the_calibration_are_refused(short_sessions: tuple[Path, Path, Session],
                                                                  tmp_path: Path, shipped_model: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    bag = _rewrite(short_sessions[0], tmp_path / "wide", odom_shift_s=0.0, info_width=640)
    res = run_bag(BagRunConfig(bag=bag, out=tmp_path / "out", model=shipped_model))
    # the first image comes before any camera_info (as live); every later one is refused, saying why
    assert (res.frames, res.skipped) == (1, SHORT - 1)
    assert "image is 320x240 but camera_info is calibrated for 640x240" in caplog.text
