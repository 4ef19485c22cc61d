"""core.phase: where the control ticks should fall among the chunks' arrivals."""

from __future__ import annotations

import numpy as np
import pytest

from moe_policy_ros.core.phase import TickAligner, best_tick_phase, longest_wait_ns

MS = 1_000_000
T = 20 * MS  # 50 Hz control


def _arrivals(rate_hz: float, n: int, offset_ns: int, noise_ns: int, seed: int = 0) -> list[int]:
    """Chunk arrivals of a camera at ``rate_hz``: its frames plus a fixed processing time
    ``offset_ns`` and up to ``noise_ns`` of jitter."""
    rng = np.random.default_rng(seed)
    period = 1e9 / rate_hz
    return [round(k * period + offset_ns + rng.uniform(0, noise_ns)) for k in range(n)]


def _run(aligner: TickAligner, arrivals: list[int], origin: int) -> tuple[int, list[int]]:
    """Feed ``arrivals`` applying every shift at once; the final origin and each wait."""
    waits = []
    for t in arrivals:
        waits.append((origin - t) % T)
        shift = aligner.arrived(t, origin)
        if shift is not None:
            origin += shift
    return origin, waits


def test_the_longest_wait_is_to_the_next_tick() -> None:
    assert longest_wait_ns([1 * MS, 15 * MS], 0, T) == 19 * MS
    assert longest_wait_ns([0], 0, T) == 0  # an arrival at a tick takes it
    tick, wait = best_tick_phase([1 * MS, 2 * MS, 12 * MS], T, margin_ns=MS)
    # empty stretches 1 -> 2, 2 -> 12, 12 -> 21 ms: the tick 1 ms after 2, and the arrival
    # at 12 waits longest, to 23
    assert (tick, wait) == (3 * MS, 11 * MS)


def test_three_clusters_wait_at_most_two_thirds_of_a_period_plus_the_margin() -> None:
    """15 Hz camera, 50 Hz control: arrivals in 3 clusters 6.7 ms apart; one cluster lands
    0.5 ms after a tick and waits 19.5 ms until the grid moves."""
    aligner = TickAligner(T, margin_ns=MS)
    arrivals = _arrivals(15.0, 600, offset_ns=500_000, noise_ns=400_000)
    _, waits = _run(aligner, arrivals, origin=0)
    assert max(waits[:40]) >= 19 * MS  # before: a cluster just after a tick
    assert aligner.shifts == 1  # one shift, then it stays
    assert max(waits[60:]) <= (T * 2) // 3 + MS + 400_000
    assert min(waits[60:]) >= 0.5 * MS  # no arrival just misses its tick


def test_one_delayed_frame_does_not_drag_the_grid_to_another_cluster() -> None:
    """A frame 5 ms late lands just after its cluster's tick (it waits a period): one
    outlier in the window, and the grid stays where the other 44 arrivals put it."""
    aligner = TickAligner(T, margin_ns=MS)
    arrivals = _arrivals(15.0, 300, offset_ns=500_000, noise_ns=400_000)
    origin, _ = _run(aligner, arrivals[:150], origin=0)
    assert aligner.shifts == 1
    late = arrivals[150:]
    late[0] += 5 * MS
    _, waits = _run(aligner, late, origin)
    assert aligner.shifts == 1
    assert sorted(waits)[-2] <= (T * 2) // 3 + MS + 400_000  # only the late frame waited


@pytest.mark.parametrize("drift", [1e-4, -1e-4])
def test_a_drifting_camera_clock_is_followed_before_an_arrival_crosses_a_tick(
    drift: float,
) -> None:
    """The camera's clock 100 ppm off the control loop's: its clusters move 1 ms every 150
    frames, toward the ticks or away from them; the grid follows, and no arrival crosses a
    tick (a crossing would wait a whole period)."""
    aligner = TickAligner(T, margin_ns=MS)
    arrivals = _arrivals(15.0 * (1 + drift), 3000, offset_ns=500_000, noise_ns=400_000)
    _, waits = _run(aligner, arrivals, origin=0)
    assert aligner.shifts >= 10  # 20 ms of drift over the run: followed in steps
    # drifting away from the tick, the wait grows by up to the hysteresis before a shift, and
    # the window's oldest arrivals are up to its length of drift behind
    window_drift = 45 * 1e9 / 15.0 * abs(drift)
    assert max(waits[60:]) <= (T * 2) // 3 + MS + 400_000 + aligner.hysteresis_ns + window_drift
    assert min(waits[60:]) > 0


def test_one_cluster_waits_about_the_margin() -> None:
    """An inference timer at 10 Hz on a 50 Hz grid: every chunk at the same phase."""
    aligner = TickAligner(T, margin_ns=MS)
    arrivals = _arrivals(10.0, 200, offset_ns=3 * MS, noise_ns=500_000)
    _, waits = _run(aligner, arrivals, origin=0)
    assert max(waits[:40]) >= 16 * MS
    assert max(waits[60:]) <= MS + 500_000


def test_phases_spread_over_the_period_leave_the_grid_alone() -> None:
    """A camera with no rhythm in common with the control loop (golden-ratio phases: spread
    evenly, no large empty stretch): a shift would gain less than the hysteresis."""
    aligner = TickAligner(T, margin_ns=MS)
    golden = (5 ** 0.5 - 1) / 2
    arrivals = [round(k * 50 * MS + (k * golden % 1.0) * T) for k in range(600)]
    _run(aligner, arrivals, origin=0)
    assert aligner.shifts == 0


def test_no_shift_while_the_loop_is_stopped_or_still_slewing() -> None:
    aligner = TickAligner(T, margin_ns=MS, window=3, every=1)
    for t in (1 * MS, 21 * MS, 41 * MS):
        assert aligner.arrived(t, None) is None
    assert aligner.arrived(61 * MS, 0, slewing=True) is None
    assert aligner.arrived(81 * MS, 0) == 2 * MS  # 1 ms after the cluster: 2 ms later


@pytest.mark.parametrize("margin_ms", [-1.0, 20.0])
def test_a_margin_outside_the_period_is_refused_with_its_value(margin_ms: float) -> None:
    with pytest.raises(ValueError, match=f"{margin_ms:g} ms"):
        TickAligner(T, margin_ns=round(margin_ms * MS))
