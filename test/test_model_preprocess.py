"""The shared preprocessing policy: encodings, Bayer patterns, resize, and clear input errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from clino_vpr_ros.preprocess import SUPPORTED_ENCODINGS, to_model_batch, to_model_input

pytestmark = pytest.mark.runtime  # also run on the Humble-pinned versions (scripts/test_humble.sh)

SIZE = (112, 112)


def _scene(h: int = 96, w: int = 128) -> np.ndarray:
    """uint8 RGB with four flat colour quadrants (demosaicing is exact away from the borders)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (220, 30, 40)
    img[: h // 2, w // 2 :] = (20, 200, 60)
    img[h // 2 :, : w // 2] = (30, 40, 210)
    img[h // 2 :, w // 2 :] = (200, 190, 20)
    return img


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an RGB image with a Bayer pattern named as in ROS (e.g. 'rggb': R at (0,0))."""
    channel = {"r": 0, "g": 1, "b": 2}
    raw = np.zeros(rgb.shape[:2], np.uint8)
    for i, c in enumerate(pattern):
        dy, dx = divmod(i, 2)
        raw[dy::2, dx::2] = rgb[dy::2, dx::2, channel[c]]
    return raw


def test_output_is_contiguous_uint8_rgb_at_the_requested_size() -> None:
    out = to_model_input(_scene(), (64, 80))
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    batch = to_model_batch([_scene(), _scene(50, 60)], SIZE)
    assert batch.shape == (2, 112, 112, 3)


def test_colour_encodings_agree_with_rgb() -> None:
    rgb = _scene()
    want = to_model_input(rgb, SIZE, "rgb8")
    np.testing.assert_array_equal(to_model_input(np.ascontiguousarray(rgb[..., ::-1]), SIZE, "bgr8"), want)
    alpha = np.full(rgb.shape[:2] + (1,), 7, np.uint8)
    np.testing.assert_array_equal(to_model_input(np.concatenate([rgb, alpha], -1), SIZE, "rgba8"), want)
    bgra = np.concatenate([rgb[..., ::-1], alpha], -1)
    np.testing.assert_array_equal(to_model_input(bgra, SIZE, "bgra8"), want)


def test_mono_encodings() -> None:
    grey = np.tile(np.arange(128, dtype=np.uint8), (96, 1))
    out = to_model_input(grey, (96, 128), "mono8")
    assert (out == grey[..., None]).all()
    mono16 = grey.astype(np.uint16) * 257  # full-range 16-bit version of the same picture
    np.testing.assert_array_equal(to_model_input(mono16, (96, 128), "mono16"), out)
    assert to_model_input(np.full((4, 4), 65535, np.uint16), (4, 4), "mono16").min() == 255


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns_recover_the_colours(pattern: str) -> None:
    rgb = _scene()
    out = to_model_input(_mosaic(rgb, pattern), rgb.shape[:2], f"bayer_{pattern}8")
    # compare quadrant centres (bilinear demosaicing is exact on flat colour)
    for y, x in [(20, 30), (20, 100), (70, 30), (70, 100)]:
        np.testing.assert_allclose(out[y, x].astype(int), rgb[y, x].astype(int), atol=2)


def test_resize_policy_is_whole_frame_area_when_shrinking() -> None:
    img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = to_model_input(img, SIZE)
    np.testing.assert_array_equal(out, cv2.resize(img, (112, 112), interpolation=cv2.INTER_AREA))
    up = to_model_input(img[:50, :60], SIZE)
    np.testing.assert_array_equal(up, cv2.resize(img[:50, :60], (112, 112), interpolation=cv2.INTER_LINEAR))
    assert to_model_input(img[:112, :112], SIZE) is not None  # identical size passes through


def test_bad_inputs_name_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"'rgb8' expects a uint8 array of shape \(H,W,3\), got float32"):
        to_model_input(np.zeros((10, 10, 3), np.float32), SIZE)
    with pytest.raises(ValueError, match=r"'rgb8' expects a uint8 array of shape \(H,W,3\), got uint8 \(10, 10\)"):
        to_model_input(np.zeros((10, 10), np.uint8), SIZE)
    with pytest.raises(ValueError, match="'mono16' expects a uint16"):
        to_model_input(np.zeros((10, 10), np.uint8), SIZE, "mono16")
    with pytest.raises(ValueError, match="unknown image encoding 'yuv422'; supported: rgb8"):
        to_model_input(np.zeros((10, 10, 3), np.uint8), SIZE, "yuv422")
    with pytest.raises(ValueError, match="size must be"):
        to_model_input(np.zeros((10, 10, 3), np.uint8), (0, 10))
    assert "bayer_grbg8" in SUPPORTED_ENCODINGS and len(SUPPORTED_ENCODINGS) == 10
