"""What one core loses when it alternates preprocessing and inference, as the gateway's
cores do under load, against doing each alone (what the ceiling assumes).

One thread, no concurrency. Each round times, for `--seconds` each: ONNX Runtime alone
(the gateway's 1-thread session, batch 1), the gateway's `preprocess` alone over the web
photos, then the two alternating (preprocess a photo, infer it), then both alone again.
Efficiency = the alternating rate / the rate the separate costs add up to
(1 / (ORT ms + preprocess ms), each the mean of its two measurements around the
alternating one, so drift in the machine's speed mostly cancels). Below 1, the two evict
each other's caches.

`.venv/bin/python -m benchmarks.interference [--rounds 6] [--seconds 2]`
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from benchmarks import assets as assets_mod
from benchmarks import photos
from service.gateway.backends.embedded import open_session
from service.gateway.preprocess import preprocess
from service.spec import ModelSpec


def rate(step: Callable[[int], object], seconds: float) -> float:
    """Calls of `step(i)` per second, for `seconds`."""
    done = 0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        step(done)
        done += 1
    return done / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    found = assets_mod.ensure()
    spec = ModelSpec.load(found.repository / assets_mod.ONNX_MODEL_NAME)
    session = open_session(found.onnx, threads=1, spinning=True)
    images = photos.read_set(found.web)
    limit = 40_000_000

    def prepare(i: int) -> object:
        return preprocess(images[i % len(images)], spec, max_image_pixels=limit)

    sample = {spec.input_name: preprocess(images[0], spec, max_image_pixels=limit)[None]}

    def infer(_: int) -> object:
        return session.run([spec.output_name], sample)

    def both(i: int) -> object:
        image = preprocess(images[i % len(images)], spec, max_image_pixels=limit)
        return session.run([spec.output_name], {spec.input_name: image[None]})

    print(f"interference on {assets_mod.machine()}", flush=True)
    efficiencies = []
    for index in range(args.rounds):
        ort_1, pre_1 = rate(infer, args.seconds), rate(prepare, args.seconds)
        alternating = rate(both, args.seconds)
        ort_2, pre_2 = rate(infer, args.seconds), rate(prepare, args.seconds)
        ort_ms, pre_ms = 2000 / (ort_1 + ort_2), 2000 / (pre_1 + pre_2)
        efficiencies.append((ort_ms + pre_ms) / (1000 / alternating))
        print(f"  round {index + 1}: ORT {ort_ms:.2f} ms + preprocess {pre_ms:.2f} ms = "
              f"{ort_ms + pre_ms:.2f} ms apart; alternating {1000 / alternating:.2f} ms per "
              f"image; efficiency {efficiencies[-1]:.3f}", flush=True)
    print(f"median efficiency {statistics.median(efficiencies):.3f} "
          f"(range {min(efficiencies):.3f} to {max(efficiencies):.3f})")


if __name__ == "__main__":
    main()
