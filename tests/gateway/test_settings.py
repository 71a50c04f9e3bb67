"""`resolve`: every "0 means default" and every cap applied in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.gateway.backends import build_backend
from service.gateway.backends.embedded import EmbeddedBackend
from service.gateway.backends.triton import TritonBackend
from service.gateway.modelinfo import load_model_info
from service.gateway.settings import TRITON_CONCURRENT_BATCHES, Settings, resolve
from service.spec import ModelSpec
from tests.support.gateway import TINY_MODEL

SPEC = ModelSpec(name="m", max_batch_size=8)


def test_defaults_follow_the_cores() -> None:
    effective = resolve(Settings(), SPEC, cores=6)
    assert effective.inference_threads == 6 and effective.preprocess_threads == 6
    # One ONNX Runtime stream, and so one batch in flight, per inference thread.
    assert effective.concurrent_batches == 6


def test_explicit_values_win_over_defaults() -> None:
    settings = Settings(inference_threads=1, preprocess_threads=3, max_concurrent_batches=2)
    effective = resolve(settings, SPEC, cores=6)
    assert (effective.inference_threads, effective.preprocess_threads) == (1, 3)
    assert effective.concurrent_batches == 2


def test_embedded_streams_follow_explicit_inference_threads() -> None:
    assert resolve(Settings(inference_threads=3), SPEC, cores=8).concurrent_batches == 3


def test_triton_keeps_a_fixed_number_of_batches_in_flight() -> None:
    effective = resolve(Settings(backend="triton"), SPEC, cores=16)
    assert effective.concurrent_batches == TRITON_CONCURRENT_BATCHES
    explicit = resolve(Settings(backend="triton", max_concurrent_batches=9), SPEC, cores=16)
    assert explicit.concurrent_batches == 9


@pytest.mark.parametrize(("asked", "served"), [(4, 4), (8, 8), (64, 8)])
def test_batch_size_is_capped_by_the_model(asked: int, served: int) -> None:
    assert resolve(Settings(max_batch_size=asked), SPEC, cores=2).max_batch_size == served


def test_cores_default_to_what_this_process_may_use() -> None:
    effective = resolve(Settings(), SPEC)
    assert effective.inference_threads >= 1 and effective.preprocess_threads >= 1


def test_backends_are_built_from_the_resolved_values(tiny_repository: Path) -> None:
    settings = Settings(
        model_repository=tiny_repository, model_name=TINY_MODEL, max_batch_size=1024,
        inference_threads=2, max_concurrent_batches=3, embedded_runtime="onnxruntime",
    )
    model = load_model_info(settings)
    effective = resolve(settings, model.spec, cores=5)
    embedded = build_backend(settings, model, effective)
    assert isinstance(embedded, EmbeddedBackend)
    config = embedded.config
    assert (config.threads, config.streams) == (2, 3) and embedded.runtime == "onnxruntime"
    assert config.warm_up_batch == model.spec.max_batch_size

    triton_settings = settings.model_copy(
        update={"backend": "triton", "triton_url": "127.0.0.1:9", "request_timeout_s": 2.5}
    )
    triton = build_backend(triton_settings, model, resolve(triton_settings, model.spec))
    assert isinstance(triton, TritonBackend)
    assert (triton.url, triton.timeout_s, triton.name) == ("127.0.0.1:9", 2.5, "triton")
