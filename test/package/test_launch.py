"""The launch files and the node graph they share with `moe-policy-ros up`.

``launch``/``launch_ros`` are not installable outside a ROS distro, so the LaunchDescription
tests skip with the reason there; the ``ast`` checks of the declared arguments and the
``moe_policy_ros.graph.node_graph`` tests always run.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from moe_policy_ros.bringup import _command
from moe_policy_ros.core.config import ConfigError
from moe_policy_ros.graph import (
    POLICY_NODE,
    SIM_NODE,
    NodeSpec,
    node_graph,
    read_params_doc,
)

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
DUAL = LAUNCH / "dual_arm.launch.py"
SIM = LAUNCH / "sim_dual_arm.launch.py"
DUAL_CFG = REPO / "config" / "dual_arm.yaml"
SIM_CFG = REPO / "config" / "sim_dual_arm.yaml"

#: what a user of either launch file can set (sim_dual_arm forwards them to dual_arm)
REQUIRED_ARGS = {
    "namespace", "params_file", "model", "use_sim_time", "log_level", "autostart", "enclave",
}


# ---------------------------------------------------------------- ast (always runs)


def _declare_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and (getattr(n.func, "id", None) or getattr(n.func, "attr", None))
        == "DeclareLaunchArgument"
    ]


def _module_constant(tree: ast.Module, name: str) -> Any:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no module-level {name} = ...")


def _local_dict(func: ast.FunctionDef, name: str) -> dict[str, ast.expr]:
    """``name = {"key": <expr>, ...}`` inside ``func``: its (constant) keys -> value nodes."""
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            assert isinstance(node.value, ast.Dict), f"{name} is not a dict literal"
            keys = [ast.literal_eval(k) for k in node.value.keys if k is not None]
            return dict(zip(keys, node.value.values, strict=True))
    raise AssertionError(f"no {name} = {{...}} in {func.name}")


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"no function {name}")


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_dual_arm_launch_declares_every_argument_with_a_description() -> None:
    tree = ast.parse(DUAL.read_text(), str(DUAL))
    _function(tree, "generate_launch_description")
    arguments = _module_constant(tree, "ARGUMENTS")
    names = [a[0] for a in arguments]
    assert len(names) == len(set(names)), f"duplicate arguments: {names}"
    assert set(names) >= REQUIRED_ARGS | {"sim", "respawn"}, sorted(names)
    for name, default, description in arguments:
        assert isinstance(name, str) and name.isidentifier(), name
        assert isinstance(default, str), f"{name}: default must be a string"
        assert isinstance(description, str) and len(description) > 10, (
            f"{name}: description {description!r}"
        )
    # ARGUMENTS is declared through one DeclareLaunchArgument in a loop that passes each
    # tuple's description and default; nothing else declares arguments.
    calls = _declare_calls(tree)
    assert len(calls) == 1
    call = calls[0]
    assert _keyword(call, "description") is not None
    assert _keyword(call, "default_value") is not None
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For)
             and isinstance(n.iter, ast.Name) and n.iter.id == "ARGUMENTS"]
    assert loops and any(call in list(ast.walk(loop)) for loop in loops)
    # every argument declared is read by the OpaqueFunction (and nothing undeclared is)
    used = {
        n.args[0].value for n in ast.walk(_function(tree, "_nodes"))
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "arg"
        and n.args and isinstance(n.args[0], ast.Constant)
    }
    assert used == set(names), (
        f"read but not declared: {used - set(names)}; declared but unused: {set(names) - used}"
    )


def test_dual_arm_launch_applies_the_camera_transport_profile_to_every_node() -> None:
    """core.transport.dds_environment of the params file, as additional_env of each node."""
    nodes = _function(ast.parse(DUAL.read_text(), str(DUAL)), "_nodes")
    calls = [n for n in ast.walk(nodes) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "dds_environment"]
    assert len(calls) == 1
    common = [n for n in ast.walk(nodes) if isinstance(n, ast.Call)
              and getattr(n.func, "id", None) == "dict" and _keyword(n, "executable")]
    assert len(common) == 1
    env = _keyword(common[0], "additional_env")
    assert isinstance(env, ast.Name) and env.id == "dds_env"


def test_sim_launch_declares_and_forwards_the_dual_arm_arguments() -> None:
    dual_names = {a[0] for a in _module_constant(ast.parse(DUAL.read_text()), "ARGUMENTS")}
    tree = ast.parse(SIM.read_text(), str(SIM))
    func = _function(tree, "generate_launch_description")
    args = _local_dict(func, "args")
    assert set(args) >= REQUIRED_ARGS, sorted(args)
    assert set(args) <= dual_names, f"not declared by dual_arm: {set(args) - dual_names}"
    assert "sim" not in args, "sim_dual_arm forces sim:=true, it must not be an argument"
    assert "sim_dual_arm.yaml" in ast.unparse(args["params_file"])
    for name, default in args.items():
        if name != "params_file":
            assert isinstance(default, ast.Constant) and isinstance(default.value, str), name
    # one DeclareLaunchArgument in a loop over args, each with a description naming it
    calls = _declare_calls(tree)
    assert len(calls) == 1
    desc = _keyword(calls[0], "description")
    assert isinstance(desc, ast.JoinedStr), "description should name the argument"
    assert any(isinstance(v, ast.FormattedValue) for v in desc.values)
    assert _keyword(calls[0], "default_value") is not None
    source = ast.unparse(func)
    assert "forwarded['sim'] = 'true'" in source, "sim_dual_arm must force sim:=true"
    assert "dual_arm.launch.py" in source and "IncludeLaunchDescription" in source


# ---------------------------------------------------------------- node_graph (always runs)


def test_graph_of_dual_arm_yaml_is_the_policy_only() -> None:
    specs = node_graph(read_params_doc(DUAL_CFG))
    assert [s.name for s in specs] == [POLICY_NODE]
    (policy,) = specs
    assert policy.lifecycle and policy.executable == "policy_node"
    assert policy.module == "moe_policy_ros.nodes.policy_node"
    assert policy.remappings == ()
    assert [s.name for s in node_graph(read_params_doc(DUAL_CFG), sim=True)] == [
        POLICY_NODE, SIM_NODE,
    ]


def test_graph_of_sim_dual_arm_yaml_adds_aloha_sim() -> None:
    doc = read_params_doc(SIM_CFG)
    specs = node_graph(doc)
    assert [s.name for s in specs] == [POLICY_NODE, SIM_NODE]
    sim = specs[1]
    assert not sim.lifecycle and sim.executable == "aloha_sim"
    assert sim.module == "moe_policy_ros.nodes.aloha_sim"
    assert [s.name for s in node_graph(doc, sim=False)] == [POLICY_NODE]
    for spec in specs:  # every module the graph names is importable and runnable
        assert importlib.util.find_spec(spec.module) is not None, spec.module


def _with_realsense(section: str = "realsense_top", topic: str | None = None) -> dict[str, Any]:
    doc = read_params_doc(DUAL_CFG)
    if topic is not None:
        doc["/**"]["ros__parameters"]["cameras"]["top"]["topic"] = topic
    doc[section] = {"ros__parameters": {"source": "software", "width": 128, "height": 96}}
    return doc


def test_graph_with_realsense_section_remaps_onto_the_camera_topic() -> None:
    specs = node_graph(_with_realsense(topic="/robot/cameras/top/image_raw"))
    assert [s.name for s in specs] == [POLICY_NODE, "realsense_top"]
    cam = specs[1]
    assert cam.executable == "realsense_camera" and not cam.lifecycle
    assert cam.module == "moe_policy_ros.nodes.realsense_camera"
    assert dict(cam.remappings) == {
        "~/color/image_raw": "/robot/cameras/top/image_raw",
        "~/color/camera_info": "/robot/cameras/top/camera_info",
    }
    assert dict(cam.parameters) == {"camera_name": "top"}


def test_graph_compressed_camera_gets_the_image_transport_layout() -> None:
    doc = _with_realsense(topic="/cameras/top/image_raw/compressed")
    doc["/**"]["ros__parameters"]["cameras"]["top"]["message_type"] = "CompressedImage"
    cam = node_graph(doc)[1]
    assert dict(cam.remappings) == {
        "~/color/image_raw": "/cameras/top/image_raw",
        "~/color/image_raw/compressed": "/cameras/top/image_raw/compressed",
        "~/color/camera_info": "/cameras/top/camera_info",
    }
    assert dict(cam.parameters) == {"camera_name": "top", "compressed": True}


def test_bringup_command_carries_the_remappings_and_node_name(tmp_path: Path) -> None:
    import argparse

    spec = node_graph(_with_realsense())[1]
    params = tmp_path / "p.yaml"
    args = argparse.Namespace(namespace="robot1", log_level="warn", use_sim_time=True,
                              model="/x/bundle", enclave="/enc")
    cmd = _command(spec, args, params)
    assert cmd[1:4] == ["-m", spec.module, "--ros-args"]
    joined = " ".join(cmd)
    assert "-r __node:=realsense_top" in joined
    assert "-r __ns:=/robot1" in joined
    assert "-r ~/color/image_raw:=/cameras/top/image_raw" in joined
    assert "-r ~/color/camera_info:=/cameras/top/camera_info" in joined
    assert "-p realsense_top:camera_name:=top" in joined
    assert "-p realsense_top:use_sim_time:=true" in joined
    assert f"--params-file {params}" in joined and "--enclave /enc" in joined
    assert "policy.bundle" not in joined, "the model override is for the policy node only"
    policy_cmd = " ".join(_command(node_graph(_with_realsense())[0], args, params))
    assert "-p moe_policy:policy.bundle:=/x/bundle" in policy_cmd


def test_graph_realsense_section_without_camera_topic_is_an_error() -> None:
    doc = _with_realsense(section="realsense_wrist")
    with pytest.raises(ConfigError, match=r"realsense_wrist.*cameras\.wrist\.topic"):
        node_graph(doc)
    doc = _with_realsense()
    del doc["/**"]["ros__parameters"]["cameras"]["top"]["topic"]
    with pytest.raises(ConfigError, match=r"cameras\.top\.topic"):
        node_graph(doc)


def test_read_params_doc_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_params_doc(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_params_doc(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping at top level"):
        read_params_doc(bad)


# ---------------------------------------------------------------- launch_ros (skips here)


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _launch_description(path: Path) -> Any:
    # (plain ``import launch`` finds the repository's launch/ folder as a namespace package)
    pytest.importorskip("launch_ros", reason="launch_ros (ROS 2) is not installed")
    pytest.importorskip("launch.actions", reason="launch (ROS 2) is not installed")
    from ament_index_python.packages import PackageNotFoundError

    try:
        return _load(path).generate_launch_description()
    except PackageNotFoundError as err:
        pytest.skip(f"moe_policy_ros is not installed in an ament prefix: {err}")


def _declared(ld: Any) -> dict[str, Any]:
    from launch.actions import DeclareLaunchArgument

    return {a.name: a for a in ld.entities if isinstance(a, DeclareLaunchArgument)}


def test_launch_description_declares_arguments() -> None:
    ld = _launch_description(DUAL)
    declared = _declared(ld)
    assert set(declared) >= REQUIRED_ARGS
    for name, action in declared.items():
        assert action.description and "no description" not in action.description, name
    sim_declared = _declared(_launch_description(SIM))
    assert set(sim_declared) >= REQUIRED_ARGS


@pytest.mark.parametrize(
    ("params", "sim", "expected"),
    [(DUAL_CFG, "false", [POLICY_NODE]), (SIM_CFG, "true", [POLICY_NODE, SIM_NODE])],
)
def test_launch_opaque_function_produces_the_graph(
    params: Path, sim: str, expected: list[str]
) -> None:
    ld = _launch_description(DUAL)
    from launch.actions import OpaqueFunction
    from launch.launch_context import LaunchContext
    from launch_ros.actions import LifecycleNode, Node

    context = LaunchContext()
    for name, action in _declared(ld).items():
        context.launch_configurations[name] = "".join(
            str(s.perform(context)) for s in (action.default_value or [])
        )
    context.launch_configurations["params_file"] = str(params)
    context.launch_configurations["sim"] = sim
    opaque = [a for a in ld.entities if isinstance(a, OpaqueFunction)]
    assert len(opaque) == 1
    nodes = opaque[0].execute(context) or []
    assert all(isinstance(n, Node) for n in nodes)
    specs: list[NodeSpec] = node_graph(read_params_doc(params), sim=sim == "true" or None)
    assert [s.name for s in specs] == expected
    assert len(nodes) == len(expected)
    assert isinstance(nodes[0], LifecycleNode)


def test_override_args_beat_the_node_section_of_the_file() -> None:
    """`up --model` and the launch `model` argument must win over `moe_policy:` in the file."""
    rclpy = pytest.importorskip("rclpy")
    from moe_policy_ros.graph import node_graph, override_args, read_params_doc

    params = REPO / "config" / "sim_dual_arm.yaml"
    spec = node_graph(read_params_doc(params))[0]
    extra = override_args(spec, {"policy.bundle": "models/demo_smp", "autostart": True})
    assert extra == ["-p", "moe_policy:policy.bundle:=models/demo_smp",
                     "-p", "moe_policy:autostart:=true"]
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(params), *extra])
    try:
        node = rclpy.create_node("moe_policy", context=ctx)
        overrides = node._parameter_overrides
        assert overrides["policy.bundle"].value == "models/demo_smp"
        assert overrides["autostart"].value is True
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
