"""``clino-vpr bench index``: keyframe-index latency, large-map index recall and map I/O at 10k-1M keyframes.

Data: descriptors with the structure of the shipped model's (:mod:`clino_vpr_ros.bench.descriptors`:
~90 % of the variance in ~160 of 512 dimensions, consecutive keyframes cos ~0.75, revisits
~0.5-0.7, unrelated ~0.07), generated as sessions of 2000 keyframes driving stretches of a town
(each place is mapped about five times, under three lighting conditions); queries are keyframes
of new sessions revisiting random places. Random unit vectors, which earlier versions used, are a
different and harder problem for a graph index. Per size and index kind it measures, through
:class:`~clino_vpr_ros.index.KeyframeIndex` as the engine uses it: the latency of one-at-a-time
inserts at that size (median), the latency of one query on one thread (top-5, same-session exclusion window
active) as wall-clock time and as the thread's CPU time (what it costs one core whatever else the
machine runs), recall@1 against exact search on the same queries (``--shortlist`` adds rows at other
shortlist sizes of the ``pq`` index), resident memory per keyframe, the build time (all inserts,
the ``pq`` index's trainings at 20k and each doubling included) and, for ``pq``, the time one
retraining takes at that size (the pause of the insert that doubles the map). Then it saves and loads a session map of
``--map-size`` keyframes (descriptors + poses; local features add ~44 bytes per ORB keypoint).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clino_vpr_ros.bench.descriptors import Town, describe, session
from clino_vpr_ros.index import IndexConfig, KeyframeIndex
from clino_vpr_ros.session_map import SessionMapBuilder

log = logging.getLogger(__name__)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


@dataclass
class Row:
    kind: str
    size: int
    insert_ms: float
    query_ms_p50: float
    query_ms_p99: float
    recall_at_1: float | None
    bytes_per_kf: float
    build_s: float
    cpu_ms_p50: float = float("nan")  # thread CPU time of one query
    retrain_s: float | None = None  # pq: one retraining (PCA + codebooks + re-encoding) at this size


def _build(kind: str, data: np.ndarray, cfg: IndexConfig, n_single: int) -> tuple[KeyframeIndex, float, float, float]:
    """Bulk-add all but the last n_single rows, then add those one at a time (timed)."""
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    index = KeyframeIndex(data.shape[1], cfg)
    n = len(data)
    bulk = n - n_single
    chunk = 50_000
    for a in tqdm(range(0, bulk, chunk), desc=f"{kind} {n:>9,d} build", unit="chunk", leave=False):
        b = min(a + chunk, bulk)
        index.add(np.arange(a, b), data[a:b], np.arange(a, b, dtype=np.float64))
    times = []
    for i in range(bulk, n):
        t = time.perf_counter()
        index.add(i, data[i], float(i))
        times.append(time.perf_counter() - t)
    build_s = time.perf_counter() - t0
    # median: the insert that doubles a pq map retrains it (its pause is the table's "retrain s" column)
    return index, 1e3 * float(np.median(times)), build_s, (_rss_bytes() - rss0) / n


def _query(index: KeyframeIndex, queries: np.ndarray, stamp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per-query wall ms, per-query thread CPU ms, top-1 ids), one query at a time on one thread (as the node queries)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times, cpu, ids = [], [], []
    try:
        for q in queries:
            t, c = time.perf_counter(), time.thread_time()
            _, i, _ = index.search(q, 5, query_stamp=stamp, exclude_recent=True)
            times.append(time.perf_counter() - t)
            cpu.append(time.thread_time() - c)
            ids.append(i[0, 0])
    finally:
        faiss.omp_set_num_threads(threads)
    return 1e3 * np.array(times), 1e3 * np.array(cpu), np.array(ids)


SESSION_KEYFRAMES = 2000


def model_like_map(size: int, dim: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(map descriptors float32 (size,dim), queries float32 (n_queries,dim), statistics dict) shaped like
    the model's: sessions of 2000 keyframes over a town of size/5 places, three lighting conditions."""
    rng = np.random.default_rng(seed)
    town = Town(max(SESSION_KEYFRAMES + 1, size // 5), dim, seed)
    data = np.empty((size, dim), np.float32)  # filled in place: one copy of the map only
    starts = []
    for s_i, a in enumerate(tqdm(range(0, size, SESSION_KEYFRAMES), desc=f"descriptors {size:,d}", unit="session", leave=False)):
        n = min(SESSION_KEYFRAMES, size - a)
        start = int(rng.integers(0, town.n_places - n + 1))
        data[a : a + n] = session(town, start, n, condition=int(rng.integers(0, 3)), seed=seed * 100_003 + s_i)
        starts.append((a, start, n))
    places = rng.integers(0, town.n_places, n_queries)
    queries = np.concatenate([session(town, int(p), 1, int(rng.integers(0, 3)), seed=-(j + 1) % 2**31)
                              for j, p in enumerate(places)]) if n_queries else np.zeros((0, dim), np.float32)
    consecutive = np.array([[a + i, a + i + 1] for a, _, n in starts[:20] for i in range(0, n - 1, 50)])
    revisit = _revisit_pairs(starts[:200])
    return data, queries, describe(data, consecutive, revisit, seed)


def _revisit_pairs(starts: list[tuple[int, int, int]]) -> np.ndarray:
    """Row pairs of two sessions at the same place (for the statistics)."""
    pairs = []
    for i, (a1, s1, n1) in enumerate(starts):
        for a2, s2, n2 in starts[i + 1 :]:
            lo, hi = max(s1, s2), min(s1 + n1, s2 + n2)
            pairs += [[a1 + p - s1, a2 + p - s2] for p in range(lo, hi, 97)]
    return np.array(pairs[:2000], dtype=np.int64).reshape(-1, 2)


def _exact_top1(data: np.ndarray, queries: np.ndarray, cfg: IndexConfig) -> np.ndarray:
    """Brute-force top-1 row of each query over the rows a query at the end of the map may see."""
    n = len(data)
    by_time = int(np.searchsorted(np.arange(n, dtype=np.float64), float(n) - cfg.exclude_recent_s, side="right"))
    n_rows = max(0, min(n - cfg.exclude_recent_keyframes, by_time))  # as KeyframeIndex.searchable_rows (stamps = rows)
    best = np.full(len(queries), -np.inf, np.float32)
    arg = np.full(len(queries), -1, np.int64)
    for a in range(0, n_rows, 100_000):
        sims = data[a : min(a + 100_000, n_rows)] @ queries.T
        i = np.argmax(sims, axis=0)
        s = sims[i, np.arange(len(queries))]
        better = s > best
        best[better], arg[better] = s[better], a + i[better]
    return arg


def bench_size(size: int, dim: int, n_queries: int, kinds: list[str], seed: int, shortlists: list[int]) -> list[Row]:
    data, queries, stats = model_like_map(size, dim, n_queries, seed)
    print(f"# {size:,d} keyframes: PCA 90 % variance in {stats['pca_dims_90']} dims; cos consecutive "
          f"{stats['cos_consecutive']:.2f}, revisit {stats['cos_revisit']:.2f}, random {stats['cos_random']:.2f}", flush=True)
    exact = _exact_top1(data, queries, IndexConfig())
    rows = []
    for kind in kinds:
        cfg = IndexConfig(kind=kind)
        index, insert_ms, build_s, bpk = _build(kind, data, cfg, n_single=min(1000, size // 10))
        variants = [cfg]
        if index._codes is not None:
            variants += [IndexConfig(kind=kind, pq_shortlist=n) for n in shortlists if n != cfg.pq_shortlist]
        new = []
        for v_cfg in variants:
            index.cfg = v_cfg  # the shortlist size is read per query; the codes are the same
            label = f"{kind} sl{v_cfg.pq_shortlist}" if index._codes is not None else kind
            q_ms, cpu_ms, ids = _query(index, queries, stamp=float(size))
            recall = float(np.mean(ids == exact))  # flat: 1.000 checks the brute-force reference
            new.append(Row(label, size, insert_ms, float(np.percentile(q_ms, 50)), float(np.percentile(q_ms, 99)), recall, bpk,
                           build_s, float(np.percentile(cpu_ms, 50))))
        if index._codes is not None:
            t = time.perf_counter()
            index._train_codes()  # what the insert that doubles a map of this size pauses for
            for r in new:
                r.retrain_s = time.perf_counter() - t
        rows += new
        del index
    return rows


def bench_map_io(n: int, dim: int, seed: int) -> tuple[float, float, int]:
    """(save s, load s, file bytes) for a map of n keyframes with poses and no local features."""
    from clino_vpr_ros.session_map import SessionMap

    rng = np.random.default_rng(seed)
    builder = SessionMapBuilder("bench", "bench-fingerprint", dim)
    data = _unit(rng, n, dim)
    pose = np.eye(4)
    for i in tqdm(range(n), desc=f"map {n:,d} fill", unit="kf", leave=False, mininterval=1.0):
        builder.append(i, float(i), data[i], pose, None, None)
    smap = builder.snapshot()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_map.npz"
        t0 = time.perf_counter()
        smap.save(path)
        t1 = time.perf_counter()
        loaded = SessionMap.load(path, expected_fingerprint="bench-fingerprint", expected_dim=dim)
        t2 = time.perf_counter()
        assert len(loaded) == n
        return t1 - t0, t2 - t1, os.path.getsize(path)


def _rss_bytes() -> int:
    """Resident memory of this process (VmRSS of /proc/self/status), bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def _settle() -> int:
    """Resident bytes after collecting garbage and returning freed heap to the OS (glibc), so
    memory freed by an earlier step is not counted as a later step's saving."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: measure as is
        pass
    return _rss_bytes()


def bench_map_memory(n: int, dim: int, n_features: int, seed: int) -> dict[str, float]:
    """Resident memory per keyframe of session maps with SIFT local features (bytes):

    ``live``: growth while a live session (:class:`SessionMapBuilder`) takes ``n`` keyframes of
    ``n_features`` features each; ``loaded``: growth from loading the saved map, minus its global
    descriptors (those go into the keyframe index; the index is measured by the table above),
    after reading the local features of 100 keyframes as verification does.
    """
    from clino_vpr_ros.session_map import SessionMap
    from clino_vpr_ros.verify import LocalFeatures

    rng = np.random.default_rng(seed)
    pool = LocalFeatures(rng.uniform(0, 640, (n_features, 2)).astype(np.float32),
                         rng.integers(0, 256, (n_features, 128), dtype=np.uint8),
                         rng.uniform(0.5, 9.0, n_features).astype(np.float32), (480, 640))
    desc = _unit(rng, 1, dim)[0]
    pose = np.eye(4)
    out: dict[str, float] = {"feature_bytes": n_features * (8 + 128 + 4)}
    with tempfile.TemporaryDirectory() as tmp:
        before = _settle()
        builder = SessionMapBuilder("bench", "bench-fingerprint", dim, feature="sift")
        for i in tqdm(range(n), desc=f"live session {n:,d} keyframes + features", unit="kf", leave=False, mininterval=1.0):
            feats = LocalFeatures(pool.keypoints.copy(), pool.descriptors.copy(), pool.depths.copy(), pool.image_size)
            builder.append(i, float(i), desc, pose, None, feats)  # new arrays per keyframe, as extraction makes
        out["live"] = (_settle() - before) / n
        path = builder.snapshot().save(Path(tmp) / "bench_features.npz")
        builder.close()
        del builder
        before = _settle()
        smap = SessionMap.load(path, expected_fingerprint="bench-fingerprint", expected_dim=dim)
        for row in rng.choice(n, size=min(100, n), replace=False):
            assert len(smap.features(int(row))) == n_features
        out["loaded"] = (_settle() - before - smap.descriptors.nbytes) / n
        out["file_bytes"] = os.path.getsize(path) / n
        del smap
    return out


def format_table(rows: list[Row]) -> str:
    head = (f"{'index':<11} {'keyframes':>10} {'insert ms':>10} {'query p50 ms':>13} {'query p99 ms':>13} {'recall@1':>9} "
            f"{'B/keyframe':>11} {'build s':>8} {'CPU p50 ms':>11} {'retrain s':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        rec = "exact" if r.recall_at_1 is None else f"{r.recall_at_1:.3f}"
        retrain = "-" if r.retrain_s is None else f"{r.retrain_s:.1f}"
        lines.append(f"{r.kind:<11} {r.size:>10,d} {r.insert_ms:>10.3f} {r.query_ms_p50:>13.3f} {r.query_ms_p99:>13.3f} {rec:>9} "
                     f"{r.bytes_per_kf:>11.0f} {r.build_s:>8.1f} {r.cpu_ms_p50:>11.3f} {retrain:>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clino-vpr bench index", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kinds", nargs="+", default=["flat", "pq"], choices=["flat", "pq"])
    parser.add_argument("--queries", type=int, default=200, help="queries per size")
    parser.add_argument("--map-size", type=int, default=100_000, help="keyframes in the save/load test (0: skip)")
    parser.add_argument("--memory-size", type=int, default=3000,
                        help="keyframes (with SIFT local features) in the resident-memory test (0: skip)")
    parser.add_argument("--memory-features", type=int, default=450, help="SIFT features per keyframe in that test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shortlist", type=int, nargs="*", default=[],
                        help="also query the pq index with these shortlist sizes (rows re-ranked exactly)")
    args = parser.parse_args(argv)
    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, dim {args.dim}, kinds {args.kinds}")
    t0 = time.perf_counter()
    rows: list[Row] = []
    print(format_table([]), flush=True)
    for size in args.sizes:
        new = bench_size(size, args.dim, args.queries, args.kinds, args.seed, args.shortlist)
        rows += new
        print(format_table(new).split("\n", 2)[-1], flush=True)
    print()
    print(format_table(rows))
    c = IndexConfig(kind="pq")
    print(f"pq: exact below {c.pq_min_size:,d} keyframes; above, PQ{c.pq_m}x4 fast-scan codes of a {c.pq_pca_dim}-d PCA "
          f"(trained at {c.pq_min_size:,d} and each doubling) give a shortlist of N rows ('pq slN', default {c.pq_shortlist}), "
          "re-ranked exactly. Query times: one thread; CPU p50: the thread's CPU time. "
          "B/keyframe: resident memory growth while building, per keyframe. "
          f"Load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.")
    if args.map_size > 0:
        save_s, load_s, nbytes = bench_map_io(args.map_size, args.dim, args.seed)
        print(f"\nsession map, {args.map_size:,d} keyframes (descriptors + poses): save {save_s:.2f} s, "
              f"load {load_s:.2f} s, {nbytes / 1e6:.1f} MB ({nbytes / args.map_size:.0f} B/keyframe)")
    if args.memory_size > 0:
        m = bench_map_memory(args.memory_size, args.dim, args.memory_features, args.seed)
        print(f"\nsession map memory, {args.memory_size:,d} keyframes x {args.memory_features} SIFT features "
              f"({m['feature_bytes'] / 1e3:.0f} kB/keyframe, file {m['file_bytes'] / 1e3:.0f} kB/keyframe): resident "
              f"memory beyond the index per 1000 keyframes: live session {m['live'] * 1000 / 2**20:.2f} MiB "
              f"({m['live'] / 1e3:.2f} kB/keyframe), loaded prior map {m['loaded'] * 1000 / 2**20:.2f} MiB "
              f"({m['loaded'] / 1e3:.2f} kB/keyframe, features of 100 keyframes read)")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0
