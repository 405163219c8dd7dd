"""Synthetic datasets and bags: rosbags round trip, ground truth files, GSV/downloader names, CLI."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from clino_vpr_ros.synth import CONDITIONS, SessionConfig, generate_session, generate_town
from clino_vpr_ros.synth.cli import main as synth_main
from clino_vpr_ros.synth.geo import latlon_to_utm, town_to_utm, utm_to_latlon, utm_to_town
from clino_vpr_ros.synth.writers import (
    parse_downloader_name, read_session_groundtruth, write_bag, write_downloader_sets, write_gsv_dataset,
)

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
CFG = SessionConfig(n_frames=150, image_size=(48, 64), odom_offset=(4.0, -3.0, 7.0))


@pytest.fixture(scope="module")
def session():
    return generate_session(generate_town(952), "s2", 2, CONDITIONS["dusk"], CFG)


def _messages(bag: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    with Reader(bag) as reader:
        for conn, stamp_ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((stamp_ns, TYPESTORE.deserialize_cdr(raw, conn.msgtype)))
    return out


def test_bag_round_trip_mcap(session, tmp_path: Path) -> None:
    out = write_bag(session, tmp_path / "s2", storage="mcap", progress=False)
    msgs = _messages(out / "bag")
    assert {"/camera/image_raw", "/camera/camera_info", "/odom", "/tf_static"} <= set(msgs)
    images, infos, odoms = msgs["/camera/image_raw"], msgs["/camera/camera_info"], msgs["/odom"]
    assert len(images) == len(infos) == len(odoms) == 150
    stamps = np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in images])
    np.testing.assert_allclose(stamps, session.stamps, atol=1e-9)
    np.testing.assert_array_equal([t for t, _ in images], np.round(session.stamps * 1e9).astype(np.int64))
    img = images[7][1]
    assert (img.encoding, img.height, img.width, img.step) == ("rgb8", 48, 64, 64 * 3)
    np.testing.assert_array_equal(img.data.reshape(48, 64, 3), session.render(7).rgb)
    np.testing.assert_allclose(infos[0][1].k.reshape(3, 3), session.K)
    odom = odoms[-1][1]
    assert (odom.header.frame_id, odom.child_frame_id) == ("odom", "base_link")
    p = odom.pose.pose.position
    np.testing.assert_allclose([p.x, p.y], session.odom_T_base[-1, :2, 3], atol=1e-9)

    # ground truth beside the bag
    gt_stamps, poses, loops, meta = read_session_groundtruth(out)
    np.testing.assert_allclose(gt_stamps, session.stamps, atol=1e-9)
    np.testing.assert_allclose(poses, session.world_T_base, atol=1e-5)
    pairs = session.gt_loop_pairs()
    np.testing.assert_allclose(loops, session.stamps[pairs], atol=1e-9)
    assert meta["schema_version"] == 1 and meta["town_seed"] == 952 and meta["condition"]["name"] == "dusk"
    np.testing.assert_allclose(meta["world_T_odom"], session.world_T_odom)
    np.testing.assert_allclose(meta["base_T_camera"], session.base_T_camera)
    # odometry drift grows with distance travelled: compare the bag's odom with drift-free odom
    truth = np.linalg.inv(np.array(meta["world_T_odom"])) @ poses
    bag_xy = np.array([[m.pose.pose.position.x, m.pose.pose.position.y] for _, m in odoms])
    err = np.linalg.norm(bag_xy - truth[:, :2, 3], axis=1)
    assert err[-1] > err[40] > err[1] - 1e-9
    with pytest.raises(FileExistsError):
        write_bag(session, out, progress=False)


def test_bag_compressed_sqlite3(session, tmp_path: Path) -> None:
    short = replace(session, frames=session.frames[:5])
    out = write_bag(short, tmp_path / "c", storage="sqlite3", compressed=True, progress=False)
    assert (out / "bag" / "metadata.yaml").is_file() and list((out / "bag").glob("*.db3"))
    msgs = _messages(out / "bag")
    assert "/camera/image_raw" not in msgs
    _, msg = msgs["/camera/image_raw/compressed"][2]
    assert "jpeg" in msg.format
    bgr = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_COLOR)
    diff = np.abs(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(int) - short.render(2).rgb.astype(int))
    assert diff.mean() < 6.0


def test_gsv_dataset_names_parse_back(tmp_path: Path) -> None:
    root = write_gsv_dataset(tmp_path / "gsv", [3], places_per_town=6, img_per_place=4, image_size=(32, 32),
                             progress=False)
    rows = list(csv.DictReader(open(root / "Dataframes" / "SynthTown0003.csv")))
    assert list(rows[0]) == ["place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid"]
    assert len(rows) == 24
    by_place: dict[int, list] = {}
    for r in rows:
        name = (f"{r['city_id']}_{int(r['place_id']):07d}_{int(r['year']):04d}_{int(r['month']):02d}_"
                f"{int(r['northdeg']):03d}_{r['lat']}_{r['lon']}_{r['panoid']}.jpg")
        assert (root / "Images" / r["city_id"] / name).is_file()
        east, north = latlon_to_utm(float(r["lat"]), float(r["lon"]))
        by_place.setdefault(int(r["place_id"]), []).append(np.array(utm_to_town(3, east, north)))
    for views in by_place.values():
        assert len(views) == 4
        spread = max(np.linalg.norm(a - b) for a in views for b in views)
        assert spread < 8.0  # one place: +-3 m along, +-1.5 m lateral jitter
        for x, y in views:  # every view stands on a road (within the 12 m carriageway of a grid line)
            assert min(_road_offset(x), _road_offset(y)) <= 6.0
    centres = np.array([np.mean(v, axis=0) for v in by_place.values()])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=2) + np.eye(len(centres)) * 1e9
    assert gaps.min() > 5.0  # distinct places
    assert json.loads((root / "synth_gsv.json").read_text())["schema_version"] == 1


def _road_offset(v: float, pitch: float = 42.0) -> float:
    return abs(v - round(v / pitch) * pitch)


def test_downloader_sets_geometry(tmp_path: Path) -> None:
    sets = write_downloader_sets(tmp_path / "eval", 901, n_places=12, image_size=(32, 32), progress=False)
    assert set(sets) == {"same", "cross"}
    for root in sets.values():
        db = sorted((root / "images" / "test" / "database").glob("*.jpg"))
        qs = sorted((root / "images" / "test" / "queries").glob("*.jpg"))
        assert len(db) == len(qs) == 12
        pos_db = {p.name.split("@")[7][2:]: np.array(parse_downloader_name(p.name)) for p in db}
        pos_q = {p.name.split("@")[7][1:]: np.array(parse_downloader_name(p.name)) for p in qs}
        for key, q in pos_q.items():
            assert np.linalg.norm(q - pos_db[key]) < 10.0  # a positive within 10 m
            x, y = utm_to_town(901, *q)
            assert min(_road_offset(x), _road_offset(y)) <= 6.0
        pts = np.array(list(pos_db.values()))
        d = np.linalg.norm(pts[:, None] - pts[None], axis=2)[np.triu_indices(len(pts), 1)]
        assert np.mean(d > 25.0) > 0.9  # database places are mostly > 25 m apart
        name = db[0].name
        parts = name.split("@")
        assert parts[3:5] == ["33", "T"] and name.endswith("@@@@@@@.jpg")
        lat, lon = utm_to_latlon(float(parts[1]), float(parts[2]))
        assert (float(parts[5]), float(parts[6])) == pytest.approx((float(lat), float(lon)), abs=2e-6)


def test_utm_round_trip() -> None:
    east, north = town_to_utm(5, np.array([0.0, 123.4]), np.array([0.0, 250.0]))
    lat, lon = utm_to_latlon(east, north)
    assert 40 < lat[0] < 48 and 12 < lon[0] < 18  # zone 33T
    e2, n2 = latlon_to_utm(lat, lon)
    np.testing.assert_allclose(e2, east, atol=0.01)
    np.testing.assert_allclose(n2, north, atol=0.01)


def test_cli_sessions_preview_bench(tmp_path: Path, capsys) -> None:
    assert synth_main(["sessions", "--out", str(tmp_path / "bags"), "--town", "953", "--frames", "150",
                       "--size", "24", "32"]) == 0
    meta1 = read_session_groundtruth(tmp_path / "bags" / "s1")[3]
    meta2 = read_session_groundtruth(tmp_path / "bags" / "s2")[3]
    assert meta1["condition"]["name"] != meta2["condition"]["name"]
    rel = np.linalg.inv(np.array(meta1["world_T_odom"])) @ np.array(meta2["world_T_odom"])
    assert np.linalg.norm(rel[:2, 3]) == pytest.approx(5.0)
    assert math.degrees(math.atan2(rel[1, 0], rel[0, 0])) == pytest.approx(7.0)
    png = tmp_path / "preview.png"
    assert synth_main(["preview", "--out", str(png), "--town", "953", "--frames", "150", "--size", "24", "32",
                       "--per-session", "2"]) == 0
    picture = cv2.imread(str(png))  # a real picture: map and contact sheet, not a blank canvas
    assert picture is not None and picture.shape[0] > 100 and picture.shape[1] > 100 and picture.std() > 10
    capsys.readouterr()
    assert synth_main(["bench", "--frames", "3", "--size", "24", "32"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # what a user reads: how many frames of which size, and a throughput consistent with them
    assert report["frames"] == 3 and report["image_size"] == [24, 32] and report["condition"]
