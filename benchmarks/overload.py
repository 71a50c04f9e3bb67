"""Latency under overload: an open loop at several times the gateway's capacity.

    python -m benchmarks.overload                      # starts a gateway, defaults
    python -m benchmarks.overload --url http://127.0.0.1:8000
    python -m benchmarks.overload --gateway-env CA_MAX_QUEUE_WAIT_S=1.0

1. Capacity: `--clients` closed-loop clients (web photos, one per request) for
   `--capacity-s` seconds after a warm-up; answers (200) per second.
2. Overload: `--load` x capacity offered as an open loop for `--seconds` (each request
   sent on schedule whether or not earlier ones answered, as independent users do), on
   keep-alive connections of the lean load generator (`service.loadgen.http_client`).
3. Settle: `--settle-s` idle, then the gateway's RSS again.

Prints, and checks against the goals: the admitted requests' (200) p50/p99; goodput (200s
per second) and its share of capacity; the generator's own CPU use over the overload (it
shares the cores with the gateway, so what it burns the gateway cannot use); the 503s'
p99 and whether each carried `Retry-After`; the status histogram (only 200 and 503
allowed); RSS before the overload and `--settle-s` after it. Loopback only; a gateway it
started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks import assets as assets_mod
from benchmarks import photos as photos_mod
from benchmarks.run_all import gateway
from benchmarks.servers import Server
from benchmarks.soak import gateway_view, percentile
from service.loadgen.bench import check_loopback
from service.loadgen.http_client import ConnectionPool, HTTPError, encode_request

GOALS = {"admitted_p99_s": 1.0, "shed_p99_s": 0.025, "rss_settle_mb": 30.0}


@dataclass(frozen=True)
class Outcome:
    """One request: its status (0: no HTTP answer), latency, whether a 503 carried
    `Retry-After`, and how late it was sent against its schedule."""

    status: int
    latency_s: float
    retry_after: bool
    send_lag_s: float
    error: str = ""  # the error code of a non-200 answer, or the kind of failure below HTTP


class Generator:
    """Pre-encoded `POST /classify` requests (one web photo each) for one gateway; each
    run opens its own keep-alive connections (they belong to that run's event loop)."""

    def __init__(self, url: str, photos: Sequence[bytes], timeout_s: float = 60.0) -> None:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"not a URL: {url!r}")
        headers = {"Content-Type": "image/jpeg", "User-Agent": "ca-serve-overload"}
        self.requests = [encode_request("POST", parts.netloc, "/classify?top_k=5", headers,
                                        photo) for photo in photos]
        self.host, self.port, self.timeout_s = parts.hostname, parts.port or 80, timeout_s
        self.pool = ConnectionPool(self.host, self.port, timeout_s=timeout_s)

    @contextlib.asynccontextmanager
    async def connections(self) -> AsyncIterator[None]:
        self.pool = ConnectionPool(self.host, self.port, timeout_s=self.timeout_s)
        try:
            yield
        finally:
            await self.pool.close()

    async def send(self, index: int, lag_s: float = 0.0) -> Outcome:
        started = time.perf_counter()
        try:
            answer = await self.pool.exchange(self.requests[index % len(self.requests)])
        except HTTPError as exc:
            return Outcome(0, time.perf_counter() - started, False, lag_s, exc.kind)
        latency = time.perf_counter() - started
        return Outcome(answer.status, latency, "retry-after" in answer.headers, lag_s,
                       answer.error_code() if answer.status != 200 else "")

    async def closed_loop(self, clients: int, seconds: float) -> list[Outcome]:
        async with self.connections():
            return await self._closed_loop(clients, seconds)

    async def _closed_loop(self, clients: int, seconds: float) -> list[Outcome]:
        stop = time.perf_counter() + seconds

        async def client(offset: int) -> list[Outcome]:
            done, n = [], offset
            while time.perf_counter() < stop:
                done.append(await self.send(n))
                n += clients
            return done

        groups = await asyncio.gather(*(client(i) for i in range(clients)))
        return [outcome for group in groups for outcome in group]

    async def open_loop(self, rate: float, seconds: float) -> list[Outcome]:
        """`rate` requests per second for `seconds`, each on schedule."""
        async with self.connections():
            return await self._open_loop(rate, seconds)

    async def _open_loop(self, rate: float, seconds: float) -> list[Outcome]:
        started = time.perf_counter()
        tasks = []
        for n in range(int(rate * seconds)):
            due = started + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.send(n, time.perf_counter() - due)))
        return list(await asyncio.gather(*tasks))


