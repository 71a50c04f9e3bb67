"""The images' Dockerfiles and the compose stack, checked without a Docker engine.

What can run here does: the gateway image's command is run with `--help` from this
checkout's environment, where `pip install .` put the same console script.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.gateway.settings import Settings
from tests.k8s import dockerfiles
from tests.k8s.manifests import DOCKER, ROOT, Manifest, container, workload_by_label

DOCKERFILES = ("gateway", "builder", "triton")
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
# The laptop stack: gateway (embedded backend) + Prometheus + Grafana, no GPU.
COMPOSE_CPU = ROOT / "deploy" / "docker-compose.cpu.yml"
COMPOSE_FILES = {"gpu": COMPOSE, "cpu": COMPOSE_CPU}


def parsed(name: str) -> dockerfiles.Dockerfile:
    return dockerfiles.parse(DOCKER / f"{name}.Dockerfile")


def pip_installs(stage: dockerfiles.Stage) -> list[str]:
    """Every `pip install ...` command in a stage's RUN lines."""
    commands = []
    for run in stage.all("RUN"):
        for part in re.split(r"&&|;", run):
            if re.search(r"\bpip3? install\b|-m pip install\b", part):
                commands.append(part.strip())
    return commands


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_runs_as_a_numeric_non_root_user(name: str) -> None:
    user = parsed(name).final.last("USER")
    assert user is not None, f"{name}.Dockerfile ends as root"
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {user} (numeric, for runAsNonRoot)"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned(name: str) -> None:
    dockerfile = parsed(name)
    stage_names = {stage.name for stage in dockerfile.stages}
    for stage in dockerfile.stages:
        base = dockerfile.expand(stage.base)
        if base in stage_names:
            continue
        tag = base.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{name}: FROM {base}"


def test_gateway_image_installs_no_torch() -> None:
    dockerfile = parsed("gateway")
    assert len(dockerfile.stages) >= 2, "multi-stage: build tools stay out of the final image"
    installs = [cmd for stage in dockerfile.stages for cmd in pip_installs(stage)]
    assert installs, "the gateway image installs the project"
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for command in installs:
        assert "torch" not in command, command
        # `.` with at most extras that pull no torch: the [model] extra is where torch lives.
        for extra in re.findall(r"\.\[([^\]]+)\]", command):
            for name in extra.split(","):
                assert name in extras and name != "model", command
                assert not [d for d in extras[name] if d.lower().startswith("torch")], name
    project = r"install(\s+-c\s+\S+|\s+-\S+)*\s+\"?\.(\[[a-z,]+\])?\"?(\s|$)"
    assert any(re.search(project, cmd) for cmd in installs)
    # The final stage only copies the built environment in; it installs nothing itself.
    assert not pip_installs(dockerfile.final)


def test_project_base_dependencies_pull_no_torch() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [dep for dep in project["dependencies"] if dep.lower().startswith("torch")]


