"""The OpenVINO engine: the embedded backend's default where the `openvino` wheel exists.

OpenVINO reads the repository's ONNX file as it is (no rewrite: its own graph compiler
keeps coordinate attention in its blocked layout, and the ONNX Runtime rewrite makes it
slower, docs/performance.md). Up to two compiled models of one graph:

- streams: one single-thread stream per inference thread (at most `streams` of them) and
  one infer request per concurrent batch (`streams`), any batch size; every batch runs
  here unless
- lone: one stream of `threads` threads, compiled for batch 1 only, takes a single image
  that runs alone (what an idle machine sees: batches only grow while a stream is busy).
  OpenVINO keeps ~20 MB per batch shape and stream it has run, so one fixed shape keeps
  this model small; a larger lone batch runs on a stream.

Each call takes an idle infer request of its compiled model and runs it synchronously on
the calling thread's behalf (the backend's executor threads), so the event loop never
blocks. Batches beyond the streams (spare batches, `CA_SPARE_BATCHES`, or
`CA_MAX_CONCURRENT_BATCHES` above `CA_INFERENCE_THREADS`) get infer requests of their
own and wait inside OpenVINO, so a stream starts the next the moment it finishes one,
without the round trip through Python that leaves each stream idle ~6% of the time under
full load (docs/performance.md). Pinning is off: with pinned threads two concurrent
single-thread streams did not scale, and a process sharing its cores with preprocessing
threads must let the OS place them. Precision is pinned to f32: on CPUs with AMX or AVX-512 BF16
OpenVINO's default is bf16, which would move probabilities by ~1e-2.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
from numpy.typing import NDArray

from service.gateway.backends.engine import (
    EngineConfig,
    EngineName,
    EngineUnavailable,
    TensorInfo,
    check_contract,
    stream_layout,
    warm_up_batches,
)
from service.spec import ModelSpec


def compile_options(threads: int, streams: int) -> dict[str, Any]:
    """CPU plugin properties for `streams` streams sharing `threads` threads."""
    return {
        "NUM_STREAMS": streams,
        "INFERENCE_NUM_THREADS": threads,
        "ENABLE_CPU_PINNING": False,
        "INFERENCE_PRECISION_HINT": "f32",
    }


class _Compiled:
    """A compiled model, its idle infer requests (one per batch it may run at once) and
    the largest batch it takes (`fixed_batch` when compiled for one size only)."""

    def __init__(self, compiled: ov.CompiledModel, requests: int,
                 fixed_batch: int | None = None) -> None:
        self.compiled = compiled
        self.fixed_batch = fixed_batch
        self.idle: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()
        self.requests = [compiled.create_infer_request() for _ in range(requests)]
        for request in self.requests:
            self.idle.put(request)

    def takes(self, size: int) -> bool:
        return self.fixed_batch is None or size == self.fixed_batch


def _compile(core: ov.Core, model: ov.Model, *, threads: int, streams: int, requests: int,
             fixed_batch: int | None = None) -> _Compiled:
    compiled = core.compile_model(model, "CPU", compile_options(threads, streams))
    return _Compiled(compiled, requests, fixed_batch)


class OpenVinoEngine:
    """The served ONNX graph compiled by OpenVINO for the CPU."""

    name: EngineName = "openvino"
    queues_spare_batches = True

    def __init__(self, lone: _Compiled | None, streams: _Compiled, spec: ModelSpec,
                 config: EngineConfig) -> None:
        self._lone = lone
        self._streams: _Compiled | None = streams
        self.spec = spec
        self.config = config

    @classmethod
    def load(cls, model_path: Path, spec: ModelSpec, config: EngineConfig) -> OpenVinoEngine:
        """Read, compile, check and warm up (raises `EngineUnavailable`, `ContractError`)."""
        try:
            core = ov.Core()
            if "CPU" not in core.available_devices:
                raise EngineUnavailable(f"no CPU device (has {core.available_devices})")
            model = core.read_model(str(model_path))
            native, threads = stream_layout(config)
            streams = _compile(core, model, threads=threads, streams=native,
                               requests=config.streams + config.spare_batches)
        except EngineUnavailable:
            raise
        except Exception as exc:  # the runtime's own errors: an op it cannot compile, ...
            raise EngineUnavailable(f"{type(exc).__name__}: {exc}") from exc
        check_contract(*tensors(streams.compiled), spec)
        lone = None
        if config.streams > 1 and config.threads > 1:
            try:
                model.reshape({spec.input_name: [1, *spec.input_shape]})
                lone = _compile(core, model, threads=config.threads, streams=1, requests=1,
                                fixed_batch=1)
            except Exception as exc:
                raise EngineUnavailable(f"{type(exc).__name__}: {exc}") from exc
        engine = cls(lone, streams, spec, config)
        # Every request runs every batch size it takes once: OpenVINO keeps memory per
        # shape and stream, so this is RSS taken at start rather than during traffic.
        batches = warm_up_batches(spec, config.warm_up_batch)
        for compiled in [streams] if lone is None else [streams, lone]:
            for request in compiled.requests:
                for batch in (b for b in batches if compiled.takes(len(b))):
                    engine._infer(request, batch)
        return engine

    def run(self, batch: NDArray[np.uint8], *, lone: bool) -> NDArray[np.float32]:
        compiled = self._streams
        if lone and self._lone is not None and self._lone.takes(len(batch)):
            compiled = self._lone
        if compiled is None:
            raise RuntimeError("the engine is closed")
        request = compiled.idle.get()
        try:
            return self._infer(request, batch)
        finally:
            compiled.idle.put(request)

    def _infer(self, request: ov.InferRequest, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        # share_inputs: the request reads the batch in place; outputs are copied out,
        # since the request's own buffer is reused by the next call.
        outputs = request.infer({self.spec.input_name: batch}, share_inputs=True)
        return np.asarray(outputs[self.spec.output_name], dtype=np.float32)

    def close(self) -> None:
        self._lone = self._streams = None


def tensors(compiled: ov.CompiledModel) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The compiled model's inputs and outputs for `check_contract` (one entry per name
    a tensor answers to)."""

    def infos(ports: list[Any]) -> list[TensorInfo]:
        found = []
        for port in ports:
            dtype = np.dtype(port.get_element_type().to_dtype()).name
            shape = tuple(dim.get_length() if dim.is_static else None
                          for dim in port.get_partial_shape())
            found += [TensorInfo(name, dtype, shape) for name in sorted(port.get_names())]
        return found

    return infos(compiled.inputs), infos(compiled.outputs)
