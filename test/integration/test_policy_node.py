"""The policy node in its own process, driven and watched over DDS by this test process.

The robot side is a real publisher of /joint_states and images (``FakeRobot``); the node
under test is the real ``policy_node`` executable with the bundled model on ONNX Runtime.
"""

from __future__ import annotations

import itertools
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

pytest.importorskip("rclpy")

from helpers import REPO
from helpers.ros import DEMO_BUNDLE

from moe_policy_ros.core.config import load_config
from moe_policy_ros.core.diagnostics import Key
from moe_policy_ros.core.manifest import read_manifest

if TYPE_CHECKING:
    from helpers.ros import RosClient

pytestmark = [pytest.mark.ros, pytest.mark.slow]

BUNDLE = DEMO_BUNDLE
CFG = load_config(REPO / "config" / "dual_arm.yaml")
NAMES = CFG.robot.joint_names
LEFT = CFG.robot.arm("left_arm")



@pytest.fixture(scope="module")
def write_params(ros: ModuleType) -> Callable[..., Path]:
    """``write_params(tmp, **overrides)``: the policy node's parameter file."""

    def write(tmp: Path, **overrides: Any) -> Path:
        # FakeRobot publishes from this (busy) test process; allow for its GIL stalls on a
        # loaded 2-core machine. Staleness itself is tested in test_faults.py.
        return ros.policy_params(tmp, input_max_age_s=0.5, **overrides)

    return write


def _latched_mode(client: RosClient) -> list[tuple[float, Any]]:
    from std_msgs.msg import String

    from moe_policy_ros.session import LATCHED_QOS

    return client.record(String, "/moe_policy/mode", LATCHED_QOS)


@pytest.fixture(scope="module")
def node_with_robot(
    ros: ModuleType, ros_client: RosClient
) -> Callable[..., AbstractContextManager[None]]:
    """``with node_with_robot(params, log, autostart=True, stamp_offset_s=0.0):`` the policy
    node process, fed by a FakeRobot standing at the bundle's home pose (its stamps shifted
    by ``stamp_offset_s``: negative for a sensor whose data is that old on arrival)."""

    @contextmanager
    def run(params: Path, log: Path, autostart: bool = True,
            stamp_offset_s: float = 0.0) -> Iterator[None]:
        robot = ros.FakeRobot(ros_client, NAMES, ros.bundle_home(BUNDLE, NAMES))
        robot.stamp_offset_s = stamp_offset_s
        try:
            with ros.policy_node(params, log, autostart):
                yield
        finally:
            robot.close()

    return run


