"""Fault injection against the policy node, in its own process, over real DDS.

Every test records *every* command published on both arms' command topics
(:class:`CommandMonitor`) and checks each one: finite, inside the joint position limits of
``config/dual_arm.yaml``, and no step between consecutive messages of one node process larger
than ``max_velocity * control_period`` (+ ``STEP_TOL``). On top of that each fault has its own
pass criterion, stated in its docstring. Measured numbers are printed (``pytest -s``).

The robot side is :class:`~helpers.ros.FakeRobot` (a real DDS publisher standing in for the
drivers). Faults that only concern inputs share one node process (``TestSharedNode``: each
test restores the robot and re-engages); bundle faults, teleop handover and kill/respawn run
their own processes. Timing bounds allow ``SLACK_S`` for scheduling on a loaded 2-core host.

Stalls: on a loaded host a process can be descheduled for longer than an input's max_age
(0.2 s for joint_states); the node then holds, as it must. A fault is therefore injected only
after 0.5 s of undisturbed AUTONOMY, and a HOLD counts for a fault only when the node's logged
reason names the faulty source; anything else is printed as ``[stall]`` (with whether the
FakeRobot publisher itself stalled) and the fault is injected again. Under the 10x flood the
node may likewise fall back to HOLD; that is allowed (it is the fail-safe) and printed, while
liveness, command validity and the control rate are asserted.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy")

from helpers import REPO
from helpers.ros import DEMO_BUNDLE, POLICY_NODE

from moe_policy_ros.core.config import load_config
from moe_policy_ros.core.diagnostics import level_of

if TYPE_CHECKING:
    from helpers.ros import FakeRobot, RosClient

pytestmark = [pytest.mark.ros, pytest.mark.slow]

BUNDLE = DEMO_BUNDLE
LEFT_ELBOW_INDEX = 2  # within the left arm's 7 commands
CFG = load_config(REPO / "config" / "dual_arm.yaml")
NAMES = CFG.robot.joint_names
ARMS = CFG.robot.arms
PERIOD = CFG.policy.control_period_s
RATE = CFG.policy.control_rate_hz
Q_MIN = np.array([j.min_position for j in CFG.robot.joints])
Q_MAX = np.array([j.max_position for j in CFG.robot.joints])
MAX_STEP = np.array([j.max_velocity for j in CFG.robot.joints]) * PERIOD
MAX_DSTEP = np.array([j.max_acceleration for j in CFG.robot.joints]) * PERIOD**2
JOINTS_MAX_AGE = CFG.robot.joint_states_max_age_s
CAM = CFG.cameras[0]
STEP_TOL = 1e-6  # rad
SLACK_S = 0.3  # s of scheduling slack on top of max_age + one control period
FLOOD_MIN_RATE = 0.7  # x control rate, under a 10x input flood on a loaded 2-core host
BRAKE_S = 0.3  # s after HOLD by which the braking command has stopped (v/a = 0.2 s)


# --------------------------------------------------------------------------- helpers


class CommandMonitor:
    """Records every Float64MultiArray on both arms' command topics; checks them all."""

    def __init__(self, client: RosClient) -> None:
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Float64MultiArray

        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=500,
                         reliability=ReliabilityPolicy.RELIABLE)
        self.msgs: dict[str, list[tuple[float, np.ndarray]]] = {a.name: [] for a in ARMS}
        self.cuts: list[float] = []
        for arm in ARMS:
            client.node.create_subscription(
                Float64MultiArray, arm.command_topic,
                lambda m, a=arm.name: self.msgs[a].append((time.monotonic(), np.array(m.data))),
                qos,
            )

    def cut(self) -> None:
        """A new node process starts publishing: steps are not checked across this point."""
        self.cuts.append(time.monotonic())

    def window(self, arm: str, t0: float, t1: float = math.inf) -> list[np.ndarray]:
        return [q for t, q in list(self.msgs[arm]) if t0 <= t < t1]

    def check(self, since: float = 0.0) -> tuple[int, float, list[str]]:
        """(messages checked, largest step / allowed step, violations) since ``since``."""
        bad: list[str] = []
        count, worst = 0, 0.0
        offset = 0
        for arm in ARMS:
            sl = slice(offset, offset + len(arm.joints))
            offset += len(arm.joints)
            lo, hi, step = Q_MIN[sl], Q_MAX[sl], MAX_STEP[sl]
            prev: tuple[float, np.ndarray] | None = None
            for t, q in list(self.msgs[arm.name]):
                if prev is not None and any(prev[0] < c <= t for c in self.cuts):
                    prev = None
                if t >= since:
                    count += 1
                    if q.shape != lo.shape:
                        bad.append(f"{arm.name} t={t:.3f}: {q.size} values")
                        prev = None
                        continue
                    if not np.all(np.isfinite(q)):
                        bad.append(f"{arm.name} t={t:.3f}: non-finite command {q.tolist()}")
                    elif np.any(q < lo - 1e-9) or np.any(q > hi + 1e-9):
                        bad.append(f"{arm.name} t={t:.3f}: outside position limits {q.tolist()}")
                    elif prev is not None and np.all(np.isfinite(prev[1])):
                        d = np.abs(q - prev[1])
                        worst = max(worst, float(np.max(d / step)))
                        if np.any(d > step + STEP_TOL):
                            j = int(np.argmax(d - step))
                            bad.append(f"{arm.name} t={t:.3f}: step {d[j]:.4f} rad on joint {j} "
                                       f"> {step[j]:.4f} (max_velocity * period)")
                prev = (t, q)
        return count, worst, bad

    def assert_valid(self, since: float = 0.0, what: str = "") -> int:
        count, worst, bad = self.check(since)
        assert not bad, f"{what}: {len(bad)} invalid commands, first: {bad[:5]}"
        print(f"[{what}] {count} commands checked: finite, in limits, largest step "
              f"{worst:.2f} x the velocity limit")
        return count


