"""The micro-batcher's deadline-aware admission, with a fake batch function (no HTTP):
a queue that would not drain within the caller's budget refuses at once, an empty queue
always admits, and failures never feed the estimate."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from service.gateway.batching import MicroBatcher, QueueFullError


class Slow:
    """Takes `per_item_s` per item; fails when `fail` is set."""

    def __init__(self, per_item_s: float) -> None:
        self.per_item_s = per_item_s
        self.fail = False

    async def __call__(self, items: Sequence[int]) -> list[int]:
        await asyncio.sleep(self.per_item_s * len(items))
        if self.fail:
            raise RuntimeError("backend down")
        return [i * 2 for i in items]


async def test_sheds_when_the_queue_cannot_drain_in_budget() -> None:
    fn = Slow(0.02)
    batcher = MicroBatcher(fn, max_batch_size=1, max_batch_delay_s=0.0, max_queue=100)
    batcher.start()
    assert batcher.expected_wait_s() == 0.0
    assert await batcher.submit(1, budget_s=0.001) == 2  # empty queue: always admitted
    assert batcher.expected_wait_s() == pytest.approx(0.02, rel=0.5)
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(20)]
    await asyncio.sleep(0)
    assert batcher.would_shed(0.1) and not batcher.would_shed(5.0)
    with pytest.raises(QueueFullError, match="budget"):
        await batcher.submit(99, budget_s=0.1)
    assert await batcher.submit(100, budget_s=5.0) == 200  # a generous budget waits
    assert await asyncio.gather(*queued) == [i * 2 for i in range(20)]
    await batcher.close()


async def test_failed_batches_do_not_change_the_estimate() -> None:
    fn = Slow(0.01)
    batcher = MicroBatcher(fn, max_batch_size=4, max_batch_delay_s=0.0, max_queue=10)
    batcher.start()
    await batcher.submit(1)
    before = batcher.expected_wait_s()
    fn.fail, fn.per_item_s = True, 0.2
    with pytest.raises(RuntimeError):
        await batcher.submit(2)
    assert batcher.expected_wait_s() == before
    await batcher.close()


async def test_full_queue_is_shed_even_without_a_budget() -> None:
    gate = asyncio.Event()

    async def blocked(items: Sequence[int]) -> list[int]:
        await gate.wait()
        return list(items)

    batcher = MicroBatcher(blocked, max_batch_size=1, max_batch_delay_s=0.0, max_queue=2)
    batcher.start()
    running = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)
    waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    assert batcher.would_shed(None)
    with pytest.raises(QueueFullError):
        await batcher.submit(3, budget_s=100.0)
    gate.set()
    assert await asyncio.gather(running, *waiting) == [0, 1, 2]
    await batcher.close()


async def test_admission_at_its_boundaries_with_a_set_estimate() -> None:
    # Two batches of one run (held), three items queue behind them, and the estimate is
    # set to 0.125 s per item: exact in binary, so each bound is tested at equality.
    gate = asyncio.Event()

    async def held(items: Sequence[int]) -> list[int]:
        await gate.wait()
        return list(items)

    batcher = MicroBatcher(held, max_batch_size=1, max_batch_delay_s=0.0, max_queue=4,
                           max_concurrent_batches=2)
    batcher.start()
    batcher._item_s = 0.125
    running = [asyncio.ensure_future(batcher.submit(i)) for i in (0, 1)]
    await asyncio.sleep(0.01)
    one_ahead = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.01)
    assert batcher.depth == 1
    # Two running + one queued + the newcomer, over two concurrent batches.
    assert batcher.expected_wait_s() == 4 * 0.125 / 2
    assert batcher.would_shed(0.25 / 0.75 - 0.01)  # one queued item is enough to shed
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in (3, 4)]
    await asyncio.sleep(0.01)
    assert batcher.expected_wait_s() == 6 * 0.125 / 2  # 0.375 s
    assert not batcher.would_shed(0.5)  # 0.375 is not more than 75% of 0.5
    assert batcher.would_shed(0.49)
    assert not batcher.would_shed(None)  # no budget: only a full queue sheds
    assert not batcher.would_shed(None, 1) and batcher.would_shed(None, 2)  # 3 of 4 queued
    gate.set()
    assert await asyncio.gather(*running, one_ahead, *queued) == [0, 1, 2, 3, 4]
    await batcher.close()
