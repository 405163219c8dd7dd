"""``clino-vpr demo``: two sessions of one generated town through the real node over real DDS.

Session 1 (day) is played into a ``clino_vpr_node`` process; its map is saved through the
``~/save_map`` service. A second node process loads that map as a prior and session 2 (dusk, another
day, another odometry origin) is played into it: the inter-session closures join the two sessions.
The camera is RGB only (no depth): closures get their metric translation by triangulation from the
odometry (clino_vpr_ros/triangulate.py).

The demo prints every closure and scores them against the generator's ground truth, merges the two
sessions with the closures the node published (``merge_sessions``, as ``clino-vpr merge`` does) into
``merged.npz``, gives the trajectory error (ATE) of the odometry and of the pose graph with the
closures per session and merged, and writes a PNG of ground truth, odometry and optimised
trajectories with the closures drawn (``trajectories.png``), the two bags with their ground truth
and the saved maps. Last line, for scripts::

    demo: loop_closures=N precision=P recall=R ate_odom=A ate_closed=B merged_ate_odom=C merged_ate_closed=D

A/B: the larger of the two sessions' ATE (m) without / with the closures; C/D: both sessions under one
alignment (their odometry frames differ, so C is large until the closures join them).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clino_vpr_ros.assets import default_model_path
from clino_vpr_ros.engine import ENGINE_PRESETS, LoopClosure
from clino_vpr_ros.evaluate import PRResult, evaluate_closures
from clino_vpr_ros.merge import MergeConfig, merge_sessions, merged_map
from clino_vpr_ros.ros.conversions import matrix_to_quaternion
from clino_vpr_ros.ros.harness import NodeClient, NodeProcess, fresh_domain_id
from clino_vpr_ros.ros.messages import closure_from_messages
from clino_vpr_ros.runtime import read_metadata
from clino_vpr_ros.session_map import MapWriter, SessionMap
from clino_vpr_ros.synth import Session
from clino_vpr_ros.synth.cli import two_sessions
from clino_vpr_ros.synth.writers import write_bag
from clino_vpr_ros.trajectory import AteReport, evaluate_ate, plot_ate, session_trajectory


def _xyzquat(T: np.ndarray) -> list[float]:
    """(4, 4) -> [x, y, z, qx, qy, qz, qw], the form of the node's ``base_T_camera`` parameter."""
    return [*map(float, T[:3, 3]), *matrix_to_quaternion(T[:3, :3])]


def play(client: NodeClient, node: NodeProcess, session: Session, rate_hz: float, live: bool = False) -> None:
    """Publish camera info once, then odometry + rgb8 image per frame (sim stamps), at most ``rate_hz``.

    Unless ``live``, each frame waits until the node has handled the previous one, so a machine busy
    with other work gives the same keyframes and closures, only later; ``live`` plays at ``rate_hz``
    whatever the node manages (it drops what it cannot keep up with, as on a robot).
    """
    client.publish_camera_info(session.K, session.image_size)
    period = 1.0 / rate_hz
    next_t = time.monotonic()
    for i in tqdm(range(len(session.frames)), desc=f"play {session.session_id}", unit="frame"):
        frame = session.frames[i]
        rgb = session.render(i).rgb
        client.publish_odom(frame.stamp, frame.odom_T_base)
        client.publish_image(frame.stamp, rgb, "rgb8")
        if not live:  # this node's counters (the previous session's node reported other numbers)
            client.wait_until(lambda: client.counter("frames_received") == i + 1 and client.handled() >= i + 1,
                              120.0, f"frame {i} to be handled", node)
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))
        if not node.alive():
            raise RuntimeError(f"the node exited during playback:\n{node.log_text()[-3000:]}")
    client.wait_drained(node, timeout=120.0)


