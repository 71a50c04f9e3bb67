"""Each overlay renders, with and without its optional components, and every object
validates strictly against Kubernetes' schemas.

Built-in kinds: kubernetes-validate's strict schemas (unknown fields rejected) for the
newest Kubernetes it ships. Prometheus Operator kinds (ServiceMonitor, PodMonitor,
PrometheusRule): the minimal schemas in crd_schemas.py. Any other kind fails, so a new
CRD arrives with a schema of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.k8s.crd_schemas import SCHEMAS
from tests.k8s.manifests import (
    K8S,
    MONITORING,
    Manifest,
    name_of,
    of_kind,
    render_with_components,
)

OPERATOR_GROUP = "monitoring.coreos.com/"

KUBERNETES_VERSION = kubernetes_validate.latest_version()


def validate(obj: Manifest) -> None:
    if obj["kind"] in SCHEMAS:
        jsonschema.validate(obj, SCHEMAS[obj["kind"]])
        return
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_overlay_renders_the_expected_objects(overlay: str, objects: list[Manifest]) -> None:
    names = {name_of(obj) for obj in objects}
    gateway = {
        "Namespace/ca-serve",
        "Deployment/ca-serve-gateway",
        "Service/ca-serve-gateway",
        "HorizontalPodAutoscaler/ca-serve-gateway",
        "PodDisruptionBudget/ca-serve-gateway",
        "Ingress/ca-serve-gateway",
        "NetworkPolicy/default-deny-ingress",
        "NetworkPolicy/ca-serve-gateway",
    }
    triton = {
        "StatefulSet/triton",
        "Service/triton",
        "HorizontalPodAutoscaler/triton",
        "PodDisruptionBudget/triton",
        "NetworkPolicy/triton",
    }
    assert gateway <= names
    if overlay == "gpu":
        assert triton <= names
    else:
        assert not triton & names
    assert any(n.startswith("ConfigMap/ca-serve-gateway-config-") for n in names)
    assert any(n.startswith("Secret/ca-serve-api-keys-") for n in names)


def validation_failures(objects: list[Manifest]) -> list[str]:
    failures = []
    for obj in objects:
        try:
            validate(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            path = ".".join(str(p) for p in exc.path)
            failures.append(f"{name_of(obj)}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(f"{name_of(obj)}: {exc.message} (add a schema to crd_schemas.py)")
    return failures


def test_every_object_validates_strictly(objects: list[Manifest]) -> None:
    failures = validation_failures(objects)
    assert not failures, "\n".join(failures)


def test_every_object_validates_strictly_with_monitoring(monitored: list[Manifest]) -> None:
    failures = validation_failures(monitored)
    assert not failures, "\n".join(failures)


def test_everything_is_namespaced_into_ca_serve(objects: list[Manifest]) -> None:
    cluster_scoped = {"Namespace"}
    for obj in objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace") == "ca-serve", name_of(obj)


@pytest.mark.parametrize(
    "components", [["tensorrt-cache-pvc"], ["triton-object-storage"]], ids=lambda c: c[0]
)
def test_components_render_onto_the_gpu_overlay_and_validate(
    tmp_path: Path, components: list[str]
) -> None:
    objects = render_with_components(
        tmp_path, [K8S / "overlays" / "gpu"], [K8S / "components" / c for c in components]
    )
    for obj in objects:
        validate(obj)
    triton = next(o for o in objects if name_of(o) == "StatefulSet/triton")
    spec = triton["spec"]["template"]["spec"]
    # Both replace the per-replica cache volume, which is then unused.
    assert "volumeClaimTemplates" not in triton["spec"]
    if components == ["tensorrt-cache-pvc"]:
        claims = {name_of(o) for o in objects if o["kind"] == "PersistentVolumeClaim"}
        assert claims == {"PersistentVolumeClaim/triton-tensorrt-cache"}
        cache = next(v for v in spec["volumes"] if v["name"] == "tensorrt-cache")
        assert cache == {
            "name": "tensorrt-cache",
            "persistentVolumeClaim": {"claimName": "triton-tensorrt-cache"},
        }
        step = next(c for c in spec["initContainers"] if c["name"] == "tensorrt-plan")
        assert "tensorrt-cache" in {m["name"] for m in step["volumeMounts"]}
    else:
        args = spec["containers"][0]["args"]
        assert "--model-repository=$(MODEL_REPOSITORY)" in args
        assert "initContainers" not in spec
        assert not any(v["name"] == "tensorrt-cache" for v in spec["volumes"])
        store = next(o for o in objects if name_of(o) == "ConfigMap/triton-model-store")
        assert store["data"]["MODEL_REPOSITORY"].startswith(("s3://", "gs://"))


def test_the_default_cache_is_a_volume_per_replica(gpu: list[Manifest]) -> None:
    """The plan cache outlives the pod: a claim per replica, kept when scaled away."""
    [triton] = of_kind(gpu, "StatefulSet")
    [claim] = triton["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "tensorrt-cache"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert triton["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    spec = triton["spec"]["template"]["spec"]
    assert not any(v["name"] == "tensorrt-cache" for v in spec["volumes"]), (
        "a pod volume named like the claim template would shadow it"
    )
    step = next(c for c in spec["initContainers"] if c["name"] == "tensorrt-plan")
    assert "tensorrt-cache" in {m["name"] for m in step["volumeMounts"]}
    # The StatefulSet's governing Service is the headless one the gateways resolve.
    service = next(o for o in of_kind(gpu, "Service") if o["metadata"]["name"] == "triton")
    assert triton["spec"]["serviceName"] == "triton" and service["spec"]["clusterIP"] == "None"


# --- monitoring: optional, per overlay ----------------------------------------------------


def test_overlays_apply_without_the_prometheus_operator(objects: list[Manifest]) -> None:
    """`kubectl apply -k k8s/overlays/X` needs no CRD: only built-in kinds."""
    operator = [name_of(o) for o in objects if o["apiVersion"].startswith(OPERATOR_GROUP)]
    assert not operator, f"these need the Prometheus Operator's CRDs: {operator}"


def alert_names(objects: list[Manifest]) -> set[str]:
    return {
        rule["alert"]
        for obj in of_kind(objects, "PrometheusRule")
        for group in obj["spec"]["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_monitoring_fits_the_backend(overlay: str, monitored: list[Manifest]) -> None:
    """The gateway's monitoring everywhere; Triton's only where Triton runs."""
    kinds = {o["kind"] for o in monitored}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    assert "ConfigMap/ca-serve-grafana-dashboards" in {name_of(o) for o in monitored}
    alerts = alert_names(monitored)
    assert {"CaServeGatewayDown", "CaServeBackendNotReady"} <= alerts
    triton_alerts = {"CaServeTritonDown", "CaServeTritonQueueTimeGrowing"}
    if overlay == "gpu":
        assert "PodMonitor" in kinds
        assert triton_alerts <= alerts
    else:
        assert "PodMonitor" not in kinds
        assert not alerts & triton_alerts, "Triton alerts on a deployment without Triton"
        exprs = [
            str(rule["expr"])
            for obj in of_kind(monitored, "PrometheusRule")
            for group in obj["spec"]["groups"]
            for rule in group["rules"]
        ]
        assert not [e for e in exprs if "nv_" in e or 'job="triton"' in e]


def commented_components(overlay: str) -> list[str]:
    """The component paths an overlay lists in its commented `# components:` block."""
    text = (K8S / "overlays" / overlay / "kustomization.yaml").read_text()
    block = re.search(r"^# components:\n((?:#   - .*\n)+)", text, re.M)
    assert block, f"overlays/{overlay}: no commented `components:` block to enable"
    return re.findall(r"^#   - (\S+)$", block.group(1), re.M)


def test_each_overlay_documents_the_components_it_can_take(overlay: str) -> None:
    """Uncommenting an overlay's `components:` lines names real components: its monitoring
    (only Triton's where Triton runs) and, on gpu, the Triton storage options."""
    listed = commented_components(overlay)
    base = K8S / "overlays" / overlay
    for path in listed:
        kustomization = yaml.safe_load(((base / path).resolve() / "kustomization.yaml").read_text())
        assert kustomization["kind"] == "Component", path
    monitoring = [p for p in listed if "/monitoring/" in p]
    assert monitoring == [f"../../monitoring/{part}" for part in MONITORING[overlay]]