def _level(st: Any) -> int:
    return level_of(st.level)


def _values(st: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in st.values}


def _mode_after(modes: list[tuple[float, Any]], since: float) -> list[tuple[float, str]]:
    return [(t, m.data) for t, m in list(modes) if t >= since]


@contextmanager
def _node_in_hold(rig: Rig, params: Path, log: Path) -> Iterator[tuple[Any, float]]:
    """A policy node process (autostart) after a monitor cut: (process, start time) once
    ~/mode reports HOLD."""
    rig.monitor.cut()
    t_start = time.monotonic()
    with rig.ros.policy_node(params, log) as proc:
        rig.wait_mode("HOLD", t_start, 60)
        yield proc, t_start


def _engaged(rig: Rig, since: float) -> float:
    """engage_autonomy succeeds: arrival time of the first AUTONOMY after ``since``."""
    assert rig.ros.engage(rig.client) == ""
    return rig.wait_mode("AUTONOMY", since, 5)


def _trigger(client: RosClient, name: str) -> Any:
    from std_srvs.srv import Trigger

    return client.call(Trigger, f"{POLICY_NODE}/{name}", Trigger.Request())


def _assert_holding_still(mon: CommandMonitor, t_hold: float, what: str,
                          duration: float = 0.5) -> None:
    """Commands keep coming (hold is published) and no longer change once braked."""
    t0 = t_hold + BRAKE_S
    time.sleep(max(0.0, t0 + duration - time.monotonic()))
    for arm in ARMS:
        win = mon.window(arm.name, t0, t0 + duration)
        assert len(win) >= 0.5 * RATE * duration, f"{what}: only {len(win)} hold commands"
        spread = max(float(np.max(np.abs(q - win[0]))) for q in win)
        assert spread <= 1e-9, f"{what}: {arm.name} command still moves by {spread} in HOLD"


def _assert_clean_log(log: Path) -> None:
    """No control tick or inference call raised, no Python traceback."""
    text = log.read_text()
    lines = text.splitlines()
    for bad in ("control tick failed", "inference failed", "Traceback"):
        at = [i for i, ln in enumerate(lines) if bad in ln]
        assert not at, f"{log}: {bad!r} at line {at[0] + 1}:\n" + "\n".join(
            lines[at[0]:at[0] + 30])




def _set_bundle(client: RosClient, path: Path) -> None:
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    req = SetParameters.Request()
    req.parameters = [Parameter(name="policy.bundle", value=ParameterValue(
        type=ParameterType.PARAMETER_STRING, string_value=str(path)))]
    assert client.call(SetParameters, f"{POLICY_NODE}/set_parameters", req).results[0].successful


def _ramp(robot: FakeRobot, target: np.ndarray, speed: float = 0.25) -> None:
    """Move the fake robot's measured position to ``target`` at ``speed`` rad/s."""
    start = robot.positions.copy()
    dist = float(np.max(np.abs(target - start)))
    steps = max(1, math.ceil(dist / speed / 0.02))
    for i in range(1, steps + 1):
        robot.positions = start + (target - start) * (i / steps)
        time.sleep(0.02)


# --------------------------------------------------------------------------- fixtures


@dataclass
class Rig:
    """The test side of every fault test: the ROS helpers, one client, the command monitor,
    and the latched ~/mode and /diagnostics it records."""

    ros: ModuleType
    client: RosClient
    monitor: CommandMonitor
    modes: list[tuple[float, Any]]
    diags: list[tuple[float, Any]]

    def wait_status(
        self, concern: str, pred: Callable[[Any], bool], since: float, timeout: float,
        what: str, until: float = math.inf,
    ) -> Any:
        """The first ``moe_policy: <concern>`` status received in [since, until) matching
        ``pred``."""
        found: list[Any] = []

        def check() -> bool:
            for t, arr in list(self.diags):
                if not since <= t < until:
                    continue
                for st in arr.status:
                    if st.name == f"moe_policy: {concern}" and pred(st):
                        found.append(st)
                        return True
            return False

        self.ros.wait_for(check, timeout, what)
        return found[0]

    def wait_mode(self, mode: str, since: float, timeout: float = 10.0) -> float:
        """Arrival time of the first ``mode`` on ~/mode after ``since``."""
        hits: list[float] = []

        def seen() -> bool:
            hits.extend(t for t, m in _mode_after(self.modes, since) if m == mode)
            return bool(hits)

        self.ros.wait_for(seen, timeout, f"mode {mode}")
        return hits[0]


@pytest.fixture(scope="module")
def rig(ros: ModuleType) -> Iterator[Rig]:
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import String

    from moe_policy_ros.session import LATCHED_QOS

    client = ros.RosClient("fault_test")
    rig = Rig(ros, client, CommandMonitor(client),
              client.record(String, f"{POLICY_NODE}/mode", LATCHED_QOS),
              client.record(DiagnosticArray, "/diagnostics", 50))
    yield rig
    client.close()


