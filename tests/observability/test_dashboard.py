"""Static checks of the Grafana dashboard and its provisioning (PromQL is run for real in
test_prometheus_integration.py)."""

from __future__ import annotations

import re

from tests.observability.artifacts import (
    DASHBOARD_PATH,
    GRAFANA_DIR,
    ROOT,
    alert_rules,
    dashboard_exprs,
    dashboard_panels,
    load_dashboard,
    load_yaml,
)

# What an SRE must find on the dashboard, matched against panel titles.
REQUIRED_PANELS = (
    "Request rate",
    "Error ratios",
    "End-to-end latency",
    "Where the time goes",
    "Batch size distribution",
    "Queue depth",
    "In-flight requests",
    "Triton request rate per model",
    "Triton queue and compute time per request",
    "GPU utilisation",
    "GPU memory",
)


def test_dashboard_has_the_required_panels() -> None:
    titles = [p["title"] for p in dashboard_panels(load_dashboard())]
    for wanted in REQUIRED_PANELS:
        assert any(t.startswith(wanted) for t in titles), f"no panel titled {wanted!r}"
    assert len(titles) == len(set(titles)), "panel titles must be unique"


def test_end_to_end_latency_shows_p50_p95_p99() -> None:
    exprs = [e for t, e in dashboard_exprs(load_dashboard()) if t.startswith("End-to-end")]
    quantiles = {q for e in exprs for q in re.findall(r"histogram_quantile\(([\d.]+),", e)}
    assert quantiles == {"0.5", "0.95", "0.99"}


def test_every_panel_has_unit_datasource_description_and_queries() -> None:
    dashboard = load_dashboard()
    ids = []
    for panel in dashboard_panels(dashboard):
        title = panel["title"]
        ids.append(panel["id"])
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"
        assert panel.get("description"), f"{title}: no description"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], f"{title}: no queries"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], title
            assert target["expr"].strip(), title
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, f"{title}: off the grid"
    ids += [p["id"] for p in dashboard["panels"] if p["type"] == "row"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_queries_are_filtered_by_the_variables() -> None:
    """Gateway series by namespace and pod, Triton series by namespace, pod and model."""
    for title, expr in dashboard_exprs(load_dashboard()):
        selectors = re.findall(r"\b(ca_gateway_\w+|nv_\w+)\{([^}]*)\}", expr)
        assert selectors, f"{title}: a metric without a label selector in {expr!r}"
        for metric, labels in selectors:
            assert 'namespace=~"$namespace"' in labels, f"{title}: {metric} ignores $namespace"
            assert 'pod=~"$pod"' in labels, f"{title}: {metric} ignores $pod"
            if metric.startswith("nv_inference"):
                assert 'model=~"$model"' in labels, f"{title}: {metric} ignores $model"
        if "[" in expr:
            assert re.findall(r"\[([^\]]+)\]", expr) == ["$__rate_interval"] * expr.count("["), (
                f"{title}: use [$__rate_interval] so the panel follows the scrape interval"
            )


def test_variables() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "pod", "model"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod", "model"):
        assert variables[name]["definition"].startswith("label_values(")
        assert variables[name]["query"]["query"] == variables[name]["definition"]
    for name in ("pod", "model"):
        assert variables[name]["multi"] and variables[name]["includeAll"]
        assert variables[name]["allValue"] == ".*"


def test_provisioning_points_at_the_dashboard() -> None:
    datasources = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    [prometheus] = datasources["datasources"]
    assert prometheus["type"] == "prometheus" and prometheus["uid"]
    providers = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "ca-serve.yml")
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    # deploy/docker-compose.yml mounts deploy/grafana/dashboards at this path.
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/" + DASHBOARD_PATH.stem


def test_docs_describe_every_panel_and_alert() -> None:
    docs = (ROOT / "docs" / "observability.md").read_text()
    for panel in dashboard_panels(load_dashboard()):
        assert f"**{panel['title']}**" in docs, f"docs/observability.md: panel {panel['title']!r}"
    headings = set(re.findall(r"^### (\w+)$", docs, re.M))
    for alert in alert_rules():
        assert alert["alert"] in headings, f"docs/observability.md: no section {alert['alert']}"
