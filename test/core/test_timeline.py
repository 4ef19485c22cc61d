"""core.timeline.ChunkTimeline: joint order, the latency step, order, the NaN latch."""

from __future__ import annotations

import numpy as np
import pytest

from moe_policy_ros.core.config import ExecutionConfig
from moe_policy_ros.core.timeline import (
    ADDED,
    LATE,
    NONFINITE,
    ChunkTimeline,
    TimedChunk,
    chunk_trajectory,
)

ROBOT = ["a", "b", "c"]
PERIOD_NS = 20_000_000


def _timeline(action_joints: list[str] | None = None, **execution: object) -> ChunkTimeline:
    execution.setdefault("merge", "replace")
    cfg = ExecutionConfig(**execution)  # type: ignore[arg-type]
    return ChunkTimeline(ROBOT, action_joints or ROBOT, cfg, PERIOD_NS / 1e9)


def _chunk(h: int, value: float) -> np.ndarray:
    return np.full((h, len(ROBOT)), value) + np.arange(h)[:, None]


def test_expand_puts_actions_in_robot_order_and_holds_the_rest() -> None:
    tl = _timeline(["c", "a"])
    out = tl.expand(np.array([[3.0, 1.0], [30.0, 10.0]]), np.array([0.1, 0.2, 0.3]))
    np.testing.assert_array_equal(out, [[1.0, 0.2, 3.0], [10.0, 0.2, 30.0]])


def test_unknown_action_joint_is_named() -> None:
    with pytest.raises(ValueError, match=r"\['z'\]"):
        _timeline(["a", "z"])


def test_chunk_starts_one_step_after_its_observation() -> None:
    tl = _timeline()
    tl.mark(10, 10 * PERIOD_NS)
    assert tl.offer(_chunk(4, 0.0), 10 * PERIOD_NS) == ADDED
    proposal, pending = tl.take(10)
    assert proposal is None
    assert pending is None  # step 10's command is not computed from it: it stays pending
    proposal, pending = tl.take(11)
    np.testing.assert_array_equal(proposal, [0.0, 0.0, 0.0])
    assert pending is not None and pending.start_step == 11  # its first command
    assert tl.take(12)[1] is None  # handed out once


