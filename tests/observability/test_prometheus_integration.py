"""The dashboard against a real stack: the gateway (two uvicorn workers, multiprocess
metrics) in front of the real Triton server, both scraped every second by a real Prometheus
loaded with our rules. After real traffic, every PromQL expression of the dashboard, with
its variables resolved through the same API Grafana uses, must return data.

The GPU panels (nv_gpu_*) cannot have data on a machine without a GPU: for them the test
asserts that they are exactly the expressions reading nv_gpu_* and that Prometheus parses
and evaluates them (an empty result, not an error).
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.gateway.settings import Settings
from service.spec import ONNX_MODEL
from tests.observability.artifacts import (
    PROMETHEUS_DIR,
    dashboard_exprs,
    load_dashboard,
    load_yaml,
)
from tests.observability.prometheus_server import PrometheusServer
from tests.support.gateway import GatewayServer
from tests.support.triton import TritonServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SCRAPE_INTERVAL_S = 1
# Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval);
# with a 1 s range step and 1 s scrapes that is 4 s, plus 1 s of slack for a busy machine.
RATE_INTERVAL = "5s"
TRAFFIC_S = 6.0
MIME = {".jpg": "image/jpeg", ".png": "image/png"}


@dataclass
class Stack:
    prometheus: PrometheusServer
    gateway: GatewayServer
    triton: TritonServer


def scrape_config(gateway: GatewayServer, triton: TritonServer) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml pointed at the test's servers, every second.

    Everything else (jobs, metrics paths, the namespace label, the pod-from-address
    relabelling, the rule files) is the shipped config. The gateway is addressed as
    `localhost` and Triton as `127.0.0.1`, so the two get different `pod` labels.
    """
    config = copy.deepcopy(load_yaml(PROMETHEUS_DIR / "prometheus.yml"))
    interval = f"{SCRAPE_INTERVAL_S}s"
    config["global"].update(
        scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval
    )
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    targets = {
        "ca-serve-gateway": f"localhost:{gateway.port}",
        "triton": triton.metrics_url.removeprefix("http://").removesuffix("/metrics"),
    }
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [targets[job["job_name"]]]
    return config


