"""Compare gateway settings (environment variables only, no code change) under one load.

Every configuration gets its own gateway, all started at once (idle ones cost ~nothing),
and the load points run round-robin over them for `--rounds` rounds, so drifts in the
load of this shared machine hit every configuration alike; the table gives each point's
median over the rounds.

`.venv/bin/python -m benchmarks.sweep --config "defaults=" \
    --config "1 ORT thread=CA_INFERENCE_THREADS=1" \
    --config "2 workers=CA_WORKERS=2,CA_INFERENCE_THREADS=1,CA_PREPROCESS_THREADS=1" \
    [--points web:1,web:8,web:32,phone:8] [--duration 8] [--rounds 2]`
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import statistics
from typing import Any

from benchmarks import assets as assets_mod
from benchmarks.run_all import gateway, load


def parse_config(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition("=")
    env = dict(item.split("=", 1) for item in assignments.split(",") if item)
    return name, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True,
                        metavar="NAME=CA_X=V,CA_Y=W")
    parser.add_argument("--points", default="web:1,web:8,web:32,phone:8")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    found = assets_mod.ensure()
    work = assets_mod.WORK / f"sweep-{dt.datetime.now():%Y%m%d-%H%M%S}"
    work.mkdir(parents=True)
    configs = [parse_config(text) for text in args.config]
    points = [(p.split(":")[0], int(p.split(":")[1])) for p in args.points.split(",")]
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        servers = []
        for i, (name, env) in enumerate(configs):
            server = gateway(found, env, work / f"gateway-{i}.log")
            server.name = name
            server.start()
            stack.callback(server.stop)
            servers.append(server)
        for round_number in range(args.rounds):
            print(f"== round {round_number + 1}", flush=True)
            for photos, concurrency in points:
                images = found.web if photos == "web" else found.phone
                for i, server in enumerate(servers):
                    out = work / f"{i}-{photos}-c{concurrency}-r{round_number}.json"
                    summary = load(server, images, concurrency, out, duration_s=args.duration)
                    results.setdefault((server.name, photos, concurrency), []).append(summary)
        rss = {server.name: server.rss_mb() for server in servers}
    print(f"\nmedian of {args.rounds} rounds, {args.duration:g} s each; "
          f"load average now {assets_mod.load_average()}")
    header = "| configuration | " + " | ".join(f"{p} c={c}" for p, c in points) + " | RSS MB |"
    print(header)
    print("|" + " --- |" * (len(points) + 2))
    for name, env in configs:
        cells = []
        for photos, concurrency in points:
            runs = results[(name, photos, concurrency)]
            rps = statistics.median(r["throughput"]["requests_per_s"] for r in runs)
            p50 = statistics.median(r["latency_ms"]["p50"] for r in runs)
            p99 = statistics.median(r["latency_ms"]["p99"] for r in runs)
            cells.append(f"{rps:.1f} ({p50:.0f}/{p99:.0f})")
        label = f"{name} `{','.join(f'{k}={v}' for k, v in env.items()) or 'defaults'}`"
        print(f"| {label} | " + " | ".join(cells) + f" | {rss[name]:.0f} |")


if __name__ == "__main__":
    main()
