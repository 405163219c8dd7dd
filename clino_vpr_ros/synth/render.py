"""Vectorised ray caster for 2.5D towns: pinhole camera, RGB + metric depth + semantic labels.

Why it is fast: the camera is upright (no roll, no pitch; any yaw and position), so all pixels of one
image column share one horizontal ray direction. The horizontal slab test against every box is done
once per column (W x N), boxes hidden behind taller buildings are culled per column, and only the few
survivors get a per-pixel vertical slab test (H x W x K). Textures are procedural and anchored in
world coordinates (wall coordinate, height), so every facade detail has a true 3D position and two
views of it obey epipolar geometry.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from clino_vpr_ros.synth.conditions import Condition
from clino_vpr_ros.synth.town import LABELS, NOISE_SIZE, Town

logger = logging.getLogger(__name__)

MAX_RANGE_M = 220.0
SMALL_RANGE_M = 90.0
_NEAR_CLEAR_M = 6.0  # vehicles/pedestrians closer than this are dropped: the ego vehicle keeps its own space clear
_SIGN_SLOTS = 3
_CANOPY = {"spring": (0.85, (0.35, 0.55, 0.2)), "summer": (1.0, (0.18, 0.42, 0.12)),
           "autumn": (0.9, (0.7, 0.38, 0.1)), "winter": (0.45, (0.38, 0.33, 0.28))}

_VEHICLE, _PED = LABELS["vehicle"], LABELS["pedestrian"]
_TRUNK = 255  # internal object class; trunks are labelled vegetation in label images


@dataclass(frozen=True)
class RenderOutput:
    """One rendered frame.

    rgb: (H,W,3) uint8 RGB; depth: (H,W) float32 z-depth along the optical axis in metres, +inf for
    sky; labels: (H,W) uint8 ids from ``LABELS``.
    """

    rgb: np.ndarray
    depth: np.ndarray
    labels: np.ndarray


def intrinsics(image_size: tuple[int, int], hfov_deg: float) -> np.ndarray:
    """Pinhole K (3,3) float64 for ``image_size = (height, width)``, square pixels, centred principal point."""
    h, w = image_size
    fx = (w / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[fx, 0.0, (w - 1) / 2.0], [0.0, fx, (h - 1) / 2.0], [0.0, 0.0, 1.0]])


class Renderer:
    """Renders a :class:`Town` from upright pinhole cameras.

    image_size: (height, width) pixels; hfov_deg: horizontal field of view. ``K`` is (3,3) float64.
    """

    def __init__(self, town: Town, image_size: tuple[int, int] = (224, 224), hfov_deg: float = 90.0) -> None:
        h, w = (int(v) for v in image_size)
        if h < 8 or w < 8:
            raise ValueError(f"image_size must be (height, width) >= 8 px, got {image_size}")
        if not 10.0 <= hfov_deg <= 150.0:
            raise ValueError(f"hfov_deg must be in [10, 150], got {hfov_deg}")
        self.town = town
        self.image_size = (h, w)
        self.hfov_deg = float(hfov_deg)
        self.K = intrinsics((h, w), hfov_deg)
        self._xc = ((np.arange(w) - self.K[0, 2]) / self.K[0, 0]).astype(np.float32)  # (W,)
        self._yc = ((np.arange(h) - self.K[1, 2]) / self.K[1, 1]).astype(np.float32)  # (H,)
        dz = -self._yc
        self._inv_dz = (1.0 / np.where(np.abs(dz) < 1e-7, 1e-7, dz)).astype(np.float32)[:, None, None]  # (H,1,1)
        self._col_grid = np.broadcast_to(np.arange(w)[None, :], (h, w))
        self._inv_f = np.float32(1.0 / self.K[0, 0])
        self._mip_flat, self._mip_offsets, self._mip_levels = _noise_pyramid(town.noise)
        self._static = self._static_objects()
        self._signs = self._sign_table()
        z = self.town.sign_z
        self._sign_z_range = (float(z.min()), float(z.max())) if len(z) else (np.inf, -np.inf)
        st = self.town.styles
        # palette rows: wall, mortar, window frame, glass, curtain, roof
        self._palette = np.stack([st.base_rgb, st.trim_rgb * 1.0, st.trim_rgb, st.glass_rgb,
                                  0.75 * st.trim_rgb + 0.2, np.full_like(st.base_rgb, 0.3)], axis=1).astype(np.float32)

    # ------------------------------------------------------------------ scene
    def _static_objects(self) -> dict[str, np.ndarray]:
        t = self.town
        trunks = np.column_stack([t.trees[:, 0] - 0.15, t.trees[:, 1] - 0.15, np.zeros(len(t.trees)),
                                  t.trees[:, 0] + 0.15, t.trees[:, 1] + 0.15, np.full(len(t.trees), 2.6)])
        boxes = np.concatenate([t.buildings, trunks])
        cls = np.concatenate([np.full(len(t.buildings), LABELS["building"]), np.full(len(trunks), _TRUNK)])
        ref = np.concatenate([np.arange(len(t.buildings)), np.arange(len(trunks))])
        return {"boxes": boxes, "cls": cls.astype(np.uint8), "ref": ref.astype(np.int64)}

    def _sign_table(self) -> np.ndarray:
        """(B, SLOTS, 9) float32 rows [face, s0, s1, z0, z1, r, g, b, glyph_seed]; face -1 = empty."""
        t = self.town
        table = np.full((len(t.buildings), _SIGN_SLOTS, 9), -1.0, dtype=np.float32)
        fill = np.zeros(len(t.buildings), dtype=int)
        for g, b in enumerate(t.sign_building):
            if fill[b] < _SIGN_SLOTS:
                table[b, fill[b]] = [t.sign_face[g], *t.sign_s[g], *t.sign_z[g], *t.sign_rgb[g], g * 37 % NOISE_SIZE]
                fill[b] += 1
        return table

    def _canopies(self, season: str) -> np.ndarray:
        scale, _ = _CANOPY[season]
        tr = self.town.trees
        r = tr[:, 2] * scale
        top = 2.4 + 2.6 * tr[:, 2] * (0.6 + 0.4 * scale)
        return np.column_stack([tr[:, 0] - r, tr[:, 1] - r, np.full(len(tr), 2.4), tr[:, 0] + r, tr[:, 1] + r, top])

    def scene_objects(self, condition: Condition, stamp: float) -> dict[str, np.ndarray]:
        """All boxes at ``stamp`` under ``condition``: boxes (N,6) float64, cls (N,) uint8, ref (N,) int64,
        rgb (N,3) float32 (colour of non-building objects)."""
        st = self._static
        canopy = self._canopies(condition.season)
        dyn = _dynamic_objects(self.town.cfg, self.town.extent, condition.clutter_seed,
                               condition.vehicle_density, condition.pedestrian_density, float(stamp))
        boxes = np.concatenate([st["boxes"], canopy, dyn["boxes"]])
        cls = np.concatenate([st["cls"], np.full(len(canopy), LABELS["vegetation"], np.uint8), dyn["cls"]])
        ref = np.concatenate([st["ref"], np.arange(len(canopy)), np.arange(len(dyn["cls"]))])
        rgb = np.zeros((len(boxes), 3), np.float32)
        rgb[len(boxes) - len(dyn["cls"]):] = dyn["rgb"]
        return {"boxes": boxes, "cls": cls, "ref": ref, "rgb": rgb}

    # ------------------------------------------------------------------ render
    def render(self, world_T_camera: np.ndarray, condition: Condition, stamp: float = 0.0) -> RenderOutput:
        """Render one frame.

        world_T_camera: (4,4) float64 pose of the optical frame (z forward, x right, y down). The camera
        must be upright: its y axis must point along world -z within 0.5 deg (ValueError otherwise).
        stamp: seconds; moving vehicles and pedestrians are placed at this time.
        """
        pose = np.asarray(world_T_camera, dtype=np.float64)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError(f"world_T_camera must be a finite (4,4) matrix, got shape {pose.shape}")
        rot = pose[:3, :3]
        if rot[2, 1] > -math.cos(math.radians(0.5)):
            raise ValueError("the renderer needs an upright camera (optical y axis = world -z, no roll/pitch); "
                             f"got optical y axis {rot[:, 1].round(4).tolist()} in world")
        cam = pose[:3, 3]
        if cam[2] <= 0.05:
            raise ValueError(f"camera must be above the ground (z > 0.05 m), got z = {cam[2]:.3f}")
        scene = self.scene_objects(condition, stamp)
        hit = self._cast(cam, rot, scene)
        return self._shade(cam, rot, scene, hit, condition, float(stamp))

    def _in_frustum(self, rel: np.ndarray, rot: np.ndarray) -> np.ndarray:
        """(N,) bool: the box footprint overlaps the horizontal field of view (conservative)."""
        xs = rel[:, [0, 3, 3, 0]]
        ys = rel[:, [1, 1, 4, 4]]
        right, fwd = rot[:2, 0], rot[:2, 2]
        xc = xs * right[0] + ys * right[1]
        zc = xs * fwd[0] + ys * fwd[1]
        half = math.tan(math.radians(self.hfov_deg) / 2.0) * 1.05
        in_front = zc > 0.05
        # any corner behind the camera: keep unless all corners are behind
        straddle = in_front.any(1) & ~in_front.all(1)
        ratio = np.where(in_front, xc / np.where(in_front, zc, 1.0), 0.0)
        lo = np.where(in_front, ratio, np.inf).min(1)
        hi = np.where(in_front, ratio, -np.inf).max(1)
        return straddle | (in_front.all(1) & (hi >= -half) & (lo <= half))

    def _cast(self, cam: np.ndarray, rot: np.ndarray, scene: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        h, w = self.image_size
        dxy = (self._xc[:, None] * rot[:2, 0][None, :] + rot[:2, 2][None, :]).astype(np.float32)  # (W,2)
        boxes, cls = scene["boxes"], scene["cls"]
        rel = boxes - np.array([cam[0], cam[1], cam[2], cam[0], cam[1], cam[2]])
        # range cull, and drop clutter the camera is (almost) inside of
        near_x = np.maximum(np.maximum(rel[:, 0], -rel[:, 3]), 0.0)
        near_y = np.maximum(np.maximum(rel[:, 1], -rel[:, 4]), 0.0)
        dist = np.hypot(near_x, near_y)
        keep = dist < MAX_RANGE_M
        keep &= ~((cls == _VEHICLE) | (cls == _PED)) | (dist > _NEAR_CLEAR_M)
        keep &= dist > 0.0  # never render from inside a box
        keep &= (cls == LABELS["building"]) | (dist < SMALL_RANGE_M)  # trees/people/cars beyond: a few pixels
        keep &= self._in_frustum(rel, rot)
        idx = np.flatnonzero(keep)
        rel = rel[idx].astype(np.float32)
        if len(idx) == 0:  # nothing in view (e.g. outside the town looking away): ground and sky only
            return self._ground_and_sky(cam, dxy, np.full((h, w), np.inf, np.float32), np.zeros((h, w), np.int64),
                                        np.ones((h, w), bool), np.ones((h, w), bool))

        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / np.where(np.abs(dxy) < 1e-9, 1e-9, dxy)  # (W,2)
            tx0, tx1 = rel[None, :, 0] * inv[:, :1], rel[None, :, 3] * inv[:, :1]
            ty0, ty1 = rel[None, :, 1] * inv[:, 1:], rel[None, :, 4] * inv[:, 1:]
        txn, txf = np.minimum(tx0, tx1), np.maximum(tx0, tx1)
        tyn, tyf = np.minimum(ty0, ty1), np.maximum(ty0, ty1)
        t_in, t_out = np.maximum(txn, tyn), np.minimum(txf, tyf)  # (W,N)
        valid = (t_out > t_in) & (t_in > 0.0)
        face_x = txn >= tyn

        # per column: sort by entry distance, cull boxes hidden behind taller (in angle) buildings
        key = np.where(valid, t_in, np.inf)
        order = np.argsort(key, axis=1)
        t_sorted = np.take_along_axis(key, order, axis=1)
        top = rel[:, 5][order]
        top_tan = np.where(np.isfinite(t_sorted), top / t_sorted, -np.inf)
        occluder = (cls[idx][order] == LABELS["building"]) & np.isfinite(t_sorted)
        block = np.where(occluder, top_tan, -np.inf)
        prev_max = np.maximum.accumulate(np.concatenate([np.full((w, 1), -np.inf, np.float32), block[:, :-1]], 1), 1)
        visible = np.isfinite(t_sorted) & (top_tan > prev_max)
        n_vis = visible.sum(1)
        k = max(int(n_vis.max()), 1)
        rank = np.argsort(~visible, axis=1, kind="stable")[:, :k]  # visible first, in distance order
        sel = np.take_along_axis(order, rank, axis=1)  # (W,k) into idx
        ok = np.take_along_axis(visible, rank, axis=1)
        cand_t_in = np.where(ok, np.take_along_axis(t_in, sel, 1), np.inf)
        cand_t_out = np.where(ok, np.take_along_axis(t_out, sel, 1), -np.inf)
        cand_z0, cand_z1 = rel[sel, 2], rel[sel, 5]  # (W,k)

        # per pixel: vertical slab, one candidate layer at a time (H*W-wide ops; no reductions over a short axis)
        inv_dz = self._inv_dz[:, :, 0]  # (H,1); dz per row = -yc because the camera is upright
        t_obj = np.full((h, w), np.inf, np.float32)
        best = np.zeros((h, w), np.int32)
        for j in range(k):
            tza, tzb = cand_z0[None, :, j] * inv_dz, cand_z1[None, :, j] * inv_dz  # (H,W)
            t_near = np.maximum(cand_t_in[None, :, j], np.minimum(tza, tzb))
            t_far = np.minimum(cand_t_out[None, :, j], np.maximum(tza, tzb))
            better = (t_near <= t_far) & (t_far > 0) & (t_near < t_obj)
            t_obj = np.where(better, t_near, t_obj)
            best[better] = j
        cols = self._col_grid
        obj = idx[sel[cols, best]]
        side = cand_t_in[cols, best] >= t_obj
        fx = np.take_along_axis(face_x, sel, 1)[cols, best]

        return self._ground_and_sky(cam, dxy, t_obj, obj, side, fx)

    def _ground_and_sky(self, cam: np.ndarray, dxy: np.ndarray, t_obj: np.ndarray, obj: np.ndarray, side: np.ndarray,
                        face_x: np.ndarray) -> dict[str, np.ndarray]:
        """Merge object hits with the ground plane z = 0; what neither hits is sky (depth inf)."""
        h, w = self.image_size
        t_ground = np.where(self._yc > 1e-6, cam[2] / np.maximum(self._yc, 1e-6), np.inf).astype(np.float32)  # (H,)
        t_ground = np.broadcast_to(t_ground[:, None], (h, w))
        ground = t_ground < t_obj
        depth = np.where(ground, t_ground, t_obj).astype(np.float32)
        depth[depth > MAX_RANGE_M * 1.5] = np.inf
        return {"depth": depth, "ground": ground & np.isfinite(depth), "obj": obj, "side": side, "face_x": face_x,
                "dxy": dxy, "dz": -self._yc}

    # ------------------------------------------------------------------ shading
    def _shade(self, cam: np.ndarray, rot: np.ndarray, scene: dict[str, np.ndarray], hit: dict[str, np.ndarray],
               cond: Condition, stamp: float) -> RenderOutput:
        h, w = self.image_size
        depth = hit["depth"]
        flat_depth = depth.ravel()
        sky = ~np.isfinite(flat_depth)
        ground = hit["ground"].ravel()
        si, gi, oi = np.flatnonzero(sky), np.flatnonzero(ground), np.flatnonzero(~sky & ~ground)
        dxy, dz = hit["dxy"], hit["dz"]
        cx, cy, cz = (float(v) for v in cam)  # python floats keep the float32 arithmetic below in float32
        labels = np.zeros(h * w, np.uint8)
        rgb = np.empty((h * w, 3), np.float32)
        night = _night_factor(cond)

        labels[si] = LABELS["sky"]
        rgb[si] = self._sky(rot, cond, stamp, si // w, si % w)
        if len(gi):
            t, col = flat_depth[gi], gi % w
            lab, alb = self._ground(cx + t * dxy[col, 0], cy + t * dxy[col, 1],
                                    t * self._inv_f * np.sqrt(np.maximum(t / np.float32(cz), 1.0)))
            labels[gi] = lab
            light = _lighting(cond, np.zeros(1, np.float32), np.zeros(1, np.float32), np.ones(1, np.float32))
            rgb[gi] = alb * light + self._night_light(alb, t, night)
        if len(oi):
            t, col, row = flat_depth[oi], oi % w, oi // w
            flat = {k: hit[k].ravel()[oi] for k in ("obj", "side", "face_x")}
            side, fxm = flat["side"], flat["face_x"]
            sdx, sdy = dxy[col, 0], dxy[col, 1]
            nxv = np.where(side & fxm, -np.sign(sdx), 0.0).astype(np.float32)
            nyv = np.where(side & ~fxm, -np.sign(sdy), 0.0).astype(np.float32)
            # pixel footprint on the surface: range / f, stretched by the obliqueness of walls
            dnorm = np.sqrt(sdx * sdx + sdy * sdy)
            cos = np.where(side, np.abs(np.where(fxm, sdx, sdy)) / dnorm, 1.0)
            footprint = t * dnorm * self._inv_f / np.sqrt(np.maximum(cos, 0.0625))
            lab, alb, emi = self._objects(scene, flat["obj"], side, fxm, sdx, sdy, cx + t * sdx, cy + t * sdy,
                                          cz + t * dz[row], night, cond.season, footprint)
            labels[oi] = lab
            rgb[oi] = alb * _lighting(cond, nxv, nyv, (~side).astype(np.float32)) + emi + self._night_light(alb, t, night)
        rgb = _weather(rgb.reshape(h, w, 3), depth, sky.reshape(h, w), cond, stamp, self.image_size)
        out = np.clip(rgb * (255.0 * _exposure_gain(cond)) + 0.5, 0, 255).astype(np.uint8)
        return RenderOutput(rgb=out, depth=depth, labels=labels.reshape(h, w))

    @staticmethod
    def _night_light(alb: np.ndarray, t: np.ndarray, night: float) -> np.ndarray | float:
        """Headlight / street-light falloff: near things stay visible at night."""
        if night <= 0:
            return 0.0
        return alb * (night * 0.55 * np.exp(-t / 18.0))[:, None]

    def _mip(self, u: np.ndarray, v: np.ndarray, cell: float, footprint: np.ndarray, off_u, off_v) -> np.ndarray:
        """Noise of cell size ``cell`` metres at surface coordinates (u, v), box-filtered to the pixel
        footprint (metres): distant texture is averaged like a mip-mapped texture, so its look does not
        depend on the sampling grid, and two views of one surface agree."""
        level = np.clip(np.ceil(np.log2(np.maximum(footprint * np.float32(1.0 / cell), 1.0))), 0, self._mip_levels)
        level = level.astype(np.int32)
        side = NOISE_SIZE >> level
        scale = np.float32(1.0 / cell) / (1 << level).astype(np.float32)
        iu = (np.floor(u * scale).astype(np.int32) + (np.asarray(off_u) >> level)) & (side - 1)
        iv = (np.floor(v * scale).astype(np.int32) + (np.asarray(off_v) >> level)) & (side - 1)
        return self._mip_flat[self._mip_offsets[level] + iu * side + iv]

    def _ground(self, px: np.ndarray, py: np.ndarray, footprint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.town.cfg
        pitch, half = cfg.pitch_m, cfg.road_width_m / 2.0
        mx, my = np.mod(px, pitch), np.mod(py, pitch)
        dxr, dyr = np.minimum(mx, pitch - mx), np.minimum(my, pitch - my)  # distance to nearest road centre line
        on_road = (dxr < half) | (dyr < half)
        n = self._mip(px, py, 0.25, footprint, 11, 97)
        n2 = self._mip(px, py, 1.7, footprint, 301, 5)
        lab = np.where(on_road, LABELS["road"], LABELS["sidewalk"]).astype(np.uint8)
        asphalt = 0.27 + 0.04 * n + 0.06 * n2  # low contrast: asphalt gives few stable corners
        # dashed centre lines (not inside intersections), and stop lines at the kerb
        dash = (np.mod(px + py, 6.0) < 3.0)
        centre = ((dxr < 0.12) & (dyr > half)) | ((dyr < 0.12) & (dxr > half))
        lane = ((np.abs(dxr - 3.0) < 0.08) & (dyr > half) | (np.abs(dyr - 3.0) < 0.08) & (dxr > half)) & dash
        tiles = (np.mod(px, 0.8) < 0.06) | (np.mod(py, 0.8) < 0.06)
        paving = np.where(tiles, 0.45, 0.55 + 0.06 * n)
        kerb = on_road & ((np.abs(dxr - half) < 0.25) | (np.abs(dyr - half) < 0.25))
        val = np.where(on_road, asphalt, paving)
        alb = np.repeat(val[:, None], 3, 1).astype(np.float32)
        alb[~on_road] *= np.array([1.0, 0.96, 0.9], np.float32)
        alb[on_road & (centre & dash)] = (0.85, 0.75, 0.2)
        alb[on_road & lane] = 0.85
        alb[kerb] = 0.68
        return lab, alb

    def _objects(self, scene: dict[str, np.ndarray], obj: np.ndarray, side: np.ndarray, face_x: np.ndarray,
                 dx: np.ndarray, dy: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray,
                 night: float, season: str, footprint: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        noise = self.town.noise
        cls, ref, boxes = scene["cls"][obj], scene["ref"][obj], scene["boxes"][obj].astype(np.float32)
        lab = cls.copy()
        alb = np.empty((len(obj), 3), np.float32)
        emi = np.zeros((len(obj), 3), np.float32)
        # wall coordinate along the face, measured from the box corner so patterns align with walls
        s_wall = np.where(face_x, py - boxes[:, 1], px - boxes[:, 0]).astype(np.float32)
        s_wall = np.where(side, s_wall, px - boxes[:, 0])

        b = cls == LABELS["building"]
        if b.any():
            la, al, em = self._facade(ref[b], side[b], face_x[b], dx[b], dy[b], s_wall[b], pz[b], footprint[b], night)
            lab[b], alb[b], emi[b] = la, al, em
        v = cls == LABELS["vegetation"]
        if v.any():
            _, base = _CANOPY[season]
            n = self._mip(s_wall[v], pz[v], 0.22, footprint[v], 3 + ref[v], 7)
            n2 = self._mip(s_wall[v], pz[v], 0.6, footprint[v], 50, 9 + ref[v])
            alb[v] = np.asarray(base, np.float32) * (0.45 + 0.7 * n + 0.35 * n2)[:, None]
            if season == "winter":  # bare crowns: see-through look with dark branches
                alb[v] = np.where((n > 0.55)[:, None], alb[v], np.float32(0.22))
        tr = cls == _TRUNK
        if tr.any():
            n = noise[_cell(pz[tr], 0.15, 13), _cell(s_wall[tr], 0.1, ref[tr])]
            alb[tr] = np.array([0.32, 0.22, 0.14], np.float32) * (0.7 + 0.5 * n)[:, None]
            lab[tr] = LABELS["vegetation"]
        d = (cls == _VEHICLE) | (cls == _PED)
        if d.any():
            base = scene["rgb"][obj[d]]
            rel_z = pz[d] - boxes[d, 2]
            height = boxes[d, 5] - boxes[d, 2]
            veh = cls[d] == _VEHICLE
            glass = veh & (rel_z > 0.62 * height) & (rel_z < 0.93 * height) & side[d]
            head = ~veh & (rel_z > 0.85 * height)
            legs = ~veh & (rel_z < 0.45 * height)
            wheel = veh & (rel_z < 0.28 * height)
            col = base.copy()
            col[glass] = (0.12, 0.15, 0.2)
            col[wheel] = 0.06
            col[head] = (0.85, 0.65, 0.5)
            col[legs] = base[legs] * 0.35
            alb[d] = col
            if night > 0:
                emi[d] = np.where((veh & (rel_z > 0.35 * height) & (rel_z < 0.5 * height))[:, None],
                                  np.array([1.0, 0.9, 0.7], np.float32) * night, 0.0)
        return lab, alb, emi

    def _facade(self, bidx: np.ndarray, side: np.ndarray, face_x: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                s: np.ndarray, z: np.ndarray, footprint: np.ndarray, night: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t, st, noise = self.town, self.town.styles, self.town.noise
        sid = t.building_style[bidx]
        bay, floor = st.bay_m[sid], st.floor_m[sid]
        inv_bay, inv_floor = 1.0 / bay, 1.0 / floor
        su, zv = s * inv_bay, z * inv_floor
        win_u, win_v = np.floor(su), np.floor(zv)
        fu, fv = su - win_u, zv - win_v
        ww, wh = st.win_w[sid] * 0.5, st.win_h[sid] * 0.5
        du, dv = np.abs(fu - 0.5), np.abs(fv - 0.45)
        upper = (z > 1.2) & side
        window = (du < ww) & (dv < wh) & upper
        frame = (du < ww + 0.12 * inv_bay) & (dv < wh + 0.12 * inv_floor) & upper
        off = st.noise_offset[sid]
        n = self._mip(s, z, t.cfg.texture_cell_m, footprint, off[:, 0], off[:, 1])
        n_coarse = self._mip(s, z, 1.0, footprint, off[:, 1], off[:, 0])
        mat = st.material[sid]
        zm3 = np.mod(z, np.float32(0.3))
        mortar = (mat == 1) & ((zm3 < 0.05) | (np.mod(s + np.where(np.mod(z, 0.6) < 0.3, 0.0, 0.3), 0.6) < 0.05))
        mortar |= (mat == 2) & ((np.mod(s, np.float32(1.4)) < 0.07) | (np.mod(z, np.float32(1.0)) < 0.07))
        mortar |= (mat == 3) & (fv * floor < 0.35)
        # glass: per-window reflections/curtains so neighbouring windows differ (a feature, not a copy)
        wn = noise[(win_u.astype(np.int32) * 7 + off[:, 0] + bidx * 13) & (NOISE_SIZE - 1),
                   (win_v.astype(np.int32) * 11 + off[:, 1]) & (NOISE_SIZE - 1)]
        curtain = window & (wn > 0.7) & (fv > 0.45)
        # material code -> palette row; brightness factor per code
        code = np.where(mortar, 1, 0)
        factor = np.where(mortar, 0.8 + 0.4 * n, 1.0 + st.noise_amp[sid] * (n - 0.5) + 0.25 * (n_coarse - 0.5))
        code = np.where(frame, 2, code)
        factor = np.where(frame, 1.0, factor)
        code = np.where(window, np.where(curtain, 4, 3), code)
        factor = np.where(window & ~curtain, (0.6 + 0.9 * wn) * (0.8 + 0.4 * n), factor)
        code = np.where(side, code, 5)
        alb = self._palette[sid, code] * factor.astype(np.float32)[:, None]
        lab = np.full(len(s), LABELS["building"], np.uint8)
        emi = np.zeros_like(alb)
        if night > 0:
            lit = window & (wn > 0.55)
            emi[lit] = np.array([1.0, 0.82, 0.5], np.float32) * (0.6 * night)
        self._draw_signs(bidx, side, face_x, dx, dy, s, z, night, alb, lab, emi)
        return lab, alb, emi

    def _draw_signs(self, bidx: np.ndarray, side: np.ndarray, face_x: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                    s: np.ndarray, z: np.ndarray, night: float, alb: np.ndarray, lab: np.ndarray, emi: np.ndarray) -> None:
        """Shop signs (in place). Face ids 0:-x 1:+x 2:-y 3:+y, the side the ray enters from."""
        cand = np.flatnonzero(side & (z >= self._sign_z_range[0]) & (z <= self._sign_z_range[1]))
        if len(cand) == 0:
            return
        noise = self.town.noise
        sc, zc = s[cand], z[cand]
        face = np.where(face_x[cand], np.where(dx[cand] > 0, 0, 1), np.where(dy[cand] > 0, 2, 3))
        table = self._signs[bidx[cand]]  # (n, SLOTS, 9)
        for k in range(_SIGN_SLOTS):
            row = table[:, k]
            m = (row[:, 0] == face) & (sc >= row[:, 1]) & (sc <= row[:, 2]) & (zc >= row[:, 3]) & (zc <= row[:, 4])
            if not m.any():
                continue
            gs, gz = sc[m] - row[m, 1], zc[m] - row[m, 3]
            glyph = noise[_cell(gs, 0.2, row[m, 8].astype(np.int32)), _cell(gz, 0.2, 17)] > 0.55
            border = (gs < 0.1) | (gz < 0.1) | (row[m, 2] - sc[m] < 0.1) | (row[m, 4] - zc[m] < 0.1)
            txt = glyph & (gz > 0.2) & (row[m, 4] - zc[m] > 0.2)
            col = np.where(txt[:, None], np.float32(0.95), row[m, 5:8])
            where = cand[m]
            alb[where] = np.where(border[:, None], np.float32(0.1), col)
            lab[where] = LABELS["sign"]
            if night > 0:
                emi[where] = alb[where] * 0.7 * night

    def _sky(self, rot: np.ndarray, cond: Condition, stamp: float, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(n,3) float32 sky colour for pixels (rows, cols): gradient + clouds on a plane 800 m up."""
        elev_rows = np.arctan(-self._yc)  # (H,) upright camera: elevation depends on the row only
        zen, hor = _sky_colours(cond)
        g = np.clip(elev_rows / 0.8, 0, 1)[:, None]
        base = (hor * (1 - g) + zen * g).astype(np.float32)[rows]
        if cond.cloud_cover <= 0 or len(rows) == 0:
            return base
        fwd, right = rot[:2, 2], rot[:2, 0]
        dirs = self._xc[:, None] * right[None] + fwd[None]
        dirs = (dirs / np.linalg.norm(dirs, axis=1, keepdims=True)).astype(np.float32)  # (W,2)
        tan_e = np.maximum(-self._yc[rows] / np.hypot(self._xc[cols], 1.0), 0.02)
        rng_c = 800.0 / tan_e
        cxw = rng_c * dirs[cols, 0] + float(4.0 * stamp % 1e5 + cond.clutter_seed % 997 * 50.0)
        cyw = rng_c * dirs[cols, 1] + float(cond.clutter_seed % 991 * 50.0)
        noise = self.town.noise
        # bilinear lookups: soft cloud edges, not blocky corners that would attract keypoints
        c = _bilinear(noise, cxw / 120.0, cyw / 120.0 + 200) * 0.65 + _bilinear(noise, cxw / 45.0 + 400, cyw / 45.0) * 0.35
        cover = np.clip((c - (1.0 - cond.cloud_cover) * 0.8 - 0.1) * 3.0, 0, 1)[:, None]
        cloud_col = np.array([0.92, 0.92, 0.95], np.float32) * _sun_level(cond) * _sun_colour(cond) + 0.06
        return base * (1 - cover) + cloud_col * cover