def capacity(generator: Generator, clients: int, seconds: float) -> float:
    """Answers (200) per second of `clients` closed-loop clients, after a 2 s warm-up."""
    asyncio.run(generator.closed_loop(clients, 2.0))
    outcomes = asyncio.run(generator.closed_loop(clients, seconds))
    return sum(1 for o in outcomes if o.status == 200) / seconds


def overload(generator: Generator, rate: float, seconds: float) -> tuple[list[Outcome], float]:
    """The open loop's outcomes and the generator's CPU seconds per wall second."""
    cpu, wall = time.process_time(), time.perf_counter()
    outcomes = asyncio.run(generator.open_loop(rate, seconds))
    return outcomes, (time.process_time() - cpu) / (time.perf_counter() - wall)


def rss_mb(url: str) -> float:
    """The gateway's resident memory (MB, 10^6 bytes) from its /metrics."""
    return gateway_view(url).rss_mib * 2**20 / 1e6


def summarize(outcomes: Sequence[Outcome], seconds: float, cap: float, generator_cores: float,
              rss_before: float, rss_after: float) -> dict[str, Any]:
    ok = [o.latency_s for o in outcomes if o.status == 200]
    shed = [o for o in outcomes if o.status == 503]
    statuses = Counter(o.status for o in outcomes)
    goodput = len(ok) / seconds
    return {
        "capacity_per_s": round(cap, 1), "offered_per_s": round(len(outcomes) / seconds, 1),
        "sent": len(outcomes), "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(Counter(o.error for o in outcomes if o.error)),  # by code or kind
        "admitted_p50_s": round(percentile(ok, 0.5), 3),
        "admitted_p99_s": round(percentile(ok, 0.99), 3),
        "goodput_per_s": round(goodput, 1), "goodput_of_capacity": round(goodput / cap, 3),
        "shed_p50_s": round(percentile([o.latency_s for o in shed], 0.5), 4),
        "shed_p99_s": round(percentile([o.latency_s for o in shed], 0.99), 4),
        "shed_without_retry_after": sum(1 for o in shed if not o.retry_after),
        "send_lag_p99_s": round(percentile([o.send_lag_s for o in outcomes], 0.99), 4),
        "generator_cores": round(generator_cores, 2),
        "generator_cpu_ms_per_request": round(1000 * generator_cores * seconds
                                              / max(1, len(outcomes)), 3),
        "rss_before_mb": round(rss_before, 1), "rss_after_mb": round(rss_after, 1),
    }


def verdicts(summary: dict[str, Any]) -> dict[str, bool]:
    """Each goal: met or not."""
    only = set(summary["statuses"]) <= {"200", "503"}
    return {
        f"admitted p99 <= {GOALS['admitted_p99_s']:g} s":
            summary["admitted_p99_s"] <= GOALS["admitted_p99_s"],
        f"503 p99 <= {GOALS['shed_p99_s'] * 1000:g} ms":
            summary["shed_p99_s"] <= GOALS["shed_p99_s"],
        "only 200 and 503, every 503 with Retry-After":
            only and summary["shed_without_retry_after"] == 0,
        f"RSS back within {GOALS['rss_settle_mb']:g} MB":
            summary["rss_after_mb"] - summary["rss_before_mb"] <= GOALS["rss_settle_mb"],
    }


