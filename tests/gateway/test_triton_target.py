"""`CA_TRITON_URL` parsing and resolution: the system resolver for `dns:///`, and the
stub DNS client against a real DNS server on loopback for `dns://SERVER/`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.gateway.backends import dns_client
from service.gateway.backends.triton_target import (
    Target,
    TargetError,
    endpoint_address,
    parse_target,
    resolve,
)
from service.gateway.settings import Settings
from tests.support.dns import DnsServer


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("127.0.0.1:8001", Target(url="127.0.0.1:8001")),
        ("triton:8001", Target(url="triton:8001")),
        (
            "dns:///triton.ca-serve.svc.cluster.local:8001",
            Target(
                url="dns:///triton.ca-serve.svc.cluster.local:8001", balanced=True,
                host="triton.ca-serve.svc.cluster.local", port=8001,
            ),
        ),
        ("dns:triton:8001", Target(url="dns:triton:8001", balanced=True, host="triton", port=8001)),
        (
            "dns://127.0.0.1:5353/name.test:8001",
            Target(
                url="dns://127.0.0.1:5353/name.test:8001", balanced=True, host="name.test",
                port=8001, dns_server=("127.0.0.1", 5353),
            ),
        ),
        (
            "dns://10.96.0.10/triton:8001",
            Target(
                url="dns://10.96.0.10/triton:8001", balanced=True, host="triton", port=8001,
                dns_server=("10.96.0.10", 53),
            ),
        ),
        (
            "dns://[::1]:53/triton:8001",
            Target(
                url="dns://[::1]:53/triton:8001", balanced=True, host="triton", port=8001,
                dns_server=("::1", 53),
            ),
        ),
        (
            "dns:///[::1]:8001",
            Target(url="dns:///[::1]:8001", balanced=True, host="::1", port=8001),
        ),
    ],
)
def test_targets_parse(url: str, expected: Target) -> None:
    assert parse_target(url) == expected


@pytest.mark.parametrize(
    "url",
    ["", "dns:///triton", "dns:///triton:0", "dns:///triton:http", "dns:///:8001",
     "dns://kube-dns/triton:8001", "dns://127.0.0.1:5353"],
)
def test_bad_targets_are_refused_with_the_reason(url: str) -> None:
    with pytest.raises(TargetError):
        parse_target(url)
    with pytest.raises(ValueError, match="triton_url"):
        Settings(triton_url=url)


def test_addresses_are_what_grpc_and_tritonclient_take() -> None:
    assert endpoint_address("10.0.0.7", 8001) == "10.0.0.7:8001"
    assert endpoint_address("fd00::7", 8001) == "[fd00::7]:8001"


async def test_a_plain_address_is_one_endpoint_passed_as_it_is() -> None:
    assert await resolve(parse_target("triton:8001")) == ["triton:8001"]


async def test_the_system_resolver_serves_dns_targets_without_authority() -> None:
    # /etc/hosts names localhost on every machine; getaddrinfo reads it.
    addresses = await resolve(parse_target("dns:///localhost:8001"))
    assert "127.0.0.1:8001" in addresses
    assert all(a.endswith(":8001") for a in addresses)


async def test_a_named_dns_server_is_asked_and_its_answer_changes_are_seen(
    dns: DnsServer,
) -> None:
    dns.set("triton.test", ["127.0.0.3", "127.0.0.2", "::1"])
    target = parse_target(f"dns://{dns.authority()}/triton.test:8001")
    assert await resolve(target) == ["127.0.0.2:8001", "127.0.0.3:8001", "[::1]:8001"]
    dns.set("triton.test", ["127.0.0.4"])
    assert await resolve(target) == ["127.0.0.4:8001"]
    dns.set("triton.test", [])
    assert await resolve(target) == []


def test_the_stub_client_reads_answers_and_reports_failures(dns: DnsServer) -> None:
    dns.set("two.test", ["10.1.0.1", "10.1.0.2", "fd00::1"])
    assert dns_client.lookup(dns.address, "two.test") == ["10.1.0.1", "10.1.0.2", "fd00::1"]
    assert dns_client.lookup(dns.address, "two.test.") == ["10.1.0.1", "10.1.0.2", "fd00::1"]
    assert dns_client.lookup(dns.address, "missing.test") == []  # NXDOMAIN
    with pytest.raises(dns_client.DnsError):
        dns_client.lookup(("127.0.0.1", 9), "two.test", timeout_s=0.5)  # nothing listens
    with pytest.raises(dns_client.DnsError, match="not a DNS name"):
        dns_client.lookup(dns.address, "a..b")


def test_a_truncated_udp_answer_is_asked_again_over_tcp() -> None:
    many = [f"10.2.{i // 250}.{i % 250 + 1}" for i in range(60)]  # ~1 KB of A records
    with DnsServer(udp_limit=512) as small:
        small.set("many.test", many)
        assert sorted(dns_client.lookup(small.address, "many.test")) == sorted(many)


def test_compressed_names_and_other_record_types_are_skipped() -> None:
    ident = 0x1234
    query = dns_client.build_query(ident, "svc.test", dns_client.A)
    header = bytes.fromhex("1234 8180 0001 0002 0000 0000".replace(" ", ""))
    question = query[12:]
    cname = bytes.fromhex("c00c 0005 0001 00000000 0006") + b"\x03pod\xc0\x0c"
    a_record = bytes.fromhex("c026 0001 0001 00000000 0004") + bytes([10, 3, 0, 9])
    answer = header + question + cname + a_record
    assert dns_client.parse_answer(answer, ident, dns_client.A) == ["10.3.0.9"]
    with pytest.raises(dns_client.DnsError, match="another query"):
        dns_client.parse_answer(answer, 0x4321, dns_client.A)
    with pytest.raises(dns_client.DnsError, match="cut short"):
        dns_client.parse_answer(answer[:-3], ident, dns_client.A)
    with pytest.raises(dns_client.DnsError, match="malformed"):
        dns_client.parse_answer(answer[:-12], ident, dns_client.A)
