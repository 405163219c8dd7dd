"""``clino-vpr bench fleet``: N robots streaming keyframes into one Milvus server while querying it.

Simulated fleet time advances in rounds of one second: in each round every robot adds 1 or 2
keyframes (1-2 Hz) of its session (descriptors shaped like the model's,
:mod:`clino_vpr_ros.bench.descriptors`); the round's keyframes go to the server in one insert, as
fast as it takes them (the insert rate is what the server sustains, to compare with the fleet's
1.5 x robots keyframes per second). Every ``--query-every`` rounds a robot queries with its newest
keyframe, excluding its own last 30 s inside the search (``not (session == s and stamp > t)``),
timed one query at a time. Recall@1 is against exact filtered search (numpy, outside the timing)
over the keyframes the consistency level guarantees visible: under ``Strong`` every keyframe
written before the query, under ``Bounded`` those acknowledged more than the server's graceful
time (5 s) before it; a Milvus answer counts as correct when it passes the filter and is as
similar to the query as that exact top-1 (so an equally good twin, or a newer keyframe that a
Bounded search happens to see already, is not counted as a miss). Read-after-write: after some
inserts, the time until a search for the just-written keyframe returns it. The same stream goes into the in-process faiss backend
(:class:`~clino_vpr_ros.fleet.LocalFleetIndex`, exact) side by side.

Last line: ``backend=milvus keyframes=N insert_per_s=X query_p50_ms=Y recall_at_1=Z``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clino_vpr_ros.bench.descriptors import Town, session
from clino_vpr_ros.fleet import FleetConfig, KeyframeRecord, LocalFleetIndex, MilvusFleetIndex

log = logging.getLogger(__name__)
FINGERPRINT = "bench-fleet"
EXCLUDE_S = 30.0
BOUNDED_GRACE_S = 5.0  # Milvus common.gracefulTime (ms 5000): what a Bounded search may not see yet


@dataclass
class Robot:
    name: str
    session: str
    start: int  # first place of its drive
    condition: int
    seed: int
    made: int = 0  # keyframes so far
    cache: np.ndarray | None = None
    cache_from: int = 0

    def next(self, town: Town, n: int) -> np.ndarray:
        """float32 (n, dim) its next n keyframes (generated 2000 at a time)."""
        out = []
        for _ in range(n):
            if self.cache is None or self.made - self.cache_from >= len(self.cache):
                self.cache_from = self.made
                start = (self.start + self.made) % max(1, town.n_places - 2000)
                self.cache = session(town, start, 2000, self.condition, self.seed * 1000 + self.made // 2000)
            out.append(self.cache[self.made - self.cache_from])
            self.made += 1
        return np.stack(out)


def _exact_filtered_top1(store: np.ndarray, sessions: np.ndarray, stamps: np.ndarray, n: int, q: np.ndarray,
                         s_idx: int, after: float) -> tuple[int, float]:
    """(row, inner product) of the best of the first ``n`` rows that pass the search's filter."""
    allowed = ~((sessions[:n] == s_idx) & (stamps[:n] > after))
    sims = np.where(allowed, store[:n] @ q, -np.inf)
    row = int(np.argmax(sims))
    return row, float(sims[row])


