"""The clino_vpr ROS 2 node: a thin adapter over ``clino_vpr_ros.pipeline.LoopClosurePipeline``.

Callbacks only store messages; one worker thread converts message -> numpy, runs the pipeline
and publishes. Frames reach the worker through a drop-oldest queue of size 1, so a slow encoder
never builds a backlog: it always works on the newest frame and counts what it skipped.
Every callback catches at its boundary: a bad message is logged (throttled) and skipped.

Run: ``ros2 run clino_vpr_ros clino_vpr_node --ros-args --params-file config/clino_vpr.yaml``
or ``python -m clino_vpr_ros.ros.node --ros-args ...``. Interface: docs/ros_interface.md.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import Odometry
from rclpy.exceptions import ParameterException
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from clino_vpr_ros.camera import CameraCalibration, calibration_from_fields
from clino_vpr_ros.lio_sam import LioSamConfig, LioSamGate  # the rule shared with the bag runner
from clino_vpr_ros.ros import conversions, messages, params
from clino_vpr_ros.sync import StampedBuffer  # the pairing rule shared with the bag runner

NODE_NAME = "clino_vpr"
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
    history=HistoryPolicy.KEEP_LAST,
)
RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
#: longest wait of the worker for odometry / depth to reach an image's stamp (side streams race
#: the image across DDS writers; on a loaded CPU the executor can run late by a good 0.1 s)
SYNC_WAIT_S = 0.2
RESULTS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


def _guarded(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Catch at the callback boundary: a failing callback is logged (throttled), never takes the node down."""

    @functools.wraps(callback)
    def wrapper(self: ClinoVprNode, *args: Any) -> Any:
        try:
            return callback(self, *args)
        except Exception as e:  # noqa: BLE001 - the boundary between ROS and our code
            self._warn(callback.__name__, f"{callback.__name__} failed: {e!r}")
            return None

    return wrapper


class DropOldestQueue:
    """Single-slot hand-over between the executor and the worker: ``put`` replaces an unread item.

    The idea of camera_calibration's BufferQueue: memory is bounded by one frame, the worker always
    gets the newest frame, and every replaced frame is counted in ``dropped``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def get(self, timeout: float) -> Any:
        """The newest item, or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class _Frame:
    msg: Any
    received: float  # time.monotonic() at the callback


