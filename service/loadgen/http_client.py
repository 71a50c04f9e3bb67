"""The load generator's HTTP/1.1 client: pre-encoded requests on keep-alive sockets.

A load generator on the same cores as the server it measures steals the cycles it is
measuring. A general client (httpx) builds and parses every request in Python, ~1.5-2
core-ms per request here; this one encodes each distinct request once and per exchange
only writes the bytes and reads the status line, the headers and a `Content-Length` (or
chunked) body. It speaks just enough HTTP/1.1 for that: no redirects, no cookies, no TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

MAX_HEAD_BYTES = 64 * 1024


class HTTPError(Exception):
    """The exchange failed below HTTP (connect, reset, timeout, malformed answer)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    def error_code(self) -> str:
        """The gateway's `{"error": {"code"}}`, or `http_<status>` for any other body."""
        try:
            payload = json.loads(self.body)
        except ValueError:
            return f"http_{self.status}"
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            return str(payload["error"].get("code", f"http_{self.status}"))
        return f"http_{self.status}"


def encode_request(
    method: str, host: str, target: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    """One complete HTTP/1.1 request, ready to write as is."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ConnectionPool:
    """Keep-alive connections to one `host:port`, one per concurrent exchange. A
    connection idle for `max_idle_s` is closed rather than reused: the server may have
    closed it already (its keep-alive timeout), and a request written into a closed
    connection fails without reaching it (open-loop bursts leave connections idle)."""

    def __init__(self, host: str, port: int, *, timeout_s: float, connect_timeout_s: float = 5.0,
                 max_idle_s: float = 2.0):
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_idle_s = max_idle_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def exchange(self, request: bytes) -> Answer:
        """Write `request`, read the whole answer; raises `HTTPError` below HTTP."""
        connection = self._reusable() or await self._connect()
        reader, writer = connection
        try:
            async with asyncio.timeout(self.timeout_s):
                writer.write(request)
                answer, keep = await _read_answer(reader)
        except TimeoutError:
            writer.close()
            raise HTTPError("ReadTimeout", f"no answer within {self.timeout_s:g} s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.close()
            raise HTTPError(type(exc).__name__, str(exc)) from None
        except HTTPError:
            writer.close()
            raise
        if keep:
            self._idle.append((reader, writer, time.monotonic()))
        else:
            writer.close()
        return answer

    def _reusable(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The most recently used idle connection that is fresh enough; staler ones (at
        the bottom of the stack) are closed."""
        if self._idle and time.monotonic() - self._idle[0][2] > self.max_idle_s:
            fresh = [c for c in self._idle if time.monotonic() - c[2] <= self.max_idle_s]
            for _, writer, _ in (c for c in self._idle if c not in fresh):
                writer.close()
            self._idle = fresh
        if not self._idle:
            return None
        reader, writer, _ = self._idle.pop()
        return reader, writer

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                return await asyncio.open_connection(self.host, self.port, limit=MAX_HEAD_BYTES)
        except TimeoutError:
            raise HTTPError("ConnectTimeout", f"{self.host}:{self.port}") from None
        except OSError as exc:
            raise HTTPError("ConnectError", f"{self.host}:{self.port}: {exc}") from None

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer, _ in idle:
            writer.close()
        for _, writer, _ in idle:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[Answer, bool]:
    """(answer, whether the connection may be reused)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HTTPError("RemoteProtocolError", f"bad status line {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close" and parts[0] == "HTTP/1.1"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:  # the body runs to the end of the connection
        body, keep = await reader.read(), False
    return Answer(int(parts[1]), body, headers), keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


def multipart_form(files: list[tuple[str, bytes, str]], boundary: str) -> bytes:
    """A `multipart/form-data` body of `file` parts from (filename, data, content type)."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
        for name, data, content_type in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()
