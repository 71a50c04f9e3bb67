"""uvicorn's two HTTP protocols with connection deadlines and a connection cap.

uvicorn bounds one thing per connection: an idle keep-alive (`timeout_keep_alive`, from
the end of a response to the next byte). Nothing bounds a connection that sends part of
a request head and stalls: not a new one, not a kept-alive one (its first byte cancels
the keep-alive timer), nor one whose answer went out while its body still drips in
(every byte cancels the timer again). `limit_concurrency` counts connections but acts
only once a head is complete, after the descriptor is spent, so connections that never
complete a head exhaust the process's descriptors. The subclasses here add, for
httptools and h11 alike, a deadline per phase of a connection:

- HEAD, waiting for a request head (from connecting, or from the first byte of a next
  request): closed after `header_timeout_s`, with a 408 if part of a head came;
- BODY, handling a request whose body is still arriving: the app's body deadline
  (`CA_BODY_TIMEOUT_S`, 408) applies;
- BUSY, handling a request whose body is all here: the app's request deadline applies;
- LINGER, answered while the request body is still arriving, and IDLE, between
  requests: closed after `keep_alive_timeout_s` (body bytes do not restart it);
- SEND, the client does not take what is sent (writing paused, or a close waiting to
  flush): aborted after `send_timeout_s` (uvicorn's close() would wait forever);

and admission when a connection is accepted, through a `ConnectionTable` (a cap, probe
slots, eviction of the connection waiting longest). A head larger than
`max_header_bytes` gets 431; h11 enforces that itself (`h11_max_incomplete_event_size`).

`GatewayConfig` carries the `ConnectionPolicy` to every protocol instance and, pickled,
to every worker process; `protocol_class(name)` picks the subclass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.gateway.connection_guard import ConnectionGuard, ConnectionPolicy, Phase, probes_only
from service.gateway.connection_table import Admission, table_for


class GatewayConfig(uvicorn.Config):
    """uvicorn's config plus the gateway's `ConnectionPolicy`."""

    def __init__(self, app: Any, *, connection_policy: ConnectionPolicy, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.connection_policy = connection_policy


def _guard(
    config: uvicorn.Config, server_state: ServerState, loop: asyncio.AbstractEventLoop,
    head_has_bytes: Callable[[], bool],
) -> ConnectionGuard:
    policy = getattr(config, "connection_policy", None)
    if not isinstance(policy, ConnectionPolicy):
        policy = ConnectionPolicy()
    table = table_for(server_state, policy.cap, policy.probe_slots)
    return ConnectionGuard(policy, table, loop, head_has_bytes)


class _GuardHooks(asyncio.Protocol):
    """The events both guarded protocols report to their guard the same way; each class
    puts this before its uvicorn protocol and says how it reads its phase (`_phase`)."""

    guard: ConnectionGuard
    app: Any

    def _phase(self) -> Phase:
        raise NotImplementedError

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        admission = self.guard.open(transport)
        if admission is Admission.PROBES_ONLY:
            self.app = probes_only(self.app, self.guard.policy.retry_after_s)
        self.guard.enter(self._phase())

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.lost()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self.guard.enter(self._phase())

    def pause_writing(self) -> None:
        super().pause_writing()
        self.guard.write_paused = True
        self.guard.enter(self._phase())

    def resume_writing(self) -> None:
        super().resume_writing()
        self.guard.write_paused = False
        self.guard.enter(self._phase())

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()  # type: ignore[misc]
        self.guard.enter(self._phase())  # a close still flushing gets the send deadline


class GuardedH11Protocol(_GuardHooks, H11Protocol):
    """h11 with phase deadlines and admission (see the module docstring)."""

    def __init__(
        self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guard = _guard(config, server_state, self.loop, self._head_has_bytes)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.guard.enter(self._phase())

    def _head_has_bytes(self) -> bool:
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])

    def _phase(self) -> Phase:
        state = self.conn.their_state
        if self.cycle is not None and not self.cycle.response_complete:
            return Phase.BODY if state is h11.SEND_BODY else Phase.BUSY
        if state is h11.SEND_BODY:
            return Phase.LINGER
        if state is h11.IDLE and (self.cycle is None or self._head_has_bytes()):
            return Phase.HEAD
        return Phase.IDLE


class GuardedHttpToolsProtocol(_GuardHooks, HttpToolsProtocol):
    """httptools with phase deadlines, admission and a bound on the head's size.

    llhttp (under httptools) sets no limit on a head: the bytes read while one is
    incomplete are counted here. A read can carry the end of one request's body and the
    start of the next head (a client sending its next request after an early answer, such
    as a 503 before the body was read): that body's bytes are not counted, or a large
    upload's tail would be mistaken for a head too large."""

    def __init__(
        self, config: uvicorn.Config, server_state: ServerState,
        app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.head_started = False
        self.head_bytes = 0
        self.message_complete = False
        self.body_bytes_in_read = 0
        self.guard = _guard(config, server_state, self.loop, lambda: self.head_started)

    def data_received(self, data: bytes) -> None:
        self.body_bytes_in_read = 0
        super().data_received(data)
        if self.head_started:
            self.head_bytes += len(data) - self.body_bytes_in_read
            if self.head_bytes > self.guard.policy.max_header_bytes:
                self.guard.head_too_large()
                return
        self.guard.enter(self._phase())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_started, self.head_bytes, self.message_complete = True, 0, False

    def on_body(self, body: bytes) -> None:
        self.body_bytes_in_read += len(body)
        super().on_body(body)

    def on_headers_complete(self) -> None:
        self.head_started = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.message_complete = True  # before uvicorn's early return for answered requests
        super().on_message_complete()

    def _phase(self) -> Phase:
        if self.cycle is None:
            return Phase.HEAD
        if not self.cycle.response_complete:
            return Phase.BUSY if self.message_complete else Phase.BODY
        if self.head_started:
            return Phase.HEAD
        if not self.message_complete:
            return Phase.LINGER
        return Phase.IDLE


def protocol_class(name: Literal["auto", "httptools", "h11"]) -> type[asyncio.Protocol]:
    """The guarded protocol for `name`; auto means httptools (a dependency through
    uvicorn[standard]; faster than h11)."""
    return GuardedH11Protocol if name == "h11" else GuardedHttpToolsProtocol
