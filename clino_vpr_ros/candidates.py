"""Loop-closure candidate filtering: absolute + adaptive thresholds, temporal consistency, de-duplication.

Per query keyframe the engine hands over its top-K retrieved keyframes (all sessions). This stage:

1. absolute threshold: cosine similarity >= ``min_score``;
2. adaptive threshold (Kimera-VIO style): the score normalised by the query's similarity to its
   own recent keyframes (``ref``, the best similarity among the last ``adaptive_window``
   keyframes of the live session) must be >= ``min_normalized_score``. A place that looks like
   everything (a blank wall) has a high ``ref`` and needs a stronger match; ``ref`` is floored at
   ``min_reference`` so a sudden view change does not let everything through;
3. temporal consistency (ORB-SLAM3 style): a candidate becomes ready only when ``min_consecutive``
   consecutive query keyframes matched the same session at keyframe positions within
   ``consistency_keyframes`` of each other (a "consistency group");
4. de-duplication: once a closure was published, further ones whose query is within
   ``suppress_s`` seconds of it and whose match is within ``suppress_keyframes`` positions of its
   match (same session) are dropped, so a robot lingering at a place does not flood the back end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateConfig:
    """Retrieval depth and the filters listed in the module docstring."""

    top_k: int = 5
    min_score: float = 0.6
    min_normalized_score: float = 0.8
    adaptive_window: int = 3
    min_reference: float = 0.5
    min_consecutive: int = 3
    consistency_keyframes: int = 4
    max_query_gap: int = 1
    suppress_s: float = 10.0
    suppress_keyframes: int = 5
    max_verifications: int = 2

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.min_consecutive < 1 or self.adaptive_window < 1 or self.max_verifications < 1:
            raise ValueError("top_k, min_consecutive, adaptive_window and max_verifications must be >= 1")
        if self.consistency_keyframes < 0 or self.suppress_keyframes < 0 or self.max_query_gap < 1:
            raise ValueError("consistency_keyframes/suppress_keyframes must be >= 0 and max_query_gap >= 1")
        if not 0.0 < self.min_reference <= 1.0:
            raise ValueError(f"min_reference must be in (0, 1], got {self.min_reference}")


@dataclass(frozen=True)
class Candidate:
    """One retrieved keyframe for a query keyframe.

    ``query_seq``/``match_seq`` are positions in the query's session and in the matched map
    (row numbers, time order); ``source`` says which map: -1 the live session, i >= 0 the i-th
    prior map. ``rerank_matches``: mutual token matches from local re-ranking (-1: not re-ranked).
    """

    query_seq: int
    query_stamp: float
    match_session: str
    match_seq: int
    match_id: int
    match_stamp: float
    score: float
    source: int = -1
    normalized_score: float = 0.0
    consistency: int = 0
    rerank_matches: int = -1


@dataclass
class _Group:
    source: int
    match_session: str
    match_seq: int
    last_query_seq: int
    count: int


@dataclass
class _Published:
    query_stamp: float
    source: int
    match_session: str
    match_seq: int


@dataclass
class CandidateFilter:
    """Stateful filter for one live session; call :meth:`update` once per query keyframe."""

    cfg: CandidateConfig = field(default_factory=CandidateConfig)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._groups: list[_Group] = []
        self._published: list[_Published] = []

    def update(self, query_seq: int, reference_score: float | None, candidates: list[Candidate]) -> list[Candidate]:
        """Feed one query keyframe's retrieved candidates; return those ready for verification.

        Args:
            query_seq: position of the query keyframe in the live session.
            reference_score: the query's best similarity to its own recent keyframes (None at start).
            candidates: retrieved keyframes of this query, any order.

        Returns:
            Candidates that passed both thresholds, are temporally consistent and not duplicates,
            best score first, with ``normalized_score`` and ``consistency`` filled in.
        """
        cfg = self.cfg
        ref = max(cfg.min_reference, reference_score if reference_score is not None else cfg.min_reference)
        passing = []
        for c in candidates:
            normalized = c.score / ref
            if c.score >= cfg.min_score and normalized >= cfg.min_normalized_score:
                passing.append((c, normalized))
        groups = self._extend_groups(query_seq, passing)
        ready = []
        for (c, normalized), count in zip(passing, groups):
            if count >= cfg.min_consecutive and not self._suppressed(c):
                ready.append(
                    Candidate(**{**c.__dict__, "normalized_score": normalized, "consistency": count})
                )
        ready.sort(key=lambda c: -c.score)
        return ready

    def _extend_groups(self, query_seq: int, passing: list[tuple[Candidate, float]]) -> list[int]:
        """Extend consistency groups with this query's candidates; return each candidate's count."""
        cfg = self.cfg
        alive = [g for g in self._groups if 0 < query_seq - g.last_query_seq <= cfg.max_query_gap]
        new_groups: list[_Group] = []
        counts = []
        for c, _ in passing:
            best = 0
            for g in alive:
                if (g.source, g.match_session) == (c.source, c.match_session) and abs(g.match_seq - c.match_seq) <= cfg.consistency_keyframes:
                    best = max(best, g.count)
            count = best + 1
            counts.append(count)
            new_groups.append(_Group(c.source, c.match_session, c.match_seq, query_seq, count))
        # groups not extended this time survive only while within the allowed query gap
        survivors = [g for g in alive if g.last_query_seq != query_seq and query_seq - g.last_query_seq < cfg.max_query_gap]
        self._groups = survivors + new_groups
        return counts

    def _suppressed(self, c: Candidate) -> bool:
        cfg = self.cfg
        return any(
            (p.source, p.match_session) == (c.source, c.match_session)
            and abs(c.query_stamp - p.query_stamp) <= cfg.suppress_s
            and abs(c.match_seq - p.match_seq) <= cfg.suppress_keyframes
            for p in self._published
        )

    def mark_published(self, c: Candidate) -> None:
        """Record a published closure so near-duplicates are suppressed."""
        self._published.append(_Published(c.query_stamp, c.source, c.match_session, c.match_seq))
        horizon = c.query_stamp - self.cfg.suppress_s
        self._published = [p for p in self._published if p.query_stamp >= horizon]
