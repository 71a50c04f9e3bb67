"""The micro-batcher alone: a fake async batch function, no HTTP, no model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from service.gateway.batching import (
    BatcherClosedError,
    BatchSizeMismatchError,
    MicroBatcher,
    QueueFullError,
)


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


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


async def make(recorder: Recorder, **kwargs: float) -> MicroBatcher[int, int]:
    options = {"max_batch_size": 4, "max_batch_delay_s": 0.02, "max_queue": 64} | kwargs
    batcher: MicroBatcher[int, int] = MicroBatcher(recorder, **options)  # type: ignore[arg-type]
    batcher.start()
    return batcher


@pytest.fixture
async def batcher(recorder: Recorder) -> AsyncIterator[MicroBatcher[int, int]]:
    b = await make(recorder)
    yield b
    await b.close()


async def test_each_caller_gets_its_own_result(
    batcher: MicroBatcher[int, int], recorder: Recorder
) -> None:
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [2 * i for i in range(10)]
    assert all(len(b) <= 4 for b in recorder.batches)
    assert sorted(x for b in recorder.batches for x in b) == list(range(10))
    assert len(recorder.batches) == 3  # 4 + 4 + 2: concurrent items share batches


async def test_batch_closes_at_max_batch_size_without_waiting(recorder: Recorder) -> None:
    b = await make(recorder, max_batch_delay_s=10.0)
    try:
        results = await asyncio.wait_for(asyncio.gather(*(b.submit(i) for i in range(4))), 2.0)
        assert results == [0, 2, 4, 6] and recorder.batches == [[0, 1, 2, 3]]
    finally:
        await b.close()


async def test_window_starts_with_first_item(recorder: Recorder) -> None:
    b = await make(recorder, max_batch_delay_s=0.2)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(b.submit(2))
        assert await first == 2 and await second == 4
        elapsed = loop.time() - start
        assert recorder.batches == [[1, 2]]
        assert 0.15 <= elapsed < 1.0
    finally:
        await b.close()


async def test_zero_delay_runs_a_lone_item_at_once(recorder: Recorder) -> None:
    b = await make(recorder, max_batch_delay_s=0.0)
    try:
        assert await asyncio.wait_for(b.submit(3), 1.0) == 6
    finally:
        await b.close()


async def test_queue_full_fails_fast(recorder: Recorder) -> None:
    recorder.gate = asyncio.Event()
    b = await make(recorder, max_batch_size=1, max_queue=2, max_batch_delay_s=0.0)
    try:
        running = asyncio.ensure_future(b.submit(0))  # taken by the worker, blocked on gate
        await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        assert b.depth == 2
        with pytest.raises(QueueFullError, match=r"queue full \(2 waiting\)"):
            await b.submit(3)
        recorder.gate.set()
        assert await running == 0 and [await q for q in queued] == [2, 4]
    finally:
        await b.close()


async def test_timeout_raises_and_batch_mates_still_answered(recorder: Recorder) -> None:
    recorder.delay_s = 0.2
    b = await make(recorder)
    try:
        slow = asyncio.ensure_future(b.submit(1, timeout_s=0.05))
        patient = asyncio.ensure_future(b.submit(2))
        with pytest.raises(TimeoutError):
            await slow
        assert await patient == 4
    finally:
        await b.close()


async def test_default_timeout_from_constructor(recorder: Recorder) -> None:
    recorder.delay_s = 0.3
    b = await make(recorder, timeout_s=0.05)
    try:
        with pytest.raises(TimeoutError):
            await b.submit(1)
    finally:
        await b.close()


async def test_cancelled_items_are_dropped_before_the_batch_runs(recorder: Recorder) -> None:
    b = await make(recorder, max_batch_delay_s=0.1)
    try:
        gone = asyncio.ensure_future(b.submit(7))
        kept = asyncio.ensure_future(b.submit(8))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while the window was open
        assert await kept == 16
        assert recorder.batches == [[8]]
        assert gone.cancelled()
    finally:
        await b.close()


async def test_cancel_during_the_batch_does_not_disturb_batch_mates(recorder: Recorder) -> None:
    recorder.gate = asyncio.Event()
    b = await make(recorder)
    try:
        tasks = [asyncio.ensure_future(b.submit(i)) for i in range(3)]
        await asyncio.sleep(0.05)
        assert recorder.batches == [[0, 1, 2]]
        tasks[1].cancel()
        recorder.gate.set()
        assert await tasks[0] == 0 and await tasks[2] == 4
        assert tasks[1].cancelled()
    finally:
        await b.close()


async def test_batch_failure_reaches_every_caller_of_that_batch_only(recorder: Recorder) -> None:
    b = await make(recorder, max_batch_size=2)
    try:
        recorder.fail_with = RuntimeError("backend down")
        failing = [asyncio.ensure_future(b.submit(i)) for i in range(2)]
        for task in failing:
            with pytest.raises(RuntimeError, match="backend down"):
                await task
        recorder.fail_with = None
        assert await b.submit(5) == 10  # the batcher keeps working
    finally:
        await b.close()


async def test_output_count_is_checked(recorder: Recorder) -> None:
    recorder.drop_last = True
    b = await make(recorder)
    try:
        results = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        assert all(isinstance(r, BatchSizeMismatchError) for r in results)
        assert str(results[0]) == "batch function returned 1 outputs for 2 inputs"
    finally:
        await b.close()


async def test_close_finishes_queued_items_then_refuses(recorder: Recorder) -> None:
    recorder.delay_s = 0.02
    b = await make(recorder, max_batch_size=2)
    tasks = [asyncio.ensure_future(b.submit(i)) for i in range(7)]
    await asyncio.sleep(0)
    await b.close()
    assert [t.result() for t in tasks] == [2 * i for i in range(7)]
    with pytest.raises(BatcherClosedError, match="not running"):
        await b.submit(1)
    assert b.closed


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


@pytest.mark.parametrize(
    "bad",
    [{"max_batch_size": 0}, {"max_queue": 0}, {"max_concurrent_batches": 0}],
    ids=["batch", "queue", "concurrency"],
)
def test_rejects_bad_configuration(recorder: Recorder, bad: dict[str, int]) -> None:
    options = {"max_batch_size": 1, "max_batch_delay_s": 0.0, "max_queue": 1} | bad
    message = r"^max_batch_size, max_queue and max_concurrent_batches must be >= 1$"
    with pytest.raises(ValueError, match=message):
        MicroBatcher(recorder, **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_batch_delay_s must be >= 0, got -1.0"):
        MicroBatcher(recorder, max_batch_size=1, max_batch_delay_s=-1.0, max_queue=1)
    with pytest.raises(ValueError, match=r"^spare_batches must be >= 0, got -1$"):
        MicroBatcher(recorder, max_batch_size=1, max_batch_delay_s=0.0, max_queue=1,
                     spare_batches=-1)


async def test_the_worker_task_is_named_for_task_dumps(recorder: Recorder) -> None:
    # An operator reading asyncio's task dump (or py-spy's) finds the batcher by name.
    b = await make(recorder)
    try:
        assert "micro-batcher" in {task.get_name() for task in asyncio.all_tasks()}
    finally:
        await b.close()


async def test_submit_before_start_is_refused(recorder: Recorder) -> None:
    b: MicroBatcher[int, int] = MicroBatcher(
        recorder, max_batch_size=1, max_batch_delay_s=0.0, max_queue=1
    )
    assert b.closed is False
    with pytest.raises(BatcherClosedError, match=r"^the batcher is not running$"):
        await b.submit(1)


async def test_a_batch_whose_callers_all_left_does_not_stop_the_worker(recorder: Recorder) -> None:
    b = await make(recorder, max_batch_delay_s=0.05)
    try:
        gone = asyncio.ensure_future(b.submit(7))
        await asyncio.sleep(0.01)
        gone.cancel()  # the only item of its batch
        await asyncio.sleep(0.1)
        assert recorder.batches == []
        assert await asyncio.wait_for(b.submit(8), 1.0) == 16
    finally:
        await b.close()


@pytest.mark.parametrize("batch_size", [1, 4])
async def test_depth_counts_only_callers_still_waiting(recorder: Recorder, batch_size: int) -> None:
    recorder.gate = asyncio.Event()
    b = await make(recorder, max_batch_size=batch_size, max_batch_delay_s=0.0)
    try:
        running = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(b.submit(i)) for i in (1, 2, 3, 4)]
        await asyncio.sleep(0)
        assert b.depth == 4
        queued[0].cancel()
        queued[2].cancel()
        await asyncio.sleep(0)
        assert b.depth == 2  # two callers left: their items no longer count
        recorder.gate.set()
        assert await running == 0
        assert await queued[1] == 4 and await queued[3] == 8
        assert b.depth == 0  # the abandoned items were dropped, and uncounted, on the way
        assert recorder.batches == ([[0], [2], [4]] if batch_size == 1 else [[0], [2, 4]])
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


async def test_the_batcher_reports_nothing_to_the_event_loop(recorder: Recorder) -> None:
    """Batches that succeed, fail, and lose their callers leave no error for the loop's
    exception handler (a broken callback or an unretrieved exception would)."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        b = await make(recorder, max_batch_size=2, max_concurrent_batches=2)
        assert await asyncio.gather(b.submit(1), b.submit(2)) == [2, 4]
        recorder.fail_with = RuntimeError("down")
        with pytest.raises(RuntimeError):
            await b.submit(3)
        recorder.fail_with = None
        gone = asyncio.ensure_future(b.submit(4))
        await asyncio.sleep(0)
        gone.cancel()
        assert await b.submit(5) == 10
        await b.close()
        await asyncio.sleep(0.01)
    finally:
        loop.set_exception_handler(previous)
    assert reported == []


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
