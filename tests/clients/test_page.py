"""The try-it page at `/` in a real headless browser (the `browser` fixture: Debian's
chromium, driven by Playwright)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.gateway import GatewayServer


def _open(browser: Browser, server: GatewayServer) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 850})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(server.url + "/")
    yield page
    context.close()
    # Offline by design: every request the page made went to the gateway itself.
    assert [url for url in requested if not url.startswith(("blob:", server.url))] == []


@pytest.fixture
def page(browser: Browser, gateway: GatewayServer) -> Iterator[Page]:
    yield from _open(browser, gateway)


@pytest.fixture
def keyed_page(browser: Browser, keyed_gateway: GatewayServer) -> Iterator[Page]:
    yield from _open(browser, keyed_gateway)


def test_upload_a_photo_and_see_five_labelled_bars(
    page: Page, gateway: GatewayServer, photos: list[Path], tmp_path: Path
) -> None:
    photo = next(p for p in photos if p.suffix == ".jpg")
    expected = httpx.post(
        f"{gateway.url}/classify", params={"top_k": 5}, content=photo.read_bytes(),
        headers={"Content-Type": "image/jpeg"},
    ).json()["results"][0]["predictions"]
    model = httpx.get(f"{gateway.url}/v1/model").json()

    expect(page.locator("#model-name")).to_have_text(model["name"])
    expect(page.locator("#weights-source")).to_have_text(model["weights"]["source"])
    expect(page.locator("#random-init")).to_be_hidden()
    page.set_input_files("#file", photo)

    rows = page.locator("#predictions .prediction")
    expect(rows).to_have_count(5)
    labels = [rows.nth(i).locator(".label").inner_text() for i in range(5)]
    assert [label.rsplit(" #", 1)[0] for label in labels] == [p["label"] for p in expected]
    widths = [rows.nth(i).locator(".bar").evaluate("e => e.getBoundingClientRect().width")
              for i in range(5)]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1] >= 1
    expect(page.locator("#timing")).to_contain_text(" ms round trip")
    expect(page.locator("#preview")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()
    page.screenshot(path=tmp_path / "page-photo.png", full_page=True)


def test_upload_a_text_file_and_see_the_error(
    page: Page, photos: list[Path], tmp_path: Path
) -> None:
    page.set_input_files("#file", photos[0])
    expect(page.locator("#predictions .prediction")).to_have_count(5)

    text = tmp_path / "notes.txt"
    text.write_text("this is not an image")
    page.set_input_files("#file", text)

    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("notes.txt")
    expect(error).to_contain_text("415 unsupported_media_type")
    expect(page.locator("#result-card")).to_be_hidden()
    page.screenshot(path=tmp_path / "page-error.png", full_page=True)


def test_api_key_and_random_weights_are_shown_plainly(
    keyed_page: Page, api_key: str, photos: list[Path], tmp_path: Path
) -> None:
    page = keyed_page
    expect(page.locator("#model-error")).to_contain_text("401 unauthorized")
    page.set_input_files("#file", photos[0])
    expect(page.locator("#error")).to_contain_text("401 unauthorized")

    page.locator("#api-key").fill(api_key)
    page.locator("#api-key").blur()
    expect(page.locator("#random-init")).to_be_visible()
    expect(page.locator("#random-init")).to_contain_text(re.compile("random", re.IGNORECASE))
    expect(page.locator("#random-init")).to_contain_text(
        "not ImageNet-trained: labels are meaningless"
    )
    expect(page.locator("#weights-source")).to_have_text("random (RANDOM INIT)")
    expect(page.locator("#model-error")).to_be_hidden()

    page.set_input_files("#file", photos[0])
    rows = page.locator("#predictions .prediction")
    expect(rows).to_have_count(5)
    expect(rows.first.locator(".label")).to_contain_text("class_")
    page.screenshot(path=tmp_path / "page-random-init.png", full_page=True)
