"""Per-camera stats and the one-line verdict with the likely cause."""

from __future__ import annotations

import numpy as np
import pytest

from moe_policy_ros.core.camerastats import CameraReport, CameraStats, camera_verdict
from moe_policy_ros.core.types import Level

S = 1_000_000_000
P = S // 30  # 30 fps


def _stats(**kw) -> CameraStats:
    return CameraStats("top", "/cameras/top/image_raw", (96, 128), "resize (area)", **kw)


def test_publisher_rate_and_delivery_from_stamps_with_losses() -> None:
    st = _stats()
    t = 10 * S
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, 60) * P  # a driver thread's stamps
    # 60 frames captured at 30 fps; every fourth one lost on the way
    for i in range(60):
        if i % 4 == 3:
            continue
        st.arrival(t + i * P + int(jitter[i]), t + i * P + 5_000_000)
        st.accepted_frame((480, 640), "rgb8")
    rep = st.report(t + 60 * P)
    assert rep.rate_source == "stamps"
    assert rep.publisher_rate_hz == pytest.approx(30.0, rel=0.1)
    assert rep.delivery == pytest.approx(44 / 58, abs=0.01)  # 44 gaps hide 14 lost frames
    assert rep.rate_hz == pytest.approx(22.5, rel=0.1)
    level, line = camera_verdict(rep)
    assert level == Level.WARN
    assert "of the publisher's" in line and "(from stamps)" in line
    assert "24% of frames missing" in line and "transport" in line


def test_configured_rate_wins_and_a_clean_stream_is_ok() -> None:
    st = _stats(expected_rate_hz=15.0)
    for i in range(30):
        st.arrival(S + i * (S // 15), S + i * (S // 15))
        st.accepted_frame((720, 1280), "rgb8")
    rep = st.report(S + 30 * (S // 15))
    assert (rep.rate_source, rep.publisher_rate_hz) == ("config", 15.0)
    assert rep.delivery == pytest.approx(1.0)
    level, line = camera_verdict(rep)
    assert level == Level.OK
    assert line.startswith("top: 1280x720 rgb8 -> 128x96 resize (area), 15.0 Hz")


def test_stamp_to_receipt_is_reported_and_shown_in_diagnostics() -> None:
    """How long a frame took from its ``header.stamp`` to the subscription: the first part
    of obs-to-command, apart from decoding and inference."""
    from moe_policy_ros.core.diagnostics import Key, camera_task_values

    st = _stats()
    assert st.report(S).receipt_p50_ms is None  # nothing received yet
    for i in range(100):
        st.arrival(S + i * P, S + i * P + (2 if i % 50 else 40) * 1_000_000)
    rep = st.report(S + 100 * P)
    assert rep.receipt_p50_ms == pytest.approx(2.0)
    assert rep.receipt_p99_ms > 30.0  # the two 40 ms deliveries reach the p99
    values = dict(camera_task_values(rep)[2])
    assert values[f"top {Key.STAMP_TO_RECEIPT_P50_MS}"] == pytest.approx(2.0)


def test_too_few_frames_leave_the_publisher_rate_unknown() -> None:
    st = _stats()
    st.arrival(S, S)
    rep = st.report(S)
    assert (rep.publisher_rate_hz, rep.rate_source, rep.delivery) == (None, "", None)


@pytest.mark.parametrize(
    ("report", "level", "tokens"),
    [
        (CameraReport("top", "/t", (96, 128), publishers=0), Level.ERROR,
         ["no frames", "nothing publishes /t", "driver"]),
        (CameraReport("top", "/t", (96, 128), publishers=1), Level.ERROR,
         ["1 publisher(s) matched", "transport", "fastdds_shm.xml"]),
        (CameraReport("top", "/t", (96, 128)), Level.ERROR, ["no frames on /t", "transport"]),
        (CameraReport("top", "/t", (96, 128), received=6, rejected=6,
                      causes={"size": 6}, last_error="roi (600, 0, 10, 10) outside"),
         Level.ERROR, ["all 6 frames rejected", "likely cause: size", "roi (600"]),
        (CameraReport("top", "/t", (96, 128), received=9, rejected=9,
                      causes={"encoding": 8, "data": 1}, last_error="'rgba8'"),
         Level.ERROR, ["likely cause: encoding"]),
        (CameraReport("top", "/t", (96, 128), received=10, accepted=8, rejected=2,
                      causes={"data": 2}, last_error="47 bytes"),
         Level.WARN, ["2 of 10 frames rejected", "likely cause: data"]),
        (CameraReport("top", "/t", (96, 128), received=100, accepted=30, superseded=70,
                      size_received=(720, 1280)), Level.WARN, ["30 of 100", "CPU", "1280x720"]),
    ],
)
def test_verdict_names_the_likely_cause(report, level, tokens) -> None:
    got_level, line = camera_verdict(report)
    assert got_level == level, line
    assert line.startswith("top: ") and "\n" not in line
    for tok in tokens:
        assert tok in line, (tok, line)


def test_rejections_are_counted_by_cause() -> None:
    st = _stats()
    for cause in ("size", "size", "encoding"):
        st.arrival(S, S)
        st.rejected_frame(cause, f"bad {cause}")
    rep = st.report(S)
    assert rep.causes == {"size": 2, "encoding": 1}
    assert (rep.received, rep.accepted, rep.rejected) == (3, 0, 3)
    assert rep.last_error == "bad encoding"
    assert camera_verdict(rep)[1].startswith("top: all 3 frames rejected (likely cause: size)")


def test_received_rate_over_the_window_and_after_a_clock_jump() -> None:
    st = _stats(rate_window_s=1.0)
    for i in range(31):  # 30 fps for 1 s, received 2 ms after capture
        st.arrival(5 * S + i * P, 5 * S + i * P + 2_000_000)
    assert st.report(5 * S + 30 * P + 2_000_000).rate_hz == pytest.approx(30.0, rel=1e-3)
    assert st.report(9 * S).rate_hz == 0.0  # nothing for 3 s: the window is empty
    for i in range(3):  # the ROS clock restarted (a simulator): 10 fps from t = 1 s
        st.arrival(S + i * S // 10, S + i * S // 10)
    rep = st.report(S + S // 5)
    assert rep.rate_hz == pytest.approx(10.0) and rep.received == 34
