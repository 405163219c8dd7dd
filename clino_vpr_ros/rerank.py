"""Local re-ranking from the encoder's own patch tokens (the EffoVPR idea), torch-free.

EffoVPR (Tzachor et al., 2024) re-ranks retrieval candidates with features the ViT already computes:
the value vectors of an intermediate block's patch tokens. The encoder exports them with the CLS
token's attention to each patch in that block (``runtime.LOCAL_OUTPUT_NAMES``); here:

1. :func:`select_tokens` keeps the patches the CLS token attends to (attention >= ``min_attention``
   times the uniform share 1/P, threshold T1; at least the most attended one), at most
   ``max_tokens`` of them, highest attention first, L2-normalised, as float16: at most a few
   kilobytes per keyframe, stored on disk in the session map;
2. :func:`mutual_matches` counts the mutual nearest neighbours between the query's and a
   candidate's tokens whose cosine similarity reaches ``min_similarity`` (T2);
3. :func:`rerank` orders the top ``top_k`` (K) candidates by that count, the descriptor score
   breaking ties (EffoVPR's order, ``match_weight`` 0), or by descriptor score + ``match_weight``
   x count (a fused order); geometric verification then runs on the re-ranked best.

Cost: one (n, m) matrix product per candidate (n, m <= ``max_tokens``, C = the backbone width).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RerankConfig:
    """Local re-ranking (module docstring); thresholds chosen on validation towns 961/962 (models/README.md).

    enabled: off by default (opt-in; see the model card for what it did on validation and held-out towns).
    top_k: K, candidates re-ranked per query keyframe (single-frame retrieval) or around the best
    sequence match (sequence scoring). min_attention: T1, in units of the uniform attention 1/P.
    max_tokens: tokens kept per keyframe (storage: max_tokens * C * 2 bytes).
    min_similarity: T2, cosine of two value vectors for a mutual match to count.
    match_weight: 0 orders by the count alone (EffoVPR); w > 0 by descriptor cosine + w * count.
    """

    enabled: bool = False
    top_k: int = 5
    min_attention: float = 4.0
    max_tokens: int = 16
    min_similarity: float = 0.6
    match_weight: float = 0.02

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.max_tokens < 1:
            raise ValueError("rerank top_k and max_tokens must be >= 1")
        if self.min_attention < 0 or self.match_weight < 0 or not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError("rerank min_attention and match_weight must be >= 0 and min_similarity in [-1, 1]")


def select_tokens(values: np.ndarray, attention: np.ndarray, cfg: RerankConfig) -> np.ndarray:
    """The re-ranking tokens of one image.

    Args:
        values: float32 (P,C) value vectors of the patch tokens (``local_values[i]``).
        attention: float32 (P,) the CLS token's attention to each patch (``local_attention[i]``).
    Returns:
        float16 (n,C), 1 <= n <= ``cfg.max_tokens``, L2-normalised rows, highest attention first
        (the most attended patch is kept even below the threshold: a keyframe with tokens always
        has some, so "no tokens" means "no local outputs", e.g. a map of an older model).
    Raises:
        ValueError: shapes that disagree.
    """
    values, attention = np.asarray(values, np.float32), np.asarray(attention, np.float32)
    if values.ndim != 2 or attention.shape != (values.shape[0],):
        raise ValueError(f"local values {values.shape} and attention {attention.shape} disagree (expected (P,C), (P,))")
    threshold = cfg.min_attention / max(len(attention), 1)
    order = np.argsort(-attention, kind="stable")
    keep = order[: max(1, int(np.count_nonzero(attention >= threshold)))][: cfg.max_tokens]
    picked = values[keep]
    norms = np.linalg.norm(picked, axis=1, keepdims=True)
    return (picked / np.maximum(norms, 1e-12)).astype(np.float16)


def mutual_matches(a: np.ndarray, b: np.ndarray, min_similarity: float) -> int:
    """Number of mutual nearest neighbours between token sets ``a`` (n,C) and ``b`` (m,C)
    (L2-normalised, any float dtype) whose cosine similarity is >= ``min_similarity``."""
    if len(a) == 0 or len(b) == 0:
        return 0
    sim = np.asarray(a, np.float32) @ np.asarray(b, np.float32).T
    best_b = np.argmax(sim, axis=1)  # for each token of a, its nearest in b
    best_a = np.argmax(sim, axis=0)
    rows = np.arange(len(a))
    mutual = best_a[best_b] == rows
    return int(np.count_nonzero(mutual & (sim[rows, best_b] >= min_similarity)))


def rerank(query: np.ndarray, candidates: Sequence[np.ndarray], scores: Sequence[float], min_similarity: float,
           match_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Order candidates by mutual-match count with ``query``, the descriptor score breaking ties
    (``match_weight`` 0), or by score + ``match_weight`` * count.

    Args:
        query: (n,C) tokens of the query keyframe.
        candidates: one (m_i,C) token array per candidate.
        scores: the candidates' descriptor similarities (same order).
    Returns:
        (order int64 (N,): indices into ``candidates``, best first; counts int64 (N,) in input order).
    """
    counts = np.array([mutual_matches(query, c, min_similarity) for c in candidates], np.int64)
    scores = np.asarray(scores, np.float64)
    if not len(counts):
        return np.zeros(0, np.int64), counts
    if match_weight > 0:
        return np.argsort(-(scores + match_weight * counts), kind="stable").astype(np.int64), counts
    return np.lexsort((-scores, -counts)).astype(np.int64), counts
