"""``realsense_camera``: a small RealSense driver publishing what the policy consumes.

Topics (publishers use SystemDefaultsQoS, as sensor drivers do under REP 2003 and as
realsense-ros does; consumers subscribe with the sensor-data profile):

* ``~/color/image_raw`` (sensor_msgs/Image, ``rgb8``) and ``~/color/camera_info``
* with ``compressed``: ``~/color/image_raw/compressed`` (sensor_msgs/CompressedImage, JPEG at
  ``jpeg_quality``, format ``"rgb8; jpeg compressed bgr8"`` as image_transport's compressed
  plugin publishes it)
* with ``enable_depth``: ``~/aligned_depth_to_color/image_raw`` (``16UC1``, depth units of
  the device, normally millimetres) and ``~/aligned_depth_to_color/camera_info``. Depth is
  reprojected into the color camera with ``rs.align``, so it shares the color intrinsics and
  the color optical frame.

Sources (``source`` parameter): ``device`` (a camera, by ``serial_no`` or the first one),
``bag`` (a librealsense recording at ``bag_path``, optionally repeated) and ``software`` (an
``rs.software_device`` fed with a synthetic test pattern at ``fps``: the whole librealsense
frame path without hardware).

Capture runs in its own thread: start the source, then wait for frames and publish them;
when the source is missing, reports the device unplugged (devices-changed callback) or stays
silent for ``frame_timeout_s``, stop it and retry every ``reconnect_period_s`` while logging
(throttled) what it waits for. Nothing in that loop takes the node down. Stamps come from the
frame's device timestamp mapped to ROS time by :class:`~moe_policy_ros.realsense.stamps.
StampMapper` (offset estimated on the first frame, refined by a one-way minimum-delay filter
that tracks drift, never going backwards).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
)
from rclpy.node import Node
from rclpy.qos import qos_profile_system_default
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from moe_policy_ros.core.stats import RateMeter
from moe_policy_ros.core.types import Level
from moe_policy_ros.nodes.common import spin_node, start_node
from moe_policy_ros.nodes.convert import (
    compressed_image_msg,
    depth_image_msg,
    diag_status,
    rgb_image_msg,
)
from moe_policy_ros.realsense.sources import (
    EndOfStream,
    Frames,
    FrameSource,
    Intrinsics,
    PipelineFrameSource,
    SoftwareFrameSource,
    SourceError,
)
from moe_policy_ros.realsense.stamps import StampMapper
from moe_policy_ros.session import ns_to_stamp

NODE_NAME = "realsense_camera"
SOURCES = ("device", "bag", "software")


@dataclass(frozen=True)
class CameraParams:
    """The node's validated parameters (units: pixels, Hz, seconds)."""

    source: str
    serial_no: str
    camera_name: str
    width: int
    height: int
    fps: int
    enable_depth: bool
    depth_width: int
    depth_height: int
    frame_id: str
    reconnect_period_s: float
    frame_timeout_s: float
    bag_path: str
    bag_repeat: bool
    timestamp_max_drift_ppm: float
    compressed: bool = False
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {list(SOURCES)}, got {self.source!r}")
        if self.source == "bag" and not self.bag_path:
            raise ValueError("source 'bag' needs bag_path (a librealsense .db3 recording)")
        if not self.camera_name:
            raise ValueError("camera_name must not be empty")

    @property
    def color_frame_id(self) -> str:
        return self.frame_id or f"{self.camera_name}_color_optical_frame"


