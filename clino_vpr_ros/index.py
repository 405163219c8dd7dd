"""Incremental faiss keyframe index: exact inner product (default), HNSW for large maps, GPU when available.

``kind="hnsw"`` (the ``large_map`` preset) stays exact where it matters: every descriptor is kept
in a flat store; below ``hnsw_min_size`` keyframes the flat store is searched exactly; from that
size on a PCA projection (``hnsw_pca_dim``, trained on the keyframes stored at that moment) feeds
an HNSW graph that returns a shortlist of ``hnsw_shortlist`` rows, which is re-ranked exactly
against the full descriptors. efSearch grows with the map (:meth:`KeyframeIndex.ef_search`).
Measured on model-shaped descriptors (``clino-vpr bench index``): recall@1 against exact search
0.975-0.995 at 100k keyframes, 0.88-0.94 at 1M (README); exact search stays the default.

Keyframes are added one at a time in time order. faiss stores them under sequential row numbers
(0, 1, 2, ...); this class keeps the row -> keyframe id array (int64) and the stamps, so that a
search can exclude the most recent part of the session with a row range: "older than
``exclude_recent_s`` before the query AND not among the last ``exclude_recent_keyframes``" is one
prefix of the rows, which faiss filters natively with ``IDSelectorRange`` (flat and HNSW) instead
of over-fetching. GPU indexes do not take selectors, so there the search over-fetches and filters.

Similarities are cosine similarities (descriptors are L2-normalised, metric inner product).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

# faiss.loader logs at INFO each SIMD module it fails to find, although the wheel's single library
# dispatches AVX2/AVX512 at run time ("DD" in faiss.get_compile_options()): not worth a user's eye
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

import faiss  # noqa: E402
import numpy as np  # noqa: E402

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "hnsw")


@dataclass(frozen=True)
class IndexConfig:
    """faiss index choice and the same-session exclusion window applied to searches."""

    kind: str = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 160
    hnsw_pca_dim: int = 128
    hnsw_shortlist: int = 128
    hnsw_min_size: int = 20_000
    use_gpu: bool = False
    exclude_recent_s: float = 30.0
    exclude_recent_keyframes: int = 20

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; valid: {', '.join(INDEX_KINDS)}")
        if self.hnsw_m < 2 or self.hnsw_ef_construction < 1 or self.hnsw_ef_search < 1:
            raise ValueError("hnsw_m must be >= 2 and hnsw_ef_construction/hnsw_ef_search >= 1")
        if self.hnsw_pca_dim < 1 or self.hnsw_shortlist < 1 or self.hnsw_min_size < 1:
            raise ValueError("hnsw_pca_dim, hnsw_shortlist and hnsw_min_size must be >= 1")
        if self.exclude_recent_s < 0 or self.exclude_recent_keyframes < 0:
            raise ValueError("exclude_recent_s and exclude_recent_keyframes must be >= 0")


def _as_matrix(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    """Validate (D,) or (N,D) descriptors; return a C-contiguous float32 (N,D) matrix."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what}: expected shape (N, {dim}) or ({dim},), got {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: descriptors contain NaN or Inf")
    return x


