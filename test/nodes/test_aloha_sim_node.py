"""aloha_sim in a subprocess, driven from this process over DDS (real rclpy, no mocks)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed")
if importlib.util.find_spec("mujoco") is None or importlib.util.find_spec("gym_aloha") is None:
    pytest.skip("mujoco and gym-aloha are needed for aloha_sim", allow_module_level=True)

from builtin_interfaces.msg import Duration  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.client import Client  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock as ClockMsg  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.sim]

REPO = Path(__file__).resolve().parents[2]
JOINTS = [
    f"{side}_{j}"
    for side in ("left", "right")
    for j in (
        "waist",
        "shoulder",
        "elbow",
        "forearm_roll",
        "wrist_angle",
        "wrist_rotate",
        "gripper",
    )
]
RELIABLE = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
)
WIDTH, HEIGHT = 64, 48


class Probe:
    """The test's own node: subscriptions that keep the latest message, publishers, client."""

    def __init__(self, context: Context) -> None:
        self.node = Node("aloha_sim_probe", context=context)
        self.lock = threading.Lock()
        self.joint_states: JointState | None = None
        self.image: Image | None = None
        self.success: Bool | None = None
        n = self.node
        n.create_subscription(JointState, "/joint_states", self._store("joint_states"), RELIABLE)
        n.create_subscription(Image, "/cameras/top/image_raw", self._store("image"), RELIABLE)
        n.create_subscription(Bool, "/aloha_sim/success", self._store("success"), RELIABLE)
        self.traj_pub = {
            arm: n.create_publisher(
                JointTrajectory, f"/{arm}_controller/joint_trajectory", RELIABLE
            )
            for arm in ("left_arm", "right_arm")
        }
        self.cmd_pub = {
            arm: n.create_publisher(Float64MultiArray, f"/{arm}_controller/commands", RELIABLE)
            for arm in ("left_arm", "right_arm")
        }
        self.reset: Client[Any, Any] = n.create_client(Trigger, "/aloha_sim/reset")

    def _store(self, attr: str) -> Callable[[Any], None]:
        def cb(msg: Any) -> None:
            with self.lock:
                setattr(self, attr, msg)

        return cb

    def position(self, joint: str) -> float | None:
        with self.lock:
            js = self.joint_states
        return None if js is None else js.position[list(js.name).index(joint)]

    def positions(self) -> dict[str, float]:
        with self.lock:
            js = self.joint_states
        assert js is not None
        return dict(zip(js.name, js.position, strict=True))


def _start(log_path: Path, *params: str) -> subprocess.Popen[bytes]:
    """Run the node as ``python -m`` with ``-p`` parameters, output into ``log_path``."""
    env = dict(os.environ)  # carries the session's ROS_DOMAIN_ID
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["MUJOCO_GL"] = "egl"
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "moe_policy_ros.nodes.aloha_sim", "--ros-args"]
    for p in params:
        cmd += ["-p", p]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    proc = _start(
        tmp_path_factory.mktemp("aloha_sim") / "node.log",
        "task:=transfer_cube",
        "seed:=1",
        "real_time_factor:=1.0",
        "cameras.names:=[top]",
        f"cameras.top.width:={WIDTH}",
        f"cameras.top.height:={HEIGHT}",
        "camera_rate_hz:=15.0",
    )
    yield proc
    _stop(proc)


