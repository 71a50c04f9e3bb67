"""`/docs` (Swagger UI) and `/redoc` render the API in a real headless browser with every
request to anywhere but the gateway blocked, as on a machine without internet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.support.gateway import GatewayServer


@pytest.fixture
def offline_page(browser: Browser, keyed_gateway: GatewayServer) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    outside: list[str] = []

    def only_the_gateway(route: Route) -> None:
        if route.request.url.startswith(keyed_gateway.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_gateway)
    page = context.new_page()
    yield page
    context.close()
    assert outside == [], f"the page asked for files outside the gateway: {outside}"


def test_swagger_ui_renders_every_operation_offline(
    offline_page: Page, keyed_gateway: GatewayServer, tmp_path: Path
) -> None:
    page = offline_page
    page.goto(keyed_gateway.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("ca-serve")
    paths = page.locator(".opblock-summary-path")
    expect(paths.first).to_be_visible()
    shown = {paths.nth(i).get_attribute("data-path") for i in range(paths.count())}
    assert {"/classify", "/v1/model", "/healthz", "/readyz", "/metrics"} <= shown
    # An operation opens and documents its parameters and error answers.
    page.locator(".opblock-summary-path[data-path='/classify']").click()
    expect(page.locator(".parameters .parameter__name").first).to_contain_text("top_k")
    expect(page.locator(".responses-table .response-col_status", has_text="422")).to_be_visible()
    page.screenshot(path=tmp_path / "docs.png", full_page=True)


def test_redoc_renders_offline(
    offline_page: Page, keyed_gateway: GatewayServer, tmp_path: Path
) -> None:
    page = offline_page
    page.goto(keyed_gateway.url + "/redoc")
    expect(page.get_by_role("heading", name="Classify one or more images")).to_be_visible()
    expect(page.get_by_role("heading", name="The served model")).to_be_visible()
    page.screenshot(path=tmp_path / "redoc.png")
