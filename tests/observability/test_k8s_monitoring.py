"""k8s/monitoring/ is exactly what deploy/generate_k8s_monitoring.py makes from deploy/, and
it fits the workloads and autoscalers the rest of k8s/ declares: a gateway component for
every overlay, a Triton component only where Triton runs, and the adapter's rules."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.observability.artifacts import (
    DASHBOARD_PATH,
    K8S_MONITORING,
    ROOT,
    load_dashboard,
    load_yaml,
    rule_groups,
)

GENERATOR = ROOT / "deploy" / "generate_k8s_monitoring.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_k8s_monitoring", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S_MONITORING / name).read_text()) if d]


def test_committed_files_equal_a_fresh_generation() -> None:
    rendered: dict[str, str] = generator().render()
    on_disk = {
        p.relative_to(K8S_MONITORING).as_posix() for p in K8S_MONITORING.rglob("*") if p.is_file()
    }
    assert on_disk == set(rendered), "k8s/monitoring/ holds files the generator does not make"
    stale = [n for n, text in rendered.items() if (K8S_MONITORING / n).read_text() != text]
    assert not stale, f"stale {stale}: run `python deploy/generate_k8s_monitoring.py`"


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    run = [sys.executable, str(GENERATOR), "--output", str(tmp_path)]
    subprocess.run(run, check=True, timeout=60)
    assert subprocess.run([*run, "--check"], timeout=60, check=False).returncode == 0
    (tmp_path / "triton" / "prometheusrule.yaml").write_text("# edited by hand\n")
    result = subprocess.run([*run, "--check"], timeout=60, capture_output=True, text=True)
    assert result.returncode == 1 and "triton/prometheusrule.yaml" in result.stderr


def test_the_two_prometheus_rules_carry_every_rule_group_once() -> None:
    """Triton's groups (`triton.*`) in the triton component, the rest in the gateway's."""
    [gateway] = documents("gateway/prometheusrule.yaml")
    [triton] = documents("triton/prometheusrule.yaml")
    assert gateway["kind"] == triton["kind"] == "PrometheusRule"
    assert gateway["metadata"]["name"] != triton["metadata"]["name"]
    assert triton["spec"]["groups"] and all(
        g["name"].startswith("triton.") for g in triton["spec"]["groups"]
    )
    assert not any(g["name"].startswith("triton.") for g in gateway["spec"]["groups"])
    by_name = {g["name"]: g for g in [*gateway["spec"]["groups"], *triton["spec"]["groups"]]}
    assert sorted(by_name) == sorted(g["name"] for g in rule_groups())
    assert all(by_name[g["name"]] == g for g in rule_groups())
    # Nothing in the gateway's rules reads a Triton series, so it fits a CPU-only cluster.
    exprs = [str(r["expr"]) for g in gateway["spec"]["groups"] for r in g["rules"]]
    assert not [e for e in exprs if "nv_" in e or 'job="triton"' in e]


def test_dashboard_configmap_holds_the_dashboard() -> None:
    [configmap] = documents("gateway/grafana-dashboard-configmap.yaml")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"][DASHBOARD_PATH.name]) == load_dashboard()
    kubernetes_validate.validate(configmap, "1.30.0", strict=True)


def test_monitors_select_the_workloads_of_k8s() -> None:
    """The ServiceMonitor's port is a named port of the gateway Service, the PodMonitor's a
    named container port of the Triton pods (both declared in k8s/ by the deploy work)."""
    [service_monitor] = documents("gateway/servicemonitor.yaml")
    [pod_monitor] = documents("triton/podmonitor.yaml")
    gateway_selector = service_monitor["spec"]["selector"]["matchLabels"]
    assert gateway_selector == {"app.kubernetes.io/name": "ca-serve-gateway"}
    assert [e["port"] for e in service_monitor["spec"]["endpoints"]] == ["http"]
    assert service_monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    triton_selector = pod_monitor["spec"]["selector"]["matchLabels"]
    assert triton_selector == {"app.kubernetes.io/name": "triton"}
    assert [e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]

    manifests = [
        d
        for p in (ROOT / "k8s").rglob("*.yaml")
        if K8S_MONITORING not in p.parents
        for d in yaml.safe_load_all(p.read_text())
        if isinstance(d, dict)
    ]
    assert manifests, "no manifests under k8s/"
    services = [
        d
        for d in manifests
        if d.get("kind") == "Service"
        and d.get("spec", {}).get("selector", {}).items() >= gateway_selector.items()
    ]
    assert services, "no gateway Service in k8s/"
    assert any(p.get("name") == "http" for s in services for p in s["spec"]["ports"])
    # Patches (kustomize) are workloads too; only full pod templates count.
    templates = [
        d.get("spec", {}).get("template", {})
        for d in manifests
        if d.get("kind") in ("Deployment", "StatefulSet")
    ]
    pods = [
        t
        for t in templates
        if t.get("metadata", {}).get("labels", {}).items() >= triton_selector.items()
    ]
    assert pods, "no Triton workload in k8s/"
    ports = [
        p.get("name") for t in pods for c in t["spec"]["containers"] for p in c.get("ports", [])
    ]
    assert "metrics" in ports


def test_adapter_serves_every_custom_metric_the_autoscalers_use() -> None:
    [configmap] = documents("prometheus-adapter-rules.yaml")
    kubernetes_validate.validate(configmap, "1.30.0", strict=True)
    rules = yaml.safe_load(configmap["data"]["config.yaml"])["rules"]
    served = {rule["name"]["as"] for rule in rules}
    assert served >= {
        "ca_gateway_queue_wait_seconds",
        "ca_gateway_inflight_requests",
        "nv_inference_pending_request_count",
        "nv_inference_queue_seconds_per_request",
    }
    wanted = {
        metric["pods"]["metric"]["name"]
        for path in (ROOT / "k8s").rglob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "HorizontalPodAutoscaler"
        for metric in doc["spec"].get("metrics", [])
        if metric["type"] == "Pods"
    }
    assert wanted <= served, f"HPA metrics without an adapter rule: {wanted - served}"


@pytest.mark.parametrize(
    ("component", "kinds"),
    [
        ("gateway", ["ConfigMap", "PrometheusRule", "ServiceMonitor"]),
        ("triton", ["PodMonitor", "PrometheusRule"]),
    ],
)
def test_components_list_their_objects(component: str, kinds: list[str], tmp_path: Path) -> None:
    """Each is a kustomize Component (optional: the overlays apply without the CRDs) that
    builds, on top of an empty kustomization, to exactly its objects."""
    directory = K8S_MONITORING / component
    kustomization = load_yaml(directory / "kustomization.yaml")
    assert kustomization["kind"] == "Component"
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render kustomizations (tests/k8s too)"
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"components: [{os.path.relpath(directory, tmp_path)}]\n"
    )
    built = subprocess.run(
        [kubectl, "kustomize", str(tmp_path), "--load-restrictor=LoadRestrictionsNone"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert sorted(d["kind"] for d in yaml.safe_load_all(built) if d) == kinds
