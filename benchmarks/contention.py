"""Prototype, in a copy of the embedded backend's session setup: ONNX Runtime sharing two
cores with preprocessing threads, as it does inside the gateway under load.

For each ORT configuration (intra-op threads, spinning on/off), one thread runs batches
of `--batch` back to back while `--pre-threads` threads preprocess web photos with the
gateway's `preprocess`, for `--seconds`; prints images/s of each side and their sum in
"images/s end to end" terms (min of the two rates, as a pipeline would deliver).
`session.intra_op.allow_spinning` is not a gateway setting today: this measures what
exposing it (or turning spinning off in `EmbeddedBackend._load`) would give.

`.venv/bin/python -m benchmarks.contention [--batch 8] [--seconds 6]`
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import onnxruntime as ort

from benchmarks import assets as assets_mod
from benchmarks import photos
from service.gateway.backends.embedded import open_session
from service.gateway.preprocess import preprocess
from service.spec import ModelSpec


def trial(sess: ort.InferenceSession, spec: ModelSpec, images: list[bytes], batch: int,
          pre_threads: int, seconds: float) -> tuple[float, float]:
    stop = threading.Event()
    counts = {"pre": 0, "ort": 0}
    lock = threading.Lock()

    def pre_loop() -> None:
        i = 0
        while not stop.is_set():
            preprocess(images[i % len(images)], spec, max_image_pixels=40_000_000)
            i += 1
            with lock:
                counts["pre"] += 1

    feed = {spec.input_name: np.zeros((batch, *spec.input_shape), dtype=np.uint8)}
    sess.run([spec.output_name], feed)
    threads = [threading.Thread(target=pre_loop) for _ in range(pre_threads)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        sess.run([spec.output_name], feed)
        counts["ort"] += batch
    elapsed = time.perf_counter() - started
    stop.set()
    for t in threads:
        t.join()
    return counts["ort"] / elapsed, counts["pre"] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    found = assets_mod.ensure()
    spec = ModelSpec.load(found.repository / assets_mod.ONNX_MODEL_NAME)
    images = photos.read_set(found.web)
    print(f"batch {args.batch}, {args.seconds:g} s per trial, load {assets_mod.load_average()}")
    for ort_threads in (2, 1):
        for spinning in (True, False):
            sess = open_session(found.onnx, threads=ort_threads, spinning=spinning)
            for pre_threads in (0, 1, 2):
                ort_rate, pre_rate = trial(sess, spec, images, args.batch, pre_threads,
                                           args.seconds)
                print(f"  ORT {ort_threads} thread(s) spinning={'on ' if spinning else 'off'} "
                      f"+ {pre_threads} preprocess thread(s): ORT {ort_rate:6.1f} images/s, "
                      f"preprocess {pre_rate:6.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
