"""Real gateways for the client, CLI and page tests: `gateway` serves the session's
built CPU repository (embedded ONNX Runtime backend); `keyed_gateway` wants an API key and
serves a tiny random-init model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.gateway.settings import Settings
from tests.support.gateway import GatewayServer, write_tiny_repository


@pytest.fixture(scope="session")
def gateway(model_repository: Path) -> Iterator[GatewayServer]:
    settings = Settings(backend="embedded", model_repository=model_repository)
    with GatewayServer(settings) as server:
        yield server


@pytest.fixture(scope="session")
def api_key() -> str:
    return "s3cret-key"


@pytest.fixture(scope="session")
def keyed_gateway(
    tmp_path_factory: pytest.TempPathFactory, api_key: str
) -> Iterator[GatewayServer]:
    repository = write_tiny_repository(tmp_path_factory.mktemp("tiny"), random_init=True)
    settings = Settings(model_repository=repository, model_name="tiny_onnx", api_keys=(api_key,))
    with GatewayServer(settings) as server:
        yield server