def _noise_pyramid(noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Box-filtered mip levels of the noise texture, flattened into one array (level L has side N >> L)."""
    levels = [noise.astype(np.float32)]
    while levels[-1].shape[0] > 8:
        a = levels[-1]
        levels.append(0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]))
    offsets = np.cumsum([0] + [lv.size for lv in levels[:-1]]).astype(np.int64)
    return np.concatenate([lv.ravel() for lv in levels]), offsets, len(levels) - 1


def _bilinear(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup in a wrapping square texture at continuous cell coordinates (u, v)."""
    mask = tex.shape[0] - 1
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0).astype(np.float32), (v - v0).astype(np.float32)
    i0, j0 = u0.astype(np.int32) & mask, v0.astype(np.int32) & mask
    i1, j1 = (i0 + 1) & mask, (j0 + 1) & mask
    top = tex[i0, j0] * (1 - fv) + tex[i0, j1] * fv
    bottom = tex[i1, j0] * (1 - fv) + tex[i1, j1] * fv
    return top * (1 - fu) + bottom * fu


def _cell(v: np.ndarray, size: float, offset) -> np.ndarray:
    """Index into the town noise texture of cell ``floor(v / size) + offset`` (wraps around)."""
    return (np.floor(v * np.float32(1.0 / size)).astype(np.int32) + offset) & (NOISE_SIZE - 1)


