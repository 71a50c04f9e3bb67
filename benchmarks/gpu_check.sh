#!/usr/bin/env bash
# Everything only a GPU can check, in one go, for a machine with an NVIDIA GPU and a CUDA
# build of torch: what the machine offers (TensorRT, ONNX Runtime's providers), the GPU
# tests (TorchScript/ONNX/TensorRT agreeing on CUDA, the TensorRT plan), the TensorRT init
# step exactly as the init container runs it (`python3 -m service.model.tensorrt`: version
# check, build, check against ONNX Runtime CPU, cache; then again, from the cache) and the
# plan it installed run at batch 1, 64 and 128 (`benchmarks.tensorrt_plan`), and
# `benchmarks.gpu` (batch 1..128, FP32 and FP16). Logs and gpu.json go to $OUT, or to
# benchmarks/results/gpu. Each step has its own time limit, and a failing step does not
# stop the next: the point is to learn as much as a short time on a GPU machine allows.
# Without TensorRT or a GPU the TensorRT steps print why and skip.
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

# The init container's path, on a repository from the tests' calibrated network (random
# weights answer almost uniformly, which would make the FP16 check say little).
if reason=$("$python" -c "
from service.model import tensorrt
try:
    tensorrt._tensorrt()
    tensorrt.gpu_identity()
except tensorrt.TensorRTUnavailable as exc:
    raise SystemExit(str(exc))
" 2>&1); then
    work=$(mktemp -d)
    {
        PYTHONPATH=. "$python" -c "
from pathlib import Path
from tests.support.checkpoints import calibrated_network, save_released_format
save_released_format(calibrated_network(), Path('$work/calibrated.pth'))
" \
            && "$python" -m service.cli build-repo --weights "$work/calibrated.pth" \
                --output "$work/models" \
            && for run in build cached; do
                echo "== the init step ($run)"
                timeout 600 "$python" -m service.model.tensorrt --repository "$work/models" \
                    --cache "$work/cache" || exit 1
            done \
            && timeout 120 "$python" -m benchmarks.tensorrt_plan "$work/models"
    } 2>&1 | tee "$out/tensorrt_step.log"
    rm -rf "$work"
else
    echo "TensorRT init step skipped: $reason" | tee "$out/tensorrt_step.log"
fi

PYTHONUNBUFFERED=1 timeout 420 "$python" -m benchmarks.gpu --out "$out/gpu.json" "$@" \
    2>&1 | tee "$out/bench.log"
