"""The Triton backend's balancing, retry and re-resolution, with scripted endpoints in
place of Triton servers (the real servers: tests/integration/test_triton_balancing.py)
and a real DNS server on loopback answering for the target."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest

from service.errors import BackendUnavailable, ContractError, RequestTimeout
from service.gateway.backends.base import ModelId
from service.gateway.backends.triton import TritonBackend
from service.gateway.backends.triton_contract import Failure
from service.gateway.backends.triton_endpoint import CallFailed
from service.gateway.backends.triton_pool import EndpointPool
from service.spec import ModelSpec
from tests.support.dns import DnsServer

SPEC = ModelSpec(name="m", num_classes=4)
NAME = "triton.test"
BATCH = np.zeros((2, 224, 224, 3), np.uint8)


class Scripted:
    """An endpoint whose health and answers the test sets: `up`, `fail` (a `Failure` each
    call raises), `delay_s`, `version`; records the calls it got."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.up = True
        self.ready = False
        self.state = "not probed yet"
        self.version = "1"
        self.contract_error: str | None = None
        self.inflight = 0
        self.fail: Failure | None = None
        self.delay_s = 0.0
        self.calls = 0
        self.closed = False

    async def probe(self, timeout_s: float) -> None:
        self.ready = self.up and self.contract_error is None
        self.state = "ready" if self.ready else "down"

    def mark_down(self, reason: str) -> None:
        self.ready, self.state = False, reason

    async def infer(
        self, batch: np.ndarray, *, class_count: int, timeout_s: float
    ) -> tuple[Any, ModelId]:
        self.calls += 1
        self.inflight += 1
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail is not None:
                if self.fail.drops_endpoint:
                    self.mark_down(self.fail.value)
                raise CallFailed(self.fail, f"{self.address}: {self.fail.value}")
        finally:
            self.inflight -= 1
        return self, ModelId("m", self.version)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> dict[str, Scripted]:
    """Every endpoint the backend makes, by address, scripted."""
    endpoints: dict[str, Scripted] = {}

    def make(backend: TritonBackend, address: str) -> Scripted:
        endpoints[address] = Scripted(address)
        return endpoints[address]

    monkeypatch.setattr(TritonBackend, "_new_endpoint", make)
    return endpoints


def ips(*last: int) -> list[str]:
    return [f"10.9.0.{n}" for n in last]


async def started(dns: DnsServer, addresses: list[str], **options: Any) -> TritonBackend:
    dns.set(NAME, addresses)
    options = {"health_interval_s": 0.05, "resolve_interval_s": 0.1, "timeout_s": 2.0} | options
    backend = TritonBackend(SPEC, url=f"dns://{dns.authority()}/{NAME}:8001", model="m", **options)
    await backend.start()
    return backend


@pytest.fixture
async def three(dns: DnsServer, made: dict[str, Scripted]) -> AsyncIterator[TritonBackend]:
    backend = await started(dns, ips(1, 2, 3))
    yield backend
    await backend.close()


async def call(backend: TritonBackend) -> Scripted:
    result, _ = await backend._call(BATCH, class_count=1)
    assert isinstance(result, Scripted)
    return result


async def test_every_resolved_address_takes_an_even_share_of_calls(
    three: TritonBackend, made: dict[str, Scripted]
) -> None:
    assert three.ready() and sorted(made) == [f"{ip}:8001" for ip in ips(1, 2, 3)]
    assert three.status() == "ready: 3 of 3 triton endpoints"
    answered = Counter([(await call(three)).address for _ in range(300)])
    assert sorted(answered.values()) == [100, 100, 100]
    # Concurrent calls too: least in flight first, so 30 at once spread 10 / 10 / 10.
    answered = Counter(e.address for e in await asyncio.gather(*(call(three) for _ in range(30))))
    assert sorted(answered.values()) == [10, 10, 10]


async def test_a_slow_endpoint_gets_fewer_new_calls(
    three: TritonBackend, made: dict[str, Scripted]
) -> None:
    slow = made["10.9.0.1:8001"]
    slow.delay_s = 0.2
    for endpoint in made.values():
        endpoint.delay_s = endpoint.delay_s or 0.01

    async def worker() -> None:
        for _ in range(10):
            await call(three)

    await asyncio.gather(*(worker() for _ in range(6)))
    assert slow.calls < min(e.calls for e in made.values() if e is not slow) / 2


@pytest.mark.parametrize(
    "failure", [Failure.GONE, Failure.MODEL_MISSING, Failure.REJECTED, Failure.FAILED]
)
async def test_a_failed_call_is_retried_once_on_another_endpoint(
    three: TritonBackend, made: dict[str, Scripted], failure: Failure
) -> None:
    bad = made["10.9.0.1:8001"]
    bad.fail = failure
    answers = [await call(three) for _ in range(6)]
    assert bad not in answers and three.retries >= 1
    # Gone endpoints leave rotation at once; alive ones that refused stay in it.
    assert bad.ready is not failure.drops_endpoint
    assert three.ready()