@pytest.fixture(scope="module")
def probe(sim_process: subprocess.Popen[bytes]) -> Iterator[Probe]:
    context = Context()
    rclpy.init(context=context)
    p = Probe(context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(p.node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        yield p
    finally:
        executor.shutdown()
        p.node.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(timeout=5)


def _log(proc: subprocess.Popen[bytes]) -> str:
    return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def _alive(proc: subprocess.Popen[bytes]) -> None:
    assert proc.poll() is None, f"aloha_sim exited ({proc.returncode}):\n{_log(proc)}"


def test_joint_states_carry_the_14_joints(
    probe: Probe, sim_process: subprocess.Popen[bytes], wait_for: Callable[..., Any]
) -> None:
    try:
        wait_for(lambda: probe.joint_states, 20.0, "/joint_states")
    finally:
        _alive(sim_process)
    js = probe.joint_states
    assert js is not None
    assert list(js.name) == JOINTS
    assert len(js.position) == 14 and len(js.velocity) == 14
    assert probe.position("left_shoulder") == pytest.approx(-0.96, abs=0.05)
    assert js.header.stamp.sec > 0  # ROS (system) time without publish_clock


def test_image_has_the_configured_size(probe: Probe, wait_for: Callable[..., Any]) -> None:
    img = wait_for(lambda: probe.image, 10.0, "/cameras/top/image_raw")
    assert (img.width, img.height, img.encoding) == (WIDTH, HEIGHT, "rgb8")
    assert img.step == WIDTH * 3 and len(img.data) == WIDTH * HEIGHT * 3
    assert img.header.frame_id == "top_camera_optical_frame"
    assert max(img.data) > 0


def test_success_is_false_after_start(probe: Probe, wait_for: Callable[..., Any]) -> None:
    msg = wait_for(lambda: probe.success, 10.0, "~/success")
    assert msg.data is False


def test_joint_trajectory_moves_the_left_arm(probe: Probe, wait_for: Callable[..., Any]) -> None:
    pub = probe.traj_pub["left_arm"]
    wait_for(lambda: pub.get_subscription_count() > 0, 10.0, "trajectory subscriber")
    start = probe.positions()
    target = {n: v for n, v in start.items() if n.startswith("left_")}
    target["left_waist"] = start["left_waist"] + 0.4
    target["left_gripper"] = 0.9
    names = list(reversed(list(target)))  # any joint order is accepted
    msg = JointTrajectory()
    msg.joint_names = names
    msg.points = [
        JointTrajectoryPoint(
            positions=[target[n] for n in names],
            time_from_start=Duration(sec=0, nanosec=600_000_000),
        )
    ]
    pub.publish(msg)
    # halfway through, the joint is on its way; then it settles at the target
    wait_for(
        lambda: 0.05 < (probe.position("left_waist") or 0.0) - start["left_waist"] < 0.35,
        5.0,
        "left_waist moving",
    )
    wait_for(
        lambda: abs((probe.position("left_waist") or 0.0) - target["left_waist"]) < 0.02,
        5.0,
        "left_waist at the trajectory's end point",
    )
    wait_for(lambda: (probe.position("left_gripper") or 0.0) > 0.8, 5.0, "left gripper open")


def test_stream_command_moves_the_right_arm_and_bad_length_is_ignored(
    probe: Probe, sim_process: subprocess.Popen[bytes], wait_for: Callable[..., Any]
) -> None:
    pub = probe.cmd_pub["right_arm"]
    wait_for(lambda: pub.get_subscription_count() > 0, 10.0, "command subscriber")
    pub.publish(Float64MultiArray(data=[0.1, 0.2, 0.3]))  # wrong length: warned, ignored
    start = probe.positions()
    cmd = [start[n] for n in JOINTS[7:]]
    cmd[0] = -0.3  # right_waist
    pub.publish(Float64MultiArray(data=cmd))
    wait_for(
        lambda: abs((probe.position("right_waist") or 0.0) + 0.3) < 0.02,
        5.0,
        "right_waist at -0.3",
    )
    wait_for(lambda: "got 3 values, expected 7" in _log(sim_process), 5.0, "length warning")
    _alive(sim_process)


def test_reset_service_restores_the_start_pose(
    probe: Probe, sim_process: subprocess.Popen[bytes], wait_for: Callable[..., Any]
) -> None:
    pub = probe.cmd_pub["left_arm"]
    wait_for(lambda: pub.get_subscription_count() > 0, 10.0, "command subscriber")
    cmd = [0.5, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5]
    pub.publish(Float64MultiArray(data=cmd))
    wait_for(lambda: abs((probe.position("left_waist") or 0.0) - 0.5) < 0.05, 5.0, "moved")
    assert probe.reset.wait_for_service(timeout_sec=10.0)
    future = probe.reset.call_async(Trigger.Request())
    result = wait_for(lambda: future.result() if future.done() else None, 10.0, "reset reply")
    assert result.success, result.message
    assert "seed 1" in result.message
    wait_for(lambda: abs(probe.position("left_waist") or 1.0) < 0.02, 5.0, "start pose")
    assert abs(probe.positions()["right_waist"]) < 0.05
    _alive(sim_process)


def test_malformed_trajectory_is_logged_and_ignored(
    probe: Probe, sim_process: subprocess.Popen[bytes], wait_for: Callable[..., Any]
) -> None:
    pub = probe.traj_pub["right_arm"]
    wait_for(lambda: pub.get_subscription_count() > 0, 10.0, "trajectory subscriber")
    before = probe.position("right_elbow")
    msg = JointTrajectory()
    msg.joint_names = [*JOINTS[7:13], "right_pinky"]
    msg.points = [JointTrajectoryPoint(positions=[0.0] * 7, time_from_start=Duration(sec=1))]
    pub.publish(msg)
    wait_for(lambda: "unknown joint names ['right_pinky']" in _log(sim_process), 5.0, "warning")
    assert probe.position("right_elbow") == pytest.approx(before, abs=0.02)
    _alive(sim_process)


def test_reset_uses_the_seed_parameter(probe: Probe, wait_for: Callable[..., Any]) -> None:
    client: Client[Any, Any] = probe.node.create_client(SetParameters, "/aloha_sim/set_parameters")
    assert client.wait_for_service(timeout_sec=10.0)
    req = SetParameters.Request(parameters=[Parameter("seed", value=7).to_parameter_msg()])
    future = client.call_async(req)
    reply = wait_for(lambda: future.result() if future.done() else None, 10.0, "set seed")
    assert reply.results[0].successful
    future = probe.reset.call_async(Trigger.Request())
    result = wait_for(lambda: future.result() if future.done() else None, 10.0, "reset reply")
    assert result.success and "seed 7" in result.message


def test_sigint_shuts_down_cleanly(sim_process: subprocess.Popen[bytes], probe: Probe) -> None:
    sim_process.send_signal(signal.SIGINT)
    rc = sim_process.wait(timeout=10)
    log = _log(sim_process)
    assert rc == 0, log
    assert "Traceback" not in log, log


def test_sim_time_clock_and_sigterm(
    probe: Probe, tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    """publish_clock at twice real time: /clock runs 2x, stamps and trajectories use it."""
    lock = threading.Lock()
    clocks: list[tuple[float, int]] = []

    def on_clock(msg: ClockMsg) -> None:
        with lock:
            clocks.append((time.monotonic(), msg.clock.sec * 10**9 + msg.clock.nanosec))

    probe.node.create_subscription(ClockMsg, "/clock", on_clock, RELIABLE)
    proc = _start(
        tmp_path / "node.log",
        "task:=insertion",
        "publish_clock:=true",
        "real_time_factor:=2.0",
        "camera_rate_hz:=0.0",
    )
    try:
        wait_for(lambda: len(clocks) > 0, 20.0, "/clock")
        with lock:
            wall0, sim0 = clocks[-1]
        wait_for(lambda: clocks[-1][1] - sim0 >= 2 * 10**9, 10.0, "2 s of simulated time")
        with lock:
            wall1, sim1 = clocks[-1]
        rtf = (sim1 - sim0) * 1e-9 / (wall1 - wall0)
        assert 1.5 < rtf < 2.5, f"measured real-time factor {rtf:.2f}"

        def sim_stamped() -> JointState | None:
            js = probe.joint_states
            return js if js is not None and js.header.stamp.sec < 1000 else None

        js = wait_for(sim_stamped, 5.0, "joint states stamped with simulated time")
        assert list(js.name) == JOINTS
        # a trajectory stamped in simulated time, 1 s of simulated time long
        pub = probe.traj_pub["left_arm"]
        wait_for(lambda: pub.get_subscription_count() > 0, 10.0, "trajectory subscriber")
        start = probe.positions()
        msg = JointTrajectory()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(clocks[-1][1], 10**9)
        msg.joint_names = JOINTS[:7]
        goal = [start[n] for n in JOINTS[:7]]
        goal[0] += 0.3
        msg.points = [JointTrajectoryPoint(positions=goal, time_from_start=Duration(sec=1))]
        pub.publish(msg)
        wait_for(
            lambda: abs((probe.position("left_waist") or 0.0) - goal[0]) < 0.02,
            5.0,
            "left_waist at the goal",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, _log(proc)
        assert "Traceback" not in _log(proc), _log(proc)
    finally:
        _stop(proc)
