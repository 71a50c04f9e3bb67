"""A real DNS server on loopback (dnslib), whose answers a test changes while it runs.

`DnsServer()` is a context manager listening on UDP and TCP on one free port of 127.0.0.1;
`set(name, addresses)` replaces the A/AAAA records of `name` (TTL 0, so nothing caches
them); a name never set answers NXDOMAIN. `udp_limit` truncates UDP answers longer than
that many bytes (TC flag set), as a real server does past 512 bytes without EDNS.
`queries` counts the questions asked, per name.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter
from types import TracebackType
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from tests.support.triton import free_port


class _Records(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, list[str]] = {}
        self.queries: Counter[str] = Counter()

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries[name] += 1
            addresses = self.records.get(name)
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for address in addresses:
            ip = ipaddress.ip_address(address)
            if qtype == "A" and ip.version == 4:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=0))
            elif qtype == "AAAA" and ip.version == 6:
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=0))
        return reply


class DnsServer:
    """An authoritative-only DNS server for test names on 127.0.0.1:`port`."""

    def __init__(self, *, udp_limit: int = 0) -> None:
        self.port = free_port()
        self._records = _Records()
        handler = type("Handler", (DNSHandler,), {"udplen": udp_limit})
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        self._servers = [
            DNSServer(self._records, port=self.port, address="127.0.0.1", tcp=tcp,
                      handler=handler, logger=quiet)
            for tcp in (False, True)
        ]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def authority(self) -> str:
        """`127.0.0.1:port`, as the authority of a `dns://` target."""
        return f"127.0.0.1:{self.port}"

    def set(self, name: str, addresses: list[str]) -> None:
        with self._records.lock:
            self._records.records[name.rstrip(".").lower()] = list(addresses)

    def queries(self, name: str) -> int:
        with self._records.lock:
            return self._records.queries[name.rstrip(".").lower()]

    def start(self) -> DnsServer:
        for server in self._servers:
            server.start_thread()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
