"""The large-map index (``kind="pq"``, preset ``large_map``) above its switch-over size: the top-1
keyframe a user gets is the exact search's, for a live session growing one keyframe at a time and
for a prior map saved and loaded again (loading rebuilds the index)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from clino_vpr_ros.bench.descriptors import Town, session
from clino_vpr_ros.engine import LoopClosureEngine, get_engine_config
from clino_vpr_ros.index import IndexConfig, KeyframeIndex
from clino_vpr_ros.session_map import SessionMapBuilder

pytestmark = pytest.mark.runtime  # also run on the Humble-pinned versions (faiss 1.8: scripts/test_humble.sh)

DIM = 512
SIZE = 32_000  # above pq_min_size (20k): trained at 20k, codes extended one keyframe at a time after it


@pytest.fixture(scope="module")
def town_map() -> tuple[np.ndarray, np.ndarray]:
    """(map float32 (SIZE, DIM): 16 sessions of 2000 keyframes over a 6400-place town, each place
    mapped ~5 times; queries float32 (200, DIM): every 4th keyframe of 4 new sessions) with the
    model's descriptor statistics (bench generator)."""
    rng = np.random.default_rng(7)
    town = Town(SIZE // 5, DIM, seed=7)
    x = np.concatenate([session(town, int(rng.integers(0, town.n_places - 2000)), 2000, s % 3, seed=s)
                        for s in range(SIZE // 2000)])
    q = np.concatenate([session(town, int(rng.integers(0, town.n_places - 200)), 200, s % 3, seed=500 + s)[::4]
                        for s in range(4)])
    return x, q


def _exact_top1(x: np.ndarray, q: np.ndarray, n_rows: int) -> np.ndarray:
    return np.argmax(q @ x[:n_rows].T, axis=1)


def test_large_map_index_returns_the_exact_top1_while_the_map_grows_one_keyframe_at_a_time(town_map) -> None:
    x, q = town_map
    cfg = get_engine_config("large_map").index
    assert cfg.kind == "pq" and cfg.pq_min_size < SIZE
    index = KeyframeIndex(DIM, cfg)
    bulk = SIZE - 2000
    index.add(np.arange(bulk), x[:bulk], np.arange(bulk, dtype=np.float64))
    for i in range(bulk, SIZE):  # as the engine adds keyframes
        index.add(i, x[i], float(i))
    assert index._codes is not None and index._codes.ntotal == SIZE  # the shortlist path, not exact search
    stamp = float(SIZE)
    n_rows = index.searchable_rows(stamp, exclude_recent=True)
    assert cfg.pq_min_size <= n_rows <= SIZE - cfg.exclude_recent_keyframes  # the last 30 s are not searched
    found = np.array([index.search(v, 5, query_stamp=stamp, exclude_recent=True)[2][0, 0] for v in q])
    assert np.mean(found == _exact_top1(x, q, n_rows)) >= 0.99
    # the exclusion window holds on the shortlist path: the last keyframe finds none of its recent neighbours
    _, _, rows = index.search(x[-1], 5, query_stamp=float(SIZE - 1), exclude_recent=True)
    assert np.all(rows[0] < index.searchable_rows(float(SIZE - 1), exclude_recent=True))
    # and for a query stamped long before the last keyframe (5000 rows excluded: searched exactly)
    n_old = index.searchable_rows(float(SIZE - 5000), exclude_recent=True)
    found = np.array([index.search(v, 5, query_stamp=float(SIZE - 5000), exclude_recent=True)[2][0, 0] for v in q[:50]])
    np.testing.assert_array_equal(found, _exact_top1(x, q[:50], n_old))


def test_large_map_index_stays_exact_at_top1_for_a_saved_and_loaded_prior_map(town_map, tmp_path: Path) -> None:
    x, q = town_map
    builder = SessionMapBuilder("mapped", "fp", DIM)
    for i, v in enumerate(x):
        builder.append(i, float(i), v, None, None, None)
    path = builder.snapshot().save(tmp_path / "big.npz")
    builder.close()
    engine = LoopClosureEngine(get_engine_config("large_map"), DIM, "fp", "live")
    engine.load_prior_map(path)  # rebuilds the prior map's index from its descriptors
    prior = engine._priors[0].index
    assert prior._codes is not None and prior._codes.ntotal == SIZE
    found = np.array([prior.search(v, 5)[2][0, 0] for v in q])  # prior maps are searched in full
    assert np.mean(found == _exact_top1(x, q, SIZE)) >= 0.99


def test_below_the_switch_over_the_large_map_index_is_exact_and_the_old_kind_name_still_loads(town_map, caplog) -> None:
    x, q = town_map
    with caplog.at_level(logging.WARNING):
        cfg = IndexConfig(kind="hnsw")  # configs written for earlier versions
    assert cfg.kind == "pq" and "now called 'pq'" in caplog.text
    index = KeyframeIndex(DIM, cfg)
    index.add(np.arange(5000), x[:5000], np.arange(5000, dtype=np.float64))
    assert index._codes is None
    scores, _, rows = index.search(q, 3)
    np.testing.assert_array_equal(rows[:, 0], _exact_top1(x, q, 5000))
    np.testing.assert_allclose(scores[:, 0], np.max(q @ x[:5000].T, axis=1), atol=1e-5)
