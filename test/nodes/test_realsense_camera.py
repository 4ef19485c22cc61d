"""realsense_camera: frame sources on a real ``rs.software_device``, recordings, and the node.

No camera and no mocks: frames go through librealsense's own path (software sensor ->
syncer -> align, recorder -> rosbag2 file -> playback pipeline), the node publishes over DDS,
and one test runs it as a separate process.
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moe_policy_ros.realsense.stamps import StampMapper

HAVE_RS = importlib.util.find_spec("pyrealsense2") is not None
HAVE_RCLPY = importlib.util.find_spec("rclpy") is not None
needs_rs = pytest.mark.skipif(not HAVE_RS, reason="pyrealsense2 is not installed")
needs_ros = pytest.mark.skipif(not HAVE_RCLPY, reason="rclpy is not installed")

REPO = Path(__file__).resolve().parents[2]
W, H, FPS = 64, 48, 30
PERIOD_MS = 1000.0 / FPS


def stamp_ns(msg: Any) -> int:
    from moe_policy_ros.session import stamp_to_ns

    return stamp_to_ns(msg.header.stamp)


def frame_pair(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Color whose every pixel encodes (x, y, i) and depth 1000 + 10*i + x (mm)."""
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.dstack([xx * 3, yy * 5, np.full((H, W), i)]).astype(np.uint8)
    depth = (1000 + 10 * i + xx).astype(np.uint16)
    return rgb, depth


# =========================================================================== stamp mapping


def test_stamp_mapper_first_frame_sets_offset_and_latency_spikes_do_not_stick() -> None:
    m = StampMapper(max_drift=100e-6)
    base_ms, ros0 = 5_000.0, 1_000_000_000_000
    r = m.map(base_ms, ros0 + 8_000_000)  # first frame arrived 8 ms late: offset includes it
    assert r.stamp_ns == ros0 + 8_000_000 and not r.reset
    # later frames arrive with only 2 ms latency, the offset drops to the smaller candidate
    r = m.map(base_ms + 100, ros0 + 100_000_000 + 2_000_000)
    assert r.stamp_ns == ros0 + 102_000_000
    # a 30 ms latency spike moves the offset up by at most max_drift * dt (100 ppm of 100 ms)
    r = m.map(base_ms + 200, ros0 + 200_000_000 + 30_000_000)
    assert r.offset_ns - (ros0 - 5_000_000_000 + 2_000_000) == 10_000
    assert r.stamp_ns == ros0 + 202_010_000


def test_stamp_mapper_tracks_drift_both_ways_and_never_goes_backwards() -> None:
    for drift_ppm in (+100.0, -100.0):
        m = StampMapper(max_drift=200e-6)
        stamps: list[int] = []
        ros0 = 10**12
        for i in range(600):  # 20 s at 30 Hz, constant 1 ms latency
            dev_ms = 1e6 + i * PERIOD_MS
            true_ros = ros0 + int(i * PERIOD_MS * 1e6 * (1 + drift_ppm * 1e-6))
            stamps.append(m.map(dev_ms, true_ros + 1_000_000).stamp_ns)
            err = stamps[-1] - (true_ros + 1_000_000)
            # the estimate follows the drift: error bounded by one frame's drift step
            assert abs(err) <= 10_000, (drift_ppm, i, err)
        assert all(b > a for a, b in itertools.pairwise(stamps))
    # a downward offset step larger than the frame spacing is clamped, not reversed
    m = StampMapper()
    a = m.map(0.0, 1_000_000_000).stamp_ns
    b = m.map(1.0, 1_000_000_000 + 1_000_000 - 500_000_000).stamp_ns  # clock reset (-0.5 s)
    assert b > a


