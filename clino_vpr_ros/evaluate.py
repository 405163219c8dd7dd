"""Evaluation: Recall@K on downloader-format folders and loop-closure precision/recall.

``clino-vpr eval recall --model X.onnx|X.safetensors --data DIR [--radius 25]``
``clino-vpr eval loops --closures closures.csv --groundtruth SESSION_DIR [...] --out DIR``

Importing this module needs neither torch nor ROS: a torch model is only touched when one is passed in.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from clino_vpr_ros.atomic import atomic_write
from clino_vpr_ros.datasets import DownloaderSet, load_model_inputs, read_downloader_set, read_rgb

if TYPE_CHECKING:
    from clino_vpr_ros.verify import VerifyConfig

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_KS = (1, 5, 10)


# ------------------------------------------------------------------------------------------ Recall@K


def recall_at_k(
    db: np.ndarray,
    queries: np.ndarray,
    db_xy: np.ndarray,
    q_xy: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    radius_m: float = 25.0,
) -> dict[int, float]:
    """Fraction of queries with a database image within ``radius_m`` among their top-K (cosine) matches.

    db: float32 (N, D) and queries: float32 (M, D) L2-normalised descriptors; db_xy (N, 2) and
    q_xy (M, 2) metric positions (UTM east, north). Queries with no database image within the radius
    cannot be answered and are excluded (their count is logged). Returns {k: recall in [0, 1]}.
    """
    ks = _check_ks(ks)
    _check_xy(db_xy, len(db), "db_xy")
    return recall_of_ranking(retrieve(db, queries, ks[-1]), db_xy, q_xy, ks, radius_m)


def retrieve(db: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-``k``: int64 (M, min(k, N)) database indices, best first."""
    import faiss

    db = _check_descriptors(db, "db")
    queries = _check_descriptors(queries, "queries")
    if db.shape[1] != queries.shape[1]:
        raise ValueError(f"descriptor sizes differ: db {db.shape[1]}, queries {queries.shape[1]}")
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    return index.search(queries, min(k, len(db)))[1]


def recall_of_ranking(
    ranking: np.ndarray, db_xy: np.ndarray, q_xy: np.ndarray, ks: Sequence[int] = DEFAULT_KS, radius_m: float = 25.0
) -> dict[int, float]:
    """Recall@K of a ranking: int (M, K') database indices per query, best first (see :func:`recall_at_k`)."""
    ks = _check_ks(ks)
    ranking = np.asarray(ranking)
    db_xy, q_xy = _check_xy(db_xy, len(db_xy), "db_xy"), _check_xy(q_xy, len(ranking), "q_xy")
    if ranking.ndim != 2 or ranking.size and not 0 <= ranking.min() <= ranking.max() < len(db_xy):
        raise ValueError(f"ranking must be (M, K) indices into the {len(db_xy)} database positions")
    d2 = ((q_xy[:, None, :] - db_xy[None, :, :]) ** 2).sum(-1)  # (M, N); eval sets are small enough
    positives = d2 <= radius_m**2
    has_positive = positives.any(1)
    n_excluded = int((~has_positive).sum())
    if n_excluded:
        logger.info("%d of %d queries have no database image within %.1f m: excluded", n_excluded, len(q_xy), radius_m)
    if not has_positive.any():
        raise ValueError(f"no query has a database image within {radius_m} m: wrong radius or wrong coordinates?")
    hit = np.take_along_axis(positives, ranking, axis=1)[has_positive]  # (M', K') True where the match is close
    first_hit = np.where(hit.any(1), hit.argmax(1), np.iinfo(np.int64).max)
    return {k: float((first_hit < k).mean()) for k in ks}


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def rerank_by_verification(
    ranking: np.ndarray, db_paths: Sequence[Path], q_paths: Sequence[Path], top: int,
    cfg: VerifyConfig | None = None, progress: bool = True,
) -> np.ndarray:
    """Two-stage retrieval: reorder each query's first ``top`` candidates by geometric verification.

    The node verifies its candidates the same way (:mod:`clino_vpr_ros.verify`; no intrinsics in a
    downloader set, so the fundamental-matrix model). Accepted candidates come first, most inliers
    first; rejected ones keep their descriptor order after them. ranking: int (M, K) -> same shape.
    """
    from tqdm import tqdm

    from clino_vpr_ros.verify import VerifyConfig, extract_features, to_gray, verify_pair

    cfg = cfg or VerifyConfig()
    ranking = np.array(ranking, copy=True)
    top = min(top, ranking.shape[1])
    db_features: dict[int, Any] = {}
    for i in tqdm(range(len(ranking)), desc="rerank", unit="query", disable=not progress, leave=False):
        q = extract_features(to_gray(read_rgb(q_paths[i])), cfg)
        for j in ranking[i, :top]:
            if j not in db_features:
                db_features[j] = extract_features(to_gray(read_rgb(db_paths[j])), cfg)
        score = [(v.inliers if v.accepted else -1) for v in
                 (verify_pair(q, None, db_features[j], None, cfg) for j in ranking[i, :top])]
        ranking[i, :top] = ranking[i, :top][np.argsort(-np.asarray(score), kind="stable")]
    return ranking


