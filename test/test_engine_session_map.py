"""Session maps: round trip, refusal of other models and corrupt files, crash safety of saves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from _engine_scene import BASE_T_CAMERA, Room, base_pose
from clino_vpr_ros.engine import EngineConfig, LoopClosureEngine
from clino_vpr_ros.session_map import SessionMap, SessionMapBuilder
from clino_vpr_ros.verify import LocalFeatures, VerifyConfig, extract_features, to_gray

pytestmark = pytest.mark.runtime  # also run on the Humble-pinned versions (scripts/test_humble.sh)


def _small_map(session: str = "s1", fingerprint: str = "fp-a", dim: int = 16, n: int = 5, with_features: bool = True) -> SessionMap:
    rng = np.random.default_rng(0)
    b = SessionMapBuilder(session, fingerprint, dim, base_T_camera=BASE_T_CAMERA, feature="sift")
    room = Room(0, width=160, height_px=120) if with_features else None
    for i in range(n):
        d = rng.standard_normal(dim).astype(np.float32)
        pose = base_pose(i, 0, 0)
        feats = None
        if room is not None and i % 2 == 0:  # odd keyframes have no image: no features
            rgb, depth = room.render(pose)
            feats = extract_features(to_gray(rgb), VerifyConfig(), depth)
        b.append(10 + i, 100.0 + i, d / np.linalg.norm(d), pose if i != 3 else None, room.K if room and feats else None, feats)
    return b.snapshot()


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    smap = _small_map()
    path = smap.save(tmp_path / "m.npz")
    back = SessionMap.load(path, expected_fingerprint="fp-a", expected_dim=16)
    assert back.session_ids == ["s1"] and back.fingerprint == "fp-a" and back.descriptor_dim == 16
    np.testing.assert_array_equal(back.ids, smap.ids)
    np.testing.assert_array_equal(back.descriptors, smap.descriptors)
    assert back.pose(3) is None and np.allclose(back.pose(2), smap.pose(2))
    assert back.features(1) is None and back.intrinsics_of(1) is None
    f0, g0 = smap.features(0), back.features(0)
    assert len(g0) > 50 and np.array_equal(f0.descriptors, g0.descriptors) and np.isfinite(g0.depths).any()
    np.testing.assert_allclose(back.base_T_camera(0), BASE_T_CAMERA)
    with np.load(path, allow_pickle=False) as z:  # plain arrays, no pickled objects
        assert all(z[k].dtype != object for k in z.files)


def test_map_from_another_model_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = _small_map().save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="encoder 'fp-a'.*'fp-b'"):
        SessionMap.load(path, expected_fingerprint="fp-b")
    with pytest.raises(ValueError, match="16-d descriptors but the encoder produces 512-d"):
        SessionMap.load(path, expected_dim=512)
    engine = LoopClosureEngine(EngineConfig(), 16, "fp-b", "s2")
    with pytest.raises(ValueError, match="not comparable"):
        engine.load_prior_map(path)
    assert engine.stats()["prior_maps"] == 0


def test_corrupt_and_missing_files_give_clear_errors_and_are_not_touched(tmp_path: Path) -> None:
    path = _small_map().save(tmp_path / "m.npz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64  # damage the middle of the archive
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="not a readable clino-vpr session map.*left untouched"):
        SessionMap.load(path)
    engine = LoopClosureEngine(EngineConfig(), 16, "fp-a", "s2")
    with pytest.raises(ValueError, match="not a readable"):
        engine.load_prior_map(path)
    assert path.read_bytes() == before
    (tmp_path / "text.npz").write_text("hello")
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    for name in ("text.npz", "noise.npz"):  # says what the file is not (numpy would blame allow_pickle)
        with pytest.raises(ValueError, match=r"is not a clino-vpr session map: not a \.npz \(zip\) file") as info:
            SessionMap.load(tmp_path / name)
        assert "pickle" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SessionMap.load(tmp_path / "missing.npz")


def test_exception_in_the_middle_of_a_save_leaves_the_old_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _small_map(n=3).save(tmp_path / "m.npz")
    good = path.read_bytes()
    new = _small_map(n=5, with_features=False)
    real_savez = np.savez

    def failing_savez(f, **arrays):  # write part of the archive, then fail like a full disk
        f.write(b"PK\x03\x04 partial archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="No space"):
        new.save(path, overwrite=True)
    monkeypatch.setattr(np, "savez", real_savez)
    assert path.read_bytes() == good and len(SessionMap.load(path)) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temp file left behind


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from clino_vpr_ros.session_map import SessionMapBuilder
    n, dim = 20000, 512
    b = SessionMapBuilder("big", "fp-a", dim)
    d = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    for i in range(n):
        b.append(i, float(i), d[i], np.eye(4), None, None)
    smap = b.snapshot()
    real_open = open
    class KillAfter:  # a file object that SIGKILLs this process once ~8 MB are on disk
        def __init__(self, f): self.f, self.n = f, 0
        def write(self, data):
            self.n += len(data)
            if self.n > 8_000_000:
                self.f.flush(); os.fsync(self.f.fileno())
                print("KILLING", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return self.f.write(data)
        def __getattr__(self, name): return getattr(self.f, name)
        def __enter__(self): return self
        def __exit__(self, *a): return self.f.__exit__(*a)
    import builtins
    builtins.open = lambda p, mode="r", *a, **k: KillAfter(real_open(p, mode, *a, **k)) if "w" in mode else real_open(p, mode, *a, **k)
    smap.save(sys.argv[1], overwrite=True)
    """
)


