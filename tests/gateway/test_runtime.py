"""The runtime between the routes and the batcher: per-request `top_k` inside a shared
batch, shedding before decoding, the queue-wait histogram. In process (the app over
httpx's ASGI transport); fast. The batch function alone: test_batch_call.py."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from service.gateway.app import create_app
from service.gateway.runtime import Runtime
from service.gateway.settings import EffectiveSettings, Settings
from service.preprocess import preprocess
from service.spec import ModelSpec
from tests.gateway.conftest import FakeBackend, open_client
from tests.support.gateway import TINY_MODEL
from tests.support.metrics import at_most, sample

PNG = {"Content-Type": "image/png"}


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def gradient_png(seed: int) -> bytes:
    """A different, non-uniform image per seed (the tiny model answers from a 4x4 grid)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB").resize((96, 80), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# -- per-request top_k inside one shared batch (the real batcher and embedded backend) ------
class ServedReference:
    """The tiny ONNX model run directly on the gateway's preprocessing: the answer a
    request would get alone."""

    def __init__(self, repository: Path) -> None:
        model_dir = repository / TINY_MODEL
        self.spec = ModelSpec.load(model_dir)
        self.session = ort.InferenceSession(
            str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )

    def top(self, data: bytes, k: int) -> list[tuple[int, float]]:
        image = preprocess(data, self.spec, max_image_pixels=40_000_000)
        probs = self.session.run(["PROBS"], {"IMAGE": image[None]})[0][0]
        order = np.argsort(-probs, kind="stable")[:k]
        return [(int(i), float(probs[i])) for i in order]


def ranking(response: httpx.Response) -> list[tuple[int, float]]:
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    return [(p["index"], p["score"]) for p in result["predictions"]]


@pytest.mark.parametrize("ks", [(1, 5), (5, 1), (3, 10)], ids=["1-then-5", "5-then-1", "3-10"])
async def test_each_request_keeps_its_own_top_k_in_a_shared_batch(
    tiny_repository: Path, ks: tuple[int, int]
) -> None:
    # A batch closes at two images; the window (1 s) is far longer than the two requests
    # take to arrive, so they can only be answered from one shared backend call.
    settings = Settings(
        model_repository=tiny_repository,
        model_name=TINY_MODEL,
        max_batch_size=2,
        max_batch_delay_ms=1000.0,
    )
    registry = CollectorRegistry()
    images = [gradient_png(1), gradient_png(2)]
    reference = ServedReference(tiny_repository)
    async for client in open_client(create_app(settings, registry=registry)):
        responses = await asyncio.gather(
            *(
                client.post(f"/classify?top_k={k}", content=data, headers=PNG)
                for k, data in zip(ks, images, strict=True)
            )
        )
        # One backend call holding both images: the batch really was shared.
        assert sample(registry, "ca_gateway_batch_size_count") == 1
        assert sample(registry, "ca_gateway_batch_size_sum") == 2
        for k, data, response in zip(ks, images, responses, strict=True):
            got, want = ranking(response), reference.top(data, k)
            assert len(got) == k, (k, got)
            assert [i for i, _ in got] == [i for i, _ in want]
            assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# -- the queue-wait histogram through the real batcher -------------------------------------
async def test_queue_wait_histogram_sees_the_image_that_waited(tiny_settings: Settings) -> None:
    fake, registry = FakeBackend(), CollectorRegistry()
    fake.delay_s = 0.4
    settings = tiny_settings.model_copy(
        update={"max_batch_size": 1, "max_batch_delay_ms": 0.0, "max_concurrent_batches": 1}
    )
    async for client in open_client(create_app(settings, registry=registry, backend=fake)):
        first = asyncio.ensure_future(client.post("/classify", content=png((1, 0, 0)), headers=PNG))
        await wait_until(lambda: bool(fake.batches))  # the first image is in the backend now
        second = await client.post("/classify", content=png((2, 0, 0)), headers=PNG)
        assert (await first).status_code == 200 and second.status_code == 200
    assert fake.batches == [1, 1]
    assert sample(registry, "ca_gateway_queue_wait_seconds_count") == 2
    # The first went straight into a batch; the second waited out most of the first's 0.4 s.
    assert at_most(registry, "ca_gateway_queue_wait_seconds", 0.11) == 1
    waited = sample(registry, "ca_gateway_queue_wait_seconds_sum")
    assert 0.25 <= waited < 2.0, waited


