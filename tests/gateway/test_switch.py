"""`BackendSwitch` alone, with scripted backends: a swap sends every batch that starts
after it to the new backend, lets batches already running finish on the old one, and
closes the old one only after its last batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from service.errors import BackendUnavailable
from service.gateway.backends import ModelId, TopK, top_k_from_probs
from service.gateway.backends.switch import BackendSwitch

BATCH = np.zeros((2, 4, 4, 3), dtype=np.uint8)


class Scripted:
    """A backend whose calls wait for `release` and fail once it is closed (as a closed
    ONNX Runtime session or Triton channel would)."""

    name = "embedded"
    engine = "onnxruntime"

    def __init__(self, version: str) -> None:
        self.version = version
        self.release = asyncio.Event()
        self.started = 0
        self.closed = False
        self.closed_while_running = False
        self.running = 0
        self.probe: Callable[[], int] | None = None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True
        self.closed_while_running |= self.running > 0

    def set_cpu_jobs_probe(self, probe: Callable[[], int]) -> None:
        self.probe = probe

    def ready(self) -> bool:
        return not self.closed

    def status(self) -> str:
        return f"v{self.version}"

    def model_id(self) -> ModelId:
        return ModelId("m", self.version)

    async def infer(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        self.started += 1
        self.running += 1
        try:
            await self.release.wait()
            if self.closed:
                raise BackendUnavailable(f"v{self.version} was closed under a running batch")
            return np.full((len(batch), 3), float(self.version), dtype=np.float32)
        finally:
            self.running -= 1

    async def top_k(self, batch: NDArray[np.uint8], k: int) -> TopK:
        top = top_k_from_probs(await self.infer(batch), k)
        return TopK(top.indices, top.scores, self.model_id())


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


async def test_running_batches_finish_on_the_old_backend_which_closes_after_the_last() -> None:
    old, new = Scripted("1"), Scripted("2")
    switch = BackendSwitch(old)
    running = [asyncio.ensure_future(switch.infer(BATCH)) for _ in range(2)]
    await until(lambda: old.running == 2)
    assert switch.swap(new) is old
    new.release.set()
    # Every batch from now on runs on the new backend, while the old still works.
    after = await switch.top_k(BATCH, 1)
    assert after.model == ModelId("m", "2") and switch.model_id().version == "2"
    retiring = asyncio.ensure_future(switch.retire(old))
    await asyncio.sleep(0.01)
    assert not old.closed, "closed while two of its batches were running"
    old.release.set()
    answers = await asyncio.gather(*running)
    await retiring
    assert [float(a[0, 0]) for a in answers] == [1.0, 1.0]
    assert old.closed and not old.closed_while_running and not new.closed
    assert switch.calls_on(old) == 0 and old.started == 2


async def test_retire_closes_at_once_when_nothing_runs_and_never_the_current() -> None:
    old, new = Scripted("1"), Scripted("2")
    switch = BackendSwitch(old)
    await switch.retire(old)  # current: untouched
    assert not old.closed
    switch.swap(new)
    await asyncio.wait_for(switch.retire(old), 1.0)
    assert old.closed


async def test_a_failed_call_still_counts_down() -> None:
    old, new = Scripted("1"), Scripted("2")
    switch = BackendSwitch(old)
    old.closed = True  # its calls now fail
    old.release.set()
    with pytest.raises(BackendUnavailable):
        await switch.infer(BATCH)
    assert switch.calls_on(old) == 0
    switch.swap(new)
    await asyncio.wait_for(switch.retire(old), 1.0)


async def test_the_new_backend_gets_the_cpu_probe_and_reports_its_engine() -> None:
    old, new = Scripted("1"), Scripted("2")
    new.engine = "openvino"
    switch = BackendSwitch(old)
    switch.set_cpu_jobs_probe(lambda: 3)
    switch.swap(new)
    assert new.probe is not None and new.probe() == 3
    assert switch.engine == "openvino" and switch.name == "embedded"
    assert switch.status() == "v2" and switch.ready()


async def test_close_closes_the_current_and_the_retiring() -> None:
    old, new = Scripted("1"), Scripted("2")
    switch = BackendSwitch(old)
    running = asyncio.ensure_future(switch.infer(BATCH))
    await until(lambda: old.running == 1)
    switch.swap(new)
    await switch.close()  # shutdown: the batcher has drained; nothing waits any more
    assert old.closed and new.closed
    old.release.set()
    with pytest.raises(BackendUnavailable):
        await running
