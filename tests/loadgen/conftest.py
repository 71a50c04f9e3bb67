"""A real gateway for the load generator's tests: the session's built CPU repository on
the embedded ONNX Runtime backend."""

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
