"""From an HTTP request to a list of encoded images, within the upload limits.

Three request shapes are accepted: one image as the raw body (`Content-Type: image/...`),
`multipart/form-data` with one or more parts named `file`, or `application/json` with
base64 images (parsed by `json_body.py`). The body is read with a
byte limit (checked against `Content-Length` first, then while streaming, so chunked
uploads cannot get around it); multipart bodies are parsed with python-multipart's
streaming parser so binary parts are never decoded as text. A part's file name is
echoed in the answer, so it is cleaned first (`clean_filename`) and never used as a path.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import (
    MultipartParser,
    MultipartState,
    parse_options_header,
)
from starlette.requests import Request

from service.errors import (
    BadRequest,
    BodyTimeout,
    InvalidParameter,
    PayloadTooLarge,
    TooManyFiles,
    UnsupportedMediaType,
)
from service.gateway.runtime import Upload
from service.gateway.tracing import TRACING_OFF, Tracing

RAW_IMAGE_TYPES = frozenset({
    "image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/webp", "image/gif",
    "image/bmp", "image/x-ms-bmp", "image/tiff",
})
# Multipart parts often carry no type or a generic one (curl -F with an odd extension).
PART_TYPES = RAW_IMAGE_TYPES | {"application/octet-stream", ""}
FILE_FIELD = "file"
_MAX_OTHER_PARTS = 16
MAX_FILENAME_CHARS = 255
_PATH_SEPARATORS = re.compile(r"[/\\]")
# Besides control characters (C0, DEL, C1: NUL, CR, LF, ESC, ...), characters that break
# a log line or change how a name displays: line and paragraph separators, bidi controls.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                           "\u2066\u2067\u2068\u2069")


def clean_filename(raw: str | None) -> str | None:
    """A client's file name made safe to echo, log and render as text: the base name only
    (whatever follows the last `/` or `\\`), without control characters, line separators or
    bidi controls, at most `MAX_FILENAME_CHARS` characters; None when nothing is left (or
    only `.`/`..`). Other text (HTML, quotes, any script) is kept: the answer is JSON."""
    if raw is None:
        return None
    base = _PATH_SEPARATORS.split(raw)[-1]
    name = "".join(char for char in base if not _unsafe(char))[:MAX_FILENAME_CHARS]
    return None if name in ("", ".", "..") else name


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def request_kind(content_type: str | None) -> Literal["raw", "multipart", "json"]:
    """Which shape the body has; raises `UnsupportedMediaType` (415) for anything else."""
    mime = media_type(content_type)
    if mime == "multipart/form-data":
        return "multipart"
    if mime == "application/json":
        return "json"
    if mime in RAW_IMAGE_TYPES:
        return "raw"
    shown = mime[:80] or "none"
    raise UnsupportedMediaType(
        f"Content-Type {shown!r} is not supported: send image/jpeg, png, webp, gif, bmp or "
        "tiff as the body, multipart/form-data with 'file' parts, or application/json "
        "with base64 'instances'"
    )


async def read_body(request: Request, limit: int, *, timeout_s: float) -> bytes:
    """The whole body, or `PayloadTooLarge` (413) as soon as it exceeds `limit` bytes, or
    `BodyTimeout` (408) when it has not all arrived `timeout_s` after the headers. Traced
    as `read body` when the app traces."""
    tracing: Tracing = getattr(request.app.state, "tracing", TRACING_OFF)
    with tracing.span("read body") as span:
        body = await _read_body(request, limit, timeout_s)
        if span is not None:
            span.set_attribute("http.request.body.size", len(body))
        return body


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
        if size > limit:
            raise PayloadTooLarge(f"body is {size} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(
            f"the body did not arrive within {timeout_s:g} s ({total} bytes received)"
        ) from None
    return b"".join(chunks)


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    data: list[bytes] = field(default_factory=list)

    def disposition(self) -> tuple[str | None, str | None]:
        _, params = parse_options_header(self.headers.get("content-disposition", ""))
        name = params.get(b"name")
        filename = params.get(b"filename")
        return (
            name.decode("utf-8", "replace") if name is not None else None,
            filename.decode("utf-8", "replace") if filename is not None else None,
        )


class _Collector:
    """python-multipart callbacks that keep the `file` parts, bounded in number."""

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self.files: list[Upload] = []
        self.others = 0
        self._part = _Part()
        self._field = b""
        self._value = b""

    def on_part_begin(self) -> None:
        self._part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._part.headers[name] = self._value.decode("latin-1").strip()
        self._field, self._value = b"", b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._part.data.append(data[start:end])

    def on_part_end(self) -> None:
        name, raw_filename = self._part.disposition()
        filename = clean_filename(raw_filename)
        if name != FILE_FIELD:
            self.others += 1
            if self.others > _MAX_OTHER_PARTS:
                raise BadRequest(f"more than {_MAX_OTHER_PARTS} parts not named 'file'")
            return
        if len(self.files) >= self.max_files:
            raise TooManyFiles(f"at most {self.max_files} files per request")
        ctype = media_type(self._part.headers.get("content-type"))
        if ctype not in PART_TYPES:
            shown = filename or f"#{len(self.files) + 1}"
            raise UnsupportedMediaType(
                f"part {shown!r} has Content-Type {ctype[:80]!r}; send images"
            )
        self.files.append(Upload(b"".join(self._part.data), filename))


def parse_multipart(body: bytes, content_type: str, *, max_files: int) -> list[Upload]:
    """The `file` parts of a multipart body, in order (CPU work: call it off the loop).

    Raises `BadRequest` for a malformed body, `TooManyFiles` (413) past `max_files`,
    `UnsupportedMediaType` for a part that is declared as something other than an image,
    and `InvalidParameter` (422) when no part is named `file`.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary")
    collector = _Collector(max_files)
    callbacks = {
        name: getattr(collector, name)
        for name in ("on_part_begin", "on_header_field", "on_header_value", "on_header_end",
                     "on_part_data", "on_part_end")
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    if parser.state != MultipartState.END:  # finalize() does not check this itself
        raise BadRequest("truncated multipart body: no closing boundary")
    if not collector.files:
        raise InvalidParameter(f"no part named '{FILE_FIELD}': send each image as a 'file' part")
    return collector.files
