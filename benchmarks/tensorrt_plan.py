"""Run the TensorRT plan the init step installed, as Triton would load it: batch 1, the
profile's opt batch and the largest, with the probe photos tiled to size.

    python -m benchmarks.tensorrt_plan MODEL_REPOSITORY [--calls 20]

Prints ms per call (host copies included) and images/s. Needs a GPU and TensorRT; exits 2
with the reason otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args(argv)

    from service.model import tensorrt
    from service.model.tensorrt_runtime import CudaError, open_plan
    from service.spec import TENSORRT_MODEL, ModelSpec
    from service.verification import verification_batch

    try:
        trt = tensorrt._tensorrt()
        spec = ModelSpec.load(args.repository / TENSORRT_MODEL)
        run = open_plan(trt, args.repository / TENSORRT_MODEL / "1" / "model.plan", spec)
    except (tensorrt.TensorRTUnavailable, CudaError) as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 2
    photos = verification_batch(spec)
    for size in (1, tensorrt.opt_batch_size(spec.max_batch_size), spec.max_batch_size):
        batch = np.resize(photos, (size, *photos.shape[1:]))
        run(batch)
        started = time.perf_counter()
        for _ in range(args.calls):
            probs = run(batch)
        ms = (time.perf_counter() - started) / args.calls * 1000
        print(
            f"installed plan, batch {size}: {ms:.2f} ms per call, {size / ms * 1000:,.0f} "
            f"images/s; top-1 of the first photo {int(probs[0].argmax())}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
