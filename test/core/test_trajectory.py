"""joint_trajectory_controller semantics of core/trajectory.py, with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from moe_policy_ros.core.clock import FakeClock
from moe_policy_ros.core.trajectory import (
    Trajectory,
    TrajectoryError,
    TrajectoryFollower,
    TrajectoryPoint,
    TrajectoryRejected,
    split_trajectory,
)

S = 1_000_000_000  # ns per second
T0 = 10 * S


def _pt(t: float, *pos: float, vel: tuple[float, ...] | None = None) -> TrajectoryPoint:
    return TrajectoryPoint(positions=tuple(pos), time_from_start=t, velocities=vel)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def follower(clock: FakeClock) -> TrajectoryFollower:
    return TrajectoryFollower(["a", "b"], [0.0, 0.0], clock)


def _at(f: TrajectoryFollower, t_s: float) -> np.ndarray:
    return f.sample(T0 + round(t_s * S))[0]


def test_holds_initial_position_without_input(follower: TrajectoryFollower) -> None:
    pos, vel = follower.sample()
    np.testing.assert_allclose(pos, [0.0, 0.0])
    np.testing.assert_allclose(vel, [0.0, 0.0])
    assert not follower.executing


def test_linear_interpolation_from_current_state_then_hold(follower: TrajectoryFollower) -> None:
    kept = follower.set_trajectory(Trajectory(("a", "b"), (_pt(1.0, 1, 2), _pt(3.0, 3, -2))))
    assert kept == 2
    np.testing.assert_allclose(_at(follower, 0.5), [0.5, 1.0])
    np.testing.assert_allclose(follower.sample(T0 + S // 2)[1], [1.0, 2.0])
    np.testing.assert_allclose(_at(follower, 1.0), [1.0, 2.0])
    np.testing.assert_allclose(_at(follower, 2.0), [2.0, 0.0])
    np.testing.assert_allclose(follower.sample(T0 + 2 * S)[1], [1.0, -2.0])
    np.testing.assert_allclose(_at(follower, 3.0), [3.0, -2.0])
    pos, vel = follower.sample(T0 + 20 * S)
    np.testing.assert_allclose(pos, [3.0, -2.0])
    np.testing.assert_allclose(vel, [0.0, 0.0])


def test_joints_in_any_order_are_mapped_by_name(follower: TrajectoryFollower) -> None:
    follower.set_trajectory(Trajectory(("b", "a"), (_pt(1.0, 2, 1),)))
    np.testing.assert_allclose(_at(follower, 1.0), [1.0, 2.0])


def test_unknown_and_missing_joint_names_are_named(follower: TrajectoryFollower) -> None:
    with pytest.raises(TrajectoryError, match=r"unknown joint names \['elbow'\]"):
        follower.set_trajectory(Trajectory(("a", "elbow"), (_pt(1.0, 1, 2),)))
    with pytest.raises(TrajectoryError, match=r"missing joint names \['b'\]"):
        follower.set_trajectory(Trajectory(("a",), (_pt(1.0, 1),)))


def test_past_points_are_dropped_and_motion_starts_from_now(
    follower: TrajectoryFollower, clock: FakeClock
) -> None:
    # stamped 1 s ago: the point at +0.5 s (9.5 s) is past, +2 s and +3 s are 11 s and 12 s
    traj = Trajectory(("a", "b"), (_pt(0.5, 9, 9), _pt(2.0, 2, 2), _pt(3.0, 4, 4)), T0 - S)
    assert follower.set_trajectory(traj) == 2
    np.testing.assert_allclose(_at(follower, 0.0), [0.0, 0.0])
    np.testing.assert_allclose(_at(follower, 0.5), [1.0, 1.0])
    np.testing.assert_allclose(_at(follower, 1.0), [2.0, 2.0])
    np.testing.assert_allclose(_at(follower, 1.5), [3.0, 3.0])


def test_all_points_in_the_past_rejected_running_motion_continues(
    follower: TrajectoryFollower, clock: FakeClock
) -> None:
    follower.set_trajectory(Trajectory(("a", "b"), (_pt(2.0, 2, 2),)))
    clock.advance(1.0)
    with pytest.raises(TrajectoryRejected, match="in the past"):
        follower.set_trajectory(Trajectory(("a", "b"), (_pt(1.0, 5, 5), _pt(2.0, 6, 6)), 5 * S))
    np.testing.assert_allclose(follower.sample()[0], [1.0, 1.0])
    assert follower.executing


def test_cubic_hermite_with_velocities(follower: TrajectoryFollower) -> None:
    # anchor (0, v=0) at t=0 -> (2, v=1) at t=2; s=0.5: h01*2 + h11*h*v1 = 1 - 0.25 = 0.75
    follower.set_trajectory(Trajectory(("a", "b"), (_pt(2.0, 2, 1, vel=(1.0, 0.0)),)))
    pos, vel = follower.sample(T0 + S)
    np.testing.assert_allclose(pos, [0.75, 0.5])
    # d/dt at s=0.5: (d01*p1)/h + d11*v1 = 1.5*2/2 - 0.25*1 = 1.25; b: 1.5*1/2 = 0.75
    np.testing.assert_allclose(vel, [1.25, 0.75])
    # s=0.25 on b: h01 = -2/64 + 3/16 = 0.15625
    np.testing.assert_allclose(_at(follower, 0.5)[1], 0.15625)
    pos, vel = follower.sample(T0 + 2 * S)
    np.testing.assert_allclose(pos, [2.0, 1.0])


def test_hermite_anchor_uses_current_setpoint_velocity(
    follower: TrajectoryFollower, clock: FakeClock
) -> None:
    # first trajectory: linear a 0 -> 2 over 2 s, velocity 1 rad/s
    follower.set_trajectory(Trajectory(("a", "b"), (_pt(2.0, 2, 0),)))
    clock.advance(1.0)  # setpoint a=1, v=1
    follower.set_trajectory(Trajectory(("a", "b"), (_pt(1.0, 2, 0, vel=(0.0, 0.0)),)))
    # anchor (1, v=1) -> (2, v=0), h=1, s=0.5: 0.5*1 + 0.125*1 + 0.5*2 + 0 = 1.625
    np.testing.assert_allclose(_at(follower, 1.5)[0], 1.625)


def test_new_trajectory_replaces_running_one_immediately(
    follower: TrajectoryFollower, clock: FakeClock
) -> None:
    follower.set_trajectory(Trajectory(("a", "b"), (_pt(10.0, 10, 0),)))
    clock.advance(1.0)  # a = 1
    follower.set_trajectory(Trajectory(("a", "b"), (_pt(1.0, 5, 0),)))
    np.testing.assert_allclose(_at(follower, 1.5), [3.0, 0.0])
    np.testing.assert_allclose(_at(follower, 5.0), [5.0, 0.0])


def test_future_trajectory_takes_over_at_its_start_time(
    follower: TrajectoryFollower, clock: FakeClock
) -> None:
    follower.set_trajectory(Trajectory(("a", "b"), (_pt(10.0, 10, 0),)))
    follower.set_trajectory(Trajectory(("a", "b"), (_pt(1.0, 0, 0),), T0 + 2 * S))
    assert follower.executing
    np.testing.assert_allclose(_at(follower, 1.0), [1.0, 0.0])  # old one still runs
    np.testing.assert_allclose(_at(follower, 2.5), [1.0, 0.0])  # from 2 at 2 s toward 0 at 3 s
    np.testing.assert_allclose(_at(follower, 3.0), [0.0, 0.0])
    np.testing.assert_allclose(_at(follower, 9.0), [0.0, 0.0])


def test_future_trajectory_anchor_is_exact_even_if_sampled_late(
    follower: TrajectoryFollower,
) -> None:
    follower.set_trajectory(Trajectory(("a", "b"), (_pt(10.0, 10, 0),)))
    follower.set_trajectory(Trajectory(("a", "b"), (_pt(2.0, 0, 0),), T0 + 2 * S))
    # first sample after the start: anchor is the old setpoint at 2 s (a=2), 3 s is halfway
    np.testing.assert_allclose(_at(follower, 3.0), [1.0, 0.0])


def test_forward_command_overrides_trajectory(
    follower: TrajectoryFollower, clock: FakeClock
) -> None:
    follower.set_trajectory(Trajectory(("a", "b"), (_pt(2.0, 2, 2),)))
    clock.advance(1.0)
    follower.set_command([0.3, -0.4])
    assert not follower.executing
    pos, vel = follower.sample()
    np.testing.assert_allclose(pos, [0.3, -0.4])
    np.testing.assert_allclose(vel, [0.0, 0.0])
    # a later trajectory starts from the commanded setpoint
    follower.set_trajectory(Trajectory(("a", "b"), (_pt(1.0, 1.3, 0.6),)))
    np.testing.assert_allclose(_at(follower, 1.5), [0.8, 0.1])


@pytest.mark.parametrize(
    ("traj", "match"),
    [
        (Trajectory(("a", "b"), ()), "no points"),
        (Trajectory(("a", "b"), (_pt(1.0, 1, 1), _pt(1.0, 2, 2))), "not after"),
        (Trajectory(("a", "b"), (_pt(-1.0, 1, 1),)), "finite and >= 0"),
        (Trajectory(("a", "b"), (_pt(1.0, 1),)), "1 positions for 2"),
        (Trajectory(("a", "b"), (_pt(1.0, 1, float("nan")),)), "non-finite position"),
        (
            Trajectory(("a", "b"), (_pt(1.0, 1, 1, vel=(0.0, 0.0)), _pt(2.0, 1, 1))),
            "every point or for none",
        ),
        (Trajectory(("a", "b"), (_pt(1.0, 1, 1, vel=(0.0,)),)), "1 velocities for 2"),
        (Trajectory(("a", "a"), (_pt(1.0, 1, 1),)), "repeated"),
    ],
)
def test_malformed_trajectories_raise_and_keep_state(
    follower: TrajectoryFollower, traj: Trajectory, match: str
) -> None:
    with pytest.raises(TrajectoryError, match=match):
        follower.set_trajectory(traj)
    np.testing.assert_allclose(follower.sample()[0], [0.0, 0.0])


def test_forward_command_wrong_length_or_nan_raises(follower: TrajectoryFollower) -> None:
    with pytest.raises(TrajectoryError, match="expected 2 values"):
        follower.set_command([1.0, 2.0, 3.0])
    with pytest.raises(TrajectoryError, match="non-finite"):
        follower.set_command([1.0, float("inf")])


def test_reset_drops_trajectories(follower: TrajectoryFollower) -> None:
    follower.set_trajectory(Trajectory(("a", "b"), (_pt(1.0, 1, 1),), T0 + 5 * S))
    follower.reset([0.5, 0.5])
    assert not follower.executing
    np.testing.assert_allclose(_at(follower, 7.0), [0.5, 0.5])


def test_split_trajectory_one_per_group_that_a_follower_executes(clock: FakeClock) -> None:
    rows = np.array([[0.0, 1.0, 2.0], [0.5, 1.5, 2.5]])
    trajs = split_trajectory(rows, [0.5, 1.0], T0, [(("a", "b"), slice(0, 2)),
                                                    (("c",), slice(2, 3))])
    assert [t.joint_names for t in trajs] == [("a", "b"), ("c",)]
    assert trajs[1].points == (TrajectoryPoint((2.0,), 0.5), TrajectoryPoint((2.5,), 1.0))
    assert all(t.start_time_ns == T0 for t in trajs)
    ab = TrajectoryFollower(("a", "b"), [0.0, 0.0], clock)
    ab.set_trajectory(trajs[0])
    np.testing.assert_allclose(_at(ab, 0.5), [0.0, 1.0])
    np.testing.assert_allclose(_at(ab, 2.0), [0.5, 1.5])
    with pytest.raises(TrajectoryError, match="2 points but 1 times"):
        split_trajectory(rows, [0.5], T0, [(("a",), slice(0, 1))])
