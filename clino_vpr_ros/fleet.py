"""Fleet index: keyframes of many robots and sessions in one Milvus collection (``fleet_uri``).

The keyframe index has two backends behind one interface (:class:`FleetIndex`): the in-process
faiss index (:class:`LocalFleetIndex`, the embedded default, what a single robot uses through
:class:`~clino_vpr_ros.index.KeyframeIndex`) and a Milvus server or cluster
(:class:`MilvusFleetIndex`, chosen by a ``fleet_uri`` such as ``http://fleet-server:19530``).
:func:`open_fleet_index` picks one from the URI. pymilvus is imported only when a URI is given.

A keyframe record (:class:`KeyframeRecord`) carries the robot id, session id, keyframe id, stamp,
pose, the encoder fingerprint, and where its verification features live: the session map path
(on storage the fleet shares) and its row there. Only the few candidates that reach geometric
verification are read from those maps (:class:`MapFeatureStore`).

Milvus specifics:

- one collection per encoder: the collection description records the fingerprint and dimension;
  a map or robot with another encoder is refused (descriptors of different models are not
  comparable);
- primary key ``"<session>/<keyframe id>"``: pushing the same keyframe twice adds nothing
  (:meth:`MilvusFleetIndex.add` skips keys already present; a live robot writes by upsert);
- searches and reads use consistency level ``Strong`` (configurable): a query sees every write
  acknowledged before it. The cost: the query node waits until it has consumed the write stream up
  to the query's timestamp, which adds up to the time tick (~200 ms by default) under writes and
  nothing when idle. ``Bounded`` skips that wait but may miss the last seconds of writes;
- the asking session's recent keyframes are excluded by a boolean expression evaluated inside
  the search (``not (session == "s" and stamp > t)``), not by over-fetching and dropping;
- vectors are indexed with HNSW (inner product, descriptors are L2-normalised). Sealed segments are
  searched with it; growing (still written) segments must be searched exactly: the server needs
  ``queryNode.segcore.interimIndex.enableIndex: false`` (Milvus 2.3 otherwise searches them with an
  IVF interim index at nprobe 16 of 128, which cut recall@1 to 0.66-0.78 while robots stream;
  :mod:`clino_vpr_ros.fleet_server` sets it, a cluster needs it in its milvus.yaml, docs/fleet.md).

:class:`FleetLink` is the robot side: it queues this session's keyframes, writes them when the
server answers, keeps working (no fleet results) when it does not, reports the state for
/diagnostics, and catches up on reconnection without losing or duplicating a keyframe.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np

from clino_vpr_ros.index import IndexConfig, KeyframeIndex
from clino_vpr_ros.session_map import SessionMap

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_PK_MAX = 300
_PATH_MAX = 1024


@dataclass(frozen=True)
class FleetConfig:
    """Where the fleet index lives and how it is queried.

    uri: "" for no fleet (the embedded default); ``http://host:19530`` for Milvus.
    collection: name prefix; the descriptor dimension is appended (one collection per encoder).
    consistency: Milvus consistency level of searches and reads ("Strong": reads every earlier write).
    ef_search / hnsw_m / ef_construction: the server-side HNSW index.
    exclude_recent_s: a session's own keyframes younger than this before the query are excluded.
    timeout_s: per request; retry_period_s: how often an unreachable server is retried.
    """

    uri: str = ""
    robot_id: str = "robot"
    collection: str = "clino_vpr_keyframes"
    consistency: str = "Strong"
    hnsw_m: int = 16
    ef_construction: int = 200
    ef_search: int = 256
    exclude_recent_s: float = 30.0
    timeout_s: float = 5.0
    retry_period_s: float = 5.0
    batch: int = 2000

    @property
    def rpc_timeout(self) -> int:
        """pymilvus bounds its retries by ``timeout`` only when it is an int."""
        return max(1, int(np.ceil(self.timeout_s)))

    def __post_init__(self) -> None:
        if self.consistency not in ("Strong", "Bounded", "Session", "Eventually"):
            raise ValueError(f"unknown consistency level {self.consistency!r}")
        if self.uri and not re.match(r"^(https?|tcp|grpc)://", self.uri):
            raise ValueError(f"fleet_uri must look like http://host:19530, got {self.uri!r}")
        check_name("robot id", self.robot_id)
        if self.timeout_s <= 0 or self.retry_period_s < 0 or self.batch < 1:
            raise ValueError("timeout_s must be > 0, retry_period_s >= 0, batch >= 1")


def check_name(what: str, value: str) -> str:
    """Robot and session ids end up in filter expressions: allow letters, digits and _ . : - only."""
    if not _NAME_RE.match(value):
        raise ValueError(f"{what} {value!r} must be 1-128 characters of letters, digits, '_', '.', ':' or '-'")
    return value


@dataclass(frozen=True)
class KeyframeRecord:
    """One keyframe in the fleet index. descriptor: float32 (D,) L2-normalised; pose: float64 (4,4) or None."""

    robot: str
    session: str
    kf_id: int
    stamp: float
    descriptor: np.ndarray
    pose: np.ndarray | None
    fingerprint: str
    map_path: str
    map_row: int

    @property
    def key(self) -> str:
        return f"{self.session}/{self.kf_id}"


@dataclass(frozen=True)
class FleetHit:
    """A search result: cosine ``score`` and the matched keyframe's record fields (no descriptor)."""

    score: float
    robot: str
    session: str
    kf_id: int
    stamp: float
    pose: np.ndarray | None
    map_path: str
    map_row: int


