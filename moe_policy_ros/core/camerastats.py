"""Per-camera input statistics and a one-line verdict (shared by /diagnostics and doctor).

What a user needs when the policy sees no images is *why*: nothing published, frames lost on
the way (transport), or frames arriving but refused (size, encoding, data). :class:`CameraStats`
counts frames at the subscription (received), after preprocessing (accepted) and refused
(rejected, by cause), and estimates the publisher's rate: from ``expected_rate_hz`` when the
config gives it, otherwise from the spacing of ``header.stamp``. The median interval between
received frames is the capture period while fewer than half are lost; dividing each interval
by its number of periods refines it, robust to stamp jitter (a driver thread on a loaded
machine stamps frames up to 40% of a period early or late). Intervals of several periods
count the frames lost between them. When more than half are lost the median is a multiple of
the period and the loss goes unseen: set ``expected_rate_hz`` to be sure.

:func:`camera_verdict` turns a :class:`CameraReport` into (level, one line) with the likely
cause; it is a pure function of plain numbers so ``moe-policy-ros doctor`` can call it on
counters it gathered itself.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from moe_policy_ros.core.stats import LatencyWindow, RateMeter
from moe_policy_ros.core.types import Level

#: Shipped Fast DDS profile, named in the transport verdict (see core/transport.py).
PROFILE_HINT = "the shipped Fast DDS profile (config/dds/fastdds_shm.xml)"


def _wh(size: tuple[int, int] | None) -> str:
    return "?" if size is None else f"{size[1]}x{size[0]}"


@dataclass(frozen=True)
class CameraReport:
    """One camera's input state; sizes are (h, w). See :func:`camera_verdict`."""

    name: str
    topic: str
    size_used: tuple[int, int]
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    superseded: int = 0
    rate_hz: float = 0.0
    publisher_rate_hz: float | None = None
    rate_source: str = ""  # "config", "stamps" or "" (unknown)
    delivery: float | None = None  # estimated fraction of published frames that arrived
    size_received: tuple[int, int] | None = None
    encoding_received: str = ""
    preprocess: str = ""
    causes: Mapping[str, int] = field(default_factory=dict)
    last_error: str = ""
    publishers: int | None = None  # matched publishers on the topic, when known
    #: ``header.stamp`` to the subscription's receipt, ms (capture/driver + transport)
    receipt_p50_ms: float | None = None
    receipt_p99_ms: float | None = None


def camera_verdict(r: CameraReport, min_delivery: float = 0.9) -> tuple[Level, str]:
    """``(level, line)``: what is wrong with a camera's input and the likely cause."""
    pub = ""
    if r.publisher_rate_hz:
        pub = f" of the publisher's {r.publisher_rate_hz:.1f} Hz"
        if r.rate_source == "stamps":
            pub += " (from stamps)"
    if r.received == 0:
        if r.publishers == 0:
            return Level.ERROR, (
                f"{r.name}: no frames: nothing publishes {r.topic} (likely cause: the camera "
                f"driver is not running or publishes on another topic)"
            )
        who = "no publisher matched, or " if r.publishers is None else (
            f"{r.publishers} publisher(s) matched but "
        )
        return Level.ERROR, (
            f"{r.name}: no frames on {r.topic}: {who}none arrived (likely cause: transport: "
            f"large images are lost as UDP fragments without a shared-memory segment big "
            f"enough; apply {PROFILE_HINT})"
        )
    if r.accepted == 0 and r.rejected > 0:
        cause = max(r.causes, key=lambda c: r.causes[c]) if r.causes else "data"
        return Level.ERROR, (
            f"{r.name}: all {r.rejected} frames rejected (likely cause: {cause}): {r.last_error}"
        )
    if r.delivery is not None and r.delivery < min_delivery:
        # A gap in the stamps is a frame lost on the way or one the publisher skipped (a
        # simulator falling behind, a driver dropping frames); the node cannot tell which.
        return Level.WARN, (
            f"{r.name}: {r.rate_hz:.1f} Hz received{pub}, {1 - r.delivery:.0%} of frames "
            f"missing (likely cause: transport: apply {PROFILE_HINT} or a larger segment; "
            f"else the publisher skips frames)"
        )
    if r.rejected > 0:
        cause = max(r.causes, key=lambda c: r.causes[c]) if r.causes else "data"
        return Level.WARN, (
            f"{r.name}: {r.rejected} of {r.received} frames rejected (likely cause: {cause}): "
            f"{r.last_error}"
        )
    if r.received and r.superseded > 0.5 * r.received:
        return Level.WARN, (
            f"{r.name}: preprocessing used {r.accepted} of {r.received} frames (likely cause: "
            f"CPU: the frame worker falls behind {_wh(r.size_received)} frames)"
        )
    return Level.OK, (
        f"{r.name}: {_wh(r.size_received)} {r.encoding_received} -> {_wh(r.size_used)} "
        f"{r.preprocess}, {r.rate_hz:.1f} Hz{pub}"
    )


