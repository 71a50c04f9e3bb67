"""The batching and queue settings of the Triton configs, and why they hold together."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as pb

from service.gateway.settings import Settings
from service.model import triton_config
from service.model.repository import model_specs
from service.model.tensorrt import opt_batch_size

KINDS = ("torchscript", "onnx", "tensorrt", "python_onnx")


def config(kind: triton_config.Kind) -> pb.ModelConfig:
    return triton_config.build_config(kind, model_specs()[kind])


def test_gpu_models_batch_to_128_and_the_cpu_one_to_32() -> None:
    for kind in KINDS:
        spec, built = model_specs()[kind], config(kind)
        # The gateway caps its batches by the spec, Triton by the config: one number.
        assert built.max_batch_size == spec.max_batch_size
        assert spec.max_batch_size == (128 if triton_config.is_gpu(kind) else 32)


@pytest.mark.parametrize("kind", KINDS)
def test_the_queue_is_bounded_and_rejects_what_waited_too_long(kind: triton_config.Kind) -> None:
    batching = config(kind).dynamic_batching
    assert not batching.preferred_batch_size  # one profile or none: Triton's guidance
    policy = batching.default_queue_policy
    assert policy.timeout_action == pb.ModelQueuePolicy.REJECT
    assert policy.allow_timeout_override
    timeout_s = policy.default_timeout_microseconds / 1e6
    request_timeout_s = Settings().request_timeout_s
    if triton_config.is_gpu(kind):
        assert timeout_s < 1.0  # a sub-second budget on a GPU
    # A request the queue rejects still has half the gateway's time for its retry.
    assert 0 < timeout_s <= request_timeout_s / 2
    # Never fewer queued requests than one batch, however small the requests.
    assert policy.max_queue_size >= config(kind).max_batch_size


def test_queue_sizes_follow_from_throughput_and_budget() -> None:
    sizes = {kind: config(kind).dynamic_batching.default_queue_policy.max_queue_size
             for kind in KINDS}
    # TensorRT FP16: 0.5 s x 11,813 images/s / 32 images per request.
    assert sizes == {"torchscript": 128, "onnx": 128, "tensorrt": 185, "python_onnx": 32}
    assert sizes["tensorrt"] == math.ceil(0.5 * 11_813 / 32)


def test_warmup_is_bounded_and_libtorch_warms_each_size_twice() -> None:
    torchscript = config("torchscript").model_warmup
    assert [w.batch_size for w in torchscript] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert all(w.count == 2 for w in torchscript)  # profile, then optimise
    for kind in ("onnx", "tensorrt", "python_onnx"):
        warmups = config(kind).model_warmup
        assert [w.batch_size for w in warmups] == [1, config(kind).max_batch_size]
        assert all(w.count == 1 for w in warmups)
    assert triton_config.warmup_batch_sizes("torchscript", 100) == [1, 2, 4, 8, 16, 32, 64, 100]


def test_the_tensorrt_profile_spans_every_batch_triton_may_send() -> None:
    max_batch = config("tensorrt").max_batch_size
    assert 1 <= opt_batch_size(max_batch) <= max_batch
    assert opt_batch_size(max_batch) == 64


def test_the_queue_bound_assumes_the_batches_the_gpu_gateways_send() -> None:
    env = Path(__file__).resolve().parents[2] / "k8s" / "overlays" / "gpu" / "gateway-config.env"
    settings = dict(
        line.split("=", 1) for line in env.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert int(settings["CA_MAX_BATCH_SIZE"]) == triton_config.IMAGES_PER_REQUEST
    assert int(settings["CA_MAX_BATCH_SIZE"]) <= triton_config.GPU_MAX_BATCH_SIZE
