"""Where the shipped files are: the default model, the default parameters, the launch file.

Looked up without ROS (no ament_index): ``$CLINO_VPR_MODEL`` first, then the installed share folder
(``<prefix>/share/clino_vpr_ros``, where colcon and pip put ``data_files``), then the source checkout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "clino_vpr_ros"
DEFAULT_MODEL = "clino-vpr-tiny.onnx"


def share_dirs() -> list[Path]:
    """Candidate share folders, most specific first: installed prefix, then the source checkout."""
    return [Path(sys.prefix) / "share" / PACKAGE, Path(__file__).resolve().parents[1]]


def find_asset(relative: str) -> Path:
    """First existing ``<share>/<relative>``; FileNotFoundError listing where it looked."""
    tried = [d / relative for d in share_dirs()]
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{relative} not found; looked in {[str(p) for p in tried]}")


def default_model_path() -> Path:
    """The ONNX encoder to use when none is given: ``$CLINO_VPR_MODEL`` or the shipped tiny model."""
    env = os.environ.get("CLINO_VPR_MODEL")
    if env:
        return Path(env)
    try:
        return find_asset(f"models/{DEFAULT_MODEL}")
    except FileNotFoundError:
        return share_dirs()[-1] / "models" / DEFAULT_MODEL  # the runtime then says it is missing
