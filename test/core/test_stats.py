"""Windowed statistics with hand-computed numbers and injected stamps."""

from __future__ import annotations

import math
import threading

import pytest

from moe_policy_ros.core.stats import JitterMeter, LatencyWindow, RateMeter

MS = 1_000_000  # ns


def test_rate_meter_steady_stream() -> None:
    r = RateMeter(window_s=1.0)
    for k in range(11):  # 0, 100, ..., 1000 ms: 10 Hz
        r.record(k * 100 * MS)
    # window (0, 1000] ms keeps 100..1000: 10 events, 9 intervals over 0.9 s
    assert r.count() == 10
    assert r.rate_hz() == pytest.approx(10.0)


def test_rate_meter_irregular_and_decay() -> None:
    r = RateMeter(window_s=2.0)
    for t in (0, 100, 300, 600):  # 3 intervals over 0.6 s
        r.record(t * MS)
    assert r.rate_hz() == pytest.approx(5.0)
    # window (50, 2050] ms drops 0: 100, 300, 600 -> 2 intervals over 0.5 s
    assert r.rate_hz(now_ns=2_050 * MS) == pytest.approx(4.0)
    assert r.count(now_ns=2_350 * MS) == 1  # (350, 2350] keeps only 600: rate 0
    assert r.rate_hz(now_ns=2_350 * MS) == 0.0
    assert r.rate_hz(now_ns=5_000 * MS) == 0.0 and r.count() == 0


def test_rate_meter_bounded_and_checks() -> None:
    r = RateMeter(window_s=10.0, max_events=5)
    for k in range(100):
        r.record(k * MS)
    assert r.count() == 5 and r.rate_hz() == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="backwards"):
        r.record(0)
    with pytest.raises(ValueError):
        RateMeter(window_s=0)


def test_rate_meter_count_window_restart_and_simultaneous_stamps() -> None:
    r = RateMeter(window_s=None, max_events=4)  # the last 4 events, whatever their age
    for t in (0, 100, 200, 400, 1_000):
        r.record(t * MS)
    assert r.count(now_ns=10**12) == 4  # age does not prune a count window
    assert r.rate_hz(now_ns=10**12) == pytest.approx(3 / 0.9)
    r = RateMeter(window_s=5.0, on_backwards="restart")  # ROS time: a sim clock restarts
    for t in (1_000, 1_100, 1_200):
        r.record(t * MS)
    r.record(50 * MS)
    assert r.count() == 1 and r.rate_hz() == 0.0
    r.record(70 * MS)
    assert r.rate_hz() == pytest.approx(50.0)
    same = RateMeter()
    same.record(5 * MS)
    same.record(5 * MS)  # two events at one time (a coarse sim clock): no rate, not inf
    assert same.count() == 2 and same.rate_hz() == 0.0
    with pytest.raises(ValueError, match="on_backwards"):
        RateMeter(on_backwards="ignore")  # type: ignore[arg-type]


def test_rate_meter_readers_and_a_writer_in_threads() -> None:
    r = RateMeter(window_s=1.0, max_events=50)
    done = threading.Event()
    seen: list[float] = []

    def read() -> None:
        while not done.is_set():
            seen.append(r.rate_hz(now_ns=None))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for k in range(20_000):
            r.record(k * MS)
    finally:
        done.set()
        reader.join()
    assert all(v == 0.0 or v == pytest.approx(1000.0) for v in seen)
    assert r.rate_hz() == pytest.approx(1000.0) and r.count() == 50


def test_latency_window_hand_computed() -> None:
    w = LatencyWindow(size=100)
    for v in range(1, 101):
        w.add(float(v))
    s = w.summary()
    assert s.count == 100
    assert s.mean == pytest.approx(50.5)
    assert s.p50 == pytest.approx(50.5) and s.median == s.p50
    assert s.p99 == pytest.approx(99.01)  # 1 + 0.99 * 99 = 99.01
    assert s.max == 100.0


def test_latency_window_keeps_only_recent() -> None:
    w = LatencyWindow(size=3)
    for v in (100.0, 1.0, 2.0, 3.0):
        w.add(v)
    s = w.summary()
    assert len(w) == 3 and s.max == 3.0 and s.p50 == 2.0
    assert s.p99 == pytest.approx(2.98)  # 1 + 0.99 * 2 = 2.98 (rank), value 2 + 0.98


def test_latency_window_empty() -> None:
    s = LatencyWindow().summary()
    assert s.count == 0 and math.isnan(s.p99) and math.isnan(s.max)


def test_jitter_meter_hand_computed() -> None:
    j = JitterMeter(nominal_period_s=0.02, size=100)
    stamps = [0, 20, 41, 60, 85, 105]  # periods 20, 21, 19, 25, 20 ms
    for t in stamps:
        j.add(t * MS)
    s = j.summary()
    # |dev| = 0, 1, 1, 5, 0 ms; sorted 0 0 1 1 5; p99 rank 0.99 * 4 = 3.96 -> 1 + 0.96 * 4
    assert s.count == 5
    assert s.p50 == pytest.approx(1e-3)
    assert s.p99 == pytest.approx(4.84e-3)
    assert s.max == pytest.approx(5e-3)
    assert s.mean == pytest.approx(1.4e-3)
    assert s.mean_period == pytest.approx(0.021)


def test_jitter_meter_window_and_reset() -> None:
    j = JitterMeter(nominal_period_s=0.01, size=2)
    for t in (0, 50, 60, 70):  # periods 50, 10, 10 ms; window keeps the last two
        j.add(t * MS)
    s = j.summary()
    assert s.count == 2 and s.max == pytest.approx(0.0)
    j.reset()
    assert j.summary().count == 0
    j.add(0)
    assert math.isnan(j.summary().p99)