def _descriptor(
    description: str,
    ptype: int,
    *,
    read_only: bool = True,
    int_range: tuple[int, int] | None = None,
    float_range: tuple[float, float] | None = None,
) -> ParameterDescriptor:
    d = ParameterDescriptor(description=description, type=ptype, read_only=read_only)
    if int_range is not None:
        d.integer_range = [IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
    if float_range is not None:
        d.floating_point_range = [
            FloatingPointRange(from_value=float_range[0], to_value=float_range[1], step=0.0)
        ]
    return d


_S, _I, _D, _B = (
    ParameterType.PARAMETER_STRING,
    ParameterType.PARAMETER_INTEGER,
    ParameterType.PARAMETER_DOUBLE,
    ParameterType.PARAMETER_BOOL,
)

#: name -> (default, descriptor)
PARAMETERS: dict[str, tuple[Any, ParameterDescriptor]] = {
    "source": ("device", _descriptor("'device' | 'bag' | 'software' (synthetic frames)", _S)),
    "serial_no": ("", _descriptor("device serial number; '' = first device found", _S)),
    "camera_name": ("camera", _descriptor("camera name, prefix of the default frame_id", _S)),
    "width": (640, _descriptor("color width (px)", _I, int_range=(1, 8192))),
    "height": (480, _descriptor("color height (px)", _I, int_range=(1, 8192))),
    "fps": (30, _descriptor("color (and depth) frame rate (Hz)", _I, int_range=(1, 300))),
    "enable_depth": (False, _descriptor("also publish depth aligned to color", _B)),
    "depth_width": (0, _descriptor("depth width (px); 0 = color width", _I, int_range=(0, 8192))),
    "depth_height": (
        0,
        _descriptor("depth height (px); 0 = color height", _I, int_range=(0, 8192)),
    ),
    "frame_id": ("", _descriptor("image frame_id; '' = <camera_name>_color_optical_frame", _S)),
    "reconnect_period_s": (
        1.0,
        _descriptor("retry period while the camera is missing (s)", _D, float_range=(0.01, 60.0)),
    ),
    "frame_timeout_s": (
        2.0,
        _descriptor(
            "no frame for this long means the camera is lost (s)", _D, float_range=(0.05, 60.0)
        ),
    ),
    "bag_path": ("", _descriptor("recording to play when source is 'bag' (rosbag2 .db3)", _S)),
    "bag_repeat": (False, _descriptor("loop the recording", _B)),
    "compressed": (False, _descriptor("also publish ~/color/image_raw/compressed (JPEG)", _B)),
    "jpeg_quality": (90, _descriptor("JPEG quality of the compressed image", _I,
                                     int_range=(1, 100))),
    "timestamp_max_drift_ppm": (
        200.0,
        _descriptor(
            "largest clock drift the stamp offset follows upward (1e-6 s/s)",
            _D,
            float_range=(0.0, 1e5),
        ),
    ),
}


def camera_info(intr: Intrinsics, header: Header) -> CameraInfo:
    """CameraInfo of a monocular stream from its intrinsics (R identity, P = [K | 0])."""
    msg = CameraInfo()
    msg.header = header
    msg.width, msg.height = intr.width, intr.height
    msg.distortion_model = intr.ros_distortion_model
    msg.d = intr.ros_d
    msg.k = intr.k
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = intr.p
    return msg


def make_source(p: CameraParams) -> FrameSource:
    """The frame source the parameters ask for."""
    if p.source == "software":
        return SoftwareFrameSource(
            width=p.width,
            height=p.height,
            fps=p.fps,
            enable_depth=p.enable_depth,
            generate=True,
            serial_no=p.serial_no or "software-0",
        )
    return PipelineFrameSource(
        serial_no=p.serial_no,
        width=p.width,
        height=p.height,
        fps=p.fps,
        enable_depth=p.enable_depth,
        depth_width=p.depth_width,
        depth_height=p.depth_height,
        bag_path=p.bag_path if p.source == "bag" else "",
        repeat=p.bag_repeat,
    )


class RealSenseCameraNode(Node):
    """RealSense color (+ aligned depth) publisher with reconnect and drift-tracking stamps.

    ``source`` injects a ready-made :class:`FrameSource` (tests); otherwise one is made from
    the parameters. Call :meth:`start` to begin capturing and :meth:`stop` before destroying.
    """

    def __init__(self, *, source: FrameSource | None = None, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        for name, (default, desc) in PARAMETERS.items():
            self.declare_parameter(name, default, desc)
        self.params = CameraParams(**{name: self.get_parameter(name).value for name in PARAMETERS})
        self.source: FrameSource = source if source is not None else make_source(self.params)
        self.stamps = StampMapper(max_drift=self.params.timestamp_max_drift_ppm * 1e-6)
        qos = qos_profile_system_default
        self._color_pub = self.create_publisher(Image, "~/color/image_raw", qos)
        self._color_info_pub = self.create_publisher(CameraInfo, "~/color/camera_info", qos)
        self._depth_pub = self._depth_info_pub = None
        self._jpeg_pub = None
        if self.params.compressed:
            self._jpeg_pub = self.create_publisher(
                CompressedImage, "~/color/image_raw/compressed", qos
            )
        if self.params.enable_depth:
            self._depth_pub = self.create_publisher(
                Image, "~/aligned_depth_to_color/image_raw", qos
            )
            self._depth_info_pub = self.create_publisher(
                CameraInfo, "~/aligned_depth_to_color/camera_info", qos
            )
        self._stop = threading.Event()
        self._pub_lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        # counters and state, read by tests and for diagnostics
        self.state = "idle"  # idle | waiting | streaming | finished | stopped
        self.published = 0
        self.published_depth = 0
        self.sessions = 0
        self.reconnects = 0
        self.last_warning = ""
        self._warned_at: dict[int, float] = {}
        # /diagnostics (diagnostic_updater shape): state, achieved rate, reconnects, last warning
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # color frames published, on the monotonic clock; the window holds >= 5 frame periods
        self._color_rate = RateMeter(window_s=max(1.0, 5.0 / self.params.fps))
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f"{self.source.description}: {self.params.width}x{self.params.height} "
            f"@ {self.params.fps} Hz, depth {'on' if self.params.enable_depth else 'off'}"
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="realsense-capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout=5.0)
        self._thread = None
        try:
            self.source.stop()
        except Exception as err:
            self.get_logger().warning(f"stopping {self.source.description}: {err}")
        self.state = "stopped"

    def destroy_node(self) -> None:
        self.stop()
        with self._pub_lock:
            self._closed = True
            super().destroy_node()

    def _publish_diagnostics(self) -> None:
        rate = self._color_rate.rate_hz(time.monotonic_ns())
        expected = float(self.params.fps)
        if self.state == "streaming" and rate >= 0.8 * expected:
            level, msg = Level.OK, f"streaming {rate:.1f} Hz"
        elif self.state in ("streaming", "finished"):
            level, msg = Level.WARN, f"{self.state} at {rate:.1f} Hz (expected {expected:g} Hz)"
        else:
            level, msg = Level.ERROR, f"{self.state}: {self.last_warning or 'no frames'}"
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [
            diag_status(
                f"{self.get_name()}: camera",
                level,
                msg,
                {
                    "source": self.source.description,
                    "state": self.state,
                    "color rate (Hz)": rate,
                    "expected rate (Hz)": expected,
                    "frames published": self.published,
                    "depth frames published": self.published_depth,
                    "sessions": self.sessions,
                    "reconnects": self.reconnects,
                    "last warning": self.last_warning,
                },
                hardware_id=self.params.serial_no or self.source.description,
            )
        ]
        with self._pub_lock:
            if not self._closed:
                self._diag_pub.publish(arr)

    # ------------------------------------------------------------------ capture thread
    def _warn(self, msg: str, throttle_s: float) -> None:
        """Log a warning at most once per ``throttle_s`` per call site.

        Throttled here rather than with rclpy's ``throttle_duration_sec``: rclpy keys its
        filter by call site and raises ValueError when one site logs with another period.
        """
        self.last_warning = msg
        site = sys._getframe(1).f_lineno
        now = time.monotonic()
        if now - self._warned_at.get(site, -math.inf) < throttle_s:
            return
        self._warned_at[site] = now
        try:
            self.get_logger().warning(msg)
        except Exception:  # logging must never take the capture thread down
            pass

    def _run(self) -> None:
        """Capture thread: keeps the session loop alive whatever goes wrong inside it."""
        while not self._stop.is_set():
            try:
                self._sessions()
                return
            except Exception as err:
                self.state = "waiting"
                self._warn(f"capture loop failed: {err!r}; restarting", 5.0)
                self._stop.wait(self.params.reconnect_period_s)

    def _sessions(self) -> None:
        p = self.params
        throttle = max(5.0, p.reconnect_period_s)
        while not self._stop.is_set():
            try:
                self.source.start()
            except SourceError as err:
                self.state = "waiting"
                self._warn(
                    f"waiting for {self.source.description}: {err}; "
                    f"retrying every {p.reconnect_period_s:g} s",
                    throttle,
                )
                self._stop.wait(p.reconnect_period_s)
                continue
            except Exception as err:
                self.state = "waiting"
                self._warn(f"{self.source.description}: start failed: {err!r}", throttle)
                self._stop.wait(p.reconnect_period_s)
                continue
            if self.sessions:
                self.reconnects += 1
                self.get_logger().info(f"{self.source.description}: reconnected")
            self.sessions += 1
            self.stamps.restart()
            self.state = "streaming"
            finished = self._stream()
            try:
                self.source.stop()
            except Exception as err:
                self._warn(f"{self.source.description}: stop failed: {err!r}", throttle)
            if finished:
                self.state = "finished"
                self.get_logger().info(f"{self.source.description}: playback finished")
                return
            if not self._stop.is_set():
                self.state = "waiting"
                self._stop.wait(p.reconnect_period_s)

    def _stream(self) -> bool:
        """Publish frames until the source fails or stops; True at the end of a recording."""
        p = self.params
        while not self._stop.is_set():
            try:
                frames = self.source.wait(p.frame_timeout_s)
            except EndOfStream:
                return True
            except SourceError as err:
                self._warn(f"{err}; stopping and reconnecting", 1.0)
                return False
            except Exception as err:
                self._warn(f"{self.source.description}: capture failed: {err!r}", 1.0)
                return False
            if frames is None:
                self._warn(
                    f"{self.source.description}: no frame for {p.frame_timeout_s:g} s; "
                    "stopping and reconnecting",
                    1.0,
                )
                return False
            try:
                self._publish(frames)
            except Exception as err:
                if self.context.ok():  # else SIGINT shut the context down before stop()
                    self._warn(f"{self.source.description}: publish failed: {err!r}", 5.0)
        return False

    def _publish(self, frames: Frames) -> None:
        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = self.stamps.map(frames.timestamp_ms, now_ns).stamp_ns
        frame_id = self.params.color_frame_id
        header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)
        intr = self.source.color_intrinsics
        img = rgb_image_msg(frames.color, stamp_ns, frame_id)
        info = camera_info(intr, header) if intr is not None else None
        jpeg = None
        if self._jpeg_pub is not None:
            ok, coded = cv2.imencode(
                ".jpg", cv2.cvtColor(frames.color, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, self.params.jpeg_quality],
            )
            if not ok:
                raise RuntimeError("JPEG encoding of the color frame failed")
            jpeg = compressed_image_msg(coded.tobytes(), "rgb8; jpeg compressed bgr8", stamp_ns,
                                        frame_id)
        depth_img = None
        if frames.depth is not None and self._depth_pub is not None:
            depth_img = depth_image_msg(frames.depth, stamp_ns, frame_id)
        with self._pub_lock:
            if self._closed or not self.context.ok():
                return
            self._color_pub.publish(img)
            if jpeg is not None and self._jpeg_pub is not None:
                self._jpeg_pub.publish(jpeg)
            if info is not None:
                self._color_info_pub.publish(info)
            if depth_img is not None and self._depth_pub is not None:
                self._depth_pub.publish(depth_img)
                if info is not None and self._depth_info_pub is not None:
                    self._depth_info_pub.publish(info)
                self.published_depth += 1
            self.published += 1
            self._color_rate.record(time.monotonic_ns())


def main(args: list[str] | None = None) -> int:
    try:
        node = start_node(RealSenseCameraNode, args if args is not None else sys.argv)
    except (ValueError, SourceError) as err:
        print(f"{NODE_NAME}: {err}", file=sys.stderr)
        return 2
    node.start()
    spin_node(node, on_shutdown=node.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
