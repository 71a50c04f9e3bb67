"""`batch_call.batch_function` called directly: one backend call per batch, the largest
`k` asked once and each row trimmed to its image's own, the model named, rows, waits and
batch sizes observed, backend failures counted by reason and mapped. Fast."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from service.errors import BackendUnavailable, RequestTimeout
from service.gateway.backends import ModelId, TopK, top_k_from_probs
from service.gateway.batch_call import QueuedImage, batch_function
from service.gateway.metrics import GatewayMetrics
from tests.gateway.conftest import NUM_CLASSES
from tests.support.metrics import at_most, sample


class Ranked:
    """A backend whose answer for image i is known: row i ranks classes from `start(i)`
    upwards, with strictly falling scores. Records each `k` it was asked for."""

    name = "embedded"

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.num_classes = num_classes
        self.asked: list[tuple[int, int]] = []  # (batch size, k)
        self.fail: Exception | None = None
        self.rows_short = False
        self.model: ModelId | None = None  # the model its top-k answers name
        self.inferred: list[int] = []  # batch sizes asked for probabilities

    @staticmethod
    def start(image: NDArray[np.uint8]) -> int:
        return int(image[0, 0, 0])

    def probs(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        probs = np.zeros((len(batch), self.num_classes), dtype=np.float32)
        for row, image in enumerate(batch):
            for rank in range(self.num_classes):
                probs[row, (self.start(image) + rank) % self.num_classes] = 0.5**rank
        return probs

    async def top_k(self, batch: NDArray[np.uint8], k: int) -> TopK:
        self.asked.append((len(batch), k))
        if self.fail is not None:
            raise self.fail
        top = top_k_from_probs(self.probs(batch), k)
        if self.rows_short:
            return TopK(top.indices[:-1], top.scores[:-1])
        return TopK(top.indices, top.scores, self.model)

    async def infer(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        self.inferred.append(len(batch))
        return self.probs(batch)


def item(start: int, k: int, enqueued_at: float) -> QueuedImage:
    image = np.full((4, 4, 3), start, dtype=np.uint8)
    return QueuedImage(image, k, enqueued_at)


def expected_row(start: int, k: int) -> list[tuple[int, float]]:
    return [((start + rank) % NUM_CLASSES, 0.5**rank) for rank in range(k)]


async def test_batch_function_asks_once_for_the_largest_k_and_trims_each_row() -> None:
    backend, registry = Ranked(), CollectorRegistry()
    run = batch_function(backend, GatewayMetrics("embedded", registry))  # type: ignore[arg-type]
    now = time.perf_counter()
    items = [item(3, 1, now), item(7, 4, now), item(0, 2, now)]
    rows = await run(items)
    assert backend.asked == [(3, 4)]
    assert rows == [expected_row(3, 1), expected_row(7, 4), expected_row(0, 2)]
    assert sample(registry, "ca_gateway_batch_size_count") == 1
    assert sample(registry, "ca_gateway_batch_size_sum") == 3
    assert sample(registry, "ca_gateway_inference_duration_seconds_count", backend="embedded",
                  engine="none") == 1


async def test_each_ranking_names_the_model_that_computed_its_batch() -> None:
    backend, registry = Ranked(), CollectorRegistry()
    backend.model = ModelId("ca_mobilenetv2_trt", "3")
    run = batch_function(backend, GatewayMetrics("triton", registry))  # type: ignore[arg-type]
    now = time.perf_counter()
    rows = await run([item(1, 2, now), item(5, 3, now)])
    assert [row.model for row in rows] == [backend.model] * 2
    assert sample(registry, "ca_gateway_model_info", backend="triton",
                  model="ca_mobilenetv2_trt", version="3") == 1


async def test_a_batch_ranking_every_class_asks_for_the_probabilities_themselves() -> None:
    # A server-side top-k may round its scores (Triton's classification strings carry 6
    # decimals): ranking every class takes the probabilities instead, and only then.
    backend = Ranked()
    run = batch_function(backend, GatewayMetrics("embedded", CollectorRegistry()),  # type: ignore[arg-type]
                         num_classes=NUM_CLASSES)
    now = time.perf_counter()
    every = await run([item(2, NUM_CLASSES, now)])
    assert backend.inferred == [1] and backend.asked == []
    assert every == [expected_row(2, NUM_CLASSES)]
    assert await run([item(2, NUM_CLASSES - 1, now)]) == [expected_row(2, NUM_CLASSES - 1)]
    assert backend.inferred == [1] and backend.asked == [(1, NUM_CLASSES - 1)]


async def test_batch_function_observes_each_images_wait() -> None:
    backend, registry = Ranked(), CollectorRegistry()
    run = batch_function(backend, GatewayMetrics("embedded", registry))  # type: ignore[arg-type]
    now = time.perf_counter()
    await run([item(1, 1, now - 0.5), item(2, 1, now - 2.0), item(3, 1, now)])
    assert sample(registry, "ca_gateway_queue_wait_seconds_count") == 3
    assert sample(registry, "ca_gateway_queue_wait_seconds_sum") == pytest.approx(2.5, abs=0.2)
    # One fresh, one half a second old, one two seconds old: each in its own bucket.
    assert at_most(registry, "ca_gateway_queue_wait_seconds", 0.11) == 1
    assert at_most(registry, "ca_gateway_queue_wait_seconds", 1.0) == 2


@pytest.mark.parametrize(
    ("failure", "reason", "message"),
    [
        (BackendUnavailable("connection reset"), "unavailable", "connection reset"),
        (RequestTimeout("too slow"), "timeout", "too slow"),
        (RuntimeError("a bug"), "error", "inference failed: RuntimeError"),
    ],
)
async def test_batch_function_counts_and_maps_backend_failures(
    failure: Exception, reason: str, message: str
) -> None:
    backend, registry = Ranked(), CollectorRegistry()
    backend.fail = failure
    run = batch_function(backend, GatewayMetrics("embedded", registry))  # type: ignore[arg-type]
    expected = type(failure) if isinstance(failure, BackendUnavailable | RequestTimeout) else (
        BackendUnavailable
    )
    with pytest.raises(expected, match=message):
        await run([item(1, 2, time.perf_counter())])
    errors = "ca_gateway_backend_errors_total"
    assert sample(registry, errors, backend="embedded", reason=reason) == 1
    assert sum(
        sample(registry, errors, backend="embedded", reason=other)
        for other in ("unavailable", "timeout", "error", "bad_response")
    ) == 1
    assert sample(registry, "ca_gateway_batch_size_count") == 0  # failures are not batches


async def test_batch_function_refuses_a_short_answer() -> None:
    backend, registry = Ranked(), CollectorRegistry()
    backend.rows_short = True
    run = batch_function(backend, GatewayMetrics("embedded", registry))  # type: ignore[arg-type]
    now = time.perf_counter()
    with pytest.raises(BackendUnavailable, match="1 rows for 2 images"):
        await run([item(1, 1, now), item(2, 1, now)])
    errors = "ca_gateway_backend_errors_total"
    assert sample(registry, errors, backend="embedded", reason="bad_response") == 1
    assert sample(registry, "ca_gateway_batch_size_count") == 0




async def test_batch_function_logs_the_failed_batch_and_times_the_good_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend, registry = Ranked(), CollectorRegistry()
    run = batch_function(backend, GatewayMetrics("embedded", registry))  # type: ignore[arg-type]
    now = time.perf_counter()
    await run([item(1, 1, now)])
    took = sample(registry, "ca_gateway_inference_duration_seconds_sum", backend="embedded",
                  engine="none")
    assert 0 <= took < 1.0
    backend.fail = RuntimeError("a bug")
    with caplog.at_level(logging.ERROR, logger="ca.gateway.runtime"), pytest.raises(
        BackendUnavailable
    ):
        await run([item(1, 1, now), item(2, 1, now)])
    [record] = caplog.records
    assert record.getMessage() == "backend embedded failed a batch of 2"
    assert record.exc_info is not None
