"""camera_info distortion is used in verification (clino_vpr_ros/camera.py), and an image of another size
than the calibration is refused.

The views are real distorted renderings: the room is ray-cast through a pinhole camera with a wide
margin, then resampled at the pinhole position of every distorted pixel -- the image the same camera
with lens distortion D would take (OpenCV's projectPoints/fisheye model of D, checked below).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from _engine_scene import BASE_T_CAMERA, Room, base_pose, thumbnail_descriptor
from clino_vpr_ros.camera import CameraCalibration, calibration_from_fields, undistort_features
from clino_vpr_ros.engine import EngineConfig, FrameInput, LoopClosureEngine, camera_to_base
from clino_vpr_ros.verify import VerifyConfig, extract_features, to_gray, verify_pair

pytestmark = pytest.mark.runtime

W, H, PAD = 320, 240, 120
LENSES = {  # wide-angle lenses: up to ~40 px of distortion at the corners of a 320x240 image
    "plumb_bob": [-0.3, 0.09, 0.0005, -0.0005, 0.0],
    "rational_polynomial": [0.1, 0.01, 0.0, 0.0, 0.0, 0.4, 0.02, 0.0],
    "equidistant": [-0.05, 0.01, 0.0, 0.0],
}


@pytest.fixture(scope="module")
def room() -> Room:
    room = Room(0, width=W, height_px=H)
    room.K_image = room.K.copy()
    room.K = room.K + np.array([[0, 0, PAD], [0, 0, PAD], [0, 0, 0]])  # render a margin for the resampling
    room.size = (H + 2 * PAD, W + 2 * PAD)
    return room


def _distorted_view(room: Room, world_T_base: np.ndarray, camera: CameraCalibration) -> tuple[np.ndarray, np.ndarray]:
    rgb, depth = room.render(world_T_base)
    u, v = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    src = camera.undistort_points(np.c_[u.ravel(), v.ravel()]).reshape(H, W, 2) + PAD
    return (cv2.remap(rgb, src[..., 0], src[..., 1], cv2.INTER_LINEAR),
            cv2.remap(depth, src[..., 0], src[..., 1], cv2.INTER_NEAREST))


def _rot_err_deg(R: np.ndarray, R_true: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R.T @ R_true) - 1) / 2, -1, 1))))


@pytest.mark.parametrize("model", list(LENSES))
def test_undistortion_inverts_opencvs_lens_model(room: Room, model: str) -> None:
    camera = CameraCalibration(room.K_image, np.array(LENSES[model]), model, W, H)
    X = np.c_[np.random.default_rng(0).uniform(-3, 3, (200, 2)), np.random.default_rng(1).uniform(4, 10, 200)]
    if model == "equidistant":
        raw, _ = cv2.fisheye.projectPoints(X.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), camera.K, camera.D)
    else:
        raw, _ = cv2.projectPoints(X, np.zeros(3), np.zeros(3), camera.K, camera.D)
    ideal, _ = cv2.projectPoints(X, np.zeros(3), np.zeros(3), camera.K, None)
    assert np.abs(raw - ideal).max() > 10.0, "the lens distorts visibly"
    np.testing.assert_allclose(camera.undistort_points(raw.reshape(-1, 2)), ideal.reshape(-1, 2), atol=1e-3)


@pytest.mark.parametrize("model", list(LENSES))
def test_verification_recovers_the_pose_of_distorted_views_only_with_D(room: Room, model: str) -> None:
    camera = CameraCalibration(room.K_image, np.array(LENSES[model]), model, W, H)
    query, match = base_pose(0.0, 0.0, 0.0), base_pose(-1.0, 0.8, 12.0)
    truth = np.linalg.inv(query) @ match
    (rq, dq), (rm, dm) = _distorted_view(room, query, camera), _distorted_view(room, match, camera)
    cfg = VerifyConfig()
    fq, fm = extract_features(to_gray(rq), cfg, dq), extract_features(to_gray(rm), cfg, dm)

    def pose_error(q, m) -> tuple[float, float]:
        v = verify_pair(q, camera.K, m, camera.K, cfg)
        assert v.accepted and v.method == "pnp"
        T, _ = camera_to_base(v, BASE_T_CAMERA, BASE_T_CAMERA)
        return _rot_err_deg(T[:3, :3], truth[:3, :3]), float(np.linalg.norm(T[:3, 3] - truth[:3, 3]))

    rot, trans = pose_error(undistort_features(fq, camera), undistort_features(fm, camera))
    # (centimetres with OpenCV 5, about 0.13 m for the fisheye lens with Ubuntu 22.04's OpenCV 4.5)
    assert rot < 1.0 and trans < 0.2, (rot, trans)
    rot_raw, trans_raw = pose_error(fq, fm)  # D ignored: the lens bends every ray
    assert rot_raw > 5.0 and trans_raw > 1.0, (rot_raw, trans_raw)


def test_the_engine_stores_undistorted_keypoints_and_refuses_another_image_size(room: Room) -> None:
    camera = calibration_from_fields(room.K_image.ravel(), LENSES["plumb_bob"], "plumb_bob", W, H)
    rgb, depth = _distorted_view(room, base_pose(0.0, 0.0, 0.0), camera)
    engine = LoopClosureEngine(EngineConfig(), 192, "thumb", "room")
    assert engine.process(FrameInput(0.0, thumbnail_descriptor(rgb), rgb, None, np.eye(4), depth, camera)).is_keyframe
    stored = engine.snapshot().features(0)
    raw = extract_features(to_gray(rgb), engine.cfg.verify, depth)
    np.testing.assert_allclose(stored.keypoints, camera.undistort_points(raw.keypoints), atol=1e-4)
    np.testing.assert_allclose(engine.snapshot().intrinsics_of(0), camera.K)

    half = cv2.resize(rgb, (W // 2, H // 2))
    with pytest.raises(ValueError, match=r"image is 160x120 but camera_info is calibrated for 320x240"):
        engine.process(FrameInput(10.0, thumbnail_descriptor(half), half, None, np.eye(4), None, camera))
    with pytest.raises(ValueError, match="not both"):
        engine.process(FrameInput(20.0, thumbnail_descriptor(rgb), rgb, camera.K, np.eye(4), None, camera))


def test_calibration_fields_are_checked() -> None:
    K = [300.0, 0.0, 160.0, 0.0, 300.0, 120.0, 0.0, 0.0, 1.0]
    assert calibration_from_fields([0.0] * 9, [], "plumb_bob", W, H) is None  # uncalibrated camera
    assert not calibration_from_fields(K, [0.0] * 5, "", W, H).distorted  # zero D: any model name
    with pytest.raises(ValueError, match="unsupported distortion model 'kannala'"):
        calibration_from_fields(K, [0.1, 0.0, 0.0, 0.0], "kannala", W, H)
    with pytest.raises(ValueError, match="equidistant needs 4 distortion coefficients, got 5"):
        calibration_from_fields(K, [0.1, 0.0, 0.0, 0.0, 0.0], "equidistant", W, H)
