"""Every node parameter, declared in one place with its descriptor and its validation.

``PARAMS`` is the single source of truth: the node declares exactly these (with ranges and
read-only flags in their ``ParameterDescriptor``), ``config/clino_vpr.yaml`` documents exactly
these (a test checks both directions), and the same ``validate`` refuses a bad value at start-up
and in the on-set-parameters callback at run time.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from clino_vpr_ros import assets
from clino_vpr_ros.geometry import unit_quaternion_error

PACKAGE = "clino_vpr_ros"
DEFAULT_MODEL_NAME = assets.DEFAULT_MODEL
#: camera optical frame (z forward, x right, y down) on a base_link (x forward, z up), at the origin
OPTICAL_BASE_T_CAMERA = (0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5)

_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    "str[]": ParameterType.PARAMETER_STRING_ARRAY,
    "float[]": ParameterType.PARAMETER_DOUBLE_ARRAY,
}
_UNSET_ARRAY = {"str[]": Parameter.Type.STRING_ARRAY, "float[]": Parameter.Type.DOUBLE_ARRAY}


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: name, type, default, human description and constraints."""

    name: str
    type: Any  # bool | int | float | str | "str[]" | "float[]"
    default: Any
    description: str
    read_only: bool = True
    range: tuple[float, float] | None = None  # inclusive, for int / float
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # extra check -> error text or None

    def descriptor(self) -> ParameterDescriptor:
        extra = f" One of: {', '.join(self.choices)}." if self.choices else ""
        d = ParameterDescriptor(
            name=self.name, type=_TYPES[self.type], description=self.description + extra, read_only=self.read_only
        )
        if self.range is not None and self.type is int:
            d.integer_range = [IntegerRange(from_value=int(self.range[0]), to_value=int(self.range[1]), step=1)]
        elif self.range is not None and self.type is float:
            d.floating_point_range = [FloatingPointRange(from_value=float(self.range[0]), to_value=float(self.range[1]), step=0.0)]
        return d


def _check_pose7(values: Any) -> str | None:
    v = list(values or [])
    if len(v) != 7:
        return f"expected 7 numbers [x, y, z, qx, qy, qz, qw], got {len(v)}"
    return unit_quaternion_error([float(a) for a in v[3:]])


def _check_session_id(value: str) -> str | None:
    # the id becomes a file name and the first part of keyframe names "<session_id>/<keyframe_id>"
    if value and not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        return f"session_id {value!r} invalid; use letters, digits, '_', '.', '-' only"
    return None


def _check_prior_maps(values: Any) -> str | None:
    missing = [p for p in (values or []) if p and not Path(os.path.expanduser(p)).exists()]
    return f"prior map(s) not found: {missing}" if missing else None


