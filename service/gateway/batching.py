"""An asyncio micro-batcher: many concurrent callers, one backend call per batch.

`submit(item)` enqueues one item with its own future and waits for its own output. A
worker task takes the first waiting item, keeps collecting until `max_batch_size` items
or until `max_batch_delay_s` has passed since that first item, drops items whose caller
has gone (cancelled or timed out), and awaits `fn(items)` once. `fn` must return exactly
one output per item, in order; the batcher checks this. Each future is resolved only if
it is still pending, so a caller that went away never disturbs its batch-mates.

The queue is bounded (`QueueFullError` at once rather than waiting without bound), each
submission may carry a timeout (`TimeoutError`), and `close()` stops intake, finishes
what is queued and then stops the worker.

Imports asyncio and typing only: no HTTP, no model, no metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class QueueFullError(Exception):
    """The queue holds `max_queue` items already; the caller should shed this request."""


class BatcherClosedError(Exception):
    """The batcher is closing or closed and takes no new items."""


class BatchSizeMismatchError(RuntimeError):
    """`fn` returned a different number of outputs than it was given inputs."""


class _Pending(Generic[In, Out]):
    __slots__ = ("future", "item")

    def __init__(self, item: In, future: asyncio.Future[Out]) -> None:
        self.item = item
        self.future = future


class MicroBatcher(Generic[In, Out]):
    """Batches concurrent `submit` calls into calls of `fn(list_of_items) -> outputs`.

    `max_concurrent_batches` batches may be in flight at once (1 keeps a CPU backend from
    oversubscribing its cores; more lets a remote server pipeline).
    """

    def __init__(
        self,
        fn: Callable[[Sequence[In]], Awaitable[Sequence[Out]]],
        *,
        max_batch_size: int,
        max_batch_delay_s: float,
        max_queue: int,
        timeout_s: float | None = None,
        max_concurrent_batches: int = 1,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_concurrent_batches < 1:
            raise ValueError("max_batch_size, max_queue and max_concurrent_batches must be >= 1")
        if max_batch_delay_s < 0:
            raise ValueError(f"max_batch_delay_s must be >= 0, got {max_batch_delay_s}")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.timeout_s = timeout_s
        self._queue: asyncio.Queue[_Pending[In, Out] | None] = asyncio.Queue(max_queue)
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._running: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        """Items waiting for a batch (not counting those being run)."""
        return self._queue.qsize()

    @property
    def closed(self) -> bool:
        return self._closing

    def start(self) -> None:
        """Start the worker task on the running loop (idempotent)."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="micro-batcher"
            )

    async def submit(self, item: In, timeout_s: float | None = None) -> Out:
        """Queue `item` and wait for its output.

        Raises `QueueFullError` at once when the queue is full, `BatcherClosedError` after
        `close()` began, `TimeoutError` when `timeout_s` (default: the batcher's) passes
        first, and whatever `fn` raised for the batch the item was in.
        """
        if self._closing or self._worker is None:
            raise BatcherClosedError("the batcher is not running")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(item, future))
        except asyncio.QueueFull:
            raise QueueFullError(f"queue full ({self._queue.maxsize} waiting)") from None
        timeout = self.timeout_s if timeout_s is None else timeout_s
        # wait_for cancels the future on timeout; the worker then skips it.
        return await asyncio.wait_for(future, timeout)

    async def close(self) -> None:
        """Stop intake, run every queued item, then stop the worker."""
        if self._closing:
            return
        self._closing = True
        if self._worker is None:
            return
        await self._queue.put(None)  # wakes the worker once the queue has drained
        await self._worker
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = await self._collect(first)
            live = [pending for pending in batch if not pending.future.done()]
            if not live:
                continue
            await self._slots.acquire()
            task = asyncio.get_running_loop().create_task(self._run(live))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self, first: _Pending[In, Out]) -> list[_Pending[In, Out]]:
        """Gather up to `max_batch_size` items within the delay window opened by `first`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_batch_delay_s
        batch = [first]
        while len(batch) < self.max_batch_size:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    nxt = self._queue.get_nowait()
                else:
                    nxt = await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if nxt is None:
                # Closing: put the sentinel back so the worker stops after this batch.
                self._queue.put_nowait(None)
                break
            batch.append(nxt)
        return batch

    async def _run(self, batch: list[_Pending[In, Out]]) -> None:
        try:
            try:
                outputs = await self._fn([pending.item for pending in batch])
                if len(outputs) != len(batch):
                    raise BatchSizeMismatchError(
                        f"batch function returned {len(outputs)} outputs for {len(batch)} inputs"
                    )
            except Exception as exc:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                return
            for pending, output in zip(batch, outputs, strict=True):
                if not pending.future.done():
                    pending.future.set_result(output)
        finally:
            self._slots.release()
