"""One name for the served model: the gateway's CA_MODEL_NAME is the one model Triton loads
(explicit model control), in the gpu overlay, its object-storage variant and docker compose,
and that model's directory is in model_repository/ with a config of the same name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.model import triton_config
from tests.k8s.manifests import (
    K8S,
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
