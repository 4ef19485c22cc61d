"""Injected clocks: monotonic for loops and deadlines, fake for tests.

Loops pace themselves with absolute deadlines on a monotonic clock (never ``time.time()``),
so that a slow iteration does not shift every later one. Tests inject :class:`FakeClock` and
advance it explicitly instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """A monotonic nanosecond clock that can also sleep until an absolute deadline.

    ``sleep_until_ns`` returns early when ``stop`` is set and reports it (True: stopped).
    """

    def now_ns(self) -> int: ...

    def sleep_until_ns(self, deadline_ns: int, stop: threading.Event | None = None) -> bool: ...


class MonotonicClock:
    """``time.monotonic_ns`` with an absolute-deadline sleep."""

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep_until_ns(self, deadline_ns: int, stop: threading.Event | None = None) -> bool:
        remaining = deadline_ns - time.monotonic_ns()
        if stop is not None:
            return stop.wait(remaining / 1e9) if remaining > 0 else stop.is_set()
        if remaining > 0:
            time.sleep(remaining / 1e9)
        return False


class FakeClock:
    """A clock that only moves when told to; ``sleep_until_ns`` jumps to the deadline."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += round(seconds * 1e9)

    def advance_ns(self, ns: int) -> None:
        with self._lock:
            self._now += ns

    def sleep_until_ns(self, deadline_ns: int, stop: threading.Event | None = None) -> bool:
        with self._lock:
            self._now = max(self._now, deadline_ns)
        return stop is not None and stop.is_set()
