"""Paired rounds: the goals' web ratios measured so that machine drift cancels.

On a shared VM the speed of the same inference call moves by up to 50% between 10-40 s
regimes (docs/performance.md), so a ceiling measured once at the start and a load point
measured minutes later can compare two different machines. Here each round measures,
back to back:
    ceiling probe -> gateway web c=32 -> TorchServe c=32 -> gateway c=8 -> TorchServe c=8
    -> gateway c=1 -> (next round's) ceiling probe
and each round's ratios use the probes on either side of it. The probe is the goals'
ceilings at that moment, one per engine probed (the engine the gateway serves and ONNX
Runtime, the bar before OpenVINO): the engine on one thread at the batch the full
ceiling found best, plus plain Pillow preprocessing of the web photos. The medians over
the rounds are the drift-controlled goal values; the report shows them beside the
single-run ones.

Run by `benchmarks.run_all` (`--rounds`), after its main load points, on the servers it
has already started.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import photos
from benchmarks.ceiling import open_engine, plain_preprocess, random_batch, timed
from benchmarks.report import latency_ms, requests_per_s
from benchmarks.servers import Server
from service.gateway.backends.engine import EngineName
from service.spec import ModelSpec

# (service, photos, concurrency) in the order each round loads them.
POINTS: tuple[tuple[str, str, int], ...] = (
    ("gateway", "web", 32), ("torchserve", "web", 32),
    ("gateway", "web", 8), ("torchserve", "web", 8), ("gateway", "web", 1),
)

Loader = Callable[[Server, Path, int, Path, float], dict[str, Any]]


class CeilingProbe:
    """The web ceiling now, per engine: the engine on 1 thread at its best batch (given
    in `batches`) + plain Pillow, on `cores` cores."""

    def __init__(self, model: Path, spec: ModelSpec, web: Path,
                 batches: Mapping[EngineName, int], seconds: float = 1.5) -> None:
        self.spec = spec
        self.seconds = seconds
        self.cores = len(os.sched_getaffinity(0))
        self.engines = {name: (open_engine(name, model, spec, threads=1),
                               random_batch(spec, batch))
                        for name, batch in batches.items()}
        self.images = photos.read_set(web)

    def measure(self) -> dict[str, Any]:
        core_ms: dict[str, float] = {}
        for name, (engine, batch) in self.engines.items():
            def infer(engine: Any = engine, batch: Any = batch) -> object:
                return engine.run(batch, lone=True)

            core_ms[name] = round(statistics.median(timed(
                infer, min_s=self.seconds, min_runs=5, max_runs=500)) * 1000 / len(batch), 2)
        per_photo = []
        for data in self.images:
            def prepare(data: bytes = data) -> object:
                return plain_preprocess(data, self.spec)

            per_photo.append(statistics.median(timed(
                prepare, min_s=self.seconds / 2 / len(self.images), min_runs=3, max_runs=50)))
        pre_ms = round(statistics.mean(per_photo) * 1000, 2)
        return {"at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                "cores": self.cores, "core_ms": core_ms, "preprocess_ms": pre_ms,
                "ceiling": {name: round(self.cores * 1000 / (ms + pre_ms), 1)
                            for name, ms in core_ms.items()}}


def probe_ceiling(before: Mapping[str, Any], after: Mapping[str, Any], engine: str) -> float:
    """`engine`'s ceiling over a round, from its probes' mean costs (not averaged as
    rates); NaN when it was not probed."""
    if engine not in before["core_ms"] or engine not in after["core_ms"]:
        return float("nan")
    core_ms = (before["core_ms"][engine] + after["core_ms"][engine]
               + before["preprocess_ms"] + after["preprocess_ms"]) / 2
    return float(before["cores"] * 1000 / core_ms)


def round_ratios(before: Mapping[str, Any], after: Mapping[str, Any],
                 loads: Mapping[tuple[str, str, int], Mapping[str, Any]],
                 served: str) -> dict[str, float]:
    """One round's goal values from its two probes and its load summaries (NaN if
    missing): the ceiling of the engine `served` and ONNX Runtime's."""
    ceiling = probe_ceiling(before, after, served)
    ort_ceiling = probe_ceiling(before, after, "onnxruntime")

    def rps(service: str, c: int) -> float:
        return requests_per_s(loads.get((service, "web", c)))

    def lat(service: str, c: int, key: str) -> float:
        return latency_ms(loads.get((service, "web", c)), key)

    return {
        "ceiling": ceiling,
        "ort_ceiling": ort_ceiling,
        "gateway_c32": rps("gateway", 32),
        "c32_of_ceiling": rps("gateway", 32) / ceiling,
        "c32_of_ort_ceiling": rps("gateway", 32) / ort_ceiling,
        "c32_vs_torchserve": rps("gateway", 32) / rps("torchserve", 32),
        "c8_vs_torchserve": rps("gateway", 8) / rps("torchserve", 8),
        "c8_p99_vs_torchserve": lat("gateway", 8, "p99") / lat("torchserve", 8, "p99"),
        "c1_p50_ms": lat("gateway", 1, "p50"),
    }


def medians(rounds: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per goal value: median, min and max over the rounds that have it."""
    out: dict[str, dict[str, float]] = {}
    for key in rounds[0] if rounds else ():
        values = [r[key] for r in rounds if not np.isnan(r[key])]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values),
                        "max": max(values), "n": len(values)}
    return out


def run(servers: Mapping[str, Server], probe: CeilingProbe, web: Path, rounds: int,
        duration_s: float, work: Path, load: Loader, served: str) -> dict[str, Any]:
    """`rounds` paired rounds over the started `servers` (keyed by service name); the
    gateway serves on engine `served`."""
    probes = [probe.measure()]
    print(f"  probe: ceilings {probes[-1]['ceiling']} images/s", flush=True)
    results: list[dict[str, float]] = []
    for index in range(rounds):
        loads: dict[tuple[str, str, int], dict[str, Any]] = {}
        for service, photo_set, c in POINTS:
            server = servers.get(service)
            if server is None:
                continue
            out = work / f"paired-{index}-{service}-{photo_set}-c{c}.json"
            loads[(service, photo_set, c)] = load(server, web, c, out, duration_s)
        probes.append(probe.measure())
        results.append(round_ratios(probes[-2], probes[-1], loads, served))
        print(f"  round {index + 1}/{rounds}: ceiling {results[-1]['ceiling']:.1f}, gateway c=32 "
              f"{results[-1]['gateway_c32']:.1f} = {results[-1]['c32_of_ceiling']:.0%}", flush=True)
    return {"rounds": results, "probes": probes, "medians": medians(results),
            "duration_s": duration_s, "served": served}