@pytest.mark.parametrize(("compensate", "age_ns", "start"), [
    (True, 2 * PERIOD_NS, 9),  # taken at tick 8: its first action at 9
    (True, 2 * PERIOD_NS + 5, 9),  # 5 ns before tick 8: its first action due at ~tick 9
    (True, 3 * PERIOD_NS - 5, 9),  # just after tick 7: due just after tick 8, so at 9
    (True, PERIOD_NS // 2, 11),  # half a period before the mark: due after it, at 11
    (False, 2 * PERIOD_NS + 5, 11),
])
def test_latency_step_skips_the_whole_periods_of_an_observations_age(
    compensate: bool, age_ns: int, start: int
) -> None:
    """actions[0] is the command for one period after the observation (the training target
    of the observation at step t is the action at t + 1): an observation ``n`` whole periods
    old at the last mark starts ``n`` steps earlier, never at a tick before its first action
    is due."""
    tl = _timeline(latency_compensation=compensate)
    tl.mark(10, 10 * PERIOD_NS)
    stamp = 10 * PERIOD_NS - age_ns
    assert tl.start_step(stamp) == start
    assert tl.start_step(10 * PERIOD_NS + 5) == 11  # taken after the mark: the next step
    tl.offer(_chunk(6, 0.0), stamp)
    np.testing.assert_array_equal(tl.take(11)[0], np.full(3, 11.0 - start))


def test_out_of_order_chunk_is_trimmed_to_the_newest_start_or_refused() -> None:
    tl = _timeline(latency_compensation=False)
    tl.mark(10, 0)
    tl.offer(_chunk(4, 100.0), 0)  # starts at 11
    tl.mark(7, 0)  # an older observation's step
    assert tl.offer(_chunk(5, 0.0), 0) == ADDED  # starts at 8: steps 8..10 dropped
    _, pending = tl.take(11)
    assert pending is not None and pending.start_step == 11
    np.testing.assert_array_equal(pending.actions[0], [3.0, 3.0, 3.0])
    tl.mark(2, 0)
    assert tl.offer(_chunk(5, 0.0), 0) == LATE  # would start at 3: all before 11


def test_nonfinite_chunk_latches_one_nan_command_and_clears_the_queue() -> None:
    tl = _timeline()
    tl.offer(_chunk(10, 1.0), 0)
    bad = _chunk(10, 1.0)
    bad[3, 1] = np.nan
    assert tl.offer(bad, 0) == NONFINITE
    proposal, _ = tl.take(1)
    assert proposal is not None and np.all(np.isnan(proposal))
    assert tl.take(2)[0] is None  # queue cleared; the latch fires once


def test_clear_forgets_chunks_mark_and_latch() -> None:
    tl = _timeline()
    tl.mark(50, 50 * PERIOD_NS)
    tl.offer(_chunk(3, 0.0), 50 * PERIOD_NS)
    tl.offer(np.full((3, 3), np.inf), 0)
    tl.clear()
    assert tl.take(51) == (None, None)
    assert tl.start_step(0) == 1


def test_chunk_trajectory_times_from_the_observation_and_limits_the_rest() -> None:
    chunk = TimedChunk(np.arange(12.0).reshape(6, 2), start_step=10, stamp_ns=0)
    sent = np.array([-1.0, -1.0])
    seen: list[np.ndarray] = []

    def limit(rest: np.ndarray) -> np.ndarray:
        seen.append(rest)
        return rest * 10

    rows, times = chunk_trajectory(chunk, 12, sent, 0.02, limit)
    np.testing.assert_array_equal(seen[0], chunk.actions[3:])  # steps 13.. of the chunk
    np.testing.assert_array_equal(rows, np.vstack([sent, chunk.actions[3:] * 10]))
    assert times == pytest.approx([0.06, 0.08, 0.10, 0.12])
    # a chunk that starts after this step: all of it, from time 0
    rows, times = chunk_trajectory(chunk, 7, sent, 0.02, lambda r: r)
    assert rows.shape == (7, 2) and times[0] == 0.0


def _held_chunks(merge: str) -> ChunkTimeline:
    """Three chunks computed while the robot stood still (HOLD): each plans the motion from
    its own observation, 0, 5 and 10 steps apart."""
    tl = _timeline(merge=merge)
    for k, value in enumerate((0.0, 100.0, 200.0)):
        tl.mark(5 * k, 5 * k * PERIOD_NS)
        assert tl.offer(_chunk(25, value), 5 * k * PERIOD_NS) == ADDED
    return tl


@pytest.mark.parametrize("merge", ["ensemble", "replace", "blend"])
def test_engage_from_hold_starts_the_newest_chunk_at_the_engage_step(merge: str) -> None:
    tl = _held_chunks(merge)
    tl.mark(14, 14 * PERIOD_NS)
    assert tl.engage(14, held=True)
    proposal, pending = tl.take(14)
    # the newest plan's first action, alone (not mixed with plans 5 and 10 steps further on)
    np.testing.assert_array_equal(proposal, [200.0] * 3)
    assert pending is not None and pending.start_step == 14
    np.testing.assert_array_equal(tl.take(15)[0], [201.0] * 3)


def test_without_engage_the_held_chunks_mix_plans_at_different_steps() -> None:
    tl = _held_chunks("ensemble")  # what engage exists to avoid
    tl.mark(14, 14 * PERIOD_NS)
    proposal, _ = tl.take(14)
    assert not np.allclose(proposal, [200.0] * 3)
    assert 100.0 < proposal[0] < 200.0


def test_engage_from_a_moving_robot_keeps_the_newest_chunk_where_it_is() -> None:
    tl = _held_chunks("ensemble")
    tl.mark(14, 14 * PERIOD_NS)
    assert tl.engage(14, held=False)  # TELEOP: the robot moved since the observation
    np.testing.assert_array_equal(tl.take(14)[0], [203.0] * 3)  # chunk from 11: row 3


def test_engage_without_a_chunk_changes_nothing() -> None:
    tl = _timeline()
    assert not tl.engage(3, held=True)
    assert tl.take(3) == (None, None)
