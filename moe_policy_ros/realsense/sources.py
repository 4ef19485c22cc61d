"""Pluggable RealSense frame sources (pyrealsense2 only, no ROS).

The camera node reads frames through the small :class:`FrameSource` protocol, so the same
capture loop runs against

* :class:`PipelineFrameSource`: an ``rs.pipeline`` on a real device (chosen by serial number)
  or on a recording played back with ``rs.config.enable_device_from_file``;
* :class:`SoftwareFrameSource`: an ``rs.software_device`` whose software sensors receive
  injected frames (``on_video_frame``) that are read back through an ``rs.syncer`` and
  ``rs.align``. This is librealsense's own frame path (frame pool, syncer matching,
  alignment), with no camera attached, for tests and for ``source: software``.

Both return :class:`Frames`: RGB color plus (optionally) depth aligned to color, the frame's
timestamp in milliseconds and its timestamp domain. A source raises :class:`SourceError` when
the device is missing or lost (the node then retries) and :class:`EndOfStream` when a
recording ends without repeat.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from moe_policy_ros.core.imageconv import ImageError, image_from_raw
from moe_policy_ros.core.loop import PeriodicLoop

try:
    import pyrealsense2 as rs
except ImportError:  # pragma: no cover - exercised where pyrealsense2 is missing
    rs = None

#: librealsense color formats we convert, by their ROS encoding name.
_COLOR_ENCODINGS = {
    "rgb8": "rgb8",
    "bgr8": "bgr8",
    "rgba8": "rgba8",
    "bgra8": "bgra8",
    "y8": "mono8",
}

#: librealsense distortion model -> (sensor_msgs/CameraInfo distortion_model, number of D).
#: Brown-Conrady variants are the 5-parameter plumb_bob (realsense-ros does the same);
#: Kannala-Brandt / f-theta fisheye models are "equidistant" with 4 parameters.
_ROS_DISTORTION = {
    "none": ("plumb_bob", 5),
    "brown_conrady": ("plumb_bob", 5),
    "modified_brown_conrady": ("plumb_bob", 5),
    "inverse_brown_conrady": ("plumb_bob", 5),
    "kannala_brandt4": ("equidistant", 4),
    "ftheta": ("equidistant", 4),
}


class SourceError(RuntimeError):
    """The camera is missing, was unplugged or failed; the message names which one."""


class EndOfStream(SourceError):
    """A recording played to its end (and repeat is off)."""


def require_pyrealsense2() -> Any:
    """The ``pyrealsense2`` module, or :class:`SourceError` naming what is missing."""
    if rs is None:
        raise SourceError("pyrealsense2 is not installed (pip install pyrealsense2)")
    return rs


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of one stream (pixels) and its distortion (librealsense names)."""

    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    model: str = "brown_conrady"
    coeffs: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def from_rs(cls, intr: Any) -> Intrinsics:
        return cls(
            width=int(intr.width),
            height=int(intr.height),
            fx=float(intr.fx),
            fy=float(intr.fy),
            ppx=float(intr.ppx),
            ppy=float(intr.ppy),
            model=intr.model.name,
            coeffs=tuple(float(c) for c in intr.coeffs),
        )

    @classmethod
    def default(cls, width: int, height: int) -> Intrinsics:
        """Plausible intrinsics for a synthetic stream (about 69 deg horizontal FOV)."""
        f = 0.72 * width
        return cls(width, height, f, f, (width - 1) / 2.0, (height - 1) / 2.0)

    def to_rs(self) -> Any:
        intr = require_pyrealsense2().intrinsics()
        intr.width, intr.height = self.width, self.height
        intr.fx, intr.fy, intr.ppx, intr.ppy = self.fx, self.fy, self.ppx, self.ppy
        intr.model = getattr(rs.distortion, self.model)
        intr.coeffs = list(self.coeffs) + [0.0] * (5 - len(self.coeffs))
        return intr

    @property
    def ros_distortion_model(self) -> str:
        return _ROS_DISTORTION.get(self.model, ("plumb_bob", 5))[0]

    @property
    def ros_d(self) -> list[float]:
        n = _ROS_DISTORTION.get(self.model, ("plumb_bob", 5))[1]
        return [float(c) for c in self.coeffs[:n]] + [0.0] * max(0, n - len(self.coeffs))

    @property
    def k(self) -> list[float]:
        return [self.fx, 0.0, self.ppx, 0.0, self.fy, self.ppy, 0.0, 0.0, 1.0]

    @property
    def p(self) -> list[float]:
        """Projection of a monocular camera (no stereo baseline): ``[K | 0]``."""
        return [self.fx, 0.0, self.ppx, 0.0, 0.0, self.fy, self.ppy, 0.0, 0.0, 0.0, 1.0, 0.0]