def run_session(client: NodeClient, domain: int, session: Session, out: Path, model: Path,
                priors: list[Path], rate_hz: float, preset: str = "default", live: bool = False) -> Path:
    """One node process for one session: play, save through the service, stop. Returns the map path."""
    map_path = out / f"{session.session_id}.npz"
    params = {"model_path": str(model), "session_id": session.session_id, "map_path": str(map_path),
              "base_T_camera": _xyzquat(session.base_T_camera), "engine_preset": preset,
              "diagnostics_period_s": 0.1}  # frequent counters: playback waits on frames_processed
    if priors:
        params["prior_maps"] = [str(p) for p in priors]
    node = NodeProcess(domain, out / f"node_{session.session_id}.log", params=params)
    before = client.received_counts()
    try:
        client.wait_for_node(node, timeout=90.0)
        play(client, node, session, rate_hz, live)
        client.wait_for_results(node, before=before)  # every closure it published has arrived
        response = client.call("/clino_vpr/save_map")
        if not response.success:
            raise RuntimeError(f"save_map failed: {response.message}")
        print(f"[{session.session_id}] {response.message}")
    finally:
        code = node.stop(signal.SIGINT)
    if code != 0:
        raise RuntimeError(f"node for {session.session_id} exited with {code}:\n{node.log_text()[-3000:]}")
    return map_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clino-vpr demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--town", type=int, default=950,
                   help="town seed (950: never trained on, nor used to choose a threshold: those are 961/962)")
    p.add_argument("--frames", type=int, default=240, help="frames per session (5 Hz stamps)")
    p.add_argument("--rate", type=float, default=10.0, help="playback rate in Hz (wall clock; at most this fast)")
    p.add_argument("--live", action="store_true",
                   help="play at --rate whatever the node keeps up with (default: each frame waits until the node "
                   "has handled the previous one, so the result does not depend on how busy the machine is)")
    p.add_argument("--model", type=Path, default=None, help="ONNX encoder (default: the shipped model)")
    p.add_argument("--engine-preset", default="default", choices=sorted(ENGINE_PRESETS),
                   help="the node's engine_preset (docs/loop_closure.md says what each trades)")
    args = p.parse_args(argv)
    model = (args.model or default_model_path()).resolve()
    if not model.is_file():
        print(f"demo: model {model} not found; export one with `clino-vpr export` or pass --model", file=sys.stderr)
        return 2
    read_metadata(model)  # a corrupt or foreign model fails here, before minutes of rendering
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    s1, s2 = two_sessions(args.town, n_frames=args.frames)
    gt_dirs = [write_bag(s, out / "sessions" / s.session_id, overwrite=True) for s in (s1, s2)]
    for path, sessions in ((out / "s1.npz", ["s1"]), (out / "s2.npz", ["s2"]), (out / "merged.npz", ["s1", "s2"])):
        refusal = _remove_previous_demo_map(path, sessions)
        if refusal:
            print(f"demo: {refusal}", file=sys.stderr)
            return 2
    domain = fresh_domain_id()
    with NodeClient(domain) as client:
        map1 = run_session(client, domain, s1, out, model, [], args.rate, args.engine_preset, args.live)
        map2 = run_session(client, domain, s2, out, model, [map1], args.rate, args.engine_preset, args.live)
        received = client.closure_pairs()
    closures = [closure_from_messages(lio, edge) for lio, edge in received]
    table = {k: np.array([c[k] for c in closures], dtype=object if "session" in k else np.float64)
             for k in ("query_stamp", "match_stamp", "query_session", "match_session", "score")}
    table["verified"] = np.array([c["verified"] for c in closures], bool)
    table["inliers"] = np.array([c["inliers"] for c in closures], np.int64)
    maps = [SessionMap.load(map1), SessionMap.load(map2)]
    # recall counts the ground-truth loop queries among the keyframes: only keyframes are queried
    pr = evaluate_closures(table, gt_dirs, queried={m.session_id: m.stamps for m in maps})
    for c in closures:
        print(f"closure {c['query_session']}/{c['query_id']} t={c['query_stamp']:.1f}s -> "
              f"{c['match_session']}/{c['match_id']} t={c['match_stamp']:.1f}s  score {c['score']:.3f} "
              f"inliers {c['inliers']}  {'metric' if c['metric'] else 'direction only'}")
    loops = [to_loop_closure(c) for c in closures]
    n_inter = sum(c.inter_session for c in loops)
    print(f"{len(closures)} closures ({n_inter} inter-session, {sum(c.metric for c in loops)} with a metric "
          f"translation), {pr.n_correct} correct; {pr.n_gt_queries} ground-truth loop queries among the keyframes")
    merge_error = _merge(maps, loops, out / "merged.npz")
    ground_truth = {s.session_id: (s.stamps, s.world_T_base) for s in (s1, s2)}
    report = evaluate_ate([session_trajectory(m) for m in maps], loops, ground_truth)
    for s in report.odom:
        print(f"ATE {s}: odometry {report.odom[s]:.3f} m, with closures {report.closed[s]:.3f} m")
    print(f"ATE merged (both sessions, one alignment): odometry {report.merged_odom:.3f} m, "
          f"with closures {report.merged_closed:.3f} m ({report.closures_used} metric closures used)")
    png = plot_ate(out / "trajectories.png", [session_trajectory(m) for m in maps], loops, report, ground_truth)
    print(f"maps: {map1}, {map2}, merged {out / 'merged.npz'}; bags and ground truth: {gt_dirs[0]}, {gt_dirs[1]}; "
          f"picture: {png}")
    print(summary_line(len(closures), pr, report))
    if merge_error:
        print(f"demo: {merge_error}", file=sys.stderr)
        return 1
    return 0


