"""Every error path of a request over real HTTP (uvicorn on a loopback port): the status,
the JSON body, and that the server still answers a good request afterwards. The
backend's own failures (503, 504, a client that hangs up): test_gateway_backend_errors.py."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.gateway.app import create_app
from service.gateway.settings import Settings
from tests.support.gateway import TINY_MODEL, GatewayServer, write_tiny_repository

KEY = "s3cret-key"
PNG = {"Content-Type": "image/png"}
AUTH = {"Authorization": f"Bearer {KEY}"}


def png(size: tuple[int, int] = (96, 64), color: tuple[int, int, int] = (30, 90, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[GatewayServer]:
    settings = Settings(
        model_repository=repository,
        model_name=TINY_MODEL,
        api_keys=(KEY, "other-key"),
        max_upload_bytes=200_000,
        max_image_pixels=1_000_000,
        max_files=3,
    )
    with GatewayServer(settings, app=create_app(settings)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def http(server: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def assert_still_serving(http: httpx.Client) -> None:
    response = http.post("/classify", content=png(), headers={**AUTH, "Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"][0]["predictions"]) == 5


def raw(
    http: httpx.Client,
    data: bytes,
    ctype: str = "image/png",
    query: str = "",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return http.post(
        f"/classify{query}",
        content=data,
        headers={**AUTH, "Content-Type": ctype, **(headers or {})},
    )


# -- 400 ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data", [b"not an image at all", png()[:60], b""], ids=["text", "truncated", "empty"]
)
def test_400_undecodable(http: httpx.Client, data: bytes) -> None:
    assert_error(raw(http, data), 400, "undecodable_image")
    assert_still_serving(http)


def test_400_one_bad_file_names_it(http: httpx.Client) -> None:
    files = [("file", ("ok.png", png(), "image/png")), ("file", ("bad.png", b"xx", "image/png"))]
    error = assert_error(
        http.post("/classify", files=files, headers=AUTH), 400, "undecodable_image"
    )
    assert "file 2 (bad.png)" in error["message"]
    assert_still_serving(http)


def test_400_malformed_multipart(http: httpx.Client) -> None:
    body = b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nxx'
    response = raw(http, body, "multipart/form-data; boundary=abc")
    assert_error(response, 400, "bad_request")
    assert_error(raw(http, b"whatever", "multipart/form-data"), 400, "bad_request")
    assert_still_serving(http)


# -- 401 ------------------------------------------------------------------------------
@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic czNjcmV0LWtleQ==", "Bearer"])
def test_401_without_a_valid_key(http: httpx.Client, header: str | None) -> None:
    headers = {"Content-Type": "image/png"} | ({"Authorization": header} if header else {})
    response = http.post("/classify", content=png(), headers=headers)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error(
        http.get("/v1/model", headers={"Authorization": header or ""}), 401, "unauthorized"
    )
    assert_still_serving(http)


def test_every_configured_key_works_and_probes_stay_open(http: httpx.Client) -> None:
    other = {"Authorization": "Bearer other-key"}
    assert http.get("/v1/model", headers=other).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert http.get(path).status_code == 200, path


# -- 413 ------------------------------------------------------------------------------
def test_413_body_too_large_by_content_length(http: httpx.Client) -> None:
    error = assert_error(raw(http, b"\0" * 300_000), 413, "payload_too_large")
    assert "200000" in error["message"]
    assert_still_serving(http)


def test_413_chunked_body_too_large(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(30):
            yield b"\0" * 10_000

    response = http.post(
        "/classify", content=chunks(), headers={**AUTH, "Content-Type": "image/png"}
    )
    assert_error(response, 413, "payload_too_large")
    assert_still_serving(http)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("size", [(2000, 1000), (100_000, 100_000)])
def test_413_pixel_bomb(http: httpx.Client, size: tuple[int, int]) -> None:
    assert_error(raw(http, _png_header_only(*size)), 413, "image_too_large")
    assert_still_serving(http)


def test_413_too_many_files(http: httpx.Client) -> None:
    files = [("file", (f"{i}.png", png(), "image/png")) for i in range(4)]
    error = assert_error(http.post("/classify", files=files, headers=AUTH), 413, "too_many_files")
    assert "3" in error["message"]
    ok = http.post("/classify", files=files[:3], headers=AUTH)
    assert ok.status_code == 200 and len(ok.json()["results"]) == 3


# -- 415 ------------------------------------------------------------------------------
@pytest.mark.parametrize("ctype", ["text/plain", "application/xml", "image/svg+xml", ""])
def test_415_unsupported_content_type(http: httpx.Client, ctype: str) -> None:
    assert_error(raw(http, png(), ctype), 415, "unsupported_media_type")
    assert_still_serving(http)


def test_an_image_sent_as_json_is_not_json(http: httpx.Client) -> None:
    error = assert_error(raw(http, png(), "application/json"), 400, "bad_request")
    assert "not valid JSON" in error["message"]


def test_415_multipart_part_declared_as_text(http: httpx.Client) -> None:
    files = [("file", ("notes.txt", b"hello", "text/plain"))]
    assert_error(http.post("/classify", files=files, headers=AUTH), 415, "unsupported_media_type")
    assert_still_serving(http)


def test_multipart_octet_stream_part_is_accepted(http: httpx.Client) -> None:
    files = [("file", ("blob", png(), "application/octet-stream"))]
    assert http.post("/classify", files=files, headers=AUTH).status_code == 200


# -- 422 ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "query", ["?top_k=0", "?top_k=-3", "?top_k=abc", "?top_k=11", "?top_k=1.5"]
)
def test_422_bad_top_k(http: httpx.Client, query: str) -> None:
    error = assert_error(raw(http, png(), query=query), 422, "invalid_parameter")
    assert "top_k" in error["message"]
    assert_still_serving(http)


@pytest.mark.parametrize("top_k", [0, -3, 11, 5000])
def test_top_k_out_of_range_gets_one_message_either_side(http: httpx.Client, top_k: int) -> None:
    error = assert_error(raw(http, png(), query=f"?top_k={top_k}"), 422, "invalid_parameter")
    assert error["message"] == f"top_k must be between 1 and 10, got {top_k}"


def test_422_multipart_without_file_part(http: httpx.Client) -> None:
    response = http.post(
        "/classify",
        data={"image": "x"},
        files=[("other", ("a.png", png(), "image/png"))],
        headers=AUTH,
    )
    assert_error(response, 422, "invalid_parameter")
    assert_still_serving(http)


# -- 404 / 405 ------------------------------------------------------------------------
def test_404_and_405_are_json(http: httpx.Client) -> None:
    assert_error(http.get("/nope"), 404, "not_found")
    assert_error(http.get("/classify", headers=AUTH), 405, "method_not_allowed")
    assert_still_serving(http)