def _night_factor(cond: Condition) -> float:
    return float(np.clip((-cond.sun_elevation_deg) / 10.0, 0.0, 1.0))


def _sun_level(cond: Condition) -> float:
    """Overall daylight level in [0.08, 1]: twilight ramps up over -10..0 deg, full day above ~30 deg."""
    e = cond.sun_elevation_deg
    twilight = 0.22 * float(np.clip((e + 10.0) / 10.0, 0.0, 1.0))
    return float(np.clip(0.08 + twilight + 1.4 * math.sin(math.radians(max(e, 0.0))), 0.08, 1.0))


def _sun_colour(cond: Condition) -> np.ndarray:
    e = max(cond.sun_elevation_deg, 0.0)
    warm = float(np.clip(1.0 - e / 25.0, 0, 1))  # low sun is orange
    return np.array([1.0, 0.95 - 0.25 * warm, 0.9 - 0.5 * warm], np.float32)


def _sky_colours(cond: Condition) -> tuple[np.ndarray, np.ndarray]:
    lvl = _sun_level(cond)
    night = _night_factor(cond)
    zen = np.array([0.25, 0.45, 0.85], np.float32) * lvl
    hor = np.array([0.75, 0.82, 0.92], np.float32) * lvl
    if cond.sun_elevation_deg < 12 and night < 1:
        hor = hor * 0.5 + np.array([0.95, 0.55, 0.3], np.float32) * 0.5 * lvl
    grey = np.array([0.62, 0.64, 0.66], np.float32) * lvl
    k = 0.8 * cond.cloud_cover * 0.5 + 0.5 * cond.rain
    zen, hor = zen * (1 - k) + grey * k, hor * (1 - k) + grey * k
    night_sky = np.array([0.02, 0.03, 0.07], np.float32)
    return zen * (1 - night) + night_sky * night, hor * (1 - night) + night_sky * 2 * night


