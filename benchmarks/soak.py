"""Soak and overload traffic for the gateway: open-loop requests at a fixed rate.

    python -m benchmarks.soak --repository build/model_repository_cpu --minutes 30
    python -m benchmarks.soak --url http://127.0.0.1:8000 --minutes 30 --load 0.7
    python -m benchmarks.soak --repository ... --minutes 0.5 --load 3   # overload

It first measures the gateway's capacity (closed loop, 8 clients, web-size JPEGs), then
offers `--load` times that rate as an open loop (requests are sent on schedule whether or
not earlier ones have answered, as independent users do) and prints one row per
`--window-s`: offered and answered counts, 503s, other failures, p50/p99 latency of the
200s as the client saw them, and, to tell a slow gateway from a busy machine or a slow
client, the gateway's own view from its /metrics (p99 of
`ca_gateway_request_duration_seconds` for /classify, as the upper bound of its bucket;
CPU ms per answered request; resident memory) and this machine's busy and stolen CPU
share from `/proc/stat` (the hypervisor's "steal": time this VM wanted a core and did not
get one), and a probe: the CPU time a fixed piece of work takes, which rises when the
cores themselves run slower.
Without `--url` it starts a single-process embedded gateway on `--repository` and stops
it at the end. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "data" / "images"


@dataclass(frozen=True)
class Sample:
    sent_at: float  # seconds since the run started
    status: int  # 0: no HTTP answer (connection refused, reset, client timeout)
    latency_s: float
    code: str  # the error code of a non-200 answer, "" otherwise
    retry_after: str | None


def web_photos(source: Path = PHOTOS, size: tuple[int, int] = (500, 375)) -> list[bytes]:
    """Each test photo as a `size` JPEG (q90): what a web client typically uploads."""
    out = []
    for path in sorted(p for p in source.iterdir() if p.suffix.lower() in {".jpg", ".png"}):
        with Image.open(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB").resize(size).save(buffer, "JPEG", quality=90)
            out.append(buffer.getvalue())
    return out


async def _one(session: aiohttp.ClientSession, url: str, data: bytes, started: float) -> Sample:
    sent = time.perf_counter()
    try:
        async with session.post(
            url + "/classify", data=data, headers={"Content-Type": "image/jpeg"}
        ) as response:
            body = await response.read()
            status, retry_after = response.status, response.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError):
        return Sample(sent - started, 0, time.perf_counter() - sent, "no_answer", None)
    latency = time.perf_counter() - sent
    code = ""
    if status != 200:
        try:
            code = str(json.loads(body)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            code = "not_json"
    return Sample(sent - started, status, latency, code, retry_after)


def _session(timeout_s: float) -> aiohttp.ClientSession:
    # aiohttp rather than httpx: its pool stays cheap with hundreds of open connections,
    # so the load generator is not the bottleneck on a small machine.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=2000),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


async def open_loop(
    url: str, rate: float, duration_s: float, photos: Sequence[bytes], timeout_s: float = 60.0
) -> list[Sample]:
    """Send `rate` requests per second for `duration_s`, on schedule; every answer."""
    if rate <= 0 or duration_s <= 0:
        return []
    async with _session(timeout_s) as session:
        started = time.perf_counter()
        tasks: list[asyncio.Task[Sample]] = []
        for n in range(int(rate * duration_s)):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            photo = photos[n % len(photos)]
            tasks.append(asyncio.create_task(_one(session, url, photo, started)))
        return list(await asyncio.gather(*tasks))


async def closed_loop(
    url: str, clients: int, duration_s: float, photos: Sequence[bytes]
) -> list[Sample]:
    """`clients` users each sending the next request when the last is answered."""
    async with _session(60.0) as session:
        started = time.perf_counter()

        async def user(offset: int) -> list[Sample]:
            out, n = [], offset
            while time.perf_counter() - started < duration_s:
                out.append(await _one(session, url, photos[n % len(photos)], started))
                n += 1
            return out

        groups = await asyncio.gather(*(user(i) for i in range(clients)))
        return [sample for group in groups for sample in group]


def capacity(url: str, photos: Sequence[bytes], duration_s: float = 5.0) -> float:
    """Sustained answers per second with 8 closed-loop clients (after a 1 s warm-up)."""
    asyncio.run(closed_loop(url, 8, 1.0, photos))
    samples = asyncio.run(closed_loop(url, 8, duration_s, photos))
    ok = [s for s in samples if s.status == 200]
    return len(ok) / duration_s


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class GatewayView:
    """What the gateway's /metrics says at one moment (single-process mode)."""

    rss_mib: float
    cpu_s: float
    classify_buckets: tuple[tuple[float, float], ...]  # (upper bound s, cumulative count)

    def p99_ms_since(self, before: GatewayView) -> float:
        """The bucket bound under which 99% of /classify requests since `before` ended."""
        counts = [(bound, now - then) for (bound, now), (_, then)
                  in zip(self.classify_buckets, before.classify_buckets, strict=True)]
        total = counts[-1][1] if counts else 0.0
        for bound, count in counts:
            if total and count >= 0.99 * total:
                return bound * 1000
        return float("nan")