def report(summary: dict[str, Any]) -> str:
    s = summary
    lines = [
        f"capacity {s['capacity_per_s']} req/s; offered {s['offered_per_s']} req/s "
        f"({s['sent']} requests; generator send lag p99 {s['send_lag_p99_s'] * 1000:.1f} ms)",
        f"statuses {s['statuses']} (errors {s['errors'] or 'none'}; 0: no answer); "
        f"503s without Retry-After: {s['shed_without_retry_after']}",
        f"admitted p50 {s['admitted_p50_s'] * 1000:.0f} ms, "
        f"p99 {s['admitted_p99_s'] * 1000:.0f} ms",
        f"goodput {s['goodput_per_s']} req/s = {s['goodput_of_capacity']:.0%} of capacity "
        f"(generator: {s['generator_cores']:.2f} cores, "
        f"{s['generator_cpu_ms_per_request']:.2f} CPU ms per request)",
        f"503 p50 {s['shed_p50_s'] * 1000:.1f} ms, p99 {s['shed_p99_s'] * 1000:.1f} ms",
        f"RSS {s['rss_before_mb']:.0f} MB before, {s['rss_after_mb']:.0f} MB after settling "
        f"({s['rss_after_mb'] - s['rss_before_mb']:+.0f})",
    ]
    lines += [f"goal {'met' if met else 'NOT met'}: {goal}"
              for goal, met in verdicts(summary).items()]
    return "\n".join(lines)


def run(url: str, photos: Sequence[bytes], *, load: float, seconds: float, clients: int,
        capacity_s: float, settle_s: float, known_capacity: float = 0.0) -> dict[str, Any]:
    """Capacity (measured unless `known_capacity` is given), the overload, the settling."""
    generator = Generator(url, photos)
    if known_capacity:
        asyncio.run(generator.closed_loop(clients, 2.0))  # warm-up only
    cap = known_capacity or capacity(generator, clients, capacity_s)
    print(f"capacity {cap:.1f} req/s ({'given' if known_capacity else 'measured'}); "
          f"offering {load:g}x = {load * cap:.1f} req/s for {seconds:g} s", flush=True)
    time.sleep(1.0)  # let the capacity run's last answers go
    before = rss_mb(url)
    outcomes, cores = overload(generator, load * cap, seconds)
    print(f"overload done; settling {settle_s:g} s", flush=True)
    time.sleep(settle_s)
    return summarize(outcomes, seconds, cap, cores, before, rss_mb(url))


@contextlib.contextmanager
def started_gateway(env: dict[str, str], work: Path) -> Iterator[str]:
    server: Server = gateway(assets_mod.ensure_model().repository, env,
                             work / "gateway-overload.log")
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overload",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running gateway (default: start one, its defaults)")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="CA_X=V",
                        help="settings for the gateway this starts (repeatable)")
    parser.add_argument("--load", type=float, default=3.0, help="multiple of capacity")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the overload")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients for capacity")
    parser.add_argument("--capacity-s", type=float, default=10.0)
    parser.add_argument("--capacity", type=float, default=0.0,
                        help="req/s to take as capacity instead of measuring it (to offer "
                        "two gateways the same rate)")
    parser.add_argument("--settle-s", type=float, default=60.0,
                        help="idle time after the overload before RSS is read again")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    sets = photos_mod.write_sets(assets_mod.WORK / "photos")
    web = photos_mod.read_set(sets["web"])
    # The generator's own full collections would delay sends; what exists now is never
    # garbage, so they skip it.
    gc.freeze()

    def measure(url: str) -> dict[str, Any]:
        return run(url, web, load=args.load, seconds=args.seconds, clients=args.clients,
                   capacity_s=args.capacity_s, settle_s=args.settle_s,
                   known_capacity=args.capacity)

    if args.url:
        check_loopback(urlsplit(args.url).hostname or "")
        summary = measure(args.url.rstrip("/"))
    else:
        env = dict(item.split("=", 1) for item in args.gateway_env)
        work = assets_mod.WORK / "overload"
        work.mkdir(parents=True, exist_ok=True)
        with started_gateway(env, work) as url:
            summary = measure(url)
    print(report(summary))
    if args.out:
        args.out.write_text(json.dumps({**summary, "goals": verdicts(summary)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