def test_stamp_mapper_resets_on_clock_jump_and_restart_keeps_monotonic() -> None:
    m = StampMapper(reset_threshold_s=1.0)
    m.map(1000.0, 10**12)
    r = m.map(0.0, 10**12 + 33_000_000)  # device clock went backwards: playback loop/reboot
    assert r.reset and m.resets == 1
    r = m.map(50_000.0, 10**12 + 66_000_000)  # jump far ahead (more than 1 s): reset too
    assert r.reset and m.resets == 2
    last = r.stamp_ns
    m.restart()
    assert m.offset_ns is None
    r = m.map(0.0, 10**12 + 1_000)  # new session maps earlier: clamped after the last stamp
    assert r.stamp_ns == last + 1 and r.clamped
    with pytest.raises(ValueError, match="max_drift"):
        StampMapper(max_drift=-1.0)


# =========================================================================== frame sources

if HAVE_RS:
    from moe_policy_ros.realsense.sources import (
        SOFTWARE_CLOCK_BASE_MS,
        EndOfStream,
        Intrinsics,
        PipelineFrameSource,
        SoftwareFrameSource,
        SourceError,
    )

INTR = None
if HAVE_RS:
    INTR = Intrinsics(
        W,
        H,
        fx=55.5,
        fy=56.25,
        ppx=31.25,
        ppy=23.75,
        model="brown_conrady",
        coeffs=(0.125, -0.25, 0.001, 0.002, 0.0625),
    )


@pytest.mark.realsense
@needs_rs
def test_software_source_delivers_injected_content_and_timestamps() -> None:
    src = SoftwareFrameSource(width=W, height=H, fps=FPS, intrinsics=INTR)
    src.start()
    try:
        for i in range(6):
            rgb, _ = frame_pair(i)
            ts = SOFTWARE_CLOCK_BASE_MS + i * PERIOD_MS
            assert src.inject(rgb, timestamp_ms=ts, frame_number=100 + i)
            f = src.wait(1.0)
            assert f is not None, f"frame {i} did not come out of the syncer"
            np.testing.assert_array_equal(f.color, rgb)
            assert f.depth is None
            assert f.frame_number == 100 + i
            assert f.domain == "hardware_clock"
            assert f.timestamp_ms == pytest.approx(ts, abs=1e-3)
        assert src.wait(0.1) is None  # nothing injected, nothing delivered
    finally:
        src.stop()


@pytest.mark.realsense
@needs_rs
def test_software_source_aligns_depth_to_color() -> None:
    src = SoftwareFrameSource(width=W, height=H, fps=FPS, enable_depth=True, intrinsics=INTR)
    src.start()
    got = []
    try:
        for i in range(6):
            rgb, depth = frame_pair(i)
            src.inject(rgb, depth, timestamp_ms=SOFTWARE_CLOCK_BASE_MS + i * PERIOD_MS)
            f = src.wait(1.0)
            assert f is not None
            np.testing.assert_array_equal(f.color, rgb)
            got.append((i, f))
    finally:
        src.stop()
    paired = [(i, f) for i, f in got if f.depth is not None]
    # librealsense's syncer never pairs the very first capture; every later one is paired
    assert [i for i, _ in paired] == [1, 2, 3, 4, 5]
    for i, f in paired:
        assert f.depth is not None and f.depth.shape == (H, W) and f.depth.dtype == np.uint16
        # same intrinsics, identity extrinsics: rs.align maps each pixel onto itself, except
        # for the odd rounding hole (0 = no depth) that align leaves with distortion
        _, depth = frame_pair(i)
        inner = (slice(2, H - 2), slice(2, W - 2))
        valid = f.depth[inner] != 0
        assert valid.mean() > 0.95
        np.testing.assert_array_equal(f.depth[inner][valid], depth[inner][valid])
    assert src.depth_scale == pytest.approx(0.001)


@pytest.mark.realsense
@needs_rs
def test_software_source_unplug_and_restart(wait_for: Callable[..., Any]) -> None:
    src = SoftwareFrameSource(width=W, height=H, fps=FPS, generate=True)
    src.start()
    try:
        assert src.wait(1.0) is not None
        src.simulate_unplug(0.4)
        time.sleep(0.1)
        while src.wait(0.05) is not None:  # drain what was queued before the unplug
            pass
        assert src.wait(0.15) is None
        with pytest.raises(SourceError, match="unplugged"):
            src.start()
        wait_for(lambda: not src.unplugged, 2.0, "the simulated device to come back")
        src.start()
        assert src.wait(1.0) is not None
    finally:
        src.stop()


