"""The ceiling: what two cores can do with this model and these photos, in-process, on
each engine the embedded backend can serve (OpenVINO where installed, ONNX Runtime).

1. Per engine, images/s at batch 1..32 with 1 and with `cores` threads, loaded as the
   gateway loads it (`engine.load_engine`: ONNX Runtime on the rewritten graph, OpenVINO
   on the file as exported); core-ms per image = batch wall time x threads / batch.
2. Preprocessing one photo on one thread, for the web-size and the phone-size set: the
   gateway's `service.preprocess`; a plain Pillow decode + EXIF transpose + RGB +
   resize + crop (what the peers and tutorials do); and that plain pipeline with JPEG
   `draft` at the scale the gateway decodes at (the reference for phone photos: the same
   decoded pixels, so what the gateway does beyond that is its own gain).
3. Per engine, the derived end-to-end ceiling on `cores` cores when preprocessing and
   inference share them perfectly: cores x 1000 / (best core-ms per image + preprocess
   ms per image). The goals compare the gateway with the ceiling of the engine it serves
   and with ONNX Runtime's (the bar before OpenVINO).
4. For comparison (not what the goals use): `cores` single-threaded streams running at
   once, as the gateway runs them under load. Each stream is slower than one alone
   (shared caches and memory bandwidth), so this core-ms per image is the one a loaded
   server can actually get.

Run: `.venv/bin/python -m benchmarks.ceiling [--out ceiling.json] [--quick]
[--engines openvino,onnxruntime]`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
import PIL
from numpy.typing import NDArray
from PIL import Image, ImageOps

from benchmarks import assets as assets_mod
from benchmarks import photos
from service.gateway.backends.engine import (
    ENGINES,
    Engine,
    EngineConfig,
    EngineName,
    load_engine,
    openvino_installed,
)
from service.preprocess import DRAFT_MARGIN, preprocess
from service.spec import ModelSpec

BATCHES = (1, 2, 4, 8, 16, 32)


def timed(fn: Callable[[], object], *, min_s: float, min_runs: int, max_runs: int) -> list[float]:
    """Wall seconds of each call: at least `min_runs` and `min_s` in total, at most `max_runs`."""
    fn()  # warm-up
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_runs and (
        len(times) < min_runs or time.perf_counter() - started < min_s
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def available_engines() -> list[EngineName]:
    """The engines this machine can run, OpenVINO first when installed."""
    return [name for name in ENGINES if name != "openvino" or openvino_installed()]


def open_engine(name: EngineName, model: Path, spec: ModelSpec, *, threads: int,
                streams: int = 1) -> Engine:
    """`name` loaded as the gateway loads it (its default settings), without warm-up."""
    return load_engine(name, model, spec, EngineConfig(threads=threads, streams=streams))


def random_batch(spec: ModelSpec, batch: int) -> NDArray[np.uint8]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(batch, *spec.input_shape), dtype=np.uint8)


def engine_points(name: EngineName, model: Path, spec: ModelSpec, threads: int,
                  min_s: float) -> list[dict[str, Any]]:
    engine = open_engine(name, model, spec, threads=threads)
    points = []
    for batch in BATCHES:
        images = random_batch(spec, batch)

        def run(images: NDArray[np.uint8] = images) -> object:
            return engine.run(images, lone=True)

        times = timed(run, min_s=min_s, min_runs=5, max_runs=500)
        median = statistics.median(times)
        points.append({
            "engine": name, "batch": batch, "threads": threads, "runs": len(times),
            "batch_ms": round(median * 1000, 2),
            "images_per_s": round(batch / median, 1),
            "core_ms_per_image": round(median * 1000 * threads / batch, 2),
        })
        print(f"  {name:>11} threads={threads} batch={batch:>2}: {batch / median:7.1f} "
              f"images/s  {median * 1000:7.2f} ms/batch  "
              f"{median * 1000 * threads / batch:6.2f} core-ms/image", flush=True)
    engine.close()
    return points


def concurrent_streams(name: EngineName, model: Path, spec: ModelSpec, streams: int,
                       batch: int, seconds: float) -> dict[str, Any]:
    """`streams` threads running single-threaded batches at once, closed loop."""
    engine = open_engine(name, model, spec, threads=streams, streams=streams)
    images = random_batch(spec, batch)
    engine.run(images, lone=False)
    done = [0] * streams
    stop = time.perf_counter() + seconds

    def stream(index: int) -> None:
        while time.perf_counter() < stop:
            engine.run(images, lone=False)
            done[index] += batch

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rate = sum(done) / (time.perf_counter() - started)
    engine.close()
    point = {"engine": name, "streams": streams, "batch": batch, "images_per_s": round(rate, 1),
             "core_ms_per_image": round(streams * 1000 / rate, 2)}
    print(f"  {name:>11} {streams} concurrent 1-thread streams, batch {batch}: {rate:7.1f} "
          f"images/s ({point['core_ms_per_image']:.2f} core-ms/image)", flush=True)
    return point


def plain_preprocess(data: bytes, spec: ModelSpec, *, draft: bool = False) -> NDArray[np.uint8]:
    """Pillow as tutorials use it: decode, EXIF transpose, RGB, resize, crop. With `draft`,
    JPEGs decode at the reduced scale the gateway picks (`DRAFT_MARGIN`)."""
    opened = Image.open(io.BytesIO(data))
    if draft and opened.format == "JPEG":
        target = spec.resize_shorter * DRAFT_MARGIN
        opened.draft(None, (target, target))
    image = ImageOps.exif_transpose(opened)
    assert image is not None
    image = image.convert("RGB")
    width, height = image.size
    scale = spec.resize_shorter / min(width, height)
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left = round((size[0] - spec.input_size) / 2)
    top = round((size[1] - spec.input_size) / 2)
    image = image.crop((left, top, left + spec.input_size, top + spec.input_size))
    return np.asarray(image, dtype=np.uint8)


def preprocess_points(photo_sets: dict[str, list[bytes]], spec: ModelSpec,
                      min_s: float) -> dict[str, dict[str, float]]:
    """Median ms per photo on one thread, per set and per path."""
    paths: dict[str, Callable[[bytes], NDArray[np.uint8]]] = {
        "gateway_draft": lambda data: preprocess(data, spec, max_image_pixels=40_000_000),
        "plain_pillow": lambda data: plain_preprocess(data, spec),
        "plain_pillow_draft": lambda data: plain_preprocess(data, spec, draft=True),
    }
    results: dict[str, dict[str, float]] = {}
    for set_name, images in photo_sets.items():
        results[set_name] = {}
        for path_name, fn in paths.items():
            per_photo = []
            for data in images:
                def one(data: bytes = data, fn: Callable[[bytes], Any] = fn) -> object:
                    return fn(data)

                per_photo.append(statistics.median(
                    timed(one, min_s=min_s / len(images), min_runs=3, max_runs=200)))
            ms = statistics.mean(per_photo) * 1000
            results[set_name][path_name] = round(ms, 2)
            print(f"  preprocess {set_name:>5} {path_name:>13}: {ms:7.2f} ms/photo", flush=True)
    return results


def derive(points: Sequence[dict[str, Any]], pre: dict[str, dict[str, float]],
           cores: int) -> dict[str, Any]:
    """One engine's ceilings: each preprocessing path with its best core-ms per image."""
    best = min(points, key=lambda p: p["core_ms_per_image"])
    ceilings: dict[str, Any] = {"cores": cores, "best": best}
    for set_name, paths in pre.items():
        for path_name, pre_ms in paths.items():
            total = best["core_ms_per_image"] + pre_ms
            ceilings[f"{set_name}_{path_name}"] = {
                "core_ms_per_image": round(total, 2),
                "images_per_s": round(cores * 1000 / total, 1),
            }
    return ceilings


