"""Latest-sample buffers for the policy's inputs, with staleness by source stamp.

Subscription callbacks only store the newest sample (with its header stamp and receive
time); the inference worker assembles an observation from whatever is newest, and the control
loop asks which sources are stale. Staleness is measured from ``header.stamp`` against the
node clock (never deadline QoS on a driver's topic), so a driver that republishes old frames
is still caught.

A sample that fails validation (missing joints, NaN, wrong image size) is *rejected*: it
never replaces the last good sample, it is counted, and the last error is kept for
``/diagnostics``. The last good sample then ages out and the robot holds.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from moe_policy_ros.core.stats import RateMeter


class InputError(ValueError):
    """An input message is malformed; the message names the bad value."""


def joint_command(
    names: Sequence[str], msg_names: Sequence[str], positions: Sequence[float]
) -> np.ndarray:
    """A named joint command (e.g. teleop) as float64 in ``names`` order; extra joints are
    ignored. InputError names what is wrong: counts that differ, joints missing, NaN/Inf."""
    if len(positions) != len(msg_names):
        raise InputError(f"{len(msg_names)} names but {len(positions)} positions")
    index = {n: i for i, n in enumerate(msg_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise InputError(f"teleop command lacks joints {missing}")
    q = np.array([positions[index[n]] for n in names], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise InputError("non-finite positions")
    return q


@dataclass
class SourceStatus:
    """Per-source counters for diagnostics."""

    name: str
    max_age_s: float
    received: int = 0
    rejected: int = 0
    last_error: str = ""
    last_error_ns: int | None = None
    last_stamp_ns: int | None = None
    last_received_ns: int | None = None
    #: arrival (receipt) times of the last 50 accepted samples, on the ROS clock
    arrivals: RateMeter = field(
        default_factory=lambda: RateMeter(window_s=None, max_events=50, on_backwards="restart")
    )

    def rate_hz(self) -> float:
        """Arrival rate of the last 50 accepted samples."""
        return self.arrivals.rate_hz()

    def age_s(self, now_ns: int) -> float | None:
        if self.last_stamp_ns is None:
            return None
        return (now_ns - self.last_stamp_ns) / 1e9


@dataclass(frozen=True)
class JointSample:
    positions: np.ndarray  # float64, robot joint order
    velocities: np.ndarray | None
    stamp_ns: int


@dataclass(frozen=True)
class ImageSample:
    image: np.ndarray  # uint8 HxWx3 RGB
    stamp_ns: int


JOINTS = "joint_states"
#: Joint states kept for :meth:`InputBuffer.joints_at` (1.28 s at 50 Hz).
JOINT_HISTORY = 64


class InputBuffer:
    """Thread-safe store of the newest joint state and camera images."""

    def __init__(
        self,
        joint_names: Sequence[str],
        joint_max_age_s: float,
        cameras: dict[str, float],
    ) -> None:
        self._joint_names = list(joint_names)
        self._index = {n: i for i, n in enumerate(self._joint_names)}
        self._lock = threading.Lock()
        self._order_cache: dict[tuple[str, ...], np.ndarray] = {}
        self._joints: JointSample | None = None
        self._joint_history: deque[JointSample] = deque(maxlen=JOINT_HISTORY)
        self._images: dict[str, ImageSample] = {}
        self.status: dict[str, SourceStatus] = {JOINTS: SourceStatus(JOINTS, joint_max_age_s)}
        for cam, age in cameras.items():
            self.status[cam] = SourceStatus(cam, age)

    # ------------------------------------------------------------------ writers

    def put_joint_state(
        self,
        names: Sequence[str],
        positions: Sequence[float],
        velocities: Sequence[float],
        stamp_ns: int,
        now_ns: int,
    ) -> JointSample:
        """Map a JointState onto the robot's joint order; extra joints are ignored."""
        try:
            sample = self._map_joints(names, positions, velocities, stamp_ns)
        except InputError as err:
            self.reject(JOINTS, str(err), now_ns)
            raise
        with self._lock:
            self._joints = sample
            self._joint_history.append(sample)
            self._accept(JOINTS, stamp_ns, now_ns)
        return sample

    def _map_joints(
        self,
        names: Sequence[str],
        positions: Sequence[float],
        velocities: Sequence[float],
        stamp_ns: int,
    ) -> JointSample:
        key = tuple(names)
        cached = self._order_cache.get(key)
        if cached is not None and len(positions) == len(key) and (
            not velocities or len(velocities) == len(key)
        ):
            # Fast path for the common case (same names as last time): no name checks.
            pos = np.asarray(positions, dtype=np.float64)[cached]
            if np.all(np.isfinite(pos)) and stamp_ns > 0:
                vel = np.asarray(velocities, dtype=np.float64)[cached] if velocities else None
                if vel is not None and not np.all(np.isfinite(vel)):
                    vel = None
                return JointSample(pos, vel, stamp_ns)
        names = list(names)
        if len(positions) != len(names):
            raise InputError(
                f"JointState has {len(names)} names but {len(positions)} positions"
            )
        if velocities and len(velocities) != len(names):
            raise InputError(
                f"JointState has {len(names)} names but {len(velocities)} velocities"
            )
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f"JointState repeats joint names {dup}")
        missing = [n for n in self._joint_names if n not in names]
        if missing:
            raise InputError(f"JointState lacks joints {missing}")
        pos_in = np.asarray(positions, dtype=np.float64)
        order = [names.index(n) for n in self._joint_names]
        pos = pos_in[order]
        bad = [self._joint_names[i] for i in np.flatnonzero(~np.isfinite(pos))]
        if bad:
            raise InputError(f"JointState has non-finite positions for {bad}")
        vel = None
        if velocities:
            vel = np.asarray(velocities, dtype=np.float64)[order]
            if not np.all(np.isfinite(vel)):
                vel = None
        if stamp_ns <= 0:
            raise InputError(f"JointState header.stamp is zero or negative ({stamp_ns} ns)")
        if len(self._order_cache) < 8:
            self._order_cache[key] = np.asarray(order)
        return JointSample(pos, vel, stamp_ns)

    def put_image(self, camera: str, image: np.ndarray, stamp_ns: int, now_ns: int) -> None:
        if camera not in self.status:
            raise InputError(f"unknown camera {camera!r}")
        if stamp_ns <= 0:
            err = InputError(f"{camera}: header.stamp is zero or negative ({stamp_ns} ns)")
            self.reject(camera, str(err), now_ns)
            raise err
        with self._lock:
            self._images[camera] = ImageSample(image, stamp_ns)
            self._accept(camera, stamp_ns, now_ns)

    def reject(self, source: str, error: str, now_ns: int | None = None) -> None:
        with self._lock:
            st = self.status[source]
            st.rejected += 1
            st.last_error = error
            st.last_error_ns = now_ns

    def recent_errors(self, now_ns: int, window_s: float = 5.0) -> list[str]:
        """``source: error`` for sources that rejected a sample within the window."""
        with self._lock:
            return [
                f"{st.name}: {st.last_error}"
                for st in self.status.values()
                if st.last_error_ns is not None and now_ns - st.last_error_ns <= window_s * 1e9
            ]

    def _accept(self, source: str, stamp_ns: int, now_ns: int) -> None:
        st = self.status[source]
        st.received += 1
        st.last_stamp_ns = stamp_ns
        st.last_received_ns = now_ns
        st.arrivals.record(now_ns)

    # ------------------------------------------------------------------ readers

    def joints(self) -> JointSample | None:
        with self._lock:
            return self._joints

    def joints_at(self, stamp_ns: int) -> JointSample | None:
        """The kept joint state whose stamp is nearest ``stamp_ns`` (the later one of two
        equally near); None before the first. A frame older than the history gets the oldest
        kept sample."""
        with self._lock:
            best: JointSample | None = None
            for sample in self._joint_history:
                if best is None or abs(sample.stamp_ns - stamp_ns) <= abs(
                    best.stamp_ns - stamp_ns
                ):
                    best = sample
            return best

    def images(self) -> dict[str, ImageSample]:
        """Copies of the newest images: the frame worker reuses its buffers (double
        buffering), so a reader must not keep a reference to one."""
        with self._lock:
            return {k: ImageSample(v.image.copy(), v.stamp_ns) for k, v in self._images.items()}

    def stale_sources(self, now_ns: int) -> dict[str, str]:
        """Source name -> reason, for sources with no sample yet or older than their max age."""
        out: dict[str, str] = {}
        with self._lock:
            for st in self.status.values():
                age = st.age_s(now_ns)
                if age is None:
                    out[st.name] = "no data"
                elif age > st.max_age_s or math.isnan(age):
                    out[st.name] = f"{age:.3f} s old > {st.max_age_s:.3f} s"
        return out

    def stale(self, now_ns: int) -> list[str]:
        """``source: reason`` for every stale source (see :meth:`stale_sources`)."""
        return [f"{name}: {why}" for name, why in self.stale_sources(now_ns).items()]
