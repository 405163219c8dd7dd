"""Writers: ROS 2 bags with ground truth, GSV-Cities training sets, downloader-format eval sets.

Every artifact is written into a temporary sibling directory and moved into place with ``os.replace``
so an interrupted run never leaves a half-written dataset under the final name; GSV cities already
present are skipped (resumable). JSON side files carry ``schema_version``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from clino_vpr_ros.atomic import atomic_write
from clino_vpr_ros.geometry import matrix_to_quaternion
from clino_vpr_ros.synth.conditions import CONDITIONS, sample_condition
from clino_vpr_ros.synth.geo import UTM_LETTER, UTM_ZONE, town_to_utm, utm_to_latlon
from clino_vpr_ros.synth.render import Renderer
from clino_vpr_ros.synth.session import Session, make_base_T_camera, pose2d
from clino_vpr_ros.synth.town import Town, TownConfig, generate_town

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TOPIC_IMAGE = "/camera/image_raw"
TOPIC_COMPRESSED = "/camera/image_raw/compressed"
TOPIC_INFO = "/camera/camera_info"
TOPIC_ODOM = "/odom"
TOPIC_TF_STATIC = "/tf_static"
FRAME_CAMERA = "camera_optical_frame"
BAG_SUBDIR = "bag"
STORAGES = ("mcap", "sqlite3")
GT_LOOP_PARAMS = {"radius_m": 8.0, "max_yaw_deg": 30.0, "min_gap_s": 20.0}


# ---------------------------------------------------------------------- small helpers
def rotation_to_quaternion(rot: np.ndarray) -> tuple[float, float, float, float]:
    """(3,3) rotation -> (qx, qy, qz, qw), qw >= 0."""
    return matrix_to_quaternion(rot)  # SciPy 1.8 (Humble) has no as_quat(canonical=True)


def quaternion_to_rotation(qx: float, qy: float, qz: float, qw: float) -> np.ndarray:
    """(qx, qy, qz, qw) -> (3,3) float64 rotation (the quaternion is normalised)."""
    return Rotation.from_quat([qx, qy, qz, qw]).as_matrix()


def _stamp_ns(t: float) -> int:
    return int(round(t * 1e9))


def _tmp_dir_for(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def _publish_dir(tmp: Path, final: Path, overwrite: bool) -> None:
    if final.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{final} exists; remove it or pass overwrite=True")
        shutil.rmtree(final)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a published dataset is not
    os.replace(tmp, final)


def _write_json_atomic(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode("utf-8")))


def _imwrite_jpg(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"could not write {path}")


# ---------------------------------------------------------------------- ROS 2 bags
def _messages(typestore, session: Session, compressed: bool):
    """Yield (topic, stamp_ns, msgtype, message) in time order. Rendering happens here, lazily."""
    T = typestore.types
    h, w = session.image_size
    k = session.K
    p = np.zeros((3, 4))
    p[:, :3] = k

    def header(t: float, frame: str):
        sec = int(math.floor(t))
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000),
                                        frame_id=frame)

    bc = session.base_T_camera
    q = rotation_to_quaternion(bc[:3, :3])
    tf = T["geometry_msgs/msg/TransformStamped"](
        header=header(session.frames[0].stamp, "base_link"), child_frame_id=FRAME_CAMERA,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=bc[0, 3], y=bc[1, 3], z=bc[2, 3]),
            rotation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))
    yield TOPIC_TF_STATIC, _stamp_ns(session.frames[0].stamp), "tf2_msgs/msg/TFMessage", T["tf2_msgs/msg/TFMessage"](transforms=[tf])

    odom = session.odom_T_base
    cfg = session.cfg
    pos_var = (cfg.odom_trans_noise**2) * 1.0 + 1e-6
    yaw_var = math.radians(cfg.odom_yaw_noise_deg) ** 2 + 1e-8
    cov = np.diag([pos_var, pos_var, 1e-6, 1e-6, 1e-6, yaw_var]).ravel()
    for i, fr in enumerate(session.frames):
        t = fr.stamp
        out = session.render(i)
        if compressed:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out.rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise OSError("JPEG encoding failed")
            msg = T["sensor_msgs/msg/CompressedImage"](header=header(t, FRAME_CAMERA), format="rgb8; jpeg compressed bgr8",
                                                       data=np.frombuffer(buf.tobytes(), np.uint8))
            yield TOPIC_COMPRESSED, _stamp_ns(t), "sensor_msgs/msg/CompressedImage", msg
        else:
            msg = T["sensor_msgs/msg/Image"](header=header(t, FRAME_CAMERA), height=h, width=w, encoding="rgb8",
                                             is_bigendian=0, step=w * 3, data=np.ascontiguousarray(out.rgb).ravel())
            yield TOPIC_IMAGE, _stamp_ns(t), "sensor_msgs/msg/Image", msg
        info = T["sensor_msgs/msg/CameraInfo"](
            header=header(t, FRAME_CAMERA), height=h, width=w, distortion_model="plumb_bob", d=np.zeros(5),
            k=k.ravel().astype(np.float64), r=np.eye(3).ravel(), p=p.ravel(), binning_x=0, binning_y=0,
            roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
        yield TOPIC_INFO, _stamp_ns(t), "sensor_msgs/msg/CameraInfo", info
        yield TOPIC_ODOM, _stamp_ns(t), "nav_msgs/msg/Odometry", _odom_msg(T, header(t, "odom"), odom, i, session, cov)


def _odom_msg(T, hdr, odom: np.ndarray, i: int, session: Session, cov: np.ndarray):
    cur = odom[i]
    q = rotation_to_quaternion(cur[:3, :3])
    j = max(i - 1, 0)
    dt = max(session.frames[i].stamp - session.frames[j].stamp, 1e-9)
    rel = np.linalg.inv(odom[j]) @ cur if i > 0 else np.eye(4)
    vx, vy = rel[0, 3] / dt, rel[1, 3] / dt
    wz = math.atan2(rel[1, 0], rel[0, 0]) / dt
    V = T["geometry_msgs/msg/Vector3"]
    return T["nav_msgs/msg/Odometry"](
        header=hdr, child_frame_id="base_link",
        pose=T["geometry_msgs/msg/PoseWithCovariance"](
            pose=T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=cur[0, 3], y=cur[1, 3], z=cur[2, 3]),
                                             orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])),
            covariance=cov.astype(np.float64)),
        twist=T["geometry_msgs/msg/TwistWithCovariance"](
            twist=T["geometry_msgs/msg/Twist"](linear=V(x=vx, y=vy, z=0.0), angular=V(x=0.0, y=0.0, z=wz)),
            covariance=cov.astype(np.float64)))


def _latched_qos():
    """RELIABLE + TRANSIENT_LOCAL depth 1, as tf_static is published, so a player latches it."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    never = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
               durability=QosDurability.TRANSIENT_LOCAL, deadline=never, lifespan=never,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=never,
               avoid_ros_namespace_conventions=False)


