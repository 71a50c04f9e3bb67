"""Run the whole suite and write `benchmarks/results/<date>.md`, `<date>.png` and `latest.md`.

1. The in-process ceiling on each engine installed (`benchmarks.ceiling`).
2. The gateway (`ca-serve serve`, embedded backend, the engine its settings pick; its
   /readyz says which, and the goals use that engine's ceiling), the plain FastAPI + PyTorch peer
   and TorchServe 0.12 (batching) all started, then each load point (web/phone photos x
   concurrency 1, 8, 32) run against each service in turn, so slow drifts in the load of
   this shared machine hit all three alike. Every service through `ca-serve bench`
   (TorchServe with `--path /predictions/<model>`).
3. Paired rounds (`benchmarks.paired`, `--rounds`): the web goal points again, each round
   between two short ceiling probes, so the goal ratios compare moments of the same
   machine speed.
4. Memory: a fresh gateway's RSS after 1,000 and after 10,000 requests (web, concurrency
   8); every service's RSS after its load points.

Loopback only, bounded durations and counts; every server started is stopped at the end
(also on errors and Ctrl-C). `--quick` halves durations and the memory run.

`.venv/bin/python -m benchmarks.run_all [--duration 12] [--rounds 5] [--quick]
    [--skip-peers] [--gateway-env CA_MAX_BATCH_SIZE=16 ...]
    [--tuned-env CA_EMBEDDED_RUNTIME=onnxruntime --tuned-title "gateway on ONNX Runtime"]`
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import assets as assets_mod
from benchmarks import ceiling, paired, report
from benchmarks.peers import torchserve
from benchmarks.servers import Server, free_port
from service.gateway.backends.engine import ENGINES
from service.spec import ModelSpec

RESULTS = assets_mod.ROOT / "benchmarks" / "results"
CONCURRENCY = (1, 8, 32)
SETS = ("web", "phone")


def gateway(repository: Path, env: dict[str, str], log: Path, name: str = "gateway") -> Server:
    port = free_port()
    return Server(
        name=name, url=f"http://127.0.0.1:{port}", ready_path="/readyz", log=log,
        argv=[str(assets_mod.VENV_BIN / "ca-serve"), "serve", "--host", "127.0.0.1",
              "--port", str(port)],
        env={"CA_MODEL_REPOSITORY": str(repository), **env},
        cwd=assets_mod.ROOT,
    )


def plain_fastapi(found: assets_mod.Assets, log: Path) -> Server:
    port = free_port()
    return Server(
        name="plain_fastapi", url=f"http://127.0.0.1:{port}", ready_path="/healthz", log=log,
        argv=[str(assets_mod.VENV_BIN / "uvicorn"), "benchmarks.peers.plain_fastapi:app",
              "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        env={"CA_PEER_WEIGHTS": str(found.weights)}, cwd=assets_mod.ROOT,
    )


def load(server: Server, images: Path, concurrency: int, out: Path, *,
         duration_s: float | None = None, requests: int | None = None) -> dict[str, Any]:
    """One load point through `ca-serve bench`."""
    bound = ["--duration", str(duration_s)] if requests is None else ["--requests", str(requests)]
    common = ["--url", server.url, "--images", str(images), "--concurrency", str(concurrency),
              "--out", str(out), *bound, "--quiet"]
    if server.name.startswith("torchserve"):
        common += ["--path", f"/predictions/{torchserve.MODEL}"]
    argv = [str(assets_mod.VENV_BIN / "ca-serve"), "bench", *common]
    done = subprocess.run(argv, cwd=assets_mod.ROOT, capture_output=True, text=True)
    if done.returncode not in (0, 1) or not out.is_file():
        raise RuntimeError(f"load on {server.name} failed: {done.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(out.read_text())
    lat = summary["latency_ms"] or {"p50": float("nan"), "p99": float("nan")}
    print(f"  {server.name.split('(')[0]:>13} {images.name:>5} c={concurrency:<2}: "
          f"{summary['throughput']['requests_per_s']:6.1f} req/s  p50 {lat['p50']:7.1f} ms  "
          f"p99 {lat['p99']:7.1f} ms  failed {summary['requests']['failed']}", flush=True)
    return summary


def served_engine(server: Server) -> str:
    """The engine a started gateway serves on, as its /readyz says."""
    with urllib.request.urlopen(server.url + "/readyz", timeout=5) as response:
        return str(json.loads(response.read()).get("engine", "none"))


def paired_rounds(found: assets_mod.Assets, ceiling_result: dict[str, Any],
                  servers: list[Server], rounds: int, duration_s: float,
                  work: Path, served: str) -> dict[str, Any] | None:
    """`benchmarks.paired` on the started servers; each engine's probe uses its best
    1-thread batch (the served engine's and ONNX Runtime's)."""
    if rounds < 1:
        return None
    print(f"== paired rounds ({rounds} x {len(paired.POINTS)} points, {duration_s:g} s each)",
          flush=True)
    spec = ModelSpec.load(found.repository / assets_mod.ONNX_MODEL_NAME)
    engines = ceiling_result["engines"]
    batches = {name: ceiling.best_single_thread_batch(engines[name]["points"])
               for name in ENGINES if name in engines and name in (served, "onnxruntime")}
    probe = paired.CeilingProbe(found.onnx, spec, found.web, batches)
    by_service = {s.name.split("(")[0]: s for s in servers}
    return paired.run(by_service, probe, found.web, rounds, duration_s, work,
                      lambda server, images, c, out, d: load(server, images, c, out,
                                                             duration_s=d), served)


def memory_run(found: assets_mod.Assets, env: dict[str, str], work: Path,
               first: int, total: int) -> dict[str, float]:
    """A fresh gateway's RSS after `first` and after `total` requests (web, concurrency 8)."""
    server = gateway(found.repository, env, work / "gateway-memory.log")
    try:
        server.start()
        rss: dict[str, float] = {"start_mb": server.rss_mb()}
        load(server, found.web, 8, work / "memory-1.json", requests=first)
        rss[f"after_{first}_mb"] = server.rss_mb()
        load(server, found.web, 8, work / "memory-2.json", requests=total - first)
        rss[f"after_{total}_mb"] = server.rss_mb()
        return rss
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per load point")
    parser.add_argument("--quick", action="store_true", help="shorter points and memory run")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--rounds", type=int, default=5,
                        help="paired rounds after the main points (0: none; --quick: 3)")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="CA_X=V",
                        help="settings for the gateway under test (repeatable)")
    parser.add_argument("--tuned-env", action="append", default=[], metavar="CA_X=V",
                        help="also run a second gateway, 'gateway_tuned', with these settings")
    parser.add_argument("--tuned-title", default="",
                        help="column title for the second gateway (default 'gateway (tuned)')")
    parser.add_argument("--label", default="", help="a note for the results file")
    args = parser.parse_args()
    duration = args.duration / 2 if args.quick else args.duration
    env = dict(item.split("=", 1) for item in args.gateway_env)
    started = dt.datetime.now().astimezone()
    work = assets_mod.WORK / f"run-{started:%Y%m%d-%H%M%S}"
    work.mkdir(parents=True, exist_ok=True)
    found = assets_mod.ensure()

    print("== ceiling", flush=True)
    ceiling_result = ceiling.run(quick=args.quick)

    servers = [gateway(found.repository, env, work / "gateway.log")]
    tuned = dict(item.split("=", 1) for item in args.tuned_env)
    if tuned:
        servers.append(gateway(found.repository, tuned, work / "gateway_tuned.log",
                               "gateway_tuned"))
    notes: list[str] = []
    if not args.skip_peers:
        servers.append(plain_fastapi(found, work / "plain_fastapi.log"))
        reason = torchserve.available()
        if reason is None:
            servers.append(torchserve.server(found, work / "torchserve"))
        else:
            notes.append(f"TorchServe not run: {reason}")
    points: list[dict[str, Any]] = []
    rss: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        for server in servers:
            print(f"== starting {server.name}", flush=True)
            server.start()
            stack.callback(server.stop)
        served = {s.name: served_engine(s) for s in servers if s.name.startswith("gateway")}
        print(f"== engines served: {served}", flush=True)
        print(f"== load points ({duration:g} s each)", flush=True)
        for set_name in SETS:
            images = found.web if set_name == "web" else found.phone
            for concurrency in CONCURRENCY:
                for server in servers:
                    key = server.name.split("(")[0]
                    out = work / f"{key}-{set_name}-c{concurrency}.json"
                    summary = load(server, images, concurrency, out, duration_s=duration)
                    points.append({"service": key, "photos": set_name,
                                   "concurrency": concurrency, "summary": summary})
        for server in servers:
            rss[server.name.split("(")[0]] = server.rss_mb()
        rounds = min(args.rounds, 3) if args.quick else args.rounds
        paired_result = paired_rounds(found, ceiling_result, servers, rounds, duration / 2, work,
                                      served["gateway"])
    memory: dict[str, float] = {}
    if not args.skip_memory:
        print("== gateway memory run", flush=True)
        first, total = (500, 5000) if args.quick else (1000, 10000)
        memory = memory_run(found, env, work, first, total)
        print(f"  {memory}", flush=True)

    result = {
        "date": started.isoformat(timespec="seconds"), "machine": assets_mod.machine(),
        "load_average_end": assets_mod.load_average(), "duration_s": duration,
        "gateway_env": env, "tuned_env": tuned, "tuned_title": args.tuned_title,
        "label": args.label, "notes": notes,
        "torchserve_config": next((s.name for s in servers if s.name.startswith("torchserve")),
                                  None),
        "ceiling": ceiling_result, "served_engines": served, "points": points, "rss_mb": rss,
        "memory": memory,
        "paired": paired_result,
    }
    (work / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    stem = f"{started:%Y-%m-%d-%H%M}"
    markdown = report.markdown(result, plot_name=f"{stem}.png")
    report.plot(result, RESULTS / f"{stem}.png")
    (RESULTS / f"{stem}.md").write_text(markdown)
    (RESULTS / "latest.md").write_text(markdown)
    print(f"== wrote {RESULTS / (stem + '.md')}, {RESULTS / (stem + '.png')}, "
          f"{RESULTS / 'latest.md'}; raw JSON in {work}", flush=True)
    print(markdown)


if __name__ == "__main__":
    main()
