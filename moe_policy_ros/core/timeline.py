"""The chunk timeline: from a policy's action chunk to the command of each control step.

One object owns everything between "the policy produced a chunk" and "the control loop asks
for step ``s``", so the policy node and the in-process evaluator (:mod:`moe_policy_ros.rollout`)
run the same code:

* **Joint order.** A bundle commands a subset of the robot's joints, in its own order;
  :meth:`ChunkTimeline.expand` puts a chunk in the robot's order, and the joints the policy
  does not command hold their measured position.
* **The latency step.** The chunk of an observation taken at step ``s`` starts at ``s + 1``
  (``actions[i]`` is for step ``s + 1 + i``). The control loop marks each tick with its ROS
  time (:meth:`ChunkTimeline.mark`); with latency compensation, an observation stamped ``n``
  whole periods before the last mark is placed ``n`` steps earlier, so the steps that elapsed
  while it was being processed are skipped instead of executed late. Whole periods, not
  started ones: ``actions[0]`` is the command for one period after the observation (the
  training target of an observation at step ``t`` is the action at ``t + 1``), so a frame
  taken 1 ms before a tick has its first action at the tick after, never at that tick. In
  stream mode with ``revise_on_arrival`` a chunk due by the next tick sets the setpoint on
  its way to that tick's command as soon as it arrives (:meth:`ChunkTimeline.revise`).
* **Order.** A chunk from an observation older than the newest chunk's (inputs arrived out of
  order) keeps step alignment by dropping its steps before the newest start; a chunk that
  would be dropped whole is refused (:data:`LATE`).
* **Engage.** Chunks computed while the robot was not following them (HOLD, TELEOP) would
  merge plans that each start the motion at a different step; at the switch to AUTONOMY
  :meth:`ChunkTimeline.engage` keeps only the newest, and from HOLD (the robot stood still
  since its observation) starts it at the engage step.
* **Non-finite output.** A chunk with NaN/Inf never reaches the scheduler: it is latched and
  the next :meth:`ChunkTimeline.take` returns an all-NaN command (the safety filter turns that
  into ERROR + HOLD) and clears the queued chunks.

Thread-safe: the inference worker calls :meth:`offer`, the control loop :meth:`mark` and
:meth:`take`, under one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from moe_policy_ros.core.config import ExecutionConfig
from moe_policy_ros.core.scheduler import ChunkScheduler

__all__ = [
    "ADDED", "LATE", "NONFINITE", "ChunkTimeline", "Offer", "TimedChunk", "chunk_trajectory",
]

Offer = Literal["added", "late", "nonfinite"]
ADDED: Offer = "added"
LATE: Offer = "late"
NONFINITE: Offer = "nonfinite"


@dataclass(frozen=True)
class TimedChunk:
    """A chunk in robot joint order, placed on the control-step timeline."""

    actions: np.ndarray  # [H, J] robot joint order
    start_step: int  # actions[i] is for control step start_step + i
    stamp_ns: int  # observation time (ROS clock)


class ChunkTimeline:
    """Policy chunks -> per-step commands for the control loop; see the module docstring."""

    def __init__(
        self,
        robot_joints: Sequence[str],
        action_joints: Sequence[str],
        execution: ExecutionConfig,
        period_s: float,
    ) -> None:
        robot = list(robot_joints)
        unknown = [j for j in action_joints if j not in robot]
        if unknown:
            raise ValueError(f"action joints {unknown} are not robot joints {robot}")
        if not period_s > 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.num_joints = len(robot)
        self.action_idx = np.array([robot.index(j) for j in action_joints], dtype=np.int64)
        self.latency_compensation = bool(execution.latency_compensation)
        self.period_ns = round(period_s * 1e9)
        self.scheduler = ChunkScheduler.from_config(execution, len(robot))
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        """Forget every chunk, the latch and the step mark (a new activation or episode)."""
        with self._lock:
            self.scheduler.clear()
            self._anchor = (0, 0)
            self._pending: TimedChunk | None = None
            self._newest: TimedChunk | None = None  # the last chunk added
            self._nan_latched = False

    # ------------------------------------------------------------------ inference side

    def expand(self, actions: np.ndarray, measured: np.ndarray) -> np.ndarray:
        """``[H, A]`` in the bundle's action order -> ``[H, J]`` in the robot's order."""
        out = np.repeat(np.asarray(measured, np.float64)[None, :], actions.shape[0], axis=0)
        out[:, self.action_idx] = actions
        return out

    def start_step(self, obs_stamp_ns: int) -> int:
        """The control step a chunk from an observation stamped ``obs_stamp_ns`` starts at."""
        with self._lock:
            step, ros_ns = self._anchor
        if self.latency_compensation:
            step -= max(0, (ros_ns - obs_stamp_ns) // self.period_ns)
        return step + 1

    def committed(self, step: int, horizon: int) -> np.ndarray:
        """What the queued chunks command for ``step .. step + horizon - 1`` (robot order;
        fewer rows where they end): the rtc target (``ChunkScheduler.committed``)."""
        with self._lock:
            return self.scheduler.committed(step, horizon)

    @property
    def current_step(self) -> int:
        """The control step of the last :meth:`mark` (0 before any)."""
        with self._lock:
            return self._anchor[0]

    def offer(
        self,
        actions: np.ndarray,
        obs_stamp_ns: int,
        start_step: int | None = None,
        guided: bool = False,
    ) -> Offer:
        """Queue a robot-order chunk for the observation stamped ``obs_stamp_ns``.

        ``start_step``: where it starts (default :meth:`start_step` of the stamp now; rtc
        passes the step its guidance was computed for, so target and chunk stay aligned).
        ``guided``: sampled with rtc guidance (``ChunkScheduler.add_guided_chunk``).
        """
        start = self.start_step(obs_stamp_ns) if start_step is None else int(start_step)
        if not np.all(np.isfinite(actions)):
            with self._lock:
                self._nan_latched = True
            return NONFINITE
        with self._lock:
            newest = self.scheduler.newest_start
            if newest is not None and start < newest:
                drop = newest - start
                if drop >= actions.shape[0]:
                    return LATE
                actions, start = actions[drop:], newest
            if guided:
                self.scheduler.add_guided_chunk(start, actions)
            else:
                self.scheduler.add_chunk(start, actions)
            self._pending = self._newest = TimedChunk(actions, start, obs_stamp_ns)
        return ADDED

    # ------------------------------------------------------------------ control side

    def engage(self, step: int, held: bool) -> bool:
        """The robot switches to following the chunks at ``step``: keep only the newest chunk;
        ``held`` (the robot stood still since that chunk's observation) starts it at ``step``,
        otherwise it keeps its latency-compensated place. False when there is no chunk."""
        with self._lock:
            kept = self.scheduler.keep_newest(step if held else None)
            if kept and held and self._newest is not None:
                # the first command from it is due now (chunk mode sends it as a trajectory)
                self._pending = TimedChunk(self._newest.actions, step, self._newest.stamp_ns)
        return kept

    def mark(self, step: int, now_ns: int) -> None:
        """The control loop is at ``step`` at ROS time ``now_ns`` (for the latency step)."""
        with self._lock:
            self._anchor = (step, now_ns)

    def take(self, step: int) -> tuple[np.ndarray | None, TimedChunk | None]:
        """The command proposed for ``step`` and the chunk added since the last take, once
        its first step is due (``start_step <= step``: this command is the first computed
        from it; until then it stays pending).

        The proposal is None when no chunk covers the step, and all-NaN once after a
        non-finite chunk (the queue is cleared then).
        """
        with self._lock:
            proposal = self.scheduler.action_at(step)
            self.scheduler.prune(step)
            pending = self._pending
            if pending is not None and pending.start_step <= step:
                self._pending = None
            else:
                pending = None
            if self._nan_latched:
                self._nan_latched = False
                self.scheduler.clear()
                self._pending = pending = None
                proposal = np.full(self.num_joints, np.nan)
        return proposal, pending

    def revise(self, step: int) -> tuple[np.ndarray, TimedChunk] | None:
        """Stream mode's early send, between ticks: the chunk added since the last take when
        it covers ``step`` (the next tick's) and the command now proposed for that step with
        it merged in; None otherwise, or after a non-finite chunk (the next :meth:`take`
        reports it)."""
        with self._lock:
            pending = self._due(step)
            if pending is None or step >= pending.start_step + len(pending.actions):
                return None
            self._pending = None
            proposal = self.scheduler.action_at(step)
            assert proposal is not None  # the pending chunk itself covers the step
            return proposal, pending

    def take_pending(self, step: int) -> TimedChunk | None:
        """The chunk added since the last take when its first step is due by ``step`` (the
        chunk mode's early send, between ticks); None otherwise, or after a non-finite chunk
        (the next :meth:`take` reports it)."""
        with self._lock:
            pending = self._due(step)
            if pending is not None:
                self._pending = None
            return pending

    def _due(self, step: int) -> TimedChunk | None:
        """The pending chunk when its first step is due by ``step`` and no non-finite chunk
        is latched (under the lock)."""
        pending = self._pending
        if pending is None or pending.start_step > step or self._nan_latched:
            return None
        return pending


def chunk_trajectory(
    chunk: TimedChunk,
    step: int,
    sent: np.ndarray,
    period_s: float,
    limit: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, list[float]]:
    """A chunk as one trajectory from control ``step`` on (chunk execution mode).

    Rows: ``sent`` (this step's filtered command), then the chunk's steps after ``step``
    through ``limit`` (the safety filter's limits along the chunk). Times (s) count from the
    chunk's observation stamp, so a joint_trajectory_controller drops the points already in
    the past: row 0 is at ``(step - start + 1) * period`` (at least 0), then one period apart.
    """
    first = max(step + 1, chunk.start_step)
    points = limit(chunk.actions[first - chunk.start_step:])
    base_s = max((step - chunk.start_step + 1) * period_s, 0.0)
    times = [base_s + i * period_s for i in range(points.shape[0] + 1)]
    return np.vstack([sent[None, :], points]), times
