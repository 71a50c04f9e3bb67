"""One gateway in front of several real Triton servers behind one DNS name.

Four tritonservers (nvidia-pytriton's binary, the `--target cpu` repository) listen on
127.0.0.2-127.0.0.5 with the same ports, as pods behind a headless Service do; a real DNS
server on loopback (dnslib) answers for `triton.test` and the test changes its answers.
The gateway runs as its own process with `CA_TRITON_URL=dns://127.0.0.1:PORT/triton.test:P`
(the DNS server named in the target, as gRPC's c-ares resolver also accepts) and a 1 s
re-resolution interval. Under closed-loop load:
- three servers in DNS each execute 20-47% of the gateway's calls (each server's own
  `nv_inference_request_success`);
- a fourth added to DNS executes calls within 30 s;
- one killed mid-load costs no 5xx beyond the requests in flight when it died (and with
  the retry on another server, none), and `/readyz` answers 200 throughout;
- a gateway on Triton's HTTP protocol balances over the same servers.

The servers serve the model as version 3 (the fourth as version 4, a rollout), while the
gateway's own copy of the repository has only version 1 and pins none: every answer must
name the version that Triton says computed it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from service.gateway.settings import Settings
from service.spec import ONNX_MODEL
from tests.support.dns import DnsServer
from tests.support.gateway import GatewayServer
from tests.support.triton import TritonServer, free_port_on

pytestmark = pytest.mark.slow

NAME = "triton.test"
HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
FIRST_THREE = HOSTS[:3]
CONCURRENCY = 4
RESOLVE_INTERVAL_S = 1.0
SUCCESS = re.compile(r'^nv_inference_request_success\{[^}]*model="([^"]+)"[^}]*\}\s+([0-9.e+]+)$')


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.set(NAME, FIRST_THREE)
        yield server


def as_version(
    model_repository: Path, version: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of the repository whose model has only version `version`."""
    root = tmp_path_factory.mktemp(f"repository-v{version}")
    shutil.copytree(model_repository, root, dirs_exist_ok=True)
    (root / ONNX_MODEL / "1").rename(root / ONNX_MODEL / version)
    return root


@pytest.fixture(scope="module")
def tritons(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TritonServer]]:
    ports = (free_port_on(HOSTS), free_port_on(HOSTS), free_port_on(HOSTS))
    repositories = {
        version: as_version(model_repository, version, tmp_path_factory) for version in "34"
    }
    servers = {
        host: TritonServer(repositories["4" if host == HOSTS[3] else "3"], host=host, ports=ports)
        for host in HOSTS
    }
    try:
        with ThreadPoolExecutor(len(servers)) as pool:  # ~4x faster than one by one
            list(pool.map(TritonServer.start, servers.values()))
        yield servers
    finally:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(TritonServer.close, servers.values()))


@pytest.fixture(scope="module")
def gateway(
    model_repository: Path, dns: DnsServer, tritons: dict[str, TritonServer]
) -> Iterator[GatewayServer]:
    port = tritons[HOSTS[0]].grpc_port
    settings = Settings(
        backend="triton",
        model_repository=model_repository,
        triton_url=f"dns://{dns.authority()}/{NAME}:{port}",
        model_version="",  # unpinned: whatever Triton serves
        triton_resolve_interval_s=RESOLVE_INTERVAL_S,
        triton_health_interval_s=0.25,
        request_timeout_s=10.0,
        max_batch_size=4,
        access_log=False,
    )
    with GatewayServer(settings) as server:
        yield server


