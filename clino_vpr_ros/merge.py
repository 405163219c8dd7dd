"""Multi-session merge: align sessions with a robust gtsam pose graph and write one merged map.

Graph (gtsam ``Pose3``, every keyframe of every connected session is a variable, expressed in the
reference session's odometry frame):

* odometry chains: ``BetweenFactorPose3`` between consecutive keyframes of a session, measured
  from its odometry poses (sigmas ``odom_sigma_t_m`` / ``odom_sigma_r_deg``);
* one prior pinning the reference session's first keyframe at its odometry pose (gauge);
* loop closures (inter- and, optionally, intra-session): ``BetweenFactorPose3(query, match,
  T_query_match)`` with the closure's covariance floored at ``closure_min_sigma_*`` (0.3 m, 2 deg: the
  per-closure errors measured on synthetic towns, where PnP covariances alone were overconfident
  and let a few closures bend the sessions), made robust
  by the chosen :data:`ROBUST_KERNELS` entry: graduated non-convexity with a truncated-least-squares
  loss (``gnc``, default; odometry and prior factors are declared known inliers) or an M-estimator
  (``huber``, ``cauchy``) wrapped with ``noiseModel.Robust``.

Initial values come from a consensus over the closures: each closure proposes a session-to-session
transform; the proposal agreed with by the most others (within 1 m / 5 deg) wins, so a minority of
wrong closures cannot poison the starting point.

A closure is an inlier when GNC keeps its weight above 0.5, or (M-estimators) when its chi-square
after optimisation is below ``inlier_chi2`` (default: 6-DoF 99.5 %). For each session the rigid
transform that best maps its odometry poses onto its optimised poses is fitted (chordal mean
rotation, mean translation); ``session_T[s]`` is that fit relative to the reference session's
fit: the reference session's odometry frame from session ``s``'s (identity for the reference).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gtsam
import numpy as np
from tqdm import tqdm

from clino_vpr_ros.atomic import atomic_write
from clino_vpr_ros.engine import ENGINE_PRESETS, EngineConfig, LoopClosure, LoopClosureEngine
from clino_vpr_ros.keyframes import rotation_angle_deg
from clino_vpr_ros.session_map import MapWriter, SessionMap

log = logging.getLogger(__name__)

ROBUST_KERNELS = ("gnc", "huber", "cauchy")
_PERM = [3, 4, 5, 0, 1, 2]  # (x,y,z,roll,pitch,yaw) <-> gtsam's (rx,ry,rz,x,y,z)
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class MergeConfig:
    """Pose-graph weights, robust kernel and inlier test (see the module docstring).

    allow_unconnected: a session that shares no usable closure with the reference is an error
    (ValueError naming why) unless this is True, in which case it is left out of the merge and
    listed in ``MergeResult.unconnected_sessions``.
    """

    reference_session: str | None = None
    robust: str = "gnc"
    huber_k: float = 1.345
    cauchy_k: float = 1.0
    odom_sigma_t_m: float = 0.05
    odom_sigma_r_deg: float = 0.5
    closure_min_sigma_t_m: float = 0.3
    closure_min_sigma_r_deg: float = 2.0
    use_intra_session: bool = True
    require_metric: bool = True
    inlier_chi2: float = 16.81
    max_iterations: int = 100
    allow_unconnected: bool = False

    def __post_init__(self) -> None:
        if self.robust not in ROBUST_KERNELS:
            raise ValueError(f"unknown robust kernel {self.robust!r}; valid: {', '.join(ROBUST_KERNELS)}")
        if min(self.odom_sigma_t_m, self.odom_sigma_r_deg, self.closure_min_sigma_t_m, self.closure_min_sigma_r_deg) <= 0:
            raise ValueError("all sigmas must be > 0")


@dataclass(frozen=True)
class ClosureResidual:
    """Per closure after optimisation: translation/rotation disagreement with the optimised poses."""

    query_session: str
    query_id: int
    match_session: str
    match_id: int
    inlier: bool
    weight: float
    translation_error_m: float
    rotation_error_deg: float
    chi2: float


@dataclass(frozen=True)
class MergeResult:
    """session_T: reference frame from each session's odometry frame, float64 (4,4) per session id.

    inliers: bool (C,) over the closures given (False for those not used); residuals: one per
    closure used; poses: optimised float64 (4,4) per (session, keyframe id).
    """

    reference_session: str
    session_T: dict[str, np.ndarray]
    inliers: np.ndarray
    residuals: list[ClosureResidual]
    poses: dict[tuple[str, int], np.ndarray] = field(repr=False)
    unconnected_sessions: list[str] = field(default_factory=list)


@dataclass
class _Keyframes:
    """All keyframes with poses, grouped per session in time order."""

    key: dict[tuple[str, int], int]
    pose: list[np.ndarray]
    by_session: dict[str, list[int]]
    rows: list[tuple[int, int]]  # (map index, row)


def _collect(maps: Sequence[SessionMap]) -> _Keyframes:
    kf = _Keyframes({}, [], {}, [])
    for m_i, smap in enumerate(maps):
        for row in range(len(smap)):
            session, kf_id = smap.session_of(row), int(smap.ids[row])
            pose = smap.pose(row)
            if pose is None:
                continue
            if (session, kf_id) in kf.key:
                raise ValueError(f"keyframe {kf_id} of session {session!r} appears in more than one map")
            kf.key[(session, kf_id)] = len(kf.pose)
            kf.pose.append(pose)
            kf.rows.append((m_i, row))
            kf.by_session.setdefault(session, []).append(len(kf.pose) - 1)
    for session, idx in kf.by_session.items():
        idx.sort(key=lambda i: maps[kf.rows[i][0]].stamps[kf.rows[i][1]])
    if not kf.pose:
        raise ValueError("no keyframe with an odometry pose in the given maps: nothing to merge")
    return kf


def _proposal(kf: _Keyframes, c: LoopClosure, known: str) -> tuple[str, np.ndarray]:
    """(other session, known_T_other) proposed by one closure."""
    qi, mi = kf.key[(c.query_session, c.query_id)], kf.key[(c.match_session, c.match_id)]
    if c.query_session == known:  # known_T_other = q_pose @ T_qm @ inv(m_pose)
        return c.match_session, kf.pose[qi] @ c.T_query_match @ np.linalg.inv(kf.pose[mi])
    return c.query_session, kf.pose[mi] @ np.linalg.inv(c.T_query_match) @ np.linalg.inv(kf.pose[qi])


def _consensus(proposals: list[np.ndarray]) -> np.ndarray:
    def agree(a: np.ndarray, b: np.ndarray) -> bool:
        return np.linalg.norm(a[:3, 3] - b[:3, 3]) < 1.0 and rotation_angle_deg(a[:3, :3].T @ b[:3, :3]) < 5.0

    votes = [sum(agree(p, q) for q in proposals) for p in proposals]
    return proposals[int(np.argmax(votes))]


def _initial_alignment(kf: _Keyframes, closures: list[LoopClosure], reference: str) -> dict[str, np.ndarray]:
    """Breadth-first over sessions linked by closures: reference_T_session for each reachable one."""
    init = {reference: np.eye(4)}
    frontier = [reference]
    while frontier:
        known = frontier.pop(0)
        props: dict[str, list[np.ndarray]] = {}
        for c in closures:
            if c.query_session == c.match_session or known not in (c.query_session, c.match_session):
                continue
            other, T = _proposal(kf, c, known)
            if other not in init:
                props.setdefault(other, []).append(init[known] @ T)
        for other, ps in props.items():
            init[other] = _consensus(ps)
            frontier.append(other)
    return init


def _closure_noise(c: LoopClosure, cfg: MergeConfig) -> np.ndarray:
    """Closure covariance in gtsam's tangent order, floored."""
    cov = np.asarray(c.covariance, dtype=np.float64)[np.ix_(_PERM, _PERM)].copy()
    floor = np.array([math.radians(cfg.closure_min_sigma_r_deg)] * 3 + [cfg.closure_min_sigma_t_m] * 3) ** 2
    d = np.maximum(np.diag(cov), floor)
    cov = cov + np.diag(d - np.diag(cov))
    return cov


