"""The core must never import rclpy or any ROS message package, nor torch on the robot runtime path.

"The core" is every module of clino_vpr_ros outside clino_vpr_ros/ros/ (the ROS side, including the
node benchmark ``clino_vpr_ros/ros/bench_node.py``). Every import statement counts, also those
inside functions: a lazy import of the ROS harness still makes a module need ROS.
"""

import ast
import subprocess
import sys
from pathlib import Path

import clino_vpr_ros

PACKAGE_DIR = Path(clino_vpr_ros.__file__).parent
ROS_ROOTS = {"rclpy", "rosidl_runtime_py", "ament_index_python", "launch", "launch_ros", "tf2_ros"}


def _core_files() -> list[Path]:
    return [p for p in PACKAGE_DIR.rglob("*.py") if "ros" not in p.relative_to(PACKAGE_DIR).parts[:-1]]


def _imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _is_ros(module: str) -> bool:
    root = module.split(".")[0]
    return (root in ROS_ROOTS or root.endswith("_msgs") or root.endswith("_srvs")
            or module == "clino_vpr_ros.ros" or module.startswith("clino_vpr_ros.ros."))


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from clino_vpr_ros.ros.harness import NodeClient\n    import rclpy\n")
    assert {m for m in _imported_modules(lazy) if _is_ros(m)} == {
        "clino_vpr_ros.ros.harness", "clino_vpr_ros.ros.harness.NodeClient", "rclpy"}


def test_no_core_module_imports_ros() -> None:
    offenders = {}
    for path in _core_files():
        bad = {m for m in _imported_modules(path) if _is_ros(m)}
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
