"""Connection-level attack on a gateway, loopback only: slow headers, slow bodies and idle
keep-alive connections, with legitimate traffic alongside. Prints what the gateway held
and what legitimate clients saw.

    python -m benchmarks.connection_attack --repository <built repository>
    python -m benchmarks.connection_attack --repository <repo> --seconds 20 --open-rate 500 \
        --env CA_MAX_CONNECTIONS=1000 --rounds 2

The gateway is started here (the embedded backend on `--repository`, default settings
unless `--env CA_X=...`), with its soft and hard descriptor limit set to `--fd-limit`
when given. The attack keeps `--slow-headers` connections open that send a request line
and one header and then nothing (default: 3x the gateway's connection cap, read from its
start-up log), `--slow-bodies` that send a complete head announcing 1 MB and then one
byte every `--drip-s`, and `--idle` that make one request and then sit; each one the
gateway closes is replaced, at most `--open-rate` new connections per second in all,
for `--seconds`. Then the attacker stops replacing and leaves what is open to the
gateway's deadlines. `--rounds N` repeats the attack on the same gateway once it has
recovered (memory kept after the first attack should not grow with the next). Attack
traffic is spread over several processes and source addresses (127.0.0.2, .3, ...) when
it needs more descriptors or ports than one has.

Printed: connections the gateway held (its open descriptors minus its baseline, peak
and median during the attack), the legitimate requests' success rate and p50/p99 (one
client posting a small PNG over a fresh connection each time, one probing `/healthz`),
how long the attacker's connections lived, and the recovery time: from the attacker's
last new connection until the gateway's descriptors are within 5 of the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import httpx

from benchmarks import assets
from benchmarks.slow_clients import (
    KINDS,
    AttackPlan,
    Lifetime,
    attack_in_processes,
    raise_own_fd_limit,
)

T = TypeVar("T")


# -- the legitimate side and the gateway's side ------------------------------------------
@dataclass
class Outcome:
    kind: str  # "classify" or "healthz"
    at: float
    ok: bool
    latency_s: float
    detail: str = ""


def small_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def legitimate_load(url: str, stop: threading.Event, kind: str, pause_s: float) -> list[Outcome]:
    """Sequential requests over a fresh connection each, until `stop`."""
    image = small_png()
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=url, timeout=10.0, limits=limits) as client:
        while not stop.is_set():
            started = time.monotonic()
            detail = ""
            try:
                if kind == "classify":
                    response = client.post(
                        "/classify", content=image, headers={"Content-Type": "image/png"}
                    )
                else:
                    response = client.get("/healthz")
                ok = response.status_code == 200
                detail = str(response.status_code)
            except httpx.HTTPError as exc:
                ok, detail = False, type(exc).__name__
            outcomes.append(Outcome(kind, started, ok, time.monotonic() - started, detail))
            stop.wait(pause_s)
    return outcomes


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listen_overflows() -> int:
    """SYNs or handshakes the kernel dropped at a full accept queue, machine-wide."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Samples:
    """The gateway's open descriptors and RSS, sampled every `interval_s`."""

    pid: int
    interval_s: float = 0.05
    points: list[tuple[float, int, float]] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                self.points.append((time.monotonic(), open_fds(self.pid), rss_mib(self.pid)))
            stop.wait(self.interval_s)


class Background(Generic[T]):
    """`target()` in a daemon thread; `result()` waits for it."""

    def __init__(self, target: Callable[[], T]) -> None:
        self._result: list[T] = []
        self._thread = threading.Thread(target=lambda: self._result.append(target()), daemon=True)
        self._thread.start()

    def result(self) -> T:
        self._thread.join()
        if not self._result:
            raise RuntimeError("the background task failed (see its traceback above)")
        return self._result[0]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the benchmark ---------------------------------------------------------------------