def records_from_map(smap: SessionMap, robot: str, map_path: str | Path) -> list[KeyframeRecord]:
    """Fleet records of every keyframe of a session map (a merged map: each row under its own session)."""
    path = str(Path(map_path).resolve())
    return [KeyframeRecord(robot, smap.session_of(r), int(smap.ids[r]), float(smap.stamps[r]), smap.descriptors[r],
                           smap.pose(r), smap.fingerprint, path, r) for r in range(len(smap))]


class FleetIndex(Protocol):
    """The keyframe-index interface shared by the backends."""

    def add(self, records: list[KeyframeRecord]) -> int: ...

    def search(self, queries: np.ndarray, k: int, exclude_session: str | None = None,
               exclude_after: float | None = None) -> list[list[FleetHit]]: ...

    def count(self) -> int: ...

    def status(self) -> dict[str, Any]: ...


def open_fleet_index(cfg: FleetConfig, fingerprint: str, dim: int) -> FleetIndex:
    """Milvus when ``cfg.uri`` is set, else the in-process faiss backend."""
    if cfg.uri:
        return MilvusFleetIndex(cfg, fingerprint, dim)
    return LocalFleetIndex(fingerprint, dim)


# ---------------------------------------------------------------------------------------- faiss
class LocalFleetIndex:
    """In-process backend: the faiss :class:`KeyframeIndex` (exact) plus per-record metadata.

    The session/time exclusion is a faiss ID selector inside the search (the excluded rows of the
    asking session are found by a binary search on that session's stamps).
    """

    def __init__(self, fingerprint: str, dim: int, index_cfg: IndexConfig = IndexConfig()) -> None:
        self.fingerprint, self.dim = fingerprint, dim
        self._index = KeyframeIndex(dim, index_cfg)
        self._meta: list[tuple[str, str, int, float, np.ndarray | None, str, int]] = []
        self._keys: set[str] = set()
        self._session_rows: dict[str, list[int]] = {}
        self._session_stamps: dict[str, list[float]] = {}

    def add(self, records: list[KeyframeRecord]) -> int:
        new = [r for r in records if r.key not in self._keys]
        for r in new:
            if r.fingerprint != self.fingerprint:
                raise ValueError(f"keyframe of session {r.session!r} was built by encoder {r.fingerprint!r}, "
                                 f"this index holds {self.fingerprint!r}")
        if not new:
            return 0
        row0 = len(self._meta)
        self._index.add(np.arange(row0, row0 + len(new)), np.stack([r.descriptor for r in new]),
                        np.zeros(len(new)))  # stamps: per-session below (rows mix sessions)
        for i, r in enumerate(new):
            self._meta.append((r.robot, r.session, r.kf_id, r.stamp, r.pose, r.map_path, r.map_row))
            self._keys.add(r.key)
            self._session_rows.setdefault(r.session, []).append(row0 + i)
            self._session_stamps.setdefault(r.session, []).append(r.stamp)
        return len(new)

    def search(self, queries: np.ndarray, k: int, exclude_session: str | None = None,
               exclude_after: float | None = None) -> list[list[FleetHit]]:
        import faiss

        q = np.atleast_2d(np.asarray(queries, np.float32))
        excluded = np.empty(0, np.int64)
        if exclude_session in self._session_rows:
            rows = np.asarray(self._session_rows[exclude_session], np.int64)
            if exclude_after is None:
                excluded = rows
            else:  # a session's stamps arrive in time order
                start = int(np.searchsorted(np.asarray(self._session_stamps[exclude_session]), exclude_after, side="right"))
                excluded = rows[start:]
        store = self._index._index  # the exact flat store
        params = None
        if len(excluded):
            params = faiss.SearchParameters(sel=faiss.IDSelectorNot(faiss.IDSelectorBatch(excluded)))
        if len(self._meta) == 0:
            return [[] for _ in q]
        scores, rows = store.search(q, min(k, len(self._meta)), params=params)
        return [[self._hit(float(s), int(r)) for s, r in zip(srow, rrow) if r >= 0] for srow, rrow in zip(scores, rows)]

    def _hit(self, score: float, row: int) -> FleetHit:
        robot, session, kf_id, stamp, pose, path, map_row = self._meta[row]
        return FleetHit(score, robot, session, kf_id, stamp, pose, path, map_row)

    def count(self) -> int:
        return len(self._meta)

    def status(self) -> dict[str, Any]:
        return _summarise(((m[0], m[1], m[5]) for m in self._meta), self.fingerprint, self.dim, "faiss (in-process)")


