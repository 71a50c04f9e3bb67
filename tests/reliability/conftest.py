"""Fixtures for the reliability tests: a tiny model repository and a real gateway process
(so its memory can be read from /proc and it can be signalled)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.gateway.settings import Settings
from tests.support.gateway import TINY_MODEL, GatewayServer, write_tiny_repository


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_repository(tmp_path_factory.mktemp("reliability_repo"))


def tiny_settings(repository: Path, **overrides: object) -> Settings:
    return Settings(model_repository=repository, model_name=TINY_MODEL, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def gateway(tiny_repo: Path) -> Iterator[GatewayServer]:
    """The gateway with its documented default limits (10 MiB bodies, 40 MP images,
    16 files), a short body deadline, and the embedded tiny model; one process."""
    settings = tiny_settings(tiny_repo, body_timeout_s=2.0, access_log=False)
    with GatewayServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30.0) as client:
        yield client
