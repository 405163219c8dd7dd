"""``clino-vpr bench index``: keyframe-index latency, HNSW recall and map I/O at 10k-1M keyframes.

Data: random unit vectors (default 512-d) as keyframe descriptors; queries are noisy copies of
stored keyframes (cosine ~0.8 to their source, a revisit) so recall@1 is meaningful. Per size
and index kind it measures, through :class:`~clino_vpr_ros.index.KeyframeIndex` as the engine
uses it: the latency of one-at-a-time inserts at that size, the latency of one query (top-5,
same-session exclusion window active), HNSW recall@1 against the exact flat index on the same
queries, and resident memory per keyframe. Then it saves and loads a session map of
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
    return index, 1e3 * float(np.mean(times)), build_s, (_rss_bytes() - rss0) / n


def _query(index: KeyframeIndex, queries: np.ndarray, stamp: float) -> tuple[np.ndarray, np.ndarray]:
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        _, i, _ = index.search(q, 5, query_stamp=stamp, exclude_recent=True)
        times.append(time.perf_counter() - t)
        ids.append(i[0, 0])
    return 1e3 * np.array(times), np.array(ids)


def _config(kind: str, size: int, big: int, big_m: int, big_efc: int) -> tuple[str, IndexConfig]:
    """(table label, config): HNSW at >= ``big`` keyframes uses a cheaper build so the bench fits 10 min on 2 cores."""
    if kind == "hnsw" and size >= big:
        return f"hnsw{big_m}", IndexConfig(kind="hnsw", hnsw_m=big_m, hnsw_ef_construction=big_efc)
    return kind, IndexConfig(kind=kind)


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


def bench_size(size: int, dim: int, n_queries: int, n_queries_1m: int, kinds: list[str], seed: int,
               big: int = 1_000_000, big_m: int = 16, big_efc: int = 20) -> list[Row]:
    rng = np.random.default_rng(seed)
    data = _unit(rng, size, dim)
    nq = n_queries if size < 1_000_000 else n_queries_1m
    src = rng.integers(0, max(1, size - 1000), nq)
    queries = data[src] + 0.75 * _unit(rng, nq, dim)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = _exact_top1(data, queries, IndexConfig())
    rows = []
    for kind in kinds:
        label, cfg = _config(kind, size, big, big_m, big_efc)
        index, insert_ms, build_s, bpk = _build(label, data, cfg, n_single=min(1000, size // 10))
        q_ms, ids = _query(index, queries, stamp=float(size))
        recall = float(np.mean(ids == exact))  # flat: 1.000 checks the brute-force reference
        rows.append(Row(label, size, insert_ms, float(np.percentile(q_ms, 50)), float(np.percentile(q_ms, 99)), recall, bpk, build_s))
        log.debug("%s %d: insert %.3f ms, query p50 %.3f ms", label, size, insert_ms, rows[-1].query_ms_p50)
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


def format_table(rows: list[Row]) -> str:
    head = f"{'index':<7} {'keyframes':>10} {'insert ms':>10} {'query p50 ms':>13} {'query p99 ms':>13} {'recall@1':>9} {'B/keyframe':>11} {'build s':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        rec = "exact" if r.recall_at_1 is None else f"{r.recall_at_1:.3f}"
        lines.append(f"{r.kind:<7} {r.size:>10,d} {r.insert_ms:>10.3f} {r.query_ms_p50:>13.3f} {r.query_ms_p99:>13.3f} {rec:>9} {r.bytes_per_kf:>11.0f} {r.build_s:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clino-vpr bench index", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw"], choices=["flat", "hnsw"])
    parser.add_argument("--queries", type=int, default=200, help="queries per size below 1M")
    parser.add_argument("--queries-1m", type=int, default=20, help="queries at 1M keyframes and above")
    parser.add_argument("--map-size", type=int, default=100_000, help="keyframes in the save/load test (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--big", type=int, default=1_000_000, help="from this size on, HNSW uses --big-m/--big-efc")
    parser.add_argument("--big-m", type=int, default=16)
    parser.add_argument("--big-efc", type=int, default=20)
    args = parser.parse_args(argv)
    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, dim {args.dim}, kinds {args.kinds}")
    t0 = time.perf_counter()
    rows: list[Row] = []
    print(format_table([]), flush=True)
    for size in args.sizes:
        new = bench_size(size, args.dim, args.queries, args.queries_1m, args.kinds, args.seed, args.big, args.big_m, args.big_efc)
        rows += new
        print(format_table(new).split("\n", 2)[-1], flush=True)
    print()
    print(format_table(rows))
    if any(r.size >= args.big and r.kind.startswith("hnsw") for r in rows):
        print(f"hnsw{args.big_m}: HNSW built with M={args.big_m}, efConstruction={args.big_efc} (efSearch "
              f"{IndexConfig().hnsw_ef_search}) to keep the bench short; other rows use IndexConfig defaults "
              f"(M={IndexConfig().hnsw_m}, efConstruction={IndexConfig().hnsw_ef_construction}).")
    if args.map_size > 0:
        save_s, load_s, nbytes = bench_map_io(args.map_size, args.dim, args.seed)
        print(f"\nsession map, {args.map_size:,d} keyframes (descriptors + poses): save {save_s:.2f} s, "
              f"load {load_s:.2f} s, {nbytes / 1e6:.1f} MB ({nbytes / args.map_size:.0f} B/keyframe)")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0
