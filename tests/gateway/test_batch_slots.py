"""How many batches the micro-batcher keeps in flight (concurrent and spare), and its wait
estimate over them: a fake async batch function, no HTTP, no model."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from service.gateway.batching import MicroBatcher
from tests.support.batching import Recorder, make


async def test_concurrent_batches_overlap(recorder: Recorder) -> None:
    recorder.delay_s = 0.1
    b = await make(recorder, max_batch_size=1, max_batch_delay_s=0.0, max_concurrent_batches=4)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await asyncio.gather(*(b.submit(i) for i in range(4))) == [0, 2, 4, 6]
        assert loop.time() - start < 0.3  # four 0.1 s batches in parallel, not 0.4 s
    finally:
        await b.close()


class Permission:
    """What `spare_allowed()` answers; a test flips `allowed`."""

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed

    def __call__(self) -> bool:
        return self.allowed


def with_one_spare(
    recorder: Recorder, permission: Permission, concurrent: int
) -> MicroBatcher[int, int]:
    """A started batcher of single-item batches with one spare batch."""
    b: MicroBatcher[int, int] = MicroBatcher(
        recorder, max_batch_size=1, max_batch_delay_s=0.0, max_queue=8,
        max_concurrent_batches=concurrent, spare_batches=1, spare_allowed=permission,
    )
    b.start()
    return b


async def test_spare_batches_go_in_flight_only_while_allowed(recorder: Recorder) -> None:
    recorder.gate = asyncio.Event()
    permission = Permission(False)
    b = with_one_spare(recorder, permission, concurrent=1)
    try:
        tasks = [asyncio.ensure_future(b.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.01)
        assert recorder.batches == [[1]] and b.batch_slots == 1  # no spare: one at a time
        permission.allowed = True
        assert b.batch_slots == 2
        recorder.gate.set()  # a batch ends: the slots are counted again, the spare taken
        await asyncio.sleep(0.01)
        assert recorder.batches == [[1], [2], [3]]
        assert await asyncio.gather(*tasks) == [2, 4, 6]

        recorder.gate.clear()
        first = asyncio.ensure_future(b.submit(4))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(b.submit(5))
        await asyncio.sleep(0.01)
        assert recorder.batches[-2:] == [[4], [5]]  # allowed: two in flight at once
        permission.allowed = False
        third = asyncio.ensure_future(b.submit(6))
        await asyncio.sleep(0.01)
        assert len(recorder.batches) == 5 and b.depth == 1  # refused again: 6 waits
        recorder.gate.set()
        assert list(await asyncio.gather(first, second, third)) == [8, 10, 12]
    finally:
        recorder.gate.set()  # a failed check must not leave close() waiting on a batch
        await b.close()


async def test_the_wait_estimate_spreads_over_the_spare_batches_too(recorder: Recorder) -> None:
    permission = Permission(True)
    b = with_one_spare(recorder, permission, concurrent=2)
    try:
        assert await b.submit(1) == 2  # one finished batch: a per-item estimate exists
        with_spare = b.expected_wait_s(6)
        permission.allowed = False
        assert b.expected_wait_s(6) == pytest.approx(1.5 * with_spare)  # 3 -> 2 batches
    finally:
        await b.close()


async def test_expected_wait_counts_every_batch_in_flight(recorder: Recorder) -> None:
    b = await make(recorder, max_batch_size=1, max_batch_delay_s=0.0, max_concurrent_batches=2)
    try:
        assert await b.submit(1) == 2  # one finished batch: a per-item estimate exists
        recorder.gate = asyncio.Event()
        running = [asyncio.ensure_future(b.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0.01)
        assert len(recorder.batches) == 3 and b.depth == 0  # two batches in flight
        # (in flight + queued + asked) x per-item / concurrency: 2 ahead, then 3 with one more.
        assert b.expected_wait_s(1) == pytest.approx(1.5 * b.expected_wait_s(0))
        assert b.expected_wait_s(0) > 0
        recorder.gate.set()
        assert await asyncio.gather(*running) == [4, 6]
    finally:
        await b.close()


async def test_close_waits_for_batches_still_running() -> None:
    async def slow_for_odd(items: Sequence[int]) -> list[int]:
        await asyncio.sleep(0.3 if items[0] % 2 else 0.02)
        return [2 * item for item in items]

    b: MicroBatcher[int, int] = MicroBatcher(
        slow_for_odd, max_batch_size=1, max_batch_delay_s=0.0, max_queue=8,
        max_concurrent_batches=2,
    )
    b.start()
    tasks = [asyncio.ensure_future(b.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0.01)  # both running, on two slots; 2 ends first and frees a slot
    await b.close()
    assert all(t.done() for t in tasks) and [t.result() for t in tasks] == [2, 4]


async def test_the_wait_estimate_is_a_moving_average_per_item() -> None:
    """Per item of each successful batch, 0.8 old + 0.2 new: 2 items in 0.2 s (0.1 each),
    then 1 item in 0.5 s, give 0.8 x 0.1 + 0.2 x 0.5 = 0.18 s per item."""

    async def timed(items: Sequence[float]) -> list[float]:
        await asyncio.sleep(items[0])
        return list(items)

    b: MicroBatcher[float, float] = MicroBatcher(
        timed, max_batch_size=2, max_batch_delay_s=0.05, max_queue=8
    )
    b.start()
    try:
        assert b.expected_wait_s() == 0.0
        await asyncio.gather(b.submit(0.2), b.submit(0.2))
        assert b.expected_wait_s() == pytest.approx(0.1 + 0.025, abs=0.03)
        await b.submit(0.5)
        # Scheduling delays only lengthen batches: a little above 0.18, never below.
        assert 0.17 <= b.expected_wait_s() <= 0.25, b.expected_wait_s()
        assert b.expected_wait_s(2) == pytest.approx(2 * b.expected_wait_s())
    finally:
        await b.close()
