"""Simulated dual-arm robot (MuJoCo ALOHA) + MoE policy, from config/sim_dual_arm.yaml.

    ros2 launch moe_policy_ros sim_dual_arm.launch.py

Includes ``dual_arm.launch.py`` with ``sim:=true`` so the graph is the one
``moe-policy-ros up config/sim_dual_arm.yaml`` starts.
"""

from __future__ import annotations

from pathlib import Path

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = Path(FindPackageShare("moe_policy_ros").find("moe_policy_ros"))
    args = {
        "namespace": "",
        "params_file": str(share / "config" / "sim_dual_arm.yaml"),
        "model": "",
        "use_sim_time": "false",
        "log_level": "info",
        "autostart": "true",
        "enclave": "",
        "respawn": "false",
    }
    ld = LaunchDescription()
    for name, default in args.items():
        ld.add_action(DeclareLaunchArgument(name, default_value=default,
                                            description=f"see dual_arm.launch.py: {name}"))
    forwarded = {name: LaunchConfiguration(name) for name in args}
    forwarded["sim"] = "true"
    ld.add_action(
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(share / "launch" / "dual_arm.launch.py")),
            launch_arguments=list(forwarded.items()),
        )
    )
    return ld
