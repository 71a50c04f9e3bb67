"""Triton `config.pbtxt` for each model, built as Triton's own protobuf message.

Building `ModelConfig` (tritonclient's `model_config_pb2`) rather than formatting text means
a config that does not fit Triton's schema fails here, at build time, not in the server.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from service.spec import ModelSpec

Kind = Literal["torchscript", "onnx", "tensorrt", "python_onnx"]

QUEUE_DELAY_US = 2000
ORT_TRT_CACHE = "/tmp/ca-serve-ort-trt-cache"
CONFIG_FILE = "config.pbtxt"  # in each model's directory
# ONNX Runtime's CUDA EP rounds FP32 convolutions to TF32 on Ampere and newer unless told
# not to: on an H200 that put the served probabilities 2.9e-3 from the CPU's, against
# 2.1e-6 in strict FP32. The CUDA EP runs whatever TensorRT does not take (everything, on a
# Triton build without it), so it keeps the paper's FP32 numerics, as the TorchScript
# model does.
CUDA_EP_OPTIONS = {"use_tf32": "0"}

# Largest batch per model. GPU: 128. On the H200 (docs/performance.md) batch 128 gave
# ~1.3x the images/s of batch 32 in FP32 (ONNX Runtime CUDA 6,702 vs 5,087) and ~1.7x in
# FP16 (TorchScript 11,813 vs 7,046) for 11-19 ms per batch, far inside the queue budget
# below. CPU: 32; past a few images a batch stops paying on a CPU (15 core-ms/image at
# batch 2-4, 40-50 at 32 with two threads), so a larger one only adds latency.
GPU_MAX_BATCH_SIZE = 128
CPU_MAX_BATCH_SIZE = 32

# Triton's queue: a request that waited `timeout` is rejected (REJECT: an error the gateway
# can retry on another pod at once), and a full queue rejects at the door.
# GPU, 500 ms: one batch of 128 runs in 11-19 ms, so a request that waited 500 ms is
# 25-45 batches behind: the pod is overloaded, and the request still has ~9.5 s of the
# gateway's 10 s (`CA_REQUEST_TIMEOUT_S`) for its retry elsewhere.
# CPU, 5 s: a CPU runs a full batch in 0.25-1 s, so a sub-second budget would reject as
# soon as two gateway batches queue; half the gateway's 10 s still leaves the retry room.
# `allow_timeout_override`: a request may ask for a shorter wait (its own deadline), never
# a longer one (Triton takes the smaller of the two). REJECT is the enum's zero value, so
# config.pbtxt does not print `timeout_action`; Triton reads it as REJECT all the same.
GPU_QUEUE_TIMEOUT_S = 0.5
CPU_QUEUE_TIMEOUT_S = 5.0
# Images per request the queue bound assumes: under load the GPU overlay's gateways send
# full batches of CA_MAX_BATCH_SIZE (k8s/overlays/gpu/gateway-config.env).
IMAGES_PER_REQUEST = 32
# Images/s each model serves at its largest batch, the throughput the queue drains at.
# H200 (docs/performance.md, batch 128): TorchScript FP32 6,737, ONNX Runtime CUDA FP32
# 6,702 (the ONNX model's TensorRT EP is unmeasured, so its FP32 fallback counts), the
# TensorRT FP16 plan unmeasured, so TorchScript FP16's 11,813 stands in for it. CPU: the
# 2-vCPU VM's ~100 images/s.
IMAGES_PER_S: dict[Kind, float] = {
    "torchscript": 6_737,
    "onnx": 6_702,
    "tensorrt": 11_813,
    "python_onnx": 100,
}


def is_gpu(kind: Kind) -> bool:
    return kind != "python_onnx"


def queue_timeout_s(kind: Kind) -> float:
    return GPU_QUEUE_TIMEOUT_S if is_gpu(kind) else CPU_QUEUE_TIMEOUT_S


def max_queue_size(kind: Kind, max_batch_size: int) -> int:
    """Requests Triton queues before rejecting at the door: what the model drains within
    its queue timeout when requests carry `IMAGES_PER_REQUEST` images, and never fewer
    than `max_batch_size`, so that single-image requests still fill a whole batch."""
    drained = math.ceil(queue_timeout_s(kind) * IMAGES_PER_S[kind] / IMAGES_PER_REQUEST)
    return max(max_batch_size, drained)


# libtorch's profiling executor profiles a new input shape on its first run and compiles an
# optimised graph on the next (one profiled run, torch's default), so each size is warmed
# twice. It compiles its first two shapes as static and the next ten as dynamic (the default
# fusion strategy [("STATIC", 2), ("DYNAMIC", 10)]), then stops specialising: warming more
# than a dozen sizes buys nothing. The powers of two up to the largest batch (8 sizes for
# 128) spend those specialisations before traffic does, and a batch size in between then
# meets a dynamic-shape graph already compiled.
TORCHSCRIPT_WARMUP_RUNS = 2


def warmup_batch_sizes(kind: Kind, max_batch_size: int) -> list[int]:
    """Sizes warmed at load: libtorch, the powers of two up to `max_batch_size` (and it);
    the others 1 and `max_batch_size`, in that order, so ONNX Runtime's TensorRT EP ends
    with an engine whose shape range spans every batch and a TensorRT plan has touched both
    ends of its optimisation profile."""
    if kind == "torchscript":
        sizes = {1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size}
        return sorted({*sizes, max_batch_size})
    return sorted({1, max_batch_size})


def build_config(kind: Kind, spec: ModelSpec) -> pb.ModelConfig:
    """The full model configuration for one model of the repository."""
    input_name, output_name = spec.input_name, spec.output_name
    config = pb.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    config.input.add(name=input_name, data_type=pb.TYPE_UINT8, dims=list(spec.input_shape))
    config.output.add(
        name=output_name,
        data_type=pb.TYPE_FP32,
        dims=[spec.num_classes],
        label_filename=spec.labels_file,  # enables the classification extension (class_count)
    )
    # No preferred_batch_size: Triton's guidance keeps it for models whose particular sizes
    # are much faster (TensorRT with one profile per size); these have one profile or none,
    # so the batcher forms the largest batch it can, up to max_batch_size.
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    policy = batching.default_queue_policy
    policy.timeout_action = pb.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = round(queue_timeout_s(kind) * 1_000_000)
    policy.allow_timeout_override = True
    policy.max_queue_size = max_queue_size(kind, spec.max_batch_size)

    gpu = is_gpu(kind)
    config.instance_group.add(
        count=1, kind=pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU
    )
    if kind == "torchscript":
        config.platform = "pytorch_libtorch"
        config.default_model_filename = "model.pt"
        _parameter(config, "INFERENCE_MODE", "true")
        _parameter(config, "DISABLE_CUDNN", "false")
    elif kind == "onnx":
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = "model.onnx"
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt"
        )
        accelerator.parameters["precision_mode"] = "FP16"
        accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
        accelerator.parameters["trt_engine_cache_enable"] = "true"
        accelerator.parameters["trt_engine_cache_path"] = ORT_TRT_CACHE
        cuda = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="cuda"
        )
        cuda.parameters.update(CUDA_EP_OPTIONS)
    elif kind == "tensorrt":
        config.platform = "tensorrt_plan"
        config.default_model_filename = "model.plan"
    else:  # python_onnx: ORT behind the Python backend, for Triton builds without GPU backends
        config.backend = "python"
        _parameter(config, "onnx_model_filename", "model.onnx")
        _parameter(config, "intra_op_threads", "0")

    for size in warmup_batch_sizes(kind, spec.max_batch_size):
        runs = TORCHSCRIPT_WARMUP_RUNS if kind == "torchscript" else 1
        warmup = config.model_warmup.add(
            name=f"{spec.name}_batch_{size}", batch_size=size, count=runs
        )
        warmup.inputs[input_name].data_type = pb.TYPE_UINT8
        warmup.inputs[input_name].dims.extend(spec.input_shape)
        warmup.inputs[input_name].random_data = True
    return config


def _parameter(config: pb.ModelConfig, key: str, value: str) -> None:
    config.parameters[key].string_value = value


def render(config: pb.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse(text: str) -> pb.ModelConfig:
    """Parse `config.pbtxt` text with Triton's schema; raises `text_format.ParseError`."""
    return text_format.Parse(text, pb.ModelConfig())


def load(model_dir: Path) -> pb.ModelConfig:
    """The `config.pbtxt` of the model in `model_dir`, parsed with Triton's schema."""
    return parse((model_dir / CONFIG_FILE).read_text())


def tensor_names(config: pb.ModelConfig) -> tuple[list[str], list[str]]:
    return [t.name for t in config.input], [t.name for t in config.output]


def cuda_provider_options(config: pb.ModelConfig) -> dict[str, str]:
    """The CUDA EP options Triton's ONNX Runtime backend passes on from `config` (its
    "cuda" accelerator's parameters), to run ONNX Runtime as that backend would."""
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    return {
        key: value
        for accelerator in accelerators
        if accelerator.name == "cuda"
        for key, value in accelerator.parameters.items()
    }
