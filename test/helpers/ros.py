"""Helpers for tests that talk to nodes in other processes over real DDS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from helpers import REPO


def node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MUJOCO_GL", "egl")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextmanager
def node_process(
    module: str, ros_args: Sequence[str], log_path: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m module --ros-args ...``; SIGINT then kill on exit."""
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--ros-args", *ros_args],
        env=node_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop_process(proc)
        if log_path:
            log.close()  # type: ignore[union-attr]


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 8.0) -> int | None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    return proc.returncode


def wait_for(pred: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class RosClient:
    """A test-side rclpy node with its own context, spun from a background thread.

    Built on the product's RosSession (imported here, so this module imports without rclpy):
    single-threaded, because rclpy's multi-threaded executor re-polls ready entities in a
    tight loop and starves this process's other threads (FakeRobot) of the GIL.
    """

    def __init__(self, name: str = "test_client") -> None:
        from moe_policy_ros.session import RosSession

        self.session = RosSession(name)
        self.node = self.session.node
        self._clients: dict[tuple[Any, str], Any] = {}
        self.session.spin_in_background()

    def close(self) -> None:
        self.session.close()

    def record(self, msg_type: Any, topic: str, qos: Any = 10) -> list[tuple[float, Any]]:
        """Subscribe and collect (monotonic arrival time, message)."""
        out: list[tuple[float, Any]] = []
        self.node.create_subscription(msg_type, topic, lambda m: out.append(
            (time.monotonic(), m)), qos)
        return out

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 10.0) -> Any:
        """Call a service; a request sent before the reply route is matched can be lost on
        DDS right after discovery, so unanswered requests are re-sent (idempotent calls)."""
        key = (srv_type, name)
        cli = self._clients.get(key)
        if cli is None:
            cli = self._clients[key] = self.node.create_client(srv_type, name)
        deadline = time.monotonic() + timeout
        if not cli.wait_for_service(timeout_sec=timeout):
            raise AssertionError(f"service {name} not available after {timeout} s")
        attempt = 2.0
        while time.monotonic() < deadline:
            fut = cli.call_async(request)
            end = min(deadline, time.monotonic() + attempt)
            while time.monotonic() < end and not fut.done():
                time.sleep(0.02)
            if fut.done():
                return fut.result()
            cli.remove_pending_request(fut)
            attempt *= 2
        raise AssertionError(f"no answer from {name} within {timeout} s")

    def now_msg(self) -> Any:
        return self.node.get_clock().now().to_msg()


#: Bytes per pixel of the raw encodings FakeRobot can publish (valid or not for the node).
_BYTES_PER_PIXEL = {"mono8": 1, "mono16": 2, "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4,
                    "16UC1": 2, "32FC1": 4}


