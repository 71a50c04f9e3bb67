"""Each overlay renders, and every object validates strictly against Kubernetes' schemas.

Built-in kinds: kubernetes-validate's strict schemas (unknown fields rejected) for the
newest Kubernetes it ships. Prometheus Operator kinds (ServiceMonitor, PodMonitor,
PrometheusRule): the minimal schemas in crd_schemas.py. Any other kind fails, so a new
CRD arrives with a schema of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from tests.k8s.crd_schemas import SCHEMAS
from tests.k8s.manifests import K8S, Manifest, name_of, render

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
        "Deployment/triton",
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


def test_every_object_validates_strictly(objects: list[Manifest]) -> None:
    failures = []
    for obj in objects:
        try:
            validate(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            path = ".".join(str(p) for p in exc.path)
            failures.append(f"{name_of(obj)}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(f"{name_of(obj)}: {exc.message} (add a schema to crd_schemas.py)")
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
    root = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "namespace: ca-serve\n"
        f"resources: [{root}/overlays/gpu]\n"
        f"components: [{', '.join(f'{root}/components/{c}' for c in components)}]\n"
    )
    objects = render(tmp_path, load_restrictor_none=True)
    for obj in objects:
        validate(obj)
    triton = next(o for o in objects if name_of(o) == "Deployment/triton")
    spec = triton["spec"]["template"]["spec"]
    if components == ["tensorrt-cache-pvc"]:
        claims = {name_of(o) for o in objects if o["kind"] == "PersistentVolumeClaim"}
        assert claims == {"PersistentVolumeClaim/triton-tensorrt-cache"}
        cache = next(v for v in spec["volumes"] if v["name"] == "tensorrt-cache")
        assert cache == {
            "name": "tensorrt-cache",
            "persistentVolumeClaim": {"claimName": "triton-tensorrt-cache"},
        }
    else:
        args = spec["containers"][0]["args"]
        assert "--model-repository=$(MODEL_REPOSITORY)" in args
        assert "initContainers" not in spec
        store = next(o for o in objects if name_of(o) == "ConfigMap/triton-model-store")
        assert store["data"]["MODEL_REPOSITORY"].startswith(("s3://", "gs://"))
