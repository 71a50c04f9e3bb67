"""`resolve`: every "0 means default" and every cap applied in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.gateway.backends import build_backend
from service.gateway.backends.embedded import EmbeddedBackend
from service.gateway.backends.triton import TritonBackend
from service.gateway.modelinfo import load_model_info
from service.gateway.settings import (
    EMBEDDED_BATCH_SIZE,
    TRITON_BATCH_SIZE,
    TRITON_CONCURRENT_BATCHES,
    Settings,
    resolve,
)
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


def test_embedded_keeps_one_spare_batch_and_triton_none() -> None:
    assert resolve(Settings(), SPEC, cores=2).spare_batches == 1
    assert resolve(Settings(spare_batches=0), SPEC, cores=2).spare_batches == 0
    # Triton queues on its own side: the gateway's concurrent batches are its pipeline.
    assert resolve(Settings(backend="triton", spare_batches=2), SPEC).spare_batches == 0


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
    assert config.spare_batches == effective.spare_batches == 1
    assert config.warm_up_batch == model.spec.max_batch_size

    triton_settings = settings.model_copy(
        update={"backend": "triton", "triton_url": "127.0.0.1:9", "request_timeout_s": 2.5}
    )
    triton = build_backend(triton_settings, model, resolve(triton_settings, model.spec))
    assert isinstance(triton, TritonBackend)
    assert (triton.url, triton.timeout_s, triton.name) == ("127.0.0.1:9", 2.5, "triton")
    # CA_MODEL_NAME and CA_MODEL_VERSION are what Triton is asked for; the batch is the
    # resolved one, which each Triton endpoint checks against the model's config.
    # Unpinned by default: Triton serves its newest loaded version.
    assert (triton.model, triton.version) == (TINY_MODEL, "")
    pinned = triton_settings.model_copy(update={"model_version": "1"})
    assert build_backend(pinned, model, resolve(pinned, model.spec)).version == "1"
    assert triton.max_batch_size == model.spec.max_batch_size


def test_each_backend_has_its_own_batch_size_default_capped_by_the_model() -> None:
    gpu_spec = ModelSpec(name="m", max_batch_size=128)
    assert resolve(Settings(), gpu_spec, cores=2).max_batch_size == EMBEDDED_BATCH_SIZE == 4
    triton = resolve(Settings(backend="triton"), gpu_spec, cores=2)
    assert (triton.max_batch_size, triton.concurrent_batches) == (TRITON_BATCH_SIZE, 4) == (32, 4)
    # The gateway can form every batch the model accepts when asked to, never more.
    assert resolve(Settings(backend="triton", max_batch_size=128), gpu_spec).max_batch_size == 128
    assert resolve(Settings(backend="triton", max_batch_size=256), gpu_spec).max_batch_size == 128
    assert resolve(Settings(backend="triton"), SPEC).max_batch_size == SPEC.max_batch_size


@pytest.mark.parametrize("variable", ["CA_TRITON_MODEL", "CA_TRITON_MODEL_VERSION"])
def test_the_removed_model_settings_refuse_to_start(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "ca_mobilenetv2_trt")
    with pytest.raises(ValueError, match=f"{variable} is no longer read: CA_MODEL_"):
        Settings()


def test_model_name_is_the_one_name_of_the_served_model(
    tiny_repository: Path, tmp_path: Path
) -> None:
    # Another directory holding a spec of another name: refused, not served under two names.
    import shutil

    from service.spec import SpecError

    shutil.copytree(tiny_repository / TINY_MODEL, tmp_path / "renamed")
    settings = Settings(model_repository=tmp_path, model_name="renamed")
    with pytest.raises(SpecError, match="names the model 'tiny_onnx', not 'renamed'"):
        load_model_info(settings)


def test_an_empty_model_version_reads_the_newest_version(
    tiny_repository: Path, tmp_path: Path
) -> None:
    import shutil

    model_dir = tmp_path / TINY_MODEL
    shutil.copytree(tiny_repository / TINY_MODEL, model_dir)
    shutil.copytree(model_dir / "1", model_dir / "10")
    (model_dir / "9").mkdir()
    settings = Settings(model_repository=tmp_path, model_name=TINY_MODEL, model_version="")
    model = load_model_info(settings)
    assert model.version == "10" and model.onnx_path == model_dir / "10" / "model.onnx"
    pinned = settings.model_copy(update={"model_version": "1"})
    assert load_model_info(pinned).version == "1"
