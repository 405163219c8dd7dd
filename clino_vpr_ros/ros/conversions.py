"""ROS message <-> numpy conversions (no cv_bridge: the ROS 2 build is not available everywhere).

Image payloads are decoded by the ROS-free :mod:`clino_vpr_ros.image_msg` (shared with the offline
bag runner, so a frame decodes identically live and from a bag). Every function validates the
message against what its fields promise (size, step, data length, encoding) and raises
``ValueError`` saying what was wrong and what was expected, so the node can log and skip it.
"""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from clino_vpr_ros import geometry, image_msg

#: the encodings accepted on ``image`` / ``depth`` and the largest image side (shared with the bag runner)
IMAGE_LAYOUTS, DEPTH_LAYOUTS, MAX_SIDE = image_msg.IMAGE_LAYOUTS, image_msg.DEPTH_LAYOUTS, image_msg.MAX_SIDE


def stamp_to_sec(stamp: Time) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(t: float) -> Time:
    """float seconds -> builtin_interfaces/Time (nanoseconds rounded, carried into seconds)."""
    sec = math.floor(t)
    nanosec = int(round((t - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return Time(sec=int(sec), nanosec=nanosec)


def image_to_numpy(msg: Image) -> tuple[np.ndarray, str]:
    """sensor_msgs/Image -> (uint8/uint16 (H, W, C) C-contiguous array, encoding).

    C is 1, 3 or 4 as the encoding says; 16-bit data is returned in native byte order; row padding
    (``step``) is dropped. Raises ValueError for an unknown encoding, a zero or absurd size, a step
    shorter than a row, or a data length other than step*height.
    """
    return image_msg.decode_image(msg)


def depth_to_numpy(msg: Image) -> np.ndarray:
    """Depth sensor_msgs/Image -> float32 (H, W) metres, NaN where the sensor gave no return.

    16UC1 / mono16 are millimetres (0 = no return); 32FC1 are metres (0, NaN, inf = no return).
    """
    return image_msg.decode_depth(msg)


def compressed_to_numpy(msg: CompressedImage) -> tuple[np.ndarray, str]:
    """sensor_msgs/CompressedImage (jpeg/png) -> (decoded (H, W, C) array, encoding).

    The encoding is what OpenCV decoded: ``bgr8``, ``bgra8``, ``mono8`` or ``mono16``.
    Raises ValueError for an unsupported format or data that does not decode.
    """
    return image_msg.decode_compressed(msg)


def camera_info_to_K(msg: CameraInfo) -> np.ndarray | None:
    """sensor_msgs/CameraInfo -> float64 (3, 3) intrinsic matrix, or None for an uncalibrated camera.

    ROS marks an uncalibrated camera with K all zeros; that is not an error. A K with non-positive
    focal lengths or a bottom row other than [0, 0, 1] is (ValueError).
    """
    return image_msg.intrinsics(msg.k)


def quaternion_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> float64 (3, 3) rotation; refuses a non-unit one as tf2 does
    (:func:`clino_vpr_ros.geometry.unit_quaternion_error`)."""
    return geometry.quaternion_to_matrix([x, y, z, w])


def matrix_to_quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    """float (3, 3) rotation -> unit quaternion (x, y, z, w) with w >= 0."""
    return geometry.matrix_to_quaternion(R)


def pose_to_matrix(position, orientation) -> np.ndarray:
    """geometry_msgs Point + Quaternion -> float64 (4, 4) homogeneous transform."""
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(orientation.x, orientation.y, orientation.z, orientation.w)
    T[:3, 3] = [position.x, position.y, position.z]
    if not np.all(np.isfinite(T)):
        raise ValueError(f"pose has non-finite values: {T[:3, 3].tolist()}")
    return T


def odometry_to_matrix(msg: Odometry) -> np.ndarray:
    """nav_msgs/Odometry -> float64 (4, 4) ``odom_T_base`` (child_frame_id pose in header.frame_id)."""
    return pose_to_matrix(msg.pose.pose.position, msg.pose.pose.orientation)


def xyzquat_to_matrix(values) -> np.ndarray:
    """[x, y, z, qx, qy, qz, qw] -> float64 (4, 4) transform (the ``base_T_camera`` parameter form)."""
    v = [float(a) for a in values]
    if len(v) != 7:
        raise ValueError(f"expected 7 numbers [x, y, z, qx, qy, qz, qw], got {len(v)}")
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(*v[3:])
    T[:3, 3] = v[:3]
    return T


def matrix_to_pose(T: np.ndarray, pose) -> None:
    """Fill a geometry_msgs/Pose in place from a (4, 4) transform."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"transform shape {T.shape}; expected (4, 4)")
    pose.position.x, pose.position.y, pose.position.z = (float(a) for a in T[:3, 3])
    (pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w) = matrix_to_quaternion(T[:3, :3])


def mask_to_image(mask: np.ndarray, stamp: Time, frame_id: str) -> Image:
    """Gate mask, float (h, w) in [0, 1] (or uint8), -> sensor_msgs/Image mono8 (0..255)."""
    mask = np.asarray(mask)
    mask = np.squeeze(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"gate mask shape {mask.shape}; expected (h, w)")
    if mask.dtype != np.uint8:
        mask = np.clip(np.nan_to_num(mask.astype(np.float32)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(mask.shape[0]), int(mask.shape[1])
    msg.encoding = "mono8"
    msg.is_bigendian = 0
    msg.step = msg.width
    msg.data = np.ascontiguousarray(mask).tobytes()
    return msg


def numpy_to_image(array: np.ndarray, encoding: str, stamp: Time | None = None, frame_id: str = "") -> Image:
    """(H, W, C) array -> sensor_msgs/Image (tightly packed, little-endian) in the given encoding.

    Used by tests, benches and the demo publisher; checks the array matches the encoding.
    """
    if encoding not in IMAGE_LAYOUTS and encoding not in DEPTH_LAYOUTS:
        raise ValueError(f"unsupported encoding {encoding!r}; expected one of {sorted(IMAGE_LAYOUTS | DEPTH_LAYOUTS)}")
    channels, dtype = (IMAGE_LAYOUTS | DEPTH_LAYOUTS)[encoding]
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] != channels or a.dtype != dtype:
        raise ValueError(f"array {a.shape} {a.dtype} does not match {encoding} ((H, W, {channels}) {dtype})")
    a = np.ascontiguousarray(a.astype(dtype.newbyteorder("<"), copy=False))
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(a.shape[1] * channels * dtype.itemsize)
    msg.data = a.tobytes()
    return msg
