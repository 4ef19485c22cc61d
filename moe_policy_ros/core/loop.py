"""A fixed-rate loop on absolute deadlines, with skip and overrun counting.

Iteration ``k`` is due at an absolute deadline on an injected monotonic clock
(:class:`~moe_policy_ros.core.clock.Clock`); the loop waits with ``Clock.sleep_until_ns``
(interruptible through a stop event) and then calls ``body(step, now_ns)``. Deadlines are
absolute, so a slow iteration does not shift every later one (``sleep(period)`` pacing drifts
by the work time each iteration; LeRobot's ``cycle_timer`` is the model here, openpi's
``time.time()`` pacing the counter-example).

What a late iteration does depends on what the loop drives (``late=``):

* ``"skip"`` (the control loop): stay on the grid ``t0 + step * period``. When an iteration
  ends after one or more whole grid points have passed, those ticks are skipped and counted
  (:attr:`PeriodicLoop.skipped`); ``step`` keeps numbering grid points, so step ``s`` always
  means ``t0 + s * period``, and the loop never bursts to catch up. The tick whose deadline
  has just passed runs at once.
* ``"reanchor"`` (the inference worker): an iteration that ends after the next deadline is
  an overrun (:attr:`PeriodicLoop.overruns`; :attr:`PeriodicLoop.overrunning` stays True
  until an iteration ends in time); the grid restarts at that moment, so the next iteration
  starts at once and the ones after it a period apart. ``step`` counts iterations.
* ``"catch_up"`` (a simulator's physics, a frame generator): every grid point gets its
  iteration, late ones back to back, as long as the loop is at most ``max_lag_s`` behind;
  further behind, the backlog is dropped (an overrun, reported to ``on_reanchor`` with the
  lag) and the grid restarts there. ``step`` counts iterations.

:meth:`PeriodicLoop.set_rate` changes the rate from any thread; the grid restarts at the end
of the iteration running then (a simulator's real-time factor changing).

:meth:`PeriodicLoop.shift_phase` moves a ``"skip"`` grid in time from any thread (the policy
node's tick alignment, :mod:`~moe_policy_ros.core.phase`): the shift is slewed in, at most
:attr:`PeriodicLoop.max_slew_ns` per iteration (2% of the period, 0.2 ms at most), so no period
deviates from the nominal by more than that while the grid moves; step numbering goes on.

The body runs on the loop's thread; exceptions propagate (the caller decides what a failed
iteration means). Set the stop event to end the loop: it returns at the next wait.

:class:`LoopThreads` runs such loops on threads of their own for a node (the policy node's
inference worker and control loop): one shared stop event, and a body that raises is reported
and the loop goes on, unless the process is shutting down under it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Literal

from moe_policy_ros.core.clock import Clock

LateMode = Literal["skip", "reanchor", "catch_up"]
#: An iteration: ``body(step, now_ns)``.
Body = Callable[[int, int], None]


class PeriodicLoop:
    """Calls ``body(step, now_ns)`` at ``rate_hz`` on absolute deadlines; see the module."""

    def __init__(
        self, rate_hz: float, clock: Clock, *, late: LateMode = "skip", max_lag_s: float = 0.0
    ) -> None:
        if late not in ("skip", "reanchor", "catch_up"):
            raise ValueError(f"late must be 'skip', 'reanchor' or 'catch_up', got {late!r}")
        if late == "catch_up" and not max_lag_s > 0:
            raise ValueError(f"catch_up needs max_lag_s > 0, got {max_lag_s}")
        self.period_ns = _period_ns(rate_hz)
        self.clock = clock
        self.late = late
        self.max_lag_ns = round(max_lag_s * 1e9)
        self._new_period: int | None = None
        self.ticks = 0  # iterations run
        self.skipped = 0  # "skip": grid points passed without a tick
        self.overruns = 0  # "reanchor": iterations that ended after the next deadline
        self.overrunning = False  # "reanchor": the last iteration overran
        self._shift_lock = threading.Lock()
        self._shift_requested = 0  # ns, not yet taken by the loop thread
        self._slew_left = 0  # ns, taken, still to apply
        self._origin_ns: int | None = None  # "skip": the grid's t0 (None: not running)
        self.phase_shift_ns = 0  # total shift applied since run() started

    @property
    def max_slew_ns(self) -> int:
        """``"skip"``: the most the grid moves per iteration while a shift is slewed in."""
        return min(200_000, self.period_ns // 50)

    def shift_phase(self, delta_ns: int) -> None:
        """Move the grid by ``delta_ns`` (later when positive), slewed in over the next
        iterations; ``"skip"`` loops only (any thread)."""
        if self.late != "skip":
            raise ValueError(f"shift_phase moves a 'skip' grid; this loop is {self.late!r}")
        with self._shift_lock:
            self._shift_requested += int(delta_ns)

    @property
    def grid_origin_ns(self) -> int | None:
        """The running ``"skip"`` grid's origin: its ticks are due at ``origin + k * period``
        (None when not running)."""
        return self._origin_ns

    @property
    def slewing(self) -> bool:
        """A phase shift is requested or still being slewed in."""
        with self._shift_lock:
            return self._shift_requested != 0 or self._slew_left != 0

    def _slew(self) -> int:
        """This iteration's part of the pending shift (loop thread)."""
        if not (self._shift_requested or self._slew_left):
            return 0  # nothing to move (alignment off): no lock on the control path
        with self._shift_lock:
            self._slew_left += self._shift_requested
            self._shift_requested = 0
            part = max(-self.max_slew_ns, min(self.max_slew_ns, self._slew_left))
            self._slew_left -= part
        self.phase_shift_ns += part
        return part

    def set_rate(self, rate_hz: float) -> None:
        """Run at ``rate_hz`` from the end of the current iteration on (the grid restarts)."""
        self._new_period = _period_ns(rate_hz)

    def run(
        self,
        body: Callable[[int, int], None],
        stop: threading.Event,
        max_ticks: int | None = None,
        on_reanchor: Callable[[int], None] | None = None,
    ) -> None:
        """Run until ``stop`` is set (or ``max_ticks`` iterations); counters start at zero.

        ``on_reanchor(lag_ns)`` is called when ``"catch_up"`` drops its backlog."""
        self.ticks = self.skipped = self.overruns = self.phase_shift_ns = 0
        self.overrunning = False
        with self._shift_lock:
            self._shift_requested = self._slew_left = 0
        clock, period = self.clock, self.period_ns
        t0 = deadline = clock.now_ns()
        step = 0
        if self.late == "skip":
            self._origin_ns = t0
        try:
            while not stop.is_set() and (max_ticks is None or self.ticks < max_ticks):
                if clock.sleep_until_ns(deadline, stop):
                    break
                body(step, clock.now_ns())
                self.ticks += 1
                step += 1
                now = clock.now_ns()
                if self._new_period is not None:  # a new rate: the grid restarts now
                    period = self.period_ns = self._new_period
                    self._new_period = None
                    t0, deadline = now - step * period, now
                    if self.late == "skip":
                        self._origin_ns = t0
                    continue
                if self.late == "catch_up":
                    deadline += period
                    lag = now - deadline
                    self.overrunning = lag > self.max_lag_ns
                    if self.overrunning:  # too far behind: drop the backlog
                        self.overruns += 1
                        if on_reanchor is not None:
                            on_reanchor(lag)
                        deadline = now
                elif self.late == "skip":
                    t0 += self._slew()
                    self._origin_ns = t0
                    behind = (now - t0) // period
                    if behind > step:  # whole ticks missed: skip them, never burst
                        self.skipped += int(behind - step)
                        step = int(behind)
                    deadline = t0 + step * period
                else:
                    deadline += period
                    self.overrunning = now > deadline
                    if self.overrunning:  # count it and re-anchor instead of bursting
                        self.overruns += 1
                        deadline = now
        finally:
            self._origin_ns = None


