"""The policy node's diagnostics: one task per concern, one level type, shared key names.

Shaped like ros/diagnostics ``diagnostic_updater``: each concern (inputs, inference, router,
control loop, safety) is a task that turns its state into one :class:`TaskStatus`
(level, message, key/value pairs); the node only converts them to
``diagnostic_msgs/DiagnosticStatus`` and publishes them. The status names and value keys are
constants here, and the tools that read the node's diagnostics (the demo report, the monitor)
use the same constants instead of spelling the strings again.

The statistics the node keeps while running (:class:`InferenceStats`, :class:`ControlStats`)
live here too; every time is passed in by the caller, so the tasks are tested with
hand-written stamps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moe_policy_ros.core.camerastats import CameraReport, camera_verdict
from moe_policy_ros.core.stats import JitterMeter, LatencyWindow, RateMeter
from moe_policy_ros.core.types import Level, PolicyOutput

__all__ = [
    "Key", "Level", "TaskStatus", "gate_label", "gate_label_experts", "level_name", "level_of",
    "status_name",
]


def level_of(raw: bytes | int) -> int:
    """The level of a received ``DiagnosticStatus`` (rclpy gives its byte field as ``bytes``)."""
    return raw[0] if isinstance(raw, bytes) else int(raw)


def level_name(level: int) -> str:
    """``"OK"``, ``"WARN"``, ``"ERROR"``, ``"STALE"``, or the number for anything else."""
    try:
        return Level(level).name
    except ValueError:
        return str(level)


HARDWARE_ID = "moe_policy_ros"  # DiagnosticStatus.hardware_id of the node's tasks

# Task names: a status is named "<node name>: <task>" (see status_name).
LIFECYCLE = "lifecycle"
INPUTS = "inputs"
INFERENCE = "inference"
ROUTER = "router"
CONTROL_LOOP = "control loop"
SAFETY = "safety"


def status_name(node: str, task: str) -> str:
    return f"{node}: {task}"


_GATES_PREFIX = "experts:"


def gate_label(expert_labels: Sequence[str]) -> str:
    """The layout label of ``~/router/gates``: ``experts:<label>,<label>,...``."""
    return _GATES_PREFIX + ",".join(expert_labels)


def gate_label_experts(label: str) -> list[str] | None:
    """The expert labels a gates layout label names (None: not a :func:`gate_label`)."""
    if not label.startswith(_GATES_PREFIX):
        return None
    return label.removeprefix(_GATES_PREFIX).split(",")


class Key:
    """Value keys that other tools read (demo report, monitor)."""

    BACKEND = "backend"
    LATENCY_MEDIAN_MS = "latency median (ms)"
    LATENCY_P99_MS = "latency p99 (ms)"
    EXPERT_STAGE_MEDIAN_MS = "expert stage median (ms)"
    FAMILY = "family"
    STRATEGY = "strategy"
    ENTROPY = "entropy (nats)"
    SWITCHES_PER_MINUTE = "switches per minute"
    USAGE_PREFIX = "usage "
    ACHIEVED_RATE_HZ = "achieved rate (Hz)"
    TARGET_RATE_HZ = "target rate (Hz)"
    JITTER_P50_MS = "period jitter p50 (ms)"
    JITTER_P99_MS = "period jitter p99 (ms)"
    JITTER_MAX_MS = "period jitter max (ms)"
    MISSED_TICKS = "missed ticks"
    OBS_TO_COMMAND_P50_MS = "obs-to-command p50 (ms)"
    OBS_TO_COMMAND_P99_MS = "obs-to-command p99 (ms)"
    # the last part of obs-to-command: a chunk's arrival -> the control tick that takes it,
    # and how far tick alignment (core/phase.py) has moved the tick grid ("off" without it)
    TICK_WAIT_P50_MS = "chunk-to-tick wait p50 (ms)"
    TICK_WAIT_P99_MS = "chunk-to-tick wait p99 (ms)"
    TICK_SHIFT_MS = "tick alignment shift (ms)"
    # chunks whose first command left on arrival (execution.send_on_arrival in chunk mode,
    # revise_on_arrival in stream mode) / all chunks whose first command left, this activation
    SENT_ON_ARRIVAL = "chunks sent on arrival"
    # the parts of obs-to-command before the policy runs: a camera's stamp -> receipt
    # (inputs task, per camera: "<camera> " + this), and the observation's age when the
    # inference from it starts (inference task: receipt, decoding, waiting for the worker)
    STAMP_TO_RECEIPT_P50_MS = "stamp-to-receipt p50 (ms)"
    STAMP_TO_RECEIPT_P99_MS = "stamp-to-receipt p99 (ms)"
    OBS_AGE_AT_START_P50_MS = "observation age at inference start p50 (ms)"
    OBS_AGE_AT_START_P99_MS = "observation age at inference start p99 (ms)"
    MODE = "mode"
    INFERENCE_TRIGGER = "inference trigger"
    RTC_FROZEN_PREFIX_STEPS = "rtc frozen prefix (steps)"


Values = list[tuple[str, Any]]


@dataclass(frozen=True)
class TaskStatus:
    """One task's result: what a DiagnosticStatus carries, without ROS."""

    task: str
    level: Level
    message: str
    values: Values


