"""Attacking clients for a connection-level attack, loopback only, without threads: one
selector loop keeps slow-header, slow-body and idle keep-alive connections open, replaces
those the server closes, and records each one's lifetime.

- slow header: a request line and one header, then nothing;
- slow body: a complete head announcing 1 MB, then one byte every `drip_s`, also after
  an answer came (as an attacker would);
- idle: one `GET /healthz`, its answer read, then nothing.

`attack(plan)` runs in the calling thread; `attack_in_processes` splits a plan over
processes with their own source addresses (127.0.0.2, ...), for more descriptors and
ephemeral ports than one process has.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import re
import resource
import selectors
import socket
import time
from dataclasses import dataclass

SLOW_HEADER = "slow_header"
SLOW_BODY = "slow_body"
IDLE = "idle"
KINDS = (SLOW_HEADER, SLOW_BODY, IDLE)


@dataclass(frozen=True)
class AttackPlan:
    port: int
    slow_headers: int
    slow_bodies: int = 0
    idle: int = 0
    seconds: float = 6.0
    open_rate_per_s: float = 2000.0
    drip_s: float = 0.5
    hold_s: float = 20.0  # after `seconds`, how long to wait for the gateway to close the rest
    source_ip: str = "127.0.0.1"
    start_at: float = 0.0  # time.monotonic() to start at (system-wide on Linux); 0: now


@dataclass
class Lifetime:
    """One attacking connection: when it was established and when the gateway closed it
    (None: still open when the attacker gave up), and the first bytes of any answer."""

    kind: str
    opened: float
    closed: float | None = None
    answer: bytes = b""
    established: bool = False  # False: the handshake never completed (SYN dropped)

    @property
    def status(self) -> int | None:
        match = re.match(rb"HTTP/1\.1 (\d{3})", self.answer)
        return int(match.group(1)) if match else None


@dataclass
class _Conn:
    sock: socket.socket
    life: Lifetime
    connected: bool = False
    next_drip: float = 0.0
    sent_request: bool = False


def _payload(kind: str, port: int) -> bytes:
    host = f"Host: 127.0.0.1:{port}\r\n"
    if kind == SLOW_HEADER:
        return f"POST /classify HTTP/1.1\r\n{host}".encode()
    if kind == SLOW_BODY:
        return (
            f"POST /classify HTTP/1.1\r\n{host}Content-Type: image/png\r\n"
            "Content-Length: 1000000\r\n\r\n"
        ).encode()
    return f"GET /healthz HTTP/1.1\r\n{host}\r\n".encode()


def attack(plan: AttackPlan) -> list[Lifetime]:
    """Run the attack in this thread; every connection's lifetime (monotonic clock)."""
    selector = selectors.DefaultSelector()
    conns: dict[int, _Conn] = {}
    lives: list[Lifetime] = []
    wanted = {SLOW_HEADER: plan.slow_headers, SLOW_BODY: plan.slow_bodies, IDLE: plan.idle}
    open_now = dict.fromkeys(KINDS, 0)
    time.sleep(max(0.0, plan.start_at - time.monotonic()))
    start = time.monotonic()
    opened_total = 0

    def close(conn: _Conn, now: float, by_server: bool) -> None:
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn.sock)
        conns.pop(conn.sock.fileno(), None)
        conn.sock.close()
        if by_server:
            conn.life.closed = now
        open_now[conn.life.kind] -= 1

    def open_one(kind: str, now: float) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if plan.source_ip != "127.0.0.1":
                sock.bind((plan.source_ip, 0))
            code = sock.connect_ex(("127.0.0.1", plan.port))
        except OSError:
            sock.close()
            return False
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return False
        life = Lifetime(kind, now)
        lives.append(life)
        conn = _Conn(sock, life, next_drip=now + plan.drip_s)
        conns[sock.fileno()] = conn
        selector.register(sock, selectors.EVENT_WRITE, conn)
        open_now[kind] += 1
        return True

    while True:
        now = time.monotonic()
        attacking = now - start < plan.seconds
        if not attacking and (not conns or now - start > plan.seconds + plan.hold_s):
            break
        if attacking:
            budget = int(plan.open_rate_per_s * (now - start)) - opened_total
            while budget > 0:  # round robin, so that every kind gets its share
                short = [kind for kind in KINDS if open_now[kind] < wanted[kind]]
                for kind in short[:budget]:
                    if not open_one(kind, now):
                        short = []
                        break
                    opened_total += 1
                    budget -= 1
                if not short:
                    break
        for key, events in selector.select(timeout=0.02):
            conn = key.data
            now = time.monotonic()
            if events & selectors.EVENT_WRITE and not conn.connected:
                if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    close(conn, now, by_server=True)
                    continue
                conn.connected = conn.life.established = True
                # Lifetimes count from the handshake: a SYN the kernel dropped while the
                # listen queue was full is retried after 1, 3, 7 s, before any deadline.
                conn.life.opened = now
                try:
                    conn.sock.send(_payload(conn.life.kind, plan.port))
                except OSError:
                    close(conn, now, by_server=True)
                    continue
                selector.modify(conn.sock, selectors.EVENT_READ, conn)
            elif events & selectors.EVENT_READ:
                try:
                    data = conn.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    close(conn, now, by_server=True)
                elif len(conn.life.answer) < 256:
                    conn.life.answer += data[: 256 - len(conn.life.answer)]
        now = time.monotonic()
        for conn in [c for c in conns.values() if c.life.kind == SLOW_BODY]:
            if conn.connected and now >= conn.next_drip:
                conn.next_drip = now + plan.drip_s
                try:
                    conn.sock.send(b"\x89")
                except BlockingIOError:
                    pass
                except OSError:
                    close(conn, now, by_server=True)
    for conn in list(conns.values()):
        close(conn, time.monotonic(), by_server=False)
    selector.close()
    return lives


def _attack_in_process(plan: AttackPlan, queue: multiprocessing.Queue[list[Lifetime]]) -> None:
    raise_own_fd_limit()
    queue.put(attack(plan))


def raise_own_fd_limit() -> int:
    """Raise this process's soft descriptor limit to the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def attack_in_processes(plan: AttackPlan, processes: int) -> list[Lifetime]:
    """`plan` split over `processes` processes, each from its own source address."""
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[list[Lifetime]] = context.Queue()
    workers = []
    for index in range(processes):
        share = AttackPlan(
            port=plan.port,
            slow_headers=_share(plan.slow_headers, processes, index),
            slow_bodies=_share(plan.slow_bodies, processes, index),
            idle=_share(plan.idle, processes, index),
            seconds=plan.seconds,
            open_rate_per_s=plan.open_rate_per_s / processes,
            drip_s=plan.drip_s,
            hold_s=plan.hold_s,
            source_ip=f"127.0.0.{2 + index}",
            start_at=plan.start_at,
        )
        worker = context.Process(target=_attack_in_process, args=(share, queue))
        worker.start()
        workers.append(worker)
    lives = [life for _ in workers for life in queue.get()]
    for worker in workers:
        worker.join()
    return lives


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)