def test_stream_mode_router_topics_and_diagnostics(
    ros_client: RosClient,
    tmp_path: Path,
    ros: ModuleType,
    wait_for: Callable[..., Any],
    write_params: Callable[..., Path],
    node_with_robot: Callable[..., AbstractContextManager[None]],
) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import Float32MultiArray, Float64MultiArray, Int32MultiArray, String

    params = write_params(tmp_path, policy__execution__revise_on_arrival=True)
    modes = _latched_mode(ros_client)
    cmds = ros_client.record(Float64MultiArray, LEFT.command_topic)
    rcmds = ros_client.record(Float64MultiArray, CFG.robot.arm("right_arm").command_topic)
    gates = ros_client.record(Float32MultiArray, "/moe_policy/router/gates")
    active = ros_client.record(Int32MultiArray, "/moe_policy/router/active")
    dominant = ros_client.record(String, "/moe_policy/router/dominant")
    diags = ros_client.record(DiagnosticArray, "/diagnostics")
    # camera and joint data 50 ms old on arrival (a camera's exposure-to-host latency): each
    # chunk covers the next tick's step, so revise_on_arrival sends the setpoint on the way
    with node_with_robot(params, tmp_path / "node.log", stamp_offset_s=-0.05):
        wait_for(lambda: any(m.data == "HOLD" for _t, m in modes), 60, "latched HOLD mode")
        refused = ros.engage(ros_client)
        assert refused == "", f"engage refused: {refused}"
        wait_for(lambda: any(m.data == "AUTONOMY" for _t, m in modes), 10, "AUTONOMY")
        t_engaged = time.monotonic()
        time.sleep(3.0)
        window = [(t, m) for t, m in cmds if t >= t_engaged + 0.5]
        wait_for(lambda: len(diags) > 2, 10, "/diagnostics")
    # stream: ~control rate, 7 finite values per arm, inside the joint limits
    span = window[-1][0] - window[0][0]
    rate = (len(window) - 1) / span
    assert rate > 0.6 * CFG.policy.control_rate_hz, f"command rate {rate:.1f} Hz"
    lo = np.array([j.min_position for j in LEFT.joints])
    hi = np.array([j.max_position for j in LEFT.joints])
    for _t, m in window:
        q = np.array(m.data)
        assert q.shape == (7,) and np.all(np.isfinite(q))
        assert np.all(q >= lo - 1e-9) and np.all(q <= hi + 1e-9)
    assert len(rcmds) > 10
    # router state: one gate per expert summing to 1, labels in the layout
    m = read_manifest(BUNDLE)
    g = gates[-1][1]
    assert len(g.data) == m.experts.count
    assert math.isclose(sum(g.data), 1.0, abs_tol=1e-4)
    assert g.layout.dim[0].label == "experts:" + ",".join(m.experts.labels)
    act = list(active[-1][1].data)
    assert act == sorted(act) and len(act) == m.routing.k
    assert set(act) <= set(range(m.experts.count))
    assert dominant[-1][1].data in m.experts.labels
    # diagnostics: one status per concern, with sane values
    last: dict[str, Any] = {}
    for _t, arr in diags:
        for st in arr.status:
            last[st.name] = st
    for concern in ("inputs", "inference", "router", "control loop", "safety"):
        assert f"moe_policy: {concern}" in last, sorted(last)
    vals = {kv.key: kv.value for kv in last["moe_policy: control loop"].values}
    assert float(vals["achieved rate (Hz)"]) > 0.6 * CFG.policy.control_rate_hz
    # a chunk due by the next tick sends the setpoint on the way to that tick's command at
    # once (revise_on_arrival): over 3 s of chunks some do, never more than all
    early, chunks = map(int, vals[Key.SENT_ON_ARRIVAL].split("/"))
    assert 0 < early <= chunks, vals[Key.SENT_ON_ARRIVAL]
    svals = {kv.key: kv.value for kv in last["moe_policy: safety"].values}
    assert int(svals["revisions"]) >= early  # each went through the safety filter
    ivals = {kv.key: kv.value for kv in last["moe_policy: inference"].values}
    assert ivals["backend"].startswith("onnxruntime")
    assert 0 < float(ivals["latency median (ms)"]) < 1000
    assert last["moe_policy: safety"].message.startswith("mode AUTONOMY")


def test_chunk_mode_publishes_joint_trajectories(
    ros_client: RosClient,
    tmp_path: Path,
    ros: ModuleType,
    wait_for: Callable[..., Any],
    write_params: Callable[..., Path],
    node_with_robot: Callable[..., AbstractContextManager[None]],
) -> None:
    from trajectory_msgs.msg import JointTrajectory

    from moe_policy_ros.session import stamp_to_ns

    params = write_params(tmp_path, policy__execution__mode="chunk")
    modes = _latched_mode(ros_client)
    trajs = ros_client.record(JointTrajectory, LEFT.trajectory_topic)
    with node_with_robot(params, tmp_path / "node.log"):
        wait_for(lambda: any(m.data == "HOLD" for _t, m in modes), 60, "HOLD")
        assert ros.engage(ros_client) == ""
        wait_for(lambda: sum(len(m.points) > 1 for _t, m in trajs) >= 3, 15,
                 "three chunk trajectories")
    H = read_manifest(BUNDLE).action.chunk_length
    chunks = [m for _t, m in trajs if len(m.points) > 1]
    now_ns = ros_client.node.get_clock().now().nanoseconds
    for msg in chunks:
        assert list(msg.joint_names) == LEFT.joint_names
        assert 2 <= len(msg.points) <= H + 1
        t = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        assert all(b > a for a, b in itertools.pairwise(t)), t
        np.testing.assert_allclose(np.diff(t), CFG.policy.control_period_s, atol=1e-6)
        stamp = stamp_to_ns(msg.header.stamp)
        assert 0 < stamp <= now_ns, "header stamp must be the (past) observation time"
        for p in msg.points:
            assert len(p.positions) == 7 and all(math.isfinite(x) for x in p.positions)