def session_metadata(session: Session) -> dict:
    """The session.json content (also usable without writing a bag)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "clino_vpr_ros.synth.session",
        "town_seed": session.town.seed,
        "town_config": asdict(session.town.cfg),
        "session_id": session.session_id,
        "session_seed": session.seed,
        "session_config": asdict(session.cfg),
        "condition": asdict(session.condition),
        "n_frames": len(session.frames),
        "K": session.K.tolist(),
        "image_size": list(session.image_size),
        "image_size_order": "height,width",
        "base_T_camera": session.base_T_camera.tolist(),
        "world_T_odom": session.world_T_odom.tolist(),
        "route_rect_blocks": list(session.route_rect),
        "gt_loop_params": GT_LOOP_PARAMS,
        "topics": {"image": TOPIC_IMAGE, "compressed": TOPIC_COMPRESSED, "camera_info": TOPIC_INFO,
                   "odom": TOPIC_ODOM, "tf_static": TOPIC_TF_STATIC},
        "frames": {"odom": "odom", "base": "base_link", "camera": FRAME_CAMERA},
    }


def write_session_groundtruth(session: Session, out_dir: Path) -> None:
    """groundtruth.csv, loops.csv and session.json for a session into an existing directory."""
    out_dir = Path(out_dir)
    with open(out_dir / "groundtruth.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["stamp", "x", "y", "z", "qx", "qy", "qz", "qw"])
        for fr in session.frames:
            q = rotation_to_quaternion(fr.world_T_base[:3, :3])
            wr.writerow([f"{fr.stamp:.9f}", *(f"{v:.6f}" for v in fr.world_T_base[:3, 3]), *(f"{v:.9f}" for v in q)])
    pairs = session.gt_loop_pairs(**GT_LOOP_PARAMS)
    stamps = session.stamps
    with open(out_dir / "loops.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["query_stamp", "match_stamp"])
        for a, b in pairs:
            wr.writerow([f"{stamps[a]:.9f}", f"{stamps[b]:.9f}"])
    _write_json_atomic(out_dir / "session.json", session_metadata(session))


def write_bag(session: Session, out_dir: Path, storage: str = "mcap", compressed: bool = False,
              overwrite: bool = False, progress: bool = True) -> Path:
    """Render a session into a ROS 2 bag with ground truth beside it. Returns ``out_dir``.

    Layout: ``out_dir/bag/`` (rosbag2, ``storage`` "mcap" or "sqlite3"), ``out_dir/groundtruth.csv``,
    ``out_dir/loops.csv``, ``out_dir/session.json``. Topics: /camera/image_raw (rgb8) or, with
    ``compressed``, /camera/image_raw/compressed (jpeg); /camera/camera_info; /odom; /tf_static.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; valid: {', '.join(STORAGES)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; remove it or pass overwrite=True")
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    tmp = _tmp_dir_for(out_dir)
    try:
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        conns: dict[str, object] = {}
        with Writer(tmp / BAG_SUBDIR, version=9, storage_plugin=plugin) as writer:
            msgs = _messages(typestore, session, compressed)
            for topic, ns, msgtype, msg in tqdm(msgs, total=3 * len(session.frames) + 1, disable=not progress,
                                                desc=f"bag {session.session_id}", unit="msg"):
                if topic not in conns:
                    qos = (_latched_qos(),) if topic == TOPIC_TF_STATIC else ()
                    conns[topic] = writer.add_connection(topic, msgtype, typestore=typestore, offered_qos_profiles=qos)
                writer.write(conns[topic], ns, typestore.serialize_cdr(msg, msgtype))
        write_session_groundtruth(session, tmp)
        _publish_dir(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s (%d frames, %s)", out_dir, len(session.frames), storage)
    return out_dir


def read_session_groundtruth(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Read what :func:`write_bag` put beside a bag.

    Returns stamps (N,) float64, world_T_base (N,4,4) float64, loop pair stamps (P,2) float64
    [query_stamp, match_stamp], and the session.json dict.
    """
    d = Path(directory)
    for name in ("groundtruth.csv", "loops.csv", "session.json"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name} missing; expected a directory written by write_bag")
    meta = json.loads((d / "session.json").read_text())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{d / 'session.json'} has schema_version {meta.get('schema_version')}, expected {SCHEMA_VERSION}")
    gt = np.loadtxt(d / "groundtruth.csv", delimiter=",", skiprows=1, ndmin=2)
    poses = np.repeat(np.eye(4)[None], len(gt), axis=0)
    for i, row in enumerate(gt):
        poses[i, :3, :3] = quaternion_to_rotation(*row[4:8])
        poses[i, :3, 3] = row[1:4]
    loops = np.loadtxt(d / "loops.csv", delimiter=",", skiprows=1, ndmin=2).reshape(-1, 2)
    return gt[:, 0].copy(), poses, loops, meta


# ---------------------------------------------------------------------- places on the road network
def road_places(town: Town, spacing_m: float, rng: np.random.Generator, lane_m: float = 1.5) -> np.ndarray:
    """Candidate viewpoints on inner roads, both driving directions, every ``spacing_m`` metres.

    Returns (M,3) float64 [x, y, yaw] of base poses in the right-hand lane, shuffled by ``rng``.
    """
    cfg = town.cfg
    p = cfg.pitch_m
    w, h = town.extent
    rows = []
    for axis, n, length in ((0, cfg.blocks_x, h), (1, cfg.blocks_y, w)):
        for line in range(1, n):
            for direction in (1, -1):
                s = np.arange(rng.uniform(0.3, 0.7) * spacing_m + p * 0.5, length - p * 0.5, spacing_m)
                yaw = (math.pi / 2 if axis == 0 else 0.0) + (0.0 if direction > 0 else math.pi)
                right = (math.sin(yaw), -math.cos(yaw))
                x = line * p + right[0] * lane_m if axis == 0 else s + right[0] * lane_m
                y = s + right[1] * lane_m if axis == 0 else line * p + right[1] * lane_m
                rows.append(np.column_stack([np.broadcast_to(x, s.shape), np.broadcast_to(y, s.shape),
                                             np.full(s.shape, yaw)]))
    places = np.concatenate(rows)
    return places[rng.permutation(len(places))]


def town_with_capacity(seed: int, spacing_m: float, n_places: int, max_blocks: int = 16) -> tuple[Town, np.ndarray]:
    """The default town of ``seed``, grown (more blocks) until it holds ``n_places`` viewpoints ``spacing_m`` apart.

    Returns the town and its shuffled places (M,3) [x, y, yaw] (see :func:`road_places`).
    """
    for blocks in range(TownConfig().blocks_x, max_blocks + 1):
        town = generate_town(seed, replace(TownConfig(), blocks_x=blocks, blocks_y=blocks))
        places = road_places(town, spacing_m, np.random.default_rng([int(seed), int(spacing_m * 10), 0x91A]))
        if len(places) >= n_places:
            return town, places
    raise ValueError(f"{n_places} places {spacing_m} m apart do not fit a {max_blocks}x{max_blocks}-block town")


def _camera_pose(x: float, y: float, yaw: float) -> np.ndarray:
    return pose2d(x, y, yaw) @ make_base_T_camera()


def _jitter(rng: np.random.Generator, place: np.ndarray, along_m: float, lateral_m: float, yaw_deg: float) -> np.ndarray:
    x, y, yaw = place
    a, l = rng.uniform(-along_m, along_m), rng.uniform(-lateral_m, lateral_m)
    fwd, right = np.array([math.cos(yaw), math.sin(yaw)]), np.array([math.sin(yaw), -math.cos(yaw)])
    xy = np.array([x, y]) + a * fwd + l * right
    return np.array([xy[0], xy[1], yaw + math.radians(rng.uniform(-yaw_deg, yaw_deg))])


def _northdeg(yaw: float) -> int:
    """Compass heading (0 = north, clockwise) of a yaw measured from east counter-clockwise."""
    return int(round(90.0 - math.degrees(yaw))) % 360


_SEASON_MONTHS = {"spring": (3, 4, 5), "summer": (6, 7, 8), "autumn": (9, 10, 11), "winter": (12, 1, 2)}


def _fmt_deg(v: float) -> str:
    """Shortest round-trip text of a coordinate rounded to 1e-6 deg (~0.1 m), as pandas prints it."""
    return repr(round(float(v), 6))


def gsv_city_name(town_seed: int) -> str:
    return f"SynthTown{int(town_seed):04d}"


# ---------------------------------------------------------------------- GSV-Cities
def write_gsv_dataset(out: Path, town_seeds: Sequence[int], places_per_town: int, img_per_place: int = 4,
                      image_size: tuple[int, int] = (224, 224), progress: bool = True) -> Path:
    """GSV-Cities-format training set, one city per town seed. Returns ``out``.

    Each place is a road viewpoint seen ``img_per_place`` times under different sampled conditions
    (time of day, weather, season, clutter) with viewpoint jitter (+-3 m along, +-1.5 m lateral,
    +-12 deg yaw). Places are >= 15 m apart along a road direction. Cities already complete are skipped.
    """
    if places_per_town < 1 or img_per_place < 2:
        raise ValueError("need places_per_town >= 1 and img_per_place >= 2 (a place needs several views)")
    out = Path(out)
    (out / "Dataframes").mkdir(parents=True, exist_ok=True)
    (out / "Images").mkdir(parents=True, exist_ok=True)
    for seed in town_seeds:
        city = gsv_city_name(seed)
        csv_path = out / "Dataframes" / f"{city}.csv"
        if csv_path.is_file() and (out / "Images" / city).is_dir():
            logger.info("city %s already written, skipping", city)
            continue
        _write_gsv_city(out, int(seed), city, places_per_town, img_per_place, image_size, progress)
    _write_json_atomic(out / "synth_gsv.json", {
        "schema_version": SCHEMA_VERSION, "kind": "clino_vpr_ros.synth.gsv", "town_seeds": [int(s) for s in town_seeds],
        "places_per_town": places_per_town, "img_per_place": img_per_place, "image_size": list(image_size)})
    return out


def _write_gsv_city(out: Path, seed: int, city: str, n_places: int, k: int, image_size: tuple[int, int],
                    progress: bool) -> None:
    town, places = town_with_capacity(seed, 15.0, n_places)
    renderer = Renderer(town, image_size)
    rng = np.random.default_rng([seed, 0x65F])
    img_final = out / "Images" / city
    tmp = _tmp_dir_for(img_final)
    rows = []
    try:
        for pid in tqdm(range(n_places), desc=city, unit="place", disable=not progress):
            for view in range(k):
                cond = sample_condition(int(rng.integers(0, 2**31 - 1)))
                x, y, yaw = _jitter(rng, places[pid], 3.0, 1.5, 12.0)
                rgb = renderer.render(_camera_pose(x, y, yaw), cond, float(rng.uniform(0, 3600))).rgb
                east, north = town_to_utm(seed, x, y)
                lat, lon = utm_to_latlon(east, north)
                year, month = 2014 + int(rng.integers(0, 11)), int(rng.choice(_SEASON_MONTHS[cond.season]))
                row = {"place_id": pid, "year": year, "month": month, "northdeg": _northdeg(yaw), "city_id": city,
                       "lat": _fmt_deg(lat), "lon": _fmt_deg(lon),
                       "panoid": hashlib.sha1(f"{seed}/{pid}/{view}".encode()).hexdigest()[:22]}
                name = (f"{city}_{pid:07d}_{year:04d}_{month:02d}_{row['northdeg']:03d}_{row['lat']}_{row['lon']}_"
                        f"{row['panoid']}.jpg")
                _imwrite_jpg(tmp / name, rgb)
                rows.append(row)
        _publish_dir(tmp, img_final, overwrite=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    csv_tmp = out / "Dataframes" / f".{city}.csv.tmp"
    with open(csv_tmp, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid"])
        wr.writeheader()
        wr.writerows(rows)
    os.replace(csv_tmp, out / "Dataframes" / f"{city}.csv")


# ---------------------------------------------------------------------- downloader format
def downloader_name(town_seed: int, x: float, y: float, pano_id: str) -> str:
    """``@east@north@zone@letter@lat@lon@pano_id@@@@@@@.jpg`` for town metres (x, y)."""
    east, north = town_to_utm(town_seed, x, y)
    lat, lon = utm_to_latlon(east, north)
    return f"@{float(east):.2f}@{float(north):.2f}@{UTM_ZONE}@{UTM_LETTER}@{float(lat):.6f}@{float(lon):.6f}@{pano_id}@@@@@@@.jpg"


def parse_downloader_name(name: str) -> tuple[float, float]:
    """UTM (east, north) from a downloader-format file name."""
    parts = Path(name).name.split("@")
    if len(parts) < 8:
        raise ValueError(f"{name!r} is not a downloader-format name (@east@north@zone@letter@lat@lon@pano@...)")
    return float(parts[1]), float(parts[2])


_CROSS_CONDITIONS = ("dusk", "overcast_fog", "autumn_rain", "night", "winter")


def downloader_layout(town_seed: int, n_places: int) -> tuple[Town, np.ndarray, np.ndarray, np.random.Generator]:
    """(town, places, queries, rng) of :func:`write_downloader_sets`: database viewpoints and query
    viewpoints (float (n,3) x, y, yaw), and the generator whose next draws pick the query conditions.
    Anything that must reproduce those images (e.g. with labels) starts from here."""
    town, places = town_with_capacity(town_seed, 30.0, n_places)
    rng = np.random.default_rng([int(town_seed), 0xD0C])
    places = places[:n_places]
    queries = np.stack([_jitter(rng, p, 5.0, 0.0, 10.0) for p in places])
    right = np.column_stack([np.sin(queries[:, 2]), -np.cos(queries[:, 2])])
    queries[:, :2] += 2.5 * right  # other lane: >= 2 m lateral viewpoint change
    return town, places, queries, rng


def write_downloader_sets(out: Path, town_seed: int, n_places: int, image_size: tuple[int, int] = (224, 224),
                          progress: bool = True, overwrite: bool = False) -> dict[str, Path]:
    """Database/query eval sets in the downloader format for one town. Returns {"same": dir, "cross": dir}.

    Database: ``n_places`` road viewpoints >= 30 m apart along each road direction (so most negatives are
    > 25 m away), condition "day". Queries: the same places from another visit: jittered +-5 m along,
    +2.5 m lateral (other lane), +-10 deg yaw, so each query lies within ~6 m of its positive.
    "same": day with other clutter; "cross": another time of day / weather preset with other clutter.
    """
    out = Path(out)
    town, places, queries, rng = downloader_layout(town_seed, n_places)
    renderer = Renderer(town, image_size)
    db_cond = CONDITIONS["day"]
    result = {}
    for variant in ("same", "cross"):
        final = out / f"synth{int(town_seed):04d}_{variant}"
        tmp = _tmp_dir_for(final)
        try:
            db_dir, q_dir = tmp / "images" / "test" / "database", tmp / "images" / "test" / "queries"
            db_dir.mkdir(parents=True)
            q_dir.mkdir(parents=True)
            for i in tqdm(range(n_places), desc=f"{final.name}", unit="place", disable=not progress):
                rgb = renderer.render(_camera_pose(*places[i]), db_cond, 100.0 + i).rgb
                _imwrite_jpg(db_dir / downloader_name(town_seed, places[i, 0], places[i, 1], f"db{i:05d}"), rgb)
                if variant == "same":
                    cond = db_cond.with_clutter(db_cond.clutter_seed + 1000 + i)
                else:
                    cond = CONDITIONS[_CROSS_CONDITIONS[i % len(_CROSS_CONDITIONS)]]
                    cond = cond.with_clutter(cond.clutter_seed + 2000 + i)
                rgb = renderer.render(_camera_pose(*queries[i]), cond, 500.0 + i).rgb
                _imwrite_jpg(q_dir / downloader_name(town_seed, queries[i, 0], queries[i, 1], f"q{i:05d}"), rgb)
            _write_json_atomic(tmp / "synth_eval.json", {
                "schema_version": SCHEMA_VERSION, "kind": "clino_vpr_ros.synth.downloader", "town_seed": int(town_seed),
                "variant": variant, "n_places": n_places, "town_config": asdict(town.cfg),
                "image_size": list(image_size), "utm_zone": f"{UTM_ZONE}{UTM_LETTER}",
                "database_condition": asdict(db_cond)})
            _publish_dir(tmp, final, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        result[variant] = final
    return result
