"""The backend's failures over real HTTP, with a fake backend the test steers: a full
queue sheds with 503 + Retry-After, a slow backend gives 504 within the timeout, a down or
failing one 503 at once (counted by reason), and a client that hangs up loses its own
image only, never its batch mates'."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.errors import BackendUnavailable
from service.gateway.app import create_app
from service.gateway.settings import Settings
from tests.gateway.conftest import FakeBackend
from tests.integration.test_gateway_errors import PNG, assert_error, png
from tests.support.gateway import TINY_MODEL, GatewayServer, write_tiny_repository


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture(scope="module")
def fake_server(repository: Path, fake: FakeBackend) -> Iterator[GatewayServer]:
    settings = Settings(
        model_repository=repository,
        model_name=TINY_MODEL,
        max_queue=2,
        max_batch_size=1,
        max_batch_delay_ms=0,
        max_concurrent_batches=1,
        request_timeout_s=1.0,
        retry_after_s=3,
    )
    with GatewayServer(settings, app=create_app(settings, backend=fake)) as gateway:
        yield gateway


@pytest.fixture
def fake_http(fake_server: GatewayServer, fake: FakeBackend) -> Iterator[httpx.Client]:
    fake.delay_s, fake.up, fake.fail = 0.0, True, None
    with httpx.Client(base_url=fake_server.url, timeout=10.0) as client:
        yield client
    fake.delay_s, fake.up, fake.fail = 0.0, True, None


def fake_ok(client: httpx.Client) -> None:
    response = client.post("/classify", content=png(), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text


def test_503_queue_full_with_retry_after(fake_server: GatewayServer, fake: FakeBackend) -> None:
    fake.delay_s = 0.3

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=fake_server.url, timeout=10.0) as client:
            return await asyncio.gather(
                *(
                    client.post("/classify", content=png(), headers={"Content-Type": "image/png"})
                    for _ in range(8)
                )
            )

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses, statuses
    shed = next(r for r in responses if r.status_code == 503)
    assert_error(shed, 503, "overloaded")
    assert shed.headers["retry-after"] == "3"
    fake.delay_s = 0.0
    with httpx.Client(base_url=fake_server.url) as client:
        fake_ok(client)


def test_504_timeout(fake_http: httpx.Client, fake: FakeBackend) -> None:
    fake.delay_s = 1.5
    start = time.monotonic()
    response = fake_http.post("/classify", content=png(), headers={"Content-Type": "image/png"})
    assert_error(response, 504, "timeout")
    assert time.monotonic() - start < 1.4
    fake.delay_s = 0.0
    time.sleep(0.6)  # let the abandoned batch finish
    fake_ok(fake_http)


def test_503_backend_down_fails_fast(fake_http: httpx.Client, fake: FakeBackend) -> None:
    fake.up = False
    start = time.monotonic()
    response = fake_http.post("/classify", content=png(), headers={"Content-Type": "image/png"})
    assert_error(response, 503, "backend_unavailable")
    assert response.headers["retry-after"] == "3"
    assert time.monotonic() - start < 0.5
    assert fake_http.get("/readyz").status_code == 503
    fake.up = True
    fake_ok(fake_http)


def test_503_backend_failure_mid_batch(fake_http: httpx.Client, fake: FakeBackend) -> None:
    fake.fail = BackendUnavailable("connection reset")
    response = fake_http.post("/classify", content=png(), headers={"Content-Type": "image/png"})
    assert_error(response, 503, "backend_unavailable")
    fake.fail = RuntimeError("unexpected bug in a backend")
    response = fake_http.post("/classify", content=png(), headers={"Content-Type": "image/png"})
    assert_error(response, 503, "backend_unavailable")
    metrics = fake_http.get("/metrics").text
    assert 'ca_gateway_backend_errors_total{backend="embedded",reason="unavailable"} 1.0' in metrics
    assert 'ca_gateway_backend_errors_total{backend="embedded",reason="error"} 1.0' in metrics
    fake.fail = None
    fake_ok(fake_http)


class HeldBackend(FakeBackend):
    """The fake backend, recording each image it is given (by its red value) and holding
    every batch until `released` is set (the gateway's loop runs in another thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.released.set()
        self.seen: list[list[int]] = []

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        self.seen.append([int(image[..., 0].mean()) for image in batch])
        await asyncio.to_thread(self.released.wait, 30.0)
        return await super().infer(batch)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_client_disconnect_drops_its_image_not_its_batch_mates(repository: Path) -> None:
    """A plug request holds the backend; A (red 3) and B (red 7) queue behind it for the
    same next batch. B hangs up. Once the plug is released the next batch holds A alone:
    the backend never sees B's image, and A gets its own answer."""
    backend = HeldBackend()
    settings = Settings(
        model_repository=repository,
        model_name=TINY_MODEL,
        max_batch_size=4,
        max_batch_delay_ms=0,
        max_concurrent_batches=1,  # one batch at a time: A and B queue behind the plug
        request_timeout_s=20.0,
    )
    with GatewayServer(settings, app=create_app(settings, backend=backend)) as server, \
            httpx.Client(base_url=server.url, timeout=30.0) as http, \
            ThreadPoolExecutor(2) as pool:
        backend.released.clear()
        plug = pool.submit(http.post, "/classify", content=png(color=(1, 0, 0)), headers=PNG)
        wait_for(lambda: backend.seen == [[1]], "the plug to reach the backend")
        kept = pool.submit(
            http.post, "/classify?top_k=1", content=png(color=(3, 0, 0)), headers=PNG
        )
        body = png(color=(7, 0, 0))
        request = (
            f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        leaving = socket.create_connection(("127.0.0.1", server.port))
        leaving.sendall(request)
        wait_for(lambda: metric(http, "ca_gateway_queue_depth") == 2, "A and B to queue")
        leaving.close()
        # Noticing a hang-up is event-driven but not instant on a busy machine: wait until
        # the gateway has answered B with 499 before letting the batch run.
        wait_for(lambda: count_closed_requests(http) == 1, "the gateway to notice B left")
        backend.released.set()
        assert plug.result().status_code == 200
        answer = kept.result()
        assert answer.status_code == 200, answer.text
        assert [p["index"] for p in answer.json()["results"][0]["predictions"]] == [3]
    assert backend.seen == [[1], [3]]  # B's image was dropped before its batch ran


def count_closed_requests(client: httpx.Client) -> float:
    """How many /classify requests the gateway has answered with 499 (client went away)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('ca_gateway_requests_total{route="/classify",status="499"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
