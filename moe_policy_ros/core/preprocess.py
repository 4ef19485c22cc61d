"""Camera frames of any size to the policy's input size, off the control thread.

Design notes:

* **Same function as training.** The training recorder makes its images with
  :func:`~moe_policy_ros.core.imageconv.resize_to` (INTER_AREA when shrinking); the runtime
  uses that function too, with the crop the bundle declares (``CameraSpec.preprocess``,
  overridable per camera in the config). :class:`CameraPipeline` gives bit-identical results to
  ``resize_to(image_from_raw(...), size, ...)``: it resizes the encoded channels first and
  swaps or replicates channels afterwards, at the small size, which commutes exactly with a
  per-channel filter.
* **No full-size copy.** A raw ``Image`` is read through a zero-copy view of the message
  buffer; the crop is a view; the resize writes into a preallocated buffer of the input size.
  Only a compressed image is decoded into a new full-size array (OpenCV's decoder allocates).
* **Off the executor and the control thread.** Subscription callbacks only hand the message to
  :class:`FrameWorker` (a mailbox of ``depth`` frames per camera, 2 by default: it absorbs a
  burst, as when a loaded executor delivers two frames back to back, while a worker that
  falls behind for good drops the oldest, counted as *superseded*, and never adds more than
  one frame of latency); the worker thread decodes and resizes, then stores the result in
  the :class:`~moe_policy_ros.core.inputs.InputBuffer`. OpenCV releases the GIL while it
  resizes or decodes.
* **Double buffering.** Each camera has two output buffers; the worker writes the one that the
  input buffer does not hold, then swaps. ``InputBuffer.images()`` copies under its lock, so a
  reader never sees a buffer being written.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from moe_policy_ros.core.config import PreprocessOverride
from moe_policy_ros.core.imageconv import (
    ImageError,
    aspect_distortion,
    crop_box,
    decode_compressed_bgr,
    raw_view,
    resize_to,
)
from moe_policy_ros.core.manifest import PreprocessSpec

#: Aspect-ratio change above which the node warns (once per camera and source size).
DISTORTION_WARN = 0.01


def resolve_preprocess(spec: PreprocessSpec, override: PreprocessOverride) -> PreprocessSpec:
    """The bundle's preprocessing with the config's non-empty fields applied on top."""
    mode = override.mode or spec.mode
    roi: tuple[int, int, int, int] | None
    if override.roi:
        x, y, w, h = override.roi
        roi = (x, y, w, h)
    else:
        roi = spec.roi
    if mode != "roi":
        roi = None
    return PreprocessSpec(
        mode=mode, roi=roi, interpolation=override.interpolation or spec.interpolation
    )


@dataclass(frozen=True)
class RawFrame:
    """The fields of a ``sensor_msgs/Image`` (``data`` any byte buffer, not copied)."""

    height: int
    width: int
    encoding: str
    step: int
    data: Any


@dataclass(frozen=True)
class CompressedFrame:
    """The fields of a ``sensor_msgs/CompressedImage``."""

    format: str
    data: Any


Frame = RawFrame | CompressedFrame


@dataclass(frozen=True)
class Processed:
    """What one frame was: its source size (h, w) and encoding (``jpeg``/``png``: compressed)."""

    source_size: tuple[int, int]
    encoding: str


class CameraPipeline:
    """Decode + crop + resize one camera's frames into a caller's ``(h, w, 3)`` RGB buffer.

    ``encodings``: the raw encodings accepted (rgb8 and bgr8 always; mono8 only where the
    config says the bundle takes a grey camera). ``warn`` receives one message per source size
    whose crop-then-resize distorts the aspect ratio.
    """

    def __init__(
        self,
        name: str,
        size: tuple[int, int],
        spec: PreprocessSpec,
        encodings: Collection[str] = ("rgb8", "bgr8"),
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.size = (int(size[0]), int(size[1]))
        self.spec = spec
        self.encodings = tuple(sorted(set(encodings)))
        self._warn = warn
        self._checked: set[tuple[int, int]] = set()
        self._mono = np.empty((*self.size, 1), np.uint8)

    def describe(self) -> str:
        """``resize (area)``, ``center_crop (area)``, ``roi [x, y, w, h] (area)``."""
        roi = f" {list(self.spec.roi)}" if self.spec.roi is not None else ""
        return f"{self.spec.mode}{roi} ({self.spec.interpolation})"

    def new_buffer(self) -> np.ndarray:
        return np.zeros((*self.size, 3), np.uint8)

    def _check_source(self, hw: tuple[int, int]) -> None:
        if hw in self._checked:
            return
        # Raises ImageError (cause size) for an roi outside this image, every frame.
        crop_box(hw, self.size, self.spec.mode, self.spec.roi)
        d = aspect_distortion(hw, self.size, self.spec.mode, self.spec.roi)
        self._checked.add(hw)
        if d > DISTORTION_WARN and self._warn is not None:
            h, w = self.size
            self._warn(
                f"camera {self.name}: {hw[1]}x{hw[0]} frames are brought to {w}x{h} by "
                f"{self.describe()}, which stretches the aspect ratio by {d:.0%}; fine if the "
                f"policy was trained that way, otherwise set preprocess mode center_crop or roi"
            )

    def process(self, frame: Frame, out: np.ndarray) -> Processed:
        """Write the policy's view of ``frame`` into ``out``; raises ImageError naming the
        bad value (``cause`` size, encoding or data)."""
        spec = self.spec
        if isinstance(frame, CompressedFrame):
            bgr = decode_compressed_bgr(frame.format, frame.data)
            hw = (int(bgr.shape[0]), int(bgr.shape[1]))
            self._check_source(hw)
            resize_to(bgr, self.size, mode=spec.mode, roi=spec.roi,
                      interpolation=spec.interpolation, out=out)
            cv2.cvtColor(out, cv2.COLOR_BGR2RGB, dst=out)
            words = frame.format.lower().replace(";", " ").split()
            return Processed(hw, "png" if "png" in words else "jpeg")
        if frame.encoding not in self.encodings:
            raise ImageError(
                f"encoding {frame.encoding!r} is not accepted for camera {self.name} "
                f"(expected one of {list(self.encodings)})",
                cause="encoding",
            )
        view = raw_view(frame.height, frame.width, frame.encoding, frame.step, frame.data)
        hw = (int(view.shape[0]), int(view.shape[1]))
        self._check_source(hw)
        args: dict[str, Any] = dict(mode=spec.mode, roi=spec.roi,
                                    interpolation=spec.interpolation)
        if frame.encoding == "mono8":
            resize_to(view, self.size, out=self._mono, **args)
            cv2.cvtColor(self._mono, cv2.COLOR_GRAY2RGB, dst=out)
        else:
            resize_to(view, self.size, out=out, **args)
            if frame.encoding == "bgr8":
                cv2.cvtColor(out, cv2.COLOR_BGR2RGB, dst=out)
        return Processed(hw, frame.encoding)


#: sink(camera, image, stamp_ns, receive_ns): store a processed frame (raises to reject it).
Sink = Callable[[str, np.ndarray, int, int], None]
#: on_done(camera, processed or None, error or None): bookkeeping after each frame.
Done = Callable[[str, Processed | None, ImageError | None], None]


@dataclass
class _Job:
    frame: Frame
    stamp_ns: int
    recv_ns: int


class FrameWorker:
    """A thread that runs each camera's newest frame through its pipeline into the sink.

    ``submit`` never blocks and never decodes: it queues the frame, dropping the camera's
    oldest pending one when ``depth`` are waiting (counted in ``superseded``). ``run_pending``
    processes what is pending in the calling thread (tests, or a node without a worker).
    """

    def __init__(
        self, pipelines: dict[str, CameraPipeline], sink: Sink, done: Done, depth: int = 2
    ) -> None:
        if depth < 1:
            raise ValueError(f"mailbox depth must be >= 1 (got {depth})")
        self.pipelines = pipelines
        self._sink = sink
        self._done = done
        self._pending: dict[str, deque[_Job]] = {n: deque() for n in pipelines}
        self._depth = depth
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._buffers = {n: [p.new_buffer(), p.new_buffer()] for n, p in pipelines.items()}
        self._front = dict.fromkeys(pipelines, 0)
        self.superseded = dict.fromkeys(pipelines, 0)
        self.processed = dict.fromkeys(pipelines, 0)

    def submit(self, camera: str, frame: Frame, stamp_ns: int, recv_ns: int) -> None:
        if camera not in self.pipelines:
            raise KeyError(f"unknown camera {camera!r}; cameras are {sorted(self.pipelines)}")
        with self._cond:
            queue = self._pending[camera]
            if len(queue) >= self._depth:
                queue.popleft()
                self.superseded[camera] += 1
            queue.append(_Job(frame, stamp_ns, recv_ns))
            self._cond.notify()

    def _take(self) -> list[tuple[str, _Job]]:
        """One pending frame per camera, oldest first (caller holds the condition)."""
        return [(cam, q.popleft()) for cam, q in self._pending.items() if q]

    def run_pending(self) -> int:
        """Process every pending frame now, in arrival order per camera; returns how many."""
        n = 0
        while True:
            with self._cond:
                jobs = self._take()
            if not jobs:
                return n
            for camera, job in jobs:
                self._process(camera, job)
            n += len(jobs)

    def _process(self, camera: str, job: _Job) -> None:
        pipe = self.pipelines[camera]
        back = 1 - self._front[camera]
        out = self._buffers[camera][back]
        try:
            info = pipe.process(job.frame, out)
            self._sink(camera, out, job.stamp_ns, job.recv_ns)
        except ImageError as err:
            self._done(camera, None, err)
            return
        except ValueError as err:  # the sink refused it (InputError: zero stamp)
            self._done(camera, None, ImageError(str(err), cause="stamp"))
            return
        self._front[camera] = back  # the sink now holds `out`; write the other one next
        self.processed[camera] += 1
        self._done(camera, info, None)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="frames", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        self._thread = None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not any(self._pending.values()):
                    self._cond.wait()
                if self._stop:
                    return
            self.run_pending()
