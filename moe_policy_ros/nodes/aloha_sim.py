"""``aloha_sim``: the simulated dual-arm ALOHA robot (MuJoCo) behind ros2_control-like topics.

Interface (our 14 joints ``left_waist`` .. ``right_gripper``, grippers 0 closed .. 1 open).
Topic names are relative, so that they follow the node's namespace (``/r1/joint_states``
under ``r1``); ``/clock`` stays global.

* publishes ``joint_states`` (sensor_msgs/JointState: position, velocity) at
  ``joint_state_rate_hz``; ``cameras/<name>/image_raw`` (sensor_msgs/Image, rgb8) for every
  camera in ``cameras.names`` at ``camera_rate_hz``; ``~/success`` (std_msgs/Bool, latched, on
  change and at 1 Hz); ``/clock`` (rosgraph_msgs/Clock) when ``publish_clock`` is true.
* subscribes, for ``left_arm`` and ``right_arm``, to both ros2_controllers interfaces:
  ``<arm>_controller/joint_trajectory`` (trajectory_msgs/JointTrajectory with
  joint_trajectory_controller semantics, :mod:`moe_policy_ros.core.trajectory`) and
  ``<arm>_controller/commands`` (std_msgs/Float64MultiArray, 7 positions in the arm's joint
  order, forward_command_controller semantics). RELIABLE, depth 10.
* service ``~/reset`` (std_srvs/Trigger): new episode with the current ``seed`` parameter.

Threads. Physics runs in a dedicated thread paced by absolute deadlines on the monotonic
clock (``real_time_factor`` simulated seconds per wall second); it owns the MuJoCo model and
data, samples the trajectory followers at every physics step, and publishes joint states.
Cameras render in a thread of their own, which owns the GL context: at each camera instant
the physics thread hands over a snapshot of the scene (:meth:`AlohaSim.snapshot`) and steps
on, and the frame is published, stamped with that instant, once drawn (as a real camera's
frame arrives after its exposure). A render therefore never stalls the physics (a 640x480
software render takes 10-30 ms, several physics ticks); when rendering falls behind the
camera rate the older snapshot is dropped and counted. ROS
callbacks only validate messages and hand them to the followers (which lock); a reset is a
request the physics thread carries out. If the physics thread falls more than
``_MAX_LAG_S`` behind its deadlines it re-anchors (drops the backlog) and warns, rather than
running faster than asked to catch up.

Time. With ``publish_clock`` the node publishes its simulated time (monotonic across resets,
starting at 0) on ``/clock`` and stamps everything with it; other nodes set ``use_sim_time``.
Otherwise stamps are the node's ROS clock, and trajectories are timed on it, so only
``real_time_factor`` 1.0 is meaningful. Rates are in simulated time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from moe_policy_ros.core.clock import MonotonicClock
from moe_policy_ros.core.loop import PeriodicLoop
from moe_policy_ros.core.trajectory import TrajectoryError, TrajectoryFollower
from moe_policy_ros.nodes.common import spin_node, start_node
from moe_policy_ros.nodes.convert import (
    command_values,
    joint_state_msg,
    rgb_image_msg,
    trajectory_from_msg,
)
from moe_policy_ros.session import COMMAND_SUB_QOS, LATCHED_QOS, ns_to_stamp
from moe_policy_ros.sim.aloha import (
    ARM_JOINT_NAMES,
    GL_BACKEND,
    JOINT_NAMES,
    TASKS,
    AlohaSim,
    CameraRenderer,
    SceneState,
)

NODE_NAME = "aloha_sim"
_TICK_STEPS = 2  # physics steps per pacing tick (2 x 2 ms)
_MAX_LAG_S = 0.25  # re-anchor the pacing when this far behind
_SUCCESS_PERIOD_NS = 1_000_000_000  # ~/success is also republished at 1 Hz
_RESET_TIMEOUT_S = 5.0

_RELIABLE_10 = COMMAND_SUB_QOS
_IMAGE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE
)


@dataclass(frozen=True)
class _Camera:
    name: str
    mjcf_camera: str
    width: int
    height: int
    topic: str
    frame_id: str


class _StampClock:
    """The clock trajectories are timed on: simulated time with /clock, else ROS time."""

    def __init__(self, node: AlohaSimNode) -> None:
        self._node = node

    def now_ns(self) -> int:
        return self._node.stamp_ns()

    def sleep_until_ns(  # not used by the followers
        self, deadline_ns: int, stop: threading.Event | None = None
    ) -> bool:
        raise NotImplementedError


class AlohaSimNode(Node):
    """MuJoCo ALOHA simulation with joint_states, cameras, trajectory/command inputs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._declare_parameters()
        p = self.get_parameter
        self._task = str(p("task").value)
        if self._task not in TASKS:
            raise ValueError(f"parameter task: {self._task!r} is not one of {list(TASKS)}")
        self._publish_clock = bool(p("publish_clock").value)
        self._rtf = float(p("real_time_factor").value)
        self._js_period_ns = round(1e9 / float(p("joint_state_rate_hz").value))
        cam_rate = float(p("camera_rate_hz").value)
        self._cam_period_ns = round(1e9 / cam_rate) if cam_rate > 0 else 0
        self._cameras = self._camera_configs() if cam_rate > 0 else []
        if not self._publish_clock and self._rtf != 1.0:
            self.get_logger().warning(
                f"real_time_factor {self._rtf} without publish_clock: trajectories are timed "
                "on the ROS clock, so motion will not match simulated time"
            )

        self._sim = AlohaSim(self._task, seed=int(p("seed").value))
        self._sim_ns = 0  # simulated time since start, ns (monotonic across resets)
        self._dt_ns = round(self._sim.timestep * 1e9)
        clock = _StampClock(self)
        q0 = self._sim.joint_positions()
        self._arms: dict[str, tuple[TrajectoryFollower, np.ndarray]] = {}
        for arm, names in ARM_JOINT_NAMES.items():
            idx = np.array([JOINT_NAMES.index(n) for n in names])
            self._arms[arm] = (TrajectoryFollower(names, q0[idx], clock), idx)

        self._js_pub = self.create_publisher(JointState, "joint_states", _RELIABLE_10)
        self._img_pubs = {
            c.name: self.create_publisher(Image, c.topic, _IMAGE_QOS) for c in self._cameras
        }
        self._success_pub = self.create_publisher(Bool, "~/success", LATCHED_QOS)
        self._clock_pub = (
            self.create_publisher(ClockMsg, "/clock", _RELIABLE_10)
            if self._publish_clock
            else None
        )
        for arm in self._arms:
            self.create_subscription(
                JointTrajectory,
                f"{arm}_controller/joint_trajectory",
                lambda msg, arm=arm: self._on_trajectory(arm, msg),
                _RELIABLE_10,
            )
            self.create_subscription(
                Float64MultiArray,
                f"{arm}_controller/commands",
                lambda msg, arm=arm: self._on_command(arm, msg),
                _RELIABLE_10,
            )
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._reset_lock = threading.Lock()
        self._reset_request: tuple[int, threading.Event] | None = None
        self._stop = threading.Event()
        self._thread_error: BaseException | None = None
        self._frame_cv = threading.Condition()
        self._frame_request: tuple[int, SceneState] | None = None
        self.frames_dropped = 0
        self._dropped_warned_ns = 0
        self._cam_thread = threading.Thread(
            target=self._camera_run, name="aloha_sim_camera", daemon=True)
        self._thread = threading.Thread(target=self._run, name="aloha_sim_physics", daemon=True)
        threads = [self._cam_thread, self._thread] if self._cameras else [self._thread]
        for thread in threads:
            ready = self._ready = threading.Event()
            thread.start()
            ready.wait()
            if self._thread_error is not None:
                self.stop()
                raise RuntimeError(
                    f"aloha_sim: {thread.name} thread failed to start: {self._thread_error}")
        self.get_logger().info(
            f"task {self._task}, seed {self._sim.seed}, timestep {self._sim.timestep * 1e3:.1f} "
            f"ms, real_time_factor {self._rtf}, publish_clock {self._publish_clock}, cameras "
            f"{[f'{c.name} {c.width}x{c.height}' for c in self._cameras]} (GL {GL_BACKEND})"
        )

    # ------------------------------------------------------------------ parameters

    def _declare_parameters(self) -> None:
        def desc(text: str, read_only: bool = True, **kw: Any) -> ParameterDescriptor:
            return ParameterDescriptor(description=text, read_only=read_only, **kw)

        self.declare_parameter(
            "task",
            "transfer_cube",
            desc(
                "scene: transfer_cube | insertion",
                additional_constraints="transfer_cube|insertion",
            ),
        )
        self.declare_parameter(
            "seed",
            0,
            desc(
                "object pose seed used by ~/reset (and at start)",
                read_only=False,
                integer_range=[IntegerRange(from_value=0, to_value=2**31 - 1, step=1)],
            ),
        )
        self.declare_parameter(
            "real_time_factor",
            1.0,
            desc(
                "simulated seconds per wall second (1.0 = real time, >1 faster)",
                read_only=False,
                floating_point_range=[FloatingPointRange(from_value=0.01, to_value=100.0)],
            ),
        )
        self.declare_parameter(
            "publish_clock",
            False,
            desc("publish /clock with the simulated time and stamp with it"),
        )
        self.declare_parameter(
            "joint_state_rate_hz",
            50.0,
            desc(
                "Hz (simulated time), /joint_states rate",
                floating_point_range=[FloatingPointRange(from_value=1.0, to_value=500.0)],
            ),
        )
        self.declare_parameter(
            "camera_rate_hz",
            15.0,
            desc(
                "Hz (simulated time), image rate of every camera; 0 disables the cameras",
                floating_point_range=[FloatingPointRange(from_value=0.0, to_value=120.0)],
            ),
        )
        self.declare_parameter(
            "render_msaa_samples",
            0,
            desc(
                "offscreen multisampling of the cameras (the scene asks for 4; 0 is ~2.5x "
                "faster with software GL)",
                integer_range=[IntegerRange(from_value=0, to_value=16, step=1)],
            ),
        )
        self.declare_parameter(
            "cameras.names", ["top"], desc("cameras to publish, each with its cameras.<name>.*")
        )

    def _camera_configs(self) -> list[_Camera]:
        def decl(name: str, default: Any, text: str, **kw: Any) -> Any:
            d = ParameterDescriptor(description=text, read_only=True, **kw)
            return self.declare_parameter(name, default, d).value

        size = [IntegerRange(from_value=1, to_value=4096, step=1)]
        out = []
        for name in list(self.get_parameter("cameras.names").value or []):
            pre = f"cameras.{name}."
            width = decl(pre + "width", 128, "px, image width", integer_range=size)
            height = decl(pre + "height", 96, "px, image height", integer_range=size)
            topic = decl(pre + "topic", f"cameras/{name}/image_raw", "sensor_msgs/Image topic")
            frame = decl(pre + "frame_id", f"{name}_camera_optical_frame", "header.frame_id")
            mjcf = decl(pre + "mjcf_camera", name, "camera name in the MJCF scene")
            encoding = decl(pre + "encoding", "rgb8", "image encoding; only rgb8 is produced")
            if encoding != "rgb8":
                raise ValueError(
                    f"parameter {pre}encoding: only 'rgb8' is supported, got {encoding!r}"
                )
            out.append(_Camera(name, str(mjcf), int(width), int(height), str(topic), str(frame)))
        return out

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for prm in params:
            if prm.name == "real_time_factor":
                self._rtf = float(prm.value)  # the physics thread re-anchors on change
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ time

    def stamp_ns(self) -> int:
        """Stamp time: simulated time with /clock, else the node's ROS clock."""
        if self._publish_clock:
            return self._sim_ns
        return self.get_clock().now().nanoseconds

    # ------------------------------------------------------------------ callbacks

    def _on_trajectory(self, arm: str, msg: JointTrajectory) -> None:
        follower = self._arms[arm][0]
        try:
            kept = follower.set_trajectory(trajectory_from_msg(msg))
        except TrajectoryError as err:
            self.get_logger().warning(
                f"/{arm}_controller/joint_trajectory ignored: {err}", throttle_duration_sec=1.0
            )
            return
        self.get_logger().debug(f"{arm}: trajectory with {kept} points accepted")

    def _on_command(self, arm: str, msg: Float64MultiArray) -> None:
        follower = self._arms[arm][0]
        n = len(msg.data)
        if n != len(follower.joint_names):
            self.get_logger().warning(
                f"/{arm}_controller/commands ignored: got {n} values, expected "
                f"{len(follower.joint_names)} for {list(follower.joint_names)}",
                throttle_duration_sec=1.0,
            )
            return
        try:
            follower.set_command(command_values(msg))
        except TrajectoryError as err:
            self.get_logger().warning(
                f"/{arm}_controller/commands ignored: {err}", throttle_duration_sec=1.0
            )

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        seed = int(self.get_parameter("seed").value)
        done = threading.Event()
        with self._reset_lock:
            self._reset_request = (seed, done)
        if not self._thread.is_alive() or not done.wait(_RESET_TIMEOUT_S):
            response.success = False
            response.message = "physics thread is not running; reset not done"
            return response
        response.success = True
        response.message = f"reset {self._task} with seed {seed}"
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------ physics thread

    def _run(self) -> None:
        self._ready.set()
        try:
            self._loop()
        except Exception as err:
            if not self._stop.is_set() and self.context.ok():
                self.get_logger().fatal(f"physics thread died: {err!r}")
                raise

    # ------------------------------------------------------------------ camera thread

    def _camera_run(self) -> None:
        renderers: list[tuple[_Camera, CameraRenderer]] = []
        msaa = int(self.get_parameter("render_msaa_samples").value)
        try:
            for cam in self._cameras:  # the GL context belongs to this thread
                r = self._sim.camera(cam.mjcf_camera, cam.width, cam.height, msaa)
                renderers.append((cam, r))
        except Exception as err:
            self._thread_error = err
            self._ready.set()
            return
        self._ready.set()
        try:
            while (request := self._next_frame_request()) is not None:
                stamp_ns, state = request
                for cam, r in renderers:
                    self._img_pubs[cam.name].publish(
                        rgb_image_msg(r.render(state), stamp_ns, cam.frame_id))
        except Exception as err:
            if not self._stop.is_set() and self.context.ok():
                self.get_logger().fatal(f"camera thread died: {err!r}")
                raise
        finally:
            for _, r in renderers:
                r.close()

    def _next_frame_request(self) -> tuple[int, SceneState] | None:
        """The newest snapshot to draw (None once stopping)."""
        with self._frame_cv:
            while self._frame_request is None and not self._stop.is_set():
                self._frame_cv.wait(0.1)
            request, self._frame_request = self._frame_request, None
        return None if self._stop.is_set() else request

    def _request_frame(self, stamp_ns: int) -> None:
        """Physics thread: hand the scene of this instant to the camera thread."""
        state = self._sim.snapshot()
        with self._frame_cv:
            dropped = self._frame_request is not None
            self._frame_request = (stamp_ns, state)
            self._frame_cv.notify()
        if dropped:
            self.frames_dropped += 1
            now = time.monotonic_ns()
            if now - self._dropped_warned_ns > 5e9:
                self._dropped_warned_ns = now
                self.get_logger().warning(
                    f"rendering is slower than camera_rate_hz: {self.frames_dropped} camera "
                    "frames dropped so far (the newest scene is drawn)")

    def _tick_rate_hz(self, rtf: float) -> float:
        """Pacing ticks per wall second: one tick is _TICK_STEPS physics steps."""
        return rtf * 1e9 / (_TICK_STEPS * self._dt_ns)

    def _loop(self) -> None:
        """Physics on absolute wall deadlines (core.loop, catch_up): late ticks run back to
        back up to _MAX_LAG_S behind, then the backlog is dropped with a warning; a
        real_time_factor change restarts the grid."""
        self._next_js = self._next_cam = self._next_success = 0
        self._last_success: bool | None = None
        self._paced_rtf = self._rtf
        self._lag_warned_ns = 0
        self._target_buf = self._sim.targets  # reused every tick (arm joints overwritten)
        loop = PeriodicLoop(
            self._tick_rate_hz(self._rtf), MonotonicClock(), late="catch_up", max_lag_s=_MAX_LAG_S
        )

        def tick(_step: int, _now: int) -> None:
            self._physics_tick()
            if self._rtf != self._paced_rtf:
                self._paced_rtf = self._rtf
                loop.set_rate(self._tick_rate_hz(self._rtf))

        loop.run(tick, self._stop, on_reanchor=self._behind)

    def _behind(self, lag_ns: int) -> None:
        now = time.monotonic_ns()
        if now - self._lag_warned_ns > 5e9:
            self._lag_warned_ns = now
            self.get_logger().warning(
                f"physics is {lag_ns * 1e-9:.2f} s behind real_time_factor {self._paced_rtf}; "
                "dropping the backlog"
            )

    def _physics_tick(self) -> None:
        """A pending reset, _TICK_STEPS physics steps, then what is due to be published."""
        sim = self._sim
        with self._reset_lock:
            req, self._reset_request = self._reset_request, None
        if req is not None:
            sim.reset(req[0])
            q = sim.joint_positions()
            for follower, idx in self._arms.values():
                follower.reset(q[idx])
            self._last_success = None  # publish the new state at once
            req[1].set()

        targets = self._target_buf
        for _ in range(_TICK_STEPS):
            t = self.stamp_ns()
            for follower, idx in self._arms.values():
                targets[idx] = follower.sample(t)[0]
            sim.set_targets(targets)
            sim.step(1)
            self._sim_ns += self._dt_ns
        now_sim = self._sim_ns
        stamp_ns = self.stamp_ns()

        if self._clock_pub is not None:
            clk = ClockMsg()
            clk.clock = ns_to_stamp(stamp_ns)
            self._clock_pub.publish(clk)
        if now_sim >= self._next_js:
            self._next_js = max(self._next_js + self._js_period_ns, now_sim)
            self._publish_joint_states(stamp_ns)
            success = sim.success()
            if success != self._last_success or now_sim >= self._next_success:
                self._next_success = now_sim + _SUCCESS_PERIOD_NS
                self._last_success = success
                self._success_pub.publish(Bool(data=success))
        if self._cameras and now_sim >= self._next_cam:
            self._next_cam = max(self._next_cam + self._cam_period_ns, now_sim)
            self._request_frame(stamp_ns)

    def _publish_joint_states(self, stamp_ns: int) -> None:
        sim = self._sim
        self._js_pub.publish(joint_state_msg(JOINT_NAMES, sim.joint_positions(), stamp_ns,
                                             sim.joint_velocities()))

    # ------------------------------------------------------------------ shutdown

    def stop(self) -> None:
        """Stop the physics and camera threads (idempotent)."""
        self._stop.set()
        with self._frame_cv:
            self._frame_cv.notify_all()
        for thread in (self._thread, self._cam_thread):
            if thread.is_alive() and threading.current_thread() is not thread:
                thread.join(timeout=5.0)

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    """Entry point ``aloha_sim``; SIGINT/SIGTERM shut down cleanly, also during the slow start
    (see :func:`~moe_policy_ros.nodes.common.init_ros`)."""
    spin_node(start_node(AlohaSimNode, args))


if __name__ == "__main__":
    main()
