"""Drive a clino_vpr node over real DDS: start it as a process, feed it, listen to it.

Used by the node tests (test/test_ros_node.py), ``clino-vpr bench node`` and anyone who wants to
replay generated sessions into a running node without ros2 CLI tools. The node runs exactly as
on a robot: ``python -m clino_vpr_ros.ros.node --ros-args --params-file F -p ... -r ...``.
"""

from __future__ import annotations

import atexit
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from clino_vpr_ros.assets import find_asset
from clino_vpr_ros.ros import conversions, messages

DEFAULT_PARAMS = find_asset("config/clino_vpr.yaml")


#: highest DDS domain id that is safe on Linux: RTPS ports are 7400 + 250 * domain + offsets, and
#: above domain 101 they reach the kernel's ephemeral port range (32768..60999), where another
#: process's outgoing socket can hold them.
MAX_DOMAIN_ID = 101


def fresh_domain_id() -> int:
    """A DDS domain for one run (1..MAX_DOMAIN_ID), so concurrent test runs on one host rarely meet;
    clients also filter /diagnostics by session id, so a shared domain cannot mix up counters."""
    return random.Random(os.getpid() ^ time.time_ns()).randint(1, MAX_DOMAIN_ID)


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_param_text(v) for v in value) + "]"
    return str(value)


#: Fast DDS transports for large samples (shared memory + TCP instead of fragmented UDP). Measured
#: here with 640x480 frames: without it the node received 1 of 15 odometry messages sent next to
#: the images (CPU busy with inference), with it all 15. A robot sets it for every process.
LARGE_DATA_ENV = {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}

_LIVE: set[NodeProcess] = set()


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (a crashed test must not leave nodes running)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@atexit.register
def _stop_leftovers() -> None:
    for node in list(_LIVE):
        if node.alive():
            node.proc.kill()


