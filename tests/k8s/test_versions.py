"""Image names and tags agree with deploy/versions.env wherever they are written: the
rendered manifests, the overlays' `images:`, docker compose, the Dockerfiles, README.md and
docs/. One pin (TRITON_RELEASE, TENSORRT_VERSION, CA_SERVE_VERSION), no second copy that
can drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.k8s import dockerfiles
from tests.k8s.manifests import (
    DOCKER,
    K8S,
    ROOT,
    Manifest,
    containers,
    env_file,
    pod_templates,
    render_with_components,
)

VERSIONS = env_file(ROOT / "deploy" / "versions.env")
RELEASE, SERVE = VERSIONS["TRITON_RELEASE"], VERSIONS["CA_SERVE_VERSION"]
TRITON_REPOSITORY = "nvcr.io/nvidia/tritonserver"
# Every image the project names, and the tag versions.env gives it.
TAGS = {
    "ca-serve-gateway": SERVE,
    "ca-serve-model": SERVE,
    "ca-serve-builder": SERVE,
    "ca-serve-triton": f"{RELEASE}-{SERVE}",
    TRITON_REPOSITORY: f"{RELEASE}-py3",
}
# An image reference: optional registry path, one of the names above, optional :tag.
REFERENCE = re.compile(
    r"(?<![\w.-])(?:[\w.${}-]+/)*?(?P<name>ca-serve-[a-z]+|nvcr\.io/nvidia/tritonserver)"
    r"(?::(?P<tag>[\w.${}-]*[\w}]))?"
)
TEXT_FILES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *DOCKER.glob("*.Dockerfile")]
    + [p for p in (ROOT / "deploy").glob("*.yml")]
)


def references(line: str) -> list[tuple[str, str | None]]:
    return [(m.group("name"), m.group("tag")) for m in REFERENCE.finditer(line)]


def test_the_pin_is_complete() -> None:
    assert set(VERSIONS) >= {"TRITON_RELEASE", "TENSORRT_VERSION", "CA_SERVE_VERSION"}
    assert re.fullmatch(r"\d{2}\.\d{2}", RELEASE), RELEASE
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.\d+)?", VERSIONS["TENSORRT_VERSION"])


def manifests_with_every_component(tmp_path: Path) -> list[list[Manifest]]:
    base = [K8S / "overlays" / name for name in ("gpu", "cpu")]
    storage = [K8S / "components" / "triton-object-storage"]
    return [
        *(render_with_components(tmp_path / p.name, [p], []) for p in base),
        render_with_components(tmp_path / "storage", [base[0]], storage),
    ]


def test_every_container_image_carries_its_pinned_tag(tmp_path: Path) -> None:
    for objects in manifests_with_every_component(tmp_path):
        for template in pod_templates(objects):
            for item in containers(template.spec):
                repository, _, tag = item["image"].rpartition(":")
                name = repository.rsplit("/", 1)[-1] if "ca-serve-" in repository else repository
                assert name in TAGS, f"{template.owner}: unknown image {item['image']}"
                assert tag == TAGS[name], f"{template.owner}: {item['image']}, pinned {TAGS[name]}"


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_overlay_images_are_the_pinned_tags(overlay: str) -> None:
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    for image in kustomization["images"]:
        assert image["newTag"] == TAGS[image["name"]], image


def test_compose_images_are_the_pinned_tags() -> None:
    for path in sorted((ROOT / "deploy").glob("docker-compose*.yml")):
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            found = references(str(service.get("image", "")))
            for image, tag in found:
                assert tag == TAGS[image], f"{path.name} {name}: {image}:{tag}"


def test_dockerfiles_build_from_the_pinned_triton() -> None:
    triton = dockerfiles.parse(DOCKER / "triton.Dockerfile")
    assert triton.expand(triton.stages[0].base) == f"{TRITON_REPOSITORY}:{TAGS[TRITON_REPOSITORY]}"
    if "TENSORRT_VERSION" in triton.args:
        assert triton.args["TENSORRT_VERSION"] == VERSIONS["TENSORRT_VERSION"]


def test_docs_and_dockerfiles_name_images_with_their_pinned_tags() -> None:
    """Every tagged reference has the pinned tag; every `docker build -t` and `docker run`
    names a known image with its tag (an untagged build is `:latest`, which no manifest
    runs)."""
    problems = []
    for path in TEXT_FILES:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            where = f"{path.relative_to(ROOT)}:{number}"
            command = re.search(r"\bdocker (build|run)\b", line) is not None
            for name, tag in references(line):
                if tag is not None and "$" not in tag and tag != TAGS.get(name):
                    problems.append(f"{where}: {name}:{tag} (pinned: {TAGS.get(name)})")
                elif command and tag is None:
                    problems.append(f"{where}: {name} without a tag in a docker command")
            for built in re.findall(r"\s-t\s+(\S+)", line) if command else []:
                name = built.rsplit(":", 1)[0].rsplit("/", 1)[-1]
                if name not in TAGS:
                    problems.append(f"{where}: builds unknown image {built}")
    assert not problems, "\n".join(problems)
