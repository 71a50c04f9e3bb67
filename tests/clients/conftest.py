"""A real gateway (embedded ONNX Runtime backend, the session's built CPU repository) shared
by the client, CLI, bench and page tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.gateway.settings import Settings
from tests.support.gateway import GatewayServer


@pytest.fixture(scope="session")
def gateway(model_repository: Path) -> Iterator[GatewayServer]:
    settings = Settings(backend="embedded", model_repository=model_repository)
    with GatewayServer(settings) as server:
        yield server
