"""Session maps: keyframes of one (or, after a merge, several) sessions in a pickle-free file.

File format (schema version :data:`SCHEMA_VERSION`): one ``.npz`` (uncompressed zip of ``.npy``
arrays, read with ``allow_pickle=False``) holding a UTF-8 JSON header as a uint8 array plus:

=====================  =================  ==================================================
array                  dtype, shape       meaning
=====================  =================  ==================================================
``ids``                int64 (N,)         keyframe id (unique within its session)
``stamps``             float64 (N,)       keyframe time, seconds
``poses``              float64 (N,4,4)    ``frame_T_base`` (odometry or merged frame); NaN = unknown
``descriptors``        float32 (N,D)      L2-normalised global descriptors
``session_index``      int32 (N,)         index into ``header["sessions"]``
``intrinsics``         float64 (N,3,3)    camera matrix of the original image; NaN = unknown
``image_sizes``        int32 (N,2)        (height, width); 0 = no image
``feature_offsets``    int64 (N+1,)       keyframe i owns local features [off[i], off[i+1])
``keypoints``          float32 (M,2)      pixel (x, y)
``feature_descriptors`` uint8 (M,F)      ORB (F=32) / SIFT (F=128) descriptors
``keypoint_depths``    float32 (M,)       metres at each keypoint; NaN = unknown
=====================  =================  ==================================================

The header records ``schema_version``, the encoder ``fingerprint`` and ``descriptor_dim`` (a map
is refused by an engine running another model), ``frame_id``, the local ``feature`` type and the
``sessions`` list (``id`` and ``base_T_camera`` of each). Saving is atomic: the file is written to
a temporary sibling, fsync'ed, then ``os.replace``'d over the target, so a crash mid-save leaves
the previous map intact (a stale ``.<name>.tmp-<pid>`` file may remain and is ignored).

A map is the user's data: :meth:`SessionMap.save` never replaces an existing file unless told to,
and every writer of the package (the node's autosave / ``~/save_map`` / shutdown save, the engine,
``clino-vpr bag --save-map``, ``clino-vpr merge --out``) goes through :class:`MapWriter`, which
only ever replaces the file it wrote itself in this run.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clino_vpr_ros.atomic import atomic_write
from clino_vpr_ros.verify import LocalFeatures, feature_width

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FORMAT_NAME = "clino_vpr_session_map"
_ARRAYS = (
    "ids", "stamps", "poses", "descriptors", "session_index", "intrinsics", "image_sizes",
    "feature_offsets", "keypoints", "feature_descriptors", "keypoint_depths",
)


@dataclass
class SessionMap:
    """Keyframe arrays (see the module docstring for names, dtypes and shapes) plus the header dict.

    Treat a loaded map as read-only; build new ones with :class:`SessionMapBuilder`.
    """

    header: dict
    ids: np.ndarray
    stamps: np.ndarray
    poses: np.ndarray
    descriptors: np.ndarray
    session_index: np.ndarray
    intrinsics: np.ndarray
    image_sizes: np.ndarray
    feature_offsets: np.ndarray
    keypoints: np.ndarray
    feature_descriptors: np.ndarray
    keypoint_depths: np.ndarray
    path: Path | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fingerprint(self) -> str:
        return str(self.header["fingerprint"])

    @property
    def descriptor_dim(self) -> int:
        return int(self.header["descriptor_dim"])

    @property
    def session_ids(self) -> list[str]:
        return [s["id"] for s in self.header["sessions"]]

    @property
    def session_id(self) -> str:
        """The map's own session id (a merged map: its ``merged_session_id``)."""
        return str(self.header.get("merged_session_id") or self.session_ids[0])

    def session_of(self, row: int) -> str:
        return self.session_ids[int(self.session_index[row])]

    def base_T_camera(self, row: int) -> np.ndarray | None:
        value = self.header["sessions"][int(self.session_index[row])].get("base_T_camera")
        return None if value is None else np.asarray(value, dtype=np.float64)

    def pose(self, row: int) -> np.ndarray | None:
        """float64 (4,4) keyframe pose, or None when unknown."""
        p = self.poses[row]
        return None if np.isnan(p).any() else p.copy()

    def intrinsics_of(self, row: int) -> np.ndarray | None:
        K = self.intrinsics[row]
        return None if np.isnan(K).any() else K.copy()

    def features(self, row: int) -> LocalFeatures | None:
        """Local features of one keyframe, or None when it had no image."""
        a, b = int(self.feature_offsets[row]), int(self.feature_offsets[row + 1])
        h, w = (int(v) for v in self.image_sizes[row])
        if h == 0:
            return None
        return LocalFeatures(self.keypoints[a:b], self.feature_descriptors[a:b], self.keypoint_depths[a:b], (h, w))

    def rows_of_session(self, session: str) -> np.ndarray:
        """int64 rows of one session, in time order."""
        if session not in self.session_ids:
            raise ValueError(f"session {session!r} not in this map; it holds {self.session_ids}")
        return np.flatnonzero(self.session_index == self.session_ids.index(session))

    # ---------------------------------------------------------------- file I/O
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Atomically write the map to ``path`` (``.npz``); returns the path.

        An existing ``path`` is refused (FileExistsError, file untouched) unless ``overwrite``;
        writers that save repeatedly use :class:`MapWriter`.
        """
        self.validate()
        header = {**self.header, "schema_version": SCHEMA_VERSION, "format": FORMAT_NAME,
                  "n_keyframes": len(self), "saved_unix": time.time()}
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        t0 = time.perf_counter()
        try:
            out = atomic_write(path, lambda f: np.savez(f, **arrays), replace=overwrite)
        except FileExistsError:
            raise FileExistsError(f"{describe_map_file(Path(path))}; not replaced") from None
        log.info("saved %d keyframes to %s in %.2f s", len(self), out, time.perf_counter() - t0)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, expected_fingerprint: str | None = None, expected_dim: int | None = None) -> SessionMap:
        """Read a map; never writes. Raises FileNotFoundError, or ValueError for a corrupt file,
        another schema version, or a fingerprint/dimension other than the expected one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"session map {path} does not exist")
        with open(path, "rb") as f:
            magic = f.read(4)
        # np.load would try a non-zip file as a pickle and blame allow_pickle: say what the file is not
        if magic != b"PK\x03\x04":
            raise ValueError(f"{path} is not a clino-vpr session map: not a .npz (zip) file "
                             f"(starts with {magic!r}); the file was left untouched")
        try:
            with np.load(path, allow_pickle=False) as z:
                raw = {name: z[name] for name in (*_ARRAYS, "header")}
            header = json.loads(bytes(raw.pop("header")).decode("utf-8"))
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError) as e:
            raise ValueError(
                f"{path} is not a readable clino-vpr session map ({type(e).__name__}: {e}); "
                "the file was left untouched: restore a backup or delete it to start a new map"
            ) from e
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} is an .npz file but not a clino-vpr session map (no {FORMAT_NAME!r} header)")
        if header.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path} has map schema version {header.get('schema_version')}; this version reads {SCHEMA_VERSION}")
        smap = cls(header=header, path=path, **raw)
        try:
            smap.validate()
        except ValueError as e:
            raise ValueError(f"{path} is inconsistent: {e}") from e
        check_compatible(smap, expected_fingerprint, expected_dim, str(path))
        return smap

    def validate(self) -> None:
        """Raise ValueError when array shapes/dtypes disagree with each other or the header."""
        n, d = len(self.ids), int(self.header.get("descriptor_dim", -1))
        m = len(self.keypoints)
        expected = {
            "ids": ((n,), np.int64), "stamps": ((n,), np.float64), "poses": ((n, 4, 4), np.float64),
            "descriptors": ((n, d), np.float32), "session_index": ((n,), np.int32),
            "intrinsics": ((n, 3, 3), np.float64), "image_sizes": ((n, 2), np.int32),
            "feature_offsets": ((n + 1,), np.int64), "keypoints": ((m, 2), np.float32),
            "keypoint_depths": ((m,), np.float32),
        }
        for name, (shape, dtype) in expected.items():
            a = getattr(self, name)
            if a.shape != shape or a.dtype != dtype:
                raise ValueError(f"array {name!r} is {a.dtype} {a.shape}, expected {np.dtype(dtype)} {shape}")
        width = feature_width(str(self.header.get("feature", "orb")))
        if self.feature_descriptors.shape != (m, width) or self.feature_descriptors.dtype != np.uint8:
            raise ValueError(f"feature_descriptors is {self.feature_descriptors.dtype} {self.feature_descriptors.shape}, expected uint8 {(m, width)}")
        if self.feature_offsets[0] != 0 or self.feature_offsets[-1] != m or np.any(np.diff(self.feature_offsets) < 0):
            raise ValueError("feature_offsets must rise from 0 to the number of keypoints")
        if n and (self.session_index.min() < 0 or self.session_index.max() >= len(self.header.get("sessions", []))):
            raise ValueError("session_index points outside the header's sessions list")
        if not np.all(np.isfinite(self.descriptors)):
            raise ValueError("descriptors contain NaN or Inf")