def _usable(c: LoopClosure, kf: _Keyframes, cfg: MergeConfig) -> bool:
    if not c.verified or (cfg.require_metric and not c.metric):
        return False
    if c.query_session == c.match_session and not cfg.use_intra_session:
        return False
    missing = [k for k in ((c.query_session, c.query_id), (c.match_session, c.match_id)) if k not in kf.key]
    if missing:
        log.warning("closure %s skipped: keyframes %s are in none of the maps (or have no pose)", (c.query_session, c.query_id), missing)
    return not missing


def _why_unconnected(session: str, closures: Sequence[LoopClosure], reference: str, cfg: MergeConfig) -> str:
    """One clause saying why ``session`` could not be tied to the merged sessions."""
    touching = [c for c in closures if session in (c.query_session, c.match_session) and c.inter_session]
    verified = [c for c in touching if c.verified]
    metric = [c for c in verified if c.metric]
    if not touching:
        why = "no closure joins it to another session"
    elif not verified:
        why = f"none of its {len(touching)} inter-session closures is verified"
    elif cfg.require_metric and not metric:
        why = (f"its {len(verified)} verified inter-session closures carry no metric translation "
               "(no depth, and no triangulation from odometry succeeded)")
    else:
        why = f"its {len(metric)} usable closures do not reach {reference!r} (keyframes missing from the maps?)"
    return f"session {session!r}: {why}"


