"""The inference engines the embedded backend runs on: OpenVINO or ONNX Runtime.

An engine is one served ONNX model, loaded, checked against the spec and warmed up, that
runs a uint8 batch to float32 probabilities on the calling thread. The backend decides,
per batch, whether it runs `lone` (nothing else inferring or preprocessing: all
`threads` cores on one batch) or beside other work (one thread, so each core runs one
single-threaded stream); up to `streams` calls run at once. Both engines are pure
functions of the batch: same probabilities within float rounding, whatever the batch
size or the variant.

`load_engine` picks one: `openvino` where it is installed and compiles the model on the
CPU, `onnxruntime` otherwise (`auto`); naming one forces it. Each engine module imports
its runtime lazily, so a gateway on OpenVINO never loads ONNX Runtime or `onnx`.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from service.errors import ContractError
from service.spec import ModelSpec

logger = logging.getLogger("ca.gateway.backend.embedded")

EngineName = Literal["openvino", "onnxruntime"]
EngineChoice = Literal["auto", "openvino", "onnxruntime"]
#: Every engine name, in the order `auto` tries them (also the metric label values).
ENGINES: tuple[EngineName, ...] = ("openvino", "onnxruntime")


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (not installed, no CPU device, cannot compile the model)."""


@dataclass(frozen=True)
class EngineConfig:
    """How an engine runs: `threads` for a lone batch, up to `streams` concurrent
    single-threaded calls, warm-up up to `warm_up_batch` images. ONNX Runtime runs each
    call on its calling thread; OpenVINO runs them on at most `threads` single-thread
    streams of its own, queueing the rest, and takes `spare_batches` calls more that
    wait inside it for a stream. `spinning` and `rewrite_graph` apply to ONNX Runtime
    only."""

    threads: int = 1
    streams: int = 1
    spare_batches: int = 0
    warm_up_batch: int = 1
    spinning: bool = True
    rewrite_graph: bool = True


def stream_layout(config: EngineConfig) -> tuple[int, int]:
    """(streams, threads) OpenVINO runs every batch but a lone one on: one batch at a time
    takes every thread; otherwise one single-thread stream per inference thread, at most
    one per concurrent batch (batches beyond the streams queue inside OpenVINO)."""
    if config.streams == 1:
        return 1, config.threads
    streams = min(config.streams, config.threads)
    return streams, streams


class Engine(Protocol):
    """A loaded model. `run` blocks its calling thread and is safe to call from up to
    `config.streams` threads at once, of which at most one with `lone=True`."""

    name: EngineName
    #: Whether calls beyond its streams wait inside the engine (so `spare_batches` pay)
    #: rather than run at once and oversubscribe the cores.
    queues_spare_batches: bool

    def run(self, batch: NDArray[np.uint8], *, lone: bool) -> NDArray[np.float32]:
        """Probabilities `[N, num_classes]` for uint8 `[N, H, W, 3]`."""

    def close(self) -> None:
        """Release the compiled model and its memory."""


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the engine reports it: `dtype` a numpy name,
    `shape` with None for a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


def check_contract(
    inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], spec: ModelSpec
) -> None:
    """Raise `ContractError` unless the model takes `[N, *spec.input_shape]` of
    `spec.dtype` as `spec.input_name` and returns float32 `[N, num_classes]` as
    `spec.output_name`."""
    by_name = {tensor.name: tensor for tensor in inputs}
    image = by_name.get(spec.input_name)
    if image is None:
        raise ContractError(f"model has no input {spec.input_name!r} (has {sorted(by_name)})")
    if image.dtype != spec.dtype:
        raise ContractError(f"input {spec.input_name} is {image.dtype}, spec says {spec.dtype}")
    if len(image.shape) != 4 or list(image.shape[1:]) != list(spec.input_shape):
        raise ContractError(
            f"input {spec.input_name} has shape {list(image.shape)}, "
            f"spec says [N, *{spec.input_shape}]"
        )
    by_name = {tensor.name: tensor for tensor in outputs}
    probs = by_name.get(spec.output_name)
    if probs is None:
        raise ContractError(f"model has no output {spec.output_name!r} (has {sorted(by_name)})")
    if probs.dtype != "float32":
        raise ContractError(f"output {spec.output_name} is {probs.dtype}, expected float32")
    if len(probs.shape) != 2 or probs.shape[1] != spec.num_classes:
        raise ContractError(
            f"output {spec.output_name} has shape {list(probs.shape)}, "
            f"spec says [N, {spec.num_classes}]"
        )


def warm_up_batches(spec: ModelSpec, largest: int) -> list[NDArray[np.uint8]]:
    """Zeros of every batch size from `largest` down to 1: what each engine runs before
    it is ready, so memory for every batch size the batcher forms is taken at start, not
    after hours of traffic (ONNX Runtime's arena sizes itself on the largest; OpenVINO
    also keeps a little per batch size it has seen)."""
    zeros = np.zeros((max(1, largest), *spec.input_shape), dtype=spec.dtype)
    return [zeros[:size] for size in range(max(1, largest), 0, -1)]


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def load_engine(
    choice: EngineChoice, model_path: Path, spec: ModelSpec, config: EngineConfig
) -> Engine:
    """Load, check and warm up the engine `choice` names (blocking, seconds).

    `auto` takes OpenVINO when it is installed and compiles the model for the CPU, else
    ONNX Runtime, and logs why. Raises `ContractError` when the model breaks the spec,
    `EngineUnavailable` when a named engine cannot run here.
    """
    if choice in ("auto", "openvino"):
        try:
            return _load_openvino(model_path, spec, config)
        except EngineUnavailable as exc:
            if choice == "openvino":
                raise
            logger.warning("OpenVINO not used (%s): serving on ONNX Runtime", exc)
    from service.gateway.backends.onnxruntime_engine import OnnxRuntimeEngine

    return OnnxRuntimeEngine.load(model_path, spec, config)


def _load_openvino(model_path: Path, spec: ModelSpec, config: EngineConfig) -> Engine:
    if not openvino_installed():
        raise EngineUnavailable("the openvino package is not installed")
    from service.gateway.backends.openvino_engine import OpenVinoEngine

    return OpenVinoEngine.load(model_path, spec, config)
