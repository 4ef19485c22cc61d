"""The policy node (lifecycle node ``moe_policy``, executable ``policy_node``).

Threads and who owns what:

* the executor thread(s) run subscription callbacks, which only decode and store the newest
  sample (:class:`~moe_policy_ros.core.inputs.InputBuffer`), services and the 1 Hz
  diagnostics timer;
* the **inference worker** assembles an observation at ``inference_rate_hz``, runs the MoE
  policy (ONNX Runtime releases the GIL) and hands the chunk to the scheduler;
* the **control loop** ticks at ``control_rate_hz`` on absolute monotonic deadlines. It never
  waits for inference: it reads the scheduler, arbitrates modes (teleop/autonomy/hold/estop),
  passes every command through the safety filter and publishes what was actually sent.

Lifecycle: ``configure`` validates the parameters with the core schema, verifies and loads the
bundle, warms the backend and creates the ROS interfaces; ``activate`` starts the worker and
the control loop (publishers are lifecycle publishers, so nothing is sent while inactive);
``deactivate`` stops them; ``cleanup`` releases everything. A failed configure (bad parameter,
tampered bundle) leaves the node unconfigured and alive, with the reason in the log and on
``/diagnostics``; fix the parameter and configure again.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.publisher import Publisher
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, Float64MultiArray, Int32MultiArray, String
from std_msgs.msg import MultiArrayDimension as Dim
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from moe_policy_ros.backend_factory import build_backend
from moe_policy_ros.core.bundle import LoadedBundle, load_bundle
from moe_policy_ros.core.camerastats import CameraStats
from moe_policy_ros.core.clock import MonotonicClock
from moe_policy_ros.core.compat import bundle_mismatches
from moe_policy_ros.core.config import ConfigError, RuntimeConfig, config_from_params
from moe_policy_ros.core.diagnostics import (
    HARDWARE_ID,
    LIFECYCLE,
    ControlStats,
    InferenceStats,
    Level,
    TaskStatus,
    control_task,
    inference_task,
    inputs_task,
    router_task,
    safety_task,
    status_name,
)
from moe_policy_ros.core.handover import CommandArbiter, Mode, TickInputs, TickOutput
from moe_policy_ros.core.imageconv import ImageError
from moe_policy_ros.core.inputs import JOINTS, InputBuffer, InputError, joint_command
from moe_policy_ros.core.loop import PeriodicLoop
from moe_policy_ros.core.manifest import BundleError
from moe_policy_ros.core.preprocess import (
    CameraPipeline,
    CompressedFrame,
    FrameWorker,
    Processed,
    RawFrame,
    resolve_preprocess,
)
from moe_policy_ros.core.runtime import MoEPolicy
from moe_policy_ros.core.safety import SafetyFilter, limit_chunk
from moe_policy_ros.core.timeline import (
    ADDED,
    NONFINITE,
    ChunkTimeline,
    TimedChunk,
    chunk_trajectory,
)
from moe_policy_ros.core.types import Observation, PolicyOutput
from moe_policy_ros.nodes.common import diag_status, spin_node
from moe_policy_ros.nodes.params import declare_parameters, nested_parameters
from moe_policy_ros.session import (
    COMMAND_QOS,
    LATCHED_QOS,
    MONITOR_QOS,
    SENSOR_QOS,
    ns_to_stamp,
    resolve_share_path,
    stamp_to_ns,
)


class PolicyNode(LifecycleNode):
    """Runs an MoE policy bundle in a fixed-rate control loop; see the module docstring."""

    def __init__(self, node_name: str = "moe_policy", **kwargs: Any) -> None:
        self._cfg: RuntimeConfig | None = None
        self._bundle: LoadedBundle | None = None
        self._policy: MoEPolicy | None = None
        self._inputs: InputBuffer | None = None
        self._joint_names: list[str] = []
        #: (arm name, its joint names, its columns in a robot-order command), per configure
        self._arms: list[tuple[str, list[str], slice]] = []
        self._expert_labels: list[str] = []
        self._gate_layout: list[Dim] = []
        self._timeline: ChunkTimeline | None = None
        self._control: PeriodicLoop | None = None
        self._worker: PeriodicLoop | None = None
        self._arbiter: CommandArbiter | None = None
        self._safety: SafetyFilter | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._mode_lock = threading.Lock()
        self._configure_error = ""
        self._entities: list[Any] = []
        self._pubs: dict[str, Publisher] = {}
        self._frames: FrameWorker | None = None
        self._cam_stats: dict[str, CameraStats] = {}
        super().__init__(node_name, **kwargs)
        declare_parameters(self)
        self._mono = MonotonicClock()
        # /diagnostics exists from construction, so a failed configure is visible in rqt.
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics)
        self._reset_stats()
        self.get_logger().info("moe_policy node created; waiting for configure")

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate parameters, load and warm the bundle, create interfaces.

        SUCCESS -> inactive; FAILURE -> unconfigured (reason logged and on /diagnostics).
        """
        try:
            self._configure()
        except (ConfigError, BundleError, ValueError, RuntimeError, OSError) as err:
            self._configure_error = str(err)
            self.get_logger().error(f"configure failed: {err}")
            self._stop_frames()
            self._destroy_interfaces()
            return TransitionCallbackReturn.FAILURE
        self._configure_error = ""
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the inference worker and the control loop; enable the publishers."""
        self._reset_stats()
        self._stop.clear()
        assert self._timeline is not None and self._policy is not None
        self._timeline.clear()
        self._policy.reset()
        self._threads = [
            threading.Thread(target=self._inference_loop, name="inference", daemon=True),
            threading.Thread(target=self._control_loop, name="control", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.get_logger().info("activated: control loop and inference worker running")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop output first, then the threads."""
        ret = super().on_deactivate(state)
        self._stop_threads()
        self.get_logger().info("deactivated: no commands are published")
        return ret

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_threads()
        self._stop_frames()
        self._destroy_interfaces()
        self._cfg = self._bundle = self._policy = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Any state -> finalized: stop threads, release everything."""
        self._stop_threads()
        self._stop_frames()
        self._destroy_interfaces()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_threads()
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ configure

    def _configure(self) -> None:
        cfg = config_from_params(nested_parameters(self))
        bundle_path = resolve_share_path(cfg.policy.bundle)
        bundle = load_bundle(bundle_path, expected_sha256=cfg.policy.sha256)
        m = bundle.manifest
        robot_joints = cfg.robot.joint_names
        problems = bundle_mismatches(m, robot_joints, cfg.cameras, f"bundle {bundle_path}")
        if cfg.policy.execution.merge == "rtc":
            # core/rtc.py and the scheduler's rtc mode exist; the node does not yet hand the
            # committed actions to the sampler, so it refuses rather than run a silent replace
            problems.append(
                "policy.execution.merge: 'rtc' is not wired into the policy node yet "
                "(core only); use ensemble, blend or replace")
        if problems:
            raise ConfigError("; ".join(problems))
        ckpt = resolve_share_path(cfg.policy.checkpoint) if cfg.policy.checkpoint else None
        backend = build_backend(
            cfg.policy.backend, device=cfg.policy.device,
            intra_op_threads=cfg.policy.intra_op_threads, checkpoint=ckpt,
        )
        policy = MoEPolicy(bundle, backend, routing=cfg.policy.routing)
        t0 = time.perf_counter()
        policy.warmup(cfg.policy.warmup_runs)
        warm_ms = (time.perf_counter() - t0) * 1e3
        self._cfg, self._bundle, self._policy = cfg, bundle, policy
        self._backend_name = backend.name
        # Fixed per configuration; the control loop and the worker reuse them every cycle.
        self._joint_names = robot_joints
        self._arms = []
        first = 0
        for arm in cfg.robot.arms:
            cols = slice(first, first + len(arm.joints))
            self._arms.append((arm.name, arm.joint_names, cols))
            first = cols.stop
        labels = list(m.experts.labels)
        self._expert_labels = labels
        self._gate_layout = [Dim(label="experts:" + ",".join(labels), size=len(labels),
                                 stride=len(labels))]
        self._proprio_idx = np.array(
            [robot_joints.index(j) for j in m.observation.proprio.joints]
        )
        used = {s.name for s in m.observation.cameras}
        self._inputs = InputBuffer(
            robot_joints,
            cfg.robot.joint_states_max_age_s,
            {c.name: c.max_age_s for c in cfg.cameras if c.name in used},
        )
        self._setup_cameras(cfg, bundle)
        period = cfg.policy.control_period_s
        self._timeline = ChunkTimeline(
            robot_joints, m.action.joints, cfg.policy.execution, period
        )
        self._control = PeriodicLoop(cfg.policy.control_rate_hz, self._mono, late="skip")
        self._worker = PeriodicLoop(cfg.policy.inference_rate_hz, self._mono, late="reanchor")
        self._safety = SafetyFilter(cfg.robot, cfg.safety, period)
        self._arbiter = CommandArbiter(cfg.handover, self._safety, self._mono)
        self._teleop: tuple[np.ndarray, int] | None = None
        self._deadman: tuple[bool, int] | None = None
        self._create_interfaces(cfg)
        self._reset_stats()
        self.get_logger().info(
            f"configured: bundle {m.name} ({m.family}, {m.experts.count} experts, "
            f"H={m.action.chunk_length}) backend={backend.name} warm-up "
            f"{cfg.policy.warmup_runs} runs in {warm_ms:.0f} ms; control "
            f"{cfg.policy.control_rate_hz:g} Hz, inference {cfg.policy.inference_rate_hz:g} Hz, "
            f"mode {cfg.policy.execution.mode}"
        )

    def _setup_cameras(self, cfg: RuntimeConfig, bundle: LoadedBundle) -> None:
        """One preprocessing pipeline and stats per bundle camera, and the frame worker."""
        cams = {c.name: c for c in cfg.cameras}
        pipes: dict[str, CameraPipeline] = {}
        self._cam_stats = {}
        for spec in bundle.manifest.observation.cameras:
            cam = cams[spec.name]
            pipe = CameraPipeline(
                spec.name, (spec.height, spec.width),
                resolve_preprocess(spec.preprocess, cam.preprocess),
                encodings={"rgb8", "bgr8", cam.encoding},
                warn=self._warn_once,
            )
            pipes[spec.name] = pipe
            self._cam_stats[spec.name] = CameraStats(
                spec.name, cam.topic, pipe.size, pipe.describe(), cam.expected_rate_hz
            )
        inputs = self._inputs
        assert inputs is not None
        self._stop_frames()
        self._frames = FrameWorker(pipes, inputs.put_image, self._on_frame_done)
        self._frames.start()

    def _warn_once(self, text: str) -> None:
        """The pipelines call this once per camera and source size (aspect distortion)."""
        self.get_logger().warning(text)

    def _stop_frames(self) -> None:
        if self._frames is not None:
            self._frames.stop()
            self._frames = None

    def _create_interfaces(self, cfg: RuntimeConfig) -> None:
        sensors = ReentrantCallbackGroup()
        priority = MutuallyExclusiveCallbackGroup()
        e = self._entities
        e.append(
            self.create_subscription(
                JointState, cfg.robot.joint_states_topic, self._on_joint_state, SENSOR_QOS,
                callback_group=sensors,
            )
        )
        for cam in cfg.cameras:
            if cam.name not in self._inputs.status:  # type: ignore[union-attr]
                continue
            msg_type = Image if cam.message_type == "Image" else CompressedImage
            e.append(
                self.create_subscription(
                    msg_type, cam.topic,
                    lambda msg, name=cam.name: self._on_image(name, msg),
                    SENSOR_QOS, callback_group=sensors,
                )
            )
        h = cfg.handover
        e.append(self.create_subscription(
            JointState, h.teleop_topic, self._on_teleop, SENSOR_QOS, callback_group=sensors))
        e.append(self.create_subscription(
            Bool, h.deadman_topic, self._on_deadman, SENSOR_QOS, callback_group=sensors))
        lp = self.create_lifecycle_publisher
        pubs = self._pubs
        for arm in cfg.robot.arms:
            if cfg.policy.execution.mode == "chunk":
                pubs[f"traj/{arm.name}"] = lp(JointTrajectory, arm.trajectory_topic, COMMAND_QOS)
            else:
                pubs[f"cmd/{arm.name}"] = lp(Float64MultiArray, arm.command_topic, COMMAND_QOS)
        pubs["gates"] = lp(Float32MultiArray, "~/router/gates", MONITOR_QOS)
        pubs["active"] = lp(Int32MultiArray, "~/router/active", MONITOR_QOS)
        pubs["dominant"] = lp(String, "~/router/dominant", MONITOR_QOS)
        pubs["shadow/gates"] = lp(Float32MultiArray, "~/shadow/router/gates", MONITOR_QOS)
        pubs["shadow/active"] = lp(Int32MultiArray, "~/shadow/router/active", MONITOR_QOS)
        pubs["shadow/dominant"] = lp(String, "~/shadow/router/dominant", MONITOR_QOS)
        pubs["shadow/command"] = lp(JointState, "~/shadow/command", MONITOR_QOS)
        pubs["command"] = lp(JointState, "~/command", MONITOR_QOS)
        # The mode is latched and published in every lifecycle state.
        pubs["mode"] = self.create_publisher(String, "~/mode", LATCHED_QOS)
        srv = self.create_service
        e += [
            srv(SetBool, "~/engage_autonomy", self._srv_engage, callback_group=priority),
            srv(Trigger, "~/hold", self._srv_hold, callback_group=priority),
            srv(Trigger, "~/estop", self._srv_estop, callback_group=priority),
            srv(Trigger, "~/reset_estop", self._srv_reset_estop, callback_group=priority),
        ]
        self._last_mode_published = -1
        self._publish_mode()

    def _destroy_interfaces(self) -> None:
        for ent in self._entities:
            if hasattr(ent, "topic_name") and hasattr(ent, "handle") and hasattr(ent, "callback"):
                self.destroy_subscription(ent)
            elif hasattr(ent, "srv_type"):
                self.destroy_service(ent)
        self._entities = []
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs = {}

    # ------------------------------------------------------------------ callbacks

    def _now_ns(self) -> int:
        return int(self.get_clock().now().nanoseconds)

    def _on_joint_state(self, msg: JointState) -> None:
        inputs = self._inputs
        if inputs is None:
            return
        try:
            inputs.put_joint_state(
                msg.name, msg.position, msg.velocity, stamp_to_ns(msg.header.stamp),
                self._now_ns(),
            )
        except InputError as err:
            self.get_logger().warning(f"rejected /joint_states: {err}", throttle_duration_sec=2.0)

    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        """Count and hand the message to the frame worker (decoding happens there)."""
        frames, stats = self._frames, self._cam_stats.get(camera)
        if frames is None or stats is None:
            return
        stamp, now = stamp_to_ns(msg.header.stamp), self._now_ns()
        stats.arrival(stamp, now)
        if isinstance(msg, Image):
            frame: RawFrame | CompressedFrame = RawFrame(
                msg.height, msg.width, msg.encoding, msg.step, msg.data
            )
        else:
            frame = CompressedFrame(msg.format, msg.data)
        frames.submit(camera, frame, stamp, now)

    def _on_frame_done(
        self, camera: str, info: Processed | None, err: ImageError | None
    ) -> None:
        """Frame worker thread: count the outcome; a rejection reaches the input buffer."""
        stats = self._cam_stats.get(camera)
        if stats is None:
            return
        if err is None:
            assert info is not None
            stats.accepted_frame(info.source_size, info.encoding)
            return
        stats.rejected_frame(err.cause, str(err))
        inputs = self._inputs
        if err.cause != "stamp" and inputs is not None:  # put_image counted a bad stamp
            inputs.reject(camera, str(err), self._now_ns())
        self.get_logger().warning(f"rejected image from {stats.topic}: {err}",
                                  throttle_duration_sec=2.0)

    def _on_teleop(self, msg: JointState) -> None:
        if self._cfg is None or self._arbiter is None:
            return
        try:
            q = joint_command(self._joint_names, msg.name, msg.position)
        except InputError as err:
            self.get_logger().warning(f"rejected teleop command: {err}", throttle_duration_sec=2.0)
            return
        # Freshness is judged on arrival (monotonic), so a teleop device with a bad clock
        # cannot keep an old command alive.
        self._teleop = (q, self._mono.now_ns())

    def _on_deadman(self, msg: Bool) -> None:
        self._deadman = (bool(msg.data), self._mono.now_ns())

    # ------------------------------------------------------------------ services

    def _srv_engage(self, req: SetBool.Request, res: SetBool.Response) -> SetBool.Response:
        if self._arbiter is None:
            res.success, res.message = False, "node is not configured"
            return res
        if req.data and self._state_machine.current_state[1] != "active":
            res.success, res.message = False, "node is not active"
            return res
        ok, msg = self._arbiter.engage_autonomy(bool(req.data))
        self.get_logger().info(f"engage_autonomy({req.data}): {msg}")
        res.success, res.message = ok, msg
        self._publish_mode()
        return res

    def _trigger(self, fn_name: str, res: Trigger.Response) -> Trigger.Response:
        if self._arbiter is None:
            res.success, res.message = False, "node is not configured"
            return res
        ok, msg = getattr(self._arbiter, fn_name)()
        self.get_logger().info(f"{fn_name}: {msg}")
        res.success, res.message = ok, msg
        self._publish_mode()
        return res

    def _srv_hold(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        return self._trigger("hold", res)

    def _srv_estop(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        return self._trigger("estop", res)

    def _srv_reset_estop(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        return self._trigger("reset_estop", res)

    def _publish_mode(self) -> None:
        pub = self._pubs.get("mode")
        if pub is None or self._arbiter is None:
            return
        with self._mode_lock:
            changes = self._arbiter.mode_changes
            if changes == self._last_mode_published:
                return
            self._last_mode_published = changes
            pub.publish(String(data=self._arbiter.mode.value))

    # ------------------------------------------------------------------ stats

    def _reset_stats(self) -> None:
        period = self._cfg.policy.control_period_s if self._cfg is not None else 0.02
        experts = self._bundle.manifest.experts.count if self._bundle is not None else 0
        self._infer_stats = InferenceStats(experts)
        self._control_stats = ControlStats(period)
        self._policy_warm = False
        self._ood_energy: float | None = None

    # ------------------------------------------------------------------ inference worker

    def _inference_loop(self) -> None:
        assert self._worker is not None
        self._worker.run(self._infer_step, self._stop)

    def _infer_step(self, _step: int, _now: int) -> None:
        """One worker iteration: a failure is counted and logged, never ends the worker."""
        try:
            self._infer_once()
        except Exception as err:
            if not self.context.ok():
                self._stop.set()  # SIGINT shut the context down under us: stop quietly
                return
            line = self._infer_stats.failed(err)
            self.get_logger().error(f"inference failed: {line}", throttle_duration_sec=2.0)

    def _infer_once(self) -> None:
        cfg, inputs, policy, bundle = self._cfg, self._inputs, self._policy, self._bundle
        assert cfg is not None and inputs is not None and policy is not None
        assert bundle is not None
        now_ros = self._now_ns()
        if inputs.stale_sources(now_ros):
            return
        joints = inputs.joints()
        images = inputs.images()
        assert joints is not None
        stamps = [joints.stamp_ns, *(s.stamp_ns for s in images.values())]
        obs = Observation(
            images={k: v.image for k, v in images.items()},
            proprio=joints.positions[self._proprio_idx].astype(np.float32),
            stamp_ns=min(stamps),
        )
        out = policy.infer(obs)
        self._infer_stats.add(out, time.monotonic())
        self._ood_energy = self._novelty(out)
        assert self._arbiter is not None

        timeline = self._timeline
        assert timeline is not None
        offered = timeline.offer(timeline.expand(out.actions, joints.positions), obs.stamp_ns)
        if offered == NONFINITE:
            # The arbiter sees the NaN command (ERROR + HOLD in the safety filter).
            self._infer_stats.nonfinite += 1
            self.get_logger().error(
                "policy output contains NaN/Inf: holding", throttle_duration_sec=2.0
            )
        if offered != ADDED:
            return
        self._policy_warm = True
        self._publish_router(out, shadow=self._arbiter.mode == Mode.TELEOP)

    def _novelty(self, out: PolicyOutput) -> float | None:
        """Di-BM novelty: the lowest expert energy (no expert claims the observation)."""
        cfg = self._cfg
        assert cfg is not None
        energies = out.decision.state.energies
        if energies is None or cfg.safety.ood_action == "ignore":
            return None
        return float(np.min(energies))

    def _publish_router(self, out: PolicyOutput, shadow: bool) -> None:
        labels = self._expert_labels
        dec = out.decision
        gates = Float32MultiArray()
        gates.layout.dim = self._gate_layout
        gates.data = [float(g) for g in dec.state.gates]
        active = Int32MultiArray(data=[int(i) for i in dec.active])
        dominant = String(data=labels[dec.dominant])
        prefixes = ["", "shadow/"] if shadow else [""]
        for p in prefixes:
            self._pubs[p + "gates"].publish(gates)
            self._pubs[p + "active"].publish(active)
            self._pubs[p + "dominant"].publish(dominant)

    # ------------------------------------------------------------------ control loop

    def _control_loop(self) -> None:
        assert self._control is not None
        self._control.run(self._control_step, self._stop)

    def _control_step(self, step: int, now: int) -> None:
        self._control_stats.tick(now)
        try:
            self._tick(step)
        except Exception as err:
            if not self.context.ok():
                self._stop.set()  # SIGINT shut the context down under us: stop quietly
                return
            self.get_logger().error(
                f"control tick failed: {type(err).__name__}: {err}", throttle_duration_sec=2.0
            )

    def _tick(self, step: int) -> None:
        """One control period: scheduler -> arbiter (modes, blend, safety filter) -> publish."""
        cfg, inputs, timeline, arb = self._cfg, self._inputs, self._timeline, self._arbiter
        assert cfg is not None and inputs is not None and timeline is not None
        assert arb is not None
        now_ros = self._now_ns()
        timeline.mark(step, now_ros)
        joints = inputs.joints()
        stale = inputs.stale_sources(now_ros)
        measured = None if joints is None or JOINTS in stale else joints.positions
        # After a non-finite chunk the proposal is all-NaN: ERROR + HOLD in the filter.
        proposal, pending = timeline.take(step)
        teleop, deadman = self._teleop, self._deadman
        out = arb.tick(
            TickInputs(
                measured=measured,
                policy_command=proposal,
                teleop_command=None if teleop is None else teleop[0],
                teleop_stamp_ns=None if teleop is None else teleop[1],
                deadman=None if deadman is None else deadman[0],
                deadman_stamp_ns=None if deadman is None else deadman[1],
                stale_inputs=tuple(f"{k}: {v}" for k, v in stale.items() if k != JOINTS),
                policy_warm=self._policy_warm,
                overrun=self._worker is not None and self._worker.overrunning,
                ood_energy=self._ood_energy,
            )
        )
        for ev in out.events:
            # One call site per severity: rclpy raises "Logger severity cannot be changed
            # between calls" when one call site logs at two severities, which aborted the
            # tick (no command, mode not republished) on the first WARN/ERROR transition.
            text = f"mode {ev.previous.value} -> {ev.mode.value}: {ev.reason}"
            if ev.level:
                self.get_logger().warning(text)
            else:
                self.get_logger().info(text)
        self._publish_mode()
        if out.mode == Mode.TELEOP and out.policy_command is not None:
            sh = JointState()
            sh.header.stamp = ns_to_stamp(now_ros)
            sh.name = self._joint_names
            sh.position = [float(x) for x in out.policy_command]
            self._pubs["shadow/command"].publish(sh)
        if out.sent is None:
            return
        sent = out.sent
        cmd = JointState()
        cmd.header.stamp = ns_to_stamp(now_ros)
        cmd.name = self._joint_names
        cmd.position = [float(x) for x in sent]
        self._pubs["command"].publish(cmd)
        if cfg.policy.execution.mode == "stream":
            self._publish_stream(sent)
        else:
            self._publish_chunk_mode(step, out, pending, now_ros)
        if out.policy_sent and pending is not None:
            # observation -> first command computed from it, on the ROS clock
            self._control_stats.obs_to_cmd.add((now_ros - pending.stamp_ns) / 1e6)

    def _publish_stream(self, sent: np.ndarray) -> None:
        for arm, _names, cols in self._arms:
            self._pubs[f"cmd/{arm}"].publish(
                Float64MultiArray(data=[float(x) for x in sent[cols]])
            )

    def _publish_chunk_mode(
        self, step: int, out: TickOutput, pending: TimedChunk | None, now_ros: int
    ) -> None:
        """JointTrajectory per arm (joint_trajectory_controller semantics).

        Under AUTONOMY with the blend finished, a new chunk is sent whole: the filtered
        command of this tick first, then the chunk's remaining steps run through the same
        limits (position, velocity, acceleration, deviation from measured) by
        :func:`limit_chunk`, stamped with the observation time so the controller drops the
        points already in the past. Otherwise (teleop, hold, blending) each tick sends a
        one-point trajectory to the filtered command.
        """
        cfg, safety = self._cfg, self._safety
        assert cfg is not None and safety is not None
        period = cfg.policy.control_period_s
        policy_driven = out.policy_sent and (out.blend_alpha is None or out.blend_alpha >= 1.0)
        if policy_driven:
            if pending is None:
                return
            sent = out.sent
            assert sent is not None
            joints = self._inputs.joints() if self._inputs is not None else None
            measured = None if joints is None else joints.positions
            rows, times = chunk_trajectory(
                pending, step, sent, period,
                lambda rest: limit_chunk(safety, rest, sent, measured),
            )
            self._publish_trajectories(rows, times, pending.stamp_ns)
        else:
            assert out.sent is not None
            self._publish_trajectories(out.sent[None, :], [period], now_ros)

    def _publish_trajectories(
        self, points: np.ndarray, times_s: list[float], stamp_ns: int
    ) -> None:
        for arm, names, cols in self._arms:
            msg = JointTrajectory()
            msg.header.stamp = ns_to_stamp(stamp_ns)
            msg.joint_names = names
            for row, t in zip(points, times_s, strict=True):
                pt = JointTrajectoryPoint()
                pt.positions = [float(x) for x in row[cols]]
                sec = math.floor(t)
                pt.time_from_start.sec = int(sec)
                pt.time_from_start.nanosec = round((t - sec) * 1e9)
                msg.points.append(pt)
            self._pubs[f"traj/{arm}"].publish(msg)

    # ------------------------------------------------------------------ diagnostics

    def _publish_diagnostics(self) -> None:
        """One DiagnosticStatus per task (core.diagnostics); lifecycle always, the rest
        once configured."""
        name = self.get_name()
        state = self._state_machine.current_state[1]
        if self._configure_error:
            tasks = [TaskStatus(LIFECYCLE, Level.ERROR,
                                f"configure failed: {self._configure_error}", [("state", state)])]
        else:
            tasks = [TaskStatus(LIFECYCLE, Level.OK, state, [("state", state)])]
        if self._cfg is not None and self._inputs is not None:
            tasks += self._diagnostic_tasks(state == "active")
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [
            diag_status(status_name(name, t.task), t.level, t.message, t.values, HARDWARE_ID)
            for t in tasks
        ]
        self._diag_pub.publish(msg)

    def _diagnostic_tasks(self, active: bool) -> list[TaskStatus]:
        cfg, inputs, bundle, policy = self._cfg, self._inputs, self._bundle, self._policy
        safety, arb = self._safety, self._arbiter
        assert cfg is not None and inputs is not None and bundle is not None
        assert safety is not None and arb is not None
        now_ros = self._now_ns()
        frames = self._frames
        cameras = [
            stats.report(now_ros, frames.superseded.get(cam, 0) if frames is not None else 0,
                         self.count_publishers(stats.topic))
            for cam, stats in self._cam_stats.items()
        ]
        m, p = bundle.manifest, cfg.policy
        loops = (self._control, self._worker)
        return [
            inputs_task(inputs.status.values(), inputs.stale(now_ros),
                        inputs.recent_errors(now_ros), cameras, now_ros, active),
            inference_task(self._infer_stats, self._backend_name, m.name,
                           loops[1].overruns if loops[1] else 0, p.inference_rate_hz),
            router_task(self._infer_stats, m.family, policy.strategy.name if policy else "",
                        m.experts.labels, time.monotonic()),
            control_task(self._control_stats, self._mono.now_ns(), p.control_rate_hz,
                         loops[0].skipped if loops[0] else 0, p.execution.mode, active),
            safety_task(safety.diagnostics(), arb.mode.value, arb.mode_changes),
        ]

    # ------------------------------------------------------------------ teardown

    def destroy_node(self) -> None:
        """Stop the worker threads before the publishers they use are destroyed."""
        self._stop_threads()
        self._stop_frames()
        super().destroy_node()

    def _stop_threads(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads = []


def _autostart(node: PolicyNode) -> None:
    """Configure then activate, as a lifecycle manager with autostart would."""
    ret = node.trigger_configure()
    if ret != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error("autostart: configure failed; node stays unconfigured")
        return
    node.trigger_activate()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = PolicyNode()
    if node.has_parameter("autostart") and bool(node.get_parameter("autostart").value):
        timer = None

        def _once() -> None:
            assert timer is not None
            timer.cancel()
            _autostart(node)

        timer = node.create_timer(0.1, _once)
    spin_node(node)  # single-threaded: see spin_node and bench/control_loop.py


if __name__ == "__main__":
    main()