def _check_engine_preset(value: str) -> str | None:
    from clino_vpr_ros.engine import ENGINE_PRESETS  # core import kept lazy: only the node needs it

    return None if value in ENGINE_PRESETS else f"unknown engine preset {value!r}; valid: {', '.join(ENGINE_PRESETS)}"


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model_path", str, "", "ONNX gated encoder. Empty: $CLINO_VPR_MODEL, else the shipped model "
              f"share/{PACKAGE}/models/{DEFAULT_MODEL_NAME} (or models/ of a source checkout)."),
    ParamSpec("providers", "str[]", [], "onnxruntime execution providers in priority order "
              "(onnxruntime's names, e.g. [CUDAExecutionProvider, CPUExecutionProvider], or short ones: tensorrt, cuda, cpu). "
              "Empty: TensorRT -> CUDA -> CPU, whichever this onnxruntime build has."),
    ParamSpec("engine_preset", str, "default", "Loop-closure engine preset (keyframes, index, candidate "
              "thresholds, verification): a name of clino_vpr_ros.engine.ENGINE_PRESETS.", check=_check_engine_preset),
    ParamSpec("session_id", str, "", "Name of this mapping session, stored in the map and in every closure. "
              "Empty: session-YYYYmmdd-HHMMSS (UTC) at start-up.", check=_check_session_id),
    ParamSpec("prior_maps", "str[]", [], "Session maps saved by earlier runs, loaded at start-up; their keyframes "
              "are matched against (inter-session closures).", check=_check_prior_maps),
    ParamSpec("map_path", str, "", "Where this session's map is saved (autosave, ~/save_map, shutdown). "
              "Empty: $ROS_HOME/clino_vpr/<session_id>.npz ($ROS_HOME defaults to ~/.ros). A file that exists at "
              "start-up (another run's map, a prior map) refuses the start: a map is never replaced; a session with "
              "no keyframe writes no map unless ~/save_map is called."),
    ParamSpec("fleet_uri", str, "", "Milvus fleet index (e.g. http://fleet-server:19530): this session's keyframes "
              "are added to it as they come and other robots' / sessions' keyframes found in it give closures. "
              "Empty: no fleet (the in-process index only). Needs the `fleet` extra (pymilvus)."),
    ParamSpec("fleet_robot_id", str, "robot", "Robot id stored with this session's keyframes in the fleet index.",
              check=_check_session_id),
    ParamSpec("autosave_period_s", float, 60.0, "Save the map to map_path every this many seconds; 0 saves "
              "only on ~/save_map and at shutdown (SIGINT / SIGTERM).", range=(0.0, 86400.0)),
    ParamSpec("image_transport", str, "raw", "raw: subscribe `image` (sensor_msgs/Image); compressed: "
              "subscribe `<image>/compressed` (sensor_msgs/CompressedImage, jpeg or png; follows a remap of image).", choices=("raw", "compressed")),
    ParamSpec("image_qos_reliability", str, "reliable", "Reliability of the image subscription. reliable (default) "
              "receives large frames intact but only matches reliable publishers; set best_effort for a best-effort "
              "camera (with Fast DDS, best effort lost every 640x480 frame in our tests).", choices=("reliable", "best_effort")),
    ParamSpec("image_qos_depth", int, 2, "History depth (KEEP_LAST) of the image subscriptions; inference keeps "
              "only the newest frame anyway.", range=(1, 100)),
    ParamSpec("side_qos_reliability", str, "reliable", "Reliability of the camera_info and odom subscriptions. "
              "reliable (default) matches the usual odometry publishers; set best_effort for a best-effort "
              "odometry / camera_info publisher (a reliable subscription does not match it).",
              choices=("reliable", "best_effort")),
    ParamSpec("use_camera_info", bool, True, "Subscribe `camera_info` for intrinsics; without a calibrated K, "
              "closures are verified with a fundamental matrix only (no relative pose)."),
    ParamSpec("use_odom", bool, True, "Subscribe `odom` (nav_msgs/Odometry) to pose keyframes (motion-based "
              "keyframes, closure poses, markers)."),
    ParamSpec("use_depth", bool, False, "Subscribe `depth` (sensor_msgs/Image 16UC1 mm or 32FC1 m, registered to "
              "the camera) for metric verification (PnP)."),
    ParamSpec("sync_tolerance_s", float, 0.05, "Largest |stamp difference| between an image and the odometry / "
              "depth message paired with it.", read_only=False, range=(0.0, 5.0)),
    ParamSpec("base_T_camera", "float[]", list(OPTICAL_BASE_T_CAMERA), "Camera optical frame in the base frame: "
              "[x, y, z, qx, qy, qz, qw], a unit quaternion (|q|^2 within 0.01 of 1, as tf2 requires). Default: optical "
              "frame at the base origin.", check=_check_pose7),
    ParamSpec("publish_unverified", bool, False, "Also publish closures that were not geometrically verified "
              "(covariance[0] = -1 on loop_closures); LIO-SAM's topic never carries them."),
    ParamSpec("rerank", bool, False, "Local re-ranking (EffoVPR idea) of the candidates with the encoder's own "
              "patch tokens before verification, whatever engine_preset says; needs a model with the local outputs "
              "(the shipped one has them). Off by default: it did not help on the validation towns (model card)."),
    ParamSpec("parity_warn_only", bool, False, "On a GPU provider the encoder is compared with onnxruntime CPU at "
              "start-up; a mismatch (e.g. an fp16 engine that lost accuracy) stops the node unless this is true "
              "(then a loud warning)."),
    ParamSpec("lio_sam_min_time_diff_s", float, 30.0, "Least |t_query - t_match| of a closure sent on "
              "loop_closure_detection (LIO-SAM's historyKeyframeSearchTimeDiff: it rejects closer pairs).",
              range=(0.0, 86400.0)),
    ParamSpec("lio_sam_min_period_s", float, 1.0, "Least seconds between two messages on loop_closure_detection "
              "(LIO-SAM takes one per loopClosureFrequency cycle); a closure found sooner waits, the best one kept.",
              range=(0.0, 3600.0)),
    ParamSpec("publish_gate_mask", bool, False, "Publish the semantic gate mask of every processed frame on "
              "`gate_mask` (mono8).", read_only=False),
    ParamSpec("marker_frame_id", str, "", "Frame of loop_closure_markers. Empty: the odometry header frame "
              "(odom if no odometry arrived).", read_only=False),
    ParamSpec("diagnostics_period_s", float, 1.0, "Period of /diagnostics.", range=(0.05, 60.0)),
    ParamSpec("log_throttle_s", float, 5.0, "Least time between two warnings of the same kind (bad messages, "
              "drops).", read_only=False, range=(0.0, 3600.0)),
)
SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMS}


