"""The core must never import rclpy or any ROS message package, nor torch on the robot runtime path."""

import ast
import subprocess
import sys
from pathlib import Path

import clino_vpr_ros

PACKAGE_DIR = Path(clino_vpr_ros.__file__).parent
ROS_ROOTS = {"rclpy", "rosidl_runtime_py", "ament_index_python", "launch", "launch_ros", "tf2_ros"}


def _core_files() -> list[Path]:
    return [p for p in PACKAGE_DIR.rglob("*.py") if "ros" not in p.relative_to(PACKAGE_DIR).parts[:-1]]


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_core_module_imports_ros() -> None:
    offenders = {}
    for path in _core_files():
        bad = {r for r in _imported_roots(path) if r in ROS_ROOTS or r.endswith("_msgs") or r.endswith("_srvs")}
        if bad:
            offenders[str(path.relative_to(PACKAGE_DIR))] = sorted(bad)
    assert not offenders, f"ROS imports in the core: {offenders}"


def test_runtime_path_imports_neither_ros_nor_torch() -> None:
    """A robot that only runs the node must not need torch: importing the runtime chain must not load it."""
    code = (
        "import sys, importlib\n"
        "for m in ['clino_vpr_ros.runtime', 'clino_vpr_ros.engine', 'clino_vpr_ros.pipeline', 'clino_vpr_ros.session_map']:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'rclpy', 'transformers'} or m.endswith('_msgs'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"runtime imports pulled in: {out.stdout.strip()}"
