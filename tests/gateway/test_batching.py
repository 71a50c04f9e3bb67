"""The micro-batcher alone: a fake async batch function, no HTTP, no model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.gateway.batching import (
    BatcherClosedError,
    BatchSizeMismatchError,
    MicroBatcher,
    QueueFullError,
)
from tests.support.batching import Recorder, make


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