@pytest.fixture(scope="module")
def stack(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    multiproc_dir = tmp_path_factory.mktemp("prometheus-multiproc")
    with TritonServer(model_repository) as triton:
        settings = Settings(
            backend="triton",
            model_repository=model_repository,
            triton_url=triton.grpc_url,
            model_name=ONNX_MODEL,
            workers=2,
            max_batch_size=8,
            max_batch_delay_ms=5.0,
        )
        extra_env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
        with (
            GatewayServer(settings, extra_env=extra_env) as gateway,
            PrometheusServer(scrape_config(gateway, triton)) as prometheus,
        ):
            yield Stack(prometheus, gateway, triton)


def send_traffic(url: str, photos: list[Path], seconds: float) -> dict[int, int]:
    """Single images and 3-image multipart requests from 4 threads; a few undecodable
    bodies (400). Returns the count of each status."""
    bodies = [(p.read_bytes(), MIME[p.suffix.lower()]) for p in photos]
    deadline = time.monotonic() + seconds

    def worker(index: int) -> list[int]:
        statuses: list[int] = []
        with httpx.Client(base_url=url, timeout=30.0) as client:
            n = index
            while time.monotonic() < deadline:
                n += 1
                data, mime = bodies[n % len(bodies)]
                if n % 3 == 0:
                    files = [
                        (
                            "file",
                            (
                                f"{i}.img",
                                bodies[(n + i) % len(bodies)][0],
                                bodies[(n + i) % len(bodies)][1],
                            ),
                        )
                        for i in range(3)
                    ]
                    response = client.post("/classify", files=files)
                elif n % 11 == 0:
                    response = client.post(
                        "/classify", content=b"not an image", headers={"Content-Type": "image/jpeg"}
                    )
                else:
                    response = client.post(
                        "/classify", content=data, headers={"Content-Type": mime}
                    )
                statuses.append(response.status_code)
        return statuses

    counts: dict[int, int] = {}
    with ThreadPoolExecutor(4) as pool:
        for statuses in pool.map(worker, range(4)):
            for status in statuses:
                counts[status] = counts.get(status, 0) + 1
    return counts


@pytest.fixture(scope="module")
def traffic(stack: Stack, photos: list[Path]) -> tuple[float, float, dict[int, int]]:
    """Send traffic, wait until Prometheus has scraped all of it; (start, end, statuses)."""
    start = time.time()
    statuses = send_traffic(stack.gateway.url, photos, TRAFFIC_S)
    assert statuses.get(200, 0) >= 10 and statuses.get(400, 0) >= 1, statuses
    expected = sum(statuses.values())
    counted = 'sum(ca_gateway_requests_total{route="/classify"})'
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        result = stack.prometheus.query(counted)
        if result and float(result[0]["value"][1]) >= expected:
            break
        time.sleep(0.5)
    else:
        pytest.fail(
            f"Prometheus did not see {expected} requests: {stack.prometheus.query(counted)}"
        )
    time.sleep(2 * SCRAPE_INTERVAL_S)  # one more scrape of the final counters everywhere
    return start - 2.0, time.time(), statuses


def grafana_regex(values: list[str]) -> str:
    """A multi-value variable as Grafana writes it into a `=~` matcher."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def resolve_variables(prometheus: PrometheusServer, start: float, end: float) -> dict[str, str]:
    """Each query variable's values from Prometheus, the way Grafana runs label_values()."""
    resolved: dict[str, str] = {}
    for var in load_dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"], re.S)
        assert match, f"{var['name']}: unsupported variable query {var['definition']!r}"
        selector = substitute(match.group(1), resolved)
        values = prometheus.label_values(match.group(2), selector, start, end)
        assert values, f"variable ${var['name']} has no values ({var['definition']})"
        resolved[var["name"]] = grafana_regex(sorted(values)) if var.get("multi") else values[0]
    return resolved


def substitute(expr: str, variables: dict[str, str]) -> str:
    builtins = {
        "__rate_interval": RATE_INTERVAL,
        "__interval": f"{SCRAPE_INTERVAL_S}s",
        "__range": "1m",
    }
    out = expr
    for name, value in {**builtins, **variables}.items():
        out = out.replace("${" + name + "}", value).replace("$" + name, value)
    leftover = re.findall(r"\$\{?\w+", out)
    assert not leftover, f"unresolved variables {leftover} in {expr!r}"
    return out


def has_value(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(value)) for series in result for _, value in series["values"])


def test_scrape_targets_are_up_and_rules_healthy(stack: Stack, traffic: Any) -> None:
    up = {r["metric"]["job"]: r["value"][1] for r in stack.prometheus.query("up")}
    assert up == {"ca-serve-gateway": "1", "triton": "1"}
    pods = {r["metric"]["job"]: r["metric"]["pod"] for r in stack.prometheus.query("up")}
    assert pods == {"ca-serve-gateway": "localhost", "triton": "127.0.0.1"}
    groups = stack.prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == sum(
        len(g["rules"])
        for f in ("recording.yml", "alerts.yml")
        for g in load_yaml(PROMETHEUS_DIR / f)["groups"]
    )
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy


def test_multiprocess_metrics_count_every_worker(stack: Stack, traffic: Any) -> None:
    """With two workers, every scrape reports the requests of both (multiprocess mode)."""
    _, _, statuses = traffic
    [result] = stack.prometheus.query('sum(ca_gateway_requests_total{route="/classify"})')
    assert float(result["value"][1]) == sum(statuses.values())


def test_every_dashboard_query_returns_data(stack: Stack, traffic: Any) -> None:
    start, end, _ = traffic
    variables = resolve_variables(stack.prometheus, start, end)
    empty: list[str] = []
    gpu_only: list[str] = []
    for title, expr in dashboard_exprs(load_dashboard()):
        query = substitute(expr, variables)
        # Raises on anything Prometheus cannot parse or evaluate.
        result = stack.prometheus.query_range(query, start, end, SCRAPE_INTERVAL_S)
        if "nv_gpu_" in expr:
            gpu_only.append(title)
            assert not result, f"{title}: GPU series on a machine without a GPU? {result[:1]}"
        elif not has_value(result):
            empty.append(f"{title}: {query}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    # The only panels allowed to be empty are the GPU ones, and they are known by name.
    assert set(gpu_only) == {"GPU utilisation", "GPU memory"}
