"""A fake batch function for the micro-batcher's tests, and a batcher started on it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from service.gateway.batching import MicroBatcher


class Recorder:
    """Doubles each item; records the batches it saw; can be slowed or made to fail."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_with: Exception | None = None
        self.drop_last = False
        self.gate: asyncio.Event | None = None

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        out = [2 * item for item in items]
        return out[:-1] if self.drop_last else out


async def make(recorder: Recorder, **kwargs: float) -> MicroBatcher[int, int]:
    options = {"max_batch_size": 4, "max_batch_delay_s": 0.02, "max_queue": 64} | kwargs
    batcher: MicroBatcher[int, int] = MicroBatcher(recorder, **options)  # type: ignore[arg-type]
    batcher.start()
    return batcher