def test_gateway_image_command_runs_here(gpu: list[Manifest]) -> None:
    final = parsed("gateway").final
    argv = dockerfiles.exec_form(final.last("ENTRYPOINT")) + dockerfiles.exec_form(
        final.last("CMD")
    )
    assert argv[:2] == ["ca-serve", "serve"], argv
    script = Path(sys.executable).parent / argv[0]
    assert script.is_file(), f"console script {argv[0]} not installed in {script.parent}"
    result = subprocess.run(
        [str(script), *argv[1:], "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for flag in (arg for arg in argv[1:] if arg.startswith("--")):
        assert flag in result.stdout, f"{flag} unknown to `{' '.join(argv[:2])}`"
    # The manifests spell out the same command.
    gateway = container(workload_by_label(gpu, "ca-serve-gateway"), "gateway")
    assert gateway["command"] + gateway["args"] == argv
    assert f"EXPOSE {dockerfiles_port(argv)}" in {f"EXPOSE {v}" for v in final.all("EXPOSE")}


def dockerfiles_port(argv: list[str]) -> str:
    return argv[argv.index("--port") + 1]


def test_builder_installs_cpu_torch_and_the_model_extra() -> None:
    builder = parsed("builder").stage("builder")
    installs = " ".join(pip_installs(builder))
    assert "download.pytorch.org/whl/cpu" in installs
    assert ".[model]" in installs
    export = parsed("builder").stage("export")
    assert any("ca-serve build-repo" in run for run in export.all("RUN"))


def test_triton_image_adds_the_tensorrt_step() -> None:
    triton = parsed("triton")
    assert triton.expand(triton.stages[0].base).startswith("nvcr.io/nvidia/tritonserver:")
    installs = " ".join(pip_installs(triton.final))
    assert "tensorrt" in installs
    assert "torch" not in installs, "the TensorRT step needs no torch (GPU id from nvidia-smi)"
    assert "--no-deps ." in installs, "the ca-serve package, without the gateway's deps"


def test_dockerignore_keeps_what_the_images_copy() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".venv" in ignored and ".git" in ignored
    copied: set[str] = set()
    for name in DOCKERFILES:
        for stage in parsed(name).stages:
            for copy in stage.all("COPY"):
                if "--from=" not in copy:
                    copied.update(copy.split()[:-1])
    copied = {c for c in copied if not c.startswith("--")}
    assert copied >= {"pyproject.toml", "README.md", "service", "clients"}
    for path in copied:
        assert path not in ignored, f"{path} is copied but .dockerignore drops it"
        # pyproject's `readme` makes README.md part of `pip install .`, so it must exist.
        assert (ROOT / path).exists(), f"the images copy {path}, which the repository lacks"


# --- docker compose ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Manifest:
    data: Manifest = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def compose_cpu() -> Manifest:
    data: Manifest = yaml.safe_load(COMPOSE_CPU.read_text())
    return data


@pytest.fixture(params=sorted(COMPOSE_FILES))
def any_compose(request: pytest.FixtureRequest) -> tuple[Path, Manifest]:
    path = COMPOSE_FILES[request.param]
    return path, yaml.safe_load(path.read_text())


def test_compose_has_the_full_stack(compose: Manifest) -> None:
    assert {"gateway", "triton", "prometheus", "grafana"} <= set(compose["services"])


def test_cpu_compose_needs_no_gpu(compose_cpu: Manifest) -> None:
    """The laptop stack: the gateway serves the model itself, nothing asks for a GPU, and
    Prometheus scrapes the gateway only."""
    services = compose_cpu["services"]
    assert set(services) == {"gateway", "prometheus", "grafana"}
    assert services["gateway"]["environment"]["CA_BACKEND"] == "embedded"
    assert "nvidia" not in COMPOSE_CPU.read_text()
    assert not any("deploy" in service for service in services.values())
    config = next(a for a in services["prometheus"]["command"] if a.startswith("--config.file="))
    assert config.rsplit("/", 1)[-1] == "prometheus-cpu.yml"


def test_both_stacks_run_the_same_monitoring(compose: Manifest, compose_cpu: Manifest) -> None:
    for name in ("prometheus", "grafana"):
        gpu, cpu = compose["services"][name], compose_cpu["services"][name]
        assert gpu["image"] == cpu["image"], name
        assert gpu["volumes"] == cpu["volumes"], name
    assert compose["services"]["gateway"]["image"] == compose_cpu["services"]["gateway"]["image"]


def test_compose_builds_and_mounts_files_that_exist(any_compose: tuple[Path, Manifest]) -> None:
    path, data = any_compose
    base = path.parent
    for name, service in data["services"].items():
        build = service.get("build")
        if build:
            context = (base / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (base / source).exists(), f"{name}: {source}"
        for arg in service.get("command", []):
            if str(arg).startswith("--config.file=/etc/prometheus/"):
                config = str(arg).removeprefix("--config.file=/etc/prometheus/")
                assert (base / "prometheus" / config).is_file(), f"{name}: {arg}"


def test_compose_gateway_settings_are_real(any_compose: tuple[Path, Manifest]) -> None:
    fields = {f"CA_{name.upper()}" for name in Settings.model_fields}
    for service in any_compose[1]["services"].values():
        for key in service.get("environment", {}):
            if key.startswith("CA_"):
                assert key in fields, key


def test_compose_runs_the_same_triton_as_kubernetes(compose: Manifest, gpu: list[Manifest]) -> None:
    triton = container(workload_by_label(gpu, "triton"), "triton")
    assert compose["services"]["triton"]["image"] == triton["image"]
    # deploy/prometheus/prometheus.yml scrapes these service names.
    prometheus = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    assert "gateway:8000" in prometheus and "triton:8002" in prometheus


def module_flags(path: Path) -> set[str]:
    """The `--flags` a module's argparse declares, read from its source: importing
    service.model would import torch, seconds for one string check."""
    flags: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            flags |= {
                arg.value
                for arg in node.args
                if isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and arg.value.startswith("--")
            }
    return flags


def test_the_tensorrt_step_command_matches_the_module(gpu: list[Manifest]) -> None:
    step = container(workload_by_label(gpu, "triton"), "tensorrt-plan")
    assert step["command"][:3] == ["python3", "-m", "service.model.tensorrt"]
    source = ROOT / "service" / "model" / "tensorrt.py"
    assert "def main(" in source.read_text() and '__name__ == "__main__"' in source.read_text()
    declared = module_flags(source)
    for flag in (arg for arg in step["command"][3:] if arg.startswith("--")):
        assert flag in declared, f"{flag} unknown to service.model.tensorrt"


def test_compose_stops_the_gateway_after_its_drain(any_compose: tuple[Path, Manifest]) -> None:
    gateway = any_compose[1]["services"]["gateway"]
    drain = float(gateway["environment"]["CA_GRACEFUL_SHUTDOWN_S"])
    assert float(gateway["stop_grace_period"].removesuffix("s")) > drain


def test_gateway_image_serves_on_openvino_where_its_wheels_exist() -> None:
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (openvino,) = [Requirement(d) for d in project["dependencies"] if d.startswith("openvino")]
    assert openvino.marker is not None
    for system, machine, wanted in (("linux", "x86_64", True), ("linux", "aarch64", True),
                                    ("darwin", "arm64", False), ("win32", "AMD64", False)):
        env = {"sys_platform": system, "platform_machine": machine}
        assert openvino.marker.evaluate(env) is wanted, (system, machine)
    # The image build fails rather than ship a gateway that silently falls back.
    builds = " ".join(parsed("gateway").stages[0].all("RUN"))
    assert 'x86_64|aarch64) python -c "import openvino"' in builds
