"""The rendered manifests agree with the code and with each other.

Probe paths exist in the gateway app and Triton, every CA_* variable is a real setting,
autoscalers point at real things, shutdown fits the grace period. The ingress:
test_ingress.py; GPUs, resources and lockdown: test_pod_security.py.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from service.gateway.settings import Settings
from service.spec import ONNX_MODEL, TENSORRT_MODEL, TORCHSCRIPT_MODEL
from tests.k8s import dockerfiles
from tests.k8s.manifests import (
    DOCKER,
    GATEWAY,
    K8S,
    TRITON,
    Manifest,
    PodTemplate,
    container,
    container_port,
    containers,
    flag_value,
    gateway_config,
    name_of,
    of_kind,
    one,
    pod_templates,
    prestop_sleep_seconds,
    selects,
    workload_by_label,
)

# KServe v2 health endpoints Triton serves on its HTTP port.
TRITON_HEALTH_PATHS = {"/v2/health/live", "/v2/health/ready"}


@pytest.fixture(scope="module")
def gateway_get() -> Callable[[str], int]:
    """GET a path on the real gateway app, lifespan not started (no model, backend not
    ready), and return the status: what a probe sees on a pod that is still starting."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

        from service.gateway.app import create_app

    client = TestClient(create_app(Settings()))
    return lambda path: client.get(path).status_code


def settings_from(config: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in os.environ if k.startswith("CA_")]:
        monkeypatch.delenv(key)
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    return Settings()


# --- probes ----------------------------------------------------------------------------


