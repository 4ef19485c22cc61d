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

from moe_policy_ros.core.config import ConfigError
from moe_policy_ros.graph import (
    LAUNCH_ARGUMENTS,
    POLICY_NODE,
    SIM_NODE,
    NodeSpec,
    node_graph,
    read_params_doc,
    rewrite_params,
)
from moe_policy_ros.tools.up import LaunchOptions, node_command, prepare_params

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


def _loops_over(tree: ast.AST, name: str) -> list[ast.For]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.For)
            and isinstance(n.iter, ast.Name) and n.iter.id == name]


def test_launch_arguments_have_real_descriptions() -> None:
    names = [a[0] for a in LAUNCH_ARGUMENTS]
    assert len(names) == len(set(names)), f"duplicate arguments: {names}"
    assert set(names) >= REQUIRED_ARGS | {"sim", "respawn"}, sorted(names)
    for name, default, description in LAUNCH_ARGUMENTS:
        assert isinstance(name, str) and name.isidentifier(), name
        assert isinstance(default, str), f"{name}: default must be a string"
        # a sentence that says what the argument does, not a pointer elsewhere
        assert len(description.split()) >= 6, f"{name}: description {description!r}"
        assert "see " not in description.lower()[:4], f"{name}: {description!r}"
    # `moe-policy-ros up` offers the same knobs (sim as --sim, autostart as --no-autostart)
    from moe_policy_ros.cli import build_parser

    up = build_parser("up")._subparsers._group_actions[0].choices["up"]  # type: ignore[union-attr]
    flags = {s for a in up._actions for s in a.option_strings}
    for name in set(names) - {"params_file", "autostart", "sim"}:
        assert "--" + name.replace("_", "-") in flags, f"up has no --{name}"
    assert {"--sim", "--no-autostart"} <= flags


def test_dual_arm_launch_declares_every_argument_with_a_description() -> None:
    tree = ast.parse(DUAL.read_text(), str(DUAL))
    _function(tree, "generate_launch_description")
    # LAUNCH_ARGUMENTS is declared through one DeclareLaunchArgument in a loop that passes each
    # tuple's description and default; nothing else declares arguments.
    calls = _declare_calls(tree)
    assert len(calls) == 1
    call = calls[0]
    assert _keyword(call, "description") is not None
    assert _keyword(call, "default_value") is not None
    loops = _loops_over(tree, "LAUNCH_ARGUMENTS")
    assert loops and any(call in list(ast.walk(loop)) for loop in loops)
    # every argument declared is read by the OpaqueFunction (and nothing undeclared is)
    names = {a[0] for a in LAUNCH_ARGUMENTS}
    used = {
        n.args[0].value for n in ast.walk(_function(tree, "_nodes"))
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "arg"
        and n.args and isinstance(n.args[0], ast.Constant)
    }
    assert used == names, (
        f"read but not declared: {used - names}; declared but unused: {names - used}"
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
    tree = ast.parse(SIM.read_text(), str(SIM))
    func = _function(tree, "generate_launch_description")
    source = ast.unparse(func)
    # one DeclareLaunchArgument, in the loop over the shared LAUNCH_ARGUMENTS, with their
    # descriptions; sim is skipped (forced true); params_file gets the sim file as default
    calls = _declare_calls(tree)
    assert len(calls) == 1
    (loop,) = _loops_over(func, "LAUNCH_ARGUMENTS")
    assert calls[0] in list(ast.walk(loop))
    assert ast.unparse(_keyword(calls[0], "description") or ast.Constant("")) == "description"
    assert "if name == 'sim':" in ast.unparse(loop) and "continue" in ast.unparse(loop)
    defaults = _local_dict(func, "defaults")
    assert set(defaults) == {"params_file"}
    assert "sim_dual_arm.yaml" in ast.unparse(defaults["params_file"])
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
    doc = _with_realsense()
    specs = node_graph(doc, namespace="robot1")
    spec = specs[1]
    options = LaunchOptions(namespace="robot1", log_level="warn", use_sim_time=True,
                            model="/x/bundle", enclave="/enc")
    params = prepare_params(doc, specs, options, tmp_path)
    cmd = node_command(spec, options, params)
    assert cmd[1:4] == ["-m", spec.module, "--ros-args"]
    joined = " ".join(cmd)
    assert "-r __node:=realsense_top" in joined
    assert "-r __ns:=/robot1" in joined
    # relative camera topic: it follows the namespace like every other topic
    assert "-r ~/color/image_raw:=cameras/top/image_raw" in joined
    assert "-r ~/color/camera_info:=cameras/top/camera_info" in joined
    assert f"--params-file {params}" in joined and "--enclave /enc" in joined
    assert " -p " not in joined, "overrides go in the rewritten parameter file"
    written = yaml.safe_load(params.read_text())
    # overrides: a last section per node, keyed by its full name
    assert list(written)[-2:] == ["/robot1/moe_policy", "/robot1/realsense_top"]
    assert written["/robot1/realsense_top"]["ros__parameters"] == {  # root key moved in
        "source": "software", "width": 128, "height": 96, "camera_name": "top",
        "use_sim_time": True,
    }
    assert written["/robot1/moe_policy"]["ros__parameters"] == {
        "use_sim_time": True, "policy": {"bundle": "/x/bundle"},
    }
    # the file's own sections are kept (root keys moved into the namespace)
    assert written["/**/moe_policy"] == doc["/**/moe_policy"]
    assert "realsense_top" not in written


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


def _node_params(params: Path, name: str, namespace: str) -> dict[str, Any]:
    """The parameters rclpy gives node ``name`` in ``namespace`` from a parameter file."""
    rclpy = pytest.importorskip("rclpy")
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(params)])
    try:
        node = rclpy.create_node(name, namespace=namespace or None, context=ctx)
        values = {k: v.value for k, v in node._parameter_overrides.items()}
        node.destroy_node()
        return values
    finally:
        rclpy.try_shutdown(context=ctx)


