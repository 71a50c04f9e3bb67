"""What tracing costs the gateway: `ca-serve bench` against gateways that differ only in
tracing, interleaved round by round so the machine's drifts hit every one alike.

    python -m benchmarks.tracing_overhead --rounds 5 --duration 8 \
        [--baseline-src DIR] [--with-on]

- `off`: this source tree, no `OTEL_*` variable (the default: nothing installed, no span).
- `baseline` (with `--baseline-src DIR`): a source tree of the gateway from before tracing
  existed (`mkdir DIR && git archive <commit> | tar -x -C DIR`), the same environment;
  `off` against it is the cost of the code path itself.
- `on` (with `--with-on`): `OTEL_TRACES_EXPORTER=otlp` to a sink on loopback that accepts
  and drops every export (OTLP/HTTP 200), so the spans are made, batched and sent.

Every gateway serves the embedded backend from `--repository` with default settings and
runs the whole time (an idle one costs nothing); each round runs `ca-serve bench` once per
gateway, the order rotating by round. Prints each round, then the medians and the median of
the per-round ratios to the first gateway. Loopback only; every process it starts is
stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks.servers import Server, free_port, running

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def otlp_sink(received: list[int]) -> Iterator[str]:
    """An OTLP/HTTP endpoint on loopback that answers 200 to every export (appending its
    size in bytes to `received`); yields its base URL."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(len(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def gateway(name: str, source: Path, repository: Path, model: str, logs: Path,
            otel: dict[str, str]) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CA_", "OTEL_"))}
    env.update(otel)
    env.update({
        "PYTHONPATH": str(source),
        "CA_MODEL_REPOSITORY": str(repository.resolve()),
        "CA_MODEL_NAME": model,
        "CA_ACCESS_LOG": "false",
    })
    argv = [sys.executable, "-c", "from service.cli import main; main()", "serve",
            "--host", "127.0.0.1", "--port", str(port)]
    return Server(name, argv, f"http://127.0.0.1:{port}", "/readyz", logs / f"{name}.log",
                  env=env, cwd=source)


def bench(url: str, duration_s: float, concurrency: int, out: Path) -> dict[str, float]:
    subprocess.run(
        [sys.executable, "-m", "service.cli", "bench", "--url", url, "--duration",
         str(duration_s), "--concurrency", str(concurrency), "--out", str(out), "--quiet"],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    summary = json.loads(out.read_text())
    if summary["requests"]["failed"]:
        raise RuntimeError(f"{url}: {summary['requests']['failed']} requests failed")
    latency = summary["latency_ms"]
    return {"rps": summary["throughput"]["requests_per_s"], "p50": latency["p50"],
            "p99": latency["p99"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path,
                        default=Path(os.environ.get("CA_MODEL_REPOSITORY", "model_repository")))
    parser.add_argument("--model", default="ca_mobilenetv2_onnx")
    parser.add_argument("--baseline-src", type=Path, help="source tree without tracing")
    parser.add_argument("--with-on", action="store_true", help="also a gateway tracing to OTLP")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ca-trace-bench-")))
        configs: list[tuple[str, Path, dict[str, str]]] = []
        exports: list[int] = []
        if args.baseline_src is not None:
            configs.append(("baseline", args.baseline_src.resolve(), {}))
        configs.append(("off", ROOT, {}))
        if args.with_on:
            endpoint = stack.enter_context(otlp_sink(exports))
            configs.append(("on", ROOT, {"OTEL_TRACES_EXPORTER": "otlp",
                                         "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}))
        servers = {
            name: stack.enter_context(
                running(gateway(name, source, args.repository, args.model, logs, otel)))
            for name, source, otel in configs
        }
        names = list(servers)
        rounds: list[dict[str, dict[str, float]]] = []
        for number in range(args.rounds):
            order = names[number % len(names):] + names[:number % len(names)]
            result = {name: bench(servers[name].url, args.duration, args.concurrency,
                                  logs / f"{name}-{number}.json") for name in order}
            rounds.append(result)
            print(f"round {number + 1}: " + "   ".join(
                f"{n} {r['rps']:.1f} req/s p50 {r['p50']:.1f} p99 {r['p99']:.1f} ms"
                for n, r in ((n, result[n]) for n in names)), flush=True)
    first = names[0]
    print(f"\nmedians over {args.rounds} rounds of {args.duration:g} s, "
          f"concurrency {args.concurrency}:")
    for name in names:
        med = {k: statistics.median(r[name][k] for r in rounds) for k in ("rps", "p50", "p99")}
        ratio = statistics.median(r[name]["rps"] / r[first]["rps"] for r in rounds)
        p50 = statistics.median(r[name]["p50"] / r[first]["p50"] for r in rounds)
        print(f"  {name:9s} {med['rps']:7.1f} req/s  p50 {med['p50']:6.1f} ms  "
              f"p99 {med['p99']:6.1f} ms   vs {first}: throughput x{ratio:.3f}, p50 x{p50:.3f}")
    if args.with_on:
        print(f"  (the OTLP sink received {len(exports)} exports, {sum(exports)} bytes)")


if __name__ == "__main__":
    main()