@dataclass
class SharedNode:
    rig: Rig
    robot: FakeRobot
    proc: Any
    log: Path

    def restore(self) -> None:
        """Undo every input fault and be in AUTONOMY again."""
        r = self.robot
        r.publish_joints = r.publish_images = True
        r.joint_names_override = None
        r.image_encoding, r.image_size_override = "rgb8", None
        r.joint_rate_hz, r.camera_rate_hz = 100.0, 20.0
        r.positions = self.rig.ros.bundle_home(BUNDLE, NAMES)
        assert self.proc.poll() is None, "policy node died"
        if self.mode() == "ESTOP":
            assert _trigger(self.rig.client, "reset_estop").success
        if self.mode() != "AUTONOMY":
            refused = self.rig.ros.engage(self.rig.client)
            assert refused == "", f"engage refused: {refused}"
            self.rig.wait_mode("AUTONOMY", time.monotonic() - 5.0)

    def mode(self) -> str:
        return str(self.rig.modes[-1][1].data) if self.rig.modes else ""

    def settle(self, dwell: float = 0.5, attempts: int = 4) -> float:
        """restore(), then stay in AUTONOMY for ``dwell`` s with no mode change; returns when.

        A HOLD before the fault is injected can only come from a scheduling stall of this
        loaded host (an input aged past its max_age): it is printed with the node's reason and
        the node is re-engaged, so that each fault starts from AUTONOMY.
        """
        for _ in range(attempts):
            self.restore()
            t = time.monotonic()
            time.sleep(dwell)
            if not _mode_after(self.rig.modes, t):
                return time.monotonic()
            print(f"[stall] left AUTONOMY before the fault: {self.last_transition()}; "
                  f"{self.publisher_gaps(t)}")
        raise AssertionError(f"no {dwell} s of undisturbed AUTONOMY in {attempts} attempts")

    def publisher_gaps(self, since: float) -> str:
        gaps = [g for t, g in self.robot.joint_gaps if t >= since - 0.5]
        if not gaps:
            return "FakeRobot published joint states without a gap over 0.1 s (node side)"
        return f"FakeRobot joint_states publisher stalled {max(gaps) * 1e3:.0f} ms (test side)"

    def _leaving_autonomy(self) -> list[str]:
        return [ln.split("]: ", 1)[-1] for ln in self.log.read_text().splitlines()
                if "mode AUTONOMY ->" in ln]

    def _logged_more(self, n: int) -> bool:
        return len(self._leaving_autonomy()) > n

    def last_transition(self) -> str:
        lines = self._leaving_autonomy()
        return lines[-1] if lines else "(no reason logged)"

    def hold_on_fault(
        self, label: str, inject: Callable[[], None], undo: Callable[[], None], source: str,
        attempts: int = 3,
    ) -> tuple[float, float, str]:
        """From settled AUTONOMY, inject a fault and wait for HOLD: (t_fault, t_hold, reason).

        The node logs why it left AUTONOMY; a HOLD whose reason does not name ``source`` was a
        scheduling stall that beat the fault (printed), and the fault is injected again.
        """
        for _ in range(attempts):
            t_fault = self.settle()
            n = len(self._leaving_autonomy())
            inject()
            t_hold = self.rig.wait_mode("HOLD", t_fault, 5)
            self.rig.ros.wait_for(partial(self._logged_more, n), 2, "the logged HOLD reason")
            why = self._leaving_autonomy()[n]
            if source in why:
                return t_fault, t_hold, why
            print(f"[stall] {label}: HOLD for another reason first: {why}; "
                  f"{self.publisher_gaps(t_fault)}")
            undo()
        raise AssertionError(f"{label}: no HOLD naming {source} in {attempts} attempts")


@pytest.fixture(scope="class")
def node(rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedNode]:
    """One policy node process (autostart) and FakeRobot for the tests of a class."""
    tmp = tmp_path_factory.mktemp("shared")
    params = rig.ros.policy_params(tmp)
    robot = rig.ros.FakeRobot(rig.client, NAMES, rig.ros.bundle_home(BUNDLE, NAMES))
    try:
        with _node_in_hold(rig, params, tmp / "node.log") as (proc, t_start):
            yield SharedNode(rig, robot, proc, tmp / "node.log")
            assert proc.poll() is None, "policy node died"
    finally:
        robot.close()
    rig.monitor.assert_valid(t_start, "shared node, whole run")
    _assert_clean_log(tmp / "node.log")


