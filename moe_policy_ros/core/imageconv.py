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
    """An image message is inconsistent or unsupported; the message names the bad value.

    ``cause`` sorts rejections for diagnostics: ``size``, ``encoding`` or ``data``.
    """

    def __init__(self, message: str, cause: str = "data") -> None:
        super().__init__(message)
        self.cause = cause


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
        raise ImageError(
            f"image size {h}x{w} (HxW) differs from the expected {eh}x{ew}", cause="size"
        )


def raw_view(height: int, width: int, encoding: str, step: int, data: Any) -> np.ndarray:
    """A zero-copy ``(H, W, channels)`` view of raw ``sensor_msgs/Image`` fields, validated.

    ``step`` is the row length in bytes and may exceed ``width * channels`` (row padding);
    ``data`` must hold exactly ``height * step`` bytes. Channels are as encoded (no swap).
    """
    if encoding not in RAW_ENCODINGS:
        raise ImageError(
            f"unsupported encoding {encoding!r}; expected one of {sorted(RAW_ENCODINGS)}",
            cause="encoding",
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
    return buf.reshape(h, step)[:, : w * ch].reshape(h, w, ch)


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
    rows = raw_view(height, width, encoding, step, data)
    _check_size(rows.shape[0], rows.shape[1], expect_size)
    if encoding == "rgb8":
        return np.array(rows, dtype=np.uint8, order="C")
    if encoding == "bgr8":
        return np.ascontiguousarray(rows[:, :, ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(rows[:, :, :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(rows[:, :, 2::-1])
    return np.ascontiguousarray(np.repeat(rows, 3, axis=2))  # mono8


def decode_compressed_bgr(format: str, data: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to OpenCV's BGR ``uint8``.

    ``format`` is the message's field: ``"jpeg"``, ``"png"`` or image_transport's
    ``"rgb8; jpeg compressed bgr8"``; grey images are replicated to three channels.
    """
    words = format.lower().replace(";", " ").split()
    if not any(codec in words for codec in COMPRESSED_CODECS):
        raise ImageError(
            f"unsupported compressed format {format!r}; expected one naming {COMPRESSED_CODECS}",
            cause="encoding",
        )
    buf = _flat_bytes(data)
    if buf.size == 0:
        raise ImageError(f"compressed image ({format!r}) has no data; expected encoded bytes")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageError(
            f"{buf.size} bytes are not a decodable {format!r} image; expected JPEG or PNG data"
        )
    return decoded


def image_from_compressed(
    format: str, data: Any, *, expect_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to an RGB ``uint8`` array.

    See :func:`decode_compressed_bgr`; the BGR result is converted to RGB.
    """
    decoded = decode_compressed_bgr(format, data)
    _check_size(decoded.shape[0], decoded.shape[1], expect_size)
    return np.ascontiguousarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB))


#: How a source image is brought to the policy's input size (see :func:`crop_box`).
CROP_MODES: tuple[str, ...] = ("resize", "center_crop", "roi")
#: ``area``: INTER_AREA when shrinking, bilinear when enlarging (the training recorder's rule);
#: ``linear`` and ``nearest``: that OpenCV interpolation in both directions.
INTERPOLATIONS: tuple[str, ...] = ("area", "linear", "nearest")


def crop_box(
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    mode: str = "resize",
    roi: tuple[int, int, int, int] | None = None,
) -> tuple[int, int, int, int]:
    """The source region ``(x, y, w, h)`` in pixels that is resized to ``out_size``.

    ``resize``: the whole image (the aspect ratio changes when the two sizes differ in shape).
    ``center_crop``: the largest centred region with the output's aspect ratio, so nothing is
    distorted (the sides or the top and bottom are cut). ``roi``: ``roi`` = ``(x, y, w, h)``,
    which must lie inside the image. Sizes are ``(h, w)``.
    """
    ih, iw = int(in_size[0]), int(in_size[1])
    oh, ow = int(out_size[0]), int(out_size[1])
    if mode == "resize":
        return 0, 0, iw, ih
    if mode == "center_crop":
        # Largest w x h inside iw x ih with w / h == ow / oh (integer arithmetic, no drift).
        if iw * oh >= ih * ow:
            h, w = ih, max(1, (ih * ow + oh // 2) // oh)
        else:
            h, w = max(1, (iw * oh + ow // 2) // ow), iw
        return (iw - w) // 2, (ih - h) // 2, w, h
    if mode == "roi":
        if roi is None or len(roi) != 4:
            raise ImageError(
                f"crop mode 'roi' needs roi = (x, y, w, h) in pixels; got {roi!r}", cause="size"
            )
        x, y, w, h = (int(v) for v in roi)
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > iw or y + h > ih:
            raise ImageError(
                f"roi (x, y, w, h) = {(x, y, w, h)} does not lie inside the {iw}x{ih} (WxH) "
                f"image", cause="size"
            )
        return x, y, w, h
    raise ImageError(f"unknown crop mode {mode!r}; expected one of {CROP_MODES}")


def _cv_interp(interpolation: str, shrinking: bool) -> int:
    if interpolation == "area":
        return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    if interpolation == "linear":
        return cv2.INTER_LINEAR
    if interpolation == "nearest":
        return cv2.INTER_NEAREST
    raise ImageError(f"unknown interpolation {interpolation!r}; expected one of {INTERPOLATIONS}")


def resize_to(
    img: np.ndarray,
    size: tuple[int, int],
    *,
    mode: str = "resize",
    roi: tuple[int, int, int, int] | None = None,
    interpolation: str = "area",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Resize an image to ``(h, w)``: area averaging to shrink, bilinear to enlarge.

    Returns ``img`` itself when it already has that size (plain resize, no ``out``).
    ``mode`` and ``roi`` first crop the source (:func:`crop_box`); ``interpolation`` picks the
    filter (:data:`INTERPOLATIONS`). With ``out`` (a C-contiguous array of the result's shape
    and dtype) the result is written there and ``out`` is returned: no allocation per frame.
    The crop is a view, so cropping costs nothing before the resize.
    """
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ImageError(f"target size {h}x{w} (HxW) must be positive")
    if img.ndim < 2:
        raise ImageError(f"image must have at least 2 dimensions; got shape {img.shape}")
    ih, iw = img.shape[:2]
    x, y, cw, ch = crop_box((ih, iw), (h, w), mode, roi)
    src = img if (x, y, cw, ch) == (0, 0, iw, ih) else img[y:y + ch, x:x + cw]
    shape = (h, w, *img.shape[2:])
    if out is not None and (out.shape != shape or out.dtype != img.dtype
                            or not out.flags.c_contiguous):
        raise ImageError(
            f"out buffer is {out.dtype} {out.shape}; expected a C-contiguous {img.dtype} {shape}"
        )
    if (ch, cw) == (h, w):
        if out is not None:
            np.copyto(out, src)
            return out
        return img if src is img else np.ascontiguousarray(src)
    interp = _cv_interp(interpolation, h * w < ch * cw)
    if out is not None and out.ndim == 3 and out.shape[2] == 1:
        cv2.resize(src[:, :, 0], (w, h), dst=out[:, :, 0], interpolation=interp)
        return out
    res = cv2.resize(src, (w, h), dst=out, interpolation=interp)
    if out is not None:
        if res is not out:  # cv2 could not write in place (it never should for a valid out)
            np.copyto(out, res.reshape(shape))
        return out
    if img.ndim == 3 and res.ndim == 2:  # cv2 drops a singleton channel axis
        res = res[:, :, None]
    return np.ascontiguousarray(res)


def aspect_distortion(
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    mode: str = "resize",
    roi: tuple[int, int, int, int] | None = None,
) -> float:
    """How much the crop-then-resize stretches the image: |ratio of aspect ratios - 1|.

    0 for ``center_crop`` (up to rounding) and for same-shaped sizes; 640x480 -> 128x96 is 0,
    1280x720 -> 128x96 is 0.33.
    """
    _x, _y, w, h = crop_box(in_size, out_size, mode, roi)
    oh, ow = int(out_size[0]), int(out_size[1])
    return abs((w / h) / (ow / oh) - 1.0)


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
