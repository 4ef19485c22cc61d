"""Map camera timestamps (milliseconds, device clock) to ROS time (nanoseconds).

Method
------
A RealSense frame carries ``get_timestamp()`` in milliseconds in one of three domains:
``hardware_clock`` (the camera's own counter, arbitrary epoch), ``global_time`` (the hardware
clock already mapped to host time by librealsense) or ``system_time`` (host arrival time).
Whatever the domain, we stamp a frame with ``device_time + offset`` where ``offset`` estimates
``ros_time - device_time`` at capture:

* On the first frame, ``offset = ros_now - device_time``. Every later frame gives a candidate
  ``c = ros_now - device_time`` that equals the true offset plus the transport latency (USB,
  librealsense queues, our thread), which is always >= 0. The smallest candidate is therefore
  the best estimate, so the offset **drops to any smaller candidate at once**.
* The two clocks drift (tens of ppm), and a latency spike on the first frame must not be
  kept forever, so between frames the offset may also **rise by at most ``max_drift`` seconds
  per second** of device time toward the candidate:
  ``offset = min(c, offset + max_drift * dt_device)``. This is the classic one-way
  minimum-delay filter ("convex hull" clock sync, as used for PTP-less sensor sync): it tracks
  drift in both directions (down at once, up at up to ``max_drift``) and ignores latency
  jitter above the floor.
* A candidate further than ``reset_threshold_s`` from the estimate means a clock reset (the
  camera rebooted or playback looped): the estimate restarts from that candidate.

Stamps never go backwards: a stamp at or before the previous one is moved to 1 ns after it
(this absorbs the downward offset steps). :meth:`StampMapper.restart` forgets the offset
(after a reconnect) but keeps that monotonic guard.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class StampResult:
    """One mapped stamp, with what the estimator did (for diagnostics and tests)."""

    stamp_ns: int
    offset_ns: int
    clamped: bool
    reset: bool


class StampMapper:
    """Device-ms to ROS-ns mapping with a one-way minimum-delay offset filter (thread-safe)."""

    def __init__(self, max_drift: float = 200e-6, reset_threshold_s: float = 1.0) -> None:
        if max_drift < 0:
            raise ValueError(f"max_drift must be >= 0 s/s, got {max_drift}")
        if reset_threshold_s <= 0:
            raise ValueError(f"reset_threshold_s must be > 0, got {reset_threshold_s}")
        self.max_drift = float(max_drift)
        self.reset_threshold_ns = int(reset_threshold_s * 1e9)
        self._lock = threading.Lock()
        self._offset_ns: int | None = None
        self._last_device_ns: int | None = None
        self._last_stamp_ns: int | None = None
        self.resets = 0

    @property
    def offset_ns(self) -> int | None:
        with self._lock:
            return self._offset_ns

    def restart(self) -> None:
        """Forget the offset (new device session); stamps still never go backwards."""
        with self._lock:
            self._offset_ns = None
            self._last_device_ns = None

    def map(self, device_ms: float, ros_now_ns: int) -> StampResult:
        """Stamp a frame captured at ``device_ms`` (device clock), received at ``ros_now_ns``."""
        device_ns = round(device_ms * 1e6)
        candidate = int(ros_now_ns) - device_ns
        reset = False
        with self._lock:
            if self._offset_ns is None or self._last_device_ns is None:
                offset = candidate
            else:
                dt = device_ns - self._last_device_ns
                if dt < 0 or abs(candidate - self._offset_ns) > self.reset_threshold_ns:
                    offset = candidate
                    reset = True
                    self.resets += 1
                else:
                    offset = min(candidate, self._offset_ns + int(self.max_drift * dt))
            self._offset_ns = offset
            self._last_device_ns = device_ns
            stamp = device_ns + offset
            clamped = self._last_stamp_ns is not None and stamp <= self._last_stamp_ns
            if clamped:
                assert self._last_stamp_ns is not None
                stamp = self._last_stamp_ns + 1
            self._last_stamp_ns = stamp
            return StampResult(stamp, offset, clamped, reset)
