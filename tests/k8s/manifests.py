"""Render the kustomize overlays and walk what they produce.

Pure helpers for tests/k8s: no pytest here. Rendering shells out to `kubectl kustomize`
(or a standalone `kustomize build`), the same thing `kubectl apply -k` does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("gpu", "cpu")
NAMESPACE = "ca-serve"
# The monitoring components each overlay takes (k8s/monitoring/, generated).
MONITORING = {"gpu": ("gateway", "triton"), "cpu": ("gateway",)}
# The workloads' app.kubernetes.io/name labels.
GATEWAY = "ca-serve-gateway"
TRITON = "triton"
DOCKER = ROOT / "deploy" / "docker"

Manifest = dict[str, Any]


class RenderError(RuntimeError):
    """kustomize refused a kustomization; the message carries its stderr."""


def kustomize_command() -> list[str]:
    """`kubectl kustomize`, else `kustomize build`; raises RenderError when neither exists."""
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    raise RenderError("neither kubectl nor kustomize is on PATH: install kubectl (with kustomize)")


def render(directory: Path, *, load_restrictor_none: bool = False) -> list[Manifest]:
    """Every object `kubectl apply -k directory` would send, in order."""
    command = [*kustomize_command(), str(directory)]
    if load_restrictor_none:
        command.append("--load-restrictor=LoadRestrictionsNone")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RenderError(f"{' '.join(command)} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_with_components(
    workdir: Path, resources: list[Path], components: list[Path]
) -> list[Manifest]:
    """Render a kustomization in `workdir` (outside k8s/) that takes `resources` and adds
    `components`, the way docs/deploy.md tells a user to write their own overlay."""
    workdir.mkdir(parents=True, exist_ok=True)

    def rel(path: Path) -> str:
        return os.path.relpath(path, workdir)

    (workdir / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"namespace: {NAMESPACE}\n"
        f"resources: [{', '.join(rel(r) for r in resources)}]\n"
        f"components: [{', '.join(rel(c) for c in components)}]\n"
    )
    return render(workdir, load_restrictor_none=True)


def name_of(obj: Manifest) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[Manifest], kind: str, name: str) -> Manifest:
    """The object of `kind` named `name`; generated ConfigMaps/Secrets match by prefix."""
    found = [
        obj
        for obj in of_kind(objects, kind)
        if obj["metadata"]["name"] == name
        or re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", obj["metadata"]["name"])
    ]
    if len(found) != 1:
        raise LookupError(f"expected one {kind}/{name}, found {len(found)}")
    return found[0]


def gateway_config(objects: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = one(objects, "ConfigMap", "ca-serve-gateway-config")["data"]
    return data


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


@dataclass(frozen=True)
class PodTemplate:
    owner: str
    labels: dict[str, str]
    spec: Manifest


def pod_templates(objects: list[Manifest]) -> Iterator[PodTemplate]:
    for obj in objects:
        if obj["kind"] in WORKLOAD_KINDS:
            template = obj["spec"]["template"]
            yield PodTemplate(
                name_of(obj), template["metadata"].get("labels", {}), template["spec"]
            )


def containers(spec: Manifest) -> Iterator[Manifest]:
    """Init containers first, then the app containers, as the kubelet starts them."""
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def workload_by_label(objects: list[Manifest], name: str) -> PodTemplate:
    found = [t for t in pod_templates(objects) if t.labels.get("app.kubernetes.io/name") == name]
    if len(found) != 1:
        raise LookupError(f"expected one workload labelled {name}, found {len(found)}")
    return found[0]


def container(template: PodTemplate, name: str) -> Manifest:
    for item in containers(template.spec):
        if item["name"] == name:
            return item
    raise LookupError(f"{template.owner} has no container {name}")


def container_port(item: Manifest, port: int | str) -> int:
    """Resolve a probe/Service port (number or name) against the container's ports."""
    if isinstance(port, int):
        return port
    for declared in item.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise LookupError(f"container {item['name']} has no port named {port}")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


QUANTITY = re.compile(r"^(\d+)([kmg]?)$", re.IGNORECASE)


def nginx_size_bytes(value: str) -> int:
    """An nginx size (`client_max_body_size` syntax: 512, 8k, 12m, 1g) in bytes."""
    match = QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"not an nginx size: {value!r}")
    number, unit = int(match.group(1)), match.group(2).lower()
    return number * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def prestop_sleep_seconds(item: Manifest) -> int:
    """Seconds a container's preStop hook sleeps (exec `sleep N` or the sleep action)."""
    pre_stop = item.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    if len(command) == 2 and command[0] == "sleep":
        return int(command[1])
    raise LookupError(f"container {item['name']} has no preStop sleep")


def flag_value(args: list[str], flag: str) -> str:
    """The value of `--flag=value` or `--flag value` in an argument list."""
    for index, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
    raise LookupError(f"{flag} not in {args}")


_SUFFIXES = {"m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024.0, "Mi": 1024.0**2}


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("50m", "2", "1.5", "4Gi") as a number."""
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|Ki|Mi)?", value.strip())
    if not match:
        raise ValueError(f"not a quantity this helper reads: {value!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2) or ""]


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values
