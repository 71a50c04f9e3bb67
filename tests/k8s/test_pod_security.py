"""Pods get only what they need: GPUs only on Triton, resources on every container, every
container locked down (Pod Security "restricted"), NetworkPolicies fencing Triton and metrics.
"""

from __future__ import annotations

from tests.k8s.manifests import (
    GATEWAY,
    TRITON,
    Manifest,
    container,
    containers,
    of_kind,
    one,
    pod_templates,
    workload_by_label,
)

# --- GPUs, resources ------------------------------------------------------------------------


def gpu_count(item: Manifest) -> int:
    resources = item.get("resources", {})
    values = [resources.get(part, {}).get("nvidia.com/gpu", 0) for part in ("requests", "limits")]
    return max(int(v) for v in values)


def test_gpus_only_on_triton(objects: list[Manifest], overlay: str) -> None:
    for template in pod_templates(objects):
        for item in containers(template.spec):
            if gpu_count(item):
                assert template.labels["app.kubernetes.io/name"] == TRITON, template.owner
    if overlay == "gpu":
        triton = workload_by_label(objects, TRITON)
        assert gpu_count(container(triton, "triton")) == 1
        assert container(triton, "triton")["resources"]["limits"]["nvidia.com/gpu"] == "1"
        # The TensorRT plan is built on the GPU the server will run on.
        assert gpu_count(container(triton, "tensorrt-plan")) == 1
        assert triton.spec["nodeSelector"]
        assert any(t["key"] == "nvidia.com/gpu" for t in triton.spec["tolerations"])
    else:
        assert not any(
            gpu_count(item) for t in pod_templates(objects) for item in containers(t.spec)
        )


def test_every_container_declares_resources(objects: list[Manifest]) -> None:
    for template in pod_templates(objects):
        for item in containers(template.spec):
            resources = item["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), item["name"]
            assert "memory" in resources["limits"], item["name"]


# --- security ----------------------------------------------------------------------------


def test_every_container_is_restricted(objects: list[Manifest]) -> None:
    for template in pod_templates(objects):
        pod = template.spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, template.owner
        assert pod.get("runAsUser", 0) != 0, template.owner
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", template.owner
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not template.spec.get(key), template.owner
        assert not any("hostPath" in v for v in template.spec.get("volumes", [])), template.owner
        assert template.spec.get("automountServiceAccountToken") is False, template.owner
        for item in containers(template.spec):
            where = f"{template.owner} container {item['name']}"
            context = item.get("securityContext", {})
            assert context.get("runAsNonRoot") is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("privileged", False) is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert context.get("runAsUser", 1) != 0, where


def test_namespace_enforces_pod_security_restricted(objects: list[Manifest]) -> None:
    labels = one(objects, "Namespace", "ca-serve")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_network_policies_fence_triton_and_metrics(objects: list[Manifest], overlay: str) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(objects, "NetworkPolicy")}
    deny = policies["default-deny-ingress"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny
    gateway = policies[GATEWAY]
    assert [p["port"] for rule in gateway["ingress"] for p in rule["ports"]] == [8000]
    if overlay != "gpu":
        assert TRITON not in policies
        return
    triton = policies[TRITON]
    assert triton["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": TRITON}
    for rule in triton["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        sources = rule["from"]
        if ports & {8000, 8001}:
            assert ports == {8000, 8001}
            assert sources == [
                {"podSelector": {"matchLabels": {"app.kubernetes.io/name": GATEWAY}}}
            ]
        else:
            assert ports == {8002}
            assert len(sources) == 1
            assert sources[0]["podSelector"]["matchLabels"] == {
                "app.kubernetes.io/name": "prometheus"
            }
            assert "namespaceSelector" in sources[0]
