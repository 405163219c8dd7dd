"""config/clino_vpr.yaml, the launch file and the node's declared parameters agree.

The launch file cannot run here (no launch / launch_ros wheels), so it is checked statically: it
uses only standard launch APIs, declares the arguments a robot integrator needs, and remaps only
topics the node really has. The parameters are declared on a real rclpy node from the YAML.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import rclpy
import yaml
from rclpy.exceptions import InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from clino_vpr_ros.ros import params
from clino_vpr_ros.ros.harness import fresh_domain_id

ROOT = Path(__file__).resolve().parents[1]
YAML_PATH = ROOT / "config" / "clino_vpr.yaml"
LAUNCH_PATH = ROOT / "launch" / "clino_vpr.launch.py"
NODE_TOPICS = {"image", "camera_info", "odom", "depth", "loop_closure_detection"}


def _yaml_params() -> dict:
    doc = yaml.safe_load(YAML_PATH.read_text())
    assert list(doc) == ["/**"], "parameters must apply to the node under any name / namespace"
    return doc["/**"]["ros__parameters"]


def test_yaml_documents_exactly_the_declared_parameters_with_their_defaults() -> None:
    values = _yaml_params()
    assert set(values) == set(params.SPECS), (
        f"only in yaml: {set(values) - set(params.SPECS)}; only declared: {set(params.SPECS) - set(values)}"
    )
    for name, value in values.items():
        spec = params.SPECS[name]
        assert value == spec.default or (value is None and spec.default == []), f"{name}: yaml {value!r} != {spec.default!r}"
        assert params.validate(name, value if value is not None else []) is None
    text = YAML_PATH.read_text()
    for name in values:  # each key carries a comment right above it
        line = text.splitlines().index(next(line for line in text.splitlines() if line.strip().startswith(f"{name}:")))
        assert text.splitlines()[line - 1].strip().startswith("#"), f"{name} has no comment"


def test_launch_file_uses_only_standard_launch_apis_and_declares_the_integration_arguments() -> None:
    tree = ast.parse(LAUNCH_PATH.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
    assert imported <= {"os", "yaml", "launch", "launch_ros", "ament_index_python"}, imported
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    declared = {
        n.args[0].value for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"
    }
    assert {"camera", "params_file", "model_path", "prior_maps", "namespace"} <= declared
    node_call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node")
    kw = {k.arg: k.value for k in node_call.keywords}
    assert {"package", "executable", "namespace", "parameters", "remappings"} <= set(kw)
    assert kw["executable"].value == "clino_vpr_node"
    remapped = {t.elts[0].value for t in kw["remappings"].elts}
    assert remapped <= NODE_TOPICS and "image" in remapped
    # every parameter the launch file overrides is a declared node parameter
    overridden = {
        c.value for n in ast.walk(tree) if isinstance(n, ast.Tuple)
        for c in n.elts if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value in params.SPECS
    }
    assert {"model_path", "session_id", "map_path"} <= overridden


def test_setup_installs_the_console_script_and_launch_and_config_files() -> None:
    setup = (ROOT / "setup.py").read_text()
    assert "clino_vpr_node = clino_vpr_ros.ros.node:main" in setup
    assert 'glob("launch/*.launch.py")' in setup and 'glob("config/*.yaml")' in setup


@pytest.fixture
def ros_node():
    context = rclpy.Context()
    rclpy.init(args=["x", "--ros-args", "--params-file", str(YAML_PATH)], context=context,
               domain_id=fresh_domain_id())
    node = Node("clino_vpr", context=context)
    yield node
    node.destroy_node()
    rclpy.shutdown(context=context)


def test_node_declares_every_yaml_key_with_a_described_validated_descriptor(ros_node: Node) -> None:
    declared = params.declare_parameters(ros_node)
    names = set(ros_node._parameters) - {"use_sim_time", "start_type_description_service"}
    assert names == set(_yaml_params())
    for name in names:
        d = ros_node.describe_parameter(name)
        assert len(d.description) > 20, name
    assert ros_node.describe_parameter("image_qos_depth").integer_range[0].to_value == 100
    assert ros_node.describe_parameter("sync_tolerance_s").floating_point_range[0].to_value == 5.0
    assert declared.prior_maps == [] and declared.providers == []
    assert declared.session_id.startswith("session-") and declared.map_path.endswith(f"{declared.session_id}.npz")
    assert Path(declared.model_path).name == params.DEFAULT_MODEL_NAME


def test_bad_runtime_changes_are_refused_with_the_reason(ros_node: Node) -> None:
    params.declare_parameters(ros_node)
    ros_node.add_on_set_parameters_callback(params.on_set_parameters)
    ok = ros_node.set_parameters([Parameter("sync_tolerance_s", value=0.2)])[0]
    assert ok.successful and ros_node.get_parameter("sync_tolerance_s").value == 0.2
    bad = ros_node.set_parameters([Parameter("sync_tolerance_s", value=50.0)])[0]
    assert not bad.successful and ros_node.get_parameter("sync_tolerance_s").value == 0.2
    read_only = ros_node.set_parameters([Parameter("session_id", value="other")])[0]
    assert not read_only.successful


def test_out_of_range_start_up_values_refuse_to_start() -> None:
    context = rclpy.Context()
    rclpy.init(args=["x", "--ros-args", "--params-file", str(YAML_PATH), "-p", "image_qos_depth:=0",
                     "-p", "engine_preset:=fastest", "-p", "prior_maps:=[/nonexistent/map.npz]"],
               context=context, domain_id=fresh_domain_id())
    node = Node("clino_vpr", context=context)
    try:
        with pytest.raises(InvalidParameterValueException, match="image_qos_depth out of range. Min: 1"):
            params.declare_parameters(node)
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
    # our own validation names every problem at once (rclpy refuses the range before we see it)
    errors = [params.validate("engine_preset", "fastest"), params.validate("prior_maps", ["/nonexistent/map.npz"]),
              params.validate("base_T_camera", [0.0] * 7), params.validate("image_transport", "theora")]
    assert "valid: default" in errors[0] and "not found" in errors[1] and "not a unit quaternion" in errors[2] and "raw" in errors[3]
    assert os.path.basename(params.default_model_path()) == params.DEFAULT_MODEL_NAME