def validate(name: str, value: Any) -> str | None:
    """Return why ``value`` is not acceptable for parameter ``name``, or None when it is."""
    spec = SPECS.get(name)
    if spec is None:
        return f"unknown parameter {name!r}"
    if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
        return f"{name}={value} out of range [{spec.range[0]}, {spec.range[1]}]"
    if spec.choices is not None and value not in spec.choices:
        return f"{name}={value!r} invalid; expected one of {', '.join(spec.choices)}"
    if spec.check is not None:
        return spec.check(value)
    return None


@dataclass(frozen=True)
class NodeParams:
    """The validated parameter values at start-up (defaults resolved)."""

    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def declare_parameters(node: Node) -> NodeParams:
    """Declare every parameter of ``PARAMS`` on ``node``, validate, resolve defaults.

    Raises ValueError naming every bad parameter (the node then refuses to start).
    """
    values: dict[str, Any] = {}
    for spec in PARAMS:
        if spec.type in _UNSET_ARRAY and not spec.default:
            value = _declare_empty_array(node, spec)
        else:
            value = node.declare_parameter(spec.name, spec.default, spec.descriptor()).value
        if spec.type == "str[]":
            value = [v for v in value if v != ""]
        values[spec.name] = list(value) if spec.type in _UNSET_ARRAY else value
    errors = [e for e in (validate(n, v) for n, v in values.items()) if e]
    if errors:
        raise ValueError("invalid parameters: " + "; ".join(errors))
    return NodeParams(resolve_defaults(values))


def _declare_empty_array(node: Node, spec: ParamSpec) -> list:
    """Declare an array parameter whose default is [] so that it holds a value ([] of its type).

    rclpy cannot take the type from an empty list (it would become a byte array), and a parameter
    declared by type alone stays NOT_SET: ``ros2 param dump`` leaves it out and a batched
    ``get_parameters`` returns nothing. So: declare by type (writable), give it [] unless the
    user set it, then install the real (read-only) descriptor.
    """
    kind = _UNSET_ARRAY[spec.type]
    writable = spec.descriptor()
    writable.read_only = False
    param = node.declare_parameter(spec.name, kind, writable)
    if param.type_ == Parameter.Type.NOT_SET:  # not given (or given as an empty list in a YAML file)
        result = node.set_parameters([Parameter(spec.name, kind, [])])[0]
        if not result.successful:
            raise ValueError(f"{spec.name}: could not set its default []: {result.reason}")
    node.set_descriptor(spec.name, spec.descriptor())
    return list(node.get_parameter(spec.name).value)


def resolve_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """Fill the empty-means-default parameters (session_id, map_path, model_path)."""
    out = dict(values)
    if not out["session_id"]:
        out["session_id"] = "session-" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    if not out["map_path"]:
        ros_home = Path(os.environ.get("ROS_HOME", os.path.expanduser("~/.ros")))
        out["map_path"] = str(ros_home / "clino_vpr" / f"{out['session_id']}.npz")
    out["map_path"] = os.path.expanduser(out["map_path"])
    out["model_path"] = os.path.expanduser(out["model_path"]) if out["model_path"] else str(default_model_path())
    out["prior_maps"] = [os.path.expanduser(p) for p in out["prior_maps"]]
    return out