class KeyframeIndex:
    """faiss index over one session's keyframes (rows in insertion = time order)."""

    def __init__(self, dim: int, cfg: IndexConfig = IndexConfig()) -> None:
        if dim <= 0:
            raise ValueError(f"descriptor dimension must be > 0, got {dim}")
        self.dim = dim
        self.cfg = cfg
        self.on_gpu = False
        self._index = self._build()
        self._ids = np.empty(0, dtype=np.int64)
        self._stamps = np.empty(0, dtype=np.float64)
        self._size = 0

    def _build(self) -> faiss.Index:
        cfg = self.cfg
        # the flat store: exact search for flat maps, exact re-ranking (and small maps) for "hnsw"
        index = faiss.IndexFlatIP(self.dim)
        self._pca: faiss.PCAMatrix | None = None
        self._graph: faiss.IndexHNSWFlat | None = None
        if cfg.use_gpu and cfg.kind == "hnsw":
            # faiss has no GPU HNSW (its GPU graph index is CAGRA); a flat GPU index is the GPU option
            log.warning("use_gpu is ignored for kind='hnsw' (no GPU HNSW in faiss); use kind='flat' on the GPU")
        elif cfg.use_gpu:
            n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
            if n_gpus > 0 and hasattr(faiss, "StandardGpuResources"):
                self._gpu_res = faiss.StandardGpuResources()
                self.on_gpu = True
                return faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
            log.warning("use_gpu requested but faiss reports no GPU support (%d GPUs); using the CPU index", n_gpus)
        return index

    def __len__(self) -> int:
        return self._size

    @property
    def ids(self) -> np.ndarray:
        """int64 (N,) keyframe ids in row order (a view; do not modify)."""
        return self._ids[: self._size]

    @property
    def stamps(self) -> np.ndarray:
        """float64 (N,) keyframe stamps in row order."""
        return self._stamps[: self._size]

    def add(self, ids: np.ndarray | int, descriptors: np.ndarray, stamps: np.ndarray | float) -> None:
        """Append keyframes.

        Args:
            ids: int64 (N,) keyframe ids (or one int).
            descriptors: float32 (N,D) or (D,) L2-normalised.
            stamps: float64 (N,) seconds, non-decreasing and not older than the last row.
        """
        x = _as_matrix(descriptors, self.dim, "KeyframeIndex.add")
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        stamps = np.atleast_1d(np.asarray(stamps, dtype=np.float64))
        if ids.shape != (len(x),) or stamps.shape != (len(x),):
            raise ValueError(f"ids {ids.shape} and stamps {stamps.shape} must both have shape ({len(x)},)")
        self._grow(self._size + len(x))
        self._ids[self._size : self._size + len(x)] = ids
        self._stamps[self._size : self._size + len(x)] = stamps
        self._index.add(x)
        self._size += len(x)
        if self._graph is not None:
            self._graph.add(self._pca.apply(x))
        elif self.cfg.kind == "hnsw" and self._size >= self.cfg.hnsw_min_size:
            self._build_graph()

    def _build_graph(self) -> None:
        """Train the PCA on every stored descriptor and put them all in the HNSW graph (once, at
        ``hnsw_min_size`` keyframes: about a second at 20k)."""
        cfg = self.cfg
        d = min(cfg.hnsw_pca_dim, self.dim)
        pca = faiss.PCAMatrix(self.dim, d)
        pca.train(self._vectors())
        graph = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = cfg.hnsw_ef_construction
        graph.add(pca.apply(self._vectors()))
        self._pca, self._graph = pca, graph
        log.info("index: HNSW graph over %d-d PCA of %d keyframes built", d, self._size)

    def _vectors(self) -> np.ndarray:
        """float32 (N,D) view of the flat store (no copy; invalid after the next add)."""
        return faiss.rev_swig_ptr(self._index.get_xb(), self._size * self.dim).reshape(self._size, self.dim)

    def ef_search(self, n_rows: int | None = None) -> int:
        """HNSW efSearch for a map of ``n_rows`` keyframes: ``hnsw_ef_search`` at 100k, growing with
        the square root of the size (graph search gets harder as the map grows)."""
        n = self._size if n_rows is None else n_rows
        return int(max(self.cfg.hnsw_ef_search * np.sqrt(max(n, 1) / 100_000), self.cfg.hnsw_ef_search,
                       self.cfg.hnsw_shortlist))

    def _grow(self, needed: int) -> None:
        # amortised O(1) append: double the capacity of the side arrays
        if needed <= len(self._ids):
            return
        capacity = max(needed, 2 * len(self._ids), 64)
        self._ids = np.resize(self._ids, capacity)
        self._stamps = np.resize(self._stamps, capacity)

    def searchable_rows(self, query_stamp: float | None, exclude_recent: bool) -> int:
        """Number of leading rows a query may match (rows are in time order)."""
        if not exclude_recent or query_stamp is None:
            return self._size
        by_count = self._size - self.cfg.exclude_recent_keyframes
        by_time = int(np.searchsorted(self.stamps, query_stamp - self.cfg.exclude_recent_s, side="right"))
        return max(0, min(by_count, by_time))

    def search(
        self, query: np.ndarray, k: int, query_stamp: float | None = None, exclude_recent: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k keyframes for each query.

        Args:
            query: float32 (D,) or (Q,D).
            k: number of neighbours.
            query_stamp: the query time, used with ``exclude_recent``.
            exclude_recent: drop the last ``exclude_recent_s`` seconds and ``exclude_recent_keyframes``
                keyframes before the query (use for the query's own session).

        Returns:
            scores float32 (Q,k), keyframe ids int64 (Q,k) (-1 none), rows int64 (Q,k) (-1 none).
        """
        q = _as_matrix(query, self.dim, "KeyframeIndex.search")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n_rows = self.searchable_rows(query_stamp, exclude_recent)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        if n_rows > 0:
            s, r = self._search_prefix(q, k, n_rows)
            scores[:, : s.shape[1]], rows[:, : r.shape[1]] = s, r
        ids = np.full(rows.shape, -1, dtype=np.int64)
        ids[rows >= 0] = self._ids[rows[rows >= 0]]
        scores[rows < 0] = -np.inf
        return scores, ids, rows

    def _search_prefix(self, q: np.ndarray, k: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        if self._graph is not None and n_rows >= self.cfg.hnsw_min_size:
            return self._search_graph(q, k, n_rows)
        if n_rows == self._size:
            return self._index.search(q, k)
        if not self.on_gpu:
            return self._index.search(q, k, params=faiss.SearchParameters(sel=faiss.IDSelectorRange(0, n_rows)))
        return self._search_overfetch(q, k, n_rows)

    def _search_graph(self, q: np.ndarray, k: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """HNSW shortlist on the PCA-projected query, then exact scores on the full descriptors."""
        shortlist = max(self.cfg.hnsw_shortlist, k)
        params = faiss.SearchParametersHNSW(sel=faiss.IDSelectorRange(0, n_rows),
                                            efSearch=max(self.ef_search(n_rows), shortlist))
        _, cand = self._graph.search(self._pca.apply(q), shortlist, params=params)
        vectors = self._vectors()
        scores = np.full((len(q), k), -np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        for i, c in enumerate(cand):
            c = c[c >= 0]
            exact = vectors[c] @ q[i]
            order = np.argsort(-exact, kind="stable")[:k]
            scores[i, : len(order)], rows[i, : len(order)] = exact[order], c[order]
        return scores, rows

    def _search_overfetch(self, q: np.ndarray, k: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k among the first n_rows without a selector (GPU indexes take none): over-fetch and filter."""
        fetch = k
        while True:
            fetch = min(max(2 * fetch, k + self._size - n_rows), self._size)
            s, r = self._index.search(q, fetch)
            s = np.where((r >= 0) & (r < n_rows), s, -np.inf)
            r = np.where((r >= 0) & (r < n_rows), r, -1)
            order = np.argsort(r < 0, axis=1, kind="stable")[:, :k]
            s, r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
            if fetch >= self._size or np.all(r[:, -1] >= 0):
                return s, r

    def reconstruct(self, row: int) -> np.ndarray:
        """float32 (D,) stored descriptor of one row (exact for flat and HNSW-flat storage)."""
        if not 0 <= row < self._size:
            raise IndexError(f"row {row} outside [0, {self._size})")
        return self._index.reconstruct(int(row))

    def memory_bytes(self) -> int:
        """Approximate bytes held by the faiss index plus the id/stamp arrays."""
        if self.on_gpu:
            return self._size * (4 * self.dim + 16)
        total = self._ids.nbytes + self._stamps.nbytes
        for index in (self._index, self._graph):
            if index is not None:
                writer = faiss.VectorIOWriter()
                faiss.write_index(index, writer)
                total += int(writer.data.size())
        return total