class CameraStats:
    """Thread-safe counters for one camera (see the module docstring)."""

    def __init__(
        self,
        name: str,
        topic: str,
        size_used: tuple[int, int],
        preprocess: str = "",
        expected_rate_hz: float = 0.0,
        window: int = 120,
        rate_window_s: float = 3.0,
    ) -> None:
        self.name, self.topic, self.size_used = name, topic, size_used
        self.preprocess = preprocess
        self.expected_rate_hz = float(expected_rate_hz)
        self.rate_window_s = rate_window_s
        self._lock = threading.Lock()
        self._stamps: deque[int] = deque(maxlen=window)
        # receipt times on the node's ROS clock, which jumps back when a simulator restarts
        self._arrivals = RateMeter(rate_window_s, max_events=window, on_backwards="restart")
        self._receipt_ms = LatencyWindow(window)  # header.stamp -> receipt, ROS clock
        self.received = self.accepted = self.rejected = 0
        self.causes: dict[str, int] = {}
        self.last_error = ""
        self.size_received: tuple[int, int] | None = None
        self.encoding_received = ""

    def arrival(self, stamp_ns: int, recv_ns: int) -> None:
        """A message reached the subscription (before any decoding)."""
        with self._lock:
            self.received += 1
            self._stamps.append(int(stamp_ns))
            self._receipt_ms.add((int(recv_ns) - int(stamp_ns)) / 1e6)
        self._arrivals.record(int(recv_ns))

    def accepted_frame(self, size: tuple[int, int], encoding: str) -> None:
        with self._lock:
            self.accepted += 1
            self.size_received, self.encoding_received = size, encoding

    def rejected_frame(self, cause: str, error: str) -> None:
        with self._lock:
            self.rejected += 1
            self.causes[cause] = self.causes.get(cause, 0) + 1
            self.last_error = error

    def _publisher(self) -> tuple[float | None, str, float | None]:
        """(publisher rate Hz, source, delivered fraction) from config or stamp spacing."""
        stamps = np.asarray(self._stamps, dtype=np.int64)
        d = np.diff(stamps)
        d = d[d > 0]
        if self.expected_rate_hz > 0:
            period, source = 1e9 / self.expected_rate_hz, "config"
        elif d.size >= 10:
            # median interval, then each interval divided by its number of periods
            rough = float(np.median(d))
            period = float(np.median(d / np.maximum(np.rint(d / rough), 1.0)))
            source = "stamps"
        else:
            return None, "", None
        if d.size == 0:
            return 1e9 / period, source, None
        lost = float(np.maximum(np.rint(d / period) - 1.0, 0.0).sum())
        return 1e9 / period, source, d.size / (d.size + lost)

    def report(self, now_ns: int, superseded: int = 0,
               publishers: int | None = None) -> CameraReport:
        rate = self._arrivals.rate_hz(now_ns)
        with self._lock:
            pub_rate, source, delivery = self._publisher()
            receipt = self._receipt_ms.summary() if len(self._receipt_ms) else None
            return CameraReport(
                name=self.name, topic=self.topic, size_used=self.size_used,
                received=self.received, accepted=self.accepted, rejected=self.rejected,
                superseded=superseded, rate_hz=rate, publisher_rate_hz=pub_rate,
                rate_source=source, delivery=delivery, size_received=self.size_received,
                encoding_received=self.encoding_received, preprocess=self.preprocess,
                causes=dict(self.causes), last_error=self.last_error, publishers=publishers,
                receipt_p50_ms=None if receipt is None else receipt.p50,
                receipt_p99_ms=None if receipt is None else receipt.p99,
            )
