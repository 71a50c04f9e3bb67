"""Image bytes -> the model's input: uint8 `[input_size, input_size, 3]` RGB (HWC).

The one preprocessing of the project: the gateway serves with it and export checks
(`service.verification`) verify models on it. Every constant comes from the `ModelSpec`.
The pipeline, in order:

1. Identify the format from the header (JPEG, PNG, WebP, GIF, BMP, TIFF only, so no
   exotic Pillow plugin ever parses client bytes) and check the declared pixel count
   against the limit before a single pixel is decoded (decompression bombs ->
   `ImageTooLarge`).
2. JPEGs much larger than needed are decoded at 1/2, 1/4 or 1/8 scale (`Image.draft`).
3. First frame only (animated GIF/WebP/PNG, multi-page TIFF); EXIF orientation applied
   to the 224x224 result (the crop is still of the upright image: see step 5).
4. Any mode to RGB: alpha is composited over white, 16/32-bit greyscale is scaled to
   8 bits, CMYK/L/P/1/YCbCr are converted by Pillow.
5. Shorter side to `resize_shorter` (bilinear, antialiased; the longer side is
   `int(resize_shorter * long / short)`), then a centre crop of `input_size` whose offset is
   `int(round((side - input_size) / 2))`, as torchvision's Resize + CenterCrop do. Only
   the cropped region is resized; this differs from resizing everything and then cropping
   by at most 1 grey level on ~0.1% of pixels (Pillow's fixed-point rounding).

Pure and synchronous: callers run it in a thread pool, never on the event loop.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import ExifTags, Image, UnidentifiedImageError

from service.errors import ImageTooLarge, ServiceError, UndecodableImage
from service.spec import ModelSpec

# Formats a client may send. MPO (phones' multi-picture JPEG) is opened by the JPEG plugin.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Decode JPEGs at reduced scale only while the shorter side stays >= this many times
# `resize_shorter`: the antialiased resize then still averages >= 2x2 decoded pixels per
# output pixel, so quality holds while a 12 MP photo decodes ~16x faster.
DRAFT_MARGIN = 2

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass(frozen=True)
class Preprocessor:
    """Callable turning encoded bytes into one model input, per the spec and limits."""

    spec: ModelSpec
    max_image_pixels: int

    def __call__(self, data: bytes) -> NDArray[np.uint8]:
        return preprocess(data, self.spec, max_image_pixels=self.max_image_pixels)


def preprocess(data: bytes, spec: ModelSpec, *, max_image_pixels: int) -> NDArray[np.uint8]:
    """Decode and transform one image.

    Returns a C-contiguous uint8 array shaped `spec.input_shape`. Raises `ImageTooLarge`
    when the header declares more than `max_image_pixels` pixels, and `UndecodableImage`
    for anything Pillow cannot decode or convert to RGB (garbage, truncated data,
    unsupported format or mode). Only decoding and mode conversion map to
    `UndecodableImage`: an exception in the resize and crop of decoded pixels propagates.
    """
    try:
        image = _open_checked(data, max_image_pixels)
        if image.format == "JPEG" or image.format == "MPO":
            target = spec.resize_shorter * DRAFT_MARGIN
            image.draft(None, (target, target))
        image, transpose = _first_frame(image)
        rgb = to_rgb(image)
    except ServiceError:
        raise
    except Exception as exc:
        # Pillow's decoders raise a wide, undocumented set on malformed input (OSError,
        # SyntaxError, ValueError, struct.error, IndexError, EOFError, ...). All of them
        # mean the client's bytes are not a usable image.
        raise UndecodableImage(f"cannot decode image: {_describe(exc)}") from exc
    # The pixels are decoded RGB from here on: a failure now is a bug of ours (a 500 that
    # monitoring sees), never the client's image (a 400).
    return _resize_and_crop(rgb, spec, transpose)


def _open_checked(data: bytes, max_image_pixels: int) -> Image.Image:
    if not data:
        raise UndecodableImage("empty image")
    with warnings.catch_warnings():
        # Pillow's own (global) bomb threshold only warns below 2x; ours is the limit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"image too large: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise UndecodableImage(
                "not a JPEG, PNG, WebP, GIF, BMP or TIFF image (or a corrupt one)"
            ) from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise UndecodableImage(f"image has no pixels ({width}x{height})")
    if width * height > max_image_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_image_pixels}"
        )
    return image


# EXIF orientation -> the transpose that makes the stored pixels upright (as
# `ImageOps.exif_transpose` maps them).
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270,
               Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90}


def _first_frame(image: Image.Image) -> tuple[Image.Image, Image.Transpose | None]:
    """Decode frame 0; return it as stored with the transpose its EXIF orientation asks
    for (None when upright). The transpose is applied later, to the resized image: rotating
    a 12 MP phone photo costs more than rotating its 256-pixel resize."""
    # Opened at frame 0 already; never count the frames: that parses every later frame's
    # header, and a corrupt one would refuse an image whose first frame decodes.
    if image.tell() != 0:
        image.seek(0)
    image.load()
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return image, _ORIENTATIONS.get(orientation)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency (an alpha channel or a PNG colour key,
    RGB's included) is composited over white."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own I;16 -> L conversion clips at 255 (a white image); scale instead.
        wide = np.asarray(image, dtype=np.int64)
        eight = (np.clip(wide, 0, 65535) // 257).astype(np.uint8)
        return Image.fromarray(eight, mode="L").convert("RGB")
    if image.mode == "F":
        eight = np.clip(np.asarray(image, dtype=np.float64), 0, 255).astype(np.uint8)
        return Image.fromarray(eight, mode="L").convert("RGB")
    has_alpha = image.mode in _ALPHA_MODES or (
        image.mode in ("P", "L", "RGB", "1") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """The size after scaling the shorter side to `shorter` (long side truncated)."""
    if width <= height:
        return shorter, max(1, int(shorter * height / width))
    return max(1, int(shorter * width / height)), shorter


def crop_offset(side: int, size: int) -> int:
    return round((side - size) / 2.0)


def _resize_and_crop(
    image: Image.Image, spec: ModelSpec, transpose: Image.Transpose | None = None
) -> NDArray[np.uint8]:
    """Shorter side to `resize_shorter`, then the centre crop, both of the upright image
    (the stored image turned by `transpose`).

    Only the region the crop keeps is resized (Pillow's `box`): the same filter at the same
    scale over the same source pixels, without computing the pixels the crop throws away
    (a 500x375 photo: 1.7 instead of 2.3 ms per image). Pillow's fixed-point coefficients
    then round differently on ~0.1% of pixels, by 1 grey level. The resize runs on the image
    as stored, with the box mapped there, so only the 224x224 result is turned upright.
    """
    size = spec.input_size
    swap = transpose in _SWAPS_AXES
    width, height = image.size[::-1] if swap else image.size  # upright size
    new_w, new_h = resized_size(width, height, spec.resize_shorter)
    left, top = crop_offset(new_w, size), crop_offset(new_h, size)
    sx, sy = width / new_w, height / new_h
    upright_box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    box = _stored_box(upright_box, transpose, width, height)
    cropped = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if transpose is not None:
        cropped = cropped.transpose(transpose)
    array = np.asarray(cropped, dtype=np.uint8)
    if array.shape != spec.input_shape:  # pragma: no cover - a bug, not client input
        raise RuntimeError(f"preprocessing produced {array.shape}, expected {spec.input_shape}")
    return np.ascontiguousarray(array)


def _stored_box(
    box: tuple[float, float, float, float],
    transpose: Image.Transpose | None,
    width: float,
    height: float,
) -> tuple[float, float, float, float]:
    """A box in upright coordinates (upright size `width` x `height`) as the same region of
    the stored image, which `transpose` turns upright."""
    x0, y0, x1, y1 = box
    corners = [_stored_point(x, y, transpose, width, height) for x, y in ((x0, y0), (x1, y1))]
    (ax, ay), (bx, by) = corners
    return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)


def _stored_point(
    x: float, y: float, transpose: Image.Transpose | None, width: float, height: float
) -> tuple[float, float]:
    # The inverse of each transpose, in continuous pixel coordinates.
    match transpose:
        case Image.Transpose.FLIP_LEFT_RIGHT:
            return width - x, y
        case Image.Transpose.ROTATE_180:
            return width - x, height - y
        case Image.Transpose.FLIP_TOP_BOTTOM:
            return x, height - y
        case Image.Transpose.ROTATE_90:  # counter-clockwise
            return height - y, x
        case Image.Transpose.ROTATE_270:
            return y, width - x
        case Image.Transpose.TRANSPOSE:
            return y, x
        case Image.Transpose.TRANSVERSE:
            return height - y, width - x
    return x, y


def _describe(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]
