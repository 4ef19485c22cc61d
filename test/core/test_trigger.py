"""When inference starts (core/trigger.py): timer or new camera frame, the rate as a ceiling;
all on a FakeClock, and through the pipeline's frame worker with a real bundle."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from moe_policy_ros.core.clock import FakeClock
from moe_policy_ros.core.trigger import InferenceTrigger

MS = 1_000_000


def test_timer_starts_a_period_apart_and_ignores_frames() -> None:
    clock = FakeClock(1_000 * MS)
    trig = InferenceTrigger("timer", 10.0, clock)
    assert trig.due_ns() == 0 and trig.ready(clock.now_ns())  # first start at once
    trig.start(1_000 * MS)
    trig.frame()
    assert not trig.ready(1_099 * MS)  # a frame does not start the timer early
    assert trig.ready(1_100 * MS)


def test_frame_waits_for_a_new_frame_then_starts_at_once() -> None:
    clock = FakeClock(0)
    trig = InferenceTrigger("frame", 10.0, clock)
    assert trig.due_ns() is None and not trig.ready(5_000 * MS)  # no frame: never
    trig.frame()
    assert trig.ready(0)
    trig.start(0)
    assert not trig.pending and trig.due_ns() is None  # the start used the frame
    trig.frame()  # a frame 250 ms later: the minimum period has passed, start at once
    assert trig.ready(250 * MS)


def test_frame_trigger_rate_is_a_ceiling() -> None:
    trig = InferenceTrigger("frame", 10.0, FakeClock(0))
    trig.frame()
    trig.start(0)
    trig.frame()  # 30 ms later: too soon after the last start
    assert trig.due_ns() == 100 * MS
    assert not trig.ready(99 * MS) and trig.ready(100 * MS)


def test_a_frame_during_inference_starts_the_next_one_when_the_worker_is_free() -> None:
    trig = InferenceTrigger("frame", 50.0, FakeClock(0))
    trig.frame()
    trig.start(0)
    trig.frame()  # arrives while the inference runs
    trig.finish(70 * MS)  # 70 ms > the 20 ms minimum period: an overrun
    assert trig.overrunning and trig.overruns == 1
    assert trig.ready(70 * MS)  # pending frame, period passed: right away
    trig.start(70 * MS)
    trig.finish(75 * MS)
    assert not trig.overrunning and trig.overruns == 1


def _run_starts(camera_ms: int, ceiling_hz: float, infer_ms: int) -> tuple[list[int], int]:
    """Start times (ms) of four inferences run by ``InferenceTrigger.run`` with a camera
    publishing every ``camera_ms``; the worker's overruns."""
    clock = FakeClock(0)
    trig = InferenceTrigger("frame", ceiling_hz, clock)
    starts: list[int] = []
    next_frame = 0

    def frames_until(t_ns: int) -> None:
        nonlocal next_frame
        while next_frame <= t_ns:
            trig.frame()
            next_frame += camera_ms * MS

    def body(_i: int, now: int) -> None:
        starts.append(now // MS)
        clock.advance_ns(infer_ms * MS)  # the inference
        frames_until(clock.now_ns())

    def idle(deadline_ns: int, stop: threading.Event | None = None) -> bool:
        # the worker sleeps: the camera keeps publishing meanwhile
        frames_until(deadline_ns)
        return FakeClock.sleep_until_ns(clock, deadline_ns, stop)

    clock.sleep_until_ns = idle  # type: ignore[method-assign]
    frames_until(0)
    while trig.starts < 4:  # no frame pending: the camera's next frame wakes the worker
        if not trig.pending:
            clock.sleep_until_ns(next_frame)
        trig.run(body, threading.Event(), max_iterations=1)
    return starts, trig.overruns


def test_run_starts_on_frames_at_most_at_the_ceiling() -> None:
    # a 100 Hz camera under a 20 Hz ceiling: starts 50 ms apart
    assert _run_starts(10, 20.0, 5) == ([0, 50, 100, 150], 0)
    # a 10 Hz camera under the same ceiling: a start at each frame's arrival
    assert _run_starts(100, 20.0, 5) == ([0, 100, 200, 300], 0)
    # inference slower than the ceiling's period: the next starts when the worker is free
    assert _run_starts(10, 20.0, 70) == ([0, 70, 140, 210], 4)


def test_run_returns_when_stopped_while_waiting_for_a_frame() -> None:
    trig = InferenceTrigger("frame", 10.0, FakeClock(0))
    stop = threading.Event()
    worker = threading.Thread(target=trig.run, args=(lambda _i, _t: None, stop))
    worker.start()
    stop.set()
    worker.join(timeout=5.0)
    assert not worker.is_alive() and trig.starts == 0


@pytest.mark.parametrize(("mode", "rate", "match"), [
    ("poll", 10.0, "'timer' or 'frame', got 'poll'"),
    ("frame", 0.0, "must be positive, got 0.0 Hz"),
])
def test_bad_settings_are_named(mode: str, rate: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InferenceTrigger(mode, rate, FakeClock(0))  # type: ignore[arg-type]


def test_pipeline_frames_notify_the_trigger_and_the_worker_runs_on_frames() -> None:
    from moe_policy_ros.core.backends import make_backend
    from moe_policy_ros.core.bundle import load_bundle
    from moe_policy_ros.core.config import config_from_params, load_param_file
    from moe_policy_ros.core.imageconv import rgb_to_raw
    from moe_policy_ros.core.pipeline import PolicyPipeline
    from moe_policy_ros.core.preprocess import RawFrame
    from moe_policy_ros.core.runtime import MoEPolicy

    repo = Path(__file__).resolve().parents[2]
    params = load_param_file(repo / "config" / "dual_arm.yaml")
    params["policy"]["inference_trigger"] = "frame"
    params["policy"]["inference_rate_hz"] = 20.0
    cfg = config_from_params(params)
    bundle = load_bundle(repo / "models" / "demo_smp")
    policy = MoEPolicy(bundle, make_backend("onnxruntime", intra_op_threads=1))
    clock = FakeClock(5_000 * MS)
    ros = [1_700_000_000 * 10**9]
    pipe = PolicyPipeline(cfg, bundle, policy, clock, ros_now=lambda: ros[0])
    pipe.start()
    image = RawFrame(*rgb_to_raw(np.full((96, 128, 3), 90, np.uint8)))
    q = np.zeros(len(pipe.joint_names))

    def camera() -> None:  # a frame and a joint state, through the node's frame worker
        pipe.inputs.put_joint_state(pipe.joint_names, q, [], ros[0], ros[0])
        pipe.put_frame("top", image, ros[0], ros[0])
        pipe.frames.run_pending()

    assert not pipe.trigger.pending
    camera()
    assert pipe.trigger.pending and pipe.trigger.frames == 1
    starts: list[int] = []

    def body(_i: int, now: int) -> None:
        starts.append(now)
        assert pipe.infer_once(ros[0]) is not None
        for _ in range(3):  # 30 ms: frames at 100 Hz, one inside the 50 ms ceiling
            clock.advance_ns(10 * MS)
            ros[0] += 10 * MS
            camera()

    pipe.trigger.run(body, threading.Event(), max_iterations=3)
    assert [(s - starts[0]) // MS for s in starts] == [0, 50, 100]
    assert pipe.infer_stats.chunks == 3 and pipe.overruns == 0
    tasks = pipe.diagnostic_tasks(ros[0], True)
    values = dict(tasks[1].values)
    assert values["inference trigger"] == "frame"
