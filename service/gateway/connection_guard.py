"""One connection's deadline and slot: the policy every connection is held to, the guard
that arms a timer per phase, and the minimal answers written when it closes one.

The protocols in `connections.py` report their phase after every event; the guard keeps
the deadline of that phase running (it restarts only when the phase changes) and keeps
the connection's place in the `ConnectionTable` (members waiting on their client can be
evicted for newcomers, busy ones cannot). A connection keeps its place, and so counts
against the cap, until its descriptor is gone: a close that waits to flush to a client
that does not read is bounded by the send deadline, then aborted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope

from service.gateway.connection_table import Admission, ConnectionTable

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass(frozen=True)
class ConnectionPolicy:
    """What every connection of one server is held to (picklable: crosses to workers)."""

    header_timeout_s: float = 5.0
    keep_alive_timeout_s: float = 5.0
    send_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    cap: int = 1024
    probe_slots: int = 16
    retry_after_s: int = 1


class Phase(Enum):
    """Where a connection is; all but BUSY wait on the client (and can be evicted).
    SEND overrides the others: the client is not taking what the gateway sends."""

    HEAD = "head"  # waiting for a request head
    BODY = "body"  # a request is being handled and its body is still arriving
    BUSY = "busy"  # a request is being handled, its body (if any) all here
    LINGER = "linger"  # answered, the request body still arriving
    IDLE = "idle"  # between requests
    SEND = "send"  # writing paused on a full buffer, or a close waiting to flush


def error_response(
    status: int, reason: str, code: str, message: str, retry_after_s: int | None = None
) -> bytes:
    """A complete HTTP/1.1 answer in the gateway's error format, closing the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "x-content-type-options: nosniff",
        "connection: close",
    ]
    if retry_after_s is not None:
        head.append(f"retry-after: {retry_after_s}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class ConnectionGuard:
    """One connection's slot in the table and its phase deadline. The protocol reports
    its phase after every event (`enter`); the guard arms, keeps or cancels the timer."""

    def __init__(
        self,
        policy: ConnectionPolicy,
        table: ConnectionTable,
        loop: asyncio.AbstractEventLoop,
        head_has_bytes: Callable[[], bool],
    ) -> None:
        self.policy = policy
        self.table = table
        self.loop = loop
        self.head_has_bytes = head_has_bytes
        self.transport: asyncio.Transport | None = None
        self.phase: Phase | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.write_paused = False  # set by the protocol's pause_writing/resume_writing

    def open(self, transport: asyncio.Transport) -> Admission:
        """Admit the new connection; a refused one is answered 503 and closed."""
        self.transport = transport
        admission = self.table.admit(self)
        if admission is Admission.REFUSE:
            self._close(error_response(
                503, "Service Unavailable", "too_many_connections",
                "the gateway holds as many connections as it can; retry shortly",
                self.policy.retry_after_s,
            ))
        return admission

    def enter(self, phase: Phase) -> None:
        """The connection is now in `phase` as its protocol sees it; a deadline runs from
        the change of phase. A transport closing with data still to flush, or with
        writing paused (`write_paused`), is in SEND whatever the protocol says."""
        transport = self.transport
        if self.closed or transport is None:
            return
        if transport.is_closing():
            if not transport.get_write_buffer_size():
                self.lost()  # closed for good: its descriptor goes now
                return
            phase = Phase.SEND
        elif self.write_paused:
            phase = Phase.SEND
        if phase is self.phase:
            return
        self.phase = phase
        self._cancel_timer()
        if phase is Phase.BUSY:
            self.table.busy(self)
            return
        self.table.waiting(self)
        if phase is Phase.BODY:
            return  # the app's body deadline (CA_BODY_TIMEOUT_S) answers 408
        policy = self.policy
        seconds = {
            Phase.HEAD: policy.header_timeout_s,
            Phase.SEND: policy.send_timeout_s,
        }.get(phase, policy.keep_alive_timeout_s)
        self.timer = self.loop.call_later(seconds, self._expired)

    def head_too_large(self) -> None:
        self.table.count("head_too_large")
        self._close(error_response(
            431, "Request Header Fields Too Large", "head_too_large",
            f"the request line and headers exceed {self.policy.max_header_bytes} bytes",
        ))

    def evict(self) -> None:
        """Closed to make room for a newcomer (the table counts it)."""
        self._close()

    def lost(self) -> None:
        """The transport is gone or going: free the slot and the timer."""
        self.closed = True
        self._cancel_timer()
        self.table.remove(self)

    def _expired(self) -> None:
        self.timer = None
        if self.phase is Phase.HEAD and self.head_has_bytes():
            self.table.count("header_timeout")
            self._close(error_response(
                408, "Request Timeout", "header_timeout",
                f"the request head did not arrive within {self.policy.header_timeout_s:g} s",
            ))
            return
        if self.phase in (Phase.LINGER, Phase.SEND):
            self.table.count(f"{self.phase.value}_timeout")
        self._close()

    def _close(self, answer: bytes = b"") -> None:
        transport = self.transport
        self.lost()
        if transport is None:
            return
        if answer and not transport.is_closing():
            transport.write(answer)
        # A client that does not read would keep close() waiting for the buffer to drain,
        # and the descriptor with it: drop what it did not take.
        if transport.get_write_buffer_size():
            transport.abort()
        elif not transport.is_closing():
            transport.close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def _probes_only(
    app: ASGI3Application, retry_after_s: int, scope: Scope, receive: ASGIReceiveCallable,
    send: ASGISendCallable,
) -> None:
    if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
        await app(scope, receive, send)  # type: ignore[arg-type]
        return
    body = json.dumps({"error": {
        "code": "too_many_connections",
        "message": "the gateway holds as many connections as it can; retry shortly",
    }}).encode()
    await send({
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry_after_s).encode()),
            (b"connection", b"close"),
        ],
    })
    await send({"type": "http.response.body", "body": body, "more_body": False})


def probes_only(app: ASGI3Application, retry_after_s: int) -> ASGI3Application:
    """`app` for the probe paths; 503 `too_many_connections` (closing) for the rest."""

    async def guarded(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        await _probes_only(app, retry_after_s, scope, receive, send)

    return guarded  # type: ignore[return-value]