def gateway_view(url: str) -> GatewayView:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    rss = cpu = float("nan")
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "process_resident_memory_bytes":
                rss = sample.value / 2**20
            elif sample.name == "process_cpu_seconds_total":
                cpu = sample.value
            elif (sample.name == "ca_gateway_request_duration_seconds_bucket"
                  and sample.labels.get("route") == "/classify"):
                buckets.append((float(sample.labels["le"]), sample.value))
    return GatewayView(rss, cpu, tuple(sorted(buckets)))


@dataclass(frozen=True)
class MachineCPU:
    """Cumulative CPU ticks of this machine (all cores) from /proc/stat."""

    busy: int
    steal: int
    total: int

    @classmethod
    def now(cls) -> MachineCPU:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
        return cls(user + nice + system + irq + softirq, steal,
                   user + nice + system + idle + iowait + irq + softirq + steal)

    def shares_since(self, before: MachineCPU) -> tuple[float, float]:
        """(busy %, steal %) of all CPU time since `before`."""
        total = max(1, self.total - before.total)
        return (100 * (self.busy - before.busy) / total,
                100 * (self.steal - before.steal) / total)


_PROBE_DATA = bytes(range(256)) * 16384  # 4 MiB


def machine_probe_ms(runs: int = 3) -> float:
    """CPU time (not wall time, so waiting for a core does not count) of a fixed piece of
    work: hashing 4 MiB and a 200k-step Python loop, fastest of `runs`. It rises when the
    cores themselves run slower, e.g. a neighbour on the same physical core or memory bus,
    which /proc/stat cannot show. A few ms of CPU per window."""
    best = float("inf")
    for _ in range(runs):
        started = time.thread_time()
        hashlib.sha256(_PROBE_DATA).digest()
        total = 0
        for n in range(200_000):
            total += n
        best = min(best, time.thread_time() - started)
    return best * 1000


@dataclass(frozen=True)
class Snapshot:
    """The gateway's /metrics, /proc/stat and the probe at one window boundary."""

    gateway: GatewayView
    machine: MachineCPU
    probe_ms: float

    @classmethod
    def take(cls, url: str) -> Snapshot:
        return cls(gateway_view(url), MachineCPU.now(), machine_probe_ms())


@dataclass(frozen=True)
class Row:
    window: int
    sent: int
    ok: int
    shed: int  # 503
    failed: int  # anything else
    p50_ms: float
    p99_ms: float
    rss_mib: float
    gateway_p99_ms: float = float("nan")
    cpu_ms_per_request: float = float("nan")
    busy_pct: float = float("nan")
    steal_pct: float = float("nan")
    probe_ms: float = float("nan")

    def line(self) -> str:
        return (f"{self.window:>6} {self.sent:>7} {self.ok:>7} {self.shed:>6} {self.failed:>6} "
                f"{self.p50_ms:>8.1f} {self.p99_ms:>8.1f} {self.rss_mib:>8.1f} "
                f"{self.gateway_p99_ms:>7.1f} {self.cpu_ms_per_request:>6.2f} "
                f"{self.busy_pct:>5.1f} {self.steal_pct:>5.1f} {self.probe_ms:>6.1f}")


