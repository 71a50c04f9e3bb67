"""Rendered overlays, once per session: kustomize runs twice for the whole directory."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import K8S, OVERLAYS, Manifest, render


@pytest.fixture(scope="session")
def overlays() -> dict[str, list[Manifest]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, overlays: dict[str, list[Manifest]]) -> str:
    return str(request.param)


@pytest.fixture
def objects(overlay: str, overlays: dict[str, list[Manifest]]) -> list[Manifest]:
    return overlays[overlay]


@pytest.fixture
def gpu(overlays: dict[str, list[Manifest]]) -> list[Manifest]:
    return overlays["gpu"]


@pytest.fixture
def cpu(overlays: dict[str, list[Manifest]]) -> list[Manifest]:
    return overlays["cpu"]
