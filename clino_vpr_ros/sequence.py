"""Sequence scoring of loop-closure candidates (SeqSLAM / SeqNet idea), incremental, no look-ahead.

A single frame cannot tell two look-alike blocks apart; the keyframes that led to it usually can.
For the live query keyframe and every keyframe ``j`` of a map, the sequence score is the mean
cosine similarity of the last ``window`` query keyframes with the map keyframes *aligned* to them:
the query keyframe that lies ``delta`` behind the current one is compared with the map keyframe
that lies ``delta`` behind ``j``. ``delta`` is the travelled distance (odometry; robust to
different speeds) when both sides have poses, the keyframe count otherwise. Only keyframes that
have already arrived are used.

Adaptive acceptance (the map's own score distribution decides, not a fixed cosine):

* ``z``: (best - median) / (1.4826 * MAD) of the sequence scores over the whole map must reach
  ``min_z``; a map where everything looks alike has a wide distribution and needs a stronger best;
* ``margin``: best minus the best score farther than ``exclusion`` (metres or keyframes, same unit
  as the alignment) from it must reach ``min_margin``; an aliased block scores as high as the true
  place, so the margin is small and the candidate waits until the sequence tells them apart;
* ``min_score``: an absolute floor on the mean cosine.

Cost per query keyframe and map: one (window, N) matrix product plus O(window * N log N)
alignment lookups; a 10k-keyframe map costs about a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SequenceConfig:
    """Sequence scoring and the adaptive acceptance of the module docstring.

    enabled False (the default until it is precise enough on every held-out town, see
    models/README.md; the ``sequence`` and ``high_recall`` presets turn it on): single-frame candidates
    (:class:`~clino_vpr_ros.candidates.CandidateFilter`). window: query keyframes per sequence
    (current included); min_length: aligned pairs needed for a score (a shorter history gives none);
    max_align_gap_m / max_align_gap_keyframes: an aligned map keyframe farther than this from the
    wanted position counts as missing; exclusion_m / exclusion_keyframes: runner-up search excludes
    this neighbourhood of the best. backfill: when the current keyframe's match is accepted and
    verified, the earlier keyframes of its window are verified against their aligned map keyframes
    too (each at most once per map, only where that pair's own cosine reaches
    ``backfill_min_cosine``): the first keyframes of a revisit, which the window needs to fill,
    get their closures a few keyframes late instead of none. backfill_keyframes: how many keyframes
    before the current one are back-filled along the same alignment (4: the window's).
    backfill_gap_factor: a back-filled keyframe's map keyframe may lie this many ``max_align_gap_*`` from
    its aligned position (:func:`backfill_rows`; > 1 reaches the first keyframes of a revisit of a map's start).
    follow: a keyframe that gets no closure of its own to a map whose revisit had a published closure at
    most ``backfill_keyframes`` keyframes before is verified against the map keyframes that closure and
    the travelled distance since put it at (the back-filling pair tests, forward; each success leads on):
    a revisit stays found through a stretch where the sequence margin falls short.
    """

    enabled: bool = False
    window: int = 5
    min_length: int = 5
    min_score: float = 0.3
    min_z: float = 2.0
    min_margin: float = 0.15
    max_align_gap_m: float = 4.0
    max_align_gap_keyframes: float = 0.5
    exclusion_m: float = 20.0
    exclusion_keyframes: float = 5.0
    backfill: bool = False
    backfill_min_cosine: float = 0.3
    backfill_keyframes: int = 4
    backfill_gap_factor: float = 1.0
    follow: bool = False

    def __post_init__(self) -> None:
        if self.window < 1 or not 1 <= self.min_length <= self.window:
            raise ValueError("need window >= 1, 1 <= min_length <= window")
        if self.backfill_keyframes < 0:
            raise ValueError(f"backfill_keyframes must be >= 0, got {self.backfill_keyframes}")
        if self.backfill_gap_factor < 1.0:
            raise ValueError(f"backfill_gap_factor must be >= 1, got {self.backfill_gap_factor}")
        if min(self.max_align_gap_m, self.max_align_gap_keyframes, self.exclusion_m, self.exclusion_keyframes) <= 0:
            raise ValueError("alignment gaps and exclusions must be > 0")


@dataclass(frozen=True)
class SequenceMatch:
    """One accepted place in a map: row (position in the map's track), its sequence score, z and margin."""

    row: int
    score: float
    z: float
    margin: float
    length: int


def track_positions(poses: np.ndarray | None, n: int) -> tuple[np.ndarray, bool]:
    """Position along the track of each of ``n`` keyframes: (float64 (n,), metric).

    poses: float64 (n,4,4) in time order (NaN rows: unknown) or None. Cumulative travelled distance
    between known poses (metres, metric True; a keyframe with no pose adds no distance) when any
    two poses are known, else the keyframe index (metric False).
    """
    known = np.zeros(n, bool) if poses is None or n == 0 else np.isfinite(poses).all(axis=(1, 2))
    if known.sum() < 2:
        return np.arange(n, dtype=np.float64), False
    steps = np.zeros(n)
    rows = np.flatnonzero(known)
    steps[rows[1:]] = np.linalg.norm(np.diff(poses[rows, :3, 3], axis=0), axis=1)
    return np.cumsum(steps), True


def _nearest(map_pos: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of the map position nearest to each wanted one (map_pos (N,) non-decreasing, N >= 1)."""
    n = len(map_pos)
    if n == 1:
        return np.zeros(len(wanted), int)
    idx = np.clip(np.searchsorted(map_pos, wanted), 1, n - 1)
    left = np.abs(map_pos[idx - 1] - wanted) <= np.abs(map_pos[idx] - wanted)
    return np.where(left, idx - 1, idx)


def sequence_scores(query: np.ndarray, query_pos: np.ndarray, map_desc: np.ndarray, map_pos: np.ndarray,
                    max_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Sequence score of every map keyframe for the current query keyframe.

    query: float32 (W,D) the last W query keyframes, oldest first (the last row is the current one);
    query_pos (W,) their track positions; map_desc float32 (N,D); map_pos (N,) non-decreasing track
    positions, same unit. Returns (scores float64 (N,): mean aligned cosine, -1 where no pair was
    valid; lengths int (N,): aligned pairs used).
    """
    n = len(map_desc)
    if n == 0:
        return np.zeros(0), np.zeros(0, int)
    sim = np.asarray(query, np.float32) @ np.asarray(map_desc, np.float32).T  # (W, N)
    total = np.zeros(n)
    count = np.zeros(n, int)
    for k in range(len(query)):
        wanted = map_pos - (query_pos[-1] - query_pos[k])  # the map position aligned with query keyframe k, for every j
        idx = _nearest(map_pos, wanted)
        ok = (np.abs(map_pos[idx] - wanted) <= max_gap) & (idx <= np.arange(n))
        total += np.where(ok, sim[k, idx], 0.0)
        count += ok
    scores = np.where(count > 0, total / np.maximum(count, 1), -1.0)
    return scores, count


def bracketing_rows(map_pos: np.ndarray, wanted: np.ndarray, max_gap: float) -> np.ndarray:
    """The two map keyframes either side of each wanted track position, nearest first, each at most
    ``max_gap`` from it: int (W, 2), -1 where none (map_pos (N,) non-decreasing, N >= 1; wanted (W,))."""
    wanted = np.asarray(wanted, np.float64)
    hi = np.clip(np.searchsorted(map_pos, wanted), 0, len(map_pos) - 1)  # first at or after, else the last
    pair = np.stack([np.maximum(hi - 1, 0), hi], axis=1)
    dist = np.abs(map_pos[pair] - wanted[:, None])
    order = np.argsort(dist, axis=1, kind="stable")
    pair, dist = np.take_along_axis(pair, order, 1), np.take_along_axis(dist, order, 1)
    pair[:, 1] = np.where(pair[:, 1] == pair[:, 0], -1, pair[:, 1])
    return np.where((dist <= max_gap) & (pair >= 0), pair, -1)


def backfill_rows(j: int, query_pos: np.ndarray, map_pos: np.ndarray, max_gap: float) -> np.ndarray:
    """The map keyframes to back-fill each query keyframe of the window with when the current one
    matches map keyframe ``j``: int (W, 2), the two map keyframes either side of the aligned position
    (nearest first, :func:`bracketing_rows`), none past ``j``; -1 where none.

    The second one is tried when the first fails (at a turn the nearest can be the view round the
    corner); a position just before the map's start gets the map's first keyframe while within ``max_gap``.
    """
    rows = bracketing_rows(map_pos, map_pos[j] - (query_pos[-1] - np.asarray(query_pos, np.float64)), max_gap)
    return np.where(rows <= j, rows, -1)


def best_match(scores: np.ndarray, lengths: np.ndarray, map_pos: np.ndarray, cfg: SequenceConfig,
               exclusion: float) -> SequenceMatch | None:
    """The accepted place of a map, or None (see the module docstring's tests).

    scores/lengths from :func:`sequence_scores` restricted to the searchable rows; map_pos their
    track positions; exclusion in the same unit.
    """
    valid = lengths >= cfg.min_length
    if valid.sum() < 3:
        return None
    s = np.where(valid, scores, -np.inf)
    pool = scores[valid]
    median = float(np.median(pool))
    spread = max(float(np.median(np.abs(pool - median))) * 1.4826, 1e-3)
    j = int(np.argmax(s))
    far = s[np.abs(map_pos - map_pos[j]) > exclusion]
    if not np.isfinite(far).any():  # nothing to compare with: the map is still too short to tell
        return None
    runner = float(np.max(far))
    best = float(s[j])
    z, margin = (best - median) / spread, best - runner
    if best >= cfg.min_score and z >= cfg.min_z and margin >= cfg.min_margin:
        return SequenceMatch(j, best, z, margin, int(lengths[j]))
    return None
