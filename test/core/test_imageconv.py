"""Image field conversion: each encoding, row padding, compressed images and every error."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

from moe_policy_ros.core.imageconv import (
    ImageError,
    aspect_distortion,
    crop_box,
    depth_to_raw,
    image_from_compressed,
    image_from_raw,
    resize_to,
    rgb_to_raw,
)

H, W = 3, 4


def _rgb() -> np.ndarray:
    """A 3x4 RGB image whose every byte is distinct (pixel (r, c) = 12r + 3c + channel)."""
    return np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)


def _pad_rows(pixels: np.ndarray, pad: int) -> tuple[int, bytes]:
    """Raw bytes with ``pad`` junk bytes (0xEE) at the end of every row; returns (step, data)."""
    rows = pixels.reshape(pixels.shape[0], -1)
    junk = np.full((rows.shape[0], pad), 0xEE, np.uint8)
    padded = np.hstack([rows, junk])
    return padded.shape[1], padded.tobytes()


@pytest.mark.parametrize(
    ("encoding", "make"),
    [
        ("rgb8", lambda rgb: rgb),
        ("bgr8", lambda rgb: rgb[:, :, ::-1]),
        ("rgba8", lambda rgb: np.dstack([rgb, np.full((H, W), 7, np.uint8)])),
        ("bgra8", lambda rgb: np.dstack([rgb[:, :, ::-1], np.full((H, W), 7, np.uint8)])),
    ],
)
@pytest.mark.parametrize("pad", [0, 5])
def test_color_encodings_with_and_without_padding(encoding, make, pad) -> None:
    rgb = _rgb()
    step, data = _pad_rows(np.ascontiguousarray(make(rgb)), pad)
    out = image_from_raw(H, W, encoding, step, data, expect_size=(H, W))
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    assert out.flags.c_contiguous and out.flags.owndata
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("pad", [0, 3])
def test_mono8_is_replicated_to_three_channels(pad) -> None:
    mono = np.arange(H * W, dtype=np.uint8).reshape(H, W) * 10
    step, data = _pad_rows(mono, pad)
    out = image_from_raw(H, W, "mono8", step, data)
    assert out.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], mono)


def test_accepts_message_buffer_types_and_does_not_alias_them() -> None:
    rgb = _rgb()
    buf = bytearray(rgb.tobytes())
    out = image_from_raw(H, W, "rgb8", W * 3, buf)
    buf[0] = 255
    assert out[0, 0, 0] == 0
    np.testing.assert_array_equal(
        image_from_raw(H, W, "rgb8", W * 3, array.array("B", buf))[0, 0], [255, 1, 2]
    )
    np.testing.assert_array_equal(image_from_raw(H, W, "rgb8", W * 3, rgb.reshape(-1)), rgb)


def test_unsupported_encoding_names_it_and_the_supported_ones() -> None:
    with pytest.raises(ImageError, match=r"'yuv422'.*'bgr8'.*'rgb8'"):
        image_from_raw(H, W, "yuv422", W * 2, bytes(H * W * 2))


def test_data_length_must_equal_height_times_step() -> None:
    with pytest.raises(ImageError, match=r"35 bytes; expected height\*step = 3\*12 = 36"):
        image_from_raw(H, W, "rgb8", W * 3, bytes(35))
    with pytest.raises(ImageError, match=r"37 bytes"):
        image_from_raw(H, W, "rgb8", W * 3, bytes(37))


def test_step_shorter_than_a_row_is_rejected() -> None:
    with pytest.raises(ImageError, match=r"step 11 bytes .* width 4 \(expected >= 12\)"):
        image_from_raw(H, W, "rgb8", 11, bytes(H * 11))


def test_non_positive_size_is_rejected() -> None:
    with pytest.raises(ImageError, match=r"0x4"):
        image_from_raw(0, W, "rgb8", W * 3, b"")


def test_expected_size_mismatch_names_both_sizes() -> None:
    with pytest.raises(ImageError, match=r"3x4 \(HxW\) differs from the expected 480x640"):
        image_from_raw(H, W, "rgb8", W * 3, _rgb().tobytes(), expect_size=(480, 640))


def test_non_buffer_data_is_rejected() -> None:
    with pytest.raises(ImageError, match=r"list is not a byte buffer"):
        image_from_raw(H, W, "rgb8", W * 3, [0] * 36)


# --------------------------------------------------------------------------- compressed


def _smooth_rgb(h: int = 16, w: int = 24) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.dstack([xx * 10, yy * 15, np.full((h, w), 200)]).astype(np.uint8)


def test_png_round_trip_is_exact_and_rgb_ordered() -> None:
    rgb = _smooth_rgb()
    ok, enc = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    out = image_from_compressed("png", enc.tobytes(), expect_size=(16, 24))
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_with_image_transport_format_string() -> None:
    rgb = _smooth_rgb()
    ok, enc = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
    )
    assert ok
    out = image_from_compressed("rgb8; jpeg compressed bgr8", enc.tobytes())
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 4.0
    assert out[:, :, 2].mean() > 190  # blue stayed in channel 2 (RGB order)


def test_grey_png_is_replicated() -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    ok, enc = cv2.imencode(".png", grey)
    assert ok
    out = image_from_compressed("mono8; png compressed mono8", enc.tobytes())
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_compressed_errors() -> None:
    with pytest.raises(ImageError, match=r"unsupported compressed format 'tiff'"):
        image_from_compressed("tiff", b"\x00\x01")
    with pytest.raises(ImageError, match=r"no data"):
        image_from_compressed("jpeg", b"")
    with pytest.raises(ImageError, match=r"10 bytes are not a decodable 'jpeg' image"):
        image_from_compressed("jpeg", bytes(range(10)))
    _ok, enc = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImageError, match=r"8x8 \(HxW\) differs from the expected 9x8"):
        image_from_compressed("png", enc.tobytes(), expect_size=(9, 8))


# --------------------------------------------------------------------------- resize / inverse


def test_resize_to() -> None:
    img = _smooth_rgb(16, 24)
    assert resize_to(img, (16, 24)) is img
    small = resize_to(img, (8, 12))
    assert small.shape == (8, 12, 3) and small.dtype == np.uint8
    big = resize_to(img, (32, 48))
    assert big.shape == (32, 48, 3)
    const = np.full((10, 10, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize_to(const, (5, 7)), 77)
    assert resize_to(np.zeros((4, 4, 1), np.uint8), (2, 2)).shape == (2, 2, 1)
    with pytest.raises(ImageError, match=r"0x5"):
        resize_to(img, (0, 5))


def test_rgb_to_raw_round_trips() -> None:
    rgb = _rgb()
    h, w, enc, step, data = rgb_to_raw(rgb)
    assert (h, w, enc, step, len(data)) == (H, W, "rgb8", W * 3, H * W * 3)
    np.testing.assert_array_equal(image_from_raw(h, w, enc, step, data), rgb)
    # non-contiguous input (a flipped view) is serialised in logical order
    h, w, enc, step, data = rgb_to_raw(rgb[:, ::-1])
    np.testing.assert_array_equal(image_from_raw(h, w, enc, step, data), rgb[:, ::-1])
    with pytest.raises(ImageError, match=r"uint8 of shape \(H, W, 3\); got float32"):
        rgb_to_raw(rgb.astype(np.float32))
    with pytest.raises(ImageError, match=r"\(3, 4\)"):
        rgb_to_raw(rgb[:, :, 0])


def test_depth_to_raw_is_little_endian_16uc1() -> None:
    depth = np.array([[1, 258], [65535, 0]], dtype=np.uint16)
    h, w, enc, step, data = depth_to_raw(depth)
    assert (h, w, enc, step) == (2, 2, "16UC1", 4)
    assert data == bytes([1, 0, 2, 1, 255, 255, 0, 0])
    with pytest.raises(ImageError, match=r"uint16 of shape \(H, W\); got int32"):
        depth_to_raw(depth.astype(np.int32))


# --------------------------------------------------------------------------- crop modes


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("in_hw", "out_hw", "box"),
    [
        ((480, 640), (96, 128), (0, 0, 640, 480)),  # same aspect: the whole frame
        ((720, 1280), (96, 128), (160, 0, 960, 720)),  # 16:9 -> 4:3: cut the sides
        ((480, 640), (100, 100), (80, 0, 480, 480)),
        ((640, 480), (96, 128), (0, 140, 480, 360)),  # portrait -> landscape: cut top/bottom
    ],
)
def test_center_crop_box_keeps_the_output_aspect(in_hw, out_hw, box) -> None:
    assert crop_box(in_hw, out_hw, "center_crop") == box
    _x, _y, w, h = box
    assert abs(w / h - out_hw[1] / out_hw[0]) < 0.01
    assert aspect_distortion(in_hw, out_hw, "center_crop") < 0.01


def test_crop_box_resize_and_roi_and_errors() -> None:
    assert crop_box((480, 640), (96, 128)) == (0, 0, 640, 480)
    assert crop_box((480, 640), (96, 128), "roi", (10, 20, 300, 200)) == (10, 20, 300, 200)
    with pytest.raises(ImageError, match=r"\(600, 0, 100, 100\).*640x480") as err:
        crop_box((480, 640), (96, 128), "roi", (600, 0, 100, 100))
    assert err.value.cause == "size"
    with pytest.raises(ImageError, match="needs roi"):
        crop_box((480, 640), (96, 128), "roi", None)
    with pytest.raises(ImageError, match="'zoom'"):
        crop_box((480, 640), (96, 128), "zoom")
    assert aspect_distortion((720, 1280), (96, 128)) == pytest.approx(1 / 3)


def test_resize_to_plain_is_unchanged_area_when_shrinking() -> None:
    """The training recorder's semantics: INTER_AREA to shrink, INTER_LINEAR to enlarge."""
    img = _noise(480, 640)
    np.testing.assert_array_equal(
        resize_to(img, (96, 128)), cv2.resize(img, (128, 96), interpolation=cv2.INTER_AREA)
    )
    small = _noise(20, 30)
    np.testing.assert_array_equal(
        resize_to(small, (40, 60)), cv2.resize(small, (60, 40), interpolation=cv2.INTER_LINEAR)
    )


