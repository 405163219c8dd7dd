"""``clino-vpr bag``: the loop-closure pipeline over a ROS 2 bag, offline (no ROS install needed).

Reads images (``sensor_msgs/Image`` or ``CompressedImage``), ``CameraInfo``, ``nav_msgs/Odometry``
and ``/tf_static`` with ``rosbags``; runs the same :class:`LoopClosurePipeline` as the node, with the
node's rules: odometry nearest each image within ``sync_tolerance_s`` (:mod:`clino_vpr_ros.sync`),
camera_info distortion used and other image sizes refused (:mod:`clino_vpr_ros.camera`), the camera
mount composed along the ``/tf_static`` chain from the odometry's child frame to the image frame.
Writes the closures to an output bag (the node's two topics, same message mapping, LIO-SAM's topic
with the node's selection, :mod:`clino_vpr_ros.lio_sam`) and to a CSV; prints precision/recall when
the ground truth written by ``clino-vpr synth`` lies beside the bag (and beside each prior map's bag).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from clino_vpr_ros.assets import default_model_path
from clino_vpr_ros.atomic import atomic_write
from clino_vpr_ros.camera import CameraCalibration, calibration_from_fields
from clino_vpr_ros.engine import ENGINE_PRESETS, LoopClosure, get_engine_config
from clino_vpr_ros.geometry import quaternion_to_matrix
from clino_vpr_ros.image_msg import decode_compressed, decode_image
from clino_vpr_ros.lio_sam import LioSamConfig, schedule
from clino_vpr_ros.sync import StampedSeries

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CSV_COLUMNS = ("query_stamp", "match_stamp", "query_session", "match_session", "query_id", "match_id",
               "score", "verified", "inliers", "metric", "x", "y", "z", "qx", "qy", "qz", "qw")
TOPIC_LIO_SAM = "/loop_closure_detection"
TOPIC_CLOSURES = "/loop_closures"


@dataclass(frozen=True)
class BagRunConfig:
    """What to read from the bag and how to run. Topic None = the only topic of that type in the bag."""

    bag: Path
    out: Path
    model: Path = field(default_factory=default_model_path)
    engine_preset: str = "default"
    session_id: str = ""  # empty: the session.json beside the bag, else the bag's folder name
    image_topic: str | None = None
    camera_info_topic: str | None = None
    odom_topic: str | None = None
    prior_maps: tuple[Path, ...] = ()
    save_map: Path | None = None
    providers: tuple[str, ...] | None = None
    #: the node's sync_tolerance_s: odometry nearest the image stamp within this, as live
    sync_tolerance_s: float = 0.05
    #: robot base frame; empty: the odometry's child_frame_id (base_link when there is none)
    base_frame: str = ""
    lio_sam: LioSamConfig = LioSamConfig()
    #: on a GPU provider, run despite an encoder that does not match onnxruntime CPU (a warning)
    parity_warn_only: bool = False
    overwrite_map: bool = False  # let save_map replace an existing file (never a prior map)
    #: local re-ranking on (True) or off (False) whatever the preset says; None: the preset's
    rerank: bool | None = None


@dataclass(frozen=True)
class BagRunResult:
    closures: list[LoopClosure]
    frames: int
    skipped: int
    csv: Path
    bag: Path
    map: Path | None
    session_id: str
    keyframe_stamps: np.ndarray  # float64 (K,): the frames that queried the index
    live_map: Any = None  # SessionMap of this run's keyframes (poses for the trajectory evaluation)


def _sec(stamp: Any) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def _pose(p: Any) -> np.ndarray:
    """geometry_msgs Pose/Transform fields -> float64 (4, 4); ValueError for a quaternion tf2 would
    refuse (not unit) or non-finite values, as the node does (clino_vpr_ros.geometry)."""
    t = getattr(p, "position", None) or getattr(p, "translation")
    q = getattr(p, "orientation", None) or getattr(p, "rotation")
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix([q.x, q.y, q.z, q.w])
    T[:3, 3] = [t.x, t.y, t.z]
    if not np.all(np.isfinite(T)):
        raise ValueError(f"pose has non-finite values: {T[:3, 3].tolist()}, quaternion {[q.x, q.y, q.z, q.w]}")
    return T


def _pick_topic(connections: Sequence[Any], msgtypes: Sequence[str], wanted: str | None, what: str,
                required: bool) -> str | None:
    topics = sorted({c.topic for c in connections if c.msgtype in msgtypes})
    if wanted is not None:
        if wanted not in {c.topic for c in connections}:
            raise ValueError(f"{what} topic {wanted!r} not in the bag; topics of that type: {topics}")
        return wanted
    if len(topics) == 1:
        return topics[0]
    if not topics and not required:
        return None
    raise ValueError(f"bag has {len(topics)} {what} topics {topics}; choose one with --{what.replace(' ', '-')}-topic")


def _static_transforms(reader: Any) -> dict[tuple[str, str], np.ndarray]:
    """(parent, child) -> parent_T_child from /tf_static (a bad message is skipped with a warning)."""
    conns = [c for c in reader.connections if c.msgtype == "tf2_msgs/msg/TFMessage" and c.topic == "/tf_static"]
    out = {}
    for conn, _, raw in reader.messages(connections=conns):
        msg = _deserialize(reader, raw, conn)
        for tf in [] if msg is None else msg.transforms:
            try:
                out[(tf.header.frame_id.lstrip("/"), tf.child_frame_id.lstrip("/"))] = _pose(tf.transform)
            except ValueError as exc:
                log.warning("skipped the /tf_static transform %s -> %s: %s", tf.header.frame_id, tf.child_frame_id, exc)
    return out


def compose_static(edges: dict[tuple[str, str], np.ndarray], source: str, target: str) -> np.ndarray | None:
    """source_T_target (4,4) composed along the tf tree ``edges`` ((parent, child) -> parent_T_child),
    walking up or down each edge (base -> camera_link -> camera_optical, or any path); None when the
    two frames are not connected."""
    source, target = source.lstrip("/"), target.lstrip("/")
    links: dict[str, list[tuple[str, np.ndarray]]] = {}
    for (parent, child), T in edges.items():
        links.setdefault(parent, []).append((child, T))
        links.setdefault(child, []).append((parent, np.linalg.inv(T)))
    seen, frontier = {source}, [(source, np.eye(4))]
    while frontier:  # breadth-first over the tree: the path between two frames is unique
        frame, source_T_frame = frontier.pop(0)
        if frame == target:
            return source_T_frame
        for nxt, frame_T_next in links.get(frame, []):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append((nxt, source_T_frame @ frame_T_next))
    return None


def _deserialize(reader: Any, raw: bytes, conn: Any) -> Any:
    """The message, or None (with a warning) when the bytes do not decode as ``conn.msgtype``."""
    try:
        return reader.deserialize(raw, conn.msgtype)
    except Exception as exc:  # noqa: BLE001 - rosbags raises assorted errors on corrupt bytes; skip the message
        log.warning("skipped an undecodable %s message on %s: %s: %s", conn.msgtype, conn.topic, type(exc).__name__, exc)
        return None


def _session_meta(bag: Path) -> dict:
    meta = bag.parent / "session.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def _odometry(reader: Any, odom_topic: str | None) -> tuple[StampedSeries, str]:
    """Every valid odometry pose of the bag (stamp -> odom_T_base float64 (4,4)) and the child frame."""
    items, child = [], ""
    conns = [c for c in reader.connections if c.topic == odom_topic]
    for conn, _, raw in reader.messages(connections=conns):
        msg = _deserialize(reader, raw, conn)
        if msg is None:
            continue
        try:
            items.append((_sec(msg.header.stamp), _pose(msg.pose.pose)))
            child = child or msg.child_frame_id
        except ValueError as exc:
            log.warning("skipped the odometry message at %.3f s: %s", _sec(msg.header.stamp), exc)
    return StampedSeries(items), child


def _frames(reader: Any, image_topic: str, info_topic: str | None, odom: StampedSeries, tolerance: float
            ) -> Iterator[tuple[float, np.ndarray | None, str, CameraCalibration | None, np.ndarray | None, str]]:
    """Yields (stamp, image or None if undecodable, encoding or error, calibration, odom_T_base, camera frame).

    The calibration (K, distortion, size) is the latest valid camera_info before the image in the
    bag's order (as the node keeps the last one); odometry is the pose nearest the image stamp
    within ``tolerance`` (the node's rule, :mod:`clino_vpr_ros.sync`), read beforehand by
    :func:`_odometry`. An invalid or undecodable message is logged and skipped.
    """
    topics = {image_topic, info_topic} - {None}
    conns = [c for c in reader.connections if c.topic in topics]
    camera = None
    for conn, _, raw in reader.messages(connections=conns):
        msg = _deserialize(reader, raw, conn)
        if msg is None:
            if conn.topic == image_topic:
                yield math.nan, None, "undecodable message", camera, None, ""
            continue
        stamp = _sec(msg.header.stamp)
        if conn.topic == info_topic:
            try:
                camera = calibration_from_fields(msg.k, msg.d, msg.distortion_model, msg.width, msg.height)
            except ValueError as exc:
                log.warning("skipped a %s message at %.3f s: %s", conn.msgtype, stamp, exc)
            continue
        try:
            if conn.msgtype.endswith("CompressedImage"):
                image, encoding = decode_compressed(msg)
            else:
                image, encoding = decode_image(msg)
        except ValueError as exc:
            yield stamp, None, str(exc), camera, None, msg.header.frame_id
            continue
        yield stamp, image, encoding, camera, odom.at(stamp, tolerance), msg.header.frame_id


def _base_T_camera(static: dict[tuple[str, str], np.ndarray], base: str, camera: str) -> np.ndarray | None:
    T = compose_static(static, base, camera)
    if T is None and static:
        log.warning("no /tf_static chain from %r to the camera frame %r: base_T_camera taken as identity "
                    "(closure poses are then camera-frame poses)", base, camera)
    return T


def run_bag(cfg: BagRunConfig) -> BagRunResult:
    """Run the pipeline over ``cfg.bag``; write ``closures.csv``, ``closures`` (bag) and the map."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from clino_vpr_ros.pipeline import LoopClosurePipeline
    from clino_vpr_ros.runtime import read_metadata
    from clino_vpr_ros.session_map import MapWriter

    # refuse an existing --save-map before reading the bag, not after
    writer = MapWriter(cfg.save_map, overwrite=cfg.overwrite_map, read_only=cfg.prior_maps,
                       hint="pass --overwrite to replace it") if cfg.save_map else None
    bag = Path(cfg.bag)
    if not bag.exists():
        raise FileNotFoundError(f"bag not found: {bag}; expected a ROS 2 bag folder (metadata.yaml + .mcap/.db3)")
    if not (bag / "metadata.yaml").is_file() and (bag / "bag" / "metadata.yaml").is_file():
        bag = bag / "bag"  # a folder written by `clino-vpr synth sessions`
    read_metadata(cfg.model)  # a missing, corrupt or foreign model fails now, not after the bag is opened
    meta = _session_meta(bag)
    session_id = cfg.session_id or meta.get("session_id") or bag.resolve().parent.name
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    closures: list[LoopClosure] = []
    frames = skipped = 0
    try:
        reader = AnyReader([bag], default_typestore=typestore)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises assorted errors for a folder that is no bag
        raise ValueError(f"{bag} is not a readable ROS 2 bag ({type(exc).__name__}: {exc}); "
                         "expected a rosbag2 folder (metadata.yaml + .mcap/.db3)") from exc
    with contextlib.closing(reader):
        image_topic = _pick_topic(reader.connections, IMAGE_TYPES, cfg.image_topic, "image", True)
        info_topic = _pick_topic(reader.connections, ["sensor_msgs/msg/CameraInfo"], cfg.camera_info_topic,
                                 "camera info", False)
        odom_topic = _pick_topic(reader.connections, ["nav_msgs/msg/Odometry"], cfg.odom_topic, "odom", False)
        static = _static_transforms(reader)
        odom, odom_child = _odometry(reader, odom_topic)
        base_frame = cfg.base_frame or odom_child or "base_link"
        pipeline, last_refusal = None, ""
        n_images = sum(c.msgcount for c in reader.connections if c.topic == image_topic)
        for stamp, image, encoding, camera, odom_T_base, cam_frame in tqdm(
                _frames(reader, image_topic, info_topic, odom, cfg.sync_tolerance_s),
                total=n_images, desc=f"bag {session_id}", unit="frame"):
            if image is None:
                skipped += 1
                log.warning("skipped the image at %.3f s: %s", stamp, encoding)
                continue
            if pipeline is None:
                engine_cfg = get_engine_config(cfg.engine_preset)
                if cfg.rerank is not None:
                    engine_cfg = dataclasses.replace(engine_cfg, rerank=dataclasses.replace(engine_cfg.rerank, enabled=cfg.rerank))
                pipeline = LoopClosurePipeline.from_files(
                    cfg.model, engine_cfg, session_id, cfg.prior_maps,
                    _base_T_camera(static, base_frame, cam_frame), cfg.providers, cfg.parity_warn_only)
            try:
                closures += pipeline.process(stamp, image, encoding, odom_T_base=odom_T_base,
                                             camera=camera).frame_result.closures
            except ValueError as exc:  # a frame the pipeline refuses (e.g. an image of another size than camera_info's)
                skipped += 1
                last_refusal = str(exc)
                log.warning("skipped the image at %.3f s: %s", stamp, exc)
                continue
            frames += 1
    if pipeline is not None and frames == 0:
        raise ValueError(f"{bag}: every image on {image_topic} was refused; the last: {last_refusal}")
    if pipeline is None:
        raise ValueError(f"{bag}: no decodable image on {image_topic}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_closures_csv(closures, out / "closures.csv")
    bag_path = write_closures_bag(closures, out / "closures", typestore, cfg.lio_sam)
    live = pipeline.engine.snapshot()
    map_path = writer.save(live) if writer else None
    keyframe_stamps = np.asarray(live.stamps, np.float64)  # the live session only
    return BagRunResult(closures, frames, skipped, csv_path, bag_path, map_path, session_id, keyframe_stamps, live)


def _closure_row(c: LoopClosure) -> list:
    T = np.asarray(c.T_query_match, np.float64)
    q = Rotation.from_matrix(T[:3, :3]).as_quat()
    return [f"{c.query_stamp:.9f}", f"{c.match_stamp:.9f}", c.query_session, c.match_session, c.query_id,
            c.match_id, f"{c.score:.6f}", int(c.verified), c.inliers, int(c.metric), *(f"{v:.6f}" for v in T[:3, 3]),
            *(f"{v:.8f}" for v in q)]


def write_closures_csv(closures: Sequence[LoopClosure], path: Path) -> Path:
    """One row per closure (CSV_COLUMNS; pose = T_query_match), written atomically."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_closure_row(c) for c in closures)
    return atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")))


def write_closures_bag(closures: Sequence[LoopClosure], path: Path, typestore: Any,
                       lio_sam: LioSamConfig = LioSamConfig()) -> Path:
    """The node's output topics as a bag: /loop_closures (nav_msgs/Odometry edges, see
    docs/ros_interface.md, every closure, stamped at the query time) and /loop_closure_detection
    (Float64MultiArray [t_query, t_match]) with only what the node sends LIO-SAM
    (:mod:`clino_vpr_ros.lio_sam`), stamped when the node would send it."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    T = typestore.types
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with Writer(tmp, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        lio = writer.add_connection(TOPIC_LIO_SAM, "std_msgs/msg/Float64MultiArray", typestore=typestore)
        edges = writer.add_connection(TOPIC_CLOSURES, "nav_msgs/msg/Odometry", typestore=typestore)
        for c in closures:
            writer.write(edges, int(round(c.query_stamp * 1e9)), typestore.serialize_cdr(_edge(c, T), "nav_msgs/msg/Odometry"))
        for when, c in schedule(list(closures), lio_sam):
            layout = T["std_msgs/msg/MultiArrayLayout"](
                dim=[T["std_msgs/msg/MultiArrayDimension"](label="t_query,t_match", size=2, stride=2)], data_offset=0)
            msg = T["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.array([c.query_stamp, c.match_stamp]))
            writer.write(lio, int(round(when * 1e9)), typestore.serialize_cdr(msg, msg.__msgtype__))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def _edge(c: LoopClosure, T: Any) -> Any:
    """LoopClosure -> nav_msgs/Odometry with the node's field mapping (docs/ros_interface.md,
    ``clino_vpr_ros.ros.messages.closure_to_odometry``)."""
    stamp = T["builtin_interfaces/msg/Time"](sec=int(c.query_stamp), nanosec=int(round((c.query_stamp % 1) * 1e9)) % 10**9)
    header = T["std_msgs/msg/Header"](stamp=stamp, frame_id=f"{c.query_session}/{int(c.query_id)}")
    pose_T = np.asarray(c.T_query_match, np.float64) if c.verified else np.eye(4)
    q = Rotation.from_matrix(pose_T[:3, :3]).as_quat()
    cov = np.asarray(c.covariance, np.float64).reshape(36) if c.verified else np.r_[-1.0, np.zeros(35)]
    pose = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](*pose_T[:3, 3]),
                                       orientation=T["geometry_msgs/msg/Quaternion"](*q))
    vec = T["geometry_msgs/msg/Vector3"]
    # an edge has no velocity: twist.twist carries the closure's scalars, as the node publishes them
    scalars = T["geometry_msgs/msg/Twist"](linear=vec(float(c.match_stamp), float(c.score), float(c.inliers)),
                                           angular=vec(float(c.verified), float(c.metric), 0.0))
    twist = T["geometry_msgs/msg/TwistWithCovariance"](twist=scalars, covariance=np.zeros(36))
    return T["nav_msgs/msg/Odometry"](
        header=header, child_frame_id=f"{c.match_session}/{int(c.match_id)}",
        pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=cov), twist=twist)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clino-vpr bag", description=__doc__.splitlines()[0])
    p.add_argument("bag", type=Path, help="ROS 2 bag folder (or a `clino-vpr synth sessions` session folder)")
    p.add_argument("--out", type=Path, help="output folder (default: <bag>_closures)")
    p.add_argument("--model", type=Path, default=None, help="ONNX encoder (default: the shipped model)")
    p.add_argument("--engine-preset", default="default", choices=sorted(ENGINE_PRESETS))
    p.add_argument("--session-id", default="")
    p.add_argument("--image-topic")
    p.add_argument("--camera-info-topic")
    p.add_argument("--odom-topic")
    p.add_argument("--prior-map", type=Path, action="append", default=[], help="earlier session map (repeatable)")
    rr = p.add_mutually_exclusive_group()
    rr.add_argument("--rerank", dest="rerank", action="store_const", const=True, default=None,
                    help="local re-ranking on (needs a model with local outputs), whatever the preset says")
    rr.add_argument("--no-rerank", dest="rerank", action="store_const", const=False, help="local re-ranking off")
    p.add_argument("--save-map", type=Path, help="write this session's map here (an existing file is refused)")
    p.add_argument("--overwrite", action="store_true", help="let --save-map replace an existing file")
    p.add_argument("--groundtruth", type=Path, action="append", default=[],
                   help="ground-truth session folders, earlier sessions first (default: the one beside the bag "
                        "and, for each --prior-map, its session's folder where `clino-vpr synth sessions` put it)")
    p.add_argument("--sync-tolerance-s", type=float, default=0.05,
                   help="odometry nearest the image stamp within this (the node's sync_tolerance_s)")
    p.add_argument("--base-frame", default="", help="robot base frame for base_T_camera from /tf_static "
                   "(default: the odometry's child_frame_id)")
    p.add_argument("--lio-sam-min-time-diff-s", type=float, default=LioSamConfig.min_time_diff_s,
                   help="the node's lio_sam_min_time_diff_s (for /loop_closure_detection in the output bag)")
    p.add_argument("--parity-warn-only", action="store_true",
                   help="on a GPU provider, run even when the encoder does not match onnxruntime CPU (warning)")
    p.add_argument("--lio-sam-min-period-s", type=float, default=LioSamConfig.min_period_s,
                   help="the node's lio_sam_min_period_s")
    args = p.parse_args(argv)
    bag = args.bag.resolve()
    cfg = BagRunConfig(bag=bag, out=args.out or bag.with_name(bag.name + "_closures"),
                       model=args.model or default_model_path(), engine_preset=args.engine_preset,
                       session_id=args.session_id, image_topic=args.image_topic,
                       camera_info_topic=args.camera_info_topic, odom_topic=args.odom_topic,
                       prior_maps=tuple(args.prior_map), save_map=args.save_map,
                       sync_tolerance_s=args.sync_tolerance_s, base_frame=args.base_frame,
                       lio_sam=LioSamConfig(args.lio_sam_min_time_diff_s, args.lio_sam_min_period_s),
                       parity_warn_only=args.parity_warn_only,
                       overwrite_map=args.overwrite, rerank=args.rerank)
    res = run_bag(cfg)
    for c in res.closures:
        print(f"closure {c.query_session}/{c.query_id} @ {c.query_stamp:.2f}s -> {c.match_session}/{c.match_id} "
              f"@ {c.match_stamp:.2f}s  score {c.score:.3f}  inliers {c.inliers}  verified {c.verified}")
    print(f"{res.frames} frames ({res.skipped} undecodable skipped), {len(res.closures)} closures -> {res.csv}, {res.bag}"
          + (f", map {res.map}" if res.map else ""))
    gt = list(args.groundtruth) or _default_groundtruth(bag, cfg.prior_maps)
    if len(gt) == 1 and cfg.prior_maps:  # one folder would be taken for every session: a wrong score
        print("no evaluation: with --prior-map pass --groundtruth for this session and each prior one, earlier first")
        gt = []
    if gt:
        from clino_vpr_ros.evaluate import evaluate_closures, read_closures_csv

        # recall over this run's keyframes: only they query (an earlier session's folder adds its
        # places as revisit targets, not as queries)
        pr = evaluate_closures(read_closures_csv(res.csv), gt, queried={res.session_id: res.keyframe_stamps})
        from clino_vpr_ros.trajectory import report_bag_ate

        ate = report_bag_ate(res.live_map, res.closures, cfg.prior_maps, gt, cfg.out / "trajectories.png")
        print(f"precision={pr.precision:.3f} recall={pr.recall:.3f} "
              f"max_recall_at_100_precision={pr.max_recall_at_100_precision:.3f} "
              f"({pr.n_correct}/{pr.n_closures} correct, {pr.n_gt_queries} ground-truth loop queries) {ate}")
    return 0


