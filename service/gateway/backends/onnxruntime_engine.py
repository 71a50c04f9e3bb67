"""The ONNX Runtime engine: the embedded backend's fallback where OpenVINO is missing.

Two sessions of one graph: `threads` intra-op threads for a batch that runs alone, and
one thread, shared by the concurrent streams (an ONNX Runtime session is safe to call
from several threads; two single-threaded calls never wait on each other's intra-op
barrier). The graph is rewritten at load for ONNX Runtime's blocked CPU layout
(`blocked_layout`, `rewrite_graph`), which pays on this engine only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from service.gateway.backends import blocked_layout
from service.gateway.backends.engine import (
    EngineConfig,
    EngineName,
    TensorInfo,
    check_contract,
    warm_up_batches,
)
from service.spec import ModelSpec

# ONNX Runtime's element types, as numpy names.
_DTYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(double)": "float64"}


class OnnxRuntimeEngine:
    """The served graph on ONNX Runtime's CPU provider."""

    name: EngineName = "onnxruntime"
    # A call beyond the streams would run at once: a third 1-thread run on two cores only
    # slowed the tail (docs/performance.md).
    queues_spare_batches = False

    def __init__(self, lone: ort.InferenceSession, single: ort.InferenceSession,
                 spec: ModelSpec, config: EngineConfig) -> None:
        self._lone: ort.InferenceSession | None = lone
        self._single: ort.InferenceSession | None = single
        self.spec = spec
        self.config = config

    @classmethod
    def load(cls, model_path: Path, spec: ModelSpec, config: EngineConfig) -> OnnxRuntimeEngine:
        """Open, check and warm up the sessions (raises `ContractError`)."""
        graph = (blocked_layout.load_for_cpu(model_path) if config.rewrite_graph
                 else model_path.read_bytes())
        lone = open_session(graph, threads=config.threads, spinning=config.spinning)
        check_contract(*tensors(lone), spec)
        single = lone
        if config.streams > 1 and config.threads > 1:
            single = open_session(graph, threads=1, spinning=config.spinning)
        engine = cls(lone, single, spec, config)
        # The arena grows to its working size now, not during traffic: a batch size first
        # seen after hours of serving would otherwise add its step to RSS then.
        for session in {id(lone): lone, id(single): single}.values():
            engine._run(session, warm_up_batches(spec, config.warm_up_batch)[0])
        return engine

    def run(self, batch: NDArray[np.uint8], *, lone: bool) -> NDArray[np.float32]:
        session = self._lone if lone else self._single
        if session is None:
            raise RuntimeError("the engine is closed")
        return self._run(session, batch)

    def _run(self, session: ort.InferenceSession, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        outputs = session.run([self.spec.output_name], {self.spec.input_name: batch})
        return np.asarray(outputs[0], dtype=np.float32)

    def close(self) -> None:
        self._lone = self._single = None


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


def _dims(shape: list[Any]) -> tuple[int | None, ...]:
    """ONNX Runtime shapes hold ints, symbolic names or None; keep the ints."""
    return tuple(dim if isinstance(dim, int) else None for dim in shape)


def tensors(session: ort.InferenceSession) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The session's inputs and outputs for `check_contract`."""

    def info(node: Any) -> TensorInfo:
        return TensorInfo(node.name, _DTYPES.get(node.type, node.type), _dims(node.shape))

    return ([info(node) for node in session.get_inputs()],
            [info(node) for node in session.get_outputs()])
