"""Every ca_gateway_* series the dashboard, rules and HPA adapter read is one the gateway
exposes (service/gateway/metrics.py), and every gateway metric is on the dashboard."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry

from tests.observability.artifacts import (
    K8S_MONITORING,
    dashboard_exprs,
    load_dashboard,
    load_yaml,
    rule_groups,
)

# A raw series name, not part of a recording rule's level:metric:operation name.
GATEWAY_NAME = re.compile(r"(?<![:\w])ca_gateway_[a-z0-9_]+(?![:\w])")
# The contract in docs/architecture.md (Metrics).
CONTRACT = {
    "ca_gateway_requests_total",
    "ca_gateway_request_duration_seconds",
    "ca_gateway_preprocess_duration_seconds",
    "ca_gateway_queue_wait_seconds",
    "ca_gateway_inference_duration_seconds",
    "ca_gateway_batch_size",
    "ca_gateway_queue_depth",
    "ca_gateway_backend_errors_total",
    "ca_gateway_inflight_requests",
    "ca_gateway_model_info",
    "ca_gateway_model_reloads_total",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exposed_series() -> dict[str, str]:
    """Series name -> metric family (as in docs/architecture.md) that the gateway's metrics
    module exposes."""
    from service.gateway.metrics import GatewayMetrics

    registry = CollectorRegistry()
    GatewayMetrics("triton", registry=registry)
    series: dict[str, str] = {}
    for family in registry.collect():
        if not family.name.startswith("ca_gateway_"):
            continue
        if family.type not in SUFFIXES:
            pytest.fail(f"{family.name}: unexpected metric type {family.type}")
        contract_name = family.name + ("_total" if family.type == "counter" else "")
        for suffix in SUFFIXES[family.type]:
            series[family.name + suffix] = contract_name
    return series


def adapter_queries() -> list[str]:
    configmap = load_yaml(K8S_MONITORING / "prometheus-adapter-rules.yaml")
    rules = load_yaml_text(configmap["data"]["config.yaml"])["rules"]
    return [text for rule in rules for text in (rule["seriesQuery"], rule["metricsQuery"])]


def load_yaml_text(text: str) -> dict[str, list[dict[str, str]]]:
    import yaml

    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def used_names() -> dict[str, set[str]]:
    """Gateway series name -> where it is read."""
    sources: list[tuple[str, str]] = [
        (f"dashboard panel {t!r}", e) for t, e in dashboard_exprs(load_dashboard())
    ]
    sources += [
        (f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in rule_groups()
        for rule in group["rules"]
    ]
    sources += [("prometheus-adapter rules", q) for q in adapter_queries()]
    used: dict[str, set[str]] = {}
    for where, text in sources:
        for name in GATEWAY_NAME.findall(text):
            used.setdefault(name, set()).add(where)
    return used


def test_metrics_module_exposes_the_contract() -> None:
    assert set(exposed_series().values()) == CONTRACT


def test_every_gateway_series_read_is_exposed() -> None:
    exposed = exposed_series()
    unknown = {name: sorted(where) for name, where in used_names().items() if name not in exposed}
    assert not unknown, f"read but not exposed by service/gateway/metrics.py: {unknown}"


def test_every_gateway_metric_is_on_the_dashboard() -> None:
    exposed = exposed_series()
    on_dashboard = {
        exposed[name]
        for _, expr in dashboard_exprs(load_dashboard())
        for name in GATEWAY_NAME.findall(expr)
        if name in exposed
    }
    assert on_dashboard == CONTRACT


def test_model_info_names_the_model_that_answered_last() -> None:
    from service.gateway.backends import ModelId
    from service.gateway.metrics import GatewayMetrics

    registry = CollectorRegistry()
    metrics = GatewayMetrics("triton", registry=registry)

    def info(version: str) -> float | None:
        labels = {"backend": "triton", "model": "m", "version": version}
        return registry.get_sample_value("ca_gateway_model_info", labels)

    assert info("1") is None  # nothing answered yet: no series
    metrics.model_answered(ModelId("m", "1"))
    assert info("1") == 1.0
    metrics.model_answered(ModelId("m", "2"))
    assert (info("1"), info("2")) == (0.0, 1.0)
    metrics.model_answered(ModelId("m", "1"))
    assert (info("1"), info("2")) == (1.0, 0.0)
