"""Overload: ~3x the sustainable rate against the real model on the embedded backend.

Accepted requests finish within the request timeout (bounded p99, no 504s), the rest
get a fast 503 `overloaded` with `Retry-After`, memory stays bounded, and latency is
back to normal within seconds. (benchmarks/soak.py runs the 30 s version.)"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.soak import (
    Snapshot,
    capacity,
    closed_loop,
    open_loop,
    percentile,
    web_photos,
    window_row,
)
from service.gateway.settings import Settings
from tests.reliability.support import peak_rss_mib, rss_mib
from tests.support.gateway import GatewayServer

TIMEOUT_S = 2.0
OVERLOAD_S = 8.0


@pytest.fixture(scope="module")
def real_gateway(model_repository: Path) -> Iterator[GatewayServer]:
    settings = Settings(
        model_repository=model_repository, request_timeout_s=TIMEOUT_S, access_log=False
    )
    with GatewayServer(settings) as server:
        yield server


def p50_ok(samples: list[object]) -> float:
    values = [s.latency_s for s in samples if s.status == 200]  # type: ignore[attr-defined]
    assert values
    return statistics.median(values)


@pytest.mark.slow
def test_three_times_capacity(real_gateway: GatewayServer) -> None:
    assert real_gateway.process is not None
    pid, url, photos = real_gateway.process.pid, real_gateway.url, web_photos()
    rate = capacity(url, photos, duration_s=3.0)
    assert rate > 1.0
    normal = p50_ok(asyncio.run(closed_loop(url, 1, 2.0, photos)))
    rss_before = rss_mib(pid)

    samples = asyncio.run(open_loop(url, 3 * rate, OVERLOAD_S, photos, timeout_s=30.0))
    ok = [s for s in samples if s.status == 200]
    shed = [s for s in samples if s.status == 503]
    other = [s for s in samples if s.status not in (200, 503)]
    report = (f"capacity {rate:.1f}/s, offered {len(samples)}, ok {len(ok)}, 503 {len(shed)}, "
              f"other {len(other)}, ok p99 {percentile([s.latency_s for s in ok], 0.99):.2f} s, "
              f"503 p99 {percentile([s.latency_s for s in shed], 0.99):.3f} s")
    print(report)
    # Admission estimates the queue's drain time from a moving average, so a few admitted
    # requests may still miss a deadline this tight (2 s): a bounded 504, never a hang.
    assert {s.status for s in other} <= {504}, (report, other[:5])
    assert len(other) <= 0.1 * len(samples), report
    assert all(s.latency_s < TIMEOUT_S + 1.0 for s in other), report
    assert shed, report  # 3x really was overload
    assert {s.code for s in shed} == {"overloaded"}
    assert all(s.retry_after for s in shed)
    assert percentile([s.latency_s for s in shed], 0.99) < 1.0, report
    assert max(s.latency_s for s in ok) < TIMEOUT_S + 1.0, report
    assert len(ok) >= 0.4 * rate * OVERLOAD_S, report  # still doing useful work
    assert peak_rss_mib(pid) < rss_before + 300, (peak_rss_mib(pid), rss_before)

    deadline = time.monotonic() + 10
    while True:  # back to normal within seconds
        after = p50_ok(asyncio.run(closed_loop(url, 1, 1.0, photos)))
        if after < 2 * normal + 0.05 or time.monotonic() > deadline:
            break
    print(f"p50 before {normal * 1000:.0f} ms, after {after * 1000:.0f} ms")
    assert after < 2 * normal + 0.05, (normal, after)


def test_soak_window_reports_the_gateways_own_view(real_gateway: GatewayServer) -> None:
    """A soak row carries the gateway's p99 and CPU per request besides the client's."""
    url, photos = real_gateway.url, web_photos()
    before = Snapshot.take(url)
    samples = asyncio.run(open_loop(url, 20.0, 1.5, photos))
    row = window_row(1, samples, before, Snapshot.take(url))
    assert row.ok == row.sent == 30, row
    # The gateway's own p99 is a bucket bound; it ends before the client sees the answer.
    assert 0 < row.gateway_p99_ms <= 2 * row.p99_ms + 1, row
    assert 1.0 < row.cpu_ms_per_request < 1000, row
    assert 0 < row.busy_pct <= 100 and 0 <= row.steal_pct <= 100, row
    assert 0.1 < row.probe_ms < 1000, row
    assert row.rss_mib > 50, row