def test_lifecycle_nothing_published_while_inactive(
    ros_client: RosClient,
    tmp_path: Path,
    ros: ModuleType,
    wait_for: Callable[..., Any],
    write_params: Callable[..., Path],
    node_with_robot: Callable[..., AbstractContextManager[None]],
) -> None:
    from lifecycle_msgs.msg import Transition
    from std_msgs.msg import Float64MultiArray

    params = write_params(tmp_path)
    cmds = ros_client.record(Float64MultiArray, LEFT.command_topic)
    with node_with_robot(params, tmp_path / "node.log", autostart=False):
        wait_for(lambda: ros.lifecycle_state(ros_client) == "unconfigured", 30, "unconfigured")
        assert ros.change_state(ros_client, Transition.TRANSITION_CONFIGURE)
        assert ros.lifecycle_state(ros_client) == "inactive"
        time.sleep(1.5)
        assert cmds == [], "commands published while inactive"
        assert ros.change_state(ros_client, Transition.TRANSITION_ACTIVATE)
        wait_for(lambda: len(cmds) > 10, 10, "commands while active (holding)")
        assert ros.change_state(ros_client, Transition.TRANSITION_DEACTIVATE)
        time.sleep(0.3)
        n = len(cmds)
        time.sleep(1.5)
        assert len(cmds) == n, "commands published after deactivate"
        assert ros.change_state(ros_client, Transition.TRANSITION_CLEANUP)
        assert ros.lifecycle_state(ros_client) == "unconfigured"


def test_tampered_bundle_refused_then_reconfigured(
    ros_client: RosClient,
    tmp_path: Path,
    ros: ModuleType,
    wait_for: Callable[..., Any],
    write_params: Callable[..., Path],
) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.msg import Transition
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    bad = tmp_path / "tampered"
    shutil.copytree(BUNDLE, bad)
    data = bytearray((bad / "experts.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "experts.onnx").write_bytes(bytes(data))
    params = write_params(tmp_path, policy__bundle=str(bad))
    diags = ros_client.record(DiagnosticArray, "/diagnostics")
    with ros.policy_node(params, tmp_path / "node.log", autostart=False) as proc:
        wait_for(lambda: ros.lifecycle_state(ros_client) == "unconfigured", 30, "unconfigured")
        assert not ros.change_state(ros_client, Transition.TRANSITION_CONFIGURE)
        assert proc.poll() is None, "node died on a tampered bundle"
        assert ros.lifecycle_state(ros_client) == "unconfigured"

        def refused() -> bool:
            return any(
                st.level == b"\x02" and "experts.onnx" in st.message and "sha-256" in
                st.message.lower()
                for _t, a in diags for st in a.status if st.name == "moe_policy: lifecycle"
            )

        wait_for(refused, 5, "ERROR diagnostic naming experts.onnx and its hash")
        req = SetParameters.Request()
        req.parameters = [Parameter(name="policy.bundle", value=ParameterValue(
            type=ParameterType.PARAMETER_STRING, string_value=str(BUNDLE)))]
        res = ros_client.call(SetParameters, "/moe_policy/set_parameters", req)
        assert res.results[0].successful
        assert ros.change_state(ros_client, Transition.TRANSITION_CONFIGURE)
        assert ros.lifecycle_state(ros_client) == "inactive"
    log = (tmp_path / "node.log").read_text()
    assert "experts.onnx" in log
