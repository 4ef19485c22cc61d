"""Episodes through ROS 2: ``aloha_sim`` and the ``moe_policy`` node as separate processes over
DDS (the graph ``moe-policy-ros up`` starts), driven only through their public interfaces.

Per episode (:meth:`RosEpisodeRunner.run`):

1. the policy node is **deactivated** (no command leaves it; its threads stop);
2. the sim's ``seed`` parameter is set (``/aloha_sim/set_parameters``) and ``/aloha_sim/reset``
   is called: the sim starts the episode from that seed, as ``AlohaSim.reset(seed)`` does
   in-process; the runner waits for a ``/joint_states`` message after the reset;
3. the policy node is **activated** again (it holds the new pose, measured at its first
   tick, not the last command it sent): ``on_activate`` clears its chunk queue, resets the
   router state (sticky dwell, previous active set) and its statistics, so each episode starts
   as the first did and the node's diagnostics describe this episode alone;
4. once the node has published ``warm_chunks`` router outputs since activation (its inference
   runs steadily: a graph just (re)started shares the CPU with the sim's first renders, and a
   cold pipeline that stalls after engaging makes the node HOLD for want of a command),
   autonomy is engaged through ``~/engage_autonomy`` (retried until the node accepts); steps
   count from here at the control rate (``engaged_step`` is 0);
5. the runner watches ``/aloha_sim/success`` (latched), ``~/mode``, ``~/router/gates`` and
   ``~/router/active``, ``joint_states`` and the child processes until success, the step budget
   (``max_steps`` control periods of wall time, the sim runs at real time), or a failure;
6. autonomy is disengaged and the next ``/diagnostics`` of the node after the end is read for
   the episode's inference latency p50/p99, control period jitter p99 and missed ticks.

Failures are episodes, never a hung run. Each has its cause in ``error``: a node process that
exited (the graph is started again before the next episode), the sim's ``joint_states`` silent
for ``stall_timeout_s``, the node leaving AUTONOMY (HOLD/ESTOP, with the mode), a service that
does not answer, or the wall-clock budget ``episode_timeout_s``. An episode that simply runs
out of steps is a failure without an error, as in-process.

rclpy is imported when a runner is created, not at module import.
"""

from __future__ import annotations

import itertools
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moe_policy_ros.core.config import DEFAULT_NODE_NAME
from moe_policy_ros.core.diagnostics import (
    CONTROL_LOOP,
    INFERENCE,
    ROUTER,
    Key,
    gate_label_experts,
    status_name,
)
from moe_policy_ros.graph import (
    POLICY_NODE,
    SIM_NODE,
    node_graph,
    read_params_doc,
    rewrite_params,
    write_params,
)
from moe_policy_ros.rollout import EpisodeResult, LoopSettings
from moe_policy_ros.tools.up import (
    LaunchOptions,
    NodeProcess,
    apply_dds_environment,
    start_graph,
    stop_graph,
)

#: Diagnostics of the policy node read per episode: status -> {value key -> our name}.
NODE_STATS = {
    status_name(DEFAULT_NODE_NAME, INFERENCE): {
        Key.LATENCY_MEDIAN_MS: "latency_ms_p50",
        Key.LATENCY_P99_MS: "latency_ms_p99",
    },
    status_name(DEFAULT_NODE_NAME, CONTROL_LOOP): {
        Key.JITTER_P99_MS: "jitter_ms_p99",
        Key.MISSED_TICKS: "missed_ticks",
        Key.ACHIEVED_RATE_HZ: "control_rate_hz",
        Key.OBS_TO_COMMAND_P99_MS: "obs_to_command_ms_p99",
    },
}
ROUTER_STATUS = status_name(DEFAULT_NODE_NAME, ROUTER)


class EpisodeFailure(Exception):
    """The episode cannot go on; the text is its cause. ``restart``: the graph is not to be
    trusted any more (a node silent or not answering) and is started again before the next
    episode."""

    def __init__(self, cause: str, *, restart: bool = False) -> None:
        super().__init__(cause)
        self.restart = restart