def test_resize_to_crops_then_resizes_into_out() -> None:
    img = _noise(720, 1280)
    out = np.empty((96, 128, 3), np.uint8)
    res = resize_to(img, (96, 128), mode="center_crop", out=out)
    assert res is out
    ref = cv2.resize(np.ascontiguousarray(img[:, 160:1120]), (128, 96),
                     interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out, ref)
    roi = resize_to(img, (96, 128), mode="roi", roi=(100, 50, 640, 480))
    np.testing.assert_array_equal(roi, resize_to(np.ascontiguousarray(img[50:530, 100:740]),
                                                 (96, 128)))
    # an roi already at the output size is a copy of the region, not a view
    exact = resize_to(img, (96, 128), mode="roi", roi=(7, 9, 128, 96))
    np.testing.assert_array_equal(exact, img[9:105, 7:135])
    assert exact.flags.owndata or exact.base is not img
    near = resize_to(img, (96, 128), mode="center_crop", interpolation="nearest")
    assert near.shape == (96, 128, 3)
    with pytest.raises(ImageError, match=r"out buffer is uint8 \(96, 100, 3\)"):
        resize_to(img, (96, 128), out=np.empty((96, 100, 3), np.uint8))
    with pytest.raises(ImageError, match="'cubic'"):
        resize_to(img, (96, 128), interpolation="cubic")
    one = resize_to(np.zeros((40, 40, 1), np.uint8), (4, 4), out=np.empty((4, 4, 1), np.uint8))
    assert one.shape == (4, 4, 1)
