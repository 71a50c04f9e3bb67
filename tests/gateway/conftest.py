"""Gateway unit-test fixtures: a tiny model repository, a fake backend and a fake batch
function for the micro-batcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from service.gateway.app import create_app
from service.gateway.backends import ModelId, TopK, top_k_from_probs
from service.gateway.settings import Settings
from tests.support.batching import Recorder
from tests.support.gateway import TINY_MODEL, write_tiny_repository

NUM_CLASSES = 10


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_repository(tmp_path_factory.mktemp("tiny_repo"), num_classes=NUM_CLASSES)


@pytest.fixture
def tiny_settings(tiny_repository: Path) -> Settings:
    return Settings(model_repository=tiny_repository, model_name=TINY_MODEL)


class FakeBackend:
    """Answers from the image's mean colour (class = mean of the red channel % classes),
    with switches for latency and outages."""

    name = "embedded"

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.num_classes = num_classes
        self.delay_s = 0.0
        self.up = True
        self.fail: Exception | None = None
        self.batches: list[int] = []
        self.cpu_jobs: Callable[[], int] | None = None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def set_cpu_jobs_probe(self, probe: Callable[[], int]) -> None:
        self.cpu_jobs = probe

    def ready(self) -> bool:
        return self.up

    def status(self) -> str:
        return "ready" if self.up else "fake backend down"

    def model_id(self) -> ModelId:
        return ModelId(TINY_MODEL, "7")

    async def infer(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        self.batches.append(len(batch))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        probs = np.full((len(batch), self.num_classes), 0.01, dtype=np.float32)
        for row, image in enumerate(batch):
            probs[row, int(image[..., 0].mean()) % self.num_classes] = 0.9
        return probs

    async def top_k(self, batch: NDArray[np.uint8], k: int) -> TopK:
        return top_k_from_probs(await self.infer(batch), k)


@pytest.fixture
def fake_backend() -> FakeBackend:
    return FakeBackend()


async def open_client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):  # type: ignore[attr-defined]
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


@pytest.fixture
async def client(tiny_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with the tiny ONNX model on the embedded backend, in process."""
    app = create_app(tiny_settings, registry=CollectorRegistry())
    async for c in open_client(app):
        yield c


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