def default_model_path() -> Path:
    """The model used when ``model_path`` is empty: :func:`clino_vpr_ros.assets.default_model_path`
    (``$CLINO_VPR_MODEL``, else the shipped model found through the ament index, the Python prefix
    or the source checkout: the same lookup as every command)."""
    return assets.default_model_path()


def on_set_parameters(params: list[Parameter]) -> SetParametersResult:
    """Run-time guard: refuse out-of-range / invalid values with the reason (read-only ones rclpy refuses)."""
    for p in params:
        error = validate(p.name, p.value) if p.name in SPECS else None
        if error:
            return SetParametersResult(successful=False, reason=error)
    return SetParametersResult(successful=True)


#: the node's topics and services (name, type, what), for --help; docs/ros_interface.md has the rest
TOPICS_IN = (
    ("image", "sensor_msgs/Image", "camera (or <image>/compressed, sensor_msgs/CompressedImage, with image_transport compressed)"),
    ("camera_info", "sensor_msgs/CameraInfo", "intrinsics (use_camera_info)"),
    ("odom", "nav_msgs/Odometry", "robot odometry (use_odom)"),
    ("depth", "sensor_msgs/Image", "registered depth, 16UC1 mm or 32FC1 m (use_depth)"),
)
TOPICS_OUT = (
    ("loop_closure_detection", "std_msgs/Float64MultiArray", "[t_query, t_match] for LIO-SAM"),
    ("loop_closures", "nav_msgs/Odometry", "one pose-graph edge per closure"),
    ("loop_closure_markers", "visualization_msgs/MarkerArray", "closures for RViz (latched)"),
    ("gate_mask", "sensor_msgs/Image", "semantic gate mask, mono8 (publish_gate_mask)"),
    ("/diagnostics", "diagnostic_msgs/DiagnosticArray", "rates, latency, counters"),
    ("~/save_map", "std_srvs/Trigger", "save this session's map to map_path now"),
    ("~/reset", "std_srvs/Trigger", "forget this session's keyframes (prior maps stay)"),
)


def _default_text(spec: ParamSpec) -> str:
    if spec.type is bool:
        return "true" if spec.default else "false"
    if isinstance(spec.default, list):
        return "[" + ", ".join(str(v) for v in spec.default) + "]"
    return repr(spec.default) if spec.type is str else str(spec.default)


def usage(prog: str = "clino_vpr_node") -> str:
    """``clino_vpr_node --help``: parameters (type, default, description), topics to remap, an example."""
    lines = [
        f"usage: {prog} [--help] [--ros-args [--params-file FILE] [-p NAME:=VALUE]... [-r TOPIC:=NEW_TOPIC]...]",
        "",
        "Learned loop closure: camera images (+ odometry) in, verified loop closures out.",
        "Full interface: docs/ros_interface.md; every parameter with a comment: config/clino_vpr.yaml.",
        "",
        "parameters (-p NAME:=VALUE; read-only ones are fixed at start-up):",
    ]
    for spec in PARAMS:
        kind = spec.type if isinstance(spec.type, str) else spec.type.__name__
        extra = f" One of: {', '.join(spec.choices)}." if spec.choices else ""
        bounds = f" Range {spec.range[0]}..{spec.range[1]}." if spec.range else ""
        mode = "" if spec.read_only else " Changeable at run time."
        lines.append(f"  {spec.name} ({kind}, default {_default_text(spec)})")
        lines.append(f"      {spec.description}{extra}{bounds}{mode}")
    lines += ["", "subscribed topics (remap with -r NAME:=/your/topic):"]
    lines += [f"  {name:<24} {kind:<32} {what}" for name, kind, what in TOPICS_IN]
    lines += ["", "published topics and services:"]
    lines += [f"  {name:<24} {kind:<32} {what}" for name, kind, what in TOPICS_OUT]
    lines += [
        "",
        "example:",
        f"  ros2 run {PACKAGE} {prog} --ros-args --params-file config/clino_vpr.yaml \\",
        "      -r image:=/camera/color/image_raw -r camera_info:=/camera/color/camera_info -r odom:=/odom \\",
        "      -r loop_closure_detection:=lio_loop/loop_closure_detection -p prior_maps:=[/maps/yesterday.npz]",
        f"  (or: ros2 launch {PACKAGE} clino_vpr.launch.py camera:=/camera/color/image_raw odom:=/odom)",
    ]
    return "\n".join(lines)
