"""A map is the user's data: no writer of the package replaces a map file it did not write in this run.

The rule lives in one place (``clino_vpr_ros.session_map.MapWriter``); the engine (autosave and
``save_map``, hence the node), ``clino-vpr bag --save-map`` and ``clino-vpr merge --out`` use it.
These tests use real files and the real engine; the node over DDS is tested in test_ros_node.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from clino_vpr_ros.engine import EngineConfig, LoopClosureEngine
from clino_vpr_ros.session_map import MapWriter, SessionMap, SessionMapBuilder

pytestmark = pytest.mark.runtime  # also run on the Humble-pinned versions (scripts/test_humble.sh)

DIM = 8


def _map(session: str, n: int) -> SessionMap:
    b = SessionMapBuilder(session, "fp", DIM)
    d = np.eye(DIM, dtype=np.float32)
    for i in range(n):
        b.append(i, float(i), d[i % DIM], np.eye(4), None, None)
    return b.snapshot()


@pytest.fixture
def yesterday(tmp_path: Path) -> tuple[Path, bytes]:
    path = _map("yesterday", 5).save(tmp_path / "yesterday.npz")
    return path, path.read_bytes()


def test_an_existing_map_is_refused_by_name_and_left_intact(yesterday) -> None:
    path, before = yesterday
    with pytest.raises(FileExistsError) as info:
        MapWriter(path, hint="pass --overwrite to replace it")
    text = str(info.value)
    assert str(path) in text and "'yesterday'" in text and "5 keyframes" in text and "--overwrite" in text
    with pytest.raises(FileExistsError, match="not replaced"):
        _map("today", 1).save(path)  # the plain save refuses too
    with pytest.raises(FileExistsError):  # the engine claims its map path at construction
        LoopClosureEngine(EngineConfig(autosave_path=str(path)), DIM, "fp", "today")
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_map_is_refused_too(tmp_path: Path) -> None:
    junk = tmp_path / "notes.npz"
    junk.write_bytes(os.urandom(100))
    with pytest.raises(FileExistsError, match="not a readable clino-vpr session map"):
        MapWriter(junk)
    assert junk.stat().st_size == 100


def test_overwrite_replaces_once_but_never_a_map_this_run_reads(yesterday, tmp_path: Path) -> None:
    path, _ = yesterday
    with pytest.raises(ValueError, match="also a map this run reads"):
        MapWriter(path, overwrite=True, read_only=[tmp_path / "." / "yesterday.npz"])
    link = tmp_path / "link.npz"
    link.symlink_to(path)
    with pytest.raises(ValueError, match="also a map this run reads"):
        MapWriter(link, overwrite=True, read_only=[path])
    writer = MapWriter(path, overwrite=True)
    writer.save(_map("today", 2))
    writer.save(_map("today", 3))
    assert SessionMap.load(path).session_ids == ["today"] and len(SessionMap.load(path)) == 3


def test_a_writer_replaces_its_own_file_only_while_nobody_else_touched_it(tmp_path: Path) -> None:
    path = tmp_path / "today.npz"
    writer = MapWriter(path)
    writer.save(_map("today", 1))
    writer.save(_map("today", 2))  # its own file: replaced
    assert len(SessionMap.load(path)) == 2
    # another process (a second node started with the same map_path) writes its map there
    _map("other", 4).save(path, overwrite=True)
    other = path.read_bytes()
    with pytest.raises(FileExistsError, match="changed since this run wrote it"):
        writer.save(_map("today", 3))
    assert path.read_bytes() == other


def test_a_map_that_appears_after_the_start_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "today.npz"
    writer = MapWriter(path)
    _map("other", 4).save(path)
    with pytest.raises(FileExistsError, match="appeared after this run started"):
        writer.save(_map("today", 1))
    assert SessionMap.load(path).session_ids == ["other"]


def test_engine_autosave_writes_nothing_without_keyframes_and_keeps_priors_read_only(yesterday, tmp_path: Path) -> None:
    path, before = yesterday
    out = tmp_path / "today.npz"
    engine = LoopClosureEngine(EngineConfig(autosave_period_s=1.0, autosave_path=str(out)), DIM, "fp", "today")
    assert engine.maybe_autosave(0.0) is None and engine.maybe_autosave(5.0) is None
    assert not out.exists(), "a session with no keyframe must leave no map behind"
    with pytest.raises(ValueError, match="also where this session's map is written"):
        LoopClosureEngine(EngineConfig(autosave_path=str(out)), DIM, "fp", "today").add_prior_map(
            _with_path(_map("x", 1), out))
    engine.load_prior_map(path)
    with pytest.raises(ValueError, match="also a map this run reads"):
        engine.save_map(path, overwrite=True)
    engine.save_map()  # an explicit save of the empty session writes (the user asked)
    assert len(SessionMap.load(out)) == 0 and path.read_bytes() == before


def _with_path(smap: SessionMap, path: Path) -> SessionMap:
    smap.path = path
    return smap