def _summarise(rows: Iterable[tuple[str, str, str]], fingerprint: str, dim: int, backend: str) -> dict[str, Any]:
    """status dict from (robot, session, map_path) per keyframe."""
    sessions: dict[str, dict[str, Any]] = {}
    for robot, session, path in rows:
        s = sessions.setdefault(session, {"robot": robot, "keyframes": 0, "maps": set()})
        s["keyframes"] += 1
        s["maps"].add(path)
    for s in sessions.values():
        s["maps"] = sorted(s["maps"])
    return {"backend": backend, "fingerprints": [fingerprint], "descriptor_dim": dim,
            "robots": sorted({s["robot"] for s in sessions.values()}), "sessions": sessions,
            "keyframes": sum(s["keyframes"] for s in sessions.values())}


# --------------------------------------------------------------------------------------- Milvus
def _pymilvus() -> Any:
    try:
        with warnings.catch_warnings():  # pymilvus 2.3 imports the deprecated pkg_resources: not the user's concern
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            import pymilvus
    except ImportError as e:  # only when a fleet_uri is configured
        raise RuntimeError("fleet_uri is set but pymilvus is not installed: pip install 'clino_vpr_ros[fleet]'") from e
    return pymilvus


class MilvusFleetIndex:
    """Milvus backend (module docstring). Connects lazily; raises on an unreachable server
    (the caller decides: the CLI reports it, :class:`FleetLink` queues and retries)."""

    _alias_counter = 0
    _alias_lock = threading.Lock()

    def __init__(self, cfg: FleetConfig, fingerprint: str, dim: int) -> None:
        if not cfg.uri:
            raise ValueError("MilvusFleetIndex needs a fleet uri")
        self.cfg, self.fingerprint, self.dim = cfg, fingerprint, int(dim)
        self.name = f"{cfg.collection}_{self.dim}d"
        with MilvusFleetIndex._alias_lock:
            MilvusFleetIndex._alias_counter += 1
            self._alias = f"clino_vpr_fleet_{id(self)}_{MilvusFleetIndex._alias_counter}"
        self._collection: Any = None

    # -- connection
    def connect(self) -> None:
        """Connect, create the collection (first robot) or check its encoder, and load it."""
        pm = _pymilvus()
        if self._collection is not None:
            return
        pm.connections.connect(alias=self._alias, uri=self.cfg.uri, timeout=self.cfg.rpc_timeout)
        try:
            if pm.utility.has_collection(self.name, using=self._alias, timeout=self.cfg.rpc_timeout):
                coll = pm.Collection(self.name, using=self._alias)
                self._check_encoder(coll.description)
            else:
                coll = self._create(pm)
            coll.load(timeout=max(self.cfg.rpc_timeout, 60))
        except Exception:
            pm.connections.disconnect(self._alias)
            raise
        self._collection = coll

    def _check_encoder(self, description: str) -> None:
        try:
            meta = json.loads(description)
        except ValueError:
            meta = {}
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"fleet collection {self.name!r} at {self.cfg.uri} holds descriptors of encoder {meta.get('fingerprint')!r}, "
                f"this one is {self.fingerprint!r}: descriptors of different models are not comparable")

    def _create(self, pm: Any) -> Any:
        F, T = pm.FieldSchema, pm.DataType
        fields = [
            F("pk", T.VARCHAR, is_primary=True, max_length=_PK_MAX),
            F("robot", T.VARCHAR, max_length=128),
            F("session", T.VARCHAR, max_length=128),
            F("kf_id", T.INT64),
            F("stamp", T.DOUBLE),
            F("map_path", T.VARCHAR, max_length=_PATH_MAX),
            F("map_row", T.INT64),
            F("pose", T.JSON),  # {"T": 16 floats row-major}, {} when unknown
            F("embedding", T.FLOAT_VECTOR, dim=self.dim),
        ]
        desc = json.dumps({"fingerprint": self.fingerprint, "descriptor_dim": self.dim, "format": "clino_vpr_fleet/1"})
        schema = pm.CollectionSchema(fields, description=desc)
        coll = pm.Collection(self.name, schema, using=self._alias, consistency_level=self.cfg.consistency,
                             shards_num=1)
        coll.create_index("embedding", {"index_type": "HNSW", "metric_type": "IP",
                                        "params": {"M": self.cfg.hnsw_m, "efConstruction": self.cfg.ef_construction}})
        for scalar in ("session", "stamp"):  # scalar indexes speed up the exclusion filter
            try:
                coll.create_index(scalar, index_name=f"idx_{scalar}")
            except Exception as e:  # older servers: the filter still works, just without an index
                log.debug("scalar index on %s not created: %s", scalar, e)
        log.info("fleet: created collection %s at %s (encoder %s)", self.name, self.cfg.uri, self.fingerprint)
        return coll

    def close(self) -> None:
        if self._collection is not None:
            _pymilvus().connections.disconnect(self._alias)
            self._collection = None

    def reset_connection(self) -> None:
        """Forget the connection (after a failure); the next call reconnects."""
        try:
            self.close()
        except Exception:  # the server is gone: nothing to close cleanly
            self._collection = None

    @property
    def collection(self) -> Any:
        self.connect()
        return self._collection

    # -- writes
    def _rows(self, records: list[KeyframeRecord]) -> list[dict[str, Any]]:
        out = []
        for r in records:
            if r.fingerprint != self.fingerprint:
                raise ValueError(f"keyframe of session {r.session!r} was built by encoder {r.fingerprint!r}, "
                                 f"the fleet collection holds {self.fingerprint!r}: refused")
            check_name("session id", r.session)
            if len(r.map_path) > _PATH_MAX:
                raise ValueError(f"map path longer than {_PATH_MAX} characters: {r.map_path[:80]}...")
            out.append({"pk": r.key, "robot": r.robot, "session": r.session, "kf_id": int(r.kf_id),
                        "stamp": float(r.stamp), "map_path": r.map_path, "map_row": int(r.map_row),
                        "pose": {} if r.pose is None else {"T": [float(v) for v in np.asarray(r.pose).ravel()]},
                        "embedding": np.asarray(r.descriptor, np.float32).tolist()})
        return out

    def existing_keys(self, keys: list[str]) -> set[str]:
        """Which primary keys are already stored (Strong read)."""
        found: set[str] = set()
        for a in range(0, len(keys), 1000):
            chunk = keys[a : a + 1000]
            res = self.collection.query(f"pk in {json.dumps(chunk)}", output_fields=["pk"],
                                        consistency_level=self.cfg.consistency, timeout=self.cfg.rpc_timeout)
            found.update(r["pk"] for r in res)
        return found

    def add(self, records: list[KeyframeRecord]) -> int:
        """Insert the records whose key is not stored yet; returns how many were new (idempotent)."""
        added = 0
        for a in range(0, len(records), self.cfg.batch):
            chunk = records[a : a + self.cfg.batch]
            present = self.existing_keys([r.key for r in chunk])
            new = [r for r in chunk if r.key not in present]
            if new:
                self.collection.insert(self._rows(new), timeout=6 * self.cfg.rpc_timeout)
                added += len(new)
        return added

    def insert(self, records: list[KeyframeRecord]) -> None:
        """Plain insert (the caller knows the keys are new: the fleet benchmark's streaming robots)."""
        self.collection.insert(self._rows(records), timeout=6 * self.cfg.rpc_timeout)

    def upsert(self, records: list[KeyframeRecord]) -> None:
        """Insert-or-replace by key: a catch-up that may repeat a half-acknowledged batch stays exact."""
        for a in range(0, len(records), self.cfg.batch):
            self.collection.upsert(self._rows(records[a : a + self.cfg.batch]), timeout=6 * self.cfg.rpc_timeout)

    # -- reads
    def search(self, queries: np.ndarray, k: int, exclude_session: str | None = None,
               exclude_after: float | None = None) -> list[list[FleetHit]]:
        """Top-k per query (float32 (Q,D)); ``exclude_session`` with ``exclude_after`` None drops the
        whole session, else only its keyframes with stamp > ``exclude_after``."""
        q = np.atleast_2d(np.asarray(queries, np.float32))
        res = self.collection.search(
            q.tolist(), "embedding", {"metric_type": "IP", "params": {"ef": max(self.cfg.ef_search, k)}}, limit=k,
            expr=self.filter_expression(exclude_session, exclude_after),
            output_fields=["robot", "session", "kf_id", "stamp", "pose", "map_path", "map_row"],
            consistency_level=self.cfg.consistency, timeout=self.cfg.rpc_timeout)
        return [[self._hit(h) for h in hits] for hits in res]

    @staticmethod
    def filter_expression(exclude_session: str | None, exclude_after: float | None) -> str | None:
        """Milvus boolean expression evaluated inside the search."""
        if exclude_session is None:
            return None
        check_name("session id", exclude_session)
        if exclude_after is None:
            return f'session != "{exclude_session}"'
        return f'not (session == "{exclude_session}" and stamp > {float(exclude_after)!r})'

    @staticmethod
    def _hit(h: Any) -> FleetHit:
        e = h.entity
        pose = e.get("pose")
        return FleetHit(float(h.distance), e.get("robot"), e.get("session"), int(e.get("kf_id")), float(e.get("stamp")),
                        np.asarray(pose["T"], np.float64).reshape(4, 4) if pose and pose.get("T") else None,
                        e.get("map_path"),
                        int(e.get("map_row")))

    def count(self, expr: str = 'pk != ""') -> int:
        res = self.collection.query(expr, output_fields=["count(*)"], consistency_level=self.cfg.consistency,
                                    timeout=6 * self.cfg.rpc_timeout)
        return int(res[0]["count(*)"])

    def iterate(self, fields: list[str], expr: str = 'pk != ""', batch: int = 8000) -> Iterable[dict[str, Any]]:
        """Every stored row's ``fields`` (a query iterator: any collection size)."""
        it = self.collection.query_iterator(batch_size=batch, expr=expr, output_fields=fields,
                                            consistency_level=self.cfg.consistency)
        try:
            while True:
                page = it.next()
                if not page:
                    return
                yield from page
        finally:
            it.close()

    def status(self) -> dict[str, Any]:
        rows = ((r["robot"], r["session"], r["map_path"]) for r in self.iterate(["robot", "session", "map_path"]))
        out = _summarise(rows, self.fingerprint, self.dim, f"milvus {self.cfg.uri} collection {self.name}")
        out["consistency"] = self.cfg.consistency
        return out

    def session_maps(self, sessions: list[str]) -> dict[str, list[str]]:
        """session id -> map paths holding its keyframes (for ``clino-vpr merge --fleet``)."""
        for s in sessions:
            check_name("session id", s)
        expr = f"session in {json.dumps(sessions)}"
        out: dict[str, set[str]] = {s: set() for s in sessions}
        for r in self.iterate(["session", "map_path"], expr=expr):
            out[r["session"]].add(r["map_path"])
        return {s: sorted(p) for s, p in out.items()}


