"""`moe-policy-ros up config/sim_dual_arm.yaml`: the whole simulated graph, over DDS.

``up`` runs as a subprocess (``python -m moe_policy_ros.cli up``) and starts ``aloha_sim``
(MuJoCo) and the ``moe_policy`` lifecycle node as processes of their own; this test engages
autonomy through the public service, watches the public topics, then stops ``up`` with
SIGINT (and, separately, SIGTERM) and checks that it exits 0 and leaves no node behind.

Processes are found by the unique path of the parameter file ``up`` writes for its nodes
(it prints it), which every child's command line carries (``--params-file``), so nothing
unrelated is touched.
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy")
if importlib.util.find_spec("mujoco") is None or importlib.util.find_spec("gym_aloha") is None:
    pytest.skip("mujoco and gym-aloha are needed for aloha_sim", allow_module_level=True)

from helpers import REPO
from helpers.ros import DEMO_BUNDLE, UpProcess

from moe_policy_ros.core.config import load_config
from moe_policy_ros.core.manifest import read_manifest
from moe_policy_ros.sim.aloha import JOINT_NAMES

if TYPE_CHECKING:
    from helpers.ros import RosClient

pytestmark = [pytest.mark.sim, pytest.mark.ros, pytest.mark.slow]

SIM_CFG = REPO / "config" / "sim_dual_arm.yaml"
CFG = load_config(SIM_CFG)
BUNDLE = DEMO_BUNDLE
STOP_WITHIN_S = 8.0  # `up` deactivates the policy, then SIGINT/SIGTERM/SIGKILL per 5 s


def _params(tmp: Path) -> Path:
    doc = yaml.safe_load(SIM_CFG.read_text())
    doc["/**/moe_policy"]["ros__parameters"]["policy"]["bundle"] = str(BUNDLE)
    from moe_policy_ros.core.manifest import read_manifest

    for cam in read_manifest(BUNDLE).observation.cameras:  # what this bundle takes
        doc["/**"]["ros__parameters"]["cameras"][cam.name].update(
            width=cam.width, height=cam.height)
    path = tmp / "sim_params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Up(UpProcess):
    """``moe-policy-ros up`` on :func:`_params` for ``duration_s``."""

    def __init__(self, tmp: Path, duration_s: float = 120.0, *extra: str) -> None:
        self.params = _params(tmp)
        super().__init__([str(self.params), "--duration", str(duration_s), "--log-level",
                          "warn", *extra], tmp / "up.log")

    def stop_with(self, sig: signal.Signals) -> tuple[int | None, float]:
        """Send ``sig`` to ``up`` only (not its process group); (exit code, seconds)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=STOP_WITHIN_S + 10)
        except subprocess.TimeoutExpired:
            rc = None
        return rc, time.monotonic() - t0


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    u = Up(tmp_path)
    yield u
    u.close()


def _assert_stopped_cleanly(u: Up, sig: signal.Signals) -> None:
    children = u.children()
    assert len(children) == 2, f"expected aloha_sim + moe_policy, got {children}\n{u.log()}"
    rc, took = u.stop_with(sig)
    log = u.log()
    assert rc == 0, f"`up` exited {rc} after {sig.name} ({took:.1f} s)\n{log}"
    assert took < STOP_WITHIN_S, f"`up` took {took:.1f} s to stop after {sig.name}\n{log}"
    assert "[up] all nodes stopped" in log
    left = u.children()  # `up` itself has exited
    assert left == [], f"processes left after {sig.name}: {left}"
    for pid in children:  # not even as zombies of someone else
        assert not Path(f"/proc/{pid}").exists(), f"node process {pid} still exists"
    print(f"`up` stopped in {took:.2f} s after {sig.name}")


