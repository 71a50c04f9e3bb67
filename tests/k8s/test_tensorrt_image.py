"""The TensorRT init image and the builder image against deploy/versions.env, the one pin
of the Triton release, its TensorRT and the ca-serve version; and what they install."""

from __future__ import annotations

import re
import tomllib
from pathlib import PurePosixPath

import pytest

from tests.k8s import dockerfiles
from tests.k8s.manifests import DOCKER, ROOT, Manifest, container, workload_by_label

VERSIONS_ENV = ROOT / "deploy" / "versions.env"
CONSTRAINTS = DOCKER / "constraints.txt"


def versions() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in VERSIONS_ENV.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


def stage_args(stage: dockerfiles.Stage) -> dict[str, str]:
    return dict(arg.partition("=")[::2] for arg in stage.all("ARG") if "=" in arg)


def pip_installs(dockerfile: dockerfiles.Dockerfile) -> list[str]:
    return [
        part.strip()
        for stage in dockerfile.stages
        for run in stage.all("RUN")
        for part in re.split(r"&&|;", run)
        if re.search(r"\bpip3? install\b|-m pip install\b", part)
    ]


def test_the_init_image_takes_its_versions_from_versions_env() -> None:
    pins = versions()
    triton = dockerfiles.parse(DOCKER / "triton.Dockerfile")
    assert triton.args["TRITON_RELEASE"] == pins["TRITON_RELEASE"]
    base = triton.expand(triton.stages[0].base)
    assert base == f"nvcr.io/nvidia/tritonserver:{pins['TRITON_RELEASE']}-py3"
    args = stage_args(triton.final)
    assert args["TENSORRT_VERSION"] == pins["TENSORRT_VERSION"]
    assert args["CA_SERVE_VERSION"] == pins["CA_SERVE_VERSION"]
    # The pin reaches the step, which refuses any other TensorRT.
    assert any("TENSORRT_VERSION=${TENSORRT_VERSION}" in env for env in triton.final.all("ENV"))


def test_the_builder_image_and_the_package_carry_the_ca_serve_version() -> None:
    pins = versions()
    builder = dockerfiles.parse(DOCKER / "builder.Dockerfile")
    assert builder.args["CA_SERVE_VERSION"] == pins["CA_SERVE_VERSION"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == pins["CA_SERVE_VERSION"]


def test_the_init_image_installs_tensorrt_bindings_only_at_the_pinned_version() -> None:
    installs = pip_installs(dockerfiles.parse(DOCKER / "triton.Dockerfile"))
    tensorrt = [cmd for cmd in installs if "tensorrt" in cmd]
    assert len(tensorrt) == 1, installs
    (command,) = tensorrt
    # The bindings alone: no metapackage, no -libs wheel (a second TensorRT), no deps.
    assert re.search(r'"tensorrt-cu\$\{cuda_major\}-bindings==\$\{TENSORRT_VERSION\}"', command)
    assert "--no-deps" in command and "-libs" not in command
    assert "torch" not in " ".join(installs)


@pytest.mark.parametrize("name", ["triton", "builder", "gateway"])
def test_every_install_is_pinned(name: str) -> None:
    for command in pip_installs(dockerfiles.parse(DOCKER / f"{name}.Dockerfile")):
        constrained = "-c /tmp/constraints.txt" in command
        the_package_alone = re.search(r"--no-deps\s+\.$", command)
        requirements = re.findall(r'"([^"]+)"', command)
        exact = bool(requirements) and all("==" in r for r in requirements)
        assert constrained or the_package_alone or exact, command
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[a-z0-9\-]+==[0-9][0-9A-Za-z.+\-]*", line), line


def test_the_constraints_pin_every_dependency_of_the_project() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    # The images install the base, [model] (the builder) and [tracing] (the gateway).
    wanted = [*project["dependencies"], *extras["model"], *extras["tracing"]]
    pinned = {line.split("==")[0] for line in CONSTRAINTS.read_text().splitlines()
              if line and not line.startswith("#")}
    for requirement in wanted:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name == "torch" or name in pinned, f"{name} is not in {CONSTRAINTS.name}"


def test_the_packaged_service_carries_the_probe_photos() -> None:
    """The init step checks plans on service/data/verify: `pip install .` must ship it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = setuptools["package-data"]["service"]
    photos = sorted((ROOT / "service" / "data" / "verify").glob("*.jpg"))
    assert photos
    for photo in photos:
        relative = PurePosixPath(photo.relative_to(ROOT / "service").as_posix())
        # A package-data glob's `*` does not cross `/`: one part per part.
        assert any(
            relative.match(glob) and len(relative.parts) == len(PurePosixPath(glob).parts)
            for glob in globs
        ), f"{relative} is not in the package data {globs}"


def test_the_tensorrt_step_in_kubernetes_runs_the_pinned_image_and_version(
    gpu: list[Manifest],
) -> None:
    pins = versions()
    pod = workload_by_label(gpu, "triton")
    step = container(pod, "tensorrt-plan")
    release, ours = pins["TRITON_RELEASE"], pins["CA_SERVE_VERSION"]
    assert step["image"] == f"ca-serve-triton:{release}-{ours}"
    assert {"name": "TENSORRT_VERSION", "value": pins["TENSORRT_VERSION"]} in step["env"]
    assert container(pod, "triton")["image"] == f"nvcr.io/nvidia/tritonserver:{release}-py3"
    mounts = {mount["mountPath"] for mount in step["volumeMounts"]}
    assert {"/models", "/cache", "/tmp"} <= mounts
