"""Small windowed statistics for diagnostics and reports: rate, latency, control jitter.

Every timestamp is passed in by the caller (integer nanoseconds on one monotonic clock); nothing
here reads a clock, so tests use hand-written stamps. Memory is bounded by the window: a
``deque`` with ``maxlen`` (sample windows) or pruned by time and capped by ``max_events``
(the rate window). Percentiles use numpy's default linear interpolation between closest ranks
(``np.percentile(..., method="linear")``): for samples 1..100, p50 = 50.5 and p99 = 99.01.
The sample windows are not thread-safe: use them from one thread (the control loop) or guard
them externally; :class:`RateMeter` takes its own lock.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np


class RateMeter:
    """Arrival rate of events over a sliding window: the one rate meter of the package.

    ``rate_hz`` is ``(n - 1) / (t_last - t_first)`` over the ``n`` events in the window
    ``(ref - window_s, ref]``, where ``ref`` is ``now_ns`` if given, else the newest event:
    the mean rate between the events actually seen, unbiased by where the window edge falls
    (``n / window`` would count a stream that started mid-window as slow). Fewer than two
    events in the window, or all at one time, gives 0.0, so a stopped stream reads 0 once its
    events age out of the window. ``window_s=None`` keeps the last ``max_events`` events
    whatever their age.

    Stamps must not go backwards: ``on_backwards="raise"`` (a monotonic clock, where it would
    be a bug) raises ValueError; ``"restart"`` (ROS time, which jumps back when a simulator
    restarts its clock) forgets the older events and starts over from the new one.
    Thread-safe: one writer (a callback or a loop) and any readers (diagnostics).

    Used by the control loop's achieved rate (``diagnostics.ControlStats``), the input
    sources (``inputs.SourceStatus``), the cameras (``camerastats.CameraStats``), the camera
    driver node and ``moe-policy-ros doctor``.
    """

    def __init__(
        self,
        window_s: float | None = 1.0,
        max_events: int = 10_000,
        on_backwards: Literal["raise", "restart"] = "raise",
    ) -> None:
        if window_s is not None and not window_s > 0:
            raise ValueError(f"window_s must be positive or None, got {window_s}")
        if max_events < 2:
            raise ValueError(f"max_events must be >= 2, got {max_events}")
        if on_backwards not in ("raise", "restart"):
            raise ValueError(f"on_backwards must be 'raise' or 'restart', got {on_backwards!r}")
        self.window_ns = None if window_s is None else round(window_s * 1e9)
        self.on_backwards = on_backwards
        self._stamps: deque[int] = deque(maxlen=max_events)
        self._lock = threading.Lock()

    def record(self, stamp_ns: int) -> None:
        with self._lock:
            if self._stamps and stamp_ns < self._stamps[-1]:
                if self.on_backwards == "raise":
                    raise ValueError(
                        f"stamps must not go backwards: {stamp_ns} < {self._stamps[-1]}"
                    )
                self._stamps.clear()
            self._stamps.append(stamp_ns)
            self._prune(stamp_ns)

    def _prune(self, ref_ns: int) -> None:
        if self.window_ns is None:
            return
        while self._stamps and self._stamps[0] <= ref_ns - self.window_ns:
            self._stamps.popleft()

    def count(self, now_ns: int | None = None) -> int:
        with self._lock:
            if now_ns is not None:
                self._prune(now_ns)
            return len(self._stamps)

    def rate_hz(self, now_ns: int | None = None) -> float:
        with self._lock:
            if now_ns is not None:
                self._prune(now_ns)
            n = len(self._stamps)
            if n < 2:
                return 0.0
            span = self._stamps[-1] - self._stamps[0]
            return (n - 1) / (span / 1e9) if span > 0 else 0.0

    def reset(self) -> None:
        with self._lock:
            self._stamps.clear()


@dataclass(frozen=True)
class LatencySummary:
    """Statistics of the samples in a window (in the samples' unit; NaN when empty)."""

    count: int
    mean: float
    p50: float
    p99: float
    max: float

    @property
    def median(self) -> float:
        return self.p50


def _summary(values: deque[float]) -> LatencySummary:
    if not values:
        nan = math.nan
        return LatencySummary(0, nan, nan, nan, nan)
    a = np.fromiter(values, dtype=np.float64, count=len(values))
    p50, p99 = np.percentile(a, [50.0, 99.0])
    return LatencySummary(len(a), float(a.mean()), float(p50), float(p99), float(a.max()))


class LatencyWindow:
    """The last ``size`` latency samples (e.g. inference ms) and their summary."""

    def __init__(self, size: int = 1000) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self._values.append(float(value))

    def __len__(self) -> int:
        return len(self._values)

    def values(self) -> list[float]:
        """The samples in the window, oldest first."""
        return list(self._values)

    def summary(self) -> LatencySummary:
        return _summary(self._values)

    def reset(self) -> None:
        self._values.clear()


@dataclass(frozen=True)
class JitterSummary:
    """Control-period jitter over the window, in seconds (NaN when fewer than two ticks).

    ``p50``/``p99``/``max``/``mean`` are of ``|actual period - nominal|``; ``mean_period`` is
    the mean actual period.
    """

    count: int
    mean: float
    p50: float
    p99: float
    max: float
    mean_period: float


class JitterMeter:
    """Jitter of a periodic loop from its tick stamps: p99 of ``|period - nominal|``.

    ``add(stamp_ns)`` once per tick; the first tick only sets the reference. The window holds
    the last ``size`` periods.
    """

    def __init__(self, nominal_period_s: float, size: int = 1000) -> None:
        if not nominal_period_s > 0:
            raise ValueError(f"nominal_period_s must be positive, got {nominal_period_s}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.nominal_s = float(nominal_period_s)
        self._prev: int | None = None
        self._periods: deque[float] = deque(maxlen=size)

    def add(self, stamp_ns: int) -> None:
        if self._prev is not None:
            self._periods.append((stamp_ns - self._prev) / 1e9)
        self._prev = stamp_ns

    def summary(self) -> JitterSummary:
        if not self._periods:
            nan = math.nan
            return JitterSummary(0, nan, nan, nan, nan, nan)
        periods = np.fromiter(self._periods, dtype=np.float64, count=len(self._periods))
        dev = np.abs(periods - self.nominal_s)
        p50, p99 = np.percentile(dev, [50.0, 99.0])
        return JitterSummary(
            count=len(dev),
            mean=float(dev.mean()),
            p50=float(p50),
            p99=float(p99),
            max=float(dev.max()),
            mean_period=float(periods.mean()),
        )

    def reset(self) -> None:
        self._prev = None
        self._periods.clear()
