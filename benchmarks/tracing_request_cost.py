"""CPU time the gateway spends per request around the model, with and without tracing:
the resolution a shared machine's HTTP benchmark lacks (`tracing_overhead.py`).

    python -m benchmarks.tracing_request_cost --repository DIR [--baseline-src DIR] \
        [--control-src DIR] [--rounds 7] [--requests 2000] [--sampler-arg 0.01] [--skip-on]

Each measurement is a fresh child process that builds the real app (`create_app`, the
served model's spec and labels from `--repository`) with a backend that answers at once
(constant probabilities, so ONNX Runtime's ~10 ms per image does not drown microseconds),
warms up, then sends `--requests` raw PNG requests (64x48, `top_k=5`), eight at a time,
through httpx's in-process ASGI transport: the app, admission, preprocessing pool,
micro-batcher and response, no sockets. It reports the process's CPU time per request
(all threads, `time.process_time`), which other processes on the machine disturb far less
than wall time. Gateways: `baseline` (with `--baseline-src`, a source tree from before
tracing existed), `off` (this tree, no `OTEL_*`), `on` (this tree, OTLP http/protobuf to a
loopback sink that drops everything), `on-sampled` (the same, keeping a `--sampler-arg`
share of new traces); the order rotates by round. Prints each round and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


async def _measure(repository: Path, model: str, requests: int) -> dict[str, float]:
    """In the child: build the app and time `requests` requests (see the module doc)."""
    import httpx
    import numpy as np
    from PIL import Image
    from prometheus_client import CollectorRegistry

    from service.gateway.app import create_app
    from service.gateway.backends import ModelId, top_k_from_probs
    from service.gateway.settings import Settings
    from service.spec import ModelSpec

    spec = ModelSpec.load(repository / model)

    class Instant:
        """A backend that answers at once: the same probabilities for every image."""

        name = "embedded"
        probs = np.linspace(0.0, 1.0, spec.num_classes, dtype=np.float32)

        async def start(self) -> None: ...
        async def close(self) -> None: ...
        def set_cpu_jobs_probe(self, probe: Any) -> None: ...
        def ready(self) -> bool: return True
        def status(self) -> str: return "ready"
        def model_id(self) -> ModelId: return ModelId(model, "1")

        async def infer(self, batch: Any) -> Any:
            return np.tile(self.probs, (len(batch), 1))

        async def top_k(self, batch: Any, k: int) -> Any:
            return top_k_from_probs(await self.infer(batch), k)

    kwargs: dict[str, Any] = {}
    if os.environ.get("OTEL_TRACES_EXPORTER"):
        from service.gateway.tracing_setup import tracing_from_environment

        kwargs["tracing"] = tracing_from_environment()
    settings = Settings(model_repository=repository, model_name=model, access_log=False)
    app = create_app(settings, registry=CollectorRegistry(), backend=Instant(), **kwargs)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buffer, "PNG")
    body, headers = buffer.getvalue(), {"Content-Type": "image/png"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:

            async def burst(n: int) -> None:
                answers = await asyncio.gather(*(
                    client.post("/classify?top_k=5", content=body, headers=headers)
                    for _ in range(n)))
                assert all(a.status_code == 200 for a in answers)

            for _ in range(50):
                await burst(8)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(requests // 8):
                await burst(8)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = requests // 8 * 8
    return {"cpu_us": cpu / done * 1e6, "wall_us": wall / done * 1e6}


def run_child(source: Path, env: dict[str, str], repository: Path, model: str,
              requests: int) -> dict[str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CA_", "OTEL_"))}
    # This file runs as a script so that only `source`'s `service` package is importable.
    output = subprocess.run(
        [sys.executable, __file__, "--worker", "--repository", str(repository.resolve()),
         "--model", model, "--requests", str(requests)],
        capture_output=True, text=True, cwd=source,
        env={**clean, **env, "PYTHONPATH": str(source)},
    )
    if output.returncode:
        raise RuntimeError(f"the measurement in {source} failed:\n{output.stderr[-3000:]}")
    return dict(json.loads(output.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path,
                        default=Path(os.environ.get("CA_MODEL_REPOSITORY", "model_repository")))
    parser.add_argument("--model", default="ca_mobilenetv2_onnx")
    parser.add_argument("--baseline-src", type=Path)
    parser.add_argument("--control-src", type=Path,
                        help="a copy of the baseline tree: the spread between identical code")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--sampler-arg", type=float,
                        help="also `on-sampled`: on with parentbased_traceidratio at this ratio")
    parser.add_argument("--skip-on", action="store_true", help="no `on` gateway")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(asyncio.run(_measure(args.repository, args.model, args.requests))))
        return

    from benchmarks.tracing_overhead import otlp_sink

    exports: list[int] = []
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(otlp_sink(exports))
        configs: dict[str, tuple[Path, dict[str, str]]] = {}
        if args.baseline_src is not None:
            configs["baseline"] = (args.baseline_src.resolve(), {})
        if args.control_src is not None:
            configs["control"] = (args.control_src.resolve(), {})
        configs["off"] = (ROOT, {})
        on = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
        if not args.skip_on:
            configs["on"] = (ROOT, on)
        if args.sampler_arg is not None:
            configs["on-sampled"] = (ROOT, {**on, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                            "OTEL_TRACES_SAMPLER_ARG": str(args.sampler_arg)})
        names = list(configs)
        rounds = []
        for number in range(args.rounds):
            order = names[number % len(names):] + names[:number % len(names)]
            result = {n: run_child(*configs[n], args.repository, args.model, args.requests)
                      for n in order}
            rounds.append(result)
            print(f"round {number + 1}: " + "   ".join(
                f"{n} {result[n]['cpu_us']:.0f} us CPU ({result[n]['wall_us']:.0f} us wall)"
                for n in names), flush=True)
    print(f"\nCPU per request, median of {args.rounds} rounds x {args.requests} requests:")
    first = names[0]
    for name in names:
        cpu = statistics.median(r[name]["cpu_us"] for r in rounds)
        delta = statistics.median(r[name]["cpu_us"] - r[first]["cpu_us"] for r in rounds)
        spread = [round(r[name]["cpu_us"] - r[first]["cpu_us"]) for r in rounds]
        print(f"  {name:9s} {cpu:6.0f} us   vs {first}: {delta:+5.0f} us (rounds: {spread})")
    if "on" in names or "on-sampled" in names:
        print(f"  (the OTLP sink received {len(exports)} exports, {sum(exports)} bytes)")


if __name__ == "__main__":
    main()
