"""The policy node (lifecycle node ``moe_policy``, executable ``policy_node``).

A thin rclpy adapter over :class:`~moe_policy_ros.core.pipeline.PolicyPipeline`, which holds
the runtime (inputs, inference, chunk timeline, arbitration, safety, diagnostics) and is
unit-tested without ROS. This node declares the parameters, converts messages
(:mod:`~moe_policy_ros.nodes.convert`), creates the subscriptions, publishers and services, and
runs the threads:

* the executor thread runs subscription callbacks, which only convert and store the newest
  sample (:class:`~moe_policy_ros.core.inputs.InputBuffer`; images undecoded, for the
  pipeline's frame worker thread), services and the 1 Hz diagnostics timer;
* the **inference worker** runs :meth:`PolicyPipeline.infer_once` at ``inference_rate_hz``
  (``inference_trigger: timer``) or on each new camera frame with that rate as a ceiling
  (``frame``; :mod:`~moe_policy_ros.core.trigger`), ONNX Runtime releasing the GIL, and
  publishes the router state of each chunk taken and what the chunk changes at once (chunk
  mode: its trajectories; stream mode: the setpoint for that instant, on the way to the next
  tick's command;
  :meth:`PolicyPipeline.send_on_arrival`);
* the **control loop** runs :meth:`PolicyPipeline.control_step` at ``control_rate_hz`` on
  absolute monotonic deadlines. It never waits for inference, and publishes what the safety
  filter actually sent.

Lifecycle: ``configure`` validates the parameters with the core schema, verifies and loads the
bundle, warms the backend and creates the ROS interfaces; ``activate`` starts the worker and
the control loop (publishers are lifecycle publishers, so nothing is sent while inactive);
``deactivate`` stops them; ``cleanup`` releases everything. A failed configure (bad parameter,
tampered bundle) leaves the node unconfigured and alive, with the reason in the log and on
``/diagnostics``; fix the parameter and configure again.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.publisher import Publisher
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool

from moe_policy_ros.backend_factory import build_backend
from moe_policy_ros.core.clock import MonotonicClock
from moe_policy_ros.core.config import ConfigError, RuntimeConfig, config_from_params
from moe_policy_ros.core.diagnostics import lifecycle_task
from moe_policy_ros.core.loop import LoopThreads, set_realtime_priority
from moe_policy_ros.core.manifest import BundleError
from moe_policy_ros.core.pipeline import ControlOutput, PolicyPipeline, build_pipeline
from moe_policy_ros.core.timeline import ADDED, NONFINITE
from moe_policy_ros.nodes.common import (
    guarded_input,
    log_mode_events,
    schedule_autostart,
    spin_node,
    start_node,
)
from moe_policy_ros.nodes.convert import (
    SERVICE_TYPES,
    control_msgs,
    diagnostic_array,
    frame_from_msg,
    joint_state_fields,
    policy_publishers,
    router_publications,
)
from moe_policy_ros.nodes.params import declare_parameters, nested_parameters
from moe_policy_ros.session import LATCHED_QOS, SENSOR_QOS, resolve_share_path, stamp_to_ns


class PolicyNode(LifecycleNode):
    """Runs an MoE policy bundle in a fixed-rate control loop; see the module docstring."""

    def __init__(self, node_name: str = "moe_policy", **kwargs: Any) -> None:
        self._pipe: PolicyPipeline | None = None
        self._configure_error = ""
        self._subs: list[Any] = []
        self._srvs: list[Any] = []
        self._pubs: dict[str, Publisher] = {}
        super().__init__(node_name, **kwargs)
        declare_parameters(self)
        self._mono = MonotonicClock()
        # the inference worker and the control loop (a failure once SIGINT has shut the
        # context down under them stops them quietly)
        self._loops = LoopThreads(alive=self.context.ok)
        # /diagnostics exists from construction, so a failed configure is visible in rqt.
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics)
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
            self._release()
            return TransitionCallbackReturn.FAILURE
        self._configure_error = ""
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the inference worker and the control loop; enable the publishers."""
        pipe = self._pipe
        assert pipe is not None
        pipe.start()
        self._loops.start("inference", pipe.run_worker, self._infer_step, self._infer_failed)
        self._loops.start("control", pipe.control_loop.run, self._control_step,
                          self._control_failed, on_start=self._control_priority)
        self.get_logger().info("activated: control loop and inference worker running")
        return super().on_activate(state)

    def _control_priority(self) -> None:
        """Control thread, before its first tick: ``policy.control_thread_priority``."""
        assert self._pipe is not None
        refused = set_realtime_priority(self._pipe.cfg.policy.control_thread_priority)
        if refused:
            self.get_logger().warning(f"control loop: {refused}")

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop output first, then the threads."""
        ret = super().on_deactivate(state)
        self._loops.stop()
        self.get_logger().info("deactivated: no commands are published")
        return ret

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._loops.stop()
        self._release()
        self._pipe = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Any state -> finalized: stop threads, release everything."""
        self._loops.stop()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._loops.stop()
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ configure

    def _configure(self) -> None:
        cfg = config_from_params(nested_parameters(self))
        sys.setswitchinterval(cfg.policy.gil_switch_interval_ms / 1000.0)
        self._stop_frames()
        pipe = build_pipeline(cfg, resolve_path=resolve_share_path, make_backend=build_backend,
                              clock=self._mono, warn=self._warn_once, ros_now=self._now_ns,
                              on_reject=self._frame_rejected)
        self._pipe = pipe
        pipe.frames.start()
        self._create_interfaces(cfg, pipe)
        self.get_logger().info(pipe.describe())

    def _warn_once(self, text: str) -> None:
        """The pipelines call this once per camera and source size (aspect distortion)."""
        self.get_logger().warning(text)

    def _frame_rejected(self, text: str) -> None:
        """Frame worker thread: a camera frame refused (counted; it reached the inputs)."""
        self.get_logger().warning(text, throttle_duration_sec=2.0)

    def _create_interfaces(self, cfg: RuntimeConfig, pipe: PolicyPipeline) -> None:
        sensors = ReentrantCallbackGroup()
        priority = MutuallyExclusiveCallbackGroup()

        def sub(msg_type: Any, topic: str, cb: Callable[[Any], None]) -> None:
            self._subs.append(self.create_subscription(
                msg_type, topic, cb, SENSOR_QOS, callback_group=sensors))

        log = self.get_logger()
        sub(JointState, cfg.robot.joint_states_topic, guarded_input(
            log, "/joint_states",
            lambda m: pipe.inputs.put_joint_state(*joint_state_fields(m), self._now_ns())))
        for cam in cfg.cameras:
            if cam.name in pipe.inputs.status:
                sub(Image if cam.message_type == "Image" else CompressedImage, cam.topic,
                    functools.partial(self._on_image, cam.name))
        sub(JointState, cfg.handover.teleop_topic, guarded_input(
            log, "teleop command", lambda m: pipe.put_teleop(m.name, m.position)))
        sub(Bool, cfg.handover.deadman_topic, lambda m: pipe.put_deadman(m.data))
        for spec in policy_publishers(cfg):
            self._pubs[spec.key] = self.create_lifecycle_publisher(spec.msg_type, spec.topic,
                                                                   spec.qos)
        # The mode is latched and published in every lifecycle state.
        self._pubs["mode"] = self.create_publisher(String, "~/mode", LATCHED_QOS)
        self._srvs = [
            self.create_service(srv_type, f"~/{name}", functools.partial(self._on_request, name),
                                callback_group=priority)
            for name, srv_type in SERVICE_TYPES.items()
        ]
        self._publish_mode()

    def _release(self) -> None:
        """Stop the frame worker and destroy the subscriptions, services and publishers."""
        self._stop_frames()
        for sub in self._subs:
            self.destroy_subscription(sub)
        for srv in self._srvs:
            self.destroy_service(srv)
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._subs, self._srvs, self._pubs = [], [], {}

    def _stop_frames(self) -> None:
        if self._pipe is not None:
            self._pipe.frames.stop()

    # ------------------------------------------------------------------ callbacks

    def _now_ns(self) -> int:
        return int(self.get_clock().now().nanoseconds)

    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        """Count and hand the message to the frame worker (decoding happens there)."""
        if self._pipe is not None:
            self._pipe.put_frame(camera, frame_from_msg(msg), stamp_to_ns(msg.header.stamp),
                                 self._now_ns())

    # ------------------------------------------------------------------ services

    def _on_request(self, name: str, req: Any, res: Any) -> Any:
        """``~/<name>``: the arbiter's operator request (:meth:`CommandArbiter.request`);
        engaging autonomy needs the node active (its control loop running)."""
        takes_bool = isinstance(req, SetBool.Request)
        data = bool(req.data) if takes_bool else False
        if self._pipe is None:
            res.success, res.message = False, "node is not configured"
        elif data and self._state_machine.current_state[1] != "active":
            res.success, res.message = False, "node is not active"
        else:
            res.success, res.message = self._pipe.arbiter.request(name, data)
            label = f"{name}({data})" if takes_bool else name
            self.get_logger().info(f"{label}: {res.message}")
            self._publish_mode()
        return res

    def _publish_mode(self) -> None:
        pub, pipe = self._pubs.get("mode"), self._pipe
        if pub is not None and pipe is not None:
            pipe.publish_mode(lambda mode: pub.publish(String(data=mode)))

    # ------------------------------------------------------------------ inference worker

    def _infer_step(self, _step: int, _now: int) -> None:
        """One worker iteration (a failure goes to :meth:`_infer_failed`; the worker goes on)."""
        pipe = self._pipe
        if pipe is None:
            return
        res = pipe.infer_once(self._now_ns())
        if res is not None and res.offered == NONFINITE:
            self.get_logger().error(
                "policy output contains NaN/Inf: holding", throttle_duration_sec=2.0
            )
        if res is not None and res.offered == ADDED:
            # the new chunk's trajectories (chunk mode) or revised command (stream) leave now
            pipe.send_on_arrival(self._now_ns(), self._emit)
        if res is not None and res.router is not None:
            self._publish(router_publications(res.router, pipe.gate_label))

    def _infer_failed(self, err: Exception) -> None:
        """An inference that raised: counted (inference diagnostics) and logged."""
        if self._pipe is not None:
            line = self._pipe.infer_stats.failed(err)
            self.get_logger().error(f"inference failed: {line}", throttle_duration_sec=2.0)

    def _publish(self, msgs: Iterable[tuple[str, Any]]) -> None:
        """Publish messages keyed by publisher (:func:`.convert.policy_publishers`)."""
        for key, msg in msgs:
            self._pubs[key].publish(msg)

    # ------------------------------------------------------------------ control loop

    def _control_step(self, step: int, now: int) -> None:
        """One control period (a failure goes to :meth:`_control_failed`; the loop goes on)."""
        pipe = self._pipe
        if pipe is None:
            return
        # published under the tick lock, so ordered with what send_on_arrival publishes
        pipe.control_step(step, now, self._now_ns(), self._emit)

    def _emit(self, out: ControlOutput) -> None:
        """One tick's (or early send's) mode events, latched mode, commands or
        trajectories."""
        log_mode_events(self.get_logger(), out.tick.events)
        self._publish_mode()
        assert self._pipe is not None
        self._publish(control_msgs(out, self._pipe.joint_names))

    def _control_failed(self, err: Exception) -> None:
        self.get_logger().error(
            f"control tick failed: {type(err).__name__}: {err}", throttle_duration_sec=2.0
        )

    # ------------------------------------------------------------------ diagnostics

    def _publish_diagnostics(self) -> None:
        """One DiagnosticStatus per task (core.diagnostics); lifecycle always, the rest
        once configured."""
        name, pipe = self.get_name(), self._pipe
        state = self._state_machine.current_state[1]
        tasks = [lifecycle_task(state, self._configure_error)]
        if pipe is not None:
            tasks += pipe.diagnostic_tasks(self._now_ns(), state == "active",
                                           publishers=self.count_publishers)
        self._diag_pub.publish(diagnostic_array(name, tasks, self.get_clock().now().to_msg()))

    # ------------------------------------------------------------------ teardown

    def destroy_node(self) -> None:
        """Stop the worker threads before the publishers they use are destroyed."""
        self._loops.stop()
        self._stop_frames()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    node = start_node(PolicyNode, args)
    schedule_autostart(node)
    spin_node(node)  # single-threaded: see spin_node and bench/control_loop.py


if __name__ == "__main__":
    main()