@pytest.mark.realsense
@needs_rs
@needs_ros
def test_intrinsics_become_camera_info() -> None:
    from std_msgs.msg import Header

    from moe_policy_ros.nodes.realsense_camera import camera_info

    src = SoftwareFrameSource(width=W, height=H, fps=FPS, intrinsics=INTR)
    src.start()
    src.stop()
    intr = src.color_intrinsics
    assert intr is not None  # read back from the librealsense stream profile
    info = camera_info(intr, Header(frame_id="cam_color_optical_frame"))
    assert (info.width, info.height) == (W, H)
    assert info.header.frame_id == "cam_color_optical_frame"
    assert info.distortion_model == "plumb_bob"
    np.testing.assert_allclose(info.k, [55.5, 0, 31.25, 0, 56.25, 23.75, 0, 0, 1])
    np.testing.assert_allclose(info.d, [0.125, -0.25, 0.001, 0.002, 0.0625], rtol=1e-6)
    np.testing.assert_allclose(info.r, np.eye(3).reshape(-1))
    np.testing.assert_allclose(info.p, [55.5, 0, 31.25, 0, 0, 56.25, 23.75, 0, 0, 0, 1, 0])
    fisheye = Intrinsics(W, H, 40.0, 40.0, 32.0, 24.0, "kannala_brandt4", (0.1, 0.2, 0.3, 0.4))
    info = camera_info(fisheye, Header())
    assert info.distortion_model == "equidistant"
    np.testing.assert_allclose(info.d, [0.1, 0.2, 0.3, 0.4])


@pytest.mark.realsense
@needs_rs
def test_timestamps_from_software_source_map_monotonically() -> None:
    """Device spacing survives delivery jitter; the offset drops to the lowest latency seen."""
    src = SoftwareFrameSource(width=W, height=H, fps=FPS)
    mapper = StampMapper(max_drift=200e-6)
    jitter_ms = [8, 0, 6, 2, 7, 1, 5, 3, 4, 2]  # delivery delay after the "exposure"
    src.start()
    stamps, arrivals = [], []
    try:
        t0 = time.monotonic() + 0.05
        for i, jit in enumerate(jitter_ms):
            rgb, _ = frame_pair(i)
            time.sleep(max(0.0, t0 + (i * PERIOD_MS + jit) / 1000 - time.monotonic()))
            src.inject(rgb, timestamp_ms=SOFTWARE_CLOCK_BASE_MS + i * PERIOD_MS)
            f = src.wait(1.0)
            assert f is not None
            now = time.time_ns()
            arrivals.append(now)
            stamps.append(mapper.map(f.timestamp_ms, now).stamp_ns)
    finally:
        src.stop()
    assert all(b > a for a, b in itertools.pairwise(stamps))
    deltas_ms = [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]
    arrival_deltas_ms = [(b - a) / 1e6 for a, b in itertools.pairwise(arrivals)]
    # frame 1 came >= 8 ms "faster" than frame 0 (whose first pass through the syncer is
    # slower still): the offset drops by that much, once
    assert PERIOD_MS - 20.0 < deltas_ms[0] < PERIOD_MS - 4.0, deltas_ms
    # afterwards the stamps keep the device spacing (up to a new latency minimum found by
    # scheduling noise, and at most max_drift * period upward), while arrivals jitter by 6 ms
    for d in deltas_ms[1:]:
        assert PERIOD_MS - 5.0 < d < PERIOD_MS + 0.01, deltas_ms
    assert max(arrival_deltas_ms) - min(arrival_deltas_ms) > 8.0, arrival_deltas_ms


# =========================================================================== ROS fixtures

if HAVE_RCLPY:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image