@dataclass(frozen=True)
class Frames:
    """One capture: RGB color, depth aligned to color (or None), and the device timestamp."""

    color: np.ndarray  # (H, W, 3) uint8 RGB
    depth: np.ndarray | None  # (H, W) uint16, depth units (see FrameSource.depth_scale)
    timestamp_ms: float
    domain: str  # "hardware_clock" | "global_time" | "system_time"
    frame_number: int


class FrameSource(Protocol):
    """Where frames come from. ``start`` may be called again after ``stop`` (reconnect)."""

    #: Human-readable identity for logs ("serial 123456", "bag /x.db3", "software").
    description: str
    #: Color intrinsics (aligned depth shares them); valid after a successful ``start``.
    color_intrinsics: Intrinsics | None
    #: Metres per depth unit; valid after ``start`` when depth is enabled.
    depth_scale: float

    def start(self) -> None:
        """Open the device or file and start streaming; :class:`SourceError` if impossible."""
        ...

    def wait(self, timeout_s: float) -> Frames | None:
        """The next capture, or None after ``timeout_s``; :class:`SourceError` if lost."""
        ...

    def stop(self) -> None:
        """Stop streaming; safe to call twice or after a failed ``start``."""
        ...


def frames_from_frameset(fs: Any, align: Any | None) -> Frames | None:
    """Convert an ``rs.composite_frame`` to :class:`Frames` (None when it has no color).

    With ``align`` (an ``rs.align(rs.stream.color)``) and a depth frame present, depth is
    reprojected into the color camera; a frameset without depth gives ``depth=None``.
    """
    if align is not None and fs.get_depth_frame():
        fs = align.process(fs).as_frameset()
    color = fs.get_color_frame()
    if not color:
        return None
    fmt = color.get_profile().format().name
    enc = _COLOR_ENCODINGS.get(fmt)
    if enc is None:
        raise SourceError(
            f"color stream format {fmt!r} is not supported; expected one of "
            f"{sorted(_COLOR_ENCODINGS)}"
        )
    try:
        rgb = image_from_raw(
            color.get_height(),
            color.get_width(),
            enc,
            color.get_stride_in_bytes(),
            np.asanyarray(color.get_data()),
        )
    except ImageError as err:
        raise SourceError(f"bad color frame {color.get_frame_number()}: {err}") from None
    depth = None
    dframe = fs.get_depth_frame() if align is not None else None
    if dframe:
        depth = np.array(np.asanyarray(dframe.get_data()), dtype=np.uint16, order="C")
    return Frames(
        color=rgb,
        depth=depth,
        timestamp_ms=float(color.get_timestamp()),
        domain=color.get_frame_timestamp_domain().name,
        frame_number=int(color.get_frame_number()),
    )


# --------------------------------------------------------------------------- real pipeline