class TestSharedNode:
    """Input faults against one node process; each test restores the inputs and re-engages."""

    def test_camera_stops(self, node: SharedNode) -> None:
        """Images stop in AUTONOMY -> HOLD within camera max_age + one period + SLACK_S of the
        last image, commands then stand still, /diagnostics inputs ERROR names the camera."""
        rig, robot = node.rig, node.robot
        t0 = time.monotonic()

        def inject() -> None:
            robot.publish_images = False

        def undo() -> None:
            robot.publish_images = True

        _t, t_hold, why = node.hold_on_fault("camera stops", inject, undo, CAM.name)
        dt = t_hold - robot.last_image_t
        print(f"[camera stops] {why}")
        bound = CAM.max_age_s + PERIOD + SLACK_S
        print(f"[camera stops] HOLD {dt * 1e3:.0f} ms after the last image "
              f"(max_age {CAM.max_age_s * 1e3:.0f} ms, bound {bound * 1e3:.0f} ms)")
        assert CAM.max_age_s - 0.02 <= dt <= bound, dt
        st = rig.wait_status("inputs", lambda s: _level(s) == 2 and "stale" in
                             s.message and CAM.name in s.message, t_hold, 3,
                             "inputs ERROR naming the camera")
        print(f"[camera stops] diagnostics: {st.message}")
        _assert_holding_still(rig.monitor, t_hold, "camera stops")
        robot.publish_images = True
        rig.monitor.assert_valid(t0, "camera stops")

    def test_joint_states_stop(self, node: SharedNode) -> None:
        """joint_states stop -> HOLD within joint max_age + one period + SLACK_S of the last
        sample, commands stand still, /diagnostics inputs ERROR names joint_states."""
        rig, robot = node.rig, node.robot
        t0 = time.monotonic()

        def inject() -> None:
            robot.publish_joints = False

        def undo() -> None:
            robot.publish_joints = True

        _t, t_hold, why = node.hold_on_fault("joint_states stop", inject, undo, "joint_states")
        dt = t_hold - robot.last_joint_t
        print(f"[joint_states stop] {why}")
        bound = JOINTS_MAX_AGE + PERIOD + SLACK_S
        print(f"[joint_states stop] HOLD {dt * 1e3:.0f} ms after the last joint state "
              f"(max_age {JOINTS_MAX_AGE * 1e3:.0f} ms, bound {bound * 1e3:.0f} ms)")
        assert JOINTS_MAX_AGE - 0.02 <= dt <= bound, dt
        st = rig.wait_status("inputs", lambda s: _level(s) == 2 and "joint_states" in
                             s.message, t_hold, 3, "inputs ERROR naming joint_states")
        print(f"[joint_states stop] diagnostics: {st.message}")
        _assert_holding_still(rig.monitor, t_hold, "joint_states stop")
        robot.publish_joints = True
        rig.monitor.assert_valid(t0, "joint_states stop")

    def test_joint_names_reordered_extra_missing(self, node: SharedNode) -> None:
        """Reordered and extra joints are accepted: AUTONOMY continues with no mode change and
        the mean command over 1.5 s matches the canonical order's within 0.01 rad (a wrong
        mapping would move the commands by ~0.5 rad). Missing joints are rejected: HOLD within
        joint max_age + one period + SLACK_S, diagnostics name every missing joint."""
        rig, robot = node.rig, node.robot
        t0 = time.monotonic()
        blend = CFG.handover.blend_time_s
        node.settle(dwell=1.0 + blend)  # past the engage blend
        variants: dict[str, list[str] | None] = {
            "canonical": None,
            "reordered": list(reversed(NAMES)),
            "extra": [*NAMES[:7], "left_extra_joint", *NAMES[7:], "aux_joint"],
        }
        means: dict[str, np.ndarray] = {}
        for label, names in variants.items():
            for _attempt in range(3):
                robot.joint_names_override = names
                t_a = time.monotonic()
                time.sleep(1.8)
                if not _mode_after(rig.modes, t_a):
                    break
                print(f"[stall] {label}: left AUTONOMY: {node.last_transition()}; "
                      f"{node.publisher_gaps(t_a)}")
                robot.joint_names_override = None
                node.settle(dwell=1.0 + blend)
            else:
                raise AssertionError(f"{label}: AUTONOMY did not continue: "
                                     f"{node.last_transition()}")
            rows = [np.concatenate(pair) for pair in zip(
                *(rig.monitor.window(a.name, t_a + 0.3, t_a + 1.8) for a in ARMS), strict=False)]
            assert len(rows) > 0.5 * RATE * 1.5, f"{label}: {len(rows)} commands"
            means[label] = np.mean(rows, axis=0)
        log = node.log.read_text()
        assert "rejected /joint_states" not in log, "reordered/extra joints were rejected"
        d_re = float(np.max(np.abs(means["reordered"] - means["canonical"])))
        d_ex = float(np.max(np.abs(means["extra"] - means["canonical"])))
        print(f"[joint names] mean command vs canonical order: reordered {d_re:.2e} rad, "
              f"extra {d_ex:.2e} rad")
        assert d_re < 0.01 and d_ex < 0.01

        missing = [NAMES[3], NAMES[-1]]

        def inject() -> None:
            robot.joint_names_override = [n for n in NAMES if n not in missing]

        def undo() -> None:
            robot.joint_names_override = None

        t_fault, t_hold, why = node.hold_on_fault("missing joints", inject, undo, "joint_states")
        dt = t_hold - t_fault
        bound = JOINTS_MAX_AGE + PERIOD + SLACK_S
        print(f"[joint names] missing {missing}: HOLD {dt * 1e3:.0f} ms after the first "
              f"incomplete JointState (bound {bound * 1e3:.0f} ms): {why}")
        assert JOINTS_MAX_AGE - 1.5 / robot.joint_rate_hz - 0.02 <= dt <= bound, dt

        def names_missing(s: Any) -> bool:
            err = _values(s).get("joint_states last error", "")
            return "joint_states" in s.message and all(n in err for n in missing)

        st = rig.wait_status("inputs", names_missing, t_hold, 3,
                             "inputs diagnostics naming the missing joints")
        print(f"[joint names] diagnostics: {_values(st)['joint_states last error']}")
        robot.joint_names_override = None
        rig.monitor.assert_valid(t0, "joint names")

    def test_bad_images(self, node: SharedNode) -> None:
        """Images in 'mono16', '32FC1' or 'rgba8' (not what the bundle takes) are rejected
        (another size is not a fault: it is preprocessed): HOLD within camera
        max_age + one period + SLACK_S, diagnostics name the camera and the bad value, the
        node stays alive."""
        rig, robot = node.rig, node.robot
        t0 = time.monotonic()
        bound = CAM.max_age_s + PERIOD + SLACK_S
        for label, enc, size, token in (
            ("mono16", "mono16", None, "'mono16'"),
            ("32FC1", "32FC1", None, "'32FC1'"),
            ("rgba8", "rgba8", None, "'rgba8'"),
        ):
            def inject(enc: str = enc, size: tuple[int, int] | None = size) -> None:
                robot.image_encoding, robot.image_size_override = enc, size

            t_fault, t_hold, why = node.hold_on_fault(f"bad image {label}", inject,
                                                      lambda: inject("rgb8", None), CAM.name)
            dt = t_hold - t_fault
            print(f"[bad image {label}] HOLD {dt * 1e3:.0f} ms after the first bad image "
                  f"(bound {bound * 1e3:.0f} ms): {why}")
            assert CAM.max_age_s - 1.5 / robot.camera_rate_hz - 0.02 <= dt <= bound, dt

            def names_it(s: Any, token: str = token) -> bool:
                return (token in _values(s).get(f"{CAM.name} last error", "")
                        and "stale" in s.message and CAM.name in s.message
                        and "likely cause: encoding" in _values(s).get(f"{CAM.name} verdict", "")
                        and "likely cause: encoding" in s.message)

            st = rig.wait_status("inputs", names_it, t_hold, 3,
                                 f"diagnostics naming {CAM.name} (stale) and {token}")
            print(f"[bad image {label}] {CAM.name} last error: "
                  f"{_values(st)[f'{CAM.name} last error']}")
            assert node.proc.poll() is None
        node.restore()
        rig.monitor.assert_valid(t0, "bad images")

    def test_estop_latches(self, node: SharedNode, ros: ModuleType) -> None:
        """estop -> ESTOP and commands stand still; engage and hold are refused (the engage
        reply mentions estop); reset_estop -> HOLD; engage works again."""
        rig = node.rig
        t0 = time.monotonic()
        t_req = node.settle()
        res = _trigger(rig.client, "estop")
        assert res.success, res.message
        t_estop = rig.wait_mode("ESTOP", t_req, 5)
        print(f"[estop] ESTOP on ~/mode {(t_estop - t_req) * 1e3:.0f} ms after the request")
        refused = ros.engage(rig.client, timeout=0.5)
        assert "estop" in refused.lower(), refused
        hold = _trigger(rig.client, "hold")
        assert not hold.success, hold.message
        _assert_holding_still(rig.monitor, t_estop, "estop")
        assert node.mode() == "ESTOP"
        t_reset = time.monotonic()
        res = _trigger(rig.client, "reset_estop")
        assert res.success, res.message
        rig.wait_mode("HOLD", t_reset, 5)
        assert ros.engage(rig.client) == ""
        rig.wait_mode("AUTONOMY", t_reset, 5)
        assert [m for _t, m in _mode_after(rig.modes, t_req)] == ["ESTOP", "HOLD", "AUTONOMY"]
        print(f"[estop] refusal: {refused!r}")
        rig.monitor.assert_valid(t0, "estop")

    def test_message_flood(self, node: SharedNode) -> None:
        """joint_states at 1000 Hz and images at 200 Hz (10x) for 4 s: the node stays alive,
        every command is valid, and the control rate stays >= FLOOD_MIN_RATE x target, both
        as the node reports it and as commands arrive here. Leaving AUTONOMY is allowed only
        as the fail-safe HOLD (printed with its reason; see the module docstring)."""
        rig, robot = node.rig, node.robot
        node.settle()
        n_js, n_img = robot.joints_sent, robot.images_sent
        n_leave = len(node._leaving_autonomy())
        t0 = time.monotonic()
        robot.joint_rate_hz, robot.camera_rate_hz = 1000.0, 200.0
        time.sleep(4.0)
        t1 = time.monotonic()
        robot.joint_rate_hz, robot.camera_rate_hz = 100.0, 20.0
        js_hz = (robot.joints_sent - n_js) / (t1 - t0)
        img_hz = (robot.images_sent - n_img) / (t1 - t0)
        # diagnostics published during the flood, their 2 s rate window inside it
        st = rig.wait_status("control loop", lambda s: True, t0 + 2.0, 1,
                             "control loop diagnostics", until=t1 + 0.05)
        vals = _values(st)
        node_rate = float(vals["achieved rate (Hz)"])
        ins = rig.wait_status("inputs", lambda s: True, t0 + 2.0, 1, "inputs diag",
                              until=t1 + 0.05)
        js_rx = float(_values(ins)["joint_states rate (Hz)"])
        cmd_rates = [len(rig.monitor.window(a.name, t0 + 1.0, t1)) / (t1 - t0 - 1.0)
                     for a in ARMS]
        print(f"[flood] sent joint_states {js_hz:.0f} Hz, images {img_hz:.0f} Hz; node got "
              f"joint_states at {js_rx:.0f} Hz; control rate: node {node_rate:.1f} Hz, "
              f"commands received {min(cmd_rates):.1f} Hz (target {RATE:g}); missed ticks "
              f"{vals['missed ticks']}, jitter p99 {float(vals['period jitter p99 (ms)']):.1f} "
              "ms")
        assert node.proc.poll() is None, "node died under the flood"
        assert js_hz > 500, "the flood did not happen"
        changes = [m for _t, m in _mode_after(rig.modes, t0)]
        if changes:
            print(f"[flood] left AUTONOMY: {node._leaving_autonomy()[n_leave:]}; "
                  f"{node.publisher_gaps(t0)}")
        assert set(changes) <= {"HOLD"}, changes
        assert node_rate >= FLOOD_MIN_RATE * RATE
        assert min(cmd_rates) >= FLOOD_MIN_RATE * RATE
        rig.monitor.assert_valid(t0 - 0.5, "flood")


