"""nodes/common.py conversions between core types and ROS messages."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy")

from moe_policy_ros.core.trajectory import Trajectory, TrajectoryPoint
from moe_policy_ros.nodes.common import trajectory_msg

pytestmark = pytest.mark.ros


def test_trajectory_msg_carries_names_stamp_positions_and_times() -> None:
    traj = Trajectory(
        ("left_waist", "left_gripper"),
        (TrajectoryPoint((0.1, 0.9), 0.02), TrajectoryPoint((0.2, 0.8), 1.5)),
        1_700_000_000_250_000_000,
    )
    msg = trajectory_msg(traj)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_000, 250_000_000)
    assert list(msg.joint_names) == ["left_waist", "left_gripper"]
    assert [list(p.positions) for p in msg.points] == [[0.1, 0.9], [0.2, 0.8]]
    times = [(p.time_from_start.sec, p.time_from_start.nanosec) for p in msg.points]
    assert times == [(0, 20_000_000), (1, 500_000_000)]