@pytest.mark.parametrize("cfg", [DUAL_CFG, SIM_CFG])
def test_shipped_files_give_the_same_parameters_under_any_namespace(cfg: Path) -> None:
    """rclpy's own matching: `/**/moe_policy` reaches /moe_policy and /r1/moe_policy alike."""
    root = _node_params(cfg, POLICY_NODE, "")
    assert root["policy.bundle"] and root["robot.joint_states_topic"] == "joint_states"
    for ns in ("/r1", "/fleet/r2"):
        assert _node_params(cfg, POLICY_NODE, ns) == root, ns
    if cfg == SIM_CFG:
        sim_root = _node_params(cfg, SIM_NODE, "")
        assert sim_root["task"] == "transfer_cube"
        assert _node_params(cfg, SIM_NODE, "/r1") == sim_root


def test_rewritten_file_gives_root_keyed_sections_and_overrides_under_a_namespace(
    tmp_path: Path,
) -> None:
    """A user file keyed `moe_policy:` (rcl: /moe_policy only) still reaches /r1/moe_policy
    after the rewrite that launch and `up` do, and the overrides win over every section."""

    doc = read_params_doc(DUAL_CFG)
    doc["moe_policy"] = doc.pop("/**/moe_policy")
    doc["moe_policy"]["ros__parameters"]["policy"]["inference_rate_hz"] = 7.0
    raw = tmp_path / "raw.yaml"
    raw.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert "policy.bundle" not in _node_params(raw, POLICY_NODE, "/r1"), (
        "premise: rcl does not apply a bare node key under a namespace"
    )
    specs = node_graph(doc, namespace="r1")
    options = LaunchOptions(namespace="r1", model="models/demo_smp")
    out = tmp_path / "run"
    out.mkdir()
    params = prepare_params(doc, specs, options, out)
    got = _node_params(params, POLICY_NODE, "/r1")
    assert got["policy.inference_rate_hz"] == 7.0
    assert got["policy.bundle"] == "models/demo_smp"
    want = {**_node_params(raw, POLICY_NODE, ""), "policy.bundle": "models/demo_smp"}
    assert got == want


def test_rewrite_params_without_overrides_keeps_the_file() -> None:
    doc = read_params_doc(SIM_CFG)
    specs = node_graph(doc)
    assert rewrite_params(doc, specs) == doc
    assert list(rewrite_params(doc, specs, "r1")) == list(doc)
