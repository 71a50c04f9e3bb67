"""A minimal DNS stub client: the A and AAAA records of one name, asked of one server.

Only `dns://SERVER[:PORT]/name:port` Triton targets use it, where the target itself names
the DNS server to ask (the form gRPC's c-ares resolver accepts); `dns:///name:port` goes
through the system resolver (`getaddrinfo`, so /etc/resolv.conf and /etc/hosts) instead.

RFC 1035, the part a stub needs: one question per query over UDP, asked again over TCP
when the answer comes back truncated. Every A/AAAA record of the answer section counts,
whatever its owner name (behind a CNAME the addresses carry the canonical name). No cache:
the caller asks at its own interval, which is the point.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct

A, AAAA = 1, 28
CLASS_IN = 1
_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_FLAG_RESPONSE = 0x8000
_FLAG_TRUNCATED = 0x0200
_FLAG_RECURSION_DESIRED = 0x0100
_RCODE_MASK = 0x000F
_NXDOMAIN = 3
_UDP_MAX = 4096


class DnsError(OSError):
    """The server did not answer, answered something else, or reported a failure."""


def lookup(server: tuple[str, int], name: str, *, timeout_s: float = 2.0) -> list[str]:
    """The IPv4 then IPv6 addresses `server` gives for `name` (no duplicates, in answer
    order); empty when the name does not exist or has no address. Blocking: run it in a
    thread. Raises `DnsError` when the server is unreachable, silent for `timeout_s` per
    question, or fails the query (SERVFAIL, REFUSED, a malformed answer)."""
    found: list[str] = []
    for qtype in (A, AAAA):
        for address in _ask(server, name, qtype, timeout_s):
            if address not in found:
                found.append(address)
    return found


def _ask(server: tuple[str, int], name: str, qtype: int, timeout_s: float) -> list[str]:
    ident = secrets.randbits(16)
    query = build_query(ident, name, qtype)
    family = socket.AF_INET6 if ipaddress.ip_address(server[0]).version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(server)
            sock.send(query)
            while True:  # skip stray datagrams (a late answer to an earlier query)
                data = sock.recv(_UDP_MAX)
                if len(data) >= 2 and struct.unpack_from("!H", data)[0] == ident:
                    break
        if _flags(data) & _FLAG_TRUNCATED:
            data = _ask_tcp(server, family, query, timeout_s)
    except OSError as exc:
        raise DnsError(f"DNS server {server[0]}:{server[1]}: {exc or type(exc).__name__}") from exc
    return parse_answer(data, ident, qtype)


def _ask_tcp(server: tuple[str, int], family: int, query: bytes, timeout_s: float) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(server)
        sock.sendall(struct.pack("!H", len(query)) + query)
        size = struct.unpack("!H", _read_exactly(sock, 2))[0]
        return _read_exactly(sock, size)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise DnsError("the DNS server closed the TCP connection mid-answer")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def build_query(ident: int, name: str, qtype: int) -> bytes:
    """One recursive question for `name` (absolute; a trailing dot is optional)."""
    labels = name.rstrip(".").split(".")
    if not all(labels) or any(len(label.encode("idna")) > 63 for label in labels):
        raise DnsError(f"not a DNS name: {name!r}")
    encoded = b"".join(bytes([len(p)]) + p for p in (label.encode("idna") for label in labels))
    header = _HEADER.pack(ident, _FLAG_RECURSION_DESIRED, 1, 0, 0, 0)
    return header + encoded + b"\x00" + struct.pack("!HH", qtype, CLASS_IN)


def parse_answer(data: bytes, ident: int, qtype: int) -> list[str]:
    """The `qtype` addresses of the answer section of `data`, the reply to query `ident`.
    NXDOMAIN is an empty list; any other failure code raises `DnsError`."""
    try:
        ident_got, flags, questions, answers, _, _ = _HEADER.unpack_from(data)
    except struct.error as exc:
        raise DnsError("a DNS answer shorter than its header") from exc
    if ident_got != ident or not flags & _FLAG_RESPONSE:
        raise DnsError("the DNS server answered another query")
    rcode = flags & _RCODE_MASK
    if rcode == _NXDOMAIN:
        return []
    if rcode:
        raise DnsError(f"the DNS server failed the query (rcode {rcode})")
    offset = _HEADER.size
    try:
        for _ in range(questions):
            offset = skip_name(data, offset) + 4  # qtype, qclass
        found: list[str] = []
        for _ in range(answers):
            offset = skip_name(data, offset)
            rtype, rclass, _ttl, length = _RR_FIXED.unpack_from(data, offset)
            offset += _RR_FIXED.size
            rdata = data[offset : offset + length]
            offset += length
            if len(rdata) != length:
                raise DnsError("a DNS answer cut short")
            if rclass == CLASS_IN and rtype == qtype == A and length == 4:
                found.append(str(ipaddress.IPv4Address(rdata)))
            elif rclass == CLASS_IN and rtype == qtype == AAAA and length == 16:
                found.append(str(ipaddress.IPv6Address(rdata)))
    except (struct.error, IndexError) as exc:
        raise DnsError("a malformed DNS answer") from exc
    return found


def skip_name(data: bytes, offset: int) -> int:
    """The offset just past the (possibly compressed) name at `offset`."""
    while True:
        length = data[offset]
        if length & 0xC0 == 0xC0:  # a pointer ends the name where it stands
            return offset + 2
        if length & 0xC0:
            raise DnsError("a DNS name with a reserved label type")
        offset += 1 + length
        if length == 0:
            return offset


def _flags(data: bytes) -> int:
    return int(struct.unpack_from("!H", data, 2)[0]) if len(data) >= 4 else 0