def best_single_thread_batch(points: Sequence[dict[str, Any]]) -> int:
    """The batch at which one thread costs the fewest core-ms per image."""
    best = min((p for p in points if p["threads"] == 1), key=lambda p: p["core_ms_per_image"])
    return int(best["batch"])


def run(quick: bool = False, engines: Sequence[EngineName] | None = None) -> dict[str, Any]:
    """Every measurement above, per engine (default: every engine installed)."""
    found = assets_mod.ensure()
    spec = ModelSpec.load(found.repository / assets_mod.ONNX_MODEL_NAME)
    cores = len(os.sched_getaffinity(0))
    min_s = 0.6 if quick else 2.0
    names = list(engines or available_engines())
    print(f"ceiling on {assets_mod.machine()} (load {assets_mod.load_average()})", flush=True)
    sets = {"web": photos.read_set(found.web), "phone": photos.read_set(found.phone)}
    pre = preprocess_points(sets, spec, min_s)
    per_engine: dict[str, Any] = {}
    for name in names:
        points = engine_points(name, found.onnx, spec, 1, min_s)
        if cores > 1:
            points += engine_points(name, found.onnx, spec, cores, min_s)
        derived = derive(points, pre, cores)
        streams = concurrent_streams(name, found.onnx, spec, cores,
                                     best_single_thread_batch(points), 2 * min_s)
        for set_name in sets:
            total = streams["core_ms_per_image"] + pre[set_name]["plain_pillow_draft"]
            derived[f"{set_name}_concurrent_streams"] = {
                "core_ms_per_image": round(total, 2),
                "images_per_s": round(cores * 1000 / total, 1)}
        for key, value in derived.items():
            if isinstance(value, dict) and "images_per_s" in value and key != "best":
                print(f"  {name:>11} ceiling {key:>20}: {value['images_per_s']:6.1f} images/s "
                      f"on {cores} cores ({value['core_ms_per_image']:.2f} core-ms/image)")
        per_engine[name] = {"points": points, "streams": streams, "ceiling": derived}
    return {"machine": assets_mod.machine(), "versions": versions(), "pillow": PIL.__version__,
            "cores": cores, "preprocess_ms": pre, "engines": per_engine}


def versions() -> dict[str, str]:
    """The version of each engine installed."""
    found = {"onnxruntime": str(ort.__version__)}
    if openvino_installed():
        import openvino

        found["openvino"] = str(openvino.__version__).split("-")[0]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the numbers as JSON")
    parser.add_argument("--quick", action="store_true", help="shorter timing loops")
    parser.add_argument("--engines", default="",
                        help="comma-separated engine names (default: every one installed)")
    args = parser.parse_args()
    names = [name for name in args.engines.split(",") if name]
    unknown = sorted(set(names) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines {unknown}; known: {', '.join(ENGINES)}")
    result = run(args.quick, [cast(EngineName, name) for name in names] or None)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
