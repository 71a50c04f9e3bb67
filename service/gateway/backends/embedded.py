"""The model in the gateway's own process, on OpenVINO or ONNX Runtime: what `make run`
serves.

Up to `streams` batches infer at once, each on its own executor thread, so inference never
blocks the event loop. A batch that runs alone uses all `threads` cores (lowest latency
under light load); a batch that starts while another is running, or while images are
being preprocessed, runs on one thread. Under load that gives one single-threaded stream
per core: no intra-op barriers, no threads spinning while a peer is descheduled, and the
preprocessing threads get the cycles the streams leave. The engine (`engine.load_engine`)
is OpenVINO where installed, else ONNX Runtime. Measured in docs/performance.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from service.errors import BackendUnavailable, ContractError
from service.gateway.backends.base import ModelId, TopK, top_k_from_probs
from service.gateway.backends.engine import (
    Engine,
    EngineChoice,
    EngineConfig,
    EngineName,
    EngineUnavailable,
    load_engine,
    stream_layout,
)
from service.spec import ModelSpec

logger = logging.getLogger("ca.gateway.backend.embedded")


class EmbeddedBackend:
    """Serves `<repository>/<model>/<version>/model.onnx` on the CPU."""

    name = "embedded"

    def __init__(
        self,
        model_path: Path,
        spec: ModelSpec,
        *,
        version: str,
        threads: int,
        streams: int = 1,
        spare_batches: int = 0,
        runtime: EngineChoice = "auto",
        spinning: bool = True,
        rewrite_graph: bool = True,
        warm_up_batch: int = 1,
    ) -> None:
        self.model_path = Path(model_path)
        self.spec = spec
        self.runtime = runtime
        self.config = EngineConfig(
            threads=max(1, threads), streams=max(1, streams),
            spare_batches=max(0, spare_batches), warm_up_batch=max(1, warm_up_batch),
            spinning=spinning, rewrite_graph=rewrite_graph,
        )
        self._version = version
        self._engine: Engine | None = None
        self._busy = 0
        self._cpu_jobs: Callable[[], int] = lambda: 0
        self._executor = ThreadPoolExecutor(
            max_workers=self.config.streams + self.config.spare_batches,
            thread_name_prefix="ca-inference",
        )

    @property
    def engine(self) -> EngineName | None:
        """The engine serving ("openvino" or "onnxruntime"); None before `start()`."""
        return self._engine.name if self._engine is not None else None

    @property
    def spare_batches(self) -> int:
        """Batches the batcher may send beyond `streams` while nothing is refused: the
        configured spares on an engine that queues them inside itself, else 0."""
        engine = self._engine
        return self.config.spare_batches if engine and engine.queues_spare_batches else 0

    def set_cpu_jobs_probe(self, probe: Callable[[], int]) -> None:
        """`probe()` says how many other CPU jobs (preprocessing) are in flight now: a
        batch that starts beside them runs single-threaded, leaving them the other cores."""
        self._cpu_jobs = probe

    async def start(self) -> None:
        """Load the model on the chosen engine, check it against the spec and warm it up;
        raises `ContractError` (also when the named engine cannot run here)."""
        if not self.model_path.is_file():
            raise ContractError(f"no ONNX model at {self.model_path}: build the repository first")
        loop = asyncio.get_running_loop()
        try:
            engine = await loop.run_in_executor(
                self._executor, load_engine, self.runtime, self.model_path, self.spec, self.config
            )
        except EngineUnavailable as exc:  # the engine named cannot run here
            raise ContractError(f"CA_EMBEDDED_RUNTIME={self.runtime}: {exc}") from exc
        self._engine = engine
        config = self.config
        if engine.name == "onnxruntime":
            detail = (
                f", spinning {'on' if config.spinning else 'off'}, graph "
                f"{'rewritten for the blocked layout' if config.rewrite_graph else 'as exported'}"
            )
        else:
            streams, _ = stream_layout(config)
            queued = streams < config.streams  # OpenVINO queues batches beyond its streams
            detail = f", at most {streams} at once, the rest queued" if queued else ""
            if config.spare_batches:
                detail += f", {config.spare_batches} spare batch(es) queued while not refusing"
        logger.info(
            "loaded %s on %s: %d thread(s) for a lone batch, up to %d concurrent batches on "
            "1 thread each, warmed up to batch %d%s",
            self.model_path, engine.name, config.threads, config.streams, config.warm_up_batch,
            detail,
        )

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        self._executor.shutdown(wait=True)
        if engine is not None:
            engine.close()

    def ready(self) -> bool:
        return self._engine is not None

    def status(self) -> str:
        return f"ready ({self._engine.name})" if self._engine is not None else "model not loaded"

    def model_id(self) -> ModelId:
        return ModelId(self.spec.name, self._version)

    async def infer(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        engine = self._engine
        if engine is None:
            raise BackendUnavailable("the model is not loaded")
        # Alone on an idle machine: every thread. Beside another batch or beside
        # preprocessing: one thread, leaving the other cores to them.
        lone = not (self._busy or self._cpu_jobs())
        loop = asyncio.get_running_loop()
        self._busy += 1
        try:
            return await loop.run_in_executor(self._executor, self._run, engine, batch, lone)
        finally:
            self._busy -= 1

    @staticmethod
    def _run(engine: Engine, batch: NDArray[np.uint8], lone: bool) -> NDArray[np.float32]:
        return engine.run(batch, lone=lone)

    async def top_k(self, batch: NDArray[np.uint8], k: int) -> TopK:
        top = top_k_from_probs(await self.infer(batch), k)
        return TopK(top.indices, top.scores, self.model_id())
