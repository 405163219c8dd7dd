"""Where the shipped files are: the default model, the default parameters, the launch file.

One lookup for everybody (the node, ``clino-vpr demo`` / ``bag`` / ``bench``, the ROS harness):
``$CLINO_VPR_MODEL`` for the model, then the package's share folder in the ament index (a
``colcon build`` install, with or without ``--symlink-install``: ``<prefix>/share/clino_vpr_ros``
of the first prefix on ``AMENT_PREFIX_PATH`` that registers the package), then the share folder
of this Python's prefix (``pip install``), then the source checkout.

The ament index is a file convention: a package is registered under a prefix when the marker file
``<prefix>/share/ament_index/resource_index/packages/clino_vpr_ros`` exists, and its share folder is
``<prefix>/share/clino_vpr_ros`` of the first such prefix on ``AMENT_PREFIX_PATH``. That is read here
directly, as ``ament_index_python.get_package_share_directory`` does, so that the core imports no
ROS package (test/test_core_is_ros_free.py) and the lookup also works where ROS is not installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "clino_vpr_ros"
DEFAULT_MODEL = "clino-vpr-tiny.onnx"


def ament_share_dir() -> Path | None:
    """``<prefix>/share/clino_vpr_ros`` of the first prefix on ``AMENT_PREFIX_PATH`` that registers the package."""
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        if (Path(prefix) / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file():
            return Path(prefix) / "share" / PACKAGE
    return None


def share_dirs() -> list[Path]:
    """Candidate share folders, most specific first: ament index, this Python's prefix, the source checkout."""
    dirs = [ament_share_dir(), Path(sys.prefix) / "share" / PACKAGE, Path(__file__).resolve().parents[1]]
    return [d for d in dirs if d is not None]


def find_asset(relative: str) -> Path:
    """First existing ``<share>/<relative>``; FileNotFoundError listing where it looked."""
    tried = [d / relative for d in share_dirs()]
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{relative} not found; looked in {[str(p) for p in tried]} "
                            "(a colcon install: source its setup.bash so that AMENT_PREFIX_PATH names it)")


def default_model_path() -> Path:
    """The ONNX encoder to use when none is given: ``$CLINO_VPR_MODEL`` or the shipped tiny model."""
    env = os.environ.get("CLINO_VPR_MODEL")
    if env:
        return Path(env)
    try:
        return find_asset(f"models/{DEFAULT_MODEL}")
    except FileNotFoundError:
        return share_dirs()[-1] / "models" / DEFAULT_MODEL  # the runtime then says it is missing
