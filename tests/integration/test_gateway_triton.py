"""The gateway in front of the real Triton server (nvidia-pytriton's bundled binary)
serving the `--target cpu` repository: same answers as the served model, batching, and
recovery when Triton dies mid-traffic and comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from service.errors import ContractError
from service.gateway.backends.triton import TritonBackend
from service.gateway.settings import Settings
from service.spec import ONNX_MODEL, ModelSpec
from tests.integration.test_gateway_embedded import (
    Reference,
    answer,
    assert_batches_formed,
    assert_photos_answered_as_the_reference,
    assert_same_ranking,
    classify_all,
    content_type,
    distinct_images,
)
from tests.support.gateway import GatewayServer
from tests.support.triton import TritonServer


@pytest.fixture(scope="module")
def triton(model_repository: Path) -> Iterator[TritonServer]:
    with TritonServer(model_repository) as server:
        yield server


@pytest.fixture(scope="module")
def reference(model_repository: Path) -> Reference:
    return Reference(model_repository)


def triton_settings(repository: Path, triton: TritonServer, protocol: str = "grpc") -> Settings:
    # 64 requests at once on a loaded two-core machine can wait past the default queue-wait
    # budget and be refused (seen once in a full run); admission is not what these test.
    return Settings(
        backend="triton",
        model_repository=repository,
        triton_protocol=protocol,  # type: ignore[arg-type]
        triton_url=triton.grpc_url if protocol == "grpc" else triton.http_url,
        max_batch_delay_ms=20.0,
        triton_health_interval_s=0.25,
        request_timeout_s=10.0,
        max_queue_wait_s=30.0,
    )


@pytest.fixture(scope="module")
def gateway(model_repository: Path, triton: TritonServer) -> Iterator[GatewayServer]:
    with GatewayServer(triton_settings(model_repository, triton)) as server:
        yield server


@pytest.fixture(scope="module")
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60.0) as client:
        yield client


def test_top5_through_triton_equals_the_served_model(
    http: httpx.Client, photos: list[Path], reference: Reference
) -> None:
    assert_photos_answered_as_the_reference(http, photos, reference)
    assert http.get("/readyz").json() == {
        "status": "ready",
        "backend": "triton",
        "model": {"name": ONNX_MODEL, "version": "1"},
        "detail": "ready: 1 of 1 triton endpoints",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_classes": 10}, "PROBS has shape"),  # the spec the gateway holds is another model's
        ({"input_size": 192, "resize_shorter": 256}, "IMAGE has shape"),
        ({"max_batch_size": 1024}, "accepts batches of at most"),  # the spec promises more
    ],
)
async def test_a_triton_model_that_breaks_the_spec_is_refused_at_start(
    triton: TritonServer, model_repository: Path, change: dict[str, int], message: str
) -> None:
    spec = replace(ModelSpec.load(model_repository / ONNX_MODEL), **change)
    backend = TritonBackend(
        spec, url=triton.grpc_url, model=ONNX_MODEL, max_batch_size=spec.max_batch_size
    )
    with pytest.raises(ContractError, match=message):
        await backend.start()


def test_http_protocol_and_full_probabilities(
    model_repository: Path, triton: TritonServer, photos: list[Path], reference: Reference
) -> None:
    settings = triton_settings(model_repository, triton, "http").model_copy(
        update={"triton_use_classification": False}
    )
    with GatewayServer(settings) as server, httpx.Client(base_url=server.url) as client:
        data = photos[0].read_bytes()
        response = client.post(
            "/classify", content=data, headers={"Content-Type": content_type(photos[0])}
        )
        assert response.status_code == 200, response.text
        assert_same_ranking(answer(response.json()["results"][0]), reference.top(data))


def test_64_concurrent_requests_through_triton(
    gateway: GatewayServer, http: httpx.Client, photos: list[Path]
) -> None:
    images = distinct_images(photos, 64)
    sequential = [
        answer(
            http.post("/classify", content=d, headers={"Content-Type": "image/png"}).json()[
                "results"
            ][0]
        )
        for d in images
    ]
    concurrent = asyncio.run(classify_all(gateway.url, images))
    for got, want in zip(concurrent, sequential, strict=True):
        assert_same_ranking(got, want, tol=1e-5)
    assert_batches_formed(http)


def test_triton_dies_mid_traffic_then_recovers(
    gateway: GatewayServer, http: httpx.Client, triton: TritonServer, photos: list[Path]
) -> None:
    data, ctype = photos[0].read_bytes(), content_type(photos[0])
    before = http.post("/classify", content=data, headers={"Content-Type": ctype})
    assert before.status_code == 200

    async def traffic(stop: asyncio.Event, answered: asyncio.Event) -> list[tuple[int, str, float]]:
        seen: list[tuple[int, str, float]] = []
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30.0) as client:
            while not stop.is_set():
                start = time.monotonic()
                r = await client.post("/classify", content=data, headers={"Content-Type": ctype})
                code = r.json()["error"]["code"] if r.status_code != 200 else ""
                seen.append((r.status_code, code, time.monotonic() - start))
                if r.status_code == 200:
                    answered.set()
        return seen

    async def scenario() -> list[tuple[int, str, float]]:
        stop, answered = asyncio.Event(), asyncio.Event()
        workers = [asyncio.ensure_future(traffic(stop, answered)) for _ in range(4)]
        # Kill Triton once traffic is flowing, not after a fixed pause: on a slow machine
        # four requests through Triton took longer than 0.5 s and none had been answered.
        await asyncio.wait_for(answered.wait(), timeout=30)
        await asyncio.to_thread(triton.kill)
        await asyncio.sleep(1.5)
        stop.set()
        return [item for batch in await asyncio.gather(*workers) for item in batch]

    seen = asyncio.run(scenario())
    assert any(status == 200 for status, _, _ in seen)
    failures = [(status, code, took) for status, code, took in seen if status != 200]
    assert failures, "no request saw Triton down"
    assert {status for status, _, _ in failures} == {503}, failures
    assert {code for _, code, _ in failures} == {"backend_unavailable"}
    assert max(took for _, _, took in failures) < 2.0  # fail fast, never hang to the timeout
    down = http.get("/readyz")
    assert down.status_code == 503 and down.json()["status"] == "not_ready"
    refused = http.post("/classify", content=data, headers={"Content-Type": ctype})
    assert refused.status_code == 503 and refused.headers["retry-after"]

    triton.start()  # same ports; the gateway is not restarted
    deadline = time.monotonic() + 30
    while http.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "gateway did not see Triton come back"
        time.sleep(0.1)
    after = http.post("/classify", content=data, headers={"Content-Type": ctype})
    assert after.status_code == 200
    assert after.json()["results"] == before.json()["results"]
