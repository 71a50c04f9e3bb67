"""An asyncio micro-batcher: many concurrent callers, one backend call per batch.

`submit(item)` enqueues one item with its own future and waits for its own output. A
worker task takes the first waiting item, keeps collecting until `max_batch_size` items
or until `max_batch_delay_s` has passed since that first item, drops items whose caller
has gone (cancelled or timed out), and awaits `fn(items)` once. `fn` must return exactly
one output per item, in order; the batcher checks this. Each future is resolved only if
it is still pending, so a caller that went away never disturbs its batch-mates.

The queue is bounded (`QueueFullError` at once rather than waiting without bound), each
submission may carry a timeout (`TimeoutError`), and `close()` stops intake, finishes
what is queued and then stops the worker. A submission may also carry a wait budget: when
the queue ahead of it would take longer than that to drain (judged from the recent time
per item of successful batches), it is refused at once with `QueueFullError` instead of
being queued only to time out.

Spare batches (`spare_batches`, asked each time through `spare_allowed()`) go in flight
beyond `max_concurrent_batches` only while that says yes: for a backend that queues them
itself, so the moment it finishes a batch the next one is already there.

Imports asyncio and typing only: no HTTP, no model, no metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


# Admit against a budget only what the estimate says finishes within this share of it: the
# estimate is a moving average, and batch times vary with their size and CPU contention.
ADMISSION_HEADROOM = 0.75


class QueueFullError(Exception):
    """The queue holds `max_queue` items already; the caller should shed this request."""


class BatcherClosedError(Exception):
    """The batcher is closing or closed and takes no new items."""


class BatchSizeMismatchError(RuntimeError):
    """`fn` returned a different number of outputs than it was given inputs."""


class _Pending(Generic[In, Out]):
    __slots__ = ("future", "item", "taken")

    def __init__(self, item: In, future: asyncio.Future[Out]) -> None:
        self.item = item
        self.future = future
        self.taken = False  # out of the queue (in a batch being collected or run)


class MicroBatcher(Generic[In, Out]):
    """Batches concurrent `submit` calls into calls of `fn(list_of_items) -> outputs`.

    `max_concurrent_batches` batches may be in flight at once (1 keeps a CPU backend from
    oversubscribing its cores; more lets a remote server pipeline), and `spare_batches`
    more while `spare_allowed()` is true (checked before each batch is formed).
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
        spare_batches: int = 0,
        spare_allowed: Callable[[], bool] = lambda: True,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_concurrent_batches < 1:
            raise ValueError("max_batch_size, max_queue and max_concurrent_batches must be >= 1")
        if spare_batches < 0:
            raise ValueError(f"spare_batches must be >= 0, got {spare_batches}")
        if max_batch_delay_s < 0:
            raise ValueError(f"max_batch_delay_s must be >= 0, got {max_batch_delay_s}")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.timeout_s = timeout_s
        self._queue: asyncio.Queue[_Pending[In, Out] | None] = asyncio.Queue(max_queue)
        self._spare = spare_batches
        self._spare_allowed = spare_allowed
        self._in_flight = 0  # batches formed or running, holding a slot
        self._slot_freed = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._concurrency = max_concurrent_batches
        self._item_s = 0.0  # moving average of batch run time per item (successes only)
        self._taken = 0  # items out of the queue, not yet answered (batches run or waiting)
        self._abandoned = 0  # items still in the queue whose caller has gone

    @property
    def depth(self) -> int:
        """Items waiting for a batch (not counting those being run, nor those whose caller
        has gone: they are dropped when their turn comes)."""
        return self._queue.qsize() - self._abandoned

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def batch_slots(self) -> int:
        """Batches allowed in flight now: `max_concurrent_batches`, plus the spares while
        `spare_allowed()` says so."""
        return self._concurrency + (self._spare if self._spare and self._spare_allowed() else 0)

    def expected_wait_s(self, items: int = 1) -> float:
        """Roughly how long until `items` more items would have their outputs: the batches
        taken from the queue (running or waiting for a slot), everything queued, and them,
        at the recent per-item run time of successful batches (0 before the first), over
        the batches in flight (a spare's run time includes its wait inside the backend)."""
        ahead = self._taken + self.depth + items
        return ahead * self._item_s / self.batch_slots

    def would_shed(self, budget_s: float | None, items: int = 1) -> bool:
        """Whether `submit` would refuse `items` more with this wait budget: the queue is
        full, or it is not empty and would not drain within `budget_s`. An empty queue
        always admits, so a stale estimate can never shed every request."""
        if self._queue.qsize() + items > self._queue.maxsize:
            return True
        if budget_s is None or self.depth == 0:
            return False
        return self.expected_wait_s(items) > ADMISSION_HEADROOM * budget_s

    def start(self) -> None:
        """Start the worker task on the running loop (idempotent)."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="micro-batcher"
            )

    async def submit(
        self, item: In, timeout_s: float | None = None, *, budget_s: float | None = None
    ) -> Out:
        """Queue `item` and wait for its output.

        Raises `QueueFullError` at once when the queue is full or, given `budget_s`, when
        the queue would not drain within it (see `would_shed`); `BatcherClosedError` after
        `close()` began; `TimeoutError` when `timeout_s` (default: the batcher's) passes
        first; and whatever `fn` raised for the batch the item was in.
        """
        if self._closing or self._worker is None:
            raise BatcherClosedError("the batcher is not running")
        if budget_s is not None and self.would_shed(budget_s):
            raise QueueFullError(
                f"{self.depth} queued would take ~{self.expected_wait_s():.2f} s; "
                f"the budget is {budget_s:.2f} s"
            )
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        pending = _Pending(item, future)
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise QueueFullError(f"queue full ({self._queue.maxsize} waiting)") from None
        timeout = self.timeout_s if timeout_s is None else timeout_s
        # wait_for cancels the future on timeout; the worker then skips it.
        try:
            return await asyncio.wait_for(future, timeout)
        except BaseException:
            if not pending.taken:
                self._abandoned += 1
            raise

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
        # A slot first, then the batch: while every slot is busy, items keep queueing and
        # the next batch takes all of them (up to the cap) the moment a slot frees, instead
        # of a batch closed early waiting for a slot while the queue grows behind it.
        while True:
            await self._acquire_slot()
            first = self._take(await self._queue.get())
            if first is None:
                self._release_slot()
                return
            batch = await self._collect(first)
            live = [pending for pending in batch if not pending.future.done()]
            if not live:
                self._release_slot()
                continue
            self._taken += len(live)
            task = asyncio.get_running_loop().create_task(self._run(live))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _acquire_slot(self) -> None:
        # Re-asked whenever a batch ends, so a spare refused now is taken once allowed.
        while self._in_flight >= self.batch_slots:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        self._in_flight += 1

    def _release_slot(self) -> None:
        self._in_flight -= 1
        self._slot_freed.set()

    def _take(self, pending: _Pending[In, Out] | None) -> _Pending[In, Out] | None:
        if pending is not None:
            pending.taken = True
            if pending.future.done():  # its caller left while it was queued
                self._abandoned -= 1
        return pending

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
            self._take(nxt)
            if nxt is None:
                # Closing: put the sentinel back so the worker stops after this batch.
                self._queue.put_nowait(None)
                break
            batch.append(nxt)
        return batch

    async def _run(self, batch: list[_Pending[In, Out]]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
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
            per_item = (loop.time() - started) / len(batch)
            self._item_s = per_item if not self._item_s else 0.8 * self._item_s + 0.2 * per_item
            for pending, output in zip(batch, outputs, strict=True):
                if not pending.future.done():
                    pending.future.set_result(output)
        finally:
            self._taken -= len(batch)
            self._release_slot()
