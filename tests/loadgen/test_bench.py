"""`ca-serve bench` against a running gateway: sane JSON, a PNG that opens; stats units."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from service.cli import main as ca_serve
from service.loadgen.bench import GatewayTarget, LoadRun, check_loopback, main
from service.loadgen.stats import Sample, summarize, timeline
from tests.loadgen.test_http_client import ok, started
from tests.support.gateway import GatewayServer


def _check_sane(summary: dict[str, object]) -> None:
    requests = summary["requests"]
    assert isinstance(requests, dict)
    assert requests["total"] == requests["ok"] + requests["failed"] > 0
    statuses = summary["status_counts"]
    assert isinstance(statuses, dict)
    assert sum(statuses.values()) + requests["no_answer"] == requests["total"]
    errors = summary["errors"]
    assert isinstance(errors, dict)
    assert sum(errors.values()) == requests["failed"]
    latency = summary["latency_ms"]
    assert isinstance(latency, dict)
    ordered = [latency[k] for k in ("min", "p50", "p90", "p95", "p99", "max")]
    assert ordered == sorted(ordered) and ordered[0] > 0
    timeline_rows = summary["timeline"]
    assert isinstance(timeline_rows, list)
    assert sum(row["ok"] + row["failed"] for row in timeline_rows) == requests["total"]


def test_bench_for_a_few_seconds(
    gateway: GatewayServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    photos: list[Path],
) -> None:
    out, plot = tmp_path / "results.json", tmp_path / "latency.png"
    code = ca_serve(["bench", "--url", gateway.url, "--images", str(photos[0].parent),
                     "--concurrency", "3", "--duration", "3", "--out", str(out),
                     "--plot", str(plot)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(out.read_text())
    _check_sane(summary)
    assert summary["requests"]["failed"] == 0
    assert set(summary["status_counts"]) == {"200"}
    assert summary["images"]["ok"] == summary["requests"]["ok"]
    assert 2.5 <= summary["duration_s"] < 30
    assert summary["config"]["concurrency"] == 3
    assert "p99" in captured.out and "throughput" in captured.out
    assert "req/s" in captured.err  # the progress line
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 800 and image.size[1] > 300


def _quiet_bench(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any]]:
    """`ca-serve bench ARGS --warmup 0 --quiet`: (exit status, the JSON it wrote)."""
    out = tmp_path / "results.json"
    code = main([*args, "--warmup", "0", "--quiet", "--out", str(out)])
    capsys.readouterr()
    summary: dict[str, Any] = json.loads(out.read_text())
    return code, summary


def test_bench_by_request_count_with_several_files_per_request(
    gateway: GatewayServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, summary = _quiet_bench(tmp_path, capsys, "--url", gateway.url, "--requests", "12",
                                 "--concurrency", "4", "--batch-files", "3")
    assert code == 0
    _check_sane(summary)
    assert summary["requests"]["total"] == 12
    assert summary["images"]["ok"] == 36


def test_bench_refuses_what_it_cannot_load(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", "http://127.0.0.1:9", "--requests", "1"]) == 2
    assert "cannot reach ca-serve" in capsys.readouterr().err
    with pytest.raises(ValueError, match="non-loopback"):
        check_loopback("192.0.2.10")
    check_loopback("127.0.0.1")
    check_loopback("localhost")


def test_summary_counts_failures_apart_from_latency() -> None:
    samples = [
        Sample(0.0, 0.010, 1, "200"),
        Sample(0.1, 0.020, 1, "200"),
        Sample(0.2, 0.001, 1, "503", "503 overloaded"),
        Sample(1.5, 0.030, 1, None, "ReadError"),
        Sample(1.6, 0.040, 1, "200"),
    ]
    summary = summarize(samples, 2.0, {"target": "t", "concurrency": 1, "batch_files": 1})
    _check_sane(summary)
    assert summary["requests"] == {"total": 5, "ok": 3, "failed": 2, "no_answer": 1}
    assert summary["latency_ms"]["min"] == 10.0 and summary["latency_ms"]["max"] == 40.0
    assert summary["errors"] == {"503 overloaded": 1, "ReadError": 1}
    assert summary["throughput"]["requests_per_s"] == 1.5


def test_timeline_merges_a_short_tail_window() -> None:
    rows = timeline([Sample(0.5, 0.1, 2, "200"), Sample(1.9, 0.2, 2, "200")], 2.05)
    assert [(r["t_s"], r["images"]) for r in rows] == [(0.0, 2), (1.0, 2)]
    assert rows[1]["width_s"] == 1.05


REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 35\r\nRetry-After: 1\r\n\r\n"
           b'{"error": {"code": "overloaded"}}  ')


@pytest.mark.parametrize("honor", [True, False])
async def test_a_refused_worker_waits_its_retry_after_unless_told_not_to(honor: bool) -> None:
    # A closed-loop client that resends at once turns every refusal into another request
    # the server must refuse; the project's client waits the Retry-After out, and so does
    # the load generator unless --ignore-retry-after.
    canned, server = await started(lambda n: REFUSED if n == 1 else ok(b'{"results": []}'))
    target = GatewayTarget(f"http://127.0.0.1:{canned.port}", [b"jpeg"], batch=1, top_k=5,
                           timeout_s=5.0, api_key=None)
    try:
        run = LoadRun(target, 1, requests=2, progress=False, honor_retry_after=honor)
        first, second = await run.run()
    finally:
        await target.close()
        server.close()
    assert (first.status, first.error) == ("503", "503 overloaded")
    assert second.status == "200"
    gap_s = second.start_s - (first.start_s + first.latency_s)
    assert (gap_s >= 1.0) if honor else (gap_s < 0.5), gap_s


@pytest.mark.slow
def test_bench_drives_triton_directly(
    model_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    photos: list[Path],
) -> None:
    from tests.support.triton import TritonServer

    out = tmp_path / "triton.json"
    with TritonServer(model_repository) as triton:
        for protocol, address in (("grpc", triton.grpc_url), ("http", triton.http_url)):
            code = main(["--triton", address, "--triton-protocol", protocol,
                         "--model-repository", str(model_repository),
                         "--images", str(photos[0].parent), "--requests", "8",
                         "--batch-files", "2", "--concurrency", "2", "--quiet",
                         "--out", str(out)])
            assert code == 0, capsys.readouterr().err
            summary = json.loads(out.read_text())
            _check_sane(summary)
            assert summary["status_counts"] == {"OK": 8}
            assert summary["images"]["ok"] == 16
            assert summary["config"]["target"].startswith(f"triton {protocol}://")


def test_bench_path_option_posts_elsewhere_and_counts_error_codes(
    gateway: GatewayServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, summary = _quiet_bench(tmp_path, capsys, "--url", gateway.url, "--path",
                                 "/no-such-endpoint", "--requests", "5", "--concurrency", "2")
    assert code == 1  # nothing succeeded
    assert summary["requests"] == {"total": 5, "ok": 0, "failed": 5, "no_answer": 0}
    assert summary["status_counts"] == {"404": 5}
    assert list(summary["errors"]) == ["404 not_found"]
    assert summary["config"]["target"].endswith("/no-such-endpoint")
