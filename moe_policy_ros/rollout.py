"""In-process closed loop: the ALOHA sim and a bundle on the real runtime, no ROS.

An episode here is what the ``aloha_sim`` + ``moe_policy`` graph does over DDS, with the
transport taken out and time made exact:

The node's code runs it: each episode is a fresh :class:`core.pipeline.PolicyPipeline` (the
policy node's runtime) on a :class:`core.clock.FakeClock` that is both its monotonic and its
ROS clock, driven the way the node's threads drive it:

* **Observation.** The measured joint positions go into the pipeline's input buffer every
  control step. Every ``control_rate / inference_rate`` steps (50 / 10 Hz = 5 by default, the
  policy node's rates) each bundle camera is rendered at ``render_size`` (default 480x640, as
  the ``aloha_sim`` node and the recorder use) and goes, as the rgb8 image the sim node would
  publish, through the node's camera pipeline (:class:`core.preprocess.FrameWorker`, run in
  this thread: the bundle's preprocessing with the parameter file's overrides).
* **Inference**: :meth:`PolicyPipeline.infer_once` on :class:`core.runtime.MoEPolicy` with
  ONNX Runtime (CPU), the bundle's default routing unless overridden. Inference takes no
  simulated time: the chunk of the observation taken at step ``s`` starts at ``s + 1`` on the
  node's :class:`core.timeline.ChunkTimeline`; a non-finite chunk holds, as on the robot.
* **Control**: :meth:`PolicyPipeline.control_step` (arbiter, engage blend, safety filter, with
  the file's handover and safety settings, Di-BM novelty included); autonomy is engaged (as
  the evaluate command does through ``~/engage_autonomy``) at the first tick that has a policy
  command, so the blend and the filter shape the commands exactly as on the robot.
* **Physics**: the sent command is the sim's position target for one control period
  (``round(period / timestep)`` physics steps).

Success is gym-aloha's reward stage 4 at any step (:meth:`AlohaSim.success`); the episode ends
there or after ``max_steps``. An episode that raises, or runs past its wall-clock budget, is a
failure whose ``error`` names the cause; it never stops the run.

This module imports neither torch nor rclpy (the evaluate command runs on a robot computer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from moe_policy_ros.core.bundle import load_bundle
from moe_policy_ros.core.clock import FakeClock
from moe_policy_ros.core.compat import bundle_mismatches
from moe_policy_ros.core.config import RoutingConfig, RuntimeConfig
from moe_policy_ros.core.handover import Mode
from moe_policy_ros.core.imageconv import rgb_to_raw
from moe_policy_ros.core.inputs import InputBuffer
from moe_policy_ros.core.manifest import Manifest
from moe_policy_ros.core.paths import package_file, resolve_share_path
from moe_policy_ros.core.pipeline import ControlPath, InferRequest, PolicyPipeline
from moe_policy_ros.core.preprocess import RawFrame
from moe_policy_ros.core.runtime import MoEPolicy
from moe_policy_ros.core.timeline import ADDED
from moe_policy_ros.core.trigger import InferenceTrigger
from moe_policy_ros.core.types import PolicyOutput
from moe_policy_ros.evaluation.metrics import percentile, wilson_interval

__all__ = [
    "EpisodeResult",
    "InProcessRunner",
    "LoopSettings",
    "Summary",
    "summarize",
    "wilson_interval",
]

#: The parameter file of ``make demo``, relative to the package.
DEFAULT_PARAMS = Path("config") / "sim_dual_arm.yaml"
DEFAULT_RENDER_SIZE: tuple[int, int] = (480, 640)  # (H, W) px, the sim node's camera size
DEFAULT_EPISODE_STEPS = 400  # 8 s at 50 Hz, the demonstrations' length
DEFAULT_CAMERA_RATE_HZ = 15.0  # the aloha_sim node's camera_rate_hz (frame trigger)
_EPOCH_NS = 1_000_000_000  # simulated time of step 0


@dataclass(frozen=True)
class LoopSettings:
    """Closed-loop settings that are not in the parameter file."""

    max_steps: int = DEFAULT_EPISODE_STEPS
    render_size: tuple[int, int] = DEFAULT_RENDER_SIZE  # (H, W) px
    stop_on_success: bool = True
    episode_timeout_s: float = 600.0  # wall-clock budget of one episode
    #: simulated time one inference takes (s): its chunk arrives that much after the start
    inference_delay_s: float = 0.0
    #: "async": the node's pipeline (the robot never waits for inference); "sync": infer,
    #: then act (the robot holds while inference runs, then executes ``sync_horizon`` steps)
    loop: Literal["async", "sync"] = "async"
    sync_horizon: int = 0  # control steps per chunk in the sync loop; 0 = the chunk length
    #: frame trigger: the cameras' rate (Hz) when the parameter file has no expected_rate_hz
    camera_rate_hz: float = DEFAULT_CAMERA_RATE_HZ
    #: physics at each reset before the episode, arms held (objects at rest; AlohaSim.reset)
    settle_s: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.inference_delay_s) and self.inference_delay_s >= 0):
            raise ValueError(f"inference_delay_s must be >= 0 (got {self.inference_delay_s})")
        if self.loop not in ("async", "sync"):
            raise ValueError(f"loop must be 'async' or 'sync' (got {self.loop!r})")
        if self.sync_horizon < 0:
            raise ValueError(f"sync_horizon must be >= 0 (got {self.sync_horizon})")
        if not self.camera_rate_hz > 0:
            raise ValueError(f"camera_rate_hz must be > 0 (got {self.camera_rate_hz})")
        if not (math.isfinite(self.settle_s) and 0.0 <= self.settle_s <= 10.0):
            raise ValueError(f"settle_s must be within 0..10 s (got {self.settle_s})")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (got {self.max_steps})")
        if len(self.render_size) != 2 or min(self.render_size) < 1:
            raise ValueError(f"render_size must be (H, W) > 0 (got {self.render_size})")
        if not self.episode_timeout_s > 0:
            raise ValueError(f"episode_timeout_s must be > 0 (got {self.episode_timeout_s})")


@dataclass
class EpisodeResult:
    """One episode: success, what the router did, and the cause when it errored."""

    seed: int
    success: bool
    steps: int = 0
    max_reward: int = 0
    success_step: int | None = None
    engaged_step: int | None = None
    chunks: int = 0
    mean_active_experts: float = float("nan")
    switches: int = 0
    expert_usage: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    interventions: int = 0
    wall_s: float = 0.0
    error: str = ""
    # Per chunk: the control step of its observation, the dominant expert and the active set
    # (the router along the episode; figures.py draws it under the scripted phases).
    trace_steps: list[int] = field(default_factory=list)
    trace_dominant: list[int] = field(default_factory=list)
    trace_active: list[list[int]] = field(default_factory=list)
    # What the policy node reported on /diagnostics for this episode (ROS 2 mode): inference
    # latency p50/p99, control period jitter p99, missed ticks. Empty in-process.
    node_stats: dict[str, float] = field(default_factory=dict)
    # Timing of the commands after autonomy engaged (simulated time, in-process): the age of
    # each policy command (its tick minus the stamp of the newest chunk it came from), the
    # gaps (ms) in which the robot had no policy command between chunks, and their count
    # (deadlines missed: the next chunk came after the last one ran out, or the robot
    # waited for inference).
    command_ages_ms: list[float] = field(default_factory=list)
    idle_gaps_ms: list[float] = field(default_factory=list)
    # The policy's command (the timeline's proposal, before the safety filter) from one
    # policy-driven tick to the next, largest joint change in mrad: at the ticks where the
    # newest chunk in use changed (the seams between chunks) and at the others.
    seam_jumps_mrad: list[float] = field(default_factory=list)
    step_jumps_mrad: list[float] = field(default_factory=list)

    @property
    def missed_deadlines(self) -> int:
        return len(self.idle_gaps_ms)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latencies_ms")
        d.pop("command_ages_ms")
        for key in ("seam_jumps_mrad", "step_jumps_mrad"):
            values = d.pop(key)
            d[f"{key[:-5]}_mrad_p50"] = percentile(values, 50)
            d[f"{key[:-5]}_mrad_p99"] = percentile(values, 99)
        d["command_age_ms_p50"] = percentile(self.command_ages_ms, 50)
        d["command_age_ms_p99"] = percentile(self.command_ages_ms, 99)
        d["missed_deadlines"] = self.missed_deadlines
        d["latency_ms_p50"] = percentile(self.latencies_ms, 50)
        d["latency_ms_p99"] = percentile(self.latencies_ms, 99)
        if not self.latencies_ms and self.node_stats:
            d["latency_ms_p50"] = self.node_stats.get("latency_ms_p50")
            d["latency_ms_p99"] = self.node_stats.get("latency_ms_p99")
        if not math.isfinite(d["mean_active_experts"]):
            d["mean_active_experts"] = None
        return d


class _ClosedLoop:
    """The sim and the node's control path (:class:`core.pipeline.ControlPath`: timeline,
    arbiter, safety filter) on simulated time; subclasses build the path of an episode
    (:meth:`_control`) and supply its chunks (:meth:`_observe`, :meth:`_arrivals`,
    :meth:`_resume`)."""

    num_experts = 0
    _usage: np.ndarray

    def __init__(self, task: str, config: RuntimeConfig, settings: LoopSettings | None) -> None:
        from moe_policy_ros.sim.aloha import JOINT_NAMES, AlohaSim

        self.settings = settings or LoopSettings()
        self.config = config
        # the last policy command and its chunk (seam jumps; reset per episode)
        self._last_command: tuple[np.ndarray, tuple[int, int]] | None = None
        robot = tuple(config.robot.joint_names)
        sim_joints = tuple(JOINT_NAMES)
        unknown = sorted({*robot} - {*sim_joints})
        if unknown:
            raise ValueError(f"robot joints {unknown} are not joints of the ALOHA sim")
        self._robot_joints = robot
        self._to_robot = np.array([sim_joints.index(j) for j in robot])
        self.sim = AlohaSim(task, seed=None, settle_s=self.settings.settle_s)
        self.task = task
        p = config.policy
        self._period_s = p.control_period_s
        ratio = p.control_rate_hz / p.inference_rate_hz
        self._infer_every = max(1, round(ratio))
        self._substeps = max(1, round(self._period_s / self.sim.timestep))

    def _reset(self, seed: int) -> None:
        """Called after the sim reset, before the first step of an episode."""

    def _control(self, clock: FakeClock) -> ControlPath:
        """A fresh control path for one episode on ``clock``."""
        raise NotImplementedError

    def _arrivals(self, ctl: ControlPath, step: int, now_ns: int, res: EpisodeResult) -> None:
        """Chunks whose inference ended since the previous tick (before step ``step`` is
        marked, as a chunk the node's worker offers between two control ticks)."""

    def _observe(self, ctl: ControlPath, step: int, now_ns: int, q: np.ndarray,
                 res: EpisodeResult, ks: list[int]) -> int | None:
        """Step ``step`` is marked: start what observes now. Returns the control steps the
        robot waits for inference after this tick, then :meth:`_resume` (the synchronous
        loop; 0 for no wait), or None (the robot never waits)."""
        raise NotImplementedError

    def _resume(self, ctl: ControlPath, step: int, now_ns: int, res: EpisodeResult) -> None:
        """The synchronous loop's wait is over: offer its chunk from ``step`` on."""

    def close(self) -> None:
        pass

    def __enter__(self) -> _ClosedLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ episodes

    def run(self, seed: int) -> EpisodeResult:
        """Run one episode from ``seed``; errors become a failed result naming the cause."""
        res = EpisodeResult(seed=int(seed), success=False)
        t0 = time.monotonic()
        ks: list[int] = []  # active experts per chunk
        try:
            self._episode(res, t0, ks)
        except Exception as err:  # any failure is this episode's, never the run's
            res.success = False
            res.error = f"{type(err).__name__}: {err}"
        res.wall_s = time.monotonic() - t0
        res.mean_active_experts = float(np.mean(ks)) if ks else float("nan")
        return res

    def _chunk_at(self, stamp_ns: int, start_step: int) -> None:
        """A chunk placed on the timeline from ``start_step`` (for the commands' age)."""
        self._sources.append((start_step, stamp_ns))

    def _source(self, step: int) -> tuple[int, int] | None:
        """The newest chunk in use at ``step``: (start step, observation stamp)."""
        for start, stamp in reversed(self._sources):
            if start <= step:
                return start, stamp
        return None

    def _count_jump(
        self, res: EpisodeResult, command: np.ndarray | None, source: tuple[int, int] | None
    ) -> None:
        """The change of the policy's command since the last policy-driven tick, as a seam
        when the newest chunk in use (``source``) changed in between."""
        last, self._last_command = self._last_command, None
        if command is None or source is None:
            return
        if last is not None:
            jump = float(np.max(np.abs(command - last[0]))) * 1e3
            (res.seam_jumps_mrad if source != last[1] else res.step_jumps_mrad).append(jump)
        self._last_command = (command.copy(), source)

    def _count_command(self, res: EpisodeResult, command: np.ndarray | None, step: int,
                       now_ns: int, gap: int, period_ms: float) -> int:
        """After autonomy engaged: this tick's policy ``command`` (None: none sent), its age,
        its jump from the last one, and the idle gap (ticks without one) it ends; returns
        the gap so far."""
        source = None if command is None else self._source(step)
        self._count_jump(res, command, source)
        if source is None:
            return gap + 1
        res.command_ages_ms.append((now_ns - source[1]) / 1e6)
        if gap:
            res.idle_gaps_ms.append(gap * period_ms)
        return 0

    def _episode(self, res: EpisodeResult, t0: float, ks: list[int]) -> None:
        st, sim = self.settings, self.sim
        sim.reset(res.seed)
        self._usage = np.zeros(self.num_experts, np.int64)
        self._sources: list[tuple[int, int]] = []
        self._last_command = None
        self._reset(res.seed)
        # One clock for the monotonic and the ROS time of the node; not at 0, a stamp the
        # input buffer refuses.
        clock = FakeClock(_EPOCH_NS)
        ctl = self._control(clock)
        ctl.start()
        period_ns = round(self._period_s * 1e9)
        period_ms = period_ns / 1e6
        refusal = ""
        gap = 0  # ticks without a policy command since autonomy engaged
        step = 0

        def physics() -> bool:
            """One control period of physics; True when the episode is over."""
            sim.step(self._substeps)
            clock.advance_ns(period_ns)
            res.steps = step + 1
            reward = sim.reward()
            res.max_reward = max(res.max_reward, reward)
            if reward == 4:
                res.success = True
                if res.success_step is None:
                    res.success_step = step
                return st.stop_on_success
            return False

        while step < st.max_steps:
            if time.monotonic() - t0 > st.episode_timeout_s:
                raise TimeoutError(
                    f"episode ran past its {st.episode_timeout_s:g} s wall-clock budget at "
                    f"step {step}"
                )
            now_ns = clock.now_ns()
            q = sim.joint_positions()[self._to_robot]
            ctl.inputs.put_joint_state(self._robot_joints, q, (), now_ns, now_ns)
            self._arrivals(ctl, step, now_ns, res)
            # The control loop marks the step; an observation now starts its chunk at step + 1.
            ctl.timeline.mark(step, now_ns)
            wait = self._observe(ctl, step, now_ns, q, res, ks)  # None: no wait to resume
            out = ctl.control_step(step, now_ns, now_ns)
            tick, arb = out.tick, ctl.arbiter
            res.interventions += int(bool(tick.filter.interventions))
            if arb.mode == Mode.AUTONOMY and res.engaged_step is None:
                res.engaged_step = step
            if res.engaged_step is None and tick.policy_command is not None:
                # as the evaluate command does through ~/engage_autonomy
                ok, why = arb.engage_autonomy(True)
                refusal = "" if ok else why
            if res.engaged_step is not None:
                command = tick.policy_command if tick.policy_sent else None
                gap = self._count_command(res, command, step, now_ns, gap, period_ms)
            if out.sent is not None:
                target = sim.targets
                target[self._to_robot] = out.sent
                sim.set_targets(target)
            if physics():
                break
            step += 1
            if wait is not None:
                over = False
                for _ in range(wait):  # the robot holds its target while inference runs
                    if step >= st.max_steps or physics():
                        over = True
                        break
                    if res.engaged_step is not None:
                        gap += 1
                    step += 1
                if over:
                    break
                self._resume(ctl, step, clock.now_ns(), res)
        if gap and res.engaged_step is not None:
            res.idle_gaps_ms.append(gap * period_ms)
        res.expert_usage = [int(u) for u in self._usage]
        if res.engaged_step is None:
            res.error = f"autonomy never engaged: {refusal or 'no policy command'}"


class InProcessRunner(_ClosedLoop):
    """One bundle in one sim, episode after episode (:meth:`run` per seed), through the
    policy node's :class:`core.pipeline.PolicyPipeline`: the camera pipelines and input buffer,
    ``infer_once`` and ``control_step``."""

    def __init__(
        self,
        bundle_dir: str | Path,
        task: str,
        config: RuntimeConfig,
        *,
        routing: RoutingConfig | None = None,
        settings: LoopSettings | None = None,
        policy_seed: int = 0,
    ) -> None:
        from moe_policy_ros.core.backends.ort import OrtBackend

        self.bundle = load_bundle(bundle_dir, expected_sha256=config.policy.sha256)
        m = self.bundle.manifest
        self.manifest = m
        self.num_experts = m.experts.count
        robot = tuple(config.robot.joint_names)
        # Cameras by name only: the sim renders them and the pipeline brings them to the
        # bundle's size, so the parameter file's sizes need not match (a trained bundle).
        problems = bundle_mismatches(m, robot, None, f"bundle {bundle_dir}")
        if problems:
            raise ValueError("; ".join(problems))
        if settings is not None and settings.loop == "sync":
            # infer, then act: each chunk replaces the last from the step the robot resumes
            ex = config.policy.execution.model_copy(update={"merge": "replace"})
            config = config.model_copy(
                update={"policy": config.policy.model_copy(update={"execution": ex})})
        super().__init__(task, config, settings)
        rates = {c.expected_rate_hz for c in config.cameras
                 if c.name in {s.name for s in m.observation.cameras} and c.expected_rate_hz}
        camera_rate = min(rates) if rates else self.settings.camera_rate_hz
        self._camera_period_ns = round(1e9 / camera_rate)
        frame_age_s = (
            math.ceil(self._camera_period_ns / 1e9 / self._period_s) * self._period_s
            if config.policy.inference_trigger == "frame"
            else (self._infer_every - 1) * self._period_s
        )
        problems = _camera_problems(m, config, frame_age_s)
        if problems:
            raise ValueError("; ".join(problems))
        backend = OrtBackend("cpu", intra_op_threads=config.policy.intra_op_threads)
        self.policy = MoEPolicy(self.bundle, backend, routing=routing, seed=policy_seed)
        self.policy.warmup(config.policy.warmup_runs)
        h, w = self.settings.render_size
        self._cameras = [
            (c.name, self.sim.camera(c.name, width=w, height=h)) for c in m.observation.cameras
        ]

    def close(self) -> None:
        for _, renderer in self._cameras:
            renderer.close()
        self._cameras = []

    def _control(self, clock: FakeClock) -> ControlPath:
        self._pipe = PolicyPipeline(self.config, self.bundle, self.policy, clock,
                                    on_reject=_frame_rejected)
        return self._pipe

    def _reset(self, seed: int) -> None:
        self._flight: tuple[InferRequest, PolicyOutput, int] | None = None
        self._next_frame_ns = _EPOCH_NS
        self._next_obs = 0  # sync: the step of the next observation

    @property
    def _trigger(self) -> InferenceTrigger:
        return self._pipe.trigger

    def _render(self, now_ns: int) -> None:
        """The camera messages of this instant through the node's frame worker (this thread)."""
        pipe = self._pipe
        for name, renderer in self._cameras:
            pipe.put_frame(name, RawFrame(*rgb_to_raw(renderer.render())), now_ns, now_ns)
        pipe.frames.run_pending()

    def _start(self, step: int, now_ns: int, res: EpisodeResult,
               ks: list[int]) -> tuple[InferRequest, PolicyOutput]:
        pipe = self._pipe
        req = pipe.begin_inference(now_ns)
        if req is None:
            raise RuntimeError(f"no inference at step {step}: inputs "
                               f"{pipe.inputs.stale_sources(now_ns)}")
        self._trigger.start(now_ns)
        out = pipe.run_policy(req)
        res.chunks += 1
        res.latencies_ms.append(out.timings_ms["total"])
        dec = out.decision
        ks.append(dec.k)
        res.trace_steps.append(step)
        res.trace_dominant.append(int(dec.dominant))
        res.trace_active.append([int(i) for i in dec.active])
        self._usage[dec.active] += 1
        res.switches += int(dec.state.switched)
        return req, out

    def _deliver(self, req: InferRequest, out: PolicyOutput, start_step: int | None = None
                 ) -> None:
        pipe = self._pipe
        if start_step is None:
            rtc = req.guidance is not None
            start_step = req.start_step if rtc else pipe.timeline.start_step(req.obs.stamp_ns)
            result = pipe.finish_inference(req, out)
        else:
            result = pipe.finish_inference(req, out, start_step=start_step)
        if result.offered == ADDED:
            self._chunk_at(req.obs.stamp_ns, start_step)

    def _arrivals(self, ctl: ControlPath, step: int, now_ns: int, res: EpisodeResult) -> None:
        flight = self._flight
        if flight is not None and flight[2] <= now_ns:
            self._flight = None
            self._deliver(flight[0], flight[1])

    def _observe(self, ctl: ControlPath, step: int, now_ns: int, q: np.ndarray,
                 res: EpisodeResult, ks: list[int]) -> int | None:
        st = self.settings
        sync = st.loop == "sync"
        frame_mode = self.config.policy.inference_trigger == "frame"
        rendered = False
        if (frame_mode or sync) and now_ns >= self._next_frame_ns:
            # the cameras publish on their own clock (sync: their frames keep the inputs
            # fresh while the robot executes a chunk)
            self._render(now_ns)
            rendered = True
            while self._next_frame_ns <= now_ns:
                self._next_frame_ns += self._camera_period_ns
        if sync:
            if step != self._next_obs:
                return None
            if not rendered:
                self._render(now_ns)  # the client reads the cameras when it observes
            self._held = self._start(step, now_ns, res, ks)
            return math.ceil(st.inference_delay_s / self._period_s - 1e-9)
        if self._flight is None and self._trigger.ready(now_ns):
            if not frame_mode:
                self._render(now_ns)  # timer: a frame rendered for each inference
            req, out = self._start(step, now_ns, res, ks)
            delay_ns = round(st.inference_delay_s * 1e9)
            if delay_ns == 0:
                self._deliver(req, out)
            else:
                self._flight = (req, out, now_ns + delay_ns)
        return None

    def _resume(self, ctl: ControlPath, step: int, now_ns: int, res: EpisodeResult) -> None:
        req, out = self._held
        self._deliver(req, out, start_step=step)
        h = self.settings.sync_horizon or self.manifest.action.chunk_length
        self._next_obs = step + h - 1  # observe at the tick that runs the chunk's last row


def _frame_rejected(line: str) -> None:
    """A rendered frame the camera pipeline refuses ends the episode with the reason."""
    raise RuntimeError(line)


def _camera_problems(m: Manifest, config: RuntimeConfig, frame_age_s: float) -> list[str]:
    """The bundle's cameras must be in the parameter file (topic-less here, but their
    preprocessing and max_age_s are the node's), fresh enough for the frames' age at an
    inference (``frame_age_s``: a frame per inference, or per camera period)."""
    cams = {c.name: c for c in config.cameras}
    problems = []
    for spec in m.observation.cameras:
        cam = cams.get(spec.name)
        if cam is None:
            problems.append(f"bundle camera {spec.name!r} is not in the parameter file's "
                            f"cameras {sorted(cams)}")
        elif cam.max_age_s < frame_age_s:
            problems.append(
                f"cameras.{spec.name}.max_age_s {cam.max_age_s:g} s: in-process, a frame is "
                f"up to {frame_age_s:g} s old when inference starts")
    return problems


class ReplayRunner(_ClosedLoop):
    """Recorded commands instead of a policy: episode ``seed``'s actions, chunked as a policy
    would chunk them (``actions[s+1 .. s+H]`` for the observation at step ``s``), through the
    same :class:`core.pipeline.ControlPath` (timeline, arbiter, safety filter). It checks that
    the demonstrations, the control path and the parameter file agree: what it cannot do, no
    policy trained on them can."""

    def __init__(
        self,
        dataset: str | Path,
        task: str,
        config: RuntimeConfig,
        *,
        settings: LoopSettings | None = None,
        chunk_length: int = 25,
    ) -> None:
        from moe_policy_ros.data.episodes import Dataset

        super().__init__(task, config, settings)
        self.dataset = Dataset.open(dataset, joint_names=self._robot_joints)
        names = [p.name for p in self.dataset.episode_paths()]
        listed = {
            str(e["file"]): int(e["seed"])
            for e in self.dataset.meta.get("episodes", [])
            if isinstance(e, dict) and "file" in e and e.get("seed") is not None
        }
        self._by_seed: dict[int, int] = {}
        for i, name in enumerate(names):
            seed = listed[name] if name in listed else self.dataset[i].seed  # slow path
            if seed is not None:
                self._by_seed[int(seed)] = i
        self.chunk_length = int(chunk_length)
        self._actions = np.zeros((1, len(self._robot_joints)))

    def _reset(self, seed: int) -> None:
        if seed not in self._by_seed:
            raise KeyError(f"{self.dataset.root} has no episode recorded from seed {seed}")
        self._actions = np.asarray(self.dataset[self._by_seed[seed]].action, np.float64)

    def _control(self, clock: FakeClock) -> ControlPath:
        robot = self.config.robot
        inputs = InputBuffer(robot.joint_names, robot.joint_states_max_age_s, {})
        return ControlPath(self.config, robot.joint_names, inputs, clock)

    def _observe(self, ctl: ControlPath, step: int, now_ns: int, q: np.ndarray,
                 res: EpisodeResult, ks: list[int]) -> int | None:
        if step % self._infer_every:
            return None
        n = self._actions.shape[0]
        idx = np.minimum(np.arange(step + 1, step + 1 + self.chunk_length), n - 1)
        if ctl.offer(self._actions[idx], q, now_ns) == ADDED:
            self._chunk_at(now_ns, step + 1)
        res.chunks += 1
        return None


@dataclass(frozen=True)
class Summary:
    """Aggregate of a run: success with its Wilson interval and the router statistics."""

    episodes: int
    successes: int
    rate: float
    ci95: tuple[float, float]
    mean_active_experts: float | None
    switches_per_episode: float | None
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    errors: int
    control_jitter_ms_p99: float | None = None  # ROS 2 mode: worst episode's node p99
    latency_source: str = "per chunk"  # or "node diagnostics" (ROS 2 mode)

    def line(self) -> str:
        """``success: k/N (p%, 95% CI lo-hi%)``."""
        lo, hi = self.ci95
        return (
            f"success: {self.successes}/{self.episodes} ({100 * self.rate:.0f}%, "
            f"95% CI {100 * lo:.0f}-{100 * hi:.0f}%)"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        d["line"] = self.line()
        return d


def summarize(results: Sequence[EpisodeResult]) -> Summary:
    n = len(results)
    k = sum(1 for r in results if r.success)
    lat = np.concatenate(
        [np.asarray(r.latencies_ms, np.float64) for r in results] or [np.zeros(0)]
    )
    active = [r.mean_active_experts for r in results if math.isfinite(r.mean_active_experts)]
    ran = [r for r in results if r.chunks]
    source = "per chunk"
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    if not lat.size:
        # ROS 2 mode: the node reports each episode's window; the run's p50 is the median of
        # the episodes' medians and its p99 the worst episode's p99 (not a pooled percentile).
        p50 = percentile([r.node_stats.get("latency_ms_p50", math.nan) for r in results], 50)
        p99s = [r.node_stats.get("latency_ms_p99", math.nan) for r in results]
        p99 = percentile(p99s, 100)
        source = "node diagnostics" if p50 is not None else source
    jitter = percentile([r.node_stats.get("jitter_ms_p99", math.nan) for r in results], 100)
    return Summary(
        episodes=n,
        successes=k,
        rate=k / n if n else 0.0,
        ci95=wilson_interval(k, n),
        mean_active_experts=float(np.mean(active)) if active else None,
        switches_per_episode=float(np.mean([r.switches for r in ran])) if ran else None,
        latency_ms_p50=p50,
        latency_ms_p99=p99,
        errors=sum(1 for r in results if r.error),
        control_jitter_ms_p99=jitter,
        latency_source=source,
    )


def default_params_file() -> Path:
    """The parameter file ``make demo`` uses (``config/sim_dual_arm.yaml``), from the source
    checkout or the installed share."""
    found = package_file(DEFAULT_PARAMS)
    if found is None:
        raise FileNotFoundError(f"{DEFAULT_PARAMS}: neither in the source checkout nor in the "
                                "installed share of moe_policy_ros; reinstall the package")
    return found


def resolve_bundle(path: str | Path, params_file: Path) -> Path:
    """A bundle path as the node resolves ``policy.bundle``
    (:func:`~moe_policy_ros.core.paths.resolve_share_path`), then relative to the parameter
    file's package (the folder above its ``config/``)."""
    p = resolve_share_path(path)
    if p.exists():
        return p.resolve()
    beside = params_file.resolve().parents[1] / p
    if beside.exists():
        return beside
    raise FileNotFoundError(
        f"bundle {path}: not found (relative to ., the package or {params_file.parent.parent})"
    )
