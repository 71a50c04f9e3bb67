"""ONNX Runtime in the gateway's process: what `make run` serves.

Up to `streams` batches infer at once, each on its own executor thread, so inference never
blocks the event loop. A batch that runs alone uses a session with `threads` intra-op
threads (lowest latency under light load); a batch that starts while another is running
uses a single-threaded session and runs on its executor thread only. Under load that gives
one single-threaded ONNX Runtime stream per core: no intra-op barriers, no threads
spinning while a peer is descheduled, and the preprocessing threads get the cycles the
streams leave. Measured in docs/performance.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from service.errors import BackendUnavailable, ContractError
from service.gateway.backends import blocked_layout
from service.gateway.backends.base import ModelId, TopK, top_k_from_probs
from service.spec import ModelSpec

logger = logging.getLogger("ca.gateway.backend.embedded")


class EmbeddedBackend:
    """Serves `<repository>/<model>/<version>/model.onnx` with ONNX Runtime (CPU)."""

    name = "embedded"

    def __init__(
        self,
        model_path: Path,
        spec: ModelSpec,
        *,
        version: str,
        threads: int,
        streams: int = 1,
        spinning: bool = True,
        rewrite_graph: bool = True,
        warm_up_batch: int = 1,
    ) -> None:
        self.model_path = Path(model_path)
        self.rewrite_graph = rewrite_graph
        self.warm_up_batch = max(1, warm_up_batch)
        self.spec = spec
        self.threads = max(1, threads)
        self.streams = max(1, streams)
        self.spinning = spinning
        self._version = version
        self._session: ort.InferenceSession | None = None  # for a batch that runs alone
        self._single: ort.InferenceSession | None = None  # for concurrent batches
        self._busy = 0
        self._cpu_jobs: Callable[[], int] = lambda: 0
        self._executor = ThreadPoolExecutor(
            max_workers=self.streams, thread_name_prefix="ca-onnxruntime"
        )

    def set_cpu_jobs_probe(self, probe: Callable[[], int]) -> None:
        """`probe()` says how many other CPU jobs (preprocessing) are in flight now: a
        batch that starts beside them runs single-threaded, leaving them the other cores."""
        self._cpu_jobs = probe

    async def start(self) -> None:
        """Load the model and check it against the spec; raises `ContractError`."""
        if not self.model_path.is_file():
            raise ContractError(f"no ONNX model at {self.model_path}: build the repository first")
        loop = asyncio.get_running_loop()
        graph = await loop.run_in_executor(self._executor, self._read_graph)
        session = await loop.run_in_executor(self._executor, self._load, graph, self.threads)
        single: ort.InferenceSession | None = session
        if self.streams > 1 and self.threads > 1:
            single = await loop.run_in_executor(self._executor, self._load, graph, 1)
        self._single = single if self.streams > 1 else None
        self._session = session
        logger.info(
            "loaded %s: %d ONNX Runtime thread(s) for a lone batch, up to %d concurrent "
            "batches on 1 thread each, spinning %s, graph %s",
            self.model_path, self.threads, self.streams, "on" if self.spinning else "off",
            "rewritten for the blocked layout" if self.rewrite_graph else "as exported",
        )

    def _read_graph(self) -> bytes:
        if self.rewrite_graph:
            return blocked_layout.load_for_cpu(self.model_path)
        return self.model_path.read_bytes()

    def _load(self, graph: bytes, threads: int) -> ort.InferenceSession:
        session = open_session(graph, threads=threads, spinning=self.spinning)
        check_session_contract(session, self.spec)
        # One run of the largest batch grows ONNX Runtime's memory arena to its working
        # size now, not during traffic: a batch size first seen after hours of serving
        # would otherwise add its step to RSS then (and to that request's latency).
        zeros = np.zeros((self.warm_up_batch, *self.spec.input_shape), dtype=self.spec.dtype)
        self._run(session, zeros)
        return session

    async def close(self) -> None:
        self._session = None
        self._single = None
        self._executor.shutdown(wait=True)

    def ready(self) -> bool:
        return self._session is not None

    def status(self) -> str:
        return "ready" if self._session is not None else "model not loaded"

    def model_id(self) -> ModelId:
        return ModelId(self.spec.name, self._version)

    async def infer(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        session = self._session
        if session is None:
            raise BackendUnavailable("the model is not loaded")
        # Alone on an idle machine: the multi-threaded session. Beside another batch or
        # beside preprocessing: one thread, leaving the other cores to them.
        if self._single is not None and (self._busy or self._cpu_jobs()):
            session = self._single
        loop = asyncio.get_running_loop()
        self._busy += 1
        try:
            return await loop.run_in_executor(self._executor, self._run, session, batch)
        finally:
            self._busy -= 1

    async def top_k(self, batch: NDArray[np.uint8], k: int) -> TopK:
        top = top_k_from_probs(await self.infer(batch), k)
        return TopK(top.indices, top.scores, self.model_id())

    def _run(self, session: ort.InferenceSession, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        outputs = session.run([self.spec.output_name], {self.spec.input_name: batch})
        return np.asarray(outputs[0], dtype=np.float32)


def open_session(model: Path | bytes, *, threads: int, spinning: bool) -> ort.InferenceSession:
    """A CPU session configured as the gateway serves it (benchmarks measure this one).

    A path is read and rewritten as the gateway does by default (`blocked_layout`);
    bytes are served as they are.
    """
    graph = blocked_layout.load_for_cpu(model) if isinstance(model, Path) else model
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads spin waiting for work; on a small machine that burns the
    # cores preprocessing needs. Off, or at least stopped once each run completes.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    # No memory patterns: with them each run takes one block planned for its batch size,
    # and the arena kept growing under traffic (+45 to +87 MB from 1,000 to 10,000
    # requests with the rewritten graph); without them +2 to +14 MB, at the same speed
    # within 2%.
    options.enable_mem_pattern = False
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _dims(shape: list[Any]) -> list[int | None]:
    """ONNX Runtime shapes hold ints, symbolic names or None; keep the ints."""
    return [dim if isinstance(dim, int) else None for dim in shape]


def check_session_contract(session: ort.InferenceSession, spec: ModelSpec) -> None:
    """Raise `ContractError` unless the graph takes and returns what the spec says."""
    inputs = {node.name: node for node in session.get_inputs()}
    outputs = {node.name: node for node in session.get_outputs()}
    image = inputs.get(spec.input_name)
    if image is None:
        raise ContractError(f"model has no input {spec.input_name!r} (has {sorted(inputs)})")
    if image.type != f"tensor({spec.dtype})":
        raise ContractError(f"input {spec.input_name} is {image.type}, spec says {spec.dtype}")
    if _dims(image.shape)[1:] != list(spec.input_shape) or len(image.shape) != 4:
        raise ContractError(
            f"input {spec.input_name} has shape {image.shape}, spec says [N, *{spec.input_shape}]"
        )
    probs = outputs.get(spec.output_name)
    if probs is None:
        raise ContractError(f"model has no output {spec.output_name!r} (has {sorted(outputs)})")
    if probs.type != "tensor(float)":
        raise ContractError(f"output {spec.output_name} is {probs.type}, expected float32")
    if len(probs.shape) != 2 or _dims(probs.shape)[1] != spec.num_classes:
        raise ContractError(
            f"output {spec.output_name} has shape {probs.shape}, "
            f"spec says [N, {spec.num_classes}]"
        )