# ---------------------------------------------------------------------------- statistics


@dataclass
class InferenceStats:
    """What the inference worker counts: latencies, errors, and the router's behaviour."""

    num_experts: int
    latency: LatencyWindow = field(default_factory=lambda: LatencyWindow(200))
    expert_latency: LatencyWindow = field(default_factory=lambda: LatencyWindow(200))
    active_count: LatencyWindow = field(default_factory=lambda: LatencyWindow(200))
    #: observation age (ms, ROS clock) when an inference from it starts
    obs_age: LatencyWindow = field(default_factory=lambda: LatencyWindow(200))
    chunks: int = 0
    errors: int = 0
    last_error: str = ""
    nonfinite: int = 0
    entropy: float = 0.0
    switches_s: list[float] = field(default_factory=list)  # monotonic s, last minute
    last_output: PolicyOutput | None = None

    def __post_init__(self) -> None:
        self.usage = np.zeros(self.num_experts)

    def add(self, out: PolicyOutput, now_s: float) -> None:
        """Count one policy output (``now_s``: monotonic seconds)."""
        self.chunks += 1
        self.latency.add(out.timings_ms.get("total", 0.0))
        self.expert_latency.add(out.timings_ms.get("experts", 0.0))
        dec = out.decision
        self.usage[dec.active] += 1
        self.active_count.add(float(dec.k))
        self.entropy = dec.state.entropy
        if dec.state.switched:
            self.switches_s.append(now_s)
        self.last_output = out

    def failed(self, err: BaseException) -> str:
        """Count a failed inference; the line to log."""
        self.errors += 1
        self.last_error = f"{type(err).__name__}: {err}"
        return self.last_error


class ControlStats:
    """What the control loop measures: achieved rate, period jitter, obs-to-command latency
    and its last part, the wait from a chunk's arrival to its first command (at a tick, or
    on arrival: counted)."""

    def __init__(self, period_s: float) -> None:
        self.rate = RateMeter(window_s=2.0)
        self.jitter = JitterMeter(period_s, size=1000)
        self.obs_to_cmd = LatencyWindow(500)
        self.tick_wait = LatencyWindow(500)
        self.first_commands = 0  # chunks whose first command left (this activation)
        self.sent_on_arrival = 0  # ... of them, on arrival rather than at a tick

    def tick(self, now_ns: int) -> None:
        self.rate.record(now_ns)
        self.jitter.add(now_ns)


# ---------------------------------------------------------------------------- tasks


def lifecycle_task(state: str, configure_error: str = "") -> TaskStatus:
    """The node's lifecycle state; ERROR with the reason after a failed configure."""
    if configure_error:
        return TaskStatus(LIFECYCLE, Level.ERROR, f"configure failed: {configure_error}",
                          [("state", state)])
    return TaskStatus(LIFECYCLE, Level.OK, state, [("state", state)])