def check_compatible(smap: SessionMap, expected_fingerprint: str | None, expected_dim: int | None, where: str) -> None:
    """Refuse a map produced by another encoder (descriptors of different models are not comparable)."""
    if expected_dim is not None and smap.descriptor_dim != expected_dim:
        raise ValueError(
            f"{where} holds {smap.descriptor_dim}-d descriptors but the encoder produces {expected_dim}-d; "
            "it was built with another model: use that model or rebuild the map"
        )
    if expected_fingerprint is not None and smap.fingerprint != expected_fingerprint:
        raise ValueError(
            f"{where} was built by encoder {smap.fingerprint!r}, the running encoder is {expected_fingerprint!r}; "
            "descriptors of different models are not comparable: use the matching model or rebuild the map"
        )


class SessionMapBuilder:
    """Grows a live session's keyframes one at a time (amortised O(1)) and snapshots a :class:`SessionMap`."""

    def __init__(self, session_id: str, fingerprint: str, descriptor_dim: int, frame_id: str = "odom",
                 feature: str = "orb", base_T_camera: np.ndarray | None = None) -> None:
        self.header = {
            "fingerprint": fingerprint, "descriptor_dim": int(descriptor_dim), "frame_id": frame_id,
            "feature": feature, "created_unix": time.time(),
            "sessions": [{"id": session_id, "base_T_camera": None if base_T_camera is None else np.asarray(base_T_camera, float).tolist()}],
        }
        self.descriptor_dim = descriptor_dim
        self._desc = np.empty((0, descriptor_dim), np.float32)
        self._rows: list[tuple[int, float, np.ndarray, np.ndarray, tuple[int, int]]] = []
        self._features: list[LocalFeatures | None] = []

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, kf_id: int, stamp: float, descriptor: np.ndarray, pose: np.ndarray | None,
               K: np.ndarray | None, features: LocalFeatures | None) -> int:
        """Add one keyframe; returns its row."""
        n = len(self._rows)
        if n == len(self._desc):
            self._desc = np.resize(self._desc, (max(64, 2 * n), self.descriptor_dim))
        self._desc[n] = descriptor
        nan4, nan3 = np.full((4, 4), np.nan), np.full((3, 3), np.nan)
        size = features.image_size if features is not None else (0, 0)
        self._rows.append((int(kf_id), float(stamp), nan4 if pose is None else np.asarray(pose, float),
                           nan3 if K is None else np.asarray(K, float), size))
        self._features.append(features)
        return n

    def descriptor(self, row: int) -> np.ndarray:
        return self._desc[row]

    def descriptors_upto(self, n: int) -> np.ndarray:
        """float32 (n,D) view of the first ``n`` rows' descriptors (no copy; valid until the next append)."""
        return self._desc[:n]

    def features(self, row: int) -> LocalFeatures | None:
        return self._features[row]

    def row_info(self, row: int) -> tuple[int, float, np.ndarray | None, np.ndarray | None]:
        """(id, stamp, pose or None, K or None) of one row."""
        kf_id, stamp, pose, K, _ = self._rows[row]
        return kf_id, stamp, None if np.isnan(pose).any() else pose, None if np.isnan(K).any() else K

    def snapshot(self) -> SessionMap:
        """A consistent :class:`SessionMap` of everything appended so far (copies the arrays)."""
        n = len(self._rows)
        feats = self._features
        counts = [0 if f is None else len(f) for f in feats]
        offsets = np.zeros(n + 1, np.int64)
        offsets[1:] = np.cumsum(counts)
        present = [f for f in feats if f is not None and len(f)]
        width = feature_width(self.header["feature"])
        return SessionMap(
            header=dict(self.header),
            ids=np.array([r[0] for r in self._rows], np.int64),
            stamps=np.array([r[1] for r in self._rows], np.float64),
            poses=np.array([r[2] for r in self._rows], np.float64).reshape(n, 4, 4),
            descriptors=self._desc[:n].copy(),
            session_index=np.zeros(n, np.int32),
            intrinsics=np.array([r[3] for r in self._rows], np.float64).reshape(n, 3, 3),
            image_sizes=np.array([r[4] for r in self._rows], np.int32).reshape(n, 2),
            feature_offsets=offsets,
            keypoints=np.concatenate([f.keypoints for f in present]) if present else np.zeros((0, 2), np.float32),
            feature_descriptors=np.concatenate([f.descriptors for f in present]) if present else np.zeros((0, width), np.uint8),
            keypoint_depths=np.concatenate([f.depths for f in present]) if present else np.zeros(0, np.float32),
        )


