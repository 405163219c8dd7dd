"""``clino-vpr bag``: the loop-closure pipeline over a ROS 2 bag, offline (no ROS install needed).

Reads images (``sensor_msgs/Image`` or ``CompressedImage``), ``CameraInfo``, ``nav_msgs/Odometry``
and ``/tf_static`` with ``rosbags``; runs the same :class:`LoopClosurePipeline` as the node; writes
the closures to an output bag (the node's two topics, same message mapping) and to a CSV; prints
precision/recall when the ground truth written by ``clino-vpr synth`` lies beside the bag.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from clino_vpr_ros.engine import ENGINE_PRESETS, LoopClosure, get_engine_config
from clino_vpr_ros.image_msg import decode_compressed, decode_image, intrinsics
from clino_vpr_ros.assets import default_model_path
from clino_vpr_ros.atomic import atomic_write

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
    overwrite_map: bool = False  # let save_map replace an existing file (never a prior map)


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
    """geometry_msgs Pose/Transform fields -> float64 (4, 4)."""
    t = getattr(p, "position", None) or getattr(p, "translation")
    q = getattr(p, "orientation", None) or getattr(p, "rotation")
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
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
    """(parent, child) -> parent_T_child from /tf_static."""
    conns = [c for c in reader.connections if c.msgtype == "tf2_msgs/msg/TFMessage" and c.topic == "/tf_static"]
    out = {}
    for conn, _, raw in reader.messages(connections=conns):
        for tf in reader.deserialize(raw, conn.msgtype).transforms:
            out[(tf.header.frame_id, tf.child_frame_id)] = _pose(tf.transform)
    return out


def _session_meta(bag: Path) -> dict:
    meta = bag.parent / "session.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def _frames(reader: Any, image_topic: str, info_topic: str | None, odom_topic: str | None
            ) -> Iterator[tuple[float, np.ndarray | None, str, np.ndarray | None, np.ndarray | None, str]]:
    """Yields (stamp, image or None if undecodable, encoding or error, K, odom_T_base, camera frame).

    K and odometry are the latest valid ones before the image in the bag's order; an invalid
    CameraInfo or Odometry message is logged and the previous value kept.
    """
    topics = {image_topic, info_topic, odom_topic} - {None}
    conns = [c for c in reader.connections if c.topic in topics]
    K, odom = None, None
    for conn, _, raw in reader.messages(connections=conns):
        msg = reader.deserialize(raw, conn.msgtype)
        if conn.topic in (info_topic, odom_topic):
            try:
                if conn.topic == info_topic:
                    K = intrinsics(msg.k)
                else:
                    odom = _pose(msg.pose.pose)
            except ValueError as exc:
                log.warning("skipped a %s message at %.3f s: %s", conn.msgtype, _sec(msg.header.stamp), exc)
        else:
            try:
                if conn.msgtype.endswith("CompressedImage"):
                    image, encoding = decode_compressed(msg)
                else:
                    image, encoding = decode_image(msg)
            except ValueError as exc:
                yield _sec(msg.header.stamp), None, str(exc), K, odom, msg.header.frame_id
                continue
            yield _sec(msg.header.stamp), image, encoding, K, odom, msg.header.frame_id


def run_bag(cfg: BagRunConfig) -> BagRunResult:
    """Run the pipeline over ``cfg.bag``; write ``closures.csv``, ``closures`` (bag) and the map."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from clino_vpr_ros.pipeline import LoopClosurePipeline
    from clino_vpr_ros.session_map import MapWriter

    # refuse an existing --save-map before reading the bag, not after
    writer = MapWriter(cfg.save_map, overwrite=cfg.overwrite_map, read_only=cfg.prior_maps,
                       hint="pass --overwrite to replace it") if cfg.save_map else None
    bag = Path(cfg.bag)
    if not bag.exists():
        raise FileNotFoundError(f"bag not found: {bag}; expected a ROS 2 bag folder (metadata.yaml + .mcap/.db3)")
    if not (bag / "metadata.yaml").is_file() and (bag / "bag" / "metadata.yaml").is_file():
        bag = bag / "bag"  # a folder written by `clino-vpr synth sessions`
    meta = _session_meta(bag)
    session_id = cfg.session_id or meta.get("session_id") or bag.resolve().parent.name
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    closures: list[LoopClosure] = []
    frames = skipped = 0
    with AnyReader([bag], default_typestore=typestore) as reader:
        image_topic = _pick_topic(reader.connections, IMAGE_TYPES, cfg.image_topic, "image", True)
        info_topic = _pick_topic(reader.connections, ["sensor_msgs/msg/CameraInfo"], cfg.camera_info_topic,
                                 "camera info", False)
        odom_topic = _pick_topic(reader.connections, ["nav_msgs/msg/Odometry"], cfg.odom_topic, "odom", False)
        static = _static_transforms(reader)
        pipeline = None
        n_images = sum(c.msgcount for c in reader.connections if c.topic == image_topic)
        for stamp, image, encoding, K, odom, cam_frame in tqdm(_frames(reader, image_topic, info_topic, odom_topic),
                                                              total=n_images, desc=f"bag {session_id}", unit="frame"):
            if image is None:
                skipped += 1
                log.warning("skipped the image at %.3f s: %s", stamp, encoding)
                continue
            if pipeline is None:
                base_T_camera = next((T for (parent, child), T in static.items() if child == cam_frame), None)
                pipeline = LoopClosurePipeline.from_files(
                    cfg.model, get_engine_config(cfg.engine_preset), session_id, cfg.prior_maps, base_T_camera,
                    cfg.providers)
            try:
                closures += pipeline.process(stamp, image, encoding, K, odom).frame_result.closures
            except ValueError as exc:  # a frame the pipeline refuses (e.g. an image of another size than K)
                skipped += 1
                log.warning("skipped the image at %.3f s: %s", stamp, exc)
                continue
            frames += 1
    if pipeline is None:
        raise ValueError(f"{bag}: no decodable image on {image_topic}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_closures_csv(closures, out / "closures.csv")
    bag_path = write_closures_bag(closures, out / "closures", typestore)
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


def write_closures_bag(closures: Sequence[LoopClosure], path: Path, typestore: Any) -> Path:
    """The node's output topics as a bag: /loop_closure_detection (Float64MultiArray [t_query, t_match])
    and /loop_closures (nav_msgs/Odometry edges, see docs/ros_interface.md), stamped at the query time."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    T = typestore.types
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with Writer(tmp, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        lio = writer.add_connection(TOPIC_LIO_SAM, "std_msgs/msg/Float64MultiArray", typestore=typestore)
        edges = writer.add_connection(TOPIC_CLOSURES, "nav_msgs/msg/Odometry", typestore=typestore)
        for c in closures:
            ns = int(round(c.query_stamp * 1e9))
            layout = T["std_msgs/msg/MultiArrayLayout"](
                dim=[T["std_msgs/msg/MultiArrayDimension"](label="t_query,t_match", size=2, stride=2)], data_offset=0)
            msg = T["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.array([c.query_stamp, c.match_stamp]))
            writer.write(lio, ns, typestore.serialize_cdr(msg, msg.__msgtype__))
            writer.write(edges, ns, typestore.serialize_cdr(_edge(c, T), "nav_msgs/msg/Odometry"))
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
    p.add_argument("--save-map", type=Path, help="write this session's map here (an existing file is refused)")
    p.add_argument("--overwrite", action="store_true", help="let --save-map replace an existing file")
    p.add_argument("--groundtruth", type=Path, action="append", default=[],
                   help="ground-truth session folders (default: the one beside the bag, if any)")
    args = p.parse_args(argv)
    bag = args.bag.resolve()
    cfg = BagRunConfig(bag=bag, out=args.out or bag.with_name(bag.name + "_closures"),
                       model=args.model or default_model_path(), engine_preset=args.engine_preset,
                       session_id=args.session_id, image_topic=args.image_topic,
                       camera_info_topic=args.camera_info_topic, odom_topic=args.odom_topic,
                       prior_maps=tuple(args.prior_map), save_map=args.save_map,
                       overwrite_map=args.overwrite)
    res = run_bag(cfg)
    for c in res.closures:
        print(f"closure {c.query_session}/{c.query_id} @ {c.query_stamp:.2f}s -> {c.match_session}/{c.match_id} "
              f"@ {c.match_stamp:.2f}s  score {c.score:.3f}  inliers {c.inliers}  verified {c.verified}")
    print(f"{res.frames} frames ({res.skipped} undecodable skipped), {len(res.closures)} closures -> {res.csv}, {res.bag}"
          + (f", map {res.map}" if res.map else ""))
    gt = list(args.groundtruth) or [d for d in [_gt_dir(bag)] if d is not None]
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


def _gt_dir(bag: Path) -> Path | None:
    for d in (bag, bag.parent):
        if (d / "groundtruth.csv").is_file() and (d / "loops.csv").is_file():
            return d
    return None