def fleet_info(uri: str, collection: str = "clino_vpr_keyframes", timeout_s: int = 10) -> list[dict[str, Any]]:
    """Encoder fingerprint and dimension of every clino-vpr collection at ``uri`` (for ``fleet status``
    without knowing the encoder)."""
    pm = _pymilvus()
    alias = f"clino_vpr_fleet_info_{time.monotonic_ns()}"
    pm.connections.connect(alias=alias, uri=uri, timeout=timeout_s)
    try:
        out = []
        for name in pm.utility.list_collections(using=alias, timeout=timeout_s):
            if not name.startswith(collection + "_"):
                continue
            try:
                meta = json.loads(pm.Collection(name, using=alias).description)
            except ValueError:
                continue
            out.append({"collection": name, **meta})
        return out
    finally:
        pm.connections.disconnect(alias)


# ---------------------------------------------------------------------------- features on demand
class MapFeatureStore:
    """Reads verification data (features, K, pose, base_T_camera) of fleet hits from their session
    maps, only when a candidate is verified; keeps the last few maps open (LRU)."""

    def __init__(self, fingerprint: str, dim: int, max_maps: int = 4) -> None:
        self.fingerprint, self.dim, self.max_maps = fingerprint, dim, max_maps
        self._maps: OrderedDict[str, SessionMap | None] = OrderedDict()

    def get(self, hit: FleetHit) -> tuple[Any, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """(features or None, K or None, pose or None, base_T_camera or None) of the hit's keyframe."""
        smap = self._map(hit.map_path)
        r = hit.map_row
        if smap is None or r >= len(smap) or smap.session_of(r) != hit.session or int(smap.ids[r]) != hit.kf_id:
            return None, None, hit.pose, None  # map not (yet) on shared storage, or rewritten: unverifiable
        return smap.features(r), smap.intrinsics_of(r), smap.pose(r), smap.base_T_camera(r)

    def _map(self, path: str) -> SessionMap | None:
        if path in self._maps:
            self._maps.move_to_end(path)
            return self._maps[path]
        try:
            smap: SessionMap | None = SessionMap.load(path, self.fingerprint, self.dim)
        except (FileNotFoundError, ValueError) as e:
            log.info("fleet: verification features of %s unavailable: %s", path, e)
            return None  # not cached: it may appear later (the other robot's next autosave)
        self._maps[path] = smap
        while len(self._maps) > self.max_maps:
            self._maps.popitem(last=False)
        return smap


# -------------------------------------------------------------------------------- the robot side
@dataclass
class FleetState:
    """What /diagnostics shows about the fleet link."""

    online: bool = False
    pending: int = 0
    written: int = 0
    last_error: str = ""
    hits: int = 0
    extra: dict = field(default_factory=dict)


class FleetLink:
    """A live session's connection to the fleet: write-behind queue with catch-up, and queries.

    Every keyframe of the session is queued (:meth:`enqueue`) and written by :meth:`sync`; while
    the server is unreachable the queue grows, :meth:`search` returns nothing (the robot keeps its
    local index), and a retry happens at most every ``retry_period_s``. Writes are upserts by key,
    so a batch repeated after a failure half-way arrives exactly once.
    """

    def __init__(self, cfg: FleetConfig, fingerprint: str, dim: int, session_id: str, map_path: str | Path,
                 index: MilvusFleetIndex | None = None) -> None:
        if not cfg.uri:
            raise ValueError("FleetLink needs a fleet uri")
        self.cfg, self.fingerprint, self.dim = cfg, fingerprint, dim
        self.session_id = check_name("session id", session_id)
        self.map_path = str(Path(map_path).resolve()) if str(map_path) else ""
        self.index = index or MilvusFleetIndex(cfg, fingerprint, dim)
        self.features = MapFeatureStore(fingerprint, dim)
        self.state = FleetState()
        self._queue: list[KeyframeRecord] = []
        self._last_attempt: float | None = None
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._wake: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def enqueue(self, kf_id: int, stamp: float, descriptor: np.ndarray, pose: np.ndarray | None, row: int) -> None:
        """Queue one keyframe of the live session (row: its row in the session map); wakes the writer."""
        with self._lock:
            self._queue.append(KeyframeRecord(self.cfg.robot_id, self.session_id, int(kf_id), float(stamp),
                                              np.asarray(descriptor, np.float32), pose, self.fingerprint,
                                              self.map_path, int(row)))
            self.state.pending = len(self._queue)
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        """Write from a background thread (a dead server's connect timeout then never stalls the caller)."""
        if self._thread is not None:
            return
        self._wake, self._stopping = threading.Event(), False
        self._thread = threading.Thread(target=self._run, name="clino-vpr-fleet", daemon=True)
        self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=2 * self.cfg.timeout_s + 5)
        self._thread = None

    def _run(self) -> None:
        while not self._stopping:
            # woken by a new keyframe; otherwise every retry period (retries while offline)
            self._wake.wait(timeout=max(self.cfg.retry_period_s, 0.05))
            self._wake.clear()
            if self._stopping:
                break
            try:
                self.sync(force=True)
            except ValueError as e:  # another encoder in the collection: not recoverable by retrying
                self.state.last_error = str(e)
                log.error("fleet: %s", e)
                return

    def sync(self, force: bool = False, now: float | None = None) -> bool:
        """Write the queued keyframes; True when the queue is empty afterwards. While offline, tries
        again only after ``retry_period_s`` (``force`` tries now). Raises ValueError when the fleet
        collection holds another encoder's descriptors."""
        now = time.monotonic() if now is None else now
        with self._io_lock:  # one writer at a time; enqueue stays free meanwhile
            with self._lock:
                if not self._queue and self.state.online:
                    return True
                if not force and not self.state.online and self._last_attempt is not None \
                        and now - self._last_attempt < self.cfg.retry_period_s:
                    return False
                self._last_attempt = now
                batch = list(self._queue)
            try:
                if batch:
                    # upsert, never insert: Milvus does not enforce unique primary keys, and a batch
                    # repeated after a half-acknowledged write (or ids restarted by ~/reset) must
                    # replace, not duplicate
                    self.index.upsert(batch)
                else:
                    self.index.connect()
            except ValueError:
                raise
            except Exception as e:  # noqa: BLE001 - any transport error means "offline, retry later"
                self._offline(e)
                return False
            with self._lock:
                del self._queue[: len(batch)]
                if not self.state.online:
                    log.info("fleet %s reachable%s", self.cfg.uri, f", caught up {len(batch)} keyframe(s)" if batch else "")
                self.state.written += len(batch)
                self.state.online, self.state.last_error, self.state.pending = True, "", len(self._queue)
                return not self._queue

    def _offline(self, e: Exception) -> None:
        text = str(getattr(e, "message", "") or e).replace("\n", " ")[:300]
        if self.state.online or not self.state.last_error:
            log.warning("fleet %s unreachable (%s: %s); working on the local index, %d keyframe(s) queued",
                        self.cfg.uri, type(e).__name__, text, len(self._queue))
        self.state.online = False
        self.state.last_error = f"{type(e).__name__}: {text}"
        self.state.pending = len(self._queue)
        self.index.reset_connection()

    def search(self, descriptor: np.ndarray, k: int, stamp: float) -> list[FleetHit]:
        """Other robots' and sessions' keyframes for one query (this session is excluded: the local
        index covers it). Empty while the server is unreachable."""
        if not self.state.online:
            return []
        try:
            hits = self.index.search(descriptor, k, exclude_session=self.session_id)[0]
        except Exception as e:  # noqa: BLE001
            self._offline(e)
            return []
        self.state.hits += len(hits)
        return hits

    def diagnostics(self) -> dict[str, str]:
        s = self.state
        return {"fleet_uri": self.cfg.uri, "fleet_online": str(s.online).lower(), "fleet_pending": str(s.pending),
                "fleet_written": str(s.written), "fleet_hits": str(s.hits), "fleet_error": s.last_error}
