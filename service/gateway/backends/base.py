"""The contract every inference backend meets, and the top-k arithmetic they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class ModelId:
    """A served model as the server that ran it names it: on Triton the model name and
    version of the inference response, on the embedded backend the directory loaded."""

    name: str
    version: str


@dataclass(frozen=True)
class TopK:
    """The `k` best classes per row, best first: `indices` int64 and `scores` float32,
    both shaped `[N, k]`; `model` is the model that computed them, when the backend says."""

    indices: NDArray[np.int64]
    scores: NDArray[np.float32]
    model: ModelId | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def row(self, i: int, k: int) -> list[tuple[int, float]]:
        """Row `i`'s first `k` classes as `(index, score)` pairs."""
        return [
            (int(index), float(score))
            for index, score in zip(self.indices[i, :k], self.scores[i, :k], strict=True)
        ]


class Backend(Protocol):
    """An inference backend behind the micro-batcher.

    Batches are uint8 `[N, H, W, 3]` (RGB, HWC) per the model spec. Failures are raised as
    `service.errors.BackendUnavailable` or `service.errors.RequestTimeout`; a model that
    does not match its spec raises `service.errors.ContractError` from `start()`. Backends
    are built from explicit arguments (`build_backend` maps the settings onto them) and
    take their capacity values from `settings.resolve`.
    """

    #: What runs: "embedded" or "triton". A metrics label; `/readyz` and `/v1/model` show it.
    name: str

    async def start(self) -> None:
        """Connect or load, and check the model's contract."""

    def set_cpu_jobs_probe(self, probe: Callable[[], int]) -> None:
        """`probe()` says how many CPU jobs of the gateway (preprocessing) are in flight
        now, so a backend that shares the gateway's cores can yield them (a no-op for one
        that runs elsewhere)."""

    async def close(self) -> None:
        """Release connections, sessions and threads."""

    def ready(self) -> bool:
        """Whether a request sent now is expected to succeed."""

    def status(self) -> str:
        """A short human-readable state, shown by `/readyz`."""

    def model_id(self) -> ModelId:
        """The model serving now: the one that answered the latest batch, or before any
        answer the one the backend loaded or the server's metadata names (on Triton the
        version is empty while no server has been reached and none is pinned)."""

    async def infer(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Probabilities `[N, num_classes]` for a batch."""

    async def top_k(self, batch: NDArray[np.uint8], k: int) -> TopK:
        """The `k` best classes per image (server-side where the backend can)."""


def engine_of(backend: Backend) -> str | None:
    """The inference engine a backend chose at start ("openvino" or "onnxruntime" for the
    embedded one, its `engine` attribute), or None for one that has no such choice."""
    engine = getattr(backend, "engine", None)
    return engine if isinstance(engine, str) else None


def spare_batches_of(backend: Backend) -> int:
    """Batches a backend takes beyond its concurrent ones and queues itself while nothing
    is refused (the embedded backend on OpenVINO, its `spare_batches`); 0 for the rest."""
    spare = getattr(backend, "spare_batches", 0)
    return spare if isinstance(spare, int) else 0


def top_k_from_probs(probs: NDArray[np.float32], k: int) -> TopK:
    """Top-k of each row of `probs`, best first; ties go to the lower index."""
    if probs.ndim != 2:
        raise ValueError(f"expected [N, classes] probabilities, got shape {probs.shape}")
    k = min(k, probs.shape[1])
    # A stable sort on the negated scores keeps equal scores in index order.
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k].astype(np.int64)
    scores = np.take_along_axis(probs, order, axis=1).astype(np.float32)
    return TopK(indices=order, scores=scores)
