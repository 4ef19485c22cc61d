"""core.loop.PeriodicLoop on a FakeClock: deadlines, skipped ticks, overruns, stop."""

from __future__ import annotations

import itertools
import os
import threading

import pytest

from moe_policy_ros.core.clock import FakeClock, MonotonicClock
from moe_policy_ros.core.loop import LoopThreads, PeriodicLoop, set_realtime_priority

MS = 1_000_000


def _record(clock: FakeClock, work_ms: dict[int, float] | None = None):
    calls: list[tuple[int, int]] = []

    def body(step: int, now_ns: int) -> None:
        calls.append((step, now_ns))
        clock.advance((work_ms or {}).get(len(calls) - 1, 0.0) / 1e3)

    return calls, body


def test_ticks_on_absolute_deadlines_despite_work_time() -> None:
    clock = FakeClock(start_ns=5 * MS)
    loop = PeriodicLoop(50.0, clock)
    calls, body = _record(clock, {i: 7.0 for i in range(10)})  # 7 ms of work in a 20 ms period
    loop.run(body, threading.Event(), max_ticks=10)
    assert calls == [(s, 5 * MS + s * 20 * MS) for s in range(10)]
    assert (loop.ticks, loop.skipped, loop.overruns) == (10, 0, 0)


def test_skip_mode_skips_whole_missed_ticks_and_keeps_the_grid() -> None:
    clock = FakeClock()
    loop = PeriodicLoop(50.0, clock, late="skip")
    # tick 1 takes 50 ms (2.5 periods): grid point 2 is missed, 3 runs at once (late by 10 ms)
    calls, body = _record(clock, {1: 50.0})
    loop.run(body, threading.Event(), max_ticks=4)
    assert calls == [(0, 0), (1, 20 * MS), (3, 70 * MS), (4, 80 * MS)]
    assert loop.skipped == 1 and loop.overruns == 0 and loop.ticks == 4


def test_reanchor_mode_counts_overruns_and_restarts_the_grid() -> None:
    clock = FakeClock()
    loop = PeriodicLoop(10.0, clock, late="reanchor")
    seen: list[bool] = []
    calls, inner = _record(clock, {1: 150.0})

    def body(step: int, now_ns: int) -> None:
        seen.append(loop.overrunning)
        inner(step, now_ns)

    loop.run(body, threading.Event(), max_ticks=4)
    # iteration 1 (at 100 ms) ends at 250 ms, after its next deadline (200 ms): the next one
    # starts at once, the one after a period later.
    assert [t for _, t in calls] == [0, 100 * MS, 250 * MS, 350 * MS]
    assert [s for s, _ in calls] == [0, 1, 2, 3]
    assert loop.overruns == 1 and loop.skipped == 0
    assert seen == [False, False, True, False]  # overrunning until one ends in time


def test_stop_event_ends_the_loop_at_the_next_wait() -> None:
    clock = FakeClock()
    stop = threading.Event()
    loop = PeriodicLoop(100.0, clock)
    steps: list[int] = []

    def body(step: int, now_ns: int) -> None:
        steps.append(step)
        if step == 2:
            stop.set()

    loop.run(body, stop)
    assert steps == [0, 1, 2]


def test_monotonic_clock_wait_is_interrupted_by_stop() -> None:
    stop = threading.Event()
    stop.set()
    clock = MonotonicClock()
    assert clock.sleep_until_ns(clock.now_ns() + 60 * 1_000_000_000, stop) is True
    assert clock.sleep_until_ns(clock.now_ns() - 1) is False


