"""Helpers for the reliability tests: hostile payloads, raw-socket HTTP, process memory.

Everything talks to loopback only and every loop is bounded.
"""

from __future__ import annotations

import io
import select
import socket
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

MIB = 1024 * 1024


# -- process memory (Linux /proc; no psutil needed) -------------------------------------
def proc_status_kib(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status: `VmRSS` (resident now), `VmHWM` (peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def rss_mib(pid: int) -> float:
    return proc_status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    return proc_status_kib(pid, "VmHWM") / 1024


# -- images ----------------------------------------------------------------------------
def png_bytes(
    size: tuple[int, int] = (96, 64), color: tuple[int, int, int] = (30, 90, 200)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A PNG whose header declares `width x height` RGB pixels; the data is a little
    compressed zero run, so it is a few hundred bytes on the wire."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * 65536, 9)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows)
            + png_chunk(b"IEND", b""))


def gif_bomb(width: int, height: int) -> bytes:
    """A GIF89a whose screen and one image declare `width x height` (max 65535 each)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    data = b"\x02\x02\x4c\x01\x00"  # LZW min code size 2, one tiny sub-block, terminator
    return screen + image + data + b"\x3b"


def png_with_text(text_bytes: int) -> bytes:
    """A valid small PNG carrying one `tEXt` chunk of `text_bytes` bytes."""
    base = png_bytes()
    return base[:33] + png_chunk(b"tEXt", b"comment\0" + b"t" * text_bytes) + base[33:]


def png_with_ztxt_bomb(inflated_bytes: int) -> bytes:
    """A small PNG whose `zTXt` chunk inflates to `inflated_bytes` (a text bomb)."""
    base = png_bytes()
    payload = b"comment\0\0" + zlib.compress(b"\0" * inflated_bytes, 9)
    return base[:33] + png_chunk(b"zTXt", payload) + base[33:]


def jpeg_with_metadata(icc_bytes: int, app_segments: int) -> bytes:
    """A 640x480 JPEG with an ICC profile of `icc_bytes` (split over APP2 segments by
    Pillow) and `app_segments` extra full-size (64 KiB) APP1 segments after SOI."""
    import os

    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (120, 60, 30)).save(
        buffer, "JPEG", icc_profile=os.urandom(icc_bytes) if icc_bytes else None
    )
    data = buffer.getvalue()
    segment = b"\xff\xe1" + struct.pack(">H", 65535) + b"Exif\0\0" + b"\0" * (65533 - 6)
    return data[:2] + segment * app_segments + data[2:]


def animated_gif(frames: int, size: tuple[int, int] = (64, 64)) -> bytes:
    images = [Image.new("P", size, i % 256) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=10)
    return buffer.getvalue()


def multipart_body(
    parts: Iterable[tuple[str, bytes, str]], boundary: str = "rel-boundary"
) -> bytes:
    """`(field name, data, content type)` parts as a multipart/form-data body."""
    out = io.BytesIO()
    for number, (name, data, ctype) in enumerate(parts):
        out.write(f"--{boundary}\r\n".encode())
        out.write(
            f'Content-Disposition: form-data; name="{name}"; filename="f{number}.png"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode()
        )
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


# -- raw HTTP over a socket ------------------------------------------------------------
@dataclass
class RawResponse:
    status: int | None  # None: the connection closed before a status line arrived
    head: bytes
    body: bytes
    elapsed_s: float
    sent_bytes: int


def raw_http(
    port: int,
    head: bytes,
    chunks: Iterable[bytes] = (),
    *,
    pause_s: float = 0.0,
    deadline_s: float = 30.0,
) -> RawResponse:
    """Send `head`, then each chunk (sleeping `pause_s` before each), stopping as soon as
    the server answers or closes; then read the answer until the server closes or
    `deadline_s` passes. Bounded: at most len(chunks) sends and one deadline."""
    start = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=deadline_s) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if pause_s:
                time.sleep(pause_s)
            if time.monotonic() - start > deadline_s or _readable(sock):
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        received = _read_answer(sock, start + deadline_s)
    elapsed = time.monotonic() - start
    head_part, _, body = received.partition(b"\r\n\r\n")
    status = None
    if head_part.startswith(b"HTTP/1."):
        status = int(head_part.split(b" ", 2)[1])
    return RawResponse(status, head_part, body, elapsed, sent)


def _readable(sock: socket.socket) -> bool:
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)


def _read_answer(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError, OSError):
            break
        if not chunk:
            break
        data += chunk
        if _complete(data):
            break
    return data


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False
