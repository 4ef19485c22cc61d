"""joint_trajectory_controller semantics for one joint group (pure Python, no ROS).

A :class:`Trajectory` is what a ``trajectory_msgs/JointTrajectory`` carries: joint names, points
(positions, optional velocities, ``time_from_start``) and a start time (the header stamp;
``0`` means "start now"). :class:`TrajectoryFollower` turns trajectories and forward commands
into a position (and velocity) setpoint that can be sampled at any time, following
ros2_controllers ``joint_trajectory_controller`` (``doc/trajectory.rst``):

* **Anchor.** Execution starts from the current setpoint at the trajectory's start time
  (``max(header stamp, time of receipt)``); the follower interpolates from that anchor to the
  first point that lies in the future. Using the setpoint rather than the measured state is
  JTC's ``open_loop_control``: a new trajectory never makes the command jump by the tracking
  error of the position controller underneath.
* **Past points.** Points whose absolute time (start + ``time_from_start``) is not after the
  anchor time are dropped; this is what compensates the latency between the observation that
  stamped the trajectory and its arrival. A trajectory whose points are all in the past is
  rejected (:class:`TrajectoryRejected`), and the running one continues.
* **Interpolation.** Cubic Hermite between points when the trajectory carries velocities
  (the anchor contributes the current setpoint velocity), linear otherwise. After the last
  point the follower holds it with zero velocity.
* **Replacement.** A new trajectory replaces the running one from its start time: one whose
  start time is in the future is kept pending while the running one continues, and takes
  over at its start time from the running one's setpoint at that time.
* **Joint order.** Joints may come in any order and are mapped by name; unknown or missing
  names raise :class:`TrajectoryError` naming them (JTC's ``allow_partial_joints_goal`` is
  false).
* **Forward commands.** :meth:`TrajectoryFollower.set_command` is the
  ``forward_command_controller`` path: the given positions become the setpoint at once and any
  running or pending trajectory is dropped.

Times are integer nanoseconds of an injected :class:`~moe_policy_ros.core.clock.Clock`, which
must be the clock the header stamps are expressed in (ROS time, or simulation time).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moe_policy_ros.core.clock import Clock

__all__ = [
    "Trajectory",
    "TrajectoryError",
    "TrajectoryFollower",
    "TrajectoryPoint",
    "TrajectoryRejected",
    "split_trajectory",
]


class TrajectoryError(ValueError):
    """A trajectory or command is malformed; the message names what is wrong."""


class TrajectoryRejected(TrajectoryError):
    """A well-formed trajectory that cannot be executed (all of its points are in the past)."""


@dataclass(frozen=True)
class TrajectoryPoint:
    """One waypoint: positions (rad), optional velocities (rad/s), time from start (s)."""

    positions: tuple[float, ...]
    time_from_start: float
    velocities: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Trajectory:
    """Joint names, points and the start time in nanoseconds (0 = start on receipt)."""

    joint_names: tuple[str, ...]
    points: tuple[TrajectoryPoint, ...]
    start_time_ns: int = 0


@dataclass(frozen=True)
class _Active:
    """A trajectory ready to run: absolute knot times and values in the follower's order."""

    times_ns: np.ndarray  # (K,) int64, knot 0 is the anchor
    positions: np.ndarray  # (K, J)
    velocities: np.ndarray | None  # (K, J) when the trajectory is Hermite-interpolated


@dataclass(frozen=True)
class _Pending:
    """A validated trajectory (already in joint order) waiting for its start time."""

    start_ns: int
    rel_ns: np.ndarray  # (P,) time_from_start
    positions: np.ndarray  # (P, J)
    velocities: np.ndarray | None


def split_trajectory(
    points: np.ndarray,
    times_s: Sequence[float],
    start_time_ns: int,
    groups: Sequence[tuple[Sequence[str], slice]],
) -> list[Trajectory]:
    """Robot-order rows ``points`` [K, J] at ``times_s`` as one trajectory per joint group.

    ``groups``: (joint names, their columns in a row) per controller, e.g. one per arm, as the
    policy node sends one ``JointTrajectory`` to each arm's joint_trajectory_controller.
    """
    if len(points) != len(times_s):
        raise TrajectoryError(f"{len(points)} points but {len(times_s)} times")
    return [
        Trajectory(
            tuple(names),
            tuple(
                TrajectoryPoint(tuple(float(x) for x in row[cols]), float(t))
                for row, t in zip(points, times_s, strict=True)
            ),
            int(start_time_ns),
        )
        for names, cols in groups
    ]


