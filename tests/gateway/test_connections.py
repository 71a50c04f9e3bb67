"""The guarded protocols driven directly, with an in-memory transport and an app that can
be held busy: what a newcomer gets at the cap when no connection waits on its client
(the probe paths only, then a refusal), and the send deadline of a client that does not
read. (The deadlines over real sockets: tests/reliability/test_connection_deadlines.py.)"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from uvicorn.server import ServerState

from service.gateway.connection_guard import ConnectionPolicy, Phase
from service.gateway.connections import GatewayConfig, protocol_class

POLICY = ConnectionPolicy(
    header_timeout_s=5.0, keep_alive_timeout_s=5.0, send_timeout_s=0.05, cap=2, probe_slots=1,
)


class MemoryTransport(asyncio.Transport):
    """Records what is written; `buffered` stands for bytes the client has not taken."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False
        self.aborted = False
        self.buffered = 0
        self.protocol: asyncio.Protocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:  # like asyncio's: the connection goes once the buffer is flushed
        self.closing = True
        if not self.buffered:
            self._lose()

    def abort(self) -> None:
        self.closing = self.aborted = True
        self.buffered = 0
        self._lose()

    def _lose(self) -> None:
        if self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)
            self.protocol = None

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class App:
    """200 at once, or once `release` is set for paths in `held`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = {"/work"}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] in self.held:
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


class Server:
    def __init__(self, implementation: str) -> None:
        self.app = App()
        self.config = GatewayConfig(
            self.app, connection_policy=POLICY, http=protocol_class(implementation),  # type: ignore[arg-type]
            lifespan="off", proxy_headers=False, log_level="warning",
        )
        self.config.load()
        self.state = ServerState()

    def connect(self) -> tuple[Any, MemoryTransport]:
        protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.state, app_state={},
        )
        transport = MemoryTransport()
        transport.protocol = protocol
        protocol.connection_made(transport)
        return protocol, transport


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture(params=["httptools", "h11"])
def server(request: pytest.FixtureRequest) -> Server:
    return Server(request.param)


async def test_when_every_slot_is_busy_a_newcomer_may_only_probe(server: Server) -> None:
    busy = [server.connect() for _ in range(POLICY.cap)]
    for protocol, _ in busy:
        protocol.data_received(get("/work"))  # held in the app: busy, never evicted
    await settle()
    assert all(protocol.guard.phase is Phase.BUSY for protocol, _ in busy)

    protocol, transport = server.connect()
    protocol.data_received(get("/v1/model"))
    await settle()
    assert transport.written.startswith(b"HTTP/1.1 503 ") and transport.closing
    body = json.loads(bytes(transport.written).partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "too_many_connections"
    assert not any(t.closing for _, t in busy)

    probe, probe_transport = server.connect()
    probe.data_received(get("/healthz"))
    await settle()
    assert probe_transport.written.startswith(b"HTTP/1.1 200 ")

    # With the probe slot busy too, the next connection is refused before it sends a byte.
    server.app.held.add("/healthz")
    probe.data_received(get("/healthz"))
    await settle()
    _, refused_transport = server.connect()
    assert refused_transport.written.startswith(b"HTTP/1.1 503 ") and refused_transport.closing
    assert b"retry-after: 1" in refused_transport.written

    server.app.release.set()
    await settle()
    for _, t in busy:
        assert t.written.startswith(b"HTTP/1.1 200 ")


async def test_a_client_that_does_not_read_waits_on_itself_and_is_dropped(server: Server) -> None:
    protocol, transport = server.connect()
    protocol.data_received(get("/healthz"))
    await settle()
    transport.buffered = 1 << 20  # the client took nothing of what followed
    protocol.pause_writing()
    assert protocol.guard.phase is Phase.SEND
    # Waiting on its client, it makes room for a newcomer at the cap.
    others = [server.connect() for _ in range(POLICY.cap)]
    assert transport.aborted and not any(t.closing for _, t in others)


async def test_the_send_deadline_aborts_a_close_that_cannot_flush(server: Server) -> None:
    protocol, transport = server.connect()
    protocol.data_received(get("/healthz"))
    await settle()
    transport.buffered = 1 << 20
    protocol.timeout_keep_alive_handler()  # uvicorn's close(), which would wait to flush
    assert protocol.guard.phase is Phase.SEND and not transport.aborted
    await asyncio.sleep(POLICY.send_timeout_s + 0.1)
    assert transport.aborted
