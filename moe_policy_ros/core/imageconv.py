"""Image field conversion and validation (pure numpy/cv2, no ROS).

Nodes hand the raw fields of a ``sensor_msgs/Image`` (``height``, ``width``, ``encoding``,
``step``, ``data``) or a ``sensor_msgs/CompressedImage`` (``format``, ``data``) to these
functions and get back one canonical array: RGB, ``uint8``, shape ``(H, W, 3)``, C-contiguous
and owning its memory (never a view of the message buffer). Every inconsistency raises
:class:`ImageError` naming the bad value and the expected one; nothing is guessed or padded.

The inverse helpers (:func:`rgb_to_raw`, :func:`depth_to_raw`) produce the fields that
publishers put into a ``sensor_msgs/Image``.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

#: Supported raw encodings and their bytes per pixel (8-bit channels).
RAW_ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}

#: CompressedImage codecs we decode (``format`` is matched case-insensitively as a word).
COMPRESSED_CODECS: tuple[str, ...] = ("jpeg", "jpg", "png")


class ImageError(ValueError):
    """An image message is inconsistent or unsupported; the message names the bad value."""


def _flat_bytes(data: Any) -> np.ndarray:
    """A flat ``uint8`` view of bytes, bytearray, memoryview, array.array or ndarray."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError as err:
        raise ImageError(
            f"image data of type {type(data).__name__} is not a byte buffer: {err}"
        ) from None


def _check_size(h: int, w: int, expect_size: tuple[int, int] | None) -> None:
    if expect_size is None:
        return
    eh, ew = int(expect_size[0]), int(expect_size[1])
    if (h, w) != (eh, ew):
        raise ImageError(f"image size {h}x{w} (HxW) differs from the expected {eh}x{ew}")


def image_from_raw(
    height: int,
    width: int,
    encoding: str,
    step: int,
    data: Any,
    *,
    expect_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Convert raw ``sensor_msgs/Image`` fields to an RGB ``uint8`` ``(H, W, 3)`` array.

    ``step`` is the row length in bytes and may exceed ``width * channels`` (row padding);
    ``data`` must hold exactly ``height * step`` bytes. ``mono8`` is replicated to three
    channels; alpha is dropped. ``expect_size`` = ``(h, w)`` also checks the image size.
    """
    if encoding not in RAW_ENCODINGS:
        raise ImageError(
            f"unsupported encoding {encoding!r}; expected one of {sorted(RAW_ENCODINGS)}"
        )
    h, w, step = int(height), int(width), int(step)
    if h <= 0 or w <= 0:
        raise ImageError(f"image size {h}x{w} (HxW) must be positive")
    ch = RAW_ENCODINGS[encoding]
    if step < w * ch:
        raise ImageError(
            f"step {step} bytes is shorter than a {encoding} row of width {w} "
            f"(expected >= {w * ch})"
        )
    buf = _flat_bytes(data)
    if buf.size != h * step:
        raise ImageError(
            f"data has {buf.size} bytes; expected height*step = {h}*{step} = {h * step}"
        )
    _check_size(h, w, expect_size)
    rows = buf.reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if encoding == "rgb8":
        return np.array(rows, dtype=np.uint8, order="C")
    if encoding == "bgr8":
        return np.ascontiguousarray(rows[:, :, ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(rows[:, :, :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(rows[:, :, 2::-1])
    return np.ascontiguousarray(np.repeat(rows, 3, axis=2))  # mono8


def image_from_compressed(
    format: str, data: Any, *, expect_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to an RGB ``uint8`` array.

    ``format`` is the message's field: ``"jpeg"``, ``"png"`` or image_transport's
    ``"rgb8; jpeg compressed bgr8"``. OpenCV decodes to BGR (grey is replicated), which is
    converted to RGB.
    """
    words = format.lower().replace(";", " ").split()
    if not any(codec in words for codec in COMPRESSED_CODECS):
        raise ImageError(
            f"unsupported compressed format {format!r}; expected one naming {COMPRESSED_CODECS}"
        )
    buf = _flat_bytes(data)
    if buf.size == 0:
        raise ImageError(f"compressed image ({format!r}) has no data; expected encoded bytes")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageError(
            f"{buf.size} bytes are not a decodable {format!r} image; expected JPEG or PNG data"
        )
    _check_size(decoded.shape[0], decoded.shape[1], expect_size)
    return np.ascontiguousarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB))


def resize_to(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an image to ``(h, w)``: area averaging to shrink, bilinear to enlarge.

    Returns ``img`` itself when it already has that size.
    """
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ImageError(f"target size {h}x{w} (HxW) must be positive")
    if img.ndim < 2:
        raise ImageError(f"image must have at least 2 dimensions; got shape {img.shape}")
    ih, iw = img.shape[:2]
    if (ih, iw) == (h, w):
        return img
    interp = cv2.INTER_AREA if h * w < ih * iw else cv2.INTER_LINEAR
    out = cv2.resize(img, (w, h), interpolation=interp)
    if img.ndim == 3 and out.ndim == 2:  # cv2 drops a singleton channel axis
        out = out[:, :, None]
    return np.ascontiguousarray(out)


def rgb_to_raw(img: np.ndarray) -> tuple[int, int, str, int, bytes]:
    """``(height, width, "rgb8", step, data)`` for a ``uint8`` ``(H, W, 3)`` RGB array."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ImageError(
            f"rgb image must be uint8 of shape (H, W, 3); got {img.dtype} {img.shape}"
        )
    h, w = int(img.shape[0]), int(img.shape[1])
    return h, w, "rgb8", w * 3, np.ascontiguousarray(img).tobytes()


def depth_to_raw(depth: np.ndarray) -> tuple[int, int, str, int, bytes]:
    """``(height, width, "16UC1", step, data)`` (little endian) for a ``uint16`` (H, W) array."""
    if depth.dtype != np.uint16 or depth.ndim != 2:
        raise ImageError(
            f"depth image must be uint16 of shape (H, W); got {depth.dtype} {depth.shape}"
        )
    h, w = int(depth.shape[0]), int(depth.shape[1])
    return h, w, "16UC1", w * 2, np.ascontiguousarray(depth, dtype="<u2").tobytes()
