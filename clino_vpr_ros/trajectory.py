"""Trajectory error with and without the loop closures: the number a SLAM user cares about.

Builds a gtsam pose graph over the keyframes of one or more sessions: odometry
``BetweenFactorPose3`` chains (sigmas ``odom_sigma_*`` per keyframe step), a tight prior on the
first session's first keyframe, a loose one on every other session's first keyframe (gauge for a
session no closure reaches), and each verified *metric* closure as a ``BetweenFactorPose3`` with
its covariance (floored at ``closure_min_sigma_*``) behind a robust kernel (Cauchy by default, so a
wrong closure is down-weighted rather than trusted). Optimised with Levenberg-Marquardt.

ATE: the RMSE of keyframe positions after the rigid (rotation + translation, no scale) alignment
that best maps the estimate onto the ground truth (Umeyama / Horn). Per session each trajectory is
aligned on its own; "merged" aligns all sessions with one transform, so sessions left in their own
odometry frames (no inter-session closure) show up as a large merged error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import gtsam
import numpy as np

from clino_vpr_ros.engine import LoopClosure
from clino_vpr_ros.pose_graph import add_odometry_chain, closure_covariance, odometry_noise, robust
from clino_vpr_ros.session_map import SessionMap

ROBUST_KERNELS = ("cauchy", "huber", "none")


@dataclass(frozen=True)
class TrajectoryConfig:
    """Pose-graph weights for the ATE evaluation (see the module docstring)."""

    odom_sigma_t_m: float = 0.05
    odom_sigma_r_deg: float = 0.5
    closure_min_sigma_t_m: float = 0.3
    closure_min_sigma_r_deg: float = 2.0
    robust: str = "cauchy"
    kernel_k: float = 1.0
    loose_prior_sigma: float = 1e3

    def __post_init__(self) -> None:
        if self.robust not in ROBUST_KERNELS:
            raise ValueError(f"unknown robust kernel {self.robust!r}; valid: {', '.join(ROBUST_KERNELS)}")


@dataclass(frozen=True)
class SessionTrajectory:
    """One session's keyframes: ids int64 (N,), stamps float64 (N,), odom_T_base float64 (N,4,4)."""

    session: str
    ids: np.ndarray
    stamps: np.ndarray
    poses: np.ndarray


def session_trajectory(smap: SessionMap, session: str | None = None) -> SessionTrajectory:
    """The posed keyframes of one session of a map, in time order (keyframes without a pose left out)."""
    session = session or smap.session_id
    rows = smap.rows_of_session(session)
    rows = rows[np.argsort(smap.stamps[rows], kind="stable")]
    rows = rows[np.isfinite(smap.poses[rows]).all(axis=(1, 2))]
    return SessionTrajectory(session, smap.ids[rows], smap.stamps[rows], smap.poses[rows])


@dataclass(frozen=True)
class AteReport:
    """ATE (m) of odometry and of the optimised graph, per session and merged; closures used."""

    odom: dict[str, float]
    closed: dict[str, float]
    merged_odom: float
    merged_closed: float
    closures_used: int
    closures_skipped: int
    optimised: dict[str, np.ndarray]  # session -> float64 (N,4,4) in the graph frame


def align_rigid(est: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R (3,3), t (3,)) minimising ||R est + t - gt|| over points (N,3) (Umeyama, no scale)."""
    mu_e, mu_g = est.mean(0), gt.mean(0)
    H = (est - mu_e).T @ (gt - mu_g)
    U, _, Vt = np.linalg.svd(H)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T)) or 1.0])
    R = Vt.T @ D @ U.T
    return R, mu_g - R @ mu_e


def ate_rmse(est: np.ndarray, gt: np.ndarray) -> float:
    """Absolute trajectory error (m): RMSE of positions (N,3) after rigid alignment."""
    if len(est) < 3:
        return float("nan")
    R, t = align_rigid(est, gt)
    return float(np.sqrt(np.mean(np.sum((est @ R.T + t - gt) ** 2, axis=1))))


def _closure_noise(c: LoopClosure, cfg: TrajectoryConfig) -> gtsam.noiseModel.Base:
    cov = closure_covariance(c, cfg.closure_min_sigma_t_m, cfg.closure_min_sigma_r_deg)
    return robust(gtsam.noiseModel.Gaussian.Covariance(cov), cfg.robust, cfg.kernel_k)


def _initial_offsets(sessions: Sequence[SessionTrajectory], key: dict, closures: list[LoopClosure]) -> dict[str, np.ndarray]:
    """First-session frame from each session's odometry frame, from the first closure reaching it."""
    poses = {(s.session, int(i)): p for s in sessions for i, p in zip(s.ids, s.poses)}
    offset = {sessions[0].session: np.eye(4)}
    changed = True
    while changed:
        changed = False
        for c in closures:
            q, m = (c.query_session, c.query_id), (c.match_session, c.match_id)
            if m[0] in offset and q[0] not in offset:  # ref_T_qodom = ref_T_m * inv(T_qm) * inv(qodom_T_q)
                offset[q[0]] = offset[m[0]] @ poses[m] @ np.linalg.inv(c.T_query_match) @ np.linalg.inv(poses[q])
                changed = True
            elif q[0] in offset and m[0] not in offset:
                offset[m[0]] = offset[q[0]] @ poses[q] @ c.T_query_match @ np.linalg.inv(poses[m])
                changed = True
    return {s.session: offset.get(s.session, np.eye(4)) for s in sessions}