class FakeRobot:
    """Publishes /joint_states and camera images at fixed rates from a thread.

    Stands in for the robot's drivers (a real publisher over DDS, not a mock of the node
    under test). ``positions`` may be changed between ticks; ``stamp_offset_s`` shifts the
    header stamp (negative = old data). Fault injection, all settable at any time:
    ``publish_joints`` / ``publish_images`` (stop a stream), ``joint_names_override`` (names
    in the published order; positions are looked up by name, unknown names get 0.0),
    ``image_encoding`` / ``image_size_override`` (bad images), ``joint_rate_hz`` /
    ``camera_rate_hz`` (e.g. a flood). ``teleop_positions`` (robot joint order), when set,
    is published as a sensor_msgs/JointState on ``teleop_topic`` with every joint state.
    ``joints_sent`` / ``images_sent`` count publications, ``last_joint_t`` /
    ``last_image_t`` hold the monotonic time of the latest ones and ``joint_gaps`` lists
    ``(time, gap_s)`` for joint states published more than 0.1 s after the previous one
    (a stall of this publisher, not of the subscriber).
    """

    def __init__(
        self,
        client: RosClient,
        joint_names: Sequence[str],
        positions: np.ndarray,
        camera_topic: str = "/cameras/top/image_raw",
        size: tuple[int, int] = (96, 128),
        joint_rate_hz: float = 100.0,
        camera_rate_hz: float = 20.0,
        teleop_topic: str = "/teleop/joint_command",
    ) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState

        self.client = client
        self.names = list(joint_names)
        self.positions = np.asarray(positions, dtype=np.float64).copy()
        self.size = size
        self.joint_rate_hz = joint_rate_hz
        self.camera_rate_hz = camera_rate_hz
        self.stamp_offset_s = 0.0
        self.publish_joints = True
        self.publish_images = True
        self.image_encoding = "rgb8"
        self.image_size_override: tuple[int, int] | None = None
        self.joint_names_override: list[str] | None = None
        self.teleop_positions: np.ndarray | None = None
        self.joints_sent = 0
        self.images_sent = 0
        self.last_joint_t = 0.0
        self.last_image_t = 0.0
        self.joint_gaps: list[tuple[float, float]] = []  # (time, gap) of gaps over 0.1 s
        self._pixels: dict[tuple[int, int, int], bytes] = {}
        self.JointState, self.Image = JointState, Image
        self.js_pub = client.node.create_publisher(JointState, "/joint_states",
                                                   qos_profile_sensor_data)
        self.img_pub = client.node.create_publisher(Image, camera_topic, qos_profile_sensor_data)
        self.teleop_pub = client.node.create_publisher(JointState, teleop_topic,
                                                       qos_profile_sensor_data)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _stamp(self) -> Any:
        from rclpy.duration import Duration

        now = self.client.node.get_clock().now()
        if self.stamp_offset_s:
            now = now + Duration(nanoseconds=int(self.stamp_offset_s * 1e9))
        return now.to_msg()

    def _publish_joints(self) -> None:
        js = self.JointState()
        js.header.stamp = self._stamp()
        names = self.joint_names_override or self.names
        js.name = list(names)
        pos = {n: float(p) for n, p in zip(self.names, self.positions, strict=True)}
        js.position = [pos.get(n, 0.0) for n in names]
        self.js_pub.publish(js)
        now = time.monotonic()
        if self.last_joint_t and now - self.last_joint_t > 0.1:
            self.joint_gaps.append((now, now - self.last_joint_t))
        self.joints_sent += 1
        self.last_joint_t = now

    def _publish_teleop(self, q: np.ndarray) -> None:
        js = self.JointState()
        js.header.stamp = self._stamp()
        js.name = list(self.names)
        js.position = [float(x) for x in q]
        self.teleop_pub.publish(js)

    def _publish_image(self) -> None:
        h, w = self.image_size_override or self.size
        enc = self.image_encoding
        bpp = _BYTES_PER_PIXEL.get(enc, 3)
        data = self._pixels.get((h, w, bpp))
        if data is None:
            data = self._pixels[(h, w, bpp)] = bytes(
                (np.arange(h * w * bpp) % 251).astype(np.uint8))
        img = self.Image()
        img.header.stamp = self._stamp()
        img.header.frame_id = "top_camera_optical_frame"
        img.height, img.width = h, w
        img.encoding = enc
        img.step = w * bpp
        img.data = data
        self.img_pub.publish(img)
        self.images_sent += 1
        self.last_image_t = time.monotonic()

    def _run(self) -> None:
        # Each stream keeps its own absolute schedule (rates may change at any time); after a
        # stall the schedule restarts from now instead of bursting to catch up.
        next_js = next_img = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_js:
                    if self.publish_joints:
                        self._publish_joints()
                    teleop = self.teleop_positions
                    if teleop is not None:
                        self._publish_teleop(teleop)
                    next_js = max(next_js + 1.0 / self.joint_rate_hz, now - 0.05)
                if now >= next_img:
                    if self.publish_images:
                        self._publish_image()
                    next_img = max(next_img + 1.0 / self.camera_rate_hz, now - 0.05)
            except Exception:
                return
            self._stop.wait(max(0.0, min(next_js, next_img) - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


# --------------------------------------------------------------------------- policy node

POLICY_NODE = "/moe_policy"
POLICY_MODULE = "moe_policy_ros.nodes.policy_node"
DEMO_BUNDLE = REPO / "models" / "demo_adamoe"


def policy_node(
    params: Path, log_path: Path, autostart: bool = True
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """The policy node executable on ``params`` (configured and activated when
    ``autostart``), as :func:`node_process`."""
    args = ["--params-file", str(params)]
    if autostart:
        args += ["-p", "autostart:=true"]
    return node_process(POLICY_MODULE, args, log_path)


def bundle_home(bundle: Path, joint_names: Sequence[str]) -> np.ndarray:
    """A pose the untrained bundle's first action is close to (its action mean)."""
    from moe_policy_ros.core.manifest import read_manifest

    m = read_manifest(bundle)
    names = list(joint_names)
    q = np.zeros(len(names))
    for j, mu in zip(m.action.joints, m.action.mean, strict=True):
        q[names.index(j)] = mu
    return q


def policy_params(
    tmp: Path, name: str = "params.yaml", input_max_age_s: float | None = None, **overrides: Any
) -> Path:
    """config/dual_arm.yaml with ``section__key=value`` overrides of the moe_policy section
    (engage does not need teleop), the bundle path made absolute. ``input_max_age_s`` sets
    the joint-state and camera max ages (tests whose FakeRobot shares a busy process)."""
    import yaml

    doc = yaml.safe_load((REPO / "config" / "dual_arm.yaml").read_text())
    if input_max_age_s is not None:
        shared = doc["/**"]["ros__parameters"]
        shared["robot"]["joint_states_max_age_s"] = input_max_age_s
        for cam in shared["cameras"]["names"]:
            shared["cameras"][cam]["max_age_s"] = input_max_age_s
    p = doc["/**/moe_policy"]["ros__parameters"]
    p["handover"]["require_teleop_to_engage"] = False
    for dotted, value in overrides.items():
        node = p
        *head, last = dotted.split("__")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = value
    if not Path(str(p["policy"]["bundle"])).is_absolute():
        p["policy"]["bundle"] = str(REPO / p["policy"]["bundle"])
    path = tmp / name
    path.write_text(yaml.safe_dump(doc))
    return path


def engage(client: RosClient, on: bool = True, timeout: float = 30.0) -> str:
    """engage_autonomy(on), retried while refused; '' on success, else the last refusal."""
    from std_srvs.srv import SetBool

    deadline = time.monotonic() + timeout
    msg = ""
    while time.monotonic() < deadline:
        res = client.call(SetBool, f"{POLICY_NODE}/engage_autonomy", SetBool.Request(data=on))
        if res.success:
            return ""
        msg = res.message
        time.sleep(0.2)
    return msg


def change_state(client: RosClient, transition: int) -> bool:
    from lifecycle_msgs.srv import ChangeState

    req = ChangeState.Request()
    req.transition.id = transition
    return bool(
        client.call(ChangeState, f"{POLICY_NODE}/change_state", req, timeout=30.0).success
    )


def lifecycle_state(client: RosClient) -> str:
    from lifecycle_msgs.srv import GetState

    res = client.call(GetState, f"{POLICY_NODE}/get_state", GetState.Request())
    return str(res.current_state.label)


def up_params_file(log: str) -> str:
    """The parameter file `moe-policy-ros up` wrote for its nodes, from its log ('' if none
    yet): each child's command line carries it, so it finds that run's processes."""
    marker = "[up] parameters as the nodes read them: "
    for line in log.splitlines():
        if line.startswith(marker):
            return line[len(marker):].strip()
    return ""


def pids_with(marker: str) -> list[int]:
    """PIDs of processes whose command line contains ``marker`` (not this one)."""
    assert marker, "no marker: `up` has not printed its parameter file"
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


class UpProcess:
    """``python -m moe_policy_ros.cli up ARGS`` in its own session, logged to ``log_path``;
    :meth:`close` leaves none of its processes behind (only this run's own)."""

    def __init__(self, args: Sequence[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moe_policy_ros.cli", "up", *args],
            env=node_env(), cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def marker(self) -> str:
        """The parameter file ``up`` wrote for its nodes (printed before any node starts)."""
        return up_params_file(self.log())

    def children(self) -> list[int]:
        """PIDs of the nodes ``up`` started ([] before it printed its parameter file)."""
        marker = self.marker
        return [p for p in pids_with(marker) if p != self.proc.pid] if marker else []

    def close(self) -> None:
        marker = self.marker
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for pid in pids_with(marker) if marker else []:  # listed once `up` can start no more
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