def describe_map_file(path: Path) -> str:
    """One line on what ``path`` holds (session, keyframes, save time), read from its header only."""
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode("utf-8"))
        sessions = [s["id"] for s in header["sessions"]]
        saved = header.get("saved_unix")
        when = time.strftime(", saved %Y-%m-%d %H:%M:%S UTC", time.gmtime(saved)) if saved else ""
        return (f"{path} holds the map of session(s) {', '.join(map(repr, sessions))} "
                f"({header.get('n_keyframes', '?')} keyframes{when})")
    except Exception:  # noqa: BLE001 - any unreadable file: say so, it is still not ours to replace
        return f"{path} exists (not a readable clino-vpr session map)"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they point
        return os.path.realpath(a) == os.path.realpath(b)


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """What tells a file we wrote from one written by someone else since; None when absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class MapWriter:
    """The one way a map file is written: owns one path for one run and never replaces a map it
    did not write.

    - At construction: refuses (FileExistsError) a ``path`` that exists, naming the map in it,
      unless ``overwrite`` (an explicit user request, e.g. ``--overwrite``), and refuses
      (ValueError) a ``path`` that is one of ``read_only`` (prior / input maps), even with ``overwrite``.
    - At every :meth:`save`: the file is replaced only if it is still the one this writer wrote
      last (device, inode, size, mtime). If it changed or appeared since (another process, a
      restarted node with the same path), the save is refused with FileExistsError and the file
      is left as it is. The first save creates the file exclusively (a hard link, atomic).

    ``hint``: what the user can do instead, appended to the refusal (e.g. "pass --overwrite").
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False,
                 read_only: Sequence[str | os.PathLike] = (), hint: str = "") -> None:
        self.path = Path(os.path.expanduser(str(path)))
        self.hint = hint
        for other in read_only:
            if _same_file(self.path, Path(os.path.expanduser(str(other)))):
                raise ValueError(self._refusal(f"it is also a map this run reads ({other})"))
        self._written: tuple[int, int, int, int] | None = None
        self._may_replace = _identity(self.path) if overwrite else None  # the file the user let us replace
        if self.path.exists() and not overwrite:
            raise FileExistsError(self._refusal("this run did not write it"))

    def _refusal(self, why: str) -> str:
        held = describe_map_file(self.path) if self.path.exists() else str(self.path)
        return (f"{held}; {why}, so it is not replaced. Write this session's map to a "
                "new path and pass the old map as a prior map to match against it" + (f"; {self.hint}" if self.hint else ""))

    def save(self, smap: SessionMap) -> Path:
        """Write ``smap`` to the owned path (atomic); FileExistsError when the file is not ours."""
        current = _identity(self.path)
        ours = current is not None and current in (self._written, self._may_replace)
        if current is not None and not ours:
            why = "it changed since this run wrote it" if self._written else "it appeared after this run started"
            raise FileExistsError(self._refusal(why))
        out = smap.save(self.path, overwrite=ours)  # not ours and absent: exclusive create
        self._written, self._may_replace = _identity(out), None
        return out

    @property
    def written(self) -> bool:
        """Whether this writer has saved a map yet."""
        return self._written is not None
