"""The policy node's runtime without ROS: inputs -> inference -> chunk -> safety -> commands.

:class:`PolicyPipeline` owns every component one configuration of the policy node runs
(the input buffer, the camera pipelines and their statistics, the MoE policy, the chunk
timeline, the safety filter, the command arbiter, the two periodic loops and the running
statistics) and the three things the node does with them, each a method that takes the times
it needs and returns what to publish:

* :meth:`PolicyPipeline.infer_once` (the inference worker's iteration): assemble an
  :class:`~moe_policy_ros.core.types.Observation` from the newest fresh inputs, run the policy,
  count it, score its novelty, place the chunk on the timeline, and return the router state to
  publish (:class:`RouterUpdate`) when the chunk was taken;
* :meth:`PolicyPipeline.control_step` (the control loop's tick): take the step's proposal
  from the timeline, arbitrate and filter it, and return the command actually sent with its
  per-arm form (:class:`ControlOutput`: forward commands in stream mode, one
  :class:`~moe_policy_ros.core.trajectory.Trajectory` per arm in chunk mode);
* :meth:`PolicyPipeline.diagnostic_tasks`: one :class:`~moe_policy_ros.core.diagnostics.TaskStatus`
  per concern.

The control side (timeline, arbiter, safety filter, teleop and mode latch) is
:class:`ControlPath`, which :class:`PolicyPipeline` extends with the inputs' cameras, the
policy and its statistics; the in-process closed loop (:mod:`moe_policy_ros.rollout`) drives
the same two classes on simulated time.

The node supplies two clocks: the pipeline's injected monotonic :class:`Clock` (loops, the
arbiter, teleop freshness, rates) and the ROS time of each call (``now_ros_ns``: header
stamps, staleness, the latency step), so a test drives it with a :class:`FakeClock` and
hand-written stamps. :func:`build_pipeline` is the configure step: verify and load the bundle,
check that it fits the parameters, build and warm the backend; the caller injects how paths
are resolved and backends are built, so this module imports neither ROS nor ``models/``.

Threads: the inference worker calls :meth:`infer_once`, the control loop :meth:`control_step`,
the executor the input and service methods; the components share state only through the
thread-safe input buffer and timeline, and the mode is published under one lock
(:meth:`publish_mode`), so a service and the control loop never latch modes out of order.
Each chunk placed on the timeline is also shown to tick alignment
(:mod:`~moe_policy_ros.core.phase`, ``policy.align_ticks``), which may ask the control loop to
move its tick grid to just after the chunks arrive
(:meth:`~moe_policy_ros.core.loop.PeriodicLoop.shift_phase`, under the loop's own lock).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from moe_policy_ros.core.backends import Backend
from moe_policy_ros.core.bundle import LoadedBundle, load_bundle
from moe_policy_ros.core.camerastats import CameraStats
from moe_policy_ros.core.clock import Clock
from moe_policy_ros.core.compat import bundle_mismatches
from moe_policy_ros.core.config import ConfigError, RuntimeConfig
from moe_policy_ros.core.diagnostics import (
    ControlStats,
    InferenceStats,
    TaskStatus,
    control_task,
    gate_label,
    inference_task,
    inputs_task,
    router_task,
    safety_task,
)
from moe_policy_ros.core.handover import CommandArbiter, Mode, TickInputs, TickOutput
from moe_policy_ros.core.imageconv import ImageError
from moe_policy_ros.core.inputs import JOINTS, InputBuffer, joint_command
from moe_policy_ros.core.loop import PeriodicLoop
from moe_policy_ros.core.manifest import Manifest
from moe_policy_ros.core.phase import TickAligner
from moe_policy_ros.core.preprocess import (
    CameraPipeline,
    Frame,
    FrameWorker,
    Processed,
    resolve_preprocess,
)
from moe_policy_ros.core.rtc import RtcGuidance
from moe_policy_ros.core.runtime import MoEPolicy
from moe_policy_ros.core.safety import SafetyFilter, limit_chunk
from moe_policy_ros.core.scheduler import DelayEstimator
from moe_policy_ros.core.timeline import (
    ADDED,
    NONFINITE,
    ChunkTimeline,
    Offer,
    TimedChunk,
    chunk_trajectory,
)
from moe_policy_ros.core.trajectory import Trajectory, split_trajectory
from moe_policy_ros.core.trigger import InferenceTrigger
from moe_policy_ros.core.types import Observation, PolicyOutput

__all__ = [
    "Arm",
    "ControlOutput",
    "ControlPath",
    "InferRequest",
    "InferResult",
    "PolicyPipeline",
    "RouterUpdate",
    "build_pipeline",
    "configure_problems",
]

#: the stream revisions whose longest duration sets how near the next tick one may start
EARLY_SEND_WINDOW = 50


@dataclass(frozen=True)
class Arm:
    """One arm: its name, joint names, and its columns in a robot-order command."""

    name: str
    joint_names: tuple[str, ...]
    cols: slice


@dataclass(frozen=True)
class RouterUpdate:
    """The router state of a chunk that was taken (``~/router/*``; also ``~/shadow/router/*``
    when ``shadow``: the policy runs in the shadow of teleoperation)."""

    gates: list[float]
    active: list[int]
    dominant: str
    shadow: bool


@dataclass(frozen=True)
class InferRequest:
    """An inference about to run (:meth:`PolicyPipeline.begin_inference`): the observation,
    the measured joint positions of the joints the chunk does not command, the control step
    its chunk starts at, and the rtc guidance (``merge: rtc``; None otherwise)."""

    obs: Observation
    measured: np.ndarray
    start_step: int
    guidance: RtcGuidance | None


@dataclass(frozen=True)
class InferResult:
    """What one inference did: the timeline's answer, the router state to publish (when the
    chunk was taken) and the policy's output."""

    offered: Offer
    router: RouterUpdate | None
    output: PolicyOutput


@dataclass(frozen=True)
class ControlOutput:
    """One control tick: publish ``sent`` (when not None), per arm as ``commands`` (stream
    mode) or ``trajectories`` (chunk mode), and ``shadow`` (the policy's command under
    teleoperation), all stamped ``stamp_ns``."""

    tick: TickOutput
    stamp_ns: int
    sent: np.ndarray | None
    shadow: np.ndarray | None
    commands: list[tuple[Arm, np.ndarray]]
    trajectories: list[tuple[Arm, Trajectory]]


def arms_of(cfg: RuntimeConfig) -> list[Arm]:
    """The robot's arms in configuration order, with their columns in the robot order."""
    arms, first = [], 0
    for arm in cfg.robot.arms:
        cols = slice(first, first + len(arm.joints))
        arms.append(Arm(arm.name, tuple(arm.joint_names), cols))
        first = cols.stop
    return arms


def configure_problems(cfg: RuntimeConfig, manifest: Manifest, bundle: str) -> list[str]:
    """Every reason the node cannot run ``manifest`` with ``cfg`` (empty: it can)."""
    problems = bundle_mismatches(manifest, cfg.robot.joint_names, cfg.cameras, bundle)
    ex = cfg.policy.execution
    if ex.merge == "rtc":
        if not manifest.is_flow:
            problems.append(
                f"policy.execution.merge: 'rtc' guides a flow sampler; {bundle} is family "
                f"{manifest.family!r}, which has none (use ensemble, blend or replace)")
        elif ex.rtc_execution_horizon >= manifest.action.chunk_length:
            problems.append(
                f"policy.execution.rtc_execution_horizon {ex.rtc_execution_horizon} must be "
                f"smaller than the chunk length {manifest.action.chunk_length} of {bundle}")
        if not ex.latency_compensation:
            problems.append(
                "policy.execution.merge: 'rtc' needs execution.latency_compensation: true "
                "(the frozen prefix is the chunk's steps that pass while it is computed)")
    if cfg.policy.inference_trigger == "frame" and not manifest.observation.cameras:
        problems.append(
            f"policy.inference_trigger: 'frame' needs a camera; {bundle} observes none "
            "(use timer)")
    return problems


def build_pipeline(
    cfg: RuntimeConfig,
    *,
    resolve_path: Callable[[str], Path],
    make_backend: Callable[..., Backend],
    clock: Clock,
    warn: Callable[[str], None] = lambda _text: None,
    ros_now: Callable[[], int] | None = None,
    on_reject: Callable[[str], None] | None = None,
) -> PolicyPipeline:
    """Configure: load and verify the bundle, check it fits ``cfg``, build and warm the backend.

    Raises :class:`ConfigError` listing every mismatch, or what loading the bundle or the
    backend raises (``BundleError``, ``OSError``, ``RuntimeError``), before any thread starts.
    """
    bundle_path = resolve_path(cfg.policy.bundle)
    bundle = load_bundle(bundle_path, expected_sha256=cfg.policy.sha256)
    problems = configure_problems(cfg, bundle.manifest, f"bundle {bundle_path}")
    if problems:
        raise ConfigError("; ".join(problems))
    p = cfg.policy
    ckpt = resolve_path(p.checkpoint) if p.checkpoint else None
    backend = make_backend(
        p.backend, device=p.device, intra_op_threads=p.intra_op_threads, checkpoint=ckpt
    )
    policy = MoEPolicy(bundle, backend, routing=p.routing)
    t0 = clock.now_ns()
    policy.warmup(p.warmup_runs)
    warmup_ms = (clock.now_ns() - t0) / 1e6
    return PolicyPipeline(cfg, bundle, policy, clock, warn=warn, warmup_ms=warmup_ms,
                          ros_now=ros_now, on_reject=on_reject)


class ControlPath:
    """The control side of the runtime: chunk timeline -> command arbiter (modes, engage
    blend, safety filter) -> what to publish, for the policy node (through
    :class:`PolicyPipeline`) and the in-process closed loop (:mod:`moe_policy_ros.rollout`),
    which replays recorded chunks through it.

    ``inputs`` is where the measured joint state (and the staleness of every source) comes
    from; ``action_joints`` the joints the chunks command, in their order (:meth:`offer`
    puts them in the robot's order).
    """

    def __init__(
        self,
        cfg: RuntimeConfig,
        action_joints: Sequence[str],
        inputs: InputBuffer,
        clock: Clock,
    ) -> None:
        p = cfg.policy
        self.cfg, self.clock, self.inputs = cfg, clock, inputs
        self.joint_names = cfg.robot.joint_names
        self.arms = arms_of(cfg)
        self.period_s = p.control_period_s
        self.timeline = ChunkTimeline(self.joint_names, action_joints, p.execution, self.period_s)
        self.control_loop = PeriodicLoop(p.control_rate_hz, clock, late="skip")
        #: moves the control ticks to just after the chunks arrive (``policy.align_ticks``)
        self.aligner = TickAligner(
            self.control_loop.period_ns, margin_ns=round(p.align_ticks_margin_ms * 1e6)
        ) if p.align_ticks else None
        self._arrival: tuple[int, int] | None = None  # newest chunk: (obs stamp, monotonic)
        self.safety = SafetyFilter(cfg.robot, cfg.safety, self.period_s)
        self.arbiter = CommandArbiter(cfg.handover, self.safety, clock)
        self._teleop: tuple[np.ndarray, int] | None = None
        self._deadman: tuple[bool, int] | None = None
        self._mode_lock = threading.Lock()
        self._mode_published = -1
        # control_step and send_on_arrival (the worker thread) decide one at a time
        self._tick_lock = threading.Lock()
        self._last_tick: tuple[int, TickOutput, int] | None = None  # step, output, monotonic
        # how long the last stream revisions held the tick lock (ns): none starts closer than
        # the longest of them to the next tick, so none delays it
        self._send_ns: deque[int] = deque(maxlen=EARLY_SEND_WINDOW)
        self.reset_stats()
        self._last_mode: Mode | None = None  # the arbiter's mode at the last tick

    def reset_stats(self) -> None:
        self.control_stats = ControlStats(self.period_s)
        self.policy_warm = False
        self.ood_energy: float | None = None

    def start(self) -> None:
        """A new activation (or episode): fresh statistics, no queued chunk, and the safety
        filter anchored at the next measured position (not at the last command sent before:
        the robot may have moved, or been reset, while the node was inactive)."""
        self.reset_stats()
        self.timeline.clear()
        self.safety.reset()
        self._last_mode = None
        self._last_tick = None
        self._arrival = None
        if self.aligner is not None:
            self.aligner.reset()

    def overrunning(self) -> bool:
        """Whether inference is overrunning its period (:class:`PolicyPipeline`: the worker)."""
        return False

    # ------------------------------------------------------------------ inputs

    def put_teleop(self, names: Sequence[str], positions: Sequence[float]) -> None:
        """A teleop command (raises :class:`InputError` naming what is wrong). Freshness is
        judged on arrival (monotonic), so a device with a bad clock cannot keep it alive."""
        q = joint_command(self.joint_names, names, positions)
        self._teleop = (q, self.clock.now_ns())

    def put_deadman(self, pressed: bool) -> None:
        self._deadman = (bool(pressed), self.clock.now_ns())

    def offer(
        self,
        actions: np.ndarray,
        measured: np.ndarray,
        stamp_ns: int,
        start_step: int | None = None,
        guided: bool = False,
    ) -> Offer:
        """Place a ``[H, A]`` chunk (action joint order) for the observation stamped
        ``stamp_ns`` on the timeline (``start_step``, ``guided``: :meth:`ChunkTimeline.offer`);
        the joints it does not command hold ``measured``. The first chunk taken warms the
        policy (autonomy can engage)."""
        timeline = self.timeline
        offered = timeline.offer(timeline.expand(actions, measured), stamp_ns, start_step,
                                 guided)
        if offered == ADDED:
            self.policy_warm = True
            self._chunk_arrived(stamp_ns)
        return offered

    def _chunk_arrived(self, stamp_ns: int) -> None:
        """Note when the chunk of the observation stamped ``stamp_ns`` arrived (for the wait
        to the tick that takes it) and let tick alignment move the grid."""
        now = self.clock.now_ns()
        self._arrival = (stamp_ns, now)
        if self.aligner is not None:
            loop = self.control_loop
            shift = self.aligner.arrived(now, loop.grid_origin_ns, loop.slewing)
            if shift is not None:
                loop.shift_phase(shift)

    # ------------------------------------------------------------------ control

    def control_step(
        self, step: int, now_ns: int, now_ros_ns: int,
        publish: Callable[[ControlOutput], None] | None = None,
    ) -> ControlOutput:
        """One control period at monotonic ``now_ns`` and ROS time ``now_ros_ns``:
        timeline -> arbiter (modes, blend, safety filter) -> what to publish.

        ``publish(out)`` runs under the tick lock that :meth:`send_on_arrival` holds too, so
        what a tick and an early send decide reaches the controllers in the order decided."""
        with self._tick_lock:
            out = self._control_step(step, now_ns, now_ros_ns)
            self._last_tick = (step, out.tick, now_ns)
            if publish is not None:
                publish(out)
        return out

    def send_on_arrival(
        self, now_ros_ns: int, publish: Callable[[ControlOutput], None]
    ) -> bool:
        """``execution.send_on_arrival`` (chunk mode) and ``revise_on_arrival`` (stream
        mode): ``publish`` what the chunk just placed changes now (the inference worker,
        between ticks) instead of at the next tick; True when it did.

        Only when the last tick was policy-driven under AUTONOMY with its engage blend done,
        and on that tick's decision:

        * chunk mode: the trajectories that tick would have sent had the chunk been there
          (its filtered command first, then the chunk through the same limits), when the
          chunk's first step is due by the next tick;
        * stream mode: the setpoint for now, on the way from the last tick's command to the
          next tick's with the chunk merged in (:meth:`SafetyFilter.revise`: a fraction of
          the period has passed, so that fraction of the step), when the chunk covers the
          next tick's step; the next tick sends its command as always, kept to that way. A
          revision the filter refuses (it would hold) sends nothing.

        The next tick finds no pending chunk and decides as always (a HOLD replaces what was
        sent). ``publish`` runs under the tick lock, so what a later tick decides is also
        published after it. In stream mode a revision that could still hold the lock when
        the next tick is due (the next tick is nearer than the longest of the last
        :data:`EARLY_SEND_WINDOW` revisions took) is left to that tick, so it never delays a
        tick; in chunk mode a chunk left to the tick would cost the tick the same work (it
        sends the trajectories then), so a chunk goes at once until the tick is due.
        Operator overrides (deadman, teleop) are judged at the ticks.
        """
        ex = self.cfg.policy.execution
        if not (ex.send_on_arrival if ex.mode == "chunk" else ex.revise_on_arrival):
            return False
        with self._tick_lock:
            last = self._last_tick
            if last is None or self.arbiter.mode != Mode.AUTONOMY:
                return False
            step, tick, tick_ns = last
            if (not tick.policy_sent or tick.sent is None
                    or (tick.blend_alpha is not None and tick.blend_alpha < 1.0)):
                return False
            start, period_ns = self.clock.now_ns(), self.control_loop.period_ns
            margin = max(self._send_ns, default=0) if ex.mode == "stream" else 0
            if start + margin >= tick_ns + period_ns:
                return False  # the next tick is (nearly) due: it takes the chunk
            if ex.mode == "chunk":
                pending = self.timeline.take_pending(step + 1)
                if pending is None:
                    return False
                out = ControlOutput(replace(tick, events=()), now_ros_ns, None, None, [],
                                    self._trajectories(step, tick, pending, now_ros_ns))
            else:
                revised = self._revise(step, tick, (start - tick_ns) / period_ns, now_ros_ns)
                if revised is None:
                    return False
                out, pending = revised
                self._last_tick = (step, out.tick, tick_ns)
            publish(out)
            sent_ns = self.clock.now_ns()
            if ex.mode == "stream":
                self._send_ns.append(sent_ns - start)
            self._count_first_command(pending, sent_ns, now_ros_ns)
            self.control_stats.sent_on_arrival += 1
        return True

    def _revise(
        self, step: int, tick: TickOutput, fraction: float, now_ros_ns: int
    ) -> tuple[ControlOutput, TimedChunk] | None:
        """Stream mode's early send: the setpoint for now, ``fraction`` of a period after the
        last tick (``step``), on the way to step ``step + 1``'s command with the new chunk."""
        revised = self.timeline.revise(step + 1)
        if revised is None:
            return None
        proposal, pending = revised
        measured, stale = self._sensed(now_ros_ns)
        result = self.safety.revise(proposal, measured, fraction, stale=stale,
                                    overrun=self.overrunning(), ood_energy=self.ood_energy)
        if result is None:
            return None
        sent = result.sent
        assert sent is not None  # a revision is never a hold
        out = replace(tick, sent=sent, candidate=proposal, policy_command=proposal,
                      filter=result, events=())
        return ControlOutput(out, now_ros_ns, sent, None, self._commands(sent), []), pending

    def _commands(self, sent: np.ndarray) -> list[tuple[Arm, np.ndarray]]:
        """Stream mode: a robot-order command as one forward command per arm."""
        return [(arm, sent[arm.cols]) for arm in self.arms]

    def _sensed(self, now_ros_ns: int) -> tuple[np.ndarray | None, tuple[str, ...]]:
        """The measured joint positions (None when missing or stale) and the other stale
        inputs, as the safety filter takes them."""
        joints = self.inputs.joints()
        stale = self.inputs.stale_sources(now_ros_ns)
        measured = None if joints is None or JOINTS in stale else joints.positions
        return measured, tuple(f"{k}: {v}" for k, v in stale.items() if k != JOINTS)

    def _count_first_command(self, pending: TimedChunk, now_ns: int, now_ros_ns: int) -> None:
        """The first command computed from ``pending`` left now: observation-to-command (ROS
        clock) and the wait since the chunk arrived (monotonic)."""
        self.control_stats.first_commands += 1
        self.control_stats.obs_to_cmd.add((now_ros_ns - pending.stamp_ns) / 1e6)
        arrival = self._arrival
        if arrival is not None and arrival[0] == pending.stamp_ns:
            self.control_stats.tick_wait.add((now_ns - arrival[1]) / 1e6)

    def _control_step(self, step: int, now_ns: int, now_ros_ns: int) -> ControlOutput:
        self.control_stats.tick(now_ns)
        timeline = self.timeline
        timeline.mark(step, now_ros_ns)
        measured, stale = self._sensed(now_ros_ns)
        mode, last = self.arbiter.mode, self._last_mode
        if (mode == Mode.AUTONOMY and last is not None and last != Mode.AUTONOMY
                and self.cfg.policy.execution.restart_on_engage):
            timeline.engage(step, held=last == Mode.HOLD)
        # After a non-finite chunk the proposal is all-NaN: ERROR + HOLD in the filter.
        proposal, pending = timeline.take(step)
        teleop, deadman = self._teleop, self._deadman
        out = self.arbiter.tick(
            TickInputs(
                measured=measured,
                policy_command=proposal,
                teleop_command=None if teleop is None else teleop[0],
                teleop_stamp_ns=None if teleop is None else teleop[1],
                deadman=None if deadman is None else deadman[0],
                deadman_stamp_ns=None if deadman is None else deadman[1],
                stale_inputs=stale,
                policy_warm=self.policy_warm,
                overrun=self.overrunning(),
                ood_energy=self.ood_energy,
            )
        )
        self._last_mode = out.mode
        shadow = out.policy_command if out.mode == Mode.TELEOP else None
        commands: list[tuple[Arm, np.ndarray]] = []
        trajectories: list[tuple[Arm, Trajectory]] = []
        if out.sent is not None:
            if self.cfg.policy.execution.mode == "stream":
                commands = self._commands(out.sent)
            else:
                trajectories = self._trajectories(step, out, pending, now_ros_ns)
            if out.policy_sent and pending is not None:
                self._count_first_command(pending, now_ns, now_ros_ns)
        return ControlOutput(out, now_ros_ns, out.sent, shadow, commands, trajectories)

    def _trajectories(
        self, step: int, out: TickOutput, pending: TimedChunk | None, now_ros_ns: int
    ) -> list[tuple[Arm, Trajectory]]:
        """One trajectory per arm (joint_trajectory_controller semantics).

        Under AUTONOMY with the blend finished, a new chunk is sent whole: the filtered
        command of this tick first, then the chunk's remaining steps run through the same
        limits (position, velocity, acceleration, deviation from measured) by
        :func:`limit_chunk`, stamped with the observation time so the controller drops the
        points already in the past. Otherwise (teleop, hold, blending) each tick sends a
        one-point trajectory to the filtered command. A policy-driven tick without a new
        chunk sends nothing: the controller is still executing the last one.
        """
        sent = out.sent
        assert sent is not None
        period, safety = self.period_s, self.safety
        if out.policy_sent and (out.blend_alpha is None or out.blend_alpha >= 1.0):
            if pending is None:
                return []
            joints = self.inputs.joints()
            measured = None if joints is None else joints.positions
            rows, times = chunk_trajectory(
                pending, step, sent, period,
                lambda rest: limit_chunk(safety, rest, sent, measured),
            )
            stamp = pending.stamp_ns
        else:
            rows, times, stamp = sent[None, :], [period], now_ros_ns
        groups = [(arm.joint_names, arm.cols) for arm in self.arms]
        return list(zip(self.arms, split_trajectory(rows, times, stamp, groups), strict=True))

    def publish_mode(self, publish: Callable[[str], None]) -> None:
        """Call ``publish(mode)`` when the mode changed since the last call (under one lock,
        so concurrent callers latch the modes in order)."""
        with self._mode_lock:
            changes = self.arbiter.mode_changes
            if changes == self._mode_published:
                return
            self._mode_published = changes
            publish(self.arbiter.mode.value)


class PolicyPipeline(ControlPath):
    """One configuration of the policy node's runtime; see the module docstring.

    ``warn`` receives the camera pipelines' aspect-ratio warnings, ``on_reject`` (default
    ``warn``) the line for each camera frame refused; ``ros_now`` is the ROS time (default:
    ``clock``) at which a refusal reaches the input buffer.
    """

    def __init__(
        self,
        cfg: RuntimeConfig,
        bundle: LoadedBundle,
        policy: MoEPolicy,
        clock: Clock,
        *,
        warn: Callable[[str], None] = lambda _text: None,
        warmup_ms: float = 0.0,
        ros_now: Callable[[], int] | None = None,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        m = bundle.manifest
        self.bundle, self.policy = bundle, policy
        self._ros_now = ros_now or clock.now_ns
        self._on_reject = on_reject or warn
        self.warmup_ms = warmup_ms
        self.expert_labels = list(m.experts.labels)
        used = {s.name for s in m.observation.cameras}
        inputs = InputBuffer(
            cfg.robot.joint_names,
            cfg.robot.joint_states_max_age_s,
            {c.name: c.max_age_s for c in cfg.cameras if c.name in used},
        )
        super().__init__(cfg, m.action.joints, inputs, clock)
        self._proprio_idx = np.array(
            [self.joint_names.index(j) for j in m.observation.proprio.joints]
        )
        self.camera_pipelines: dict[str, CameraPipeline] = {}
        self.camera_stats: dict[str, CameraStats] = {}
        cams = {c.name: c for c in cfg.cameras}
        for spec in m.observation.cameras:
            cam = cams[spec.name]
            pipe = CameraPipeline(
                spec.name, (spec.height, spec.width),
                resolve_preprocess(spec.preprocess, cam.preprocess),
                encodings={"rgb8", "bgr8", cam.encoding}, warn=warn,
            )
            self.camera_pipelines[spec.name] = pipe
            self.camera_stats[spec.name] = CameraStats(
                spec.name, cam.topic, pipe.size, pipe.describe(), cam.expected_rate_hz
            )
        p = cfg.policy
        self.worker_loop = PeriodicLoop(p.inference_rate_hz, clock, late="reanchor")
        #: when the worker starts an inference (frame mode: on new frames; see core/trigger.py)
        self.trigger = InferenceTrigger(p.inference_trigger, p.inference_rate_hz, clock)
        #: rtc: the frozen prefix d, the largest recent inference delay in control steps
        self.delays = DelayEstimator(p.execution.rtc_delay_window)
        self._action_idx = self.timeline.action_idx
        #: decodes and resizes camera frames into the input buffer (its thread: start/stop)
        self.frames = FrameWorker(self.camera_pipelines, inputs.put_image, self._frame_done)

    # ------------------------------------------------------------------ state

    @property
    def gate_label(self) -> str:
        """The gates' layout label: ``experts:<label>,<label>,...``."""
        return gate_label(self.expert_labels)

    def describe(self) -> str:
        """The one line the node logs after configure."""
        m, p = self.bundle.manifest, self.cfg.policy
        return (
            f"configured: bundle {m.name} ({m.family}, {m.experts.count} experts, "
            f"H={m.action.chunk_length}) backend={self.policy.backend.name} warm-up "
            f"{p.warmup_runs} runs in {self.warmup_ms:.0f} ms; control "
            f"{p.control_rate_hz:g} Hz, inference {p.inference_rate_hz:g} Hz "
            f"({p.inference_trigger} trigger), mode {p.execution.mode}, merge "
            f"{p.execution.merge}"
        )

    def reset_stats(self) -> None:
        super().reset_stats()
        self.infer_stats = InferenceStats(self.bundle.manifest.experts.count)

    def start(self) -> None:
        """A new activation: fresh statistics, no queued chunk, the policy's state reset."""
        super().start()
        self.policy.reset()
        self.trigger.reset()
        self.delays.reset()

    def overrunning(self) -> bool:
        if self.cfg.policy.inference_trigger == "frame":
            return self.trigger.overrunning
        return self.worker_loop.overrunning

    @property
    def overruns(self) -> int:
        """Inferences that ran longer than ``1 / inference_rate_hz`` (this activation)."""
        if self.cfg.policy.inference_trigger == "frame":
            return self.trigger.overruns
        return self.worker_loop.overruns

    def run_worker(self, body: Callable[[int, int], None], stop: threading.Event) -> None:
        """The inference worker thread: ``body(iteration, now_ns)`` on the configured trigger
        (``timer``: :attr:`worker_loop`; ``frame``: :attr:`trigger`) until ``stop``."""
        if self.cfg.policy.inference_trigger == "frame":
            self.trigger.run(body, stop)
        else:
            self.worker_loop.run(body, stop)

    def _now_s(self) -> float:
        return self.clock.now_ns() / 1e9

    # ------------------------------------------------------------------ inputs

    def image_arrived(self, camera: str, stamp_ns: int, now_ros_ns: int) -> bool:
        """Count a camera message before decoding; False for a camera the bundle ignores."""
        stats = self.camera_stats.get(camera)
        if stats is None:
            return False
        stats.arrival(stamp_ns, now_ros_ns)
        return True

    def put_frame(self, camera: str, frame: Frame, stamp_ns: int, now_ros_ns: int) -> None:
        """A camera message's frame: counted, then queued for :attr:`frames` (undecoded)."""
        if self.image_arrived(camera, stamp_ns, now_ros_ns):
            self.frames.submit(camera, frame, stamp_ns, now_ros_ns)

    def _frame_done(self, camera: str, info: Processed | None, err: ImageError | None) -> None:
        line = self.frame_done(camera, info, err, self._ros_now())
        if line is not None:
            self._on_reject(line)

    def frame_done(
        self, camera: str, info: Processed | None, err: ImageError | None, now_ros_ns: int
    ) -> str | None:
        """The frame worker's outcome for one frame; the warning to log for a rejection."""
        stats = self.camera_stats.get(camera)
        if stats is None:
            return None
        if err is None:
            assert info is not None
            stats.accepted_frame(info.source_size, info.encoding)
            self.trigger.frame()
            return None
        stats.rejected_frame(err.cause, str(err))
        if err.cause != "stamp":  # put_image counted a bad stamp itself
            self.inputs.reject(camera, str(err), now_ros_ns)
        return f"rejected image from {stats.topic}: {err}"

    # ------------------------------------------------------------------ inference

    def infer_once(self, now_ros_ns: int) -> InferResult | None:
        """One inference from the newest inputs; None when an input is stale or missing.

        :meth:`begin_inference`, the policy, :meth:`finish_inference`: the in-process rollout
        calls the three apart to put simulated inference time between them.
        """
        req = self.begin_inference(now_ros_ns)
        if req is None:
            return None
        return self.finish_inference(req, self.run_policy(req))

    def run_policy(self, req: InferRequest) -> PolicyOutput:
        """The policy on ``req``'s observation (with its rtc guidance, when it has one)."""
        if req.guidance is None:
            return self.policy.infer(req.obs)
        return self.policy.infer(req.obs, guidance=req.guidance)

    def begin_inference(self, now_ros_ns: int) -> InferRequest | None:
        """The observation of the newest inputs, the step its chunk starts at and, for
        ``merge: rtc``, the guidance toward the commands that will run while it is computed
        (the frozen prefix: the delay estimate); None when an input is stale or missing.

        The observation's stamp is the instant it shows: its oldest camera frame's
        ``header.stamp`` (the joint state is the one nearest that frame, or newer), or the
        joint state's without cameras. The chunk's place on the timeline and the
        observation-to-command latency count from it; the joint sample nearest a frame may
        be up to half a joint-state period older than the frame and must not make the
        observation look older than it is.
        """
        inputs = self.inputs
        if inputs.stale_sources(now_ros_ns):
            return None
        latest = inputs.joints()
        images = inputs.images()
        assert latest is not None
        joints = latest
        if images and self.cfg.policy.proprio_sync == "image":
            # the joint state of the instant the (oldest) frame was taken, not the newest
            joints = inputs.joints_at(min(s.stamp_ns for s in images.values())) or latest
        obs = Observation(
            images={k: v.image for k, v in images.items()},
            proprio=joints.positions[self._proprio_idx].astype(np.float32),
            stamp_ns=min(s.stamp_ns for s in images.values()) if images else joints.stamp_ns,
        )
        self.infer_stats.obs_age.add((now_ros_ns - obs.stamp_ns) / 1e6)
        start = self.timeline.start_step(obs.stamp_ns)
        guidance = None
        ex = self.cfg.policy.execution
        if ex.merge == "rtc":
            horizon = self.bundle.manifest.action.chunk_length
            committed = self.timeline.committed(start, horizon)[:, self._action_idx]
            guidance = RtcGuidance(committed, self.delays.estimate(),
                                   ex.rtc_execution_horizon, ex.rtc_max_guidance_weight,
                                   residual_blend=ex.rtc_residual_blend)
        return InferRequest(obs, latest.positions.copy(), start, guidance)

    def finish_inference(
        self, req: InferRequest, out: PolicyOutput, start_step: int | None = None
    ) -> InferResult:
        """Count the policy's output for ``req`` and place its chunk on the timeline (rtc:
        at the step the guidance was computed for, recording the delay it took).

        ``start_step`` places it elsewhere: a synchronous infer-then-act loop (the robot
        waited for inference, so the chunk runs from the step it resumes; the rollout's
        ``loop="sync"``)."""
        self.infer_stats.add(out, self._now_s())
        self.ood_energy = self.novelty(out)
        rtc = req.guidance is not None
        if start_step is None and rtc:
            start_step = req.start_step
        offered = self.offer(out.actions, req.measured, req.obs.stamp_ns,
                             start_step=start_step, guided=rtc)
        if offered == NONFINITE:
            # The arbiter sees the NaN command (ERROR + HOLD in the safety filter).
            self.infer_stats.nonfinite += 1
        if offered != ADDED:
            return InferResult(offered, None, out)
        if rtc:
            # the first step the control loop can execute it: the one after the last mark
            self.delays.record(max(0, self.timeline.current_step + 1 - req.start_step))
        return InferResult(offered, self.router_update(out, self.arbiter.mode == Mode.TELEOP),
                           out)

    def novelty(self, out: PolicyOutput) -> float | None:
        """Di-BM novelty: the lowest expert energy (no expert claims the observation)."""
        energies = out.decision.state.energies
        if energies is None or self.cfg.safety.ood_action == "ignore":
            return None
        return float(np.min(energies))

    def router_update(self, out: PolicyOutput, shadow: bool) -> RouterUpdate:
        dec = out.decision
        return RouterUpdate(
            gates=[float(g) for g in dec.state.gates],
            active=[int(i) for i in dec.active],
            dominant=self.expert_labels[dec.dominant],
            shadow=shadow,
        )

    # ------------------------------------------------------------------ diagnostics

    def diagnostic_tasks(
        self,
        now_ros_ns: int,
        active: bool,
        superseded: Mapping[str, int] | None = None,
        publishers: Callable[[str], int | None] = lambda _topic: None,
    ) -> list[TaskStatus]:
        """Inputs, inference, router, control loop and safety, in that order.

        ``superseded``: frames dropped per camera (default: :attr:`frames`'s count);
        ``publishers(topic)``: matched publishers on a camera topic (None when unknown).
        """
        dropped = self.frames.superseded if superseded is None else superseded
        inputs, m, p = self.inputs, self.bundle.manifest, self.cfg.policy
        cameras = [
            stats.report(now_ros_ns, dropped.get(cam, 0), publishers(stats.topic))
            for cam, stats in self.camera_stats.items()
        ]
        return [
            inputs_task(inputs.status.values(), inputs.stale(now_ros_ns),
                        inputs.recent_errors(now_ros_ns), cameras, now_ros_ns, active),
            inference_task(self.infer_stats, self.policy.backend.name, m.name,
                           self.overruns, p.inference_rate_hz, p.inference_trigger,
                           self.delays.estimate() if p.execution.merge == "rtc" else None),
            router_task(self.infer_stats, m.family, self.policy.strategy.name,
                        m.experts.labels, self._now_s()),
            control_task(self.control_stats, self.clock.now_ns(), p.control_rate_hz,
                         self.control_loop.skipped, p.execution.mode, active,
                         None if self.aligner is None
                         else self.control_loop.phase_shift_ns / 1e6),
            safety_task(self.safety.diagnostics(), self.arbiter.mode.value,
                        self.arbiter.mode_changes),
        ]