def test_up_sim_graph_runs_autonomy_and_stops_on_sigint(
    ros_client: RosClient, up: Up, ros: ModuleType, wait_for: Callable[..., Any]
) -> None:
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Float32MultiArray, Float64MultiArray, Int32MultiArray, String

    from moe_policy_ros.session import LATCHED_QOS

    arms = {a.name: a for a in CFG.robot.arms}
    modes = ros_client.record(String, "/moe_policy/mode", LATCHED_QOS)
    cmds = {name: ros_client.record(Float64MultiArray, a.command_topic)
            for name, a in arms.items()}
    joints = ros_client.record(JointState, "/joint_states", qos_profile_sensor_data)
    gates = ros_client.record(Float32MultiArray, "/moe_policy/router/gates")
    active = ros_client.record(Int32MultiArray, "/moe_policy/router/active")
    dominant = ros_client.record(String, "/moe_policy/router/dominant")
    success = ros_client.record(Bool, "/aloha_sim/success", LATCHED_QOS)

    wait_for(lambda: "[up] /moe_policy: active" in up.log(), 90, "`up` to activate the policy")
    wait_for(lambda: any(m.data == "HOLD" for _t, m in modes), 30, "latched HOLD mode")
    wait_for(lambda: len(joints) > 10, 30, "/joint_states from aloha_sim")
    refused = ros.engage(ros_client)
    assert refused == "", f"engage refused: {refused}"
    wait_for(lambda: any(m.data == "AUTONOMY" for _t, m in modes), 10, "AUTONOMY")
    t_engaged = time.monotonic()
    time.sleep(4.5)
    t_end = time.monotonic()
    assert up.proc.poll() is None, f"`up` exited early\n{up.log()}"

    # stream commands on both arms at the configured rate, 7 finite values inside the limits
    target = CFG.policy.control_rate_hz
    rates = {}
    for name, arm in arms.items():
        window = [(t, m) for t, m in cmds[name] if t_engaged + 0.5 <= t <= t_end]
        assert len(window) > 20, f"{name}: {len(window)} commands"
        rates[name] = (len(window) - 1) / (window[-1][0] - window[0][0])
        lo = np.array([j.min_position for j in arm.joints])
        hi = np.array([j.max_position for j in arm.joints])
        for _t, m in window:
            q = np.asarray(m.data)
            assert q.shape == (7,) and np.all(np.isfinite(q)), q
            assert np.all(q >= lo - 1e-9) and np.all(q <= hi + 1e-9), q
    print(f"command rate (target {target:g} Hz): "
          + ", ".join(f"{k} {v:.1f} Hz" for k, v in rates.items()))
    for name, rate in rates.items():
        assert rate > 0.6 * target, f"{name}: {rate:.1f} Hz (target {target:g} Hz)"

    # /joint_states from the sim: the 14 names in order, finite, near the commands' rate
    js = [m for t, m in joints if t_engaged <= t <= t_end]
    assert js
    assert all(tuple(m.name) == JOINT_NAMES for m in js)
    assert len(JOINT_NAMES) == 14 and list(JOINT_NAMES) == CFG.robot.joint_names
    assert all(len(m.position) == 14 and all(map(math.isfinite, m.position)) for m in js)
    js_rate = len(js) / (t_end - t_engaged)
    print(f"/joint_states {js_rate:.1f} Hz")
    assert js_rate > 0.6 * 50.0

    # router topics: one gate per expert summing to 1, k sorted active experts, a label
    m = read_manifest(BUNDLE)
    recent = [g for t, g in gates if t >= t_engaged]
    assert len(recent) >= 10, f"{len(recent)} router messages in {t_end - t_engaged:.1f} s"
    for g in recent:
        assert len(g.data) == m.experts.count
        assert math.isclose(sum(g.data), 1.0, abs_tol=1e-4)
        assert all(0.0 <= x <= 1.0 for x in g.data)
    for _t, a in active[-10:]:
        act = list(a.data)
        assert act == sorted(act) and len(act) == m.routing.k
        assert set(act) <= set(range(m.experts.count))
    assert dominant and dominant[-1][1].data in m.experts.labels

    # the task's success flag is published (latched, on change and at 1 Hz)
    wait_for(lambda: len(success) >= 2, 5, "/aloha_sim/success")
    assert all(isinstance(s.data, bool) for _t, s in success)

    _assert_stopped_cleanly(up, signal.SIGINT)


