"""Preprocessing: any camera size to the bundle's, bit-identical to the training function."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from moe_policy_ros.core.config import PreprocessOverride
from moe_policy_ros.core.imageconv import (
    ImageError,
    image_from_compressed,
    image_from_raw,
    resize_to,
)
from moe_policy_ros.core.inputs import InputBuffer
from moe_policy_ros.core.manifest import PreprocessSpec
from moe_policy_ros.core.preprocess import (
    CameraPipeline,
    CompressedFrame,
    FrameWorker,
    RawFrame,
    resolve_preprocess,
)

SIZE = (96, 128)
S = 1_000_000_000


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth image with noise (so area averaging has something to average)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.dstack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256]).astype(np.int16)
    return np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def _raw(rgb: np.ndarray, encoding: str, pad: int = 0) -> RawFrame:
    if encoding == "bgr8":
        px = rgb[:, :, ::-1]
    elif encoding == "mono8":
        px = rgb[:, :, :1]
    else:
        px = rgb
    rows = np.ascontiguousarray(px).reshape(rgb.shape[0], -1)
    rows = np.hstack([rows, np.full((rows.shape[0], pad), 0xEE, np.uint8)])
    return RawFrame(rgb.shape[0], rgb.shape[1], encoding, rows.shape[1],
                    bytearray(rows.tobytes()))


@pytest.mark.parametrize("hw", [(480, 640), (720, 1280), (60, 80)])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
@pytest.mark.parametrize(
    "spec",
    [PreprocessSpec(), PreprocessSpec(mode="center_crop"),
     PreprocessSpec(mode="roi", roi=(8, 4, 40, 30)), PreprocessSpec(interpolation="linear")],
)
def test_pipeline_equals_resize_to_of_the_decoded_image(hw, encoding, spec) -> None:
    """Resizing before the channel swap/replication is exact: same bytes as training."""
    rgb = _frame(*hw)
    frame = _raw(rgb, encoding, pad=4)
    pipe = CameraPipeline("top", SIZE, spec, encodings={"rgb8", "bgr8", "mono8"})
    out = pipe.new_buffer()
    info = pipe.process(frame, out)
    decoded = image_from_raw(frame.height, frame.width, encoding, frame.step, frame.data)
    ref = resize_to(decoded, SIZE, mode=spec.mode, roi=spec.roi,
                    interpolation=spec.interpolation)
    np.testing.assert_array_equal(out, ref)
    assert info.source_size == hw and info.encoding == encoding


@pytest.mark.parametrize("fmt", ["jpeg", "rgb8; jpeg compressed bgr8", "png"])
def test_compressed_frames_match_decode_then_resize(fmt) -> None:
    rgb = _frame(480, 640, seed=3)
    ext = ".png" if "png" in fmt else ".jpg"
    ok, enc = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    pipe = CameraPipeline("top", SIZE, PreprocessSpec(mode="center_crop"))
    out = pipe.new_buffer()
    info = pipe.process(CompressedFrame(fmt, enc.tobytes()), out)
    ref = resize_to(image_from_compressed(fmt, enc.tobytes()), SIZE, mode="center_crop")
    np.testing.assert_array_equal(out, ref)
    assert info.source_size == (480, 640)
    assert info.encoding == ("png" if "png" in fmt else "jpeg")


def test_rejections_name_the_value_and_cause() -> None:
    pipe = CameraPipeline("top", SIZE, PreprocessSpec(mode="roi", roi=(600, 0, 100, 100)))
    out = pipe.new_buffer()
    before = out.copy()
    cases = [
        (_raw(_frame(48, 64), "rgb8"), "size", r"\(600, 0, 100, 100\).*64x48"),
        (_raw(_frame(48, 64), "mono8"), "encoding", r"'mono8' is not accepted for camera top"),
        (RawFrame(4, 4, "rgb8", 12, b"\0" * 47), "data", r"47 bytes; expected .* = 48"),
        (RawFrame(4, 4, "32FC1", 16, b"\0" * 64), "encoding", r"'32FC1'"),
        (CompressedFrame("tiff", b"x"), "encoding", r"'tiff'"),
        (CompressedFrame("jpeg", b"not a jpeg"), "data", r"10 bytes are not a decodable"),
    ]
    for frame, cause, match in cases:
        with pytest.raises(ImageError, match=match) as err:
            pipe.process(frame, out)
        assert err.value.cause == cause, (frame, err.value.cause)
    np.testing.assert_array_equal(out, before)  # nothing was written


def test_aspect_warning_once_per_source_size() -> None:
    warnings: list[str] = []
    pipe = CameraPipeline("top", SIZE, PreprocessSpec(), warn=warnings.append)
    out = pipe.new_buffer()
    for _ in range(3):
        pipe.process(_raw(_frame(480, 640), "rgb8"), out)  # 4:3 -> 4:3: no warning
    assert warnings == []
    for _ in range(3):
        pipe.process(_raw(_frame(720, 1280), "rgb8"), out)
    assert len(warnings) == 1
    assert "1280x720" in warnings[0] and "128x96" in warnings[0] and "33%" in warnings[0]
    assert "center_crop" in warnings[0]
    crop = CameraPipeline("top", SIZE, PreprocessSpec(mode="center_crop"), warn=warnings.append)
    crop.process(_raw(_frame(720, 1280), "rgb8"), crop.new_buffer())
    assert len(warnings) == 1


def test_resolve_preprocess_overrides_only_what_is_set() -> None:
    bundle = PreprocessSpec(mode="center_crop", interpolation="area")
    assert resolve_preprocess(bundle, PreprocessOverride()) == bundle
    r = resolve_preprocess(bundle, PreprocessOverride(mode="roi", roi=(1, 2, 30, 40)))
    assert (r.mode, r.roi, r.interpolation) == ("roi", (1, 2, 30, 40), "area")
    r = resolve_preprocess(PreprocessSpec(mode="roi", roi=(0, 0, 8, 8)),
                           PreprocessOverride(mode="resize"))
    assert (r.mode, r.roi) == ("resize", None)
    with pytest.raises(ValueError, match="needs roi"):
        resolve_preprocess(bundle, PreprocessOverride(mode="roi"))
    with pytest.raises(ValueError, match=r"\[x, y, w, h\]"):
        PreprocessOverride(roi=(1, 2, 3))


def test_manifest_default_is_resize_area() -> None:
    spec = PreprocessSpec()
    assert (spec.mode, spec.roi, spec.interpolation) == ("resize", None, "area")
    with pytest.raises(ValueError, match="mode is 'resize'"):
        PreprocessSpec(roi=(0, 0, 4, 4))


def _worker(depth: int = 2) -> tuple[FrameWorker, InputBuffer, list[tuple[str, object, object]]]:
    inputs = InputBuffer(["j"], 0.1, {"top": 0.2})
    pipe = CameraPipeline("top", SIZE, PreprocessSpec())
    done: list[tuple[str, object, object]] = []
    worker = FrameWorker({"top": pipe}, inputs.put_image,
                         lambda cam, info, err: done.append((cam, info, err)), depth=depth)
    return worker, inputs, done


def test_worker_mailbox_absorbs_a_burst_and_drops_the_oldest_beyond() -> None:
    worker, inputs, done = _worker(depth=2)
    frames = [_frame(48, 64, seed=i) for i in range(3)]
    for i, f in enumerate(frames):
        worker.submit("top", _raw(f, "rgb8"), (i + 1) * S, (i + 1) * S)
    assert worker.superseded["top"] == 1  # frame 0 dropped, frames 1 and 2 kept
    assert worker.run_pending() == 2
    assert [info.source_size for _c, info, _e in done] == [(48, 64), (48, 64)]
    assert inputs.status["top"].received == 2
    np.testing.assert_array_equal(inputs.images()["top"].image, resize_to(frames[2], SIZE))
    with pytest.raises(ValueError, match="depth must be >= 1"):
        FrameWorker({}, inputs.put_image, lambda *a: None, depth=0)


def test_worker_newest_frame_wins_and_double_buffers() -> None:
    worker, inputs, done = _worker(depth=1)
    frames = [_frame(480, 640, seed=i) for i in range(3)]
    for i, f in enumerate(frames):
        worker.submit("top", _raw(f, "rgb8"), (i + 1) * S, (i + 1) * S)
    assert worker.superseded["top"] == 2
    assert worker.run_pending() == 1
    first = inputs.images()["top"]
    np.testing.assert_array_equal(first.image, resize_to(frames[2], SIZE))
    assert first.stamp_ns == 3 * S
    stored = inputs._images["top"].image
    worker.submit("top", _raw(frames[0], "rgb8"), 4 * S, 4 * S)
    worker.run_pending()
    # the new frame went into the other buffer; the first copy handed out is untouched
    assert inputs._images["top"].image is not stored
    np.testing.assert_array_equal(first.image, resize_to(frames[2], SIZE))
    np.testing.assert_array_equal(inputs.images()["top"].image, resize_to(frames[0], SIZE))
    worker.submit("top", _raw(frames[1], "rgb8"), 5 * S, 5 * S)
    worker.run_pending()
    assert inputs._images["top"].image is stored  # two buffers, reused in turn
    assert worker.processed["top"] == 3 and len(done) == 3
    assert all(err is None for _c, _i, err in done)
    with pytest.raises(KeyError, match="'wrist'"):
        worker.submit("wrist", _raw(frames[0], "rgb8"), S, S)


def test_worker_rejection_keeps_the_last_good_image() -> None:
    worker, inputs, done = _worker()
    good = _frame(480, 640)
    worker.submit("top", _raw(good, "rgb8"), S, S)
    worker.run_pending()
    worker.submit("top", RawFrame(4, 4, "rgba8", 16, b"\0" * 64), 2 * S, 2 * S)
    worker.run_pending()
    worker.submit("top", _raw(good[::-1].copy(), "rgb8"), 0, 3 * S)  # zero stamp
    worker.run_pending()
    np.testing.assert_array_equal(inputs.images()["top"].image, resize_to(good, SIZE))
    causes = [getattr(err, "cause", None) for _c, _i, err in done]
    assert causes == [None, "encoding", "stamp"]
    assert inputs.status["top"].rejected == 1  # the stamp; the node counts the encoding


def test_worker_thread_processes_submissions() -> None:
    worker, inputs, _done = _worker()
    got = threading.Event()
    orig = worker._done

    def note(cam, info, err) -> None:
        orig(cam, info, err)
        got.set()

    worker._done = note
    worker.start()
    try:
        worker.submit("top", _raw(_frame(720, 1280), "bgr8"), S, S)
        assert got.wait(10.0), "the frame worker did not process the frame"
    finally:
        worker.stop()
    assert inputs.images()["top"].image.shape == (96, 128, 3)
    assert worker._thread is None
