"""The gateway's CPU pipeline in-process, without HTTP: which thread layout fills two cores.

`inflight` images circulate (a closed loop like `ca-serve bench` at that concurrency):
`--pre` preprocessing threads decode photos (`service.gateway.preprocess`) into a ready
queue; `streams` inference threads each take what is ready (up to `batch`), stack it and
call `session.run` on one shared ONNX Runtime session with `intra` intra-op threads
(spinning on or off). Every configuration runs in turn, for `--rounds` rounds, so drifts in
the machine's load hit them alike; the table gives images/s (median over rounds).

`.venv/bin/python -m benchmarks.pipeline [--photos web] [--inflight 32] [--seconds 5]
    [--config intra=2,spin=1,streams=1,pre=2,batch=16] ...`
"""

from __future__ import annotations

import argparse
import queue
import statistics
import threading
import time
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks import assets as assets_mod
from benchmarks import photos
from service.gateway.backends.embedded import open_session
from service.gateway.preprocess import preprocess
from service.spec import ModelSpec

DEFAULT_CONFIGS = (
    "intra=2,spin=1,streams=1,pre=2,batch=16",  # the gateway's defaults before issue 7's work
    "intra=2,spin=0,streams=1,pre=2,batch=16",
    "intra=2,spin=0,streams=1,pre=2,batch=8",
    "intra=1,spin=0,streams=2,pre=2,batch=8",
    "intra=1,spin=0,streams=2,pre=2,batch=4",
    "intra=2,spin=0,streams=2,pre=2,batch=8",
)


def parse(text: str) -> dict[str, int]:
    return {key: int(value) for key, value in (part.split("=") for part in text.split(","))}


def trial(sess: ort.InferenceSession, spec: ModelSpec, images: list[bytes], config: dict[str, int],
          inflight: int, seconds: float) -> float:
    jobs: queue.Queue[int | None] = queue.Queue()
    ready: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()
    done = [0]
    lock = threading.Lock()

    def pre_loop() -> None:
        while (job := jobs.get()) is not None:
            ready.put(preprocess(images[job % len(images)], spec, max_image_pixels=40_000_000))

    def infer_loop() -> None:
        while not stop.is_set():
            try:
                batch = [ready.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < config["batch"]:
                try:
                    batch.append(ready.get_nowait())
                except queue.Empty:
                    break
            sess.run([spec.output_name], {spec.input_name: np.stack(batch)})
            with lock:
                done[0] += len(batch)
            for i in range(len(batch)):
                jobs.put(i)

    threads = [threading.Thread(target=pre_loop) for _ in range(config["pre"])]
    threads += [threading.Thread(target=infer_loop) for _ in range(config["streams"])]
    for t in threads:
        t.start()
    for i in range(inflight):
        jobs.put(i)
    time.sleep(1.0)  # warm-up
    with lock:
        start_count, started = done[0], time.perf_counter()
    time.sleep(seconds)
    with lock:
        count, elapsed = done[0] - start_count, time.perf_counter() - started
    stop.set()
    for _ in range(config["pre"]):
        jobs.put(None)
    for t in threads:
        t.join()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append",
                        metavar="intra=2,spin=0,streams=1,pre=2,batch=8")
    parser.add_argument("--photos", choices=("web", "phone"), default="web")
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    found = assets_mod.ensure()
    spec = ModelSpec.load(found.repository / assets_mod.ONNX_MODEL_NAME)
    images = photos.read_set(found.web if args.photos == "web" else found.phone)
    configs = args.config or list(DEFAULT_CONFIGS)
    sessions: dict[tuple[int, int], ort.InferenceSession] = {}
    for text in configs:
        c = parse(text)
        key = (c["intra"], c["spin"])
        if key not in sessions:  # one session per (threads, spinning), shared by configs
            sessions[key] = open_session(found.onnx, threads=key[0], spinning=bool(key[1]))
    rates: dict[str, list[float]] = {text: [] for text in configs}
    print(f"{args.photos} photos, {args.inflight} in flight, {args.seconds:g} s per trial, "
          f"load {assets_mod.load_average()}", flush=True)
    for round_number in range(args.rounds):
        for text in configs:
            c = parse(text)
            rate = trial(sessions[(c["intra"], c["spin"])], spec, images, c, args.inflight,
                         args.seconds)
            rates[text].append(rate)
            print(f"  round {round_number + 1} {text}: {rate:.1f} images/s", flush=True)
    print(f"\nmedian of {args.rounds} rounds (load now {assets_mod.load_average()}):")
    for text in configs:
        print(f"| `{text}` | {statistics.median(rates[text]):.1f} images/s |")


if __name__ == "__main__":
    main()
