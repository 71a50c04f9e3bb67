"""The load generator's lean HTTP/1.1 client against a real loopback socket server that
answers with canned bytes: each framing (length, chunked, to-the-close), connection reuse,
timeouts and garbage. The gateway end of it is in test_bench.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from service.loadgen.http_client import ConnectionPool, HTTPError, encode_request, multipart_form


@dataclass
class CannedServer:
    """Reads one request head + Content-Length body at a time; answers with `answer(n)`."""

    answer: Callable[[int], bytes | None]  # None: say nothing (a hung server)
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                self.requests.append(head + await reader.readexactly(length))
                reply = self.answer(len(self.requests))
                if reply is None:
                    await asyncio.sleep(10)
                    return
                writer.write(reply)
                await writer.drain()
                framed = b"Content-Length" in reply or b"chunked" in reply
                if not framed or b"Connection: close" in reply:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


async def started(answer: Callable[[int], bytes | None]) -> tuple[CannedServer, asyncio.Server]:
    canned = CannedServer(answer)
    server = await asyncio.start_server(canned.handle, "127.0.0.1", 0)
    canned.port = server.sockets[0].getsockname()[1]
    return canned, server


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


REQUEST = encode_request("POST", "x", "/classify?top_k=5", {"Content-Type": "image/png"}, b"PNG!")


async def test_keep_alive_reuses_one_connection() -> None:
    canned, server = await started(lambda n: ok(b'{"n": %d}' % n))
    pool = ConnectionPool("127.0.0.1", canned.port, timeout_s=2.0)
    answers = [await pool.exchange(REQUEST) for _ in range(5)]
    await pool.close()
    server.close()
    assert [json.loads(a.body)["n"] for a in answers] == [1, 2, 3, 4, 5]
    assert canned.connections == 1
    assert canned.requests[0] == (
        b"POST /classify?top_k=5 HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 4\r\n\r\nPNG!"
    )


async def test_concurrent_exchanges_get_their_own_connections() -> None:
    canned, server = await started(lambda n: ok(b"{}"))
    pool = ConnectionPool("127.0.0.1", canned.port, timeout_s=2.0)
    await asyncio.gather(*(pool.exchange(REQUEST) for _ in range(4)))
    await asyncio.gather(*(pool.exchange(REQUEST) for _ in range(4)))
    await pool.close()
    server.close()
    assert canned.connections == 4 and len(canned.requests) == 8


async def test_chunked_and_close_delimited_bodies() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    to_close = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    canned, server = await started(lambda n: chunked if n == 1 else to_close)
    pool = ConnectionPool("127.0.0.1", canned.port, timeout_s=2.0)
    first = await pool.exchange(REQUEST)
    second = await pool.exchange(REQUEST)  # same connection: chunked keeps it open
    third = await pool.exchange(REQUEST)  # the close-delimited answer ended the last one
    await pool.close()
    server.close()
    assert first.body == b"hello, world"
    assert second.body == third.body == b"until the end"
    assert canned.connections == 2


async def test_error_codes_from_the_gateway_json_or_the_status() -> None:
    error = json.dumps({"error": {"code": "overloaded", "message": "retry"}}).encode()
    replies = [
        f"HTTP/1.1 503 Service Unavailable\r\nContent-Length: {len(error)}\r\n\r\n".encode()
        + error,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found",
    ]
    canned, server = await started(lambda n: replies[n - 1])
    pool = ConnectionPool("127.0.0.1", canned.port, timeout_s=2.0)
    shed, missing = [await pool.exchange(REQUEST) for _ in range(2)]
    await pool.close()
    server.close()
    assert (shed.status, shed.error_code()) == (503, "overloaded")
    assert (missing.status, missing.error_code()) == (404, "http_404")


async def test_a_hung_server_times_out_and_the_next_exchange_reconnects() -> None:
    canned, server = await started(lambda n: None if n == 1 else ok(b"{}"))
    pool = ConnectionPool("127.0.0.1", canned.port, timeout_s=0.3)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(HTTPError) as raised:
        await pool.exchange(REQUEST)
    assert raised.value.kind == "ReadTimeout" and loop.time() - began < 2.0
    assert (await pool.exchange(REQUEST)).status == 200
    await pool.close()
    server.close()
    assert canned.connections == 2


async def test_garbage_and_refused_connections_are_http_errors() -> None:
    canned, server = await started(lambda n: b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    pool = ConnectionPool("127.0.0.1", canned.port, timeout_s=2.0)
    with pytest.raises(HTTPError) as raised:
        await pool.exchange(REQUEST)
    assert raised.value.kind == "RemoteProtocolError"
    server.close()
    await server.wait_closed()
    refused = ConnectionPool("127.0.0.1", canned.port, timeout_s=2.0)
    with pytest.raises(HTTPError) as raised:
        await refused.exchange(REQUEST)
    assert raised.value.kind == "ConnectError"


def test_multipart_form_parts_and_terminator() -> None:
    body = multipart_form([("a.png", b"AAA", "image/png"), ("b.jpg", b"BB", "image/jpeg")], "bnd")
    assert body.count(b"--bnd\r\n") == 2 and body.endswith(b"--bnd--\r\n")
    assert b'filename="a.png"\r\nContent-Type: image/png\r\n\r\nAAA\r\n' in body
    assert b'filename="b.jpg"\r\nContent-Type: image/jpeg\r\n\r\nBB\r\n' in body