def camera_task_values(rep: CameraReport) -> tuple[Level, str, Values]:
    """One camera's verdict and its values (sizes, rates, delivery)."""
    level, line = camera_verdict(rep)
    cam = rep.name
    size_rx = "n/a" if rep.size_received is None else (
        f"{rep.size_received[1]}x{rep.size_received[0]} {rep.encoding_received}")
    values: Values = [
        (f"{cam} size received", size_rx),
        (f"{cam} size used", f"{rep.size_used[1]}x{rep.size_used[0]}"),
        (f"{cam} preprocess", rep.preprocess),
        (f"{cam} frames received", rep.received),
        (f"{cam} frames superseded", rep.superseded),
        (f"{cam} publisher rate (Hz)", "unknown" if rep.publisher_rate_hz is None
         else f"{rep.publisher_rate_hz:.1f} ({rep.rate_source})"),
        (f"{cam} delivery", "unknown" if rep.delivery is None else rep.delivery),
        (f"{cam} {Key.STAMP_TO_RECEIPT_P50_MS}",
         "n/a" if rep.receipt_p50_ms is None else rep.receipt_p50_ms),
        (f"{cam} {Key.STAMP_TO_RECEIPT_P99_MS}",
         "n/a" if rep.receipt_p99_ms is None else rep.receipt_p99_ms),
        (f"{cam} verdict", line),
    ]
    return Level(level), line, values


def inputs_task(
    sources: Iterable[Any],
    stale: Sequence[str],
    recent_errors: Sequence[str],
    cameras: Sequence[CameraReport],
    now_ns: int,
    active: bool,
) -> TaskStatus:
    """Input freshness and rejections (``sources``: :class:`core.inputs` statuses)."""
    values: Values = []
    for st in sources:
        age = st.age_s(now_ns)
        values += [
            (f"{st.name} rate (Hz)", st.rate_hz()),
            (f"{st.name} age (s)", "n/a" if age is None else age),
            (f"{st.name} received", st.received),
            (f"{st.name} rejected", st.rejected),
        ]
        if st.last_error:
            values.append((f"{st.name} last error", st.last_error))
    bad: list[tuple[Level, str]] = []
    for rep in cameras:
        cam_level, line, cam_values = camera_task_values(rep)
        values += cam_values
        if cam_level > Level.OK:
            bad.append((cam_level, line))
    level, message = Level.OK, "all inputs fresh"
    if recent_errors:
        level, message = Level.WARN, "rejected in the last 5 s: " + "; ".join(recent_errors)
    if stale:
        level = Level.ERROR if active else Level.WARN
        message = "stale: " + "; ".join(stale)
    if bad:
        level = max(level, max(lvl for lvl, _ in bad))
        message += " | " + " | ".join(line for _, line in bad)
    return TaskStatus(INPUTS, level, message, values)


def inference_task(
    stats: InferenceStats, backend: str, bundle: str, overruns: int, rate_hz: float,
    trigger: str = "timer", rtc_prefix_steps: int | None = None,
) -> TaskStatus:
    """Latency, errors and overruns; ``rate_hz`` is the timer's rate or the frame trigger's
    ceiling (``trigger``); ``rtc_prefix_steps``: the frozen prefix rtc uses now."""
    lat, age = stats.latency.summary(), stats.obs_age.summary()
    level = Level.OK if stats.errors == 0 else Level.WARN
    message = f"{backend}, median {lat.p50:.1f} ms"
    if stats.nonfinite:
        level = Level.ERROR
        message += f"; {stats.nonfinite} chunks with NaN/Inf"
    if stats.last_error:
        message += f"; last error: {stats.last_error}"
    return TaskStatus(INFERENCE, level, message, [
        (Key.BACKEND, backend),
        ("bundle", bundle),
        ("chunks", stats.chunks),
        (Key.LATENCY_MEDIAN_MS, lat.p50),
        (Key.LATENCY_P99_MS, lat.p99),
        (Key.EXPERT_STAGE_MEDIAN_MS, stats.expert_latency.summary().p50),
        (Key.OBS_AGE_AT_START_P50_MS, age.p50),
        (Key.OBS_AGE_AT_START_P99_MS, age.p99),
        ("overruns", overruns),
        ("errors", stats.errors),
        ("non-finite chunks", stats.nonfinite),
        ("inference rate (Hz)", rate_hz),
        (Key.INFERENCE_TRIGGER, trigger),
        *([] if rtc_prefix_steps is None else [(Key.RTC_FROZEN_PREFIX_STEPS, rtc_prefix_steps)]),
    ])


