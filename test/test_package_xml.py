"""package.xml declares what the node imports, with keys that rosdep resolves on Humble, Jazzy and Kilted.

``rosdep install --from-paths src --ignore-src -y`` (README "On a robot") fails on the first key it
does not know, and a dependency imported but not declared fails only on the robot. So: every
module reachable from the node and the launch file (imports followed through clino_vpr_ros, also
the lazy ones inside functions) is either the standard library, a declared ROS package, a
declared Python key, or one of the pip-installed packages the README's robot command installs;
every declared key is in test/known_rosdep_keys.txt (which says where it was checked).
"""

from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Python module -> rosdep key (apt packages of the distros' Ubuntu releases)
PYTHON_KEYS = {"numpy": "python3-numpy", "scipy": "python3-scipy", "cv2": "python3-opencv", "yaml": "python3-yaml",
               "matplotlib": "python3-matplotlib", "tqdm": "python3-tqdm", "PIL": "python3-pil"}
#: modules without a usable rosdep key: pip, by the README's robot command (module -> pip name)
PIP_ONLY = {"onnxruntime": "onnxruntime", "faiss": "faiss", "rosbags": "rosbags", "gtsam": "gtsam",
            "pymilvus": "pymilvus"}  # pymilvus: only with a fleet_uri, imported lazily
#: the training/export side (torch, `pip install .[train]`): reached only lazily, from `clino-vpr eval recall`
#: and `export`, never by the node
TRAINING_SIDE = ("clino_vpr_ros.checkpoint", "clino_vpr_ros.model", "clino_vpr_ros.train", "clino_vpr_ros.export",
                 "clino_vpr_ros.datasets")
#: their third-party modules (imported lazily in functions the node never calls, e.g. eval recall)
TRAINING_MODULES = {"torch", "transformers", "onnx", "safetensors", "pytorch_metric_learning"}
ENTRY_POINTS = [ROOT / "clino_vpr_ros" / "ros" / "node.py", ROOT / "clino_vpr_ros" / "ros" / "harness.py",
                ROOT / "clino_vpr_ros" / "ros" / "demo.py", *sorted((ROOT / "launch").glob("*.py"))]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return names


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def reachable_third_party() -> set[str]:
    """Top-level non-package modules imported by the entry points and every clino_vpr_ros module they reach."""
    todo, seen, external = list(ENTRY_POINTS), set(), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "clino_vpr_ros":
                if name.startswith(TRAINING_SIDE):
                    continue
                found = _module_file(name)
                if found is not None:
                    todo.append(found)
            elif top not in sys.stdlib_module_names and top not in TRAINING_MODULES and top != "__future__":
                external.add(top)
    return external


def declared() -> set[str]:
    root = ET.parse(ROOT / "package.xml").getroot()
    return {e.text.strip() for tag in ("depend", "exec_depend", "build_depend", "test_depend") for e in root.iter(tag)}


def known_keys() -> set[str]:
    lines = (ROOT / "test" / "known_rosdep_keys.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_every_module_the_node_imports_is_declared_or_installed_by_the_readme() -> None:
    keys = declared()
    external = reachable_third_party()
    assert {"rclpy", "rcl_interfaces", "builtin_interfaces", "ament_index_python", "onnxruntime"} <= external
    readme = (ROOT / "README.md").read_text()
    robot = readme[readme.index("## On a robot"):]
    robot = robot[:robot.index("\n## ", 1)]
    for module in sorted(external):
        if module in PIP_ONLY:
            assert f"{PIP_ONLY[module]}" in robot, f"{module}: not in package.xml, so README 'On a robot' must pip-install it"
        else:
            key = PYTHON_KEYS.get(module, module)  # otherwise a ROS package: module name == package name
            assert key in keys, f"{module} is imported but package.xml does not declare {key}"


def test_every_declared_key_resolves_on_humble_jazzy_and_kilted() -> None:
    unknown = declared() - known_keys()
    assert not unknown, f"keys rosdep does not resolve on every supported distro: {sorted(unknown)}"
    assert not any(key.endswith("-pip") for key in declared()), "pip keys install beside the robot's own builds"
