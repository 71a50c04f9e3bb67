"""The TensorRT init step with a CPU stand-in for TensorRT: a "plan" is a serialised ONNX
model and ONNX Runtime runs it. Everything else (argument parsing, the version report, the
cache, the lock, verification, the install) is `service.model.tensorrt.main` itself.

    python -m tests.model.plan_standin --repository R --cache C \
        [--standin-plan exact|fp16|wrong] [--standin-write-s 2] [--standin-log FILE]

`exact` copies the ONNX model, `fp16` rounds its weights to FP16 (a plan that differs a
little, as TensorRT's FP16 does), `wrong` adds 20 to one class's bias (a plan that answers
that class for every photo). The plan is written in 32 chunks over `--standin-write-s`
seconds, so a test can kill a build half-way; each build appends `start <pid>` and
`done <pid>` lines to `--standin-log`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.model import tensorrt
from service.model.plan_check import PlanMismatch
from service.spec import ONNX_MODEL, TENSORRT_MODEL, ModelSpec
from service.verification import Runner, onnx_cpu_runner

GPU_MAX_BATCH = 128
STANDIN_VERSION = "0.0.0.0-standin"
STANDIN_GPU = ("Stand-in GPU", "0.0")
WRONG_CLASS = 7
CHUNKS = 32


def make_repository(root: Path, onnx_model: Path) -> Path:
    """What the init container sees: the ONNX model and the TensorRT model's spec."""
    (root / ONNX_MODEL / "1").mkdir(parents=True)
    shutil.copyfile(onnx_model, root / ONNX_MODEL / "1" / "model.onnx")
    (root / TENSORRT_MODEL).mkdir()
    spec = ModelSpec(name=TENSORRT_MODEL, max_batch_size=GPU_MAX_BATCH)
    (root / TENSORRT_MODEL / "spec.json").write_text(spec.to_json())
    return root


def temp_files(*directories: Path) -> list[Path]:
    """Temp files the cache or the install left (their names end in `.tmp`)."""
    return [path for d in directories for path in d.rglob(".*.tmp")]


def plan_bytes(onnx_path: Path, kind: str) -> bytes:
    """What the stand-in builder writes for `kind` (deterministic for a given ONNX file)."""
    if kind == "exact":
        return onnx_path.read_bytes()
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    for index, tensor in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(tensor)
        if kind == "fp16" and array.dtype == np.float32:
            array = array.astype(np.float16).astype(np.float32)
        elif kind == "wrong" and tensor.name == _classifier_bias(model):
            array = array.copy()
            array[WRONG_CLASS] += 20.0
        else:
            continue
        model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, tensor.name))
    return bytes(model.SerializeToString())


def _classifier_bias(model: Any) -> str:
    """The bias of the last Gemm (the classifier's logits)."""
    gemms = [node for node in model.graph.node if node.op_type == "Gemm"]
    return str(gemms[-1].input[2])


def toolkit(kind: str, write_s: float, log: Path | None) -> tensorrt.Toolkit:
    def startup(pin: str | None) -> tuple[str, str]:
        return STANDIN_VERSION, f"stand-in TensorRT {STANDIN_VERSION} (ONNX Runtime CPU); pin {pin}"

    def build(onnx_path: Path, plan_path: Path, spec: ModelSpec, fp16: bool) -> None:
        data = plan_bytes(onnx_path, kind)
        _log(log, f"start {os.getpid()}")
        step = -(-len(data) // CHUNKS)
        with plan_path.open("wb") as out:
            for offset in range(0, len(data), step):
                out.write(data[offset : offset + step])
                out.flush()
                time.sleep(write_s / CHUNKS)
        _log(log, f"done {os.getpid()}")

    def open_plan(plan_path: Path, spec: ModelSpec) -> Runner:
        try:
            return onnx_cpu_runner(plan_path, spec)
        except Exception as exc:  # ONNX Runtime's own error types for a broken model
            raise PlanMismatch(f"stand-in runtime cannot load {plan_path.name}: {exc}") from exc

    return tensorrt.Toolkit(
        startup=startup, gpu=lambda: STANDIN_GPU, build=build, open_plan=open_plan
    )


def _log(path: Path | None, line: str) -> None:
    if path is not None:
        with path.open("a") as file:  # one short append: atomic between processes
            file.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--standin-plan", choices=["exact", "fp16", "wrong"], default="exact")
    parser.add_argument("--standin-write-s", type=float, default=0.0)
    parser.add_argument("--standin-log", type=Path, default=None)
    known, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    kit = toolkit(known.standin_plan, known.standin_write_s, known.standin_log)
    return tensorrt.main(rest, toolkit=kit)


if __name__ == "__main__":
    raise SystemExit(main())