class _Stats:
    """Counters and latency samples shared by callbacks, worker and diagnostics timer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = self.processed = self.rejected = self.errors = self.waiting_odom = 0
        self.closures = self.published = 0
        self.latency_ms: list[float] = []
        self.encode_ms: list[float] = []
        self.pipeline_ms: list[float] = []
        self.last_error = ""

    def take_window(self) -> tuple[list[float], list[float], list[float]]:
        """Latency, encoder and pipeline samples (ms) since the last call."""
        with self.lock:
            window = self.latency_ms, self.encode_ms, self.pipeline_ms
            self.latency_ms, self.encode_ms, self.pipeline_ms = [], [], []
        return window


class ClinoVprNode(Node):
    """Subscribes images (+ camera_info, odom, depth), publishes loop closures; see module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.p = params.declare_parameters(self)
        self.add_on_set_parameters_callback(params.on_set_parameters)
        self.pipeline = self._build_pipeline()
        self.fleet = self._attach_fleet()
        self._engine_lock = threading.Lock()
        self._camera: CameraCalibration | None = None  # K, distortion and size of the last camera_info
        self._odom = StampedBuffer(maxlen=500)
        self._depth = StampedBuffer(maxlen=30)
        self._odom_frame = "odom"
        self._queue = DropOldestQueue()
        self._stats = _Stats()
        self._markers = messages.ClosureMarkers()
        self._lio_sam = LioSamGate(LioSamConfig(self.p.lio_sam_min_time_diff_s, self.p.lio_sam_min_period_s))
        self._last_warn: dict[str, tuple[float, int]] = {}
        self._diag_prev = (time.monotonic(), 0, 0)

        self.pub_lio = self.create_publisher(Float64MultiArray, "loop_closure_detection", RESULTS)
        self.pub_closures = self.create_publisher(Odometry, "loop_closures", RESULTS)
        self.pub_markers = self.create_publisher(MarkerArray, "loop_closure_markers", LATCHED)
        self.pub_mask = self.create_publisher(Image, "gate_mask", 2)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._subscribe()
        self.create_service(Trigger, "~/save_map", self._on_save_map)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_timer(self.p.diagnostics_period_s, self._on_diagnostics_timer)
        # sends a LIO-SAM closure that had to wait for lio_sam_min_period_s
        self.create_timer(max(self.p.lio_sam_min_period_s / 4, 0.05), self._flush_lio_sam)
        self._worker = threading.Thread(target=self._work, name="clino_vpr_inference", daemon=True)
        self._running = True
        self._worker.start()
        self.get_logger().info(
            f"session {self.p.session_id!r}: model {self.p.model_path}, engine preset {self.p.engine_preset!r}, "
            f"{len(self.p.prior_maps)} prior map(s), map -> {self.p.map_path}; listening on "
            f"{self._image_topic} ({self.p.image_qos_reliability}, depth {self.p.image_qos_depth})"
        )

    # ---------------------------------------------------------------- set-up
    def _build_pipeline(self) -> Any:
        from clino_vpr_ros.engine import get_engine_config
        from clino_vpr_ros.pipeline import LoopClosurePipeline
        from clino_vpr_ros.session_map import MapWriter

        # refuse a map_path that holds another run's map (or is a prior map) before loading anything;
        # the engine then owns map_path through the same MapWriter rule
        MapWriter(self.p.map_path, read_only=self.p.prior_maps,
                  hint="leave map_path empty for a new file per session ($ROS_HOME/clino_vpr/<session_id>.npz) "
                       "or choose a new map_path, and put the old map in prior_maps")
        model = Path(self.p.model_path)
        if not model.exists():
            raise FileNotFoundError(
                f"model {model} not found; set model_path to an exported ONNX encoder (clino-vpr export)"
            )
        preset = get_engine_config(self.p.engine_preset)
        engine_cfg = dataclasses.replace(
            preset,
            rerank=dataclasses.replace(preset.rerank, enabled=self.p.rerank),
            publish_unverified=self.p.publish_unverified,
            autosave_period_s=self.p.autosave_period_s,
            autosave_path=self.p.map_path,
        )
        return LoopClosurePipeline.from_files(
            model,
            engine_cfg,
            self.p.session_id,
            prior_maps=tuple(self.p.prior_maps),
            base_T_camera=conversions.xyzquat_to_matrix(self.p.base_T_camera),
            providers=list(self.p.providers) or None,
            parity_warn_only=self.p.parity_warn_only,
        )

    def _attach_fleet(self) -> Any:
        """A FleetLink when fleet_uri is set (pymilvus imported only then); None otherwise."""
        if not self.p.fleet_uri:
            return None
        from clino_vpr_ros.fleet import FleetConfig, FleetLink

        engine = self.pipeline.engine
        link = FleetLink(FleetConfig(uri=self.p.fleet_uri, robot_id=self.p.fleet_robot_id), engine.fingerprint,
                         engine.descriptor_dim, self.p.session_id, self.p.map_path)
        engine.attach_fleet(link)
        self.get_logger().info(f"fleet index {self.p.fleet_uri} (robot {self.p.fleet_robot_id!r}): keyframes are "
                               "written as they come; closures from other robots' and sessions' keyframes")
        return link

    def _subscribe(self) -> None:
        image_qos = QoSProfile(depth=self.p.image_qos_depth, reliability=RELIABILITY[self.p.image_qos_reliability],
                               history=HistoryPolicy.KEEP_LAST)
        side_qos = QoSProfile(depth=50, reliability=RELIABILITY[self.p.side_qos_reliability],
                              history=HistoryPolicy.KEEP_LAST)
        # like image_transport: the compressed topic follows the (remapped) base topic `image`
        self._image_topic = self.resolve_topic_name("image")
        if self.p.image_transport == "compressed":
            self._image_topic += "/compressed"
            self.create_subscription(CompressedImage, self._image_topic, self._on_image, image_qos)
        else:
            self.create_subscription(Image, self._image_topic, self._on_image, image_qos)
        if self.p.use_camera_info:
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, side_qos)
        if self.p.use_odom:
            self.create_subscription(Odometry, "odom", self._on_odom, side_qos)
        if self.p.use_depth:
            self.create_subscription(Image, "depth", self._on_depth, image_qos)

    # ---------------------------------------------------------------- callbacks (executor thread)
    @_guarded
    def _on_image(self, msg: Any) -> None:
        with self._stats.lock:
            self._stats.received += 1
        self._queue.put(_Frame(msg, time.monotonic()))

    @_guarded
    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self._camera = calibration_from_fields(msg.k, msg.d, msg.distortion_model, msg.width, msg.height)
        except ValueError as e:
            self._warn("camera_info", f"camera_info ignored: {e}")

    @_guarded
    def _on_odom(self, msg: Odometry) -> None:
        try:
            conversions.odometry_to_matrix(msg)  # validate now, so a bad pose is reported once here
        except ValueError as e:
            self._warn("odom", f"odometry ignored: {e}")
            return
        if msg.header.frame_id:
            self._odom_frame = msg.header.frame_id
        self._odom.add(conversions.stamp_to_sec(msg.header.stamp), msg)

    @_guarded
    def _on_depth(self, msg: Image) -> None:
        self._depth.add(conversions.stamp_to_sec(msg.header.stamp), msg)

    def _on_save_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            path = self.save_map()
            response.success, response.message = True, f"saved {self._keyframe_count()} keyframes to {path}"
        except (OSError, ValueError) as e:
            response.success, response.message = False, f"save failed: {e}"
            self.get_logger().error(response.message)
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._engine_lock:
            self.pipeline.engine.reset()
        self._markers.clear()
        self.pub_markers.publish(self._markers.message(self._marker_frame(), self.get_clock().now().to_msg()))
        response.success, response.message = True, f"session {self.p.session_id!r} cleared (prior maps kept)"
        self.get_logger().info(response.message)
        return response

    @_guarded
    def _flush_lio_sam(self) -> None:
        closure = self._lio_sam.poll(time.monotonic())
        if closure is not None:
            self.pub_lio.publish(messages.lio_sam_message(closure.query_stamp, closure.match_stamp))

    @_guarded
    def _on_diagnostics_timer(self) -> None:
        self.pub_diag.publish(self._diagnostics())

    # ---------------------------------------------------------------- worker thread
    def _work(self) -> None:
        while self._running:
            frame = self._queue.get(timeout=0.1)
            try:
                self._maybe_autosave()  # here, not in a timer: a save must not stall the executor
                if frame is not None:
                    self._process(frame)
            except ValueError as e:  # bad message: say why, skip it, keep going
                with self._stats.lock:
                    self._stats.rejected += 1
                self._warn("bad_input", f"frame skipped: {e}")
            except Exception as e:  # noqa: BLE001 - boundary: a failed frame must not stop the node
                with self._stats.lock:
                    self._stats.errors += 1
                    self._stats.last_error = repr(e)
                self._warn("error", f"processing failed: {e!r}")

    def _process(self, frame: _Frame) -> None:
        msg = frame.msg
        if isinstance(msg, CompressedImage):
            image, encoding = conversions.compressed_to_numpy(msg)
        else:
            image, encoding = conversions.image_to_numpy(msg)
        stamp = conversions.stamp_to_sec(msg.header.stamp)
        odom_T_base = self._pose_at(stamp)
        if odom_T_base is None and self.p.use_odom and not self._odom.seen():
            # before the first odometry: an unposed keyframe would anchor the map without a pose
            with self._stats.lock:
                self._stats.waiting_odom += 1
            self._warn("waiting_odom", "waiting for the first odometry message on "
                       f"{self.resolve_topic_name('odom')}: frame skipped (set use_odom false to run without)")
            return
        depth = self._depth_at(stamp)
        if self._camera is None and self.p.use_camera_info:
            self._warn("no_K", "no calibrated camera_info yet: closures are verified by a fundamental matrix only, with no relative pose")
        with self._engine_lock:
            # camera: undistorted keypoints, and an image of another size than camera_info's is refused
            result = self.pipeline.process(stamp, image, encoding=encoding, odom_T_base=odom_T_base, depth=depth,
                                           camera=self._camera)
        self._publish(result, msg.header)
        with self._stats.lock:
            self._stats.processed += 1
            self._stats.latency_ms.append((time.monotonic() - frame.received) * 1e3)
            if result.descriptor is not None:  # encoded (frames too early for a keyframe are not)
                self._stats.encode_ms.append(float(result.encode_ms))
            self._stats.pipeline_ms.append(float(result.total_ms))

    def _pose_at(self, stamp: float) -> np.ndarray | None:
        if not self.p.use_odom:
            return None
        odom = self._odom.nearest(stamp, self.get_parameter("sync_tolerance_s").value, SYNC_WAIT_S)
        if odom is None:
            self._warn("no_odom", f"no odometry within sync_tolerance_s of image stamp {stamp:.3f}: keyframe unposed")
            return None
        return conversions.odometry_to_matrix(odom)

    def _depth_at(self, stamp: float) -> np.ndarray | None:
        if not self.p.use_depth:
            return None
        msg = self._depth.nearest(stamp, self.get_parameter("sync_tolerance_s").value, SYNC_WAIT_S)
        if msg is None:
            self._warn("no_depth", f"no depth image within sync_tolerance_s of image stamp {stamp:.3f}")
            return None
        try:
            return conversions.depth_to_numpy(msg)
        except ValueError as e:  # a bad depth image costs the depth, not the frame
            self._warn("bad_depth", f"depth ignored: {e}")
            return None

    def _publish(self, result: Any, header: Any) -> None:
        publish_unverified = self.p.publish_unverified
        markers_changed = False
        for closure in result.frame_result.closures:
            with self._stats.lock:
                self._stats.closures += 1
            if not (closure.verified or publish_unverified):
                continue
            self.pub_closures.publish(messages.closure_to_odometry(closure))
            self._lio_sam.offer(closure)  # LIO-SAM gets only what it can place (clino_vpr_ros/lio_sam.py)
            markers_changed |= self._markers.add(closure)
            with self._stats.lock:
                self._stats.published += 1
            self.get_logger().info(
                f"loop closure {closure.query_session}/{closure.query_id} -> {closure.match_session}/{closure.match_id} "
                f"(t {closure.query_stamp:.3f} -> {closure.match_stamp:.3f}, score {closure.score:.3f}, "
                f"verified {closure.verified}, inliers {closure.inliers})"
            )
        self._flush_lio_sam()
        if markers_changed:
            self.pub_markers.publish(self._markers.message(self._marker_frame(), header.stamp))
        if self.get_parameter("publish_gate_mask").value and getattr(result, "mask", None) is not None:
            self.pub_mask.publish(conversions.mask_to_image(result.mask, header.stamp, header.frame_id))

    # ---------------------------------------------------------------- maps, diagnostics, logging
    def save_map(self) -> Path:
        """Save this session's map to ``map_path`` (atomic; the core's MapWriter refuses to replace a
        file this run did not write); returns the path written."""
        with self._engine_lock:
            return Path(self.pipeline.engine.save_map(self.p.map_path))

    def _maybe_autosave(self) -> None:
        try:
            with self._engine_lock:
                path = self.pipeline.engine.maybe_autosave(time.monotonic())
        except OSError as e:  # a full disk must not stop loop closure
            self._warn("autosave", f"autosave to {self.p.map_path} failed: {e}")
            return
        if path is not None:
            self.get_logger().info(f"autosaved {self._keyframe_count()} keyframes to {path}")

    def _keyframe_count(self) -> int:
        stats = self._engine_stats()
        return int(stats.get("keyframes", stats.get("session_keyframes", 0)))

    def _engine_stats(self) -> dict[str, Any]:
        stats = self.pipeline.engine.stats()
        return dict(stats) if isinstance(stats, dict) else dict(vars(stats))

    def _marker_frame(self) -> str:
        return self.get_parameter("marker_frame_id").value or self._odom_frame

    def _diagnostics(self) -> DiagnosticArray:
        now = time.monotonic()
        lat, enc, pipe = self._stats.take_window()
        s = self._stats
        with s.lock:
            received, processed, rejected, errors = s.received, s.processed, s.rejected, s.errors
            waiting_odom = s.waiting_odom
            closures, published, last_error = s.closures, s.published, s.last_error
        t0, received0, processed0 = self._diag_prev
        self._diag_prev = (now, received, processed)
        dt = max(now - t0, 1e-6)
        values: dict[str, Any] = {
            "frames_received": received,
            "frames_processed": processed,
            "frames_dropped": self._queue.dropped,
            "frames_rejected": rejected,
            "frames_before_odometry": waiting_odom,
            "processing_errors": errors,
            "input_rate_hz": (received - received0) / dt,
            "processing_rate_hz": (processed - processed0) / dt,
            "latency_ms_mean": float(np.mean(lat)) if lat else 0.0,
            "latency_ms_max": float(np.max(lat)) if lat else 0.0,
            "encode_ms_mean": float(np.mean(enc)) if enc else 0.0,
            "pipeline_ms_mean": float(np.mean(pipe)) if pipe else 0.0,
            "closures_detected": closures,
            "closures_published": published,
            "lio_sam_sent": self._lio_sam.sent,
            "lio_sam_refused": self._lio_sam.refused,
            "lio_sam_superseded": self._lio_sam.superseded,
            "lio_sam_pending": int(self._lio_sam.pending),
            "camera_info": "none" if self._camera is None else (
                f"calibrated {self._camera.width}x{self._camera.height} {self._camera.distortion_model or 'no distortion'}"),
        }
        values.update({f"engine_{k}": v for k, v in self._engine_stats().items()})
        if self.fleet is not None:
            values.update(self.fleet.diagnostics())
        level, message = DiagnosticStatus.OK, "ok"
        if self.fleet is not None and not self.fleet.state.online:
            level, message = DiagnosticStatus.WARN, (f"fleet {self.p.fleet_uri} unreachable, working on the local index; "
                                                     f"{self.fleet.state.pending} keyframe(s) queued for it")
        if errors:
            level, message = DiagnosticStatus.ERROR, f"{errors} frame(s) failed; last: {last_error}"
        elif rejected:
            level, message = DiagnosticStatus.WARN, f"{rejected} bad message(s) skipped"
        return messages.diagnostics_message(self.get_clock().now().to_msg(), self.p.session_id, values, level, message)

    def _warn(self, kind: str, text: str) -> None:
        """Log a warning at most once per ``log_throttle_s`` per kind, with the count suppressed since."""
        now = time.monotonic()
        last, suppressed = self._last_warn.get(kind, (-1e18, 0))
        if now - last < self.get_parameter("log_throttle_s").value:
            self._last_warn[kind] = (last, suppressed + 1)
            return
        self._last_warn[kind] = (now, 0)
        self.get_logger().warning(text + (f" ({suppressed} similar suppressed)" if suppressed else ""))

    def shutdown(self) -> None:
        """Stop the worker (finishing its frame) and save the map."""
        self._running = False
        self._queue.close()
        self._worker.join(timeout=30.0)
        if self.fleet is not None:
            self.fleet.sync(force=True)  # a last attempt to write what is queued
            self.fleet.stop()
        if self._keyframe_count() == 0:  # nothing to keep: a session with no keyframe leaves no map behind
            self.get_logger().info(f"shutdown: no keyframes, no map written to {self.p.map_path}")
            return
        try:
            path = self.save_map()
            self.get_logger().info(f"shutdown: saved {self._keyframe_count()} keyframes to {path}")
        except (OSError, ValueError) as e:
            self.get_logger().error(f"shutdown: map save failed: {e}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``clino_vpr_node``; SIGINT and SIGTERM both stop, save the map and exit 0."""
    args = sys.argv if argv is None else [sys.argv[0], *argv]
    own = args[1:args.index("--ros-args")] if "--ros-args" in args else args[1:]
    if "-h" in own or "--help" in own:  # before rclpy.init: no node, no DDS, no map
        print(params.usage())
        return 0
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node = ClinoVprNode()
    except (ValueError, OSError, ParameterException) as e:  # OSError: FileExistsError for an existing map_path
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {e}")
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    finally:
        node.shutdown()
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
