"""Tick alignment: move the control loop's ticks to just after the chunks arrive.

A chunk is used from the first control tick after it is placed on the timeline, so the
observation-to-command latency of every frame includes a wait for that tick: anything from 0
to one control period. With a camera and a control loop at fixed rates, the instants at which
chunks arrive, taken modulo the control period (their *phase*), fall in a few clusters: a
15 Hz camera and 50 Hz control give three clusters 6.7 ms apart (50/15 = 10/3), an inference
timer at 10 Hz one. Where the ticks fall among the clusters is an accident of start-up, and
with ticks just before a cluster that cluster's frames wait a whole period: the p99 of the
wait was 18-20 ms at 50 Hz, and moved from run to run with that accident
(``docs/benchmarks.md``).

:class:`TickAligner` watches the phases of the last ``window`` arrivals and picks the tick
phase that makes the longest wait shortest: just after the last arrival of the cluster that
ends the largest empty stretch of the period (plus ``margin``, for arrivals later than any in
the window), where the longest wait is one period minus that stretch plus the margin (13.3 +
margin ms for the three clusters above, margin alone for one cluster). It asks for the shift
when that is ``hysteresis`` shorter than the longest wait of the grid as it is, leaving out
the ``spare`` longest (one frame delayed past its cluster's tick must not drag the grid to
another cluster), so phases spread evenly over the period (rates that share no rhythm) leave
the grid alone; and when more than ``spare`` arrivals came within half the margin of a tick
while the phases have an empty stretch of two margins or more: a camera clock drifting against
the control clock carries the cluster before a tick toward it, and an arrival that crosses the
tick waits a whole period. The control
loop slews the shift in (:meth:`~moe_policy_ros.core.loop.PeriodicLoop.shift_phase`, at most
2% of a period per tick), so its period jitter stays within that while the grid moves.

Pure logic on injected instants (monotonic ns); the pipeline feeds it and applies the shift.
"""

from __future__ import annotations

from collections import deque


def longest_wait_ns(phases: list[int], tick_ns: int, period_ns: int) -> int:
    """The longest wait from an arrival at each of ``phases`` to the next tick, ticks at
    ``tick_ns`` modulo ``period_ns`` (an arrival exactly at a tick takes that tick)."""
    return max((tick_ns - p) % period_ns for p in phases)


def tick_choices(phases: list[int], period_ns: int, margin_ns: int) -> list[tuple[int, int]]:
    """Each tick phase (in ``[0, period)``) ``margin_ns`` after an arrival of ``phases``
    with a longer empty stretch than the margin after it, and the longest wait it gives."""
    pts = sorted(p % period_ns for p in phases)
    choices = []
    for i, p in enumerate(pts):
        gap = (pts[i + 1] if i + 1 < len(pts) else pts[0] + period_ns) - p
        if gap > margin_ns:
            choices.append(((p + margin_ns) % period_ns, period_ns - gap + margin_ns))
    return choices


def best_tick_phase(phases: list[int], period_ns: int, margin_ns: int) -> tuple[int, int]:
    """The tick phase of :func:`tick_choices` that makes the longest wait shortest, and
    that wait."""
    return min(tick_choices(phases, period_ns, margin_ns), key=lambda c: c[1])


class TickAligner:
    """Decides where the control ticks should fall; see the module docstring.

    :meth:`arrived` takes each chunk's arrival instant and, every ``every`` arrivals once
    ``window`` are known, returns the shift (ns, within half a period either way) the control
    grid should make, or None.
    """

    def __init__(
        self, period_ns: int, *, margin_ns: int, window: int = 45, every: int = 5,
        hysteresis_ns: int | None = None, spare: int = 1,
    ) -> None:
        if period_ns <= 0:
            raise ValueError(f"period must be > 0 ns (got {period_ns})")
        if not 0 <= margin_ns < period_ns:
            raise ValueError(
                f"tick alignment margin {margin_ns / 1e6:g} ms must be >= 0 and below the "
                f"control period {period_ns / 1e6:g} ms")
        if window < 2 or every < 1:
            raise ValueError(f"window must be >= 2 and every >= 1 (got {window}, {every})")
        self.period_ns = period_ns
        self.margin_ns = margin_ns
        self.every = every
        self.hysteresis_ns = period_ns // 20 if hysteresis_ns is None else hysteresis_ns
        self.window = window
        #: arrivals of the window that may wait longer without moving the grid (a frame
        #: delayed past its cluster's tick must not drag the grid to another cluster)
        self.spare = spare
        self._arrivals: deque[int] = deque(maxlen=window)
        self._since = 0
        self.shifts = 0  # shifts asked for

    def reset(self) -> None:
        self._arrivals.clear()
        self._since = 0

    def arrived(self, now_ns: int, origin_ns: int | None, slewing: bool = False) -> int | None:
        """A chunk arrived at ``now_ns``; the grid's ticks are due at ``origin_ns + k *
        period`` (None: the loop is not running). Returns the shift to make, or None (too
        few arrivals, still slewing the last shift, or no gain worth a shift)."""
        self._arrivals.append(now_ns)
        self._since += 1
        if (origin_ns is None or slewing or len(self._arrivals) < self.window
                or self._since < self.every):
            return None
        self._since = 0
        period = self.period_ns
        phases = [(t - origin_ns) % period for t in self._arrivals]
        waits = sorted(((-p) % period for p in phases), reverse=True)
        choices = tick_choices(phases, period, self.margin_ns)
        if not choices:
            return None
        best_wait = min(w for _, w in choices)
        gain = waits[min(self.spare, len(waits) - 1)] - best_wait
        # A camera drifting against the control clock carries the cluster before a tick
        # toward it; re-centre before its arrivals cross the tick (and wait a whole period)
        # when the phases have an empty stretch worth aligning to at all.
        close = sum(w < self.margin_ns // 2 for w in waits)
        crowding = close > self.spare and period - best_wait >= 2 * self.margin_ns
        if gain < self.hysteresis_ns and not crowding:
            return None
        # Of the choices about as good as the best (clusters of a 3:10 rhythm are), the one
        # nearest the grid as it is: a jump to another cluster's gap gains nothing and leaves
        # the grid moving for longer.
        near = [t for t, w in choices if w <= best_wait + self.hysteresis_ns // 2]
        shift = min(((t + period // 2) % period - period // 2 for t in near), key=abs)
        if shift == 0:
            return None
        self.shifts += 1
        return shift
