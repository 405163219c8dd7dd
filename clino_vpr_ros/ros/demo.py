"""``clino-vpr demo``: two sessions of one generated town through the real node over real DDS.

Session 1 (day) is played into a ``clino_vpr_node`` process; its map is saved through the
``~/save_map`` service. A second node process loads that map as a prior and session 2 (dusk, another
day, another odometry origin) is played into it: the inter-session closures join the two sessions.
The demo prints every closure, scores them against the generator's ground truth, writes a PNG of
both trajectories with the closures drawn, the two bags with their ground truth and the saved maps.
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
from clino_vpr_ros.evaluate import evaluate_closures, plot_trajectories_with_closures
from clino_vpr_ros.ros.conversions import matrix_to_quaternion
from clino_vpr_ros.ros.harness import NodeClient, NodeProcess, fresh_domain_id
from clino_vpr_ros.ros.messages import closure_from_messages
from clino_vpr_ros.runtime import read_metadata
from clino_vpr_ros.session_map import SessionMap
from clino_vpr_ros.synth import Session
from clino_vpr_ros.synth.cli import two_sessions
from clino_vpr_ros.synth.writers import write_bag


def _xyzquat(T: np.ndarray) -> list[float]:
    """(4, 4) -> [x, y, z, qx, qy, qz, qw], the form of the node's ``base_T_camera`` parameter."""
    return [*map(float, T[:3, 3]), *matrix_to_quaternion(T[:3, :3])]


def play(client: NodeClient, node: NodeProcess, session: Session, rate_hz: float) -> None:
    """Publish camera info once, then odometry + rgb8 image per frame at ``rate_hz`` (sim stamps)."""
    client.publish_camera_info(session.K, session.image_size)
    period = 1.0 / rate_hz
    next_t = time.monotonic()
    for i in tqdm(range(len(session.frames)), desc=f"play {session.session_id}", unit="frame"):
        frame = session.frames[i]
        rgb = session.render(i).rgb
        client.publish_odom(frame.stamp, frame.odom_T_base)
        client.publish_image(frame.stamp, rgb, "rgb8")
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))
        if not node.alive():
            raise RuntimeError(f"the node exited during playback:\n{node.log_text()[-3000:]}")
    client.wait_drained(node, timeout=120.0)


def run_session(client: NodeClient, domain: int, session: Session, out: Path, model: Path,
                priors: list[Path], rate_hz: float) -> Path:
    """One node process for one session: play, save through the service, stop. Returns the map path."""
    map_path = out / f"{session.session_id}.npz"
    params = {"model_path": str(model), "session_id": session.session_id, "map_path": str(map_path),
              "base_T_camera": _xyzquat(session.base_T_camera)}
    if priors:
        params["prior_maps"] = [str(p) for p in priors]
    node = NodeProcess(domain, out / f"node_{session.session_id}.log", params=params)
    before = client.received_counts()
    try:
        client.wait_for_node(node, timeout=90.0)
        play(client, node, session, rate_hz)
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
    p.add_argument("--town", type=int, default=950, help="town seed (evaluation towns 950..999 were never trained on)")
    p.add_argument("--frames", type=int, default=240, help="frames per session (5 Hz stamps)")
    p.add_argument("--rate", type=float, default=10.0, help="playback rate in Hz (wall clock)")
    p.add_argument("--model", type=Path, default=None, help="ONNX encoder (default: the shipped model)")
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
    for s in (s1, s2):
        refusal = _remove_previous_demo_map(out / f"{s.session_id}.npz", s.session_id)
        if refusal:
            print(f"demo: {refusal}", file=sys.stderr)
            return 2
    domain = fresh_domain_id()
    with NodeClient(domain) as client:
        map1 = run_session(client, domain, s1, out, model, [], args.rate)
        map2 = run_session(client, domain, s2, out, model, [map1], args.rate)
        received = client.closure_pairs()
    closures = [closure_from_messages(lio, edge) for lio, edge in received]
    table = {k: np.array([c[k] for c in closures], dtype=object if "session" in k else np.float64)
             for k in ("query_stamp", "match_stamp", "query_session", "match_session", "score")}
    table["verified"] = np.array([c["verified"] for c in closures], bool)
    table["inliers"] = np.array([c["inliers"] for c in closures], np.int64)
    # recall counts the ground-truth loop queries among the keyframes: only keyframes are queried
    keyframe_stamps = {s.session_id: SessionMap.load(m).stamps for s, m in ((s1, map1), (s2, map2))}
    pr = evaluate_closures(table, gt_dirs, queried=keyframe_stamps)
    for c in closures:
        print(f"closure {c['query_session']}/{c['query_id']} t={c['query_stamp']:.1f}s -> "
              f"{c['match_session']}/{c['match_id']} t={c['match_stamp']:.1f}s  score {c['score']:.3f} "
              f"inliers {c['inliers']}")
    png = _plot(s1, s2, closures, pr, out / "trajectories.png")
    n_inter = sum(c["query_session"] != c["match_session"] for c in closures)
    print(f"maps: {map1}, {map2}; bags and ground truth: {gt_dirs[0]}, {gt_dirs[1]}; picture: {png}")
    print(f"{len(closures)} closures ({n_inter} inter-session), {pr.n_correct} correct; "
          f"{pr.n_gt_queries} ground-truth loop queries among the keyframes")
    print(f"demo: loop_closures={len(closures)} precision={pr.precision:.3f} recall={pr.recall:.3f}")
    return 0


def _remove_previous_demo_map(path: Path, session_id: str) -> str | None:
    """The node never replaces a map, so a re-run first removes the map an earlier demo left in its own
    output folder (a map of exactly this demo session). Anything else there: the reason it is kept."""
    if not path.exists():
        return None
    try:
        sessions = SessionMap.load(path).session_ids
    except ValueError as e:
        return f"{path} exists and is not a map of an earlier demo ({e}); choose another --out"
    if sessions != [session_id]:
        return f"{path} holds the map of session(s) {sessions}, not an earlier demo's; choose another --out"
    print(f"demo: replacing the map of the previous demo run, {path}")
    path.unlink()
    return None


def _plot(s1: Session, s2: Session, closures: list[dict], pr, png: Path) -> Path:
    """Both ground-truth trajectories in the world frame with each closure drawn between its keyframes."""
    sessions = {s.session_id: s for s in (s1, s2)}

    def xy(session_id: str, stamp: float) -> tuple[float, float]:
        s = sessions[session_id]
        i = int(np.argmin(np.abs(s.stamps - stamp)))
        return float(s.world_T_base[i, 0, 3]), float(s.world_T_base[i, 1, 3])

    segments = []
    for c in closures:
        a, b = xy(c["query_session"], c["query_stamp"]), xy(c["match_session"], c["match_stamp"])
        segments.append((a, b, float(np.hypot(a[0] - b[0], a[1] - b[1])) <= pr.radius_m))
    trajectories = {f"{s.session_id} (ground truth)": s.world_T_base[:, :2, 3] for s in (s1, s2)}
    return plot_trajectories_with_closures(
        trajectories, segments, png,
        title=f"clino-vpr demo: {len(closures)} closures, precision {pr.precision:.2f}, recall {pr.recall:.2f}")


if __name__ == "__main__":
    sys.exit(main())
