"""Atomic file writes, for every artifact the package produces (maps, checkpoints, reports, figures).

A reader (or a crash) never sees a half-written file: the bytes go to a temporary sibling, are
fsync'ed, and ``os.replace`` swaps them in; the directory entry is fsync'ed too. With
``replace=False`` the temporary file is hard-linked into place instead, which fails with
FileExistsError when the target exists (an atomic "create, never clobber").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *, replace: bool = True) -> Path:
    """Write a file atomically: temp sibling -> fsync -> os.replace -> fsync of the directory.

    replace=False: never replace an existing ``path`` (FileExistsError, the file left untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic and exclusive: FileExistsError if the target exists
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path