@pytest.mark.parametrize(
    ("rate", "late", "named"),
    [(0.0, "skip", "rate_hz .* 0.0"), (-1.0, "skip", "-1.0"), (10.0, "burst", "'burst'")],
)
def test_bad_settings_are_refused_with_the_value(rate: float, late: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        PeriodicLoop(rate, FakeClock(), late=late)  # type: ignore[arg-type]


def test_catch_up_runs_late_ticks_back_to_back_then_drops_a_long_backlog() -> None:
    clock = FakeClock()
    loop = PeriodicLoop(100.0, clock, late="catch_up", max_lag_s=0.025)
    lags: list[int] = []
    # tick 1 takes 25 ms (ends 15 ms behind): ticks 2, 3 run at once, the grid is kept;
    # tick 5 takes 60 ms (ends 50 ms behind > 25 ms): the backlog is dropped there.
    calls, body = _record(clock, {1: 25.0, 5: 60.0})
    loop.run(body, threading.Event(), max_ticks=8, on_reanchor=lags.append)
    assert [t // MS for _, t in calls] == [0, 10, 35, 35, 40, 50, 110, 120]
    assert loop.overruns == 1 and lags == [50 * MS]


def test_set_rate_restarts_the_grid_after_the_current_tick() -> None:
    clock = FakeClock()
    loop = PeriodicLoop(100.0, clock, late="catch_up", max_lag_s=1.0)
    seen: list[int] = []

    def body(step: int, now_ns: int) -> None:
        seen.append(now_ns // MS)
        if step == 1:
            loop.set_rate(50.0)

    loop.run(body, threading.Event(), max_ticks=5)
    assert seen == [0, 10, 10, 30, 50]
    assert loop.period_ns == 20 * MS


def test_loop_threads_report_a_failed_iteration_and_go_on() -> None:
    """Two loops on their own threads (FakeClock: no pacing): an iteration that raises is
    reported by ``on_error`` and the loop goes on; ``stop()`` ends and joins both."""
    threads = LoopThreads()
    clock = FakeClock()
    errors: list[str] = []
    steps: list[int] = []
    failed_once = threading.Event()

    def body(step: int, _now: int) -> None:
        steps.append(step)
        if step == 2:
            raise RuntimeError("bad observation")
        if step >= 5:
            failed_once.set()

    ticking = threading.Event()
    threads.start("work", PeriodicLoop(50.0, clock).run, body, lambda e: errors.append(str(e)))
    threads.start("idle", PeriodicLoop(50.0, FakeClock()).run,
                  lambda _s, _n: ticking.set(), lambda e: errors.append(str(e)))
    assert failed_once.wait(10.0) and ticking.wait(10.0)
    threads.stop()
    assert errors == ["bad observation"] and steps[:6] == list(range(6))
    assert threads.stop_event.is_set()
    assert not [t for t in threading.enumerate() if t.name in ("work", "idle")]


def test_loop_threads_stop_quietly_when_the_process_is_shutting_down() -> None:
    """A failure once ``alive()`` is False (the ROS context is gone) is not reported: it stops
    every loop. The next start() is a new run (the stop event is cleared)."""
    alive = [True]
    threads = LoopThreads(alive=lambda: alive[0])
    errors: list[Exception] = []

    def body(step: int, _now: int) -> None:
        if step == 3:
            alive[0] = False
            raise RuntimeError("publisher's context is invalid")

    other = threading.Event()
    threads.start("b", PeriodicLoop(50.0, FakeClock()).run, lambda _s, _n: other.set(),
                  errors.append)
    assert other.wait(10.0)
    threads.start("a", PeriodicLoop(50.0, FakeClock()).run, body, errors.append)
    assert threads.stop_event.wait(10.0), "the failure during shutdown did not stop the loops"
    for t in [t for t in threading.enumerate() if t.name in ("a", "b")]:
        t.join(10.0)  # both end on the shared event, before stop() is called
        assert not t.is_alive(), f"loop {t.name} still running"
    threads.stop()
    assert errors == []
    ran: list[int] = []
    alive[0] = True
    threads.start("c", PeriodicLoop(50.0, FakeClock()).run, lambda s, _n: ran.append(s),
                  errors.append)
    assert not threads.stop_event.is_set()
    threads.stop()
    assert errors == []


def test_on_start_runs_on_the_loop_thread_before_the_first_iteration() -> None:
    seen: list[tuple[str, int]] = []
    loops = LoopThreads()

    def loop(body: object, stop: threading.Event) -> None:
        seen.append(("loop", threading.get_ident()))
        stop.wait(0.01)

    loops.start("t", loop, lambda s, n: None, lambda e: None,  # type: ignore[arg-type]
                on_start=lambda: seen.append(("start", threading.get_ident())))
    loops.stop()
    assert [k for k, _ in seen] == ["start", "loop"]
    assert seen[0][1] == seen[1][1] != threading.get_ident()


def test_realtime_priority_applies_to_the_calling_thread_or_says_why_not() -> None:
    assert set_realtime_priority(0) is None
    with pytest.raises(ValueError, match="100"):
        set_realtime_priority(100)
    out: dict[str, object] = {}

    def worker() -> None:
        out["refused"] = set_realtime_priority(10)
        out["policy"] = os.sched_getscheduler(0)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    if out["refused"] is None:  # permitted here (root, rtprio): the thread is SCHED_FIFO
        assert out["policy"] == os.SCHED_FIFO
    else:  # refused: the message names the priority and the fix, the thread is unchanged
        assert "priority 10" in str(out["refused"]) and "rtprio" in str(out["refused"])
        assert out["policy"] == os.SCHED_OTHER
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's own thread is untouched


@pytest.mark.parametrize("shift_ms", [5.0, -3.0])
def test_a_phase_shift_is_slewed_in_within_the_slew_bound_and_the_steps_go_on(
    shift_ms: float,
) -> None:
    clock = FakeClock(start_ns=1_000 * MS)
    loop = PeriodicLoop(50.0, clock)  # 20 ms period: at most 0.2 ms per tick
    assert loop.max_slew_ns == 200_000 and loop.grid_origin_ns is None
    calls: list[tuple[int, int]] = []
    origins: list[int | None] = []

    def body(step: int, now_ns: int) -> None:
        calls.append((step, now_ns))
        origins.append(loop.grid_origin_ns)
        if step == 2:
            loop.shift_phase(round(shift_ms * MS))

    loop.run(body, threading.Event(), max_ticks=50)
    periods = [b - a for (_, a), (_, b) in itertools.pairwise(calls)]
    slewing = round(abs(shift_ms) / 0.2)
    assert [s for s, _ in calls] == list(range(50))  # no tick skipped, numbering goes on
    assert all(abs(p - 20 * MS) <= 200_000 for p in periods)
    assert periods[:2] == [20 * MS] * 2 and periods[2 + slewing:] == [20 * MS] * (47 - slewing)
    assert calls[-1][1] == 1_000 * MS + 49 * 20 * MS + round(shift_ms * MS)
    assert loop.phase_shift_ns == round(shift_ms * MS) and not loop.slewing
    assert origins[0] == 1_000 * MS and origins[-1] == 1_000 * MS + round(shift_ms * MS)
    assert loop.grid_origin_ns is None  # not running any more


def test_only_a_skip_grid_takes_a_phase_shift() -> None:
    loop = PeriodicLoop(10.0, FakeClock(), late="reanchor")
    with pytest.raises(ValueError, match="'reanchor'"):
        loop.shift_phase(MS)
