"""Synthetic towns and the ray caster: determinism, true perspective geometry, aliasing, clutter."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from clino_vpr_ros.synth import (
    CONDITIONS, LABELS, Renderer, TownConfig, generate_town, make_base_T_camera, pose2d, sample_condition,
)

TOWN_SEED = 7
CLUTTER = (LABELS["vehicle"], LABELS["pedestrian"])


@pytest.fixture(scope="module")
def town():
    return generate_town(TOWN_SEED)


@pytest.fixture(scope="module")
def renderer(town):
    return Renderer(town, (240, 320))


def _street_camera(town, block_line: int, along_m: float, lateral_m: float = 1.5, yaw_deg: float = 0.0) -> np.ndarray:
    """Camera driving north on road x = block_line * pitch, in the right-hand lane."""
    x = block_line * town.cfg.pitch_m + lateral_m
    return pose2d(x, along_m, math.pi / 2 + math.radians(yaw_deg)) @ make_base_T_camera()


def test_town_and_frames_are_deterministic_from_seed(town, renderer) -> None:
    again = generate_town(TOWN_SEED)
    np.testing.assert_array_equal(town.buildings, again.buildings)
    np.testing.assert_array_equal(town.noise, again.noise)
    assert not np.array_equal(generate_town(TOWN_SEED + 1).buildings, town.buildings)
    pose = _street_camera(town, 3, 80.0)
    a = renderer.render(pose, CONDITIONS["dusk"], 12.3)
    b = Renderer(again, (240, 320)).render(pose, CONDITIONS["dusk"], 12.3)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert sample_condition(5) == sample_condition(5) and sample_condition(5) != sample_condition(6)


def test_outputs_have_documented_types_and_metric_depth(town, renderer) -> None:
    cam_height = 1.6
    out = renderer.render(_street_camera(town, 3, 80.0), CONDITIONS["day"], 0.0)
    assert out.rgb.shape == (240, 320, 3) and out.rgb.dtype == np.uint8
    assert out.depth.shape == (240, 320) and out.depth.dtype == np.float32
    assert out.labels.dtype == np.uint8
    sky = out.labels == LABELS["sky"]
    assert sky.any() and np.all(np.isinf(out.depth[sky])) and np.all(np.isfinite(out.depth[~sky]))
    # a road pixel straight below the horizon: z-depth of the ground plane is h * fy / (v - cy)
    k = renderer.K
    v = 200
    u = int(round(k[0, 2]))
    assert out.labels[v, u] == LABELS["road"]
    assert out.depth[v, u] == pytest.approx(cam_height * k[1, 1] / (v - k[1, 2]), rel=1e-4)
    assert k[0, 0] == pytest.approx(160.0 / math.tan(math.radians(45.0)))


def test_depth_reprojects_between_views(town, renderer) -> None:
    """Back-project pixels of view A with their depth and K, move them into view B: B sees them at that depth."""
    a_pose = _street_camera(town, 2, 60.0)
    b_pose = _street_camera(town, 2, 64.0, lateral_m=4.0, yaw_deg=12.0)
    cond = CONDITIONS["day"].with_clutter(123456)
    cond = type(cond)(**{**cond.__dict__, "vehicle_density": 0.0, "pedestrian_density": 0.0})
    a, b = renderer.render(a_pose, cond), renderer.render(b_pose, cond)
    k = renderer.K
    vs, us = np.nonzero(a.labels == LABELS["building"])
    pts = np.linalg.inv(k) @ np.vstack([us, vs, np.ones_like(us)]) * a.depth[vs, us]
    world = a_pose[:3, :3] @ pts + a_pose[:3, 3:4]
    b_inv = np.linalg.inv(b_pose)
    pb = b_inv[:3, :3] @ world + b_inv[:3, 3:4]
    uv = (k @ pb)[:2] / pb[2]
    ui, vi = np.round(uv).astype(int)
    inside = (pb[2] > 0) & (ui >= 0) & (ui < 320) & (vi >= 0) & (vi < 240)
    predicted, seen = pb[2][inside], b.depth[vi[inside], ui[inside]]
    visible = seen > predicted * 0.98  # not hidden behind something nearer in B
    assert inside.sum() > 5000
    agree = np.abs(seen[visible] - predicted[visible]) < 0.05 * predicted[visible] + 0.1
    assert agree.mean() > 0.95


def test_revisit_views_verify_with_essential_matrix(town, renderer) -> None:
    """A revisit (2.5 m lateral, 3 m along, 10 deg yaw, other traffic): SIFT + essential matrix with the known K
    finds >= 30 inliers and recovers the true relative rotation within a few degrees."""
    a_pose = _street_camera(town, 3, 80.0)
    b_pose = _street_camera(town, 3, 83.0, lateral_m=4.0, yaw_deg=10.0)
    a = renderer.render(a_pose, CONDITIONS["day"], 0.0).rgb
    b = renderer.render(b_pose, CONDITIONS["day"].with_clutter(99), 30.0).rgb
    sift = cv2.SIFT_create(2000)
    ka, da = sift.detectAndCompute(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), None)
    kb, db = sift.detectAndCompute(cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)
    matches = [m for m, n in cv2.BFMatcher().knnMatch(da, db, k=2) if m.distance < 0.8 * n.distance]
    pa = np.float64([ka[m.queryIdx].pt for m in matches])
    pb = np.float64([kb[m.trainIdx].pt for m in matches])
    e, mask = cv2.findEssentialMat(pa, pb, renderer.K, cv2.RANSAC, 0.999, 1.0)
    n_good, rot, _, _ = cv2.recoverPose(e, pa, pb, renderer.K, mask=mask)
    assert n_good >= 30
    truth = (np.linalg.inv(b_pose) @ a_pose)[:3, :3]
    angle = math.degrees(math.acos(np.clip((np.trace(rot.T @ truth) - 1) / 2, -1, 1)))
    assert angle < 3.0


def test_perceptual_aliasing_fraction() -> None:
    for seed in range(5):
        assert generate_town(seed).aliasing_fraction() >= 0.3
    assert generate_town(0, TownConfig(aliasing_fraction=0.0)).aliasing_fraction() == 0.0


def test_clutter_changes_between_visits_but_buildings_do_not(town, renderer) -> None:
    pose = _street_camera(town, 3, 70.0)
    day = renderer.render(pose, CONDITIONS["day"], 0.0)
    other = renderer.render(pose, CONDITIONS["day"].with_clutter(4242), 0.0)
    later = renderer.render(pose, CONDITIONS["day"], 3.0)  # moving objects move with the stamp
    for b in (other, later):
        diff = day.labels != b.labels
        assert diff.any(), "vehicles/pedestrians should differ"
        clutter = np.isin(day.labels, CLUTTER) | np.isin(b.labels, CLUTTER)
        assert np.all(clutter[diff]), "only vehicles and pedestrians may change within a season"
        both = (day.labels == LABELS["building"]) & (b.labels == LABELS["building"])
        np.testing.assert_array_equal(day.depth[both], b.depth[both])
    # season: vegetation changes, buildings stay put
    winter = renderer.render(pose, CONDITIONS["winter"], 0.0)
    veg = LABELS["vegetation"]
    assert (winter.labels == veg).sum() < 0.8 * (day.labels == veg).sum()
    diff = day.labels != winter.labels
    changed_ok = np.isin(day.labels, CLUTTER + (veg,)) | np.isin(winter.labels, CLUTTER + (veg,))
    assert np.all(changed_ok[diff])


def test_appearance_changes_with_condition(town, renderer) -> None:
    pose = _street_camera(town, 3, 70.0)
    means = {name: renderer.render(pose, CONDITIONS[name]).rgb.astype(float).mean() for name in ("day", "night", "overcast_fog")}
    assert means["night"] < 0.5 * means["day"]
    fog = renderer.render(pose, CONDITIONS["overcast_fog"]).rgb.astype(float)
    assert fog.std() < renderer.render(pose, CONDITIONS["day"]).rgb.astype(float).std()  # fog washes out contrast


def test_renderer_rejects_tilted_cameras(town, renderer) -> None:
    pose = _street_camera(town, 3, 70.0)
    tilt = np.eye(4)
    c, s = math.cos(0.2), math.sin(0.2)
    tilt[:3, :3] = [[1, 0, 0], [0, c, -s], [0, s, c]]
    with pytest.raises(ValueError, match="upright"):
        renderer.render(pose @ tilt, CONDITIONS["day"])
    with pytest.raises(ValueError):
        Renderer(town, (4, 4))
