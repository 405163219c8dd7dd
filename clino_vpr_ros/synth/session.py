"""Driving sessions through a town: revisit routes, drifting odometry, ground-truth loop pairs.

A session drives counter-clockwise laps around a rectangle of blocks that always contains the
town's central block, so every session revisits its own places (lap k+1 passes lap k's places after a
full lap) and any two sessions of one town share streets driven in the same direction. Each lap uses
a different lateral offset (lane) and its own smooth weave, giving the viewpoint change of a revisit.

Frames: ``world`` (town, z up), ``odom`` (the session's odometry frame, ``world_T_odom`` known),
``base_link`` (x forward, z up, on the ground), camera optical frame (z forward, x right, y down).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from clino_vpr_ros.synth.conditions import Condition
from clino_vpr_ros.synth.render import Renderer, RenderOutput
from clino_vpr_ros.synth.town import Town

logger = logging.getLogger(__name__)

#: optical frame axes expressed in base_link: x_cam = -y_base, y_cam = -z_base, z_cam = x_base
BASE_R_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class SessionConfig:
    """Route, timing, camera mount and odometry noise of one session.

    route: one of ROUTES ("loop": laps around a rectangle containing the central block).
    lane_offset_m: lateral offset of the first lap from the road centre line (right of it).
    revisit_lateral_offset_m: extra lateral offset of every odd lap (>= 2 m: the revisit viewpoint change).
    heading_jitter_deg: peak heading deviation of each lap's weave (two laps differ by up to twice this).
    odom_offset: (dx_m, dy_m, dyaw_deg) of the odometry frame in the world: world_T_odom.
    odom_scale_error: multiplicative bias on travelled distance; odom_yaw_bias_deg_per_m: heading bias;
    odom_trans_noise / odom_yaw_noise_deg: random-walk std per sqrt(metre).
    """

    n_frames: int = 240
    rate_hz: float = 5.0
    speed_mps: float = 7.0
    route: str = "loop"
    lane_offset_m: float = 1.5
    revisit_lateral_offset_m: float = 2.5
    heading_jitter_deg: float = 7.0
    weave_period_m: float = 30.0
    corner_radius_m: float = 7.0
    camera_height_m: float = 1.6
    camera_forward_m: float = 0.3
    start_time_s: float = 0.0  # stamp of the first frame (seconds; e.g. a day apart for two sessions)
    image_size: tuple[int, int] = (224, 224)  # (height, width)
    hfov_deg: float = 90.0
    odom_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    odom_scale_error: float = 0.01
    odom_yaw_bias_deg_per_m: float = 0.02
    odom_trans_noise: float = 0.01
    odom_yaw_noise_deg: float = 0.05

    def __post_init__(self) -> None:
        if self.n_frames < 2 or self.rate_hz <= 0 or self.speed_mps <= 0:
            raise ValueError("need n_frames >= 2, rate_hz > 0 and speed_mps > 0")
        if self.route not in ROUTES:
            raise ValueError(f"unknown route {self.route!r}; valid: {', '.join(ROUTES)}")
        if abs(self.lane_offset_m) + abs(self.revisit_lateral_offset_m) >= self.corner_radius_m:
            raise ValueError("lane_offset_m + revisit_lateral_offset_m must stay inside corner_radius_m")
        if not 0 <= self.heading_jitter_deg < 45:
            raise ValueError(f"heading_jitter_deg must be in [0, 45), got {self.heading_jitter_deg}")


@dataclass(frozen=True)
class SessionFrame:
    """stamp: seconds; world_T_base, odom_T_base: (4,4) float64."""

    stamp: float
    world_T_base: np.ndarray
    odom_T_base: np.ndarray


@dataclass
class Session:
    """A generated session. Frames are poses only; images are rendered lazily by :meth:`render`."""

    town: Town
    session_id: str
    seed: int
    condition: Condition
    cfg: SessionConfig
    frames: list[SessionFrame]
    base_T_camera: np.ndarray
    world_T_odom: np.ndarray
    route_rect: tuple[int, int, int, int]  # block range (i0, j0, i1, j1), exclusive ends
    _renderer: Renderer | None = field(default=None, repr=False)

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            self._renderer = Renderer(self.town, self.cfg.image_size, self.cfg.hfov_deg)
        return self._renderer

    @property
    def K(self) -> np.ndarray:
        """(3,3) float64 camera intrinsics."""
        return self.renderer.K

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) pixels."""
        return self.cfg.image_size

    @property
    def stamps(self) -> np.ndarray:
        """(N,) float64 seconds."""
        return np.array([f.stamp for f in self.frames])

    @property
    def world_T_base(self) -> np.ndarray:
        """(N,4,4) float64 ground-truth base poses."""
        return np.stack([f.world_T_base for f in self.frames])

    @property
    def odom_T_base(self) -> np.ndarray:
        """(N,4,4) float64 drifting odometry poses."""
        return np.stack([f.odom_T_base for f in self.frames])

    def world_T_camera(self, i: int) -> np.ndarray:
        """(4,4) float64 optical-frame pose of frame i."""
        return self.frames[i].world_T_base @ self.base_T_camera

    def render(self, i: int, condition: Condition | None = None) -> RenderOutput:
        """Render frame i (RGB, depth, labels) at the frame's stamp, under the session's condition
        unless another ``condition`` is given (same place, other visit)."""
        if not 0 <= i < len(self.frames):
            raise ValueError(f"frame index {i} out of range [0, {len(self.frames)})")
        cond = self.condition if condition is None else condition
        return self.renderer.render(self.world_T_camera(i), cond, self.frames[i].stamp)

    def gt_loop_pairs(self, radius_m: float = 8.0, max_yaw_deg: float = 30.0, min_gap_s: float = 20.0) -> np.ndarray:
        """Ground-truth loop pairs within this session: (P,2) int64 [query, match], match earlier by >= min_gap_s,
        base positions within radius_m and headings within max_yaw_deg."""
        return _pairs(self.world_T_base, self.stamps, self.world_T_base, self.stamps, radius_m, max_yaw_deg, min_gap_s)


