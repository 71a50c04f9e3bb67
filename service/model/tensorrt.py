"""Build the TensorRT plan from the repository's ONNX model, on the GPU that will run it.

A plan is specific to the GPU model and the TensorRT version, so it is built where it runs:
by `ca-serve build-repo --tensorrt` or by the Kubernetes init container on the GPU node:

    python3 -m service.model.tensorrt --repository /models --cache /cache

In order, it (1) checks that the TensorRT it builds with is the pinned one
(`TENSORRT_VERSION`) and the library Triton's TensorRT backend links (`tensorrt_version`),
(2) identifies the GPU, (3) takes the plan for (ONNX digest, GPU, TensorRT version,
precision, batch profile) from the cache or builds it, (4) runs it on the probe photos
against ONNX Runtime CPU (`plan_check`) and (5) only then renames it into
`ca_mobilenetv2_trt/<version>/model.plan` (`plan_provision`, `plan_cache`), for every
version of the ONNX model, newest first (a pinned older version needs its plan too; the
cache makes repeats a copy). Any failure exits 1
with one `error:` line saying which step failed and why.

Needs TensorRT's Python bindings (`tensorrt`, or `tensorrt_bindings` where only the
bindings wheel is installed) and an NVIDIA GPU; no torch. `Toolkit` is the seam where CPU
tests put a stand-in builder and runner.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.model.plan_cache import DEFAULT_LOCK_TIMEOUT_S, PlanCache, PlanIdentity, sha256_file
from service.model.plan_check import plan_verifier
from service.model.plan_provision import Outcome, provision
from service.model.tensorrt_version import PIN_ENV
from service.spec import ONNX_MODEL, TENSORRT_MODEL, ModelSpec, SpecError
from service.verification import Runner
from service.versions import numbered_versions

WORKSPACE_BYTES = 1 << 30


class TensorRTUnavailable(RuntimeError):
    """No CUDA device or no TensorRT Python package here."""


def _tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        try:
            # The bindings wheel alone (no `-libs` wheel: the image's libnvinfer) installs
            # the module under this name; the `tensorrt` metapackage re-exports it.
            import tensorrt_bindings as tensorrt
        except ImportError as exc:
            raise TensorRTUnavailable("TensorRT's Python bindings are not installed") from exc
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


def opt_batch_size(max_batch_size: int) -> int:
    """The batch TensorRT tunes its kernels for. Under load Triton forms the batch that
    queued while the previous one ran, b = rate x t(b): at ~70% of the H200's FP16 rate
    (~8,300 of 11,800 images/s) and t(64) ~ 7 ms that is ~60, half the largest batch."""
    return max(1, max_batch_size // 2)


def build_plan(onnx_path: Path, plan_path: Path, spec: ModelSpec, *, fp16: bool = True) -> Path:
    """Parse the ONNX graph and build a serialized engine with one optimisation profile
    covering batch 1..max_batch_size (the same sizes as the Triton config), tuned for
    `opt_batch_size`. Writes `plan_path` (the caller's temp file)."""
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
    profile.set_shape(
        spec.input_name,
        (1, *spec.input_shape),
        (opt_batch_size(spec.max_batch_size), *spec.input_shape),
        (spec.max_batch_size, *spec.input_shape),
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    return plan_path


@dataclass(frozen=True)
class Toolkit:
    """What provisioning takes from TensorRT and the GPU; `TENSORRT` is the real one.

    startup(pin) -> (TensorRT version, one-line report); raises TensorRTMismatch.
    gpu() -> (GPU name, compute capability).
    build(onnx_path, plan_path, spec, fp16) writes a plan.
    open_plan(plan_path, spec) -> a runner; raises PlanMismatch for a plan it cannot load.
    """

    startup: Callable[[str | None], tuple[str, str]]
    gpu: Callable[[], tuple[str, str]]
    build: Callable[[Path, Path, ModelSpec, bool], Any]
    open_plan: Callable[[Path, ModelSpec], Runner]


def _startup(pin: str | None) -> tuple[str, str]:
    from service.model import tensorrt_version

    trt = _tensorrt()
    install = tensorrt_version.inspect(str(trt.__version__))
    return install.bindings_version, tensorrt_version.check(install, pin)


def _open_plan(plan_path: Path, spec: ModelSpec) -> Runner:
    from service.model.tensorrt_runtime import CudaError, open_plan

    try:
        return open_plan(_tensorrt(), plan_path, spec)
    except CudaError as exc:
        raise TensorRTUnavailable(str(exc)) from exc


TENSORRT = Toolkit(
    startup=_startup,
    gpu=gpu_identity,
    build=lambda onnx, plan, spec, fp16: build_plan(onnx, plan, spec, fp16=fp16),
    open_plan=_open_plan,
)


def build_for_repository(
    repository: Path,
    cache: Path | None = None,
    *,
    fp16: bool = True,
    pin: str | None = None,
    toolkit: Toolkit = TENSORRT,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    version: str | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """Check the TensorRT, then install a verified `ca_mobilenetv2_trt/<version>/model.plan`
    built from `ca_mobilenetv2_onnx/<version>/model.onnx`, through `cache` where given.
    `version` defaults to the newest of the ONNX model (the one Triton serves unpinned)."""
    if version is None:
        version = (numbered_versions(repository / ONNX_MODEL) or ["1"])[-1]
    onnx_path = repository / ONNX_MODEL / version / "model.onnx"
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX model at {onnx_path}: run `ca-serve build-repo` first")
    spec = ModelSpec.load(repository / TENSORRT_MODEL)
    tensorrt_release, line = toolkit.startup(pin)
    report(line)
    gpu_name, capability = toolkit.gpu()
    report(f"GPU: {gpu_name}, compute capability {capability}")
    identity = PlanIdentity(
        onnx_sha256=sha256_file(onnx_path),
        tensorrt_version=tensorrt_release,
        gpu_name=gpu_name,
        compute_capability=capability,
        precision="fp16" if fp16 else "fp32",
        min_batch=1,
        opt_batch=opt_batch_size(spec.max_batch_size),
        max_batch=spec.max_batch_size,
    )
    verify = plan_verifier(lambda plan: toolkit.open_plan(plan, spec), onnx_path, spec)
    return provision(
        repository / TENSORRT_MODEL / version / "model.plan",
        identity,
        lambda plan: toolkit.build(onnx_path, plan, spec, fp16),
        verify,
        PlanCache(cache, lock_timeout_s=lock_timeout_s) if cache is not None else None,
    )


def main(argv: list[str] | None = None, *, toolkit: Toolkit = TENSORRT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=None, help="plan cache directory")
    parser.add_argument("--fp32", action="store_true", help="build an FP32 plan")
    parser.add_argument(
        "--tensorrt-version",
        default=os.environ.get(PIN_ENV) or None,
        help=f"the pinned TensorRT version (default: ${PIN_ENV}); any other fails the step",
    )
    parser.add_argument(
        "--lock-timeout-s",
        type=float,
        default=DEFAULT_LOCK_TIMEOUT_S,
        help="how long to wait for another builder of the same plan",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def say(line: str) -> None:
        print(line, flush=True)

    versions: list[str | None] = [
        *reversed(numbered_versions(args.repository / ONNX_MODEL))
    ] or [None]  # none: the step reports the missing model
    for version in versions:
        try:
            outcome = build_for_repository(
                args.repository,
                args.cache,
                fp16=not args.fp32,
                pin=args.tensorrt_version,
                toolkit=toolkit,
                lock_timeout_s=args.lock_timeout_s,
                version=version,
                report=say,
            )
        # TensorRTUnavailable, TensorRTMismatch, PlanMismatch, PlanCacheError and TensorRT's
        # own build failures are RuntimeErrors; a missing model or unwritable cache, OSErrors.
        except (RuntimeError, OSError, SpecError) as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return 1
        _describe(outcome, say)
    return 0


def _describe(outcome: Outcome, say: Callable[[str], None]) -> None:
    for note in outcome.notes:
        say(f"note: {note}")
    check = outcome.verification
    say(
        f"TensorRT plan: {outcome.plan} ({outcome.source}; {outcome.manifest.size_bytes} bytes, "
        f"sha256 {outcome.manifest.sha256[:16]}, key {outcome.manifest.identity.key()})"
    )
    say(
        f"verified on {check['photos']} photos against ONNX Runtime CPU: max |diff| "
        f"{check['max_abs_diff']:.2e} (limit {check['tolerance']:.0e}), same top-1 on "
        f"{check['top1_same']}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
