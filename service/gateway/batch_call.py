"""One backend call per batch: the function the gateway's micro-batcher runs.

Each image waits in the batcher as a `QueuedImage` (the preprocessed array, its own
`top_k`, when it was queued, its queue-wait span when tracing). `batch_function` stacks a
batch, asks the backend once for the largest `k` in it and hands every image its own
`Ranking`, which names the model that computed it. It observes the queue wait, the batch
and the model that answered, and counts backend failures by reason; anything but a
`service.errors` failure becomes `BackendUnavailable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from service.errors import BackendUnavailable, RequestTimeout, ServiceError
from service.gateway.backends import Backend, ModelId, top_k_from_probs
from service.gateway.metrics import GatewayMetrics
from service.gateway.tracing import TRACING_OFF, QueueWait, Tracing

# The pipeline's one logger: a failed batch is logged as the runtime's.
logger = logging.getLogger("ca.gateway.runtime")


class Ranking(list[tuple[int, float]]):
    """One image's `(class index, score)` pairs, best first, and `model`: the model (and
    version) that computed them, None when the backend did not say. Compares as the list."""

    def __init__(self, pairs: Sequence[tuple[int, float]] = (), model: ModelId | None = None):
        super().__init__(pairs)
        self.model = model


class QueuedImage(NamedTuple):
    """One preprocessed image waiting for a batch."""

    image: NDArray[np.uint8]
    k: int
    enqueued_at: float
    waiting: QueueWait | None = None  # its queue-wait span, when tracing


_ERROR_REASONS: dict[type[ServiceError], str] = {
    RequestTimeout: "timeout",
    BackendUnavailable: "unavailable",
}


def batch_function(
    backend: Backend,
    metrics: GatewayMetrics,
    *,
    num_classes: int | None = None,
    tracing: Tracing = TRACING_OFF,
    model_name: str = "",
) -> Callable[[Sequence[QueuedImage]], Awaitable[list[Ranking]]]:
    """The batcher's function: one backend call for a batch, a ranking per item. A batch
    that ranks all `num_classes` classes asks the backend for the probabilities themselves
    (a server-side top-k may round them: Triton's classification strings have 6 decimals).
    With tracing, the batch runs under one `inference` span linked to its images."""

    async def traced(items: Sequence[QueuedImage]) -> list[Ranking]:
        waits = [item.waiting for item in items]
        with tracing.batch(waits, backend.name, model_name, backend.model_id().version):
            return await run_batch(items)

    async def run_batch(items: Sequence[QueuedImage]) -> list[Ranking]:
        start = time.perf_counter()
        for item in items:
            metrics.queue_wait.observe(start - item.enqueued_at)
        batch = np.stack([item.image for item in items])
        k = max(item.k for item in items)
        try:
            if num_classes is not None and k >= num_classes:
                top = top_k_from_probs(await backend.infer(batch), k)
            else:
                top = await backend.top_k(batch, k)
        except ServiceError as exc:
            metrics.backend_error(_reason(exc))
            raise
        except Exception as exc:
            metrics.backend_error("error")
            logger.exception("backend %s failed a batch of %d", backend.name, len(items))
            raise BackendUnavailable(f"inference failed: {type(exc).__name__}") from exc
        if len(top) != len(items):
            metrics.backend_error("bad_response")
            raise BackendUnavailable(f"backend returned {len(top)} rows for {len(items)} images")
        metrics.observe_batch(len(items), time.perf_counter() - start)
        if top.model is not None:
            metrics.model_answered(top.model)
        return [Ranking(top.row(i, item.k), top.model) for i, item in enumerate(items)]

    return traced if tracing.enabled else run_batch


def _reason(error: ServiceError) -> str:
    for cls, reason in _ERROR_REASONS.items():
        if isinstance(error, cls):
            return reason
    return "error"