def optimise(sessions: Sequence[SessionTrajectory], closures: Sequence[LoopClosure],
             cfg: TrajectoryConfig = TrajectoryConfig()) -> tuple[dict[str, np.ndarray], int, int]:
    """Optimised keyframe poses per session (float64 (N,4,4), first session's odometry frame),
    the number of closures used and of closures skipped (unverified, non-metric, unknown keyframe)."""
    key = {(s.session, int(i)): (k, j) for k, s in enumerate(sessions) for j, i in enumerate(s.ids)}
    index = {}
    n = 0
    for s in sessions:
        for i in s.ids:
            index[(s.session, int(i))] = n
            n += 1
    usable = [c for c in closures if c.verified and c.metric
              and (c.query_session, c.query_id) in key and (c.match_session, c.match_id) in key]
    offsets = _initial_offsets(sessions, key, usable)
    graph, values = gtsam.NonlinearFactorGraph(), gtsam.Values()
    odom_noise = odometry_noise(cfg.odom_sigma_t_m, cfg.odom_sigma_r_deg)
    for k, s in enumerate(sessions):
        ids = [index[(s.session, int(i))] for i in s.ids]
        for v, p in zip(ids, s.poses):
            values.insert(v, gtsam.Pose3(offsets[s.session] @ p))
        sigma = 1e-6 if k == 0 else cfg.loose_prior_sigma
        graph.add(gtsam.PriorFactorPose3(ids[0], gtsam.Pose3(offsets[s.session] @ s.poses[0]),
                                         gtsam.noiseModel.Isotropic.Sigma(6, sigma)))
        add_odometry_chain(graph, ids, s.poses, odom_noise)
    for c in usable:
        graph.add(gtsam.BetweenFactorPose3(index[(c.query_session, c.query_id)], index[(c.match_session, c.match_id)],
                                           gtsam.Pose3(np.asarray(c.T_query_match, np.float64)), _closure_noise(c, cfg)))
    result = gtsam.LevenbergMarquardtOptimizer(graph, values, gtsam.LevenbergMarquardtParams()).optimize()
    out = {s.session: np.stack([result.atPose3(index[(s.session, int(i))]).matrix() for i in s.ids]) for s in sessions}
    return out, len(usable), len(closures) - len(usable)


def ground_truth_at(stamps: np.ndarray, gt_stamps: np.ndarray, gt_poses: np.ndarray, tol_s: float = 0.1) -> np.ndarray:
    """float64 (N,3) ground-truth positions at the keyframe stamps (nearest; ValueError beyond ``tol_s``)."""
    idx = np.clip(np.searchsorted(gt_stamps, stamps), 1, len(gt_stamps) - 1)
    idx = np.where(np.abs(gt_stamps[idx - 1] - stamps) <= np.abs(gt_stamps[idx] - stamps), idx - 1, idx)
    worst = float(np.max(np.abs(gt_stamps[idx] - stamps), initial=0.0))
    if worst > tol_s:
        raise ValueError(f"a keyframe is {worst:.3f} s from any ground-truth stamp: wrong ground truth for this bag?")
    return gt_poses[idx, :3, 3]


def evaluate_ate(sessions: Sequence[SessionTrajectory], closures: Sequence[LoopClosure],
                 groundtruth: Mapping[str, tuple[np.ndarray, np.ndarray]], cfg: TrajectoryConfig = TrajectoryConfig()) -> AteReport:
    """ATE before/after closures. groundtruth: session -> (stamps (M,), world_T_base (M,4,4)).

    Sessions without ground truth are optimised but not scored.
    """
    optimised, used, skipped = optimise(sessions, closures, cfg)
    odom, closed = {}, {}
    all_est_o, all_est_c, all_gt = [], [], []
    for s in sessions:
        if s.session not in groundtruth:
            continue
        gt = ground_truth_at(s.stamps, *groundtruth[s.session])
        odom[s.session] = ate_rmse(s.poses[:, :3, 3], gt)
        closed[s.session] = ate_rmse(optimised[s.session][:, :3, 3], gt)
        all_est_o.append(s.poses[:, :3, 3])
        all_est_c.append(optimised[s.session][:, :3, 3])
        all_gt.append(gt)
    if not all_gt:
        raise ValueError(f"no ground truth for any of the sessions {[s.session for s in sessions]}")
    merged_o = ate_rmse(np.concatenate(all_est_o), np.concatenate(all_gt))
    merged_c = ate_rmse(np.concatenate(all_est_c), np.concatenate(all_gt))
    return AteReport(odom, closed, merged_o, merged_c, used, skipped, optimised)