def hit_is_correct(store: np.ndarray, sessions: np.ndarray, stamps: np.ndarray, n_written: int, q: np.ndarray,
                   s_idx: int, after: float, truth_score: float, hit_row: int | None) -> bool:
    """A top-1 answer is right when it exists, was written, passes the filter, and is as similar to
    ``q`` as the exact filtered top-1 (float32 rounding tolerance)."""
    if hit_row is None or not 0 <= hit_row < n_written:
        return False
    if sessions[hit_row] == s_idx and stamps[hit_row] > after:
        return False
    return float(store[hit_row] @ q) >= truth_score - 1e-5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clino-vpr bench fleet", description=__doc__.split("\n")[0])
    parser.add_argument("--keyframes", type=int, default=100_000, help="total keyframes streamed by the fleet")
    parser.add_argument("--robots", type=int, default=0, help="robots (default: keyframes / 10k, at least 10)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200, help="timed queries spread over the stream")
    parser.add_argument("--uri", default="", help="an existing Milvus server (default: start one locally, data in a temp dir)")
    parser.add_argument("--consistency", default="Strong", choices=["Strong", "Bounded"],
                        help="Milvus consistency level of the queries (Strong: every earlier write is visible)")
    parser.add_argument("--no-local", action="store_true", help="skip the in-process faiss side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_total = args.keyframes
    n_robots = args.robots or max(10, n_total // 10_000)
    rng = np.random.default_rng(args.seed)
    town = Town(max(4000, n_total // 4), args.dim, args.seed)
    robots = [Robot(f"robot{r:03d}", f"robot{r:03d}-s1", int(rng.integers(0, town.n_places)), int(rng.integers(0, 3)), r)
              for r in range(n_robots)]
    server = None
    with tempfile.TemporaryDirectory(prefix="clino_bench_fleet_") as tmp:
        uri = args.uri
        if not uri:
            from clino_vpr_ros.fleet_server import EmbeddedMilvus

            server = EmbeddedMilvus(Path(tmp) / "milvus")
            t = time.perf_counter()
            uri = server.start()
            print(f"embedded Milvus started in {time.perf_counter() - t:.1f} s at {uri}", flush=True)
        try:
            return _run(args, uri, town, robots, n_total, rng)
        finally:
            if server is not None:
                server.stop()


def _run(args: argparse.Namespace, uri: str, town: Town, robots: list[Robot], n_total: int, rng: np.random.Generator) -> int:
    cfg = FleetConfig(uri=uri, collection=f"bench{int(time.time())}", timeout_s=30, batch=5000,
                      consistency=args.consistency)
    milvus = MilvusFleetIndex(cfg, FINGERPRINT, args.dim)
    local = None if args.no_local else LocalFleetIndex(FINGERPRINT, args.dim)
    store = np.empty((n_total, args.dim), np.float32)  # for the exact filtered reference
    sess = np.empty(n_total, np.int32)
    stamps = np.empty(n_total, np.float64)
    kfids = np.empty(n_total, np.int64)
    acked = np.empty(n_total, np.float64)  # perf_counter when the insert holding the row returned
    rows_of: list[list[int]] = [[] for _ in robots]  # robot -> its rows by keyframe id
    n, clock = 0, 0.0
    rows_per_round = 1.5 * len(robots)
    query_every = max(1, int(n_total / rows_per_round / max(args.queries, 1)))
    ins_s, loc_ins_s = 0.0, 0.0
    m_lat, l_lat, m_hit, l_hit, raw = [], [], [], [], []
    milvus.connect()
    bar = tqdm(total=n_total, desc="fleet stream", unit="kf", mininterval=2.0)
    rnd = 0
    while n < n_total:
        clock += 1.0
        rnd += 1
        recs = []
        for r_i, robot in enumerate(robots):
            k = min(int(rng.integers(1, 3)), n_total - n - len(recs))  # 1-2 Hz
            if k <= 0:
                break
            for j, d in enumerate(robot.next(town, k)):
                i, kf_id = n + len(recs), robot.made - k + j
                store[i], sess[i], stamps[i], kfids[i] = d, r_i, clock + 0.5 * j, kf_id
                recs.append(KeyframeRecord(robot.name, robot.session, kf_id, float(stamps[i]), d, None, FINGERPRINT,
                                           f"/fleet/maps/{robot.session}.npz", kf_id))
        t = time.perf_counter()
        milvus.insert(recs)
        ins_s += time.perf_counter() - t
        acked[n : n + len(recs)] = time.perf_counter()
        for i in range(n, n + len(recs)):
            rows_of[int(sess[i])].append(i)
        if local is not None:
            t = time.perf_counter()
            local.add(recs)
            loc_ins_s += time.perf_counter() - t
        n += len(recs)
        bar.update(len(recs))
        if rnd % query_every == 0:
            _query_round(milvus, local, robots, store, sess, stamps, acked, rows_of, n, clock, rng, m_lat, l_lat,
                         m_hit, l_hit)
        if rnd % (query_every * 10) == 0 and len(raw) < 20:
            raw.append(_read_after_write(milvus, recs[-1]))
    bar.close()
    ef = cfg.ef_search
    m = _summary("milvus", n, ins_s, m_lat, m_hit)
    print(f"\nfleet: {len(robots)} robots at 1-2 Hz ({rows_per_round:.0f} keyframes per fleet second), {n:,d} keyframes, "
          f"{args.dim}-d; Milvus HNSW M{cfg.hnsw_m} efConstruction {cfg.ef_construction} ef {ef}, consistency {cfg.consistency}")
    print(f"{'backend':<8} {'insert/s':>10} {'query p50 ms':>13} {'query p99 ms':>13} {'recall@1':>9} {'queries':>8}")
    print(m["row"])
    if local is not None:
        print(_summary("faiss", n, loc_ins_s, l_lat, l_hit)["row"])
    if raw:
        print(f"read-after-write ({cfg.consistency}): a keyframe is found by the next search after {np.median(raw):.1f} ms "
              f"(median, max {np.max(raw):.1f} ms, {len(raw)} probes)")
    print(f"server sustains {m['insert_per_s'] / 1.5:,.0f} robots at 1.5 Hz at this size (inserts alone)")
    print(f"backend=milvus keyframes={n} insert_per_s={m['insert_per_s']:.0f} query_p50_ms={m['p50']:.2f} "
          f"recall_at_1={m['recall']:.3f}")
    milvus.close()
    return 0


def _query_round(milvus: MilvusFleetIndex, local: LocalFleetIndex | None, robots: list[Robot], store: np.ndarray,
                 sess: np.ndarray, stamps: np.ndarray, acked: np.ndarray, rows_of: list[list[int]], n: int, clock: float,
                 rng: np.random.Generator, m_lat: list, l_lat: list, m_hit: list, l_hit: list) -> None:
    """One robot queries with its newest keyframe, excluding its own last EXCLUDE_S seconds."""
    r_i = int(rng.integers(0, len(robots)))
    if not rows_of[r_i]:
        return
    row = rows_of[r_i][-1]
    q, after = store[row], clock - EXCLUDE_S
    session_index = {rb.session: i for i, rb in enumerate(robots)}

    def row_of(hits: list) -> int | None:
        if not hits or hits[0].session not in session_index:
            return None
        mine = rows_of[session_index[hits[0].session]]
        return mine[hits[0].kf_id] if 0 <= hits[0].kf_id < len(mine) else None

    t = time.perf_counter()
    hits = milvus.search(q, 1, exclude_session=robots[r_i].session, exclude_after=after)[0]
    m_lat.append(1e3 * (time.perf_counter() - t))
    # the rows this consistency level promises to show (acked is in time order)
    visible = n if milvus.cfg.consistency == "Strong" else int(np.searchsorted(acked[:n], t - BOUNDED_GRACE_S, side="right"))
    if visible == 0:
        m_lat.pop()
        return
    _, truth = _exact_filtered_top1(store, sess, stamps, visible, q, r_i, after)
    m_hit.append(hit_is_correct(store, sess, stamps, n, q, r_i, after, truth, row_of(hits)))
    if local is not None:
        _, truth = _exact_filtered_top1(store, sess, stamps, n, q, r_i, after)  # in-process: every row visible
        t = time.perf_counter()
        hits = local.search(q, 1, exclude_session=robots[r_i].session, exclude_after=after)[0]
        l_lat.append(1e3 * (time.perf_counter() - t))
        l_hit.append(hit_is_correct(store, sess, stamps, n, q, r_i, after, truth, row_of(hits)))


def _read_after_write(milvus: MilvusFleetIndex, rec: KeyframeRecord) -> float:
    """ms from the end of an insert until a search returns the inserted keyframe (Strong: the first search
    does, after waiting for the server's time tick; Bounded: searches until it appears)."""
    t = time.perf_counter()
    while True:
        hits = milvus.search(rec.descriptor, 1, exclude_session=None)[0]
        if hits and hits[0].session == rec.session and hits[0].kf_id == rec.kf_id:
            return 1e3 * (time.perf_counter() - t)
        if time.perf_counter() - t > 60:
            return float("inf")


def _summary(name: str, n: int, ins_s: float, lat: list, hit: list) -> dict:
    ips = n / max(ins_s, 1e-9)
    p50 = float(np.percentile(lat, 50)) if lat else float("nan")
    p99 = float(np.percentile(lat, 99)) if lat else float("nan")
    rec = float(np.mean(hit)) if hit else float("nan")
    return {"insert_per_s": ips, "p50": p50, "recall": rec,
            "row": f"{name:<8} {ips:>10,.0f} {p50:>13.2f} {p99:>13.2f} {rec:>9.3f} {len(lat):>8d}"}
