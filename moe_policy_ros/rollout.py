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
from typing import Any

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
from moe_policy_ros.core.pipeline import ControlPath, PolicyPipeline
from moe_policy_ros.core.preprocess import RawFrame
from moe_policy_ros.core.runtime import MoEPolicy
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
_EPOCH_NS = 1_000_000_000  # simulated time of step 0


@dataclass(frozen=True)
class LoopSettings:
    """Closed-loop settings that are not in the parameter file."""

    max_steps: int = DEFAULT_EPISODE_STEPS
    render_size: tuple[int, int] = DEFAULT_RENDER_SIZE  # (H, W) px
    stop_on_success: bool = True
    episode_timeout_s: float = 600.0  # wall-clock budget of one episode

    def __post_init__(self) -> None:
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latencies_ms")
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
    (:meth:`_control`) and supply its chunks (:meth:`_infer`)."""

    num_experts = 0
    _usage: np.ndarray

    def __init__(self, task: str, config: RuntimeConfig, settings: LoopSettings | None) -> None:
        from moe_policy_ros.sim.aloha import JOINT_NAMES, AlohaSim

        self.settings = settings or LoopSettings()
        self.config = config
        robot = tuple(config.robot.joint_names)
        sim_joints = tuple(JOINT_NAMES)
        unknown = sorted({*robot} - {*sim_joints})
        if unknown:
            raise ValueError(f"robot joints {unknown} are not joints of the ALOHA sim")
        self._robot_joints = robot
        self._to_robot = np.array([sim_joints.index(j) for j in robot])
        self.sim = AlohaSim(task, seed=None)
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

    def _infer(self, ctl: ControlPath, step: int, now_ns: int, q: np.ndarray,
               res: EpisodeResult, ks: list[int]) -> None:
        """Offer the chunk of the observation at ``step`` (time ``now_ns``) to ``ctl``."""
        raise NotImplementedError

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

    def _episode(self, res: EpisodeResult, t0: float, ks: list[int]) -> None:
        st, sim = self.settings, self.sim
        sim.reset(res.seed)
        self._usage = np.zeros(self.num_experts, np.int64)
        self._reset(res.seed)
        # One clock for the monotonic and the ROS time of the node; not at 0, a stamp the
        # input buffer refuses.
        clock = FakeClock(_EPOCH_NS)
        ctl = self._control(clock)
        ctl.start()
        period_ns = round(self._period_s * 1e9)
        refusal = ""
        for step in range(st.max_steps):
            if time.monotonic() - t0 > st.episode_timeout_s:
                raise TimeoutError(
                    f"episode ran past its {st.episode_timeout_s:g} s wall-clock budget at "
                    f"step {step}"
                )
            now_ns = clock.now_ns()
            q = sim.joint_positions()[self._to_robot]
            ctl.inputs.put_joint_state(self._robot_joints, q, (), now_ns, now_ns)
            if step % self._infer_every == 0:
                # Inference takes no simulated time: the control loop has marked this step,
                # so the chunk of this observation starts at step + 1.
                ctl.timeline.mark(step, now_ns)
                self._infer(ctl, step, now_ns, q, res, ks)
                res.chunks += 1
            out = ctl.control_step(step, now_ns, now_ns)
            tick, arb = out.tick, ctl.arbiter
            res.interventions += int(bool(tick.filter.interventions))
            if arb.mode == Mode.AUTONOMY and res.engaged_step is None:
                res.engaged_step = step
            if res.engaged_step is None and tick.policy_command is not None:
                # as the evaluate command does through ~/engage_autonomy
                ok, why = arb.engage_autonomy(True)
                refusal = "" if ok else why
            if out.sent is not None:
                target = sim.targets
                target[self._to_robot] = out.sent
                sim.set_targets(target)
            sim.step(self._substeps)
            clock.advance_ns(period_ns)
            res.steps = step + 1
            reward = sim.reward()
            res.max_reward = max(res.max_reward, reward)
            if reward == 4:
                res.success = True
                if res.success_step is None:
                    res.success_step = step
                if st.stop_on_success:
                    break
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
        super().__init__(task, config, settings)
        problems = _camera_problems(m, config, self._infer_every)
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
        return PolicyPipeline(self.config, self.bundle, self.policy, clock,
                              on_reject=_frame_rejected)

    def _infer(self, ctl: ControlPath, step: int, now_ns: int, q: np.ndarray,
               res: EpisodeResult, ks: list[int]) -> None:
        pipe = ctl
        assert isinstance(pipe, PolicyPipeline)
        for name, renderer in self._cameras:  # the camera messages of this step
            pipe.put_frame(name, RawFrame(*rgb_to_raw(renderer.render())), now_ns, now_ns)
        pipe.frames.run_pending()  # the node's frame worker, in this thread
        result = pipe.infer_once(now_ns)
        if result is None:
            raise RuntimeError(f"no inference at step {step}: inputs "
                               f"{pipe.inputs.stale_sources(now_ns)}")
        out = result.output
        res.latencies_ms.append(out.timings_ms["total"])
        dec = out.decision
        ks.append(dec.k)
        res.trace_steps.append(step)
        res.trace_dominant.append(int(dec.dominant))
        res.trace_active.append([int(i) for i in dec.active])
        self._usage[dec.active] += 1
        res.switches += int(dec.state.switched)


def _frame_rejected(line: str) -> None:
    """A rendered frame the camera pipeline refuses ends the episode with the reason."""
    raise RuntimeError(line)


def _camera_problems(m: Manifest, config: RuntimeConfig, infer_every: int) -> list[str]:
    """The bundle's cameras must be in the parameter file (topic-less here, but their
    preprocessing and max_age_s are the node's), fresh enough for one frame per inference."""
    cams = {c.name: c for c in config.cameras}
    frame_age_s = (infer_every - 1) * config.policy.control_period_s
    problems = []
    for spec in m.observation.cameras:
        cam = cams.get(spec.name)
        if cam is None:
            problems.append(f"bundle camera {spec.name!r} is not in the parameter file's "
                            f"cameras {sorted(cams)}")
        elif cam.max_age_s < frame_age_s:
            problems.append(
                f"cameras.{spec.name}.max_age_s {cam.max_age_s:g} s: in-process, a frame is "
                f"rendered per inference and is {frame_age_s:g} s old before the next one")
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

    def _infer(self, ctl: ControlPath, step: int, now_ns: int, q: np.ndarray,
               res: EpisodeResult, ks: list[int]) -> None:
        n = self._actions.shape[0]
        idx = np.minimum(np.arange(step + 1, step + 1 + self.chunk_length), n - 1)
        ctl.offer(self._actions[idx], q, now_ns)


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
