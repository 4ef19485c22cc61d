"""Simulated dual-arm robot (MuJoCo ALOHA) + MoE policy, from config/sim_dual_arm.yaml.

    ros2 launch moe_policy_ros sim_dual_arm.launch.py

Includes ``dual_arm.launch.py`` with ``sim:=true`` so the graph is the one
``moe-policy-ros up config/sim_dual_arm.yaml`` starts. Its arguments are dual_arm's (same
descriptions, from ``moe_policy_ros.graph.LAUNCH_ARGUMENTS``) but ``sim``, which it forces.
"""

from __future__ import annotations

from pathlib import Path

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from moe_policy_ros.graph import LAUNCH_ARGUMENTS


def generate_launch_description() -> LaunchDescription:
    share = Path(FindPackageShare("moe_policy_ros").find("moe_policy_ros"))
    defaults = {"params_file": str(share / "config" / "sim_dual_arm.yaml")}
    forwarded: dict[str, object] = {}
    ld = LaunchDescription()
    for name, default, description in LAUNCH_ARGUMENTS:
        if name == "sim":
            continue
        ld.add_action(DeclareLaunchArgument(
            name, default_value=defaults.get(name, default), description=description))
        forwarded[name] = LaunchConfiguration(name)
    forwarded["sim"] = "true"
    ld.add_action(
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(share / "launch" / "dual_arm.launch.py")),
            launch_arguments=list(forwarded.items()),
        )
    )
    return ld