def test_sigkill_during_a_save_leaves_the_previous_map_loadable(tmp_path: Path) -> None:
    path = _small_map(n=3, with_features=False).save(tmp_path / "m.npz")
    good = path.read_bytes()
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "KILLING" in proc.stdout
    partial = [p for p in tmp_path.iterdir() if p.name != "m.npz"]
    assert partial and partial[0].stat().st_size > 1_000_000  # the half-written temp file
    with pytest.raises(ValueError, match="not a readable"):
        SessionMap.load(partial[0])
    assert path.read_bytes() == good
    assert len(SessionMap.load(path, expected_fingerprint="fp-a")) == 3
    # an explicit overwrite replaces the map normally despite the stale temp file
    engine = LoopClosureEngine(EngineConfig(), 16, "fp-a", "s1")
    engine.save_map(path, overwrite=True)
    assert len(SessionMap.load(path)) == 0
    os.remove(partial[0])


def _random_features(rng: np.random.Generator, n: int, width: int = 128) -> LocalFeatures:
    depths = rng.uniform(0.5, 9.0, n).astype(np.float32)
    depths[::3] = np.nan
    return LocalFeatures(rng.uniform(0, 640, (n, 2)).astype(np.float32),
                         rng.integers(0, 256, (n, width), dtype=np.uint8), depths, (480, 640))


def _same_features(a: LocalFeatures | None, b: LocalFeatures | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.image_size == b.image_size and np.array_equal(a.keypoints, b.keypoints)
            and np.array_equal(a.descriptors, b.descriptors) and np.array_equal(a.depths, b.depths, equal_nan=True))


def test_loaded_map_keeps_local_features_on_disk_and_answers_as_before(tmp_path: Path) -> None:
    smap = _small_map(n=7)
    path = smap.save(tmp_path / "m.npz")
    back = SessionMap.load(path)
    for name in ("keypoints", "feature_descriptors", "keypoint_depths"):  # memory-mapped, not read
        assert isinstance(getattr(back, name), np.memmap), name
        np.testing.assert_array_equal(getattr(back, name), getattr(smap, name))
    for row in range(len(smap)):
        got = back.features(row)
        assert _same_features(got, smap.features(row)), row
        if got is not None:  # the verifier gets ordinary arrays, not views of the file
            assert not isinstance(got.keypoints, np.memmap) and got.descriptors.flags.writeable
    # a map written compressed (by hand, or another tool) still loads, read into memory
    with np.load(path, allow_pickle=False) as z:
        np.savez_compressed(tmp_path / "c.npz", **{k: z[k] for k in z.files})
    comp = SessionMap.load(tmp_path / "c.npz")
    assert not isinstance(comp.keypoints, np.memmap)
    assert all(_same_features(comp.features(r), smap.features(r)) for r in range(len(smap)))


def test_live_session_spools_features_and_saves_a_map_that_loads_back_identically(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    spool = tmp_path / "spool"
    spool.mkdir()
    b = SessionMapBuilder("live", "fp-a", 32, feature="sift", spool_dir=str(spool))
    kept_desc, kept_feats = [], []
    for i in range(400):
        d = rng.standard_normal(32).astype(np.float32)
        f = None if i % 7 == 3 else _random_features(rng, int(rng.integers(0, 300)))
        b.append(i, float(i), d, base_pose(i, 0, 0), None, f)
        kept_desc.append(d)
        kept_feats.append(f)
    with pytest.raises(ValueError, match="sift"):  # ORB features into a SIFT map: refused, nothing added
        b.append(400, 400.0, kept_desc[0], None, None, _random_features(rng, 5, width=32))
    assert len(b) == 400
    for row in (0, 1, 3, 199, 399):
        assert _same_features(b.features(row), kept_feats[row]), row
        np.testing.assert_array_equal(b.descriptor(row), kept_desc[row])

    snap = b.snapshot()
    assert isinstance(snap.keypoints, np.memmap)  # streamed from the spool, not gathered in RAM
    b.append(400, 400.0, kept_desc[0], None, None, _random_features(rng, 50))  # does not change the snapshot
    assert len(snap) == 400 and len(snap.keypoints) == snap.feature_offsets[-1]
    path = snap.save(tmp_path / "live.npz")
    back = SessionMap.load(path, expected_fingerprint="fp-a", expected_dim=32)
    np.testing.assert_array_equal(back.descriptors, np.stack(kept_desc))
    assert all(_same_features(back.features(r), kept_feats[r]) for r in range(400))
    b.close()
    assert list(spool.iterdir()) == []  # the spool leaves nothing behind
    assert _same_features(snap.features(10), kept_feats[10])  # a snapshot taken before stays readable
