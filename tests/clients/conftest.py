"""Real gateways for the client, CLI and page tests: `gateway` serves the session's
built CPU repository (embedded ONNX Runtime backend); `keyed_gateway` wants an API key and
serves a tiny random-init model. `browser` is a headless Chromium: Playwright's own browser
download does not work on these machines, so `make system-deps` installs Debian's
chromium, which Playwright launches through `executable_path`."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

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


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no chromium at {CHROMIUM}: run `make system-deps` (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
