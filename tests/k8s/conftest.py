"""Rendered overlays, once per session: plain (what `kubectl apply -k k8s/overlays/X`
sends) and with their monitoring components (what docs/deploy.md's own overlay sends)."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import (
    K8S,
    MONITORING,
    OVERLAYS,
    Manifest,
    render,
    render_with_components,
)


@pytest.fixture(scope="session")
def overlays() -> dict[str, list[Manifest]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def monitored_overlays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    return {
        name: render_with_components(
            tmp_path_factory.mktemp(f"monitored-{name}"),
            [K8S / "overlays" / name],
            [K8S / "monitoring" / part for part in MONITORING[name]],
        )
        for name in OVERLAYS
    }


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, overlays: dict[str, list[Manifest]]) -> str:
    return str(request.param)


@pytest.fixture
def objects(overlay: str, overlays: dict[str, list[Manifest]]) -> list[Manifest]:
    return overlays[overlay]


@pytest.fixture
def monitored(overlay: str, monitored_overlays: dict[str, list[Manifest]]) -> list[Manifest]:
    return monitored_overlays[overlay]


@pytest.fixture
def gpu(overlays: dict[str, list[Manifest]]) -> list[Manifest]:
    return overlays["gpu"]


@pytest.fixture
def cpu(overlays: dict[str, list[Manifest]]) -> list[Manifest]:
    return overlays["cpu"]