def _lighting(cond: Condition, nx: np.ndarray, ny: np.ndarray, nz: np.ndarray) -> np.ndarray:
    """(n,3) float32 irradiance for normals (n,): ambient + Lambertian sun; overcast and rain flatten it."""
    e = math.radians(max(cond.sun_elevation_deg, 0.0))
    a = cond.sun_azimuth_rad
    sun = np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)], np.float32)
    direct = _sun_level(cond) * (1.0 - 0.75 * max(cond.cloud_cover - 0.4, 0) / 0.6) * (1 - 0.6 * cond.rain)
    ambient = 0.25 + 0.45 * _sun_level(cond)
    lam = np.maximum(nx * sun[0] + ny * sun[1] + nz * sun[2], 0.0)
    night = _night_factor(cond)
    amb_col = np.array([0.85, 0.9, 1.0], np.float32) * (1 - night) + np.array([0.25, 0.27, 0.4], np.float32) * night
    return (ambient * 0.8 * (1.0 - 0.7 * night)) * amb_col + (direct * 0.7 * lam)[..., None] * _sun_colour(cond)


def _exposure_gain(cond: Condition) -> float:
    """Auto-exposure of the camera, set per condition (not per frame, so it does not flicker): dim scenes
    are amplified up to 3x, like a camera raising gain at dusk, with lit windows and lamps saturating."""
    wall = _lighting(cond, np.array([0.5], np.float32), np.array([0.5], np.float32), np.zeros(1, np.float32))
    level = float(wall.mean()) + 0.3 * _night_factor(cond)
    return float(np.clip(0.55 / max(level, 1e-3), 1.0, 3.0))


