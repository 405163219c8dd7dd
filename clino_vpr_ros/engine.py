"""The loop-closure engine: keyframes -> faiss index -> candidates -> geometric verification.

ROS-free and encoder-free: it consumes :class:`FrameInput` (a descriptor plus optional image,
intrinsics, odometry pose and depth) and returns the loop closures to publish now. Only keyframes
are indexed and used as queries. Each query keyframe searches its own session (minus the recent
past, see :class:`~clino_vpr_ros.index.IndexConfig`) and every prior session map loaded
read-only; candidates go through :class:`~clino_vpr_ros.candidates.CandidateFilter` and the
temporally consistent ones are verified with :func:`~clino_vpr_ros.verify.verify_pair`.

Frames: ``T_query_match`` is the pose of the match keyframe's base frame in the query keyframe's
base frame (``query_base_T_match_base``); it is computed from the camera-frame verification with
each session's ``base_T_camera`` (identity when not given). When ``metric`` is False its
translation is a unit direction (scale unobservable) and the covariance says so. Covariances are
6x6, order x, y, z, roll, pitch, yaw (metres, radians), expressed in the query base frame.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clino_vpr_ros.camera import CameraCalibration, undistort_features
from clino_vpr_ros.candidates import Candidate, CandidateConfig, CandidateFilter
from clino_vpr_ros.consistency import ConsistencyConfig, ConsistencyGate
from clino_vpr_ros.index import IndexConfig, KeyframeIndex
from clino_vpr_ros.keyframes import KeyframeConfig, KeyframeSelector, rotation_angle_deg
from clino_vpr_ros.rerank import RerankConfig, rerank, select_tokens
from clino_vpr_ros.sequence import SequenceConfig, backfill_rows, best_match, bracketing_rows, sequence_scores, track_positions
from clino_vpr_ros.session_map import MapWriter, SessionMap, SessionMapBuilder, check_compatible
from clino_vpr_ros.triangulate import Neighbour, TriangulationConfig, camera_motion, with_triangulated_depths
from clino_vpr_ros.verify import (LocalFeatures, Verification, VerifyConfig, extract_features, ratio_matches, to_gray,
                                  verify_pair)

if TYPE_CHECKING:  # the fleet module is imported only where a fleet_uri is configured
    from clino_vpr_ros.fleet import FleetHit, FleetLink

log = logging.getLogger(__name__)

#: Candidate.source of a keyframe found in the fleet index (clino_vpr_ros.fleet)
FLEET_SOURCE = -2


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs besides the encoder; nested configs are documented in their modules.

    autosave_period_s: 0 disables; otherwise :meth:`LoopClosureEngine.maybe_autosave` writes
    ``autosave_path`` at most that often (never while the session has no keyframe). ``autosave_path``
    is also the default of :meth:`LoopClosureEngine.save_map`; the engine claims it at construction,
    so an existing file there refuses the engine (a map of another run is never replaced). publish_unverified: also publish candidates that failed
    or could not get geometric verification (``verified=False``); off by default.
    max_rotation_deg: a verified closure whose relative rotation exceeds this is dropped (None: keep):
    a revisit is a view of the same place within 30 deg of heading (the ground truth's and the
    training's place definition); beyond it descriptors and features mostly match by accident.
    max_translation_m: a verified closure with a metric translation longer than this is dropped (None: keep):
    a revisit is within 8 m (the generated ground truth's radius); two views farther apart that share
    features look at the same thing from different places, which the back end need not be told.
    """

    keyframes: KeyframeConfig = KeyframeConfig()
    index: IndexConfig = IndexConfig()
    candidates: CandidateConfig = CandidateConfig()
    sequence: SequenceConfig = SequenceConfig()
    rerank: RerankConfig = RerankConfig()
    verify: VerifyConfig = VerifyConfig()
    triangulation: TriangulationConfig = TriangulationConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    frame_id: str = "odom"
    autosave_period_s: float = 0.0
    autosave_path: str = ""
    publish_unverified: bool = False
    descriptor_norm_tolerance: float = 1e-2
    max_rotation_deg: float | None = 30.0
    max_translation_m: float | None = None

    def __post_init__(self) -> None:
        if self.autosave_period_s < 0:
            raise ValueError(f"autosave_period_s must be >= 0, got {self.autosave_period_s}")
        if self.autosave_period_s > 0 and not self.autosave_path:
            raise ValueError("autosave_period_s > 0 needs an autosave_path")


_SEQUENCE = SequenceConfig(enabled=True)

ENGINE_PRESETS: dict[str, EngineConfig] = {
    # sequence scoring (5 aligned keyframes), margin 0.12 over the best other place (the robust z test
    # relaxed to 1), verified rotation within 25 deg and metric translation within 7.5 m (inside the 30 deg /
    # 8 m revisit definition), back-filling up to 9 keyframes before a verified one (a revisit found late, e.g.
    # at a session's start, still gets its first keyframes; the aligned map keyframe, else the one on its
    # other side, up to 2 alignment gaps away), following a revisit from its latest published closure where
    # the sequence margin falls short, and a closure published only once it agrees with a metric closure of
    # its revisit (consistency module); with that check no single pair carries a closure alone, so 12 inliers
    # suffice (20 elsewhere; 8 and 10 gave the same recall). All chosen on validation towns 961/962/963,
    # 966/967, 972-975 and 978 (models/README.md): no wrong closure there
    "default": EngineConfig(sequence=replace(_SEQUENCE, min_z=1.0, min_margin=0.12, backfill=True, backfill_keyframes=9,
                                                            backfill_gap_factor=2.0, follow=True),
                            max_rotation_deg=25.0, max_translation_m=7.5,
                            consistency=ConsistencyConfig(enabled=True), verify=VerifyConfig(min_inliers=12)),
    # the former default: single-frame candidates (ORB-SLAM3-like 3 consecutive matches, de-duplication);
    # precision 1.0 on every held-out sequence measured, recall 0.05-0.10
    "single_frame": EngineConfig(),
    # sequence scoring alone (5 aligned keyframes, z >= 2, margin 0.15, a closure for every keyframe with a
    # verified match, no back-filling): the default's sequence stage without its later additions
    "sequence": EngineConfig(sequence=_SEQUENCE),
    # exact below 20k keyframes, above a PQ shortlist re-ranked exactly: 2.2 ms CPU at 1M, recall@1 0.996 (`clino-vpr bench index`)
    "large_map": EngineConfig(index=IndexConfig(kind="pq")),
    # fewer, more certain closures: ORB-SLAM3-like 4 consecutive matches, cuVGL-like 40 inliers
    "strict": EngineConfig(candidates=CandidateConfig(min_consecutive=4, min_score=0.7), verify=VerifyConfig(min_inliers=40)),
    # more closures for a robust back end (GNC / switchable constraints): sequences of 3 keyframes, margin 0.1;
    # on validation towns recall 0.60-0.86 at precision 0.95-1.0 (the wrong ones: the right place seen with a
    # heading just beyond the 30 deg revisit definition)
    "high_recall": EngineConfig(sequence=replace(_SEQUENCE, min_length=3, min_margin=0.1)),
    # exact search on the GPU when faiss has GPU support (falls back to the CPU index otherwise)
    "gpu": EngineConfig(index=IndexConfig(use_gpu=True)),
    # no odometry: keyframes by time and novelty only
    "no_odometry": EngineConfig(keyframes=KeyframeConfig(min_distance_m=None, min_rotation_deg=None, max_interval_s=5.0)),
}


