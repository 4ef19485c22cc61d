"""core.diagnostics: each task's level, message and values, from hand-written state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from moe_policy_ros.core.camerastats import CameraReport
from moe_policy_ros.core.diagnostics import (
    CONTROL_LOOP,
    ControlStats,
    InferenceStats,
    Key,
    Level,
    control_task,
    gate_label,
    gate_label_experts,
    inference_task,
    inputs_task,
    level_name,
    level_of,
    lifecycle_task,
    router_task,
    safety_task,
    status_name,
)
from moe_policy_ros.core.types import PolicyOutput, RouterState, RoutingDecision

S = 1_000_000_000


def _output(active: list[int], switched: bool, total_ms: float) -> PolicyOutput:
    gates = np.array([0.1, 0.7, 0.2])
    return PolicyOutput(
        np.zeros((4, 2)),
        RoutingDecision(np.array(active), np.ones(len(active), np.float32),
                        RouterState(gates, 0.8, switched)),
        {"total": total_ms, "experts": total_ms / 2},
    )


def test_levels_and_names() -> None:
    assert [level_name(v) for v in (0, 1, 2, 3, 9)] == ["OK", "WARN", "ERROR", "STALE", "9"]
    assert status_name("moe_policy", CONTROL_LOOP) == "moe_policy: control loop"


def test_lifecycle_task_reports_the_state_or_the_configure_error() -> None:
    ok = lifecycle_task("inactive")
    assert (ok.task, ok.level, ok.message, ok.values) == (
        "lifecycle", Level.OK, "inactive", [("state", "inactive")])
    bad = lifecycle_task("unconfigured", "bundle /x: not found")
    assert bad.level == Level.ERROR
    assert bad.message == "configure failed: bundle /x: not found"
    assert bad.values == [("state", "unconfigured")]


def test_inference_task_escalates_errors_then_nonfinite_chunks() -> None:
    stats = InferenceStats(3)
    stats.add(_output([1], False, 10.0), 0.0)
    ok = inference_task(stats, "onnxruntime-cpu", "b", 0, 10.0)
    assert ok.level == Level.OK and ok.message == "onnxruntime-cpu, median 10.0 ms"
    assert dict(ok.values)[Key.LATENCY_MEDIAN_MS] == 10.0
    assert stats.failed(RuntimeError("boom")) == "RuntimeError: boom"
    warn = inference_task(stats, "x", "b", 2, 10.0)
    assert warn.level == Level.WARN and "last error: RuntimeError: boom" in warn.message
    assert dict(warn.values)["overruns"] == 2
    stats.nonfinite += 1
    assert inference_task(stats, "x", "b", 0, 10.0).level == Level.ERROR


def test_router_task_counts_usage_and_switches_of_the_last_minute() -> None:
    stats = InferenceStats(3)
    stats.add(_output([1], True, 1.0), 0.0)
    stats.add(_output([1, 2], True, 1.0), 30.0)
    stats.add(_output([1], False, 1.0), 70.0)
    st = router_task(stats, "adamoe", "topk", ["a", "b", "c"], now_s=70.0)
    values = dict(st.values)
    assert values[Key.SWITCHES_PER_MINUTE] == 1  # the switch at 0 s is over a minute old
    assert values["usage b"] == 3 / 4 and values["usage c"] == 1 / 4
    assert values["dominant"] == "b"
    assert st.message == "1.33 experts active on average"


def test_control_task_warns_only_when_active_and_slow() -> None:
    stats = ControlStats(0.02)
    for i in range(11):  # 25 Hz against a 50 Hz target
        stats.tick(i * 40_000_000)
    now = 10 * 40_000_000
    slow = control_task(stats, now, 50.0, 3, "stream", active=True)
    assert slow.level == Level.WARN and slow.message == "25.0 Hz (target 50 Hz)"
    assert dict(slow.values)[Key.MISSED_TICKS] == 3
    assert control_task(stats, now, 50.0, 3, "stream", active=False).level == Level.OK


def test_control_task_reports_jitter_p50_p99_and_max() -> None:
    stats = ControlStats(0.02)
    for t_ms in (0, 20, 41, 60, 85, 105):  # |period - 20 ms| = 0, 1, 1, 5, 0 ms
        stats.tick(t_ms * 1_000_000)
    values = dict(control_task(stats, 105_000_000, 50.0, 0, "stream", active=True).values)
    assert values[Key.JITTER_P50_MS] == pytest.approx(1.0)
    assert values[Key.JITTER_P99_MS] == pytest.approx(4.84)
    assert values[Key.JITTER_MAX_MS] == pytest.approx(5.0)


@dataclass
class _Source:
    name: str
    stamp_age_s: float | None
    last_error: str = ""
    received: int = 10
    rejected: int = 0

    def age_s(self, now_ns: int) -> float | None:
        return self.stamp_age_s

    def rate_hz(self) -> float:
        return 30.0


def test_inputs_task_stale_beats_rejections_and_adds_camera_verdicts() -> None:
    sources = [_Source("joint_states", 0.01), _Source("top", 2.0, "bad encoding")]
    fresh = inputs_task(sources, [], [], [], 5 * S, active=True)
    assert fresh.level == Level.OK and fresh.message == "all inputs fresh"
    assert ("top last error", "bad encoding") in fresh.values
    rejected = inputs_task(sources, [], ["top: bad encoding"], [], 5 * S, active=True)
    assert rejected.level == Level.WARN and rejected.message.startswith("rejected in the last")
    stale = inputs_task(sources, ["top: 2.0 s old"], ["x"], [], 5 * S, active=True)
    assert stale.level == Level.ERROR and stale.message == "stale: top: 2.0 s old"
    assert inputs_task(sources, ["top"], [], [], 5 * S, active=False).level == Level.WARN
    silent = CameraReport("top", "/cam", (96, 128), publishers=0)
    with_cam = inputs_task(sources, [], [], [silent], 5 * S, active=True)
    assert with_cam.level == Level.ERROR and " | " in with_cam.message
    assert any(k == "top verdict" for k, _ in with_cam.values)


def test_safety_task_carries_the_filter_and_the_mode() -> None:
    st = safety_task((Level.WARN, "velocity limited", {"velocity_limit": "3"}), "autonomy", 2)
    assert st.level == Level.WARN and st.message == "mode autonomy: velocity limited"
    assert st.values == [(Key.MODE, "autonomy"), ("mode changes", 2), ("velocity_limit", "3")]


def test_level_of_a_received_status() -> None:
    """rclpy gives DiagnosticStatus.level as one byte; other bindings as an int."""
    assert level_of(b"\x02") == Level.ERROR and level_of(b"\x00") == Level.OK
    assert level_of(1) == Level.WARN and level_of(7) == 7


def test_gate_label_names_the_experts_and_reads_back() -> None:
    """The node writes the gates' layout label, the monitor and the evaluator read it."""
    label = gate_label(["reach", "grasp", "lift"])
    assert label == "experts:reach,grasp,lift"
    assert gate_label_experts(label) == ["reach", "grasp", "lift"]
    assert gate_label_experts("") is None and gate_label_experts("joints:a,b") is None
