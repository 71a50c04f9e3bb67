"""The embedded backend's engines on a tiny ONNX model: which one `CA_EMBEDDED_RUNTIME`
picks and when it falls back, how each is configured and warmed up, which variant (lone
or concurrent) a batch runs on, and that concurrent calls never mix answers up."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from service.errors import ContractError
from service.gateway.backends import engine as engine_mod
from service.gateway.backends.embedded import EmbeddedBackend
from service.gateway.backends.engine import (
    ENGINES,
    EngineConfig,
    EngineName,
    EngineUnavailable,
    load_engine,
    stream_layout,
)
from service.gateway.backends.onnxruntime_engine import OnnxRuntimeEngine, open_session
from service.gateway.backends.onnxruntime_engine import tensors as ort_tensors
from service.gateway.backends.openvino_engine import OpenVinoEngine, compile_options
from service.gateway.backends.openvino_engine import tensors as ov_tensors
from service.gateway.settings import available_cores
from service.spec import ModelSpec
from tests.support.gateway import TINY_MODEL

SPEC = ModelSpec(name=TINY_MODEL, num_classes=10)


def model_path(repository: Path) -> Path:
    return repository / TINY_MODEL / "1" / "model.onnx"


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 224, 224, 3), dtype=np.uint8)


def test_both_engines_describe_the_model_alike(tiny_repository: Path) -> None:
    # One contract check reads both; it only works if they report tensors the same way.
    config = EngineConfig()
    ov_engine = OpenVinoEngine.load(model_path(tiny_repository), SPEC, config)
    ort_engine = OnnxRuntimeEngine.load(model_path(tiny_repository), SPEC, config)
    assert ov_engine._streams is not None and ort_engine._lone is not None
    described = ov_tensors(ov_engine._streams.compiled)
    assert described == ort_tensors(ort_engine._lone)
    (image,), (probs,) = described
    assert (image.name, image.dtype, image.shape) == ("IMAGE", "uint8", (None, 224, 224, 3))
    assert (probs.name, probs.dtype, probs.shape) == ("PROBS", "float32", (None, 10))


async def test_auto_serves_openvino_where_installed(tiny_repository: Path) -> None:
    backend = EmbeddedBackend(model_path(tiny_repository), SPEC, version="1", threads=1)
    await backend.start()
    try:
        assert backend.runtime == "auto" and backend.engine == "openvino"
    finally:
        await backend.close()


async def test_auto_falls_back_to_onnxruntime_without_openvino(
    tiny_repository: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engine_mod, "openvino_installed", lambda: False)
    backend = EmbeddedBackend(model_path(tiny_repository), SPEC, version="1", threads=1)
    with caplog.at_level(logging.WARNING, logger="ca.gateway.backend.embedded"):
        await backend.start()
    try:
        assert backend.engine == "onnxruntime"
        assert "OpenVINO not used (the openvino package is not installed)" in caplog.text
    finally:
        await backend.close()


async def test_auto_falls_back_when_openvino_cannot_compile_the_model(
    tiny_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object) -> OpenVinoEngine:
        raise EngineUnavailable("RuntimeError: unsupported operation")

    monkeypatch.setattr(OpenVinoEngine, "load", refuse)
    assert load_engine("auto", model_path(tiny_repository), SPEC, EngineConfig()).name == (
        "onnxruntime"
    )


async def test_a_named_engine_that_cannot_run_refuses_to_start(
    tiny_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_mod, "openvino_installed", lambda: False)
    backend = EmbeddedBackend(
        model_path(tiny_repository), SPEC, version="1", threads=1, runtime="openvino"
    )
    with pytest.raises(ContractError, match=r"CA_EMBEDDED_RUNTIME=openvino: .*not installed"):
        await backend.start()
    await backend.close()


def test_a_model_openvino_cannot_read_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx graph")
    with pytest.raises(EngineUnavailable):
        OpenVinoEngine.load(broken, SPEC, EngineConfig())


def test_openvino_compiles_unpinned_fp32_streams(tiny_repository: Path) -> None:
    engine = OpenVinoEngine.load(
        model_path(tiny_repository), SPEC, EngineConfig(threads=2, streams=2)
    )
    assert engine._lone is not None and engine._streams is not None
    lone, streams = engine._lone.compiled, engine._streams.compiled
    # f32 always, asked for explicitly: OpenVINO would pick bf16 on CPUs with AMX or
    # AVX-512 BF16 (on others f32 is its default, so the property alone would not tell).
    assert compile_options(2, 2)["INFERENCE_PRECISION_HINT"] == "f32"
    for compiled in (lone, streams):
        assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
        assert compiled.get_property("ENABLE_CPU_PINNING") is False
    assert (lone.get_property("NUM_STREAMS"), lone.get_property("INFERENCE_NUM_THREADS")) == (1, 2)
    assert (streams.get_property("NUM_STREAMS"),
            streams.get_property("INFERENCE_NUM_THREADS")) == (2, 2)  # one thread per stream
    assert len(engine._lone.requests) == 1 and len(engine._streams.requests) == 2
    # The lone model takes one image (one shape, less memory); the streams any batch.
    assert ov_tensors(lone)[0][0].shape == (1, 224, 224, 3)
    assert ov_tensors(streams)[0][0].shape == (None, 224, 224, 3)


@pytest.mark.parametrize(("threads", "streams", "layout"), [
    (2, 3, (2, 2)), (1, 3, (1, 1)), (4, 2, (2, 2)), (4, 1, (1, 4)),
])
def test_openvino_runs_at_most_one_stream_per_thread_and_queues_the_other_batches(
    tiny_repository: Path, threads: int, streams: int, layout: tuple[int, int]
) -> None:
    """Batches beyond the streams get infer requests of their own and wait inside
    OpenVINO, never more threads than `threads` (a pod's CPU quota, not the node's)."""
    config = EngineConfig(threads=threads, streams=streams)
    assert stream_layout(config) == layout
    engine = OpenVinoEngine.load(model_path(tiny_repository), SPEC, config)
    assert engine._streams is not None and len(engine._streams.requests) == streams
    compiled = engine._streams.compiled
    if layout[1] <= available_cores():  # OpenVINO itself caps streams at the cores
        assert (compiled.get_property("NUM_STREAMS"),
                compiled.get_property("INFERENCE_NUM_THREADS")) == layout


@pytest.mark.parametrize("engine", ENGINES)
async def test_spare_batches_queue_inside_openvino_and_are_refused_on_onnxruntime(
    tiny_repository: Path, engine: EngineName
) -> None:
    """A spare batch is one infer request more on OpenVINO's same two single-thread
    streams; ONNX Runtime would run it at once on a third thread, so it takes none."""
    backend = EmbeddedBackend(model_path(tiny_repository), SPEC, version="1", threads=2,
                              streams=2, spare_batches=1, runtime=engine)
    await backend.start()
    try:
        assert backend.spare_batches == (1 if engine == "openvino" else 0)
        loaded = backend._engine
        if isinstance(loaded, OpenVinoEngine):
            assert loaded._streams is not None and len(loaded._streams.requests) == 3
            assert loaded._streams.compiled.get_property("NUM_STREAMS") == min(
                2, available_cores())
        # Three batches at once (two streams and the spare) answer each its own images.
        batches = [images(1, seed) for seed in (1, 2, 3)]
        alone = [await backend.infer(batch) for batch in batches]
        together = await asyncio.gather(*(backend.infer(batch) for batch in batches))
        for one, other in zip(alone, together, strict=True):
            np.testing.assert_allclose(one, other, atol=1e-5)
    finally:
        await backend.close()


@pytest.mark.parametrize(("threads", "streams", "lone"), [(1, 3, False), (4, 1, False),
                                                           (2, 2, True)])
def test_openvino_compiles_a_lone_model_only_where_it_helps(
    tiny_repository: Path, threads: int, streams: int, lone: bool
) -> None:
    engine = OpenVinoEngine.load(
        model_path(tiny_repository), SPEC, EngineConfig(threads=threads, streams=streams)
    )
    assert (engine._lone is not None) is lone
    assert engine._streams is not None and len(engine._streams.requests) == streams


def test_openvino_runs_a_lone_single_image_on_every_thread_and_the_rest_on_streams(
    tiny_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = OpenVinoEngine.load(
        model_path(tiny_repository), SPEC, EngineConfig(threads=2, streams=2)
    )
    assert engine._lone is not None and engine._streams is not None
    lone_requests = {id(r) for r in engine._lone.requests}
    used: list[tuple[bool, int]] = []
    real = OpenVinoEngine._infer

    def recording(self: OpenVinoEngine, request: ov.InferRequest, batch: np.ndarray) -> object:
        used.append((id(request) in lone_requests, len(batch)))
        return real(self, request, batch)

    monkeypatch.setattr(OpenVinoEngine, "_infer", recording)
    one, three = images(1), images(3)
    answers = [engine.run(one, lone=True), engine.run(one, lone=False),
               engine.run(three, lone=True), engine.run(three, lone=False)]
    assert used == [(True, 1), (False, 1), (False, 3), (False, 3)]
    np.testing.assert_allclose(answers[0], answers[1], atol=1e-6)
    np.testing.assert_allclose(answers[2], answers[3], atol=1e-6)


def test_openvino_warms_every_batch_size_before_ready(
    tiny_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[tuple[int, int]] = []
    real = OpenVinoEngine._infer

    def recording(self: OpenVinoEngine, request: ov.InferRequest, batch: np.ndarray) -> object:
        runs.append((id(request), len(batch)))
        return real(self, request, batch)

    monkeypatch.setattr(OpenVinoEngine, "_infer", recording)
    engine = OpenVinoEngine.load(
        model_path(tiny_repository), SPEC, EngineConfig(threads=2, streams=2, warm_up_batch=3)
    )
    assert engine._lone is not None and engine._streams is not None
    (lone,), (first, second) = engine._lone.requests, engine._streams.requests
    # Each stream's request every size, largest first; the lone one the one size it takes.
    for request in (first, second):
        assert [size for r, size in runs if r == id(request)] == [3, 2, 1]
    assert [size for r, size in runs if r == id(lone)] == [1]
    assert len(runs) == 7


def test_onnxruntime_warms_each_session_with_the_largest_batch(
    tiny_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[tuple[int, int]] = []
    real = OnnxRuntimeEngine._run

    def recording(self: OnnxRuntimeEngine, session: object, batch: np.ndarray) -> object:
        runs.append((id(session), len(batch)))
        return real(self, session, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(OnnxRuntimeEngine, "_run", recording)
    OnnxRuntimeEngine.load(
        model_path(tiny_repository), SPEC, EngineConfig(threads=2, streams=2, warm_up_batch=3)
    )
    # The lone-batch session and the single-threaded one, each run once before ready.
    assert [size for _, size in runs] == [3, 3] and len({s for s, _ in runs}) == 2


def test_onnxruntime_sessions_run_without_memory_patterns(tiny_repository: Path) -> None:
    # Patterns made RSS creep under traffic (see `open_session`).
    session = open_session(model_path(tiny_repository), threads=1, spinning=False)
    assert session.get_session_options().enable_mem_pattern is False


@pytest.mark.parametrize("runtime", ENGINES)
def test_concurrent_streams_never_mix_answers(tiny_repository: Path, runtime: EngineName) -> None:
    engine = load_engine(
        runtime, model_path(tiny_repository), SPEC, EngineConfig(threads=2, streams=3)
    )
    batches = [images(1 + i % 4, seed=i) for i in range(12)]
    expected = [engine.run(batch, lone=True) for batch in batches]
    failures: list[str] = []

    def stream(offset: int) -> None:
        for round_ in range(10):
            index = (offset + round_) % len(batches)
            got = engine.run(batches[index], lone=offset == 0 and round_ % 3 == 0)
            if not np.allclose(got, expected[index], atol=1e-6):
                failures.append(f"stream {offset}, batch {index}")

    threads = [threading.Thread(target=stream, args=(offset,)) for offset in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


class RecordingEngine:
    """Wraps an engine and records the `lone` flag of every call."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name = "openvino"
        self.calls: list[bool] = []
        self.gate = threading.Event()

    def run(self, batch: np.ndarray, *, lone: bool) -> np.ndarray:
        self.calls.append(lone)
        self.gate.wait(5)
        return self.inner.run(batch, lone=lone)  # type: ignore[attr-defined,no-any-return]

    def close(self) -> None:
        pass


async def calls_reach(recording: RecordingEngine, count: int) -> None:
    for _ in range(5000):
        if len(recording.calls) >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"only {len(recording.calls)} calls")


async def test_a_batch_runs_lone_only_on_an_idle_machine(tiny_repository: Path) -> None:
    backend = EmbeddedBackend(
        model_path(tiny_repository), SPEC, version="1", threads=2, streams=2
    )
    await backend.start()
    recording = RecordingEngine(backend._engine)
    backend._engine = recording  # type: ignore[assignment]
    try:
        recording.gate.set()
        await backend.infer(images(1))
        preprocessing = 1
        backend.set_cpu_jobs_probe(lambda: preprocessing)
        await backend.infer(images(1))
        preprocessing = 0
        recording.gate.clear()  # the first batch holds its stream while the second starts
        first = asyncio.ensure_future(backend.infer(images(2)))
        await calls_reach(recording, 3)
        second = asyncio.ensure_future(backend.infer(images(2)))
        await calls_reach(recording, 4)
        recording.gate.set()
        await asyncio.gather(first, second)
        # idle: lone; beside preprocessing: one thread; then alone, then beside it.
        assert recording.calls == [True, False, True, False]
    finally:
        await backend.close()