class PipelineFrameSource:
    """``rs.pipeline`` on a device (by serial number) or on a recording (``bag_path``).

    Device removal is noticed two ways: the context's devices-changed callback flags our
    device as removed (the next :meth:`wait` raises at once), and ``wait`` times out.
    Recordings are rosbag2 ``.db3`` files in librealsense >= 2.56 (this module does not
    convert ROS 1 ``.bag`` files: use ``rs.context().convert_bag_to_db3``).
    """

    def __init__(
        self,
        *,
        serial_no: str = "",
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        enable_depth: bool = False,
        depth_width: int = 0,
        depth_height: int = 0,
        bag_path: str = "",
        repeat: bool = False,
        real_time: bool = True,
    ) -> None:
        require_pyrealsense2()
        self.serial_no = serial_no
        self.width, self.height, self.fps = width, height, fps
        self.enable_depth = enable_depth
        self.depth_width = depth_width or width
        self.depth_height = depth_height or height
        self.bag_path = bag_path
        self.repeat = repeat
        self.real_time = real_time
        self.description = (
            f"recording {bag_path}"
            if bag_path
            else (f"RealSense serial {serial_no}" if serial_no else "first RealSense device")
        )
        self.color_intrinsics: Intrinsics | None = None
        self.depth_scale = 0.001
        self._ctx: Any = None
        self._pipeline: Any = None
        self._device: Any = None
        self._align: Any = None
        self._removed = threading.Event()
        self._lock = threading.Lock()

    # devices-changed callback (librealsense thread)
    def _on_devices_changed(self, info: Any) -> None:
        dev = self._device
        try:
            if dev is not None and info.was_removed(dev):
                self._removed.set()
        except RuntimeError:
            self._removed.set()

    def _config(self) -> Any:
        cfg = rs.config()
        if self.bag_path:
            if self.bag_path.endswith(".bag"):
                raise SourceError(
                    f"{self.bag_path}: librealsense {rs.__version__} plays rosbag2 .db3 "
                    "recordings, not ROS 1 .bag files; convert it first with "
                    "rs.context().convert_bag_to_db3(input, output)"
                )
            cfg.enable_device_from_file(self.bag_path, self.repeat)
            cfg.enable_stream(rs.stream.color)
            if self.enable_depth:
                cfg.enable_stream(rs.stream.depth)
            return cfg
        serials = []
        for dev in self._ctx.query_devices():
            try:
                serials.append(dev.get_info(rs.camera_info.serial_number))
            except RuntimeError:
                continue
        if not serials:
            raise SourceError("no RealSense device is connected")
        if self.serial_no and self.serial_no not in serials:
            raise SourceError(f"no RealSense with serial {self.serial_no!r}; connected: {serials}")
        cfg.enable_device(self.serial_no or serials[0])
        cfg.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        if self.enable_depth:
            cfg.enable_stream(
                rs.stream.depth, self.depth_width, self.depth_height, rs.format.z16, self.fps
            )
        return cfg

    def start(self) -> None:
        with self._lock:
            self._stop_locked()
            if self._ctx is None:
                self._ctx = rs.context()
                if not self.bag_path:
                    self._ctx.set_devices_changed_callback(self._on_devices_changed)
            self._removed.clear()
            cfg = self._config()
            pipeline = rs.pipeline(self._ctx)
            try:
                profile = pipeline.start(cfg)
            except RuntimeError as err:
                raise SourceError(f"{self.description}: cannot start streaming: {err}") from None
            self._pipeline = pipeline
            self._device = profile.get_device()
            if self.bag_path:
                self._device.as_playback().set_real_time(self.real_time)
            color = profile.get_stream(rs.stream.color).as_video_stream_profile()
            self.color_intrinsics = Intrinsics.from_rs(color.get_intrinsics())
            self._align = None
            if self.enable_depth:
                try:
                    self.depth_scale = float(self._device.first_depth_sensor().get_depth_scale())
                except RuntimeError:
                    self.depth_scale = 0.001
                self._align = rs.align(rs.stream.color)

    def wait(self, timeout_s: float) -> Frames | None:
        pipeline = self._pipeline
        if pipeline is None:
            raise SourceError(f"{self.description}: not started")
        if self._removed.is_set():
            raise SourceError(f"{self.description}: device was unplugged")
        try:
            ok, fs = pipeline.try_wait_for_frames(max(1, int(timeout_s * 1000)))
        except RuntimeError as err:
            raise SourceError(f"{self.description}: {err}") from None
        if self._removed.is_set():
            raise SourceError(f"{self.description}: device was unplugged")
        if not ok:
            if self.bag_path and not self.repeat:
                status = self._device.as_playback().current_status()
                if status == rs.playback_status.stopped:
                    raise EndOfStream(f"{self.description}: playback finished")
            return None
        return frames_from_frameset(fs, self._align)

    def _stop_locked(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError:
                pass
        self._pipeline = None
        self._device = None

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()


# --------------------------------------------------------------------------- software device


#: Software device clock origin (ms). Found by experiment with pyrealsense2 2.59: the syncer's
#: timestamp matcher pairs color and depth only when their clock reads like a real one (frames
#: about a period apart on a large count; from 1e6 ms it stops pairing after two frames), so the
#: synthetic hardware clock starts at a large, D4xx-like count. The first capture after a start
#: is never paired (color and depth come out separately).
SOFTWARE_CLOCK_BASE_MS = 1.0e9


@functools.lru_cache(maxsize=4)
def _pattern_base(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The static part of :func:`synthetic_pattern` (read-only arrays, cached per size)."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:, :, 0] = (xx * 255 // max(1, width - 1)).astype(np.uint8)
    rgb[:, :, 1] = (yy * 255 // max(1, height - 1)).astype(np.uint8)
    rgb[:, :, 2] = 0
    depth = (500 + xx + yy).astype(np.uint16)
    rgb.flags.writeable = depth.flags.writeable = False
    return rgb, depth


def synthetic_pattern(width: int, height: int, frame_number: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic RGB frame (gradients plus a moving bar) and a depth ramp (mm).

    The gradients and the depth ramp are computed once per size (at 1280x720 computing them
    per frame took 56 ms, capping the software camera below 20 Hz); the depth array is shared
    and read-only.
    """
    base, depth = _pattern_base(width, height)
    rgb = base.copy()
    rgb[:, :, 2] = np.uint8(frame_number % 256)
    bar = (frame_number * 4) % width
    rgb[:, bar : bar + 4] = 255
    return rgb, depth


class SoftwareFrameSource:
    """An ``rs.software_device`` with a color (and depth) sensor, read through ``rs.syncer``.

    Frames enter with :meth:`inject` (tests) or from the built-in test-pattern generator
    (``generate=True``, paced at ``fps`` on absolute deadlines); ``record_to`` (a ``.db3``
    path) also records them with ``rs.recorder``. The device is rebuilt on every
    :meth:`start`, like a camera that re-enumerates. :meth:`simulate_unplug` makes the device
    disappear for a while: nothing is delivered and ``start`` fails until it comes back.
    """

    def __init__(
        self,
        *,
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        enable_depth: bool = False,
        intrinsics: Intrinsics | None = None,
        depth_scale: float = 0.001,
        generate: bool = False,
        serial_no: str = "software-0",
        record_to: str = "",
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        require_pyrealsense2()
        self.width, self.height, self.fps = width, height, fps
        self.enable_depth = enable_depth
        self.intrinsics = intrinsics or Intrinsics.default(width, height)
        if (self.intrinsics.width, self.intrinsics.height) != (width, height):
            raise ValueError(
                f"intrinsics size {self.intrinsics.width}x{self.intrinsics.height} differs "
                f"from the stream size {width}x{height}"
            )
        self.depth_scale = depth_scale
        self.generate = generate
        self.serial_no = serial_no
        self.record_to = record_to
        self.description = f"software device {serial_no}"
        self.color_intrinsics: Intrinsics | None = None
        self._clock = clock
        self._epoch_ns = clock()
        self._lock = threading.Lock()
        self._dev: Any = None
        self._recorder: Any = None
        self._sensors: list[Any] = []
        self._opened: list[Any] = []
        self._color_profile: Any = None
        self._depth_profile: Any = None
        self._syncer: Any = None
        self._align: Any = None
        self._frame_number = 0
        self._unplugged_until_ns = 0
        self._gen_stop = threading.Event()
        self._gen_thread: threading.Thread | None = None
        self.injected = 0

    # ----------------------------------------------------------------- device clock / unplug
    def device_time_ms(self) -> float:
        """The synthetic hardware clock (ms), like a camera's free-running counter."""
        return SOFTWARE_CLOCK_BASE_MS + (self._clock() - self._epoch_ns) / 1e6

    def simulate_unplug(self, duration_s: float) -> None:
        """Disappear for ``duration_s``: no frames, and ``start`` raises, until it is over."""
        with self._lock:
            self._unplugged_until_ns = self._clock() + int(duration_s * 1e9)

    @property
    def unplugged(self) -> bool:
        return self._clock() < self._unplugged_until_ns

    # ----------------------------------------------------------------- lifecycle
    def _build(self) -> None:
        dev = rs.software_device()
        dev.register_info(rs.camera_info.name, "Software RealSense")
        dev.register_info(rs.camera_info.serial_number, self.serial_no)
        color_sensor = dev.add_sensor("RGB Camera")
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid = rs.stream.color, 0, 0
        vs.width, vs.height, vs.fps = self.width, self.height, self.fps
        vs.bpp, vs.fmt, vs.intrinsics = 3, rs.format.rgb8, self.intrinsics.to_rs()
        self._color_profile = color_sensor.add_video_stream(vs, True).as_video_stream_profile()
        self._sensors = [color_sensor]
        if self.enable_depth:
            depth_sensor = dev.add_sensor("Stereo Module")
            ds = rs.video_stream()
            ds.type, ds.index, ds.uid = rs.stream.depth, 0, 1
            ds.width, ds.height, ds.fps = self.width, self.height, self.fps
            ds.bpp, ds.fmt, ds.intrinsics = 2, rs.format.z16, self.intrinsics.to_rs()
            depth_profile = depth_sensor.add_video_stream(ds, True)
            depth_sensor.add_read_only_option(rs.option.depth_units, self.depth_scale)
            ident = rs.extrinsics()
            ident.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            ident.translation = [0.0, 0.0, 0.0]
            depth_profile.register_extrinsics_to(self._color_profile, ident)
            self._depth_profile = depth_profile.as_video_stream_profile()
            self._sensors.append(depth_sensor)
        dev.create_matcher(rs.matchers.default)
        self._dev = dev
        self._syncer = rs.syncer(8)
        self._align = rs.align(rs.stream.color) if self.enable_depth else None
        # With ``record_to``, frames pass through an ``rs.recorder`` wrapping the device (a
        # rosbag2 .db3 file); its sensors are the ones opened, the software ones get injected.
        opened = self._sensors
        if self.record_to:
            self._recorder = rs.recorder(self.record_to, dev)
            opened = list(self._recorder.query_sensors())
        for sensor in opened:
            sensor.open(sensor.get_stream_profiles()[0])
            sensor.start(self._syncer)
        self._opened = opened

    @property
    def device(self) -> Any:
        """The ``rs.software_device`` of the current session (None when stopped)."""
        return self._dev

    def start(self) -> None:
        with self._lock:
            if self._clock() < self._unplugged_until_ns:
                raise SourceError(f"{self.description} is unplugged (simulated)")
            self._stop_locked()
            self._build()
            self.color_intrinsics = Intrinsics.from_rs(self._color_profile.get_intrinsics())
        if self.generate:
            self._gen_stop.clear()
            self._gen_thread = threading.Thread(
                target=self._generate, name="rs-software-pattern", daemon=True
            )
            self._gen_thread.start()

    def inject(
        self,
        color: np.ndarray,
        depth: np.ndarray | None = None,
        *,
        timestamp_ms: float | None = None,
        frame_number: int | None = None,
        domain: str = "hardware_clock",
    ) -> bool:
        """Push one capture into the software sensors; False when unplugged or stopped."""
        if color.shape != (self.height, self.width, 3) or color.dtype != np.uint8:
            raise ValueError(
                f"color must be uint8 ({self.height}, {self.width}, 3); "
                f"got {color.dtype} {color.shape}"
            )
        if depth is not None and (
            depth.shape != (self.height, self.width) or depth.dtype != np.uint16
        ):
            raise ValueError(
                f"depth must be uint16 ({self.height}, {self.width}); "
                f"got {depth.dtype} {depth.shape}"
            )
        with self._lock:
            if self._dev is None or self._clock() < self._unplugged_until_ns:
                return False
            ts = self.device_time_ms() if timestamp_ms is None else float(timestamp_ms)
            n = self._frame_number if frame_number is None else int(frame_number)
            self._frame_number = n + 1
            dom = getattr(rs.timestamp_domain, domain)
            f = rs.software_video_frame()
            f.pixels = np.ascontiguousarray(color)
            f.bpp, f.stride = 3, self.width * 3
            f.timestamp, f.domain, f.frame_number = ts, dom, n
            f.profile = self._color_profile
            self._sensors[0].on_video_frame(f)
            if depth is not None and self._depth_profile is not None:
                g = rs.software_video_frame()
                g.pixels = np.ascontiguousarray(depth)
                g.bpp, g.stride = 2, self.width * 2
                g.timestamp, g.domain, g.frame_number = ts, dom, n
                g.depth_units = self.depth_scale
                g.profile = self._depth_profile
                self._sensors[1].on_video_frame(g)
            self.injected += 1
            return True

    def _generate(self) -> None:
        """Frames at ``fps`` on absolute deadlines (core.loop, catch_up): more than one
        period behind (or after an unplug), the generator resynchronises."""

        def frame(_step: int, _now: int) -> None:
            if not self.unplugged:
                rgb, depth = synthetic_pattern(self.width, self.height, self._frame_number)
                self.inject(rgb, depth if self.enable_depth else None)

        loop = PeriodicLoop(self.fps, _CallableClock(self._clock), late="catch_up",
                            max_lag_s=1.0 / self.fps)
        loop.run(frame, self._gen_stop)

    def wait(self, timeout_s: float) -> Frames | None:
        syncer = self._syncer
        if syncer is None:
            raise SourceError(f"{self.description}: not started")
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return None
            ok, fs = syncer.try_wait_for_frames(remaining_ms)
            if not ok:
                return None
            frames = frames_from_frameset(fs, self._align)
            if frames is not None:  # depth-only sets (unmatched first frame) are skipped
                return frames

    def _stop_locked(self) -> None:
        for sensor in self._opened:
            try:
                sensor.stop()
            except RuntimeError:
                pass
            try:
                sensor.close()
            except RuntimeError:
                pass
        self._sensors = []
        self._opened = []
        self._recorder = None  # releasing the recorder finalises the file
        self._dev = None
        self._color_profile = self._depth_profile = None

    def stop(self) -> None:
        self._gen_stop.set()
        t = self._gen_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2.0)
        self._gen_thread = None
        with self._lock:
            self._stop_locked()
            self._syncer = None


class _CallableClock:
    """A ``() -> ns`` function as a core.clock.Clock (waits on the stop event)."""

    def __init__(self, now: Callable[[], int]) -> None:
        self.now_ns = now

    def sleep_until_ns(self, deadline_ns: int, stop: threading.Event | None = None) -> bool:
        remaining = max(0.0, (deadline_ns - self.now_ns()) / 1e9)
        if stop is None:
            time.sleep(remaining)
            return False
        return stop.wait(remaining)
