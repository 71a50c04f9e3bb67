"""Backend faults with the real Triton server (nvidia-pytriton's binary, `--target cpu`
repository, explicit model control): Triton hung with SIGSTOP under load, and the model
unloaded through Triton's repository API; and one of two Tritons behind a DNS name hung
under load. Killing and restarting Triton is covered by
tests/integration/test_gateway_triton.py, killing one of several by
tests/integration/test_triton_balancing.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.gateway.settings import Settings
from service.spec import ONNX_MODEL
from tests.reliability.support import png_bytes
from tests.support.dns import DnsServer
from tests.support.gateway import GatewayServer
from tests.support.triton import TritonServer, free_port_on

pytestmark = pytest.mark.slow

TIMEOUT_S = 2.0
# A request may take its timeout plus scheduling slack on a loaded 2-core machine.
LATEST_ANSWER_S = TIMEOUT_S + 1.5


@pytest.fixture(scope="module")
def triton(model_repository: Path) -> Iterator[TritonServer]:
    args = ["--model-control-mode=explicit", f"--load-model={ONNX_MODEL}"]
    with TritonServer(model_repository, extra_args=args) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(model_repository: Path, triton: TritonServer) -> Iterator[GatewayServer]:
    settings = Settings(
        backend="triton", model_repository=model_repository, triton_url=triton.grpc_url,
        request_timeout_s=TIMEOUT_S, triton_health_interval_s=0.25, access_log=False,
    )
    with GatewayServer(settings) as server:
        yield server


@dataclass(frozen=True)
class Seen:
    at: float
    status: int
    code: str
    took: float


async def traffic(url: str, stop: asyncio.Event, started: float) -> list[Seen]:
    data, seen = png_bytes((160, 120)), []
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        while not stop.is_set():
            begin = time.monotonic()
            r = await client.post("/classify", content=data, headers={"Content-Type": "image/png"})
            code = r.json()["error"]["code"] if r.status_code != 200 else ""
            seen.append(Seen(begin - started, r.status_code, code, time.monotonic() - begin))
            if r.status_code != 200:
                await asyncio.sleep(0.05)
    return seen


async def readiness(client: httpx.AsyncClient) -> int:
    return (await client.get("/readyz")).status_code


async def wait_for(client: httpx.AsyncClient, status: int, within_s: float) -> float:
    start = time.monotonic()
    while (response := await client.get("/readyz")).status_code != status:
        assert time.monotonic() - start < within_s, (
            f"/readyz did not turn {status} within {within_s} s: {response.text}"
        )
        await asyncio.sleep(0.1)
    return time.monotonic() - start


def assert_well_behaved(seen: list[Seen]) -> None:
    assert seen and all(s.status in (200, 503, 504) for s in seen), seen
    late = [s for s in seen if s.took > LATEST_ANSWER_S]
    assert not late, late
    codes = {s.code for s in seen if s.status != 200}
    assert codes <= {"backend_unavailable", "timeout"}, codes


def test_triton_hung_by_sigstop_under_load(gateway: GatewayServer, triton: TritonServer) -> None:
    async def scenario() -> tuple[list[Seen], float, float]:
        started, stop = time.monotonic(), asyncio.Event()
        workers = [asyncio.ensure_future(traffic(gateway.url, stop, started)) for _ in range(4)]
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10.0) as probe:
            await asyncio.sleep(1.0)
            triton.pause()
            paused_at = time.monotonic() - started
            try:
                took_down = await wait_for(probe, 503, within_s=5.0)
                await asyncio.sleep(2.0)  # stay hung a while under load
                assert await readiness(probe) == 503
            finally:
                triton.resume()
            resumed_at = time.monotonic() - started
            await wait_for(probe, 200, within_s=15.0)
            await asyncio.sleep(1.0)
        stop.set()
        seen = [s for group in await asyncio.gather(*workers) for s in group]
        print(f"/readyz 503 {took_down:.2f} s after SIGSTOP")
        return seen, paused_at, resumed_at

    seen, paused_at, resumed_at = asyncio.run(scenario())
    assert_well_behaved(seen)
    assert any(s.status == 200 and s.at < paused_at for s in seen)
    assert any(s.status != 200 and paused_at <= s.at <= resumed_at for s in seen)
    assert any(s.status == 200 and s.at > resumed_at for s in seen), "no recovery"
    hung = [s for s in seen if paused_at <= s.at <= resumed_at]
    print(f"{len(seen)} requests; while hung: "
          f"{sorted((s.status, s.code) for s in hung if s.status != 200)[:3]}..., "
          f"max {max(s.took for s in seen):.2f} s")


def test_model_unloaded_through_the_repository_api(
    gateway: GatewayServer, triton: TritonServer
) -> None:
    import tritonclient.http as tritonhttp

    control = tritonhttp.InferenceServerClient(triton.http_url)
    data = png_bytes((160, 120))

    async def scenario() -> list[Seen]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10.0) as client:
            # Ready before it starts. After the SIGSTOP test a loaded machine once needed
            # more than 15 s here (cause not found; that test checks its own recovery).
            waited = await wait_for(client, 200, within_s=60.0)
            print(f"ready {waited:.1f} s after the test started")
            started, stop = time.monotonic(), asyncio.Event()
            workers = [asyncio.ensure_future(traffic(gateway.url, stop, started))
                       for _ in range(2)]
            await asyncio.sleep(0.5)
            await asyncio.to_thread(control.unload_model, ONNX_MODEL)
            await wait_for(client, 503, within_s=5.0)
            refused = await client.post("/classify", content=data,
                                        headers={"Content-Type": "image/png"})
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert refused.json()["error"]["code"] == "backend_unavailable"
            assert refused.elapsed.total_seconds() < 1.0  # fails fast, no timeout wait
            await asyncio.to_thread(control.load_model, ONNX_MODEL)
            await wait_for(client, 200, within_s=30.0)
            again = await client.post("/classify", content=data,
                                      headers={"Content-Type": "image/png"})
            assert again.status_code == 200, again.text
            stop.set()
            return [s for group in await asyncio.gather(*workers) for s in group]

    seen = asyncio.run(scenario())
    control.close()
    assert_well_behaved(seen)
    assert {s.status for s in seen} >= {200, 503}


def test_one_of_two_tritons_hung_under_load(model_repository: Path) -> None:
    """A hung pod (no answer, no connection reset: a frozen node) costs only the calls
    it holds when it stops and those sent to it before a probe gives up on it (1 s); the
    other serves everything after, and the gateway stays ready throughout."""
    hosts = ["127.0.0.6", "127.0.0.7"]
    ports = (free_port_on(hosts), free_port_on(hosts), free_port_on(hosts))
    args = ["--model-control-mode=explicit", f"--load-model={ONNX_MODEL}"]
    probe_timeout_s, interval_s = 1.0, 0.25  # the backend probes with max(1 s, 2 intervals)
    with DnsServer() as dns, TritonServer(
        model_repository, host=hosts[0], ports=ports, extra_args=args
    ) as hung, TritonServer(model_repository, host=hosts[1], ports=ports, extra_args=args):
        dns.set("pair.test", hosts)
        settings = Settings(
            backend="triton", model_repository=model_repository,
            triton_url=f"dns://{dns.authority()}/pair.test:{ports[1]}",
            request_timeout_s=TIMEOUT_S, triton_health_interval_s=interval_s, access_log=False,
        )
        with GatewayServer(settings) as gateway:

            async def scenario() -> tuple[list[Seen], list[int], float, float]:
                started, stop = time.monotonic(), asyncio.Event()
                workers = [asyncio.ensure_future(traffic(gateway.url, stop, started))
                           for _ in range(4)]
                ready_codes: list[int] = []
                async with httpx.AsyncClient(base_url=gateway.url, timeout=10.0) as probe:
                    await asyncio.sleep(1.0)
                    hung.pause()
                    paused_at = time.monotonic() - started
                    try:
                        until = time.monotonic() + 6.0  # three request timeouts
                        while time.monotonic() < until:
                            ready_codes.append(await readiness(probe))
                            await asyncio.sleep(0.1)
                    finally:
                        hung.resume()
                    resumed_at = time.monotonic() - started
                    await asyncio.sleep(1.0)
                stop.set()
                seen = [s for group in await asyncio.gather(*workers) for s in group]
                return seen, ready_codes, paused_at, resumed_at

            seen, ready_codes, paused_at, resumed_at = asyncio.run(scenario())
    failed = [s for s in seen if s.status != 200]
    print(f"{len(seen)} requests, {len(failed)} failed: "
          f"{sorted((round(s.at - paused_at, 2), s.status, s.code) for s in failed)}")
    assert set(ready_codes) == {200}, ready_codes
    assert_well_behaved(seen)
    assert {s.status for s in failed} <= {504}, failed
    # Only calls that reached the hung server before a probe dropped it from rotation.
    given_up_at = paused_at + probe_timeout_s + interval_s + 1.0  # + scheduling slack
    assert all(s.at <= given_up_at for s in failed), failed
    served_while_hung = [s for s in seen if s.status == 200 and given_up_at < s.at < resumed_at]
    assert len(served_while_hung) >= 10, "the other server did not take the load"