def gt_cross_session_pairs(query: Session, database: Session, radius_m: float = 8.0,
                           max_yaw_deg: float = 30.0) -> np.ndarray:
    """Inter-session ground truth: (P,2) int64 [query frame, database frame] within radius and heading."""
    if query.town.seed != database.town.seed:
        raise ValueError("sessions come from different towns; no shared places")
    return _pairs(query.world_T_base, None, database.world_T_base, None, radius_m, max_yaw_deg, 0.0)


def _pairs(q: np.ndarray, q_stamps: np.ndarray | None, d: np.ndarray, d_stamps: np.ndarray | None,
           radius_m: float, max_yaw_deg: float, min_gap_s: float) -> np.ndarray:
    dist = np.linalg.norm(q[:, None, :2, 3] - d[None, :, :2, 3], axis=2)
    yq, yd = np.arctan2(q[:, 1, 0], q[:, 0, 0]), np.arctan2(d[:, 1, 0], d[:, 0, 0])
    dyaw = np.abs((yq[:, None] - yd[None] + np.pi) % (2 * np.pi) - np.pi)
    ok = (dist <= radius_m) & (dyaw <= math.radians(max_yaw_deg))
    if q_stamps is not None and d_stamps is not None:
        ok &= (q_stamps[:, None] - d_stamps[None]) >= min_gap_s
    return np.argwhere(ok).astype(np.int64).reshape(-1, 2)


# ---------------------------------------------------------------------- geometry helpers
def pose2d(x: float, y: float, yaw: float, z: float = 0.0) -> np.ndarray:
    """(4,4) float64 transform: rotation yaw (rad) about z, translation (x, y, z)."""
    c, s = math.cos(yaw), math.sin(yaw)
    t = np.eye(4)
    t[:2, :2] = [[c, -s], [s, c]]
    t[:3, 3] = (x, y, z)
    return t


def make_base_T_camera(height_m: float = 1.6, forward_m: float = 0.3) -> np.ndarray:
    """(4,4) optical frame in base_link: forward_m ahead, height_m up, looking along base x."""
    t = np.eye(4)
    t[:3, :3] = BASE_R_OPTICAL
    t[:3, 3] = (forward_m, 0.0, height_m)
    return t