@pytest.fixture(scope="module")
def context() -> Iterator[Any]:
    if not HAVE_RCLPY:
        pytest.skip("rclpy is not installed")
    ctx = Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


class Probe:
    """The test's node: keeps every message of the camera's topics (sensor-data QoS)."""

    def __init__(self, context: Any, ns: str = "/realsense_camera") -> None:
        self.node = Node("realsense_probe", context=context)
        self.lock = threading.Lock()
        self.msgs: dict[str, list[Any]] = {}
        for topic, mtype in (
            ("color/image_raw", Image),
            ("color/camera_info", CameraInfo),
            ("aligned_depth_to_color/image_raw", Image),
            ("aligned_depth_to_color/camera_info", CameraInfo),
        ):
            self.msgs[topic] = []
            self.node.create_subscription(
                mtype, f"{ns}/{topic}", self._store(topic), qos_profile_sensor_data
            )

    def _store(self, topic: str) -> Callable[[Any], None]:
        def cb(msg: Any) -> None:
            with self.lock:
                self.msgs[topic].append(msg)

        return cb

    def get(self, topic: str) -> list[Any]:
        with self.lock:
            return list(self.msgs[topic])


@pytest.fixture
def spin(context: Any) -> Iterator[Callable[[Any], None]]:
    """Spin added nodes in a background executor; tears everything down afterwards."""
    executor = SingleThreadedExecutor(context=context)
    nodes: list[Any] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set() and context.ok():
            executor.spin_once(timeout_sec=0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def add(node: Any) -> None:
        nodes.append(node)
        executor.add_node(node)

    yield add
    stop.set()
    thread.join(timeout=2.0)
    for n in nodes:
        executor.remove_node(n)
        n.destroy_node()
    executor.shutdown(timeout_sec=1.0)


def camera_node(context: Any, frame_source: Any = None, **params: Any) -> Any:
    from moe_policy_ros.nodes.realsense_camera import RealSenseCameraNode

    overrides = [Parameter(k, value=v) for k, v in params.items()]
    return RealSenseCameraNode(source=frame_source, context=context, parameter_overrides=overrides)


def assert_increasing(msgs: list[Any]) -> None:
    stamps = [stamp_ns(m) for m in msgs]
    assert all(b > a for a, b in itertools.pairwise(stamps)), stamps


# =========================================================================== node in-process


@pytest.mark.ros
@pytest.mark.realsense
@needs_rs
@needs_ros
def test_bag_recorded_from_software_device_plays_through_the_node(
    context: Any, spin: Callable[[Any], None], tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    path = tmp_path / "capture.db3"
    rec = SoftwareFrameSource(
        width=W, height=H, fps=FPS, enable_depth=True, intrinsics=INTR, record_to=str(path)
    )
    rec.start()
    n_frames = 12
    for i in range(n_frames):  # paced like a camera: playback replays at the recorded rate
        rgb, depth = frame_pair(i)
        rec.inject(rgb, depth, timestamp_ms=SOFTWARE_CLOCK_BASE_MS + i * PERIOD_MS)
        rec.wait(0.5)
        time.sleep(PERIOD_MS / 1000)
    rec.stop()
    gc.collect()
    assert path.stat().st_size > 0

    probe = Probe(context)
    spin(probe.node)
    node = camera_node(
        context,
        source="bag",
        bag_path=str(path),
        enable_depth=True,
        camera_name="bagcam",
        frame_timeout_s=0.5,
        reconnect_period_s=0.1,
    )
    spin(node)
    wait_for(
        lambda: (
            len(probe.node.get_publisher_names_and_types_by_node("realsense_camera", "/")) >= 4
        ),
        5.0,
        "the camera node's publishers",
    )
    time.sleep(0.3)  # let discovery match the probe's subscriptions before playback starts
    node.start()
    wait_for(lambda: node.state == "finished", 10.0, "the recording to finish")
    images = probe.get("color/image_raw")
    assert len(images) >= n_frames - 2, len(images)
    seen = set()
    for msg in images:
        assert (msg.width, msg.height, msg.encoding, msg.step) == (W, H, "rgb8", W * 3)
        assert msg.header.frame_id == "bagcam_color_optical_frame"
        img = np.frombuffer(bytes(msg.data), np.uint8).reshape(H, W, 3)
        i = int(img[0, 0, 2])
        np.testing.assert_array_equal(img, frame_pair(i)[0])  # content survived the file
        seen.add(i)
    assert seen >= set(range(2, n_frames)), sorted(seen)
    assert_increasing(images)
    info = wait_for(lambda: probe.get("color/camera_info"), 2.0, "camera_info")[-1]
    assert INTR is not None
    np.testing.assert_allclose(info.k, INTR.k, rtol=1e-6)
    depth = wait_for(lambda: probe.get("aligned_depth_to_color/image_raw"), 2.0, "aligned depth")
    assert depth[-1].encoding == "16UC1" and depth[-1].step == W * 2
    d = np.frombuffer(bytes(depth[-1].data), "<u2").reshape(H, W)
    assert 1000 <= int(d[H // 2, W // 2]) <= 1000 + 10 * n_frames + W


@pytest.mark.realsense
@needs_rs
def test_bag_source_errors_name_the_problem(tmp_path: Path) -> None:
    src = PipelineFrameSource(bag_path=str(tmp_path / "old.bag"))
    with pytest.raises(SourceError, match=r"not ROS 1 \.bag files; convert .*convert_bag_to_db3"):
        src.start()
    src = PipelineFrameSource(bag_path=str(tmp_path / "missing.db3"))
    with pytest.raises(SourceError, match=r"missing\.db3: cannot start streaming"):
        src.start()
    assert issubclass(EndOfStream, SourceError)


@pytest.mark.ros
@pytest.mark.realsense
@needs_rs
@needs_ros
def test_node_reconnects_after_simulated_unplug(
    context: Any, spin: Callable[[Any], None], wait_for: Callable[..., Any]
) -> None:
    probe = Probe(context)
    spin(probe.node)
    src = SoftwareFrameSource(width=W, height=H, fps=FPS, generate=True, serial_no="sw-42")
    node = camera_node(
        context,
        src,
        source="software",
        width=W,
        height=H,
        fps=FPS,
        frame_timeout_s=0.3,
        reconnect_period_s=0.1,
    )
    spin(node)
    node.start()
    wait_for(lambda: len(probe.get("color/image_raw")) >= 5, 5.0, "frames before the unplug")
    src.simulate_unplug(0.8)
    wait_for(lambda: node.state == "waiting", 3.0, "the node to notice the unplug")
    wait_for(
        lambda: "waiting for software device sw-42" in node.last_warning,
        3.0,
        "the throttled 'waiting for' warning naming the serial",
    )
    before = len(probe.get("color/image_raw"))
    wait_for(lambda: node.reconnects >= 1 and node.state == "streaming", 5.0, "reconnect")
    wait_for(lambda: len(probe.get("color/image_raw")) >= before + 5, 5.0, "frames after it")
    assert_increasing(probe.get("color/image_raw"))


@pytest.mark.ros
@pytest.mark.realsense
@needs_rs
@needs_ros
def test_compressed_publishes_jpeg_beside_the_raw_image(
    context: Any, spin: Callable[[Any], None], wait_for: Callable[..., Any]
) -> None:
    """compressed: true adds ~/color/image_raw/compressed (image_transport's layout): JPEG of
    the same frame, same header; it decodes to the raw image within JPEG error."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    from moe_policy_ros.core.imageconv import image_from_compressed

    probe = Probe(context)
    jpegs: list[Any] = []
    probe.node.create_subscription(CompressedImage, "/realsense_camera/color/image_raw/compressed",
                                   jpegs.append, qos_profile_sensor_data)
    spin(probe.node)
    src = SoftwareFrameSource(width=W, height=H, fps=FPS, generate=False)
    node = camera_node(context, src, source="software", width=W, height=H, fps=FPS,
                       compressed=True, jpeg_quality=95)
    spin(node)
    node.start()
    rgb = np.ascontiguousarray(cv2.GaussianBlur(frame_pair(0)[0], (5, 5), 0))

    def sent() -> bool:
        src.inject(rgb)
        time.sleep(0.03)
        return len(jpegs) >= 3 and len(probe.get("color/image_raw")) >= 3

    wait_for(sent, 10.0, "raw and compressed frames")
    jpeg, raws = jpegs[-1], probe.get("color/image_raw")
    raw = next(m for m in raws if stamp_ns(m) == stamp_ns(jpeg))
    assert jpeg.format == "rgb8; jpeg compressed bgr8"
    assert jpeg.header.frame_id == raw.header.frame_id
    decoded = image_from_compressed(jpeg.format, bytes(jpeg.data))
    assert decoded.shape == (H, W, 3)
    assert np.abs(decoded.astype(int) - rgb.astype(int)).mean() < 4.0


@pytest.mark.ros
@pytest.mark.realsense
@needs_rs
@needs_ros
def test_node_without_a_camera_waits_and_does_not_crash(
    context: Any, spin: Callable[[Any], None], wait_for: Callable[..., Any]
) -> None:
    node = camera_node(context, source="device", serial_no="000000000000", reconnect_period_s=0.1)
    spin(node)
    node.start()
    wait_for(lambda: node.state == "waiting" and node.last_warning, 10.0, "waiting state")
    assert "000000000000" in node.last_warning
    time.sleep(0.3)
    assert node.state == "waiting" and node._thread is not None and node._thread.is_alive()


@pytest.mark.ros
@needs_ros
@needs_rs
def test_invalid_source_parameter_is_rejected(context: Any) -> None:
    with pytest.raises(ValueError, match=r"source must be one of .* got 'usb'"):
        camera_node(context, source="usb")
    with pytest.raises(ValueError, match=r"source 'bag' needs bag_path"):
        camera_node(context, source="bag")


# =========================================================================== across processes


@pytest.mark.ros
@pytest.mark.realsense
@needs_rs
@needs_ros
def test_node_subprocess_publishes_over_dds(
    context: Any, spin: Callable[[Any], None], wait_for: Callable[..., Any]
) -> None:
    probe = Probe(context, ns="/rs_e2e/realsense_camera")
    spin(probe.node)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    cmd = [
        sys.executable,
        "-m",
        "moe_policy_ros.nodes.realsense_camera",
        "--ros-args",
        "-r",
        "__ns:=/rs_e2e",
        "-r",
        "__node:=realsense_camera",
        "-p",
        "source:=software",
        "-p",
        f"width:={W}",
        "-p",
        f"height:={H}",
        "-p",
        f"fps:={FPS}",
        "-p",
        "enable_depth:=true",
        "-p",
        "camera_name:=e2e",
    ]
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(
            lambda: len(probe.get("color/image_raw")) >= 10 or proc.poll() is not None,
            20.0,
            "10 images from the subprocess",
        )
        assert proc.poll() is None, proc.communicate()[0]
        wait_for(lambda: probe.get("aligned_depth_to_color/image_raw"), 5.0, "depth")
        images = probe.get("color/image_raw")
        for msg in images:
            assert (msg.width, msg.height, msg.encoding, msg.step) == (W, H, "rgb8", W * 3)
            assert len(msg.data) == H * W * 3
            assert msg.header.frame_id == "e2e_color_optical_frame"
        assert_increasing(images)
        now = time.time_ns()  # default ROS time is system time: stamps are recent
        assert 0 < now - stamp_ns(images[-1]) < 5e9
        info = probe.get("color/camera_info")[-1]
        assert (info.width, info.height, info.distortion_model) == (W, H, "plumb_bob")
        assert info.k[0] > 0 and info.k[8] == 1.0
        depth = probe.get("aligned_depth_to_color/image_raw")[-1]
        assert (depth.width, depth.height, depth.encoding) == (W, H, "16UC1")
        assert depth.header.frame_id == "e2e_color_optical_frame"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
