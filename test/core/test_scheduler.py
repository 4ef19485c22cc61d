"""Chunk scheduler: merge modes with hand-computed numbers, latency skip, invariants."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from moe_policy_ros.core.config import ExecutionConfig
from moe_policy_ros.core.scheduler import ChunkScheduler, DelayEstimator


def const_chunk(value: float, horizon: int, action_dim: int = 2) -> np.ndarray:
    return np.full((horizon, action_dim), value, dtype=np.float64)


def ramp_chunk(first: float, horizon: int, action_dim: int = 2) -> np.ndarray:
    """actions[i] = first + i in every dimension (so the step is readable from the value)."""
    col = first + np.arange(horizon, dtype=np.float64)
    return np.repeat(col[:, None], action_dim, axis=1)


def at(s: ChunkScheduler, step: int) -> float:
    a = s.action_at(step)
    assert a is not None, f"step {step} not covered"
    assert a.dtype == np.float64
    assert np.all(a == a[0])
    return float(a[0])


# --------------------------------------------------------------------------- replace


def test_replace_newest_covering_chunk_wins() -> None:
    s = ChunkScheduler(2, merge="replace")
    s.add_chunk(0, ramp_chunk(0.0, 5))  # steps 0..4 -> 0..4
    s.add_chunk(3, ramp_chunk(100.0, 4))  # steps 3..6 -> 100..103
    assert [at(s, t) for t in range(7)] == [0, 1, 2, 100, 101, 102, 103]
    assert s.action_at(7) is None
    assert s.action_at(-1) is None


def test_latency_skip_first_actions_of_a_late_chunk() -> None:
    """A chunk stamped at step 10 that arrives at step 13 is executed from actions[3]."""
    for merge in ("replace", "ensemble", "blend"):
        s = ChunkScheduler(2, merge=merge)  # type: ignore[arg-type]
        chunk = ramp_chunk(1000.0, 8)  # actions[i] = 1000 + i, for step 10 + i
        s.add_chunk(10, chunk)  # computed from the observation at step 10
        current = 13  # inference took three control periods
        assert at(s, current) == 1003.0, merge
        assert at(s, current + 1) == 1004.0, merge
        assert s.remaining(current) == 5  # steps 13..17
        assert s.action_at(18) is None


# --------------------------------------------------------------------------- ensemble


def test_ensemble_act_weights_oldest_first() -> None:
    # decay ln 2 -> weights 1, 1/2, 1/4 for the oldest, next, newest covering chunk.
    s = ChunkScheduler(2, merge="ensemble", ensemble_decay=math.log(2.0))
    s.add_chunk(0, const_chunk(0.0, 10))
    s.add_chunk(1, const_chunk(3.0, 10))
    s.add_chunk(2, const_chunk(6.0, 3))  # steps 2..4
    assert at(s, 0) == pytest.approx(0.0)
    assert at(s, 1) == pytest.approx((1 * 0.0 + 0.5 * 3.0) / 1.5)  # 1.0
    assert at(s, 2) == pytest.approx((1 * 0.0 + 0.5 * 3.0 + 0.25 * 6.0) / 1.75)  # 12/7
    assert at(s, 5) == pytest.approx((1 * 0.0 + 0.5 * 3.0) / 1.5)  # newest ended


def test_ensemble_rank_is_among_covering_chunks() -> None:
    s = ChunkScheduler(1, merge="ensemble", ensemble_decay=math.log(2.0))
    s.add_chunk(0, const_chunk(0.0, 2, 1))  # steps 0..1
    s.add_chunk(1, const_chunk(3.0, 5, 1))  # steps 1..5
    s.add_chunk(2, const_chunk(9.0, 5, 1))  # steps 2..6
    # Step 2: the first chunk has ended, so the second is rank 0 (weight 1), the third 1/2.
    assert at(s, 2) == pytest.approx((3.0 + 0.5 * 9.0) / 1.5)  # 5.0


def test_ensemble_zero_decay_is_plain_mean_per_dimension() -> None:
    s = ChunkScheduler(2, merge="ensemble", ensemble_decay=0.0)
    s.add_chunk(0, np.array([[1.0, -1.0], [2.0, -2.0]]))
    s.add_chunk(1, np.array([[4.0, 8.0], [5.0, 9.0]]))
    a = s.action_at(1)
    assert a is not None
    np.testing.assert_allclose(a, np.array([3.0, 3.0]))  # mean of (2,-2) and (4,8)


def test_ensemble_default_decay_value() -> None:
    s = ChunkScheduler(1)  # ensemble, decay 0.01
    s.add_chunk(0, const_chunk(0.0, 4, 1))
    s.add_chunk(0, const_chunk(1.0, 4, 1))
    w1 = math.exp(-0.01)
    assert at(s, 0) == pytest.approx(w1 / (1.0 + w1))


# --------------------------------------------------------------------------- blend


def test_blend_ramps_from_first_executed_step() -> None:
    s = ChunkScheduler(2, merge="blend", blend_steps=4)
    s.add_chunk(0, const_chunk(0.0, 20))
    assert at(s, 0) == 0.0
    assert at(s, 1) == 0.0
    s.add_chunk(2, const_chunk(10.0, 20))
    # alpha = 1/4, 2/4, 3/4, 1 at steps 2..5, then the new chunk alone.
    assert [at(s, t) for t in range(2, 8)] == [2.5, 5.0, 7.5, 10.0, 10.0, 10.0]


def test_blend_ramp_starts_late_for_a_late_chunk() -> None:
    s = ChunkScheduler(2, merge="blend", blend_steps=4)
    s.add_chunk(0, ramp_chunk(0.0, 20))  # old: value = step
    for t in range(4):
        assert at(s, t) == t
    s.add_chunk(2, ramp_chunk(100.0, 20))  # stamped at 2, arrives after step 3 ran
    # First executed step 4 -> new value 102; alpha 1/4, 1/2, 3/4, 1.
    expected = [
        0.75 * 4 + 0.25 * 102,
        0.5 * 5 + 0.5 * 103,
        0.25 * 6 + 0.75 * 104,
        105.0,
        106.0,
    ]
    assert [at(s, t) for t in range(4, 9)] == pytest.approx(expected)


def test_blend_falls_back_to_newest_where_old_does_not_cover() -> None:
    s = ChunkScheduler(1, merge="blend", blend_steps=4)
    s.add_chunk(0, const_chunk(0.0, 4, 1))  # steps 0..3 only
    at(s, 0)
    s.add_chunk(2, const_chunk(10.0, 10, 1))
    assert at(s, 2) == 2.5
    assert at(s, 3) == 5.0
    assert at(s, 4) == 10.0  # alpha would be 3/4, but the old chunk has ended


def test_blend_first_chunk_and_blend_steps_one() -> None:
    s = ChunkScheduler(1, merge="blend", blend_steps=1)
    s.add_chunk(0, const_chunk(1.0, 3, 1))
    assert at(s, 0) == 1.0  # nothing to blend from
    s.add_chunk(1, const_chunk(7.0, 3, 1))
    assert at(s, 1) == 7.0  # blend_steps=1 is a hard switch


def test_blend_is_bumpless_when_a_chunk_arrives_mid_crossfade() -> None:
    s = ChunkScheduler(1, merge="blend", blend_steps=4)
    s.add_chunk(0, const_chunk(0.0, 20, 1))
    at(s, 0)
    s.add_chunk(1, const_chunk(8.0, 20, 1))
    assert at(s, 1) == 2.0  # 0.75 * 0 + 0.25 * 8
    s.add_chunk(2, const_chunk(16.0, 20, 1))
    # old = what would be sent without the newest: 0.5 * 0 + 0.5 * 8 = 4; new 16, alpha 1/4.
    assert at(s, 2) == pytest.approx(0.75 * 4.0 + 0.25 * 16.0)  # 7.0
    # Step 3: old = 0.25 * 0 + 0.75 * 8 = 6; alpha 1/2 -> 11.
    assert at(s, 3) == pytest.approx(11.0)


def test_blend_skips_a_chunk_superseded_before_execution() -> None:
    s = ChunkScheduler(1, merge="blend", blend_steps=2)
    s.add_chunk(0, const_chunk(0.0, 20, 1))
    at(s, 0)
    s.add_chunk(1, const_chunk(50.0, 20, 1))  # never executed ...
    s.add_chunk(1, const_chunk(10.0, 20, 1))  # ... replaced at once
    assert at(s, 1) == 5.0  # crossfade from the executed chunk (0), not from 50
    assert at(s, 2) == 10.0


# --------------------------------------------------------------------------- bookkeeping


def test_remaining_counts_contiguous_coverage() -> None:
    s = ChunkScheduler(1, merge="replace")
    assert s.remaining(0) == 0
    s.add_chunk(0, const_chunk(0.0, 5, 1))  # 0..4
    s.add_chunk(3, const_chunk(0.0, 5, 1))  # 3..7
    s.add_chunk(10, const_chunk(0.0, 2, 1))  # 10..11, after a gap
    assert s.remaining(0) == 8
    assert s.remaining(6) == 2
    assert s.remaining(8) == 0
    assert s.remaining(10) == 2
    assert s.remaining(12) == 0


def test_prune_drops_chunks_that_ended() -> None:
    s = ChunkScheduler(1, merge="ensemble", ensemble_decay=0.0)
    s.add_chunk(0, const_chunk(0.0, 3, 1))  # 0..2
    s.add_chunk(2, const_chunk(6.0, 5, 1))  # 2..6
    assert len(s) == 2
    s.prune(2)
    assert len(s) == 2  # the first still covers step 2
    assert at(s, 2) == 3.0
    s.prune(3)
    assert len(s) == 1
    assert s.action_at(2) == pytest.approx([6.0])  # only the second is left
    s.prune(7)
    assert len(s) == 0
    assert s.action_at(6) is None
    assert s.newest_start == 2  # pruning keeps the ordering guard
    with pytest.raises(ValueError, match="goes backwards"):
        s.add_chunk(1, const_chunk(0.0, 3, 1))


def test_max_chunks_drops_the_oldest() -> None:
    s = ChunkScheduler(1, merge="ensemble", ensemble_decay=0.0, max_chunks=2)
    s.add_chunk(0, const_chunk(0.0, 10, 1))
    s.add_chunk(1, const_chunk(3.0, 10, 1))
    s.add_chunk(2, const_chunk(6.0, 10, 1))
    assert len(s) == 2
    assert at(s, 2) == 4.5  # mean of 3 and 6: the chunk with 0 was dropped
    assert s.action_at(0) is None


def test_clear_and_newest_start() -> None:
    s = ChunkScheduler(1)
    assert s.newest_start is None
    s.add_chunk(5, const_chunk(1.0, 3, 1))
    s.add_chunk(5, const_chunk(1.0, 3, 1))  # same start is not backwards
    assert s.newest_start == 5
    s.clear()
    assert s.newest_start is None
    assert len(s) == 0
    assert s.action_at(5) is None
    s.add_chunk(0, const_chunk(2.0, 3, 1))  # a new episode may restart the steps
    assert at(s, 0) == 2.0


def test_added_actions_are_copied_and_results_are_copies() -> None:
    s = ChunkScheduler(2, merge="replace")
    buf = const_chunk(1.0, 3)
    s.add_chunk(0, buf)
    buf[:] = 99.0
    a = s.action_at(0)
    assert a is not None
    np.testing.assert_array_equal(a, [1.0, 1.0])
    a[:] = -5.0
    np.testing.assert_array_equal(s.action_at(0), [1.0, 1.0])


def test_from_config() -> None:
    cfg = ExecutionConfig(merge="blend", blend_steps=7, ensemble_decay=0.2)
    s = ChunkScheduler.from_config(cfg, action_dim=14, max_chunks=4)
    assert (s.action_dim, s.merge, s.blend_steps, s.ensemble_decay, s.max_chunks) == (
        14,
        "blend",
        7,
        0.2,
        4,
    )


# --------------------------------------------------------------------------- invariants


def test_bad_chunks_raise_and_leave_state_unchanged() -> None:
    s = ChunkScheduler(2, merge="replace")
    s.add_chunk(4, const_chunk(1.0, 3))
    with pytest.raises(ValueError, match=r"shape \[H >= 1, 2\], got \(3, 3\)"):
        s.add_chunk(5, np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"got \(6,\)"):
        s.add_chunk(5, np.zeros(6))
    with pytest.raises(ValueError, match=r"got \(0, 2\)"):
        s.add_chunk(5, np.zeros((0, 2)))
    nan = const_chunk(0.0, 3)
    nan[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"actions\[1, 0\] is nan"):
        s.add_chunk(5, nan)
    inf = const_chunk(0.0, 3)
    inf[2, 1] = -np.inf
    with pytest.raises(ValueError, match=r"actions\[2, 1\] is -inf"):
        s.add_chunk(5, inf)
    with pytest.raises(ValueError, match=r"start_step 3 goes backwards: .* starts at 4"):
        s.add_chunk(3, const_chunk(0.0, 3))
    with pytest.raises(ValueError, match=r"start_step must be an integer control step"):
        s.add_chunk(4.5, const_chunk(0.0, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"step must be an integer control step, got 1.0"):
        s.action_at(1.0)  # type: ignore[arg-type]
    assert len(s) == 1
    assert s.newest_start == 4
    assert at(s, 4) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action_dim": 0}, r"action_dim must be >= 1, got 0"),
        ({"action_dim": 2, "merge": "average"}, r"merge must be .* got 'average'"),
        ({"action_dim": 2, "ensemble_decay": -1.0}, r"ensemble_decay .* got -1.0"),
        ({"action_dim": 2, "ensemble_decay": math.nan}, r"ensemble_decay .* got nan"),
        ({"action_dim": 2, "blend_steps": 0}, r"blend_steps must be .* got 0"),
        ({"action_dim": 2, "max_chunks": 0}, r"max_chunks must be .* got 0"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChunkScheduler(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("merge", ["replace", "ensemble", "blend"])
def test_thread_safety_smoke(merge: str) -> None:
    """A producer adds chunks while a consumer executes steps; invariants hold throughout.

    Each chunk's actions equal their own control step, so every merge of chunks covering a
    step must return exactly that step (a weighted mean of equal values), whatever the
    interleaving. When the producer runs ahead and the oldest chunks are dropped, the
    consumer jumps to the newest chunk's start (as a control loop that fell behind would).
    """
    s = ChunkScheduler(3, merge=merge, blend_steps=3, max_chunks=4)  # type: ignore[arg-type]
    horizon, n_chunks, stride = 12, 300, 4
    last_start = (n_chunks - 1) * stride
    s.add_chunk(0, ramp_chunk(0.0, horizon, 3))
    start = threading.Barrier(2)
    done = threading.Event()
    errors: list[BaseException] = []
    executed: list[int] = []

    def producer() -> None:
        try:
            start.wait()
            for k in range(1, n_chunks):
                s.add_chunk(k * stride, ramp_chunk(float(k * stride), horizon, 3))
        except BaseException as err:
            errors.append(err)
        finally:
            done.set()

    give_up = time.monotonic() + 50.0  # never leave a spinning thread behind

    def consumer() -> None:
        try:
            start.wait()
            step = 0
            while step < last_start + horizon and time.monotonic() < give_up:
                finished = done.is_set()  # read before querying: no chunk can come later
                a = s.action_at(step)
                left = s.remaining(step)
                assert len(s) <= 4
                if a is not None:
                    np.testing.assert_allclose(a, [step] * 3, rtol=0, atol=1e-9)
                    assert left >= 1 or not finished  # the producer may act between calls
                    executed.append(step)
                    step += 1
                    s.prune(step)
                    continue
                assert left == 0 or not finished  # (two calls, two lock holds)
                newest = s.newest_start
                assert newest is not None
                if newest > step:
                    step = newest  # fell behind: the chunks for this step were dropped
                else:
                    assert not finished, f"step {step} uncovered after the last chunk"
        except BaseException as err:
            errors.append(err)

    threads = [
        threading.Thread(target=producer, daemon=True),
        threading.Thread(target=consumer, daemon=True),
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    assert errors == []
    assert s.newest_start == last_start
    assert executed == sorted(set(executed))
    assert executed[-1] == last_start + horizon - 1


# --------------------------------------------------------------------------- rtc side


def test_rtc_merge_replaces_and_committed_is_what_would_run() -> None:
    s = ChunkScheduler(1, merge="rtc")
    with pytest.raises(ValueError, match="RTC guidance"):
        s.add_chunk(0, np.arange(10.0)[:, None])
    s.add_guided_chunk(0, np.arange(10.0)[:, None])
    assert at(s, 0) == 0.0
    s.add_guided_chunk(4, 100.0 + np.arange(6.0)[:, None])  # covers 4..9
    np.testing.assert_array_equal(s.committed(2, 20)[:, 0], [2, 3, 100, 101, 102, 103, 104,
                                                              105])  # fmt: skip
    assert s.committed(2, 3).shape == (3, 1)
    assert s.committed(10, 5).shape == (0, 1)  # nothing covers step 10
    assert at(s, 5) == 101.0  # the new chunk wins at once, no crossfade


def test_committed_follows_the_merge_rule_without_side_effects() -> None:
    s = ChunkScheduler(1, merge="blend", blend_steps=4)
    s.add_chunk(0, np.zeros((10, 1)))
    at(s, 0)
    s.add_chunk(2, np.ones((10, 1)))
    ramp = s.committed(3, 4)[:, 0]  # as if the new chunk first ran at step 3
    np.testing.assert_allclose(ramp, [0.25, 0.5, 0.75, 1.0])
    assert at(s, 5) == 0.25  # committed() did not start the crossfade; step 5 does
    with pytest.raises(ValueError, match="horizon"):
        s.committed(0, -1)


def test_delay_estimator_is_the_recent_maximum() -> None:
    est = DelayEstimator(window=3, initial=2)
    assert est.estimate() == 2
    for d in (1, 5, 2, 1):
        est.record(d)
    assert est.estimate() == 5  # 5 is among the last 3
    est.record(1)
    assert est.estimate() == 2  # 5 has left the window
    est.reset()
    assert est.estimate() == 2
    with pytest.raises(ValueError, match="delay_steps"):
        est.record(-1)
    with pytest.raises(ValueError, match="window"):
        DelayEstimator(window=0)