def _rounded_rect(x0: float, y0: float, x1: float, y1: float, r: float, step: float = 0.1) -> np.ndarray:
    """Counter-clockwise rounded rectangle polyline (M,2), starting mid south edge, closed (last != first)."""
    pts = []
    corners = [((x1 - r, y0 + r), -math.pi / 2), ((x1 - r, y1 - r), 0.0), ((x0 + r, y1 - r), math.pi / 2),
               ((x0 + r, y0 + r), math.pi)]
    start = ((x0 + x1) / 2, y0)
    seg_starts = [start]
    for (cx, cy), a0 in corners:
        seg_starts.append((cx + r * math.cos(a0), cy + r * math.sin(a0)))
        n = max(int(r * math.pi / 2 / step), 2)
        for a in np.linspace(a0, a0 + math.pi / 2, n, endpoint=False):
            pts.append(("arc", cx + r * math.cos(a), cy + r * math.sin(a)))
        pts.append(("end", cx + r * math.cos(a0 + math.pi / 2), cy + r * math.sin(a0 + math.pi / 2)))
    # densify straight parts between arcs
    poly = [np.array(start)]
    for kind, x, y in pts:
        p = np.array([x, y])
        gap = np.linalg.norm(p - poly[-1])
        if gap > step * 1.5:
            n = int(gap / step)
            poly += list(poly[-1] + (p - poly[-1]) * (np.arange(1, n)[:, None] / n))
        poly.append(p)
    end = np.array(start)
    gap = np.linalg.norm(end - poly[-1])
    n = int(gap / step)
    poly += list(poly[-1] + (end - poly[-1]) * (np.arange(1, n)[:, None] / n))
    return np.asarray(poly)


