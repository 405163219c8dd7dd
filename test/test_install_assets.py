"""After a normal (copying, not ``--symlink-install``) install, every command finds the shipped
model, parameters, launch file and the model card's figures through the ament index.

The package is really installed, non-editable, into a temporary prefix (``pip install --prefix``,
which lays out ``share/`` exactly as ``colcon build`` does for an ament_python package: the same
setup.py ``data_files``), then a fresh interpreter with only that prefix on its path and on
``AMENT_PREFIX_PATH`` runs in another folder, as a robot's shell after ``. install/setup.bash``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.runtime

_PROBE = """
import json, sys
from clino_vpr_ros import assets
from clino_vpr_ros.bag import BagRunConfig
found = {rel: str(assets.find_asset(rel)) for rel in sys.argv[1:]}
found["default_model"] = str(assets.default_model_path())
found["bag_model"] = str(BagRunConfig(bag=".", out=".").model)
found["module"] = assets.__file__
try:
    from clino_vpr_ros.ros import harness  # the ROS side, where rclpy is installed
    found["harness_params"] = str(harness.DEFAULT_PARAMS)
except ImportError as e:
    if "rclpy" not in str(e):
        raise
print(json.dumps(found))
"""
ASSETS = ["models/clino-vpr-tiny.onnx", "models/README.md", "models/clino-vpr-tiny.curves.png",
          "config/clino_vpr.yaml", "launch/clino_vpr.launch.py", "package.xml"]


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # build from a copy: pip builds in the source tree (build/, *.egg-info), which stays untouched
    src = tmp_path_factory.mktemp("src") / "clino_vpr_ros"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "install", "log", "out", "runs",
                                                             "*.egg-info", "__pycache__", ".pytest_cache"))
    prefix = tmp_path_factory.mktemp("install")
    before = _installed_here(src.parent)
    # --ignore-installed: without it pip "upgrades" the package by uninstalling the development
    # install from the running environment first (console scripts included), although --prefix
    # points elsewhere
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--ignore-installed", "--no-warn-script-location", "--prefix", str(prefix), str(src)],
                          capture_output=True, text=True, timeout=600, cwd=src.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _installed_here(src.parent) == before, "installing into a prefix changed the running environment's install"
    return prefix


def _installed_here(cwd: Path) -> str:
    """The clino_vpr_ros distribution of the running environment (version and entry points), as pip sees it."""
    probe = ("import importlib.metadata as m\n"
             "try:\n d = m.distribution('clino_vpr_ros'); print(d.version, sorted(e.name for e in d.entry_points))\n"
             "except m.PackageNotFoundError: print('absent')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env=env).stdout.strip()


def test_installed_package_finds_its_files_through_the_ament_index(prefix: Path, tmp_path: Path) -> None:
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    assert (site / "clino_vpr_ros" / "assets.py").is_file(), f"not installed under {site}"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "clino_vpr_ros").is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("CLINO_VPR_MODEL", "PYTHONPATH")}
    env.update(AMENT_PREFIX_PATH=str(prefix), PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-c", _PROBE, *ASSETS], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    share = prefix / "share" / "clino_vpr_ros"
    assert Path(found.pop("module")).is_relative_to(site), "the installed copy must be the one imported"
    for key, path in found.items():
        assert Path(path).is_relative_to(share) and Path(path).is_file(), f"{key}: {path} is not in {share}"
    assert (share / "models" / "clino-vpr-tiny.onnx").read_bytes() == (ROOT / "models" / "clino-vpr-tiny.onnx").read_bytes()
