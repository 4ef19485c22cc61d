"""Bring up the MoE policy node (and RealSense cameras) for a dual-arm robot.

    ros2 launch moe_policy_ros dual_arm.launch.py params_file:=/path/params.yaml

The node graph comes from the parameter file through ``moe_policy_ros.graph.node_graph``, the
same function ``moe-policy-ros up`` uses, so both start the same nodes from the same file:
the ``moe_policy`` lifecycle node always, ``aloha_sim`` when ``sim`` is true or the file has
an ``aloha_sim`` section (see ``sim_dual_arm.launch.py``), and one ``realsense_camera`` per
``realsense_<camera>`` section. The nodes read the file as ``graph.rewrite_params`` rewrites
it (node keys moved into ``namespace``, the ``model``/``use_sim_time``/``autostart``
overrides in a last section per node), again as ``moe-policy-ros up`` does.
"""

from __future__ import annotations

from pathlib import Path

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchContext, LaunchDescription
from moe_policy_ros.core.transport import dds_environment
from moe_policy_ros.graph import (
    LAUNCH_ARGUMENTS,
    node_graph,
    read_params_doc,
    rewrite_params,
    write_params,
)


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _nodes(context: LaunchContext, default_params: str) -> list[Node]:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    params_file = arg("params_file") or default_params
    namespace = arg("namespace")
    doc = read_params_doc(params_file)
    specs = node_graph(doc, sim=_truthy(arg("sim")) or None, namespace=namespace)
    overrides: dict[str, dict[str, object]] = {}
    for spec in specs:
        values: dict[str, object] = {"use_sim_time": _truthy(arg("use_sim_time"))}
        if spec.lifecycle:
            values["autostart"] = _truthy(arg("autostart"))
            if arg("model"):
                values["policy.bundle"] = arg("model")
        overrides[spec.name] = values
    params = str(write_params(rewrite_params(doc, specs, namespace, overrides)))
    # Camera transport profile (shared-memory segment sized for the cameras) for every node,
    # unless the user set their own: see core/transport.py and the README.
    dds_env = dds_environment(doc)
    ros_args = ["--log-level", arg("log_level")]
    if arg("enclave"):
        ros_args += ["--enclave", arg("enclave")]
    actions: list[Node] = []
    for spec in specs:
        common = dict(
            package="moe_policy_ros",
            executable=spec.executable,
            name=spec.name,
            namespace=namespace,
            parameters=[params],
            remappings=list(spec.remappings),
            ros_arguments=ros_args,
            respawn=_truthy(arg("respawn")),
            respawn_delay=2.0,
            additional_env=dds_env,
            output="screen",
            emulate_tty=True,
        )
        actions.append(LifecycleNode(**common) if spec.lifecycle else Node(**common))
    return actions


def generate_launch_description() -> LaunchDescription:
    share = Path(FindPackageShare("moe_policy_ros").find("moe_policy_ros"))
    default_params = str(share / "config" / "dual_arm.yaml")
    ld = LaunchDescription()
    ld.add_action(SetEnvironmentVariable("RCUTILS_LOGGING_BUFFERED_STREAM", "1"))
    for name, default, description in LAUNCH_ARGUMENTS:
        ld.add_action(DeclareLaunchArgument(name, default_value=default, description=description))
    ld.add_action(OpaqueFunction(function=_nodes, args=[default_params]))
    return ld