def start_gateway(
    repository: Path, port: int, env: dict[str, str], fd_limit: int | None, log: Path,
    root: Path | None = None,
) -> subprocess.Popen[bytes]:
    """`python -m service.gateway.server` from `root` (default: this checkout)."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
    if root is not None:
        child_env["PYTHONPATH"] = str(root)
    child_env.update({
        "CA_MODEL_REPOSITORY": str(repository), "CA_PORT": str(port), "CA_ACCESS_LOG": "false",
    })
    child_env.update(env)

    def limit() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.gateway.server"], env=child_env, stdout=out,
            stderr=subprocess.STDOUT, preexec_fn=limit, cwd=root,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("gateway not ready in 120 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.connection_attack",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model-name", default=None)
    parser.add_argument("--port", type=int, default=8078)
    parser.add_argument("--fd-limit", type=int, default=None)
    parser.add_argument("--env", action="append", default=[], help="CA_X=value for the gateway")
    parser.add_argument("--gateway-root", type=Path, default=None,
                        help="run the gateway from another checkout (to compare)")
    parser.add_argument("--slow-headers", type=int, default=0, help="0: 3x the cap")
    parser.add_argument("--slow-bodies", type=int, default=200)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--open-rate", type=float, default=3000.0)
    parser.add_argument("--drip-s", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=1, help="attacks one after the other")
    args = parser.parse_args(argv)

    env = dict(item.split("=", 1) for item in args.env)
    if args.model_name:
        env["CA_MODEL_NAME"] = args.model_name
    log = Path(tempfile.mkstemp(prefix="ca-attack-gateway-", suffix=".log")[1])
    process = start_gateway(args.repository, args.port, env, args.fd_limit, log,
                            args.gateway_root)
    url = f"http://127.0.0.1:{args.port}"
    try:
        return _measure(args, process.pid, url, log)
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        if process.poll() is None:
            process.kill()


def _measure(args: argparse.Namespace, pid: int, url: str, log: Path) -> int:
    found = re.search(r"connection cap (\d+)", log.read_text())
    cap = int(found.group(1)) if found else 0
    if not (args.slow_headers or cap):
        raise SystemExit("the gateway logs no connection cap: give --slow-headers")
    slow_headers = args.slow_headers or 3 * cap
    total = slow_headers + args.slow_bodies + args.idle
    own_limit = raise_own_fd_limit() - 200
    processes = max(1, -(-total // min(own_limit, 25_000)))
    print(f"gateway pid {pid}: {log.read_text().count('connection cap')} start-up line(s); "
          f"cap {cap}")
    for line in log.read_text().splitlines():
        if "connections:" in line:
            print("  " + line[-220:])
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(20):
            client.post("/classify", content=small_png(), headers={"Content-Type": "image/png"})
    time.sleep(1.0)
    base_fds, base_rss = open_fds(pid), rss_mib(pid)
    print(f"baseline: {base_fds} descriptors, RSS {base_rss:.1f} MiB; attack: {slow_headers} "
          f"slow headers, {args.slow_bodies} slow bodies, {args.idle} idle, {args.seconds:g} s, "
          f"<= {args.open_rate:g} new connections/s, {processes} attacker process(es)")
    for round_number in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"-- attack {round_number} of {args.rounds}")
        plan = AttackPlan(
            port=args.port, slow_headers=slow_headers, slow_bodies=args.slow_bodies,
            idle=args.idle, seconds=args.seconds, open_rate_per_s=args.open_rate,
            drip_s=args.drip_s, hold_s=90.0,
        )
        _attack_round(plan, processes, pid, url, base_fds, base_rss)
    return 0


def _attack_round(
    plan: AttackPlan, processes: int, pid: int, url: str, base_fds: int, base_rss: float
) -> None:
    attack_start = time.monotonic() + 5.0  # attacker processes are importing meanwhile
    attack_end = attack_start + plan.seconds
    plan = dataclasses.replace(plan, start_at=attack_start)
    stop, stop_samples = threading.Event(), threading.Event()
    samples = Samples(pid)
    sampler = threading.Thread(target=samples.run, args=(stop_samples,), daemon=True)
    sampler.start()
    legit = [Background(lambda k=k, p=p: legitimate_load(url, stop, k, p))  # type: ignore[misc]
             for k, p in (("classify", 0.0), ("healthz", 0.2))]
    attacker = Background(lambda: attack_in_processes(plan, processes))
    time.sleep(max(0.0, attack_start - time.monotonic()))
    cpu_start, overflows_start = cpu_seconds(pid), listen_overflows()
    time.sleep(max(0.0, attack_end - time.monotonic()))
    cpu_used = cpu_seconds(pid) - cpu_start
    overflows = listen_overflows() - overflows_start
    load = assets.load_average()
    stop.set()
    outcomes = [o for task in legit for o in task.result()]
    outcomes = [o for o in outcomes if attack_start <= o.at <= attack_end]
    recovered_at = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if open_fds(pid) <= base_fds + 5:
            recovered_at = time.monotonic()
            break
        time.sleep(0.05)
    lives = attacker.result()
    stop_samples.set()
    sampler.join()
    _report(samples, outcomes, lives, base_fds, base_rss, attack_start, attack_end, recovered_at,
            pid)
    opened = sum(1 for life in lives if life.established and life.opened <= attack_end)
    print(f"gateway CPU during the attack: {cpu_used:.1f} s for {opened} attacking connections "
          f"and {len(outcomes)} legitimate requests ({1e6 * cpu_used / max(1, opened):.0f} "
          "µs per attacking connection, legitimate work included)")
    print(f"machine: {assets.machine()}; load average at the attack's end {load}; "
          f"{overflows} connections dropped at a full accept queue during it (machine-wide)")


def _report(
    samples: Samples, outcomes: list[Outcome], lives: list[Lifetime], base_fds: int,
    base_rss: float, attack_start: float, attack_end: float, recovered_at: float | None, pid: int,
) -> None:
    during = [(fds, rss) for t, fds, rss in samples.points if attack_start <= t <= attack_end]
    held = [fds - base_fds for fds, _ in during]
    print(f"held during the attack: peak {max(held)} connections, median "
          f"{statistics.median(held):.0f}; peak RSS {max(r for _, r in during):.1f} MiB")
    for kind in ("classify", "healthz"):
        mine = [o for o in outcomes if o.kind == kind]
        good = [o.latency_s * 1000 for o in mine if o.ok]
        failures = sorted({o.detail for o in mine if not o.ok})
        print(f"legit {kind}: {len(good)}/{len(mine)} ok ({100 * len(good) / max(1, len(mine)):.2f}"
              f" %), p50 {percentile(good, 0.5):.1f} ms, p99 {percentile(good, 0.99):.1f} ms, "
              f"max {max(good, default=float('nan')):.1f} ms; failures: {failures or 'none'}")
    for kind in KINDS:
        of_kind = [life for life in lives if life.kind == kind]
        if not of_kind:
            continue
        established = [life for life in of_kind if life.established]
        spans = [life.closed - life.opened for life in established if life.closed is not None]
        last = max((life.closed for life in established if life.closed is not None),
                   default=attack_end)
        statuses = sorted({str(life.status) for life in of_kind})
        print(f"{kind}: {len(of_kind)} opened, {len(established)} established, "
              f"{len(established) - len(spans)} never closed by the gateway; lived p50 "
              f"{percentile(spans, 0.5):.2f} s, p99 {percentile(spans, 0.99):.2f} s, max "
              f"{max(spans, default=float('nan')):.2f} s; the last closed "
              f"{last - attack_end:+.2f} s after the attack; answers {statuses}")
    if recovered_at is None:
        print("recovery: descriptors not back within 5 of the baseline in 120 s")
    else:
        print(f"recovery: descriptors within 5 of the baseline {recovered_at - attack_end:.2f} s "
              f"after the last new attacking connection; now {open_fds(pid)} descriptors, RSS "
              f"{rss_mib(pid):.1f} MiB (baseline {base_fds}, {base_rss:.1f} MiB)")


if __name__ == "__main__":
    raise SystemExit(main())