def plot_ate(path: str | Path, sessions: Sequence[SessionTrajectory], closures: Sequence[LoopClosure], report: AteReport,
             groundtruth: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """PNG (top view, ground-truth frame): ground truth, odometry and optimised keyframe trajectories
    (each aligned to the ground truth like the merged ATE), closures between optimised keyframes:
    intra-session green, inter-session magenta (dashed red: not used, e.g. non-metric)."""
    from clino_vpr_ros.evaluate import pyplot_agg, save_figure

    plt = pyplot_agg()
    scored = [s for s in sessions if s.session in groundtruth]
    gt = np.concatenate([ground_truth_at(s.stamps, *groundtruth[s.session]) for s in scored])
    R_o, t_o = align_rigid(np.concatenate([s.poses[:, :3, 3] for s in scored]), gt)
    R_c, t_c = align_rigid(np.concatenate([report.optimised[s.session][:, :3, 3] for s in scored]), gt)
    fig, ax = plt.subplots(figsize=(9, 9))
    where: dict[tuple[str, int], np.ndarray] = {}
    for k, s in enumerate(scored):
        g = ground_truth_at(s.stamps, *groundtruth[s.session])
        o = s.poses[:, :3, 3] @ R_o.T + t_o
        c = report.optimised[s.session][:, :3, 3] @ R_c.T + t_c
        ax.plot(g[:, 0], g[:, 1], "-", color="k", lw=2.5, alpha=0.35, label=f"{s.session} ground truth")
        ax.plot(o[:, 0], o[:, 1], ":", color=f"C{k}", lw=1.5,
                label=f"{s.session} odometry (ATE {report.odom[s.session]:.2f} m)")
        ax.plot(c[:, 0], c[:, 1], "-", color=f"C{k}", lw=1.5,
                label=f"{s.session} with closures (ATE {report.closed[s.session]:.2f} m)")
        where.update({(s.session, int(i)): p for i, p in zip(s.ids, c)})
    for cl in closures:
        a, b = where.get((cl.query_session, cl.query_id)), where.get((cl.match_session, cl.match_id))
        if a is None or b is None:
            continue
        style = ("m-" if cl.inter_session else "g-") if cl.verified and cl.metric else "r--"
        ax.plot([a[0], b[0]], [a[1], b[1]], style, lw=1.0, alpha=0.8)
    ax.plot([], [], "g-", label="intra-session closure")
    ax.plot([], [], "m-", label="inter-session closure")
    ax.plot([], [], "r--", label="closure not used (non-metric)")
    ax.set_aspect("equal")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    ax.set_title(f"ATE merged: odometry {report.merged_odom:.2f} m -> with {report.closures_used} closures "
                 f"{report.merged_closed:.2f} m")
    ax.legend(loc="best", fontsize=7)
    return save_figure(fig, path)


def report_bag_ate(live: SessionMap, closures: Sequence[LoopClosure], prior_maps: Sequence[Path],
                   groundtruth_dirs: Sequence[Path], png: Path) -> str:
    """``clino-vpr bag``'s trajectory evaluation: prints per-session and merged ATE lines, writes the
    PNG, returns ``"ate_odom=A ate_closed=B"`` for the live session (for the parseable last line).

    Graph: the prior maps' sessions (their keyframe odometry) and the live session, with this run's
    closures. Ground truth: the ``clino-vpr synth`` folders given (``groundtruth.csv``).
    """
    from clino_vpr_ros.synth import read_session_groundtruth

    gt = {}
    for d in groundtruth_dirs:
        stamps, poses, _, meta = read_session_groundtruth(Path(d))
        order = np.argsort(stamps)
        gt[str((meta or {}).get("session_id", Path(d).name))] = (np.asarray(stamps)[order], np.asarray(poses)[order])
    if len(gt) == 1 and live.session_id not in gt:  # one folder serves the live session whatever its name
        gt = {live.session_id: next(iter(gt.values()))}
    sessions = [session_trajectory(SessionMap.load(p), s) for p in prior_maps for s in SessionMap.load(p).session_ids]
    sessions.append(session_trajectory(live))
    sessions = [s for s in sessions if len(s.ids) >= 3]
    if not any(s.session == live.session_id for s in sessions):
        return "ate_odom=nan ate_closed=nan"
    report = evaluate_ate(sessions, closures, gt)
    for s in report.odom:
        print(f"ATE {s}: odometry {report.odom[s]:.3f} m, with closures {report.closed[s]:.3f} m")
    print(f"ATE merged ({len(report.odom)} sessions, one alignment): odometry {report.merged_odom:.3f} m, "
          f"with closures {report.merged_closed:.3f} m; {report.closures_used} metric closures used, "
          f"{report.closures_skipped} not (unverified or non-metric)")
    print(f"trajectories: {plot_ate(png, sessions, closures, report, gt)}")
    return f"ate_odom={report.odom.get(live.session_id, float('nan')):.3f} ate_closed={report.closed.get(live.session_id, float('nan')):.3f}"
