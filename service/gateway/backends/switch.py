"""One backend slot whose occupant can be replaced while batches run: how a new model
version takes traffic without a restart.

`BackendSwitch` is itself a `Backend`: the batcher and the routes talk to it, and it
forwards each call to the backend current when the call starts. `swap(new)` makes `new`
current in one assignment on the event loop, so every batch runs wholly on the old or
wholly on the new backend: batches already running finish on the old one, every batch
that starts afterwards goes to the new one. `retire(old)` then waits for the old
backend's last batch and only then closes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from service.gateway.backends.base import Backend, ModelId, TopK

logger = logging.getLogger("ca.gateway.backend")

T = TypeVar("T")


class BackendSwitch:
    """Forwards to `current`; `swap` replaces it between batches."""

    def __init__(self, backend: Backend) -> None:
        self.name = backend.name  # a swap keeps the kind: versions of one backend
        self._current = backend
        self._calls: dict[int, int] = {}  # id(backend) -> calls running on it
        self._idle: dict[int, asyncio.Event] = {}
        self._retiring: set[Backend] = set()
        self._cpu_jobs: Callable[[], int] | None = None

    @property
    def current(self) -> Backend:
        """The backend new batches go to."""
        return self._current

    @property
    def engine(self) -> str | None:
        """The current backend's engine (see `base.engine_of`), if it has one."""
        engine = getattr(self._current, "engine", None)
        return engine if isinstance(engine, str) else None

    def calls_on(self, backend: Backend) -> int:
        """Calls running on `backend` now."""
        return self._calls.get(id(backend), 0)

    # -- the Backend protocol, forwarded -------------------------------------------------
    async def start(self) -> None:
        await self._current.start()

    def set_cpu_jobs_probe(self, probe: Callable[[], int]) -> None:
        self._cpu_jobs = probe
        self._current.set_cpu_jobs_probe(probe)

    async def close(self) -> None:
        """Close the current backend and any still retiring (without waiting for them)."""
        for backend in [self._current, *self._retiring]:
            await backend.close()
        self._retiring.clear()

    def ready(self) -> bool:
        return self._current.ready()

    def status(self) -> str:
        return self._current.status()

    def model_id(self) -> ModelId:
        return self._current.model_id()

    async def infer(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        backend = self._current
        return await self._counted(backend, backend.infer(batch))

    async def top_k(self, batch: NDArray[np.uint8], k: int) -> TopK:
        backend = self._current
        return await self._counted(backend, backend.top_k(batch, k))

    # -- the swap --------------------------------------------------------------------
    def swap(self, new: Backend) -> Backend:
        """Make `new` (started) current; returns the one it replaces, which keeps its
        running calls: pass it to `retire`."""
        if self._cpu_jobs is not None:
            new.set_cpu_jobs_probe(self._cpu_jobs)
        old, self._current = self._current, new
        if old is not new:
            self._retiring.add(old)
        return old

    async def retire(self, old: Backend) -> None:
        """Wait until `old`'s last call has returned, then close it. A no-op for the
        current backend."""
        if old is self._current:
            return
        while self.calls_on(old):
            await self._idle.setdefault(id(old), asyncio.Event()).wait()
        self._retiring.discard(old)
        await old.close()

    async def _counted(self, backend: Backend, call: Awaitable[T]) -> T:
        key = id(backend)
        self._calls[key] = self._calls.get(key, 0) + 1
        try:
            return await call
        finally:
            left = self._calls[key] - 1
            if left:
                self._calls[key] = left
            else:
                del self._calls[key]
                idle = self._idle.pop(key, None)
                if idle is not None:
                    idle.set()
