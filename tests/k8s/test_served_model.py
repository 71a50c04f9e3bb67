"""One name for the served model: the gateway's CA_MODEL_NAME is the one model Triton loads
(explicit model control), in the gpu overlay, its object-storage variant and docker compose,
and that model's directory is in model_repository/ with a config of the same name. The
gateway built from the gpu overlay's settings asks Triton for that model, over every pod of
the headless Service."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from service.gateway.backends import ModelId, build_backend
from service.gateway.backends.triton import TritonBackend
from service.gateway.modelinfo import load_model_info
from service.gateway.settings import Settings, resolve
from service.model import triton_config
from tests.k8s.manifests import (
    K8S,
    NAMESPACE,
    ROOT,
    TRITON,
    Manifest,
    container,
    flag_value,
    one,
    render_with_components,
    workload_by_label,
)

COMPOSE = ROOT / "deploy" / "docker-compose.yml"
REPOSITORY = ROOT / "model_repository"


def loaded_models(args: list[str]) -> list[str]:
    """The models a Triton command line loads; only explicit model control loads none
    but these (the default mode loads every model in the repository)."""
    assert flag_value(args, "--model-control-mode") == "explicit", (
        "without explicit model control Triton loads every model of the repository"
    )
    return [arg.split("=", 1)[1] for arg in args if arg.startswith("--load-model=")]


def check_served(model_name: str, triton_args: list[str]) -> None:
    assert loaded_models(triton_args) == [model_name], (
        f"the gateway asks for {model_name}; Triton loads {loaded_models(triton_args)}"
    )
    model_dir = REPOSITORY / model_name
    assert model_dir.is_dir(), f"model_repository/{model_name} does not exist"
    assert triton_config.load(model_dir).name == model_name
    # The gateway reads the spec and labels from the same directory.
    assert (model_dir / "spec.json").is_file() and (model_dir / "labels.txt").is_file()


def gateway_model(objects: list[Manifest]) -> str:
    config = one(objects, "ConfigMap", "ca-serve-gateway-config")["data"]
    assert "CA_TRITON_MODEL" not in config, "CA_MODEL_NAME alone names the served model"
    return str(config["CA_MODEL_NAME"])


def triton_args(objects: list[Manifest]) -> list[str]:
    return list(container(workload_by_label(objects, TRITON), "triton")["args"])


def test_gpu_overlay_serves_the_tensorrt_plan(gpu: list[Manifest]) -> None:
    model = gateway_model(gpu)
    assert model == "ca_mobilenetv2_trt"
    check_served(model, triton_args(gpu))
    assert triton_config.load(REPOSITORY / model).platform == "tensorrt_plan"


def gateway_settings(config: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a gateway pod builds them: from its environment alone."""
    for key in list(os.environ):
        if key.startswith("CA_"):
            monkeypatch.delenv(key)
    for key, value in config.items():
        monkeypatch.setenv(key, str(value))
    return Settings()


def test_the_gateway_built_from_the_gpu_overlay_asks_triton_for_the_loaded_model(
    gpu: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = one(gpu, "ConfigMap", "ca-serve-gateway-config")["data"]
    settings = gateway_settings(config, monkeypatch).model_copy(
        update={"model_repository": REPOSITORY}  # the pod's /models holds this repository
    )
    model = load_model_info(settings)
    backend = build_backend(settings, model, resolve(settings, model.spec, cores=2))
    assert isinstance(backend, TritonBackend)
    # The model asked for, and reported before any answer, is the one Triton loads.
    args = triton_args(gpu)
    assert [backend.model] == loaded_models(args) == [model.spec.name]
    assert backend.model_id() == ModelId(backend.model, settings.model_version)
    assert settings.model_version in ("", "1"), "pins a version ca-serve build-repo writes"
    # Every Triton pod: the headless Service's name, in DNS, on Triton's gRPC port.
    target = backend.target
    service = one(gpu, "Service", "triton")
    assert service["spec"]["clusterIP"] == "None", "a ClusterIP would pin each gateway to one pod"
    assert target.balanced and target.dns_server is None
    assert target.host == f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    grpc = next(port for port in service["spec"]["ports"] if port["name"] == "grpc")
    assert target.port == grpc["port"] == int(flag_value(args, "--grpc-port"))
    # A new pod gets calls within ~30 s: re-resolution, CoreDNS's 5 s TTL, one probe.
    assert settings.triton_resolve_interval_s + 5 + settings.triton_health_interval_s <= 30
    # The batches it forms fit the loaded model's config.
    assert backend.max_batch_size <= triton_config.load(REPOSITORY / backend.model).max_batch_size


def test_object_storage_variant_serves_the_onnx_model(tmp_path: Path, gpu: list[Manifest]) -> None:
    objects = render_with_components(
        tmp_path, [K8S / "overlays" / "gpu"], [K8S / "components" / "triton-object-storage"]
    )
    model = gateway_model(objects)
    args = triton_args(objects)
    check_served(model, args)

    # The rest of Triton's command line stays the same as without the component.
    def rest(argv: list[str]) -> list[str]:
        return [a for a in argv if not a.startswith(("--model-repository=", "--load-model="))]

    assert rest(args) == rest(triton_args(gpu))

    # ONNX Runtime builds its TensorRT engines while the model loads: more start-up time
    # than deserialising a prebuilt plan.
    def startup_s(objects: list[Manifest]) -> int:
        probe = container(workload_by_label(objects, TRITON), "triton")["startupProbe"]
        return int(probe["periodSeconds"]) * int(probe["failureThreshold"])

    assert startup_s(objects) >= 2 * startup_s(gpu)


@pytest.fixture(scope="module")
def compose() -> Manifest:
    data: Manifest = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_serves_the_same_model_as_the_gpu_overlay(
    compose: Manifest, gpu: list[Manifest]
) -> None:
    gateway = compose["services"]["gateway"]["environment"]
    assert "CA_TRITON_MODEL" not in gateway
    model = str(gateway["CA_MODEL_NAME"])
    command = [str(arg) for arg in compose["services"]["triton"]["command"]]
    assert command[0] == "tritonserver"
    check_served(model, command[1:])
    assert model == gateway_model(gpu)
    # compose resolves the service name with Docker's DNS; the gateway balances over it.
    assert gateway["CA_TRITON_URL"] == "dns:///triton:8001"