def summary_line(n_closures: int, pr: PRResult, report: AteReport) -> str:
    """The demo's last, machine-readable line (see the module docstring)."""
    return (f"demo: loop_closures={n_closures} precision={pr.precision:.3f} recall={pr.recall:.3f} "
            f"ate_odom={max(report.odom.values()):.3f} ate_closed={max(report.closed.values()):.3f} "
            f"merged_ate_odom={report.merged_odom:.3f} merged_ate_closed={report.merged_closed:.3f}")


def to_loop_closure(c: dict) -> LoopClosure:
    """A closure as the node published it (:func:`closure_from_messages` dict) -> :class:`LoopClosure`
    (no relative pose: identity with covariance 1e6, unverified)."""
    has_pose = c["T_query_match"] is not None
    return LoopClosure(c["query_stamp"], c["match_stamp"], c["query_session"], c["match_session"], c["query_id"],
                       c["match_id"], c["score"], c["verified"] and has_pose, c["inliers"],
                       c["T_query_match"] if has_pose else np.eye(4), c["metric"] and has_pose,
                       c["covariance"] if has_pose else np.eye(6) * 1e6)


def _merge(maps: list[SessionMap], closures: list[LoopClosure], path: Path) -> str | None:
    """Merge the sessions with the node's verified closures into ``path``; the reason when they cannot be."""
    try:
        result = merge_sessions(maps, [c for c in closures if c.verified], MergeConfig())
    except ValueError as e:
        return str(e)
    MapWriter(path, read_only=[m.path for m in maps]).save(merged_map(maps, result))
    kept = int(result.inliers.sum())
    T = result.session_T[maps[1].session_id]
    print(f"merged {len(result.session_T)} sessions into {result.reference_session!r} ({kept}/{len(result.residuals)} "
          f"closures kept as inliers): {maps[1].session_id}'s odometry frame at t = {np.round(T[:3, 3], 2).tolist()} m, "
          f"yaw {np.degrees(np.arctan2(T[1, 0], T[0, 0])):.1f} deg in {result.reference_session}'s")
    return None


def _remove_previous_demo_map(path: Path, session_ids: list[str]) -> str | None:
    """The demo never replaces a map it did not write, so a re-run first removes the map an earlier demo
    left in its own output folder (a map of exactly these demo sessions). Anything else: the reason it is kept."""
    if not path.exists():
        return None
    try:
        sessions = SessionMap.load(path).session_ids
    except ValueError as e:
        return f"{path} exists and is not a map of an earlier demo ({e}); choose another --out"
    if sessions != session_ids:
        return f"{path} holds the map of session(s) {sessions}, not an earlier demo's; choose another --out"
    print(f"demo: replacing the map of the previous demo run, {path}")
    path.unlink()
    return None


if __name__ == "__main__":
    sys.exit(main())
