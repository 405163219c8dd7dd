"""Core results -> standard ROS 2 messages (the mapping is documented in docs/ros_interface.md).

* ``loop_closure_detection``: std_msgs/Float64MultiArray, data = [t_query, t_match] (LIO-SAM / LVI-SAM).
* ``loop_closures``: nav_msgs/Odometry, one per closure, read as a pose-graph edge: the pose (with
  covariance) of keyframe ``child_frame_id`` (the match) expressed in keyframe ``header.frame_id``
  (the query), stamped with the query time.
* ``loop_closure_markers``: visualization_msgs/MarkerArray, lines between the keyframe positions.
* ``/diagnostics``: diagnostic_msgs/DiagnosticArray.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from nav_msgs.msg import Odometry
from std_msgs.msg import ColorRGBA, Float64MultiArray, MultiArrayDimension
from visualization_msgs.msg import Marker, MarkerArray

from clino_vpr_ros.ros.conversions import matrix_to_pose, quaternion_to_matrix, sec_to_stamp

#: covariance[0] = -1 marks "no relative pose" (the sensor_msgs/Imu convention for an unknown field)
UNKNOWN_COVARIANCE = [-1.0] + [0.0] * 35
DIAGNOSTIC_NAME = "clino_vpr: loop closure"


def keyframe_name(session: str, keyframe_id: int) -> str:
    """The name of a keyframe in ``loop_closures`` frame ids: ``<session_id>/<keyframe_id>``."""
    return f"{session}/{int(keyframe_id)}"


def lio_sam_message(t_query: float, t_match: float) -> Float64MultiArray:
    """[t_query, t_match] in seconds, exactly two values, as LIO-SAM's loop-closure subscriber reads them."""
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label="t_query,t_match", size=2, stride=2)]
    msg.data = [float(t_query), float(t_match)]
    return msg


def closure_to_odometry(closure: Any) -> Odometry:
    """One ``LoopClosure`` -> nav_msgs/Odometry pose-graph edge (fields in docs/ros_interface.md).

    header.stamp = query stamp; header.frame_id = "<query_session>/<query_id>";
    child_frame_id = "<match_session>/<match_id>"; pose.pose = T_query_match (match base pose in the
    query base frame); pose.covariance = 6x6 row-major (x, y, z, roll, pitch, yaw). Without a
    relative pose (unverified), pose is identity and covariance[0] = -1. An edge has no velocity:
    twist.twist carries the closure's scalars (no standard message has fields for them):
    linear.x = t_match (s), linear.y = appearance score (cosine), linear.z = verification inliers,
    angular.x = verified (1/0), angular.y = metric scale (1/0); twist.covariance stays zero.
    """
    msg = Odometry()
    msg.header.stamp = sec_to_stamp(closure.query_stamp)
    msg.header.frame_id = keyframe_name(closure.query_session, closure.query_id)
    msg.child_frame_id = keyframe_name(closure.match_session, closure.match_id)
    scalars = msg.twist.twist
    scalars.linear.x, scalars.linear.y = float(closure.match_stamp), float(closure.score)
    scalars.linear.z = float(closure.inliers)
    scalars.angular.x, scalars.angular.y = float(bool(closure.verified)), float(bool(getattr(closure, "metric", False)))
    T = getattr(closure, "T_query_match", None)
    cov = getattr(closure, "covariance", None)
    if closure.verified and T is not None and cov is not None:
        matrix_to_pose(np.asarray(T, dtype=np.float64), msg.pose.pose)
        msg.pose.covariance = [float(c) for c in np.asarray(cov, dtype=np.float64).reshape(36)]
    else:
        msg.pose.pose.orientation.w = 1.0
        msg.pose.covariance = list(UNKNOWN_COVARIANCE)
    return msg


