"""Triton `config.pbtxt` for each model, built as Triton's own protobuf message.

Building `ModelConfig` (tritonclient's `model_config_pb2`) rather than formatting text means
a config that does not fit Triton's schema fails here, at build time, not in the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from service.spec import ModelSpec

Kind = Literal["torchscript", "onnx", "tensorrt", "python_onnx"]

# Batch sizes the dynamic batcher prefers to form; a batch that waits out the queue delay
# may still have any size from 1 to max_batch_size.
QUEUE_DELAY_US = 2000
ORT_TRT_CACHE = "/tmp/ca-serve-ort-trt-cache"
CONFIG_FILE = "config.pbtxt"  # in each model's directory
# ONNX Runtime's CUDA EP rounds FP32 convolutions to TF32 on Ampere and newer unless told
# not to: on an H200 that put the served probabilities 2.9e-3 from the CPU's, against
# 2.1e-6 in strict FP32. The CUDA EP runs whatever TensorRT does not take (everything, on a
# Triton build without it), so it keeps the paper's FP32 numerics, as the TorchScript
# model does.
CUDA_EP_OPTIONS = {"use_tf32": "0"}


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    sizes = [size for size in (4, 8, 16, 32, 64, 128) if size <= max_batch_size]
    return sizes if max_batch_size in sizes else [*sizes, max_batch_size]


def warmup_batch_sizes(kind: Kind, max_batch_size: int) -> list[int]:
    """libtorch re-optimises its graph for every new input shape and stalls for seconds on
    the first request of each batch size, so it is warmed at every size the batcher can
    form; the other backends are warmed at the sizes that build or select their kernels."""
    if kind == "torchscript":
        return list(range(1, max_batch_size + 1))
    return sorted({1, *preferred_batch_sizes(max_batch_size)})


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
    config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes(spec.max_batch_size))
    config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US

    gpu = kind != "python_onnx"
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
        warmup = config.model_warmup.add(name=f"{spec.name}_batch_{size}", batch_size=size, count=1)
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
