"""The demo video writer: frames captioned with the status of the moment, a decodable MP4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moe_policy_ros.evaluation.video import OverlayVideo, count_frames

cv2 = pytest.importorskip("cv2")


def test_frames_are_captioned_and_the_mp4_decodes(tmp_path: Path) -> None:
    captions: list[list[str]] = []

    def status() -> list[str]:
        lines = [f"episode 1 seed 7 frame {len(captions)}", "active experts (2): grasp*, lift"]
        captions.append(lines)
        return lines

    video = OverlayVideo(tmp_path / "v.mp4", status, fps=10.0, width=320)
    grey = np.full((480, 640, 3), 200, np.uint8)
    for i in range(12):
        video.add(i / 10, grey)
    assert video.close() == tmp_path / "v.mp4"
    video.add(2.0, grey)  # after close: ignored, the file stays whole
    assert video.frames_written == 12 and len(captions) == 12
    assert count_frames(tmp_path / "v.mp4") == 12
    cap = cv2.VideoCapture(str(tmp_path / "v.mp4"))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (240, 320, 3)
    band, below = frame[:40], frame[60:]
    assert abs(float(below.mean()) - 200) < 8  # the picture itself is untouched
    assert float(np.median(band)) < 100  # a dark band behind the caption ...
    assert int((band > 180).sum()) > 200  # ... with white text on it


def test_no_frames_no_file(tmp_path: Path) -> None:
    video = OverlayVideo(tmp_path / "none.mp4", lambda: ["x"])
    assert video.close() is None and not (tmp_path / "none.mp4").exists()
    assert count_frames(tmp_path / "none.mp4") == 0
