"""Message <-> numpy conversions of the node: every encoding, padding, endianness, bad input."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from clino_vpr_ros.engine import LoopClosure
from clino_vpr_ros.preprocess import SUPPORTED_ENCODINGS, to_model_input
from clino_vpr_ros.ros import conversions as cv
from clino_vpr_ros.ros import messages

RNG = np.random.default_rng(0)


def _array_for(encoding: str, h: int = 6, w: int = 5) -> np.ndarray:
    channels, dtype = cv.IMAGE_LAYOUTS[encoding]
    high = 65535 if dtype == np.uint16 else 255
    return RNG.integers(0, high, size=(h, w, channels), endpoint=True).astype(dtype)


def test_node_accepts_exactly_the_encodings_preprocessing_supports() -> None:
    assert set(cv.IMAGE_LAYOUTS) == set(SUPPORTED_ENCODINGS)


@pytest.mark.parametrize("encoding", sorted(cv.IMAGE_LAYOUTS))
def test_every_encoding_round_trips_and_reaches_the_model_input(encoding: str) -> None:
    array = _array_for(encoding)
    out, enc = cv.image_to_numpy(cv.numpy_to_image(array, encoding))
    assert enc == encoding and out.dtype == array.dtype and np.array_equal(out, array)
    model_in = to_model_input(out, (8, 8), enc)
    assert model_in.shape == (8, 8, 3) and model_in.dtype == np.uint8


def test_row_padding_is_dropped() -> None:
    array = _array_for("bgr8", 4, 3)
    pad = 7
    rows = [np.concatenate([row.ravel(), np.full(pad, 0xEE, np.uint8)]) for row in array]
    msg = Image(height=4, width=3, encoding="bgr8", step=3 * 3 + pad, data=np.concatenate(rows).tobytes())
    out, _ = cv.image_to_numpy(msg)
    assert np.array_equal(out, array)


def test_mono16_big_endian_is_read_in_native_order() -> None:
    values = np.array([[1, 256], [4660, 65535]], dtype=np.uint16)
    msg = Image(height=2, width=2, encoding="mono16", is_bigendian=1, step=4, data=values.astype(">u2").tobytes())
    out, _ = cv.image_to_numpy(msg)
    assert out.dtype == np.uint16 and np.array_equal(out[:, :, 0], values)
    little = Image(height=2, width=2, encoding="mono16", is_bigendian=0, step=4, data=values.astype("<u2").tobytes())
    assert np.array_equal(cv.image_to_numpy(little)[0][:, :, 0], values)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"encoding": "yuv422"}, "unsupported image encoding 'yuv422'"),
        ({"height": 0, "step": 0, "data": b""}, "size 4x0 invalid"),
        ({"width": 0}, "size 0x3 invalid"),
        ({"step": 11}, "step 11 < width*bytes_per_pixel 12"),
        ({"data": bytes(35)}, "data has 35 bytes; expected step*height = 12*3 = 36"),
    ],
)
def test_bad_images_raise_a_clear_error(fields: dict, message: str) -> None:
    base = {"height": 3, "width": 4, "encoding": "rgb8", "step": 12, "data": bytes(36)}
    msg = Image(**{**base, **fields})
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("(", r"\(")):
        cv.image_to_numpy(msg)


def test_compressed_jpeg_and_png_decode_and_corrupt_data_is_refused() -> None:
    bgr = np.zeros((48, 64, 3), np.uint8)
    bgr[:, :32] = (255, 0, 0)  # blue left half: checks the channel order survives
    for fmt, ext in (("jpeg", ".jpg"), ("png", ".png")):
        ok, buf = cv2.imencode(ext, bgr)
        out, enc = cv.compressed_to_numpy(CompressedImage(format=fmt, data=buf.tobytes()))
        assert enc == "bgr8" and out.shape == (48, 64, 3)
        assert np.abs(out.astype(int) - bgr).mean() < 3
    ok, buf = cv2.imencode(".jpg", bgr)
    with pytest.raises(ValueError, match="corrupt"):
        cv.compressed_to_numpy(CompressedImage(format="jpeg", data=b"\xff\xd8garbage" + bytes(100)))
    with pytest.raises(ValueError, match="unsupported compressed format"):
        cv.compressed_to_numpy(CompressedImage(format="theora", data=buf.tobytes()))
    gray16 = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 13)
    ok, buf = cv2.imencode(".png", gray16)
    out, enc = cv.compressed_to_numpy(CompressedImage(format="png", data=buf.tobytes()))
    assert enc == "mono16" and np.array_equal(out[:, :, 0], gray16)


def test_camera_info_gives_K_or_none_when_uncalibrated() -> None:
    K = [500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0]
    assert np.allclose(cv.camera_info_to_K(CameraInfo(k=K)), np.reshape(K, (3, 3)))
    assert cv.camera_info_to_K(CameraInfo()) is None
    with pytest.raises(ValueError, match="fx>0"):
        cv.camera_info_to_K(CameraInfo(k=[-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]))


def test_odometry_pose_and_quaternions_round_trip() -> None:
    for _ in range(20):
        q = RNG.normal(size=4)
        q /= np.linalg.norm(q)
        R = cv.quaternion_to_matrix(*q)
        assert np.allclose(R @ R.T, np.eye(3)) and math.isclose(np.linalg.det(R), 1.0)
        assert np.allclose(cv.quaternion_to_matrix(*cv.matrix_to_quaternion(R)), R)
    msg = Odometry()
    msg.pose.pose.position.x, msg.pose.pose.position.y = 1.5, -2.0
    msg.pose.pose.orientation.z, msg.pose.pose.orientation.w = math.sin(0.25), math.cos(0.25)  # yaw 0.5 rad
    T = cv.odometry_to_matrix(msg)
    assert np.allclose(T[:3, 3], [1.5, -2.0, 0.0]) and math.isclose(math.atan2(T[1, 0], T[0, 0]), 0.5)
    msg.pose.pose.orientation.z = msg.pose.pose.orientation.w = 0.0
    with pytest.raises(ValueError, match="unit quaternion"):
        cv.odometry_to_matrix(msg)


def test_default_base_T_camera_is_the_optical_frame() -> None:
    from clino_vpr_ros.ros.params import OPTICAL_BASE_T_CAMERA

    R = cv.xyzquat_to_matrix(OPTICAL_BASE_T_CAMERA)[:3, :3]
    # camera z (forward) = base x, camera x (right) = -base y, camera y (down) = -base z
    assert np.allclose(R, [[0, 0, 1], [-1, 0, 0], [0, -1, 0]])


def test_stamps_round_trip_to_the_nanosecond() -> None:
    for t in (0.0, 1.999999999, 1700000000.123456789, 12.5):
        s = cv.sec_to_stamp(t)
        assert 0 <= s.nanosec < 1_000_000_000 and abs(cv.stamp_to_sec(s) - t) < 1e-6


def test_mask_and_depth_conversions() -> None:
    mask = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    msg = cv.mask_to_image(mask, cv.sec_to_stamp(3.0), "cam")
    assert msg.encoding == "mono8" and msg.step == 2 and list(msg.data) == [0, 128, 255, 64]
    depth_mm = np.array([[0, 1500]], np.uint16)
    depth = cv.depth_to_numpy(cv.numpy_to_image(depth_mm, "16UC1"))
    assert np.isnan(depth[0, 0]) and math.isclose(depth[0, 1], 1.5, rel_tol=1e-6)


def _closure(verified: bool) -> LoopClosure:
    T = np.eye(4)
    T[:3, 3] = [1.0, 2.0, 0.5]
    cov = np.diag([0.1, 0.2, 0.3, 0.01, 0.02, 0.03])
    return LoopClosure(105.25, 12.5, "b", "a", 42, 7, 0.91, verified, 120, T, True, cov, np.eye(4), np.eye(4))


def test_loop_closure_maps_to_an_odometry_edge_field_by_field() -> None:
    msg = messages.closure_to_odometry(_closure(True))
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (105, 250_000_000)
    assert msg.header.frame_id == "b/42" and msg.child_frame_id == "a/7"
    p = msg.pose.pose.position
    assert (p.x, p.y, p.z) == (1.0, 2.0, 0.5) and msg.pose.pose.orientation.w == 1.0
    assert np.allclose(np.reshape(msg.pose.covariance, (6, 6)), np.diag([0.1, 0.2, 0.3, 0.01, 0.02, 0.03]))
    assert (msg.twist.twist.linear.x, msg.twist.twist.linear.y, msg.twist.twist.linear.z) == (12.5, 0.91, 120.0)
    assert (msg.twist.twist.angular.x, msg.twist.twist.angular.y) == (1.0, 1.0)
    unverified = messages.closure_to_odometry(_closure(False))
    assert unverified.pose.covariance[0] == -1.0 and unverified.pose.pose.position.x == 0.0
    lio = messages.lio_sam_message(105.25, 12.5)
    assert list(lio.data) == [105.25, 12.5]
    # what a back end reads back is the closure that was published
    back = messages.closure_from_messages(lio.data, msg)
    c = _closure(True)
    assert (back["query_session"], back["query_id"], back["match_session"], back["match_id"]) == ("b", 42, "a", 7)
    assert (back["query_stamp"], back["match_stamp"], back["inliers"], back["verified"]) == (105.25, 12.5, 120, True)
    assert back["score"] == pytest.approx(0.91) and np.allclose(back["T_query_match"], c.T_query_match)
    assert np.allclose(back["covariance"], c.covariance)
    assert messages.closure_from_messages(lio.data, unverified)["T_query_match"] is None
    with pytest.raises(ValueError, match="different closures"):
        messages.closure_from_messages([1.0, 2.0], msg)


def test_markers_accumulate_and_separate_intra_and_inter_session() -> None:
    markers = messages.ClosureMarkers()
    c = _closure(True)
    assert markers.add(c)
    arr = markers.message("odom", cv.sec_to_stamp(1.0))
    by_ns = {m.ns: m for m in arr.markers}
    assert len(by_ns["inter_session"].points) == 2 and not by_ns["intra_session"].points
    assert by_ns["intra_session"].action == by_ns["intra_session"].DELETE


def test_quaternions_are_held_to_tf2s_unit_rule() -> None:
    # a publisher's float rounding passes (and is normalised away); what tf2 would drop is refused
    msg = Odometry()
    msg.pose.pose.orientation.w = 1.004  # |q|^2 = 1.008: within tf2's 0.01
    assert np.allclose(cv.odometry_to_matrix(msg)[:3, :3], np.eye(3))
    msg.pose.pose.orientation.w = 1.2
    with pytest.raises(ValueError, match="not a unit quaternion"):
        cv.odometry_to_matrix(msg)
    with pytest.raises(ValueError, match="not a unit quaternion"):
        cv.xyzquat_to_matrix([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9])
    for _ in range(10):  # the sign is fixed (w >= 0) without SciPy 1.11's canonical=True
        q = RNG.normal(size=4)
        q /= np.linalg.norm(q)
        back = cv.matrix_to_quaternion(cv.quaternion_to_matrix(*q))
        assert back[3] >= 0 and np.allclose(back, q if q[3] >= 0 else -q)
