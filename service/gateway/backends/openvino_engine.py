"""The OpenVINO engine: the embedded backend's default where the `openvino` wheel exists.

OpenVINO reads the repository's ONNX file as it is (no rewrite: its own graph compiler
keeps coordinate attention in its blocked layout, and the ONNX Runtime rewrite makes it
slower, docs/performance.md). Two compiled models of one graph mirror ONNX Runtime's two
sessions:

- lone: one stream of `threads` threads, for a batch that runs alone;
- streams: `streams` streams of one thread each, one infer request per stream, for
  batches that run beside others.

Each call takes an idle infer request of its compiled model and runs it synchronously on
the calling thread's behalf (the backend's executor threads), so the event loop never
blocks. Pinning is off: with pinned threads two concurrent single-thread streams did not
scale, and a process sharing its cores with preprocessing threads must let the OS place
them. Precision is pinned to f32: on CPUs with AMX or AVX-512 BF16 OpenVINO's default is
bf16, which would move probabilities by ~1e-2.
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
    """A compiled model and its idle infer requests (one per stream)."""

    def __init__(self, compiled: ov.CompiledModel, requests: int) -> None:
        self.compiled = compiled
        self.idle: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()
        self.requests = [compiled.create_infer_request() for _ in range(requests)]
        for request in self.requests:
            self.idle.put(request)


class OpenVinoEngine:
    """The served ONNX graph compiled by OpenVINO for the CPU."""

    name: EngineName = "openvino"

    def __init__(self, lone: _Compiled, streams: _Compiled, spec: ModelSpec,
                 config: EngineConfig) -> None:
        self._lone: _Compiled | None = lone
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

            def compile_for(threads: int, streams: int) -> _Compiled:
                options = compile_options(threads, streams)
                return _Compiled(core.compile_model(model, "CPU", options), streams)

            if config.streams == 1:
                lone = streams = compile_for(config.threads, 1)
            elif config.threads == 1:  # every batch on one thread: one model, many streams
                lone = streams = compile_for(config.streams, config.streams)
            else:
                lone = compile_for(config.threads, 1)
                streams = compile_for(config.streams, config.streams)
        except EngineUnavailable:
            raise
        except Exception as exc:  # the runtime's own errors: an op it cannot compile, ...
            raise EngineUnavailable(f"{type(exc).__name__}: {exc}") from exc
        check_contract(*tensors(lone.compiled), spec)
        engine = cls(lone, streams, spec, config)
        # OpenVINO keeps memory per batch shape it has seen (compiled kernels per model,
        # buffers per request): each model runs every batch size once and each request the
        # largest, so that memory is taken at start rather than during traffic.
        batches = warm_up_batches(spec, config.warm_up_batch)
        for compiled in {id(lone): lone, id(streams): streams}.values():
            first, *others = compiled.requests
            for batch in batches:
                engine._infer(first, batch)
            for request in others:
                engine._infer(request, batches[0])
        return engine

    def run(self, batch: NDArray[np.uint8], *, lone: bool) -> NDArray[np.float32]:
        compiled = self._lone if lone else self._streams
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
