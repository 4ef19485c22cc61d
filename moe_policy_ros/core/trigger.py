"""When the inference worker starts the next inference: on a timer or on a new camera frame.

A fixed inference timer adds its phase to the latency: a frame that arrives just after a tick
waits almost a whole inference period before anything looks at it (at 10 Hz inference and a
15 Hz camera that wait dominated the observation-to-command latency, 50 ms p50 against an
inference of 2.4 ms). With ``inference_trigger: frame`` a new camera frame starts inference
as soon as the worker is free, and ``inference_rate_hz`` becomes a ceiling: two starts are at
least ``1 / inference_rate_hz`` apart, so a camera faster than the plan does not make the
worker run flat out.

:class:`InferenceTrigger` is the decision, on an injected monotonic :class:`Clock`:

* :meth:`InferenceTrigger.frame` (the frame worker, after a frame is stored): there is a
  frame no inference has used yet;
* :meth:`InferenceTrigger.due_ns`: the earliest time the next inference may start (the
  previous start plus the minimum period), or None while the frame trigger waits for a frame;
  :meth:`InferenceTrigger.ready` asks it for a given time;
* :meth:`InferenceTrigger.start` / :meth:`InferenceTrigger.finish` bracket an inference: the
  start consumes the pending frame (a frame that arrives while inference runs is pending for
  the next one), the finish counts an overrun (an inference longer than the minimum period,
  the same rule as the timer's ``PeriodicLoop`` with ``late="reanchor"``).

:meth:`InferenceTrigger.run` is the policy node's worker thread in frame mode (the timer mode
keeps its ``PeriodicLoop``); the in-process rollout calls :meth:`ready` and :meth:`start` on
simulated time instead. With several cameras, a new frame from any of them triggers (the
observation takes the newest frame of each).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

from moe_policy_ros.core.clock import Clock

TriggerMode = Literal["timer", "frame"]

__all__ = ["InferenceTrigger", "TriggerMode"]

#: seconds between checks of the stop event while the frame trigger waits for a frame
_STOP_POLL_S = 0.05


class InferenceTrigger:
    """Decides when the next inference starts; see the module docstring."""

    def __init__(self, mode: TriggerMode, rate_hz: float, clock: Clock) -> None:
        if mode not in ("timer", "frame"):
            raise ValueError(f"inference trigger must be 'timer' or 'frame', got {mode!r}")
        if not rate_hz > 0:
            raise ValueError(f"inference rate must be positive, got {rate_hz} Hz")
        self.mode: TriggerMode = mode
        self.min_period_ns = round(1e9 / rate_hz)
        self.clock = clock
        self._cond = threading.Condition()
        self._fresh = False  # a frame no inference has started from
        self._last_start: int | None = None
        self.reset()

    def reset(self) -> None:
        """A new activation or episode: no start yet, no pending frame, counters at zero."""
        with self._cond:
            self._fresh = False
            self._last_start = None
            self.starts = 0  # inferences started
            self.frames = 0  # frames notified
            self.overruns = 0  # inferences longer than the minimum period
            self.overrunning = False  # the last inference overran

    # ------------------------------------------------------------------ events

    def frame(self) -> None:
        """A new camera frame is in the inputs (any thread)."""
        with self._cond:
            self._fresh = True
            self.frames += 1
            self._cond.notify_all()

    def start(self, now_ns: int) -> None:
        """An inference starts at ``now_ns``: it uses every frame in so far."""
        with self._cond:
            self._last_start = now_ns
            self._fresh = False
            self.starts += 1

    def finish(self, now_ns: int) -> None:
        """The inference started last ended at ``now_ns`` (counts an overrun)."""
        with self._cond:
            last = self._last_start
            self.overrunning = last is not None and now_ns - last > self.min_period_ns
            self.overruns += int(self.overrunning)

    # ------------------------------------------------------------------ decisions

    @property
    def pending(self) -> bool:
        """A frame is in that no inference has started from."""
        with self._cond:
            return self._fresh

    def due_ns(self) -> int | None:
        """The earliest monotonic time the next inference may start; None while the frame
        trigger has no new frame. Before the first start: 0 (at once)."""
        with self._cond:
            if self.mode == "frame" and not self._fresh:
                return None
            return 0 if self._last_start is None else self._last_start + self.min_period_ns

    def ready(self, now_ns: int) -> bool:
        """Whether an inference may start at ``now_ns`` (the worker being free)."""
        due = self.due_ns()
        return due is not None and now_ns >= due

    # ------------------------------------------------------------------ worker thread

    def run(
        self,
        body: Callable[[int, int], None],
        stop: threading.Event,
        max_iterations: int | None = None,
    ) -> None:
        """The worker thread: wait for a due start, call ``body(iteration, now_ns)``, repeat
        until ``stop`` is set (or ``max_iterations``). Exceptions from ``body`` propagate."""
        clock = self.clock
        i = 0
        while not stop.is_set() and (max_iterations is None or i < max_iterations):
            due = self.due_ns()
            if due is None:
                with self._cond:
                    self._cond.wait_for(lambda: self._fresh, timeout=_STOP_POLL_S)
                continue
            if clock.sleep_until_ns(due, stop):
                break
            now = clock.now_ns()
            self.start(now)
            body(i, now)
            self.finish(clock.now_ns())
            i += 1
