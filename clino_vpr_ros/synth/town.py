"""Procedural 2.5D towns: a grid of blocks of axis-aligned buildings, roads, sidewalks and trees.

Everything is a deterministic function of ``(seed, TownConfig)``. Geometry is stored as flat numpy
arrays (one row per box) so the renderer can ray-cast all of it with vectorised slab tests.

World frame: x east, y north, z up, metres; the ground is the plane z = 0. Roads run along the lines
``x = i * pitch`` and ``y = j * pitch`` (i, j = 0..n); block (i, j) fills the square between them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

#: semantic label ids written into every label image (uint8). ``void`` is never rendered.
LABELS: dict[str, int] = {
    "void": 0,
    "sky": 1,
    "building": 2,
    "road": 3,
    "sidewalk": 4,
    "vegetation": 5,
    "vehicle": 6,
    "pedestrian": 7,
    "sign": 8,
}

#: facade materials; the renderer modulates the style colour with the matching pattern
MATERIALS: tuple[str, ...] = ("plaster", "brick", "panel", "stripe")

NOISE_SIZE = 512  # side of the per-town random texture (cells); lookups wrap around


@dataclass(frozen=True)
class TownConfig:
    """Knobs of a procedural town.

    ``aliasing_fraction`` is the fraction of blocks that copy the facade style of another block
    (perceptual aliasing); every copy makes two blocks share a style, so the share of blocks with a
    non-unique style is at least this value.
    """

    blocks_x: int = 6
    blocks_y: int = 6
    block_size_m: float = 30.0  # building lot square incl. sidewalk
    road_width_m: float = 12.0  # carriageway, kerb to kerb
    sidewalk_m: float = 3.0
    min_height_m: float = 7.0
    max_height_m: float = 28.0
    aliasing_fraction: float = 0.4
    signs_per_building: tuple[int, int] = (0, 2)  # inclusive range
    tree_spacing_m: float = 9.0
    tree_probability: float = 0.65
    texture_cell_m: float = 0.3  # size of one facade detail cell (feature scale)

    def __post_init__(self) -> None:
        if self.blocks_x < 2 or self.blocks_y < 2:
            raise ValueError(f"TownConfig needs at least 2x2 blocks, got {self.blocks_x}x{self.blocks_y}")
        if not 0.0 <= self.aliasing_fraction <= 1.0:
            raise ValueError(f"aliasing_fraction must be in [0, 1], got {self.aliasing_fraction}")
        if self.road_width_m <= 0 or self.block_size_m <= 2 * self.sidewalk_m + 4:
            raise ValueError("block_size_m must exceed 2*sidewalk_m + 4 and road_width_m must be > 0")
        if not 0 < self.min_height_m <= self.max_height_m:
            raise ValueError("need 0 < min_height_m <= max_height_m")

    @property
    def pitch_m(self) -> float:
        """Distance between neighbouring road centre lines."""
        return self.block_size_m + self.road_width_m


@dataclass(frozen=True)
class FacadeStyles:
    """Per-style facade parameters, arrays indexed by style id (S,)."""

    base_rgb: np.ndarray  # (S,3) float32 in [0,1]
    trim_rgb: np.ndarray  # (S,3) float32 window frames / mortar
    glass_rgb: np.ndarray  # (S,3) float32
    bay_m: np.ndarray  # (S,) float32 horizontal window period
    floor_m: np.ndarray  # (S,) float32 vertical window period
    win_w: np.ndarray  # (S,) float32 window width as a fraction of the bay
    win_h: np.ndarray  # (S,) float32 window height as a fraction of the floor
    material: np.ndarray  # (S,) int32 index into MATERIALS
    noise_amp: np.ndarray  # (S,) float32 amplitude of the detail texture
    noise_offset: np.ndarray  # (S,2) int32 offset into the town noise texture


@dataclass(frozen=True)
class Town:
    """A generated town. Boxes are rows ``[x0, y0, z0, x1, y1, z1]`` in metres (float64).

    buildings: (B,6) boxes; building_style (B,) int32; building_block (B,) int32 block index.
    signs: (G,) rows of a structured description: sign_building (G,) int32, sign_face (G,) int32
      (0:-x 1:+x 2:-y 3:+y), sign_s (G,2) float32 along-wall extent, sign_z (G,2) float32, sign_rgb (G,3).
    trees: (T,3) float64 [x, y, canopy_radius]; block_style (NB,) int32 style per block.
    noise: (NOISE_SIZE, NOISE_SIZE) float32 in [0,1], the world-anchored detail texture.
    """

    seed: int
    cfg: TownConfig
    buildings: np.ndarray
    building_style: np.ndarray
    building_block: np.ndarray
    block_style: np.ndarray
    styles: FacadeStyles
    sign_building: np.ndarray
    sign_face: np.ndarray
    sign_s: np.ndarray
    sign_z: np.ndarray
    sign_rgb: np.ndarray
    trees: np.ndarray
    noise: np.ndarray

    @property
    def extent(self) -> tuple[float, float]:
        """(width, height) in metres of the road grid: x in [0, w], y in [0, h]."""
        return self.cfg.blocks_x * self.cfg.pitch_m, self.cfg.blocks_y * self.cfg.pitch_m

    def aliasing_fraction(self) -> float:
        """Fraction of blocks whose facade style is shared with at least one other block."""
        _, inverse, counts = np.unique(self.block_style, return_inverse=True, return_counts=True)
        return float(np.mean(counts[inverse] > 1))

    def block_of(self, i: int, j: int) -> int:
        """Flat block index of block column i (x) and row j (y)."""
        if not (0 <= i < self.cfg.blocks_x and 0 <= j < self.cfg.blocks_y):
            raise ValueError(f"block ({i}, {j}) outside the {self.cfg.blocks_x}x{self.cfg.blocks_y} town")
        return j * self.cfg.blocks_x + i


def _make_styles(rng: np.random.Generator, n: int) -> FacadeStyles:
    hue = rng.uniform(0, 1, n)
    sat = rng.uniform(0.15, 0.6, n)
    val = rng.uniform(0.45, 0.9, n)
    base = _hsv_to_rgb(hue, sat, val)
    trim = np.where(rng.uniform(size=(n, 1)) < 0.5, base * 0.45, np.clip(base * 0.3 + 0.65, 0, 1))
    glass = _hsv_to_rgb(rng.uniform(0.5, 0.7, n), rng.uniform(0.1, 0.4, n), rng.uniform(0.15, 0.45, n))
    return FacadeStyles(
        base_rgb=base.astype(np.float32),
        trim_rgb=trim.astype(np.float32),
        glass_rgb=glass.astype(np.float32),
        bay_m=rng.uniform(2.4, 4.5, n).astype(np.float32),
        floor_m=rng.uniform(2.9, 4.0, n).astype(np.float32),
        win_w=rng.uniform(0.3, 0.7, n).astype(np.float32),
        win_h=rng.uniform(0.4, 0.7, n).astype(np.float32),
        material=rng.integers(0, len(MATERIALS), n).astype(np.int32),
        noise_amp=rng.uniform(0.55, 0.9, n).astype(np.float32),
        noise_offset=rng.integers(0, NOISE_SIZE, (n, 2)).astype(np.int32),
    )


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs (N,) in [0,1], output (N,3) float64."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return table[i, np.arange(len(h))]


def _assign_block_styles(rng: np.random.Generator, n_blocks: int, fraction: float) -> np.ndarray:
    """Unique style per block, then a `fraction` of blocks copy the style of another random block."""
    style = np.arange(n_blocks, dtype=np.int32)
    n_copy = int(np.ceil(fraction * n_blocks / 2.0)) if fraction > 0 else 0
    # each copy makes a pair (source, copier) share a style; copying from distinct sources to distinct
    # copiers gives 2 * n_copy aliased blocks, i.e. the requested fraction
    order = rng.permutation(n_blocks)
    sources, copiers = order[:n_copy], order[n_copy : 2 * n_copy]
    style[copiers] = style[sources]
    return style


def _split(rng: np.random.Generator, lo: float, hi: float) -> list[tuple[float, float]]:
    """Split [lo, hi] into 1 or 2 lots, with an optional 2 m alley between them."""
    if rng.uniform() < 0.45:
        return [(lo, hi)]
    cut = rng.uniform(lo + 0.35 * (hi - lo), lo + 0.65 * (hi - lo))
    gap = 1.0 if rng.uniform() < 0.5 else 0.0
    return [(lo, cut - gap), (cut + gap, hi)]


def generate_town(seed: int, cfg: TownConfig = TownConfig()) -> Town:
    """Generate a town deterministically from ``seed``.

    Returns a :class:`Town` whose arrays are float64 boxes in metres (see class docstring).
    """
    rng = np.random.default_rng([int(seed), 0x70E5])
    n_blocks = cfg.blocks_x * cfg.blocks_y
    block_style = _assign_block_styles(rng, n_blocks, cfg.aliasing_fraction)
    styles = _make_styles(rng, n_blocks)
    pitch, half_road, sw = cfg.pitch_m, cfg.road_width_m / 2.0, cfg.sidewalk_m

    boxes, b_style, b_block = [], [], []
    trees = []
    for j in range(cfg.blocks_y):
        for i in range(cfg.blocks_x):
            blk = j * cfg.blocks_x + i
            x0, y0 = i * pitch + half_road, j * pitch + half_road
            x1, y1 = x0 + cfg.block_size_m, y0 + cfg.block_size_m
            for lx0, lx1 in _split(rng, x0 + sw, x1 - sw):
                for ly0, ly1 in _split(rng, y0 + sw, y1 - sw):
                    setback = rng.uniform(0, 1.2, 4) * (rng.uniform(size=4) < 0.4)
                    h = rng.uniform(cfg.min_height_m, cfg.max_height_m)
                    boxes.append([lx0 + setback[0], ly0 + setback[1], 0.0, lx1 - setback[2], ly1 - setback[3], h])
                    b_style.append(block_style[blk])
                    b_block.append(blk)
            trees += _block_trees(rng, cfg, x0, y0, x1, y1)

    buildings = np.asarray(boxes, dtype=np.float64)
    signs = _make_signs(rng, cfg, buildings)
    town = Town(
        seed=int(seed),
        cfg=cfg,
        buildings=buildings,
        building_style=np.asarray(b_style, dtype=np.int32),
        building_block=np.asarray(b_block, dtype=np.int32),
        block_style=block_style,
        styles=styles,
        trees=np.asarray(trees, dtype=np.float64).reshape(-1, 3),
        noise=rng.uniform(0, 1, (NOISE_SIZE, NOISE_SIZE)).astype(np.float32),
        **signs,
    )
    logger.debug("town %d: %d buildings, %d trees, %d signs", seed, len(buildings), len(town.trees), len(signs["sign_face"]))
    return town


def _block_trees(rng: np.random.Generator, cfg: TownConfig, x0: float, y0: float, x1: float, y1: float) -> list:
    """Trees on the sidewalk ring of a block, 1 m inside the kerb."""
    out = []
    inset = 1.0
    n = int(cfg.block_size_m // cfg.tree_spacing_m)
    ts = (np.arange(n) + 0.5) / n
    for t in ts:
        for x, y in ((x0 + t * (x1 - x0), y0 + inset), (x0 + t * (x1 - x0), y1 - inset),
                     (x0 + inset, y0 + t * (y1 - y0)), (x1 - inset, y0 + t * (y1 - y0))):
            if rng.uniform() < cfg.tree_probability:
                out.append([x + rng.normal(0, 0.3), y + rng.normal(0, 0.3), rng.uniform(1.3, 2.3)])
    return out


def _make_signs(rng: np.random.Generator, cfg: TownConfig, buildings: np.ndarray) -> dict[str, np.ndarray]:
    """Shop signs: saturated rectangles on ground-floor facades, unique per building."""
    b_idx, faces, s_rng, z_rng, rgb = [], [], [], [], []
    lo, hi = cfg.signs_per_building
    for b, (x0, y0, _, x1, y1, _) in enumerate(buildings):
        for _ in range(int(rng.integers(lo, hi + 1))):
            face = int(rng.integers(0, 4))
            length = (y1 - y0) if face < 2 else (x1 - x0)
            w = rng.uniform(2.0, min(6.0, 0.8 * length))
            s0 = rng.uniform(0.1 * length, length - w - 0.1 * length) if length - w > 0.2 * length else 0.1 * length
            z0 = rng.uniform(2.6, 3.6)
            b_idx.append(b)
            faces.append(face)
            s_rng.append([s0, s0 + w])
            z_rng.append([z0, z0 + rng.uniform(0.6, 1.1)])
            rgb.append(_hsv_to_rgb(rng.uniform(0, 1, 1), np.array([0.85]), np.array([0.95]))[0])
    return {
        "sign_building": np.asarray(b_idx, dtype=np.int32),
        "sign_face": np.asarray(faces, dtype=np.int32),
        "sign_s": np.asarray(s_rng, dtype=np.float32).reshape(-1, 2),
        "sign_z": np.asarray(z_rng, dtype=np.float32).reshape(-1, 2),
        "sign_rgb": np.asarray(rgb, dtype=np.float32).reshape(-1, 3),
    }
