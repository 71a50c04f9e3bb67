"""Admission's queue-wait budget (`CA_MAX_QUEUE_WAIT_S`), in process with a fake backend
held shut, so the queue stays as the test built it and the wait estimate is set, not
timed: over the budget a new request is refused at once with 503 `overloaded` and
`Retry-After`; within it, it is admitted; with nothing queued it is always admitted."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydantic import ValidationError

from service.gateway import runtime as runtime_mod
from service.gateway.app import create_app
from service.gateway.runtime import Runtime
from service.gateway.settings import Settings
from tests.gateway.conftest import FakeBackend, open_client

BUDGET_S = 0.5
JPEG = {"Content-Type": "image/jpeg"}


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


class HeldBackend(FakeBackend):
    """Answers only once `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.held = 0  # batches waiting for `release`

    async def infer(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        self.held += 1
        await self.release.wait()
        return await super().infer(batch)


def set_estimate(runtime: Runtime, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The batcher's wait estimate, whatever is queued (normally a moving average of
    measured batch times)."""
    monkeypatch.setattr(runtime.batcher, "expected_wait_s", lambda items=1: seconds)


async def until(condition: object) -> None:
    for _ in range(2000):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the gateway never got there")


@pytest.fixture
def settings(tiny_settings: Settings) -> Settings:
    # One batch of one image at a time: each further request waits in the queue.
    return tiny_settings.model_copy(update={
        "max_queue_wait_s": BUDGET_S, "max_batch_size": 1, "max_concurrent_batches": 1,
        "retry_after_s": 2,
    })


async def hold_a_queue(
    client: httpx.AsyncClient, runtime: Runtime, backend: HeldBackend
) -> list[asyncio.Future[httpx.Response]]:
    """One request running (held) and two queued behind it; their futures."""
    running = send(client)
    await until(lambda: backend.held == 1)
    queued = [send(client), send(client)]
    await until(lambda: runtime.batcher.depth == 2 and runtime.cpu_jobs == 0)
    return [running, *queued]


def send(client: httpx.AsyncClient) -> asyncio.Future[httpx.Response]:
    return asyncio.ensure_future(client.post("/classify", content=jpeg(), headers=JPEG))


async def test_the_budget_sheds_over_it_and_admits_within_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = HeldBackend()
    app = create_app(settings, backend=backend)
    async for client in open_client(app):
        runtime: Runtime = app.state.runtime
        held = await hold_a_queue(client, runtime, backend)

        set_estimate(runtime, monkeypatch, BUDGET_S * 1.2)
        refused = await client.post("/classify", content=jpeg(), headers=JPEG)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["retry-after"] == "2"
        assert runtime.batcher.depth == 2  # refused before it reached the queue
        # ...and before its body was read: an oversized body would otherwise get 413.
        too_big = b"\xff" * (settings.max_upload_bytes + 1)
        early = await client.post("/classify", content=too_big, headers=JPEG)
        assert early.status_code == 503 and early.json()["error"]["code"] == "overloaded"

        set_estimate(runtime, monkeypatch, BUDGET_S * 0.8)
        admitted = send(client)
        await until(lambda: app.state.runtime.batcher.depth == 3)

        backend.release.set()
        answers = await asyncio.gather(*held, admitted)
        assert [answer.status_code for answer in answers] == [200] * 4


async def test_the_request_timeout_still_bounds_admission(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A budget longer than the timeout allows: 75% of the timeout (1.5 s) rules.
    loose = settings.model_copy(update={"max_queue_wait_s": 60.0, "request_timeout_s": 2.0})
    backend = HeldBackend()
    app = create_app(loose, backend=backend)
    async for client in open_client(app):
        runtime: Runtime = app.state.runtime
        held = await hold_a_queue(client, runtime, backend)
        set_estimate(runtime, monkeypatch, 1.6)
        assert runtime._would_shed(1)
        set_estimate(runtime, monkeypatch, 1.4)
        assert not runtime._would_shed(1)
        backend.release.set()
        assert {answer.status_code for answer in await asyncio.gather(*held)} == {200}


async def test_an_empty_queue_always_admits(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = HeldBackend()
    backend.release.set()
    app = create_app(settings, backend=backend)
    async for client in open_client(app):
        runtime: Runtime = app.state.runtime
        set_estimate(runtime, monkeypatch, 100 * BUDGET_S)  # a stale, absurd estimate
        for _ in range(3):
            answer = await client.post("/classify", content=jpeg(), headers=JPEG)
            assert answer.status_code == 200


async def test_the_preprocessing_backlog_counts_against_the_budget(
    settings: Settings,
) -> None:
    backend = HeldBackend()
    app = create_app(settings.model_copy(update={"preprocess_threads": 1}), backend=backend)
    async for _client in open_client(app):
        runtime: Runtime = app.state.runtime
        runtime._preprocess_s = 0.2  # recent images took 0.2 s each to decode
        assert not runtime._would_shed(1)  # nothing ahead
        # Three images decoding ahead, one thread: 3 x 0.2 s > 0.5 s before this request's
        # own image is touched, with the batcher's own queue empty.
        runtime.cpu_jobs = 3
        assert runtime.expected_wait_s() == pytest.approx(0.6)
        assert runtime._would_shed(1)
        runtime.cpu_jobs = 2  # 2 x 0.2 s: within the budget
        assert not runtime._would_shed(1)
        runtime.cpu_jobs = 0


class SpareBackend(HeldBackend):
    """A held backend that takes one spare batch, as the embedded one on OpenVINO does."""

    spare_batches = 1


async def in_flight_of_two_more(
    client: httpx.AsyncClient, runtime: Runtime, backend: HeldBackend,
    answers: list[asyncio.Future[httpx.Response]],
) -> int:
    """Answer what is held, then send two requests: how many of them go in flight."""
    backend.release.set()
    assert {answer.status_code for answer in await asyncio.gather(*answers)} == {200}
    backend.release.clear()
    held = backend.held
    answers[:] = [send(client), send(client)]
    await until(lambda: backend.held > held and runtime.cpu_jobs == 0)
    await asyncio.sleep(0.05)
    return backend.held - held


async def test_a_refusal_turns_the_spare_batch_off_for_a_while(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under overload the spare batch would take the cycles that answer refusals: after
    a 503 only `max_concurrent_batches` (1 here) go in flight until a quiet spell."""
    monkeypatch.setattr(runtime_mod, "SPARE_OFF_AFTER_REFUSAL_S", 0.3)
    backend = SpareBackend()
    app = create_app(settings, backend=backend)
    async for client in open_client(app):
        runtime: Runtime = app.state.runtime
        answers = [send(client), send(client)]
        await until(lambda: backend.held == 2)  # one batch and the spare
        answers.append(send(client))
        await until(lambda: app.state.runtime.batcher.depth == 1)
        set_estimate(runtime, monkeypatch, BUDGET_S * 1.2)
        refused = await client.post("/classify", content=jpeg(), headers=JPEG)
        assert refused.status_code == 503 and not runtime.spare_allowed()
        set_estimate(runtime, monkeypatch, 0.0)

        # The spare is off: the second request waits in the queue.
        assert await in_flight_of_two_more(client, runtime, backend, answers) == 1
        await asyncio.sleep(0.35)
        assert runtime.spare_allowed()  # a quiet spell later it is back
        assert await in_flight_of_two_more(client, runtime, backend, answers) == 2
        backend.release.set()
        assert {answer.status_code for answer in await asyncio.gather(*answers)} == {200}


def test_the_budget_is_a_positive_setting() -> None:
    assert Settings().max_queue_wait_s == BUDGET_S
    for bad in (0, -1):
        with pytest.raises(ValidationError):
            Settings(max_queue_wait_s=bad)
