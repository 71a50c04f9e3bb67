"""Turn what a caller holds (a path, bytes, a PIL image) into an upload the gateway accepts.

The content type is sniffed from the bytes, never trusted from a file extension: the
gateway decides by `Content-Type`, and a `.jpg` that is really a PNG should still work.
Images are sent as they are (no resizing here): preprocessing lives in the gateway only.
"""

from __future__ import annotations

import io
import mimetypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from PIL import Image

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image
"""One image: a file path, encoded image bytes, or a decoded PIL image."""

OCTET_STREAM = "application/octet-stream"

# Magic numbers of the formats the gateway accepts (docs/architecture.md, HTTP contract).
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)

# Modes PNG stores losslessly; anything else (CMYK, YCbCr, F, ...) is converted to RGB.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


@dataclass(frozen=True)
class Upload:
    """One encoded image ready to send: bytes, their MIME type, and a display name."""

    data: bytes
    content_type: str
    filename: str


def sniff_content_type(data: bytes) -> str | None:
    """The image MIME type the bytes start with, or None when they are no known image."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for signature, content_type in _SIGNATURES:
        if data.startswith(signature):
            return content_type
    return None


def encode_pil(image: Image.Image) -> bytes:
    """PNG bytes of a PIL image (lossless, so the gateway sees exactly these pixels)."""
    if image.mode not in _PNG_MODES:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def to_upload(image: ImageInput, index: int = 0) -> Upload:
    """Encode one input. Raises `FileNotFoundError` for a missing path, `TypeError` otherwise.

    Bytes that are no known image are still sent (as `application/octet-stream`), so the
    gateway's own 415/400 answer reaches the caller.
    """
    if isinstance(image, Image.Image):
        return Upload(encode_pil(image), "image/png", f"image-{index}.png")
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        content_type = sniff_content_type(data) or OCTET_STREAM
        extension = mimetypes.guess_extension(content_type) or ".bin"
        return Upload(data, content_type, f"image-{index}{extension}")
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        data = path.read_bytes()
        guessed, _ = mimetypes.guess_type(path.name)
        content_type = sniff_content_type(data) or guessed or OCTET_STREAM
        return Upload(data, content_type, path.name)
    raise TypeError(
        f"cannot classify a {type(image).__name__}: pass a path, bytes or a PIL.Image"
    )


def to_uploads(images: ImageInput | Sequence[ImageInput]) -> tuple[list[Upload], bool]:
    """Encode one input or a sequence of them; the flag says whether a single one was given.

    A `str` is a path, not a sequence of characters; `bytes` are one image.
    """
    if isinstance(images, str | bytes | bytearray | memoryview | os.PathLike | Image.Image):
        return [to_upload(images)], True
    uploads = [to_upload(image, index) for index, image in enumerate(images)]
    if not uploads:
        raise ValueError("no images to classify")
    return uploads, False
