#!/usr/bin/env bash
# Everything only a GPU can check, in one go, for a machine with an NVIDIA GPU and a CUDA
# build of torch: what the machine offers (TensorRT, ONNX Runtime's providers), the GPU
# tests (TorchScript/ONNX/TensorRT agreeing on CUDA, the TensorRT plan) and
# `benchmarks.gpu` (batch 1..128, FP32 and FP16). Logs and gpu.json go to $OUT, or to
# benchmarks/results/gpu. Each step has its own time limit, and a failing step does not
# stop the next: the point is to learn as much as a short time on a GPU machine allows.
#
#   bash benchmarks/gpu_check.sh [--seconds 1]     # extra flags go to benchmarks.gpu
set -u
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
python=${PYTHON:-python3}

{
    nvidia-smi
    "$python" - <<'EOF'
import importlib
for name in ("torch", "onnxruntime", "onnx", "tensorrt"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as exc:
        print(name, "missing:", type(exc).__name__, exc)
import onnxruntime
print("onnxruntime", onnxruntime.__version__, "from", onnxruntime.__file__)
print("onnxruntime providers:", onnxruntime.get_available_providers())
EOF
    echo "trtexec: $(command -v trtexec || echo none)"
    ldconfig -p | grep -E "libnvinfer|libnvonnxparser" || echo "no libnvinfer in ldconfig"
} >"$out/probe.txt" 2>&1
cat "$out/probe.txt"

timeout 240 "$python" -m pytest -p no:cacheprovider -m gpu -v -rs tests/model/test_tensorrt.py \
    2>&1 | tee "$out/tests.log"

PYTHONUNBUFFERED=1 timeout 420 "$python" -m benchmarks.gpu --out "$out/gpu.json" "$@" \
    2>&1 | tee "$out/bench.log"