def router_task(
    stats: InferenceStats, family: str, strategy: str, labels: Sequence[str], now_s: float
) -> TaskStatus:
    """Expert usage, entropy and switches over the last minute (drops older switches)."""
    stats.switches_s[:] = [t for t in stats.switches_s if t >= now_s - 60.0]
    share = stats.usage / max(1.0, float(stats.usage.sum()))
    mean_k = stats.active_count.summary().mean
    values: Values = [
        (Key.FAMILY, family),
        (Key.STRATEGY, strategy),
        ("active experts (mean)", mean_k),
        (Key.ENTROPY, stats.entropy),
        (Key.SWITCHES_PER_MINUTE, len(stats.switches_s)),
    ]
    values += [(Key.USAGE_PREFIX + lbl, float(s)) for lbl, s in zip(labels, share, strict=True)]
    last = stats.last_output
    if last is not None:
        values.append(("dominant", labels[last.decision.dominant]))
        if last.decision.state.energies is not None:
            values.append(("min energy", float(np.min(last.decision.state.energies))))
    return TaskStatus(ROUTER, Level.OK, f"{mean_k:.2f} experts active on average", values)


def control_task(
    stats: ControlStats, now_ns: int, target_hz: float, missed: int, execution: str,
    active: bool, tick_shift_ms: float | None = None,
) -> TaskStatus:
    """``tick_shift_ms``: how far tick alignment has moved the grid (None: alignment off)."""
    rate = stats.rate.rate_hz(now_ns)
    if not math.isfinite(rate):
        rate = 0.0
    o2c, jitter = stats.obs_to_cmd.summary(), stats.jitter.summary()
    wait = stats.tick_wait.summary()
    level = Level.WARN if active and rate < 0.9 * target_hz else Level.OK
    return TaskStatus(CONTROL_LOOP, level, f"{rate:.1f} Hz (target {target_hz:g} Hz)", [
        (Key.ACHIEVED_RATE_HZ, rate),
        (Key.TARGET_RATE_HZ, target_hz),
        (Key.JITTER_P50_MS, jitter.p50 * 1e3),
        (Key.JITTER_P99_MS, jitter.p99 * 1e3),
        (Key.JITTER_MAX_MS, jitter.max * 1e3),
        (Key.MISSED_TICKS, missed),
        (Key.OBS_TO_COMMAND_P50_MS, o2c.p50),
        (Key.OBS_TO_COMMAND_P99_MS, o2c.p99),
        (Key.TICK_WAIT_P50_MS, wait.p50),
        (Key.TICK_WAIT_P99_MS, wait.p99),
        (Key.TICK_SHIFT_MS, "off" if tick_shift_ms is None else tick_shift_ms),
        (Key.SENT_ON_ARRIVAL, f"{stats.sent_on_arrival}/{stats.first_commands}"),
        ("execution", execution),
    ])


def safety_task(
    filter_diag: tuple[int, str, dict[str, Any]], mode: str, mode_changes: int
) -> TaskStatus:
    """The safety filter's own (level, message, values) with the arbiter's mode."""
    level, message, values = filter_diag
    return TaskStatus(SAFETY, Level(int(level)), f"mode {mode}: {message}", [
        (Key.MODE, mode), ("mode changes", mode_changes), *values.items(),
    ])