def closure_from_messages(lio_data: Any | None, edge: Odometry) -> dict[str, Any]:
    """The closure a back end reads from a ``loop_closures`` edge and, when LIO-SAM got it too
    (only verified intra-session closures, clino_vpr_ros/lio_sam.py), its ``loop_closure_detection`` pair.

    Returns a dict with query_stamp, match_stamp (from the LIO-SAM pair when given, else the edge's
    header stamp and twist.linear.x), query_session, query_id, match_session, match_id, score,
    inliers, verified, metric, T_query_match float64 (4, 4) (None without a relative pose) and
    covariance float64 (6, 6). Raises ValueError when the two messages do not describe the same closure.
    """
    t_query = edge.header.stamp.sec + edge.header.stamp.nanosec * 1e-9
    data = [t_query, float(edge.twist.twist.linear.x)] if lio_data is None else [float(v) for v in lio_data]
    if len(data) != 2:
        raise ValueError(f"loop_closure_detection carries {len(data)} values; expected [t_query, t_match]")
    if abs(data[0] - t_query) > 1e-6 or abs(data[1] - edge.twist.twist.linear.x) > 1e-6:
        raise ValueError(f"LIO-SAM pair {data} and loop_closures edge (t_query {t_query:.6f}) are different closures")
    (q_session, q_id), (m_session, m_id) = (_split_name(edge.header.frame_id), _split_name(edge.child_frame_id))
    cov = np.asarray(edge.pose.covariance, dtype=np.float64).reshape(6, 6)
    has_pose = cov[0, 0] >= 0
    p, o = edge.pose.pose.position, edge.pose.pose.orientation
    T = None
    if has_pose:
        T = np.eye(4)
        T[:3, :3] = quaternion_to_matrix(o.x, o.y, o.z, o.w)
        T[:3, 3] = [p.x, p.y, p.z]
    s = edge.twist.twist
    return {"query_stamp": data[0], "match_stamp": data[1], "query_session": q_session, "query_id": q_id,
            "match_session": m_session, "match_id": m_id, "score": float(s.linear.y), "inliers": int(round(s.linear.z)),
            "verified": s.angular.x > 0.5, "metric": s.angular.y > 0.5, "T_query_match": T,
            "covariance": cov if has_pose else None}


def _split_name(name: str) -> tuple[str, int]:
    session, sep, kf = name.rpartition("/")
    if not sep or not session or not kf.lstrip("-").isdigit():
        raise ValueError(f"keyframe name {name!r} is not '<session_id>/<keyframe_id>'")
    return session, int(kf)


class ClosureMarkers:
    """Accumulates closure lines for RViz; the whole array is republished (latched) on every change.

    Marker ns/ids: ``intra_session``/0 green (verified, both keyframes in this session's odometry
    frame), ``inter_session``/1 magenta (the match pose is in its own session's frame: lines are
    only meaningful once sessions are aligned), ``unverified``/2 yellow.
    """

    _STYLE = {
        "intra_session": (0, ColorRGBA(r=0.1, g=0.9, b=0.2, a=1.0)),
        "inter_session": (1, ColorRGBA(r=0.9, g=0.1, b=0.9, a=1.0)),
        "unverified": (2, ColorRGBA(r=1.0, g=0.85, b=0.1, a=0.8)),
    }

    def __init__(self) -> None:
        self.points: dict[str, list[Point]] = {ns: [] for ns in self._STYLE}

    def add(self, closure: Any) -> bool:
        """Add one closure's line; False when either keyframe has no pose."""
        q, m = getattr(closure, "query_pose", None), getattr(closure, "match_pose", None)
        if q is None or m is None:
            return False
        if not closure.verified:
            ns = "unverified"
        else:
            ns = "intra_session" if closure.query_session == closure.match_session else "inter_session"
        for T in (q, m):
            t = np.asarray(T, dtype=np.float64)[:3, 3]
            self.points[ns].append(Point(x=float(t[0]), y=float(t[1]), z=float(t[2])))
        return True

    def clear(self) -> None:
        for pts in self.points.values():
            pts.clear()

    def message(self, frame_id: str, stamp) -> MarkerArray:
        array = MarkerArray()
        for ns, (marker_id, color) in self._STYLE.items():
            marker = Marker()
            marker.header.frame_id = frame_id
            marker.header.stamp = stamp
            marker.ns, marker.id = ns, marker_id
            marker.type = Marker.LINE_LIST
            marker.action = Marker.ADD if self.points[ns] else Marker.DELETE
            marker.pose.orientation.w = 1.0
            marker.scale.x = 0.15
            marker.color = color
            marker.points = list(self.points[ns])
            array.markers.append(marker)
        return array


def diagnostics_message(stamp, session_id: str, values: dict[str, Any], level: int, message: str) -> DiagnosticArray:
    """One DiagnosticStatus (name ``clino_vpr: loop closure``, hardware_id = session id) with ``values``."""
    status = DiagnosticStatus()
    status.level = level  # DiagnosticStatus.OK / WARN / ERROR (bytes)
    status.name = DIAGNOSTIC_NAME
    status.hardware_id = session_id
    status.message = message
    status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in values.items()]
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def diagnostics_values(msg: DiagnosticArray, session_id: str | None = None) -> dict[str, str]:
    """The key/values of a clino_vpr status (of session ``session_id`` when given) in a /diagnostics message."""
    for status in msg.status:
        if status.name == DIAGNOSTIC_NAME and session_id in (None, status.hardware_id):
            return {kv.key: kv.value for kv in status.values}
    return {}