class NodeProcess:
    """The clino_vpr node in its own process; output goes to ``log_path``."""

    def __init__(self, domain_id: int, log_path: Path, params: dict[str, Any] | None = None,
                 remaps: dict[str, str] | None = None, params_file: Path = DEFAULT_PARAMS,
                 namespace: str = "", large_data: bool = False) -> None:
        cmd = [sys.executable, "-m", "clino_vpr_ros.ros.node", "--ros-args", "--params-file", str(params_file)]
        for k, v in (params or {}).items():
            cmd += ["-p", f"{k}:={_param_text(v)}"]
        for k, v in (remaps or {}).items():
            cmd += ["-r", f"{k}:={v}"]
        if namespace:
            cmd += ["-r", f"__ns:={namespace}"]
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
        if large_data:
            env.update(LARGE_DATA_ENV)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code (killed after ``timeout`` seconds)."""
        if self.alive():
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        _LIVE.discard(self)
        return code

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


@dataclass
class Received:
    """Everything the client heard from the node (appended by the spin thread)."""

    lio: list[tuple[float, list[float]]] = field(default_factory=list)  # (receive time.monotonic, data)
    closures: list[tuple[float, Odometry]] = field(default_factory=list)
    markers: list[MarkerArray] = field(default_factory=list)
    diagnostics: list[dict[str, str]] = field(default_factory=list)
    masks: list[tuple[float, Image]] = field(default_factory=list)


class NodeClient:
    """Publishes camera / odometry into a node and records its outputs, in this process.

    Topic names are the node's defaults under ``namespace`` unless remapped by the caller's
    ``image_topic``. All publishers are reliable (what a camera driver's default QoS is).
    """

    def __init__(self, domain_id: int, namespace: str = "", image_topic: str = "image", depth: int = 5,
                 session_id: str | None = None, large_data: bool = False) -> None:
        self.session_id = session_id  # when given, /diagnostics of other nodes (other sessions) are ignored
        self.context = rclpy.Context()
        saved = {k: os.environ.get(k) for k in LARGE_DATA_ENV}
        if large_data:  # read by Fast DDS when the participant is created (init / first node)
            os.environ.update(LARGE_DATA_ENV)
        try:
            rclpy.init(context=self.context, domain_id=domain_id)
            self.node = rclpy.create_node("clino_vpr_test_client", namespace=namespace or "/", context=self.context)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        reliable = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self.pub_image = self.node.create_publisher(Image, image_topic, reliable)
        self.pub_compressed = self.node.create_publisher(CompressedImage, image_topic + "/compressed", reliable)
        self.pub_info = self.node.create_publisher(CameraInfo, "camera_info", reliable)
        self.pub_odom = self.node.create_publisher(Odometry, "odom", QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.received = Received()
        self._lock = threading.Lock()
        n = self.node
        n.create_subscription(Float64MultiArray, "loop_closure_detection", self._on_lio, 100)
        n.create_subscription(Odometry, "loop_closures", self._on_closure, 100)
        n.create_subscription(MarkerArray, "loop_closure_markers", self._on_markers, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        n.create_subscription(Image, "gate_mask", self._on_mask, 2)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._spin = threading.Thread(target=self._executor.spin, daemon=True)
        self._spin.start()

    # -- recording
    def _on_lio(self, msg: Float64MultiArray) -> None:
        with self._lock:
            self.received.lio.append((time.monotonic(), list(msg.data)))

    def _on_closure(self, msg: Odometry) -> None:
        with self._lock:
            self.received.closures.append((time.monotonic(), msg))

    def _on_markers(self, msg: MarkerArray) -> None:
        with self._lock:
            self.received.markers.append(msg)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        values = messages.diagnostics_values(msg, self.session_id)
        if values:
            with self._lock:
                self.received.diagnostics.append(values)

    def _on_mask(self, msg: Image) -> None:
        with self._lock:
            self.received.masks.append((time.monotonic(), msg))

    def closure_pairs(self) -> list[tuple[list[float] | None, Odometry]]:
        """(loop_closure_detection data or None, loop_closures edge) of every closure received, in order.

        Every closure has an edge; LIO-SAM's topic carries only some (clino_vpr_ros/lio_sam.py), so
        each edge is paired with the LIO-SAM message of the same [t_query, t_match], if any."""
        with self._lock:
            lio = [data for _, data in self.received.lio]
            edges = [edge for _, edge in self.received.closures]
        out = []
        for edge in edges:
            t_query = edge.header.stamp.sec + edge.header.stamp.nanosec * 1e-9
            data = next((d for d in lio if abs(d[0] - t_query) < 1e-6 and abs(d[1] - edge.twist.twist.linear.x) < 1e-6), None)
            out.append((data, edge))
        return out

    def received_counts(self) -> tuple[int, int]:
        """(loop_closures, loop_closure_detection) messages received so far."""
        with self._lock:
            return len(self.received.closures), len(self.received.lio)

    def wait_for_results(self, node: NodeProcess, timeout: float = 30.0, before: tuple[int, int] = (0, 0)) -> None:
        """Until every closure the node counts as published has arrived on loop_closures and every one it
        sent LIO-SAM on loop_closure_detection, with none waiting for lio_sam_min_period_s: read
        results after this, not after waiting on another topic. ``before``: :meth:`received_counts`
        from before this node started (when the client outlives a node)."""
        def arrived() -> bool:
            d = self.last_diagnostics()
            n_edges, n_lio = self.received_counts()
            return (bool(d) and n_edges - before[0] == int(d.get("closures_published", -1))
                    and d.get("lio_sam_pending") == "0" and n_lio - before[1] == int(d.get("lio_sam_sent", -1)))

        self.wait_until(arrived, timeout, "the node's closures to arrive", node)

    def last_diagnostics(self) -> dict[str, str]:
        with self._lock:
            return dict(self.received.diagnostics[-1]) if self.received.diagnostics else {}

    def counter(self, key: str) -> int:
        return int(float(self.last_diagnostics().get(key, "0")))

    # -- waiting
    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str, node: NodeProcess | None = None) -> None:
        """Poll ``predicate`` until true; TimeoutError naming ``what`` (with the node's log tail)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if node is not None and not node.alive():
                raise RuntimeError(f"node exited ({node.proc.returncode}) while waiting for {what}:\n{node.log_text()[-3000:]}")
            time.sleep(0.02)
        tail = node.log_text()[-3000:] if node is not None else ""
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; last diagnostics "
                           f"{self.last_diagnostics()}\n{tail}")

    def wait_for_node(self, node: NodeProcess, timeout: float = 60.0, compressed: bool = False,
                      odom: bool = True, camera_info: bool = True) -> None:
        """Until the node's subscriptions (image, and odom / camera_info when it uses them) matched our
        publishers and its diagnostics arrive (it is spinning)."""
        pubs = [self.pub_compressed if compressed else self.pub_image]
        pubs += [self.pub_odom] if odom else []
        pubs += [self.pub_info] if camera_info else []
        self.wait_until(lambda: all(p.get_subscription_count() > 0 for p in pubs) and bool(self.last_diagnostics()),
                        timeout, "the node's subscriptions to match and its diagnostics", node)

    def wait_drained(self, node: NodeProcess, timeout: float = 60.0, quiet_s: float = 0.5) -> None:
        """Until no frame arrives for ``quiet_s`` and the node has handled every frame it received."""
        state = {"received": -1, "since": time.monotonic()}

        def drained() -> bool:
            received = self.counter("frames_received")
            if received != state["received"]:
                state["received"], state["since"] = received, time.monotonic()
            return time.monotonic() - state["since"] >= quiet_s and self.handled() >= received

        self.wait_until(drained, timeout, "the node to drain its input", node)

    def handled(self) -> int:
        """Frames the node has finished with (processed, rejected as bad, failed, dropped, or before odometry)."""
        d = self.last_diagnostics()
        keys = ("frames_processed", "frames_rejected", "processing_errors", "frames_dropped", "frames_before_odometry")
        return sum(int(float(d.get(k, "0"))) for k in keys)

    # -- publishing
    def publish_camera_info(self, K: np.ndarray, size_hw: tuple[int, int], frame_id: str = "camera") -> None:
        msg = CameraInfo()
        msg.header.frame_id = frame_id
        msg.height, msg.width = int(size_hw[0]), int(size_hw[1])
        msg.k = [float(v) for v in np.asarray(K, dtype=np.float64).ravel()]
        msg.distortion_model = "plumb_bob"
        msg.d = [0.0] * 5
        P = np.zeros((3, 4))
        P[:3, :3] = K
        msg.p = [float(v) for v in P.ravel()]
        msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        self.pub_info.publish(msg)

    def publish_odom(self, stamp: float, odom_T_base: np.ndarray) -> None:
        msg = Odometry()
        msg.header.stamp = conversions.sec_to_stamp(stamp)
        msg.header.frame_id, msg.child_frame_id = "odom", "base_link"
        conversions.matrix_to_pose(odom_T_base, msg.pose.pose)
        self.pub_odom.publish(msg)

    def publish_image(self, stamp: float, image: np.ndarray, encoding: str = "bgr8", frame_id: str = "camera") -> None:
        self.pub_image.publish(conversions.numpy_to_image(image, encoding, conversions.sec_to_stamp(stamp), frame_id))

    def publish_raw(self, msg: Image | CompressedImage) -> None:
        (self.pub_compressed if isinstance(msg, CompressedImage) else self.pub_image).publish(msg)

    def call(self, service: str, timeout: float = 30.0) -> Trigger.Response:
        """Call a std_srvs/Trigger service of the node (e.g. ``/clino_vpr/save_map``)."""
        client = self.node.create_client(Trigger, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {service} not available after {timeout} s")
            future = client.call_async(Trigger.Request())
            deadline = time.monotonic() + timeout
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not future.done():
                raise TimeoutError(f"service {service} did not answer in {timeout} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, values: dict[str, Any], node_name: str = "/clino_vpr", timeout: float = 10.0) -> list:
        """Set parameters of a running node through its parameter service; returns the SetParametersResults."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        client = self.node.create_client(SetParameters, f"{node_name}/set_parameters")
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"{node_name}/set_parameters not available after {timeout} s")
            request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
            future = client.call_async(request)
            deadline = time.monotonic() + timeout
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not future.done():
                raise TimeoutError(f"{node_name}/set_parameters did not answer in {timeout} s")
            return list(future.result().results)
        finally:
            self.node.destroy_client(client)

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self.context.ok():
            return
        self._executor.shutdown()
        self._spin.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