def _build_graph(kf: _Keyframes, sessions: list[str], init: dict[str, np.ndarray], reference: str, cfg: MergeConfig
                 ) -> tuple[gtsam.NonlinearFactorGraph, gtsam.Values, list[int]]:
    graph, values = gtsam.NonlinearFactorGraph(), gtsam.Values()
    odom_noise = gtsam.noiseModel.Diagonal.Sigmas(np.array([math.radians(cfg.odom_sigma_r_deg)] * 3 + [cfg.odom_sigma_t_m] * 3))
    first = kf.by_session[reference][0]
    graph.add(gtsam.PriorFactorPose3(first, gtsam.Pose3(kf.pose[first]), gtsam.noiseModel.Isotropic.Sigma(6, 1e-6)))
    for s in sessions:
        idx = kf.by_session[s]
        for i in idx:
            values.insert(i, gtsam.Pose3(init[s] @ kf.pose[i]))
        for a, b in zip(idx[:-1], idx[1:]):
            graph.add(gtsam.BetweenFactorPose3(a, b, gtsam.Pose3(np.linalg.inv(kf.pose[a]) @ kf.pose[b]), odom_noise))
    return graph, values, list(range(graph.size()))


def _robust(noise: gtsam.noiseModel.Base, cfg: MergeConfig) -> gtsam.noiseModel.Base:
    if cfg.robust == "huber":
        return gtsam.noiseModel.Robust.Create(gtsam.noiseModel.mEstimator.Huber.Create(cfg.huber_k), noise)
    if cfg.robust == "cauchy":
        return gtsam.noiseModel.Robust.Create(gtsam.noiseModel.mEstimator.Cauchy.Create(cfg.cauchy_k), noise)
    return noise


def _optimize(graph: gtsam.NonlinearFactorGraph, values: gtsam.Values, known: list[int], cfg: MergeConfig
              ) -> tuple[gtsam.Values, np.ndarray | None]:
    lm = gtsam.LevenbergMarquardtParams()
    lm.setMaxIterations(cfg.max_iterations)
    if cfg.robust != "gnc":
        return gtsam.LevenbergMarquardtOptimizer(graph, values, lm).optimize(), None
    params = gtsam.GncLMParams(lm)
    params.setLossType(gtsam.GncLossType.TLS)
    params.setKnownInliers(known)
    optimizer = gtsam.GncLMOptimizer(graph, values, params)
    result = optimizer.optimize()
    return result, np.asarray(optimizer.getWeights())


