"""`/docs` and `/redoc` are served with the gateway's own assets: nothing from a CDN."""

from __future__ import annotations

import re

import httpx
import pytest

from service.gateway.apidocs import ASSETS, ASSETS_PATH

_URL = re.compile(r"""(?:src|href)=["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")


def _referenced(html: str) -> list[str]:
    return [a or b for a, b in _URL.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_pages_reference_only_the_gateway(client: httpx.AsyncClient, page: str) -> None:
    response = await client.get(page)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    urls = _referenced(response.text)
    assert urls, response.text
    assert not [u for u in urls if "://" in u or u.startswith("//")], urls
    assert all(u.startswith((ASSETS_PATH, "/openapi.json")) for u in urls), urls


async def test_every_referenced_asset_is_served(client: httpx.AsyncClient) -> None:
    pages = [(await client.get(p)).text for p in ("/docs", "/redoc")]
    assets = {u for html in pages for u in _referenced(html) if u.startswith(ASSETS_PATH)}
    assert assets == {f"{ASSETS_PATH}/{name}" for name in ASSETS}
    for url in sorted(assets):
        response = await client.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"].startswith(ASSETS[url.rsplit("/", 1)[1]])
        assert len(response.content) > 1000, url


@pytest.mark.parametrize("name", ["index.html", "..%2F__init__.py", "swagger-ui.css.map"])
async def test_other_names_are_a_json_404(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(f"{ASSETS_PATH}/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_assets_are_counted_under_one_route(client: httpx.AsyncClient) -> None:
    await client.get(f"{ASSETS_PATH}/swagger-ui.css")
    await client.get(f"{ASSETS_PATH}/nothing.js")
    text = (await client.get("/metrics")).text
    assert 'route="/docs/assets/{name}",status="200"' in text
    assert 'route="/docs/assets/{name}",status="404"' in text and "nothing.js" not in text
