"""A tiny ray-cast textured room for loop-closure tests (ground-truth poses and depth).

The room is a box [-H, H]^2 x [0, height] with a different random texture on each wall and the
floor; a pinhole camera on a robot base renders RGB and metric depth. Independent of
``clino_vpr_ros.synth`` so the verification tests pin down OpenCV behaviour on their own.
"""

from __future__ import annotations

import cv2
import numpy as np

# camera optical frame (z forward, x right, y down) in the base frame (x forward, z up)
BASE_T_CAMERA = np.array([[0.0, 0.0, 1.0, 0.2], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.2], [0.0, 0.0, 0.0, 1.0]])


def base_pose(x: float, y: float, yaw_deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:2, 3] = x, y
    return T


def _texture(rng: np.random.Generator, size: int = 1024) -> np.ndarray:
    tex = np.full((size, size), 128, np.uint8)
    for _ in range(600):
        colour = int(rng.integers(0, 256))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        if rng.random() < 0.5:
            cv2.circle(tex, (x, y), int(rng.integers(4, 30)), colour, -1)
        else:
            w, h = (int(v) for v in rng.integers(6, 50, 2))
            cv2.rectangle(tex, (x, y), (x + w, y + h), colour, -1)
    noise = rng.integers(-12, 13, tex.shape)
    return np.clip(tex.astype(int) + noise, 0, 255).astype(np.uint8)


class Room:
    def __init__(self, seed: int, half: float = 10.0, height: float = 6.0, width: int = 640, height_px: int = 480) -> None:
        rng = np.random.default_rng(seed)
        self.half, self.height = half, height
        self.textures = [_texture(rng) for _ in range(5)]  # +x, -x, +y, -y walls, floor
        f = 0.8 * width
        self.K = np.array([[f, 0, width / 2], [0, f, height_px / 2], [0, 0, 1.0]])
        self.size = (height_px, width)

    def render(self, world_T_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (H,W,3) RGB and float32 (H,W) depth (metres along the optical axis)."""
        h, w = self.size
        world_T_cam = world_T_base @ BASE_T_CAMERA
        u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        rays_cam = np.stack([(u - self.K[0, 2]) / self.K[0, 0], (v - self.K[1, 2]) / self.K[1, 1], np.ones_like(u)], -1)
        d = rays_cam @ world_T_cam[:3, :3].T
        o = world_T_cam[:3, 3]
        best_t = np.full((h, w), np.inf)
        gray = np.zeros((h, w), np.uint8)
        planes = [(0, self.half, (1, 2)), (0, -self.half, (1, 2)), (1, self.half, (0, 2)), (1, -self.half, (0, 2)), (2, 0.0, (0, 1))]
        for tex, (axis, value, uv_axes) in zip(self.textures, planes):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (value - o[axis]) / d[..., axis]
            hit = (t > 0) & (t < best_t)
            p = o + t[..., None] * d
            a, b = p[..., uv_axes[0]], p[..., uv_axes[1]]
            inside = (np.abs(a) <= self.half + 1e-6) & (b >= -self.half) & (b <= max(self.height, self.half))
            hit &= inside
            if axis != 2:
                hit &= (p[..., 2] >= 0) & (p[..., 2] <= self.height)
            tu = np.clip(((a + self.half) / (2 * self.half) * (tex.shape[1] - 1)).astype(int), 0, tex.shape[1] - 1)
            tv = np.clip(((b + self.half) / (2 * self.half) * (tex.shape[0] - 1)).astype(int), 0, tex.shape[0] - 1)
            gray[hit] = tex[tv[hit], tu[hit]]
            best_t[hit] = t[hit]
        depth = np.where(np.isfinite(best_t), best_t, np.nan).astype(np.float32)  # rays_cam z = 1 -> t is the depth
        rgb = np.repeat(gray[..., None], 3, axis=2)
        return rgb, depth


def thumbnail_descriptor(rgb: np.ndarray, size: tuple[int, int] = (16, 12)) -> np.ndarray:
    """A crude global descriptor (float32 (192,), unit norm): the zero-mean 16x12 gray thumbnail."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    thumb = cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    thumb -= thumb.mean()
    return (thumb / max(np.linalg.norm(thumb), 1e-6)).astype(np.float32)