def test_up_stops_cleanly_on_sigterm(
    ros_client: RosClient, up: Up, wait_for: Callable[..., Any]
) -> None:
    from std_msgs.msg import String

    from moe_policy_ros.session import LATCHED_QOS

    modes = ros_client.record(String, "/moe_policy/mode", LATCHED_QOS)
    wait_for(lambda: "[up] /moe_policy: active" in up.log(), 90, "`up` to activate the policy")
    wait_for(lambda: any(m.data == "HOLD" for _t, m in modes), 30, "latched HOLD mode")
    _assert_stopped_cleanly(up, signal.SIGTERM)


def test_up_rejects_a_broken_file_without_starting_anything(
    tmp_path: Path, ros: ModuleType, node_env: dict[str, str]
) -> None:
    bad = tmp_path / "bad.yaml"
    doc: dict[str, Any] = yaml.safe_load(SIM_CFG.read_text())
    doc["realsense_wrist"] = {"ros__parameters": {"source": "software"}}
    bad.write_text(yaml.safe_dump(doc))
    res = subprocess.run(
        [sys.executable, "-m", "moe_policy_ros.cli", "up", str(bad), "--duration", "5"],
        env=node_env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 1, res
    assert "cameras.wrist.topic" in res.stderr
    assert "[up] starting" not in res.stdout
    assert ros.pids_with(str(bad)) == []


def test_up_signal_during_bring_up_stops_at_once(
    tmp_path: Path, ros: ModuleType, wait_for: Callable[..., Any]
) -> None:
    """The policy node is frozen (SIGSTOP) before it can answer, so `up` is still waiting
    for its lifecycle services when SIGINT arrives: it must not wait out --activate-timeout.
    """
    u = Up(tmp_path, 120.0)
    frozen: int | None = None
    try:
        def policy_pid() -> int | None:
            if not u.marker:
                return None
            out = subprocess.run(["pgrep", "-f", f"policy_node.*{u.marker}"],
                                 capture_output=True, text=True).stdout.split()
            return int(out[0]) if out else None

        wait_for(lambda: policy_pid() is not None, 30, "the policy node process", poll=0.01)
        frozen = policy_pid()
        assert frozen is not None
        os.kill(frozen, signal.SIGSTOP)
        time.sleep(1.0)
        assert "[up] /moe_policy: active" not in u.log()
        t0 = time.monotonic()
        u.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        os.kill(frozen, signal.SIGCONT)  # so that it can take the SIGINT `up` sends it
        frozen = None
        rc = u.proc.wait(timeout=30)
        took = time.monotonic() - t0
        log = u.log()
        assert rc == 0, log
        assert "not brought up: interrupted" in log, log
        assert took < STOP_WITHIN_S, f"{took:.1f} s\n{log}"
        assert ros.pids_with(u.marker) == []
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        u.close()


def test_up_gives_up_when_a_node_dies_during_bring_up(
    tmp_path: Path, ros: ModuleType, node_env: dict[str, str]
) -> None:
    """Every node fails at rcl init (bad --log-level): `up` reports it and exits 1 at once
    instead of waiting --activate-timeout for services nobody will offer."""
    params = _params(tmp_path)
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "moe_policy_ros.cli", "up", str(params), "--log-level", "bogus",
         "--activate-timeout", "60"],
        env=node_env, cwd=REPO, capture_output=True, text=True, timeout=90,
    )
    took = time.monotonic() - t0
    assert res.returncode == 1, res
    assert "/moe_policy: not brought up:" in res.stdout and "exited (1)" in res.stdout, res
    assert "Traceback" not in res.stdout.split("[up] all nodes stopped")[-1]
    assert took < 30, f"{took:.1f} s"
    assert ros.pids_with(str(params)) == []
