"""The queue policy of the `--target cpu` config on the real Triton server: the server
loads it as written, rejects at the door when the queue is full, and rejects a request
whose own (shorter) deadline passed while it queued."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from service.model import triton_config
from service.spec import ONNX_MODEL
from tests.support.triton import TritonServer

QUEUE_FULL = "Exceeds maximum queue size"
TIMED_OUT = "Request timeout expired"


@pytest.fixture(scope="module")
def triton(model_repository: Path) -> Iterator[TritonServer]:
    with TritonServer(model_repository) as server:
        yield server


def full_batch(model_repository: Path) -> np.ndarray:
    """A request as large as a batch, so the batcher cannot merge two of them."""
    config = triton_config.load(model_repository / ONNX_MODEL)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (config.max_batch_size, 224, 224, 3), dtype=np.uint8)


async def infer(url: str, batch: np.ndarray, timeout_us: int | None = None) -> str:
    """'ok', or the server's error message."""
    async with aioclient.InferenceServerClient(url) as client:
        image = aioclient.InferInput("IMAGE", list(batch.shape), "UINT8")
        image.set_data_from_numpy(batch)
        try:
            await client.infer(ONNX_MODEL, [image], timeout=timeout_us)
        except InferenceServerException as exc:
            return str(exc.message())
    return "ok"


def test_the_server_loads_the_queue_policy_as_written(
    triton: TritonServer, model_repository: Path
) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    served = client.get_model_config(ONNX_MODEL).config.dynamic_batching
    written = triton_config.load(model_repository / ONNX_MODEL).dynamic_batching
    assert served.default_queue_policy == written.default_queue_policy
    policy = served.default_queue_policy
    assert policy.timeout_action == policy.REJECT and policy.allow_timeout_override
    assert policy.max_queue_size > 0 and policy.default_timeout_microseconds > 0
    # Given none, Triton fills in max_batch_size itself: "the largest batch it can form".
    max_batch = triton_config.load(model_repository / ONNX_MODEL).max_batch_size
    assert list(served.preferred_batch_size) == [max_batch]


def test_a_request_whose_deadline_passes_in_the_queue_is_rejected(
    triton: TritonServer, model_repository: Path
) -> None:
    batch = full_batch(model_repository)

    async def scenario() -> list[str]:
        running = asyncio.create_task(infer(triton.grpc_url, batch))
        await asyncio.sleep(0.05)  # the first batch is running now
        waiting = await infer(triton.grpc_url, batch, timeout_us=1000)
        return [await running, waiting]

    first, second = asyncio.run(scenario())
    assert first == "ok"
    assert TIMED_OUT in second


def test_a_full_queue_rejects_at_the_door_with_a_clear_error(
    triton: TritonServer, model_repository: Path
) -> None:
    batch = full_batch(model_repository)
    limit = triton_config.load(model_repository / ONNX_MODEL).dynamic_batching
    count = limit.default_queue_policy.max_queue_size + 12

    async def burst() -> list[str]:
        return list(await asyncio.gather(*(infer(triton.grpc_url, batch) for _ in range(count))))

    answers = asyncio.run(burst())
    assert "ok" in answers
    assert any(QUEUE_FULL in answer for answer in answers)
    # Every refusal is one of the queue policy's two, never anything else.
    assert all(a == "ok" or QUEUE_FULL in a or TIMED_OUT in a for a in answers), set(answers)