def _session_transform(kf: _Keyframes, session: str, result: gtsam.Values) -> np.ndarray:
    """Rigid reference_T_session mapping the session's odometry poses onto the optimised ones."""
    idx = kf.by_session[session]
    opt = [result.atPose3(i).matrix() for i in idx]
    M = sum(o[:3, :3] @ kf.pose[i][:3, :3].T for o, i in zip(opt, idx))
    U, _, Vt = np.linalg.svd(M)
    R = U @ np.diag([1, 1, np.linalg.det(U @ Vt)]) @ Vt
    t = np.mean([o[:3, 3] - R @ kf.pose[i][:3, 3] for o, i in zip(opt, idx)], axis=0)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def merge_sessions(maps: Sequence[SessionMap], closures: Sequence[LoopClosure], cfg: MergeConfig = MergeConfig()) -> MergeResult:
    """Align the sessions of ``maps`` using verified ``closures``; see the module docstring.

    Raises ValueError when no keyframe has a pose, the reference session is unknown, or maps
    come from different encoders.
    """
    if not maps:
        raise ValueError("merge_sessions needs at least one session map")
    fingerprints = {m.fingerprint for m in maps}
    if len(fingerprints) > 1:
        raise ValueError(f"maps come from different encoders {sorted(fingerprints)}; they cannot be merged")
    kf = _collect(maps)
    reference = cfg.reference_session or maps[0].session_ids[0]
    if reference not in kf.by_session:
        raise ValueError(f"reference session {reference!r} has no posed keyframes; sessions: {sorted(kf.by_session)}")
    used = [i for i, c in enumerate(closures) if _usable(c, kf, cfg)]
    init = _initial_alignment(kf, [closures[i] for i in used], reference)
    sessions = [s for s in kf.by_session if s in init]
    unconnected = [s for s in kf.by_session if s not in init]
    if unconnected and not cfg.allow_unconnected:
        raise ValueError("cannot merge: " + "; ".join(_why_unconnected(s, closures, reference, cfg) for s in unconnected)
                         + " (allow_unconnected / --allow-unconnected merges the rest and leaves these out)")
    if unconnected:
        log.warning("sessions %s share no usable closure with %r and are left out of the merge", unconnected, reference)
    used = [i for i in used if closures[i].query_session in init and closures[i].match_session in init]
    graph, values, known = _build_graph(kf, sessions, init, reference, cfg)
    factor_of: dict[int, int] = {}
    for i in used:
        c = closures[i]
        qi, mi = kf.key[(c.query_session, c.query_id)], kf.key[(c.match_session, c.match_id)]
        noise = _robust(gtsam.noiseModel.Gaussian.Covariance(_closure_noise(c, cfg)), cfg)
        factor_of[i] = graph.size()
        graph.add(gtsam.BetweenFactorPose3(qi, mi, gtsam.Pose3(c.T_query_match), noise))
    result, weights = _optimize(graph, values, known, cfg)
    inliers = np.zeros(len(closures), dtype=bool)
    residuals = []
    for i in used:
        c = closures[i]
        qi, mi = kf.key[(c.query_session, c.query_id)], kf.key[(c.match_session, c.match_id)]
        predicted = result.atPose3(qi).between(result.atPose3(mi))
        err = gtsam.Pose3.Logmap(gtsam.Pose3(c.T_query_match).between(predicted))
        chi2 = float(err @ np.linalg.solve(_closure_noise(c, cfg), err))
        w = float(weights[factor_of[i]]) if weights is not None else 1.0
        inliers[i] = w > 0.5 if weights is not None else chi2 < cfg.inlier_chi2
        delta = np.linalg.inv(c.T_query_match) @ predicted.matrix()
        residuals.append(ClosureResidual(c.query_session, c.query_id, c.match_session, c.match_id, bool(inliers[i]), w,
                                         float(np.linalg.norm(delta[:3, 3])), rotation_angle_deg(delta[:3, :3]), chi2))
    fits = {s: _session_transform(kf, s, result) for s in sessions}
    # the graph frame is anchored at one keyframe; express every fit relative to the reference's own
    # fit so the reference is exactly identity even where the closures bent its chain a little
    session_T = {s: np.linalg.inv(fits[reference]) @ T for s, T in fits.items()}
    poses = {key: result.atPose3(i).matrix() for key, i in kf.key.items() if result.exists(i)}
    log.info("merged %d sessions into %r: %d/%d closures inliers", len(sessions), reference, int(inliers.sum()), len(used))
    return MergeResult(reference, session_T, inliers, residuals, poses, unconnected)


