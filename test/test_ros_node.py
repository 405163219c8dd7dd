"""The clino_vpr node over real DDS: the node runs in its own process exactly as on a robot
(``python -m clino_vpr_ros.ros.node --ros-args --params-file config/clino_vpr.yaml ...``); this
process publishes camera, camera_info and odometry with reliable QoS and listens to its outputs.

Each test module run uses its own DDS domain so concurrent runs on one host do not interfere.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from clino_vpr_ros.ros.conversions import matrix_to_quaternion
from clino_vpr_ros.ros.harness import NodeClient, NodeProcess, fresh_domain_id
from clino_vpr_ros.ros.messages import closure_from_messages
from clino_vpr_ros.session_map import SessionMap
from clino_vpr_ros.synth import CONDITIONS, SessionConfig, generate_session, generate_town, pose2d

RATE_HZ = 2.0
N_FRAMES = 128  # one 334 m lap is ~96 frames at 7 m/s and 2 Hz: the last ~30 frames revisit the start
DAY2_FRAMES = 40
RUN = uuid.uuid4().hex[:6]  # session ids unique to this run: nothing from another run can be mistaken for ours
LOOP, DAY1, DAY2 = f"loop-{RUN}", f"day1-{RUN}", f"day2-{RUN}"
DAY2_SHIFT_M = 1.0


@pytest.fixture(scope="module")
def model_path(shipped_model: Path) -> Path:
    """The trained shipped model, as a robot runs it (right pairs are a property of the trained encoder)."""
    return shipped_model


@pytest.fixture(scope="module")
def session():
    """A generated drive with a revisit: (session, list of RGB frames)."""
    town = generate_town(3)
    cfg = SessionConfig(n_frames=N_FRAMES, rate_hz=RATE_HZ, image_size=(240, 320), start_time_s=1000.0)
    s = generate_session(town, "a", 3, CONDITIONS["day"], cfg)
    return s, [s.render(i).rgb for i in range(N_FRAMES)]


@pytest.fixture(scope="module")
def second_day(session):
    """The first DAY2_FRAMES frames driven again a day later, 1 m further right: (odom poses, RGB frames)."""
    s, _ = session
    right = pose2d(0.0, -DAY2_SHIFT_M, 0.0)
    frames = [s.renderer.render(s.frames[i].world_T_base @ right @ s.base_T_camera, s.condition, s.frames[i].stamp).rgb
              for i in range(DAY2_FRAMES)]
    return [s.frames[i].odom_T_base @ right for i in range(DAY2_FRAMES)], frames


@pytest.fixture(scope="module")
def domain() -> int:
    return fresh_domain_id()


def _mount(session) -> list[float]:
    """The session's camera mount as the node's base_T_camera parameter [x, y, z, qx, qy, qz, qw]."""
    T = session.base_T_camera
    return [*map(float, T[:3, 3]), *matrix_to_quaternion(T[:3, :3])]


def _start(domain: int, tmp: Path, model: Path, name: str, **params) -> tuple[NodeProcess, NodeClient]:
    """Start a node for session ``name`` and a client that listens to that session only."""
    base = {"model_path": str(model), "session_id": name, "map_path": str(tmp / f"{name}.npz"),
            "diagnostics_period_s": 0.1, "log_throttle_s": 0.0}
    node = NodeProcess(domain, tmp / f"{name}.log", params={**base, **params}, remaps={"image": "/cam/image_raw"})
    client = NodeClient(domain, image_topic="/cam/image_raw", session_id=name, depth=30)
    try:
        client.wait_for_node(node, compressed=params.get("image_transport") == "compressed",
                             odom=params.get("use_odom", True))
    except (TimeoutError, RuntimeError):
        _stop(node, client, signal.SIGKILL)
        raise
    return node, client


def _stop(node: NodeProcess, client: NodeClient, sig: int = signal.SIGINT) -> int:
    client.close()
    return node.stop(sig)


def _replay(client: NodeClient, node: NodeProcess, session, frames, indices, stamp_offset: float = 0.0,
            odom: list | None = None) -> None:
    """Publish camera_info, odometry and image of each frame, waiting until the node handled it."""
    for i in indices:
        stamp = session.frames[i].stamp + stamp_offset
        client.publish_camera_info(session.K, session.image_size)
        client.publish_odom(stamp, session.frames[i].odom_T_base if odom is None else odom[i])
        before = client.handled()
        client.publish_image(stamp, cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR), "bgr8")
        client.wait_until(lambda: client.handled() > before, 30, f"frame {i} to be handled", node)


def _send(client: NodeClient, stamp: float, image: np.ndarray) -> None:
    client.publish_image(stamp, image, "bgr8")


def test_large_frames_arrive_bad_messages_are_skipped_and_the_node_keeps_going(domain, model_path, tmp_path):
    # default Fast DDS transports on purpose (see docs/ros_interface.md on LARGE_DATA); no odometry here:
    # keyframes come from the no_odometry preset's time trigger (every 5 s of stamps)
    node, client = _start(domain, tmp_path, model_path, f"sizes-{RUN}", use_odom=False, engine_preset="no_odometry")
    try:
        rng = np.random.default_rng(0)
        sent = 0
        for h, w in [(480, 640), (720, 1280), (480, 640), (720, 1280)]:
            _send(client, 10.0 + sent, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            sent += 1
            client.wait_until(lambda: client.counter("frames_processed") == sent, 30, f"{w}x{h} frame", node)
        bad = [
            Image(height=480, width=640, encoding="yuv_weird", step=1920, data=bytes(480 * 1920)),
            Image(height=0, width=640, encoding="bgr8", step=1920, data=b""),
            Image(height=480, width=640, encoding="bgr8", step=1000, data=bytes(480 * 1000)),
            Image(height=480, width=640, encoding="bgr8", step=1920, data=bytes(480 * 1920 - 7)),
        ]
        for msg in bad:
            client.publish_raw(msg)
            client.wait_until(lambda: client.handled() == sent + 1, 30, "a bad message to be handled", node)
            sent += 1
        assert client.counter("frames_rejected") == 4 and node.alive()
        _send(client, 20.0, rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
        client.wait_until(lambda: client.counter("frames_processed") == 5, 30, "a good frame after bad ones", node)
        d = client.last_diagnostics()
        assert d["frames_received"] == "9" and d["frames_dropped"] == "0" and d["processing_errors"] == "0"

        # run-time parameters go through validation; the gate mask can be switched on live
        refused, accepted = client.set_parameters({"sync_tolerance_s": 50.0, "publish_gate_mask": True})
        assert not refused.successful and "out of range" in refused.reason and accepted.successful
        _send(client, 30.0, rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
        client.wait_until(lambda: len(client.received.masks) == 1, 30, "a gate mask", node)
        mask = client.received.masks[0][1]
        assert mask.encoding == "mono8" and mask.header.stamp.sec == 30 and mask.height * mask.width > 0

        # a burst back to back, faster than inference: every frame that arrives is accounted for (processed
        # or dropped by the drop-oldest queue), nothing piles up, the node keeps going. Which frames DDS
        # and the queue drop depends on timing; the queue itself is tested deterministically in test_sync.py
        burst = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(3)]
        client.wait_drained(node)
        received0 = client.counter("frames_received")
        for k in range(30):  # stamps 1 s apart: every frame encoded, every 5th a keyframe (local features)
            _send(client, 100.0 + k, burst[k % 3])
        client.wait_drained(node, timeout=60, quiet_s=1.0)
        assert client.counter("frames_received") > received0 and node.alive()
        assert client.handled() == client.counter("frames_received")  # every received frame handled

        assert client.counter("engine_keyframes") >= 1
        reply = client.call("/clino_vpr/reset")
        assert reply.success
        client.wait_until(lambda: client.counter("engine_keyframes") == 0, 10, "the reset to show", node)
        log = node.log_text()
        for reason in ("unsupported image encoding 'yuv_weird'", "size 640x0 invalid", "step 1000 < width",
                       "data has 921593 bytes"):
            assert reason in log, reason
    finally:
        assert _stop(node, client) == 0


def test_compressed_transport_skips_corrupt_jpeg(domain, model_path, tmp_path):
    node, client = _start(domain, tmp_path, model_path, f"jpeg-{RUN}", image_transport="compressed", use_odom=False)
    try:
        frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        good = CompressedImage(format="jpeg", data=cv2.imencode(".jpg", frame)[1].tobytes())
        garbage = np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes()
        corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0" + garbage)
        # a frame of another size than the calibration: K and D would not apply, so it is refused
        small = CompressedImage(format="jpeg", data=cv2.imencode(".jpg", frame[::2, ::2])[1].tobytes())
        client.publish_camera_info(np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]]), (480, 640))
        client.wait_until(lambda: client.last_diagnostics().get("camera_info", "").startswith("calibrated 640x480"),
                          30, "the calibration to arrive", node)
        for i, msg in enumerate([good, corrupt, good, small]):
            msg.header.stamp.sec = 100 + 10 * i
            client.publish_raw(msg)
            client.wait_until(lambda: client.handled() == i + 1, 30, f"compressed message {i}", node)
        assert client.counter("frames_processed") == 2 and client.counter("frames_rejected") == 2
        log = node.log_text()
        assert "corrupt" in log and "image is 320x240 but camera_info is calibrated for 640x480" in log and node.alive()
    finally:
        assert _stop(node, client) == 0


def _frame_of(session, t: float, offset: float = 0.0) -> int:
    return int(np.argmin(np.abs(session.stamps + offset - t)))


def _is_true_pair(session, q: int, m: int, radius_m: float = 12.0) -> bool:
    Tq, Tm = session.frames[q].world_T_base, session.frames[m].world_T_base
    yaw = np.arctan2(Tq[1, 0], Tq[0, 0]) - np.arctan2(Tm[1, 0], Tm[0, 0])
    yaw = abs((yaw + np.pi) % (2 * np.pi) - np.pi)
    return np.linalg.norm(Tq[:2, 3] - Tm[:2, 3]) <= radius_m and yaw <= np.radians(45)


def _marker_lines(client: NodeClient) -> int:
    """Lines in the newest (latched, complete) loop_closure_markers array."""
    if not client.received.markers:
        return 0
    return sum(len(m.points) for m in client.received.markers[-1].markers) // 2


def test_revisit_yields_right_loop_closures_in_lio_sam_and_odometry_form(domain, model_path, session, tmp_path):
    s, frames = session
    node, client = _start(domain, tmp_path, model_path, LOOP, autosave_period_s=2.0, base_T_camera=_mount(s))
    try:
        _replay(client, node, s, frames, range(N_FRAMES))
        assert "autosaved" in node.log_text() and (tmp_path / f"{LOOP}.npz").exists()  # before any shutdown save
        client.wait_for_results(node)
        pairs = client.closure_pairs()
        lio = [data for _, data in client.received.lio]
        assert len(pairs) >= 1 and len(lio) >= 1, "the drive revisits its start more than 30 s later"
        assert all(len(d) == 2 and d[0] - d[1] >= 30.0 for d in lio)  # LIO-SAM: [t_query, t_match], >= 30 s apart
        assert sum(data is not None for data, _ in pairs) == len(lio), "every LIO-SAM message is one of the closures"
        for data, odom in pairs:
            c = closure_from_messages(data, odom)  # raises unless both messages describe one closure
            assert c["query_session"] == c["match_session"] == LOOP and c["verified"] and c["inliers"] > 0
            assert c["covariance"] is not None  # verified closures only: a real covariance
        false = [(q, m) for q, m in ((_frame_of(s, c["query_stamp"]), _frame_of(s, c["match_stamp"]))
                                     for c in (closure_from_messages(d, e) for d, e in pairs))
                 if not _is_true_pair(s, q, m)]
        assert not false, f"false closures (query frame, match frame): {false}"
        # RViz: the latched array holds one line per closure between posed keyframes
        client.wait_until(lambda: _marker_lines(client) >= 1, 10, "closure markers", node)
        assert _marker_lines(client) <= len(pairs)
    finally:
        assert _stop(node, client) == 0


def test_saved_map_gives_inter_session_closures_after_restart_and_sigterm_saves(domain, model_path, session,
                                                                              second_day, tmp_path):
    s, frames = session
    odom2, frames2 = second_day
    first = range(DAY2_FRAMES)
    node, client = _start(domain, tmp_path, model_path, DAY1, base_T_camera=_mount(s))
    try:
        _replay(client, node, s, frames, first)
        reply = client.call("/clino_vpr/save_map")
        assert reply.success and str(tmp_path / f"{DAY1}.npz") in reply.message
        n_saved = client.counter("engine_keyframes")
    finally:
        assert _stop(node, client, signal.SIGINT) == 0
    saved = SessionMap.load(tmp_path / f"{DAY1}.npz")
    assert len(saved) == n_saved >= 10 and saved.session_ids == [DAY1]

    # day 2: the same street a day later, against day 1's map
    node, client = _start(domain, tmp_path, model_path, DAY2, prior_maps=[str(tmp_path / f"{DAY1}.npz")],
                          base_T_camera=_mount(s))
    try:
        assert client.counter("engine_prior_keyframes") == n_saved
        _replay(client, node, s, frames2, first, stamp_offset=86400.0, odom=odom2)
        client.wait_for_results(node)
        closures = [msg for _, msg in client.received.closures]
        assert closures, "no inter-session closure driving the mapped street again"
        # LIO-SAM would put yesterday's stamp on its first keyframe: inter-session closures never reach it
        assert client.received.lio == [] and client.counter("lio_sam_refused") >= len(closures)
        for msg in closures:
            c = closure_from_messages(None, msg)
            assert (c["query_session"], c["match_session"]) == (DAY2, DAY1) and c["covariance"] is not None
            assert c["match_stamp"] == pytest.approx(saved.stamps[list(saved.ids).index(c["match_id"])])
            assert _is_true_pair(s, _frame_of(s, c["query_stamp"], 86400.0), _frame_of(s, c["match_stamp"]))
        n_day2 = client.counter("engine_keyframes")
    finally:
        client.close()
        assert node.stop(signal.SIGTERM) == 0  # SIGTERM (systemd, docker stop): save and exit cleanly
    day2 = SessionMap.load(tmp_path / f"{DAY2}.npz")
    assert len(day2) == n_day2 > 0 and "saved" in node.log_text()


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"image_qos_depth": 0}, "image_qos_depth out of range"),
        ({"engine_preset": "fastest"}, "unknown engine preset 'fastest'"),
        ({"model_path": "/nonexistent/model.onnx"}, "model /nonexistent/model.onnx not found"),
        ({"base_T_camera": [0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.6]}, "not a unit quaternion"),
        ({"providers": ["NoSuchExecutionProvider"]}, "unknown execution provider 'NoSuchExecutionProvider'"),
    ],
)
def test_bad_start_up_parameters_stop_the_node_with_the_reason(domain, model_path, tmp_path, params, reason):
    base = {"model_path": str(model_path), "session_id": f"bad-{RUN}", "map_path": str(tmp_path / "bad.npz")}
    node = NodeProcess(domain, tmp_path / "bad.log", params={**base, **params})
    assert node.wait(60) == 2
    assert "cannot start" in node.log_text() and reason in node.log_text()


def _saved_map(path: Path, session: str, n: int) -> bytes:
    from clino_vpr_ros.session_map import SessionMapBuilder

    b = SessionMapBuilder(session, "fp", 4)
    for i in range(n):
        b.append(i, float(i), np.eye(4, dtype=np.float32)[i % 4], np.eye(4), None, None)
    return b.snapshot().save(path).read_bytes()


def test_a_restart_on_an_existing_map_path_refuses_and_keeps_yesterdays_map(domain, model_path, tmp_path):
    # a robot restarted with a fixed map_path, or map_path set to the map it also loads as a prior
    yesterday = tmp_path / "yesterday.npz"
    before = _saved_map(yesterday, f"yesterday-{RUN}", 7)
    base = {"model_path": str(model_path), "session_id": f"today-{RUN}", "map_path": str(yesterday)}
    for extra in ({}, {"prior_maps": [str(yesterday)]}):
        node = NodeProcess(domain, tmp_path / "restart.log", params={**base, **extra})
        assert node.wait(60) == 2
        log = node.log_text()
        assert "cannot start" in log and str(yesterday) in log, log
        assert f"'yesterday-{RUN}'" in log and "7 keyframes" in log and "prior_maps" in log, log
        assert yesterday.read_bytes() == before


def test_a_session_without_keyframes_leaves_no_map(domain, model_path, tmp_path):
    name = f"empty-{RUN}"
    node, client = _start(domain, tmp_path, model_path, name)
    assert _stop(node, client) == 0
    assert not (tmp_path / f"{name}.npz").exists() and "no keyframes, no map written" in node.log_text()


def test_help_prints_usage_and_exits_without_a_node_or_a_map(tmp_path):
    import os
    import subprocess
    import sys

    from clino_vpr_ros.ros import params

    ros_home = tmp_path / "ros_home"
    env = dict(os.environ, ROS_HOME=str(ros_home), HOME=str(tmp_path))
    for flag in ("--help", "-h"):
        proc = subprocess.run([sys.executable, "-m", "clino_vpr_ros.ros.node", flag], capture_output=True, text=True,
                              timeout=120, env=env, cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 0, proc.stderr
        for spec in params.PARAMS:  # every parameter, with its description
            assert f"  {spec.name} (" in proc.stdout and spec.description[:30] in proc.stdout, spec.name
        assert "-r image:=" in proc.stdout and "loop_closure_detection" in proc.stdout and "~/save_map" in proc.stdout
    assert not ros_home.exists() and not list(tmp_path.rglob("*.npz")), "--help must not start a node or write a map"


def _call(client: NodeClient, srv_type, service: str, request, timeout: float = 10.0):
    cli = client.node.create_client(srv_type, service)
    try:
        assert cli.wait_for_service(timeout_sec=timeout), f"{service} not available"
        future = cli.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert future.done(), f"{service} did not answer"
        return future.result()
    finally:
        client.node.destroy_client(cli)


def test_every_declared_parameter_has_a_value_of_its_type(domain, model_path, tmp_path):
    # providers as the YAML and the docs write them (onnxruntime's names); prior_maps left at []
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import GetParameters, ListParameters

    from clino_vpr_ros.ros import params

    name = f"params-{RUN}"
    node, client = _start(domain, tmp_path, model_path, name, providers=["CPUExecutionProvider"])
    try:
        listed = _call(client, ListParameters, "/clino_vpr/list_parameters", ListParameters.Request()).result.names
        assert set(params.SPECS) <= set(listed)
        names = list(params.SPECS)
        values = _call(client, GetParameters, "/clino_vpr/get_parameters", GetParameters.Request(names=names)).values
        assert len(values) == len(names), "a batched get_parameters must return every parameter"
        expected = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                    float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
                    "str[]": ParameterType.PARAMETER_STRING_ARRAY, "float[]": ParameterType.PARAMETER_DOUBLE_ARRAY}
        for n, v in zip(names, values):
            assert v.type == expected[params.SPECS[n].type], f"{n}: type {v.type}"
        by_name = dict(zip(names, values))
        assert list(by_name["providers"].string_array_value) == ["CPUExecutionProvider"]
        assert list(by_name["prior_maps"].string_array_value) == []
        assert by_name["session_id"].string_value == name
    finally:
        assert _stop(node, client) == 0