def get_engine_config(name: str) -> EngineConfig:
    """A named preset; ValueError listing the valid names otherwise."""
    if name not in ENGINE_PRESETS:
        raise ValueError(f"unknown engine preset {name!r}; valid: {', '.join(ENGINE_PRESETS)}")
    return ENGINE_PRESETS[name]


@dataclass(frozen=True)
class FrameInput:
    """One camera frame for the engine.

    stamp: seconds; descriptor: float32 (D,) L2-normalised; image: uint8 (H,W) gray or (H,W,3) RGB
    at the original resolution (None: no geometric verification possible); K: float64 (3,3)
    intrinsics of that image or None; odom_T_base: float64 (4,4) or None; depth: float32 (H,W)
    metres aligned with the image, or None. camera: the full calibration (K, distortion, size)
    instead of ``K`` (not both): keypoints are undistorted before they are stored and verified,
    and an image of another size than the calibration's is refused (ValueError).
    local_values float32 (P,C) / local_attention float32 (P,): the encoder's re-ranking outputs
    (``EncoderOutput.local_values[i]``, ``local_attention[i]``) or None (a model without them):
    the keyframe keeps :func:`~clino_vpr_ros.rerank.select_tokens` of them in its map.
    """

    stamp: float
    descriptor: np.ndarray
    image: np.ndarray | None = None
    K: np.ndarray | None = None
    odom_T_base: np.ndarray | None = None
    depth: np.ndarray | None = None
    camera: CameraCalibration | None = None
    local_values: np.ndarray | None = None
    local_attention: np.ndarray | None = None


@dataclass(frozen=True)
class LoopClosure:
    """A loop closure between the query keyframe (live session) and a match keyframe (any session).

    T_query_match: float64 (4,4) pose of the match base frame in the query base frame.
    covariance: float64 (6,6), order x, y, z, roll, pitch, yaw, query base frame.
    query_pose/match_pose: float64 (4,4) poses of the two keyframes in their own map's frame (the
    session's odometry frame; the merged frame for a keyframe of a merged map), or None.
    verified False (only with ``publish_unverified``): T_query_match is identity and the covariance
    1e6 * I, i.e. "same place, relative pose unknown".
    """

    query_stamp: float
    match_stamp: float
    query_session: str
    match_session: str
    query_id: int
    match_id: int
    score: float
    verified: bool
    inliers: int
    T_query_match: np.ndarray
    metric: bool
    covariance: np.ndarray
    query_pose: np.ndarray | None = None
    match_pose: np.ndarray | None = None

    @property
    def inter_session(self) -> bool:
        return self.query_session != self.match_session

    def to_dict(self) -> dict:
        """JSON-ready dict (arrays as nested lists)."""
        out = asdict(self)
        for key in ("T_query_match", "covariance", "query_pose", "match_pose"):
            out[key] = None if out[key] is None else np.asarray(out[key]).tolist()
        for keys, cast in ((("query_stamp", "match_stamp", "score"), float), (("query_id", "match_id", "inliers"), int),
                           (("verified", "metric"), bool), (("query_session", "match_session"), str)):
            for key in keys:
                out[key] = cast(out[key])
        return out

    @classmethod
    def from_dict(cls, d: dict) -> LoopClosure:
        kw = dict(d)
        for key in ("T_query_match", "covariance", "query_pose", "match_pose"):
            kw[key] = None if kw.get(key) is None else np.asarray(kw[key], dtype=np.float64)
        return cls(**kw)


@dataclass(frozen=True)
class FrameResult:
    """is_keyframe; keyframe_id (-1 when not a keyframe); closures to publish now."""

    is_keyframe: bool
    keyframe_id: int
    closures: list[LoopClosure] = field(default_factory=list)


@dataclass
class _Track:
    """A map's keyframes in track order for sequence scoring: map rows, float32 descriptors (N,D),
    positions along the track (metres when ``metric``, else keyframe counts). Sessions of a merged
    map are kept apart by a large position gap so no sequence spans two of them."""

    rows: np.ndarray
    descriptors: np.ndarray
    metric_pos: np.ndarray | None
    order_pos: np.ndarray


_SESSION_GAP = 1e9


@dataclass
class _Accepted:
    """An accepted sequence match, kept for back-filling its window: the map keyframe ``j`` (track
    index) of ``source``'s track, the window's live rows (oldest first, the current one last), their
    track positions and those of the map, in the alignment's unit (metres when ``metric``, else keyframes)."""

    source: int
    track: _Track
    j: int
    query_rows: list[int]
    query_pos: np.ndarray
    map_pos: np.ndarray
    gap: float
    metric: bool


def _prior_track(smap: SessionMap) -> _Track:
    rows, metric, order = [], [], []
    all_metric = True
    for k, s in enumerate(smap.session_ids):
        r = smap.rows_of_session(s)
        r = r[np.argsort(smap.stamps[r], kind="stable")]
        pos, is_metric = track_positions(smap.poses[r], len(r))
        all_metric &= is_metric
        rows.append(r)
        metric.append(pos + k * _SESSION_GAP)
        order.append(np.arange(len(r), dtype=np.float64) + k * _SESSION_GAP)
    rows_a = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return _Track(rows_a, np.ascontiguousarray(smap.descriptors[rows_a], np.float32),
                  np.concatenate(metric) if rows and all_metric else None,
                  np.concatenate(order) if rows else np.zeros(0))