# --------------------------------------------------------------------------- own processes


def _poison_expert_bundle(dst: Path, home: np.ndarray) -> tuple[np.ndarray, int]:
    """Copy the demo bundle to ``dst`` with one expert's output bias set to NaN.

    Chooses, by running the policy in this process, an expert that is inactive at the
    ``home`` pose but becomes active when one joint moves by a small amount; returns that pose and
    the expert. The manifest's experts.onnx SHA-256 is rewritten so the bundle verifies.
    """
    import onnx
    from onnx import numpy_helper

    from moe_policy_ros.core.backends import make_backend
    from moe_policy_ros.core.bundle import load_bundle
    from moe_policy_ros.core.manifest import read_manifest
    from moe_policy_ros.core.runtime import MoEPolicy
    from moe_policy_ros.core.types import Observation

    spec = read_manifest(BUNDLE).observation.cameras[0]  # the size the node brings frames to
    h, w = spec.height, spec.width
    image = (np.arange(h * w * 3) % 251).astype(np.uint8).reshape(h, w, 3)  # FakeRobot's

    def policy_for(path: Path) -> Callable[[np.ndarray], Any]:
        b = load_bundle(path)
        pol = MoEPolicy(b, make_backend("onnxruntime"), routing=CFG.policy.routing)
        idx = [NAMES.index(j) for j in b.manifest.observation.proprio.joints]
        return lambda q: pol.infer(Observation(images={CAM.name: image},
                                               proprio=q[idx].astype(np.float32)))

    infer = policy_for(BUNDLE)
    base = set(infer(home).decision.active.tolist())
    pick: tuple[float, int, int, float] | None = None  # |shift|, joint, expert, shift
    for j in range(len(NAMES)):
        for sign in (1.0, -1.0):
            for mag in np.arange(0.05, 0.51, 0.05):
                q = home.copy()
                q[j] += sign * mag
                if not (Q_MIN[j] + 0.05 <= q[j] <= Q_MAX[j] - 0.05):
                    break
                new = set(infer(q).decision.active.tolist()) - base
                if new:
                    if pick is None or mag < pick[0]:
                        pick = (float(mag), j, min(new), sign * float(mag))
                    break
    assert pick is not None, "no small joint move changes the routing of this bundle"
    _mag, joint, expert, shift = pick
    shutil.copytree(BUNDLE, dst)
    model = onnx.load(dst / "experts.onnx")
    inits = [i for i in model.graph.initializer if i.name.endswith("b_out")]
    assert inits, [i.name for i in model.graph.initializer]
    arr = numpy_helper.to_array(inits[0]).copy()
    arr[expert] = np.nan
    inits[0].CopyFrom(numpy_helper.from_array(arr, inits[0].name))
    onnx.save(model, dst / "experts.onnx")
    doc = yaml.safe_load((dst / "policy.yaml").read_text())
    doc["stages"]["experts"]["sha256"] = hashlib.sha256(
        (dst / "experts.onnx").read_bytes()).hexdigest()
    (dst / "policy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    pose = home.copy()
    pose[joint] += shift
    pose[joint] += 0.1 * np.sign(shift)  # a margin past the routing switch
    nan_infer = policy_for(dst)
    assert np.all(np.isfinite(nan_infer(home).actions)), "poisoned expert active at home"
    assert not np.all(np.isfinite(nan_infer(pose).actions)), "poisoned expert not reached"
    print(f"[nan bundle] expert {expert} poisoned; active when {NAMES[joint]} moves "
          f"{pose[joint] - home[joint]:+.2f} rad")
    return pose, expert


def test_nan_bundle_holds_and_never_publishes_nan(
    rig: Rig, tmp_path: Path, ros: ModuleType
) -> None:
    """A bundle whose expert outputs NaN once the routing picks it: engaged at home (finite),
    then the robot moves until the poisoned expert is active -> HOLD, never a NaN command,
    inference diagnostics ERROR with non-finite chunks counted; back home, engage works."""
    pose, _expert = _poison_expert_bundle(tmp_path / "nan_bundle", ros.bundle_home(BUNDLE, NAMES))
    params = ros.policy_params(tmp_path, policy__bundle=str(tmp_path / "nan_bundle"))
    robot = ros.FakeRobot(rig.client, NAMES, ros.bundle_home(BUNDLE, NAMES))
    try:
        with _node_in_hold(rig, params, tmp_path / "node.log") as (proc, t0):
            _engaged(rig, t0)
            time.sleep(0.5)
            t_move = time.monotonic()
            _ramp(robot, pose)
            t_hold = rig.wait_mode("HOLD", t_move, 10)
            print(f"[nan bundle] HOLD {(t_hold - t_move):.2f} s after the robot started moving")
            inf = rig.wait_status(
                "inference",
                lambda s: _level(s) == 2 and int(_values(s)["non-finite chunks"]) > 0,
                t_hold - 1.0, 3, "inference ERROR with non-finite chunks")
            print(f"[nan bundle] inference diagnostics: {inf.message}")
            _assert_holding_still(rig.monitor, t_hold, "nan bundle")
            _ramp(robot, ros.bundle_home(BUNDLE, NAMES))
            assert ros.engage(rig.client) == "", "engage after returning home"
            rig.wait_mode("AUTONOMY", t_hold, 5)
            time.sleep(0.5)
            assert proc.poll() is None
    finally:
        robot.close()
    assert "NaN" in (tmp_path / "node.log").read_text()
    _assert_clean_log(tmp_path / "node.log")
    rig.monitor.assert_valid(t0, "nan bundle")


def test_corrupt_bundle_at_configure(
    rig: Rig, tmp_path: Path, ros: ModuleType, wait_for: Callable[..., Any]
) -> None:
    """Truncated encoder.onnx (hash not fixed; then hash fixed) and a manifest whose
    action.dim disagrees with its joints: configure fails each time naming the file (and
    field), the node stays up and unconfigured; with policy.bundle set to the good bundle
    configure succeeds."""
    from lifecycle_msgs.msg import Transition

    cases: list[tuple[str, Path, tuple[str, ...]]] = []
    for label in ("truncated", "truncated_rehashed", "dim_mismatch"):
        d = tmp_path / label
        shutil.copytree(BUNDLE, d)
        doc = yaml.safe_load((d / "policy.yaml").read_text())
        if label.startswith("truncated"):
            data = (d / "encoder.onnx").read_bytes()[: (d / "encoder.onnx").stat().st_size // 2]
            (d / "encoder.onnx").write_bytes(data)
            if label == "truncated_rehashed":
                doc["stages"]["encoder"]["sha256"] = hashlib.sha256(data).hexdigest()
                cases.append((label, d, ("encoder.onnx", "truncated")))
            else:
                cases.append((label, d, ("encoder.onnx", "sha-256")))
        else:
            doc["action"]["dim"] = int(doc["action"]["dim"]) - 1
            cases.append((label, d, ("policy.yaml", "dim")))
        (d / "policy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    params = ros.policy_params(tmp_path, policy__bundle=str(cases[0][1]))
    rig.monitor.cut()
    t0 = time.monotonic()
    with ros.policy_node(params, tmp_path / "node.log", autostart=False) as proc:
        wait_for(lambda: ros.lifecycle_state(rig.client) == "unconfigured", 30, "unconfigured")
        for i, (label, path, tokens) in enumerate(cases):
            if i:
                _set_bundle(rig.client, path)
            t_try = time.monotonic()
            assert not ros.change_state(rig.client, Transition.TRANSITION_CONFIGURE), label
            assert proc.poll() is None, f"node died on {label}"
            assert ros.lifecycle_state(rig.client) == "unconfigured"

            def names_it(s: Any, tokens: tuple[str, ...] = tokens, path: Path = path) -> bool:
                m = s.message.lower()
                return _level(s) == 2 and str(path) in s.message and all(
                    t.lower() in m for t in tokens)

            st = rig.wait_status("lifecycle", names_it, t_try, 5,
                                 f"{label}: lifecycle ERROR naming {tokens}")
            print(f"[corrupt bundle {label}] {st.message.splitlines()[0][:160]}")
        _set_bundle(rig.client, BUNDLE)
        assert ros.change_state(rig.client, Transition.TRANSITION_CONFIGURE)
        assert ros.lifecycle_state(rig.client) == "inactive"
        rig.wait_status("lifecycle", lambda s: _level(s) == 0, time.monotonic(), 5,
                        "lifecycle OK after a good configure")
    assert rig.monitor.check(t0)[0] == 0, "commands published while unconfigured/inactive"
    _assert_clean_log(tmp_path / "node.log")


def test_engage_disengage_during_motion(rig: Rig, tmp_path: Path, ros: ModuleType) -> None:
    """With a moving teleop leader (all 14 joints on /teleop/joint_command) and
    require_teleop_to_engage: three engage/disengage cycles (one disengage in mid-blend).
    Pass: ~/mode reports exactly HOLD, TELEOP, then AUTONOMY/TELEOP per cycle; disengage is
    never refused; commands valid and step-limited throughout (bumpless)."""
    params = ros.policy_params(tmp_path, handover__require_teleop_to_engage=True)
    home = ros.bundle_home(BUNDLE, NAMES)
    robot = ros.FakeRobot(rig.client, NAMES, home)
    stop = threading.Event()
    moving = np.zeros(len(NAMES))
    moving[[0, 2, 7, 9]] = 0.05  # rad amplitude, 0.5 Hz

    def leader() -> None:
        t_l = time.monotonic()
        while not stop.is_set():
            robot.teleop_positions = home + moving * math.sin(math.pi * (time.monotonic() - t_l))
            stop.wait(0.01)

    th = threading.Thread(target=leader, daemon=True)
    th.start()
    expected = ["HOLD", "TELEOP"]
    try:
        with _node_in_hold(rig, params, tmp_path / "node.log") as (proc, t0):
            assert ros.engage(rig.client, on=False) == ""
            rig.wait_mode("TELEOP", t0, 5)
            time.sleep(0.5)
            for dwell in (1.4, 0.4, 1.4):
                t_c = time.monotonic()
                refused = ros.engage(rig.client, on=True)
                assert refused == "", refused
                rig.wait_mode("AUTONOMY", t_c, 5)
                time.sleep(dwell)
                t_d = time.monotonic()
                from std_srvs.srv import SetBool

                res = rig.client.call(SetBool, f"{POLICY_NODE}/engage_autonomy",
                                      SetBool.Request(data=False))
                assert res.success and "TELEOP" in res.message, res.message
                rig.wait_mode("TELEOP", t_d, 5)
                expected += ["AUTONOMY", "TELEOP"]
                time.sleep(0.7)
            assert proc.poll() is None
    finally:
        stop.set()
        th.join(timeout=2)
        robot.close()
    seen = [m for _t, m in _mode_after(rig.modes, t0)]
    assert seen == expected, f"~/mode sequence {seen}, expected {expected}"
    _assert_clean_log(tmp_path / "node.log")
    n = rig.monitor.assert_valid(t0, "engage/disengage")
    # Bumpless evidence: the largest change of step (acceleration) across all transitions.
    worst, offset = 0.0, 0
    for arm in ARMS:
        q = np.array(rig.monitor.window(arm.name, t0))
        sl = slice(offset, offset + len(arm.joints))
        offset += len(arm.joints)
        if len(q) > 2:
            worst = max(worst, float(np.max(np.abs(np.diff(q, 2, axis=0)) / MAX_DSTEP[sl])))
    print(f"[engage/disengage] {len(expected)} modes reported as expected over {n} commands; "
          f"largest change of step {worst:.2f} x max_acceleration * period^2")
    # The robot stands still, so the deviation clamp never acts: the filter's acceleration
    # bound holds exactly on every tick, transitions included.
    assert worst <= 1.0 + 1e-4, f"change of step {worst:.3f} x the acceleration bound"


def test_operator_override_and_shadow_mode(
    rig: Rig, tmp_path: Path, ros: ModuleType, wait_for: Callable[..., Any]
) -> None:
    """In AUTONOMY a teleop command that departs from the policy's by more than
    handover.override_threshold takes over at once (TELEOP); in TELEOP the policy keeps
    running in shadow: ~/shadow/command (all joints) and ~/shadow/router/* are published,
    while the arm commands follow the teleop command, not the policy.
    Pass: TELEOP within 0.2 s of the departing teleop command; shadow topics only carry data
    in TELEOP; commands valid throughout."""
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float32MultiArray

    params = ros.policy_params(tmp_path)
    threshold = CFG.handover.override_threshold
    home = ros.bundle_home(BUNDLE, NAMES)
    shadow_cmd = rig.client.record(JointState, f"{POLICY_NODE}/shadow/command")
    shadow_gates = rig.client.record(Float32MultiArray, f"{POLICY_NODE}/shadow/router/gates")
    robot = ros.FakeRobot(rig.client, NAMES, home)
    try:
        with _node_in_hold(rig, params, tmp_path / "node.log") as (_proc, t0):
            t_auto = _engaged(rig, t0)
            time.sleep(1.0)
            assert not [t for t, _m in shadow_cmd if t >= t_auto + 0.1], "shadow in AUTONOMY"
            # the operator grabs the leader arm: one joint departs by 2x the threshold
            override = home.copy()
            override[NAMES.index("left_elbow")] -= 2.0 * threshold  # inside the joint limits
            t_grab = time.monotonic()
            robot.teleop_positions = override
            t_teleop = rig.wait_mode("TELEOP", t_grab, 5)
            took = t_teleop - t_grab
            wait_for(lambda: sum(t > t_teleop for t, _m in shadow_gates) >= 3, 5,
                     "shadow router state in TELEOP")
            wait_for(lambda: sum(t > t_teleop for t, _m in shadow_cmd) >= 10, 5,
                     "shadow commands in TELEOP")
            time.sleep(1.5)  # the filter walks the arm to the teleop target
    finally:
        robot.close()
    print(f"[override] TELEOP {took * 1e3:.0f} ms after the departing teleop command")
    assert took <= 0.2, f"override took {took:.3f} s"
    msg = shadow_cmd[-1][1]
    assert list(msg.name) == NAMES and len(msg.position) == len(NAMES)
    assert all(math.isfinite(x) for x in msg.position)
    g = shadow_gates[-1][1].data
    assert math.isclose(sum(g), 1.0, abs_tol=1e-4)
    # commands now track the operator: the left elbow heads to the teleop target, as far as
    # the safety filter's deviation window around the measured position allows (the fake
    # robot does not move, so the command stops max_position_deviation away from it)
    left = rig.monitor.window("left_arm", t_teleop + 1.0)
    j = NAMES.index("left_elbow")
    reachable = max(override[j], home[j] - CFG.safety.max_position_deviation)
    assert left and abs(left[-1][LEFT_ELBOW_INDEX] - reachable) < 1e-6, left[-1]
    rig.monitor.assert_valid(t0, "override")
    _assert_clean_log(tmp_path / "node.log")


def test_killed_node_respawns_in_hold(
    rig: Rig, tmp_path: Path, ros: ModuleType, wait_for: Callable[..., Any]
) -> None:
    """SIGKILL the node in AUTONOMY and start a new process: it comes up in HOLD and stays
    there for 3 s with every input fresh (never AUTONOMY on its own), its first command is
    the measured position, all its commands are valid; engage then works."""
    params = ros.policy_params(tmp_path)
    home = ros.bundle_home(BUNDLE, NAMES)
    robot = ros.FakeRobot(rig.client, NAMES, home)
    try:
        with _node_in_hold(rig, params, tmp_path / "node1.log") as (proc, t0):
            _engaged(rig, t0)
            time.sleep(1.0)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
            t_kill = time.monotonic()
        time.sleep(0.3)
        rig.monitor.assert_valid(t0, "before the kill")
        with _node_in_hold(rig, params, tmp_path / "node2.log") as (proc2, t1):
            t_up = rig.wait_mode("HOLD", t1)  # seen already: its arrival time
            wait_for(lambda: all(rig.monitor.window(a.name, t1) for a in ARMS), 10,
                     "commands from the respawned node")
            print(f"[respawn] new process in HOLD {t_up - t_kill:.1f} s after SIGKILL")
            time.sleep(3.0)
            seen = [m for _t, m in _mode_after(rig.modes, t_kill)]
            assert seen == ["HOLD"], f"respawned node modes without a request: {seen}"
            first = np.concatenate([rig.monitor.window(a.name, t1)[0] for a in ARMS])
            np.testing.assert_allclose(first, np.clip(home, Q_MIN, Q_MAX), atol=1e-6)
            _engaged(rig, time.monotonic())
            time.sleep(0.5)
            assert proc2.poll() is None
    finally:
        robot.close()
    rig.monitor.assert_valid(t1, "respawned node")
    for log in ("node1.log", "node2.log"):
        _assert_clean_log(tmp_path / log)