class LoopThreads:
    """Named daemon threads, each running a loop shaped like :meth:`PeriodicLoop.run`
    (``loop(body, stop)``) until one shared :attr:`stop_event`.

    An iteration that raises does not end its thread: ``on_error(err)`` is told (to count and
    log it) and the loop goes on, since one bad observation or one failed publish must not
    stop the robot's control loop for good. When ``alive()`` has turned False by then (the
    process is shutting down under the thread: SIGINT shut the ROS context, so every publish
    raises), the failure is not reported and every loop stops quietly instead.
    """

    def __init__(self, alive: Callable[[], bool] = lambda: True) -> None:
        self.stop_event = threading.Event()
        self._alive = alive
        self._threads: list[threading.Thread] = []

    def start(
        self,
        name: str,
        loop: Callable[[Body, threading.Event], None],
        body: Body,
        on_error: Callable[[Exception], None],
        on_start: Callable[[], None] | None = None,
    ) -> None:
        """Start thread ``name`` running ``loop`` over ``body`` (see the class); ``on_start``
        runs first on the new thread (e.g. :func:`set_realtime_priority`). The first thread
        started after :meth:`stop` clears the stop event: a new run."""
        if not self._threads:
            self.stop_event.clear()

        def run(body: Body, stop: threading.Event) -> None:
            if on_start is not None:
                on_start()
            loop(body, stop)

        def guarded(step: int, now_ns: int) -> None:
            try:
                body(step, now_ns)
            except Exception as err:
                if not self._alive():
                    self.stop_event.set()
                    return
                on_error(err)

        thread = threading.Thread(target=run, args=(guarded, self.stop_event), name=name,
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Set the stop event and join every thread (at most ``timeout_s`` each)."""
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._threads = []


def set_realtime_priority(priority: int) -> str | None:
    """Put the calling thread under SCHED_FIFO at ``priority`` (1-99), as ros2_control's
    controller manager does for its update thread; 0 leaves it under the normal scheduler.

    Returns None on success (or for 0), else why not (the message names the priority and
    the fix): it needs CAP_SYS_NICE or an ``rtprio`` limit (``/etc/security/limits.conf``),
    which a robot computer grants its control user and a container may not.
    """
    if not 0 <= priority <= 99:
        raise ValueError(f"realtime priority must be in 0..99 (got {priority})")
    if priority == 0:
        return None
    if not hasattr(os, "sched_setscheduler"):
        return f"SCHED_FIFO priority {priority}: not available on this platform"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as err:
        return (f"SCHED_FIFO priority {priority} refused ({err.strerror}): the loop runs under "
                "the normal scheduler; grant rtprio (limits.conf) or CAP_SYS_NICE")
    return None


def _period_ns(rate_hz: float) -> int:
    if not rate_hz > 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    return round(1e9 / rate_hz)