@dataclass
class Watch:
    """What the runner's subscriptions saw, under one lock (callbacks store, the episode
    loop reads)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    success: list[tuple[float, bool]] = field(default_factory=list)
    mode: str = ""
    mode_at: float = 0.0
    gates: list[tuple[float, list[float]]] = field(default_factory=list)
    active: list[tuple[float, list[int]]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    joint_state_at: float = 0.0
    diagnostics: list[tuple[float, dict[str, dict[str, str]]]] = field(default_factory=list)

    def clear_episode(self) -> None:
        with self.lock:
            self.success.clear()
            self.gates.clear()
            self.active.clear()
            self.diagnostics.clear()


FrameSink = Callable[[float, np.ndarray], None]


class RosEpisodeRunner:
    """One graph (sim + policy node) for a run of episodes; :meth:`run` per seed."""

    def __init__(
        self,
        task: str,
        params: Path,
        bundle: Path,
        *,
        routing: Mapping[str, Any] | None = None,
        settings: LoopSettings | None = None,
        log_level: str = "warn",
        startup_timeout_s: float = 120.0,
        service_timeout_s: float = 20.0,
        stall_timeout_s: float = 3.0,
        warm_chunks: int = 5,
        frame_sink: FrameSink | None = None,
        work_dir: Path | None = None,
    ) -> None:
        self.settings = settings or LoopSettings()
        self.task = task
        self.startup_timeout_s = startup_timeout_s
        self.service_timeout_s = service_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.warm_chunks = int(warm_chunks)
        doc = read_params_doc(params)
        self.specs = node_graph(doc, sim=True)
        apply_dds_environment(doc, "evaluate")  # before our participant exists
        from moe_policy_ros.core.config import load_config

        cfg = load_config(params)
        self.period_s = cfg.policy.control_period_s
        self.control_rate_hz = cfg.policy.control_rate_hz
        policy: dict[str, Any] = {"policy.bundle": str(bundle)}
        # The bundle under evaluation sets what the node expects of each camera (the file's
        # sizes describe make demo's bundle); the sim renders at its own size either way.
        from moe_policy_ros.core.manifest import read_manifest

        for cam in read_manifest(bundle).observation.cameras:
            policy[f"cameras.{cam.name}.width"] = int(cam.width)
            policy[f"cameras.{cam.name}.height"] = int(cam.height)
        for key, value in (routing or {}).items():
            policy[f"policy.routing.{key}"] = value
        overrides = {POLICY_NODE: policy, SIM_NODE: {"task": task}}
        self._tmp = tempfile.TemporaryDirectory(prefix="moe_policy_ros_eval_")
        directory = work_dir or Path(self._tmp.name)
        directory.mkdir(parents=True, exist_ok=True)
        self.params_file = write_params(
            rewrite_params(doc, self.specs, "", overrides), directory
        )
        self._options = LaunchOptions(log_level=log_level)
        self.children: list[NodeProcess] = []
        self.watch = Watch()
        self._frame_sink = frame_sink
        self.camera_topic = next((c.topic for c in cfg.cameras), "cameras/top/image_raw")
        self._session: Any = None
        self._router_diag: dict[str, str] = {}
        self.episode_count = 0
        self._needs_restart = False
        self._seed: int | None = None
        self._t_engage: float | None = None
        self._ended = ""  # the last episode's outcome once it is over (for the caption)
        #: (engaged, ended) monotonic times of every episode run so far
        self.windows: list[tuple[float, float]] = []
        self._open_session()
        try:
            self._start_graph()
        except Exception as err:
            self.close()
            raise RuntimeError(f"graph did not come up: {err}") from None

    # ------------------------------------------------------------------ ROS plumbing

    def _open_session(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from lifecycle_msgs.srv import ChangeState, GetState
        from rcl_interfaces.srv import GetParameters, SetParameters
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, Float32MultiArray, Int32MultiArray, String
        from std_srvs.srv import SetBool, Trigger

        from moe_policy_ros.session import LATCHED_QOS, MONITOR_QOS, SENSOR_QOS, RosSession

        self._session = RosSession("moe_policy_evaluate")
        n, w = self._session.node, self.watch
        pol, sim = f"/{POLICY_NODE}", f"/{SIM_NODE}"

        def now() -> float:
            return time.monotonic()

        def on_success(m: Any) -> None:
            with w.lock:
                w.success.append((now(), bool(m.data)))

        def on_mode(m: Any) -> None:
            with w.lock:
                w.mode, w.mode_at = str(m.data), now()

        def on_gates(m: Any) -> None:
            with w.lock:
                w.gates.append((now(), [float(x) for x in m.data]))
                labels = gate_label_experts(m.layout.dim[0].label) if m.layout.dim else None
                w.labels = labels or w.labels

        def on_active(m: Any) -> None:
            with w.lock:
                w.active.append((now(), [int(x) for x in m.data]))

        def on_js(_m: Any) -> None:
            w.joint_state_at = now()

        def on_diag(m: Any) -> None:
            got = {
                st.name: {kv.key: kv.value for kv in st.values}
                for st in m.status
                if st.name in NODE_STATS
            }
            for st in m.status:
                if st.name == ROUTER_STATUS:
                    self._router_diag = {kv.key: kv.value for kv in st.values}
            if got:
                with w.lock:
                    w.diagnostics.append((now(), got))

        def on_image(m: Any) -> None:
            sink = self._frame_sink
            if sink is None or m.encoding != "rgb8":
                return
            img = np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.width, 3)
            sink(now(), img)

        n.create_subscription(Bool, f"{sim}/success", on_success, LATCHED_QOS)
        n.create_subscription(String, f"{pol}/mode", on_mode, LATCHED_QOS)
        n.create_subscription(Float32MultiArray, f"{pol}/router/gates", on_gates, MONITOR_QOS)
        n.create_subscription(Int32MultiArray, f"{pol}/router/active", on_active, MONITOR_QOS)
        n.create_subscription(JointState, "/joint_states", on_js, SENSOR_QOS)
        n.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
        if self._frame_sink is not None:
            topic = self.camera_topic
            n.create_subscription(Image, topic if topic.startswith("/") else f"/{topic}",
                                  on_image, SENSOR_QOS)
        self._change: Any = n.create_client(ChangeState, f"{pol}/change_state")
        self._get: Any = n.create_client(GetState, f"{pol}/get_state")
        self._engage: Any = n.create_client(SetBool, f"{pol}/engage_autonomy")
        self._reset: Any = n.create_client(Trigger, f"{sim}/reset")
        self._set_params: Any = n.create_client(SetParameters, f"{sim}/set_parameters")
        self._get_params: Any = n.create_client(GetParameters, f"{sim}/get_parameters")
        self._srv = {"ChangeState": ChangeState, "GetState": GetState, "SetBool": SetBool,
                     "Trigger": Trigger, "SetParameters": SetParameters,
                     "GetParameters": GetParameters}
        self._session.spin_in_background()

    def _call(self, client: Any, request: Any, timeout_s: float | None = None,
              resend_s: float | None = None) -> Any:
        """Call a service; EpisodeFailure naming the service (or a dead node) on no answer.

        ``resend_s`` (idempotent requests only) sends the request again when it has had no
        answer for that long: after a node is killed and restarted, DDS still knows the dead
        server's endpoints for a while, so ``wait_for_service`` succeeds and a request sent
        before the new server's reader is matched is lost, never answered."""
        timeout = self.service_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        while not client.wait_for_service(timeout_sec=0.2):
            self._check_children()
            if time.monotonic() > deadline:
                raise EpisodeFailure(f"service {client.srv_name} not available after "
                                     f"{timeout:g} s", restart=True)
        fut = client.call_async(request)
        sent = time.monotonic()
        while not fut.done():
            self._check_children()
            now = time.monotonic()
            if now > deadline:
                raise EpisodeFailure(
                    f"service {client.srv_name} did not answer in {timeout:g} s", restart=True
                )
            if resend_s is not None and now - sent > resend_s:
                fut, sent = client.call_async(request), now
            time.sleep(0.02)
        return fut.result()

    def _check_children(self) -> None:
        dead = [f"{c.spec.name} exited with code {c.proc.poll()}" for c in self.children
                if c.proc.poll() is not None]
        if dead:
            raise EpisodeFailure("node process " + "; ".join(dead))

    def _policy_state(self) -> str:
        res = self._call(self._get, self._srv["GetState"].Request(), resend_s=2.0)
        return str(res.current_state.label)

    def _transition(self, transition_id: int, what: str) -> None:
        req = self._srv["ChangeState"].Request()
        req.transition.id = transition_id
        if not self._call(self._change, req).success:
            raise EpisodeFailure(f"policy node: {what} failed (see its log and /diagnostics)")

    def _set_active(self, active: bool) -> None:
        from lifecycle_msgs.msg import Transition

        state = self._policy_state()
        if active:
            if state == "unconfigured":
                self._transition(Transition.TRANSITION_CONFIGURE, "configure")
                state = self._policy_state()
            if state == "inactive":
                self._transition(Transition.TRANSITION_ACTIVATE, "activate")
        elif state == "active":
            self._transition(Transition.TRANSITION_DEACTIVATE, "deactivate")

    def _start_graph(self) -> None:
        self.children = start_graph(self.specs, self._options, self.params_file)
        # Configure (loads and warms the bundle) with the start-up budget.
        saved = self.service_timeout_s
        self.service_timeout_s = self.startup_timeout_s
        try:
            self._set_active(True)
            # and the sim answers (MuJoCo and its renderer start slowly on a loaded machine;
            # its services are discoverable before its executor spins)
            self._call(self._get_params, self._srv["GetParameters"].Request(names=["seed"]),
                       resend_s=2.0)
        finally:
            self.service_timeout_s = saved

    def _restart_graph(self) -> None:
        stop_graph(self.children)
        self._start_graph()

    # ------------------------------------------------------------------ episodes

    def run(self, seed: int) -> EpisodeResult:
        """One episode from ``seed``; any failure is this episode's, with its cause."""
        res = EpisodeResult(seed=int(seed), success=False)
        t0 = time.monotonic()
        self._seed, self._t_engage, self._ended = int(seed), None, ""
        self.episode_count += 1  # after the reset of _t_engage (status_lines reads both)
        try:
            if self._needs_restart or any(c.proc.poll() is not None for c in self.children):
                self._needs_restart = False
                self._restart_graph()
            self._episode(res, t0)
        except EpisodeFailure as err:
            res.error = str(err)
            self._needs_restart = self._needs_restart or err.restart
        except Exception as err:  # never the run's
            res.error = f"{type(err).__name__}: {err}"
        finally:
            try:
                self._disengage()
            except Exception as err:
                res.error = res.error or f"disengage failed: {err}"
        res.wall_s = time.monotonic() - t0
        self._ended = "SUCCESS" if res.success else "failure"
        return res

    def _disengage(self) -> None:
        if all(c.proc.poll() is None for c in self.children):
            self._call(self._engage, self._srv["SetBool"].Request(data=False), 5.0)

    def _reset_sim(self, seed: int) -> None:
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue

        req = self._srv["SetParameters"].Request()
        req.parameters = [Parameter(name="seed", value=ParameterValue(
            type=ParameterType.PARAMETER_INTEGER, integer_value=int(seed)))]
        res = self._call(self._set_params, req)
        if not res.results or not res.results[0].successful:
            why = res.results[0].reason if res.results else "no result"
            raise EpisodeFailure(f"aloha_sim refused seed {seed}: {why}")
        out = self._call(self._reset, self._srv["Trigger"].Request())
        if not out.success:
            raise EpisodeFailure(f"aloha_sim reset failed: {out.message}")

    def _await(self, ready: Callable[[Watch], bool], deadline: float, poll_s: float) -> bool:
        """Poll ``ready(watch)`` under the watch's lock until it holds (True) or ``deadline``
        passes (False); a child process that died raises meanwhile."""
        w = self.watch
        while time.monotonic() < deadline:
            self._check_children()
            with w.lock:
                if ready(w):
                    return True
            time.sleep(poll_s)
        return False

    def _await_joint_state_after(self, t: float, deadline: float) -> None:
        """Wait for a /joint_states message received after ``t`` (the reset's answer), so
        the node, activated next, anchors its hold at the new pose, not the last episode's."""
        if not self._await(lambda w: w.joint_state_at > t, deadline, 0.005):
            raise EpisodeFailure("aloha_sim published no /joint_states after the reset")

    def _await_warm_inference(self, deadline: float) -> None:
        if self._await(lambda w: len(w.gates) >= self.warm_chunks, deadline, 0.02):
            return
        w = self.watch
        with w.lock:
            got = len(w.gates)
        raise EpisodeFailure(
            f"the policy node published {got} of {self.warm_chunks} router outputs before the "
            "episode budget ran out (inference not running)")

    def _engage_autonomy(self, deadline: float) -> None:
        last = "no answer"
        while time.monotonic() < deadline:
            self._check_children()
            out = self._call(self._engage, self._srv["SetBool"].Request(data=True))
            if out.success:
                return
            last = out.message
            time.sleep(0.1)
        raise EpisodeFailure(f"autonomy not engaged before the episode budget ran out: {last}")

    def _episode(self, res: EpisodeResult, t0: float) -> None:
        st, w = self.settings, self.watch
        deadline = t0 + st.episode_timeout_s
        self._check_children()
        self._set_active(False)
        self._reset_sim(res.seed)
        w.clear_episode()
        self._await_joint_state_after(time.monotonic(), deadline)
        self._set_active(True)
        self._await_warm_inference(deadline)
        self._engage_autonomy(deadline)
        t_engage = self._t_engage = time.monotonic()
        res.engaged_step = 0
        budget_s = st.max_steps * self.period_s
        end_cause = ""
        stalled = False
        while True:
            now = time.monotonic()
            res.steps = min(st.max_steps, int((now - t_engage) * self.control_rate_hz))
            with w.lock:
                hit = next((t for t, s in w.success if s and t >= t_engage), None)
                mode, mode_at = w.mode, w.mode_at
            if hit is not None:
                res.success = True
                res.success_step = int((hit - t_engage) * self.control_rate_hz)
                res.steps = res.success_step + 1
                if st.stop_on_success:
                    break
            if now - t_engage >= budget_s:
                res.steps = st.max_steps
                break
            if now > deadline:
                end_cause = (f"episode ran past its {st.episode_timeout_s:g} s wall-clock "
                             f"budget at step {res.steps}")
                break
            self._check_children()
            if now - w.joint_state_at > self.stall_timeout_s:
                end_cause = (f"aloha_sim stopped publishing joint_states "
                             f"({now - w.joint_state_at:.1f} s silent) at step {res.steps}")
                stalled = True
                break
            if mode and mode != "AUTONOMY" and mode_at > t_engage:
                end_cause = f"policy node left AUTONOMY for {mode} at step {res.steps}"
                # Stale inputs make the node hold within a control period, long before the
                # stall timeout: say so when the sim is what went silent.
                t_left = time.monotonic()
                while time.monotonic() - t_left < 1.0 and w.joint_state_at < t_left:
                    time.sleep(0.02)
                if w.joint_state_at < t_left:
                    end_cause += (f": aloha_sim stopped publishing joint_states "
                                  f"({time.monotonic() - w.joint_state_at:.1f} s silent)")
                    stalled = True
                break
            time.sleep(0.02)
        t_end = time.monotonic()
        self.windows.append((t_engage, t_end))
        self._disengage()
        self._collect_router(res, t_engage, t_end)
        self._collect_node_stats(res, t_end)
        if end_cause and not res.success:
            raise EpisodeFailure(end_cause, restart=stalled)

    def _collect_router(self, res: EpisodeResult, t_engage: float, t_end: float) -> None:
        w = self.watch
        with w.lock:
            gates = [(t, g) for t, g in w.gates if t_engage <= t <= t_end]
            active = [(t, a) for t, a in w.active if t_engage <= t <= t_end]
            labels = list(w.labels)
        # gates and active are published together per chunk; pair them in order.
        n = min(len(gates), len(active))
        res.chunks = len(active)
        res.trace_steps = [int((t - t_engage) * self.control_rate_hz) for t, _ in active[:n]]
        res.trace_dominant = [int(np.argmax(g)) for _, g in gates[:n]]
        res.trace_active = [a for _, a in active[:n]]
        ks = [len(a) for _, a in active]
        res.mean_active_experts = float(np.mean(ks)) if ks else float("nan")
        res.switches = sum(1 for (_, a), (_, b) in itertools.pairwise(active)
                           if sorted(a) != sorted(b))
        usage = np.zeros(max(len(labels), 1 + max((max(a) for _, a in active if a),
                                                  default=-1)), np.int64)
        for _, a in active:
            usage[a] += 1
        res.expert_usage = [int(u) for u in usage]

    def _collect_node_stats(self, res: EpisodeResult, t_end: float) -> None:
        """The first diagnostics of the node published after the episode ended (1 Hz)."""
        w = self.watch
        deadline = time.monotonic() + 2.5
        got: dict[str, dict[str, str]] | None = None
        while time.monotonic() < deadline:
            with w.lock:
                got = next((d for t, d in w.diagnostics if t > t_end), None)
            if got is not None:
                break
            time.sleep(0.05)
        if got is None:
            return
        for section, keys in NODE_STATS.items():
            values = got.get(section, {})
            for key, name in keys.items():
                try:
                    v = float(values[key])
                except (KeyError, ValueError):
                    continue
                if np.isfinite(v):
                    res.node_stats[name] = v

    def status_lines(self) -> list[str]:
        """Caption of the present moment (the demo video): episode, mode, active experts
        (the dominant one first, starred), success of this episode so far."""
        w = self.watch
        with w.lock:
            mode = w.mode or "?"
            active = list(w.active[-1][1]) if w.active else []
            gates = list(w.gates[-1][1]) if w.gates else []
            labels = list(w.labels)
            t_eng = self._t_engage
            success = t_eng is not None and any(s and t >= t_eng for t, s in w.success)
        dom = int(np.argmax(gates)) if gates else -1

        def name(i: int) -> str:
            return (labels[i] if i < len(labels) else f"expert {i}") + ("*" if i == dom else "")

        when = "resetting" if t_eng is None else f"t={time.monotonic() - t_eng:4.1f} s"
        if self._ended:
            when = f"ended: {self._ended}"
        experts = ", ".join(name(i) for i in sorted(active, key=lambda i: (i != dom, i)))
        return [
            f"episode {self.episode_count}  seed {self._seed}  {when}  mode {mode}",
            f"active experts ({len(active)}): {experts or '-'}",
            f"task success: {'YES' if success else 'not yet'}",
        ]

    @property
    def labels(self) -> list[str]:
        """The bundle's expert labels, as the node publishes them with the gates."""
        with self.watch.lock:
            return list(self.watch.labels)

    @property
    def family(self) -> str | None:
        return self._router_diag.get(Key.FAMILY)

    @property
    def strategy(self) -> str | None:
        return self._router_diag.get(Key.STRATEGY)

    def close(self) -> None:
        try:
            if self.children and all(c.proc.poll() is None for c in self.children):
                self._set_active(False)
        except Exception:
            pass
        stop_graph(self.children)
        if self._session is not None:
            self._session.close()
            self._session = None
        self._tmp.cleanup()

    def __enter__(self) -> RosEpisodeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ros_missing() -> str:
    """"" when rclpy imports here, else why not (for a clear CLI error)."""
    try:
        import moe_policy_ros.session  # noqa: F401  (rclpy)
    except ImportError as err:
        return f"the ROS 2 mode needs rclpy ({err}); pass --in-process to run without ROS"
    return ""