@pytest.mark.parametrize(
    ("failure", "raised"),
    [(Failure.TIMEOUT, RequestTimeout), (Failure.REFUSED, BackendUnavailable)],
)
async def test_timeouts_and_refused_requests_are_not_retried(
    three: TritonBackend, made: dict[str, Scripted], failure: Failure, raised: type[Exception]
) -> None:
    for endpoint in made.values():
        endpoint.fail = failure
    with pytest.raises(raised):
        await call(three)
    assert sum(e.calls for e in made.values()) == 1 and three.retries == 0


async def test_a_batch_tries_two_endpoints_at_most(
    three: TritonBackend, made: dict[str, Scripted]
) -> None:
    for endpoint in made.values():
        endpoint.fail = Failure.FAILED
    with pytest.raises(BackendUnavailable, match="failed"):
        await call(three)
    assert sum(e.calls for e in made.values()) == 2


async def test_ready_while_one_endpoint_is_and_failing_fast_when_none_is(
    three: TritonBackend, made: dict[str, Scripted]
) -> None:
    for endpoint in list(made.values())[:2]:
        endpoint.up = False
    await asyncio.sleep(0.2)
    assert three.ready() and "1 of 3" in three.status()
    assert {(await call(three)).address for _ in range(5)} == {"10.9.0.3:8001"}
    made["10.9.0.3:8001"].fail = Failure.GONE
    with pytest.raises(BackendUnavailable):
        await call(three)
    assert not three.ready() and three.status().startswith("no triton endpoint ready")
    with pytest.raises(BackendUnavailable, match="not ready"):
        await call(three)  # at once, no endpoint tried
    made["10.9.0.3:8001"].fail = None
    await asyncio.sleep(0.2)  # the next probe brings it back
    assert three.ready()


async def test_new_addresses_join_and_gone_ones_leave_after_their_calls(
    dns: DnsServer, three: TritonBackend, made: dict[str, Scripted]
) -> None:
    leaving = made["10.9.0.1:8001"]
    leaving.delay_s = 0.5
    in_flight = asyncio.gather(*(call(three) for _ in range(3)))
    await asyncio.sleep(0.05)
    assert leaving.inflight == 1
    dns.set(NAME, ips(2, 3, 4))
    await asyncio.sleep(0.4)  # a few resolution intervals
    assert [e.address for e in three.endpoints] == [f"{ip}:8001" for ip in ips(2, 3, 4)]
    assert made["10.9.0.4:8001"].ready
    assert not leaving.closed, "closed under a call in flight"
    await in_flight  # the call on the removed address still answers
    await asyncio.sleep(0.2)
    assert leaving.closed
    answered = Counter([(await call(three)).address for _ in range(30)])
    assert set(answered) == {f"{ip}:8001" for ip in ips(2, 3, 4)}


async def test_a_failed_resolution_keeps_the_endpoints_there_are(
    dns: DnsServer, three: TritonBackend
) -> None:
    dns.set(NAME, [])
    await asyncio.sleep(0.3)
    assert len(three.endpoints) == 3 and three.ready()
    assert "resolves to no address" in (three._resolve_error or "")


async def test_the_model_reported_is_the_one_that_answered(
    three: TritonBackend, made: dict[str, Scripted]
) -> None:
    assert three.model_id() == ModelId("m", "1")
    for endpoint in made.values():
        endpoint.version = "2"
    await call(three)
    assert three.model_id() == ModelId("m", "2")


async def test_start_refuses_when_the_only_servers_mismatch(
    dns: DnsServer, made: dict[str, Scripted], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def mismatching(self: Scripted, timeout_s: float) -> None:
        self.contract_error = "output PROBS has shape [-1, 10]"
        self.ready = False

    monkeypatch.setattr(Scripted, "probe", mismatching)
    with pytest.raises(ContractError, match="PROBS"):
        await started(dns, ips(1, 2))


async def test_an_unresolvable_name_starts_not_ready(
    dns: DnsServer, made: dict[str, Scripted]
) -> None:
    backend = TritonBackend(
        SPEC, url=f"dns://{dns.authority()}/nowhere.test:8001", model="m", health_interval_s=0.05
    )
    await backend.start()
    try:
        assert not backend.ready() and "resolves to no address" in backend.status()
        with pytest.raises(BackendUnavailable):
            await call(backend)
    finally:
        await backend.close()


def test_the_pool_picks_least_busy_then_round_robin() -> None:
    pool = EndpointPool(Scripted)  # type: ignore[arg-type]
    added, gone = pool.update(["b:1", "a:1", "c:1"])
    assert [e.address for e in added] == ["a:1", "b:1", "c:1"] and not gone
    for endpoint in pool.endpoints:
        endpoint.ready = True
    picks = [pool.pick() for _ in range(6)]
    assert [e.address for e in picks if e] == ["a:1", "b:1", "c:1"] * 2
    a, b, c = pool.endpoints
    a.inflight, b.inflight = 2, 1
    assert pool.pick() is c
    assert pool.pick(exclude=[c]) is b
    c.ready = False
    assert pool.pick(exclude=[b]) is a
    assert pool.pick(exclude=[a, b]) is None
