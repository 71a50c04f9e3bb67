"""The benchmarks a maintainer reruns, one entry point each (docs/performance.md and
docs/reliability.md say what they measure and how to read them):

- `python -m benchmarks.run_all`: the full CPU benchmark. The in-process ceiling
  (`ceiling`), the gateway beside its peers (`peers/`: plain FastAPI, TorchServe), paired
  rounds against drift (`paired`), and the memory run; writes `results/<date>.md`.
- `python -m benchmarks.soak`: soak and overload traffic against a gateway.
- `bash benchmarks/gpu_check.sh`: on a CUDA machine, the GPU tests and `benchmarks.gpu`.
"""