def test_gateway_probes_hit_real_routes_on_the_served_port(
    objects: list[Manifest], gateway_get: Callable[[str], int]
) -> None:
    template = workload_by_label(objects, GATEWAY)
    gateway = container(template, "gateway")
    probes = {kind: gateway[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    config = gateway_config(objects)
    served_port = int(flag_value(gateway["args"], "--port"))
    assert served_port == int(config["CA_PORT"])
    for kind, probe in probes.items():
        assert container_port(gateway, probe["httpGet"]["port"]) == served_port, kind
    # Alive as soon as the process answers; ready only once the backend is.
    assert gateway_get(probes["startupProbe"]["httpGet"]["path"]) == 200
    assert gateway_get(probes["livenessProbe"]["httpGet"]["path"]) == 200
    assert gateway_get(probes["readinessProbe"]["httpGet"]["path"]) == 503


def test_triton_probes_hit_its_health_endpoints_on_its_http_port(gpu: list[Manifest]) -> None:
    triton = container(workload_by_label(gpu, TRITON), "triton")
    http_port = int(flag_value(triton["args"], "--http-port"))
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = triton[kind]["httpGet"]
        assert probe["path"] in TRITON_HEALTH_PATHS
        assert container_port(triton, probe["port"]) == http_port


def test_triton_serves_on_the_ports_it_declares(gpu: list[Manifest]) -> None:
    triton = container(workload_by_label(gpu, TRITON), "triton")
    declared = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert declared == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for name, flag in (
        ("http", "--http-port"),
        ("grpc", "--grpc-port"),
        ("metrics", "--metrics-port"),
    ):
        assert int(flag_value(triton["args"], flag)) == declared[name]


# --- settings ----------------------------------------------------------------------------


def test_every_ca_variable_is_a_real_setting(objects: list[Manifest]) -> None:
    fields = {f"CA_{name.upper()}" for name in Settings.model_fields}
    seen = set(gateway_config(objects))
    for template in pod_templates(objects):
        for item in containers(template.spec):
            seen |= {env["name"] for env in item.get("env", []) if env["name"].startswith("CA_")}
    seen |= {k for k in one(objects, "Secret", "ca-serve-api-keys").get("data", {})}
    unknown = {name for name in seen if name.startswith("CA_")} - fields
    assert not unknown, f"not fields of service.gateway.settings.Settings: {sorted(unknown)}"


def test_the_configmap_parses_as_settings(
    overlay: str, objects: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from(gateway_config(objects), monkeypatch)
    assert settings.backend == {"gpu": "triton", "cpu": "embedded"}[overlay]
    assert settings.host == "0.0.0.0"
    assert settings.model_name in {ONNX_MODEL, TORCHSCRIPT_MODEL, TENSORRT_MODEL}


def test_thread_pools_fit_the_gateway_cpu(objects: list[Manifest]) -> None:
    config = gateway_config(objects)
    gateway = container(workload_by_label(objects, GATEWAY), "gateway")
    cpus = int(gateway["resources"]["requests"]["cpu"])
    assert 1 <= int(config["CA_PREPROCESS_THREADS"]) <= cpus
    assert 1 <= int(config["CA_INFERENCE_THREADS"]) <= cpus


def test_api_keys_come_from_the_secret(objects: list[Manifest]) -> None:
    gateway = container(workload_by_label(objects, GATEWAY), "gateway")
    secret = one(objects, "Secret", "ca-serve-api-keys")
    env = {e["name"]: e for e in gateway["env"]}
    ref = env["CA_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["data"]
    assert "CA_API_KEYS" not in gateway_config(objects)


def test_gpu_gateway_balances_over_every_triton_pod(gpu: list[Manifest]) -> None:
    """CA_TRITON_URL is `dns:///<service>.<namespace>.svc.cluster.local:<grpc port>` of a
    headless Service: DNS answers with every ready pod, and the gateway's gRPC round_robin
    balances requests over them (a ClusterIP would pin one pod per gateway connection)."""
    config = gateway_config(gpu)
    url = config["CA_TRITON_URL"]
    match = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", url)
    assert match, f"CA_TRITON_URL={url}: not a dns:/// target of a Service's cluster name"
    name, namespace, port = match.group(1), match.group(2), int(match.group(3))
    service = one(gpu, "Service", name)
    assert service["metadata"]["namespace"] == namespace
    assert service["spec"].get("clusterIP") == "None", "a ClusterIP balances connections only"
    assert not service["spec"].get("publishNotReadyAddresses", False)
    by_port = {p["port"]: p["name"] for p in service["spec"]["ports"]}
    assert by_port[port] == config["CA_TRITON_PROTOCOL"] == "grpc"
    triton = container(workload_by_label(gpu, TRITON), "triton")
    assert int(flag_value(triton["args"], "--grpc-port")) == container_port(triton, "grpc")
    # No ClusterIP Service in front of Triton for anyone to fall back to.
    assert [
        s["metadata"]["name"]
        for s in of_kind(gpu, "Service")
        if selects(s["spec"]["selector"], {"app.kubernetes.io/name": TRITON})
    ] == [name]


def test_the_model_repository_is_where_the_gateway_looks(objects: list[Manifest]) -> None:
    template = workload_by_label(objects, GATEWAY)
    gateway = container(template, "gateway")
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    assert gateway_config(objects)["CA_MODEL_REPOSITORY"] == mounts["models"]


# --- scaling, disruption, shutdown -----------------------------------------------------------


def test_hpas_target_real_deployments_with_cpu_and_custom_metrics(objects: list[Manifest]) -> None:
    hpas = of_kind(objects, "HorizontalPodAutoscaler")
    assert hpas
    for hpa in hpas:
        assert hpa["apiVersion"] == "autoscaling/v2"
        ref = hpa["spec"]["scaleTargetRef"]
        target = one(objects, ref["kind"], ref["name"])
        assert target["apiVersion"] == ref["apiVersion"]
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        types = {m["type"] for m in hpa["spec"]["metrics"]}
        assert "Pods" in types, name_of(hpa)
        if any(m["type"] == "Resource" for m in hpa["spec"]["metrics"]):
            # Utilisation is relative to requests: every container must request CPU.
            for item in target["spec"]["template"]["spec"]["containers"]:
                assert "cpu" in item["resources"]["requests"]
    gateway = one(objects, "HorizontalPodAutoscaler", GATEWAY)["spec"]["metrics"]
    assert {m["type"] for m in gateway} == {"Resource", "Pods"}
    assert [m["pods"]["metric"]["name"] for m in gateway if m["type"] == "Pods"] == [
        "ca_gateway_queue_wait_seconds"
    ]


def test_triton_hpa_scales_on_queue_time_per_request(gpu: list[Manifest]) -> None:
    metrics = one(gpu, "HorizontalPodAutoscaler", TRITON)["spec"]["metrics"]
    assert [m["pods"]["metric"]["name"] for m in metrics] == [
        "nv_inference_queue_seconds_per_request"
    ]
    assert metrics[0]["pods"]["target"]["type"] == "AverageValue"


def test_pdbs_select_their_workloads(objects: list[Manifest]) -> None:
    pdbs = of_kind(objects, "PodDisruptionBudget")
    templates = list(pod_templates(objects))
    for pdb in pdbs:
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [t for t in templates if selects(selector, t.labels)]
        assert len(matched) == 1, name_of(pdb)
    assert {p["metadata"]["name"] for p in pdbs} >= {GATEWAY}


def test_services_select_pods_and_target_named_ports(objects: list[Manifest]) -> None:
    templates = list(pod_templates(objects))
    for service in of_kind(objects, "Service"):
        matched = [t for t in templates if selects(service["spec"]["selector"], t.labels)]
        assert len(matched) == 1, name_of(service)
        app = matched[0].spec["containers"]
        for port in service["spec"]["ports"]:
            assert any(container_port(c, port["targetPort"]) for c in app), (
                f"{name_of(service)} port {port['name']}"
            )


def test_monitoring_labels_and_port_names(objects: list[Manifest], overlay: str) -> None:
    gateway = one(objects, "Service", GATEWAY)
    assert gateway["metadata"]["labels"]["app.kubernetes.io/name"] == GATEWAY
    assert "http" in {p["name"] for p in gateway["spec"]["ports"]}
    if overlay == "gpu":
        triton = workload_by_label(objects, TRITON)
        assert "metrics" in {p["name"] for p in container(triton, "triton")["ports"]}
        service = one(objects, "Service", TRITON)
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}


def grace_check(template: PodTemplate, item: Manifest, drain_s: float) -> None:
    grace = int(template.spec["terminationGracePeriodSeconds"])
    sleep = prestop_sleep_seconds(item)
    assert sleep >= 1, "the endpoint needs a moment to leave the load balancers"
    assert sleep + drain_s < grace, f"{template.owner}: {sleep} + {drain_s} >= {grace}"


def test_gateway_shutdown_fits_the_grace_period(
    objects: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    template = workload_by_label(objects, GATEWAY)
    settings = settings_from(gateway_config(objects), monkeypatch)
    # A request admitted just before SIGTERM may take its whole timeout.
    assert settings.graceful_shutdown_s >= settings.request_timeout_s
    grace_check(template, container(template, "gateway"), settings.graceful_shutdown_s)


def test_triton_shutdown_fits_the_grace_period(gpu: list[Manifest]) -> None:
    template = workload_by_label(gpu, TRITON)
    triton = container(template, "triton")
    grace_check(template, triton, float(flag_value(triton["args"], "--exit-timeout-secs")))


def test_topology_spread(objects: list[Manifest]) -> None:
    for template in pod_templates(objects):
        keys = {c["topologyKey"] for c in template.spec["topologySpreadConstraints"]}
        assert "kubernetes.io/hostname" in keys, template.owner
        for constraint in template.spec["topologySpreadConstraints"]:
            assert selects(constraint["labelSelector"]["matchLabels"], template.labels)


# --- images and the model repository ---------------------------------------------------------


def test_triton_runs_the_pinned_ngc_image_the_trt_step_was_built_from(gpu: list[Manifest]) -> None:
    template = workload_by_label(gpu, TRITON)
    image = container(template, "triton")["image"]
    dockerfile = dockerfiles.parse(DOCKER / "triton.Dockerfile")
    assert image == dockerfile.expand(dockerfile.stages[0].base)
    repository, _, tag = image.rpartition(":")
    assert repository == "nvcr.io/nvidia/tritonserver"
    assert tag and tag != "latest" and tag[:2].isdigit()
    step = container(template, "tensorrt-plan")
    assert step["command"][:3] == ["python3", "-m", "service.model.tensorrt"]
    assert flag_value(step["command"], "--repository") == "/models"
    mounts = {m["name"]: m["mountPath"] for m in step["volumeMounts"]}
    assert flag_value(step["command"], "--cache") == mounts["tensorrt-cache"]
    assert step["command"] == dockerfiles.exec_form(dockerfile.final.last("CMD"))
    assert flag_value(container(template, "triton")["args"], "--model-repository") == "/models"


def test_no_image_floats(objects: list[Manifest]) -> None:
    for template in pod_templates(objects):
        for item in containers(template.spec):
            image = item["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{image} has no tag"
            assert not image.endswith(":latest"), image


def test_init_containers_copy_the_repository_the_model_image_carries(
    objects: list[Manifest],
) -> None:
    dockerfile = dockerfiles.parse(DOCKER / "builder.Dockerfile")
    model = dockerfile.stage("model")
    default_cmd = dockerfiles.exec_form(model.last("CMD"))
    for template in pod_templates(objects):
        for item in template.spec.get("initContainers", []):
            if item["name"] != "model-repository":
                continue
            assert item["image"].split(":")[0] == "ca-serve-model"
            assert item["command"] == default_cmd
            source = Path(item["command"][2])
            assert any(str(source.parent) in copy for copy in model.all("COPY"))
            mounts = {m["mountPath"] for m in item["volumeMounts"]}
            assert item["command"][3].rstrip("/") in mounts


# --- monitoring (the components in k8s/monitoring) ------------------------------------------


def test_monitors_scrape_real_named_ports(monitored_overlays: dict[str, list[Manifest]]) -> None:
    gpu = monitored_overlays["gpu"]
    for monitor in of_kind(gpu, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s for s in of_kind(gpu, "Service") if selects(selector, s["metadata"]["labels"])
        ]
        assert len(services) == 1, name_of(monitor)
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    for monitor in of_kind(gpu, "PodMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        templates = [t for t in pod_templates(gpu) if selects(selector, t.labels)]
        assert len(templates) == 1, name_of(monitor)
        ports = {p["name"] for c in templates[0].spec["containers"] for p in c.get("ports", [])}
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports
    kinds = {obj["kind"] for obj in gpu}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds


def test_hpa_custom_metrics_are_served_by_the_adapter_rules(objects: list[Manifest]) -> None:
    config = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
    rules = yaml.safe_load(config["data"]["config.yaml"])["rules"]
    served = {rule["name"]["as"] for rule in rules}
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in served, name_of(hpa)


def test_autoscaled_deployments_leave_replicas_to_the_hpa(objects: list[Manifest]) -> None:
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = one(objects, ref["kind"], ref["name"])
        # `kubectl apply` would reset a declared count on every deploy, under live load.
        assert "replicas" not in target["spec"], name_of(target)
        assert hpa["spec"]["minReplicas"] >= 2, "one pod is no redundancy"
