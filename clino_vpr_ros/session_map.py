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
``token_offsets``      int64 (N+1,)       keyframe i owns re-ranking tokens [off[i], off[i+1])
``rerank_tokens``      float16 (T,C)      local re-ranking tokens (:mod:`clino_vpr_ros.rerank`),
                                          L2-normalised; C = 0 when the map has none
=====================  =================  ==================================================

``token_offsets`` and ``rerank_tokens`` are absent from maps written before local re-ranking: such
a map loads with no tokens for any keyframe, and the engine does not re-rank candidates among
its keyframes (descriptor order, as before).

The header records ``schema_version``, the encoder ``fingerprint`` and ``descriptor_dim`` (a map
is refused by an engine running another model), ``frame_id``, the local ``feature`` type and the
``sessions`` list (``id`` and ``base_T_camera`` of each). Saving is atomic: the file is written to
a temporary sibling, fsync'ed, then ``os.replace``'d over the target, so a crash mid-save leaves
the previous map intact (a stale ``.<name>.tmp-<pid>`` file may remain and is ignored).

Local features stay on disk: :meth:`SessionMap.load` memory-maps them (read per keyframe with
``pread``), and :class:`SessionMapBuilder` spools a live session's to an unlinked temporary file;
resident memory per keyframe is a few hundred bytes beyond the keyframe index. The re-ranking
tokens (16 x 192 x 2 = 6 kB per keyframe with the shipped model) are kept on disk the same way.