def _default_groundtruth(bag: Path, prior_maps: Sequence[Path]) -> list[Path]:
    """Ground-truth folders for an evaluation, prior sessions first: [] (with one line saying what to
    pass) when a session's folder cannot be found, so the run still ends cleanly without a score."""
    own = _gt_dir(bag)
    if own is None:
        return []
    from clino_vpr_ros.session_map import SessionMap

    dirs, missing = [], []
    for path in prior_maps:
        for session in SessionMap.load(path).session_ids:
            found = _session_gt_dir(session, [own.parent, Path(path).parent, Path(path).parent / "sessions"])
            (dirs.append(found) if found is not None else missing.append(session))
    if missing:
        print(f"no evaluation: ground truth of prior session(s) {missing} not found beside the bag or the map; "
              "pass --groundtruth <folder> for each session, earlier sessions first")
        return []
    return [*dict.fromkeys(dirs), own]


def _session_gt_dir(session: str, roots: Sequence[Path]) -> Path | None:
    """The folder ``<root>/<session>`` holding that session's ground truth (``clino-vpr synth sessions`` layout)."""
    for root in roots:
        d = root / session
        if _gt_dir(d) == d and _session_meta(d / "bag").get("session_id", session) == session:
            return d
    return None


def _gt_dir(bag: Path) -> Path | None:
    for d in (bag, bag.parent):
        if (d / "groundtruth.csv").is_file() and (d / "loops.csv").is_file():
            return d
    return None
