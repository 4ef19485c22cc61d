"""The demo video: the sim's camera view with the episode, mode and active experts drawn on it.

:class:`OverlayVideo` is a frame sink (``add(t, rgb)``, called from a ROS callback thread):
each frame is scaled to ``width`` px, the caption of ``status()`` at that moment is drawn on a
dark band at the top (episode and seed, mode, active experts with the dominant one first,
success so far) and the frame is encoded at once (MP4, OpenCV ``mp4v``), so memory stays flat
however long the demo runs. ``frames_written`` counts what went into the file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Status = Callable[[], list[str]]


class VideoError(RuntimeError):
    """The video file cannot be written (the message names the file and the codec)."""


class OverlayVideo:
    def __init__(self, path: str | Path, status: Status, *, fps: float = 15.0,
                 width: int = 480) -> None:
        import cv2

        self._cv2 = cv2
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = float(fps)
        self.width = int(width)
        self._status = status
        self._writer: Any = None
        self._size: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.frames_written = 0

    def _open(self, w: int, h: int) -> None:
        cv2 = self._cv2
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                 (w, h))
        if not writer.isOpened():
            raise VideoError(f"{self.path}: OpenCV cannot write MP4 (mp4v) here")
        self._writer, self._size = writer, (w, h)

    def add(self, _t: float, rgb: np.ndarray) -> None:
        """Scale, caption and encode one RGB frame (thread-safe; ignored after close)."""
        if self._closed:
            return
        cv2 = self._cv2
        h0, w0 = rgb.shape[:2]
        h = max(2, round(h0 * self.width / w0) // 2 * 2)
        frame = cv2.resize(rgb, (self.width, h), interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        lines = self._status()
        band = 8 + 18 * len(lines)
        bgr[:band] = (bgr[:band] * 0.35).astype(np.uint8)
        for i, text in enumerate(lines):
            cv2.putText(bgr, text, (6, 18 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (255, 255, 255), 1, cv2.LINE_AA)
        with self._lock:
            if self._closed:
                return
            if self._writer is None:
                self._open(self.width, h)
            assert self._size == (self.width, h), "frame size changed mid-video"
            self._writer.write(bgr)
            self.frames_written += 1

    def close(self) -> Path | None:
        """Finish the file; its path, or None when no frame arrived."""
        with self._lock:
            self._closed = True
            if self._writer is None:
                return None
            self._writer.release()
            self._writer = None
        return self.path


def count_frames(path: str | Path) -> int:
    """Frames OpenCV decodes from a video file (0 when it cannot open it)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = 0
    try:
        while cap.isOpened():
            ok, _ = cap.read()
            if not ok:
                break
            n += 1
    finally:
        cap.release()
    return n