def _loop_route(town: Town, rng: np.random.Generator, cfg: SessionConfig) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Base positions (N,2) and headings (N,) for cfg.n_frames frames of laps around a block rectangle.

    The rectangle (1x1 to 2x2 blocks, always containing the central block) is the largest the session
    can drive at least 1.3 times, so every session has revisits; frames are equally spaced along the
    driven (offset, weaving) path, i.e. constant speed.
    """
    tc = town.cfg
    p = tc.pitch_m
    travel = (cfg.n_frames - 1) * cfg.speed_mps / cfg.rate_hz
    shapes = [(wi, wj) for wi in (1, 2) for wj in (1, 2) if 2 * (wi + wj) * p - (8 - 2 * math.pi) * cfg.corner_radius_m <= travel / 1.3]
    if not shapes:
        raise ValueError(f"a session of {travel:.0f} m cannot lap even one block ({4 * p:.0f} m) 1.3 times; "
                         "raise n_frames or speed_mps")
    wi, wj = shapes[int(rng.integers(0, len(shapes)))]
    ci, cj = tc.blocks_x // 2, tc.blocks_y // 2
    i0 = int(np.clip(ci - rng.integers(0, wi), 0, tc.blocks_x - wi))
    j0 = int(np.clip(cj - rng.integers(0, wj), 0, tc.blocks_y - wj))
    rect = (i0, j0, i0 + wi, j0 + wj)
    centre = _rounded_rect(i0 * p, j0 * p, (i0 + wi) * p, (j0 + wj) * p, cfg.corner_radius_m)
    closed = np.vstack([centre, centre[:1]])
    s_knots = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    perimeter = s_knots[-1]
    tangent = np.gradient(closed, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    outward = np.column_stack([tangent[:, 1], -tangent[:, 0]])  # right of a ccw loop = outward

    # dense samples along the centre line (u), more than enough to cover the travel
    s_start = rng.uniform(0, perimeter)
    u = np.arange(0.0, travel * 1.3 + 50.0, 0.1)
    lap = np.floor(u / perimeter).astype(int)
    # lateral offset per lap, blended over 20 m at each lap start (a lane change, not a jump)
    lap_off = cfg.lane_offset_m + cfg.revisit_lateral_offset_m * (np.arange(lap.max() + 2) % 2)
    blend = np.clip((u - lap * perimeter) / 20.0, 0, 1)
    prev = np.where(lap == 0, lap_off[0], lap_off[np.maximum(lap - 1, 0)])
    lateral = prev * (1 - blend) + lap_off[lap] * blend
    # continuous weave whose period fits (n + 1/2) times into a lap: consecutive passes of a place weave in
    # opposite phase, so their headings differ by up to twice heading_jitter_deg
    period = perimeter / (max(round(perimeter / cfg.weave_period_m), 1) + 0.5)
    amp = math.tan(math.radians(cfg.heading_jitter_deg)) * period / (2 * math.pi)
    lateral = lateral + amp * np.sin(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi))
    sv = np.mod(s_start + u, perimeter)
    dense = np.column_stack([np.interp(sv, s_knots, closed[:, 0]) + np.interp(sv, s_knots, outward[:, 0]) * lateral,
                             np.interp(sv, s_knots, closed[:, 1]) + np.interp(sv, s_knots, outward[:, 1]) * lateral])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    heading = np.unwrap(np.arctan2(*np.gradient(dense, axis=0).T[::-1]))
    targets = np.arange(cfg.n_frames) * cfg.speed_mps / cfg.rate_hz
    xy = np.column_stack([np.interp(targets, arc, dense[:, 0]), np.interp(targets, arc, dense[:, 1])])
    yaw = np.interp(targets, arc, heading)
    return xy, yaw, rect


#: route registry: name -> generator(town, rng, cfg) -> (xy (N,2), yaw (N,), rect)
ROUTES = {"loop": _loop_route}


def _drift_odometry(world_T_base: np.ndarray, world_T_odom: np.ndarray, rng: np.random.Generator,
                    cfg: SessionConfig) -> np.ndarray:
    """Integrate noisy 2D increments: error grows with travelled distance. Returns (N,4,4)."""
    odom = np.empty_like(world_T_base)
    odom[0] = np.linalg.inv(world_T_odom) @ world_T_base[0]
    for k in range(1, len(world_T_base)):
        rel = np.linalg.inv(world_T_base[k - 1]) @ world_T_base[k]
        dx, dy = rel[0, 3], rel[1, 3]
        dyaw = math.atan2(rel[1, 0], rel[0, 0])
        dist = math.hypot(dx, dy)
        sq = math.sqrt(max(dist, 1e-9))
        dx = dx * (1 + cfg.odom_scale_error) + rng.normal(0, cfg.odom_trans_noise * sq)
        dy = dy * (1 + cfg.odom_scale_error) + rng.normal(0, cfg.odom_trans_noise * sq)
        dyaw += math.radians(cfg.odom_yaw_bias_deg_per_m * dist + rng.normal(0, cfg.odom_yaw_noise_deg * sq))
        odom[k] = odom[k - 1] @ pose2d(dx, dy, dyaw)
    return odom


def generate_session(town: Town, session_id: str, seed: int, condition: Condition,
                     cfg: SessionConfig = SessionConfig()) -> Session:
    """Generate a session deterministically from (town, seed, cfg). Images are rendered lazily."""
    if not session_id:
        raise ValueError("session_id must be a non-empty string")
    rng = np.random.default_rng([int(seed), 0x5E55])
    xy, yaw, rect = ROUTES[cfg.route](town, rng, cfg)
    world_T_base = np.stack([pose2d(x, y, a) for (x, y), a in zip(xy, yaw)])
    dx, dy, dyaw = cfg.odom_offset
    world_T_odom = pose2d(dx, dy, math.radians(dyaw))
    odom_T_base = _drift_odometry(world_T_base, world_T_odom, rng, cfg)
    stamps = cfg.start_time_s + np.arange(cfg.n_frames) / cfg.rate_hz
    frames = [SessionFrame(float(t), w, o) for t, w, o in zip(stamps, world_T_base, odom_T_base)]
    logger.debug("session %s: %d frames around blocks %s", session_id, len(frames), rect)
    return Session(town=town, session_id=session_id, seed=int(seed), condition=condition, cfg=cfg, frames=frames,
                   base_T_camera=make_base_T_camera(cfg.camera_height_m, cfg.camera_forward_m),
                   world_T_odom=world_T_odom, route_rect=rect)
