"""A camera's calibration as ``sensor_msgs/CameraInfo`` gives it: K, distortion D and its model, image size.

Verification works on an ideal pinhole camera with the same K: keypoints are detected on the raw
(distorted) image and then *undistorted* (:meth:`CameraCalibration.undistort_points`) before
they are stored, so essential-matrix / PnP / fundamental-matrix estimation and every map keep
one meaning for a keypoint: "pixel of the pinhole camera K". Maps therefore need no distortion
field, maps written before this (keypoints of rectified or undistorted-enough images) read the
same, and a map's keyframes verify against any later camera. Depth is sampled at the raw
keypoint, where the depth image (registered to the raw image) has it.

Supported models (``CameraInfo.distortion_model``): ``plumb_bob`` (k1 k2 p1 p2 k3),
``rational_polynomial`` (k1 k2 p1 p2 k3 k4 k5 k6), ``equidistant`` (fisheye k1 k2 k3 k4). An
all-zero or empty D means no distortion, whatever the model name.

ROS-free: built from the message's fields by :func:`calibration_from_fields`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from clino_vpr_ros.image_msg import intrinsics
from clino_vpr_ros.verify import LocalFeatures

#: distortion model -> the D lengths OpenCV takes for it
DISTORTION_MODELS: dict[str, tuple[int, ...]] = {
    "plumb_bob": (4, 5),
    "rational_polynomial": (8, 12, 14),
    "equidistant": (4,),
}
#: undistortion is solved iteratively; strong wide-angle distortion needs more than OpenCV's default 5 steps
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10)


@dataclass(frozen=True)
class CameraCalibration:
    """K float64 (3,3); D float64 (n,) (empty: none); distortion_model one of DISTORTION_MODELS
    (any name when D is all zero); width, height in pixels (0: unknown, no size check)."""

    K: np.ndarray
    D: np.ndarray
    distortion_model: str = "plumb_bob"
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        K = np.asarray(self.K, np.float64)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"K must be a finite (3,3) matrix with fx, fy > 0, got {K.tolist()}")
        D = np.asarray(self.D, np.float64).ravel()
        if not np.all(np.isfinite(D)):
            raise ValueError(f"distortion D has non-finite values: {D.tolist()}")
        if np.any(D):
            lengths = DISTORTION_MODELS.get(self.distortion_model)
            if lengths is None:
                raise ValueError(f"unsupported distortion model {self.distortion_model!r} with non-zero D; "
                                 f"supported: {', '.join(DISTORTION_MODELS)} (or rectify the images upstream)")
            if len(D) not in lengths:
                raise ValueError(f"{self.distortion_model} needs {' or '.join(map(str, lengths))} distortion "
                                 f"coefficients, got {len(D)}")
        if self.width < 0 or self.height < 0:
            raise ValueError(f"image size must be >= 0, got {self.width}x{self.height}")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "D", D)

    @property
    def distorted(self) -> bool:
        return bool(np.any(self.D))

    def check_image(self, height: int, width: int) -> None:
        """ValueError when an image of ``height`` x ``width`` is not the calibrated size (K would not apply)."""
        if self.width and self.height and (width, height) != (self.width, self.height):
            raise ValueError(f"image is {width}x{height} but camera_info is calibrated for {self.width}x{self.height}: "
                             "K and D do not apply; frame refused (publish camera_info for this resolution, "
                             "or check the image / camera_info topic pair)")

    def undistort_points(self, pts: np.ndarray) -> np.ndarray:
        """float32 (N,2) raw pixel (x, y) -> float32 (N,2) pixels of the pinhole camera K without distortion."""
        pts = np.asarray(pts, np.float64).reshape(-1, 1, 2)
        if not self.distorted or len(pts) == 0:
            return pts.reshape(-1, 2).astype(np.float32)
        if self.distortion_model == "equidistant":
            try:
                out = cv2.fisheye.undistortPoints(pts, self.K, self.D, R=np.eye(3), P=self.K, criteria=_UNDISTORT_CRITERIA)
            except (TypeError, cv2.error):  # OpenCV < 4.7 (Ubuntu 22.04): no criteria, its own 10 iterations
                out = self._refine_fisheye(pts, cv2.fisheye.undistortPoints(pts, self.K, self.D, R=np.eye(3), P=self.K))
        elif hasattr(cv2, "undistortPointsIter"):  # OpenCV 4.x spells the iterative variant so
            out = cv2.undistortPointsIter(pts, self.K, self.D, np.eye(3), self.K, _UNDISTORT_CRITERIA)
        else:  # OpenCV 5: criteria on undistortPoints itself
            out = cv2.undistortPoints(pts, self.K, self.D, R=np.eye(3), P=self.K, criteria=_UNDISTORT_CRITERIA)
        return out.reshape(-1, 2).astype(np.float32)

    def _refine_fisheye(self, raw: np.ndarray, undistorted: np.ndarray, steps: int = 20) -> np.ndarray:
        """Fixed-point refinement of fisheye undistortion where OpenCV stops early (4.5: 10 steps, about
        a pixel off at the border of a wide lens): move each estimate by its reprojection residual."""
        K_inv = np.linalg.inv(self.K)
        und = undistorted.reshape(-1, 2).astype(np.float64)
        for _ in range(steps):
            # contiguous: OpenCV 4.5's bindings misread a strided view
            normalised = np.ascontiguousarray((np.c_[und, np.ones(len(und))] @ K_inv.T)[:, :2]).reshape(-1, 1, 2)
            again = cv2.fisheye.distortPoints(normalised, self.K, self.D).reshape(-1, 2)
            und += raw.reshape(-1, 2) - again
        return und.reshape(-1, 1, 2)


def calibration_from_fields(k: Sequence[float], d: Sequence[float], distortion_model: str, width: int,
                            height: int) -> CameraCalibration | None:
    """``CameraInfo`` fields -> calibration, or None for an uncalibrated camera (K all zeros).

    Raises ValueError for an invalid K, an unsupported distortion model with non-zero D, or a D of
    the wrong length.
    """
    K = intrinsics(k)
    if K is None:
        return None
    return CameraCalibration(K, np.asarray(d, np.float64), str(distortion_model), int(width), int(height))


def undistort_features(features: LocalFeatures, camera: CameraCalibration | None) -> LocalFeatures:
    """``features`` with keypoints in pinhole pixels of ``camera.K`` (what maps store and verification uses);
    unchanged without a camera or distortion. Depths stay: they were sampled at the raw keypoints."""
    if camera is None or not camera.distorted:
        return features
    return replace(features, keypoints=camera.undistort_points(features.keypoints))