def _sample(active: _Active, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
    times = active.times_ns
    if t_ns <= times[0]:
        vel0 = active.velocities[0] if active.velocities is not None else None
        return active.positions[0].copy(), (
            vel0.copy() if vel0 is not None else np.zeros(active.positions.shape[1])
        )
    if t_ns >= times[-1]:
        return active.positions[-1].copy(), np.zeros(active.positions.shape[1])
    i = int(np.searchsorted(times, t_ns, side="right")) - 1
    t0, t1 = int(times[i]), int(times[i + 1])
    h = (t1 - t0) * 1e-9
    s = (t_ns - t0) / (t1 - t0)
    p0, p1 = active.positions[i], active.positions[i + 1]
    if active.velocities is None:
        return p0 + s * (p1 - p0), (p1 - p0) / h
    v0, v1 = active.velocities[i], active.velocities[i + 1]
    s2, s3 = s * s, s * s * s
    h00, h10, h01, h11 = 2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s, -2 * s3 + 3 * s2, s3 - s2
    pos = h00 * p0 + h10 * h * v0 + h01 * p1 + h11 * h * v1
    # d/dt of the Hermite basis (d/ds divided by h)
    d00, d10, d01, d11 = 6 * s2 - 6 * s, 3 * s2 - 4 * s + 1, -6 * s2 + 6 * s, 3 * s2 - 2 * s
    vel = (d00 * p0 + d01 * p1) / h + d10 * v0 + d11 * v1
    return pos, vel


class TrajectoryFollower:
    """Setpoint generator for one joint group with JTC trajectory and forward-command inputs.

    Thread-safe: ROS callbacks call :meth:`set_trajectory` / :meth:`set_command` while a
    control or physics loop calls :meth:`sample`.
    """

    def __init__(
        self, joint_names: Sequence[str], initial_positions: Sequence[float], clock: Clock
    ) -> None:
        names = tuple(joint_names)
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"joint names must be non-empty and unique: {list(names)}")
        self._names = names
        self._index = {n: i for i, n in enumerate(names)}
        self._clock = clock
        self._lock = threading.Lock()
        self._hold = self._vector(initial_positions, "initial_positions")
        self._active: _Active | None = None
        self._pending: _Pending | None = None

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self._names

    # ------------------------------------------------------------------ inputs

    def reset(self, positions: Sequence[float]) -> None:
        """Drop all trajectories and hold ``positions``."""
        vec = self._vector(positions, "positions")
        with self._lock:
            self._hold, self._active, self._pending = vec, None, None

    def set_command(self, positions: Sequence[float]) -> None:
        """Forward command: hold ``positions`` (in :attr:`joint_names` order) from now on."""
        self.reset(positions)

    def set_trajectory(self, trajectory: Trajectory) -> int:
        """Validate and start (or schedule) ``trajectory``; returns the number of points kept.

        Raises :class:`TrajectoryError` for malformed input and :class:`TrajectoryRejected`
        when every point is in the past; in both cases the running motion is unchanged.
        """
        rel_ns, pos, vel = self._reorder(trajectory)
        now = self._clock.now_ns()
        start = trajectory.start_time_ns if trajectory.start_time_ns > 0 else now
        end = start + int(rel_ns[-1])
        if end <= now:
            raise TrajectoryRejected(
                f"all {len(rel_ns)} points are in the past: the trajectory ended "
                f"{(now - end) * 1e-9:.3f} s ago"
            )
        pending = _Pending(start, rel_ns, pos, vel)
        with self._lock:
            if start > now:
                self._pending = pending
                return len(rel_ns)
            self._pending = None
            self._active = self._activate(pending, now)
            return len(self._active.times_ns) - 1

    # ------------------------------------------------------------------ output

    def sample(self, t_ns: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Setpoint positions and velocities at ``t_ns`` (default: the clock's now)."""
        t = self._clock.now_ns() if t_ns is None else t_ns
        with self._lock:
            if self._pending is not None and t >= self._pending.start_ns:
                self._active = self._activate(self._pending, self._pending.start_ns)
                self._pending = None
            if self._active is None:
                return self._hold.copy(), np.zeros(len(self._names))
            return _sample(self._active, t)

    @property
    def executing(self) -> bool:
        """True while a trajectory is pending or has points still ahead of now."""
        now = self._clock.now_ns()
        with self._lock:
            if self._pending is not None:
                return True
            return self._active is not None and now < int(self._active.times_ns[-1])

    # ------------------------------------------------------------------ internals

    def _current_locked(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        if self._active is None:
            return self._hold.copy(), np.zeros(len(self._names))
        return _sample(self._active, t_ns)

    def _activate(self, p: _Pending, anchor_ns: int) -> _Active:
        """Anchor ``p`` at the current setpoint at ``anchor_ns`` and drop its past points."""
        pos0, vel0 = self._current_locked(anchor_ns)
        abs_ns = p.start_ns + p.rel_ns
        keep = abs_ns > anchor_ns
        times = np.concatenate([[anchor_ns], abs_ns[keep]]).astype(np.int64)
        positions = np.vstack([pos0[None, :], p.positions[keep]])
        velocities = None
        if p.velocities is not None:
            velocities = np.vstack([vel0[None, :], p.velocities[keep]])
        # the follower now owns this motion; after it ends it holds the last point
        self._hold = positions[-1].copy()
        return _Active(times, positions, velocities)

    def _vector(self, values: Sequence[float], what: str) -> np.ndarray:
        vec = np.asarray(values, dtype=np.float64).reshape(-1)
        if vec.shape[0] != len(self._names):
            raise TrajectoryError(
                f"{what}: expected {len(self._names)} values for joints {list(self._names)}, "
                f"got {vec.shape[0]}"
            )
        if not np.all(np.isfinite(vec)):
            raise TrajectoryError(f"{what}: non-finite value in {vec.tolist()}")
        return vec

    def _reorder(self, traj: Trajectory) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        names = list(traj.joint_names)
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise TrajectoryError(
                f"unknown joint names {unknown}; this controller has {list(self._names)}"
            )
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise TrajectoryError(f"repeated joint names {dup}")
        missing = [n for n in self._names if n not in names]
        if missing:
            raise TrajectoryError(f"missing joint names {missing} (partial goals not allowed)")
        if not traj.points:
            raise TrajectoryError("trajectory has no points")
        order = [names.index(n) for n in self._names]
        has_vel = [p.velocities is not None and len(p.velocities) > 0 for p in traj.points]
        if any(has_vel) and not all(has_vel):
            raise TrajectoryError("velocities must be given for every point or for none")
        rel, pos, vel = [], [], []
        prev = -math.inf
        for k, pt in enumerate(traj.points):
            t = float(pt.time_from_start)
            if not math.isfinite(t) or t < 0:
                raise TrajectoryError(f"point {k}: time_from_start {t} must be finite and >= 0")
            if t <= prev:
                raise TrajectoryError(
                    f"point {k}: time_from_start {t} s is not after the previous point's {prev} s"
                )
            prev = t
            if len(pt.positions) != len(names):
                raise TrajectoryError(
                    f"point {k}: {len(pt.positions)} positions for {len(names)} joint names"
                )
            p = np.asarray(pt.positions, dtype=np.float64)[order]
            if not np.all(np.isfinite(p)):
                raise TrajectoryError(f"point {k}: non-finite position in {list(pt.positions)}")
            rel.append(round(t * 1e9))
            pos.append(p)
            if all(has_vel):
                assert pt.velocities is not None
                if len(pt.velocities) != len(names):
                    raise TrajectoryError(
                        f"point {k}: {len(pt.velocities)} velocities for {len(names)} joint names"
                    )
                v = np.asarray(pt.velocities, dtype=np.float64)[order]
                if not np.all(np.isfinite(v)):
                    raise TrajectoryError(
                        f"point {k}: non-finite velocity in {list(pt.velocities)}"
                    )
                vel.append(v)
        return (
            np.asarray(rel, dtype=np.int64),
            np.vstack(pos),
            np.vstack(vel) if vel else None,
        )