def merged_map(maps: Sequence[SessionMap], result: MergeResult) -> SessionMap:
    """One map holding every keyframe of the merged sessions, poses in the reference frame."""
    sessions: list[dict] = []
    parts: list[tuple[SessionMap, np.ndarray, np.ndarray]] = []  # (map, rows, session index per row)
    for smap in maps:
        rows = np.array([r for r in range(len(smap)) if smap.session_of(r) in result.session_T], dtype=np.int64)
        local = {}
        for j, s in enumerate(smap.session_ids):
            if s in result.session_T and s not in [d["id"] for d in sessions]:
                sessions.append({**smap.header["sessions"][j], "id": s})
            local[j] = [d["id"] for d in sessions].index(s) if s in result.session_T else -1
        parts.append((smap, rows, np.array([local[int(smap.session_index[r])] for r in rows], dtype=np.int32)))
    poses, offsets, kp, fd, kd = [], [0], [], [], []
    # re-ranking tokens are kept only when every part has them of one width (else none: descriptor order)
    widths = {m.rerank_tokens.shape[1] for m, _, _ in parts}
    keep_tokens = len(widths) == 1 and 0 not in widths
    t_offsets, toks = [0], []
    for smap, rows, _ in parts:
        for r in rows:
            s = smap.session_of(r)
            p = result.poses.get((s, int(smap.ids[r])))
            if p is None and smap.pose(r) is None:
                p = np.full((4, 4), np.nan)
            elif p is None:
                p = result.session_T[s] @ smap.pose(r)
            poses.append(p)
            a, b = smap.feature_offsets[r], smap.feature_offsets[r + 1]
            kp.append(smap.keypoints[a:b]); fd.append(smap.feature_descriptors[a:b]); kd.append(smap.keypoint_depths[a:b])
            offsets.append(offsets[-1] + b - a)
            ta, tb = (smap.token_offsets[r], smap.token_offsets[r + 1]) if keep_tokens else (0, 0)
            toks.append(smap.rerank_tokens[ta:tb])
            t_offsets.append(t_offsets[-1] + tb - ta)
    first = maps[0]
    header = {k: v for k, v in first.header.items() if k not in ("sessions",)}
    header.update(sessions=sessions, merged_session_id=f"merged:{result.reference_session}",
                  frame_id=f"{first.header.get('frame_id', 'odom')}@{result.reference_session}",
                  session_T={s: T.tolist() for s, T in result.session_T.items()})
    cat = lambda name: np.concatenate([getattr(m, name)[rows] for m, rows, _ in parts])  # noqa: E731
    return SessionMap(
        header=header, ids=cat("ids"), stamps=cat("stamps"), poses=np.array(poses, np.float64).reshape(-1, 4, 4),
        descriptors=cat("descriptors"), session_index=np.concatenate([si for _, _, si in parts]).astype(np.int32),
        intrinsics=cat("intrinsics"), image_sizes=cat("image_sizes"), feature_offsets=np.array(offsets, np.int64),
        keypoints=np.concatenate(kp).astype(np.float32) if kp else np.zeros((0, 2), np.float32),
        feature_descriptors=np.concatenate(fd) if fd else first.feature_descriptors[:0],
        keypoint_depths=np.concatenate(kd).astype(np.float32) if kd else np.zeros(0, np.float32),
        token_offsets=np.array(t_offsets, np.int64),
        rerank_tokens=np.concatenate(toks).astype(np.float16) if keep_tokens and toks else np.zeros((0, 0), np.float16),
    )


# ---------------------------------------------------------------------- files and CLI
def save_closures(path: str | Path, closures: Sequence[LoopClosure]) -> Path:
    """Write closures as JSON (schema-versioned, atomic)."""
    doc = {"schema_version": SCHEMA_VERSION, "closures": [c.to_dict() for c in closures]}
    return atomic_write(path, lambda f: f.write(json.dumps(doc).encode("utf-8")))


