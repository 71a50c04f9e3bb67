"""Build the TensorRT plan from the repository's ONNX model, on the GPU that will run it.

A plan is specific to the GPU model and the TensorRT version, so it is built where it runs:
by `ca-serve build-repo --tensorrt` or by the Kubernetes init container on the GPU node:

    python -m service.model.tensorrt --repository /models [--cache /cache]

Plans are cached per (ONNX digest, GPU name, compute capability, TensorRT version), so a
restarted pod on the same node type reuses its plan instead of rebuilding it for minutes.
Needs the `tensorrt` Python package and an NVIDIA GPU (found with `nvidia-smi`); torch is
not needed, so the init container's image stays small.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from service.spec import ONNX_MODEL, TENSORRT_MODEL, ModelSpec

VERSION = "1"
WORKSPACE_BYTES = 1 << 30


class TensorRTUnavailable(RuntimeError):
    """No CUDA device or no TensorRT Python package here."""


def _tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable("the tensorrt Python package is not installed") from exc
    return tensorrt


def gpu_identity() -> tuple[str, str]:
    """(name, compute capability) of the first GPU, from `nvidia-smi`."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise TensorRTUnavailable(
            "no NVIDIA GPU: a TensorRT plan must be built on its GPU"
        ) from exc
    name, capability = (part.strip() for part in out.splitlines()[0].split(",", 1))
    return name, capability


def available() -> bool:
    try:
        _tensorrt()
        gpu_identity()
    except TensorRTUnavailable:
        return False
    return True


def device_key() -> str:
    """`<gpu>-sm<capability>-trt<version>`: a plan's identity beyond the model."""
    name, capability = gpu_identity()
    return f"{name.replace(' ', '_')}-sm{capability.replace('.', '')}-trt{_tensorrt().__version__}"


def build_plan(onnx_path: Path, plan_path: Path, spec: ModelSpec, *, fp16: bool = True) -> Path:
    """Parse the ONNX graph and build a serialized engine with one optimisation profile
    covering batch 1..max_batch_size (the same sizes as the Triton config)."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt, "NetworkDefinitionCreationFlag") and hasattr(
        trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"
    ):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            # TensorRT 11 dropped the FP16 builder flag: precision comes from the network's
            # own types there, so an FP16 plan needs an FP16-typed ONNX graph.
            raise TensorRTUnavailable(
                f"TensorRT {trt.__version__} has no FP16 builder flag; build with --fp32"
            )
        config.set_flag(trt.BuilderFlag.FP16)
    elif hasattr(trt.BuilderFlag, "TF32"):
        # TensorRT allows TF32 (10-bit mantissa) for FP32 layers by default. An FP32 plan
        # is asked for to match the CPU's answers; TF32 convolutions moved this model's
        # probabilities by 4e-3 on an H200 (cuDNN, measured), against a 1e-4 export bar.
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    # Tuned for half the largest batch: the size Triton's dynamic batcher forms under load.
    opt = max(1, spec.max_batch_size // 2)
    profile.set_shape(
        spec.input_name,
        (1, *spec.input_shape),
        (opt, *spec.input_shape),
        (spec.max_batch_size, *spec.input_shape),
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    return plan_path


def build_for_repository(repository: Path, cache: Path | None = None, *, fp16: bool = True) -> Path:
    """Build (or reuse from `cache`) `ca_mobilenetv2_trt/1/model.plan` from the ONNX model."""
    onnx_path = repository / ONNX_MODEL / VERSION / "model.onnx"
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX model at {onnx_path}: run `ca-serve build-repo` first")
    spec = ModelSpec.load(repository / TENSORRT_MODEL)
    target = repository / TENSORRT_MODEL / VERSION / "model.plan"
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
    precision = "fp16" if fp16 else "fp32"
    cached = cache / f"{digest}-{device_key()}-{precision}.plan" if cache else None
    if cached is not None and cached.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cached, target)
        return target
    build_plan(onnx_path, target, spec, fp16=fp16)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(target, cached)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=None, help="plan cache directory")
    parser.add_argument("--fp32", action="store_true", help="build an FP32 plan")
    args = parser.parse_args(argv)
    try:
        plan = build_for_repository(args.repository, args.cache, fp16=not args.fp32)
    except (TensorRTUnavailable, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"TensorRT plan: {plan}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
