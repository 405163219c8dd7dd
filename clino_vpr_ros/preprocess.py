"""The one image-preparation policy shared by training, evaluation and the robot runtime.

numpy + OpenCV only (no torch): this runs on the robot.

Policy (``to_model_input``):

1. Convert the camera encoding to 8-bit RGB: ``bgr8``/``rgba8``/``bgra8`` reorder or drop alpha,
   ``mono8`` is replicated to three channels, ``mono16`` is scaled linearly from the full 16-bit
   range (0..65535 -> 0..255, rounded; no per-image stretch, so exposure changes stay visible to
   the network as they would in an 8-bit camera), Bayer patterns are demosaiced with OpenCV
   (bilinear ``cv2.COLOR_Bayer*2RGB``, pattern named as in ROS ``sensor_msgs/image_encodings``).
2. Resize the *whole* frame to ``size`` = (height, width), no crop: a loop closure may hinge on
   anything in the field of view, so nothing is cut away; the aspect change is the same at training
   and at run time. The model says how (``resize``, in its metadata): ``"area"`` (models trained
   here) is ``cv2.INTER_AREA`` when shrinking (anti-aliased), ``cv2.INTER_LINEAR`` when either side
   grows; ``"pil_bilinear"`` (imported SALAD weights) is PIL's ``Image.resize(BILINEAR)``, the
   authors' evaluation resize (torchvision ``T.Resize`` on a PIL image), whose antialiased
   shrinking differs from OpenCV's by up to ~1e-3 in the descriptor.

The model itself normalises (mean/std per tower) inside the network / ONNX graph, so the output
here is plain uint8 RGB.
"""

from __future__ import annotations

import cv2
import numpy as np

from clino_vpr_ros.config import RESIZE_POLICIES

#: ROS sensor_msgs encodings accepted by to_model_input
SUPPORTED_ENCODINGS: tuple[str, ...] = (
    "rgb8",
    "bgr8",
    "rgba8",
    "bgra8",
    "mono8",
    "mono16",
    "bayer_rggb8",
    "bayer_bggr8",
    "bayer_gbrg8",
    "bayer_grbg8",
)

# OpenCV's pattern-named aliases (COLOR_BayerRGGB2RGB == COLOR_BayerBG2RGB, as cv_bridge maps them)
_BAYER_CODES = {
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}
_COLOR_CODES = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB}


def to_rgb8(image: np.ndarray, encoding: str = "rgb8") -> np.ndarray:
    """Convert a camera image to uint8 (H,W,3) RGB without resizing.

    Args:
        image: uint8 (H,W,3) for rgb8/bgr8, uint8 (H,W,4) for rgba8/bgra8, uint8 (H,W) or (H,W,1)
            for mono8 and bayer_*8, uint16 (H,W) or (H,W,1) for mono16.
        encoding: one of ``SUPPORTED_ENCODINGS``.
    Raises:
        ValueError: unknown encoding, or dtype/shape not what the encoding needs.
    """
    if encoding not in SUPPORTED_ENCODINGS:
        raise ValueError(f"unknown image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if encoding in _CHANNELS:
        c = _CHANNELS[encoding]
        _check(image, np.uint8, encoding, image.ndim == 3 and image.shape[2] == c, f"(H,W,{c})")
        rgb = image if encoding == "rgb8" else cv2.cvtColor(image, _COLOR_CODES[encoding])
    else:
        single = image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)
        dtype = np.uint16 if encoding == "mono16" else np.uint8
        _check(image, dtype, encoding, single, "(H,W) or (H,W,1)")
        plane = np.ascontiguousarray(image.reshape(image.shape[:2]))
        if encoding == "mono16":
            plane = cv2.convertScaleAbs(plane, alpha=255.0 / 65535.0)
        if encoding in _BAYER_CODES:
            rgb = cv2.cvtColor(plane, _BAYER_CODES[encoding])
        else:
            rgb = cv2.cvtColor(plane, cv2.COLOR_GRAY2RGB)
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise ValueError(f"image of shape {image.shape} is too small (need at least 2x2 pixels)")
    return rgb


def to_model_input(
    image: np.ndarray, size: tuple[int, int], encoding: str = "rgb8", resize: str = "area"
) -> np.ndarray:
    """Apply THE preprocessing policy (module docstring): encoding -> RGB, whole-frame resize.

    Args:
        image: camera image as described in :func:`to_rgb8`.
        size: (height, width) of the model input, e.g. ``ModelMetadata.input_size``.
        encoding: one of ``SUPPORTED_ENCODINGS``.
        resize: the model's resize policy, one of ``RESIZE_POLICIES`` (``ModelMetadata.resize``).
    Returns:
        uint8 (height, width, 3) RGB, C-contiguous.
    Raises:
        ValueError: bad size, unknown encoding, or dtype/shape not matching the encoding.
    """
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"size must be (height, width) positive integers, got {size!r}")
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {resize!r}; valid: {', '.join(RESIZE_POLICIES)}")
    out_h, out_w = int(size[0]), int(size[1])
    rgb = to_rgb8(image, encoding)
    h, w = rgb.shape[:2]
    if (h, w) == (out_h, out_w):
        return np.ascontiguousarray(rgb)
    if resize == "pil_bilinear":
        return _pil_bilinear(rgb, out_h, out_w)
    shrinking = out_h <= h and out_w <= w
    rgb = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.ascontiguousarray(rgb)


def to_model_batch(
    images: list[np.ndarray], size: tuple[int, int], encoding: str = "rgb8", resize: str = "area"
) -> np.ndarray:
    """:func:`to_model_input` over a list; returns uint8 (N, height, width, 3) RGB, C-contiguous."""
    if len(images) == 0:
        return np.zeros((0, int(size[0]), int(size[1]), 3), dtype=np.uint8)
    return np.stack([to_model_input(im, size, encoding, resize) for im in images])


def _pil_bilinear(rgb: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PIL ``Image.resize((w, h), BILINEAR)`` of uint8 (H,W,3): exactly what torchvision's
    ``T.Resize`` does to a PIL image (its support widens with the scale when shrinking)."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(rgb))  # uint8 (H,W,3) -> mode RGB
    return np.ascontiguousarray(np.asarray(pil.resize((out_w, out_h), Image.BILINEAR)))


def _check(image: np.ndarray, dtype: type, encoding: str, shape_ok: bool, expected_shape: str) -> None:
    if image.dtype != dtype or not shape_ok:
        raise ValueError(
            f"encoding {encoding!r} expects a {np.dtype(dtype).name} array of shape {expected_shape}, "
            f"got {image.dtype} {image.shape}"
        )