def load_closures(path: str | Path) -> list[LoopClosure]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"closures file {path} does not exist")
    try:
        doc = json.loads(path.read_text())
        return [LoopClosure.from_dict(d) for d in doc["closures"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a closures file written by save_closures ({e})") from e


def detect_closures(maps: Sequence[SessionMap], cfg: EngineConfig = EngineConfig()) -> list[LoopClosure]:
    """Find verified closures between stored maps offline (no images needed: maps keep local features).

    Each single-session map is replayed keyframe by keyframe, in time order, as a live session
    against all earlier maps (each pair once) with the full engine: retrieval, thresholds, temporal
    consistency, geometric verification. Intra-session closures come along.
    """
    closures: list[LoopClosure] = []
    for j, smap in enumerate(maps):
        if len(smap.session_ids) != 1:
            log.info("map %d holds %d sessions: used only as a database", j, len(smap.session_ids))
            continue
        base_T_camera = smap.base_T_camera(0) if len(smap) else None
        engine = LoopClosureEngine(cfg, smap.descriptor_dim, smap.fingerprint, smap.session_ids[0], base_T_camera)
        for prior in maps[:j]:
            engine.add_prior_map(prior)
        for row in tqdm(np.argsort(smap.stamps, kind="stable"), desc=f"closures of {smap.session_id}", unit="kf", leave=False):
            closures += engine.replay_keyframe(smap, int(row)).closures
        log.info("session %s: %s", smap.session_id, engine.stats())
    return closures


def report_dict(result: MergeResult, closures: Sequence[LoopClosure]) -> dict:
    res = result.residuals
    t_in = [r.translation_error_m for r in res if r.inlier]
    return {
        "schema_version": SCHEMA_VERSION,
        "reference_session": result.reference_session,
        "session_T": {s: T.tolist() for s, T in result.session_T.items()},
        "unconnected_sessions": result.unconnected_sessions,
        "closures_given": len(closures),
        "closures_used": len(res),
        "inliers": int(result.inliers.sum()),
        "inlier_translation_rmse_m": float(np.sqrt(np.mean(np.square(t_in)))) if t_in else None,
        "residuals": [r.__dict__ for r in res],
    }


def plot_merge(path: str | Path, result: MergeResult, closures: Sequence[LoopClosure]) -> Path:
    """PNG of the merged trajectories (top view) with inlier (green) and rejected (red) closures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 8))
    for s in result.session_T:
        xy = np.array([T[:2, 3] for (sess, _), T in sorted(result.poses.items(), key=lambda kv: kv[0][1]) if sess == s])
        ax.plot(xy[:, 0], xy[:, 1], "-", lw=1.5, label=s)
    for r in result.residuals:
        a, b = result.poses.get((r.query_session, r.query_id)), result.poses.get((r.match_session, r.match_id))
        if a is not None and b is not None:
            ax.plot([a[0, 3], b[0, 3]], [a[1, 3], b[1, 3]], "g-" if r.inlier else "r--", lw=0.8)
    ax.set_aspect("equal")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    ax.set_title(f"merged into {result.reference_session}: {int(result.inliers.sum())}/{len(result.residuals)} closures kept")
    ax.legend(loc="best", fontsize=8)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clino-vpr merge", description=__doc__.split("\n")[0])
    parser.add_argument("maps", nargs="+", type=Path, help="session maps (.npz); the first one's session is the reference")
    parser.add_argument("--closures", type=Path, help="JSON of loop closures (save_closures format); "
                        "without it closures are detected from the maps (descriptors + stored local features)")
    parser.add_argument("--engine-preset", default="default", choices=sorted(ENGINE_PRESETS),
                        help="engine settings for closure detection")
    parser.add_argument("--save-closures", type=Path, help="write the detected closures here (JSON)")
    parser.add_argument("--out", type=Path, required=True, help="merged map to write (.npz; an existing file is refused)")
    parser.add_argument("--overwrite", action="store_true", help="let --out replace an existing file (never an input map)")
    parser.add_argument("--report", type=Path, help="JSON report of residuals (default: <out>.report.json)")
    parser.add_argument("--png", type=Path, help="plot of the merged trajectories (default: <out>.png)")
    parser.add_argument("--reference", help="reference session id (default: the first map's)")
    parser.add_argument("--robust", choices=ROBUST_KERNELS, default="gnc")
    parser.add_argument("--allow-unconnected", action="store_true",
                        help="merge the sessions that connect and leave out those that share no usable closure "
                        "(default: refuse, saying why)")
    args = parser.parse_args(argv)
    writer = MapWriter(args.out, overwrite=args.overwrite, read_only=args.maps, hint="pass --overwrite to replace it")
    maps = [SessionMap.load(p) for p in args.maps]
    if args.closures is not None:
        closures = load_closures(args.closures)
    else:
        closures = [c for c in detect_closures(maps, ENGINE_PRESETS[args.engine_preset]) if c.verified]
        print(f"detected {len(closures)} verified closures "
              f"({sum(c.inter_session for c in closures)} between sessions)")
        if args.save_closures is not None:
            save_closures(args.save_closures, closures)
    result = merge_sessions(maps, closures, MergeConfig(reference_session=args.reference, robust=args.robust,
                                                                allow_unconnected=args.allow_unconnected))
    out = writer.save(merged_map(maps, result))
    report = args.report or out.with_suffix(".report.json")
    doc = report_dict(result, closures)
    atomic_write(report, lambda f: f.write(json.dumps(doc, indent=2).encode("utf-8")))
    png = plot_merge(args.png or out.with_suffix(".png"), result, closures)
    print(f"merged {len(result.session_T)} sessions into {result.reference_session!r}: "
          f"{doc['inliers']}/{doc['closures_used']} closures kept; map {out}, report {report}, plot {png}")
    for s, T in result.session_T.items():
        print(f"  {s}: t = {np.round(T[:3, 3], 3).tolist()} m, yaw = {math.degrees(math.atan2(T[1, 0], T[0, 0])):.2f} deg")
    if result.unconnected_sessions:
        print(f"left out (--allow-unconnected): {', '.join(result.unconnected_sessions)}")
    return 0
