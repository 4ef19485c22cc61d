"""Mode machine / command arbiter with a FakeClock: transitions, refusals, override, deadman,
estop, bumpless blend, staleness, overrun, OOD, NaN, shadow output, counters."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from moe_policy_ros.core.clock import FakeClock
from moe_policy_ros.core.config import (
    ArmConfig,
    HandoverConfig,
    JointLimits,
    RobotConfig,
    SafetyConfig,
)
from moe_policy_ros.core.handover import (
    REQUESTS,
    CommandArbiter,
    Mode,
    TickInputs,
    TickOutput,
    min_jerk,
)
from moe_policy_ros.core.safety import (
    ACCELERATION,
    INVALID,
    OOD,
    OVERRUN,
    STALE,
    TOL,
    VELOCITY,
    Level,
    SafetyFilter,
)

DT = 0.02  # s


def _robot() -> RobotConfig:
    joints = tuple(
        JointLimits(
            name=f"j{i}",
            min_position=-2.0,
            max_position=2.0,
            max_velocity=2.0,
            max_acceleration=10.0,
        )
        for i in range(4)
    )
    return RobotConfig(
        arms=(ArmConfig(name="arm", joints=joints, trajectory_topic="/t", command_topic="/c"),)
    )


ROBOT = _robot()
N = 4


class Rig:
    """A control loop around the arbiter: the robot tracks the sent command perfectly."""

    def __init__(self, safety: dict[str, Any] | None = None, **handover: Any) -> None:
        self.clock = FakeClock(1_000_000_000)
        self.filter = SafetyFilter(ROBOT, SafetyConfig(**(safety or {})), DT)
        self.arb = CommandArbiter(HandoverConfig(**handover), self.filter, self.clock)
        self.measured: np.ndarray | None = np.zeros(N)
        self.policy: np.ndarray | None = np.zeros(N)
        self.teleop: np.ndarray | None = np.zeros(N)
        self.teleop_stamp: int | None = None  # None = fresh every tick
        self.deadman: bool | None = True
        self.deadman_stamp: int | None = None  # None = fresh every tick
        self.warm = True
        self.outs: list[TickOutput] = []

    def inputs(self, **kw: Any) -> TickInputs:
        now = self.clock.now_ns()
        base: dict[str, Any] = dict(
            measured=self.measured,
            policy_command=self.policy,
            teleop_command=self.teleop,
            teleop_stamp_ns=now if self.teleop_stamp is None else self.teleop_stamp,
            deadman=self.deadman,
            deadman_stamp_ns=now if self.deadman_stamp is None else self.deadman_stamp,
            policy_warm=self.warm,
        )
        base.update(kw)
        return TickInputs(**base)

    def tick(self, **kw: Any) -> TickOutput:
        self.clock.advance(DT)
        out = self.arb.tick(self.inputs(**kw))
        if out.sent is not None:
            self.measured = out.sent.copy()
        self.outs.append(out)
        return out

    def run(self, n: int, **kw: Any) -> TickOutput:
        out = self.tick(**kw)
        for _ in range(n - 1):
            out = self.tick(**kw)
        return out


def _sent(out: TickOutput) -> np.ndarray:
    assert out.sent is not None
    return out.sent


def teleop_rig(**kw: Any) -> Rig:
    rig = Rig(**kw)
    rig.tick()
    ok, msg = rig.arb.engage_autonomy(False)
    assert ok, msg
    rig.tick()
    assert rig.arb.mode == Mode.TELEOP
    return rig


def autonomy_rig(**kw: Any) -> Rig:
    rig = teleop_rig(**kw)
    ok, msg = rig.arb.engage_autonomy(True)
    assert ok, msg
    rig.run(5)
    assert rig.arb.mode == Mode.AUTONOMY
    return rig


# ---------------------------------------------------------------- transitions


def test_starts_in_hold_and_holds_measured() -> None:
    rig = Rig()
    rig.measured = np.full(N, 0.3)
    out = rig.tick()
    assert out.mode == Mode.HOLD and out.filter.hold and not out.policy_sent
    assert out.sent is not None and np.allclose(out.sent, 0.3)
    assert out.mode_changes == 0 and out.events == ()


def test_initial_mode_is_attempted_until_preconditions_hold() -> None:
    rig = Rig(initial_mode="TELEOP")
    rig.teleop = None
    assert rig.tick().mode == Mode.HOLD
    assert rig.arb.pending_initial_mode == Mode.TELEOP
    rig.teleop = np.zeros(N)
    out = rig.tick()
    assert out.mode == Mode.TELEOP and rig.arb.pending_initial_mode is None
    assert [e.mode for e in out.events] == [Mode.TELEOP]


def test_full_transition_cycle_and_change_counter() -> None:
    rig = Rig()
    rig.tick()
    assert rig.arb.engage_autonomy(False) == (True, "TELEOP engaged")
    assert rig.arb.mode == Mode.TELEOP and rig.arb.mode_changes == 1
    ok, _ = rig.arb.engage_autonomy(True)
    assert ok and rig.arb.mode == Mode.AUTONOMY
    out = rig.tick()
    # both request events are delivered with the next tick, in order
    assert [(e.previous, e.mode) for e in out.events] == [
        (Mode.HOLD, Mode.TELEOP),
        (Mode.TELEOP, Mode.AUTONOMY),
    ]
    assert rig.arb.engage_autonomy(True) == (True, "already in AUTONOMY")
    assert rig.arb.engage_autonomy(False)[0] and rig.arb.mode == Mode.TELEOP
    assert rig.arb.hold()[0] and rig.arb.mode == Mode.HOLD
    assert rig.arb.hold() == (True, "already in HOLD")
    assert rig.arb.engage_autonomy(True)[0] and rig.arb.mode == Mode.AUTONOMY  # HOLD -> AUTO
    assert rig.arb.estop()[0] and rig.arb.mode == Mode.ESTOP
    assert rig.arb.mode_changes == 6
    out = rig.tick()
    assert out.mode == Mode.ESTOP and out.filter.hold
    assert out.events[-1].mode == Mode.ESTOP and out.events[-1].level == Level.ERROR


def test_estop_latches_until_reset() -> None:
    rig = autonomy_rig()
    assert rig.arb.estop("button")[0]
    for req in (lambda: rig.arb.engage_autonomy(True), lambda: rig.arb.engage_autonomy(False)):
        ok, msg = req()
        assert not ok and "estop is latched" in msg
    ok, msg = rig.arb.hold()
    assert not ok and "estop is latched" in msg
    rig.run(50)
    assert rig.arb.mode == Mode.ESTOP
    ok, msg = rig.arb.reset_estop()
    assert ok and rig.arb.mode == Mode.HOLD
    ok, msg = rig.arb.reset_estop()
    assert not ok and "not latched" in msg
    assert rig.tick().mode == Mode.HOLD  # reset does not resume motion


def test_operator_requests_by_name_as_the_services_call_them() -> None:
    """The policy node's services go through ``request(name, data)``: each name reaches its
    own method (answers and transitions included); an unknown name is refused by name."""
    rig = teleop_rig()
    ok, msg = rig.arb.request("engage_autonomy", True)
    assert ok and msg.startswith("AUTONOMY engaged")
    rig.run(5)
    assert rig.arb.mode == Mode.AUTONOMY
    assert rig.arb.request("hold") == (True, "HOLD") and rig.arb.mode == Mode.HOLD
    assert rig.arb.request("estop")[0] and rig.arb.mode == Mode.ESTOP
    ok, msg = rig.arb.request("engage_autonomy", False)
    assert not ok and "estop is latched" in msg
    assert rig.arb.request("reset_estop") == (True, "estop reset; now in HOLD")
    assert rig.arb.request("engage_autonomy", False) == (True, "TELEOP engaged")
    assert rig.arb.mode == Mode.TELEOP
    assert set(REQUESTS) == {"engage_autonomy", "hold", "estop", "reset_estop"}
    with pytest.raises(ValueError, match=r"'halt'.*known: engage_autonomy, hold"):
        rig.arb.request("halt")


# ---------------------------------------------------------------- refused engage


def _refusal(rig: Rig, **kw: Any) -> str:
    rig.tick(**kw)
    ok, msg = rig.arb.engage_autonomy(True)
    assert not ok and rig.arb.mode != Mode.AUTONOMY
    assert msg.startswith("refused: ")
    return msg


@pytest.mark.parametrize(
    ("setup", "kw", "expect"),
    [
        ("warm", {"policy_warm": False}, "policy is not warm"),
        ("", {"stale_inputs": ("top",)}, "inputs stale: top"),
        ("", {"policy_command": None}, "policy has no command yet"),
        ("", {"policy_command": np.array([0.0, np.nan, 0.0, 0.0])}, "finite"),
        ("", {"measured": None}, "no measured joint state"),
        ("", {"teleop_command": None}, "no teleop command received yet"),
        ("", {"overrun": True}, "inference is overrunning"),
        (
            "",
            {"policy_command": np.full(N, 0.6), "teleop_command": np.full(N, 0.6)},
            "first policy action is 0.59",
        ),
        ("", {"teleop_command": np.full(N, 0.35)}, "teleop departs from the policy"),
    ],
)
def test_engage_refusal_reasons(setup: str, kw: dict[str, Any], expect: str) -> None:
    rig = teleop_rig()
    msg = _refusal(rig, **kw)
    assert expect in msg


def test_engage_refused_when_teleop_stale() -> None:
    rig = teleop_rig(safety={"hold_on_stale_inputs": False})
    rig.arb.hold()
    rig.teleop_stamp = rig.clock.now_ns()
    rig.clock.advance(0.5)
    assert "teleop command stale" in _refusal(rig)


def test_engage_refused_without_deadman_and_on_ood_hold() -> None:
    rig = Rig(deadman_required=True)
    rig.deadman = False
    assert "deadman released" in _refusal(rig)
    rig = Rig(safety={"ood_action": "hold", "ood_energy_threshold": 1.0})
    assert "out of distribution" in _refusal(rig, ood_energy=3.0)


def test_engage_refused_before_first_tick_and_in_estop() -> None:
    rig = Rig()
    ok, msg = rig.arb.engage_autonomy(True)
    assert not ok and "no inputs yet" in msg
    rig.tick()
    rig.arb.estop()
    ok, msg = rig.arb.engage_autonomy(True)
    assert not ok and "estop is latched" in msg


def test_teleop_engage_from_hold_refused_when_far() -> None:
    rig = Rig()
    rig.teleop = np.full(N, 0.8)
    rig.tick()
    ok, msg = rig.arb.engage_autonomy(False)
    assert not ok and "teleop command is 0.800 rad" in msg


# ---------------------------------------------------------------- override, deadman


def test_override_by_teleop_deviation_switches_to_teleop_at_once() -> None:
    rig = autonomy_rig()
    rig.teleop = np.array([0.0, 0.31, 0.0, 0.0])
    out = rig.tick()
    assert out.mode == Mode.TELEOP and not out.policy_sent
    assert "operator override" in out.events[-1].reason and "j1" in out.events[-1].reason
    assert out.candidate is not None and np.allclose(out.candidate, rig.teleop)  # no blend
    assert out.blend_alpha is None


def test_small_teleop_deviation_does_not_override() -> None:
    rig = autonomy_rig()
    rig.teleop = np.full(N, 0.29)
    assert rig.run(10).mode == Mode.AUTONOMY


def test_stale_teleop_cannot_override() -> None:
    rig = autonomy_rig(require_teleop_to_engage=True)
    rig.teleop = np.full(N, 1.0)
    rig.teleop_stamp = rig.clock.now_ns() - 1_000_000_000
    assert rig.run(5).mode == Mode.AUTONOMY


@pytest.mark.parametrize("start", ["teleop", "autonomy"])
def test_deadman_release_holds_immediately(start: str) -> None:
    rig = (teleop_rig if start == "teleop" else autonomy_rig)(deadman_required=True)
    rig.deadman = False
    out = rig.tick()
    assert out.mode == Mode.HOLD and out.events[-1].reason == "deadman released"
    assert out.filter.hold


def test_deadman_timeout() -> None:
    rig = autonomy_rig(deadman_required=True, deadman_timeout_s=0.1)
    rig.deadman_stamp = rig.clock.now_ns()  # last deadman message: now
    for _ in range(5):  # 0.1 s later: still within the timeout
        assert rig.tick().mode == Mode.AUTONOMY
    out = rig.tick()  # first tick past the timeout
    assert out.mode == Mode.HOLD and "deadman timed out" in out.events[-1].reason


# ---------------------------------------------------------------- bumpless transfer


def test_blend_reaches_policy_after_blend_time_within_limits() -> None:
    rig = teleop_rig(blend_time_s=1.0)
    rig.policy = np.array([0.4, -0.3, 0.2, 0.0])
    rig.teleop = np.array([0.15, -0.1, 0.1, 0.0])  # within override_threshold of the policy
    rig.run(60)  # TELEOP: the robot settles at the teleop command
    assert rig.measured is not None and np.allclose(rig.measured, rig.teleop)
    start = rig.measured.copy()
    assert rig.arb.engage_autonomy(True)[0]
    outs = [rig.tick() for _ in range(60)]
    t0 = 0
    alphas = [o.blend_alpha for o in outs]
    assert alphas[t0] == 0.0 and all(o.policy_sent for o in outs)
    assert all(a is not None for a in alphas[:50]) and all(a is None for a in alphas[50:])
    sent = np.array([start, *[o.sent for o in outs]])
    # the blend is never clipped by the filter: no velocity or acceleration intervention
    for o in outs:
        assert VELOCITY not in o.filter.kinds() and ACCELERATION not in o.filter.kinds()
    v = np.abs(np.diff(sent, axis=0))
    assert np.all(v <= rig.filter.max_step + TOL)
    # acceleration within limits after the first blend tick (teleop was at rest here anyway)
    a = np.abs(np.diff(sent, 2, axis=0))
    assert np.all(a <= rig.filter.max_dstep + TOL)
    # after blend_time_s (50 ticks) the policy command is sent exactly
    np.testing.assert_allclose(_sent(outs[50]), rig.policy, atol=1e-12)
    np.testing.assert_allclose(_sent(outs[49]), rig.policy, atol=1e-3)
    assert not np.allclose(_sent(outs[25]), rig.policy)


def test_blend_stretches_when_limits_require() -> None:
    # V = 2 * 0.1 = 0.2 rad/s: a 0.4 rad gap needs T >= 1.875 * 0.4 / 0.2 = 3.75 s
    rig = teleop_rig(blend_time_s=0.5, safety={"velocity_scale": 0.1})
    rig.policy = np.array([0.4, 0.0, 0.0, 0.0])
    rig.teleop = np.array([0.2, 0.0, 0.0, 0.0])
    rig.run(100)
    rig.teleop = np.array([0.15, 0.0, 0.0, 0.0])
    rig.policy = np.array([0.4, 0.0, 0.0, 0.0])
    start = rig.run(100).sent
    assert start is not None and np.allclose(start, [0.15, 0, 0, 0])
    assert rig.arb.engage_autonomy(True)[0]
    # gap 0.25 rad: T = 1.875 * 0.25 / 0.2 = 2.34375 s = 117.19 ticks
    outs = [rig.tick() for _ in range(125)]
    n_blend = sum(o.blend_alpha is not None for o in outs)
    assert n_blend == 118
    for o in outs:
        assert VELOCITY not in o.filter.kinds() and ACCELERATION not in o.filter.kinds()
    np.testing.assert_allclose(_sent(outs[-1]), rig.policy, atol=1e-12)


def test_min_jerk_profile() -> None:
    assert min_jerk(-1) == 0.0 and min_jerk(0) == 0.0 and min_jerk(1) == 1.0
    assert min_jerk(0.5) == pytest.approx(0.5) and min_jerk(2) == 1.0


def test_autonomy_to_teleop_is_immediate() -> None:
    rig = autonomy_rig()
    rig.teleop = np.full(N, 0.2)
    assert rig.arb.engage_autonomy(False) == (True, "TELEOP engaged")
    out = rig.tick()
    assert out.mode == Mode.TELEOP and out.blend_alpha is None and not out.policy_sent
    assert out.candidate is not None and np.allclose(out.candidate, 0.2)


def test_leaving_autonomy_without_teleop_goes_to_hold() -> None:
    rig = autonomy_rig(require_teleop_to_engage=False)
    rig.teleop = None
    rig.tick()
    ok, msg = rig.arb.engage_autonomy(False)
    assert ok and "HOLD" in msg and rig.arb.mode == Mode.HOLD


def test_shadow_mode_reports_policy_without_sending_it() -> None:
    rig = teleop_rig()
    rig.policy = np.full(N, 0.25)
    rig.teleop = np.full(N, 0.05)
    out = rig.run(40)
    assert out.mode == Mode.TELEOP and not out.policy_sent
    assert out.policy_command is not None and np.allclose(out.policy_command, 0.25)
    assert out.sent is not None and np.allclose(out.sent, 0.05)


# ---------------------------------------------------------------- hazards -> HOLD


def test_stale_policy_inputs_hold_in_the_same_tick() -> None:
    rig = autonomy_rig()
    out = rig.tick(stale_inputs=("top",))
    assert out.mode == Mode.HOLD and STALE in out.filter.kinds()
    assert "top" in out.events[-1].reason and out.events[-1].level == Level.WARN
    rig.run(5)
    assert rig.arb.mode == Mode.HOLD  # latched: fresh inputs do not resume autonomy


def test_stale_teleop_holds_within_one_control_period() -> None:
    rig = teleop_rig(teleop_max_age_s=0.1)
    rig.teleop_stamp = rig.clock.now_ns()
    for _ in range(5):  # ages 0.02 .. 0.10 s
        assert rig.tick().mode == Mode.TELEOP
    out = rig.tick()  # age 0.12 s: first tick past max age
    assert out.mode == Mode.HOLD and "teleop" in out.events[-1].reason


def test_missing_measured_holds() -> None:
    rig = autonomy_rig()
    out = rig.tick(measured=None)
    assert out.mode == Mode.HOLD and "joint_states" in out.events[-1].reason
    assert out.sent is not None


def test_overrun_finishes_chunk_then_holds() -> None:
    rig = autonomy_rig()
    out = rig.run(5, overrun=True)
    assert out.mode == Mode.AUTONOMY and out.policy_sent and out.filter.level == Level.WARN
    out = rig.tick(overrun=True, policy_command=None)  # chunk exhausted
    assert out.mode == Mode.HOLD and "chunk finished" in out.events[-1].reason
    assert rig.filter.counts[OVERRUN] == 6


def test_overrun_hold_immediately() -> None:
    rig = autonomy_rig(safety={"overrun_action": "hold"})
    out = rig.tick(overrun=True)
    assert out.mode == Mode.HOLD and OVERRUN in out.filter.kinds()


@pytest.mark.parametrize(("action", "mode"), [("warn", Mode.AUTONOMY), ("hold", Mode.HOLD)])
def test_ood_warn_vs_hold(action: str, mode: Mode) -> None:
    rig = autonomy_rig(safety={"ood_action": action, "ood_energy_threshold": 1.0})
    out = rig.tick(ood_energy=5.0)
    assert out.mode == mode and OOD in out.filter.kinds() and out.filter.level == Level.WARN
    assert rig.filter.counts[OOD] == 1


def test_nan_policy_holds_with_error() -> None:
    rig = autonomy_rig()
    out = rig.tick(policy_command=np.array([0.0, np.inf, 0.0, 0.0]))
    assert out.mode == Mode.HOLD and out.filter.level == Level.ERROR
    assert out.events[-1].level == Level.ERROR and INVALID in out.filter.kinds()
    assert out.sent is not None and np.all(np.isfinite(out.sent))
    assert rig.filter.counts[INVALID] == 1


def test_nan_teleop_holds_with_error() -> None:
    rig = teleop_rig()
    out = rig.tick(teleop_command=np.array([np.nan, 0.0, 0.0, 0.0]))
    assert out.mode == Mode.HOLD and out.filter.level == Level.ERROR


def test_hold_from_motion_brakes_without_jump() -> None:
    rig = autonomy_rig()
    for k in range(30):  # policy moves at 1 rad/s
        rig.policy = np.full(N, 0.02 * (k + 1))
        rig.teleop = rig.policy  # the leader follows (no override)
        assert rig.tick().mode == Mode.AUTONOMY
    assert rig.arb.hold()[0]
    outs = [rig.tick() for _ in range(40)]
    sent = np.array([o.sent for o in rig.outs[-42:]])
    steps = np.diff(sent, axis=0)
    assert np.all(steps >= -TOL)
    assert np.all(np.abs(np.diff(steps, axis=0)) <= rig.filter.max_dstep + TOL)
    assert np.allclose(_sent(outs[-1]), _sent(outs[-2]))
    assert all(o.mode == Mode.HOLD and not o.policy_sent for o in outs)


def test_safety_diagnostics_counts_after_scenario() -> None:
    rig = autonomy_rig(safety={"ood_action": "warn", "ood_energy_threshold": 1.0})
    rig.tick(ood_energy=2.0)
    rig.tick(ood_energy=2.0)
    rig.tick(overrun=True)
    level, _, values = rig.filter.diagnostics()
    assert level == Level.WARN and values["count.ood"] == "2" and values["count.overrun"] == "1"
