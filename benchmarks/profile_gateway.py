"""Where the gateway's time goes under load: py-spy samples plus per-thread CPU time.

Starts a gateway (settings from `--gateway-env`), loads it with `ca-serve bench` (web
photos by default, concurrency 32) and meanwhile
- records it with py-spy (`--threads --idle`, raw collapsed stacks, 100 Hz), then files
  every sample under one stage (ONNX Runtime, preprocessing split into decode / resize /
  EXIF+convert, multipart, JSON/response, metrics, logging, HTTP/event loop, idle waits);
- reads `/proc/<pid>/task/*/stat` before and after, so the CPU seconds of the event-loop
  thread, of the Python pool threads and of ONNX Runtime's own (native) threads are known
  without sampling.
Prints both as tables and leaves the raw stacks (and a flame graph SVG) in
`benchmarks/results/tmp/profile-*`. Needs `py-spy` in the venv (`pip install py-spy`).

`.venv/bin/python -m benchmarks.profile_gateway [--concurrency 32] [--photos web]
    [--duration 15] [--gateway-env CA_X=V ...]`
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from benchmarks import assets as assets_mod
from benchmarks.run_all import gateway

TICK = os.sysconf("SC_CLK_TCK")

# (stage, substrings any of which in a sample's stack files it there); first match wins,
# so the more specific stages come first.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("ORT session.run", ("_run (service/gateway/backends/embedded.py", "run (onnxruntime")),
    ("preprocess: decode", ("load (PIL/ImageFile.py", "decode (PIL", "draft (PIL")),
    ("preprocess: resize+crop", ("_resize_and_crop",)),
    ("preprocess: EXIF/convert/open", ("preprocess (service/gateway/preprocess.py",)),
    ("np.stack + top-k", ("run_batch (service/gateway/runtime.py", "top_k_from_probs")),
    ("multipart parsing", ("parse_multipart",)),
    ("metrics (prometheus)", ("prometheus_client",)),
    ("logging / access log", ("logging/__init__.py", "service/gateway/logs.py")),
    ("JSON + pydantic response", ("serialize_response", "jsonable_encoder", "json",
                                  "pydantic", "render (starlette/responses.py")),
    ("request middleware", ("service/gateway/middleware.py",)),
    ("FastAPI/Starlette routing", ("fastapi/", "starlette/")),
    ("idle: pool/executor wait", ("_worker (concurrent/futures/thread.py",)),
    ("idle: AnyIO threadpool", ("anyio/_backends/_asyncio.py",)),
    ("uvicorn/httptools + ASGI stack", ("httptools_impl", "h11_impl", "uvicorn/middleware")),
    ("event loop (idle or scheduling)", ("uvicorn/", "asyncio/", "uvloop")),
]


def classify(stack: str) -> str:
    for stage, needles in STAGES:
        if any(needle in stack for needle in needles):
            return stage
    return "other"


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`."""
    times: dict[int, float] = {}
    for task in (Path("/proc") / str(pid) / "task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            times[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICK
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--photos", choices=("web", "phone"), default="web")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--gateway-env", action="append", default=[], metavar="CA_X=V")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy", path=str(assets_mod.VENV_BIN))
    if py_spy is None:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    env = dict(item.split("=", 1) for item in args.gateway_env)
    found = assets_mod.ensure()
    work = assets_mod.WORK / f"profile-{dt.datetime.now():%Y%m%d-%H%M%S}"
    work.mkdir(parents=True)
    server = gateway(found, env, work / "gateway.log")
    images = found.web if args.photos == "web" else found.phone
    try:
        server.start()
        assert server.process is not None
        pid = server.process.pid
        bench = [str(assets_mod.VENV_BIN / "ca-serve"), "bench", "--url", server.url,
                 "--images", str(images), "--concurrency", str(args.concurrency),
                 "--duration", str(args.duration + 4), "--out", str(work / "bench.json"),
                 "--quiet"]
        with subprocess.Popen(bench, cwd=assets_mod.ROOT, stdout=subprocess.DEVNULL) as load:
            time.sleep(2)  # past the warm-up
            before, t0 = thread_cpu(pid), time.monotonic()
            for fmt, out in (("raw", work / "stacks.txt"),):
                subprocess.run([py_spy, "record", "--pid", str(pid), "--rate", "100",
                                "--duration", str(int(args.duration)), "--threads", "--idle",
                                "--nonblocking", "--format", fmt, "--output", str(out)],
                               check=True, capture_output=True)
            after, wall = thread_cpu(pid), time.monotonic() - t0
            load.wait(args.duration + 60)
    finally:
        server.stop()
    summary = json.loads((work / "bench.json").read_text())
    print(f"load: {summary['throughput']['requests_per_s']:.1f} req/s, p50 "
          f"{summary['latency_ms']['p50']:.1f} ms, p99 {summary['latency_ms']['p99']:.1f} ms "
          f"(c={args.concurrency}, {args.photos}, settings {env or 'defaults'})")

    cpu = {tid: after.get(tid, 0.0) - before.get(tid, 0.0) for tid in after}
    main_cpu = cpu.pop(pid, 0.0)
    print(f"\nCPU over {wall:.1f} s wall (2 cores = {2 * wall:.1f} core-s available):")
    print(f"  event-loop thread      {main_cpu:6.2f} core-s  ({main_cpu / wall:.0%} of a core)")
    other = sorted(cpu.values(), reverse=True)
    print(f"  other threads          {sum(other):6.2f} core-s  "
          f"(busiest: {', '.join(f'{v:.2f}' for v in other[:8])})")

    by_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in (work / "stacks.txt").read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if stack:
            by_thread[stack.split(";", 1)[0]][classify(stack)] += int(samples)
    total = collections.Counter[str]()
    for counter in by_thread.values():
        total.update(counter)
    grand = sum(total.values()) or 1
    print("\npy-spy samples by stage (all Python threads, idle included):")
    for stage, count in total.most_common():
        print(f"  {stage:32s} {count:6d}  {count / grand:6.1%}")
    print("\nper thread (top stages):")
    for thread, counter in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
        top = ", ".join(f"{s} {c}" for s, c in counter.most_common(4))
        print(f"  {thread[:60]:60s} {sum(counter.values()):6d}: {top}")
    print(f"\nraw stacks: {work / 'stacks.txt'}")


if __name__ == "__main__":
    main()
