"""`CA_TRITON_URL`: one Triton address, or a DNS name whose every address serves.

- `host:port` (or any target gRPC understands: `ipv4:`, `unix:`) is one endpoint, handed
  to the client as it is; gRPC resolves it itself, once per connection. Behind a ClusterIP
  Service that pins every gateway to one pod (kube-proxy balances connections, not calls).
- `dns:///name:port` names every address `name` resolves to through the system resolver
  (`getaddrinfo`: /etc/resolv.conf, search domains, /etc/hosts): a headless Service gives
  one per ready pod. The gateway balances calls over them and resolves again every
  `CA_TRITON_RESOLVE_INTERVAL_S`.
- `dns://SERVER[:PORT]/name:port` asks that DNS server (an IP address; port 53 when
  left out) instead of the system's, the authority form gRPC's c-ares resolver accepts.

The port is required after a `dns:` name: gRPC would default to 443, never Triton's port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

from service.gateway.backends import dns_client

DNS_SCHEME = "dns:"
DNS_PORT = 53


class TargetError(ValueError):
    """`CA_TRITON_URL` cannot be understood; the message says what is wrong."""


@dataclass(frozen=True)
class Target:
    """A parsed `CA_TRITON_URL`. `balanced` targets name a DNS name (`host`, `port`) whose
    addresses are resolved by the gateway (through `dns_server` when set, else the
    system); the others are `url`, passed to the client untouched."""

    url: str
    balanced: bool = False
    host: str = ""
    port: int = 0
    dns_server: tuple[str, int] | None = None

    def describe(self) -> str:
        return f"{self.host}:{self.port}" if self.balanced else self.url


def parse_target(url: str) -> Target:
    """Parse `CA_TRITON_URL`; raises `TargetError` naming the problem."""
    url = url.strip()
    if not url:
        raise TargetError("CA_TRITON_URL is empty")
    if not url.startswith(DNS_SCHEME):
        return Target(url=url)
    rest = url[len(DNS_SCHEME) :]
    server: tuple[str, int] | None = None
    if rest.startswith("//"):
        authority, slash, rest = rest[2:].partition("/")
        if not slash:
            raise TargetError(f"{url!r}: expected dns:///name:port or dns://SERVER/name:port")
        if authority:
            server = _dns_server(url, authority)
    host, port = split_host_port(rest, what=url)
    if not host:
        raise TargetError(f"{url!r} names no host")
    return Target(url=url, balanced=True, host=host, port=port, dns_server=server)


def split_host_port(text: str, *, what: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); the port is required."""
    if text.startswith("["):
        host, bracket, tail = text[1:].partition("]")
        port_text = tail[1:] if bracket and tail.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise TargetError(f"{what!r}: expected host:port with a port in 1-65535, got {text!r}")
    return host, int(port_text)


def _dns_server(url: str, authority: str) -> tuple[str, int]:
    if authority.startswith("[") and authority.endswith("]"):  # [v6]
        host, port = authority[1:-1], DNS_PORT
    elif authority.startswith("[") or authority.count(":") == 1:  # [v6]:port, v4:port
        host, port = split_host_port(authority, what=url)
    else:  # v4, or a bare v6
        host, port = authority, DNS_PORT
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise TargetError(f"{url!r}: the DNS server must be an IP address, got {host!r}") from None
    return host, port


def endpoint_address(ip: str, port: int) -> str:
    """`ip:port`, IPv6 in brackets: what tritonclient and gRPC take as a target."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


async def resolve(target: Target, *, timeout_s: float = 2.0) -> list[str]:
    """The endpoint addresses `target` names now, sorted, no duplicates: `[target.url]` for
    an unbalanced target. Raises `OSError` (`socket.gaierror`, `DnsError`) when the name
    cannot be resolved; an empty list when it exists without addresses."""
    if not target.balanced:
        return [target.url]
    if target.dns_server is not None:
        ips = await asyncio.to_thread(
            dns_client.lookup, target.dns_server, target.host, timeout_s=timeout_s
        )
    else:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s * 2):
            infos = await loop.getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        ips = [str(info[4][0]) for info in infos]
    return sorted({endpoint_address(ip, target.port) for ip in ips})
