"""InputBuffer: joint-state mapping by name, rejection without loss, staleness by stamp."""

from __future__ import annotations

import numpy as np
import pytest

from moe_policy_ros.core.inputs import JOINTS, InputBuffer, InputError

NAMES = ["a", "b", "c"]
S = 1_000_000_000


def buf() -> InputBuffer:
    return InputBuffer(NAMES, joint_max_age_s=0.1, cameras={"top": 0.2})


def test_reordered_and_extra_joints_map_by_name() -> None:
    b = buf()
    s = b.put_joint_state(["c", "x", "a", "b"], [3.0, 9.0, 1.0, 2.0], [], 5 * S, 5 * S)
    np.testing.assert_array_equal(s.positions, [1.0, 2.0, 3.0])
    assert s.velocities is None
    assert b.joints() is s


def test_missing_joints_are_rejected_and_the_last_good_sample_kept() -> None:
    b = buf()
    good = b.put_joint_state(NAMES, [1.0, 2.0, 3.0], [0.1, 0.2, 0.3], 5 * S, 5 * S)
    with pytest.raises(InputError, match=r"lacks joints \['b'\]"):
        b.put_joint_state(["a", "c"], [0.0, 0.0], [], 6 * S, 6 * S)
    assert b.joints() is good
    st = b.status[JOINTS]
    assert (st.received, st.rejected) == (1, 1)
    assert "lacks joints ['b']" in st.last_error


@pytest.mark.parametrize(
    ("names", "pos", "vel", "stamp", "match"),
    [
        (NAMES, [1.0, 2.0], [], S, r"3 names but 2 positions"),
        (NAMES, [1.0, 2.0, 3.0], [1.0], S, r"3 names but 1 velocities"),
        (["a", "a", "b", "c"], [0.0] * 4, [], S, r"repeats joint names \['a'\]"),
        (NAMES, [1.0, float("nan"), 3.0], [], S, r"non-finite positions for \['b'\]"),
        (NAMES, [1.0, 2.0, 3.0], [], 0, r"header.stamp is zero"),
    ],
)
def test_malformed_joint_states_name_the_bad_value(
    names: list[str], pos: list[float], vel: list[float], stamp: int, match: str
) -> None:
    with pytest.raises(InputError, match=match):
        buf().put_joint_state(names, pos, vel, stamp, S)


def test_staleness_from_stamps_not_arrival() -> None:
    b = buf()
    now = 10 * S
    assert sorted(b.stale(now)) == ["joint_states: no data", "top: no data"]
    b.put_joint_state(NAMES, [0.0, 0.0, 0.0], [], now - int(0.05 * S), now)
    b.put_image("top", np.zeros((2, 2, 3), np.uint8), now - int(0.5 * S), now)
    stale = b.stale(now)
    assert stale == ["top: 0.500 s old > 0.200 s"]
    assert b.stale(now + int(0.06 * S))[0].startswith("joint_states: 0.110 s old")


def test_rate_over_arrivals() -> None:
    b = buf()
    for i in range(11):
        t = 10 * S + i * S // 50
        b.put_joint_state(NAMES, [0.0, 0.0, 0.0], [], t, t)
    assert b.status[JOINTS].rate_hz() == pytest.approx(50.0)
    # the ROS clock jumps back (a simulator restarted): the rate starts over, no error
    for i in range(3):
        t = S + i * S // 25
        b.put_joint_state(NAMES, [0.0, 0.0, 0.0], [], t, t)
    assert b.status[JOINTS].rate_hz() == pytest.approx(25.0)


def test_unknown_camera_and_bad_stamp() -> None:
    b = buf()
    with pytest.raises(InputError, match="unknown camera 'wrist'"):
        b.put_image("wrist", np.zeros((1, 1, 3), np.uint8), S, S)
    with pytest.raises(InputError, match=r"top: header\.stamp is zero"):
        b.put_image("top", np.zeros((1, 1, 3), np.uint8), 0, S)
    assert b.status["top"].rejected == 1


def test_recent_errors_expire_so_diagnostics_recover() -> None:
    b = buf()
    with pytest.raises(InputError):
        b.put_joint_state(["a"], [0.0], [], 5 * S, 5 * S)
    assert b.recent_errors(6 * S) == ["joint_states: JointState lacks joints ['b', 'c']"]
    assert b.recent_errors(11 * S) == []
    assert b.status[JOINTS].last_error  # still shown as the last error value


def test_cached_joint_order_still_validates() -> None:
    b = buf()
    b.put_joint_state(["c", "a", "b"], [3.0, 1.0, 2.0], [], 5 * S, 5 * S)
    s = b.put_joint_state(["c", "a", "b"], [6.0, 4.0, 5.0], [1.0, 2.0, 3.0], 6 * S, 6 * S)
    np.testing.assert_array_equal(s.positions, [4.0, 5.0, 6.0])
    assert s.velocities is not None and list(s.velocities) == [2.0, 3.0, 1.0]
    with pytest.raises(InputError, match=r"non-finite positions for \['c'\]"):
        b.put_joint_state(["c", "a", "b"], [float("inf"), 4.0, 5.0], [], 7 * S, 7 * S)
    with pytest.raises(InputError, match=r"zero or negative"):
        b.put_joint_state(["c", "a", "b"], [1.0, 4.0, 5.0], [], 0, 7 * S)


def test_joint_command_in_robot_order_with_the_reason_for_a_refusal() -> None:
    from moe_policy_ros.core.inputs import joint_command

    q = joint_command(["a", "b"], ["x", "b", "a"], [9.0, 2.0, 1.0])
    np.testing.assert_array_equal(q, [1.0, 2.0])
    with pytest.raises(InputError, match="2 names but 1 positions"):
        joint_command(["a"], ["a", "b"], [1.0])
    with pytest.raises(InputError, match=r"lacks joints \['b'\]"):
        joint_command(["a", "b"], ["a"], [1.0])
    with pytest.raises(InputError, match="non-finite positions"):
        joint_command(["a"], ["a"], [float("nan")])


def test_joints_at_gives_the_sample_nearest_a_stamp_from_the_kept_history() -> None:
    from moe_policy_ros.core.inputs import JOINT_HISTORY

    b = buf()
    assert b.joints_at(5 * S) is None
    ms = S // 1000
    for i in range(10):  # 50 Hz joint states, positions = their index
        b.put_joint_state(NAMES, [float(i)] * 3, [], 5 * S + i * 20 * ms, 5 * S + i * 20 * ms)
    assert b.joints_at(5 * S + 71 * ms).positions[0] == 4.0  # nearest: 80 ms
    assert b.joints_at(5 * S + 70 * ms).positions[0] == 4.0  # a tie takes the later sample
    assert b.joints_at(4 * S).positions[0] == 0.0  # older than the history: the oldest kept
    assert b.joints_at(9 * S).positions[0] == 9.0
    for i in range(10, 10 + JOINT_HISTORY):
        b.put_joint_state(NAMES, [float(i)] * 3, [], 5 * S + i * 20 * ms, 5 * S + i * 20 * ms)
    assert b.joints_at(5 * S).positions[0] == 10.0  # the first ten were dropped