HEADER = f"{'window':>6} {'sent':>7} {'ok':>7} {'503':>6} {'other':>6} " \
         f"{'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8} {'gw p99':>7} {'cpu ms':>6} " \
         f"{'busy%':>5} {'steal%':>5} {'probe':>6}"


def summarize(window: int, samples: Sequence[Sample], rss: float) -> Row:
    ok = [s.latency_s * 1000 for s in samples if s.status == 200]
    shed = sum(1 for s in samples if s.status == 503)
    return Row(window, len(samples), len(ok), shed, len(samples) - len(ok) - shed,
               statistics.median(ok) if ok else float("nan"), percentile(ok, 0.99), rss)


def window_row(window: int, samples: Sequence[Sample], before: Snapshot,
               after: Snapshot) -> Row:
    """`summarize`, plus the gateway's and the machine's view of the same window."""
    row = summarize(window, samples, after.gateway.rss_mib)
    busy, steal = after.machine.shares_since(before.machine)
    cpu_ms = 1000 * (after.gateway.cpu_s - before.gateway.cpu_s) / max(1, row.ok)
    return replace(row, gateway_p99_ms=after.gateway.p99_ms_since(before.gateway),
                   cpu_ms_per_request=cpu_ms, busy_pct=busy, steal_pct=steal,
                   probe_ms=after.probe_ms)


def soak(
    url: str, rate: float, minutes: float, window_s: float, photos: Sequence[bytes]
) -> list[Row]:
    """Open-loop traffic at `rate` for `minutes`, one row per window (printed as it ends)."""
    rows = []
    windows = max(1, round(minutes * 60 / window_s))
    print(HEADER, flush=True)
    before = Snapshot.take(url)
    for window in range(1, windows + 1):
        samples = asyncio.run(open_loop(url, rate, window_s, photos))
        after = Snapshot.take(url)  # also the next window's start
        rows.append(window_row(window, samples, before, after))
        print(rows[-1].line(), flush=True)
        before = after
    return rows


@contextmanager
def local_gateway(repository: Path, port: int) -> Iterator[str]:
    """A single-process embedded gateway on 127.0.0.1:`port`, stopped (SIGTERM) after."""
    env = {**os.environ, "CA_MODEL_REPOSITORY": str(repository), "CA_PORT": str(port),
           "CA_HOST": "127.0.0.1", "CA_ACCESS_LOG": "false", "CA_WORKERS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=1):
                    break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("the gateway exited during start-up") from None
                time.sleep(0.2)
        else:
            raise TimeoutError("the gateway did not become ready in 120 s")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running gateway")
    target.add_argument("--repository", type=Path, help="start an embedded gateway on this")
    parser.add_argument("--port", type=int, default=8077)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--load", type=float, default=0.7, help="fraction of capacity")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s (skips capacity)")
    parser.add_argument("--window-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    photos = web_photos()
    # The load generator's own full collections (up to 74 ms in a soak) would delay reading
    # answers and bunch up sends; what exists now is never garbage, so they skip it.
    gc.freeze()

    def run(url: str) -> None:
        rate = args.rate
        if not rate:
            cap = capacity(url, photos)
            rate = args.load * cap
            print(f"capacity {cap:.1f} req/s; offering {args.load:g}x = {rate:.1f} req/s")
        rows = soak(url, rate, args.minutes, args.window_s, photos)
        print(f"p99 range {min(r.p99_ms for r in rows):.1f}..{max(r.p99_ms for r in rows):.1f} "
              f"ms, RSS range {min(r.rss_mib for r in rows):.1f}.."
              f"{max(r.rss_mib for r in rows):.1f} MiB")

    if args.url:
        run(args.url.rstrip("/"))
    else:
        with local_gateway(args.repository, args.port) as url:
            run(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
