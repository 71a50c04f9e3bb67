"""Security properties: API keys (enforced, compared in constant time), response headers,
no filesystem paths in error messages, CORS closed by default, and metrics whose label
values never come from the client."""

from __future__ import annotations

import ast
import inspect
import io
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from service.gateway import security
from service.gateway.app import create_app
from service.gateway.metrics import (
    BACKEND_ERROR_REASONS,
    ENGINE_LABELS,
    RELOAD_RESULTS,
    ROUTES,
    UNMATCHED_ROUTE,
)
from service.gateway.modelinfo import newest_version
from service.gateway.settings import Settings
from tests.reliability.conftest import tiny_settings
from tests.reliability.support import gif_bomb, multipart_body, png_bomb, png_bytes
from tests.support.gateway import GatewayServer

KEY = "k" * 24 + "-correct-key-0123456789"


async def in_process(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


@pytest.fixture
async def keyed(tiny_repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in in_process(tiny_settings(tiny_repo, api_keys=(KEY,), access_log=False)):
        yield client


# -- API keys ----------------------------------------------------------------------------
async def test_classify_needs_a_valid_key(keyed: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "image/png"}
    for auth in (None, "Bearer ", f"Bearer {KEY[:-1]}", f"Bearer {KEY}x", f"bearer{KEY}",
                 f"Basic {KEY}", f"Bearer {KEY.upper()}"):
        sent = headers | ({"Authorization": auth} if auth is not None else {})
        response = await keyed.post("/classify", content=png_bytes(), headers=sent)
        assert response.status_code == 401, (auth, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert KEY not in response.text
    ok = await keyed.post("/classify", content=png_bytes(),
                          headers=headers | {"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200


def test_keys_are_compared_with_compare_digest_over_digests() -> None:
    """The code: hmac.compare_digest on fixed-length digests, every key tried, no `==` or
    `in` on key material anywhere in the module."""
    source = inspect.getsource(security)
    tree = ast.parse(source)
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert "hmac.compare_digest" in calls and "hashlib.sha256" in calls
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            ops = {type(op) for op in node.ops}
            text = ast.unparse(node)
            assert not ops & {ast.Eq, ast.NotEq, ast.In, ast.NotIn} or "scheme" in text, text
    accepts = inspect.getsource(security.ApiKeys.accepts)
    assert "break" not in accepts and "return True" not in accepts  # no early exit


def _interleaved_medians(
    measure: dict[str, object], fn: object, rounds: int
) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in measure}
    for _ in range(rounds):
        for name, arg in measure.items():
            start = time.perf_counter_ns()
            fn(arg)  # type: ignore[operator]
            samples[name].append(time.perf_counter_ns() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def test_key_check_time_does_not_depend_on_how_much_of_the_key_matches() -> None:
    """With a long key the leak of a plain comparison would be large (a 1 MiB memcmp that
    stops at the first difference): wrong-at-the-end and wrong-at-the-start keys of the
    same length must take the same time, within noise."""
    long_key = "a" * (1 << 20)
    keys = security.ApiKeys((long_key, "second-key"))
    candidates = {
        "same_prefix": long_key[:-1] + "b",
        "different_prefix": "b" + long_key[1:],
    }
    medians = _interleaved_medians(candidates, keys.accepts, rounds=150)
    low, high = sorted(medians.values())
    assert high / low < 1.25, medians
    # Sanity: the same measurement does see a plain comparison's leak.
    leaky = _interleaved_medians(candidates, lambda t: t == long_key, rounds=150)
    assert leaky["same_prefix"] > 5 * leaky["different_prefix"], leaky


async def test_wrong_key_timing_over_http(keyed: httpx.AsyncClient) -> None:
    """End to end: medians of 401 answers for a same-length key that is wrong in its last
    character and one wrong in its first are close (the app's noise dominates)."""
    tokens = {"same_prefix": KEY[:-1] + "X", "different_prefix": "X" + KEY[1:]}
    samples: dict[str, list[float]] = {name: [] for name in tokens}
    for _ in range(120):
        for name, token in tokens.items():
            start = time.perf_counter()
            response = await keyed.get("/v1/model", headers={"Authorization": f"Bearer {token}"})
            samples[name].append(time.perf_counter() - start)
            assert response.status_code == 401
    medians = {name: statistics.median(values) for name, values in samples.items()}
    low, high = sorted(medians.values())
    assert high / low < 1.5, medians


# -- headers and error messages -----------------------------------------------------------
def _error_requests(port: int) -> list[tuple[str, str, dict[str, str], bytes]]:
    """(method, path, headers, body) that each produce an error answer."""
    multipart = "multipart/form-data; boundary=rel-boundary"
    return [
        ("GET", "/etc/passwd", {}, b""),
        ("GET", "/classify", {}, b""),
        ("POST", "/classify", {"Content-Type": "text/plain"}, b"x"),
        ("POST", "/classify", {"Content-Type": "image/png"}, b"not an image"),
        ("POST", "/classify", {"Content-Type": "image/png"}, png_bytes()[:50]),
        ("POST", "/classify", {"Content-Type": "image/png"}, png_bomb(30_000, 30_000)),
        ("POST", "/classify", {"Content-Type": "image/gif"}, gif_bomb(60_000, 60_000)),
        ("POST", "/classify?top_k=0", {"Content-Type": "image/png"}, png_bytes()),
        ("POST", "/classify?top_k=abc", {"Content-Type": "image/png"}, png_bytes()),
        ("POST", "/classify?top_k=99999", {"Content-Type": "image/png"}, png_bytes()),
        ("POST", "/classify", {"Content-Type": multipart}, b"--rel-boundary\r\ngarbage"),
        ("POST", "/classify", {"Content-Type": multipart},
         multipart_body([("file", b"\x89PNG broken", "image/png")] * 2)),
        ("POST", "/classify", {"Content-Type": "image/png"}, b"\0" * 11 * 1024 * 1024),
    ]


@pytest.fixture(scope="module")
def live(tiny_repo: Path) -> GatewayServer:
    settings = tiny_settings(tiny_repo, access_log=False)
    with GatewayServer(settings) as server:
        yield server  # type: ignore[misc]


def test_headers_and_messages_on_every_error(live: GatewayServer, tiny_repo: Path) -> None:
    forbidden = [str(tiny_repo), str(Path.cwd()), sys.prefix, "site-packages", "/tmp/",
                 "/home/", "/usr/", ".py", "Traceback", " at 0x"]
    statuses = set()
    with httpx.Client(base_url=live.url, timeout=30) as client:
        for method, path, headers, body in _error_requests(live.port):
            response = client.request(method, path, headers=headers, content=body)
            statuses.add(response.status_code)
            assert 400 <= response.status_code < 500, (path, response.text)
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "server" not in response.headers
            assert response.headers["content-type"] == "application/json"
            message = response.json()["error"]["message"]
            for text in forbidden:
                assert text not in message, (path, message)
        ok = client.get("/healthz")
        assert "server" not in ok.headers and ok.headers["x-content-type-options"] == "nosniff"
        for name, value in ok.headers.items():
            assert "uvicorn" not in value.lower() and "python" not in value.lower(), name
    assert statuses >= {400, 404, 405, 413, 415, 422}


# -- CORS ---------------------------------------------------------------------------------
def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (5, 5, 5)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_cors_closed_by_default(tiny_repo: Path) -> None:
    async for client in in_process(tiny_settings(tiny_repo, access_log=False)):
        evil = {"Origin": "https://evil.example"}
        simple = await client.post("/classify", content=_png(),
                                   headers=evil | {"Content-Type": "image/png"})
        assert simple.status_code == 200
        assert "access-control-allow-origin" not in simple.headers
        preflight = await client.options("/classify", headers=evil | {
            "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
        assert preflight.status_code in (405, 400)


async def test_cors_allows_only_configured_origins(tiny_repo: Path) -> None:
    allowed = "https://app.example"
    settings = tiny_settings(tiny_repo, cors_origins=(allowed,), access_log=False)
    async for client in in_process(settings):
        for origin, expect in ((allowed, allowed), ("https://evil.example", None),
                               ("https://app.example.evil.example", None), ("null", None)):
            response = await client.post("/classify", content=_png(), headers={
                "Origin": origin, "Content-Type": "image/png"})
            assert response.headers.get("access-control-allow-origin") == expect, origin
            preflight = await client.options("/classify", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST"})
            assert preflight.headers.get("access-control-allow-origin") == expect, origin


# -- metrics labels -----------------------------------------------------------------------
ODD_PATHS = ["/classify/../metrics", "/%00", "/etc/passwd", "/x" * 300, "/ünïcødé/路径",
             "/classify%2f..", "/{route}", "/metrics?route=evil", "/healthz/", "//classify"]
ODD_METHODS = ["PATCH", "DELETE", "PUT", "PROPFIND", "FOO", "OPTIONS", "HEAD", "TRACE"]


async def test_metrics_labels_come_from_fixed_sets(tiny_repo: Path) -> None:
    settings = tiny_settings(tiny_repo, access_log=False)
    async for client in in_process(settings):
        for path in ODD_PATHS:
            for method in ("GET", *ODD_METHODS):
                await client.request(method, path, headers={
                    "X-Request-ID": "evil-label", "Content-Type": "evil/type",
                    "Host": "evil-host", "User-Agent": "evil-agent"})
        await client.post("/classify?top_k=evil", content=b"evil-body",
                          headers={"Content-Type": "image/png"})
        text = (await client.get("/metrics")).text
    for odd in ("evil", "passwd", "ünïcødé", "PROPFIND", "FOO"):
        assert odd not in text, odd
    allowed = {
        "route": {*ROUTES, UNMATCHED_ROUTE},
        "backend": {"embedded", "triton"},
        "reason": set(BACKEND_ERROR_REASONS),
        # The served model, as the repository names it: never anything a client sent.
        "model": {settings.model_name},
        "version": {settings.model_version or newest_version(settings.model_dir)},
        "result": set(RELOAD_RESULTS),
        "engine": set(ENGINE_LABELS),
    }
    status_codes = {"200", "307", "400", "401", "404", "405", "408", "413", "415", "422", "499",
                    "500", "503", "504"}
    seen_routes = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for name, value in sample.labels.items():
                if name == "status":
                    assert value in status_codes - {"500"}, sample
                elif name == "le":
                    float(value)
                else:
                    assert value in allowed[name], sample
                if name == "route":
                    seen_routes.add(value)
    assert UNMATCHED_ROUTE in seen_routes