@dataclass
class _Prior:
    smap: SessionMap
    index: KeyframeIndex
    track: _Track | None = None


def _rotate_covariance(cov: np.ndarray, R: np.ndarray) -> np.ndarray:
    B = np.zeros((6, 6))
    B[:3, :3] = B[3:, 3:] = R
    return B @ cov @ B.T


def camera_to_base(v: Verification, query_base_T_camera: np.ndarray | None, match_base_T_camera: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame verification -> (query_base_T_match_base (4,4), covariance (6,6) in the query base frame).

    Identity is used for a missing ``base_T_camera``. Without metric scale the translation stays a
    unit direction (rotated into the base frame; lever arms ignored since the scale is unknown).
    The covariance is rotated into the base frame (the lever arm's effect is neglected).
    """
    q_bTc = np.eye(4) if query_base_T_camera is None else query_base_T_camera
    m_bTc = np.eye(4) if match_base_T_camera is None else match_base_T_camera
    if v.metric:
        T = q_bTc @ v.qcam_T_mcam @ np.linalg.inv(m_bTc)
    else:
        T = np.eye(4)
        T[:3, :3] = q_bTc[:3, :3] @ v.qcam_T_mcam[:3, :3] @ m_bTc[:3, :3].T
        T[:3, 3] = q_bTc[:3, :3] @ v.qcam_T_mcam[:3, 3]
    return T, _rotate_covariance(v.covariance, q_bTc[:3, :3])


class LoopClosureEngine:
    """Per-frame loop-closure detection for one live session, with read-only prior maps."""

    def __init__(self, cfg: EngineConfig, descriptor_dim: int, fingerprint: str, session_id: str,
                 base_T_camera: np.ndarray | None = None) -> None:
        if descriptor_dim <= 0:
            raise ValueError(f"descriptor_dim must be > 0, got {descriptor_dim}")
        if not session_id:
            raise ValueError("session_id must be a non-empty string")
        if base_T_camera is not None:
            base_T_camera = np.asarray(base_T_camera, dtype=np.float64)
            if base_T_camera.shape != (4, 4) or not np.all(np.isfinite(base_T_camera)):
                raise ValueError(f"base_T_camera must be a finite (4,4) transform, got shape {base_T_camera.shape}")
        self.cfg = cfg
        self.descriptor_dim = int(descriptor_dim)
        self.fingerprint = fingerprint
        self.session_id = session_id
        self.base_T_camera = base_T_camera
        self._priors: list[_Prior] = []
        self._fleet: FleetLink | None = None  # set when a fleet_uri is configured
        self._fleet_hits: dict[tuple[str, int], FleetHit] = {}
        # one MapWriter per path, kept across reset(): this run may replace only what it wrote itself
        self._writers: dict[str, MapWriter] = {}
        if cfg.autosave_path:  # claim it now: an existing map there refuses the start, not the first save
            self._writer(cfg.autosave_path)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the live session (keyframes, index, filters, counters); prior maps stay loaded."""
        self._live = SessionMapBuilder(self.session_id, self.fingerprint, self.descriptor_dim, self.cfg.frame_id,
                                       self.cfg.verify.feature, self.base_T_camera)
        self._index = KeyframeIndex(self.descriptor_dim, self.cfg.index)
        self._selector = KeyframeSelector(self.cfg.keyframes)
        self._filter = CandidateFilter(self.cfg.candidates)
        self._live_pos: list[float] = []  # travelled distance at each live keyframe (NaN once a pose is missing)
        self._last_odom: np.ndarray | None = None
        self._live_odom_count = 0
        self._backfilled: set[tuple[int, int]] = set()  # (live row, source) with a verified closure
        self._backfill_tried: set[tuple[int, int, int]] = set()  # (live row, source, track index) verified by back-filling
        self._followed: dict[int, tuple[_Accepted, LoopClosure]] = {}  # source -> its revisit's latest published closure
        self._consistency = ConsistencyGate(self.cfg.consistency)
        self._next_id = 0
        self._last_autosave_clock: float | None = None
        self._counts = {"frames": 0, "candidates": 0, "verified": 0, "rejected": 0, "unverifiable": 0, "published": 0,
                        "reranked": 0, "inconsistent": 0}
        self.stage_ms: dict[str, float] = {}  # the last keyframe's time per stage (see :meth:`process`)

    def load_prior_map(self, path: str | Path) -> SessionMap:
        """Load an earlier session map read-only and query against it from now on.

        Raises FileNotFoundError, or ValueError for a corrupt map or one from another model.
        """
        smap = SessionMap.load(path, expected_fingerprint=self.fingerprint, expected_dim=self.descriptor_dim)
        self.add_prior_map(smap)
        return smap

    def add_prior_map(self, smap: SessionMap) -> None:
        """Query against an in-memory map (checked like :meth:`load_prior_map`)."""
        check_compatible(smap, self.fingerprint, self.descriptor_dim, f"map of session {smap.session_id!r}")
        if smap.path is not None and any(os.path.realpath(smap.path) == key for key in self._writers):
            raise ValueError(f"prior map {smap.path} is also where this session's map is written; "
                             "write this session's map to another path")
        if self.session_id in smap.session_ids:
            raise ValueError(f"prior map already contains the live session id {self.session_id!r}; give this session a new id")
        if smap.header.get("feature") != self.cfg.verify.feature:
            log.warning("prior map uses %s local features, engine uses %s: its keyframes cannot be verified",
                        smap.header.get("feature"), self.cfg.verify.feature)
        index = KeyframeIndex(self.descriptor_dim, self.cfg.index)
        if len(smap):
            index.add(smap.ids, smap.descriptors, smap.stamps)
        self._priors.append(_Prior(smap, index, _prior_track(smap)))
        log.info("prior map %s: %d keyframes of sessions %s", smap.path or "(memory)", len(smap), smap.session_ids)

    def attach_fleet(self, link: FleetLink) -> None:
        """Also write this session's keyframes to a fleet index and query it (a
        :class:`clino_vpr_ros.fleet.FleetLink`; its writer thread is started here)."""
        self._fleet = link
        link.start()

    @property
    def fleet(self) -> FleetLink | None:
        """The attached fleet link, or None (single robot, local index only)."""
        return self._fleet

    def snapshot(self) -> SessionMap:
        """The live session as a :class:`SessionMap` (copy)."""
        return self._live.snapshot()

    def _writer(self, path: str | Path, overwrite: bool = False) -> MapWriter:
        key = os.path.realpath(os.path.expanduser(str(path)))
        if key not in self._writers:
            self._writers[key] = MapWriter(path, overwrite=overwrite, read_only=[p.smap.path for p in self._priors if p.smap.path])
        return self._writers[key]

    def save_map(self, path: str | Path | None = None, *, overwrite: bool = False) -> Path:
        """Atomically save the live session map to ``path`` (default ``cfg.autosave_path``); returns the path.

        Goes through a :class:`MapWriter`: a file this engine did not write is never replaced
        (FileExistsError; ``overwrite=True`` lets the first save replace what is there).
        """
        target = path if path is not None else self.cfg.autosave_path
        if not target:
            raise ValueError("no map path: pass one or set EngineConfig.autosave_path")
        return self._writer(target, overwrite).save(self._live.snapshot())

    def maybe_autosave(self, now: float) -> Path | None:
        """Save to ``cfg.autosave_path`` when ``autosave_period_s`` has elapsed since the last save.

        ``now``: any monotonic clock in seconds (the same one on every call).
        """
        period = self.cfg.autosave_period_s
        if period <= 0:
            return None
        if self._last_autosave_clock is None:
            self._last_autosave_clock = now
            return None
        if now - self._last_autosave_clock < period:
            return None
        self._last_autosave_clock = now
        if not len(self._live):  # a session with no keyframe leaves no map behind
            return None
        return self.save_map(self.cfg.autosave_path)

    def stats(self) -> dict:
        """Counters: keyframes, index size, prior maps and their keyframes, candidates, verified, rejected, ..."""
        return {
            "keyframes": len(self._live),
            "index_size": len(self._index),
            "prior_maps": len(self._priors),
            "prior_keyframes": sum(len(p.smap) for p in self._priors),
            **self._counts,
        }

    def wants_frame(self, stamp: float) -> bool:
        """Cheap check before encoding: False when the frame cannot become a keyframe (too soon)."""
        return self._selector.time_gate_open(stamp)

    # ------------------------------------------------------------------ per frame
    def _validated_descriptor(self, d: np.ndarray) -> np.ndarray:
        d = np.asarray(d)
        if d.shape != (self.descriptor_dim,):
            raise ValueError(f"descriptor has shape {d.shape}, expected ({self.descriptor_dim},) from encoder {self.fingerprint!r}")
        d = d.astype(np.float32)
        if not np.all(np.isfinite(d)):
            raise ValueError("descriptor contains NaN or Inf (encoder failure?); frame refused")
        norm = float(np.linalg.norm(d))
        if abs(norm - 1.0) > self.cfg.descriptor_norm_tolerance:
            raise ValueError(f"descriptor must be L2-normalised, its norm is {norm:.4f}")
        return d / norm

    @staticmethod
    def _validate_frame(frame: FrameInput) -> None:
        if not np.isfinite(frame.stamp):
            raise ValueError(f"frame stamp must be finite, got {frame.stamp}")
        if frame.image is not None:
            img = frame.image
            if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
                raise ValueError(f"image must be uint8 (H,W) or (H,W,3) RGB, got {img.dtype} {img.shape}")
            if frame.depth is not None and frame.depth.shape != img.shape[:2]:
                raise ValueError(f"depth shape {frame.depth.shape} must equal the image's {img.shape[:2]}")
        if frame.camera is not None:
            if frame.K is not None:
                raise ValueError("give the intrinsics as K or as camera, not both")
            if frame.image is not None:
                frame.camera.check_image(*frame.image.shape[:2])
        for name, value, shape in (("K", frame.K, (3, 3)), ("odom_T_base", frame.odom_T_base, (4, 4))):
            if value is not None and (np.shape(value) != shape or not np.all(np.isfinite(value))):
                raise ValueError(f"{name} must be a finite {shape} array, got shape {np.shape(value)}")

    def process(self, frame: FrameInput) -> FrameResult:
        """Feed one frame; returns whether it became a keyframe and the closures to publish now.

        Raises ValueError for a descriptor of the wrong dimension, with NaN/Inf or not normalised,
        and for malformed images, intrinsics, poses or depth.
        """
        desc = self._validated_descriptor(frame.descriptor)
        self._validate_frame(frame)
        self._counts["frames"] += 1
        odom = None if frame.odom_T_base is None else np.asarray(frame.odom_T_base, np.float64)
        if not self._selector.accept(frame.stamp, desc, odom):
            return FrameResult(False, -1, [])
        self.stage_ms = {}
        t0 = time.perf_counter()
        features = None
        if frame.image is not None:
            features = extract_features(to_gray(frame.image), self.cfg.verify, frame.depth)
            # stored and verified as pinhole pixels of K (clino_vpr_ros/camera.py): one meaning in every map
            features = undistort_features(features, frame.camera)
        tokens = None
        if frame.local_values is not None and frame.local_attention is not None:
            tokens = select_tokens(frame.local_values, frame.local_attention, self.cfg.rerank)
        self._add_stage("features", t0)
        K = frame.camera.K if frame.camera is not None else None if frame.K is None else np.asarray(frame.K, np.float64)
        return self._add_keyframe(self._next_id, frame.stamp, desc, odom, K, features, tokens)

    def _add_stage(self, name: str, since: float) -> float:
        """Add the time since ``since`` to stage ``name`` of :attr:`stage_ms`; returns now."""
        now = time.perf_counter()
        self.stage_ms[name] = self.stage_ms.get(name, 0.0) + (now - since) * 1e3
        return now

    def replay_keyframe(self, smap: SessionMap, row: int) -> FrameResult:
        """Feed a stored keyframe (descriptor, pose, K, local features) as the next query keyframe,
        keeping its id; used to find closures between saved maps offline (``clino-vpr merge --detect``)."""
        desc = self._validated_descriptor(smap.descriptors[row])
        self._counts["frames"] += 1
        self.stage_ms = {}
        return self._add_keyframe(int(smap.ids[row]), float(smap.stamps[row]), desc, smap.pose(row),
                                  smap.intrinsics_of(row), smap.features(row), smap.tokens(row))

    def _add_keyframe(self, kf_id: int, stamp: float, desc: np.ndarray, odom: np.ndarray | None, K: np.ndarray | None,
                      features: LocalFeatures | None, tokens: np.ndarray | None = None) -> FrameResult:
        t0 = time.perf_counter()
        query_seq = len(self._live)
        accepted: list[_Accepted | None]
        if self.cfg.sequence.enabled:
            self._append_position(odom)
            per_source, accepted = self._sequence_candidates(desc, stamp, query_seq, tokens)
            t0 = self._add_stage("sequence", t0)
            self.stage_ms["sequence"] -= self.stage_ms.get("rerank", 0.0)  # counted in its own stage
        else:
            candidates = self._retrieve(desc, stamp, query_seq)
            t0 = self._add_stage("retrieval", t0)
            candidates = self._reranked(candidates, tokens)
            t0 = self._add_stage("rerank", t0)
            per_source, accepted = [self._filter.update(query_seq, self._reference_score(desc), candidates)], [None]
            if self._rerank_active(candidates):  # the filter sorts by score: back to the re-ranked order
                rank = {(c.source, c.match_seq): i for i, c in enumerate(candidates)}
                per_source = [sorted(ready, key=lambda c: rank[(c.source, c.match_seq)])[:1] for ready in per_source]
        self._next_id = max(self._next_id, kf_id + 1)
        self._live.append(kf_id, stamp, desc, odom, K, features, tokens)
        self._index.add(kf_id, desc, stamp)
        if self._fleet is not None:
            self._fleet.enqueue(kf_id, stamp, desc, odom, len(self._live) - 1)
        t0 = self._add_stage("retrieval", t0)
        closures = []
        for ready, acc in zip(per_source, accepted):
            found = [(query_seq, c) for c in self._verify_ready(ready, kf_id, stamp, odom, K, features)]
            if found and acc is not None:
                self._backfilled.add((query_seq, acc.source))  # has its closure to this map already
                if self.cfg.sequence.backfill:
                    found += self._backfill(acc, found[0][1])
            published = self._consistent(query_seq, found)
            self._follow_from(acc, kf_id, published)
            closures += published
        if self.cfg.sequence.follow:
            for acc, found in self._follow(query_seq):
                published = self._consistent(query_seq, found)
                self._follow_from(acc, kf_id, published)
                closures += published
        self._counts["published"] += len(closures)
        self._add_stage("verification", t0)
        if "pose" in self.stage_ms:  # triangulation + PnP ran inside verification: count it once
            self.stage_ms["verification"] -= self.stage_ms["pose"]
        return FrameResult(True, kf_id, closures)

    # ------------------------------------------------------------------ local re-ranking
    def _tokens_of(self, source: int, row: int) -> np.ndarray | None:
        """Re-ranking tokens of a candidate's keyframe (None: none stored, e.g. an older map or a fleet hit)."""
        if source == FLEET_SOURCE:
            return None
        return self._live.tokens(row) if source < 0 else self._priors[source].smap.tokens(row)

    def _reranked(self, candidates: list[Candidate], tokens: np.ndarray | None) -> list[Candidate]:
        """The top ``rerank.top_k`` candidates ordered by mutual-nearest-neighbour count (rerank module),
        then the others; unchanged when re-ranking is off, the query has no tokens or a candidate has
        none (an older map): the descriptor order stands then."""
        cfg = self.cfg.rerank
        if not cfg.enabled or tokens is None or not len(tokens) or not candidates:
            return candidates
        head, tail = candidates[: cfg.top_k], candidates[cfg.top_k:]
        cand_tokens = [self._tokens_of(c.source, c.match_seq) for c in head]
        if any(t is None for t in cand_tokens):
            return candidates
        order, counts = rerank(tokens, cand_tokens, [c.score for c in head], cfg.min_similarity, cfg.match_weight)
        self._counts["reranked"] += 1
        return [replace(head[i], rerank_matches=int(counts[i])) for i in order] + tail

    @staticmethod
    def _rerank_active(candidates: list[Candidate]) -> bool:
        return any(c.rerank_matches >= 0 for c in candidates)

    # ------------------------------------------------------------------ sequence scoring
    def _append_position(self, odom: np.ndarray | None) -> None:
        """Travelled distance of the new keyframe (a keyframe without odometry adds none)."""
        prev = self._last_odom
        step = 0.0 if odom is None or prev is None else float(np.linalg.norm(odom[:3, 3] - prev[:3, 3]))
        self._live_pos.append((self._live_pos[-1] if self._live_pos else 0.0) + step)
        if odom is not None:
            self._last_odom = odom
            self._live_odom_count += 1

    def _sequence_candidates(self, desc: np.ndarray, stamp: float, query_seq: int, tokens: np.ndarray | None = None
                             ) -> tuple[list[list[Candidate]], list[_Accepted | None]]:
        """Per map with an accepted place (live first, then priors): the candidates to verify, best
        place first, then its better-looking neighbour (the aligned place is +-1 keyframe of the true
        one); and the accepted matches, for back-filling."""
        cfg = self.cfg.sequence
        n = len(self._live)
        w = min(cfg.window - 1, n)
        window = np.vstack([self._live.descriptor(r) for r in range(n - w, n)] + [desc[None, :]]) if w else desc[None, :]
        q_metric = np.asarray(self._live_pos[-(w + 1):], np.float64) if self._live_odom_count >= 2 else np.full(w + 1, np.nan)
        q_order = np.arange(w + 1, dtype=np.float64)
        query_rows = list(range(n - w, n + 1))  # the current keyframe becomes row n
        tracks: list[tuple[_Track, int]] = []
        n_rows = self._index.searchable_rows(stamp, exclude_recent=True)
        if n_rows > 0:
            pos = np.asarray(self._live_pos[:n_rows], np.float64)
            tracks.append((_Track(np.arange(n_rows), self._live.descriptors_upto(n_rows),
                                  pos if self._live_odom_count >= 2 else None, np.arange(n_rows, dtype=np.float64)), -1))
        tracks += [(prior.track, p_i) for p_i, prior in enumerate(self._priors)]
        out: list[list[Candidate]] = []
        accepted: list[_Accepted | None] = []
        for track, source in tracks:
            cands, acc = self._track_candidates(track, window, q_metric, q_order, desc, query_seq, stamp, source,
                                                query_rows, tokens)
            if cands:
                out.append(cands)
                accepted.append(acc)
        return out, accepted

    def _track_candidates(self, track: _Track, window: np.ndarray, q_metric: np.ndarray, q_order: np.ndarray,
                          desc: np.ndarray, query_seq: int, stamp: float, source: int, query_rows: list[int],
                          tokens: np.ndarray | None = None) -> tuple[list[Candidate], _Accepted | None]:
        cfg = self.cfg.sequence
        metric = track.metric_pos is not None and np.all(np.isfinite(q_metric))
        map_pos, q_pos = (track.metric_pos, q_metric) if metric else (track.order_pos, q_order)
        gap, exclusion = (cfg.max_align_gap_m, cfg.exclusion_m) if metric else (cfg.max_align_gap_keyframes, cfg.exclusion_keyframes)
        scores, lengths = sequence_scores(window, q_pos, track.descriptors, map_pos, gap)
        m = best_match(scores, lengths, map_pos, cfg, exclusion)
        if m is None:
            return [], None
        self._counts["candidates"] += 1
        near = lambda j: 0 <= j < len(track.rows) and abs(map_pos[j] - map_pos[m.row]) < _SESSION_GAP / 2  # noqa: E731
        picks = [m.row] + sorted((j for j in (m.row - 1, m.row + 1) if near(j)),
                                 key=lambda j: -float(track.descriptors[j] @ desc))[:1]
        if self.cfg.rerank.enabled and tokens is not None and len(tokens):
            picks = self._reranked_picks(m.row, near, track, desc, tokens, source) or picks
        out = [self._track_candidate(track, j, source, query_seq, stamp, m.score, m.z, m.length) for j in picks]
        return out, self._accepted(source, track, m.row, query_rows[-1], metric, map_pos, gap)

    def _accepted(self, source: int, track: _Track, j: int, row: int, metric: bool, map_pos: np.ndarray, gap: float
                  ) -> _Accepted:
        """The accepted match of live row ``row`` with track index ``j``, kept for back-filling the
        ``sequence.backfill_keyframes`` live keyframes before it (positions in the alignment's unit)."""
        back = min(self.cfg.sequence.backfill_keyframes, row)
        q_pos = np.asarray(self._live_pos[row - back: row + 1], np.float64) if metric else np.arange(back + 1.0)
        if not np.all(np.isfinite(q_pos)):  # a keyframe without odometry in the reach: back to the window
            back = min(self.cfg.sequence.window - 1, row)
            q_pos = q_pos[-(back + 1):]
        return _Accepted(source, track, j, list(range(row - back, row + 1)), q_pos, map_pos, gap, metric)

    def _track_candidate(self, track: _Track, j: int, source: int, query_seq: int, stamp: float, score: float,
                         z: float = 0.0, length: int = 0) -> Candidate:
        """A candidate for keyframe ``j`` of a map's track (``source`` as in :class:`Candidate`)."""
        r = int(track.rows[j])
        if source < 0:
            kf_id, m_stamp, session = int(self._index.ids[r]), float(self._index.stamps[r]), self.session_id
        else:
            smap = self._priors[source].smap
            kf_id, m_stamp, session = int(smap.ids[r]), float(smap.stamps[r]), smap.session_of(r)
        return Candidate(query_seq, stamp, session, r, kf_id, m_stamp, score, source, z, length)

    def _consistent(self, query_seq: int, found: list[tuple[int, LoopClosure]]) -> list[LoopClosure]:
        """The closures to publish now, of ``found`` ((live row, closure)) and of those held back
        before, per map (:mod:`clino_vpr_ros.consistency`); unverified ones (``publish_unverified``) pass."""
        out = [c for _, c in found if not c.verified]
        sessions = dict.fromkeys(c.match_session for _, c in found if c.verified)
        for session in sessions:
            mine = [(r, c) for r, c in found if c.verified and c.match_session == session]
            dropped = self._consistency.dropped
            out += self._consistency.submit(session, query_seq, mine)
            self._counts["inconsistent"] += self._consistency.dropped - dropped
        return out

    def _backfill(self, acc: _Accepted, anchor: LoopClosure) -> list[tuple[int, LoopClosure]]:
        """(live row, closure) for the earlier keyframes of an accepted, verified window: each verified
        against the map keyframe the sequence aligned it with (see ``SequenceConfig.backfill``).

        A pair whose heading difference, predicted from the anchor closure's verified rotation and
        both sessions' odometry, exceeds ``max_rotation_deg`` is skipped: at a turn the aligned views
        differ by more than a revisit's heading, and their own estimated rotation is least reliable there.
        """
        cfg = self.cfg.sequence
        closures: list[tuple[int, LoopClosure]] = []
        rows = backfill_rows(acc.j, acc.query_pos, acc.map_pos, acc.gap * cfg.backfill_gap_factor)
        for q_row, pair in zip(acc.query_rows[:-1], rows[:-1]):
            for j in pair[pair >= 0]:  # the aligned map keyframe, then the one on its other side
                if (q_row, acc.source) in self._backfilled:
                    break
                closures += self._backfill_pair(acc, anchor, q_row, int(j))
        return closures

    def _backfill_pair(self, acc: _Accepted, anchor: LoopClosure, q_row: int, j: int) -> list[tuple[int, LoopClosure]]:
        """Live row ``q_row`` verified against track index ``j`` of ``acc`` (see :meth:`_backfill`)."""
        # a pair is verified once: a row is tried again only when a later anchor aligns it with another
        # map keyframe (the first anchor of a revisit is often a keyframe off, which the next one corrects)
        # or predicts a heading within the limit for a pair this one's rotation ruled out
        if (q_row, acc.source, j) in self._backfill_tried:
            return []
        cosine = float(self._live.descriptor(q_row) @ acc.track.descriptors[j])
        if cosine < self.cfg.sequence.backfill_min_cosine:
            return []
        q_id, q_stamp, q_pose, q_K = self._live.row_info(q_row)
        cand = self._track_candidate(acc.track, j, acc.source, q_row, q_stamp, cosine)
        if self._predicted_rotation_deg(anchor, q_pose, cand) > (self.cfg.max_rotation_deg or 180.0):
            return []
        self._backfill_tried.add((q_row, acc.source, j))
        found = self._verify_ready([cand], q_id, q_stamp, q_pose, q_K, self._live.features(q_row))
        if found:
            self._backfilled.add((q_row, acc.source))
        return [(q_row, c) for c in found]

    def _follow_from(self, acc: _Accepted | None, kf_id: int, published: list[LoopClosure]) -> None:
        """Follow ``acc``'s revisit from the current keyframe (``kf_id``) when one of its closures was published:
        only a closure that passed every check (consistency included) leads on."""
        mine = [c for c in published if c.query_id == kf_id]
        if acc is not None and mine:
            self._followed[acc.source] = (acc, mine[0])

    def _follow(self, row: int) -> list[tuple[_Accepted, list[tuple[int, LoopClosure]]]]:
        """Live row ``row`` verified against each map whose revisit it continues without a closure of its
        own this keyframe, at the map keyframes that the revisit's latest published match and the travelled
        distance since put it at (see ``SequenceConfig.follow``): (alignment from this row, (row, closure)) per map."""
        cfg = self.cfg.sequence
        out: list[tuple[_Accepted, list[tuple[int, LoopClosure]]]] = []
        for source, (acc, anchor) in list(self._followed.items()):
            last = acc.query_rows[-1]
            if (row, source) in self._backfilled or not 0 < row - last <= cfg.backfill_keyframes:
                continue
            pos = self._live_pos[row] if acc.metric else acc.query_pos[-1] + (row - last)
            if not np.isfinite(pos):
                continue
            wanted = np.array([acc.map_pos[acc.j] + (pos - acc.query_pos[-1])])
            for j in bracketing_rows(acc.map_pos, wanted, acc.gap * cfg.backfill_gap_factor)[0]:
                found = self._backfill_pair(acc, anchor, row, int(j)) if j >= 0 else []
                if found:
                    out.append((replace(acc, j=int(j), query_rows=[row], query_pos=np.array([pos])), found))
                    break
        return out

    def _predicted_rotation_deg(self, anchor: LoopClosure, q_pose: np.ndarray | None, cand: Candidate) -> float:
        """Heading difference (deg) of a back-fill pair from the anchor's verified rotation and the odometry
        of both sessions (0 when a pose is missing: nothing to predict from)."""
        m_pose = self._match_info(cand)[3]
        if q_pose is None or m_pose is None or anchor.query_pose is None or anchor.match_pose is None:
            return 0.0
        R = (q_pose[:3, :3].T @ anchor.query_pose[:3, :3] @ anchor.T_query_match[:3, :3]
             @ anchor.match_pose[:3, :3].T @ m_pose[:3, :3])
        return rotation_angle_deg(R)

    def _reranked_picks(self, best: int, near: Callable[[int], bool], track: _Track, desc: np.ndarray, tokens: np.ndarray,
                        source: int) -> list[int]:
        """The sequence match's neighbourhood (the ``rerank.top_k`` track rows nearest ``best``, same
        session) re-ranked by mutual matches: its best row only (empty: some row has no tokens)."""
        t0 = time.perf_counter()
        half = self.cfg.rerank.top_k // 2
        rows = sorted((j for j in range(best - half, best + half + 1) if near(j)), key=lambda j: abs(j - best))
        rows = rows[: self.cfg.rerank.top_k]
        cand = [self._tokens_of(source, int(track.rows[j])) for j in rows]
        if any(t is None for t in cand):
            return []
        order, _ = rerank(tokens, cand, [float(track.descriptors[j] @ desc) for j in rows], self.cfg.rerank.min_similarity,
                          self.cfg.rerank.match_weight)
        self._counts["reranked"] += 1
        self._add_stage("rerank", t0)
        return [rows[int(order[0])]]

    def _reference_score(self, desc: np.ndarray) -> float | None:
        n = len(self._live)
        if n == 0:
            return None
        w = min(n, self.cfg.candidates.adaptive_window)
        recent = np.stack([self._live.descriptor(r) for r in range(n - w, n)])
        return float(np.max(recent @ desc))

    def _retrieve(self, desc: np.ndarray, stamp: float, query_seq: int) -> list[Candidate]:
        k = self.cfg.candidates.top_k
        found: list[Candidate] = []
        scores, ids, rows = self._index.search(desc, k, query_stamp=stamp, exclude_recent=True)
        for s, i, r in zip(scores[0], ids[0], rows[0]):
            if r >= 0:
                found.append(Candidate(query_seq, stamp, self.session_id, int(r), int(i), float(self._index.stamps[r]), float(s)))
        for p_i, prior in enumerate(self._priors):
            scores, ids, rows = prior.index.search(desc, k)
            for s, i, r in zip(scores[0], ids[0], rows[0]):
                if r >= 0:
                    found.append(Candidate(query_seq, stamp, prior.smap.session_of(r), int(r), int(i),
                                           float(prior.smap.stamps[r]), float(s), source=p_i))
        if self._fleet is not None:
            found += self._fleet_candidates(desc, stamp, query_seq, k)
        found.sort(key=lambda c: -c.score)
        found = found[:k]
        self._counts["candidates"] += len(found)
        return found

    def _fleet_candidates(self, desc: np.ndarray, stamp: float, query_seq: int, k: int) -> list[Candidate]:
        if len(self._fleet_hits) > 10_000:  # only hits of recent queries are ever verified
            self._fleet_hits.clear()
        found = []
        for hit in self._fleet.search(desc, k, stamp):
            self._fleet_hits[(hit.session, hit.kf_id)] = hit
            found.append(Candidate(query_seq, stamp, hit.session, hit.map_row, hit.kf_id, hit.stamp, hit.score,
                                   source=FLEET_SOURCE))
        return found

    def _match_info(self, c: Candidate) -> tuple[str, LocalFeatures | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """(session id, features, K, pose, base_T_camera) of a candidate's match keyframe."""
        if c.source == FLEET_SOURCE:  # read from the hit's session map, only now that it is verified
            features, K, pose, bTc = self._fleet.features.get(self._fleet_hits[(c.match_session, c.match_id)])
            return c.match_session, features, K, pose, bTc
        if c.source < 0:
            _, _, pose, K = self._live.row_info(c.match_seq)
            return self.session_id, self._live.features(c.match_seq), K, pose, self.base_T_camera
        smap, r = self._priors[c.source].smap, c.match_seq
        return c.match_session, smap.features(r), smap.intrinsics_of(r), smap.pose(r), smap.base_T_camera(r)

    def _verify_ready(self, ready: list[Candidate], kf_id: int, stamp: float, odom: np.ndarray | None,
                      K: np.ndarray | None, features: LocalFeatures | None) -> list[LoopClosure]:
        closures: list[LoopClosure] = []
        done_sources: set[tuple[int, str]] = set()
        for c in ready[: self.cfg.candidates.max_verifications]:
            if (c.source, c.match_session) in done_sources:
                continue
            session, m_feat, m_K, m_pose, m_bTc = self._match_info(c)
            if features is None or m_feat is None:
                self._counts["unverifiable"] += 1
                v = None
            else:
                # matched once: both verifications below and the triangulation use these pairs
                pairs = ratio_matches(features, m_feat, self.cfg.verify)
                t_pose = time.perf_counter()
                m_tri = self._with_depth(c, features, K, m_feat, m_K, m_pose, m_bTc, pairs)
                v = verify_pair(features, K, m_tri, m_K, self.cfg.verify, pairs)
                if m_tri is not m_feat:  # metric pose without depth: triangulation + PnP
                    self._add_stage("pose", t_pose)
                    v = self._checked_triangulated(v, verify_pair(features, K, m_feat, m_K, self.cfg.verify, pairs))
                self._counts["verified" if v.accepted else "rejected"] += 1
                if not v.accepted:
                    log.debug("candidate %s/%d rejected: %s", session, c.match_id, v.reason)
            if v is not None and v.accepted and self._out_of_place(v):
                self._counts["rejected"] += 1
                continue
            if (v is None or not v.accepted) and not self.cfg.publish_unverified:
                continue
            closures.append(self._closure(c, session, kf_id, stamp, odom, m_pose, v, m_bTc))
            self._filter.mark_published(c)
            done_sources.add((c.source, c.match_session))
        return closures

    def _with_depth(self, c: Candidate, q_feat: LocalFeatures, q_K: np.ndarray | None, m_feat: LocalFeatures,
                    m_K: np.ndarray | None, m_pose: np.ndarray | None, m_bTc: np.ndarray | None,
                    pairs: np.ndarray) -> LocalFeatures:
        """The match features, with depths triangulated from its neighbouring keyframes when neither
        side has sensor depth (see :mod:`clino_vpr_ros.triangulate`); unchanged otherwise.

        pairs: int (M,2) the query-match ratio-test pairs. Only their match keypoints are
        triangulated, since PnP uses no other; too few of them for verification -> nothing is.
        """
        tcfg = self.cfg.triangulation
        if not tcfg.enabled or q_K is None or m_K is None or m_pose is None or q_feat.has_depth or m_feat.has_depth:
            return m_feat
        if len(pairs) < self.cfg.verify.min_inliers:  # verification rejects it before any pose
            return m_feat
        neighbours = []
        for feats, K, pose in self._neighbour_views(c, tcfg.neighbours):
            if feats is not None and K is not None and pose is not None:
                neighbours.append(Neighbour(feats, K, camera_motion(m_pose, pose, m_bTc)))
        return with_triangulated_depths(m_feat, m_K, neighbours, self.cfg.verify, tcfg, np.unique(pairs[:, 1])) or m_feat

    def _checked_triangulated(self, pnp: Verification, plain: Verification) -> Verification:
        """The triangulated PnP pose when the plain two-view geometry agrees with it, else the plain one.

        Triangulation can go wrong (odometry glitch, repeated texture between neighbours) and a wrong
        metric pose is worse than a direction: its translation must point within
        ``max_direction_disagreement_deg`` of the essential matrix's (for translations above 0.5 m,
        where that direction is defined) and its rotation within 5 deg.
        """
        if not pnp.accepted or not pnp.metric or not plain.accepted:
            return pnp if pnp.accepted else plain
        dR = pnp.qcam_T_mcam[:3, :3].T @ plain.qcam_T_mcam[:3, :3]
        t = pnp.qcam_T_mcam[:3, 3]
        agree = rotation_angle_deg(dR) <= 5.0
        if agree and np.linalg.norm(t) > 0.5 and plain.method == "essential":
            cos = float(t @ plain.qcam_T_mcam[:3, 3]) / (np.linalg.norm(t) * max(np.linalg.norm(plain.qcam_T_mcam[:3, 3]), 1e-9))
            agree = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))) <= self.cfg.triangulation.max_direction_disagreement_deg
        return pnp if agree else plain

    def _neighbour_views(self, c: Candidate, k: int) -> list[tuple[LocalFeatures | None, np.ndarray | None, np.ndarray | None]]:
        """(features, K, pose) of up to ``k`` keyframes on each side of the match, same session.

        Nothing for a fleet hit: its row is in another robot's map, whose neighbours are not fetched
        (only the verified keyframe's own features are read from its session map), so
        such a closure is metric only with depth."""
        if c.source == FLEET_SOURCE:
            return []
        if c.source < 0:
            rows = [r for d in range(1, k + 1) for r in (c.match_seq - d, c.match_seq + d) if 0 <= r < len(self._live)]
            return [(self._live.features(r), self._live.row_info(r)[3], self._live.row_info(r)[2]) for r in rows]
        smap = self._priors[c.source].smap
        same = smap.rows_of_session(c.match_session)
        same = same[np.argsort(smap.stamps[same], kind="stable")]
        at = int(np.flatnonzero(same == c.match_seq)[0])
        picks = [same[i] for d in range(1, k + 1) for i in (at - d, at + d) if 0 <= i < len(same)]
        return [(smap.features(int(r)), smap.intrinsics_of(int(r)), smap.pose(int(r))) for r in picks]

    def _out_of_place(self, v: Verification) -> bool:
        """Whether a verified pair lies beyond ``max_rotation_deg`` or, metric, beyond ``max_translation_m``."""
        turn, reach = self.cfg.max_rotation_deg, self.cfg.max_translation_m
        return ((turn is not None and rotation_angle_deg(v.qcam_T_mcam[:3, :3]) > turn)
                or (reach is not None and v.metric and float(np.linalg.norm(v.qcam_T_mcam[:3, 3])) > reach))

    def _closure(self, c: Candidate, session: str, kf_id: int, stamp: float, odom: np.ndarray | None,
                 m_pose: np.ndarray | None, v: Verification | None, m_bTc: np.ndarray | None) -> LoopClosure:
        accepted = v is not None and v.accepted
        if v is None:
            T, cov, metric, inliers = np.eye(4), np.eye(6) * 1e6, False, 0
        else:
            T, cov = camera_to_base(v, self.base_T_camera, m_bTc)
            metric, inliers = v.metric, v.inliers
        return LoopClosure(stamp, c.match_stamp, self.session_id, session, kf_id, c.match_id, c.score, accepted,
                           inliers, T, metric and accepted, cov, odom, m_pose)