# -- the admission arithmetic, with a batcher that reports fixed numbers --------------------
# (Shedding through a real app, before the body is read, and the budget against the request
# timeout: tests/gateway/test_queue_wait_budget.py.)
class Queue:
    """Stands in for the batcher in `Runtime._would_shed`: a fixed per-image wait, a fixed
    depth, whether the queue is full, and a record of the counts it was asked about."""

    def __init__(self, *, full: bool = False, depth: int = 0, per_image_s: float = 0.0) -> None:
        self.full = full
        self.depth = depth
        self.per_image_s = per_image_s
        self.asked: list[tuple[str, int]] = []

    def would_shed(self, budget_s: float | None, images: int) -> bool:
        assert budget_s is None  # only the queue-full check is asked of the batcher
        self.asked.append(("would_shed", images))
        return self.full

    def expected_wait_s(self, images: int) -> float:
        self.asked.append(("expected_wait_s", images))
        return (self.depth + images) * self.per_image_s


def admission(
    queue: Queue, *, behind: int, preprocess_s: float, workers: int, budget_s: float = 0.5
) -> Runtime:
    settings = Settings(preprocess_threads=workers, max_queue_wait_s=budget_s)
    effective = EffectiveSettings(
        max_batch_size=1, concurrent_batches=1, inference_threads=1, preprocess_threads=workers
    )
    runtime = Runtime(
        settings=settings, effective=effective, model=None, backend=None, metrics=None,  # type: ignore[arg-type]
        pool=None, batcher=queue, preprocessor=None,  # type: ignore[arg-type]
    )
    runtime.cpu_jobs, runtime._preprocess_s = behind, preprocess_s
    return runtime


def test_admission_counts_the_images_still_being_preprocessed_as_queued() -> None:
    queue = Queue(full=True)
    assert admission(queue, behind=3, preprocess_s=0.0, workers=1)._would_shed(2)
    assert queue.asked == [("would_shed", 5)]


def test_admission_never_sheds_on_an_estimate_alone_with_nothing_ahead() -> None:
    queue = Queue(per_image_s=100.0)
    assert not admission(queue, behind=0, preprocess_s=100.0, workers=1)._would_shed(4)
    assert queue.asked == [("would_shed", 4)]


@pytest.mark.parametrize(
    ("behind", "depth", "preprocess_s", "workers", "per_image_s", "shed"),
    [
        # pool 2 x 0.1 s / 2 = 0.1 s, queue (1 + 2) x 0.1 s = 0.3 s: 0.4 <= 0.5.
        (2, 1, 0.1, 2, 0.1, False),
        # The same with one worker: 0.2 + 0.3 = 0.5, exactly the budget: admitted.
        (2, 1, 0.1, 1, 0.1, False),
        # Just over it.
        (2, 1, 0.1, 1, 0.1001, True),
        # Nothing preprocessing, the queue alone: 6 x 0.1 s > 0.5 s.
        (0, 6, 0.3, 1, 0.1, True),
    ],
)
def test_admission_adds_the_pool_backlog_to_the_queue_wait(
    behind: int, depth: int, preprocess_s: float, workers: int, per_image_s: float, shed: bool
) -> None:
    queue = Queue(depth=depth, per_image_s=per_image_s)
    runtime = admission(queue, behind=behind, preprocess_s=preprocess_s, workers=workers)
    assert runtime._would_shed(1) is shed
    assert queue.asked == [("would_shed", behind + 1), ("expected_wait_s", behind)]
