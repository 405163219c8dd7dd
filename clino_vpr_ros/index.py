"""Incremental faiss keyframe index: exact inner product (default), a PQ shortlist for large maps, GPU when available.

``kind="pq"`` (the ``large_map`` preset) stays exact where it matters: every descriptor is kept in
a flat store; below ``pq_min_size`` keyframes the flat store is searched exactly; from that size on
each descriptor is also stored as a 32-byte code (a ``pq_pca_dim``-d PCA projection, product-quantised
into ``pq_m`` 4-bit sub-codes, faiss "fast-scan" layout). A query scans every code with SIMD table
look-ups (no coarse partition: this model's descriptors form no clusters an IVF could exploit, see
below), takes the ``pq_shortlist`` best rows and re-ranks them exactly against the full descriptors.
The PCA and the codebooks are trained on the map itself when it reaches ``pq_min_size`` and again
each time it doubles (on a sample of at most ``pq_train_size`` descriptors; every row is re-encoded),
so that a robot exploring new kinds of places keeps codes fitted to what it has seen.

Measured on model-shaped descriptors (``clino-vpr bench index``, README): recall@1 against exact
search 1.000 at 100k and 0.996 at 1M keyframes (1000 queries), query CPU time 2.2 ms on one
core at 1M (exact search: 82 ms), 20-45 bytes per keyframe on top of the flat store, ~40 s to build
1M on one core. An inverted file (IVF) in front of the codes was measured and rejected: with 256
lists, 64 probed, recall@1 was 0.937 at 100k; an HNSW graph over the PCA reached 0.935 at 1M in 5 ms
and took 11 minutes to build. ``kind="hnsw"`` (earlier versions) still loads and means ``"pq"``.

Keyframes are added one at a time in time order. faiss stores them under sequential row numbers
(0, 1, 2, ...); this class keeps the row -> keyframe id array (int64) and the stamps, so that a
search can exclude the most recent part of the session with a row range: "older than
``exclude_recent_s`` before the query AND not among the last ``exclude_recent_keyframes``" is one
prefix of the rows, which faiss filters natively with ``IDSelectorRange`` on the flat store instead
of over-fetching. The PQ shortlist is fetched longer by the excluded rows and filtered (fast-scan
indexes of faiss 1.8 ignore selectors); where more than 4 shortlists' worth of rows are excluded
the search is exact. GPU indexes do not take selectors, so there the search over-fetches and filters.

Similarities are cosine similarities (descriptors are L2-normalised, metric inner product).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

# faiss.loader logs at INFO each SIMD module it fails to find, although the wheel's single library
# dispatches AVX2/AVX512 at run time ("DD" in faiss.get_compile_options()): not worth a user's eye
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

import faiss  # noqa: E402
import numpy as np  # noqa: E402

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "pq")
# kinds of earlier versions -> what they are now (the large-map index was an HNSW graph until the PQ shortlist replaced it)
INDEX_KIND_ALIASES = {"hnsw": "pq"}


@dataclass(frozen=True)
class IndexConfig:
    """faiss index choice and the same-session exclusion window applied to searches.

    ``pq_*`` apply to ``kind="pq"`` only: exact search below ``pq_min_size`` keyframes; above, a
    ``pq_shortlist``-row shortlist from ``pq_m`` 4-bit PQ codes of a ``pq_pca_dim``-d PCA, re-ranked
    exactly; PCA and codebooks (re)trained at ``pq_min_size`` and each doubling, on at most
    ``pq_train_size`` descriptors.
    """

    kind: str = "flat"
    pq_pca_dim: int = 128
    pq_m: int = 64
    pq_shortlist: int = 256
    pq_min_size: int = 20_000
    pq_train_size: int = 32_768
    use_gpu: bool = False
    exclude_recent_s: float = 30.0
    exclude_recent_keyframes: int = 20

    def __post_init__(self) -> None:
        if self.kind in INDEX_KIND_ALIASES:
            log.warning("index kind %r is now called %r (the large-map index is a PQ shortlist re-ranked exactly); "
                        "using %r", self.kind, INDEX_KIND_ALIASES[self.kind], INDEX_KIND_ALIASES[self.kind])
            object.__setattr__(self, "kind", INDEX_KIND_ALIASES[self.kind])
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; valid: {', '.join(INDEX_KINDS)}")
        if self.pq_pca_dim < 1 or self.pq_m < 1 or self.pq_shortlist < 1:
            raise ValueError("pq_pca_dim, pq_m and pq_shortlist must be >= 1")
        if self.pq_min_size < 1000 or self.pq_train_size < 1000:
            raise ValueError("pq_min_size and pq_train_size must be >= 1000 (the PCA and the PQ codebooks are trained on them)")
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
        # the flat store: exact search for flat maps, exact re-ranking (and small maps) for "pq"
        index = faiss.IndexFlatIP(self.dim)
        self._pca: faiss.PCAMatrix | None = None
        self._codes: faiss.IndexIVFPQFastScan | None = None
        self._next_train = cfg.pq_min_size  # map size at which the codes are (re)trained
        if cfg.use_gpu and cfg.kind == "pq":
            # faiss has no GPU fast-scan PQ; a flat GPU index is the GPU option
            log.warning("use_gpu is ignored for kind='pq' (no GPU fast-scan PQ in faiss); use kind='flat' on the GPU")
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
        if self.cfg.kind == "pq" and self._size >= self._next_train:
            self._train_codes()  # encodes every row, these included
        elif self._codes is not None:
            self._codes.add(self._pca.apply(x))

    def _train_codes(self) -> None:
        """(Re)train the PCA and the PQ codebooks on a sample of the stored descriptors and encode
        every row; next time when the map has doubled. Measured on one core: ~3 s at 100k keyframes,
        9-11 s at 1M (mostly re-encoding); the sum over all doublings stays about twice the last one."""
        cfg = self.cfg
        d = min(cfg.pq_pca_dim, self.dim)
        m = math.gcd(d, cfg.pq_m)  # PQ needs d % m == 0 (small descriptors: fewer sub-codes)
        vectors = self._vectors()
        sample = np.sort(np.random.default_rng(self._size).choice(self._size, min(self._size, cfg.pq_train_size), replace=False))
        train = vectors[sample]  # copy: at most pq_train_size rows
        pca = faiss.PCAMatrix(self.dim, d)
        pca.train(train)
        # IVF with one list is plain fast-scan PQ (no coarse partition); it measured a little faster
        # than IndexPQFastScan, and blocks of 64 codes ~10 % faster than the default 32 at 1M keyframes
        codes = faiss.index_factory(d, f"IVF1,PQ{m}x4fs_64", faiss.METRIC_INNER_PRODUCT)
        codes.train(pca.apply(train))
        del train
        for a in range(0, self._size, 65_536):  # bounded temporaries
            codes.add(pca.apply(vectors[a : a + 65_536]))
        self._pca, self._codes = pca, codes
        self._next_train = 2 * self._size
        log.info("index: PQ%dx4 codes of a %d-d PCA trained on %d of %d keyframes (next at %d)",
                 m, d, len(sample), self._size, self._next_train)

    def _vectors(self) -> np.ndarray:
        """float32 (N,D) view of the flat store (no copy; invalid after the next add)."""
        return faiss.rev_swig_ptr(self._index.get_xb(), self._size * self.dim).reshape(self._size, self.dim)

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
        excluded = self._size - n_rows
        if self._codes is not None and n_rows >= self.cfg.pq_min_size and excluded <= 4 * self.cfg.pq_shortlist:
            return self._search_codes(q, k, n_rows)
        if n_rows == self._size:
            return self._index.search(q, k)
        if not self.on_gpu:
            return self._index.search(q, k, params=faiss.SearchParameters(sel=faiss.IDSelectorRange(0, n_rows)))
        return self._search_overfetch(q, k, n_rows)

    def _search_codes(self, q: np.ndarray, k: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """PQ shortlist of the PCA-projected query (all codes scanned), then exact scores on the full descriptors.

        The shortlist is fetched longer by the number of excluded recent rows, which are dropped here:
        faiss 1.8 (Ubuntu 22.04's pin) ignores an IDSelector on fast-scan indexes, later versions
        honour it; over-fetching gives both the same shortlist of searchable rows.
        """
        shortlist = max(self.cfg.pq_shortlist, k)
        _, cand = self._codes.search(self._pca.apply(q), shortlist + self._size - n_rows)
        vectors = self._vectors()
        scores = np.full((len(q), k), -np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        for i, c in enumerate(cand):
            c = c[(c >= 0) & (c < n_rows)]
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
        """float32 (D,) stored descriptor of one row (from the flat store: exact for every kind)."""
        if not 0 <= row < self._size:
            raise IndexError(f"row {row} outside [0, {self._size})")
        return self._index.reconstruct(int(row))

    def memory_bytes(self) -> int:
        """Approximate bytes held by the faiss index plus the id/stamp arrays."""
        if self.on_gpu:
            return self._size * (4 * self.dim + 16)
        total = self._ids.nbytes + self._stamps.nbytes
        for index in (self._index, self._codes):
            if index is not None:
                writer = faiss.VectorIOWriter()
                faiss.write_index(index, writer)
                total += int(writer.data.size())
        return total