def _weather(rgb: np.ndarray, depth: np.ndarray, sky: np.ndarray, cond: Condition, stamp: float,
             size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if cond.fog > 0:
        fog_col = np.array([0.7, 0.72, 0.75], np.float32) * _sun_level(cond) * (1 - 0.8 * _night_factor(cond)) + 0.02
        dist = np.where(sky, 40.0, depth)  # the sky is veiled like a surface 40 m away: haze, not a white-out
        f = (1.0 - np.exp(-0.06 * cond.fog * dist))[..., None].astype(np.float32)
        rgb = rgb * (1 - f) + fog_col * f
    if cond.rain > 0:
        grey = rgb.mean(axis=2, keepdims=True)
        rgb = (rgb * (1 - 0.4 * cond.rain) + grey * 0.4 * cond.rain) * (1 - 0.25 * cond.rain)
        # streaks in screen space (they are weather, not scene): deterministic from clutter seed and stamp
        rng = np.random.default_rng([cond.clutter_seed, int(round(stamp * 1000)) & 0x7FFFFFFF])
        n = int(0.004 * h * w * cond.rain)
        u = rng.integers(0, w, n)
        v0 = rng.integers(0, h, n)
        length = max(3, h // 25)
        vv = np.clip(v0[:, None] + np.arange(length)[None], 0, h - 1)
        uu = np.clip(u[:, None] + (np.arange(length)[None] // 4), 0, w - 1)
        rgb[vv, uu] = rgb[vv, uu] * 0.6 + 0.35
    return rgb


@lru_cache(maxsize=32)
def _dynamic_params(cfg_key: tuple, extent: tuple[float, float], clutter_seed: int, veh_density: float,
                    ped_density: float) -> dict[str, np.ndarray]:
    """Per-clutter-seed vehicles and pedestrians: lane, direction, start, speed, size, colour."""
    blocks_x, blocks_y, pitch, road_w = cfg_key
    rng = np.random.default_rng([int(clutter_seed), 0xCA7])
    lines = [(0, i * pitch, extent[1]) for i in range(blocks_x + 1)] + [(1, j * pitch, extent[0]) for j in range(blocks_y + 1)]
    out: dict[str, list] = {k: [] for k in ("axis", "pos", "lat", "s0", "speed", "size", "rgb", "cls")}
    half = road_w / 2.0
    for axis, pos, length in lines:
        n_veh = rng.poisson(veh_density * length / 100.0 * 2)
        for _ in range(n_veh):
            parked = rng.uniform() < 0.4
            direction = 1 if rng.uniform() < 0.5 else -1
            lat = direction * (half - 1.2 if parked else rng.choice([1.5, 4.5]))
            # right-hand traffic: +direction along the axis drives on the +x / -y side
            lat = lat if axis == 0 else -lat
            speed = 0.0 if parked else direction * rng.uniform(3.0, 11.0)
            big = rng.uniform() < 0.12
            out["size"].append((7.0 if big else 4.4, 2.3 if big else 1.8, 2.9 if big else 1.5))
            out["rgb"].append(np.clip(rng.uniform(0, 1, 3) ** 1.5 + 0.05, 0, 1))
            out["cls"].append(_VEHICLE)
            out["axis"].append(axis), out["pos"].append(pos), out["lat"].append(lat)
            out["s0"].append(rng.uniform(0, length)), out["speed"].append(speed)
        n_ped = rng.poisson(ped_density * length / 100.0 * 2)
        for _ in range(n_ped):
            lat = (1 if rng.uniform() < 0.5 else -1) * (half + rng.uniform(0.8, 2.6))
            out["size"].append((0.45, 0.5, rng.uniform(1.55, 1.9)))
            out["rgb"].append(rng.uniform(0.1, 0.9, 3))
            out["cls"].append(_PED)
            out["axis"].append(axis), out["pos"].append(pos), out["lat"].append(lat)
            out["s0"].append(rng.uniform(0, length)), out["speed"].append(rng.choice([-1, 1]) * rng.uniform(0.0, 1.6))
    arr = {k: np.asarray(v) for k, v in out.items()}
    arr["length"] = np.where(arr["axis"] == 0, extent[1], extent[0]) if len(arr["axis"]) else np.zeros(0)
    return arr


def _dynamic_objects(cfg, extent: tuple[float, float], clutter_seed: int, veh_density: float, ped_density: float,
                     stamp: float) -> dict[str, np.ndarray]:
    p = _dynamic_params((cfg.blocks_x, cfg.blocks_y, cfg.pitch_m, cfg.road_width_m), extent, int(clutter_seed),
                        float(veh_density), float(ped_density))
    if len(p["cls"]) == 0:
        return {"boxes": np.zeros((0, 6)), "cls": np.zeros(0, np.uint8), "rgb": np.zeros((0, 3), np.float32)}
    s = np.mod(p["s0"] + p["speed"] * stamp, p["length"])
    along, across, tall = p["size"][:, 0], p["size"][:, 1], p["size"][:, 2]
    along_axis = p["axis"] == 0  # moves along y
    cx = np.where(along_axis, p["pos"] + p["lat"], s)
    cy = np.where(along_axis, s, p["pos"] + p["lat"])
    hx = np.where(along_axis, across, along) / 2
    hy = np.where(along_axis, along, across) / 2
    boxes = np.column_stack([cx - hx, cy - hy, np.zeros_like(cx), cx + hx, cy + hy, tall])
    return {"boxes": boxes, "cls": p["cls"].astype(np.uint8), "rgb": p["rgb"].astype(np.float32)}