def _check_descriptors(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty float32 (N, D) array, got shape {x.shape}")
    return x


def _check_xy(xy: np.ndarray, n: int, name: str) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.shape != (n, 2):
        raise ValueError(f"{name} must have shape ({n}, 2), got {xy.shape}")
    return xy


# ------------------------------------------------------------------------------------------ encoding


def model_image_size(model: Any) -> tuple[int, int]:
    """Input (H, W) of a RuntimeEncoder or a torch GatedEncoder."""
    owners = (model, getattr(model, "config", None), getattr(model, "metadata", None))
    for owner, attr in ((o, a) for o in owners if o is not None for a in ("image_size", "input_size")):
        size = getattr(owner, attr, None)
        if size is not None:
            return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    raise ValueError(f"cannot tell the input size of {type(model).__name__}: pass image_size explicitly")


def model_resize_policy(model: Any) -> str:
    """The resize policy a RuntimeEncoder (metadata) or a torch GatedEncoder (config) expects."""
    owner = getattr(model, "metadata", None) or getattr(model, "config", None)
    if owner is None:
        raise ValueError(f"cannot tell the resize policy of {type(model).__name__}")
    return owner.resize


def encode_images(model: Any, images: np.ndarray) -> np.ndarray:
    """Descriptors float32 (B, D) of uint8 (B, H, W, 3) RGB images, from a RuntimeEncoder or a torch GatedEncoder."""
    if hasattr(model, "encode"):  # torch-free RuntimeEncoder
        return np.ascontiguousarray(model.encode(images, "rgb8").descriptors, dtype=np.float32)
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            desc, _ = model(torch.from_numpy(np.ascontiguousarray(images)).to(device))
    finally:
        model.train(was_training)
    return np.ascontiguousarray(desc.float().cpu().numpy())


def encode_paths(
    model: Any, paths: Sequence[Path], batch_size: int = 32, image_size: tuple[int, int] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Encode image files with the shared preprocessing. Returns float32 (len(paths), D)."""
    from tqdm import tqdm

    size = image_size or model_image_size(model)
    resize = model_resize_policy(model)
    chunks = []
    starts = range(0, len(paths), batch_size)
    for start in tqdm(starts, desc="encode", unit="batch", disable=not progress, leave=False):
        chunks.append(encode_images(model, load_model_inputs(list(paths[start : start + batch_size]), size, resize)))
    return np.concatenate(chunks, axis=0)


def evaluate_folder(
    model: Any,
    root: Path | str | DownloaderSet,
    radius_m: float = 25.0,
    batch_size: int = 32,
    ks: Sequence[int] = DEFAULT_KS,
    image_size: tuple[int, int] | None = None,
    progress: bool = True,
    rerank: int = 0,
    verify: VerifyConfig | None = None,
) -> dict[str, Any]:
    """Recall@K of ``model`` on a downloader-format folder.

    ``rerank`` > 0 also reports the two-stage recall: the top ``rerank`` descriptor matches reordered
    by geometric verification (:func:`rerank_by_verification`, settings ``verify``).
    Returns {"recall": {k: float}, "n_database": int, "n_queries": int, "radius_m": float} and, with
    ``rerank``, "recall_reranked": {k: float} and "rerank": int.
    """
    data = root if isinstance(root, DownloaderSet) else read_downloader_set(root)
    db = encode_paths(model, data.database_paths, batch_size, image_size, progress)
    q = encode_paths(model, data.query_paths, batch_size, image_size, progress)
    ks = _check_ks(ks)
    _check_xy(data.database_xy, len(db), "database_xy")
    ranking = retrieve(db, q, max(ks[-1], rerank))
    res = {"recall": recall_of_ranking(ranking, data.database_xy, data.query_xy, ks, radius_m),
           "n_database": len(db), "n_queries": len(q), "radius_m": float(radius_m)}
    if rerank > 0:
        ranking = rerank_by_verification(ranking, data.database_paths, data.query_paths, rerank, verify, progress)
        res["recall_reranked"] = recall_of_ranking(ranking, data.database_xy, data.query_xy, ks, radius_m)
        res["rerank"] = int(rerank)
    return res


# ---------------------------------------------------------------------------------- loop closures


@dataclass(frozen=True)
class PRResult:
    """Loop-closure precision/recall.

    precision, recall: at the lowest score (every reported closure accepted). thresholds: float64 (T,)
    descending; curve: float64 (T, 2) columns (precision, recall) when accepting scores >= threshold.
    """

    precision: float
    recall: float
    max_recall_at_100_precision: float
    auc: float
    thresholds: np.ndarray
    curve: np.ndarray
    n_closures: int
    n_correct: int
    n_gt_queries: int
    radius_m: float
    min_time_gap_s: float
    max_yaw_deg: float


def loop_closure_pr(
    scores: np.ndarray,
    query_xy: np.ndarray,
    match_xy: np.ndarray,
    query_ids: np.ndarray,
    n_gt_queries: int,
    time_gaps_s: np.ndarray | None = None,
    radius_m: float = 10.0,
    min_time_gap_s: float = 30.0,
    yaw_diffs_deg: np.ndarray | None = None,
    max_yaw_deg: float = 180.0,
) -> PRResult:
    """Precision/recall of reported loop closures against ground-truth positions.

    scores (P,): confidence of each closure (higher = surer). query_xy/match_xy (P, 2) or (P, 3):
    ground-truth positions of the two frames. query_ids (P,): an id per query frame (several closures
    of one query count once for recall). n_gt_queries: number of ground-truth loop queries (query
    frames that have a true revisit) = the recall denominator. time_gaps_s (P,): |t_q - t_m| for
    same-session pairs, inf across sessions; a pair closer than ``min_time_gap_s`` is temporally
    adjacent, not a loop, and counts as a false positive. yaw_diffs_deg (P,): heading difference of
    the two frames; above ``max_yaw_deg`` the cameras see different things and the closure is wrong.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    p = len(scores)
    qxy, mxy = np.asarray(query_xy, np.float64), np.asarray(match_xy, np.float64)
    if qxy.shape[0] != p or mxy.shape != qxy.shape or len(query_ids) != p:
        raise ValueError(f"scores {p}, query_xy {qxy.shape}, match_xy {mxy.shape}, query_ids {len(query_ids)} must agree")
    if n_gt_queries < 1:
        raise ValueError("n_gt_queries must be >= 1: the ground truth has no loop query to recall")
    correct = np.linalg.norm(qxy - mxy, axis=1) <= radius_m
    if time_gaps_s is not None:
        correct &= np.asarray(time_gaps_s, np.float64) >= min_time_gap_s
    if yaw_diffs_deg is not None:
        correct &= np.abs(np.asarray(yaw_diffs_deg, np.float64)) <= max_yaw_deg
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order]
    ids = np.asarray(query_ids)[order]
    tp = np.cumsum(c)
    precision_all = tp / np.arange(1, p + 1)
    seen: set = set()
    recalled = np.zeros(p, dtype=np.int64)
    for i in range(p):
        if c[i]:
            seen.add(ids[i])
        recalled[i] = len(seen)
    if p and recalled[-1] > n_gt_queries:
        logger.warning("%d queries recalled but only %d ground-truth loop queries", recalled[-1], n_gt_queries)
    recall_all = np.minimum(recalled / n_gt_queries, 1.0)
    # one operating point per distinct score: the last index holding that score
    last = np.r_[np.nonzero(np.diff(s))[0], p - 1] if p else np.zeros(0, dtype=np.int64)
    thresholds, prec, rec = s[last], precision_all[last], recall_all[last]
    at_100 = rec[prec >= 1.0 - 1e-12]
    auc = _pr_auc(prec, rec)
    return PRResult(
        precision=float(prec[-1]) if p else 0.0,
        recall=float(rec[-1]) if p else 0.0,
        max_recall_at_100_precision=float(at_100.max()) if at_100.size else 0.0,
        auc=auc,
        thresholds=thresholds,
        curve=np.stack([prec, rec], axis=1) if p else np.zeros((0, 2)),
        n_closures=p,
        n_correct=int(correct.sum()),
        n_gt_queries=int(n_gt_queries),
        radius_m=float(radius_m),
        min_time_gap_s=float(min_time_gap_s),
        max_yaw_deg=float(max_yaw_deg),
    )


def _pr_auc(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the step PR curve (average precision: sum of precision x recall increments)."""
    if precision.size == 0:
        return 0.0
    d_recall = np.diff(np.r_[0.0, recall])
    return float((precision * d_recall).sum())


# --------------------------------------------------------------------------------------- plotting


def plot_pr_curve(results: dict[str, PRResult], out_png: Path | str) -> Path:
    """PR curves of one or more systems to a PNG; returns its path."""
    plt = pyplot_agg()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    for name, r in results.items():
        if r.curve.size:
            ax.step(r.curve[:, 1], r.curve[:, 0], where="post",
                    label=f"{name} (AUC {r.auc:.2f}, R@100%P {r.max_recall_at_100_precision:.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="Loop closure precision/recall")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, out_png)


def plot_trajectories_with_closures(
    trajectories: dict[str, np.ndarray],
    closures: Sequence[tuple[tuple[float, float], tuple[float, float], bool]],
    out_png: Path | str = "trajectories.png",
    title: str = "Trajectories and loop closures",
) -> Path:
    """Top view of trajectories (name -> (N, 2) x, y in metres) with closures drawn as segments
    (green when ``ok``, red otherwise). Returns the PNG path."""
    plt = pyplot_agg()
    fig, ax = plt.subplots(figsize=(7, 7), dpi=120)
    for name, xy in trajectories.items():
        xy = np.asarray(xy, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] < 2:
            raise ValueError(f"trajectory {name!r} must be (N, 2), got {xy.shape}")
        ax.plot(xy[:, 0], xy[:, 1], lw=1.2, label=name)
    n_ok = sum(1 for *_, ok in closures if ok)
    for (a, b, ok) in closures:
        ax.plot([a[0], b[0]], [a[1], b[1]], color="tab:green" if ok else "tab:red", lw=0.8, alpha=0.8)
    ax.plot([], [], color="tab:green", label=f"correct closures ({n_ok})")
    ax.plot([], [], color="tab:red", label=f"wrong closures ({len(closures) - n_ok})")
    ax.set(xlabel="x [m]", ylabel="y [m]", title=title)
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, out_png)


def pyplot_agg():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_png: Path | str) -> Path:
    """Write ``fig`` as PNG atomically, close it, return the path."""
    try:
        fig.tight_layout()
        return atomic_write(out_png, lambda f: fig.savefig(f, format="png"))
    finally:
        pyplot_agg().close(fig)


def write_json_atomic(obj: Any, path: Path | str) -> Path:
    """Write JSON atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# ----------------------------------------------------------------------------- loops from files


def read_closures_csv(path: Path | str) -> dict[str, np.ndarray]:
    """Closures CSV (query_stamp,match_stamp,query_session,match_session,score,verified,inliers) as arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"closures file not found: {path}")
    cols = ("query_stamp", "match_stamp", "query_session", "match_session", "score", "verified", "inliers")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in cols if c not in (reader.fieldnames or [])]
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path} is not a closures CSV (a text table written by `clino-vpr bag`): {exc}") from exc
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; expected {list(cols)}")
    return {
        "query_stamp": np.array([float(r["query_stamp"]) for r in rows], np.float64),
        "match_stamp": np.array([float(r["match_stamp"]) for r in rows], np.float64),
        "query_session": np.array([r["query_session"] for r in rows], dtype=object),
        "match_session": np.array([r["match_session"] for r in rows], dtype=object),
        "score": np.array([float(r["score"]) for r in rows], np.float64),
        "verified": np.array([str(r["verified"]).strip().lower() in ("1", "true", "yes") for r in rows], bool),
        "inliers": np.array([int(float(r["inliers"] or 0)) for r in rows], np.int64),
    }


#: used when a ground-truth folder does not say how its loop pairs were defined
DEFAULT_LOOP_GT = {"radius_m": 10.0, "max_yaw_deg": 30.0, "min_gap_s": 30.0}


@dataclass(frozen=True)
class _GroundTruth:
    name: str
    stamps: np.ndarray  # (N,) float64, sorted
    xy: np.ndarray  # (N, 2) float64
    yaw: np.ndarray  # (N,) float64 radians, heading of base_link in the world
    loop_query: np.ndarray  # (N,) bool: the frame has a true earlier visit in its own session
    params: dict[str, float]


def _load_groundtruth(session_dir: Path) -> _GroundTruth:
    from clino_vpr_ros.synth import read_session_groundtruth

    stamps, world_T_base, loop_pairs, meta = read_session_groundtruth(Path(session_dir))
    stamps = np.asarray(stamps, np.float64)
    order = np.argsort(stamps)
    stamps, poses = stamps[order], np.asarray(world_T_base, np.float64)[order]
    meta = meta or {}
    name = str(meta.get("session_id", Path(session_dir).name))
    loop_stamps = np.asarray(loop_pairs, np.float64).reshape(-1, 2)[:, 0]
    loop_query = np.zeros(len(stamps), bool)
    if len(loop_stamps):
        loop_query[_frame_at(stamps, loop_stamps, 1e-3, name)] = True
    params = {**DEFAULT_LOOP_GT, **meta.get("gt_loop_params", {})}
    yaw = np.arctan2(poses[:, 1, 0], poses[:, 0, 0])
    return _GroundTruth(name, stamps, poses[:, :2, 3].copy(), yaw, loop_query, params)


def _frame_at(gt_stamps: np.ndarray, stamps: np.ndarray, tol_s: float, session: str) -> np.ndarray:
    """Index of the nearest ground-truth frame of each stamp; ValueError if farther than ``tol_s``."""
    idx = np.clip(np.searchsorted(gt_stamps, stamps), 1, len(gt_stamps) - 1)
    left_closer = np.abs(stamps - gt_stamps[idx - 1]) <= np.abs(stamps - gt_stamps[idx])
    idx = np.where(left_closer, idx - 1, idx)
    worst = np.abs(gt_stamps[idx] - stamps).max(initial=0.0)
    if worst > tol_s:
        raise ValueError(f"a closure stamp is {worst:.3f} s from any ground-truth stamp of session {session!r}")
    return idx


def _yaw_diff_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.abs((a - b + np.pi) % (2 * np.pi) - np.pi))


def _cross_session_queries(gts: Sequence[_GroundTruth], radius_m: float, max_yaw_deg: float) -> list[np.ndarray]:
    """Per session, bool (N,): the frame revisits a place of an earlier session (earlier in ``gts``)."""
    out = [np.zeros(len(gts[0].stamps), bool)]
    for i in range(1, len(gts)):
        q = gts[i]
        hit = np.zeros(len(q.stamps), bool)
        for d in gts[:i]:
            close = np.linalg.norm(q.xy[:, None] - d.xy[None], axis=2) <= radius_m
            close &= _yaw_diff_deg(q.yaw[:, None], d.yaw[None]) <= max_yaw_deg
            hit |= close.any(1)
        out.append(hit)
    return out


def evaluate_closures(
    closures: dict[str, np.ndarray],
    groundtruth: Sequence[Path],
    radius_m: float | None = None,
    min_time_gap_s: float | None = None,
    max_yaw_deg: float | None = None,
    stamp_tol_s: float = 0.1,
    verified_only: bool = False,
    queried: dict[str, np.ndarray] | None = None,
) -> PRResult:
    """PR of a closures table (see :func:`read_closures_csv`) against session ground-truth folders.

    A closure is correct when its two frames lie within ``radius_m`` with headings within
    ``max_yaw_deg`` and, in one session, at least ``min_time_gap_s`` apart. Defaults (None) are the
    ground truth's own loop definition (``session.json`` ``gt_loop_params``). The recall denominator is
    the number of ground-truth loop queries: frames with a true earlier visit in their own session
    (``loops.csv``) or, given several folders in mapping order, in an earlier session. A single
    folder serves any session name. ``queried`` (session name -> stamps of the frames the pipeline
    actually queried, e.g. its keyframes) restricts that denominator to those frames: a pipeline that
    queries one frame in three can only recall those.
    """
    if not groundtruth:
        raise ValueError("at least one ground-truth session folder is needed")
    gts = [_load_groundtruth(Path(d)) for d in groundtruth]
    params = gts[0].params
    radius_m = params["radius_m"] if radius_m is None else radius_m
    min_time_gap_s = params["min_gap_s"] if min_time_gap_s is None else min_time_gap_s
    max_yaw_deg = params["max_yaw_deg"] if max_yaw_deg is None else max_yaw_deg
    by_name = {g.name: g for g in gts}
    only = gts[0] if len(gts) == 1 else None
    keep = np.nonzero(closures["verified"] if verified_only else np.ones(len(closures["score"]), bool))[0]
    q_xy, m_xy, gaps, dyaw, ids = [], [], [], [], []
    for i in keep:
        qs, ms = closures["query_session"][i], closures["match_session"][i]
        gq, gm = by_name.get(qs, only), by_name.get(ms, only)
        if gq is None or gm is None:
            raise ValueError(f"closure sessions {qs!r}/{ms!r} not among the ground-truth sessions {sorted(by_name)}")
        iq = _frame_at(gq.stamps, closures["query_stamp"][i : i + 1], stamp_tol_s, gq.name)[0]
        im = _frame_at(gm.stamps, closures["match_stamp"][i : i + 1], stamp_tol_s, gm.name)[0]
        q_xy.append(gq.xy[iq])
        m_xy.append(gm.xy[im])
        dyaw.append(_yaw_diff_deg(gq.yaw[iq], gm.yaw[im]))
        gaps.append(abs(gq.stamps[iq] - gm.stamps[im]) if gq is gm else np.inf)
        ids.append(f"{gq.name}#{iq}")
    cross = _cross_session_queries(gts, radius_m, max_yaw_deg)
    loop_queries = [g.loop_query | c for g, c in zip(gts, cross)]
    if queried is not None:
        for g, mask in zip(gts, loop_queries):
            was_queried = np.zeros(len(g.stamps), bool)
            stamps = np.asarray(queried.get(g.name, []), np.float64)
            if len(stamps):
                was_queried[_frame_at(g.stamps, stamps, stamp_tol_s, g.name)] = True
            mask &= was_queried
    n_gt = int(sum(m.sum() for m in loop_queries))
    return loop_closure_pr(
        closures["score"][keep], np.reshape(q_xy, (-1, 2)), np.reshape(m_xy, (-1, 2)), np.array(ids, dtype=object),
        n_gt, np.array(gaps, np.float64), radius_m=radius_m, min_time_gap_s=min_time_gap_s,
        yaw_diffs_deg=np.array(dyaw, np.float64), max_yaw_deg=max_yaw_deg,
    )


# --------------------------------------------------------------------------------------------- CLI


def _load_model(path: Path, device: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path}")
    if path.suffix == ".onnx":
        from clino_vpr_ros.runtime import RuntimeEncoder

        return RuntimeEncoder(path)
    if path.suffix == ".safetensors":
        import torch

        from clino_vpr_ros.checkpoint import load_encoder

        dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        return load_encoder(path).to(dev).eval()
    raise ValueError(f"{path}: expected a .onnx or .safetensors model")


def _cmd_recall(args: argparse.Namespace) -> int:
    model = _load_model(Path(args.model), args.device)
    if args.rerank < 0:
        raise ValueError(f"--rerank must be >= 0, got {args.rerank}")
    res = evaluate_folder(model, args.data, radius_m=args.radius, batch_size=args.batch_size, rerank=args.rerank)
    line = "  ".join(f"R@{k} {100 * v:.2f}" for k, v in res["recall"].items())
    print(f"{args.data}: {line}  ({res['n_queries']} queries, {res['n_database']} database, {args.radius:g} m)")
    if args.rerank:
        line = "  ".join(f"R@{k} {100 * v:.2f}" for k, v in res["recall_reranked"].items())
        print(f"{args.data}: re-ranked top {args.rerank} by geometric verification: {line}")
    out = Path(args.out) if args.out else Path(args.model).with_suffix(".recall.json")
    payload = {"schema_version": SCHEMA_VERSION, "model": str(args.model), "data": str(args.data), **res}
    for key in ("recall", "recall_reranked"):
        if key in payload:
            payload[key] = {str(k): v for k, v in payload[key].items()}
    print(f"wrote {write_json_atomic(payload, out)}")
    return 0


def _cmd_loops(args: argparse.Namespace) -> int:
    closures = read_closures_csv(args.closures)
    res = evaluate_closures(closures, [Path(d) for d in args.groundtruth], radius_m=args.radius,
                            min_time_gap_s=args.min_time_gap, verified_only=args.verified_only,
                            max_yaw_deg=args.max_yaw)
    print(f"closures {res.n_closures} (correct {res.n_correct}), ground-truth loop queries {res.n_gt_queries} "
          f"(within {res.radius_m:g} m and {res.max_yaw_deg:g} deg, >= {res.min_time_gap_s:g} s apart)")
    print(f"precision {res.precision:.3f}  recall {res.recall:.3f}  "
          f"max recall@100%P {res.max_recall_at_100_precision:.3f}  AUC {res.auc:.3f}")
    out = Path(args.out)
    png = plot_pr_curve({Path(args.closures).stem: res}, out / "pr_curve.png")
    payload = {"schema_version": SCHEMA_VERSION, "closures": str(args.closures),
               "groundtruth": [str(d) for d in args.groundtruth], **asdict(res)}
    js = write_json_atomic(payload, out / "loop_closure_pr.json")
    print(f"wrote {png} and {js}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clino-vpr eval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recall", help="Recall@1/5/10 on a downloader-format folder")
    r.add_argument("--model", required=True, help="model .onnx (onnxruntime) or .safetensors (torch)")
    r.add_argument("--data", required=True, help="folder with images/test/{database,queries}/")
    r.add_argument("--radius", type=float, default=25.0, help="positive radius in metres (default 25)")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--rerank", type=int, default=0, metavar="K",
                   help="also report two-stage recall: top K re-ranked by geometric verification (default 0 = off)")
    r.add_argument("--device", default="auto", help="torch device for .safetensors: auto, cpu, cuda")
    r.add_argument("--out", default=None, help="JSON output (default: <model>.recall.json)")
    r.set_defaults(func=_cmd_recall)
    lp = sub.add_parser("loops", help="loop-closure precision/recall against session ground truth")
    lp.add_argument("--closures", required=True, help="CSV: query_stamp,match_stamp,query_session,match_session,score,verified,inliers")
    lp.add_argument("--groundtruth", required=True, nargs="+", help="session folder(s) with ground truth")
    lp.add_argument("--out", required=True, help="output folder for pr_curve.png and loop_closure_pr.json")
    lp.add_argument("--radius", type=float, default=None,
                    help="a closure is correct within this distance (m); default: the ground truth's own")
    lp.add_argument("--min-time-gap", type=float, default=None,
                    help="same-session pairs closer in time are not loops (s); default: the ground truth's own")
    lp.add_argument("--max-yaw", type=float, default=None,
                    help="a closure is wrong above this heading difference (deg); default: the ground truth's own")
    lp.add_argument("--verified-only", action="store_true", help="score only geometrically verified closures")
    lp.set_defaults(func=_cmd_loops)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"clino-vpr eval: error: {err}\n")