A map is the user's data: :meth:`SessionMap.save` never replaces an existing file unless told to,
and every writer of the package (the node's autosave / ``~/save_map`` / shutdown save, the engine,
``clino-vpr bag --save-map``, ``clino-vpr merge --out``) goes through :class:`MapWriter`, which
only ever replaces the file it wrote itself in this run.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

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
# the local features are ~95 % of a map's bytes (SIFT: ~70 kB per keyframe) and only a few
# keyframes' worth is read per query, so a loaded map keeps them on disk (memory-mapped)
_MAPPED = ("keypoints", "feature_descriptors", "keypoint_depths", "rerank_tokens")
#: arrays a map written before local re-ranking lacks (filled in as "no tokens" on load)
_OPTIONAL = ("token_offsets", "rerank_tokens")


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
    token_offsets: np.ndarray | None = None
    rerank_tokens: np.ndarray | None = None
    path: Path | None = field(default=None, compare=False)
    # the map file as opened by :meth:`load`: memory-mapped arrays are read from it with pread,
    # so reading features does not map file pages into this process (they would count as resident)
    _file: object = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.token_offsets is None:  # a map without re-ranking tokens (older, or built without them)
            self.token_offsets = np.zeros(len(self.ids) + 1, np.int64)
        if self.rerank_tokens is None:
            self.rerank_tokens = np.zeros((0, 0), np.float16)

    def __len__(self) -> int:
        return len(self.ids)

    def tokens(self, row: int) -> np.ndarray | None:
        """float16 (n,C) re-ranking tokens of one keyframe (in-memory copy), or None when it has none."""
        a, b = int(self.token_offsets[row]), int(self.token_offsets[row + 1])
        return None if b == a else self._rows(self.rerank_tokens, a, b)

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
        """Local features of one keyframe (in-memory copies, also when the map is memory-mapped),
        or None when it had no image."""
        a, b = int(self.feature_offsets[row]), int(self.feature_offsets[row + 1])
        h, w = (int(v) for v in self.image_sizes[row])
        if h == 0:
            return None
        return LocalFeatures(self._rows(self.keypoints, a, b), self._rows(self.feature_descriptors, a, b),
                             self._rows(self.keypoint_depths, a, b), (h, w))

    def _rows(self, array: np.ndarray, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of one array as a new in-memory array (pread from the file when memory-mapped)."""
        if self._file is None or not isinstance(array, np.memmap) or not array.flags.c_contiguous:
            return np.array(array[a:b])
        out = np.empty((b - a, *array.shape[1:]), array.dtype)
        if out.nbytes:
            row_bytes = out.nbytes // (b - a)
            got = os.preadv(self._file.fileno(), [memoryview(out).cast("B")], array.offset + a * row_bytes)
            if got != out.nbytes:
                raise OSError(f"{self.path}: read {got} of {out.nbytes} bytes of local features (file truncated?)")
        return out

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
        arrays = {name: getattr(self, name) for name in (*_ARRAYS, *_OPTIONAL)}
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
        another schema version, or a fingerprint/dimension other than the expected one.

        The local feature arrays (``keypoints``, ``feature_descriptors``, ``keypoint_depths``) are
        read-only :class:`numpy.memmap` views of the file (read into memory instead when a member
        is compressed or empty): resident memory does not grow with them, and :meth:`features`
        reads only the keyframes asked for. The maps are replaced atomically (a new inode), so a
        mapping keeps seeing the file as it was loaded.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"session map {path} does not exist")
        with open(path, "rb") as f:
            magic = f.read(4)
        # np.load would try a non-zip file as a pickle and blame allow_pickle: say what the file is not
        if magic != b"PK\x03\x04":
            raise ValueError(f"{path} is not a clino-vpr session map: not a .npz (zip) file "
                             f"(starts with {magic!r}); the file was left untouched")
        # one open file for every read, kept by the map for its features: a map replaced on disk
        # meanwhile (atomically: a new inode) cannot mix two files' arrays
        file = open(path, "rb")  # noqa: SIM115 - lives with the map, or closed below
        try:
            with zipfile.ZipFile(file) as zf:
                mapped = {name: _memmap_member(file, zf, name) for name in _MAPPED}
            file.seek(0)  # np.load reads from the current position
            with np.load(file, allow_pickle=False) as z:
                present = [*_ARRAYS, "header", *(name for name in _OPTIONAL if name in z.files)]
                raw = {name: z[name] if mapped.get(name) is None else mapped[name] for name in present}
            header = json.loads(bytes(raw.pop("header")).decode("utf-8"))
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError) as e:
            file.close()
            raise ValueError(
                f"{path} is not a readable clino-vpr session map ({type(e).__name__}: {e}); "
                "the file was left untouched: restore a backup or delete it to start a new map"
            ) from e
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} is an .npz file but not a clino-vpr session map (no {FORMAT_NAME!r} header)")
        if header.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path} has map schema version {header.get('schema_version')}; this version reads {SCHEMA_VERSION}")
        if not any(isinstance(raw.get(name), np.memmap) for name in _MAPPED):
            file.close()
            file = None
        smap = cls(header=header, path=path, _file=file, **raw)
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
        t = self.rerank_tokens
        if self.token_offsets.shape != (n + 1,) or self.token_offsets.dtype != np.int64 or t.ndim != 2 or t.dtype != np.float16:
            raise ValueError(f"re-ranking tokens are {t.dtype} {t.shape} with offsets {self.token_offsets.dtype} "
                             f"{self.token_offsets.shape}, expected float16 (T,C) and int64 {(n + 1,)}")
        if self.token_offsets[0] != 0 or self.token_offsets[-1] != len(t) or np.any(np.diff(self.token_offsets) < 0):
            raise ValueError("token_offsets must rise from 0 to the number of re-ranking tokens")


def _memmap_member(f: BinaryIO, zf: zipfile.ZipFile, name: str) -> np.memmap | None:
    """Read-only memmap of the ``name.npy`` member of an uncompressed ``.npz`` (what np.savez writes),
    or None when it cannot be mapped (compressed, empty, object dtype): the caller reads it instead."""
    try:
        info = zf.getinfo(f"{name}.npy")
    except KeyError:
        return None
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    f.seek(info.header_offset)
    local = f.read(30)  # zip local file header: its name and extra field lengths vary
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    f.seek(start)
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    offset = f.tell()
    count = int(np.prod(shape, dtype=np.int64))
    if dtype.hasobject or count == 0 or offset - start + count * dtype.itemsize != info.file_size:
        return None
    # the CRC check np.load does while reading: a damaged map is refused, not mapped (chunked
    # file reads, so checking costs I/O but no resident memory)
    f.seek(start)
    crc, left, buf = 0, info.file_size, bytearray(1 << 20)  # one small reused buffer
    while left:
        got = f.readinto(memoryview(buf)[:min(left, len(buf))])
        if not got:
            raise EOFError(f"{name}.npy is truncated")
        crc, left = zlib.crc32(memoryview(buf)[:got], crc), left - got
    if crc != info.CRC:
        raise zipfile.BadZipFile(f"bad CRC-32 for {name}.npy")
    return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


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


class _Spool:
    """An append-only array of fixed-shape rows in an anonymous temporary file.

    Rows are written straight to the file (nothing kept in RAM) and read back with ``pread`` or a
    read-only memmap of the rows written so far (appends never change earlier rows, so such a
    view is a consistent snapshot). The file is unlinked at creation (``tempfile.TemporaryFile``),
    so it disappears when closed or when the process dies: it is a cache, the map is what survives.
    """

    def __init__(self, dtype: np.dtype | type, row_shape: tuple[int, ...], directory: str | None) -> None:
        self.dtype, self.row_shape = np.dtype(dtype), tuple(row_shape)
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self._file = tempfile.TemporaryFile(prefix="clino_vpr_spool_", dir=directory)
        self.rows = 0

    def write(self, at: int, values: np.ndarray) -> None:
        """Write rows ``values`` (k, *row_shape) (cast to the spool's dtype) from row ``at`` on; the
        spool then ends there. ``at`` comes from the caller's committed count, so rows left by a
        write that failed half-way are overwritten, never counted."""
        data = memoryview(np.ascontiguousarray(values, self.dtype).reshape(-1, *self.row_shape)).cast("B")
        offset, fd = at * self.row_bytes, self._file.fileno()
        while len(data):  # a regular file writes all at once; loop anyway, as os.pwrite may not
            done = os.pwrite(fd, data, offset)
            data, offset = data[done:], offset + done
        self.rows = offset // self.row_bytes

    def read(self, a: int, b: int) -> np.ndarray:
        """Rows [a, b) as a new in-memory array."""
        out = np.empty((b - a, *self.row_shape), self.dtype)
        if b > a:
            got = os.preadv(self._file.fileno(), [memoryview(out).cast("B")], a * self.row_bytes)
            if got != out.nbytes:
                raise OSError(f"spool file truncated: read {got} of {out.nbytes} bytes")
        return out

    def view(self, rows: int) -> np.ndarray:
        """Read-only memmap of the first ``rows`` rows (an empty in-memory array when 0)."""
        if rows == 0:
            return np.zeros((0, *self.row_shape), self.dtype)
        return np.memmap(self._file, dtype=self.dtype, mode="r", shape=(rows, *self.row_shape))

    def close(self) -> None:
        self._file.close()


class SessionMapBuilder:
    """Grows a live session's keyframes one at a time (amortised O(1)) and snapshots a :class:`SessionMap`.

    Global descriptors and local features (together ~35-70 kB per keyframe with SIFT) go to
    append-only spool files on disk (:class:`_Spool`, in ``spool_dir``, default: the system temp
    directory, ``$TMPDIR``), so resident memory per keyframe is only its id, stamp, pose,
    intrinsics and offsets (a few hundred bytes); :meth:`features` and :meth:`descriptor` read
    back one keyframe. The spools are deleted when the builder is closed or garbage-collected.
    """

    def __init__(self, session_id: str, fingerprint: str, descriptor_dim: int, frame_id: str = "odom",
                 feature: str = "orb", base_T_camera: np.ndarray | None = None, spool_dir: str | None = None) -> None:
        self.header = {
            "fingerprint": fingerprint, "descriptor_dim": int(descriptor_dim), "frame_id": frame_id,
            "feature": feature, "created_unix": time.time(),
            "sessions": [{"id": session_id, "base_T_camera": None if base_T_camera is None else np.asarray(base_T_camera, float).tolist()}],
        }
        self.descriptor_dim = descriptor_dim
        self._width = feature_width(feature)
        self._rows: list[tuple[int, float, np.ndarray, np.ndarray, tuple[int, int]]] = []
        self._offsets = [0]  # keyframe i owns spooled features [off[i], off[i+1])
        self._desc = _Spool(np.float32, (descriptor_dim,), spool_dir)
        self._keypoints = _Spool(np.float32, (2,), spool_dir)
        self._feature_desc = _Spool(np.uint8, (self._width,), spool_dir)
        self._depths = _Spool(np.float32, (), spool_dir)
        self._spool_dir = spool_dir
        self._tokens: _Spool | None = None  # created with the first tokens (their width C is the model's)
        self._token_offsets = [0]

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, kf_id: int, stamp: float, descriptor: np.ndarray, pose: np.ndarray | None,
               K: np.ndarray | None, features: LocalFeatures | None, tokens: np.ndarray | None = None) -> int:
        """Add one keyframe; returns its row. ValueError (nothing added) for features or re-ranking
        tokens (float16 (n,C)) of another width than the map's."""
        if tokens is not None and len(tokens):
            width = self._tokens.row_shape[0] if self._tokens is not None else None
            if np.ndim(tokens) != 2 or (width is not None and np.shape(tokens)[1] != width):
                raise ValueError(f"re-ranking tokens are {np.shape(tokens)}, this map holds ({width},)-wide tokens")
        if features is not None and len(features) and np.shape(features.descriptors)[1:] != (self._width,):
            raise ValueError(f"local feature descriptors are {np.shape(features.descriptors)}, this map holds "
                             f"{self.header['feature']} ({self._width} bytes each)")
        if features is not None and not len(features) == len(features.descriptors) == len(features.depths):
            raise ValueError(f"local features disagree: {len(features)} keypoints, {len(features.descriptors)} "
                             f"descriptors, {len(features.depths)} depths")
        n = len(self._rows)
        self._desc.write(n, np.asarray(descriptor, np.float32).reshape(1, self.descriptor_dim))
        nan4, nan3 = np.full((4, 4), np.nan), np.full((3, 3), np.nan)
        size = features.image_size if features is not None else (0, 0)
        at = end = self._offsets[-1]
        if features is not None and len(features):
            for spool, values in ((self._keypoints, features.keypoints), (self._feature_desc, features.descriptors),
                                  (self._depths, features.depths)):
                spool.write(at, values)
            end = at + len(features)
        t_end = self._token_offsets[-1]
        if tokens is not None and len(tokens):
            if self._tokens is None:
                self._tokens = _Spool(np.float16, (np.shape(tokens)[1],), self._spool_dir)
            self._tokens.write(t_end, tokens)
            t_end += len(tokens)
        self._token_offsets.append(t_end)
        self._offsets.append(end)  # committed: rows and offsets grow only once every write is done
        self._rows.append((int(kf_id), float(stamp), nan4 if pose is None else np.asarray(pose, float),
                           nan3 if K is None else np.asarray(K, float), (int(size[0]), int(size[1]))))
        return n

    def descriptor(self, row: int) -> np.ndarray:
        """float32 (D,) global descriptor of one row (read from the spool)."""
        return self._desc.read(row, row + 1)[0]

    def descriptors_upto(self, n: int) -> np.ndarray:
        """float32 (n,D) read-only memmap of the first ``n`` rows' descriptors (no copy, no resident
        growth: file pages the kernel can reclaim; later appends do not change it)."""
        return self._desc.view(n)

    def features(self, row: int) -> LocalFeatures | None:
        """Local features of one row (read from the spool), or None when it had no image."""
        h, w = self._rows[row][4]
        if h == 0:
            return None
        a, b = self._offsets[row], self._offsets[row + 1]
        return LocalFeatures(self._keypoints.read(a, b), self._feature_desc.read(a, b), self._depths.read(a, b), (h, w))

    def tokens(self, row: int) -> np.ndarray | None:
        """float16 (n,C) re-ranking tokens of one row (read from the spool), or None when it has none."""
        a, b = self._token_offsets[row], self._token_offsets[row + 1]
        return None if b == a or self._tokens is None else self._tokens.read(a, b)

    def row_info(self, row: int) -> tuple[int, float, np.ndarray | None, np.ndarray | None]:
        """(id, stamp, pose or None, K or None) of one row."""
        kf_id, stamp, pose, K, _ = self._rows[row]
        return kf_id, stamp, None if np.isnan(pose).any() else pose, None if np.isnan(K).any() else K

    def snapshot(self) -> SessionMap:
        """A consistent :class:`SessionMap` of everything appended so far.

        The small arrays are copies; descriptors and local features are read-only memmaps of the
        spools (later appends do not change them), so saving streams them to the map file
        without gathering them in RAM.
        """
        rows = self._rows[:]  # the first n rows: an append racing with this stays out of the snapshot
        n = len(rows)
        offsets = np.asarray(self._offsets[: n + 1], np.int64)
        t_offsets = np.asarray(self._token_offsets[: n + 1], np.int64)
        tokens = self._tokens.view(int(t_offsets[-1])) if self._tokens is not None else np.zeros((0, 0), np.float16)
        return SessionMap(
            header=dict(self.header),
            ids=np.array([r[0] for r in rows], np.int64),
            stamps=np.array([r[1] for r in rows], np.float64),
            poses=np.array([r[2] for r in rows], np.float64).reshape(n, 4, 4),
            descriptors=self._desc.view(n),
            session_index=np.zeros(n, np.int32),
            intrinsics=np.array([r[3] for r in rows], np.float64).reshape(n, 3, 3),
            image_sizes=np.array([r[4] for r in rows], np.int32).reshape(n, 2),
            feature_offsets=offsets,
            keypoints=self._keypoints.view(int(offsets[-1])),
            feature_descriptors=self._feature_desc.view(int(offsets[-1])),
            keypoint_depths=self._depths.view(int(offsets[-1])),
            token_offsets=t_offsets,
            rerank_tokens=tokens,
        )

    def close(self) -> None:
        """Delete the spool files (snapshots taken before stay readable: they map the unlinked files)."""
        for spool in (self._desc, self._keypoints, self._feature_desc, self._depths, self._tokens):
            if spool is not None:
                spool.close()


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
