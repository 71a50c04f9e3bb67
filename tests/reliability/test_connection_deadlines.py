"""Each phase of a connection has its deadline, on a real gateway process, on httptools
and on h11: a head that does not arrive (new or kept-alive connection), an idle
keep-alive, a body still dripping in after its answer, a head that is too large, a
client that does not read its answers; and at the cap a newcomer takes the slot of the
connection that has waited longest on its client. The header deadline holds in
multi-worker mode too, where the policy reaches the workers pickled."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.conftest import tiny_settings
from tests.support.gateway import GatewayServer

DEADLINE_S = 1.0
SEND_TIMEOUT_S = 1.0
MARGIN_S = 1.0


@pytest.fixture(scope="module", params=["httptools", "h11"])
def gateway(request: pytest.FixtureRequest, tiny_repo: Path) -> Iterator[GatewayServer]:
    settings = tiny_settings(
        tiny_repo, http_implementation=request.param, header_timeout_s=DEADLINE_S,
        keep_alive_timeout_s=DEADLINE_S, send_timeout_s=SEND_TIMEOUT_S, body_timeout_s=4.0,
        max_connections=2,
        probe_connections=1, access_log=False,
    )
    with GatewayServer(settings) as server:
        yield server


def connect(gateway: GatewayServer, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    if first:
        sock.sendall(first)
    return sock


def until_closed(sock: socket.socket, limit_s: float = 10.0) -> tuple[float, bytes]:
    """Seconds until the server closed `sock`, and everything it sent."""
    started, data = time.monotonic(), b""
    sock.settimeout(limit_s)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return time.monotonic() - started, data


def read_response(sock: socket.socket) -> bytes:
    """One complete response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def error_code(answer: bytes) -> str:
    return str(json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"])


def assert_at_deadline(elapsed: float, deadline_s: float = DEADLINE_S) -> None:
    assert deadline_s - 0.1 <= elapsed <= deadline_s + MARGIN_S, elapsed


GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"


def test_a_connection_that_sends_nothing_is_closed_silently(gateway: GatewayServer) -> None:
    elapsed, answer = until_closed(connect(gateway))
    assert_at_deadline(elapsed)
    assert answer == b""


def test_a_stalled_head_gets_408(gateway: GatewayServer) -> None:
    sock = connect(gateway, b"POST /classify HTTP/1.1\r\nHost: gateway\r\n")
    elapsed, answer = until_closed(sock)
    assert_at_deadline(elapsed)
    assert answer.startswith(b"HTTP/1.1 408 ") and error_code(answer) == "header_timeout"


def test_a_stalled_head_on_a_kept_alive_connection_gets_408(gateway: GatewayServer) -> None:
    sock = connect(gateway, GET_HEALTHZ)
    assert read_response(sock).startswith(b"HTTP/1.1 200 ")
    time.sleep(DEADLINE_S / 2)  # idle, within the keep-alive deadline
    sock.sendall(b"GET /heal")  # cancels uvicorn's keep-alive timer
    elapsed, answer = until_closed(sock)
    assert_at_deadline(elapsed)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_an_idle_keep_alive_is_closed(gateway: GatewayServer) -> None:
    sock = connect(gateway, GET_HEALTHZ)
    assert read_response(sock).startswith(b"HTTP/1.1 200 ")
    elapsed, answer = until_closed(sock)
    assert_at_deadline(elapsed)
    assert answer == b""


def test_a_body_dripping_in_after_its_answer_is_cut_off(gateway: GatewayServer) -> None:
    # The route answers without reading the announced body; each byte of it that
    # follows must not keep the connection open (it cancels uvicorn's keep-alive timer).
    sock = connect(
        gateway, b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nContent-Length: 1000\r\n\r\n"
    )
    assert read_response(sock).startswith(b"HTTP/1.1 200 ")
    answered = time.monotonic()
    sock.settimeout(0.2)
    closed_at = None
    while time.monotonic() - answered < DEADLINE_S + MARGIN_S + 1.0:
        try:
            sock.sendall(b"x")
            if sock.recv(1) == b"":
                closed_at = time.monotonic()
                break
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            closed_at = time.monotonic()
            break
    sock.close()
    assert closed_at is not None, "the dripping connection was never closed"
    assert_at_deadline(closed_at - answered)


def test_a_head_too_large_is_refused_at_once(gateway: GatewayServer) -> None:
    sock = connect(gateway, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 64 * 1024)
    elapsed, answer = until_closed(sock)
    assert elapsed < DEADLINE_S
    assert answer.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 400 "))  # 400 from h11


def test_a_large_body_read_after_its_answer_does_not_count_as_the_next_head(
    gateway: GatewayServer,
) -> None:
    # An early answer (a 503 before the body is read) leaves the client sending the rest
    # of its upload; its next request then starts in the same read as the upload's tail
    # and, split by the network, ends in a later one. The tail is body, not head: the
    # next request is served, not refused with 431.
    tail = 48 * 1024  # more than the 32 KiB head limit
    sock = connect(gateway, GET_HEALTHZ.replace(
        b"\r\n\r\n", f"\r\nContent-Length: {200_000 + tail}\r\n\r\n".encode()))
    assert read_response(sock).startswith(b"HTTP/1.1 200 ")
    sock.sendall(b"x" * 200_000)
    time.sleep(0.2)  # the server drains the first part, so the tail travels with the head
    sock.sendall(b"x" * tail + GET_HEALTHZ[:10])
    time.sleep(0.2)
    sock.sendall(GET_HEALTHZ[10:])
    assert read_response(sock).startswith(b"HTTP/1.1 200 ")
    sock.close()


def test_at_the_cap_a_newcomer_takes_the_slot_waiting_longest(gateway: GatewayServer) -> None:
    # Two uploads dripping in fill the cap of 2; both wait on their client.
    head = (b"POST /classify HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\nx")
    oldest = connect(gateway, head)
    time.sleep(0.2)
    newer = connect(gateway, head)
    time.sleep(0.2)
    try:
        newcomer = connect(gateway, b"GET /v1/model HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert read_response(newcomer).startswith(b"HTTP/1.1 200 ")
        newcomer.close()
        elapsed, _ = until_closed(oldest, limit_s=0.5)
        assert elapsed < 0.5, "the upload waiting longest should have made room"
        newer.settimeout(0.2)
        with pytest.raises(TimeoutError):
            newer.recv(1)  # still open, still waiting for its body
    finally:
        newer.close()


def gateway_side_is_established(gateway: GatewayServer, client: socket.socket) -> bool:
    """Whether the gateway's end of `client`'s connection is still established (from
    /proc/net/tcp). Once the gateway closes it, its end leaves ESTABLISHED at once, even
    while the kernel still holds unsent data for a client that does not read."""
    local = f":{gateway.port:04X}"
    remote = f":{client.getsockname()[1]:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(local) and fields[2].endswith(remote):
            return fields[3] == "01"
    return False


def test_a_client_that_does_not_read_is_dropped_at_the_send_deadline(
    gateway: GatewayServer,
) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connecting
    sock.connect(("127.0.0.1", gateway.port))
    # 600 pipelined page requests (~13 kB answers, ~8 MB in all) and never a byte read:
    # past what the kernel buffers (~1.6 MB here) the answers back up in the gateway,
    # which stops writing (the connection is busy, its answers are not complete).
    sock.sendall(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n" * 600)
    try:
        time.sleep(0.5)
        assert gateway_side_is_established(gateway, sock)
        deadline = time.monotonic() + SEND_TIMEOUT_S + MARGIN_S + 1.0
        while gateway_side_is_established(gateway, sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not gateway_side_is_established(gateway, sock), "still held by the gateway"
    finally:
        sock.close()


def test_multi_worker_gateways_keep_the_header_deadline(tiny_repo: Path) -> None:
    settings = tiny_settings(tiny_repo, workers=2, header_timeout_s=DEADLINE_S,
                             access_log=False)
    with GatewayServer(settings) as gateway:
        for _ in range(4):  # connections spread over both workers
            sock = connect(gateway, b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
            elapsed, answer = until_closed(sock)
            assert_at_deadline(elapsed)
            assert answer.startswith(b"HTTP/1.1 408 ")
        assert "connection cap" in gateway.log_text()
