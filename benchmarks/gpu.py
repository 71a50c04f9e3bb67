"""GPU batch inference, Triton-equivalent: TorchScript, ONNX Runtime (CUDA and TensorRT
execution providers) and a TensorRT plan, batch 1..128, FP32 and FP16.

Each call takes a uint8 NHWC batch from host memory, copies it to the GPU, runs the model
(normalisation and softmax in the graph, as served) and copies the probabilities back,
as Triton does per request; the median over the runs gives latency and images/s.

- TorchScript FP32: the repository's `ca_mobilenetv2/1/model.pt` (traced with TF32 off,
  so its convolutions run in FP32 on the GPU too). FP16: the same network from the same
  checkpoint, cast to half and traced.
- ONNX Runtime: needs `onnxruntime-gpu` (the gateway's venv has the CPU build). CUDA EP in
  FP32 with the options the repository's config gives Triton (TF32 off), with ONNX
  Runtime's defaults (TF32 on), and FP16 (the half network exported to ONNX); TensorRT EP
  in FP32 and with `trt_fp16_enable`.
- TensorRT plan: built here by `service.model.tensorrt.build_plan` with a profile up to
  batch 128, FP32 and FP16 (needs the `tensorrt` Python package).
A backend that cannot run says why and the rest go on. Before timing, each backend runs
the verification photos and the script prints how far its probabilities are from
TorchScript FP32's on the CPU and whether its top-1 classes agree. Without CUDA the script
exits with status 2 and a clear message.

`python -m benchmarks.gpu [--batches 1,2,4,8,16,32,64,128] [--seconds 2] [--out gpu.json]`
(`benchmarks/gpu_check.sh` runs it with the GPU tests.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from benchmarks import assets as assets_mod
from service.model.export import torchscript_runner
from service.spec import ModelSpec

Batch = NDArray[np.uint8]
Runner = Callable[[Batch], NDArray[np.float32]]
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)


def require_cuda() -> Any:
    try:
        import torch
    except ImportError:
        sys.exit("benchmarks/gpu.py needs torch with CUDA: no torch here")
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False). "
              "Run it on a machine with an NVIDIA GPU and a CUDA build of torch; "
              "`benchmarks/ceiling.py` measures the CPU.", file=sys.stderr)
        sys.exit(2)
    return torch


def half_served(torch: Any, found: assets_mod.ModelFiles, spec: ModelSpec) -> Any:
    """The served model in FP16 (uint8 in, FP32 probabilities out), from the checkpoint:
    `.half()` on the frozen FP32 graph would clash with the `.float()` inside it."""
    from service.model.checkpoint import load_checkpoint
    from service.model.served import ServedModel

    class HalfServed(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            served = ServedModel(load_checkpoint(found.weights), spec).eval()
            self.network = served.network.half()
            self.register_buffer("scale", served.scale.half())
            self.register_buffer("shift", served.shift.half())

        def forward(self, image: Any) -> Any:
            x = image.permute(0, 3, 1, 2).half() * self.scale + self.shift
            return torch.softmax(self.network(x).float(), dim=1)

    return HalfServed().eval()


def torchscript_runners(torch: Any, found: assets_mod.ModelFiles,
                        spec: ModelSpec) -> dict[str, Runner]:
    device = torch.device("cuda")
    fp32 = torch.jit.load(str(found.torchscript), map_location=device).eval()
    example = torch.zeros((2, *spec.input_shape), dtype=torch.uint8, device=device)
    with torch.no_grad():
        fp16 = torch.jit.freeze(torch.jit.trace(half_served(torch, found, spec).to(device),
                                                (example,)))

    def runner(module: Any) -> Runner:
        def run(batch: Batch) -> NDArray[np.float32]:
            with torch.inference_mode():
                out = module(torch.from_numpy(batch).to(device, non_blocking=False))
                return out.cpu().numpy()  # type: ignore[no-any-return]

        return run

    return {"TorchScript FP32": runner(fp32), "TorchScript FP16": runner(fp16)}


def onnxruntime_runners(torch: Any, found: assets_mod.ModelFiles, spec: ModelSpec,
                        work: Path) -> tuple[dict[str, Runner], list[str]]:
    import onnxruntime as ort

    from service.model import triton_config
    from service.model.export import export_onnx

    notes: list[str] = []
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return {}, [f"ONNX Runtime GPU skipped: providers here are {available} "
                    "(install onnxruntime-gpu)"]
    half_model = work / "model_fp16.onnx"
    export_onnx(half_served(torch, found, spec), half_model, spec)
    # As the repository's config has Triton run it (strict FP32), and with ONNX Runtime's
    # defaults (TF32 convolutions) to show what that setting costs.
    served = triton_config.cuda_provider_options(triton_config.load(found.onnx.parent.parent))
    configs: dict[str, tuple[Path, list[Any]]] = {
        "ORT CUDA EP FP32": (found.onnx, [("CUDAExecutionProvider", served)]),
        "ORT CUDA EP FP32 TF32": (found.onnx, ["CUDAExecutionProvider"]),
        "ORT CUDA EP FP16": (half_model, ["CUDAExecutionProvider"]),
    }
    if "TensorrtExecutionProvider" in available:
        for precision, fp16 in (("FP32", False), ("FP16", True)):
            options = {"trt_fp16_enable": fp16, "trt_engine_cache_enable": True,
                       "trt_engine_cache_path": str(work / "ort-trt-cache"),
                       "trt_profile_min_shapes": f"{spec.input_name}:1x224x224x3",
                       "trt_profile_opt_shapes": f"{spec.input_name}:32x224x224x3",
                       "trt_profile_max_shapes": f"{spec.input_name}:128x224x224x3"}
            configs[f"ORT TensorRT EP {precision}"] = (
                found.onnx, [("TensorrtExecutionProvider", options), "CUDAExecutionProvider"])
    else:
        notes.append("ORT TensorRT EP skipped: not among the providers of this build")
    runners: dict[str, Runner] = {}
    for name, (path, providers) in configs.items():
        try:
            session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:
            notes.append(f"{name} skipped: {type(exc).__name__}: {exc}")
            continue
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if session.get_providers()[0] != wanted:  # ONNX Runtime falls back with a warning
            notes.append(f"{name} skipped: {wanted} did not start "
                         f"(session providers {session.get_providers()})")
            continue

        def run(batch: Batch, session: Any = session) -> NDArray[np.float32]:
            return session.run([spec.output_name], {spec.input_name: batch})[0]  # type: ignore[no-any-return]

        runners[name] = run
    return runners, notes


def tensorrt_runners(torch: Any, found: assets_mod.ModelFiles, spec: ModelSpec, max_batch: int,
                     work: Path) -> tuple[dict[str, Runner], list[str]]:
    from service.model import tensorrt as trt_build

    try:
        trt = trt_build._tensorrt()
    except trt_build.TensorRTUnavailable as exc:
        return {}, [f"TensorRT plan skipped: {exc}"]
    runners: dict[str, Runner] = {}
    notes: list[str] = []
    wide = dataclasses.replace(spec, max_batch_size=max_batch)
    for precision, fp16 in (("FP32", False), ("FP16", True)):
        plan = work / f"model-{precision.lower()}-b{max_batch}.plan"
        try:
            if not plan.is_file():
                trt_build.build_plan(found.onnx, plan, wide, fp16=fp16)
        except (trt_build.TensorRTUnavailable, RuntimeError) as exc:
            notes.append(f"TensorRT plan {precision} skipped: {exc}")
            continue
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
            plan.read_bytes())
        context = engine.create_execution_context()
        stream = torch.cuda.Stream()

        def run(batch: Batch, context: Any = context, stream: Any = stream) -> NDArray[np.float32]:
            images = torch.from_numpy(batch).cuda()
            probs = torch.empty((len(batch), spec.num_classes), dtype=torch.float32,
                                device="cuda")
            context.set_input_shape(spec.input_name, tuple(images.shape))
            context.set_tensor_address(spec.input_name, images.data_ptr())
            context.set_tensor_address(spec.output_name, probs.data_ptr())
            context.execute_async_v3(stream.cuda_stream)
            stream.synchronize()
            return probs.cpu().numpy()  # type: ignore[no-any-return]

        runners[f"TensorRT plan {precision}"] = run
    return runners, notes


def agree(runners: dict[str, Runner], spec: ModelSpec,
          cpu_reference: Runner) -> dict[str, dict[str, float]]:
    """Each backend on the verification photos against TorchScript FP32 on the CPU: the
    largest probability difference and the share of photos with the same top-1 class."""
    from service.verification import verification_batch

    batch = verification_batch(spec)
    reference = cpu_reference(batch)
    found: dict[str, dict[str, float]] = {}
    for name, run in runners.items():
        try:
            probs = run(batch)
        except Exception as exc:
            print(f"agreement {name}: failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        found[name] = {
            "max_abs_diff": float(np.max(np.abs(probs - reference))),
            "top1_agreement": float(np.mean(probs.argmax(1) == reference.argmax(1))),
        }
        print(f"agreement {name:24s} max |dp| {found[name]['max_abs_diff']:.2e}  "
              f"top-1 same {found[name]['top1_agreement']:.0%} of {len(batch)} photos",
              flush=True)
    return found


def measure(run: Runner, batch: Batch, seconds: float) -> dict[str, float]:
    for _ in range(3):
        run(batch)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 10 or (time.perf_counter() - started < seconds and len(times) < 2000):
        t0 = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    p99 = float(np.percentile(times, 99))
    return {"batch": len(batch), "latency_ms_p50": round(median * 1000, 3),
            "latency_ms_p99": round(p99 * 1000, 3),
            "images_per_s": round(len(batch) / median, 1), "runs": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--seconds", type=float, default=2.0, help="per point")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch = require_cuda()
    batches = [int(b) for b in args.batches.split(",")]
    found = assets_mod.ensure_model()
    spec = ModelSpec.load(found.repository / assets_mod.ONNX_MODEL_NAME)
    work = assets_mod.WORK / "gpu"
    work.mkdir(parents=True, exist_ok=True)
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})", flush=True)
    runners = torchscript_runners(torch, found, spec)
    more, notes = onnxruntime_runners(torch, found, spec, work)
    runners.update(more)
    more, trt_notes = tensorrt_runners(torch, found, spec, max(batches), work)
    runners.update(more)
    for note in notes + trt_notes:
        print(f"note: {note}", flush=True)
    agreement = agree(runners, spec, torchscript_runner(found.torchscript))
    rng = np.random.default_rng(0)
    results: dict[str, list[dict[str, float]]] = {}
    print(f"{'backend':24s} {'batch':>5s} {'images/s':>10s} {'p50 ms':>9s} {'p99 ms':>9s}")
    for name, run in runners.items():
        results[name] = []
        for size in batches:
            batch = rng.integers(0, 256, size=(size, *spec.input_shape), dtype=np.uint8)
            try:
                point = measure(run, batch, args.seconds)
            except Exception as exc:
                print(f"{name:24s} {size:5d}  failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            results[name].append(point)
            print(f"{name:24s} {size:5d} {point['images_per_s']:10.1f} "
                  f"{point['latency_ms_p50']:9.2f} {point['latency_ms_p99']:9.2f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(),
                                        "notes": notes + trt_notes, "agreement": agreement,
                                        "results": results},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
