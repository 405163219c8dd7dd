"""Decoding of image message payloads into numpy, shared by the ROS node and the offline bag runner.

ROS-free on purpose: functions read the message *fields* (``height``, ``width``, ``encoding``,
``step``, ``is_bigendian``, ``data``; ``format`` for compressed images), so they serve rclpy messages
and ``rosbags`` messages alike. Every function validates what the fields promise and raises
``ValueError`` saying what was wrong and what was expected, so callers can log and skip the message.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

#: encoding -> (channels, numpy dtype of one channel): the image encodings the pipeline accepts.
IMAGE_LAYOUTS: dict[str, tuple[int, np.dtype]] = {
    "rgb8": (3, np.dtype(np.uint8)),
    "bgr8": (3, np.dtype(np.uint8)),
    "rgba8": (4, np.dtype(np.uint8)),
    "bgra8": (4, np.dtype(np.uint8)),
    "mono8": (1, np.dtype(np.uint8)),
    "mono16": (1, np.dtype(np.uint16)),
    "bayer_rggb8": (1, np.dtype(np.uint8)),
    "bayer_bggr8": (1, np.dtype(np.uint8)),
    "bayer_gbrg8": (1, np.dtype(np.uint8)),
    "bayer_grbg8": (1, np.dtype(np.uint8)),
}

#: depth encodings: 16UC1 / mono16 in millimetres (OpenNI convention), 32FC1 in metres.
DEPTH_LAYOUTS: dict[str, tuple[int, np.dtype]] = {
    "16UC1": (1, np.dtype(np.uint16)),
    "mono16": (1, np.dtype(np.uint16)),
    "32FC1": (1, np.dtype(np.float32)),
}

#: largest image side accepted; a header claiming more is corrupt rather than a real camera.
MAX_SIDE = 16384


def unpack_raw(msg: Any, layouts: dict[str, tuple[int, np.dtype]] = IMAGE_LAYOUTS, what: str = "image") -> np.ndarray:
    """Raw image payload -> (H, W, C) array of the encoding's dtype, honouring step and endianness."""
    if msg.encoding not in layouts:
        raise ValueError(f"unsupported {what} encoding {msg.encoding!r}; expected one of {sorted(layouts)}")
    channels, dtype = layouts[msg.encoding]
    h, w = int(msg.height), int(msg.width)
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise ValueError(f"{what} size {w}x{h} invalid; expected 1..{MAX_SIDE} pixels per side")
    row_bytes = w * channels * dtype.itemsize
    step = int(msg.step)
    if step < row_bytes:
        raise ValueError(
            f"{what} step {step} < width*bytes_per_pixel {row_bytes} ({w}x{h} {msg.encoding}); "
            "step must be the row length in bytes including padding"
        )
    buf = np.frombuffer(msg.data, dtype=np.uint8)  # bytes / array.array / ndarray: zero-copy view
    if buf.size != step * h:
        raise ValueError(f"{what} data has {buf.size} bytes; expected step*height = {step}*{h} = {step * h}")
    rows = buf.reshape(h, step)[:, :row_bytes]  # drop per-row padding
    order = ">" if msg.is_bigendian else "<"
    pixels = np.ascontiguousarray(rows).view(dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype)
    return np.ascontiguousarray(pixels.reshape(h, w, channels).astype(dtype, copy=False))


def decode_image(msg: Any) -> tuple[np.ndarray, str]:
    """sensor_msgs/Image fields -> (uint8/uint16 (H, W, C) C-contiguous array, encoding)."""
    return unpack_raw(msg, IMAGE_LAYOUTS, "image"), msg.encoding


def decode_depth(msg: Any) -> np.ndarray:
    """Depth sensor_msgs/Image fields -> float32 (H, W) metres, NaN where the sensor gave no return."""
    raw = unpack_raw(msg, DEPTH_LAYOUTS, "depth image")[:, :, 0]
    depth = raw.astype(np.float32) * (1e-3 if raw.dtype == np.uint16 else 1.0)
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def decode_compressed(msg: Any) -> tuple[np.ndarray, str]:
    """sensor_msgs/CompressedImage fields (jpeg/png) -> (decoded (H, W, C) array, encoding).

    The encoding is what OpenCV decoded: ``bgr8``, ``bgra8``, ``mono8`` or ``mono16``.
    """
    fmt = str(msg.format).lower()
    if fmt and not any(k in fmt for k in ("jpeg", "jpg", "png")):
        raise ValueError(f"unsupported compressed format {msg.format!r}; expected jpeg or png")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ValueError("compressed image has no data")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ValueError(f"compressed image ({data.size} bytes, format {msg.format!r}) is corrupt: OpenCV could not decode it")
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if image.dtype == np.uint16 and channels == 1:
        return np.ascontiguousarray(image), "mono16"
    if image.dtype != np.uint8:
        image = (image >> 8).astype(np.uint8) if image.dtype == np.uint16 else image.astype(np.uint8)
    encoding = {1: "mono8", 3: "bgr8", 4: "bgra8"}.get(channels)
    if encoding is None:
        raise ValueError(f"compressed image decoded to {channels} channels; expected 1, 3 or 4")
    return np.ascontiguousarray(image), encoding


def intrinsics(k: Any) -> np.ndarray | None:
    """CameraInfo ``k`` (9 values, row-major) -> float64 (3, 3), or None for an uncalibrated camera.

    ROS marks an uncalibrated camera with K all zeros; that is not an error. A K with non-positive
    focal lengths or a bottom row other than [0, 0, 1] is.
    """
    K = np.asarray(k, dtype=np.float64).reshape(3, 3)
    if not np.any(K):
        return None
    if not (K[0, 0] > 0 and K[1, 1] > 0 and np.allclose(K[2], [0.0, 0.0, 1.0])):
        raise ValueError(f"camera_info K {K.ravel().tolist()} invalid; expected fx>0, fy>0 and last row [0, 0, 1]")
    return K
