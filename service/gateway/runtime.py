"""What the app holds while it runs: model info, backend, batcher, thread pool, metrics;
and the classification pipeline that ties them together.

Preprocessing runs in the thread pool (bad images fail their own request before they
reach the queue); each image then goes through the micro-batcher as a `QueuedImage`, and
each batch is one backend call (`batch_call.py`) asking for the largest `k` in it, every
caller keeping its own first `k`.

The backend sits in a `BackendSwitch`, so another model version (`rollout.py`) can take
over between batches without a restart.

No web framework here: the HTTP layer hands in `Upload`s and turns the `service.errors`
raised back into answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import numpy as np
from numpy.typing import NDArray

from service.errors import (
    BackendUnavailable,
    Overloaded,
    RequestTimeout,
    ServiceError,
    ShuttingDown,
)
from service.gateway.backends import Backend, engine_of, spare_batches_of
from service.gateway.backends.switch import BackendSwitch
from service.gateway.batch_call import QueuedImage, Ranking, batch_function
from service.gateway.batching import (
    ADMISSION_HEADROOM,
    BatcherClosedError,
    MicroBatcher,
    QueueFullError,
)
from service.gateway.metrics import GatewayMetrics, multiprocess_dir
from service.gateway.modelinfo import ModelInfo, load_model_info
from service.gateway.rollout import Rollout
from service.gateway.settings import EffectiveSettings, Settings, resolve
from service.gateway.tracing import TRACING_OFF, Tracing
from service.gateway.version_check import Probe, start_sound_version
from service.preprocess import Preprocessor
from service.versions import Fingerprint

P = ParamSpec("P")
T = TypeVar("T")

#: The backend's spare batches stay off this long after a refusal: under overload the
#: cycles a stream idles between batches are what answers refusals quickly.
SPARE_OFF_AFTER_REFUSAL_S = 1.0


@dataclass(frozen=True)
class Upload:
    """One encoded image as a client sent it. `filename` is for messages and answers only
    (already sanitised by whoever parsed it), never a path."""

    data: bytes
    filename: str | None = None


#: An image for `Runtime.classify`: encoded bytes to preprocess, or a preprocessed uint8
#: array shaped `spec.input_shape` (C-contiguous or not; batches are stacked copies).
ImageInput = Upload | NDArray[np.uint8]


@dataclass
class Runtime:
    settings: Settings
    effective: EffectiveSettings
    model: ModelInfo
    backend: Backend
    metrics: GatewayMetrics
    pool: ThreadPoolExecutor
    batcher: MicroBatcher[QueuedImage, Ranking]
    preprocessor: Preprocessor
    tracing: Tracing = TRACING_OFF
    #: Changes the model version while serving; None when the backend was handed in.
    rollout: Rollout | None = None
    cpu_jobs: int = 0  # run_cpu calls in flight (queued or running in the pool)
    last_refusal: float = float("-inf")  # time.monotonic() of the last `Overloaded`
    _preprocess_s: float = 0.0  # moving average of one image's preprocessing time

    @classmethod
    async def start(
        cls,
        settings: Settings,
        metrics: GatewayMetrics,
        backend: Backend | None = None,
        *,
        tracing: Tracing = TRACING_OFF,
    ) -> Runtime:
        """Load the model info, start the backend (raises `ContractError`/`SpecError` on a
        model the gateway cannot serve: also one that does not answer as its
        `verification.json` records) and the batcher. Spans go to `tracing`. A backend the
        runtime builds itself can be changed to another model version while serving
        (`rollout`); a `backend` handed in (tests) serves as it is."""
        model = load_model_info(settings)
        effective = resolve(settings, model.spec)
        probe = Probe(model.spec, effective.max_batch_size)
        handed_in = backend is not None
        refused: dict[str, Fingerprint] = {}
        if backend is None:
            started = await start_sound_version(settings, effective, model, metrics, probe)
            backend, model, refused = started.backend, started.model, started.refused
        else:
            await backend.start()
        switch = BackendSwitch(backend)
        metrics.set_engine(engine_of(backend))
        batcher: MicroBatcher[QueuedImage, Ranking] = MicroBatcher(
            batch_function(
                switch, metrics, num_classes=model.spec.num_classes, tracing=tracing,
                model_name=model.spec.name,
            ),
            max_batch_size=effective.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000.0,
            max_queue=settings.max_queue,
            max_concurrent_batches=effective.concurrent_batches,
            spare_batches=spare_batches_of(backend),
            spare_allowed=lambda: runtime.spare_allowed(),  # asked once the batcher runs
        )
        runtime = cls(
            settings=settings,
            effective=effective,
            model=model,
            backend=switch,
            metrics=metrics,
            pool=ThreadPoolExecutor(effective.preprocess_threads, thread_name_prefix="ca-cpu"),
            batcher=batcher,
            preprocessor=Preprocessor(model.spec, settings.max_image_pixels),
            tracing=tracing,
        )
        if not handed_in:
            runtime.rollout = Rollout(
                settings, effective, model, switch, metrics, on_swap=runtime._serve_model,
                probe=probe, refused=refused,
            )
        if not multiprocess_dir():
            metrics.queue_depth.set_function(lambda: runtime.batcher.depth)
        if switch.ready():
            metrics.model_answered(switch.model_id())
        switch.set_cpu_jobs_probe(lambda: runtime.cpu_jobs)
        runtime.batcher.start()
        if runtime.rollout is not None:
            runtime.rollout.start_polling()
        return runtime

    def _serve_model(self, model: ModelInfo) -> None:
        # The rollout's new version takes traffic: what /v1/model and the v2 metadata say.
        self.model = model

    async def close(self) -> None:
        """Stop changing versions, finish every queued image, then release the backend
        and threads."""
        if self.rollout is not None:
            await self.rollout.close()
        await self.batcher.close()
        await self.backend.close()
        self.pool.shutdown(wait=True)

    async def run_cpu(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run CPU-bound `fn` in the preprocessing pool, off the event loop."""
        loop = asyncio.get_running_loop()
        self.cpu_jobs += 1
        try:
            return await loop.run_in_executor(self.pool, lambda: fn(*args, **kwargs))
        finally:
            self.cpu_jobs -= 1

    async def classify(self, uploads: Sequence[ImageInput], k: int) -> list[Ranking]:
        """Top-`k` rankings, one per image in order, within `request_timeout_s`; each
        names the model that computed it. An `Upload` is decoded and preprocessed first;
        an array is taken as preprocessed.

        Raises the upload's own `ServiceError` for a bad image, `BackendUnavailable` or
        `ShuttingDown` (fast, before any work), `Overloaded`, `RequestTimeout`.
        """
        if self.batcher.closed:
            raise ShuttingDown("the gateway is shutting down", retry_after_s=self._retry_after)
        if not self.backend.ready():
            raise BackendUnavailable(
                f"backend not ready: {self.backend.status()}", retry_after_s=self._retry_after
            )
        timeout = self.settings.request_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Shed before spending CPU on decoding when the answer would come too late.
        if self._would_shed(len(uploads)):
            raise self._overloaded()
        try:
            async with asyncio.timeout_at(deadline):
                images = await self._preprocess_all(uploads)
                return await self._infer_all(images, k, deadline)
        except TimeoutError:
            raise RequestTimeout(f"no answer within {timeout} s") from None

    def admit(self, images: int) -> None:
        """Raise `Overloaded` now if `images` more would be refused (`_would_shed`): the
        HTTP layer asks before it reads a body, so a refusal costs next to nothing."""
        if self._would_shed(images):
            raise self._overloaded()

    def expected_wait_s(self) -> float:
        """How long a request arriving now would wait before its own images are worked
        on: the preprocessing backlog ahead of it (images being decoded x recent decode
        time / threads), then the batcher's queue with those images in it (the batcher's
        estimate; once the backend keeps up, the backlog forms in the thread pool)."""
        behind = self.cpu_jobs
        pool_s = behind * self._preprocess_s / self.effective.preprocess_threads
        return pool_s + self.batcher.expected_wait_s(behind)

    def _would_shed(self, images: int) -> bool:
        """Admission, before any decoding: refuse when the batcher's queue would overflow,
        or when the estimated wait (`expected_wait_s`) exceeds the queue-wait budget
        (`max_queue_wait_s`) or `ADMISSION_HEADROOM` of the request timeout. With nothing
        queued and nothing being preprocessed it always admits, so a stale estimate can
        never shed every request."""
        behind = self.cpu_jobs
        if self.batcher.would_shed(None, images + behind):  # the queue is full
            return True
        if not behind and self.batcher.depth == 0:
            return False
        limit = min(self.settings.max_queue_wait_s,
                    ADMISSION_HEADROOM * self.settings.request_timeout_s)
        return self.expected_wait_s() > limit

    def spare_allowed(self) -> bool:
        """Whether the batcher may use the backend's spare batches now: not within
        `SPARE_OFF_AFTER_REFUSAL_S` of a refusal."""
        return time.monotonic() - self.last_refusal > SPARE_OFF_AFTER_REFUSAL_S

    def _overloaded(self) -> Overloaded:
        self.last_refusal = time.monotonic()
        return Overloaded(
            f"too busy to answer in time (wait budget {self.settings.max_queue_wait_s:g} s, "
            f"at most {self.settings.max_queue} images queued); retry shortly",
            retry_after_s=self._retry_after,
        )

    @property
    def _retry_after(self) -> int:
        return self.settings.retry_after_s

    def _preprocess_timed(self, data: bytes) -> NDArray[np.uint8]:
        start = time.perf_counter()
        try:
            return self.preprocessor(data)
        finally:
            took = time.perf_counter() - start
            self.metrics.preprocess_duration.observe(took)
            average = self._preprocess_s
            self._preprocess_s = 0.9 * average + 0.1 * took if average else took

    async def _preprocessed(self, image: ImageInput) -> NDArray[np.uint8]:
        if isinstance(image, Upload):
            with self.tracing.span("preprocess", {"ca.image.bytes": len(image.data)}):
                return await self.run_cpu(self._preprocess_timed, image.data)
        return image

    async def _preprocess_all(self, uploads: Sequence[ImageInput]) -> list[NDArray[np.uint8]]:
        results = await asyncio.gather(
            *(self._preprocessed(upload) for upload in uploads),
            return_exceptions=True,
        )
        images: list[NDArray[np.uint8]] = []
        for number, (upload, result) in enumerate(zip(uploads, results, strict=True), 1):
            if isinstance(result, ServiceError):
                if len(uploads) > 1:
                    filename = upload.filename if isinstance(upload, Upload) else None
                    name = f" ({filename})" if filename else ""
                    result.message = f"file {number}{name}: {result.message}"
                raise result
            if isinstance(result, BaseException):
                raise result
            images.append(result)
        return images

    async def _infer_all(
        self, images: list[NDArray[np.uint8]], k: int, deadline: float
    ) -> list[Ranking]:
        enqueued_at = time.perf_counter()
        budget = deadline - asyncio.get_running_loop().time()
        tasks = [
            asyncio.ensure_future(
                self._submit(
                    QueuedImage(image, k, enqueued_at, self.tracing.queue_wait(i)), budget
                )
            )
            for i, image in enumerate(images)
        ]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # a failed sibling must not leave the others queued
                task.cancel()
            raise

    async def _submit(self, item: QueuedImage, budget_s: float) -> Ranking:
        try:
            return await self.batcher.submit(item, budget_s=budget_s)
        except QueueFullError:
            raise self._overloaded() from None
        except BatcherClosedError:
            raise ShuttingDown(
                "the gateway is shutting down", retry_after_s=self._retry_after
            ) from None
        finally:
            if item.waiting is not None:
                item.waiting.abandon()  # a no-op once its batch started
            if multiprocess_dir():
                self.metrics.queue_depth.set(self.batcher.depth)