@dataclass
class Load:
    """Closed-loop clients posting one photo each, and `/readyz` polled beside them."""

    url: str
    image: bytes
    statuses: Counter[int] = field(default_factory=Counter)
    #: (name, version) of the model each answer names.
    models: Counter[tuple[str, str]] = field(default_factory=Counter)
    readiness: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30.0) as http:
            while not self.stop.is_set():
                self.in_flight += 1
                try:
                    response = await http.post(
                        "/classify", content=self.image, headers={"Content-Type": "image/jpeg"}
                    )
                finally:
                    self.in_flight -= 1
                self.statuses[response.status_code] += 1
                if response.status_code == 200:
                    model = response.json()["model"]
                    self.models[(model["name"], model["version"])] += 1

    async def ready_probe(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as http:
            while not self.stop.is_set():
                self.readiness[(await http.get("/readyz")).status_code] += 1
                await asyncio.sleep(0.1)

    def start(self) -> list[asyncio.Future[None]]:
        return [
            *(asyncio.ensure_future(self.client()) for _ in range(CONCURRENCY)),
            asyncio.ensure_future(self.ready_probe()),
        ]

    async def finish(self, tasks: list[asyncio.Future[None]]) -> None:
        self.stop.set()
        await asyncio.gather(*tasks)


async def executed(http: httpx.AsyncClient, triton: TritonServer) -> float:
    """Successful inference requests `triton` counts for the served model so far."""
    text = (await http.get(triton.metrics_url)).text
    return sum(
        float(match.group(2))
        for line in text.splitlines()
        if (match := SUCCESS.match(line))
    )


async def executed_by(
    http: httpx.AsyncClient, tritons: dict[str, TritonServer], hosts: list[str]
) -> dict[str, float]:
    counts = await asyncio.gather(*(executed(http, tritons[host]) for host in hosts))
    return dict(zip(hosts, counts, strict=True))


def photo(photos: list[Path]) -> bytes:
    return next(p for p in photos if p.suffix == ".jpg").read_bytes()


def test_three_servers_share_the_calls(
    gateway: GatewayServer, tritons: dict[str, TritonServer], photos: list[Path]
) -> None:
    async def scenario() -> tuple[dict[str, float], Load]:
        load = Load(gateway.url, photo(photos))
        async with httpx.AsyncClient(timeout=5.0) as http:
            before = await executed_by(http, tritons, HOSTS)
            tasks = load.start()
            await asyncio.sleep(6.0)
            await load.finish(tasks)
            after = await executed_by(http, tritons, HOSTS)
        return {host: after[host] - before[host] for host in HOSTS}, load

    calls, load = asyncio.run(scenario())
    total = sum(calls.values())
    shares = {host: calls[host] / total for host in FIRST_THREE}
    print(f"{load.statuses[200]} requests answered; calls per server {calls}; shares {shares}")
    assert set(load.statuses) == {200}, load.statuses
    assert set(load.models) == {(ONNX_MODEL, "3")}, load.models
    assert total >= 30, f"too few calls to judge a spread: {calls}"
    assert calls[HOSTS[3]] == 0, "a server not in DNS got calls"
    for host, share in shares.items():
        assert 0.20 <= share <= 0.47, f"{host} executed {share:.0%} of the calls: {calls}"
    assert set(load.readiness) == {200}
    served = {"name": ONNX_MODEL, "version": "3"}
    with httpx.Client(base_url=gateway.url, timeout=5.0) as http:
        assert http.get("/readyz").json()["model"] == served
        described = http.get("/v1/model").json()
        assert {"name": described["name"], "version": described["version"]} == served
        info = f'ca_gateway_model_info{{backend="triton",model="{ONNX_MODEL}",version="3"}} 1.0'
        assert info in http.get("/metrics").text.splitlines()


def test_a_server_added_to_dns_gets_calls_within_30_s(
    gateway: GatewayServer, dns: DnsServer, tritons: dict[str, TritonServer], photos: list[Path]
) -> None:
    fourth = tritons[HOSTS[3]]

    async def scenario() -> tuple[float, Load]:
        load = Load(gateway.url, photo(photos))
        async with httpx.AsyncClient(timeout=5.0) as http:
            tasks = load.start()
            await asyncio.sleep(1.0)
            before = await executed(http, fourth)
            dns.set(NAME, HOSTS)
            added_at = time.monotonic()
            try:
                while await executed(http, fourth) == before:
                    assert time.monotonic() - added_at < 30.0, "the added server got no call"
                    await asyncio.sleep(0.2)
                took = time.monotonic() - added_at
                await asyncio.sleep(2.0)  # and it keeps getting its share
            finally:
                await load.finish(tasks)
        return took, load

    took, load = asyncio.run(scenario())
    print(f"the added server executed its first call {took:.1f} s after the DNS change; "
          f"answers by model {dict(load.models)}")
    assert set(load.statuses) == {200}, load.statuses
    assert set(load.readiness) == {200}
    # Mid-rollout, each answer names the version that computed it.
    assert set(load.models) == {(ONNX_MODEL, "3"), (ONNX_MODEL, "4")}, load.models


def test_the_http_protocol_balances_too(
    model_repository: Path, dns: DnsServer, tritons: dict[str, TritonServer], photos: list[Path]
) -> None:
    dns.set(NAME, HOSTS)
    port = tritons[HOSTS[0]].http_port
    settings = Settings(
        backend="triton",
        triton_protocol="http",
        model_repository=model_repository,
        triton_url=f"dns://{dns.authority()}/{NAME}:{port}",
        model_version="",
        triton_health_interval_s=0.25,
        max_batch_size=4,
        access_log=False,
    )

    async def scenario(url: str) -> tuple[dict[str, float], Load]:
        load = Load(url, photo(photos))
        async with httpx.AsyncClient(timeout=5.0) as http:
            before = await executed_by(http, tritons, HOSTS)
            tasks = load.start()
            await asyncio.sleep(4.0)
            await load.finish(tasks)
            after = await executed_by(http, tritons, HOSTS)
        return {host: after[host] - before[host] for host in HOSTS}, load

    with GatewayServer(settings) as gateway:
        calls, load = asyncio.run(scenario(gateway.url))
    print(f"HTTP: calls per server {calls}; answers by model {dict(load.models)}")
    assert set(load.statuses) == {200}, load.statuses
    assert all(count > 0 for count in calls.values()), calls
    assert set(load.models) == {(ONNX_MODEL, "3"), (ONNX_MODEL, "4")}, load.models


def test_a_server_killed_mid_load_costs_at_most_its_calls_in_flight(
    gateway: GatewayServer, dns: DnsServer, tritons: dict[str, TritonServer], photos: list[Path]
) -> None:
    dns.set(NAME, HOSTS)
    victim = tritons[HOSTS[1]]
    survivors = [host for host in HOSTS if host != HOSTS[1]]

    async def scenario() -> tuple[int, Load, dict[str, float]]:
        load = Load(gateway.url, photo(photos))
        async with httpx.AsyncClient(timeout=5.0) as http:
            tasks = load.start()
            await asyncio.sleep(2.0)
            before = await executed_by(http, tritons, survivors)
            in_flight = load.in_flight  # an upper bound on the calls on the victim
            victim.kill()  # SIGKILL to tritonserver and its backend stub, mid-call
            await asyncio.sleep(5.0)
            await load.finish(tasks)
            after = await executed_by(http, tritons, survivors)
        return in_flight, load, {host: after[host] - before[host] for host in survivors}

    in_flight, load, calls = asyncio.run(scenario())
    failed = sum(count for status, count in load.statuses.items() if status >= 500)
    retries = [line for line in gateway.log_text().splitlines() if "retrying a batch" in line]
    print(f"{sum(load.statuses.values())} requests: {dict(load.statuses)}; "
          f"{in_flight} in flight at the kill; survivors' calls {calls}; retry log: {retries}")
    assert failed <= in_flight, load.statuses
    assert failed == 0, f"a failed call was not retried on another server: {load.statuses}"
    assert set(load.readiness) == {200}, load.readiness
    assert all(count > 0 for count in calls.values()), calls
